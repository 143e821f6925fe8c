//! The embedded default: one SQLite file per component, `<dir>/<component>.sqlite`.
//!
//! Isolation: a component's connections open only its own file, and every connection gets
//! `SQLITE_LIMIT_ATTACHED` = 0 before it is handed out, so `ATTACH` (and `VACUUM INTO`, which
//! attaches its target) fail: a guest cannot open another file. Connections also run in
//! SQLite's defensive mode (no `writable_schema`, no writes to shadow tables), with WAL, foreign
//! keys on and a 5 s busy timeout. Transactions start with `BEGIN IMMEDIATE`, so two writers
//! queue on the busy timeout instead of one failing with `SQLITE_BUSY` when it upgrades.
//!
//! Bounds of a guest's calls ([`Bounds`]): before each call (and once for a transaction) the
//! connection gets a progress handler that interrupts SQLite's virtual machine at the deadline
//! (a statement still running then, or left running by a call whose future was dropped, stops
//! within a few thousand instructions), and `SQLITE_LIMIT_LENGTH` lowered to the result cap,
//! so no single text or blob (`zeroblob(900000000)`) can outgrow it. Rows are read a few at a
//! time and counted against the cap. A connection returned to the pool gets both reset.

use crate::backend::{
    Backlog, Bounds, Namespace, OutboxMessage, PublishFn, ResultBudget, SqlBackend, Tx, relay_rows,
};
use crate::migrate::{failed, pending};
use crate::value::{check_decimal, rfc3339};
use crate::{Dialect, Migration, Rows, SqlError, Value, check_component};
use futures::TryStreamExt as _;
use sqlx::sqlite::{
    SqliteArguments, SqliteConnectOptions, SqliteConnection, SqliteJournalMode, SqlitePool,
    SqlitePoolOptions, SqliteRow, SqliteSynchronous,
};
use sqlx::{
    Arguments as _, AssertSqlSafe, Column as _, Decode, Executor as _, Row as _, SqlSafeStr as _,
    Sqlite, Statement as _, TypeInfo as _, ValueRef as _,
};
use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::sync::{Mutex, Notify};

/// How long a call waits for a free connection, and a writer for the lock.
const WAIT: Duration = Duration::from_secs(5);
/// Opens of a file another process is switching to WAL at the same moment.
const OPEN_ATTEMPTS: u64 = 10;
/// Rows the connection's worker thread reads ahead of the caller (sqlx's default is 50): the
/// rows in flight beyond the result cap.
const ROW_BUFFER: usize = 2;
/// Virtual machine instructions between two looks at the deadline.
const PROGRESS_OPS: i32 = 1000;
/// SQLite's own `SQLITE_LIMIT_LENGTH` (the compile-time `SQLITE_MAX_LENGTH`), restored on
/// connections returned to the pool.
const MAX_LENGTH: usize = 1_000_000_000;

const SETUP: &str = "
create table if not exists _agora_outbox (
    seq integer primary key autoincrement,
    id text not null unique,
    subject text not null,
    payload blob not null,
    headers text not null,
    created_at text not null default (strftime('%Y-%m-%dT%H:%M:%fZ', 'now'))
);
create table if not exists _agora_outbox_dead (
    seq integer primary key autoincrement,
    id text not null,
    subject text not null,
    payload blob not null,
    headers text not null,
    created_at text not null,
    dead_at text not null default (strftime('%Y-%m-%dT%H:%M:%fZ', 'now')),
    reason text not null
);
create table if not exists _agora_migrations (
    version text primary key,
    checksum text not null,
    applied_at text not null default (strftime('%Y-%m-%dT%H:%M:%fZ', 'now'))
);
";

/// The SQLite backend: a folder holding one database file per component.
pub struct SqliteBackend {
    dir: PathBuf,
    namespaces: Mutex<HashMap<String, Arc<SqliteNamespace>>>,
}

