//! The production backend: PostgreSQL, one schema and one login role per component.
//!
//! The backend connects with the database URL it is given (an administrative role: a superuser,
//! or a role with CREATEROLE and CREATE on the database that is a member of the roles it
//! creates). For each component it creates, idempotently and under an advisory lock, the role
//! `agora_<name>` (LOGIN, nothing else) and the schema `<name>` (`-` becomes `_`) owned by
//! that role. The component's statements then run on a pool of connections that log in *as*
//! that role with `search_path` set to its schema: the role owns nothing else and is granted
//! nothing else, so it cannot read or write another component's schema, and since it logged
//! in as itself there is no `RESET ROLE` back to the administrator.
//!
//! The role's password is derived from the database URL and the role name, so every replica
//! of the host derives the same one without storing it. So are the keys of the host's advisory
//! locks (namespace set-up, migrations): a guest, which does not know the URL, cannot predict
//! them, so it cannot take them to block the host; and the host waits for them at most
//! [`PostgresBackend::with_lock_wait`] (an error naming the lock after that).
//!
//! Bounds of a guest's calls ([`Bounds`]):
//! - a call waits for a free connection of its component's pool (at most the component's
//!   `limits.sql_connections`, [`SqlBackend::namespace_with`]) until its deadline, then answers
//!   `unavailable`: one component cannot take more than its pool of the server's
//!   `max_connections`;
//! - a statement still running at the deadline is cancelled by closing its connection (sqlx
//!   has no cancel request; a connection returned to the pool mid-statement would wait for the
//!   statement to finish before it served anyone). Component connections run with
//!   `client_connection_check_interval` = 1 s (PostgreSQL 14 and later), so the server
//!   notices the closed client and ends the statement within a second, sleeping or streaming;
//! - inside a transaction, `BEGIN` also sets `statement_timeout`, `lock_timeout` and
//!   `idle_in_transaction_session_timeout` to the time left (`SET LOCAL`, in the same round
//!   trip), so the server itself ends the transaction's statements by the deadline. A
//!   statement outside a transaction gets no server-side timeout of its own: a `SET` before
//!   each would double the round trips of every call (measured 0.108 → 0.216 ms per trivial
//!   statement with pgbench), and the closed connection already ends it;
//! - rows are read one at a time and counted against the result cap; past it the rest is not
//!   read and the connection is closed. A single row is read whole before it is counted:
//!   PostgreSQL caps it at 1 GB, which this backend cannot lower;
//! - a guest can switch those server settings off for its own session
//!   (`set_config('client_connection_check_interval', '0', false)` in the statement itself),
//!   so after closing a connection cut short the host also reaps: once no request of the
//!   component can still be running the statement (its whole deadline, plus a second, later),
//!   the administrative connection ends the sessions of the component's role whose current
//!   statement is older than that deadline — except the host's own (`application_name`
//!   `agora-host`: migrations, set-up, the outbox relay).

use crate::backend::{
    Backlog, Bounds, Namespace, OutboxMessage, PublishFn, ResultBudget, SqlBackend, Tx, relay_rows,
};
use crate::migrate::{failed, pending};
use crate::pg_pool::{ACQUIRE_TIMEOUT, PgConnPool, PooledConn};
use crate::value::{
    from_pg_timestamp, pg_date_text, pg_numeric, pg_numeric_text, pg_time_text, pg_timestamp,
};
use crate::{Dialect, Migration, Rows, SqlError, Value, check_component};
use futures::TryStreamExt as _;
use sha2::{Digest as _, Sha256};
use sqlx::encode::IsNull;
use sqlx::error::BoxDynError;
use sqlx::postgres::types::Oid;
use sqlx::postgres::{
    PgArgumentBuffer, PgArguments, PgColumn, PgConnectOptions, PgConnection, PgPool, PgPoolOptions,
    PgRow, PgTypeInfo, PgValueFormat, PgValueRef,
};
use sqlx::{
    Arguments as _, AssertSqlSafe, Column as _, Connection as _, Encode, Executor as _, Postgres,
    Row as _, SqlSafeStr as _, Statement as _, Type, TypeInfo as _, ValueRef as _,
};
use std::collections::HashMap;
use std::str::FromStr as _;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};
use tokio::sync::{Mutex, Notify};

/// Connections per component opened with [`SqlBackend::namespace`], unless
/// [`PostgresBackend::with_pool_size`] says otherwise.
const DEFAULT_POOL_SIZE: u32 = crate::DEFAULT_CONNECTIONS;
/// Connections of the administrative pool (namespace set-up only).
const ADMIN_CONNECTIONS: u32 = 2;
/// How long the host waits for one of its advisory locks, unless
/// [`PostgresBackend::with_lock_wait`] says otherwise.
const DEFAULT_LOCK_WAIT: Duration = Duration::from_secs(120);
/// How often the server checks that the client of a running statement is still there
/// (`client_connection_check_interval`), in milliseconds.
const CLIENT_CHECK_MS: u32 = 1000;
/// The `application_name` of the host's own sessions and transactions on a component's role
/// (migrations, set-up, the outbox relay), which may outlast a request: the reaper spares them.
const HOST_APPLICATION: &str = "agora-host";

/// The PostgreSQL backend.
pub struct PostgresBackend {
    admin: PgPool,
    base: PgConnectOptions,
    /// The URL as given: the secret the role passwords are derived from. Never logged.
    url: String,
    pool_size: u32,
    lock_wait: Duration,
    /// Whether the server knows `client_connection_check_interval` (PostgreSQL 14 and later).
    client_check: bool,
    namespaces: Mutex<HashMap<String, Arc<PgNamespace>>>,
}

