//! The backend trait both message stores implement, the types they exchange, and the delivery
//! steps they share (running a handler, backoff, dead-lettering).

use std::sync::Arc;
use std::time::Duration;
use tokio::sync::watch;
use tokio::task::JoinHandle;

/// Header added to a dead-lettered message: the error text of the last failed delivery.
pub const DEAD_LETTER_REASON: &str = "agora-dead-letter-reason";
/// Header added to a dead-lettered message: how many deliveries failed.
pub const DEAD_LETTER_DELIVERIES: &str = "agora-dead-letter-deliveries";
/// Header added to a dead-lettered message: the subject it was published to.
pub const ORIGINAL_SUBJECT: &str = "agora-original-subject";
/// Header added to a dead-lettered message: its id when it was published.
pub const ORIGINAL_ID: &str = "agora-original-id";
/// Header added to a dead letter whose payload the broker would not take back with the
/// dead-letter headers added: the payload's size in bytes. The dead letter then carries no
/// payload; on NATS the original stays in the stream (see [`ORIGINAL_SEQUENCE`]).
pub const DEAD_LETTER_PAYLOAD_DROPPED: &str = "agora-dead-letter-payload-dropped";
/// Header added to a dead letter on NATS: the stream sequence of the original message, which
/// the stream keeps for its maximum age.
pub const ORIGINAL_SEQUENCE: &str = "agora-original-sequence";

/// Why a backend call failed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum MessagingError {
    /// The broker is unreachable or did not confirm in time.
    #[error("messaging unavailable: {0}")]
    Unavailable(String),
    /// A subject, pattern, header or subscription setting is not acceptable.
    #[error("invalid: {0}")]
    Invalid(String),
}

/// One message as published and as delivered.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Message {
    /// Unique id; a second publish of the same id within the dedup window is dropped.
    pub id: String,
    /// The subject, without the `agora.` prefix the NATS backend adds on the wire.
    pub subject: String,
    /// The body, at most [`crate::MAX_PAYLOAD_BYTES`] when it comes from a guest.
    pub payload: Vec<u8>,
    /// Headers; delivered sorted by name (values of one name keep their order).
    pub headers: Vec<(String, String)>,
}

impl Message {
    /// A message with a fresh UUID v4 id.
    pub fn new(
        subject: impl Into<String>,
        payload: impl Into<Vec<u8>>,
        headers: Vec<(String, String)>,
    ) -> Message {
        Message {
            id: uuid::Uuid::new_v4().to_string(),
            subject: subject.into(),
            payload: payload.into(),
            headers,
        }
    }

    /// The first value of header `name` (exact name).
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(key, _)| key == name)
            .map(|(_, value)| value.as_str())
    }
}

/// A message handed to a handler, with its delivery count.
#[derive(Clone, Debug)]
pub struct Delivery {
    /// The message.
    pub message: Message,
    /// 1 on the first delivery, then 2, 3, … on redeliveries.
    pub delivery: u32,
}

/// Exponential backoff between deliveries of a failed message.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Backoff {
    /// Delay before the second delivery.
    pub initial: Duration,
    /// Upper bound of every delay.
    pub max: Duration,
}

impl Backoff {
    /// The delay after failed delivery number `delivery` (1-based), before the next one:
    /// `min(initial * 2^(delivery-1), max)`.
    pub fn delay(&self, delivery: u32) -> Duration {
        let doublings = delivery.saturating_sub(1).min(31);
        self.initial
            .checked_mul(1u32 << doublings)
            .unwrap_or(self.max)
            .min(self.max)
    }
}

impl Default for Backoff {
    /// 1 s, doubling up to 1 min.
    fn default() -> Self {
        Backoff {
            initial: Duration::from_secs(1),
            max: Duration::from_secs(60),
        }
    }
}

