//! `agora:platform/messaging` and `agora:platform/handler` — the host side of messaging.
//!
//! Publishing: a component that imports `messaging` gets a [`MessagingCtx`] in its store: the
//! shared backend, its name, and the subject patterns its manifest grants. `publish` checks
//! the subject against those patterns, gives the message a UUID and waits until the backend
//! has stored it.
//!
//! Delivery: the host calls [`MessagingBackend::subscribe`] for each subscription of the
//! manifest with a [`MessageHandler`] that instantiates the component and calls its exported
//! `handle` (see [`bindings::subscriber`]). Both backends give the same contract:
//!
//! - each (component, subject) pair is one durable consumer, shared by every subscription of
//!   the pair (every host replica), so each message is handled once per component;
//! - `Ok` acknowledges; `Err` or a panic redelivers after [`Backoff::delay`], with the
//!   delivery count incremented; a failure of delivery number `max_deliver` publishes the
//!   message to [`dead_letter_subject`] with the reason in headers, and it is not delivered
//!   again;
//! - at most `concurrency` handlers run at once per subscription;
//! - a repeated message id within 2 minutes is dropped at publish;
//! - there is no ordering guarantee: handlers run concurrently and a redelivered message comes
//!   after later ones.
//!
//! A consumer outlives its subscriptions: messages published while none runs (between the
//! stop of a component's old version and the start of its new one) wait for the next
//! subscription. [`MessagingBackend::remove_consumer`] deletes one for good.
//!
//! Backends: [`NatsBackend`] (JetStream) in production, [`MemoryBus`] by default; [`connect`]
//! picks one.
//!
//! ```no_run
//! use std::sync::Arc;
//! use agora_messaging::MessagingCtx;
//! # struct State { messaging: MessagingCtx }
//! # async fn link(linker: &mut wasmtime::component::Linker<State>) -> wasmtime::Result<()> {
//! agora_messaging::add_to_linker(linker, |state: &mut State| &mut state.messaging)?;
//! let backend = agora_messaging::connect(None).await?;
//! let grants: Arc<[String]> = Arc::from(vec!["order.>".to_string()]);
//! let ctx = MessagingCtx::granted(backend, "order", grants);
//! # Ok(()) }
//! ```

#![deny(missing_docs)]

mod backend;
mod credentials;
mod memory;
mod nats;
mod subject;
mod unit;

pub use backend::{
    Backoff, DEAD_LETTER_DELIVERIES, DEAD_LETTER_PAYLOAD_DROPPED, DEAD_LETTER_REASON, Delivery,
    Message, MessageHandler, MessagingBackend, MessagingError, ORIGINAL_ID, ORIGINAL_SEQUENCE,
    ORIGINAL_SUBJECT, Subscription, SubscriptionSpec,
};
pub use credentials::{CREDS_VAR, connect_options, connect_options_with};
pub use memory::{DEDUP_WINDOW, MAX_MESSAGE_BYTES, MAX_QUEUED, MemoryBus};
pub use nats::{NatsBackend, STREAM, WIRE_PREFIX, redact};
pub use subject::{
    MAX_HEADER_BYTES, MAX_SUBJECT_BYTES, consumer_name, dead_letter_subject, subject_matches,
    validate_headers, validate_pattern, validate_subject,
};
pub use unit::{Publish, Publisher};

use std::sync::Arc;
use wasmtime::component::{HasSelf, Linker};

/// Generated bindings of the messaging worlds.
#[allow(missing_docs)]
pub mod bindings {
    /// World `agora:platform/publisher`: the `messaging` import, implemented by
    /// [`MessagingCtx`](crate::MessagingCtx).
    pub mod publisher {
        wasmtime::component::bindgen!({
            path: "../../wit",
            world: "agora:platform/publisher",
            imports: { default: async | trappable | tracing },
            additional_derives: [PartialEq, Eq],
        });
    }

    /// World `agora:platform/subscriber`: the exported `handler`, called by the host with
    /// `Subscriber::agora_platform_handler().call_handle(&mut store, &message)`.
    pub mod subscriber {
        wasmtime::component::bindgen!({
            path: "../../wit",
            world: "agora:platform/subscriber",
            exports: { default: async },
        });
    }
}

use bindings::publisher::agora::platform::messaging::{Error, Host};

/// The guest-side record of a delivery, ready for `call_handle`.
pub type GuestMessage = bindings::subscriber::exports::agora::platform::handler::Message;

impl From<Delivery> for GuestMessage {
    fn from(delivery: Delivery) -> GuestMessage {
        GuestMessage {
            id: delivery.message.id,
            subject: delivery.message.subject,
            payload: delivery.message.payload,
            headers: delivery.message.headers,
            delivery: delivery.delivery,
        }
    }
}

/// Calls the exported `handle` of an instantiated subscriber with `delivery`. The outer error is
/// a trap (count it as a failed delivery); the inner one is the guest's own `err`.
pub async fn call_handle<T: Send>(
    store: impl wasmtime::AsContextMut<Data = T>,
    subscriber: &bindings::subscriber::Subscriber,
    delivery: Delivery,
) -> wasmtime::Result<Result<(), String>> {
    subscriber
        .agora_platform_handler()
        .call_handle(store, &GuestMessage::from(delivery))
        .await
}

