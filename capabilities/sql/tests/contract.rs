//! The sql contract, written once and run against every backend: SQLite in a temporary folder
//! and the machine's real PostgreSQL (`AGORA_TEST_DATABASE_URL`, default
//! `postgres://postgres@127.0.0.1:5432/test`). Where PostgreSQL is unreachable the PostgreSQL
//! tests say SKIPPED — except under `CI=true`, where they fail.
//!
//! Most checks go through the host functions a guest calls ([`Host`], [`HostTransaction`]),
//! so the WIT error cases are what is asserted.

#![allow(clippy::unwrap_used)]

use agora_sql::bindings::agora::platform::sql::{Error, Host, HostTransaction};
use agora_sql::{
    Bounds, Dialect, Migration, Namespace, OUTBOX_VACUUM_EVERY, OutboxMessage, PostgresBackend,
    RelayError, Rows, SqlBackend, SqlCtx, SqlError, SqlView, SqliteBackend, Transaction, Value,
};
use futures::FutureExt as _;
use futures::future::BoxFuture;
use std::collections::HashSet;
use std::future::Future;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use wasmtime::component::{Resource, ResourceTable};

fn database_url() -> String {
    std::env::var("AGORA_TEST_DATABASE_URL")
        .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/test".into())
}

/// The PostgreSQL backend, or None (after saying SKIPPED) when it is unreachable outside CI.
async fn postgres() -> Option<Arc<PostgresBackend>> {
    let url = database_url();
    match PostgresBackend::connect(&url).await {
        Ok(backend) => Some(Arc::new(backend)),
        Err(err) if std::env::var("CI").as_deref() == Ok("true") => {
            panic!("PostgreSQL at {url} is required under CI=true: {err}")
        }
        Err(err) => {
            eprintln!("SKIPPED: PostgreSQL at {url} is unreachable: {err}");
            None
        }
    }
}

/// A component name no other test run uses.
fn component() -> String {
    format!("test-{}", uuid::Uuid::new_v4().simple())
}

/// What one contract check gets: a backend, two fresh component names, and (for SQLite) the
/// folder of the files.
struct Setup {
    backend: Arc<dyn SqlBackend>,
    a: String,
    b: String,
    dir: Option<PathBuf>,
}

impl Setup {
    async fn namespace(&self, name: &str) -> Arc<dyn Namespace> {
        self.backend.namespace(name).await.unwrap()
    }
    fn dialect(&self) -> Dialect {
        self.backend.dialect()
    }
    /// Another backend on the same storage, as a second host replica has.
    async fn replica(&self) -> Arc<dyn SqlBackend> {
        match &self.dir {
            Some(dir) => Arc::new(SqliteBackend::new(dir).unwrap()),
            None => Arc::new(PostgresBackend::connect(&database_url()).await.unwrap()),
        }
    }
}

async fn on_sqlite<F, Fut>(check: F)
where
    F: FnOnce(Setup) -> Fut,
    Fut: Future<Output = ()>,
{
    let dir = tempfile::tempdir().unwrap();
    let backend = Arc::new(SqliteBackend::new(dir.path()).unwrap());
    check(Setup {
        backend,
        a: component(),
        b: component(),
        dir: Some(dir.path().to_owned()),
    })
    .await;
}

async fn on_postgres<F, Fut>(check: F)
where
    F: FnOnce(Setup) -> Fut,
    Fut: Future<Output = ()>,
{
    let Some(backend) = postgres().await else {
        return;
    };
    let (a, b) = (component(), component());
    let setup = Setup {
        backend: backend.clone(),
        a: a.clone(),
        b: b.clone(),
        dir: None,
    };
    let outcome = std::panic::AssertUnwindSafe(check(setup))
        .catch_unwind()
        .await;
    for name in [a, b] {
        backend.drop_namespace(&name).await.unwrap();
    }
    if let Err(panic) = outcome {
        std::panic::resume_unwind(panic);
    }
}

/// One test per backend for each check.
macro_rules! contract {
    ($($check:ident),* $(,)?) => {
        mod sqlite {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $check() {
                    super::on_sqlite(super::$check).await;
                }
            )*
        }
        mod postgres {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $check() {
                    super::on_postgres(super::$check).await;
                }
            )*
        }
    };
}

contract!(
    values_round_trip,
    parameters_may_change_type_between_calls,
    execute_counts_rows,
    transactions_commit_roll_back_and_close,
    unique_violations_and_query_errors,
    components_are_isolated,
    migrations_apply_once,
    outbox_relays_committed_messages_in_order,
    concurrent_relays_never_share_a_row,
    namespaces_are_reused,
    statements_end_at_the_deadline,
    results_are_capped,
    transactions_end_at_the_deadline,
);

/// A guest's view of the host functions: a store's ctx and resource table.
struct Guest {
    ctx: SqlCtx,
    table: ResourceTable,
}

impl Guest {
    fn new(namespace: Arc<dyn Namespace>) -> Guest {
        let may_publish = Arc::new(|subject: &str| subject.starts_with("order."));
        Guest::with(SqlCtx::granted(namespace, may_publish))
    }
    /// A guest whose calls are bounded as a store's are.
    fn bounded(namespace: Arc<dyn Namespace>, bounds: Bounds) -> Guest {
        let may_publish = Arc::new(|_: &str| false);
        Guest::with(SqlCtx::granted(namespace, may_publish).bounded(bounds))
    }
    fn with(ctx: SqlCtx) -> Guest {
        Guest {
            ctx,
            table: ResourceTable::new(),
        }
    }
    fn view(&mut self) -> SqlView<'_> {
        SqlView {
            ctx: &mut self.ctx,
            table: &mut self.table,
        }
    }
    async fn query(&mut self, sql: &str, params: Vec<Value>) -> Result<Rows, Error> {
        Host::query(&mut self.view(), sql.into(), params)
            .await
            .unwrap()
    }
    async fn rows(&mut self, sql: &str, params: Vec<Value>) -> Vec<Vec<Value>> {
        match self.query(sql, params).await {
            Ok(rows) => rows.rows,
            Err(err) => panic!("{sql}: {err:?}"),
        }
    }
    async fn execute(&mut self, sql: &str, params: Vec<Value>) -> Result<u64, Error> {
        Host::execute(&mut self.view(), sql.into(), params)
            .await
            .unwrap()
    }
    async fn ok(&mut self, sql: &str) {
        if let Err(err) = self.execute(sql, vec![]).await {
            panic!("{sql}: {err:?}");
        }
    }
    async fn begin(&mut self) -> u32 {
        Host::begin(&mut self.view()).await.unwrap().unwrap().rep()
    }
    async fn tx_execute(&mut self, tx: u32, sql: &str, params: Vec<Value>) -> Result<u64, Error> {
        HostTransaction::execute(&mut self.view(), borrow(tx), sql.into(), params)
            .await
            .unwrap()
    }
    async fn tx_query(&mut self, tx: u32, sql: &str, params: Vec<Value>) -> Result<Rows, Error> {
        HostTransaction::query(&mut self.view(), borrow(tx), sql.into(), params)
            .await
            .unwrap()
    }
    async fn publish(&mut self, tx: u32, subject: &str, payload: &[u8]) -> Result<String, Error> {
        let headers = vec![("x-seq".to_owned(), String::from_utf8_lossy(payload).into())];
        HostTransaction::publish(
            &mut self.view(),
            borrow(tx),
            subject.into(),
            payload.to_vec(),
            headers,
        )
        .await
        .unwrap()
    }
    async fn commit(&mut self, tx: u32) -> Result<(), Error> {
        HostTransaction::commit(&mut self.view(), borrow(tx))
            .await
            .unwrap()
    }
    async fn rollback(&mut self, tx: u32) -> Result<(), Error> {
        HostTransaction::rollback(&mut self.view(), borrow(tx))
            .await
            .unwrap()
    }
    async fn drop_tx(&mut self, tx: u32) {
        HostTransaction::drop(&mut self.view(), Resource::new_own(tx))
            .await
            .unwrap();
    }
}

fn borrow(rep: u32) -> Resource<Transaction> {
    Resource::new_borrow(rep)
}

fn int(value: i64) -> Value {
    Value::Int(value)
}

fn text(value: &str) -> Value {
    Value::Text(value.into())
}

const TIMESTAMP: i64 = 1_795_643_076_123_456; // 2026-11-25T21:44:36.123456Z

