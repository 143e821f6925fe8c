//! The traits every SQL backend implements: a backend hands out namespaces, a namespace runs
//! statements, transactions, migrations and the outbox relay of one component.

use crate::{Migration, Rows, SqlError, Value};
use futures::future::BoxFuture;
use std::fmt;
use std::sync::Arc;

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
    async fn namespace(&self, component: &str) -> Result<Arc<dyn Namespace>, SqlError>;
}

/// The database of one component. Everything it runs is confined to the component's own
/// schema (PostgreSQL) or file (SQLite).
#[async_trait::async_trait]
pub trait Namespace: Send + Sync {
    /// Runs a statement that returns rows; parameters are `$1`, `$2`, ….
    async fn query(&self, sql: &str, params: Vec<Value>) -> Result<Rows, SqlError>;

    /// Runs a statement and returns how many rows it changed.
    async fn execute(&self, sql: &str, params: Vec<Value>) -> Result<u64, SqlError>;

    /// Starts a transaction (on SQLite with `BEGIN IMMEDIATE`, so concurrent writers queue on
    /// the busy timeout instead of failing when a reader upgrades to a writer).
    async fn begin(&self) -> Result<Box<dyn Tx>, SqlError>;

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
