//! The production backend: Redis through a multiplexed connection that reconnects by itself.
//!
//! The first call connects (so a host starts even while Redis is down); afterwards redis-rs's
//! `ConnectionManager` re-establishes a broken connection in the background. Every call is
//! bounded by [`CALL_TIMEOUT`]: with Redis down, a guest gets `unavailable` quickly instead of a
//! hang.

use crate::backend::{BackendError, CacheBackend};
use agora_redis::LazyRedis;
use redis::AsyncCommands as _;
use redis::aio::ConnectionManager;
use std::time::Duration;

/// Upper bound on one cache call, connection included.
pub const CALL_TIMEOUT: Duration = Duration::from_millis(1000);

/// The Redis cache.
pub struct RedisCache {
    redis: LazyRedis,
}

impl RedisCache {
    /// A cache on the Redis at `url` (`redis://host:port/db`). Fails only on a malformed URL;
    /// the connection is made on first use.
    pub fn new(url: &str) -> Result<RedisCache, redis::RedisError> {
        Ok(RedisCache {
            redis: LazyRedis::new(url, CALL_TIMEOUT)?,
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
    async fn get(&self, key: &str) -> Result<Option<Vec<u8>>, BackendError> {
        self.run(|mut c| async move { c.get(key).await.map_err(unavailable) })
            .await
    }

    async fn set(
        &self,
        key: &str,
        value: &[u8],
        ttl: Option<Duration>,
    ) -> Result<(), BackendError> {
        self.run(|mut c| async move {
            match ttl {
                Some(ttl) => {
                    let ms = u64::try_from(ttl.as_millis()).unwrap_or(u64::MAX).max(1);
                    c.pset_ex::<_, _, ()>(key, value, ms).await
                }
                None => c.set::<_, _, ()>(key, value).await,
            }
            .map_err(unavailable)
        })
        .await
    }

    async fn delete(&self, key: &str) -> Result<bool, BackendError> {
        self.run(|mut c| async move {
            let removed: u64 = c.del(key).await.map_err(unavailable)?;
            Ok(removed > 0)
        })
        .await
    }

    async fn incr(&self, key: &str, delta: i64) -> Result<i64, BackendError> {
        self.run(|mut c| async move { c.incr(key, delta).await.map_err(incr_error) })
            .await
    }

    fn kind(&self) -> &'static str {
        "redis"
    }
}
