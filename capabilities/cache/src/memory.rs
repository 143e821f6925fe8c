//! The embedded default: an in-process cache, bounded in entries and bytes, TTL-aware.
//!
//! Expired entries are dropped when read and are the first to go when room is needed; beyond
//! that the least recently used entry is evicted. Each namespace's live keys are counted, so a
//! component at its quota gets an error for a new key instead of evicting others' entries. A
//! single mutex guards the map: every operation is a hash lookup, so contention stays low at
//! the request rates one host serves.

use crate::backend::{BackendError, CacheBackend, Quota};
use lru::LruCache;
use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

struct Entry {
    value: Vec<u8>,
    expires: Option<Instant>,
    namespace: Arc<str>,
}

impl Entry {
    fn live(&self, now: Instant) -> bool {
        self.expires.is_none_or(|at| at > now)
    }
}

struct State {
    entries: LruCache<String, Entry>,
    bytes: usize,
    /// Entries held per namespace.
    held: HashMap<Arc<str>, u64>,
}

/// The in-memory cache.
pub struct MemoryCache {
    state: Mutex<State>,
    max_entries: usize,
    max_bytes: usize,
}

impl MemoryCache {
    /// A cache holding at most `max_entries` entries and `max_bytes` of keys plus values.
    pub fn new(max_entries: usize, max_bytes: usize) -> MemoryCache {
        MemoryCache {
            state: Mutex::new(State {
                entries: LruCache::unbounded(),
                bytes: 0,
                held: HashMap::new(),
            }),
            max_entries: max_entries.max(1),
            max_bytes,
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        // A panic while holding the lock cannot leave the map inconsistent (every mutation is
        // a single call on it), so a poisoned lock is still usable.
        self.state
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }
}

impl Default for MemoryCache {
    /// 100 000 entries, 64 MiB.
    fn default() -> Self {
        MemoryCache::new(100_000, 64 << 20)
    }
}

fn size(key: &str, value: &[u8]) -> usize {
    key.len() + value.len()
}

impl State {
    fn forget(&mut self, key: &str, entry: &Entry) {
        self.bytes -= size(key, &entry.value);
        if let Some(held) = self.held.get_mut(&entry.namespace) {
            *held -= 1;
            if *held == 0 {
                self.held.remove(&entry.namespace);
            }
        }
    }

    fn remove(&mut self, key: &str) -> Option<Entry> {
        let entry = self.entries.pop(key)?;
        self.forget(key, &entry);
        Some(entry)
    }

    /// Whether a new key fits `quota` (expired entries of the namespace are dropped first
    /// when it looks full).
    fn admits(&mut self, key: &str, quota: Quota<'_>, now: Instant) -> bool {
        if self.entries.peek(key).is_some_and(|entry| entry.live(now)) {
            return true;
        }
        let held = |state: &State| state.held.get(quota.namespace).copied().unwrap_or(0);
        if held(self) < quota.max_keys {
            return true;
        }
        let expired: Vec<String> = self
            .entries
            .iter()
            .filter(|(k, e)| k.starts_with(quota.namespace) && !e.live(now))
            .map(|(k, _)| k.clone())
            .collect();
        for key in expired {
            self.remove(&key);
        }
        // The key itself may be one of the expired ones just dropped.
        held(self) < quota.max_keys
    }

    fn namespace(&mut self, quota: Quota<'_>) -> Arc<str> {
        match self.held.get_key_value(quota.namespace) {
            Some((namespace, _)) => namespace.clone(),
            None => Arc::from(quota.namespace),
        }
    }

