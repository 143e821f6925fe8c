//! The production store: Redis, shared by every host replica.
//!
//! Keys (under [`KEY_PREFIX`], which no cache namespace `agora:<component>:` can produce):
//! - `agora-auth:refresh:<jti>` — `f:<family>` while unused, `u:<family>` once used; expires
//!   with the token. `mark_used` flips it in a Lua script, so exactly one of two concurrent
//!   rotations of one token wins, whichever replica runs them.
//! - `agora-auth:revoked:<family>` — present while the family is revoked.
//! - `agora-auth:subject:<subject>` — the set of a subject's families, its expiry pushed back
//!   to the refresh lifetime on every registration; `revoke_subject` revokes its members and
//!   deletes it in one Lua script. (The scripts touch keys they compute, so this store needs a
//!   single Redis or a primary, not Redis Cluster.)
//!
//! The scripts are sent with `EVAL` (they are a few hundred bytes; Redis caches them).
//!
//! Like the cache, the first call connects and redis-rs's `ConnectionManager` reconnects after;
//! every call is bounded by [`CALL_TIMEOUT`] and fails as `Unavailable` beyond it.

use crate::store::{RevocationStore, StoreError, UseOutcome};
use agora_redis::LazyRedis;
use redis::aio::ConnectionManager;
use std::time::Duration;

/// Upper bound on one store call, connection included.
pub const CALL_TIMEOUT: Duration = Duration::from_millis(1000);

/// Prefix of every key this store writes.
pub const KEY_PREFIX: &str = "agora-auth:";

const MARK_USED: &str = r"
local v = redis.call('GET', KEYS[1])
if not v then return false end
if string.sub(v, 1, 2) == 'f:' then
  redis.call('SET', KEYS[1], 'u:' .. string.sub(v, 3), 'KEEPTTL')
end
return v
";

const REVOKE_SUBJECT: &str = r"
local families = redis.call('SMEMBERS', KEYS[1])
for _, family in ipairs(families) do
  redis.call('SET', ARGV[1] .. family, '1', 'PX', ARGV[2])
end
redis.call('DEL', KEYS[1])
return #families
";

/// The Redis revocation store.
pub struct RedisRevocationStore {
    redis: LazyRedis,
}

impl RedisRevocationStore {
    /// A store on the Redis at `url` (`redis://host:port/db`). Fails only on a malformed URL;
    /// the connection is made on first use.
    pub fn new(url: &str) -> Result<RedisRevocationStore, redis::RedisError> {
        Ok(RedisRevocationStore {
            redis: LazyRedis::new(url, CALL_TIMEOUT)?,
        })
    }

    /// Runs `call` on the connection within [`CALL_TIMEOUT`].
    async fn run<T, F, Fut>(&self, call: F) -> Result<T, StoreError>
    where
        F: FnOnce(ConnectionManager) -> Fut,
        Fut: Future<Output = Result<T, redis::RedisError>>,
    {
        self.redis.run_commands(call, StoreError::Unavailable).await
    }
}

fn millis(ttl: Duration) -> u64 {
    u64::try_from(ttl.as_millis()).unwrap_or(u64::MAX).max(1)
}

fn refresh_key(jti: &str) -> String {
    format!("{KEY_PREFIX}refresh:{jti}")
}

fn revoked_prefix() -> String {
    format!("{KEY_PREFIX}revoked:")
}

fn subject_key(subject: &str) -> String {
    format!("{KEY_PREFIX}subject:{subject}")
}

#[async_trait::async_trait]
impl RevocationStore for RedisRevocationStore {
    async fn register(
        &self,
        subject: &str,
        family: &str,
        jti: &str,
        ttl: Duration,
    ) -> Result<(), StoreError> {
        let ms = millis(ttl);
        self.run(|mut c| async move {
            let subject = subject_key(subject);
            redis::pipe()
                .atomic()
                .cmd("SET")
                .arg(refresh_key(jti))
                .arg(format!("f:{family}"))
                .arg("PX")
                .arg(ms)
                .ignore()
                .cmd("SADD")
                .arg(&subject)
                .arg(family)
                .ignore()
                .cmd("PEXPIRE")
                .arg(&subject)
                .arg(ms)
                .ignore()
                .exec_async(&mut c)
                .await
        })
        .await
    }

    async fn mark_used(&self, jti: &str) -> Result<UseOutcome, StoreError> {
        let before: Option<String> = self
            .run(|mut c| async move {
                redis::cmd("EVAL")
                    .arg(MARK_USED)
                    .arg(1)
                    .arg(refresh_key(jti))
                    .query_async(&mut c)
                    .await
            })
            .await?;
        Ok(match before {
            None => UseOutcome::Unknown,
            Some(value) => match (value.strip_prefix("f:"), value.strip_prefix("u:")) {
                (Some(family), _) => UseOutcome::Fresh {
                    family: family.to_owned(),
                },
                (None, Some(family)) => UseOutcome::Reused {
                    family: family.to_owned(),
                },
                (None, None) => UseOutcome::Unknown,
            },
        })
    }

    async fn revoke_family(&self, family: &str, ttl: Duration) -> Result<(), StoreError> {
        let ms = millis(ttl);
        self.run(|mut c| async move {
            redis::cmd("SET")
                .arg(format!("{}{family}", revoked_prefix()))
                .arg("1")
                .arg("PX")
                .arg(ms)
                .exec_async(&mut c)
                .await
        })
        .await
    }

    async fn is_family_revoked(&self, family: &str) -> Result<bool, StoreError> {
        self.run(|mut c| async move {
            redis::cmd("EXISTS")
                .arg(format!("{}{family}", revoked_prefix()))
                .query_async::<u64>(&mut c)
                .await
                .map(|n| n > 0)
        })
        .await
    }

    async fn revoke_subject(&self, subject: &str, ttl: Duration) -> Result<usize, StoreError> {
        let ms = millis(ttl);
        self.run(|mut c| async move {
            redis::cmd("EVAL")
                .arg(REVOKE_SUBJECT)
                .arg(1)
                .arg(subject_key(subject))
                .arg(revoked_prefix())
                .arg(ms)
                .query_async::<usize>(&mut c)
                .await
        })
        .await
    }

    fn kind(&self) -> &'static str {
        "redis"
    }
}