impl SqliteBackend {
    /// A backend keeping its files in `dir`, which is created when missing.
    pub fn new(dir: &Path) -> Result<SqliteBackend, SqlError> {
        std::fs::create_dir_all(dir).map_err(|err| {
            SqlError::Config(format!(
                "cannot create the sqlite folder {}: {err}",
                dir.display()
            ))
        })?;
        Ok(SqliteBackend {
            dir: dir.to_owned(),
            namespaces: Mutex::new(HashMap::new()),
        })
    }

    /// The folder holding the database files.
    pub fn dir(&self) -> &Path {
        &self.dir
    }
}

#[async_trait::async_trait]
impl SqlBackend for SqliteBackend {
    fn dialect(&self) -> Dialect {
        Dialect::Sqlite
    }

    async fn namespace_with(
        &self,
        component: &str,
        connections: u32,
    ) -> Result<Arc<dyn Namespace>, SqlError> {
        check_component(component)?;
        let connections = connections.max(1);
        let mut namespaces = self.namespaces.lock().await;
        if let Some(namespace) = namespaces.get(component) {
            return Ok(namespace.clone());
        }
        let path = self.dir.join(format!("{component}.sqlite"));
        let options = SqliteConnectOptions::new()
            .filename(&path)
            .create_if_missing(true)
            .journal_mode(SqliteJournalMode::Wal)
            .synchronous(SqliteSynchronous::Normal)
            .foreign_keys(true)
            .busy_timeout(WAIT)
            .row_buffer_size(ROW_BUFFER);
        // Switching a new file to WAL needs a moment of exclusive access, and SQLite answers
        // "database is locked" at once (without its busy handler) when another process opens
        // the same file at that moment — two hosts on one data dir. Such an open is retried.
        let mut attempt: u64 = 0;
        let pool = loop {
            let opened = SqlitePoolOptions::new()
                .max_connections(connections)
                .acquire_timeout(WAIT)
                // A connection to a file in this process is not lost the way a server's can
                // be: the check before each call was a round trip to its thread and nothing more.
                .test_before_acquire(false)
                .after_connect(|conn, _| Box::pin(confine(conn)))
                .after_release(|conn, _| {
                    Box::pin(async move {
                        arm(conn, &Bounds::default()).await?;
                        Ok(true)
                    })
                })
                .connect_with(options.clone())
                .await;
            match opened {
                Ok(pool) => break pool,
                Err(err) => {
                    let err = SqlError::from(err);
                    attempt += 1;
                    if attempt < OPEN_ATTEMPTS && err.detail().contains("database is locked") {
                        tokio::time::sleep(Duration::from_millis(20 * attempt)).await;
                        continue;
                    }
                    return Err(SqlError::Unavailable(format!(
                        "cannot open {}: {}",
                        path.display(),
                        err.detail()
                    )));
                }
            }
        };
        sqlx::raw_sql(SETUP).execute(&pool).await?;
        let namespace = Arc::new(SqliteNamespace {
            pool,
            signal: Arc::new(Notify::new()),
        });
        namespaces.insert(component.to_owned(), namespace.clone());
        Ok(namespace)
    }
}

/// Makes a fresh connection unable to reach any file but its own.
async fn confine(conn: &mut SqliteConnection) -> Result<(), sqlx::Error> {
    use libsqlite3_sys::{
        SQLITE_DBCONFIG_DEFENSIVE, SQLITE_LIMIT_ATTACHED, SQLITE_OK, sqlite3_db_config,
        sqlite3_limit,
    };
    let mut handle = conn.lock_handle().await?;
    let raw = handle.as_raw_handle().as_ptr();
    // SAFETY: `raw` is the handle of this open connection, and the lock we hold keeps the
    // connection's worker thread off it meanwhile. sqlite3_limit and sqlite3_db_config only
    // change the connection's settings; DEFENSIVE takes an int and a nullable int pointer.
    let (attached, defensive) = unsafe {
        sqlite3_limit(raw, SQLITE_LIMIT_ATTACHED, 0);
        let defensive = sqlite3_db_config(
            raw,
            SQLITE_DBCONFIG_DEFENSIVE,
            1 as std::ffi::c_int,
            std::ptr::null_mut::<std::ffi::c_int>(),
        );
        (sqlite3_limit(raw, SQLITE_LIMIT_ATTACHED, -1), defensive)
    };
    if attached != 0 || defensive != SQLITE_OK {
        return Err(sqlx::Error::Configuration(
            "could not disable ATTACH on a sqlite connection".into(),
        ));
    }
    Ok(())
}

