//! A host as a replica of a fleet: it runs the fleet's desired versions.
//!
//! At load, before the first request, each component whose desired version (set by `agora
//! deploy`, see [`crate::fleet`]) differs from the manifest's file is fetched, validated and
//! swapped in, so a replica that starts late comes up on the versions the others run. While it
//! serves, it follows the desired versions as they change. A version that fails validation is
//! refused: the replica keeps what it runs and reports the reason, which `agora status` shows.
//! Every [`fleet::REPORT_INTERVAL`] (and after every change) the replica reports the version
//! each of its components runs.

use crate::component::Installed;
use crate::fleet::timestamp as rfc3339;
use crate::fleet::{self, ComponentReport, Desired, Fleet, ReplicaReport};
use crate::swap::{Components, Outcome, Version};
use futures::{Stream, StreamExt as _};
use std::collections::HashMap;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::time::SystemTime;
use tokio::sync::watch;
use tokio::task::JoinHandle;

/// Desired-version changes, as the fleet streams them.
pub type Updates = Pin<Box<dyn Stream<Item = Result<Desired, fleet::FleetError>> + Send>>;

/// This host's membership in a fleet.
pub struct Replica {
    fleet: Fleet,
    components: Arc<Components>,
    id: String,
    hostname: String,
    started_at: String,
    /// Per component: the desired digest and, when it was refused, why.
    desired: Mutex<HashMap<String, (String, Option<String>)>>,
}

impl Replica {
    /// Joins `fleet`: watches its desired versions and applies the current ones. Returns the
    /// replica and the changes that follow (consumed by [`Replica::spawn`]).
    pub async fn join(
        fleet: Fleet,
        components: Arc<Components>,
    ) -> Result<(Arc<Replica>, Updates), fleet::FleetError> {
        // Watch first, then read: a deploy between the two is seen twice rather than missed
        // (applying a version already running changes nothing).
        let updates: Updates = Box::pin(fleet.watch().await?);
        let desired = fleet.desired().await?;
        let replica = Arc::new(Replica {
            fleet,
            components,
            id: fleet::new_replica_id(),
            hostname: fleet::hostname(),
            started_at: rfc3339(SystemTime::now()),
            desired: Mutex::new(HashMap::new()),
        });
        tracing::info!(fleet = replica.fleet.name(), replica = %replica.id, desired = desired.len(), "joined the fleet");
        for wanted in desired {
            replica.apply(wanted).await;
        }
        Ok((replica, updates))
    }

    /// This replica's id in reports.
    pub fn id(&self) -> &str {
        &self.id
    }

    /// Runs the desired version `wanted` if it names one of this host's components; records a
    /// refusal otherwise.
    async fn apply(&self, wanted: Desired) {
        let name = wanted.component.clone();
        let Some(slot) = self.components.get(&name) else {
            tracing::warn!(component = %name, digest = %wanted.digest, "the fleet deploys a component this manifest does not have; ignored");
            return;
        };
        let running = slot.current().digest.clone();
        let refusal = if running == wanted.digest {
            None
        } else {
            match self.fleet.fetch(&wanted).await {
                Err(err) => Some(format!("cannot fetch it: {err}")),
                Ok(bytes) => match self
                    .components
                    .install(&name, bytes, Installed::Fleet)
                    .await
                {
                    Ok(Outcome::Swapped(_) | Outcome::Unchanged(_)) => None,
                    Err(err) => Some(err.to_string()),
                },
            }
        };
        if let Some(reason) = &refusal {
            tracing::warn!(component = %name, digest = %wanted.digest, %reason, "desired version refused; the running one keeps serving");
        }
        self.desired
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .insert(name, (wanted.digest, refusal));
    }

    /// A new watch after the old one ended, with the desired versions read again (changes in
    /// the gap are not lost).
    async fn rewatch(&self) -> Option<Updates> {
        let updates: Updates = match self.fleet.watch().await {
            Ok(updates) => Box::pin(updates),
            Err(err) => {
                tracing::warn!(error = %err, "cannot watch the fleet yet");
                return None;
            }
        };
        match self.fleet.desired().await {
            Ok(desired) => {
                for wanted in desired {
                    self.apply(wanted).await;
                }
                tracing::info!("watching the fleet again");
                Some(updates)
            }
            Err(err) => {
                tracing::warn!(error = %err, "cannot read the fleet's desired versions yet");
                None
            }
        }
    }

    /// What this replica runs now.
    fn report(&self) -> ReplicaReport {
        let desired = self
            .desired
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .clone();
        ReplicaReport {
            replica: self.id.clone(),
            hostname: self.hostname.clone(),
            started_at: self.started_at.clone(),
            reported_at: rfc3339(SystemTime::now()),
            components: self
                .components
                .slots()
                .iter()
                .map(|slot| {
                    let current = slot.current();
                    let version = Version::of(&current);
                    let wanted = desired.get(&**slot.name());
                    ComponentReport {
                        name: slot.name().to_string(),
                        digest: current.digest.clone(),
                        loaded_at: version.loaded_at,
                        desired: wanted.map(|(digest, _)| digest.clone()),
                        error: wanted.and_then(|(_, error)| error.clone()),
                    }
                })
                .collect(),
        }
    }

    async fn publish_report(&self) {
        if let Err(err) = self.fleet.report(&self.report()).await {
            tracing::warn!(error = %err, "cannot report to the fleet; retrying later");
        }
    }

    /// Follows `updates` and reports until `stop` turns true; then withdraws the report.
    pub fn spawn(
        self: Arc<Replica>,
        mut updates: Updates,
        mut stop: watch::Receiver<bool>,
    ) -> JoinHandle<()> {
        tokio::spawn(async move {
            self.publish_report().await;
            let mut tick = tokio::time::interval(fleet::REPORT_INTERVAL);
            tick.reset();
            let mut watching = true;
            loop {
                tokio::select! {
                    _ = stop.changed() => break,
                    _ = tick.tick() => self.publish_report().await,
                    update = updates.next(), if watching => match update {
                        Some(Ok(wanted)) => {
                            self.apply(wanted).await;
                            self.publish_report().await;
                        }
                        Some(Err(err)) => {
                            tracing::warn!(error = %err, "fleet watch error");
                        }
                        None => {
                            tracing::warn!("the fleet's watch ended; watching again on the next report");
                            watching = false;
                        }
                    },
                }
                if !watching && let Some(again) = self.rewatch().await {
                    updates = again;
                    watching = true;
                }
            }
            if let Err(err) = self.fleet.withdraw(&self.id).await {
                tracing::debug!(error = %err, "cannot withdraw the fleet report");
            }
        })
    }
}
