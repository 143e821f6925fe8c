//! `agora:platform/sql` — the host side of the sql capability.
//!
//! A component that imports the interface gets a [`SqlCtx`] in its store: the [`Namespace`] of
//! its own database (a PostgreSQL schema reached through its own login role, or an SQLite
//! file with `ATTACH` disabled) and the check of its publish grant. A component the manifest
//! grants no sql gets `denied` from every call. Transactions are resources in the store's
//! [`ResourceTable`]: dropping one (or dropping the store at the end of a request) rolls it
//! back. `transaction.publish` writes to the namespace's outbox inside the transaction; the
//! host relays committed rows with [`Namespace::relay_outbox`], woken by
//! [`Namespace::outbox_signal`].
//!
//! The backends differ where their databases do, and nowhere else:
//! - PostgreSQL runs one statement per call; SQLite runs every statement of the text.
//! - After a failed statement PostgreSQL refuses the rest of the transaction until a
//!   `ROLLBACK TO SAVEPOINT`, and its `commit` then fails with `25P02`; SQLite goes on.
//! - SQLite transactions start with `BEGIN IMMEDIATE` (one writer per component at a time, the
//!   others wait up to 5 s): a guest that writes outside its open transaction waits on itself
//!   and gets `database is locked`.
//! - Parameters on SQLite are bound by value and never checked against the statement: a
//!   missing `$n` reads as NULL where PostgreSQL reports an error.
//!
//! Every call of a store runs within the store's [`Bounds`] ([`SqlCtx::bounded`]): the
//! deadline of its request or event (a statement still running then is cancelled, on the
//! server too, and answers a `57014` query error; waiting for a connection past it answers
//! `unavailable`) and the component's result cap (a `54000` `too_large` query error naming
//! it). The backends' module docs say how each enforces them.
//!
//! ```no_run
//! use std::sync::Arc;
//! use agora_sql::{SqlCtx, SqlView};
//! # struct State { sql: SqlCtx, table: wasmtime::component::ResourceTable }
//! # async fn link(linker: &mut wasmtime::component::Linker<State>) -> Result<(), Box<dyn std::error::Error>> {
//! agora_sql::add_to_linker(linker, |state: &mut State| SqlView {
//!     ctx: &mut state.sql,
//!     table: &mut state.table,
//! })?;
//! let backend = agora_sql::connect(None, std::path::Path::new(".agora")).await?;
//! let namespace = backend.namespace("catalog").await?;
//! let ctx = SqlCtx::granted(namespace, Arc::new(|subject: &str| subject.starts_with("catalog.")));
//! # Ok(()) }
//! ```

#![deny(missing_docs)]

mod backend;
mod error;
mod migrate;
mod pg_pool;
mod postgres;
mod sqlite;
mod unit;
mod value;

pub use backend::{
    Backlog, Bounds, DEFAULT_RESULT_BYTES, Dialect, Namespace, OutboxMessage, PublishFn,
    RelayError, SqlBackend, Tx,
};
pub use bindings::agora::platform::sql::{Rows, Value};
pub use error::SqlError;
pub use migrate::Migration;
pub use postgres::{OUTBOX_VACUUM_EVERY, PostgresBackend};
pub use sqlite::SqliteBackend;
pub use unit::{Database, Sql};

use bindings::agora::platform::sql::{Error, Host, HostTransaction};
use std::path::Path;
use std::sync::Arc;
use std::time::Instant;
use tokio::sync::Notify;
use tracing::Instrument as _;
use wasmtime::component::{HasData, Linker, Resource, ResourceTable};

/// Generated bindings of the `agora:platform/sql` interface.
#[allow(missing_docs)]
pub mod bindings {
    wasmtime::component::bindgen!({
        path: "../../wit",
        world: "agora:platform/sql-user",
        imports: { default: async | trappable | tracing },
        with: { "agora:platform/sql.transaction": crate::Transaction },
        additional_derives: [PartialEq],
    });
}

/// Connections in a component's pool unless its `limits.sql_connections` says otherwise.
pub const DEFAULT_CONNECTIONS: u32 = 8;