async fn values_round_trip(setup: Setup) {
    let mut guest = Guest::new(setup.namespace(&setup.a).await);
    let pg = setup.dialect() == Dialect::Postgres;
    guest
        .ok(if pg {
            "create table vals (id int primary key, i int, b bigint, f double precision, \
             t text, y bytea, ts timestamptz, tsl timestamp, d numeric(40, 10), m numeric(10, 2), \
             flag boolean)"
        } else {
            "create table vals (id integer primary key, i integer, b integer, f real, t text, \
             y blob, ts text, tsl text, d text, m text, flag boolean)"
        })
        .await;

    let unicode = "héllo ✓ 日本 🦀 \u{7f}\t\n";
    let exact = "-12345678901234567890.1234567890";
    let insert = "insert into vals (id, i, b, f, t, y, ts, tsl, d, m, flag) \
                  values ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11)";
    let full = vec![
        int(1),
        int(-7),
        int(i64::MAX),
        Value::Float(0.1),
        text(unicode),
        Value::Bytes(vec![0, 255, 1, 2, 0]),
        Value::Timestamp(TIMESTAMP),
        Value::Timestamp(-1),
        Value::Decimal(exact.into()),
        Value::Decimal("12.50".into()),
        Value::Boolean(true),
    ];
    assert_eq!(guest.execute(insert, full).await, Ok(1));
    // NULL in every column, including typed ones: the server infers the type.
    let nulls = std::iter::once(int(2))
        .chain(std::iter::repeat_n(Value::Null, 10))
        .collect();
    assert_eq!(guest.execute(insert, nulls).await, Ok(1));
    assert_eq!(
        guest
            .execute(
                "insert into vals (id, i) values ($1, $2)",
                vec![int(3), Value::Null]
            )
            .await,
        Ok(1),
        "NULL alone into an int column"
    );

    let rows = guest
        .query("select * from vals order by id", vec![])
        .await
        .unwrap();
    assert_eq!(
        rows.columns,
        ["id", "i", "b", "f", "t", "y", "ts", "tsl", "d", "m", "flag"]
    );
    let expected_full = if pg {
        vec![
            int(1),
            int(-7),
            int(i64::MAX),
            Value::Float(0.1),
            text(unicode),
            Value::Bytes(vec![0, 255, 1, 2, 0]),
            Value::Timestamp(TIMESTAMP),
            Value::Timestamp(-1),
            Value::Decimal(exact.into()),
            Value::Decimal("12.50".into()),
            Value::Boolean(true),
        ]
    } else {
        vec![
            int(1),
            int(-7),
            int(i64::MAX),
            Value::Float(0.1),
            text(unicode),
            Value::Bytes(vec![0, 255, 1, 2, 0]),
            text("2026-11-25T21:44:36.123456Z"),
            text("1969-12-31T23:59:59.999999Z"),
            text(exact),
            text("12.50"),
            int(1),
        ]
    };
    assert_eq!(rows.rows[0], expected_full);
    assert_eq!(rows.rows[1][0], int(2));
    assert!(rows.rows[1][1..].iter().all(|v| *v == Value::Null));
    assert_eq!(rows.rows[2][1], Value::Null);

    // Values compare as parameters too.
    let found = guest
        .rows(
            "select id from vals where ts = $1 and m = $2 and y = $3",
            vec![
                Value::Timestamp(TIMESTAMP),
                Value::Decimal("12.50".into()),
                Value::Bytes(vec![0, 255, 1, 2, 0]),
            ],
        )
        .await;
    assert_eq!(found, [[int(1)]]);

    // No rows: the columns are still named.
    let empty = guest
        .query("select id, t from vals where id = $1", vec![int(99)])
        .await
        .unwrap();
    assert_eq!(empty.columns, ["id", "t"]);
    assert!(empty.rows.is_empty());

    // Extremes and expressions.
    let rows = guest
        .rows(
            "select $1 as lo, $2 as hi, $3 as big",
            vec![
                int(i64::MIN),
                Value::Float(-1.5e300),
                Value::Decimal("0.000001".into()),
            ],
        )
        .await;
    if pg {
        assert_eq!(
            rows,
            [[
                int(i64::MIN),
                Value::Float(-1.5e300),
                Value::Decimal("0.000001".into())
            ]]
        );
    } else {
        assert_eq!(
            rows,
            [[int(i64::MIN), Value::Float(-1.5e300), text("0.000001")]]
        );
    }

    // Bad parameters are error values naming the parameter.
    let bad = guest
        .query("select $1", vec![Value::Decimal("12,5".into())])
        .await;
    assert!(
        matches!(&bad, Err(Error::Unsupported(m)) if m.contains("$1") && m.contains("12,5")),
        "{bad:?}"
    );
    let bad = guest
        .query("select $1", vec![Value::Timestamp(i64::MIN)])
        .await;
    assert!(matches!(&bad, Err(Error::Unsupported(_))), "{bad:?}");

    if pg {
        // Types read as text, and one that is not readable at all.
        let rows = guest
            .rows(
                "select '6f1c2b9e-8a4d-4c1e-9f3a-2b7c5d8e9f01'::uuid as u, \
                 '{\"a\": [1, 2]}'::json as j, '{\"a\": 1}'::jsonb as jb, \
                 '2026-11-25'::date as day, '21:44:36.5'::time as clock, \
                 'x'::varchar(3) as v, 7::int2 as small, 1.5::real as r",
                vec![],
            )
            .await;
        assert_eq!(
            rows,
            [[
                text("6f1c2b9e-8a4d-4c1e-9f3a-2b7c5d8e9f01"),
                text("{\"a\": [1, 2]}"),
                text("{\"a\": 1}"),
                text("2026-11-25"),
                text("21:44:36.5"),
                text("x"),
                int(7),
                Value::Float(1.5),
            ]]
        );
        let bad = guest.query("select interval '1 day' as span", vec![]).await;
        assert!(
            matches!(&bad, Err(Error::Unsupported(m))
                if m.contains("span") && m.contains("INTERVAL") && m.contains("cast")),
            "{bad:?}"
        );
        let nan = guest.query("select 'NaN'::numeric as n", vec![]).await;
        assert!(
            matches!(&nan, Err(Error::Unsupported(m)) if m.contains("NaN")),
            "{nan:?}"
        );
        // A uuid column compares with a cast parameter, as the WIT says.
        guest.ok("create table ids (id uuid primary key)").await;
        let id = "6f1c2b9e-8a4d-4c1e-9f3a-2b7c5d8e9f01";
        assert_eq!(
            guest
                .execute("insert into ids values ($1::uuid)", vec![text(id)])
                .await,
            Ok(1)
        );
        assert_eq!(
            guest
                .rows("select id from ids where id = $1::uuid", vec![text(id)])
                .await,
            [[text(id)]]
        );
    } else {
        // A parameter name SQLite accepts but that has no position is an error, not a crash.
        // Parameter names SQLite accepts but that have no position are error values, and the
        // connections stay usable.
        for sql in ["select $0", "select $00 as x", "select $name"] {
            let odd = guest.query(sql, vec![int(1)]).await;
            assert!(matches!(&odd, Err(Error::Query(_))), "{sql}: {odd:?}");
        }
        for _ in 0..10 {
            assert_eq!(guest.rows("select $1", vec![int(1)]).await, [[int(1)]]);
        }
    }
}

async fn parameters_may_change_type_between_calls(setup: Setup) {
    let mut guest = Guest::new(setup.namespace(&setup.a).await);
    guest.ok("create table n (v bigint)").await;
    // The same text with parameters of different types: each call must bind its own.
    for value in [
        int(7),
        Value::Null,
        int(8),
        Value::Float(2.0),
        Value::Decimal("9".into()),
        int(10),
    ] {
        assert_eq!(
            guest
                .execute("insert into n (v) values ($1)", vec![value.clone()])
                .await,
            Ok(1),
            "{value:?}"
        );
    }
    let rows = guest.rows("select v from n order by v", vec![]).await;
    let values: Vec<Value> = rows.into_iter().map(|mut r| r.remove(0)).collect();
    let expected_null_first = [Value::Null, int(2), int(7), int(8), int(9), int(10)];
    let expected_null_last = [int(2), int(7), int(8), int(9), int(10), Value::Null];
    assert!(
        values == expected_null_first || values == expected_null_last,
        "{values:?}"
    );
    for (value, back) in [
        (int(1), int(1)),
        (text("1"), text("1")),
        (Value::Float(1.5), Value::Float(1.5)),
        (Value::Boolean(false), Value::Boolean(false)),
    ] {
        let rows = guest.rows("select $1 as v", vec![value.clone()]).await;
        let back = match (setup.dialect(), back) {
            (Dialect::Sqlite, Value::Boolean(b)) => int(i64::from(b)),
            (_, back) => back,
        };
        assert_eq!(rows, [[back]], "{value:?}");
    }
}

