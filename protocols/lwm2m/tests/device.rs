//! Device scenarios in memory with virtual time: one `Device` driven by
//! datagrams and wake-ups through the connection contract, an in-core
//! subscriber standing in for the MQTT application (see `support`).

mod support;

use std::time::Duration;

use serde_json::json;
use support::*;
use tributary_coap::msg::opt;
use tributary_coap::{Code, Message, MessageType, Token};
use tributary_lwm2m::DeviceConfig;

#[test]
fn register_then_read_piggybacked() {
    let mut h = Harness::new(DeviceConfig::default());
    h.register("ep=ep1&lt=60&lwm2m=1.1&b=U");
    let p = h.published();
    assert_eq!(p[0].0, "lwm2m/ep1/up/resp");
    assert_eq!(
        p[0].1,
        json!({"msgType":"register","data":{"ep":"ep1","lt":60,"lwm2m":"1.1","b":"U",
               "alternatePath":"/","objectList":["/1/0","/3/0"]}})
    );
    let out = h.command(json!({"reqID":1,"msgType":"read","data":{"path":"/3/0/0"}}));
    assert_eq!(out.len(), 1);
    assert_eq!((out[0].mtype, out[0].code), (MessageType::Con, Code::GET));
    assert_eq!(out[0].path(), vec!["3", "0", "0"]);
    h.feed(&reply(
        &out[0],
        MessageType::Ack,
        Code::CONTENT,
        Some(0),
        "Acme",
    ));
    assert_eq!(
        h.published(),
        vec![(
            "lwm2m/ep1/up/resp".to_string(),
            json!({"reqID":1,"msgType":"read","data":{"reqPath":"/3/0/0","code":"2.05",
                   "codeMsg":"content","content":[{"path":"/3/0/0","value":"Acme"}]}})
        )]
    );
}

#[test]
fn every_top_level_field_of_a_command_is_echoed() {
    let mut h = Harness::new(DeviceConfig::default());
    h.register("ep=ep1&lt=60");
    h.published();
    // EMQX applications may correlate with requestID/cacheID instead of reqID.
    let out =
        h.command(json!({"requestID":206,"cacheID":206,"msgType":"read","data":{"path":"/3/0/0"}}));
    h.feed(&reply(
        &out[0],
        MessageType::Ack,
        Code::CONTENT,
        Some(0),
        "EMQ",
    ));
    assert_eq!(
        h.published()[0].1,
        json!({"requestID":206,"cacheID":206,"msgType":"read","data":{"reqPath":"/3/0/0",
               "code":"2.05","codeMsg":"content","content":[{"path":"/3/0/0","value":"EMQ"}]}})
    );
}

#[test]
fn empty_ack_then_separate_response() {
    let mut h = Harness::new(DeviceConfig::default());
    h.register("ep=ep1&lt=60");
    h.published();
    let out = h.command(json!({"reqID":"a","msgType":"execute","data":{"path":"/3/0/4"}}));
    h.feed(&Message::empty(MessageType::Ack, out[0].message_id));
    assert_eq!(
        h.published()[0].1,
        json!({"reqID":"a","msgType":"ack","data":{"path":"/3/0/4"}})
    );
    // The separate response is a CON of its own, acknowledged by the gateway.
    let mut sep = reply(&out[0], MessageType::Con, Code::CHANGED, None, "");
    sep.message_id = 4242;
    let acks = h.feed(&sep);
    assert_eq!(
        (acks[0].mtype, acks[0].message_id),
        (MessageType::Ack, 4242)
    );
    assert_eq!(h.published()[0].1["data"]["code"], "2.04");
    // Retransmission timers are gone: nothing more is sent.
    assert!(h.advance(Duration::from_secs(100)).is_empty());
}