/// Sets the connection's progress handler and length limit for calls within `bounds`:
/// interrupted at the deadline (none without one), no text or blob over the result cap.
async fn arm(conn: &mut SqliteConnection, bounds: &Bounds) -> Result<(), sqlx::Error> {
    use libsqlite3_sys::{SQLITE_LIMIT_LENGTH, sqlite3_limit};
    let mut handle = conn.lock_handle().await?;
    match bounds.deadline {
        Some(deadline) => {
            handle.set_progress_handler(PROGRESS_OPS, move || Instant::now() < deadline);
        }
        None => handle.remove_progress_handler(),
    }
    let length = std::ffi::c_int::try_from(bounds.max_result_bytes.clamp(1, MAX_LENGTH))
        .unwrap_or(std::ffi::c_int::MAX);
    let raw = handle.as_raw_handle().as_ptr();
    // SAFETY: `raw` is the handle of this open connection, and the lock we hold keeps the
    // connection's worker thread off it meanwhile; sqlite3_limit only changes a setting.
    unsafe {
        sqlite3_limit(raw, SQLITE_LIMIT_LENGTH, length);
    }
    Ok(())
}

/// A pooled connection armed for calls within `bounds`.
async fn acquire(
    pool: &SqlitePool,
    bounds: &Bounds,
) -> Result<sqlx::pool::PoolConnection<Sqlite>, SqlError> {
    let mut conn = bounds
        .acquire(pool.options().get_max_connections(), pool.acquire())
        .await?;
    // A pooled connection is armed for the default bounds already (see `after_release`).
    if *bounds != Bounds::default() {
        arm(&mut conn, bounds).await?;
    }
    Ok(conn)
}

/// The error of a call within `bounds`: an interrupt at the deadline is a timeout, a text or
/// blob over the length limit a result over the cap.
fn bounded<T>(result: Result<T, SqlError>, bounds: &Bounds) -> Result<T, SqlError> {
    match result {
        Err(SqlError::Query(message))
            if message.contains("interrupted") && bounds.remaining().is_err() =>
        {
            Err(SqlError::timeout())
        }
        Err(SqlError::Query(message)) if message.contains("string or blob too big") => {
            Err(bounds.too_large())
        }
        other => other,
    }
}

struct SqliteNamespace {
    pool: SqlitePool,
    signal: Arc<Notify>,
}

struct SqliteTx {
    tx: sqlx::Transaction<'static, Sqlite>,
    bounds: Bounds,
}

/// Refuses `$0` (or `$00`, `$0x`…) outside literals, identifiers and comments: SQLite takes
/// it as a named parameter and sqlx would look up argument number 0, which crashes the
/// connection's worker thread.
fn check_parameters(sql: &str) -> Result<(), SqlError> {
    let bytes = sql.as_bytes();
    let skip_to = |from: usize, end: &[u8]| -> usize {
        bytes[from..]
            .windows(end.len())
            .position(|w| w == end)
            .map_or(bytes.len(), |at| from + at + end.len())
    };
    let mut i = 0;
    while i < bytes.len() {
        i = match bytes[i] {
            // Quotes close at the next quote; a doubled quote reads as closing and reopening.
            b'\'' => skip_to(i + 1, b"'"),
            b'"' => skip_to(i + 1, b"\""),
            b'`' => skip_to(i + 1, b"`"),
            b'[' => skip_to(i + 1, b"]"),
            b'-' if bytes.get(i + 1) == Some(&b'-') => skip_to(i + 2, b"\n"),
            b'/' if bytes.get(i + 1) == Some(&b'*') => skip_to(i + 2, b"*/"),
            b'$' => {
                let digits = bytes[i + 1..]
                    .iter()
                    .take_while(|b| b.is_ascii_digit())
                    .count();
                if digits > 0 && bytes[i + 1..i + 1 + digits].iter().all(|b| *b == b'0') {
                    return Err(SqlError::Query(
                        "parameter $0 does not exist: parameters are numbered from $1".into(),
                    ));
                }
                i + 1 + digits
            }
            _ => i + 1,
        };
    }
    Ok(())
}