/// The WIT name of the interface, as it appears in a component's imports.
pub const INTERFACE: &str = "agora:platform/sql";

/// Largest payload `transaction.publish` accepts, in bytes: the messaging capability's.
pub const MAX_PAYLOAD_BYTES: usize = agora_messaging::MAX_PAYLOAD_BYTES;

/// Longest component name a namespace can have (the PostgreSQL role `agora_<name>` must fit
/// in 63 bytes).
pub const MAX_COMPONENT_NAME: usize = 57;

/// Opens the backend named by `database_url`: `None` is SQLite files under
/// `<data_dir>/sql/`; `sqlite://DIR` is SQLite files in `DIR`; `postgres://…` or
/// `postgresql://…` is PostgreSQL (connected before this returns). Anything else is an error.
pub async fn connect(
    database_url: Option<&str>,
    data_dir: &Path,
) -> Result<Arc<dyn SqlBackend>, SqlError> {
    let Some(url) = database_url else {
        return Ok(Arc::new(SqliteBackend::new(&data_dir.join("sql"))?));
    };
    if let Some(dir) = url.strip_prefix("sqlite://") {
        if dir.is_empty() {
            return Err(SqlError::Config(
                "the sqlite URL names no folder (sqlite://PATH, e.g. sqlite://.agora/sql)".into(),
            ));
        }
        return Ok(Arc::new(SqliteBackend::new(Path::new(dir))?));
    }
    if url.starts_with("postgres://") || url.starts_with("postgresql://") {
        return Ok(Arc::new(PostgresBackend::connect(url).await?));
    }
    // Name only the scheme: the rest of a URL may hold a password.
    let scheme = url.split_once("://").map_or("(none)", |(scheme, _)| scheme);
    Err(SqlError::Config(format!(
        "the database URL must start with postgres://, postgresql:// or sqlite://, not scheme \
         {scheme:?}"
    )))
}

/// Checks that `component` can name a namespace on every backend (see
/// [`SqlBackend::namespace`]).
pub(crate) fn check_component(component: &str) -> Result<(), SqlError> {
    let valid = !component.is_empty()
        && component.len() <= MAX_COMPONENT_NAME
        && component.starts_with(|c: char| c.is_ascii_lowercase())
        && component
            .chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-');
    if !valid {
        return Err(SqlError::Config(format!(
            "component name {component:?} cannot name an sql namespace: it must be 1 to \
             {MAX_COMPONENT_NAME} characters of a-z, 0-9 and `-`, starting with a letter"
        )));
    }
    if component == "public" || component.starts_with("pg-") {
        return Err(SqlError::Config(format!(
            "component name {component:?} cannot name an sql namespace: PostgreSQL reserves \
             the schema `public` and schemas starting with `pg_`"
        )));
    }
    Ok(())
}

/// The sql state of one store.
#[derive(Clone)]
pub struct SqlCtx {
    grant: Option<Grant>,
    bounds: Bounds,
    meter: agora_capability::Meter,
}

#[derive(Clone)]
struct Grant {
    namespace: Arc<dyn Namespace>,
    may_publish: Arc<dyn Fn(&str) -> bool + Send + Sync>,
    check: Option<PublishCheck>,
}

/// The broker's own rules for a message, checked by `transaction.publish` before the message
/// is written to the outbox: `Err` (with the reason) when the broker would never take it.
pub type PublishCheck = Arc<dyn Fn(&OutboxMessage) -> Result<(), String> + Send + Sync>;

/// The denied state: what a store of a component without the sql grant holds.
impl Default for SqlCtx {
    fn default() -> SqlCtx {
        SqlCtx::denied()
    }
}

impl SqlCtx {
    /// A component with an sql grant: its `namespace`, and `may_publish` telling whether it
    /// may publish to a subject (checked by `transaction.publish`).
    pub fn granted(
        namespace: Arc<dyn Namespace>,
        may_publish: Arc<dyn Fn(&str) -> bool + Send + Sync>,
    ) -> SqlCtx {
        SqlCtx {
            grant: Some(Grant {
                namespace,
                may_publish,
                check: None,
            }),
            bounds: Bounds::default(),
            meter: agora_capability::Meter::default(),
        }
    }