#[test]
fn lifetime_expiry_deregisters_with_an_event() {
    let mut h = Harness::new(DeviceConfig::default());
    h.register("ep=ep1&lt=10");
    h.published();
    h.advance(Duration::from_secs(9));
    assert!(h.published().is_empty());
    assert_eq!(h.request(Code::POST, "rd/ep1", "")[0].code, Code::CHANGED);
    // The update restarted the lifetime.
    h.advance(Duration::from_secs(9));
    assert!(h.published().is_empty());
    h.advance(Duration::from_secs(2));
    let p = h.published();
    assert_eq!(p[0].1["msgType"], "deregister");
    assert_eq!(p[0].1["data"]["reason"], "lifetime expired");
    assert_eq!(h.device.endpoint(), None);
    assert_eq!(h.request(Code::POST, "rd/ep1", "")[0].code, Code::NOT_FOUND);
}

#[test]
fn queue_mode_buffers_until_the_next_update() {
    let mut h = Harness::new(DeviceConfig {
        qmode_time_window: Duration::from_secs(5),
        ..DeviceConfig::default()
    });
    h.register("ep=ep1&lt=600&b=UQ");
    h.published();
    h.advance(Duration::from_secs(6));
    assert!(h
        .command(json!({"reqID":1,"msgType":"read","data":{"path":"/3/0/9"}}))
        .is_empty());
    assert_eq!(h.device.queued(), 1);
    let out = h.request(Code::POST, "rd/ep1", "");
    assert_eq!(out[0].code, Code::CHANGED);
    assert_eq!(out[1].code, Code::GET);
    assert_eq!(out[1].path(), vec!["3", "0", "9"]);
    assert_eq!(h.device.queued(), 0);
}

#[test]
fn unanswered_request_times_out_and_malformed_commands_are_answered() {
    let mut h = Harness::new(DeviceConfig::default());
    h.register("ep=ep1&lt=600");
    h.published();
    assert!(h
        .command(json!({"reqID":5,"msgType":"nope","data":{}}))
        .is_empty());
    assert_eq!(h.published()[0].1["data"]["code"], "4.00");
    let out = h.command(json!({"reqID":6,"msgType":"read","data":{"path":"/3/0/0"}}));
    assert_eq!(out.len(), 1);
    let mut resent = 0;
    for _ in 0..100 {
        resent += h.advance(Duration::from_secs(1)).len();
    }
    assert_eq!(resent, 4, "MAX_RETRANSMIT retransmissions");
    let p = h.published();
    assert_eq!(p[0].1["reqID"], 6);
    assert_eq!(p[0].1["data"]["code"], "5.04");
    assert_eq!(p[0].1["data"]["codeMsg"], "timeout");
}

#[test]
fn registration_errors() {
    let mut h = Harness::new(DeviceConfig::default());
    assert_eq!(
        h.request(Code::POST, "rd?lt=60", "</3/0>")[0].code,
        Code::BAD_REQUEST
    );
    assert_eq!(
        h.request(Code::POST, "rd?ep=x&lwm2m=1.3", "</3/0>")[0].code,
        Code::new(4, 12)
    );
    assert_eq!(
        h.request(Code::POST, "rd?ep=x&lt=999999", "</3/0>")[0].code,
        Code::BAD_REQUEST
    );
    assert_eq!(
        h.request(Code::POST, "rd?ep=x", "<3/0")[0].code,
        Code::BAD_REQUEST
    );
    assert_eq!(h.request(Code::GET, "other", "")[0].code, Code::NOT_FOUND);
    assert!(h.published().is_empty());
}

