//! The Redis connection shared by agora's production backends that live in Redis — the cache,
//! the auth revocation store and the edge's rate limiter.
//!
//! - The connection is made on the first call, not at construction, so a host starts (and
//!   serves everything that does not need Redis) while Redis is down.
//! - redis-rs's `ConnectionManager` reconnects after a failure; one connection is multiplexed
//!   by every caller.
//! - Every call, connecting included, is bounded by the timeout given at construction and
//!   fails with the caller's own "unavailable" error beyond it: a slow Redis costs a request at
//!   most that long, never a hang.

#![deny(missing_docs)]

use redis::aio::{ConnectionManager, ConnectionManagerConfig};
use std::future::Future;
use std::time::Duration;
use tokio::sync::Mutex;

/// A Redis client connected on first use; cheap to share behind an `Arc`.
pub struct LazyRedis {
    client: redis::Client,
    connection: Mutex<Option<ConnectionManager>>,
    timeout: Duration,
}

impl LazyRedis {
    /// A client for the Redis at `url` (`redis://host:port/db`) whose calls each take at most
    /// `timeout`. Fails only on a malformed URL.
    pub fn new(url: &str, timeout: Duration) -> Result<LazyRedis, redis::RedisError> {
        Ok(LazyRedis {
            client: redis::Client::open(url)?,
            connection: Mutex::new(None),
            timeout,
        })
    }

    /// The bound on one call.
    pub fn timeout(&self) -> Duration {
        self.timeout
    }

    async fn connection(&self) -> Result<ConnectionManager, redis::RedisError> {
        let mut slot = self.connection.lock().await;
        if let Some(connection) = slot.as_ref() {
            return Ok(connection.clone());
        }
        let config = ConnectionManagerConfig::new()
            .set_connection_timeout(Some(self.timeout / 2))
            .set_response_timeout(Some(self.timeout / 2))
            .set_number_of_retries(1);
        let connection = ConnectionManager::new_with_config(self.client.clone(), config).await?;
        *slot = Some(connection.clone());
        Ok(connection)
    }

    /// Runs `call` on the connection within the timeout. A failure to connect and the timeout
    /// become `unavailable(message)`; errors of `call` itself are the caller's.
    pub async fn run<T, E, F, Fut>(
        &self,
        call: F,
        unavailable: impl Fn(String) -> E,
    ) -> Result<T, E>
    where
        F: FnOnce(ConnectionManager) -> Fut,
        Fut: Future<Output = Result<T, E>>,
    {
        let attempt = async {
            match self.connection().await {
                Ok(connection) => call(connection).await,
                Err(err) => Err(unavailable(format!("redis: {err}"))),
            }
        };
        match tokio::time::timeout(self.timeout, attempt).await {
            Ok(result) => result,
            Err(_) => Err(unavailable(format!(
                "redis did not answer within {} ms",
                self.timeout.as_millis()
            ))),
        }
    }
}

impl LazyRedis {
    /// [`LazyRedis::run`] for calls that are plain Redis commands: their errors, like a failure
    /// to connect, become `unavailable("redis: …")`.
    pub async fn run_commands<T, E, F, Fut>(
        &self,
        call: F,
        unavailable: impl Fn(String) -> E,
    ) -> Result<T, E>
    where
        F: FnOnce(ConnectionManager) -> Fut,
        Fut: Future<Output = Result<T, redis::RedisError>>,
    {
        let call = |connection| async {
            call(connection)
                .await
                .map_err(|err| unavailable(format!("redis: {err}")))
        };
        self.run(call, &unavailable).await
    }
}

/// The URL of the database next to the one `url` names: same server and credentials, database
/// index + 1 (`redis://h:6379` → `redis://h:6379/1`, `redis://h/4` → `redis://h/5`). The host
/// keeps auth state (revocations, refresh families, rate-limit buckets) there by default, out
/// of the keyspace components fill through the cache.
pub fn next_database(url: &str) -> Result<String, String> {
    let mut parsed =
        redis::parse_redis_url(url).ok_or_else(|| format!("invalid Redis URL `{url}`"))?;
    if !matches!(parsed.scheme(), "redis" | "rediss" | "valkey" | "valkeys") {
        return Err(format!(
            "`{url}`: a separate auth database is derived only for redis:// and rediss:// URLs; \
             give the auth Redis URL explicitly"
        ));
    }
    let path = parsed.path().trim_matches('/').to_owned();
    let db: u32 = if path.is_empty() {
        0
    } else {
        path.parse()
            .map_err(|_| format!("invalid Redis URL `{url}`: `{path}` is not a database index"))?
    };
    parsed.set_path(&format!("/{}", db + 1));
    Ok(parsed.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_next_database_keeps_the_server_and_credentials() {
        for (url, next) in [
            ("redis://127.0.0.1:6379", "redis://127.0.0.1:6379/1"),
            ("redis://127.0.0.1:6379/", "redis://127.0.0.1:6379/1"),
            ("redis://h/4", "redis://h/5"),
            (
                "rediss://user:secret@h:7000/2?protocol=resp3",
                "rediss://user:secret@h:7000/3?protocol=resp3",
            ),
        ] {
            assert_eq!(next_database(url).as_deref(), Ok(next), "{url}");
        }
        assert!(next_database("redis://h/x").is_err());
        assert!(next_database("not a url").is_err());
        assert!(next_database("redis+unix:///tmp/redis.sock").is_err());
    }

    #[tokio::test]
    async fn an_unreachable_redis_is_unavailable_not_a_hang() {
        let redis = LazyRedis::new("redis://127.0.0.1:1", Duration::from_millis(300))
            .expect("a well-formed URL");
        let started = std::time::Instant::now();
        let result: Result<(), String> = redis.run(|_| async { Ok(()) }, |message| message).await;
        let message = result.expect_err("nothing listens on port 1");
        assert!(message.starts_with("redis"), "{message}");
        assert!(started.elapsed() < Duration::from_secs(5));
        assert!(LazyRedis::new("not a url", Duration::from_secs(1)).is_err());
    }
}