/// What one component receives: a durable consumer named by (component, subject).
#[derive(Clone, Debug)]
pub struct SubscriptionSpec {
    /// The subscribing component; a single subject token (no dots).
    pub component: String,
    /// The subject or pattern (`*` and a final `>` allowed).
    pub subject: String,
    /// Deliveries before a message goes to the dead-letter subject; at least 1.
    pub max_deliver: u32,
    /// Delay between deliveries of a failed message.
    pub backoff: Backoff,
    /// Most handlers running at once for this subscription; at least 1.
    pub concurrency: usize,
    /// On NATS: how long a delivery may go unacknowledged before the broker redelivers it
    /// (a host that died mid-handler). Running handlers keep extending it.
    pub ack_wait: Duration,
}

impl SubscriptionSpec {
    /// Default delivery settings: 5 deliveries, backoff 1 s doubling to 1 min, 4 handlers at
    /// once, ack wait 30 s.
    pub fn new(component: impl Into<String>, subject: impl Into<String>) -> SubscriptionSpec {
        SubscriptionSpec {
            component: component.into(),
            subject: subject.into(),
            max_deliver: 5,
            backoff: Backoff::default(),
            concurrency: 4,
            ack_wait: Duration::from_secs(30),
        }
    }

    /// Checks the settings before a backend starts delivering.
    pub fn validate(&self) -> Result<(), MessagingError> {
        crate::subject::validate_component(&self.component).map_err(MessagingError::Invalid)?;
        crate::subject::validate_pattern(&self.subject).map_err(MessagingError::Invalid)?;
        if self.max_deliver == 0 {
            return Err(MessagingError::Invalid(
                "max_deliver must be at least 1".into(),
            ));
        }
        if self.concurrency == 0 {
            return Err(MessagingError::Invalid(
                "concurrency must be at least 1".into(),
            ));
        }
        if self.ack_wait.is_zero() {
            return Err(MessagingError::Invalid("ack_wait must be positive".into()));
        }
        Ok(())
    }
}

/// Receives the messages of a subscription. In the host it instantiates the component and
/// calls its exported `handle`.
#[async_trait::async_trait]
pub trait MessageHandler: Send + Sync + 'static {
    /// Handles one delivery: `Ok` acknowledges it, `Err` (with a reason) asks for a
    /// redelivery after the backoff. A panic counts as `Err`.
    async fn handle(&self, delivery: Delivery) -> Result<(), String>;
}

/// A message store with the delivery contract of `agora:platform/messaging`.
#[async_trait::async_trait]
pub trait MessagingBackend: Send + Sync + 'static {
    /// A short name for logs ("nats", "memory").
    fn kind(&self) -> &'static str;

    /// Whether the broker answers (the readiness probe): `Err` says why not.
    async fn ping(&self) -> Result<(), MessagingError> {
        Ok(())
    }

    /// Stores the message durably and returns once the store confirmed it. A repeat of an id
    /// within 2 minutes is accepted and dropped. Bounded by a short timeout, after which the
    /// answer is [`MessagingError::Unavailable`] (the message may or may not be stored).
    async fn publish(&self, message: &Message) -> Result<(), MessagingError>;

    /// Whether the broker would ever store `message`, by its own rules (subject, headers, and
    /// size against its largest message): [`MessagingError::Invalid`] when it never will, so a
    /// message can be refused when it is written to an outbox rather than when it is relayed.
    /// It does not contact the broker, and it is what [`MessagingBackend::publish`] checks
    /// first.
    fn check(&self, message: &Message) -> Result<(), MessagingError>;

    /// Starts delivering the messages on `spec.subject` to `handler` until the returned
    /// [`Subscription`] is stopped or dropped. Subscriptions with the same component and
    /// subject share one durable consumer: each message goes to one of them.
    async fn subscribe(
        &self,
        spec: SubscriptionSpec,
        handler: Arc<dyn MessageHandler>,
    ) -> Result<Subscription, MessagingError>;

    /// Deletes the durable consumer of (component, subject) with whatever it still holds, for
    /// a subscription removed for good. Deleting one that does not exist is not an error.
    async fn remove_consumer(&self, component: &str, subject: &str) -> Result<(), MessagingError>;

    /// How many messages this process holds that a consumer has not finished with (queued,
    /// being handled, or waiting out a backoff). Always 0 for a broker that stores them
    /// itself (NATS); the in-process bus counts what a shutdown would lose.
    fn unhandled(&self) -> usize {
        0
    }

    /// Takes every message this process holds that no consumer has started handling (queued,
    /// or waiting out a backoff), each once however many consumers still wanted it, so the
    /// caller can keep them (the host writes them back to an outbox at shutdown). Call it
    /// after every subscription stopped. Empty for a broker that stores them itself (NATS).
    fn take_unhandled(&self) -> Vec<Message> {
        Vec::new()
    }
}