fn arguments(params: Vec<Value>) -> Result<SqliteArguments, SqlError> {
    let mut args = SqliteArguments::default();
    for (index, param) in params.into_iter().enumerate() {
        let unsupported = |err: &dyn std::fmt::Display| {
            SqlError::Unsupported(format!("parameter ${}: {err}", index + 1))
        };
        let added = match param {
            Value::Null => args.add(None::<i64>),
            Value::Boolean(value) => args.add(value),
            Value::Int(value) => args.add(value),
            Value::Float(value) => args.add(value),
            Value::Text(value) => args.add(value),
            Value::Bytes(value) => args.add(value),
            Value::Timestamp(micros) => args.add(rfc3339(micros).map_err(|e| unsupported(&e))?),
            Value::Decimal(text) => {
                check_decimal(&text).map_err(|e| unsupported(&e))?;
                args.add(text)
            }
        };
        added.map_err(|e| unsupported(&e))?;
    }
    Ok(args)
}

fn row_values(row: &SqliteRow) -> Result<Vec<Value>, SqlError> {
    let mut values = Vec::with_capacity(row.len());
    for (index, column) in row.columns().iter().enumerate() {
        let raw = row.try_get_raw(index)?;
        let unsupported = |what: &dyn std::fmt::Display| {
            SqlError::Unsupported(format!("column {:?}: {what}", column.name()))
        };
        if raw.is_null() {
            values.push(Value::Null);
            continue;
        }
        let class = raw.type_info().name().to_owned();
        let value = match class.as_str() {
            "INTEGER" => {
                Value::Int(<i64 as Decode<Sqlite>>::decode(raw).map_err(|e| unsupported(&e))?)
            }
            "REAL" => {
                Value::Float(<f64 as Decode<Sqlite>>::decode(raw).map_err(|e| unsupported(&e))?)
            }
            "TEXT" => {
                Value::Text(<String as Decode<Sqlite>>::decode(raw).map_err(|e| unsupported(&e))?)
            }
            "BLOB" => {
                Value::Bytes(<Vec<u8> as Decode<Sqlite>>::decode(raw).map_err(|e| unsupported(&e))?)
            }
            other => {
                return Err(unsupported(&format!(
                    "storage class {other} has no value case"
                )));
            }
        };
        values.push(value);
    }
    Ok(values)
}

/// Runs a query, reading its rows until `bounds`' result cap (the statement is stopped
/// there) and its deadline.
async fn query(
    conn: &mut SqliteConnection,
    sql: &str,
    params: Vec<Value>,
    bounds: &Bounds,
) -> Result<Rows, SqlError> {
    let result = bounds.run(query_unbounded(conn, sql, params, bounds)).await;
    bounded(result, bounds)
}

async fn query_unbounded(
    conn: &mut SqliteConnection,
    sql: &str,
    params: Vec<Value>,
    bounds: &Bounds,
) -> Result<Rows, SqlError> {
    check_parameters(sql)?;
    let args = arguments(params)?;
    let mut budget = ResultBudget::new(bounds);
    let mut rows = Vec::new();
    let mut columns = None;
    {
        let mut stream = sqlx::query_with(AssertSqlSafe(sql), args).fetch(&mut *conn);
        while let Some(row) = stream.try_next().await? {
            if columns.is_none() {
                columns = Some(
                    row.columns()
                        .iter()
                        .map(|c| c.name().to_owned())
                        .collect::<Vec<_>>(),
                );
            }
            let values = row_values(&row)?;
            if !budget.add(&values) {
                return Err(bounds.too_large());
            }
            rows.push(values);
        }
    }
    let columns = match columns {
        Some(columns) => columns,
        // No row to take the names from: the (cached) prepared statement has them.
        None => conn
            .prepare(AssertSqlSafe(sql).into_sql_str())
            .await?
            .columns()
            .iter()
            .map(|c| c.name().to_owned())
            .collect(),
    };
    Ok(Rows { columns, rows })
}