impl PostgresBackend {
    /// Connects to the PostgreSQL at `url` (`postgres://user:password@host:port/database`).
    /// Fails on a malformed URL or when the server cannot be reached.
    pub async fn connect(url: &str) -> Result<PostgresBackend, SqlError> {
        let base = PgConnectOptions::from_str(url)
            .map_err(|err| SqlError::Config(format!("invalid PostgreSQL URL: {err}")))?;
        let admin_options = base.clone().application_name("agora");
        // One connection first: a pool would retry a refused connection until its acquire
        // timeout, where a single attempt fails at once.
        let unreachable = |cause: String| {
            SqlError::Unavailable(format!(
                "cannot connect to PostgreSQL at {}: {cause}",
                describe(&base)
            ))
        };
        let probe =
            tokio::time::timeout(ACQUIRE_TIMEOUT, PgConnection::connect_with(&admin_options))
                .await
                .map_err(|_| unreachable(format!("no answer within {ACQUIRE_TIMEOUT:?}")))?
                .map_err(|err| unreachable(SqlError::from(err).detail()))?;
        // `client_connection_check_interval` exists from PostgreSQL 14 on.
        let client_check = probe.server_version_num().is_none_or(|v| v >= 140_000);
        probe.close().await.ok();
        let admin = PgPoolOptions::new()
            .max_connections(ADMIN_CONNECTIONS)
            .acquire_timeout(ACQUIRE_TIMEOUT)
            .connect_lazy_with(admin_options);
        Ok(PostgresBackend {
            admin,
            base,
            url: url.to_owned(),
            pool_size: DEFAULT_POOL_SIZE,
            lock_wait: DEFAULT_LOCK_WAIT,
            client_check,
            namespaces: Mutex::new(HashMap::new()),
        })
    }

    /// At most `size` connections per component for namespaces opened later with
    /// [`SqlBackend::namespace`] ([`SqlBackend::namespace_with`] names its own bound). Each
    /// replica holds up to the sum of its components' pools plus two: keep that under the
    /// server's `max_connections` divided by the number of replicas.
    pub fn with_pool_size(mut self, size: u32) -> PostgresBackend {
        self.pool_size = size.max(1);
        self
    }

    /// Waits at most `wait` (default 120 s) for one of the host's advisory locks (a namespace
    /// being set up, or migrated, by another host), then fails with an error naming the lock.
    pub fn with_lock_wait(mut self, wait: Duration) -> PostgresBackend {
        self.lock_wait = wait.max(Duration::from_millis(1));
        self
    }

    /// The key of the advisory lock a migration of `component` holds. For tests.
    #[doc(hidden)]
    pub fn migration_lock_key(&self, component: &str) -> i64 {
        lock_key(&self.url, "migrate", &names(component).0)
    }

    /// A transaction on the administrative pool whose lock waits end after `lock_wait`.
    async fn admin_begin(&self) -> Result<sqlx::Transaction<'static, Postgres>, SqlError> {
        Ok(self
            .admin
            .begin_with(AssertSqlSafe(format!(
                "BEGIN; SET LOCAL lock_timeout = {}",
                millis(self.lock_wait)
            )))
            .await?)
    }

    /// Drops the schema and the role of `component`, with all its data. For tests.
    #[doc(hidden)]
    pub async fn drop_namespace(&self, component: &str) -> Result<(), SqlError> {
        check_component(component)?;
        if let Some(namespace) = self.namespaces.lock().await.remove(component) {
            namespace.pool.close().await;
        }
        let (schema, role) = names(component);
        let mut tx = self.admin_begin().await?;
        sqlx::query("select pg_advisory_xact_lock($1)")
            .bind(lock_key(&self.url, "namespace", &schema))
            .execute(&mut *tx)
            .await
            .map_err(|err| lock_error(err, "namespace set-up", &schema, self.lock_wait))?;
        sqlx::raw_sql(AssertSqlSafe(format!(
            r#"DROP SCHEMA IF EXISTS "{schema}" CASCADE;
            DO $agora$ BEGIN
                IF EXISTS (SELECT FROM pg_roles WHERE rolname = '{role}') THEN
                    DROP OWNED BY "{role}";
                    DROP ROLE "{role}";
                END IF;
            END $agora$;"#
        )))
        .execute(&mut *tx)
        .await?;
        tx.commit().await?;
        Ok(())
    }

    /// Creates the role and the schema of a component, or brings them up to date.
    async fn create(&self, schema: &str, role: &str, password: &str) -> Result<(), SqlError> {
        let mut tx = self.admin_begin().await?;
        sqlx::query("select pg_advisory_xact_lock($1)")
            .bind(lock_key(&self.url, "namespace", schema))
            .execute(&mut *tx)
            .await
            .map_err(|err| lock_error(err, "namespace set-up", schema, self.lock_wait))?;
        // The name is checked (a-z, 0-9, _) and the password is hex: both are safe to splice.
        // CREATE ROLE is cluster-wide while the lock is per database: a concurrent creation
        // from another database is caught as duplicate_object or unique_violation.
        sqlx::raw_sql(AssertSqlSafe(format!(
            r#"DO $agora$ BEGIN
                CREATE ROLE "{role}" LOGIN NOSUPERUSER NOCREATEDB NOCREATEROLE NOINHERIT
                    NOREPLICATION NOBYPASSRLS PASSWORD '{password}';
            EXCEPTION WHEN duplicate_object OR unique_violation THEN
                ALTER ROLE "{role}" LOGIN PASSWORD '{password}';
            END $agora$;
            CREATE SCHEMA IF NOT EXISTS "{schema}" AUTHORIZATION "{role}";"#
        )))
        .execute(&mut *tx)
        .await?;
        let (privileged, owner): (bool, Option<String>) = sqlx::query_as(
            "select r.rolsuper or r.rolcreaterole or r.rolcreatedb or r.rolreplication \
                    or r.rolbypassrls, \
                    (select pg_get_userbyid(n.nspowner) from pg_namespace n where n.nspname = $2) \
             from pg_roles r where r.rolname = $1",
        )
        .bind(role)
        .bind(schema)
        .fetch_one(&mut *tx)
        .await?;
        if privileged {
            return Err(SqlError::Config(format!(
                "role {role} already exists with privileges beyond its own schema; \
                 agora will not hand it to a component"
            )));
        }
        if owner.as_deref() != Some(role) {
            return Err(SqlError::Config(format!(
                "schema {schema} already exists and belongs to {}, not to {role}",
                owner.as_deref().unwrap_or("nobody")
            )));
        }
        tx.commit().await?;
        Ok(())
    }
}

/// host:port/database of the options, for messages (never the password).
fn describe(options: &PgConnectOptions) -> String {
    format!(
        "{}:{}/{}",
        options.get_host(),
        options.get_port(),
        options.get_database().unwrap_or("")
    )
}

/// The schema and the role of a component.
fn names(component: &str) -> (String, String) {
    let schema = component.replace('-', "_");
    let role = format!("agora_{schema}");
    (schema, role)
}

