//! Turns the validated configuration into the core's and the channels'
//! settings: one place where config keys meet runtime types.

use std::sync::Arc;

use tributary_config::{
    AclAction, Config, MqueueOverflow, Permission, SharedStrategy, SubscribeDeniedReason,
};
use tributary_core::auth::{
    AclRule, Permission as CorePermission, RuleAction, RuleAuthorizer, Who,
};
use tributary_core::cluster::SingleNode;
use tributary_core::session::{Overflow, QueueLimits};
use tributary_core::storage::MemoryPersistence;
use tributary_core::{Broker, BrokerConfig};
use tributary_mqtt::channel::ChannelConfig;
use tributary_mqtt::packet::QoS;

/// Seconds in a `Duration`, saturated to `u32`.
fn secs_u32(d: std::time::Duration) -> u32 {
    u32::try_from(d.as_secs()).unwrap_or(u32::MAX)
}

/// The core broker for `config`, with the authentication chain and the
/// ACL (inline rules, then the ACL file). Fails when a users file, key or
/// ACL file named by the configuration cannot be used.
pub fn broker(config: &Config) -> Result<Broker, crate::security::SecurityError> {
    broker_with(config, Box::new(MemoryPersistence))
}

/// [`broker`] with the given persistence seam (the durable store).
pub fn broker_with(
    config: &Config,
    persistence: Box<dyn tributary_core::storage::Persistence>,
) -> Result<Broker, crate::security::SecurityError> {
    let m = &config.mqtt;
    let broker_config = BrokerConfig {
        max_topic_levels: usize::from(m.max_topic_levels),
        queue: QueueLimits {
            max_len: m.max_mqueue_len as usize,
            max_bytes: m.max_mqueue_bytes,
            store_qos0: m.mqueue_store_qos0,
            overflow: match m.mqueue_overflow {
                MqueueOverflow::DropOldest => Overflow::DropOldest,
                MqueueOverflow::DropNewest => Overflow::DropNewest,
            },
            max_pause: config.limits.max_pause,
        },
        shared_strategy: match m.shared_subscription_strategy {
            SharedStrategy::RoundRobin => tributary_core::SharedStrategy::RoundRobin,
            SharedStrategy::Random => tributary_core::SharedStrategy::Random,
            SharedStrategy::Sticky => tributary_core::SharedStrategy::Sticky,
            SharedStrategy::HashClientid => tributary_core::SharedStrategy::HashClientId,
            SharedStrategy::HashTopic => tributary_core::SharedStrategy::HashTopic,
        },
        retain_available: m.retain_available && config.retainer.enabled,
        max_retained: config.retainer.max_retained_messages as usize,
        max_retained_payload: config.retainer.max_payload_size as usize,
        max_session_expiry: secs_u32(m.max_session_expiry),
        upgrade_qos: m.upgrade_qos,
        rates: tributary_core::intake::RateLimits {
            messages_rate: config.limits.messages_rate,
            bytes_rate: config.limits.bytes_rate,
            disconnect: config.limits.rate_exceeded == tributary_config::RateExceeded::Disconnect,
        },
        sys_node: (!config.node.sys_interval.is_zero()).then(|| config.node.name.as_str().into()),
    };
    let authorizer: Box<dyn tributary_core::auth::Authorizer> =
        if config.authorization.file.trim().is_empty() {
            Box::new(authorizer(config))
        } else {
            use crate::security::acl_reload::{watch, ReloadingAcl, SharedAcl};
            let acl = Arc::new(ReloadingAcl::open(
                authorizer(config),
                std::path::Path::new(config.authorization.file.trim()),
            )?);
            // Re-read on change or SIGHUP while the broker lives.
            if let Ok(runtime) = tokio::runtime::Handle::try_current() {
                runtime.spawn(watch(Arc::downgrade(&acl)));
            }
            Box::new(SharedAcl(acl))
        };
    Ok(Broker::with_seams(
        broker_config,
        Box::new(crate::security::Chain::new(config)?),
        authorizer,
        persistence,
        Box::new(SingleNode),
    ))
}

fn permission(p: Permission) -> CorePermission {
    match p {
        Permission::Allow => CorePermission::Allow,
        Permission::Deny => CorePermission::Deny,
    }
}