/// A running subscription. [`Subscription::stop`] stops fetching and waits for the handlers
/// in flight; dropping it stops fetching and lets those handlers finish in the background.
pub struct Subscription {
    stop: watch::Sender<()>,
    task: JoinHandle<()>,
}

impl Subscription {
    /// Wraps a delivery loop spawned by a backend; the loop watches `stop` for closing.
    pub(crate) fn new(stop: watch::Sender<()>, task: JoinHandle<()>) -> Subscription {
        Subscription { stop, task }
    }

    /// Stops fetching messages and waits until every handler in flight has returned (and its
    /// message has been acknowledged or scheduled for redelivery).
    pub async fn stop(self) {
        let Subscription { stop, task } = self;
        drop(stop);
        if let Err(err) = task.await {
            tracing::error!(error = %err, "a messaging delivery loop failed");
        }
    }

    /// Whether the delivery loop is still running.
    pub fn is_running(&self) -> bool {
        !self.task.is_finished()
    }
}

impl std::fmt::Debug for Subscription {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Subscription")
            .field("running", &self.is_running())
            .finish()
    }
}

/// Resolves once the [`Subscription`] owning the sender was stopped or dropped.
pub(crate) async fn stopped(stop: &mut watch::Receiver<()>) {
    while stop.changed().await.is_ok() {}
}

/// Runs the handler in its own task, so that a panic becomes an error for this one delivery.
pub(crate) async fn run_handler(
    handler: Arc<dyn MessageHandler>,
    delivery: Delivery,
) -> Result<(), String> {
    let id = delivery.message.id.clone();
    match tokio::spawn(async move { handler.handle(delivery).await }).await {
        Ok(result) => result,
        Err(err) if err.is_panic() => {
            let panic = err.into_panic();
            let text = panic
                .downcast_ref::<&str>()
                .map(|s| (*s).to_string())
                .or_else(|| panic.downcast_ref::<String>().cloned())
                .unwrap_or_else(|| "a non-text payload".into());
            tracing::warn!(message_id = %id, panic = %text, "a message handler panicked");
            Err(format!("the handler panicked: {text}"))
        }
        Err(err) => Err(format!("the handler was cancelled: {err}")),
    }
}

/// The dead-letter copy of `message` after `deliveries` failed deliveries, the last with
/// `reason`. Its id derives from the original id and the component, so a repeat of the
/// dead-lettering (say, after a crash before the acknowledgement) is dropped as a duplicate.
pub(crate) fn dead_letter(
    component: &str,
    message: &Message,
    deliveries: u32,
    reason: &str,
) -> Message {
    let mut headers = message.headers.clone();
    // Line breaks are not allowed in header values.
    let reason: String = reason
        .chars()
        .map(|c| if c == '\r' || c == '\n' { ' ' } else { c })
        .take(1024)
        .collect();
    headers.push((DEAD_LETTER_REASON.into(), reason));
    headers.push((DEAD_LETTER_DELIVERIES.into(), deliveries.to_string()));
    headers.push((ORIGINAL_SUBJECT.into(), message.subject.clone()));
    headers.push((ORIGINAL_ID.into(), message.id.clone()));
    let seed = format!("agora-dead-letter\0{component}\0{}", message.id);
    Message {
        id: uuid::Uuid::new_v5(&uuid::Uuid::NAMESPACE_OID, seed.as_bytes()).to_string(),
        subject: crate::subject::dead_letter_subject(component, &message.subject),
        payload: message.payload.clone(),
        headers,
    }
}

