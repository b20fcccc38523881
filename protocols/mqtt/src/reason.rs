//! MQTT 5 reason codes used by the channel (§2.4), and the 3.1.1 CONNACK
//! return codes they map to for older clients.

/// Success / normal disconnection / granted QoS 0.
pub const SUCCESS: u8 = 0x00;
/// Disconnect with will message.
pub const DISCONNECT_WITH_WILL: u8 = 0x04;
/// Continue authentication (AUTH, §3.15.2.1).
pub const CONTINUE_AUTHENTICATION: u8 = 0x18;
/// No matching subscribers.
pub const NO_MATCHING_SUBSCRIBERS: u8 = 0x10;
/// No subscription existed.
pub const NO_SUBSCRIPTION_EXISTED: u8 = 0x11;
/// Unspecified error.
pub const UNSPECIFIED_ERROR: u8 = 0x80;
/// Malformed packet.
pub const MALFORMED_PACKET: u8 = 0x81;
/// Protocol error.
pub const PROTOCOL_ERROR: u8 = 0x82;
/// Implementation specific error.
pub const IMPLEMENTATION_SPECIFIC_ERROR: u8 = 0x83;
/// Unsupported protocol version.
pub const UNSUPPORTED_PROTOCOL_VERSION: u8 = 0x84;
/// Client identifier not valid.
pub const CLIENT_IDENTIFIER_NOT_VALID: u8 = 0x85;
/// Bad user name or password.
pub const BAD_USERNAME_OR_PASSWORD: u8 = 0x86;
/// Not authorized.
pub const NOT_AUTHORIZED: u8 = 0x87;
/// Server shutting down.
pub const SERVER_SHUTTING_DOWN: u8 = 0x8B;
/// Bad authentication method.
pub const BAD_AUTHENTICATION_METHOD: u8 = 0x8C;
/// Keep alive timeout.
pub const KEEP_ALIVE_TIMEOUT: u8 = 0x8D;
/// Session taken over.
pub const SESSION_TAKEN_OVER: u8 = 0x8E;
/// Topic filter invalid.
pub const TOPIC_FILTER_INVALID: u8 = 0x8F;
/// Topic name invalid.
pub const TOPIC_NAME_INVALID: u8 = 0x90;
/// Packet identifier not found.
pub const PACKET_IDENTIFIER_NOT_FOUND: u8 = 0x92;
/// Receive maximum exceeded.
pub const RECEIVE_MAXIMUM_EXCEEDED: u8 = 0x93;
/// Topic alias invalid.
pub const TOPIC_ALIAS_INVALID: u8 = 0x94;
/// Packet too large.
pub const PACKET_TOO_LARGE: u8 = 0x95;
/// Message rate too high.
pub const MESSAGE_RATE_TOO_HIGH: u8 = 0x96;
/// Quota exceeded.
pub const QUOTA_EXCEEDED: u8 = 0x97;
/// Administrative action.
pub const ADMINISTRATIVE_ACTION: u8 = 0x98;
/// Retain not supported.
pub const RETAIN_NOT_SUPPORTED: u8 = 0x9A;
/// QoS not supported.
pub const QOS_NOT_SUPPORTED: u8 = 0x9B;
/// Shared subscriptions not supported.
pub const SHARED_SUBSCRIPTIONS_NOT_SUPPORTED: u8 = 0x9E;
/// Subscription identifiers not supported.
pub const SUBSCRIPTION_IDENTIFIERS_NOT_SUPPORTED: u8 = 0xA1;
/// Wildcard subscriptions not supported.
pub const WILDCARD_SUBSCRIPTIONS_NOT_SUPPORTED: u8 = 0xA2;

/// 3.1.1 CONNACK return code: unacceptable protocol version.
pub const V3_UNACCEPTABLE_PROTOCOL_VERSION: u8 = 0x01;
/// 3.1.1 CONNACK return code: identifier rejected.
pub const V3_IDENTIFIER_REJECTED: u8 = 0x02;
/// 3.1.1 CONNACK return code: server unavailable.
pub const V3_SERVER_UNAVAILABLE: u8 = 0x03;
/// 3.1.1 CONNACK return code: bad user name or password.
pub const V3_BAD_USERNAME_OR_PASSWORD: u8 = 0x04;
/// 3.1.1 CONNACK return code: not authorized.
pub const V3_NOT_AUTHORIZED: u8 = 0x05;

/// The 3.1.1 CONNACK return code for an MQTT 5 CONNACK reason code.
pub fn connack_v3(reason: u8) -> u8 {
    match reason {
        SUCCESS => 0x00,
        UNSUPPORTED_PROTOCOL_VERSION => V3_UNACCEPTABLE_PROTOCOL_VERSION,
        CLIENT_IDENTIFIER_NOT_VALID => V3_IDENTIFIER_REJECTED,
        BAD_USERNAME_OR_PASSWORD => V3_BAD_USERNAME_OR_PASSWORD,
        NOT_AUTHORIZED | BAD_AUTHENTICATION_METHOD => V3_NOT_AUTHORIZED,
        _ => V3_SERVER_UNAVAILABLE,
    }
}
