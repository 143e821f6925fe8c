//! Token-bucket rate limiting for the host's HTTP edge.
//!
//! - [`Rate`]: `N` requests per period (`"10/s"`, `"100/min"`, `"5000/h"`), bursts of up to
//!   `burst` requests (default `N`).
//! - [`RateLimiter`]: takes one token from a named bucket and answers a [`Decision`].
//! - [`MemoryRateLimiter`]: the embedded backend, buckets in this process.
//! - [`RedisRateLimiter`]: the production backend, buckets in Redis, shared by every replica.
//!
//! # Algorithm
//!
//! Each key has a bucket of capacity `burst` tokens, created full on first use and refilled
//! continuously at `limit / period` tokens per unit of time (never beyond `burst`). A request
//! takes one token: with one available it is [`Decision::Allowed`] (with the whole tokens left),
//! otherwise [`Decision::Limited`] and nothing is taken; `retry_after` is the exact time until
//! one token is available, rounded up to the millisecond and at least 1 ms. Tokens are counted
//! in micro-tokens (10⁻⁶ token) as integers, so a bucket's state does not depend on its rate and
//! a key checked with another [`Rate`] keeps its tokens (capped at the new `burst`).
//!
//! # Key layout (Redis)
//!
//! A bucket is one hash, `agora-ratelimit:<key>` ([`KEY_PREFIX`] then the caller's key, as
//! is), with the fields `tokens` (micro-tokens, an integer) and `ts` (the last refill, in
//! microseconds of the Redis clock). One Lua script reads, refills, takes and writes it
//! atomically, so concurrent requests on any number of replicas never take more than the
//! bucket holds. The key expires (`PEXPIRE`) when the bucket would be full again, plus 1 s:
//! an expired bucket and a full one are the same, so idle keys cost no memory. (One key per
//! script call: Redis Cluster works.)
//!
//! # Clock
//!
//! The Redis backend's clock is Redis's own (`TIME`, read inside the script), never the
//! host's: replicas whose clocks are skewed still agree on every bucket. Should the Redis clock
//! step back (a failover to a server behind), buckets do not refill until it catches up. The
//! memory backend uses [`tokio::time::Instant`] (monotonic; tests can pause it).
//!
//! # The caller's contract: fail open
//!
//! [`RateLimiter::check`] fails only with [`LimitError::Unavailable`] (Redis down or slower
//! than [`CALL_TIMEOUT`]). The host then **lets the request through** and logs a warning: a
//! rate limiter is a protection, and an outage of Redis must not become an outage of every
//! application behind the host. The memory backend never fails; when it holds [`MAX_KEYS`]
//! buckets that are all still refilling it allows requests on new keys (and warns once).
//!
//! ```no_run
//! use agora_ratelimit::{Decision, MemoryRateLimiter, Rate, RateLimiter};
//! # async fn edge() -> Result<(), Box<dyn std::error::Error>> {
//! let limiter = MemoryRateLimiter::default();
//! let rate: Rate = "100/min".parse()?;
//! match limiter.check("shop:203.0.113.7", rate.with_burst(20)).await {
//!     Ok(Decision::Allowed { remaining }) => { /* serve; X-RateLimit-Remaining: remaining */ }
//!     Ok(Decision::Limited { retry_after }) => { /* 429, Retry-After: retry_after */ }
//!     Err(err) => tracing::warn!(%err, "rate limiter unavailable: request let through"),
//! }
//! # Ok(()) }
//! ```

#![deny(missing_docs)]

mod memory;
mod rate;
mod redis;

pub use memory::{MAX_KEYS, MemoryRateLimiter};
pub use rate::{MAX_LIMIT, ParseRateError, Rate};
pub use redis::{CALL_TIMEOUT, KEY_PREFIX, RedisRateLimiter};

use std::time::Duration;

/// The answer to one [`RateLimiter::check`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Decision {
    /// A token was taken; the request may go on.
    Allowed {
        /// Whole tokens left in the bucket after this request.
        remaining: u32,
    },
    /// The bucket is empty; nothing was taken.
    Limited {
        /// The time until one token is available (rounded up to the millisecond, at least
        /// 1 ms): what a `Retry-After` header should say.
        retry_after: Duration,
    },
}

/// Why a [`RateLimiter::check`] failed. The caller lets the request through (fail open).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum LimitError {
    /// The backend did not answer in time or is down.
    #[error("rate limiter unavailable: {0}")]
    Unavailable(String),
}

/// Token buckets, by key.
///
/// Implementations must take tokens atomically: of concurrent checks on one key, never more
/// are allowed than the bucket holds, whichever replica runs them.
#[async_trait::async_trait]
pub trait RateLimiter: Send + Sync + 'static {
    /// Takes one token from the bucket `key` (created full on first use).
    async fn check(&self, key: &str, rate: Rate) -> Result<Decision, LimitError>;

    /// "memory" or "redis".
    fn kind(&self) -> &'static str;
}

/// One token, in the micro-tokens buckets count in.
pub(crate) const TOKEN: u64 = 1_000_000;
