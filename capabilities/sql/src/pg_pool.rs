//! A component's PostgreSQL connections, lent without a round trip.
//!
//! sqlx's pool pings every connection it takes back (a lone `Sync` and its `ReadyForQuery`):
//! one more PostgreSQL round trip for every call and every transaction, a quarter of those the
//! shop makes per order (strace of the host under `bench shop`). This pool takes a connection
//! back as it is and checks it when it lends it instead, and only if it sat idle for a while.
//!
//! Invariants:
//! - at most `size` connections are lent or being opened at once; a caller waits its turn,
//!   at most [`ACQUIRE_TIMEOUT`] (the caller's own deadline may be shorter);
//! - the connection lent is the one used most recently: under load a handful stay warm, and
//!   the rest age out; one idle longer than [`CHECK_IDLE_AFTER`] answers a round trip before
//!   it is lent (a dead one is closed and the next one tried), and a sweep closes those idle
//!   longer than [`IDLE_TIMEOUT`] even when nobody asks;
//! - a connection comes back only when it is at rest: one marked to close, or with bytes still
//!   to send (a `ROLLBACK` sqlx queued for a transaction dropped unfinished), is closed, which
//!   ends whatever its server session still held.

use sqlx::Connection as _;
use sqlx::postgres::{PgConnectOptions, PgConnection};
use std::sync::{Arc, Mutex, Weak};
use std::time::{Duration, Instant};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};

/// How long a caller without a deadline of its own waits for a connection.
pub(crate) const ACQUIRE_TIMEOUT: Duration = Duration::from_secs(5);
/// An idle connection is closed after this long (give or take half of it, the sweep's
/// period), so quiet components hold none.
const IDLE_TIMEOUT: Duration = Duration::from_secs(60);
/// A connection idle longer than this is checked with a round trip before a call gets it (one
/// that fails the check is closed and another taken). One used more recently is lent as it
/// is: under load that check was one round trip more for every call and transaction, and a
/// connection that died within the window fails its call like a server lost mid-call
/// (`unavailable`, the connection closed).
const CHECK_IDLE_AFTER: Duration = Duration::from_millis(500);

/// A bounded set of connections opened with the same options.
pub(crate) struct PgConnPool {
    inner: Arc<Inner>,
}

struct Inner {
    options: PgConnectOptions,
    permits: Arc<Semaphore>,
    /// Oldest first: lent from the end, returned to the end.
    idle: Mutex<Vec<Idle>>,
}

struct Idle {
    conn: PgConnection,
    since: Instant,
}

/// A lent connection; dropping it gives it back (or closes it, see [`PgConnPool`]).
pub(crate) struct PooledConn {
    conn: Option<PgConnection>,
    close: bool,
    pool: Arc<Inner>,
    _permit: OwnedSemaphorePermit,
}

impl PgConnPool {
    /// A pool of at most `size` connections opened with `options`, opening one now so that
    /// a login that fails is reported here. Needs a tokio runtime (the idle sweep).
    pub(crate) async fn connect(
        options: PgConnectOptions,
        size: u32,
    ) -> Result<PgConnPool, sqlx::Error> {
        let pool = PgConnPool {
            inner: Arc::new(Inner {
                options,
                permits: Arc::new(Semaphore::new(usize::try_from(size.max(1)).unwrap_or(1))),
                idle: Mutex::new(Vec::new()),
            }),
        };
        drop(pool.acquire().await?);
        tokio::spawn(sweep(Arc::downgrade(&pool.inner)));
        Ok(pool)
    }

    /// A connection: the most recently used idle one, or a new one while fewer than the
    /// pool's size exist. [`sqlx::Error::PoolTimedOut`] after [`ACQUIRE_TIMEOUT`],
    /// [`sqlx::Error::PoolClosed`] once [`PgConnPool::close`] was called.
    pub(crate) async fn acquire(&self) -> Result<PooledConn, sqlx::Error> {
        tokio::time::timeout(ACQUIRE_TIMEOUT, self.acquire_untimed())
            .await
            .map_err(|_| sqlx::Error::PoolTimedOut)?
    }

    async fn acquire_untimed(&self) -> Result<PooledConn, sqlx::Error> {
        let inner = &self.inner;
        let permit = inner
            .permits
            .clone()
            .acquire_owned()
            .await
            .map_err(|_| sqlx::Error::PoolClosed)?;
        let lent = |conn| PooledConn {
            conn: Some(conn),
            close: false,
            pool: inner.clone(),
            _permit: permit,
        };
        while let Some(Idle { mut conn, since }) = inner.take_idle() {
            if since.elapsed() > CHECK_IDLE_AFTER
                && let Err(err) = conn.ping().await
            {
                tracing::info!(error = %err, "idle PostgreSQL connection lost; closed");
                continue;
            }
            return Ok(lent(conn));
        }
        let conn = PgConnection::connect_with(&inner.options).await?;
        Ok(lent(conn))
    }

    /// Refuses every later [`PgConnPool::acquire`] and closes the idle connections; lent ones
    /// are closed when they come back.
    pub(crate) async fn close(&self) {
        self.inner.permits.close();
        let idle = std::mem::take(&mut *self.inner.lock());
        close_all(idle).await;
    }
}

impl Inner {
    fn lock(&self) -> std::sync::MutexGuard<'_, Vec<Idle>> {
        self.idle
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// The most recently used idle connection. A function of its own so that the lock is
    /// released before the caller awaits (a `while let` on `lock().pop()` would hold it).
    fn take_idle(&self) -> Option<Idle> {
        self.lock().pop()
    }

    /// Takes out the connections idle longer than the idle timeout (the oldest come first).
    fn expired(&self) -> Vec<Idle> {
        let now = Instant::now();
        let mut idle = self.lock();
        let fresh = idle
            .iter()
            .position(|i| now.duration_since(i.since) <= IDLE_TIMEOUT)
            .unwrap_or(idle.len());
        idle.drain(..fresh).collect()
    }
}

/// Ends the sessions of `idle` politely (a `Terminate` each), so the server logs no lost client.
async fn close_all(idle: Vec<Idle>) {
    for Idle { conn, .. } in idle {
        let _ = conn.close().await;
    }
}

/// Closes connections past the idle timeout while the pool lives, so a quiet component holds
/// none.
async fn sweep(pool: Weak<Inner>) {
    loop {
        tokio::time::sleep(IDLE_TIMEOUT / 2).await;
        match pool.upgrade() {
            Some(inner) if !inner.permits.is_closed() => {
                let expired = inner.expired();
                drop(inner);
                close_all(expired).await;
            }
            _ => return,
        }
    }
}

impl PooledConn {
    /// Closes the connection when it is dropped instead of giving it back.
    pub(crate) fn close_on_drop(&mut self) {
        self.close = true;
    }
}

impl std::ops::Deref for PooledConn {
    type Target = PgConnection;

    fn deref(&self) -> &PgConnection {
        self.conn
            .as_ref()
            .expect("a lent connection is present until dropped")
    }
}

impl std::ops::DerefMut for PooledConn {
    fn deref_mut(&mut self) -> &mut PgConnection {
        self.conn
            .as_mut()
            .expect("a lent connection is present until dropped")
    }
}

impl Drop for PooledConn {
    fn drop(&mut self) {
        let Some(conn) = self.conn.take() else {
            return;
        };
        // Dropping a PgConnection closes its socket; the server rolls back what it held.
        if self.close || conn.should_flush() || self.pool.permits.is_closed() {
            return;
        }
        self.pool.lock().push(Idle {
            conn,
            since: Instant::now(),
        });
    }
}