/// The password of `role`: the same on every replica that has the same URL, unguessable
/// without it.
fn role_password(url: &str, role: &str) -> String {
    let mut hasher = Sha256::new();
    hasher.update(b"agora-sql-role\0");
    hasher.update(url.as_bytes());
    hasher.update(b"\0");
    hasher.update(role.as_bytes());
    hex::encode(hasher.finalize())
}

/// The advisory lock key for `purpose` on `schema`: derived from the database URL (the
/// secret the role passwords come from), so every replica agrees on it and no guest can
/// predict it.
fn lock_key(url: &str, purpose: &str, schema: &str) -> i64 {
    let mut hasher = Sha256::new();
    hasher.update(b"agora-sql-lock\0");
    hasher.update(url.as_bytes());
    hasher.update(b"\0");
    hasher.update(purpose.as_bytes());
    hasher.update(b"\0");
    hasher.update(schema.as_bytes());
    let digest = hasher.finalize();
    let mut key = [0u8; 8];
    key.copy_from_slice(&digest[..8]);
    i64::from_be_bytes(key)
}

/// `duration` in whole milliseconds, at least 1 (0 would mean "no timeout" to PostgreSQL).
fn millis(duration: Duration) -> u128 {
    duration.as_millis().max(1)
}

/// The error of waiting for the host's advisory lock `what` on `schema`: a lock timeout
/// (SQLSTATE 55P03) names the lock; anything else is the database's error.
fn lock_error(err: sqlx::Error, what: &str, schema: &str, wait: Duration) -> SqlError {
    if let sqlx::Error::Database(db) = &err
        && db.code().as_deref() == Some("55P03")
    {
        return SqlError::Unavailable(format!(
            "the {what} lock of schema {schema} (a PostgreSQL advisory lock) was not free \
             within {wait:?}: another host holds it while it sets up or migrates the schema"
        ));
    }
    err.into()
}

#[async_trait::async_trait]
impl SqlBackend for PostgresBackend {
    fn dialect(&self) -> Dialect {
        Dialect::Postgres
    }

    async fn namespace(&self, component: &str) -> Result<Arc<dyn Namespace>, SqlError> {
        self.namespace_with(component, self.pool_size).await
    }

    async fn namespace_with(
        &self,
        component: &str,
        connections: u32,
    ) -> Result<Arc<dyn Namespace>, SqlError> {
        check_component(component)?;
        let pool_size = connections.max(1);
        let mut namespaces = self.namespaces.lock().await;
        if let Some(namespace) = namespaces.get(component) {
            return Ok(namespace.clone());
        }
        let (schema, role) = names(component);
        let password = role_password(&self.url, &role);
        self.create(&schema, &role, &password).await?;

        // UTC, so a `timestamp` value written to a column without time zone keeps its instant
        // whatever the server's default zone is.
        let mut settings = vec![
            ("search_path", format!("\"{schema}\"")),
            ("TimeZone", "UTC".to_owned()),
        ];
        if self.client_check {
            // The server ends a statement whose client went away (a call cut at its deadline
            // closes its connection) within this interval.
            settings.push((
                "client_connection_check_interval",
                CLIENT_CHECK_MS.to_string(),
            ));
        }
        let options = self
            .base
            .clone()
            .username(&role)
            .password(&password)
            .application_name(&format!("agora:{component}"))
            .options(settings);
        let pool = PgConnPool::connect(options, pool_size)
            .await
            .map_err(|err| {
                SqlError::Unavailable(format!(
                    "cannot log in to PostgreSQL at {} as {role}: {}",
                    describe(&self.base),
                    SqlError::from(err).detail()
                ))
            })?;

        // The host's own tables, owned by the component's role like the rest of its schema.
        let mut conn = pool.acquire().await?;
        let mut tx = conn
            .begin_with(AssertSqlSafe(format!(
                "BEGIN; SET LOCAL lock_timeout = {}; \
                 SET LOCAL application_name = '{HOST_APPLICATION}'",
                millis(self.lock_wait)
            )))
            .await?;
        sqlx::query("select pg_advisory_xact_lock($1)")
            .bind(lock_key(&self.url, "setup", &schema))
            .execute(&mut *tx)
            .await
            .map_err(|err| lock_error(err, "table set-up", &schema, self.lock_wait))?;
        sqlx::raw_sql(AssertSqlSafe(format!(
            r#"create table if not exists "{schema}"._agora_outbox (
                seq bigint generated always as identity primary key,
                id text not null unique,
                subject text not null,
                payload bytea not null,
                headers text not null,
                created_at timestamptz not null default now()
            );
            create table if not exists "{schema}"._agora_outbox_dead (
                seq bigint generated always as identity primary key,
                id text not null,
                subject text not null,
                payload bytea not null,
                headers text not null,
                created_at timestamptz not null,
                dead_at timestamptz not null default now(),
                reason text not null
            );
            create table if not exists "{schema}"._agora_migrations (
                version text primary key,
                checksum text not null,
                applied_at timestamptz not null default now()
            );"#
        )))
        .execute(&mut *tx)
        .await?;
        tx.commit().await?;

        let namespace = Arc::new(PgNamespace {
            sql: HostSql::new(&schema),
            migrate_key: lock_key(&self.url, "migrate", &schema),
            reaper: Arc::new(Reaper {
                admin: self.admin.clone(),
                role: role.clone(),
            }),
            schema,
            pool,
            pool_size,
            lock_wait: self.lock_wait,
            signal: Arc::new(Notify::new()),
            deleted_since_vacuum: AtomicU64::new(0),
        });
        namespaces.insert(component.to_owned(), namespace.clone());
        Ok(namespace)
    }
}

/// The host's statements on a namespace, with the schema spelled out (a guest's temporary
/// table of the same name must not shadow them).
struct HostSql {
    outbox_claim: String,
    outbox_delete: String,
    outbox_vacuum: String,
    outbox_dead: String,
    outbox_insert: String,
    migrations_applied: String,
    migrations_record: String,
}