/// The rule authorizer from `[authorization]`.
pub fn authorizer(config: &Config) -> RuleAuthorizer {
    let rules = config
        .authorization
        .rules
        .iter()
        .map(|r| {
            let mut who = Vec::new();
            if let Some(u) = &r.username {
                who.push(Who::Username(u.clone()));
            }
            if let Some(c) = &r.clientid {
                who.push(Who::ClientId(c.clone()));
            }
            if let Some(ip) = &r.ipaddr {
                if let Some(net) = tributary_config::security::parse_ip_net(ip) {
                    who.push(Who::IpNet(net.0, net.1));
                }
            }
            if who.is_empty() {
                who.push(Who::All);
            }
            AclRule {
                permission: permission(r.permission),
                who,
                action: match r.action {
                    AclAction::Publish => RuleAction::Publish,
                    AclAction::Subscribe => RuleAction::Subscribe,
                    AclAction::All => RuleAction::All,
                },
                topics: r.topics.clone(),
            }
        })
        .collect();
    RuleAuthorizer {
        rules,
        no_match: permission(config.authorization.no_match),
    }
}

/// `1.2.3.0/24`, `::1`, or a plain address (full-length prefix). The
/// config crate has validated the syntax already.
/// MQTT channel settings for `config`.
pub fn mqtt_channel(config: &Config) -> Arc<ChannelConfig> {
    let m = &config.mqtt;
    Arc::new(ChannelConfig {
        max_packet_size: m.max_packet_size,
        receive_maximum: m.receive_maximum,
        max_inflight: m.max_inflight,
        topic_alias_maximum: m.max_topic_alias,
        server_keep_alive: m.server_keep_alive,
        max_keep_alive: m.max_keep_alive,
        keepalive_multiplier: m.keepalive_multiplier,
        max_qos: match m.max_qos_allowed {
            0 => QoS::AtMostOnce,
            1 => QoS::AtLeastOnce,
            _ => QoS::ExactlyOnce,
        },
        retain_available: m.retain_available && config.retainer.enabled,
        wildcard_subscription: m.wildcard_subscription,
        shared_subscription: m.shared_subscription,
        max_clientid_len: usize::from(m.max_clientid_len),
        max_awaiting_rel: m.max_awaiting_rel as usize,
        connect_timeout: m.connect_timeout,
        v3_session_expiry: secs_u32(m.max_session_expiry),
        disconnect_on_denied_publish: config.authorization.deny_action
            == tributary_config::DenyAction::Disconnect,
        subscribe_denied_reason: match config.authorization.subscribe_denied_reason {
            SubscribeDeniedReason::NotAuthorized => 0x87,
            SubscribeDeniedReason::Unspecified => 0x80,
        },
        retry_interval: m.retry_interval,
        await_rel_timeout: m.await_rel_timeout,
        max_subscriptions: config.limits.max_subscriptions as usize,
    })
}

/// MQTT-SN channel settings for `config` (`[mqttsn]`, with session and
/// QoS 2 bounds shared with `[mqtt]`).
pub fn mqttsn_channel(config: &Config) -> Arc<tributary_mqttsn::channel::ChannelConfig> {
    let sn = &config.mqttsn;
    let predefined = tributary_mqttsn::topics::Predefined::new(
        sn.predefined.iter().map(|p| (p.id, p.topic.clone())),
    );
    Arc::new(tributary_mqttsn::channel::ChannelConfig {
        gateway_id: sn.gateway_id,
        mountpoint: sn.mountpoint.clone(),
        predefined: Arc::new(predefined),
        enable_qos3: sn.enable_qos3,
        // Anonymous access off: an unauthenticated datagram publishes only
        // from a source the operator listed (checked at start-up).
        qos3_sources: (!config.authentication.anonymous_allowed()).then(|| {
            sn.qos3_sources
                .iter()
                .filter_map(|s| tributary_config::security::parse_ip_net(s))
                .collect()
        }),
        retry_interval: sn.retry_interval,
        max_retries: sn.max_retries,
        idle_timeout: sn.idle_timeout,
        keepalive_multiplier: config.mqtt.keepalive_multiplier,
        max_inflight: sn.max_inflight,
        max_registered_topics: sn.max_registered_topics as usize,
        max_awaiting_rel: config.mqtt.max_awaiting_rel as usize,
        await_rel_timeout: config.mqtt.await_rel_timeout,
        session_expiry: secs_u32(config.mqtt.max_session_expiry),
        max_clientid_len: usize::from(sn.max_clientid_len),
    })
}

