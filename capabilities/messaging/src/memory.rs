//! The embedded default: an in-process bus with the delivery contract of the NATS backend.
//!
//! Each (component, subject) pair is a consumer group with one queue; every subscription of
//! the pair takes from that queue, so each message goes to one of them. A publish puts the
//! message into the queue of every group whose subject matches. A failed delivery goes back
//! into its queue after the backoff delay; after `max_deliver` failures the message is
//! published to its dead-letter subject instead. Ids seen in the last two minutes are dropped
//! on publish, as JetStream's duplicate window does.
//!
//! Unlike JetStream, the bus keeps nothing for consumers that do not exist yet: a message
//! published to a subject no subscription has ever matched is dropped. A group, once created,
//! keeps queueing while it has no running subscription (between a stop and the next subscribe,
//! as during a hot swap), up to [`MAX_QUEUED`] messages. Nothing survives a restart of the
//! process by itself: the host drains the bus before it exits and hands what is still
//! unhandled back to an outbox ([`MessagingBackend::unhandled`],
//! [`MessagingBackend::take_unhandled`]).

use crate::backend::{
    Delivery, Message, MessageHandler, MessagingBackend, MessagingError, Subscription,
    SubscriptionSpec, dead_letter, run_handler, slim_dead_letter, sort_headers, stopped,
};
use crate::subject::{subject_matches, validate_headers, validate_subject};
use std::collections::{HashMap, VecDeque};
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::{Duration, Instant};
use tokio::sync::{Notify, Semaphore, watch};
use tokio::task::JoinSet;

/// How long a message id is remembered to drop repeats.
pub const DEDUP_WINDOW: Duration = Duration::from_secs(120);

/// The largest message the bus takes: its payload plus, for each header, its name, its value
/// and 4 bytes (`": "` and the line end) — the size NATS counts against a server's default
/// `max_payload` of 1 MiB, so that what the embedded bus takes NATS takes too, by default.
pub const MAX_MESSAGE_BYTES: usize = 1 << 20;

/// Most messages one consumer group holds waiting; a publish that would go beyond it is
/// refused as `Unavailable` (an outbox keeps the message and retries) — nothing accepted is
/// dropped.
pub const MAX_QUEUED: usize = 100_000;

/// Locks a mutex; every critical section here is a single collection operation, so a panic
/// elsewhere cannot leave the data inconsistent and a poisoned lock is still usable.
fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(PoisonError::into_inner)
}

struct Pending {
    message: Message,
    delivery: u32,
}

/// The queue of one (component, subject) pair, shared by its subscriptions.
struct Group {
    name: String,
    queue: Mutex<VecDeque<Pending>>,
    ready: Notify,
    /// Taken from the queue, its delivery not finished (handled, dead-lettered or scheduled
    /// for redelivery).
    in_flight: AtomicUsize,
    /// Failed messages waiting out their backoff, by a token their timer holds. Lock order:
    /// `delayed`, then `queue`.
    delayed: Mutex<HashMap<u64, Pending>>,
    next_token: AtomicU64,
}

impl Group {
    fn new(name: String) -> Group {
        Group {
            name,
            queue: Mutex::new(VecDeque::new()),
            ready: Notify::new(),
            in_flight: AtomicUsize::new(0),
            delayed: Mutex::new(HashMap::new()),
            next_token: AtomicU64::new(0),
        }
    }

    fn push(&self, pending: Pending) {
        lock(&self.queue).push_back(pending);
        self.ready.notify_one();
    }

    /// Messages of this group not yet finished with: queued, being handled or waiting out a
    /// backoff (one moving between those may be counted twice, never missed).
    fn unhandled(&self) -> usize {
        let delayed = lock(&self.delayed);
        let queue = lock(&self.queue);
        delayed.len() + queue.len() + self.in_flight.load(Ordering::SeqCst)
    }