    /// The same context, reporting each statement, `begin` and `commit` to `meter`.
    pub fn metered(mut self, meter: agora_capability::Meter) -> SqlCtx {
        self.meter = meter;
        self
    }

    /// Reports a call that started at `started`, and hands its result on.
    fn report<T>(&self, started: Instant, result: Result<T, Error>) -> Result<T, Error> {
        self.meter.record(result.is_ok(), started);
        result
    }

    /// The same context, its calls bounded by `bounds`: the host gives each store the deadline
    /// of its request or event and the component's result cap.
    pub fn bounded(mut self, bounds: Bounds) -> SqlCtx {
        self.bounds = bounds;
        self
    }

    /// The bounds of its calls.
    pub fn bounds(&self) -> &Bounds {
        &self.bounds
    }

    /// The same context, with `transaction.publish` also refusing (`unsupported`) a message
    /// `check` says the broker would never take — so it is refused to the guest at once
    /// rather than dead-lettered by the relay.
    pub fn with_publish_check(mut self, check: PublishCheck) -> SqlCtx {
        if let Some(grant) = &mut self.grant {
            grant.check = Some(check);
        }
        self
    }

    /// A component without an sql grant: every call answers `denied`.
    pub fn denied() -> SqlCtx {
        SqlCtx {
            grant: None,
            bounds: Bounds::default(),
            meter: agora_capability::Meter::default(),
        }
    }

    /// The namespace, when granted.
    pub fn namespace(&self) -> Option<&Arc<dyn Namespace>> {
        self.grant.as_ref().map(|grant| &grant.namespace)
    }
}

/// What the host functions work on: the store's [`SqlCtx`] and its resource table.
pub struct SqlView<'a> {
    /// The sql state of the store.
    pub ctx: &'a mut SqlCtx,
    /// The store's resource table, which holds the open transactions.
    pub table: &'a mut ResourceTable,
}

/// Marks [`SqlView`] as the data of the sql host functions (see [`add_to_linker`]).
pub struct SqlData;

impl HasData for SqlData {
    type Data<'a> = SqlView<'a>;
}

/// The host representation of a guest's `transaction` resource.
pub struct Transaction {
    /// None once committed or rolled back.
    tx: Option<Box<dyn Tx>>,
    /// Whether `publish` wrote to the outbox: the commit then wakes the relay.
    wrote_outbox: bool,
    signal: Arc<Notify>,
    /// The database, for the spans.
    system: &'static str,
}

/// The span of one call to the database (OpenTelemetry's database client conventions).
fn span(system: &'static str, operation: &'static str) -> tracing::Span {
    tracing::debug_span!(
        target: agora_capability::SPAN_TARGET,
        "sql",
        "otel.name" = %format_args!("sql {operation}"),
        "otel.kind" = "client",
        "db.system.name" = system,
        "db.operation.name" = operation,
    )
}

/// The guest's error for `err`, logging the ones that are the host's problem.
fn to_guest(err: SqlError) -> Error {
    if let SqlError::Unavailable(message) | SqlError::Config(message) = &err {
        tracing::warn!(%message, "sql unavailable");
    }
    err.to_guest()
}

/// Why a message cannot be published, if it cannot: the messaging capability's own rules for
/// a subject and headers (the outbox relays to that broker), and the payload cap.
fn check_message(
    subject: &str,
    payload: &[u8],
    headers: &[(String, String)],
) -> Result<(), SqlError> {
    agora_messaging::validate_subject(subject).map_err(SqlError::Unsupported)?;
    if payload.len() > MAX_PAYLOAD_BYTES {
        return Err(SqlError::Unsupported(format!(
            "the payload is {} bytes, over the {MAX_PAYLOAD_BYTES}-byte limit",
            payload.len()
        )));
    }
    agora_messaging::validate_headers(headers).map_err(SqlError::Unsupported)
}

