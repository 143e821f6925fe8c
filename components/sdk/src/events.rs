//! Messaging (`agora:platform/messaging` and the exported `agora:platform/handler`).
//!
//! Publishing needs `grants = { publish = ["order.*"] }`; receiving needs the subjects under
//! `[component.messaging] subscribe = [...]` and a handler registered with
//! [`export_handler!`](crate::export_handler). Each message is handled in a fresh instance;
//! returning `Err` (or trapping) makes the host redeliver it later.
//!
//! Events are versioned JSON envelopes, `{id, type, version, occurred_at, data}`, published to
//! the subject named by their type:
//!
//! ```ignore
//! use agora_sdk::events::{self, Event, Message};
//! events::publish_event(&Event::new("order.created", 1, &order))?;
//!
//! struct Inbox;
//! impl events::Handler for Inbox {
//!     fn handle(message: Message) -> Result<(), String> {
//!         let event: Event<serde_json::Value> = message.event()?;
//!         Ok(())
//!     }
//! }
//! agora_sdk::export_handler!(Inbox);
//! ```

use crate::bindings::agora::platform::messaging as wit;
use crate::time::Timestamp;
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use std::fmt;

/// Why a publish failed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PublishError {
    /// The manifest does not grant this subject.
    Denied,
    /// A malformed subject or an oversized payload.
    Invalid(String),
    /// The broker did not confirm in time; the message may or may not be out.
    Unavailable(String),
}

impl fmt::Display for PublishError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            PublishError::Denied => f.write_str("publishing to this subject is not granted"),
            PublishError::Invalid(m) => write!(f, "invalid message: {m}"),
            PublishError::Unavailable(m) => write!(f, "messaging unavailable: {m}"),
        }
    }
}

impl std::error::Error for PublishError {}

impl From<wit::Error> for PublishError {
    fn from(err: wit::Error) -> Self {
        match err {
            wit::Error::Denied => PublishError::Denied,
            wit::Error::Invalid(m) => PublishError::Invalid(m),
            wit::Error::Unavailable(m) => PublishError::Unavailable(m),
        }
    }
}

/// Publishes `payload` to `subject` and waits for the broker to store it; returns its id.
pub fn publish(
    subject: &str,
    payload: &[u8],
    headers: &[(String, String)],
) -> Result<String, PublishError> {
    Ok(wit::publish(subject, payload, headers)?)
}

/// Publishes `event` as JSON to the subject named by its type.
pub fn publish_event<T: Serialize>(event: &Event<T>) -> Result<String, PublishError> {
    let payload = event.to_json().map_err(PublishError::Invalid)?;
    publish(&event.kind, &payload, &event.headers())
}

/// The versioned JSON envelope every agora event travels in.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Event<T> {
    /// A UUID, unique per event: consumers deduplicate on it.
    pub id: String,
    /// The event type, also its subject: `order.created`.
    #[serde(rename = "type")]
    pub kind: String,
    /// The version of `data`'s shape; bump it on incompatible changes.
    pub version: u32,
    /// When it happened, RFC 3339 UTC.
    pub occurred_at: String,
    /// The payload.
    pub data: T,
}

impl<T> Event<T> {
    /// A new event of type `kind` with a fresh id, occurring now.
    pub fn new(kind: &str, version: u32, data: T) -> Event<T> {
        Event {
            id: uuid_v4(),
            kind: kind.to_owned(),
            version,
            occurred_at: Timestamp::now().to_rfc3339(),
            data,
        }
    }

    /// The headers published with the event.
    pub fn headers(&self) -> Vec<(String, String)> {
        vec![
            ("content-type".into(), "application/json".into()),
            ("agora-event-id".into(), self.id.clone()),
            ("agora-event-type".into(), self.kind.clone()),
            ("agora-event-version".into(), self.version.to_string()),
        ]
    }
}

impl<T: Serialize> Event<T> {
    /// The envelope as JSON bytes.
    pub fn to_json(&self) -> Result<Vec<u8>, String> {
        serde_json::to_vec(self).map_err(|err| format!("cannot encode event: {err}"))
    }
}

/// A random (version 4) UUID from the host's secure random source.
pub fn uuid_v4() -> String {
    let mut bytes = [0u8; 16];
    wstd::rand::get_random_bytes(&mut bytes);
    bytes[6] = (bytes[6] & 0x0f) | 0x40;
    bytes[8] = (bytes[8] & 0x3f) | 0x80;
    let hex: String = bytes.iter().map(|b| format!("{b:02x}")).collect();
    format!(
        "{}-{}-{}-{}-{}",
        &hex[0..8],
        &hex[8..12],
        &hex[12..16],
        &hex[16..20],
        &hex[20..32]
    )
}

/// One delivered message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Message {
    /// The id given at publish.
    pub id: String,
    /// The subject it was published to.
    pub subject: String,
    /// The bytes.
    pub payload: Vec<u8>,
    /// The headers.
    pub headers: Vec<(String, String)>,
    /// 1 on the first delivery, 2 on the first redelivery, …
    pub delivery: u32,
}

impl Message {
    /// The value of header `name` (case-insensitive), if present.
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(key, _)| key.eq_ignore_ascii_case(name))
            .map(|(_, value)| value.as_str())
    }

    /// The payload decoded as JSON.
    pub fn json<T: DeserializeOwned>(&self) -> Result<T, String> {
        serde_json::from_slice(&self.payload).map_err(|err| {
            format!(
                "message {} on {} is not the expected JSON: {err}",
                self.id, self.subject
            )
        })
    }

    /// The payload decoded as an event envelope with `data` of type `T`.
    pub fn event<T: DeserializeOwned>(&self) -> Result<Event<T>, String> {
        self.json()
    }
}

#[doc(hidden)]
impl From<crate::bindings::exports::agora::platform::handler::Message> for Message {
    fn from(m: crate::bindings::exports::agora::platform::handler::Message) -> Self {
        Message {
            id: m.id,
            subject: m.subject,
            payload: m.payload,
            headers: m.headers,
            delivery: m.delivery,
        }
    }
}

/// What a component implements to receive the messages of its subscriptions.
pub trait Handler {
    /// Handles one message: `Ok` acknowledges it, `Err` asks for a redelivery later.
    fn handle(message: Message) -> Result<(), String>;
}

/// Exports `$handler` (a type implementing [`Handler`]) as the component's
/// `agora:platform/handler`.
#[macro_export]
macro_rules! export_handler {
    ($handler:ty) => {
        #[doc(hidden)]
        pub struct __AgoraHandlerExport;
        impl $crate::bindings::exports::agora::platform::handler::Guest for __AgoraHandlerExport {
            fn handle(
                message: $crate::bindings::exports::agora::platform::handler::Message,
            ) -> ::core::result::Result<(), ::std::string::String> {
                <$handler as $crate::events::Handler>::handle($crate::events::Message::from(message))
            }
        }
        $crate::bindings::export!(__AgoraHandlerExport with_types_in $crate::bindings);
    };
}