    fn insert(&mut self, key: &str, entry: Entry, max_entries: usize, max_bytes: usize) {
        self.remove(key);
        let needed = size(key, &entry.value);
        let now = Instant::now();
        if self.entries.len() >= max_entries || self.bytes + needed > max_bytes {
            let expired: Vec<String> = self
                .entries
                .iter()
                .filter(|(_, e)| !e.live(now))
                .map(|(k, _)| k.clone())
                .collect();
            for key in expired {
                self.remove(&key);
            }
        }
        while self.entries.len() >= max_entries || self.bytes + needed > max_bytes {
            match self.entries.pop_lru() {
                Some((old_key, old)) => self.forget(&old_key, &old),
                None => break,
            }
        }
        self.bytes += needed;
        *self.held.entry(entry.namespace.clone()).or_insert(0) += 1;
        self.entries.put(key.to_owned(), entry);
    }
}

#[async_trait::async_trait]
impl CacheBackend for MemoryCache {
    async fn get(&self, key: &str) -> Result<Option<Vec<u8>>, BackendError> {
        let mut state = self.lock();
        let now = Instant::now();
        match state.entries.get(key) {
            Some(entry) if entry.live(now) => Ok(Some(entry.value.clone())),
            Some(_) => {
                state.remove(key);
                Ok(None)
            }
            None => Ok(None),
        }
    }

    async fn set(
        &self,
        key: &str,
        value: &[u8],
        ttl: Option<Duration>,
        quota: Quota<'_>,
    ) -> Result<(), BackendError> {
        let now = Instant::now();
        let mut state = self.lock();
        if !state.admits(key, quota, now) {
            return Err(BackendError::QuotaExceeded(quota.max_keys));
        }
        let entry = Entry {
            value: value.to_vec(),
            expires: ttl.map(|ttl| now + ttl),
            namespace: state.namespace(quota),
        };
        state.insert(key, entry, self.max_entries, self.max_bytes);
        Ok(())
    }

    async fn delete(&self, key: &str, _namespace: &str) -> Result<bool, BackendError> {
        let mut state = self.lock();
        let now = Instant::now();
        Ok(state.remove(key).is_some_and(|entry| entry.live(now)))
    }

    async fn incr(&self, key: &str, delta: i64, quota: Quota<'_>) -> Result<i64, BackendError> {
        let mut state = self.lock();
        let now = Instant::now();
        if !state.admits(key, quota, now) {
            return Err(BackendError::QuotaExceeded(quota.max_keys));
        }
        let (current, expires) = match state.entries.get(key) {
            Some(entry) if entry.live(now) => {
                let text =
                    std::str::from_utf8(&entry.value).map_err(|_| BackendError::NotANumber)?;
                let value = text.parse::<i64>().map_err(|_| BackendError::NotANumber)?;
                (value, entry.expires)
            }
            _ => (0, None),
        };
        let next = current.checked_add(delta).ok_or(BackendError::NotANumber)?;
        let entry = Entry {
            value: next.to_string().into_bytes(),
            expires,
            namespace: state.namespace(quota),
        };
        state.insert(key, entry, self.max_entries, self.max_bytes);
        Ok(next)
    }

    async fn swap(
        &self,
        key: &str,
        expected: Option<&[u8]>,
        value: &[u8],
        quota: Quota<'_>,
    ) -> Result<bool, BackendError> {
        let mut state = self.lock();
        let now = Instant::now();
        let current = state
            .entries
            .peek(key)
            .filter(|entry| entry.live(now))
            .map(|entry| entry.value.as_slice());
        if current != expected {
            return Ok(false);
        }
        if !state.admits(key, quota, now) {
            return Err(BackendError::QuotaExceeded(quota.max_keys));
        }
        let entry = Entry {
            value: value.to_vec(),
            expires: None,
            namespace: state.namespace(quota),
        };
        state.insert(key, entry, self.max_entries, self.max_bytes);
        Ok(true)
    }

    async fn keys(
        &self,
        _namespace: &str,
        prefix: &str,
        after: Option<&str>,
        limit: usize,
    ) -> Result<(Vec<String>, bool), BackendError> {
        let state = self.lock();
        let now = Instant::now();
        let live = state
            .entries
            .iter()
            .filter(|(key, entry)| key.starts_with(prefix) && entry.live(now))
            .map(|(key, _)| key.clone())
            .collect();
        Ok(crate::backend::page(live, prefix, after, limit))
    }

    fn kind(&self) -> &'static str {
        "memory"
    }
}
