//! The embedded default: revocation state in this process. Sessions do not survive a restart
//! and are not shared with other replicas: use Redis when more than one host runs.

use crate::store::{RevocationStore, StoreError, UseOutcome};
use std::collections::{HashMap, HashSet};
use std::sync::Mutex;
use std::time::{Duration, Instant};

struct Refresh {
    family: String,
    used: bool,
    expires: Instant,
}

struct Subject {
    families: HashSet<String>,
    expires: Instant,
}

#[derive(Default)]
struct State {
    refresh: HashMap<String, Refresh>,
    revoked: HashMap<String, Instant>,
    subjects: HashMap<String, Subject>,
    writes: u64,
}

impl State {
    /// Drops expired records every 1024 writes, so memory stays bounded by live sessions.
    fn sweep(&mut self, now: Instant) {
        self.writes += 1;
        if !self.writes.is_multiple_of(1024) {
            return;
        }
        self.refresh.retain(|_, r| r.expires > now);
        self.revoked.retain(|_, at| *at > now);
        self.subjects.retain(|_, s| s.expires > now);
    }
}

/// The in-memory revocation store.
#[derive(Default)]
pub struct MemoryRevocationStore {
    state: Mutex<State>,
}

impl MemoryRevocationStore {
    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        // Every mutation is a single map operation: a poisoned lock is still consistent.
        self.state
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }
}

#[async_trait::async_trait]
impl RevocationStore for MemoryRevocationStore {
    async fn register(
        &self,
        subject: &str,
        family: &str,
        jti: &str,
        ttl: Duration,
    ) -> Result<(), StoreError> {
        let now = Instant::now();
        let expires = now + ttl;
        let mut state = self.lock();
        state.sweep(now);
        state.refresh.insert(
            jti.to_owned(),
            Refresh {
                family: family.to_owned(),
                used: false,
                expires,
            },
        );
        let entry = state
            .subjects
            .entry(subject.to_owned())
            .or_insert_with(|| Subject {
                families: HashSet::new(),
                expires,
            });
        if entry.expires <= now {
            entry.families.clear();
        }
        entry.families.insert(family.to_owned());
        entry.expires = entry.expires.max(expires);
        Ok(())
    }

    async fn mark_used(&self, jti: &str) -> Result<UseOutcome, StoreError> {
        let now = Instant::now();
        let mut state = self.lock();
        match state.refresh.get_mut(jti) {
            Some(record) if record.expires > now => {
                let family = record.family.clone();
                if std::mem::replace(&mut record.used, true) {
                    Ok(UseOutcome::Reused { family })
                } else {
                    Ok(UseOutcome::Fresh { family })
                }
            }
            _ => Ok(UseOutcome::Unknown),
        }
    }

    async fn revoke_family(&self, family: &str, ttl: Duration) -> Result<(), StoreError> {
        let now = Instant::now();
        let mut state = self.lock();
        state.sweep(now);
        let until = state.revoked.entry(family.to_owned()).or_insert(now);
        *until = (*until).max(now + ttl);
        Ok(())
    }

    async fn is_family_revoked(&self, family: &str) -> Result<bool, StoreError> {
        let now = Instant::now();
        Ok(self.lock().revoked.get(family).is_some_and(|at| *at > now))
    }

    async fn revoke_subject(&self, subject: &str, ttl: Duration) -> Result<usize, StoreError> {
        let now = Instant::now();
        let mut state = self.lock();
        state.sweep(now);
        let Some(found) = state.subjects.remove(subject) else {
            return Ok(0);
        };
        let count = found.families.len();
        for family in found.families {
            let until = state.revoked.entry(family).or_insert(now);
            *until = (*until).max(now + ttl);
        }
        Ok(count)
    }

    fn kind(&self) -> &'static str {
        "memory"
    }
}
