//! The traits every SQL backend implements: a backend hands out namespaces, a namespace runs
//! statements, transactions, migrations and the outbox relay of one component.

use crate::{Migration, Rows, SqlError, Value};
use futures::future::BoxFuture;
use std::fmt;
use std::sync::Arc;
use std::time::Instant;

/// Result cap when none is given: the default memory limit of a component (128 MiB).
pub const DEFAULT_RESULT_BYTES: usize = 128 << 20;

/// What one store's calls may cost the host: until when they may run, and how much of a
/// result they may read into host memory.
///
/// The host gives every store the deadline of its request or event and the component's
/// `limits.sql_result_kib`; [`Bounds::default`] (no deadline, [`DEFAULT_RESULT_BYTES`]) is what
/// the host's own calls and the bound-less trait methods use.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Bounds {
    /// When the request or event that makes the call ends: a statement still running then is
    /// cancelled and its call answers a `57014` query error; waiting for a free connection
    /// past it answers `unavailable`.
    pub deadline: Option<Instant>,
    /// Most bytes of rows one `query` reads into host memory (each value counts its payload
    /// plus its in-memory size); past it the call answers a `54000` query error naming the cap.
    /// On SQLite it also caps every single text or blob a statement makes.
    pub max_result_bytes: usize,
    /// The longest any call of this component may run: its whole deadline
    /// (`limits.deadline_ms`). A PostgreSQL session of the component's role still running a
    /// statement older than that after the host gave up on one of its calls is ended by the
    /// host (a guest can switch off the server's own checks for its session).
    pub max_statement: Option<std::time::Duration>,
}

impl Default for Bounds {
    fn default() -> Bounds {
        Bounds {
            deadline: None,
            max_result_bytes: DEFAULT_RESULT_BYTES,
            max_statement: None,
        }
    }
}

impl Bounds {
    /// The time left before the deadline, or the [`SqlError::Timeout`] of a passed one.
    /// `None`: no deadline.
    pub(crate) fn remaining(&self) -> Result<Option<std::time::Duration>, SqlError> {
        match self.deadline {
            None => Ok(None),
            Some(deadline) => match deadline.checked_duration_since(Instant::now()) {
                Some(left) if !left.is_zero() => Ok(Some(left)),
                _ => Err(SqlError::timeout()),
            },
        }
    }

    /// Runs `work` until the deadline: past it, `work` is dropped and the answer is
    /// [`SqlError::Timeout`].
    pub(crate) async fn run<T>(
        &self,
        work: impl std::future::Future<Output = Result<T, SqlError>>,
    ) -> Result<T, SqlError> {
        self.remaining()?;
        match self.deadline {
            None => work.await,
            Some(deadline) => tokio::time::timeout_at(deadline.into(), work)
                .await
                .unwrap_or_else(|_| Err(SqlError::timeout())),
        }
    }

    /// Waits for `acquire` (a free connection) until the deadline: past it, `unavailable`.
    pub(crate) async fn acquire<T>(
        &self,
        pool_size: u32,
        acquire: impl std::future::Future<Output = Result<T, sqlx::Error>>,
    ) -> Result<T, SqlError> {
        let exhausted = || {
            SqlError::Unavailable(format!(
                "no database connection became free before the deadline (this component's \
                 pool holds at most {pool_size})"
            ))
        };
        if self.remaining().is_err() {
            return Err(exhausted());
        }
        let acquired = match self.deadline {
            None => acquire.await,
            Some(deadline) => tokio::time::timeout_at(deadline.into(), acquire)
                .await
                .map_err(|_| exhausted())?,
        };
        acquired.map_err(|err| match err {
            sqlx::Error::PoolTimedOut => SqlError::Unavailable(format!(
                "no database connection became free in time (this component's pool holds at \
                 most {pool_size}, or the database is unreachable)"
            )),
            other => other.into(),
        })
    }

    /// The error of a result over the cap.
    pub(crate) fn too_large(&self) -> SqlError {
        SqlError::TooLarge(format!(
            "the result is over this component's cap of {} KiB of rows read into the host \
             (limits.sql_result_kib); select fewer rows or smaller values",
            self.max_result_bytes >> 10
        ))
    }
}

/// Counts the bytes of a result as its rows arrive.
pub(crate) struct ResultBudget {
    used: usize,
    cap: usize,
}

impl ResultBudget {
    pub(crate) fn new(bounds: &Bounds) -> ResultBudget {
        ResultBudget {
            used: 0,
            cap: bounds.max_result_bytes,
        }
    }