async fn execute(
    conn: &mut SqliteConnection,
    sql: &str,
    params: Vec<Value>,
    bounds: &Bounds,
) -> Result<u64, SqlError> {
    let result = bounds.run(execute_unbounded(conn, sql, params)).await;
    bounded(result, bounds)
}

async fn execute_unbounded(
    conn: &mut SqliteConnection,
    sql: &str,
    params: Vec<Value>,
) -> Result<u64, SqlError> {
    check_parameters(sql)?;
    let args = arguments(params)?;
    let done = sqlx::query_with(AssertSqlSafe(sql), args)
        .execute(&mut *conn)
        .await?;
    Ok(done.rows_affected())
}

/// One outbox row, or why it cannot be relayed (a row written with plain SQL).
fn outbox_message(row: &SqliteRow) -> Result<OutboxMessage, String> {
    let text = |i: usize| row.try_get::<String, _>(i).map_err(|e| e.to_string());
    let headers = text(4)?;
    Ok(OutboxMessage {
        id: text(1)?,
        subject: text(2)?,
        payload: row.try_get::<Vec<u8>, _>(3).map_err(|e| e.to_string())?,
        headers: serde_json::from_str(&headers).map_err(|e| format!("headers: {e}"))?,
    })
}

#[async_trait::async_trait]
impl Namespace for SqliteNamespace {
    async fn query_within(
        &self,
        sql: &str,
        params: Vec<Value>,
        bounds: &Bounds,
    ) -> Result<Rows, SqlError> {
        let mut conn = acquire(&self.pool, bounds).await?;
        query(&mut conn, sql, params, bounds).await
    }

    async fn execute_within(
        &self,
        sql: &str,
        params: Vec<Value>,
        bounds: &Bounds,
    ) -> Result<u64, SqlError> {
        let mut conn = acquire(&self.pool, bounds).await?;
        execute(&mut conn, sql, params, bounds).await
    }

    async fn begin_within(&self, bounds: &Bounds) -> Result<Box<dyn Tx>, SqlError> {
        let mut tx = self.pool.begin_with("BEGIN IMMEDIATE").await?;
        if *bounds != Bounds::default() {
            arm(&mut tx, bounds).await?;
        }
        Ok(Box::new(SqliteTx {
            tx,
            bounds: *bounds,
        }))
    }

    async fn migrate(&self, migrations: &[Migration]) -> Result<Vec<String>, SqlError> {
        let applied: HashMap<String, String> =
            sqlx::query_as("select version, checksum from _agora_migrations")
                .fetch_all(&self.pool)
                .await?
                .into_iter()
                .collect();
        let mut done = Vec::new();
        for migration in pending(migrations, &applied)? {
            // The write lock first, then a second look: another caller may have applied it.
            let mut tx = self.pool.begin_with("BEGIN IMMEDIATE").await?;
            let now: Option<String> =
                sqlx::query_scalar("select checksum from _agora_migrations where version = $1")
                    .bind(&migration.version)
                    .fetch_optional(&mut *tx)
                    .await?;
            if let Some(checksum) = now {
                let applied = HashMap::from([(migration.version.clone(), checksum)]);
                pending(std::slice::from_ref(migration), &applied)?;
                continue;
            }
            sqlx::raw_sql(AssertSqlSafe(migration.sql.as_str()))
                .execute(&mut *tx)
                .await
                .map_err(|err| failed(&migration.version, err))?;
            sqlx::query("insert into _agora_migrations (version, checksum) values ($1, $2)")
                .bind(&migration.version)
                .bind(migration.checksum())
                .execute(&mut *tx)
                .await?;
            tx.commit()
                .await
                .map_err(|err| failed(&migration.version, err))?;
            tracing::info!(version = %migration.version, "sqlite migration applied");
            done.push(migration.version.clone());
        }
        Ok(done)
    }