impl HostSql {
    fn new(schema: &str) -> HostSql {
        let outbox = format!(r#""{schema}"._agora_outbox"#);
        let migrations = format!(r#""{schema}"._agora_migrations"#);
        HostSql {
            outbox_claim: format!(
                "select seq, id, subject, payload, headers from {outbox} \
                 order by seq limit $1 for update skip locked"
            ),
            outbox_delete: format!("delete from {outbox} where seq = any($1)"),
            // SKIP_LOCKED: another replica's relay vacuuming it is as good. TRUNCATE false: giving
            // the emptied pages back to the file system takes an exclusive lock, which waits on
            // (up to 5 s) and then blocks every transaction writing to the outbox. PARALLEL 0:
            // no worker process for an index of a few pages.
            outbox_vacuum: format!("vacuum (skip_locked, truncate false, parallel 0) {outbox}"),
            outbox_dead: format!(
                r#"insert into "{schema}"._agora_outbox_dead
                   (id, subject, payload, headers, created_at, reason)
                   select id, subject, payload, headers, created_at, $2 from {outbox}
                   where seq = $1"#
            ),
            outbox_insert: format!(
                "insert into {outbox} (id, subject, payload, headers) values ($1, $2, $3, $4)"
            ),
            migrations_applied: format!("select version, checksum from {migrations}"),
            migrations_record: format!(
                "insert into {migrations} (version, checksum) values ($1, $2)"
            ),
        }
    }
}

struct PgNamespace {
    schema: String,
    pool: PgConnPool,
    pool_size: u32,
    lock_wait: Duration,
    migrate_key: i64,
    reaper: Arc<Reaper>,
    sql: HostSql,
    signal: Arc<Notify>,
    /// Outbox rows this host's relay deleted since it last vacuumed the outbox.
    deleted_since_vacuum: AtomicU64,
}

/// Rows the relay deletes from a component's outbox between two `VACUUM`s of it.
///
/// The outbox is a queue: every row is inserted, relayed and deleted within milliseconds, and
/// its dead versions stay in the table and in its primary key until a vacuum removes them. The
/// relay's claim reads the queue's head in key order, so it walks every dead entry left there:
/// measured on PostgreSQL 15, a claim on an empty outbox took 1.4 ms (240 buffers) after
/// 200 000 orders with nothing vacuumed, 0.05 ms after a `VACUUM`. Autovacuum's default
/// schedule (a visit a minute, once a fifth of the table is dead) lets a busy shop leave tens
/// of thousands of dead rows between visits, and a server with autovacuum off never removes
/// them; so the relay vacuums its own outbox, which as the component's role it owns.
pub const OUTBOX_VACUUM_EVERY: u64 = 4096;

/// Ends the sessions of a component's role still running a statement the host gave up on.
struct Reaper {
    admin: PgPool,
    role: String,
}

impl Reaper {
    /// Called when a connection of a call cut short is closed: once `max_statement` (plus the
    /// server's client check) has passed, no request of the component can still be running
    /// the statement it ran; if the server still is (the guest switched its checks off),
    /// that session is ended, with any other of the role in the same state.
    fn schedule(self: &Arc<Reaper>, max_statement: Duration) {
        let Ok(runtime) = tokio::runtime::Handle::try_current() else {
            return;
        };
        let reaper = self.clone();
        runtime.spawn(async move {
            let check = Duration::from_millis(u64::from(CLIENT_CHECK_MS));
            tokio::time::sleep(max_statement + check).await;
            let ended = sqlx::query_scalar::<_, i64>(
                "select count(*) from (\
                     select pg_terminate_backend(pid) from pg_stat_activity \
                     where usename = $1 and state <> 'idle' and application_name <> $2 \
                     and query_start < now() - make_interval(secs => $3)\
                 ) ended",
            )
            .bind(&reaper.role)
            .bind(HOST_APPLICATION)
            .bind(max_statement.as_secs_f64())
            .fetch_one(&reaper.admin)
            .await;
            match ended {
                Ok(0) => {}
                Ok(ended) => tracing::warn!(role = %reaper.role, ended,
                    "ended PostgreSQL sessions still running a statement past the component's \
                     deadline (the guest had switched the server's own checks off)"),
                Err(err) => tracing::warn!(role = %reaper.role, error = %err,
                    "could not look for PostgreSQL sessions running past the deadline"),
            }
        });
    }
}

/// A pooled connection lent to a guest's call or transaction. While it is busy (a statement
/// in flight, a transaction open) dropping it closes it instead of returning it to the pool:
/// the pool would otherwise lend it again and its next user wait for the statement to end —
/// an hour for `pg_sleep(3600)`, holding one of the component's connections all along.
struct Lent {
    conn: Option<PooledConn>,
    busy: bool,
    /// Who ends the statement on the server if the guest kept it from ending with the
    /// connection, and the longest a statement of the component may run.
    reaper: Option<(Arc<Reaper>, Duration)>,
}

impl Lent {
    fn new(conn: PooledConn, namespace: &PgNamespace, bounds: &Bounds) -> Lent {
        Lent {
            conn: Some(conn),
            busy: false,
            reaper: bounds
                .max_statement
                .map(|max| (namespace.reaper.clone(), max)),
        }
    }

    /// The connection, marked busy until [`Lent::settle`] says otherwise.
    fn busy(&mut self) -> Result<&mut PgConnection, SqlError> {
        self.busy = true;
        self.conn
            .as_deref_mut()
            .ok_or_else(|| SqlError::Unavailable("the connection was closed".into()))
    }

    /// Marks the connection idle again when `result` left it in a known state (done, or
    /// failed in the database); a call cut short (deadline, result cap, lost connection)
    /// leaves it busy, so it is closed.
    fn settle<T>(&mut self, result: &Result<T, SqlError>) {
        self.busy = !matches!(
            result,
            Ok(_)
                | Err(SqlError::Query(_) | SqlError::UniqueViolation(_) | SqlError::Unsupported(_))
        );
    }

    /// Closes the connection now (a call or transaction cut short).
    fn close(&mut self) {
        if let Some(mut conn) = self.conn.take() {
            conn.close_on_drop();
            if let Some((reaper, max_statement)) = &self.reaper {
                reaper.schedule(*max_statement);
            }
        }
    }
}

impl Drop for Lent {
    fn drop(&mut self) {
        if self.busy {
            self.close();
        }
    }
}

struct PgTx {
    conn: Lent,
    bounds: Bounds,
    outbox_insert: String,
    /// A statement failed in the database: PostgreSQL then refuses every statement until a
    /// `ROLLBACK [TO SAVEPOINT]`, and answers COMMIT by rolling back without an error.
    failed: bool,
    /// Why the connection was closed mid-transaction (which rolled it back), if it was.
    aborted: Option<String>,
}

impl PgTx {
    /// The connection, for one statement of the transaction.
    fn conn(&mut self) -> Result<&mut PgConnection, SqlError> {
        if let Some(reason) = &self.aborted {
            return Err(aborted(reason));
        }
        self.conn.busy()
    }

    /// Notes the outcome of a statement: a database error fails the transaction; a statement
    /// cut short (deadline, result cap) closes the connection, which rolls it back.
    fn note<T>(&mut self, result: Result<T, SqlError>) -> Result<T, SqlError> {
        self.conn.settle(&result);
        match &result {
            Err(SqlError::Query(_) | SqlError::UniqueViolation(_)) => self.failed = true,
            Err(err) if self.conn.busy && self.aborted.is_none() => {
                self.aborted = Some(err.detail());
                self.conn.close();
            }
            _ => {}
        }
        // Open until commit or rollback: dropped before, the connection is closed.
        self.conn.busy = true;
        result
    }

    /// Ends the transaction with `end` (COMMIT or ROLLBACK).
    async fn end(&mut self, end: &'static str) -> Result<(), SqlError> {
        let bounds = self.bounds;
        let conn = self.conn.busy()?;
        let result = bounds
            .run(async move {
                sqlx::raw_sql(end).execute(conn).await?;
                Ok(())
            })
            .await;
        self.conn.settle(&result);
        result
    }
}

/// The error of a call on a transaction whose connection was closed.
fn aborted(reason: &str) -> SqlError {
    SqlError::Query(format!(
        "25P02: the transaction was rolled back (its connection was closed after: {reason})"
    ))
}

/// NULL typed `unknown`, so the server infers its type from where it is used.
struct UnknownNull;

impl Type<Postgres> for UnknownNull {
    fn type_info() -> PgTypeInfo {
        PgTypeInfo::with_oid(Oid(705))
    }
}

impl Encode<'_, Postgres> for UnknownNull {
    fn encode_by_ref(&self, _: &mut PgArgumentBuffer) -> Result<IsNull, BoxDynError> {
        Ok(IsNull::Yes)
    }
}

/// A `timestamp` value as `timestamptz` (microseconds since 2000-01-01).
struct Timestamptz(i64);

impl Type<Postgres> for Timestamptz {
    fn type_info() -> PgTypeInfo {
        PgTypeInfo::with_oid(Oid(1184))
    }
}

impl Encode<'_, Postgres> for Timestamptz {
    fn encode_by_ref(&self, buf: &mut PgArgumentBuffer) -> Result<IsNull, BoxDynError> {
        buf.extend_from_slice(&self.0.to_be_bytes());
        Ok(IsNull::No)
    }
}