    /// Adds one row; `false` once the total is over the cap.
    pub(crate) fn add(&mut self, row: &[Value]) -> bool {
        let size = std::mem::size_of::<Vec<Value>>()
            + row
                .iter()
                .map(|value| {
                    std::mem::size_of::<Value>()
                        + match value {
                            Value::Text(text) | Value::Decimal(text) => text.len(),
                            Value::Bytes(bytes) => bytes.len(),
                            _ => 0,
                        }
                })
                .sum::<usize>();
        self.used = self.used.saturating_add(size);
        self.used <= self.cap
    }
}

/// Which database a backend speaks.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Dialect {
    /// PostgreSQL: one schema and one login role per component.
    Postgres,
    /// SQLite: one database file per component.
    Sqlite,
}

impl Dialect {
    /// `"postgres"` or `"sqlite"`: the dialect suffix of migration files, and the name in logs.
    pub fn as_str(self) -> &'static str {
        match self {
            Dialect::Postgres => "postgres",
            Dialect::Sqlite => "sqlite",
        }
    }
}

impl fmt::Display for Dialect {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A message written to a component's outbox inside a transaction, relayed after commit.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OutboxMessage {
    /// A UUID chosen when the message was written; publishers use it as the message id
    /// (`Nats-Msg-Id`), so a relay repeated after a crash is deduplicated.
    pub id: String,
    /// The subject to publish to, e.g. `order.created`.
    pub subject: String,
    /// The message body.
    pub payload: Vec<u8>,
    /// Message headers, in order.
    pub headers: Vec<(String, String)>,
}

/// Why the publish callback of [`Namespace::relay_outbox`] did not publish a message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RelayError {
    /// Not now (the broker is unreachable, say): the row stays, and so do the rows after it,
    /// for the next relay — order is kept.
    Retry(String),
    /// Never (the broker refuses the message by its rules, or the component may not publish
    /// to its subject): the row moves to the dead-letter table `_agora_outbox_dead` with this
    /// reason, and the relay goes on with the next rows.
    Reject(String),
}

impl From<String> for RelayError {
    /// A plain error text is a [`RelayError::Retry`].
    fn from(reason: String) -> RelayError {
        RelayError::Retry(reason)
    }
}

/// What one relay pass decided for the outbox rows it read, in order: the rows to delete
/// (published, or refused for good) and, among them, those to keep in `_agora_outbox_dead`
/// with their reason. Both backends relay through [`relay_rows`] and only write its plan.
#[derive(Debug, Default)]
pub(crate) struct RelayPlan {
    /// The `seq` of every row done with.
    pub done: Vec<i64>,
    /// The rows refused for good: `seq` and why.
    pub dead: Vec<(i64, String)>,
}

/// How many rows of one relay pass are published at once: their acknowledgements are awaited
/// together, so a pass of many rows costs about one broker round trip, not one per row.
const RELAY_IN_FLIGHT: usize = 32;

/// Publishes `rows` (their `seq`, and the row as a message or why it cannot be read as one),
/// up to [`RELAY_IN_FLIGHT`] at once, sent in order, and decides in order: a row published is
/// done; a row refused for good ([`RelayError::Reject`], or unreadable) is done and dead; the
/// first retryable failure stops the pass, leaving that row and the ones after it for the
/// next — the outbox keeps its order. A row after the failure that the broker took meanwhile
/// is published again by the next pass under the same message id, which the broker drops as a
/// repeat. `place` names the outbox in logs.
pub(crate) async fn relay_rows(
    rows: Vec<(i64, Result<OutboxMessage, String>)>,
    publish: &PublishFn,
    place: &str,
) -> RelayPlan {
    use futures::StreamExt as _;
    let mut outcomes = futures::stream::iter(rows)
        .map(|(seq, row)| async move {
            let row = match row {
                Ok(message) => {
                    let published = publish(&message).await;
                    Ok((message, published))
                }
                Err(err) => Err(err),
            };
            (seq, row)
        })
        .buffered(RELAY_IN_FLIGHT);
    let mut plan = RelayPlan::default();
    while let Some((seq, row)) = outcomes.next().await {
        let rejected = match row {
            Ok((_, Ok(()))) => None,
            Ok((message, Err(RelayError::Retry(err)))) => {
                tracing::warn!(outbox = %place, id = %message.id,
                    subject = %message.subject, error = %err,
                    "outbox relay stopped: publish failed, the message stays");
                break;
            }
            Ok((message, Err(RelayError::Reject(reason)))) => Some(format!(
                "message {} to {}: {reason}",
                message.id, message.subject
            )),
            Err(err) => Some(format!("the row cannot be read as a message: {err}")),
        };
        if let Some(reason) = rejected {
            tracing::error!(outbox = %place, seq, %reason,
                "outbox row moved to _agora_outbox_dead: it can never be published");
            plan.dead.push((seq, reason));
        }
        plan.done.push(seq);
    }
    plan
}