    /// Puts `pending` back into the queue after `delay`, unless taken meanwhile.
    fn redeliver_after(self: Arc<Self>, delay: Duration, pending: Pending) {
        let token = self.next_token.fetch_add(1, Ordering::Relaxed);
        lock(&self.delayed).insert(token, pending);
        tokio::spawn(async move {
            tokio::time::sleep(delay).await;
            let mut delayed = lock(&self.delayed);
            if let Some(pending) = delayed.remove(&token) {
                self.push(pending);
            }
        });
    }

    fn is_full(&self) -> bool {
        lock(&self.queue).len() >= MAX_QUEUED
    }

    /// Waits for the next message of the queue.
    async fn next(&self) -> Pending {
        loop {
            let notified = self.ready.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            {
                let mut queue = lock(&self.queue);
                if let Some(pending) = queue.pop_front() {
                    self.in_flight.fetch_add(1, Ordering::SeqCst);
                    return pending;
                }
            }
            notified.await;
        }
    }
}

#[derive(Default)]
struct Dedup {
    seen: HashMap<String, Instant>,
    order: VecDeque<(Instant, String)>,
}

impl Dedup {
    /// Records `id`; false if it was already seen within the window.
    fn first_time(&mut self, id: &str, now: Instant) -> bool {
        while let Some((at, _)) = self.order.front() {
            if now.duration_since(*at) < DEDUP_WINDOW {
                break;
            }
            if let Some((at, old)) = self.order.pop_front()
                && self.seen.get(&old) == Some(&at)
            {
                self.seen.remove(&old);
            }
        }
        if self.seen.contains_key(id) {
            return false;
        }
        self.seen.insert(id.to_string(), now);
        self.order.push_back((now, id.to_string()));
        true
    }
}

#[derive(Default)]
struct Inner {
    groups: Mutex<HashMap<(String, String), Arc<Group>>>,
    dedup: Mutex<Dedup>,
}

/// The in-process message bus. Clones share the same bus.
#[derive(Clone, Default)]
pub struct MemoryBus {
    inner: Arc<Inner>,
}

impl MemoryBus {
    /// An empty bus.
    pub fn new() -> MemoryBus {
        MemoryBus::default()
    }

    /// How many messages wait in the queue of (component, subject), for tests and metrics.
    pub fn queued(&self, component: &str, subject: &str) -> usize {
        lock(&self.inner.groups)
            .get(&(component.to_string(), subject.to_string()))
            .map_or(0, |group| lock(&group.queue).len())
    }

    fn deliver_loop(
        &self,
        group: Arc<Group>,
        spec: SubscriptionSpec,
        handler: Arc<dyn MessageHandler>,
        mut stop: watch::Receiver<()>,
    ) -> impl Future<Output = ()> + Send + 'static {
        let bus = self.clone();
        async move {
            let spec = Arc::new(spec);
            let permits = Arc::new(Semaphore::new(spec.concurrency));
            let mut tasks = JoinSet::new();
            loop {
                let permit = tokio::select! {
                    biased;
                    () = stopped(&mut stop) => break,
                    permit = permits.clone().acquire_owned() => match permit {
                        Ok(permit) => permit,
                        Err(_) => break,
                    },
                };
                let pending = tokio::select! {
                    biased;
                    () = stopped(&mut stop) => break,
                    pending = group.next() => pending,
                };
                let (bus, group, spec, handler) =
                    (bus.clone(), group.clone(), spec.clone(), handler.clone());
                tasks.spawn(async move {
                    bus.deliver(group.clone(), &spec, handler, pending).await;
                    group.in_flight.fetch_sub(1, Ordering::SeqCst);
                    drop(permit);
                });
                while tasks.try_join_next().is_some() {}
            }
            // This loop may have consumed a wake-up meant for a message it will not take:
            // pass it on to the group's other subscriptions.
            group.ready.notify_one();
            while tasks.join_next().await.is_some() {}
        }
    }

    async fn deliver(
        &self,
        group: Arc<Group>,
        spec: &SubscriptionSpec,
        handler: Arc<dyn MessageHandler>,
        pending: Pending,
    ) {
        let Pending { message, delivery } = pending;
        let result = run_handler(
            handler,
            Delivery {
                message: message.clone(),
                delivery,
            },
        )
        .await;
        let Err(reason) = result else {
            return;
        };
        if delivery >= spec.max_deliver {
            let dead = dead_letter(&spec.component, &message, delivery, &reason);
            tracing::warn!(
                component = %spec.component,
                message_id = %message.id,
                dead_letter_subject = %dead.subject,
                %reason,
                delivery,
                "message failed its last delivery; dead-lettered"
            );
            let published = match self.publish(&dead).await {
                // Too large with the dead-letter headers: the headers alone, then.
                Err(MessagingError::Invalid(_)) => {
                    self.publish(&slim_dead_letter(&dead, None)).await
                }
                other => other,
            };
            if let Err(err) = published {
                tracing::error!(
                    component = %spec.component,
                    message_id = %message.id,
                    error = %err,
                    "cannot publish a dead letter; the message is dropped"
                );
            }
            return;
        }
        let delay = spec.backoff.delay(delivery);
        tracing::debug!(
            component = %spec.component,
            message_id = %message.id,
            %reason,
            delivery,
            delay_ms = delay.as_millis(),
            "message handler failed; redelivering after the backoff"
        );
        group.redeliver_after(
            delay,
            Pending {
                message,
                delivery: delivery.saturating_add(1),
            },
        );
    }
}