#[test]
fn block2_answers_are_assembled() {
    let mut h = Harness::new(DeviceConfig::default());
    h.register("ep=ep1&lt=600");
    h.published();
    let text = "0123456789abcdef0123456789ABCDEFxyz";
    let mut req = h.command(json!({"reqID":3,"msgType":"read","data":{"path":"/3/0/0"}}));
    for (num, chunk) in text.as_bytes().chunks(16).enumerate() {
        let more = (num + 1) * 16 < text.len();
        let r = &req[0];
        if num > 0 {
            let b = r.option(opt::BLOCK2).expect("asks for the next block");
            assert_eq!(
                b,
                tributary_coap::block::BlockValue::new(num as u32, false, 0)
                    .expect("b")
                    .encode()
            );
            assert_eq!(r.path(), vec!["3", "0", "0"]);
        }
        let mut a = reply(r, MessageType::Ack, Code::CONTENT, Some(0), "");
        a.payload = chunk.to_vec().into();
        a.add_option(
            opt::BLOCK2,
            tributary_coap::block::BlockValue::new(num as u32, more, 0)
                .expect("b")
                .encode(),
        );
        req = h.feed(&a);
        if more {
            assert!(h.published().is_empty());
        }
    }
    let p = h.published();
    assert_eq!(p[0].1["data"]["content"][0]["value"], text);
    assert_eq!(p[0].1["reqID"], 3);
}

#[test]
fn block1_registration_is_assembled() {
    let mut h = Harness::new(DeviceConfig::default());
    let list = r#"</>;rt="oma.lwm2m";ct=110,</1/0>,</3/0>,</3303/0>"#;
    let chunks: Vec<&[u8]> = list.as_bytes().chunks(16).collect();
    for (num, chunk) in chunks.iter().enumerate() {
        let more = num + 1 < chunks.len();
        h.mid += 1;
        let mut m = Message::new(
            MessageType::Con,
            Code::POST,
            h.mid,
            Token::new(&[1]).expect("t"),
        );
        m.add_option(opt::URI_PATH, b"rd".to_vec());
        m.add_option(opt::URI_QUERY, b"ep=ep1".to_vec());
        m.add_option(
            opt::BLOCK1,
            tributary_coap::block::BlockValue::new(num as u32, more, 0)
                .expect("b")
                .encode(),
        );
        m.payload = chunk.to_vec().into();
        let out = h.feed(&m);
        assert_eq!(
            out[0].code,
            if more { Code::CONTINUE } else { Code::CREATED }
        );
    }
    let p = h.published();
    assert_eq!(
        p[0].1["data"]["objectList"],
        json!(["/1/0", "/3/0", "/3303/0"])
    );
}

#[test]
fn large_writes_go_block_wise_at_the_size_the_device_asks() {
    let mut h = Harness::new(DeviceConfig::default());
    h.register("ep=ep1&lt=600");
    h.published();
    let big = "x".repeat(100);
    let out = h.command(json!({"reqID":9,"msgType":"write","data":{"path":"/3/0/14","value":big}}));
    // Fits one 1024-byte block: sent whole; the device refuses it, naming 32-byte blocks.
    assert!(out[0].option(opt::BLOCK1).is_none());
    let mut r = reply(
        &out[0],
        MessageType::Ack,
        Code::REQUEST_ENTITY_TOO_LARGE,
        None,
        "",
    );
    r.add_option(
        opt::BLOCK1,
        tributary_coap::block::BlockValue::new(0, false, 1)
            .expect("b")
            .encode(),
    );
    let mut out = h.feed(&r);
    let mut got = Vec::new();
    loop {
        let req = &out[0];
        let b = tributary_coap::block::BlockValue::decode(req.option(opt::BLOCK1).expect("block1"))
            .expect("b");
        assert_eq!(b.szx, 1);
        got.extend_from_slice(&req.payload);
        let code = if b.more {
            Code::CONTINUE
        } else {
            Code::CHANGED
        };
        let mut ack = reply(req, MessageType::Ack, code, None, "");
        ack.add_option(opt::BLOCK1, req.option(opt::BLOCK1).expect("b").to_vec());
        out = h.feed(&ack);
        if !b.more {
            break;
        }
    }
    assert_eq!(got, big.as_bytes());
    let p = h.published();
    assert_eq!(p[0].1["reqID"], 9);
    assert_eq!(p[0].1["data"]["code"], "2.04");
}