/// A `decimal` value as binary `numeric`.
struct Numeric(Vec<u8>);

impl Type<Postgres> for Numeric {
    fn type_info() -> PgTypeInfo {
        PgTypeInfo::with_oid(Oid(1700))
    }
}

impl Encode<'_, Postgres> for Numeric {
    fn encode_by_ref(&self, buf: &mut PgArgumentBuffer) -> Result<IsNull, BoxDynError> {
        buf.extend_from_slice(&self.0);
        Ok(IsNull::No)
    }
}

/// The statement to send and its arguments. sqlx caches prepared statements by their text
/// and reuses them whatever the arguments' types, while PostgreSQL fixes a prepared
/// statement's parameter types: a comment naming the types makes the text differ per type
/// signature, so `$1` bound once as int and once as text gets two statements.
fn prepare(sql: &str, params: Vec<Value>) -> Result<(String, PgArguments), SqlError> {
    if params.is_empty() {
        return Ok((sql.to_owned(), PgArguments::default()));
    }
    let mut signature = String::with_capacity(params.len());
    let mut args = PgArguments::default();
    for (index, param) in params.into_iter().enumerate() {
        let unsupported = |err: &dyn std::fmt::Display| {
            SqlError::Unsupported(format!("parameter ${}: {err}", index + 1))
        };
        let (code, added) = match param {
            Value::Null => ('n', args.add(UnknownNull)),
            Value::Boolean(value) => ('b', args.add(value)),
            Value::Int(value) => ('i', args.add(value)),
            Value::Float(value) => ('f', args.add(value)),
            Value::Text(value) => ('t', args.add(value)),
            Value::Bytes(value) => ('y', args.add(value)),
            Value::Timestamp(micros) => {
                let pg = pg_timestamp(micros).map_err(|e| unsupported(&e))?;
                ('s', args.add(Timestamptz(pg)))
            }
            Value::Decimal(text) => {
                let numeric = pg_numeric(&text).map_err(|e| unsupported(&e))?;
                ('d', args.add(Numeric(numeric)))
            }
        };
        added.map_err(|e| unsupported(&e))?;
        signature.push(code);
    }
    Ok((format!("/*agora:{signature}*/{sql}"), args))
}

fn column_names(columns: &[PgColumn]) -> Vec<String> {
    columns.iter().map(|c| c.name().to_owned()).collect()
}

fn row_values(row: &PgRow) -> Result<Vec<Value>, SqlError> {
    row.columns()
        .iter()
        .enumerate()
        .map(|(index, column)| value(row.try_get_raw(index)?, column))
        .collect()
}

