//! The production backend: Redis, shared by every host replica.
//!
//! A bucket is the hash `agora-ratelimit:<key>` with the fields `tokens` (micro-tokens) and
//! `ts` (the last refill, µs of the Redis clock). One Lua script does the whole update — read,
//! refill, take, write, expire — in one script, atomically, with `TIME` as the clock. It is
//! sent with `EVAL` (it is a few hundred bytes; Redis caches it).
//!
//! Like the other capabilities, the first call connects and redis-rs's `ConnectionManager`
//! reconnects after; every call is bounded by [`CALL_TIMEOUT`] and fails as `Unavailable`
//! beyond it.

use crate::{Decision, LimitError, Rate, RateLimiter, TOKEN};
use agora_redis::LazyRedis;
use redis::aio::ConnectionManager;
use std::time::Duration;

/// Upper bound on one check, connection included.
pub const CALL_TIMEOUT: Duration = Duration::from_millis(1000);

/// Prefix of every key this limiter writes: a bucket is `agora-ratelimit:<key>`.
pub const KEY_PREFIX: &str = "agora-ratelimit:";

/// KEYS[1]: the bucket. ARGV: capacity (micro-tokens), limit (tokens per period), period (µs).
/// Returns `{1, whole tokens left}` or `{0, retry-after in ms}`.
///
/// Integers up to 2^53 are exact in Lua's doubles: micro-tokens (at most 2^32 · 10^6) and
/// Redis time in µs are. Numbers are written with `%.0f`, never in exponent form.
const CHECK: &str = r"
if redis.replicate_commands then redis.replicate_commands() end
local capacity = tonumber(ARGV[1])
local limit = tonumber(ARGV[2])
local period = tonumber(ARGV[3])
local token = 1000000
local time = redis.call('TIME')
local now = tonumber(time[1]) * 1000000 + tonumber(time[2])
local state = redis.call('HMGET', KEYS[1], 'tokens', 'ts')
local tokens = tonumber(state[1])
local ts = tonumber(state[2])
if tokens == nil or ts == nil then
  tokens = capacity
  ts = now
elseif now > ts then
  -- The clock moves on by exactly the time the whole micro-tokens added took (to now when
  -- full), so a slow rate under frequent checks still refills: no fraction is thrown away.
  local added = math.floor((now - ts) * limit * token / period)
  if tokens + added >= capacity then
    tokens = capacity
    ts = now
  else
    tokens = tokens + added
    ts = ts + math.floor(added * period / (limit * token))
  end
end
if tokens > capacity then tokens = capacity end
local allowed, value
if tokens >= token then
  tokens = tokens - token
  allowed = 1
  value = math.floor(tokens / token)
else
  local us = math.ceil((token - tokens) * period / (limit * token))
  allowed = 0
  value = math.max(1, math.ceil(us / 1000))
end
redis.call('HSET', KEYS[1], 'tokens', string.format('%.0f', tokens), 'ts', string.format('%.0f', ts))
local full_ms = math.ceil((capacity - tokens) * period / (limit * token) / 1000) + 1000
redis.call('PEXPIRE', KEYS[1], string.format('%.0f', math.min(full_ms, 315360000000)))
return {allowed, value}
";

/// The Redis rate limiter.
pub struct RedisRateLimiter {
    redis: LazyRedis,
}

impl RedisRateLimiter {
    /// A limiter on the Redis at `url` (`redis://host:port/db`). Fails only on a malformed URL;
    /// the connection is made on first use.
    pub fn new(url: &str) -> Result<RedisRateLimiter, redis::RedisError> {
        Ok(RedisRateLimiter {
            redis: LazyRedis::new(url, CALL_TIMEOUT)?,
        })
    }

    /// Runs `call` on the connection within [`CALL_TIMEOUT`].
    async fn run<T, F, Fut>(&self, call: F) -> Result<T, LimitError>
    where
        F: FnOnce(ConnectionManager) -> Fut,
        Fut: Future<Output = Result<T, redis::RedisError>>,
    {
        self.redis.run_commands(call, LimitError::Unavailable).await
    }
}

#[async_trait::async_trait]
impl RateLimiter for RedisRateLimiter {
    async fn check(&self, key: &str, rate: Rate) -> Result<Decision, LimitError> {
        let rate = rate.normalized();
        let capacity = u64::from(rate.burst) * TOKEN;
        let period_us = u64::try_from(rate.period.as_micros()).unwrap_or(u64::MAX);
        let (allowed, value): (i64, i64) = self
            .run(|mut c| async move {
                redis::cmd("EVAL")
                    .arg(CHECK)
                    .arg(1)
                    .arg(format!("{KEY_PREFIX}{key}"))
                    .arg(capacity)
                    .arg(rate.limit)
                    .arg(period_us)
                    .query_async(&mut c)
                    .await
            })
            .await?;
        Ok(if allowed == 1 {
            Decision::Allowed {
                remaining: u32::try_from(value.max(0)).unwrap_or(u32::MAX),
            }
        } else {
            Decision::Limited {
                retry_after: Duration::from_millis(u64::try_from(value).unwrap_or(1).max(1)),
            }
        })
    }

    fn kind(&self) -> &'static str {
        "redis"
    }
}
