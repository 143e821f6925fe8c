//! The outbox relay: moves messages that components published inside SQL transactions from
//! their outbox table to the broker.
//!
//! A message published with `transaction.publish` is a row written in the component's own
//! transaction, so it exists exactly when the data does. One relay task per component with an
//! sql grant publishes those rows in order and deletes them once the broker confirmed each one:
//! right after a commit that wrote one (the namespace signals it; under a stream of commits,
//! passes start at most every [`GATHER`], each taking what the commits meanwhile wrote), and every
//! [`SWEEP_INTERVAL`] anyway — which is what relays the rows a crashed host left behind when it
//! (or another replica) starts again. A relay repeated after a crash between publish and delete
//! publishes the same message id again, which JetStream deduplicates.
//!
//! A row the broker refuses for good (its subject, headers or size break the broker's rules —
//! `transaction.publish` already refuses such a message, so only a row written with plain SQL
//! or a broker reconfigured since can be one) or for a subject the component may not publish
//! to is moved to the component's `_agora_outbox_dead` table, logged and counted, and the
//! relay goes on with the next rows. A broker that is unreachable stops the pass, keeping that
//! row and the ones after it for the next.

use crate::component::LoadedComponent;
use agora_messaging::{Message, MessagingBackend, MessagingError};
use agora_sql::{OutboxMessage, RelayError};
use futures::future::BoxFuture;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};
use tokio::sync::watch;
use tokio::task::JoinHandle;
use tracing::Instrument as _;

/// How often the outbox is swept when no commit signals it.
pub const SWEEP_INTERVAL: Duration = Duration::from_secs(2);
/// How often [`settle`] looks again while messages are still being handled.
const SETTLE_POLL: Duration = Duration::from_millis(20);
/// How often the relay counts what waits in the outbox (the backlog gauges).
const BACKLOG_INTERVAL: Duration = Duration::from_secs(1);
/// Rows relayed per transaction.
const BATCH: usize = 100;
/// The shortest time between the starts of two relay passes of one component woken by
/// commits: under a stream of commits, a pass waits this long for more rows to take along
/// (one transaction and one round of broker confirmations for all of them) instead of one
/// pass per commit. A commit after a quiet spell is relayed at once.
const GATHER: Duration = Duration::from_millis(2);

/// Starts the relay of `component`'s outbox; it stops when `stop` turns true, after a last
/// pass.
pub fn spawn(
    component: Arc<LoadedComponent>,
    mut stop: watch::Receiver<bool>,
) -> Option<JoinHandle<()>> {
    component.capabilities.database()?;
    Some(tokio::spawn(async move {
        let Some(database) = component.capabilities.database() else {
            return;
        };
        let namespace = database.namespace();
        let signal = namespace.outbox_signal();
        let dead = Arc::new(AtomicU64::new(0));
        let pending = crate::metrics::metrics()
            .outbox_pending
            .with([&*component.name]);
        let oldest = crate::metrics::metrics()
            .outbox_oldest
            .with([&*component.name]);
        let mut looked: Option<std::time::Instant> = None;
        // A pass woken by a commit that wrote the outbox is a span of its own; the sweeps
        // every SWEEP_INTERVAL, which mostly find nothing, are not.
        let mut woken = false;
        let mut last_pass = Instant::now();
        loop {
            if woken {
                tokio::time::sleep_until((last_pass + GATHER).into()).await;
            }
            last_pass = Instant::now();
            let pass = relay_all(&component, database, &dead);
            if woken {
                pass.instrument(tracing::debug_span!(
                    target: agora_capability::SPAN_TARGET,
                    "outbox relay",
                    component = %component.name,
                    "otel.name" = "outbox relay",
                    "otel.kind" = "producer",
                ))
                .await;
            } else {
                pass.await;
            }
            // The backlog gauges, at most once per BACKLOG_INTERVAL (a relay pass follows
            // every commit that wrote the outbox; counting after each would double the
            // database work of a busy component).
            if looked.is_none_or(|at| at.elapsed() >= BACKLOG_INTERVAL) {
                looked = Some(std::time::Instant::now());
                match namespace.outbox_backlog().await {
                    Ok(backlog) => {
                        pending.set(backlog.rows as f64);
                        oldest.set(backlog.oldest_seconds);
                    }
                    Err(err) => {
                        tracing::debug!(component = %component.name, error = %err, "outbox backlog unknown");
                    }
                }
            }
            if *stop.borrow() {
                break;
            }
            woken = false;
            tokio::select! {
                () = signal.notified() => woken = true,
                () = tokio::time::sleep(SWEEP_INTERVAL) => {}
                changed = stop.changed() => {
                    // The host is gone without saying stop: nothing left to relay for.
                    if changed.is_err() {
                        break;
                    }
                }
            }
        }
    }))
}