/// The publish callback of [`Namespace::relay_outbox`]: publishes one message, or says why not.
pub type PublishFn =
    dyn for<'a> Fn(&'a OutboxMessage) -> BoxFuture<'a, Result<(), RelayError>> + Send + Sync;

/// A database backend shared by every component of a host.
#[async_trait::async_trait]
pub trait SqlBackend: Send + Sync + 'static {
    /// Which database this is.
    fn dialect(&self) -> Dialect;

    /// Creates (idempotently) and opens the namespace of `component`. Calling it again for
    /// the same component returns the same namespace (same pool, same outbox signal).
    ///
    /// Component names are 1 to 57 characters of `a-z`, `0-9` and `-`, starting with a letter
    /// (57 so that the PostgreSQL role `agora_<name>` fits in 63 bytes); `public` and names
    /// starting with `pg-` are refused because their schemas belong to PostgreSQL. Both
    /// backends apply the same rule, so a manifest works on either.
    async fn namespace(&self, component: &str) -> Result<Arc<dyn Namespace>, SqlError> {
        self.namespace_with(component, crate::DEFAULT_CONNECTIONS)
            .await
    }

    /// [`SqlBackend::namespace`] whose pool holds at most `connections` connections (at least
    /// one), the component's `limits.sql_connections`: a call waits for one of them until its
    /// deadline, then answers `unavailable`, so one component cannot take more of the
    /// server's connections than that. The bound is set when the namespace first opens;
    /// later calls return the open namespace as it is.
    async fn namespace_with(
        &self,
        component: &str,
        connections: u32,
    ) -> Result<Arc<dyn Namespace>, SqlError>;
}

/// The database of one component. Everything it runs is confined to the component's own
/// schema (PostgreSQL) or file (SQLite).
#[async_trait::async_trait]
pub trait Namespace: Send + Sync {
    /// Runs a statement that returns rows; parameters are `$1`, `$2`, …. Default [`Bounds`].
    async fn query(&self, sql: &str, params: Vec<Value>) -> Result<Rows, SqlError> {
        self.query_within(sql, params, &Bounds::default()).await
    }

    /// Runs a statement and returns how many rows it changed. Default [`Bounds`].
    async fn execute(&self, sql: &str, params: Vec<Value>) -> Result<u64, SqlError> {
        self.execute_within(sql, params, &Bounds::default()).await
    }

    /// Starts a transaction with default [`Bounds`].
    async fn begin(&self) -> Result<Box<dyn Tx>, SqlError> {
        self.begin_within(&Bounds::default()).await
    }

    /// As [`Namespace::query`], within `bounds`: a statement still running at the deadline is
    /// cancelled (the connection it ran on is closed, not returned to the pool), and reading
    /// stops at the result cap.
    async fn query_within(
        &self,
        sql: &str,
        params: Vec<Value>,
        bounds: &Bounds,
    ) -> Result<Rows, SqlError>;

    /// As [`Namespace::execute`], within `bounds`' deadline.
    async fn execute_within(
        &self,
        sql: &str,
        params: Vec<Value>,
        bounds: &Bounds,
    ) -> Result<u64, SqlError>;

    /// Starts a transaction (on SQLite with `BEGIN IMMEDIATE`, so concurrent writers queue on
    /// the busy timeout instead of failing when a reader upgrades to a writer). Every statement
    /// of it runs within `bounds`; a transaction dropped without `commit` or `rollback` is
    /// rolled back (on PostgreSQL by closing its connection).
    async fn begin_within(&self, bounds: &Bounds) -> Result<Box<dyn Tx>, SqlError>;

    /// Applies the migrations not yet applied, in order, each in its own transaction, and
    /// returns the versions it applied. A migration that was applied with a different text
    /// is an error, as is one that fails (nothing of that one is kept; those before it stay).
    async fn migrate(&self, migrations: &[Migration]) -> Result<Vec<String>, SqlError>;