    async fn relay_outbox(&self, limit: usize, publish: &PublishFn) -> Result<usize, SqlError> {
        // The write lock serialises relays (and keeps writers out while this one publishes).
        let mut tx = self.pool.begin_with("BEGIN IMMEDIATE").await?;
        let rows = sqlx::query(
            "select seq, id, subject, payload, headers from _agora_outbox order by seq limit $1",
        )
        .bind(i64::try_from(limit).unwrap_or(i64::MAX))
        .fetch_all(&mut *tx)
        .await?;
        let rows = rows
            .iter()
            .map(|row| Ok((row.try_get::<i64, _>(0)?, outbox_message(row))))
            .collect::<Result<Vec<_>, sqlx::Error>>()?;
        let plan = relay_rows(rows, publish, "sqlite").await;
        for (seq, reason) in &plan.dead {
            sqlx::query(
                "insert into _agora_outbox_dead \
                 (id, subject, payload, headers, created_at, reason) \
                 select id, subject, payload, headers, created_at, $2 from _agora_outbox \
                 where seq = $1",
            )
            .bind(seq)
            .bind(reason)
            .execute(&mut *tx)
            .await?;
        }
        for seq in &plan.done {
            sqlx::query("delete from _agora_outbox where seq = $1")
                .bind(seq)
                .execute(&mut *tx)
                .await?;
        }
        let relayed = plan.done.len();
        tx.commit().await?;
        Ok(relayed)
    }

    fn outbox_signal(&self) -> Arc<Notify> {
        self.signal.clone()
    }

    fn system(&self) -> &'static str {
        "sqlite"
    }

    async fn outbox_backlog(&self) -> Result<Backlog, SqlError> {
        let row = sqlx::query(
            "select count(*), \
             coalesce((julianday('now') - julianday(min(created_at))) * 86400.0, 0.0) \
             from _agora_outbox",
        )
        .fetch_one(&self.pool)
        .await?;
        Ok(Backlog {
            rows: u64::try_from(row.try_get::<i64, _>(0)?).unwrap_or(0),
            oldest_seconds: row.try_get::<f64, _>(1)?.max(0.0),
        })
    }
}

#[async_trait::async_trait]
impl Tx for SqliteTx {
    async fn query(&mut self, sql: &str, params: Vec<Value>) -> Result<Rows, SqlError> {
        query(&mut self.tx, sql, params, &self.bounds).await
    }

    async fn execute(&mut self, sql: &str, params: Vec<Value>) -> Result<u64, SqlError> {
        execute(&mut self.tx, sql, params, &self.bounds).await
    }

    async fn outbox_insert(&mut self, msg: &OutboxMessage) -> Result<(), SqlError> {
        let headers = serde_json::to_string(&msg.headers)
            .map_err(|err| SqlError::Unsupported(format!("headers: {err}")))?;
        sqlx::query(
            "insert into _agora_outbox (id, subject, payload, headers) values ($1, $2, $3, $4)",
        )
        .bind(&msg.id)
        .bind(&msg.subject)
        .bind(&msg.payload)
        .bind(headers)
        .execute(&mut *self.tx)
        .await?;
        Ok(())
    }

    async fn commit(self: Box<Self>) -> Result<(), SqlError> {
        Ok(self.tx.commit().await?)
    }

    async fn rollback(self: Box<Self>) -> Result<(), SqlError> {
        Ok(self.tx.rollback().await?)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parameter_zero_is_refused_outside_literals_and_comments() {
        for bad in [
            "select $0",
            "select $00 + $1",
            "select $0abc",
            "select 1 where x = $0",
        ] {
            assert!(check_parameters(bad).is_err(), "{bad}");
        }
        for good in [
            "select $1, $10, $20",
            "select '$0'",
            "select 'it''s $0'",
            "select \"$0\"",
            "select [$0]",
            "select `$0`",
            "select 1 -- $0\n, 2",
            "select /* $0 */ 1",
            "select $name",
            "select 1 -- unterminated $",
        ] {
            assert!(check_parameters(good).is_ok(), "{good}");
        }
    }
}
