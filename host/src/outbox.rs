//! The outbox relay: moves messages that components published inside SQL transactions from
//! their outbox table to the broker.
//!
//! A message published with `transaction.publish` is a row written in the component's own
//! transaction, so it exists exactly when the data does. One relay task per component with an
//! sql grant publishes those rows in order and deletes them once the broker confirmed each one:
//! right after every commit that wrote one (the namespace signals it), and every
//! [`SWEEP_INTERVAL`] anyway — which is what relays the rows a crashed host left behind when it
//! (or another replica) starts again. A relay repeated after a crash between publish and delete
//! publishes the same message id again, which JetStream deduplicates.

use crate::component::LoadedComponent;
use agora_messaging::Message;
use agora_sql::OutboxMessage;
use futures::future::BoxFuture;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::watch;
use tokio::task::JoinHandle;

/// How often the outbox is swept when no commit signals it.
pub const SWEEP_INTERVAL: Duration = Duration::from_secs(2);
/// Rows relayed per transaction.
const BATCH: usize = 100;

/// Starts the relay of `component`'s outbox; it stops when `stop` turns true, after a last
/// pass.
pub fn spawn(
    component: Arc<LoadedComponent>,
    mut stop: watch::Receiver<bool>,
) -> Option<JoinHandle<()>> {
    let namespace = component.capabilities.sql.clone()?;
    Some(tokio::spawn(async move {
        let signal = namespace.outbox_signal();
        loop {
            relay_all(&component, namespace.as_ref()).await;
            if *stop.borrow() {
                break;
            }
            tokio::select! {
                () = signal.notified() => {}
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

/// Relays until the outbox is empty or the broker or database fails (the next pass retries).
async fn relay_all(component: &Arc<LoadedComponent>, namespace: &dyn agora_sql::Namespace) {
    let owner = component.clone();
    let publish = publisher(move |row| {
        let component = owner.clone();
        let message = Message {
            id: row.id.clone(),
            subject: row.subject.clone(),
            payload: row.payload.clone(),
            headers: row.headers.clone(),
        };
        Box::pin(async move {
            let granted = &component.capabilities;
            // The grant was checked when the row was written; a row the component inserted
            // into the table by hand is checked here, and dropped if it is not allowed.
            if !granted.may_publish(&message.subject) {
                tracing::error!(
                    component = %component.name,
                    subject = %message.subject,
                    message_id = %message.id,
                    "outbox row for a subject the component may not publish to; dropped"
                );
                return Ok(());
            }
            granted
                .messaging
                .publish(&message)
                .await
                .map_err(|err| err.to_string())
        })
    });
    loop {
        match namespace.relay_outbox(BATCH, &publish).await {
            Ok(relayed) if relayed == BATCH => continue,
            Ok(0) => return,
            Ok(relayed) => {
                tracing::debug!(component = %component.name, relayed, "outbox relayed");
                return;
            }
            Err(err) => {
                tracing::warn!(component = %component.name, error = %err, "outbox relay failed; retrying later");
                return;
            }
        }
    }
}

/// Gives a closure the higher-ranked signature `relay_outbox` expects.
fn publisher<F>(f: F) -> F
where
    F: for<'a> Fn(&'a OutboxMessage) -> BoxFuture<'a, Result<(), String>> + Send + Sync,
{
    f
}