async fn execute_counts_rows(setup: Setup) {
    let mut guest = Guest::new(setup.namespace(&setup.a).await);
    guest
        .ok("create table items (id int primary key, qty int not null)")
        .await;
    for id in 1..=3 {
        assert_eq!(
            guest
                .execute(
                    "insert into items (id, qty) values ($1, $2)",
                    vec![int(id), int(id * 10)]
                )
                .await,
            Ok(1)
        );
    }
    assert_eq!(
        guest
            .execute(
                "update items set qty = qty + 1 where qty >= $1",
                vec![int(20)]
            )
            .await,
        Ok(2)
    );
    assert_eq!(
        guest
            .execute("delete from items where id = $1", vec![int(42)])
            .await,
        Ok(0)
    );
    assert_eq!(guest.execute("delete from items", vec![]).await, Ok(3));

    // A statement with RETURNING is a query.
    let rows = guest
        .query(
            "insert into items (id, qty) values ($1, $2) returning id, qty * 2 as double",
            vec![int(5), int(4)],
        )
        .await
        .unwrap();
    assert_eq!(rows.columns, ["id", "double"]);
    assert_eq!(rows.rows, [[int(5), int(8)]]);
}

async fn transactions_commit_roll_back_and_close(setup: Setup) {
    let namespace = setup.namespace(&setup.a).await;
    let mut guest = Guest::new(namespace.clone());
    guest.ok("create table t (id int primary key)").await;
    let count = |rows: Vec<Vec<Value>>| rows[0][0].clone();

    // Commit persists, and the transaction sees its own writes.
    let tx = guest.begin().await;
    assert_eq!(
        guest
            .tx_execute(tx, "insert into t values ($1)", vec![int(1)])
            .await,
        Ok(1)
    );
    let inside = guest
        .tx_query(tx, "select count(*) from t", vec![])
        .await
        .unwrap();
    assert_eq!(inside.rows, [[int(1)]]);
    assert_eq!(guest.commit(tx).await, Ok(()));
    assert_eq!(
        count(guest.rows("select count(*) from t", vec![]).await),
        int(1)
    );

    // After commit every call answers closed.
    assert_eq!(guest.commit(tx).await, Err(Error::Closed));
    assert_eq!(guest.rollback(tx).await, Err(Error::Closed));
    assert_eq!(
        guest
            .tx_execute(tx, "insert into t values (9)", vec![])
            .await,
        Err(Error::Closed)
    );
    assert!(matches!(
        guest.tx_query(tx, "select 1", vec![]).await,
        Err(Error::Closed)
    ));
    assert_eq!(guest.publish(tx, "order.x", b"1").await, Err(Error::Closed));
    guest.drop_tx(tx).await;

    // Rollback discards.
    let tx = guest.begin().await;
    assert_eq!(
        guest
            .tx_execute(tx, "insert into t values ($1)", vec![int(2)])
            .await,
        Ok(1)
    );
    assert_eq!(guest.rollback(tx).await, Ok(()));
    assert_eq!(guest.rollback(tx).await, Err(Error::Closed));
    guest.drop_tx(tx).await;

    // Dropping the resource without commit discards.
    let tx = guest.begin().await;
    assert_eq!(
        guest
            .tx_execute(tx, "insert into t values ($1)", vec![int(3)])
            .await,
        Ok(1)
    );
    guest.drop_tx(tx).await;

    // So does dropping the whole store (the end of a request) with a transaction open.
    {
        let mut request = Guest::new(namespace.clone());
        let tx = request.begin().await;
        assert_eq!(
            request
                .tx_execute(tx, "insert into t values ($1)", vec![int(4)])
                .await,
            Ok(1)
        );
    }
    // A failing statement inside a transaction is an error value; the commit then fails or
    // keeps nothing of the failed statement.
    let tx = guest.begin().await;
    assert!(matches!(
        guest
            .tx_execute(tx, "insert into missing values (1)", vec![])
            .await,
        Err(Error::Query(_))
    ));
    let commit = guest.commit(tx).await;
    if setup.dialect() == Dialect::Postgres {
        assert!(
            matches!(&commit, Err(Error::Query(m)) if m.starts_with("25P02")),
            "PostgreSQL rolls back after a failed statement, and says so: {commit:?}"
        );
    }
    guest.drop_tx(tx).await;

    // A savepoint recovers from an expected error; then the commit goes through.
    let tx = guest.begin().await;
    guest
        .tx_execute(tx, "insert into t values (5)", vec![])
        .await
        .unwrap();
    guest
        .tx_execute(tx, "savepoint attempt", vec![])
        .await
        .unwrap();
    assert!(matches!(
        guest
            .tx_execute(tx, "insert into t values (1)", vec![])
            .await,
        Err(Error::UniqueViolation(_))
    ));
    guest
        .tx_execute(tx, "rollback to savepoint attempt", vec![])
        .await
        .unwrap();
    assert_eq!(guest.commit(tx).await, Ok(()));
    guest.drop_tx(tx).await;
    assert_eq!(
        guest.execute("delete from t where id = 5", vec![]).await,
        Ok(1)
    );

    let ids = guest.rows("select id from t order by id", vec![]).await;
    assert_eq!(ids, [[int(1)]], "only the committed row is there");

    // Without a grant, every call is denied.
    let mut denied = Guest::with(SqlCtx::denied());
    assert_eq!(denied.execute("select 1", vec![]).await, Err(Error::Denied));
    assert!(matches!(
        denied.query("select 1", vec![]).await,
        Err(Error::Denied)
    ));
    assert!(matches!(
        Host::begin(&mut denied.view()).await.unwrap(),
        Err(Error::Denied)
    ));
}

async fn unique_violations_and_query_errors(setup: Setup) {
    let mut guest = Guest::new(setup.namespace(&setup.a).await);
    guest
        .ok("create table users (id int primary key, email text not null unique)")
        .await;
    let insert = "insert into users (id, email) values ($1, $2)";
    assert_eq!(
        guest.execute(insert, vec![int(1), text("a@x")]).await,
        Ok(1)
    );
    let pk = guest.execute(insert, vec![int(1), text("b@x")]).await;
    assert!(matches!(&pk, Err(Error::UniqueViolation(_))), "{pk:?}");
    let unique = guest.execute(insert, vec![int(2), text("a@x")]).await;
    assert!(
        matches!(&unique, Err(Error::UniqueViolation(_))),
        "{unique:?}"
    );
    let null = guest.execute(insert, vec![int(3), Value::Null]).await;
    assert!(matches!(&null, Err(Error::Query(_))), "{null:?}");
    let syntax = guest.execute("selec 1", vec![]).await;
    assert!(matches!(&syntax, Err(Error::Query(_))), "{syntax:?}");
    if setup.dialect() == Dialect::Postgres {
        assert!(matches!(&pk, Err(Error::UniqueViolation(m)) if m.starts_with("23505: ")));
        assert!(matches!(&syntax, Err(Error::Query(m)) if m.starts_with("42601: ")));
    }
    // Inside a transaction too.
    let tx = guest.begin().await;
    let again = guest
        .tx_execute(tx, insert, vec![int(1), text("c@x")])
        .await;
    assert!(
        matches!(&again, Err(Error::UniqueViolation(_))),
        "{again:?}"
    );
    guest.drop_tx(tx).await;
}