#[async_trait::async_trait]
impl MessagingBackend for MemoryBus {
    fn kind(&self) -> &'static str {
        "memory"
    }

    fn check(&self, message: &Message) -> Result<(), MessagingError> {
        validate_subject(&message.subject).map_err(MessagingError::Invalid)?;
        validate_headers(&message.headers).map_err(MessagingError::Invalid)?;
        let size = message.payload.len()
            + message
                .headers
                .iter()
                .map(|(name, value)| name.len() + value.len() + 4)
                .sum::<usize>();
        if size > MAX_MESSAGE_BYTES {
            return Err(MessagingError::Invalid(format!(
                "in-process bus: the message is {size} bytes with its headers, over the \
                 {MAX_MESSAGE_BYTES}-byte limit"
            )));
        }
        Ok(())
    }

    async fn publish(&self, message: &Message) -> Result<(), MessagingError> {
        self.check(message)?;
        let targets: Vec<Arc<Group>> = lock(&self.inner.groups)
            .iter()
            .filter(|((_, pattern), _)| subject_matches(pattern, &message.subject))
            .map(|(_, group)| group.clone())
            .collect();
        if let Some(full) = targets.iter().find(|group| group.is_full()) {
            return Err(MessagingError::Unavailable(format!(
                "in-process bus: consumer {} already holds {MAX_QUEUED} undelivered messages",
                full.name
            )));
        }
        if !lock(&self.inner.dedup).first_time(&message.id, Instant::now()) {
            tracing::debug!(message_id = %message.id, "duplicate publish dropped");
            return Ok(());
        }
        let mut message = message.clone();
        sort_headers(&mut message.headers);
        for group in targets {
            group.push(Pending {
                message: message.clone(),
                delivery: 1,
            });
        }
        Ok(())
    }

    async fn subscribe(
        &self,
        spec: SubscriptionSpec,
        handler: Arc<dyn MessageHandler>,
    ) -> Result<Subscription, MessagingError> {
        spec.validate()?;
        let group = lock(&self.inner.groups)
            .entry((spec.component.clone(), spec.subject.clone()))
            .or_insert_with(|| Arc::new(Group::new(format!("{}/{}", spec.component, spec.subject))))
            .clone();
        let (stop, stop_rx) = watch::channel(());
        let task = tokio::spawn(self.deliver_loop(group, spec, handler, stop_rx));
        Ok(Subscription::new(stop, task))
    }

    async fn remove_consumer(&self, component: &str, subject: &str) -> Result<(), MessagingError> {
        lock(&self.inner.groups).remove(&(component.to_string(), subject.to_string()));
        Ok(())
    }

    fn unhandled(&self) -> usize {
        let groups: Vec<Arc<Group>> = lock(&self.inner.groups).values().cloned().collect();
        groups.iter().map(|group| group.unhandled()).sum()
    }

    fn take_unhandled(&self) -> Vec<Message> {
        let groups: Vec<Arc<Group>> = lock(&self.inner.groups).values().cloned().collect();
        let mut seen = std::collections::HashSet::new();
        let mut taken = Vec::new();
        for group in groups {
            let mut delayed = lock(&group.delayed);
            let mut queue = lock(&group.queue);
            let pending = delayed
                .drain()
                .map(|(_, pending)| pending)
                .chain(queue.drain(..));
            for Pending { message, .. } in pending {
                if seen.insert(message.id.clone()) {
                    taken.push(message);
                }
            }
        }
        taken
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use crate::backend::{Backoff, Delivery};

    /// Fails every delivery, telling the test each time.
    struct Failing(Arc<Notify>);

    #[async_trait::async_trait]
    impl MessageHandler for Failing {
        async fn handle(&self, _delivery: Delivery) -> Result<(), String> {
            self.0.notify_one();
            Err("not now".into())
        }
    }

    #[tokio::test]
    async fn what_is_unhandled_is_counted_and_can_be_taken_once() {
        let bus = MemoryBus::new();
        let seen = Arc::new(Notify::new());
        let mut spec = SubscriptionSpec::new("billing", "order.*");
        spec.backoff = Backoff {
            initial: Duration::from_secs(3600),
            max: Duration::from_secs(3600),
        };
        let subscription = bus
            .subscribe(spec, Arc::new(Failing(seen.clone())))
            .await
            .unwrap();
        let other = bus
            .subscribe(
                SubscriptionSpec::new("audit", "order.created"),
                Arc::new(Failing(Arc::new(Notify::new()))),
            )
            .await
            .unwrap();
        other.stop().await;
        assert_eq!(bus.unhandled(), 0);

        // One message for two groups: one waits out a backoff, the other in a queue.
        let message = Message::new("order.created", b"{}".to_vec(), vec![]);
        bus.publish(&message).await.unwrap();
        seen.notified().await;
        subscription.stop().await;
        assert_eq!(bus.unhandled(), 2);
        let taken = bus.take_unhandled();
        assert_eq!(taken, vec![message], "once, however many groups held it");
        assert_eq!(bus.unhandled(), 0);
        assert!(bus.take_unhandled().is_empty());
    }

    #[tokio::test]
    async fn a_message_over_the_limit_is_invalid() {
        let bus = MemoryBus::new();
        let fits = Message::new(
            "a.b",
            vec![0; MAX_MESSAGE_BYTES - 6],
            vec![("k".into(), "v".into())],
        );
        assert_eq!(bus.check(&fits), Ok(()));
        let over = Message::new(
            "a.b",
            vec![0; MAX_MESSAGE_BYTES - 5],
            vec![("k".into(), "v".into())],
        );
        assert!(matches!(bus.check(&over), Err(MessagingError::Invalid(_))));
        assert!(matches!(
            bus.publish(&over).await,
            Err(MessagingError::Invalid(_))
        ));
    }

    #[test]
    fn dedup_forgets_after_the_window() {
        let mut dedup = Dedup::default();
        let start = Instant::now();
        assert!(dedup.first_time("a", start));
        assert!(!dedup.first_time("a", start + Duration::from_secs(1)));
        assert!(dedup.first_time("b", start + Duration::from_secs(2)));
        assert!(dedup.first_time("a", start + DEDUP_WINDOW + Duration::from_secs(1)));
        assert!(!dedup.first_time("b", start + DEDUP_WINDOW + Duration::from_secs(1)));
        assert_eq!(dedup.seen.len(), 2);
    }
}