/// The WIT value of one column of a row, by the column's type.
fn value(raw: PgValueRef<'_>, column: &PgColumn) -> Result<Value, SqlError> {
    if raw.is_null() {
        return Ok(Value::Null);
    }
    let ty = column.type_info();
    let unsupported = |what: &str| {
        SqlError::Unsupported(format!(
            "column {:?} of type {}: {what}",
            column.name(),
            ty.name()
        ))
    };
    let Some(Oid(oid)) = ty.oid() else {
        return Err(unsupported(
            "no value case for it; cast it in SQL, e.g. `x::text`",
        ));
    };
    let bytes = raw.as_bytes().map_err(|e| unsupported(&e.to_string()))?;
    let text = |bytes: &[u8]| {
        String::from_utf8(bytes.to_vec()).map_err(|_| unsupported("not valid UTF-8"))
    };
    if raw.format() == PgValueFormat::Text {
        // Results of prepared statements come in binary; text is only what the server sends
        // for a simple query, and only the textual types are taken from it.
        return match oid {
            18 | 19 | 25 | 114 | 705 | 1042 | 1043 => Ok(Value::Text(text(bytes)?)),
            _ => Err(unsupported(
                "sent as text; only textual types are read that way",
            )),
        };
    }
    let fixed = |len: usize| -> Result<&[u8], SqlError> {
        if bytes.len() == len {
            Ok(bytes)
        } else {
            Err(unsupported("malformed binary value"))
        }
    };
    let be8 = |b: &[u8]| <[u8; 8]>::try_from(b).map_err(|_| unsupported("malformed value"));
    let be4 = |b: &[u8]| <[u8; 4]>::try_from(b).map_err(|_| unsupported("malformed value"));
    let be2 = |b: &[u8]| <[u8; 2]>::try_from(b).map_err(|_| unsupported("malformed value"));
    Ok(match oid {
        16 => Value::Boolean(fixed(1)?[0] != 0),
        20 => Value::Int(i64::from_be_bytes(be8(bytes)?)),
        21 => Value::Int(i64::from(i16::from_be_bytes(be2(bytes)?))),
        23 => Value::Int(i64::from(i32::from_be_bytes(be4(bytes)?))),
        26 => Value::Int(i64::from(u32::from_be_bytes(be4(bytes)?))),
        700 => Value::Float(f64::from(f32::from_be_bytes(be4(bytes)?))),
        701 => Value::Float(f64::from_be_bytes(be8(bytes)?)),
        // "char", name, text, json, unknown, bpchar, varchar
        18 | 19 | 25 | 114 | 705 | 1042 | 1043 => Value::Text(text(bytes)?),
        3802 => match bytes.split_first() {
            Some((1, json)) => Value::Text(text(json)?),
            _ => return Err(unsupported("unknown jsonb format version")),
        },
        2950 => Value::Text(
            uuid::Uuid::from_slice(bytes)
                .map_err(|_| unsupported("malformed uuid"))?
                .hyphenated()
                .to_string(),
        ),
        17 => Value::Bytes(bytes.to_vec()),
        1114 | 1184 => {
            let pg = i64::from_be_bytes(be8(bytes)?);
            Value::Timestamp(from_pg_timestamp(pg).ok_or_else(|| {
                unsupported("an infinite timestamp has no value; filter it out or cast it")
            })?)
        }
        1700 => Value::Decimal(pg_numeric_text(bytes).map_err(|what| {
            unsupported(&format!(
                "{what} is not a decimal; filter it out or cast it"
            ))
        })?),
        1082 => Value::Text(pg_date_text(i32::from_be_bytes(be4(bytes)?))),
        1083 => Value::Text(pg_time_text(i64::from_be_bytes(be8(bytes)?))),
        2278 => Value::Null, // void: what a function without a result returns
        _ => {
            return Err(unsupported(
                "no value case for this type; cast it in SQL, e.g. `x::text`",
            ));
        }
    })
}

/// Runs a query, reading its rows one at a time until `bounds`' result cap. Past the cap
/// the rest is left unread ([`SqlError::TooLarge`]: the caller closes the connection); a row
/// that cannot be converted is an error once the rest has been read and discarded.
async fn query(
    conn: &mut PgConnection,
    sql: &str,
    params: Vec<Value>,
    bounds: Bounds,
) -> Result<Rows, SqlError> {
    let (sql, args) = prepare(sql, params)?;
    let mut budget = ResultBudget::new(&bounds);
    let mut rows = Vec::new();
    let mut columns = None;
    let mut unsupported = None;
    {
        let mut stream = sqlx::query_with(AssertSqlSafe(sql.as_str()), args).fetch(&mut *conn);
        while let Some(row) = stream.try_next().await? {
            if unsupported.is_some() {
                continue;
            }
            if columns.is_none() {
                columns = Some(column_names(row.columns()));
            }
            match row_values(&row) {
                Ok(values) => {
                    if !budget.add(&values) {
                        return Err(bounds.too_large());
                    }
                    rows.push(values);
                }
                Err(err) => unsupported = Some(err),
            }
        }
    }
    if let Some(err) = unsupported {
        return Err(err);
    }
    let columns = match columns {
        Some(columns) => columns,
        // No row to take the names from: the prepared statement, cached by now, has them.
        None => column_names(
            conn.prepare(AssertSqlSafe(sql.as_str()).into_sql_str())
                .await?
                .columns(),
        ),
    };
    Ok(Rows { columns, rows })
}

async fn execute(conn: &mut PgConnection, sql: &str, params: Vec<Value>) -> Result<u64, SqlError> {
    let (sql, args) = prepare(sql, params)?;
    let done = sqlx::query_with(AssertSqlSafe(sql.as_str()), args)
        .execute(&mut *conn)
        .await?;
    Ok(done.rows_affected())
}

/// One outbox row, or why it cannot be relayed (a row written with plain SQL).
fn outbox_message(row: &PgRow) -> Result<OutboxMessage, String> {
    let text = |i: usize| row.try_get::<String, _>(i).map_err(|e| e.to_string());
    let headers = text(4)?;
    Ok(OutboxMessage {
        id: text(1)?,
        subject: text(2)?,
        payload: row.try_get::<Vec<u8>, _>(3).map_err(|e| e.to_string())?,
        headers: serde_json::from_str(&headers).map_err(|e| format!("headers: {e}"))?,
    })
}

impl PgNamespace {
    /// The applied migrations: version → checksum.
    async fn applied(&self, conn: &mut PgConnection) -> Result<HashMap<String, String>, SqlError> {
        Ok(
            sqlx::query_as(AssertSqlSafe(self.sql.migrations_applied.as_str()))
                .fetch_all(&mut *conn)
                .await?
                .into_iter()
                .collect(),
        )
    }