/// CoAP channel settings for `config` (`[coap]`).
pub fn coap_channel(config: &Config) -> Arc<tributary_coap::ChannelConfig> {
    use tributary_coap::{NotifyType, QosPolicy};
    use tributary_config::{CoapNotifyType, CoapQos};
    let c = &config.coap;
    let qos = |q: CoapQos| match q {
        CoapQos::Coap => QosPolicy::Coap,
        CoapQos::Qos0 => QosPolicy::Fixed(tributary_core::QoS::AtMostOnce),
        CoapQos::Qos1 => QosPolicy::Fixed(tributary_core::QoS::AtLeastOnce),
        CoapQos::Qos2 => QosPolicy::Fixed(tributary_core::QoS::ExactlyOnce),
    };
    Arc::new(tributary_coap::ChannelConfig {
        mountpoint: c.mountpoint.clone(),
        connection_required: c.connection_required,
        notify_type: match c.notify_type {
            CoapNotifyType::Qos => NotifyType::Qos,
            CoapNotifyType::Con => NotifyType::Con,
            CoapNotifyType::Non => NotifyType::Non,
        },
        publish_qos: qos(c.publish_qos),
        subscribe_qos: qos(c.subscribe_qos),
        heartbeat: c.heartbeat,
        max_observers: c.max_observers as usize,
        notify_queue_len: c.notify_queue_len as usize,
        block_szx: tributary_coap::block::szx_for(c.block_size as usize).unwrap_or(6),
        max_body_size: c.max_body_size as usize,
        max_block_transfers: 4,
        transmission: tributary_coap::TransmissionParams {
            ack_timeout: c.ack_timeout,
            ack_random_factor: c.ack_random_factor,
            max_retransmit: c.max_retransmit,
            exchange_lifetime: c.exchange_lifetime,
            non_lifetime: c.non_lifetime,
            max_dedup: c.max_dedup_entries as usize,
        },
    })
}

/// STOMP channel settings for `config` (`[stomp]`).
pub fn stomp_channel(config: &Config) -> Arc<tributary_stomp::ChannelConfig> {
    let s = &config.stomp;
    let qos = |q: u8| tributary_core::QoS::from_u8(q).unwrap_or(tributary_core::QoS::AtMostOnce);
    Arc::new(tributary_stomp::ChannelConfig {
        limits: tributary_stomp::Limits {
            max_headers: s.max_headers as usize,
            max_header_length: s.max_header_length as usize,
            max_body_length: s.max_body_length as usize,
        },
        mountpoint: s.mountpoint.clone(),
        send_qos: qos(s.send_qos),
        subscribe_qos: qos(s.subscribe_qos.min(1)),
        retained_on_subscribe: s.retained_on_subscribe,
        heartbeat_send: s.heartbeat_send,
        heartbeat_receive: s.heartbeat_receive,
        heartbeat_grace: s.heartbeat_grace,
        connect_timeout: s.connect_timeout,
        max_inflight: s.max_inflight as usize,
        max_subscriptions: s.max_subscriptions as usize,
        max_transactions: s.max_transactions as usize,
        max_transaction_frames: s.max_transaction_frames as usize,
        unacked_on_disconnect: match s.unacked_on_disconnect {
            tributary_config::StompUnacked::Redeliver => tributary_stomp::UnackedPolicy::Redeliver,
            tributary_config::StompUnacked::Drop => tributary_stomp::UnackedPolicy::Drop,
        },
        session_expiry: secs_u32(s.session_expiry),
        ..tributary_stomp::ChannelConfig::default()
    })
}

/// LwM2M device settings for `config` (`[lwm2m]`).
pub fn lwm2m_device(config: &Config) -> Arc<tributary_lwm2m::DeviceConfig> {
    let c = &config.lwm2m;
    let t = &c.topics;
    Arc::new(tributary_lwm2m::DeviceConfig {
        mountpoint: c.mountpoint.clone(),
        topics: tributary_lwm2m::Topics {
            command: t.command.clone(),
            response: t.response.clone(),
            notify: t.notify.clone(),
            register: t.register.clone(),
            update: t.update.clone(),
        },
        publish_qos: tributary_core::QoS::from_u8(c.publish_qos)
            .unwrap_or(tributary_core::QoS::AtMostOnce),
        lifetime_min: c.lifetime_min,
        lifetime_max: c.lifetime_max,
        qmode_time_window: c.qmode_time_window,
        max_queued: c.max_queued as usize,
        max_inflight: c.max_inflight as usize,
        response_timeout: c.response_timeout,
        max_body_size: c.max_body_size as usize,
        block_szx: tributary_coap::block::szx_for(c.block_size as usize).unwrap_or(6),
        auto_observe: c.auto_observe.clone(),
        update_publish: match c.update_msg_publish_condition {
            tributary_config::UpdatePublishCondition::Always => {
                tributary_lwm2m::UpdatePublish::Always
            }
            tributary_config::UpdatePublishCondition::ContainsObjectList => {
                tributary_lwm2m::UpdatePublish::ContainsObjectList
            }
        },
        transmission: tributary_coap::TransmissionParams {
            ack_timeout: c.ack_timeout,
            max_retransmit: c.max_retransmit,
            ..tributary_coap::TransmissionParams::default()
        },
    })
}
