//! Test support: one [`Device`] driven in memory with virtual time through
//! the core's connection contract, as the gateway's datagram driver does
//! (datagrams in as [`DeviceInput`], units out of `poll_transmit`), and an
//! in-core subscriber standing in for the MQTT application.
#![allow(dead_code)]

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use serde_json::Value as Json;
use tributary_coap::codec::{decode, encode};
use tributary_coap::msg::opt;
use tributary_coap::{Code, Message, MessageType, Token};
use tributary_core::connection::{Connection, DatagramConnection, Transmit};
use tributary_core::{
    Broker, BrokerConfig, ClientInfo, Message as CoreMessage, QoS, SessionHandle, SessionRequest,
    SubOptions,
};
use tributary_lwm2m::{Device, DeviceConfig, DeviceInput, NoDirectory, Registry};

/// The application's subscription.
pub const APP_FILTER: &str = "lwm2m/+/up/#";

pub struct Harness {
    pub broker: Arc<Broker>,
    pub device: Device,
    /// The application's session (subscribed to [`APP_FILTER`]).
    pub app: SessionHandle,
    pub now: Instant,
    pub mid: u16,
    /// What `handle_datagram` said of the last input (the peer showed life).
    pub alive: bool,
}

impl Harness {
    pub fn new(config: DeviceConfig) -> Harness {
        Harness::with_broker(
            Arc::new(Broker::new(BrokerConfig::default())),
            config,
            QoS::AtMostOnce,
        )
    }

    /// A device on `broker`, with the application subscribed at `app_qos`.
    pub fn with_broker(broker: Arc<Broker>, config: DeviceConfig, app_qos: QoS) -> Harness {
        let now = Instant::now();
        let opened = broker.open_session(
            SessionRequest {
                client: ClientInfo {
                    client_id: "app".into(),
                    username: None,
                    peer: None,
                    protocol: "mqtt",
                },
                clean_start: true,
                expiry_interval: 0,
                will: None,
            },
            now,
        );
        broker
            .subscribe(&opened.handle, APP_FILTER, SubOptions::at(app_qos), now)
            .expect("subscribe");
        let peer: SocketAddr = "192.0.2.7:40000".parse().expect("addr");
        let device = Device::new(
            broker.clone(),
            Arc::new(config),
            Arc::new(Registry::new()),
            Arc::new(NoDirectory),
            peer,
            7,
            now,
        );
        Harness {
            broker,
            device,
            app: opened.handle,
            now,
            mid: 100,
            alive: false,
        }
    }

    /// Send a CON request from the device; returns what the gateway sent back.
    pub fn request(&mut self, code: Code, uri: &str, payload: &str) -> Vec<Message> {
        self.mid += 1;
        let mut m = Message::new(
            MessageType::Con,
            code,
            self.mid,
            Token::new(&[9]).expect("t"),
        );
        let (path, query) = uri.split_once('?').unwrap_or((uri, ""));
        for seg in path.split('/').filter(|s| !s.is_empty()) {
            m.add_option(opt::URI_PATH, seg.as_bytes().to_vec());
        }
        for q in query.split('&').filter(|s| !s.is_empty()) {
            m.add_option(opt::URI_QUERY, q.as_bytes().to_vec());
        }
        m.payload = payload.as_bytes().to_vec().into();
        self.feed(&m)
    }

    pub fn feed(&mut self, m: &Message) -> Vec<Message> {
        self.feed_raw(&encode(m).expect("encode"))
    }

    /// Raw bytes from the device, as one datagram.
    pub fn feed_raw(&mut self, data: &[u8]) -> Vec<Message> {
        self.input(DeviceInput::Datagram(Bytes::copy_from_slice(data)))
    }

    /// One input the driver hands the device.
    pub fn input(&mut self, input: DeviceInput) -> Vec<Message> {
        self.alive = DatagramConnection::handle_datagram(&mut self.device, input, self.now);
        self.output()
    }

    /// The datagrams the device transmits, decoded.
    pub fn output(&mut self) -> Vec<Message> {
        let mut out = Transmit::default();
        DatagramConnection::poll_transmit(&mut self.device, self.now, &mut out);
        out.take_units()
            .iter()
            .map(|b| decode(b).expect("decode"))
            .collect()
    }

    pub fn register(&mut self, query: &str) {
        let out = self.request(
            Code::POST,
            &format!("rd?{query}"),
            r#"</>;rt="oma.lwm2m",</1/0>,</3/0>"#,
        );
        assert_eq!(out.len(), 1);
        assert_eq!(out[0].code, Code::CREATED);
        let loc: Vec<&[u8]> = out[0].option_values(opt::LOCATION_PATH).collect();
        assert_eq!(loc, vec![&b"rd"[..], &b"ep1"[..]]);
    }

    /// An application command; returns the requests the device got.
    pub fn command(&mut self, body: Json) -> Vec<Message> {
        self.broker.publish(
            CoreMessage::new(
                "lwm2m/ep1/dn",
                serde_json::to_vec(&body).expect("json").into(),
                QoS::AtMostOnce,
                false,
            ),
            self.now,
        );
        Connection::handle_wake(&mut self.device, self.now);
        self.output()
    }

    pub fn advance(&mut self, d: Duration) -> Vec<Message> {
        self.now += d;
        Connection::handle_timeout(&mut self.device, self.now);
        self.output()
    }

    /// What the application received: (topic, JSON).
    pub fn published(&self) -> Vec<(String, Json)> {
        self.app
            .take_for_send(self.now, 100, 100, self.broker.metrics(), |_| true)
            .into_iter()
            .map(|o| {
                if let Some(id) = o.packet_id {
                    self.app.acknowledge(id);
                }
                let m = &o.delivery.message;
                (
                    m.topic.to_string(),
                    serde_json::from_slice(&m.payload).expect("json"),
                )
            })
            .collect()
    }
}

pub fn reply(
    to: &Message,
    mtype: MessageType,
    code: Code,
    cf: Option<u16>,
    payload: &str,
) -> Message {
    let mut m = Message::new(mtype, code, to.message_id, to.token);
    if let Some(cf) = cf {
        m.add_uint_option(opt::CONTENT_FORMAT, u32::from(cf));
    }
    m.payload = payload.as_bytes().to_vec().into();
    m
}