/// The WIT name of the publishing interface, as it appears in a component's imports.
pub const INTERFACE: &str = "agora:platform/messaging";
/// The WIT name of the handler interface, as it appears in a component's exports.
pub const HANDLER_INTERFACE: &str = "agora:platform/handler";

/// Largest payload a guest may publish, in bytes.
pub const MAX_PAYLOAD_BYTES: usize = 1 << 20;

/// The backend for `nats_url`: JetStream on that server, or with `None` a new in-process bus.
/// Fails within a few seconds, naming the URL, when NATS is unreachable.
pub async fn connect(nats_url: Option<&str>) -> Result<Arc<dyn MessagingBackend>, MessagingError> {
    match nats_url {
        Some(url) => Ok(Arc::new(NatsBackend::connect(url).await?)),
        None => Ok(Arc::new(MemoryBus::new())),
    }
}

#[derive(Clone)]
struct Grant {
    backend: Arc<dyn MessagingBackend>,
    component: Arc<str>,
    patterns: Arc<[String]>,
}

/// The messaging state of one store.
#[derive(Clone)]
pub struct MessagingCtx {
    grant: Option<Grant>,
    meter: agora_capability::Meter,
}

/// The denied state: what a store of a component without the publish grant holds.
impl Default for MessagingCtx {
    fn default() -> MessagingCtx {
        MessagingCtx::denied()
    }
}

impl MessagingCtx {
    /// A component allowed to publish to the subjects matched by `publish_patterns` (already
    /// checked with [`validate_pattern`]) through `backend`.
    pub fn granted(
        backend: Arc<dyn MessagingBackend>,
        component: &str,
        publish_patterns: Arc<[String]>,
    ) -> MessagingCtx {
        MessagingCtx {
            grant: Some(Grant {
                backend,
                component: Arc::from(component),
                patterns: publish_patterns,
            }),
            meter: agora_capability::Meter::default(),
        }
    }

    /// The same context, reporting each publish to `meter`.
    pub fn metered(mut self, meter: agora_capability::Meter) -> MessagingCtx {
        self.meter = meter;
        self
    }

    /// A component without a messaging grant: every publish answers `denied`.
    pub fn denied() -> MessagingCtx {
        MessagingCtx {
            grant: None,
            meter: agora_capability::Meter::default(),
        }
    }

    /// The subject patterns it may publish to (none when denied).
    pub fn patterns(&self) -> &[String] {
        self.grant.as_ref().map_or(&[], |grant| &grant.patterns)
    }

    /// Whether the grant lets this component publish to `subject`.
    pub fn may_publish(&self, subject: &str) -> bool {
        self.grant.as_ref().is_some_and(|grant| {
            grant
                .patterns
                .iter()
                .any(|pattern| subject_matches(pattern, subject))
        })
    }

    async fn publish_checked(
        &self,
        subject: String,
        payload: Vec<u8>,
        headers: Vec<(String, String)>,
    ) -> Result<String, Error> {
        let Some(grant) = &self.grant else {
            return Err(Error::Denied);
        };
        validate_subject(&subject).map_err(Error::Invalid)?;
        if !self.may_publish(&subject) {
            tracing::debug!(component = %grant.component, %subject, "publish denied");
            return Err(Error::Denied);
        }
        if payload.len() > MAX_PAYLOAD_BYTES {
            return Err(Error::Invalid(format!(
                "the payload is {} bytes, over the {MAX_PAYLOAD_BYTES}-byte limit",
                payload.len()
            )));
        }
        validate_headers(&headers).map_err(Error::Invalid)?;
        let mut headers = headers;
        agora_capability::add_trace_headers(&mut headers);
        let message = Message::new(subject, payload, headers);
        match grant.backend.publish(&message).await {
            Ok(()) => Ok(message.id),
            Err(MessagingError::Invalid(text)) => Err(Error::Invalid(text)),
            Err(MessagingError::Unavailable(text)) => {
                tracing::warn!(
                    component = %grant.component,
                    subject = %message.subject,
                    message = %text,
                    "messaging unavailable"
                );
                Err(Error::Unavailable(text))
            }
        }
    }
}

impl Host for MessagingCtx {
    async fn publish(
        &mut self,
        subject: String,
        payload: Vec<u8>,
        headers: Vec<(String, String)>,
    ) -> wasmtime::Result<Result<String, Error>> {
        let started = std::time::Instant::now();
        let span = tracing::debug_span!(
            target: agora_capability::SPAN_TARGET,
            "publish",
            "otel.name" = %format_args!("send {subject}"),
            "otel.kind" = "producer",
            "messaging.system" = self.grant.as_ref().map_or("none", |grant| grant.backend.kind()),
            "messaging.operation.type" = "send",
            "messaging.destination.name" = %subject,
        );
        let result =
            tracing::Instrument::instrument(self.publish_checked(subject, payload, headers), span)
                .await;
        self.meter.record(result.is_ok(), started);
        Ok(result)
    }
}

/// Adds `agora:platform/messaging` to `linker`; `get` finds the [`MessagingCtx`] in a store's
/// data.
pub fn add_to_linker<T: Send + 'static>(
    linker: &mut Linker<T>,
    get: fn(&mut T) -> &mut MessagingCtx,
) -> wasmtime::Result<()> {
    bindings::publisher::agora::platform::messaging::add_to_linker::<T, HasSelf<MessagingCtx>>(
        linker, get,
    )
}