    async fn migrate_locked(
        &self,
        conn: &mut PgConnection,
        migrations: &[Migration],
    ) -> Result<Vec<String>, SqlError> {
        let applied = self.applied(conn).await?;
        let mut done = Vec::new();
        for migration in pending(migrations, &applied)? {
            let mut tx = conn.begin().await?;
            sqlx::raw_sql(AssertSqlSafe(migration.sql.as_str()))
                .execute(&mut *tx)
                .await
                .map_err(|err| failed(&migration.version, err))?;
            sqlx::query(AssertSqlSafe(self.sql.migrations_record.as_str()))
                .bind(&migration.version)
                .bind(migration.checksum())
                .execute(&mut *tx)
                .await?;
            tx.commit()
                .await
                .map_err(|err| failed(&migration.version, err))?;
            tracing::info!(schema = %self.schema, version = %migration.version,
                "postgres migration applied");
            done.push(migration.version.clone());
        }
        Ok(done)
    }
}

#[async_trait::async_trait]
impl Namespace for PgNamespace {
    async fn query_within(
        &self,
        sql: &str,
        params: Vec<Value>,
        bounds: &Bounds,
    ) -> Result<Rows, SqlError> {
        let mut conn = Lent::new(
            bounds.acquire(self.pool_size, self.pool.acquire()).await?,
            self,
            bounds,
        );
        let result = bounds.run(query(conn.busy()?, sql, params, *bounds)).await;
        conn.settle(&result);
        result
    }

    async fn execute_within(
        &self,
        sql: &str,
        params: Vec<Value>,
        bounds: &Bounds,
    ) -> Result<u64, SqlError> {
        let mut conn = Lent::new(
            bounds.acquire(self.pool_size, self.pool.acquire()).await?,
            self,
            bounds,
        );
        let result = bounds.run(execute(conn.busy()?, sql, params)).await;
        conn.settle(&result);
        result
    }

    async fn begin_within(&self, bounds: &Bounds) -> Result<Box<dyn Tx>, SqlError> {
        let mut conn = Lent::new(
            bounds.acquire(self.pool_size, self.pool.acquire()).await?,
            self,
            bounds,
        );
        // With a deadline the server ends the transaction's statements, lock waits and idle
        // gaps by it too, set in the same round trip as BEGIN.
        let begin = match bounds.remaining()? {
            None => "BEGIN".to_owned(),
            Some(left) => {
                let ms = millis(left);
                format!(
                    "BEGIN; SET LOCAL statement_timeout = {ms}; SET LOCAL lock_timeout = {ms}; \
                     SET LOCAL idle_in_transaction_session_timeout = {ms}"
                )
            }
        };
        let started = conn.busy()?;
        let result = bounds
            .run(async move {
                sqlx::raw_sql(AssertSqlSafe(begin)).execute(started).await?;
                Ok(())
            })
            .await;
        conn.settle(&result);
        result?;
        // Open until commit or rollback: dropped before, the connection is closed.
        conn.busy = true;
        Ok(Box::new(PgTx {
            conn,
            bounds: *bounds,
            outbox_insert: self.sql.outbox_insert.clone(),
            failed: false,
            aborted: None,
        }))
    }

    async fn migrate(&self, migrations: &[Migration]) -> Result<Vec<String>, SqlError> {
        // Most starts and every hot swap without new migrations find nothing to apply: found
        // out on a pooled connection, without the lock, the pool keeps all its connections
        // (the locked path below ends the one it used).
        {
            let mut conn = self.pool.acquire().await?;
            let applied = self.applied(&mut conn).await?;
            if pending(migrations, &applied)?.is_empty() {
                return Ok(Vec::new());
            }
        }
        let mut conn = self.pool.acquire().await?;
        // The session-level lock is released with the session: closing this connection after
        // the run (whatever happens, even if this future is dropped) never leaves it held.
        conn.close_on_drop();
        let key = self.migrate_key;
        sqlx::raw_sql(AssertSqlSafe(format!(
            "SET lock_timeout = {}; SET application_name = '{HOST_APPLICATION}'",
            millis(self.lock_wait)
        )))
        .execute(&mut *conn)
        .await?;
        sqlx::query("select pg_advisory_lock($1)")
            .bind(key)
            .execute(&mut *conn)
            .await
            .map_err(|err| lock_error(err, "migration", &self.schema, self.lock_wait))?;
        sqlx::raw_sql("SET lock_timeout = 0")
            .execute(&mut *conn)
            .await?;
        let result = self.migrate_locked(&mut conn, migrations).await;
        // Best effort: closing the connection releases the lock anyway.
        let _unlocked = sqlx::query("select pg_advisory_unlock($1)")
            .bind(key)
            .execute(&mut *conn)
            .await;
        result
    }

    async fn relay_outbox(&self, limit: usize, publish: &PublishFn) -> Result<usize, SqlError> {
        // The relay's commit only deletes rows it published (or moves refused ones aside), so
        // it need not wait for the WAL to reach the disk: a crash that loses it brings the rows
        // back, and the next pass publishes them again under the same message ids, which
        // JetStream drops as repeats — the same as a crash between publish and commit.
        // The claim reads the queue's head through the primary key, never by a sequential scan:
        // after a vacuum the table's statistics count only the few rows then queued while its
        // file keeps the pages it emptied, and the planner's sequential scan (with a sort) then
        // reads all of them for every claim (`bench shop`, outboxes vacuumed by the relay:
        // PostgreSQL spent 3.5–3.9 ms of CPU per order with the claim scanning, 2.7–2.9 ms
        // with it reading the key).
        let mut conn = self.pool.acquire().await?;
        let mut tx = conn
            .begin_with(AssertSqlSafe(format!(
                "BEGIN; SET LOCAL application_name = '{HOST_APPLICATION}'; \
                 SET LOCAL synchronous_commit = off; SET LOCAL enable_seqscan = off"
            )))
            .await?;
        let rows = sqlx::query(AssertSqlSafe(self.sql.outbox_claim.as_str()))
            .bind(i64::try_from(limit).unwrap_or(i64::MAX))
            .fetch_all(&mut *tx)
            .await?;
        let rows = rows
            .iter()
            .map(|row| Ok((row.try_get::<i64, _>(0)?, outbox_message(row))))
            .collect::<Result<Vec<_>, sqlx::Error>>()?;
        let plan = relay_rows(rows, publish, &self.schema).await;
        for (seq, reason) in &plan.dead {
            sqlx::query(AssertSqlSafe(self.sql.outbox_dead.as_str()))
                .bind(seq)
                .bind(reason)
                .execute(&mut *tx)
                .await?;
        }
        let relayed = plan.done.len();
        if !plan.done.is_empty() {
            sqlx::query(AssertSqlSafe(self.sql.outbox_delete.as_str()))
                .bind(&plan.done)
                .execute(&mut *tx)
                .await?;
        }
        tx.commit().await?;
        // `done` holds every row deleted, the refused ones moved aside included.
        let deleted = u64::try_from(relayed).unwrap_or(u64::MAX);
        let since = self
            .deleted_since_vacuum
            .fetch_add(deleted, Ordering::Relaxed)
            + deleted;
        if since >= OUTBOX_VACUUM_EVERY {
            self.deleted_since_vacuum.store(0, Ordering::Relaxed);
            // The rows are relayed and their deletion committed: a failed vacuum only leaves
            // the dead rows to the next one. A vacuum runs outside any transaction, so the
            // host's application_name (the reaper spares it) is set for the session, and the
            // connection is closed afterwards rather than lent to a guest under that name.
            conn.close_on_drop();
            let started = Instant::now();
            let vacuum = async {
                sqlx::raw_sql(AssertSqlSafe(format!(
                    "SET application_name = '{HOST_APPLICATION}'"
                )))
                .execute(&mut *conn)
                .await?;
                sqlx::query(AssertSqlSafe(self.sql.outbox_vacuum.as_str()))
                    .execute(&mut *conn)
                    .await
            };
            match vacuum.await {
                Ok(_) => tracing::debug!(
                    schema = %self.schema,
                    deleted = since,
                    ms = started.elapsed().as_secs_f64() * 1000.0,
                    "outbox vacuumed"
                ),
                Err(err) => tracing::warn!(
                    schema = %self.schema,
                    error = %err,
                    "outbox vacuum failed; its dead rows wait for the next one"
                ),
            }
        }
        Ok(relayed)
    }

