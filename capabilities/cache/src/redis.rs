//! The production backend: Redis through a multiplexed connection that reconnects by itself.
//!
//! The first call connects (so a host starts even while Redis is down); afterwards redis-rs's
//! `ConnectionManager` re-establishes a broken connection in the background. Every call is
//! bounded by [`CALL_TIMEOUT`]: with Redis down, a guest gets `unavailable` quickly instead of a
//! hang.
//!
//! Quotas: each namespace's keys are listed in a sorted set beside them
//! (`agora-cache-index:<namespace>`, scored by expiry in Redis's own milliseconds, `+inf` for
//! none). `set` and `incr` are Lua scripts — atomic, one round trip — that drop the expired
//! members, admit a new key only below the quota (checking, when at it, whether the soonest
//! members were evicted by Redis meanwhile) and record the key with its expiry.

use crate::backend::{BackendError, CacheBackend, Quota};
use agora_redis::LazyRedis;
use redis::AsyncCommands as _;
use redis::aio::ConnectionManager;
use std::time::Duration;

/// Upper bound on one cache call, connection included.
pub const CALL_TIMEOUT: Duration = Duration::from_millis(1000);

/// Prefix of the sorted set listing a namespace's keys.
pub const INDEX_PREFIX: &str = "agora-cache-index:";

/// Shared head of the scripts: `now` in Redis's clock, expired members dropped, and `admit()`:
/// whether KEYS[1] may be written under the quota ARGV[1] of the index KEYS[2].
const ADMIT: &str = r"
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
redis.call('ZREMRANGEBYSCORE', KEYS[2], '-inf', '(' .. now)
local function admit()
  if redis.call('EXISTS', KEYS[1]) == 1 then return true end
  local max = tonumber(ARGV[1])
  if redis.call('ZCARD', KEYS[2]) < max then return true end
  for _, member in ipairs(redis.call('ZRANGE', KEYS[2], 0, 99)) do
    if redis.call('EXISTS', member) == 0 then redis.call('ZREM', KEYS[2], member) end
  end
  return redis.call('ZCARD', KEYS[2]) < max
end
";

/// `set`: ARGV = max_keys, value, ttl_ms (0: none). Returns 1, or 0 past the quota.
const SET: &str = r"
if not admit() then return 0 end
local ttl = tonumber(ARGV[3])
if ttl > 0 then
  redis.call('SET', KEYS[1], ARGV[2], 'PX', ttl)
  redis.call('ZADD', KEYS[2], now + ttl, KEYS[1])
else
  redis.call('SET', KEYS[1], ARGV[2])
  redis.call('ZADD', KEYS[2], 'inf', KEYS[1])
end
return 1
";

/// `incr`: ARGV = max_keys, delta. Returns {1, value}, or {0} past the quota.
const INCR: &str = r"
if not admit() then return {0} end
local value = redis.call('INCRBY', KEYS[1], ARGV[2])
local pttl = redis.call('PTTL', KEYS[1])
if pttl > 0 then
  redis.call('ZADD', KEYS[2], now + pttl, KEYS[1])
else
  redis.call('ZADD', KEYS[2], 'inf', KEYS[1])
end
return {1, value}
";

/// `swap`: ARGV = max_keys, value, expected ('' with ARGV[4] = '0': absent). Stores the value
/// without expiry when the current one is the expected one. Returns 1 stored, 0 differed, -1
/// past the quota.
const SWAP: &str = r"
local current = redis.call('GET', KEYS[1])
if ARGV[4] == '0' then
  if current then return 0 end
elseif current ~= ARGV[3] then
  return 0
end
if not admit() then return -1 end
redis.call('SET', KEYS[1], ARGV[2])
redis.call('ZADD', KEYS[2], 'inf', KEYS[1])
return 1
";

