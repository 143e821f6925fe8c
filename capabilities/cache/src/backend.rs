//! The backend trait every cache store implements, and its errors.

use std::time::Duration;

/// Why a backend call failed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum BackendError {
    /// The store did not answer in time or is down.
    #[error("cache unavailable: {0}")]
    Unavailable(String),
    /// `incr` on a value that is not a decimal 64-bit integer, or overflow.
    #[error("the value is not a 64-bit integer")]
    NotANumber,
    /// A new key would take the namespace past its quota of keys.
    #[error("the component's cache already holds its quota of {0} keys")]
    QuotaExceeded(u64),
}

/// The bound on one component's part of the store: `namespace` is the prefix of all its keys
/// (every key passed with it starts with it), `max_keys` how many live keys it may hold.
/// Overwriting or incrementing a key it holds is always allowed; a new key past the quota is
/// [`BackendError::QuotaExceeded`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Quota<'a> {
    /// The namespace prefix (`agora:<component>:`).
    pub namespace: &'a str,
    /// Live keys the namespace may hold.
    pub max_keys: u64,
}

/// A cache store. Keys arrive already namespaced; implementations must be safe to share
/// between every instance of every component.
#[async_trait::async_trait]
pub trait CacheBackend: Send + Sync + 'static {
    /// The value under `key`, if present and not expired.
    async fn get(&self, key: &str) -> Result<Option<Vec<u8>>, BackendError>;
    /// Stores `value`, expiring after `ttl` when given, within `quota`.
    async fn set(
        &self,
        key: &str,
        value: &[u8],
        ttl: Option<Duration>,
        quota: Quota<'_>,
    ) -> Result<(), BackendError>;
    /// Removes `key` of `namespace`; true if it was present.
    async fn delete(&self, key: &str, namespace: &str) -> Result<bool, BackendError>;
    /// Adds `delta` to the decimal integer under `key` (missing = 0), keeping its expiry,
    /// within `quota`.
    async fn incr(&self, key: &str, delta: i64, quota: Quota<'_>) -> Result<i64, BackendError>;
    /// Compare-and-swap: stores `value` under `key` (no expiry) only if the key's current
    /// value is `expected` (`None`: the key is absent or expired), within `quota`; true if it
    /// was stored, false if the value differed.
    async fn swap(
        &self,
        key: &str,
        expected: Option<&[u8]>,
        value: &[u8],
        quota: Quota<'_>,
    ) -> Result<bool, BackendError>;
    /// The live keys of `namespace` that start with `prefix` (itself starting with the
    /// namespace), in byte order, after `after` when given: at most `limit` of them, and
    /// whether more follow. A listing may miss or show keys written meanwhile.
    async fn keys(
        &self,
        namespace: &str,
        prefix: &str,
        after: Option<&str>,
        limit: usize,
    ) -> Result<(Vec<String>, bool), BackendError>;
    /// A short name for logs ("memory", "redis").
    fn kind(&self) -> &'static str;
    /// Whether the backend answers (the readiness probe): `Err` says why not.
    async fn ping(&self) -> Result<(), BackendError> {
        Ok(())
    }
}

/// One page of `keys` out of every live key (sorted here): those starting with `prefix`
/// after `after`, at most `limit`, and whether more follow. Shared by the backends.
pub(crate) fn page(
    mut keys: Vec<String>,
    prefix: &str,
    after: Option<&str>,
    limit: usize,
) -> (Vec<String>, bool) {
    keys.retain(|key| key.starts_with(prefix) && after.is_none_or(|after| key.as_str() > after));
    keys.sort_unstable();
    keys.dedup();
    let more = keys.len() > limit;
    keys.truncate(limit);
    (keys, more)
}
