//! LwM2M 1.0 / 1.1 / 1.2 for Tributary, sans-IO, on top of `tributary-coap`'s
//! message layer: devices register at `/rd`, MQTT applications manage them
//! with EMQX's JSON commands on `{mountpoint}dn/#` and receive responses on
//! `up/resp`, notifications on `up/notify`, update events on `up/update`.
//!
//! # Layout
//! - [`model`]: paths, resource types and typed values.
//! - [`tlv`]: OMA TLV (11542).
//! - [`senml`]: SenML JSON (110), SenML CBOR (112), LwM2M JSON (11543).
//! - [`content`]: Content-Format dispatch, typing, the write format choice.
//! - [`link`]: CoRE link format (registration object lists, Discover).
//! - [`objects`]: the object registry, loaded from OMA DDF XML files.
//! - [`command`]: EMQX JSON commands ⇄ CoAP requests, response payloads.
//! - [`device`]: one peer — registration, lifetime, pending requests,
//!   observations, the queue-mode buffer; talks to the core `Broker`.
#![warn(missing_docs)]

pub mod command;
pub mod content;
pub mod device;
pub mod link;
pub mod model;
pub mod objects;
pub mod senml;
pub mod tlv;

pub use device::{
    Device, DeviceConfig, DeviceInput, Directory, NoDirectory, Remote, Topics, UpdatePublish,
};
pub use objects::Registry;

/// Decode any payload a device may send (fuzzing entry point): every
/// content format, link format and a command. Never panics.
pub fn decode_all(data: &[u8]) {
    let reg = Registry::new();
    for req in ["/3", "/3/0", "/3/0/1", "/3/0/1/0"] {
        if let Ok(p) = model::Path::parse(req) {
            for cf in [
                content::TEXT,
                content::OPAQUE,
                content::CBOR,
                content::SENML_JSON,
                content::SENML_CBOR,
                content::TLV,
                content::LWM2M_JSON,
            ] {
                let _ = content::decode(Some(cf), data, &p, &reg);
            }
        }
    }
    if let Ok(s) = std::str::from_utf8(data) {
        let _ = link::object_list(s);
        let _ = objects::parse_xml(s);
    }
    let _ = command::parse(data);
}
