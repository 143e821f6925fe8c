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
//! process.

use crate::backend::{
    Delivery, Message, MessageHandler, MessagingBackend, MessagingError, Subscription,
    SubscriptionSpec, dead_letter, run_handler, sort_headers, stopped,
};
use crate::subject::{subject_matches, validate_headers, validate_subject};
use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::{Duration, Instant};
use tokio::sync::{Notify, Semaphore, watch};
use tokio::task::JoinSet;

/// How long a message id is remembered to drop repeats.
pub const DEDUP_WINDOW: Duration = Duration::from_secs(120);

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
}

impl Group {
    fn push(&self, pending: Pending) {
        lock(&self.queue).push_back(pending);
        self.ready.notify_one();
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
            if let Some(pending) = lock(&self.queue).pop_front() {
                return pending;
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
                    bus.deliver(group, &spec, handler, pending).await;
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
            if let Err(err) = self.publish(&dead).await {
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
        tokio::spawn(async move {
            tokio::time::sleep(delay).await;
            group.push(Pending {
                message,
                delivery: delivery.saturating_add(1),
            });
        });
    }
}

#[async_trait::async_trait]
impl MessagingBackend for MemoryBus {
    fn kind(&self) -> &'static str {
        "memory"
    }

    async fn publish(&self, message: &Message) -> Result<(), MessagingError> {
        validate_subject(&message.subject).map_err(MessagingError::Invalid)?;
        validate_headers(&message.headers).map_err(MessagingError::Invalid)?;
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
            .or_insert_with(|| {
                Arc::new(Group {
                    name: format!("{}/{}", spec.component, spec.subject),
                    queue: Mutex::new(VecDeque::new()),
                    ready: Notify::new(),
                })
            })
            .clone();
        let (stop, stop_rx) = watch::channel(());
        let task = tokio::spawn(self.deliver_loop(group, spec, handler, stop_rx));
        Ok(Subscription::new(stop, task))
    }

    async fn remove_consumer(&self, component: &str, subject: &str) -> Result<(), MessagingError> {
        lock(&self.inner.groups).remove(&(component.to_string(), subject.to_string()));
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

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