impl Host for SqlView<'_> {
    async fn query(
        &mut self,
        statement: String,
        params: Vec<Value>,
    ) -> wasmtime::Result<Result<Rows, Error>> {
        let started = Instant::now();
        let result = match &self.ctx.grant {
            None => Err(Error::Denied),
            Some(grant) => grant
                .namespace
                .query_within(&statement, params, &self.ctx.bounds)
                .instrument(span(grant.namespace.system(), "query"))
                .await
                .map_err(to_guest),
        };
        Ok(self.ctx.report(started, result))
    }

    async fn execute(
        &mut self,
        statement: String,
        params: Vec<Value>,
    ) -> wasmtime::Result<Result<u64, Error>> {
        let started = Instant::now();
        let result = match &self.ctx.grant {
            None => Err(Error::Denied),
            Some(grant) => grant
                .namespace
                .execute_within(&statement, params, &self.ctx.bounds)
                .instrument(span(grant.namespace.system(), "execute"))
                .await
                .map_err(to_guest),
        };
        Ok(self.ctx.report(started, result))
    }

    async fn begin(&mut self) -> wasmtime::Result<Result<Resource<Transaction>, Error>> {
        let Some(grant) = &self.ctx.grant else {
            return Ok(Err(Error::Denied));
        };
        let started = Instant::now();
        let system = grant.namespace.system();
        let tx = match grant
            .namespace
            .begin_within(&self.ctx.bounds)
            .instrument(span(system, "begin"))
            .await
        {
            Ok(tx) => tx,
            Err(err) => return Ok(self.ctx.report(started, Err(to_guest(err)))),
        };
        self.ctx.meter.record(true, started);
        let transaction = Transaction {
            tx: Some(tx),
            wrote_outbox: false,
            signal: grant.namespace.outbox_signal(),
            system,
        };
        Ok(Ok(self.table.push(transaction)?))
    }
}