    /// Relays the outbox: in one transaction claims up to `limit` rows in insertion order
    /// (PostgreSQL: `FOR UPDATE SKIP LOCKED`, so replicas never relay the same row
    /// concurrently), calls `publish` for each in order, deletes those published, commits.
    /// Stops at the first [`RelayError::Retry`], keeping that row and the ones after it. A row
    /// answered [`RelayError::Reject`], or one that cannot be read as a message, moves to the
    /// table `_agora_outbox_dead` (its columns, `dead_at` and `reason`) in the same
    /// transaction, with an error log, and the relay goes on: one bad row never stops the
    /// component's other events. Returns how many rows left the outbox (published or
    /// dead-lettered).
    ///
    /// The outbox table lives in the component's own namespace, so a guest can also insert
    /// into it with plain SQL, bypassing the publish grant that `transaction.publish` checks:
    /// `publish` must check the component's grant for the subject again (and reject a message
    /// it refuses).
    async fn relay_outbox(&self, limit: usize, publish: &PublishFn) -> Result<usize, SqlError>;

    /// Signalled (`notify_one`) after every commit that wrote outbox rows.
    fn outbox_signal(&self) -> Arc<tokio::sync::Notify>;

    /// How many rows wait in the outbox and how old the oldest is (the relay's lag).
    async fn outbox_backlog(&self) -> Result<Backlog, SqlError>;

    /// The database, as OpenTelemetry's `db.system.name` names it (`postgresql`, `sqlite`).
    fn system(&self) -> &'static str;
}

/// What waits in an outbox.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct Backlog {
    /// Rows not yet relayed.
    pub rows: u64,
    /// Seconds since the oldest of them was written (0 when there is none).
    pub oldest_seconds: f64,
}

/// An open transaction of a namespace. Dropping it without `commit` rolls it back.
#[async_trait::async_trait]
pub trait Tx: Send {
    /// As [`Namespace::query`], inside the transaction.
    async fn query(&mut self, sql: &str, params: Vec<Value>) -> Result<Rows, SqlError>;
    /// As [`Namespace::execute`], inside the transaction.
    async fn execute(&mut self, sql: &str, params: Vec<Value>) -> Result<u64, SqlError>;
    /// Writes `msg` to the outbox, as part of this transaction.
    async fn outbox_insert(&mut self, msg: &OutboxMessage) -> Result<(), SqlError>;
    /// Commits; on error the transaction is rolled back.
    async fn commit(self: Box<Self>) -> Result<(), SqlError>;
    /// Rolls back.
    async fn rollback(self: Box<Self>) -> Result<(), SqlError>;
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicUsize, Ordering};

    /// Gives a closure the higher-ranked signature of [`PublishFn`].
    fn publisher<F>(f: F) -> F
    where
        F: for<'a> Fn(&'a OutboxMessage) -> BoxFuture<'a, Result<(), RelayError>> + Send + Sync,
    {
        f
    }

    fn row(seq: i64) -> (i64, Result<OutboxMessage, String>) {
        let message = OutboxMessage {
            id: format!("m{seq}"),
            subject: "order.created".to_owned(),
            payload: seq.to_string().into_bytes(),
            headers: Vec::new(),
        };
        (seq, Ok(message))
    }

    #[tokio::test]
    async fn a_pass_awaits_its_acknowledgements_together_and_decides_in_order() {
        let in_flight = Arc::new(AtomicUsize::new(0));
        let most = Arc::new(AtomicUsize::new(0));
        let (now, peak) = (in_flight.clone(), most.clone());
        let publish = publisher(move |message| {
            let (now, peak) = (now.clone(), peak.clone());
            let fails = message.payload == b"4";
            Box::pin(async move {
                peak.fetch_max(now.fetch_add(1, Ordering::SeqCst) + 1, Ordering::SeqCst);
                // The broker's acknowledgement takes a while.
                tokio::time::sleep(std::time::Duration::from_millis(20)).await;
                now.fetch_sub(1, Ordering::SeqCst);
                if fails {
                    Err(RelayError::Retry("broker down".to_owned()))
                } else {
                    Ok(())
                }
            })
        });
        let plan = relay_rows((1..=6).map(row).collect(), &publish, "test").await;
        assert!(
            most.load(Ordering::SeqCst) > 1,
            "the pass published one row at a time"
        );
        // Rows 1–3 are done; 4 failed, so it and everything after it stay for the next pass.
        assert_eq!(plan.done, [1, 2, 3]);
        assert!(plan.dead.is_empty());
    }
}