/// The dead letter to publish when the broker refused `dead` (a dead letter made by
/// [`dead_letter`]) as invalid: the same without its payload (its size in
/// [`DEAD_LETTER_PAYLOAD_DROPPED`]) and with a reason cut short, so that only the headers must
/// fit. `sequence` is where the original stays in the stream, when the broker keeps one.
pub(crate) fn slim_dead_letter(dead: &Message, sequence: Option<u64>) -> Message {
    let mut slim = dead.clone();
    slim.payload = Vec::new();
    for (name, value) in &mut slim.headers {
        if name == DEAD_LETTER_REASON {
            *value = value.chars().take(200).collect();
        }
    }
    slim.headers.push((
        DEAD_LETTER_PAYLOAD_DROPPED.into(),
        dead.payload.len().to_string(),
    ));
    if let Some(sequence) = sequence {
        slim.headers
            .push((ORIGINAL_SEQUENCE.into(), sequence.to_string()));
    }
    slim
}

/// Headers in delivery order: sorted by name, values of one name in publish order.
pub(crate) fn sort_headers(headers: &mut [(String, String)]) {
    headers.sort_by(|a, b| a.0.cmp(&b.0));
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_doubles_up_to_its_bound() {
        let backoff = Backoff {
            initial: Duration::from_millis(100),
            max: Duration::from_secs(1),
        };
        assert_eq!(backoff.delay(1), Duration::from_millis(100));
        assert_eq!(backoff.delay(2), Duration::from_millis(200));
        assert_eq!(backoff.delay(3), Duration::from_millis(400));
        assert_eq!(backoff.delay(4), Duration::from_millis(800));
        assert_eq!(backoff.delay(5), Duration::from_secs(1));
        assert_eq!(backoff.delay(u32::MAX), Duration::from_secs(1));
        assert_eq!(backoff.delay(0), Duration::from_millis(100));
    }

    #[test]
    fn dead_letters_keep_headers_and_say_why() {
        let message = Message::new(
            "order.created",
            b"{}".to_vec(),
            vec![("k".into(), "v".into())],
        );
        let dead = dead_letter("billing", &message, 3, "boom\nagain");
        assert_eq!(dead.subject, "dlq.billing.order.created");
        assert_eq!(dead.payload, message.payload);
        assert_eq!(dead.header("k"), Some("v"));
        assert_eq!(dead.header(DEAD_LETTER_REASON), Some("boom again"));
        assert_eq!(dead.header(DEAD_LETTER_DELIVERIES), Some("3"));
        assert_eq!(dead.header(ORIGINAL_SUBJECT), Some("order.created"));
        assert_eq!(dead.header(ORIGINAL_ID), Some(message.id.as_str()));
        assert_ne!(dead.id, message.id);
        assert_eq!(dead.id, dead_letter("billing", &message, 3, "other").id);
        assert_ne!(dead.id, dead_letter("shipping", &message, 3, "boom").id);
    }

    #[test]
    fn specs_are_checked() {
        assert!(
            SubscriptionSpec::new("catalog", "order.*")
                .validate()
                .is_ok()
        );
        assert!(
            SubscriptionSpec::new("cat.alog", "order.*")
                .validate()
                .is_err()
        );
        assert!(
            SubscriptionSpec::new("catalog", "order..x")
                .validate()
                .is_err()
        );
        let mut spec = SubscriptionSpec::new("catalog", "order.created");
        spec.max_deliver = 0;
        assert!(spec.validate().is_err());
        let mut spec = SubscriptionSpec::new("catalog", "order.created");
        spec.concurrency = 0;
        assert!(spec.validate().is_err());
    }
}