impl HostTransaction for SqlView<'_> {
    async fn query(
        &mut self,
        transaction: Resource<Transaction>,
        statement: String,
        params: Vec<Value>,
    ) -> wasmtime::Result<Result<Rows, Error>> {
        let transaction = self.table.get_mut(&transaction)?;
        let system = transaction.system;
        let Some(tx) = transaction.tx.as_mut() else {
            return Ok(Err(Error::Closed));
        };
        let started = Instant::now();
        let result = tx
            .query(&statement, params)
            .instrument(span(system, "query"))
            .await
            .map_err(to_guest);
        Ok(self.ctx.report(started, result))
    }

    async fn execute(
        &mut self,
        transaction: Resource<Transaction>,
        statement: String,
        params: Vec<Value>,
    ) -> wasmtime::Result<Result<u64, Error>> {
        let transaction = self.table.get_mut(&transaction)?;
        let system = transaction.system;
        let Some(tx) = transaction.tx.as_mut() else {
            return Ok(Err(Error::Closed));
        };
        let started = Instant::now();
        let result = tx
            .execute(&statement, params)
            .instrument(span(system, "execute"))
            .await
            .map_err(to_guest);
        Ok(self.ctx.report(started, result))
    }

    async fn publish(
        &mut self,
        transaction: Resource<Transaction>,
        subject: String,
        payload: Vec<u8>,
        headers: Vec<(String, String)>,
    ) -> wasmtime::Result<Result<String, Error>> {
        let transaction = self.table.get_mut(&transaction)?;
        let Some(tx) = transaction.tx.as_mut() else {
            return Ok(Err(Error::Closed));
        };
        let Some(grant) = &self.ctx.grant else {
            return Ok(Err(Error::Denied));
        };
        if !(grant.may_publish)(&subject) {
            return Ok(Err(Error::Denied));
        }
        if let Err(err) = check_message(&subject, &payload, &headers) {
            return Ok(Err(to_guest(err)));
        }
        // The row keeps the trace context of the transaction's caller: the relay publishes
        // it with the message, so its consumers continue this trace.
        let mut headers = headers;
        agora_capability::add_trace_headers(&mut headers);
        let message = OutboxMessage {
            id: uuid::Uuid::new_v4().to_string(),
            subject,
            payload,
            headers,
        };
        if let Some(Err(reason)) = grant.check.as_ref().map(|check| check(&message)) {
            return Ok(Err(Error::Unsupported(reason)));
        }
        if let Err(err) = tx.outbox_insert(&message).await {
            return Ok(Err(to_guest(err)));
        }
        transaction.wrote_outbox = true;
        Ok(Ok(message.id))
    }

    async fn commit(
        &mut self,
        transaction: Resource<Transaction>,
    ) -> wasmtime::Result<Result<(), Error>> {
        let transaction = self.table.get_mut(&transaction)?;
        let Some(tx) = transaction.tx.take() else {
            return Ok(Err(Error::Closed));
        };
        let started = Instant::now();
        if let Err(err) = tx
            .commit()
            .instrument(span(transaction.system, "commit"))
            .await
        {
            return Ok(self.ctx.report(started, Err(to_guest(err))));
        }
        self.ctx.meter.record(true, started);
        if transaction.wrote_outbox {
            transaction.signal.notify_one();
        }
        Ok(Ok(()))
    }

    async fn rollback(
        &mut self,
        transaction: Resource<Transaction>,
    ) -> wasmtime::Result<Result<(), Error>> {
        let Some(tx) = self.table.get_mut(&transaction)?.tx.take() else {
            return Ok(Err(Error::Closed));
        };
        Ok(tx.rollback().await.map_err(to_guest))
    }

    async fn drop(&mut self, transaction: Resource<Transaction>) -> wasmtime::Result<()> {
        let transaction = self.table.delete(transaction)?;
        if let Some(tx) = transaction.tx
            && let Err(err) = tx.rollback().await
        {
            // The connection is dropped with the transaction, which rolls it back anyway.
            tracing::debug!(error = %err, "rolling back a dropped transaction failed");
        }
        Ok(())
    }
}

/// Adds `agora:platform/sql` to `linker`; `get` makes the [`SqlView`] of a store's data.
pub fn add_to_linker<T: Send + 'static>(
    linker: &mut Linker<T>,
    get: fn(&mut T) -> SqlView<'_>,
) -> wasmtime::Result<()> {
    bindings::agora::platform::sql::add_to_linker::<T, SqlData>(linker, get)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn component_names() {
        for good in ["a", "order", "my-shop-2", &"x".repeat(MAX_COMPONENT_NAME)] {
            assert!(check_component(good).is_ok(), "{good}");
        }
        for bad in [
            "",
            "Order",
            "1a",
            "a_b",
            "a.b",
            "public",
            "pg-x",
            &"x".repeat(MAX_COMPONENT_NAME + 1),
        ] {
            assert!(
                matches!(check_component(bad), Err(SqlError::Config(_))),
                "{bad}"
            );
        }
    }

    #[test]
    fn messages_are_checked() {
        assert!(check_message("order.created", b"{}", &[]).is_ok());
        assert!(check_message("", b"", &[]).is_err());
        assert!(check_message("order.*", b"", &[]).is_err());
        assert!(check_message("order..x", b"", &[]).is_err());
        assert!(check_message("a b", b"", &[]).is_err());
        assert!(check_message("a", &vec![0; MAX_PAYLOAD_BYTES + 1], &[]).is_err());
        assert!(check_message("a", &vec![0; MAX_PAYLOAD_BYTES], &[]).is_ok());
        let header = |k: &str, v: &str| vec![(k.to_owned(), v.to_owned())];
        assert!(check_message("a", b"", &header("x-trace", "1")).is_ok());
        assert!(check_message("a", b"", &header("x:y", "1")).is_err());
        assert!(check_message("a", b"", &header("x", "1\r\n2")).is_err());
        assert!(check_message("a", b"", &header("Nats-Msg-Id", "1")).is_err());
    }
}