async fn components_are_isolated(setup: Setup) {
    let mut a = Guest::new(setup.namespace(&setup.a).await);
    let mut b = Guest::new(setup.namespace(&setup.b).await);
    a.ok("create table secret (v text)").await;
    assert_eq!(
        a.execute("insert into secret values ($1)", vec![text("a's")])
            .await,
        Ok(1)
    );
    // B has its own namespace: no table `secret`, and creating one does not touch A's.
    assert!(matches!(
        b.query("select * from secret", vec![]).await,
        Err(Error::Query(_))
    ));
    b.ok("create table secret (v text)").await;
    assert_eq!(
        b.rows("select count(*) from secret", vec![]).await,
        [[int(0)]]
    );
    assert_eq!(
        a.rows("select v from secret", vec![]).await,
        [[text("a's")]]
    );

    match setup.dialect() {
        Dialect::Postgres => {
            let a_schema = setup.a.replace('-', "_");
            let a_role = role_of(&setup.a);
            let b_role = role_of(&setup.b);
            for sql in [
                format!(r#"select * from "{a_schema}".secret"#),
                format!(r#"insert into "{a_schema}".secret values ('b was here')"#),
                format!(r#"drop table "{a_schema}".secret"#),
                format!(r#"create table "{a_schema}".planted (x int)"#),
                format!(r#"set role "{a_role}""#),
                "set role postgres".to_owned(),
                "set session authorization postgres".to_owned(),
                "create role intruder".to_owned(),
                "select pg_read_file('/etc/hostname')".to_owned(),
            ] {
                let refused = b.execute(&sql, vec![]).await;
                assert!(
                    matches!(&refused, Err(Error::Query(_))),
                    "{sql}: {refused:?}"
                );
            }
            // RESET ROLE keeps B as itself: it logged in as its role.
            b.ok("reset role").await;
            assert_eq!(
                b.rows("select current_user::text", vec![]).await,
                [[text(&b_role)]]
            );
            // Pointing the search path at A's schema does not open it either.
            let tx = b.begin().await;
            b.tx_execute(
                tx,
                &format!(r#"set local search_path = "{a_schema}""#),
                vec![],
            )
            .await
            .unwrap();
            assert!(matches!(
                b.tx_query(tx, "select * from secret", vec![]).await,
                Err(Error::Query(_))
            ));
            b.drop_tx(tx).await;
        }
        Dialect::Sqlite => {
            let dir = setup.dir.as_deref().unwrap();
            let a_file = dir.join(format!("{}.sqlite", setup.a));
            assert!(a_file.is_file(), "one file per component");
            let copy = dir.join("stolen.sqlite");
            for sql in [
                format!("attach database '{}' as a", a_file.display()),
                "attach database ':memory:' as m".to_owned(),
                format!("vacuum into '{}'", copy.display()),
            ] {
                let refused = b.execute(&sql, vec![]).await;
                assert!(
                    matches!(&refused, Err(Error::Query(_))),
                    "{sql}: {refused:?}"
                );
            }
            assert!(!copy.exists(), "VACUUM INTO wrote no file");
            // Defensive mode: the schema cannot be written directly.
            let schema = b.execute("pragma writable_schema = on", vec![]).await;
            let write = b
                .execute(
                    "update sqlite_master set sql = 'x' where name = 'secret'",
                    vec![],
                )
                .await;
            assert!(schema.is_err() || write.is_err(), "{schema:?} {write:?}");
        }
    }
    assert_eq!(
        a.rows("select v from secret", vec![]).await,
        [[text("a's")]]
    );
}

async fn migrations_apply_once(setup: Setup) {
    let namespace = setup.namespace(&setup.a).await;
    let mut guest = Guest::new(namespace.clone());
    let first = vec![
        Migration::new(
            "0001_init",
            "create table products (id int primary key, name text not null);\n\
             insert into products values (1, 'tea');\n\
             -- a comment; with a semicolon\n\
             insert into products values (2, 'coffee');",
        ),
        Migration::new("0002_price", "alter table products add column price int;"),
    ];
    assert_eq!(
        namespace.migrate(&first).await.unwrap(),
        ["0001_init", "0002_price"]
    );
    assert!(
        namespace.migrate(&first).await.unwrap().is_empty(),
        "applied once"
    );
    assert_eq!(
        guest.rows("select count(*) from products", vec![]).await,
        [[int(2)]]
    );
    let tracked = guest
        .rows(
            "select version, checksum from _agora_migrations order by version",
            vec![],
        )
        .await;
    assert_eq!(
        tracked,
        [
            [text("0001_init"), text(&first[0].checksum())],
            [text("0002_price"), text(&first[1].checksum())],
        ]
    );

    // An applied migration that changed is refused, naming it.
    let mut changed = first.clone();
    changed[0].sql.push_str("\n-- edited");
    let err = namespace.migrate(&changed).await.unwrap_err();
    assert!(
        matches!(&err, SqlError::Migration { version, .. } if version == "0001_init"),
        "{err}"
    );

    // A failing migration keeps nothing of itself, keeps those before it, and names itself
    // and the database's message.
    let mut more = first.clone();
    more.push(Migration::new(
        "0003_ok",
        "create table orders (id int primary key);",
    ));
    more.push(Migration::new(
        "0004_broken",
        "create table partial (x int);\ninsert into no_such_table values (1);",
    ));
    let err = namespace.migrate(&more).await.unwrap_err();
    assert!(
        matches!(&err, SqlError::Migration { version, message }
            if version == "0004_broken" && message.contains("no_such_table")),
        "{err}"
    );
    assert!(err.to_string().contains("0004_broken"), "{err}");
    assert!(matches!(
        guest.query("select * from partial", vec![]).await,
        Err(Error::Query(_))
    ));
    assert_eq!(
        guest.rows("select count(*) from orders", vec![]).await,
        [[int(0)]]
    );
    more[3].sql = "create table partial (x int);".into();
    assert_eq!(namespace.migrate(&more).await.unwrap(), ["0004_broken"]);

    // Concurrent migrators apply each migration once between them.
    let mut next = more.clone();
    next.push(Migration::new(
        "0005_log",
        "create table log (id int primary key); insert into log values (1);",
    ));
    let (one, two) = tokio::join!(namespace.migrate(&next), namespace.migrate(&next));
    let mut applied = one.unwrap();
    applied.extend(two.unwrap());
    assert_eq!(applied, ["0005_log"]);
    assert_eq!(
        guest.rows("select count(*) from log", vec![]).await,
        [[int(1)]]
    );
}

/// PostgreSQL: a migration run that finds nothing to apply — every hot swap without new
/// migrations — leaves the pool's connection open (the locked path closes the one it used, and
/// the next request then paid for a new connection).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_migrating_nothing_new_keeps_the_connection() {
    on_postgres(|setup: Setup| async move {
        // A pool of one connection: the session seen before and after is the pool's only one.
        let namespace = pool_of_one(&setup.a).await;
        let mut guest = Guest::new(namespace.clone());
        let migrations = vec![Migration::new("0001_init", "create table t (id int);")];
        assert_eq!(namespace.migrate(&migrations).await.unwrap(), ["0001_init"]);
        let before = guest.rows("select pg_backend_pid()", vec![]).await;
        assert!(namespace.migrate(&migrations).await.unwrap().is_empty());
        let after = guest.rows("select pg_backend_pid()", vec![]).await;
        assert_eq!(before, after, "the same session before and after");
    })
    .await;
}

type Published = Arc<Mutex<Vec<OutboxMessage>>>;

/// A publish callback that records messages, failing for payloads in `fail` (a broker down)
/// and rejecting those in `reject` (a broker that never takes them).
fn recorder(
    published: Published,
    fail: HashSet<Vec<u8>>,
) -> impl for<'a> Fn(&'a OutboxMessage) -> BoxFuture<'a, Result<(), RelayError>> + Send + Sync {
    rejecting(published, fail, HashSet::new())
}

fn rejecting(
    published: Published,
    fail: HashSet<Vec<u8>>,
    reject: HashSet<Vec<u8>>,
) -> impl for<'a> Fn(&'a OutboxMessage) -> BoxFuture<'a, Result<(), RelayError>> + Send + Sync {
    move |message: &OutboxMessage| {
        let published = published.clone();
        let fails = fail.contains(&message.payload);
        let rejected = reject.contains(&message.payload);
        async move {
            if fails {
                return Err(RelayError::Retry("broker down".to_owned()));
            }
            if rejected {
                return Err(RelayError::Reject("too large for the broker".to_owned()));
            }
            published.lock().unwrap().push(message.clone());
            Ok(())
        }
        .boxed()
    }
}

/// A publish callback that records messages after a pause.
fn slow_recorder(
    published: Published,
) -> impl for<'a> Fn(&'a OutboxMessage) -> BoxFuture<'a, Result<(), RelayError>> + Send + Sync {
    move |message: &OutboxMessage| {
        let published = published.clone();
        let message = message.clone();
        async move {
            tokio::time::sleep(Duration::from_millis(20)).await;
            published.lock().unwrap().push(message);
            Ok(())
        }
        .boxed()
    }
}