/// Relays until the outbox is empty or the broker or database fails (the next pass retries);
/// `dead` counts the rows this relay moved to the dead-letter table. Returns how many rows
/// left the outbox.
pub async fn relay_all(
    component: &Arc<LoadedComponent>,
    database: &agora_sql::Database,
    dead: &Arc<AtomicU64>,
) -> usize {
    let name = component.name.clone();
    let counter = dead.clone();
    let broker = database.publisher().cloned();
    let publish = publisher(move |row| {
        let name = name.clone();
        let broker = broker.clone();
        let dead = counter.clone();
        let message = Message {
            id: row.id.clone(),
            subject: row.subject.clone(),
            payload: row.payload.clone(),
            headers: row.headers.clone(),
        };
        Box::pin(async move {
            // The grant was checked when the row was written; a row the component inserted
            // into the table by hand is checked here, and set aside if it is not allowed.
            let refusal = match broker {
                Some(broker) if broker.may_publish(&message.subject) => {
                    match broker.backend().publish(&message).await {
                        Ok(()) => return Ok(()),
                        Err(MessagingError::Unavailable(reason)) => {
                            return Err(RelayError::Retry(reason));
                        }
                        Err(MessagingError::Invalid(reason)) => reason,
                    }
                }
                _ => format!(
                    "component `{name}` may not publish to `{}`",
                    message.subject
                ),
            };
            let total = dead.fetch_add(1, Ordering::Relaxed) + 1;
            tracing::error!(
                component = %name,
                subject = %message.subject,
                message_id = %message.id,
                reason = %refusal,
                dead_letters = total,
                "outbox row can never be published; moved to _agora_outbox_dead"
            );
            Err(RelayError::Reject(refusal))
        })
    });
    let mut total = 0;
    loop {
        match database.namespace().relay_outbox(BATCH, &publish).await {
            Ok(relayed) if relayed == BATCH => total += relayed,
            Ok(relayed) => {
                if relayed > 0 {
                    tracing::debug!(component = %component.name, relayed, "outbox relayed");
                }
                return total + relayed;
            }
            Err(err) => {
                tracing::warn!(component = %component.name, error = %err, "outbox relay failed; retrying later");
                return total;
            }
        }
    }
}

/// Gives a closure the higher-ranked signature `relay_outbox` expects.
fn publisher<F>(f: F) -> F
where
    F: for<'a> Fn(&'a OutboxMessage) -> BoxFuture<'a, Result<(), RelayError>> + Send + Sync,
{
    f
}

/// Before a shutdown: relays every outbox and waits until the broker holds nothing this
/// process has not finished handling ([`MessagingBackend::unhandled`]: only the in-process bus
/// holds any), or until `deadline`. Returns whether everything settled. The subscriptions and
/// relays keep running meanwhile.
pub async fn settle(
    components: &[Arc<LoadedComponent>],
    messaging: &Arc<dyn MessagingBackend>,
    deadline: Instant,
) -> bool {
    let dead = Arc::new(AtomicU64::new(0));
    loop {
        let mut relayed = 0;
        for component in components {
            if let Some(database) = component.capabilities.database() {
                relayed += relay_all(component, database, &dead).await;
            }
        }
        if relayed == 0 && messaging.unhandled() == 0 {
            return true;
        }
        if Instant::now() >= deadline {
            return false;
        }
        tokio::time::sleep(SETTLE_POLL).await;
    }
}

/// After every subscription and relay stopped: takes what the broker still holds unhandled
/// (the in-process bus: messages queued or waiting out a backoff) and writes each back to the
/// outbox of the first component with an sql grant that may publish its subject, to be
/// relayed on the next start. Returns how many were kept; a message no component could
/// have published (a dead letter) is logged as lost.
pub async fn keep_unhandled(
    components: &[Arc<LoadedComponent>],
    messaging: &Arc<dyn MessagingBackend>,
) -> usize {
    let unhandled = messaging.take_unhandled();
    if unhandled.is_empty() {
        return 0;
    }
    let mut kept = 0;
    for message in unhandled {
        let home = components.iter().find_map(|component| {
            let database = component.capabilities.database()?;
            database
                .may_publish(&message.subject)
                .then_some((component, database.namespace()))
        });
        let Some((component, namespace)) = home else {
            tracing::error!(
                subject = %message.subject,
                message_id = %message.id,
                "an unhandled message of the in-process bus has no outbox to go back to; lost"
            );
            continue;
        };
        let row = OutboxMessage {
            id: message.id.clone(),
            subject: message.subject.clone(),
            payload: message.payload,
            headers: message.headers,
        };
        let written = async {
            let mut tx = namespace.begin().await?;
            tx.outbox_insert(&row).await?;
            tx.commit().await
        }
        .await;
        match written {
            Ok(()) => kept += 1,
            // Still in the outbox: it was never taken off.
            Err(agora_sql::SqlError::UniqueViolation(_)) => kept += 1,
            Err(err) => tracing::error!(
                component = %component.name,
                subject = %row.subject,
                message_id = %row.id,
                error = %err,
                "cannot write an unhandled message back to the outbox; lost"
            ),
        }
    }
    tracing::info!(
        kept,
        "unhandled messages of the in-process bus written back to their outboxes, for the next start"
    );
    kept
}