    fn outbox_signal(&self) -> Arc<Notify> {
        self.signal.clone()
    }

    fn system(&self) -> &'static str {
        "postgresql"
    }

    async fn outbox_backlog(&self) -> Result<Backlog, SqlError> {
        let row = sqlx::query(AssertSqlSafe(format!(
            r#"select count(*)::int8, coalesce(extract(epoch from now() - min(created_at)), 0)::float8
               from "{}"._agora_outbox"#,
            self.schema
        )))
        .fetch_one(&mut *self.pool.acquire().await?)
        .await?;
        Ok(Backlog {
            rows: u64::try_from(row.try_get::<i64, _>(0)?).unwrap_or(0),
            oldest_seconds: row.try_get::<f64, _>(1)?.max(0.0),
        })
    }
}

#[async_trait::async_trait]
impl Tx for PgTx {
    async fn query(&mut self, sql: &str, params: Vec<Value>) -> Result<Rows, SqlError> {
        let bounds = self.bounds;
        let conn = self.conn()?;
        let result = bounds.run(query(conn, sql, params, bounds)).await;
        self.note(result)
    }

    async fn execute(&mut self, sql: &str, params: Vec<Value>) -> Result<u64, SqlError> {
        let bounds = self.bounds;
        let conn = self.conn()?;
        let result = bounds.run(execute(conn, sql, params)).await;
        self.note(result)
    }

    async fn outbox_insert(&mut self, msg: &OutboxMessage) -> Result<(), SqlError> {
        let headers = serde_json::to_string(&msg.headers)
            .map_err(|err| SqlError::Unsupported(format!("headers: {err}")))?;
        let bounds = self.bounds;
        let insert = self.outbox_insert.clone();
        let conn = self.conn()?;
        let result = bounds
            .run(async move {
                sqlx::query(AssertSqlSafe(insert.as_str()))
                    .bind(&msg.id)
                    .bind(&msg.subject)
                    .bind(&msg.payload)
                    .bind(headers)
                    .execute(conn)
                    .await?;
                Ok(())
            })
            .await;
        self.note(result)
    }

    async fn commit(mut self: Box<Self>) -> Result<(), SqlError> {
        if let Some(reason) = &self.aborted {
            return Err(aborted(reason));
        }
        // After a failed statement, commit only if the guest recovered (with a savepoint):
        // otherwise PostgreSQL would roll back and call it a commit.
        let recovered = !self.failed || {
            let bounds = self.bounds;
            let conn = self.conn()?;
            let probe = bounds
                .run(async move { Ok(sqlx::raw_sql("select 1").execute(conn).await?) })
                .await;
            self.note(probe).is_ok()
        };
        if let Some(reason) = &self.aborted {
            return Err(aborted(reason));
        }
        if recovered {
            return self.end("COMMIT").await;
        }
        self.end("ROLLBACK").await?;
        Err(SqlError::Query(
            "25P02: the transaction was rolled back, not committed: a statement in it failed \
             (recover from an expected error with a savepoint)"
                .into(),
        ))
    }

    async fn rollback(mut self: Box<Self>) -> Result<(), SqlError> {
        if self.aborted.is_some() {
            return Ok(());
        }
        self.end("ROLLBACK").await
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    #[test]
    fn passwords_and_keys_are_stable_and_distinct() {
        let a = role_password("postgres://x@h/db", "agora_a");
        assert_eq!(a, role_password("postgres://x@h/db", "agora_a"));
        assert_ne!(a, role_password("postgres://x@h/db", "agora_b"));
        assert_ne!(a, role_password("postgres://y@h/db", "agora_a"));
        assert_eq!(a.len(), 64);
        let url = "postgres://x@h/db";
        assert_ne!(lock_key(url, "migrate", "a"), lock_key(url, "setup", "a"));
        assert_ne!(lock_key(url, "migrate", "a"), lock_key(url, "migrate", "b"));
        assert_ne!(
            lock_key(url, "migrate", "a"),
            lock_key("postgres://y@h/db", "migrate", "a")
        );
        assert_eq!(names("my-shop"), ("my_shop".into(), "agora_my_shop".into()));
    }

    #[test]
    fn statements_are_keyed_by_their_parameter_types() {
        let (sql, _) = prepare("select $1", vec![Value::Int(1)]).unwrap();
        let (other, _) = prepare("select $1", vec![Value::Text("1".into())]).unwrap();
        assert_ne!(sql, other);
        let (plain, _) = prepare("select 1", vec![]).unwrap();
        assert_eq!(plain, "select 1");
    }
}