async fn outbox_relays_committed_messages_in_order(setup: Setup) {
    let namespace = setup.namespace(&setup.a).await;
    let mut guest = Guest::new(namespace.clone());
    guest.ok("create table orders (id int primary key)").await;
    let signal = namespace.outbox_signal();
    let published: Published = Arc::default();
    let all = recorder(published.clone(), HashSet::new());

    // Committed: relayed in order, with the ids publish returned, then gone.
    let tx = guest.begin().await;
    guest
        .tx_execute(tx, "insert into orders values (1)", vec![])
        .await
        .unwrap();
    let mut ids = Vec::new();
    for payload in [b"1", b"2", b"3"] {
        ids.push(guest.publish(tx, "order.created", payload).await.unwrap());
    }
    assert_eq!(guest.commit(tx).await, Ok(()));
    guest.drop_tx(tx).await;
    tokio::time::timeout(Duration::from_secs(5), signal.notified())
        .await
        .expect("the commit signals the relay");

    assert_eq!(namespace.relay_outbox(2, &all).await.unwrap(), 2, "limit");
    assert_eq!(namespace.relay_outbox(100, &all).await.unwrap(), 1);
    assert_eq!(
        namespace.relay_outbox(100, &all).await.unwrap(),
        0,
        "deleted"
    );
    let got = std::mem::take(&mut *published.lock().unwrap());
    assert_eq!(got.iter().map(|m| m.id.clone()).collect::<Vec<_>>(), ids);
    assert_eq!(got[0].subject, "order.created");
    assert_eq!(got[2].payload, b"3");
    assert_eq!(got[2].headers, [("x-seq".to_owned(), "3".to_owned())]);
    assert!(uuid::Uuid::parse_str(&got[0].id).is_ok());

    // Rolled back, or dropped: nothing to relay.
    let tx = guest.begin().await;
    guest.publish(tx, "order.created", b"gone").await.unwrap();
    guest.rollback(tx).await.unwrap();
    guest.drop_tx(tx).await;
    let tx = guest.begin().await;
    guest
        .publish(tx, "order.created", b"gone too")
        .await
        .unwrap();
    guest.drop_tx(tx).await;
    assert_eq!(namespace.relay_outbox(100, &all).await.unwrap(), 0);

    // A publish error keeps that message and the ones after it for the next relay. The rows
    // of a pass are published together, so a row after the failed one may have reached the
    // broker already: it is published again, under the same id, which the broker drops.
    let tx = guest.begin().await;
    for payload in [b"a", b"b", b"c"] {
        guest.publish(tx, "order.paid", payload).await.unwrap();
    }
    guest.commit(tx).await.unwrap();
    guest.drop_tx(tx).await;
    let failing = recorder(published.clone(), HashSet::from([b"b".to_vec()]));
    let queued = "select seq, id, cast(created_at as text) from _agora_outbox order by seq";
    let before = guest.rows(queued, vec![]).await;
    assert_eq!(namespace.relay_outbox(100, &failing).await.unwrap(), 1);
    // What stays is what was there: the same keys, ids and times, in the same order.
    assert_eq!(
        guest.rows(queued, vec![]).await,
        before[1..],
        "b and c stay as they were"
    );
    assert_eq!(namespace.relay_outbox(100, &failing).await.unwrap(), 0);
    let before_last = published.lock().unwrap().len();
    assert_eq!(namespace.relay_outbox(100, &all).await.unwrap(), 2);
    let last_pass: Vec<Vec<u8>> = published.lock().unwrap()[before_last..]
        .iter()
        .map(|m| m.payload.clone())
        .collect();
    assert_eq!(last_pass, [b"b".to_vec(), b"c".to_vec()]);
    let mut ids = HashSet::new();
    let once: Vec<Vec<u8>> = published
        .lock()
        .unwrap()
        .iter()
        .filter(|m| ids.insert(m.id.clone()))
        .map(|m| m.payload.clone())
        .collect();
    assert_eq!(once.len(), 3, "a, b and c, each under one id: {once:?}");
    assert_eq!(once[0], b"a".to_vec());

    // A row the broker rejects for good moves to the dead-letter table, and the relay goes on
    // with the rows after it; so does a row that cannot be read as a message.
    published.lock().unwrap().clear();
    let tx = guest.begin().await;
    for payload in [b"d", b"e", b"f"] {
        guest.publish(tx, "order.paid", payload).await.unwrap();
    }
    guest.commit(tx).await.unwrap();
    guest.drop_tx(tx).await;
    guest
        .ok("insert into _agora_outbox (id, subject, payload, headers) \
             values ('by-hand', 'order.paid', 'g', 'not json')")
        .await;
    let created = "select id, cast(created_at as text) from _agora_outbox where id = 'by-hand'";
    let created_by_hand = guest.rows(created, vec![]).await;
    let bouncing = rejecting(
        published.clone(),
        HashSet::new(),
        HashSet::from([b"e".to_vec()]),
    );
    assert_eq!(namespace.relay_outbox(100, &bouncing).await.unwrap(), 4);
    assert_eq!(namespace.relay_outbox(100, &bouncing).await.unwrap(), 0);
    let payloads: Vec<Vec<u8>> = published
        .lock()
        .unwrap()
        .iter()
        .map(|m| m.payload.clone())
        .collect();
    assert_eq!(payloads, [b"d".to_vec(), b"f".to_vec()]);
    let dead = guest
        .rows(
            "select subject, payload, headers, reason from _agora_outbox_dead order by seq",
            vec![],
        )
        .await;
    assert_eq!(dead.len(), 2, "{dead:?}");
    assert_eq!(dead[0][0], text("order.paid"));
    assert_eq!(dead[0][1], Value::Bytes(b"e".to_vec()));
    assert_eq!(dead[0][2], text(r#"[["x-seq","e"]]"#));
    assert!(
        matches!(&dead[0][3], Value::Text(reason) if reason.contains("too large for the broker")),
        "{dead:?}"
    );
    assert!(
        matches!(&dead[1][3], Value::Text(reason) if reason.contains("cannot be read")),
        "{dead:?}"
    );
    let dead_created =
        "select id, cast(created_at as text) from _agora_outbox_dead where id = 'by-hand'";
    assert_eq!(
        guest.rows(dead_created, vec![]).await,
        created_by_hand,
        "a dead row keeps the time it was written"
    );

    // Publishing needs the grant and a valid message; neither failure ends the transaction.
    let tx = guest.begin().await;
    assert_eq!(
        guest.publish(tx, "payment.done", b"x").await,
        Err(Error::Denied)
    );
    assert!(matches!(
        guest.publish(tx, "order.bad subject", b"x").await,
        Err(Error::Unsupported(_))
    ));
    let big = vec![0u8; agora_sql::MAX_PAYLOAD_BYTES + 1];
    let too_big = HostTransaction::publish(
        &mut guest.view(),
        borrow(tx),
        "order.big".into(),
        big,
        vec![],
    )
    .await
    .unwrap();
    assert!(matches!(&too_big, Err(Error::Unsupported(m)) if m.contains("limit")));
    guest.commit(tx).await.unwrap();
    guest.drop_tx(tx).await;
    assert_eq!(namespace.relay_outbox(100, &all).await.unwrap(), 0);

    // With the broker's rules given, publish refuses what the broker would never take.
    let may_publish = Arc::new(|subject: &str| subject.starts_with("order."));
    let check: agora_sql::PublishCheck = Arc::new(|message: &OutboxMessage| {
        if message.payload.len() > 8 {
            Err(format!(
                "{} bytes, over the broker's 8",
                message.payload.len()
            ))
        } else {
            Ok(())
        }
    });
    let mut checked =
        Guest::with(SqlCtx::granted(namespace.clone(), may_publish).with_publish_check(check));
    let tx = checked.begin().await;
    assert!(
        checked
            .publish(tx, "order.small", b"12345678")
            .await
            .is_ok()
    );
    assert!(matches!(
        checked.publish(tx, "order.big", b"123456789").await,
        Err(Error::Unsupported(m)) if m.contains("over the broker's 8")
    ));
    checked.commit(tx).await.unwrap();
    checked.drop_tx(tx).await;
    assert_eq!(namespace.relay_outbox(100, &all).await.unwrap(), 1);
}

async fn concurrent_relays_never_share_a_row(setup: Setup) {
    let namespace = setup.namespace(&setup.a).await;
    let mut guest = Guest::new(namespace.clone());
    let tx = guest.begin().await;
    let mut ids = HashSet::new();
    for i in 0..20 {
        let id = guest
            .publish(tx, "order.created", i.to_string().as_bytes())
            .await
            .unwrap();
        ids.insert(id);
    }
    guest.commit(tx).await.unwrap();
    guest.drop_tx(tx).await;

    // Slow publishers, so the two relays overlap.
    let relay = |published: Published| {
        let namespace = namespace.clone();
        async move {
            namespace
                .relay_outbox(10, &slow_recorder(published))
                .await
                .unwrap()
        }
    };
    let (one, two): (Published, Published) = (Arc::default(), Arc::default());
    let (n1, n2) = tokio::join!(
        tokio::spawn(relay(one.clone())),
        tokio::spawn(relay(two.clone()))
    );
    assert_eq!(n1.unwrap() + n2.unwrap(), 20);
    let one: HashSet<String> = one.lock().unwrap().iter().map(|m| m.id.clone()).collect();
    let two: HashSet<String> = two.lock().unwrap().iter().map(|m| m.id.clone()).collect();
    assert!(one.is_disjoint(&two), "no message relayed twice");
    assert_eq!(&one | &two, ids);
}

/// PostgreSQL: the relay vacuums a component's outbox once it has deleted
/// [`OUTBOX_VACUUM_EVERY`] rows from it, so the dead rows of a queue do not pile up at the head
/// its claim reads, whether autovacuum is off, late or on (`vacuum_count` counts only vacuums
/// run by a client, not autovacuum's); and after a vacuum the claim still reads the primary
/// key rather than scanning the emptied pages.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_the_relay_vacuums_its_outbox() {
    on_postgres(|setup: Setup| async move {
        let namespace = setup.namespace(&setup.a).await;
        let schema = setup.a.replace('-', "_");
        let admin = admin().await;
        let fill = |rows: u64| {
            let insert = format!(
                r#"insert into "{schema}"._agora_outbox (id, subject, payload, headers)
                   select 'm' || g, 'order.created', 'x', '[]' from generate_series(1, $1) g"#
            );
            let admin = admin.clone();
            async move {
                sqlx::query(sqlx::AssertSqlSafe(insert))
                    .bind(i64::try_from(rows).unwrap())
                    .execute(&admin)
                    .await
                    .unwrap();
            }
        };
        // Relays `rows` rows, in passes of at most 1 000.
        let relay = |rows: usize| {
            let namespace = namespace.clone();
            async move {
                let published: Published = Arc::default();
                let all = recorder(published, HashSet::new());
                let mut relayed = 0;
                while relayed < rows {
                    match namespace
                        .relay_outbox((rows - relayed).min(1000), &all)
                        .await
                        .unwrap()
                    {
                        0 => break,
                        n => relayed += n,
                    }
                }
                relayed
            }
        };
        let vacuums = "select vacuum_count from pg_stat_user_tables \
                       where schemaname = $1 and relname = '_agora_outbox'";
        let vacuum_count = || async {
            sqlx::query_scalar::<_, i64>(vacuums)
                .bind(&schema)
                .fetch_one(&admin)
                .await
                .unwrap()
        };

        // Fifty rows more than the threshold: the vacuum finds rows still queued, as under
        // load, and records the table as holding that few rows in all its pages.
        fill(OUTBOX_VACUUM_EVERY + 50).await;
        assert_eq!(
            relay(OUTBOX_VACUUM_EVERY as usize - 1).await,
            OUTBOX_VACUUM_EVERY as usize - 1
        );
        assert_eq!(vacuum_count().await, 0, "one row short of the threshold");
        assert_eq!(relay(1).await, 1);
        let not_yet = until_zero(
            &admin,
            &format!("select 1 - ({vacuums})"),
            &[schema.as_str()],
        )
        .await;
        // How many dead rows it removed is not asserted: a vacuum keeps those a snapshot still
        // open elsewhere on the server (another test's) may see.
        assert_eq!(not_yet, 0, "the relay's vacuum, counted by the server");
        // It ran under the host's application_name, which the reaper spares; that session is
        // closed, not lent to a guest.
        let named = until_zero(
            &admin,
            "select count(*) from pg_stat_activity \
             where usename = $1 and application_name = 'agora-host'",
            &[role_of(&setup.a).as_str()],
        )
        .await;
        assert_eq!(named, 0, "no session of the role keeps the host's name");

        // After it the statistics say the outbox holds 50 rows while its file keeps every page
        // it emptied: the claim must still read the primary key, not scan all those pages.
        let scans = "select seq_scan, coalesce(idx_scan, 0) from pg_stat_user_tables \
                     where schemaname = $1 and relname = '_agora_outbox'";
        let scans = || async {
            sqlx::query_as::<_, (i64, i64)>(scans)
                .bind(&schema)
                .fetch_one(&admin)
                .await
                .unwrap()
        };
        // An idle backend reports its counts to the server's statistics within 10 s.
        tokio::time::sleep(Duration::from_secs(11)).await;
        let (seq_before, idx_before) = scans().await;
        assert_eq!(relay(100).await, 50);
        // The relay's connection is a new one (the vacuum's was closed), whose first counts
        // may wait the whole 10 s.
        let mut after = scans().await;
        for _ in 0..200 {
            if after.1 > idx_before {
                break;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
            after = scans().await;
        }
        assert!(after.1 > idx_before, "the claims read the primary key");
        assert_eq!(after.0, seq_before, "no claim scanned the table");
    })
    .await;
}

async fn namespaces_are_reused(setup: Setup) {
    let first = setup.namespace(&setup.a).await;
    let again = setup.namespace(&setup.a).await;
    assert!(Arc::ptr_eq(&first.outbox_signal(), &again.outbox_signal()));

    // Two replicas creating the same namespace at once both succeed and share its data.
    let replica = setup.replica().await;
    let (here, there) = tokio::join!(
        setup.backend.namespace(&setup.b),
        replica.namespace(&setup.b)
    );
    let (here, there) = (here.unwrap(), there.unwrap());
    here.execute("create table shared (v int)", vec![])
        .await
        .unwrap();
    here.execute("insert into shared values (7)", vec![])
        .await
        .unwrap();
    let rows = there.query("select v from shared", vec![]).await.unwrap();
    assert_eq!(rows.rows, [[int(7)]]);
    // Opening an existing namespace again (a restart) keeps its data.
    let restarted = setup.replica().await.namespace(&setup.b).await.unwrap();
    let rows = restarted
        .query("select v from shared", vec![])
        .await
        .unwrap();
    assert_eq!(rows.rows, [[int(7)]]);
    for bad in ["", "Bad", "a_b", "public", "pg-catalog"] {
        let err = setup.backend.namespace(bad).await.err();
        assert!(matches!(err, Some(SqlError::Config(_))), "{bad}: {err:?}");
    }
}

#[tokio::test]
async fn connect_picks_the_backend_from_the_url() {
    let dir = tempfile::tempdir().unwrap();
    let default = agora_sql::connect(None, dir.path()).await.unwrap();
    assert_eq!(default.dialect(), Dialect::Sqlite);
    default.namespace("hello").await.unwrap();
    assert!(dir.path().join("sql").join("hello.sqlite").is_file());

    let elsewhere = dir.path().join("elsewhere");
    let url = format!("sqlite://{}", elsewhere.display());
    let sqlite = agora_sql::connect(Some(&url), Path::new("unused"))
        .await
        .unwrap();
    sqlite.namespace("hello").await.unwrap();
    assert!(elsewhere.join("hello.sqlite").is_file());

    for bad in ["mysql://u:secret@h/db", "sqlite://", "postgres"] {
        let err = agora_sql::connect(Some(bad), dir.path()).await.err();
        assert!(matches!(&err, Some(SqlError::Config(_))), "{bad}: {err:?}");
        assert!(
            !format!("{err:?}").contains("secret"),
            "no password in {err:?}"
        );
    }

    let url = database_url();
    if postgres().await.is_some() {
        let pg = agora_sql::connect(Some(&url), dir.path()).await.unwrap();
        assert_eq!(pg.dialect(), Dialect::Postgres);
        assert_eq!(pg.dialect().to_string(), "postgres");
    }
}

#[tokio::test]
async fn an_unreachable_postgres_is_an_error_value_not_a_hang() {
    // Port 1 on loopback: nothing listens there, so connecting fails at once.
    let err = PostgresBackend::connect("postgres://postgres@127.0.0.1:1/test")
        .await
        .err();
    assert!(
        matches!(&err, Some(SqlError::Unavailable(m)) if m.contains("127.0.0.1:1/test")),
        "{err:?}"
    );
}

// Bounds: deadlines, result caps, advisory locks and pools.

/// Bounds with a deadline `after` from now and a result cap of `cap` bytes.
fn bounds(after: Duration, cap: usize) -> Bounds {
    Bounds {
        deadline: Some(Instant::now() + after),
        max_result_bytes: cap,
        max_statement: Some(after),
    }
}

/// How long a call may take past its deadline before a test calls it a hang.
const GRACE: Duration = Duration::from_secs(1);

/// Runs `call`, failing the test if it has not answered within `limit`.
async fn answers_within<T>(limit: Duration, call: impl Future<Output = T>) -> T {
    match tokio::time::timeout(limit, call).await {
        Ok(answer) => answer,
        Err(_) => panic!("no answer within {limit:?}"),
    }
}

const ENDLESS: &str = "with recursive r(n) as (select 1 union all select n + 1 from r)";

fn is_code(answer: &Result<Rows, Error>, code: &str) -> bool {
    matches!(answer, Err(Error::Query(m)) if m.starts_with(code))
}

/// Connections in a component's pool, on both backends (unless configured otherwise).
const POOL: usize = 8;

async fn statements_end_at_the_deadline(setup: Setup) {
    let namespace = setup.namespace(&setup.a).await;
    let deadline = Duration::from_millis(800);
    let mut statements = vec![format!("{ENDLESS} select count(*) from r")];
    if setup.dialect() == Dialect::Postgres {
        statements.push("select pg_sleep(3600)".into());
    }
    for statement in statements {
        // As many at once as the pool has connections: each must come back (or be replaced).
        let mut guests: Vec<Guest> = (0..POOL)
            .map(|_| Guest::bounded(namespace.clone(), bounds(deadline, 1 << 20)))
            .collect();
        let calls = guests
            .iter_mut()
            .map(|guest| guest.query(&statement, vec![]));
        let answers = answers_within(deadline + GRACE, futures::future::join_all(calls)).await;
        for answer in answers {
            assert!(is_code(&answer, "57014: "), "{statement}: {answer:?}");
            assert!(
                matches!(&answer, Err(Error::Query(m)) if m.contains("deadline")),
                "{answer:?}"
            );
        }
        // The namespace serves the next request: no connection is held by a statement that
        // runs on.
        let mut next = Guest::bounded(namespace.clone(), bounds(Duration::from_secs(3), 1 << 20));
        assert_eq!(next.rows("select 1", vec![]).await, [[int(1)]]);
    }
    if setup.dialect() == Dialect::Postgres {
        // The server has ended the cancelled statements, not just the host its wait.
        until_no_statement_runs(&setup.a, "pg_sleep(3600)").await;
        until_no_statement_runs(&setup.a, "count(*) from r").await;
    }
}

/// Waits (up to 10 s) until no session of `component`'s role runs a statement containing
/// `text`; fails the test otherwise.
async fn until_no_statement_runs(component: &str, text: &str) {
    let admin = admin().await;
    let role = role_of(component);
    let running = until_zero(
        &admin,
        "select count(*) from pg_stat_activity where usename = $1 and state = 'active' \
         and strpos(query, $2) > 0",
        &[&role, text],
    )
    .await;
    assert_eq!(
        running, 0,
        "statement(s) with {text:?} still run on the server as {role}"
    );
}

/// A pool of one connection as the test database's superuser, to watch and end the
/// components' sessions.
async fn admin() -> sqlx::PgPool {
    sqlx::postgres::PgPoolOptions::new()
        .max_connections(1)
        .connect(&database_url())
        .await
        .unwrap()
}

/// `component`'s namespace on a fresh backend whose pool holds one connection.
async fn pool_of_one(component: &str) -> Arc<dyn Namespace> {
    let backend = PostgresBackend::connect(&database_url()).await.unwrap();
    backend.namespace_with(component, 1).await.unwrap()
}

/// The login role of `component`.
fn role_of(component: &str) -> String {
    format!("agora_{}", component.replace('-', "_"))
}

/// Runs `count` (one row, one count; `$1`… bound to `binds`) every 100 ms until it answers 0,
/// for at most 10 s; returns the last count.
async fn until_zero(admin: &sqlx::PgPool, count: &str, binds: &[&str]) -> i64 {
    let mut last = 0;
    for _ in 0..100 {
        let mut query = sqlx::query_scalar::<_, i64>(sqlx::AssertSqlSafe(count));
        for bind in binds {
            query = query.bind(*bind);
        }
        last = query.fetch_one(admin).await.unwrap();
        if last == 0 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    last
}

async fn results_are_capped(setup: Setup) {
    let namespace = setup.namespace(&setup.a).await;
    let cap = 1 << 20;
    let deadline = Duration::from_secs(10);
    let mut guest = Guest::bounded(namespace.clone(), bounds(deadline, cap));
    let small = guest
        .query(&format!("{ENDLESS} select n from r limit 1000"), vec![])
        .await
        .unwrap();
    assert_eq!(small.rows.len(), 1000);

    let mut big = vec![
        format!("{ENDLESS} select n from r"),
        format!("{ENDLESS} select n, 'padding padding padding' from r limit 200000"),
    ];
    big.push(match setup.dialect() {
        Dialect::Sqlite => "select zeroblob(900000000)".into(),
        Dialect::Postgres => "select repeat('x', 2000000)".into(),
    });
    for statement in big {
        let mut guest = Guest::bounded(namespace.clone(), bounds(deadline, cap));
        let answer = answers_within(deadline, guest.query(&statement, vec![])).await;
        assert!(
            is_code(&answer, "54000: too_large"),
            "{statement}: {answer:?}"
        );
        assert!(
            matches!(&answer, Err(Error::Query(m)) if m.contains("1024 KiB") && m.contains("sql_result_kib")),
            "{answer:?}"
        );
    }
    // The namespace serves the next request.
    assert_eq!(guest.rows("select 1", vec![]).await, [[int(1)]]);
}

async fn transactions_end_at_the_deadline(setup: Setup) {
    let namespace = setup.namespace(&setup.a).await;
    let deadline = Duration::from_millis(800);
    let mut guest = Guest::bounded(namespace.clone(), bounds(deadline, 1 << 20));
    let tx = guest.begin().await;
    let endless = format!("{ENDLESS} select count(*) from r");
    let answer = answers_within(deadline + GRACE, guest.tx_query(tx, &endless, vec![])).await;
    assert!(is_code(&answer, "57014: "), "{answer:?}");
    let commit = guest.commit(tx).await;
    if setup.dialect() == Dialect::Postgres {
        assert!(matches!(&commit, Err(Error::Query(_))), "{commit:?}");
    }

    // Past the cap inside a transaction: an error, and the transaction cannot commit. (In
    // another component: every call of one component has the same deadline, which the host
    // relies on to find sessions left running.)
    let other = setup.namespace(&setup.b).await;
    let mut guest = Guest::bounded(other, bounds(Duration::from_secs(10), 1 << 20));
    guest.ok("create table kept (n int)").await;
    let tx = guest.begin().await;
    guest
        .tx_execute(tx, "insert into kept (n) values (1)", vec![])
        .await
        .unwrap();
    let answer = guest
        .tx_query(tx, &format!("{ENDLESS} select n from r"), vec![])
        .await;
    assert!(is_code(&answer, "54000: "), "{answer:?}");
    if setup.dialect() == Dialect::Postgres {
        // Its connection was closed mid-result: the transaction is gone.
        let later = guest.tx_query(tx, "select 1", vec![]).await;
        assert!(is_code(&later, "25P02: "), "{later:?}");
        assert!(guest.commit(tx).await.is_err());
        assert_eq!(
            guest.rows("select count(*) from kept", vec![]).await,
            [[int(0)]]
        );
    } else {
        guest.rollback(tx).await.unwrap();
    }

    if setup.dialect() == Dialect::Postgres {
        let mut guest = Guest::bounded(namespace.clone(), bounds(deadline, 1 << 20));
        let tx = guest.begin().await;
        let answer = answers_within(
            deadline + GRACE,
            guest.tx_query(tx, "select pg_sleep(3600)", vec![]),
        )
        .await;
        assert!(is_code(&answer, "57014: "), "{answer:?}");
        guest.drop_tx(tx).await;
        until_no_statement_runs(&setup.a, "pg_sleep(3600)").await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_a_dropped_call_gives_its_connection_back() {
    on_postgres(|setup: Setup| async move {
        // One connection: the dropped call's, if it were held, would be the only one.
        let namespace = pool_of_one(&setup.a).await;
        // The host drops a guest's future at its deadline; this drops it mid-statement.
        let mut guest = Guest::new(namespace.clone());
        let cut = tokio::time::timeout(
            Duration::from_millis(500),
            guest.query("select pg_sleep(3600)", vec![]),
        )
        .await;
        assert!(cut.is_err(), "pg_sleep(3600) answered: {cut:?}");
        drop(guest);
        let mut next = Guest::bounded(namespace.clone(), bounds(Duration::from_secs(5), 1 << 20));
        let answer = answers_within(Duration::from_secs(6), next.query("select 1", vec![])).await;
        assert_eq!(answer.map(|rows| rows.rows), Ok(vec![vec![int(1)]]));
        until_no_statement_runs(&setup.a, "pg_sleep(3600)").await;

        // Likewise a transaction dropped mid-statement.
        let mut guest = Guest::new(namespace.clone());
        let tx = guest.begin().await;
        let cut = tokio::time::timeout(
            Duration::from_millis(500),
            guest.tx_query(tx, "select pg_sleep(3600)", vec![]),
        )
        .await;
        assert!(cut.is_err(), "pg_sleep(3600) answered: {cut:?}");
        drop(guest);
        let mut next = Guest::bounded(namespace.clone(), bounds(Duration::from_secs(5), 1 << 20));
        let answer = answers_within(Duration::from_secs(6), next.query("select 2", vec![])).await;
        assert_eq!(answer.map(|rows| rows.rows), Ok(vec![vec![int(2)]]));
        until_no_statement_runs(&setup.a, "pg_sleep(3600)").await;
    })
    .await;
}

/// Ends every session of `component` on the server, as a restart or an operator would, and
/// waits until none is left.
async fn terminate_sessions(admin: &sqlx::PgPool, component: &str) {
    let role = role_of(component);
    let left = until_zero(
        admin,
        "select count(pg_terminate_backend(pid)) from pg_stat_activity where usename = $1",
        &[&role],
    )
    .await;
    assert_eq!(
        left, 0,
        "session(s) of {role} outlived pg_terminate_backend"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_a_connection_lost_in_the_pool_is_replaced() {
    on_postgres(|setup: Setup| async move {
        let namespace = pool_of_one(&setup.a).await;
        let admin = admin().await;
        let mut guest = Guest::bounded(namespace.clone(), bounds(Duration::from_secs(5), 1 << 20));
        assert_eq!(guest.rows("select 1", vec![]).await, [[int(1)]]);

        // Lost while idle for longer than the check's window: checked before it is lent,
        // closed, and the call served on a new connection.
        terminate_sessions(&admin, &setup.a).await;
        tokio::time::sleep(Duration::from_millis(800)).await;
        assert_eq!(guest.rows("select 2", vec![]).await, [[int(2)]]);
        let tx = guest.begin().await;
        guest.commit(tx).await.unwrap();

        // Lost just after its last use: lent unchecked, so that one call fails as `unavailable`
        // (as a call does when the server goes away under it) and closes the connection; the
        // next call gets a new one.
        terminate_sessions(&admin, &setup.a).await;
        let lost = guest.query("select 3", vec![]).await;
        assert!(matches!(&lost, Err(Error::Unavailable(_))), "{lost:?}");
        assert_eq!(guest.rows("select 4", vec![]).await, [[int(4)]]);
    })
    .await;
}

/// PostgreSQL's `Sync` message alone: what sqlx's pool sent to test every connection it took
/// back, a round trip per call.
const LONE_SYNC: [u8; 5] = [b'S', 0, 0, 0, 4];

/// A TCP proxy to `upstream` on a free local port that counts the client's writes made of a
/// lone `Sync`; returns its address and the count.
async fn sync_counting_proxy(upstream: String) -> (String, Arc<std::sync::atomic::AtomicUsize>) {
    use std::sync::atomic::{AtomicUsize, Ordering};
    use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap().to_string();
    let syncs = Arc::new(AtomicUsize::new(0));
    let counted = syncs.clone();
    tokio::spawn(async move {
        while let Ok((client, _)) = listener.accept().await {
            let Ok(server) = tokio::net::TcpStream::connect(&upstream).await else {
                continue;
            };
            let (mut client_read, mut client_write) = client.into_split();
            let (mut server_read, mut server_write) = server.into_split();
            let counted = counted.clone();
            tokio::spawn(async move {
                let mut buf = vec![0u8; 64 << 10];
                while let Ok(n @ 1..) = client_read.read(&mut buf).await {
                    if buf[..n] == LONE_SYNC {
                        counted.fetch_add(1, Ordering::SeqCst);
                    }
                    if server_write.write_all(&buf[..n]).await.is_err() {
                        break;
                    }
                }
            });
            tokio::spawn(async move {
                let _ = tokio::io::copy(&mut server_read, &mut client_write).await;
            });
        }
    });
    (addr, syncs)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_a_connection_goes_back_without_a_round_trip() {
    on_postgres(|setup: Setup| async move {
        use std::str::FromStr as _;
        let url = database_url();
        let options = sqlx::postgres::PgConnectOptions::from_str(&url).unwrap();
        let upstream = format!("{}:{}", options.get_host(), options.get_port());
        if !url.contains(&upstream) {
            eprintln!("SKIPPED: {url} does not name {upstream} to route through a proxy");
            return;
        }
        let (proxy, syncs) = sync_counting_proxy(upstream.clone()).await;
        let backend = PostgresBackend::connect(&url.replacen(&upstream, &proxy, 1))
            .await
            .unwrap();
        let namespace = backend.namespace_with(&setup.a, 1).await.unwrap();
        let mut guest = Guest::new(namespace.clone());
        assert_eq!(guest.rows("select 0::int8", vec![]).await, [[int(0)]]);

        let before = syncs.load(std::sync::atomic::Ordering::SeqCst);
        for i in 1..=10 {
            assert_eq!(
                guest.rows("select $1::int8", vec![int(i)]).await,
                [[int(i)]]
            );
            let tx = guest.begin().await;
            guest.tx_query(tx, "select 1", vec![]).await.unwrap();
            guest.commit(tx).await.unwrap();
        }
        let pings = syncs.load(std::sync::atomic::Ordering::SeqCst) - before;
        assert_eq!(
            pings, 0,
            "10 calls and 10 transactions on a busy connection sent {pings} lone Sync round \
             trips"
        );
    })
    .await;
}

/// The advisory lock key the host used for `purpose` on `schema` before its keys were
/// derived from the database URL: anyone could compute it.
fn predictable_lock_key(purpose: &str, schema: &str) -> i64 {
    use sha2::Digest as _;
    let digest = sha2::Sha256::digest(format!("agora-sql-{purpose}\0{schema}").as_bytes());
    i64::from_be_bytes(digest[..8].try_into().unwrap())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_a_guest_cannot_block_the_hosts_locks() {
    on_postgres(|setup: Setup| async move {
        let namespace = setup.namespace(&setup.a).await;
        let schema = setup.a.replace('-', "_");
        // A guest takes every lock it can name, on sessions that go back to its pool.
        let mut guest = Guest::new(namespace.clone());
        for purpose in ["migrate", "setup", "namespace"] {
            let key = predictable_lock_key(purpose, &schema);
            guest
                .rows("select pg_advisory_lock($1)", vec![int(key)])
                .await;
        }
        let migrations = vec![Migration::new("0001_init", "create table t (id int);")];
        let applied = answers_within(Duration::from_secs(10), namespace.migrate(&migrations)).await;
        assert_eq!(applied.unwrap(), ["0001_init"]);
        // A second host sets the namespace up again (the set-up locks) just as well.
        let replica = setup.replica().await;
        answers_within(Duration::from_secs(10), replica.namespace(&setup.a))
            .await
            .unwrap();
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_the_host_waits_for_its_locks_with_a_limit() {
    on_postgres(|setup: Setup| async move {
        let backend = PostgresBackend::connect(&database_url())
            .await
            .unwrap()
            .with_lock_wait(Duration::from_millis(500));
        let namespace = backend.namespace(&setup.a).await.unwrap();
        // Another session holds the migration lock (as another host migrating would).
        let mut holder = <sqlx::PgConnection as sqlx::Connection>::connect(&database_url())
            .await
            .unwrap();
        sqlx::query("select pg_advisory_lock($1)")
            .bind(backend.migration_lock_key(&setup.a))
            .execute(&mut holder)
            .await
            .unwrap();
        let migrations = vec![Migration::new("0001_init", "create table t (id int);")];
        let err = answers_within(Duration::from_secs(10), namespace.migrate(&migrations))
            .await
            .unwrap_err();
        let schema = setup.a.replace('-', "_");
        assert!(
            matches!(&err, SqlError::Unavailable(m)
                if m.contains("migration lock") && m.contains(&schema)),
            "{err}"
        );
        sqlx::Connection::close(holder).await.unwrap();
        assert_eq!(namespace.migrate(&migrations).await.unwrap(), ["0001_init"]);
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_one_component_cannot_take_every_connection() {
    on_postgres(|setup: Setup| async move {
        let backend = PostgresBackend::connect(&database_url())
            .await
            .unwrap()
            .with_pool_size(2);
        let a = backend.namespace(&setup.a).await.unwrap();
        let b = backend.namespace(&setup.b).await.unwrap();
        // Component a holds both of its connections in open transactions.
        let mut holder = Guest::new(a.clone());
        let first = holder.begin().await;
        let second = holder.begin().await;
        let deadline = Duration::from_millis(800);
        let mut more = Guest::bounded(a.clone(), bounds(deadline, 1 << 20));
        let answer = answers_within(deadline + GRACE, more.query("select 1", vec![])).await;
        assert!(
            matches!(&answer, Err(Error::Unavailable(m)) if m.contains("at most 2")),
            "{answer:?}"
        );
        // Component b is served meanwhile.
        let mut other = Guest::bounded(b, bounds(Duration::from_secs(5), 1 << 20));
        assert_eq!(other.rows("select 1", vec![]).await, [[int(1)]]);
        let admin = admin().await;
        let sessions: i64 =
            sqlx::query_scalar("select count(*) from pg_stat_activity where usename = $1")
                .bind(role_of(&setup.a))
                .fetch_one(&admin)
                .await
                .unwrap();
        assert!(sessions <= 2, "{sessions} sessions");
        holder.rollback(first).await.unwrap();
        holder.rollback(second).await.unwrap();
        let mut later = Guest::bounded(a, bounds(Duration::from_secs(5), 1 << 20));
        assert_eq!(later.rows("select 1", vec![]).await, [[int(1)]]);
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_a_guest_cannot_switch_the_servers_checks_off() {
    on_postgres(|setup: Setup| async move {
        let namespace = setup.namespace(&setup.a).await;
        let deadline = Duration::from_millis(800);
        let mut guest = Guest::bounded(namespace, bounds(deadline, 1 << 20));
        // The statement turns off, for its own session, what would end it once the host
        // closed its connection.
        let statement = "select set_config('client_connection_check_interval', '0', false), \
                         set_config('statement_timeout', '0', false), pg_sleep(3600)";
        let answer = answers_within(deadline + GRACE, guest.query(statement, vec![])).await;
        assert!(is_code(&answer, "57014: "), "{answer:?}");
        // The host ends that session once no request can still be waiting for it.
        until_no_statement_runs(&setup.a, "pg_sleep(3600)").await;
    })
    .await;
}
