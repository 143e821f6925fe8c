//! The component's private cache (`agora:platform/cache`). Needs `grants = { cache = true }`.

use crate::bindings::agora::platform::cache as wit;
use serde::Serialize;
use serde::de::DeserializeOwned;
use std::fmt;
use std::time::Duration;

/// Why a cache call failed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CacheError {
    /// The backend is down or slow; the call may or may not have taken effect.
    Unavailable(String),
    /// Bad arguments (empty or over-long key, value over 1 MiB, zero TTL).
    Invalid(String),
    /// `incr` on a non-integer value, or overflow.
    NotANumber,
    /// The manifest grants this component no cache.
    Denied,
    /// A stored value is not the JSON the caller asked for.
    Decode(String),
}

impl fmt::Display for CacheError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            CacheError::Unavailable(m) => write!(f, "cache unavailable: {m}"),
            CacheError::Invalid(m) => write!(f, "invalid cache call: {m}"),
            CacheError::NotANumber => f.write_str("the cached value is not an integer"),
            CacheError::Denied => f.write_str("this component has no cache grant"),
            CacheError::Decode(m) => write!(f, "cached value is not the expected JSON: {m}"),
        }
    }
}

impl std::error::Error for CacheError {}

impl From<wit::Error> for CacheError {
    fn from(err: wit::Error) -> Self {
        match err {
            wit::Error::Unavailable(m) => CacheError::Unavailable(m),
            wit::Error::Invalid(m) => CacheError::Invalid(m),
            wit::Error::NotANumber => CacheError::NotANumber,
            wit::Error::Denied => CacheError::Denied,
        }
    }
}

fn ttl_ms(ttl: Option<Duration>) -> Option<u64> {
    ttl.map(|ttl| u64::try_from(ttl.as_millis()).unwrap_or(u64::MAX))
}

/// The bytes under `key`, if present.
pub fn get(key: &str) -> Result<Option<Vec<u8>>, CacheError> {
    Ok(wit::get(key)?)
}

/// Stores `value` under `key`, expiring after `ttl` when given.
pub fn set(key: &str, value: &[u8], ttl: Option<Duration>) -> Result<(), CacheError> {
    Ok(wit::set(key, value, ttl_ms(ttl))?)
}

/// The JSON value under `key`, decoded, if present.
pub fn get_json<T: DeserializeOwned>(key: &str) -> Result<Option<T>, CacheError> {
    match get(key)? {
        Some(bytes) => serde_json::from_slice(&bytes)
            .map(Some)
            .map_err(|err| CacheError::Decode(err.to_string())),
        None => Ok(None),
    }
}

/// Stores `value` as JSON under `key`.
pub fn set_json<T: Serialize>(
    key: &str,
    value: &T,
    ttl: Option<Duration>,
) -> Result<(), CacheError> {
    let bytes = serde_json::to_vec(value).map_err(|err| CacheError::Invalid(err.to_string()))?;
    set(key, &bytes, ttl)
}

/// Removes `key`; true if it was there.
pub fn delete(key: &str) -> Result<bool, CacheError> {
    Ok(wit::delete(key)?)
}

/// Adds `delta` to the counter under `key` (missing = 0) and returns the new value.
pub fn incr(key: &str, delta: i64) -> Result<i64, CacheError> {
    Ok(wit::incr(key, delta)?)
}
