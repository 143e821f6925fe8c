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
}

/// A cache store. Keys arrive already namespaced; implementations must be safe to share
/// between every instance of every component.
#[async_trait::async_trait]
pub trait CacheBackend: Send + Sync + 'static {
    /// The value under `key`, if present and not expired.
    async fn get(&self, key: &str) -> Result<Option<Vec<u8>>, BackendError>;
    /// Stores `value`, expiring after `ttl` when given.
    async fn set(&self, key: &str, value: &[u8], ttl: Option<Duration>)
    -> Result<(), BackendError>;
    /// Removes `key`; true if it was present.
    async fn delete(&self, key: &str) -> Result<bool, BackendError>;
    /// Adds `delta` to the decimal integer under `key` (missing = 0), keeping its expiry.
    async fn incr(&self, key: &str, delta: i64) -> Result<i64, BackendError>;
    /// A short name for logs ("memory", "redis").
    fn kind(&self) -> &'static str;
}