/// `keys`: KEYS = the index; ARGV = prefix. The live members starting with the prefix (an
/// expiry after now in Redis's clock, and not evicted).
const KEYS: &str = r"
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local found = {}
for _, member in ipairs(redis.call('ZRANGE', KEYS[1], '(' .. now, '+inf', 'BYSCORE')) do
  if string.sub(member, 1, #ARGV[1]) == ARGV[1] and redis.call('EXISTS', member) == 1 then
    table.insert(found, member)
  end
end
return found
";

fn script(body: &str) -> redis::Script {
    redis::Script::new(&format!("{ADMIT}{body}"))
}

fn index_key(namespace: &str) -> String {
    format!("{INDEX_PREFIX}{namespace}")
}

/// The Redis cache.
pub struct RedisCache {
    redis: LazyRedis,
    set: redis::Script,
    incr: redis::Script,
    swap: redis::Script,
    keys: redis::Script,
}

impl RedisCache {
    /// A cache on the Redis at `url` (`redis://host:port/db`). Fails only on a malformed URL;
    /// the connection is made on first use.
    pub fn new(url: &str) -> Result<RedisCache, redis::RedisError> {
        Ok(RedisCache {
            redis: LazyRedis::new(url, CALL_TIMEOUT)?,
            set: script(SET),
            incr: script(INCR),
            swap: script(SWAP),
            keys: redis::Script::new(KEYS),
        })
    }

    /// Runs `call` on the connection within [`CALL_TIMEOUT`].
    async fn run<T, F, Fut>(&self, call: F) -> Result<T, BackendError>
    where
        F: FnOnce(ConnectionManager) -> Fut,
        Fut: Future<Output = Result<T, BackendError>>,
    {
        self.redis.run(call, BackendError::Unavailable).await
    }
}

fn unavailable(err: redis::RedisError) -> BackendError {
    BackendError::Unavailable(format!("redis: {err}"))
}

/// Tells a value that is not an integer (or an overflow), which is the guest's problem, from a
/// transport failure.
fn incr_error(err: redis::RedisError) -> BackendError {
    let text = err.to_string();
    if text.contains("not an integer") || text.contains("overflow") {
        BackendError::NotANumber
    } else {
        unavailable(err)
    }
}

#[async_trait::async_trait]
impl CacheBackend for RedisCache {
    async fn ping(&self) -> Result<(), BackendError> {
        self.run(|mut c| async move {
            redis::cmd("PING")
                .query_async::<String>(&mut c)
                .await
                .map(drop)
                .map_err(unavailable)
        })
        .await
    }

    async fn get(&self, key: &str) -> Result<Option<Vec<u8>>, BackendError> {
        self.run(|mut c| async move { c.get(key).await.map_err(unavailable) })
            .await
    }

    async fn set(
        &self,
        key: &str,
        value: &[u8],
        ttl: Option<Duration>,
        quota: Quota<'_>,
    ) -> Result<(), BackendError> {
        let ttl_ms = ttl.map_or(0, |ttl| {
            u64::try_from(ttl.as_millis()).unwrap_or(u64::MAX).max(1)
        });
        let index = index_key(quota.namespace);
        let stored: i64 = self
            .run(|mut c| async move {
                self.set
                    .key(key)
                    .key(&index)
                    .arg(quota.max_keys)
                    .arg(value)
                    .arg(ttl_ms)
                    .invoke_async(&mut c)
                    .await
                    .map_err(unavailable)
            })
            .await?;
        if stored == 0 {
            return Err(BackendError::QuotaExceeded(quota.max_keys));
        }
        Ok(())
    }

    async fn delete(&self, key: &str, namespace: &str) -> Result<bool, BackendError> {
        let index = index_key(namespace);
        self.run(|mut c| async move {
            let (removed, _): (u64, u64) = redis::pipe()
                .atomic()
                .del(key)
                .zrem(&index, key)
                .query_async(&mut c)
                .await
                .map_err(unavailable)?;
            Ok(removed > 0)
        })
        .await
    }

    async fn incr(&self, key: &str, delta: i64, quota: Quota<'_>) -> Result<i64, BackendError> {
        let index = index_key(quota.namespace);
        let answer: Vec<i64> = self
            .run(|mut c| async move {
                self.incr
                    .key(key)
                    .key(&index)
                    .arg(quota.max_keys)
                    .arg(delta)
                    .invoke_async(&mut c)
                    .await
                    .map_err(incr_error)
            })
            .await?;
        match answer.as_slice() {
            [1, value] => Ok(*value),
            _ => Err(BackendError::QuotaExceeded(quota.max_keys)),
        }
    }

    async fn swap(
        &self,
        key: &str,
        expected: Option<&[u8]>,
        value: &[u8],
        quota: Quota<'_>,
    ) -> Result<bool, BackendError> {
        let index = index_key(quota.namespace);
        let answer: i64 = self
            .run(|mut c| async move {
                self.swap
                    .key(key)
                    .key(&index)
                    .arg(quota.max_keys)
                    .arg(value)
                    .arg(expected.unwrap_or_default())
                    .arg(if expected.is_some() { "1" } else { "0" })
                    .invoke_async(&mut c)
                    .await
                    .map_err(unavailable)
            })
            .await?;
        match answer {
            1 => Ok(true),
            0 => Ok(false),
            _ => Err(BackendError::QuotaExceeded(quota.max_keys)),
        }
    }

    async fn keys(
        &self,
        namespace: &str,
        prefix: &str,
        after: Option<&str>,
        limit: usize,
    ) -> Result<(Vec<String>, bool), BackendError> {
        // The index lists the namespace's keys: at most its quota, plus expired ones not yet
        // dropped, which the script leaves out.
        let index = index_key(namespace);
        let members: Vec<String> = self
            .run(|mut c| async move {
                self.keys
                    .key(&index)
                    .arg(prefix)
                    .invoke_async(&mut c)
                    .await
                    .map_err(unavailable)
            })
            .await?;
        Ok(crate::backend::page(members, prefix, after, limit))
    }

    fn kind(&self) -> &'static str {
        "redis"
    }
}
