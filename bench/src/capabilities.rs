//! `cargo xtask bench capabilities`: what one capability call costs from a guest, against the
//! same operation made natively from Rust on the same backend, in the same run.
//!
//! Guest side: a fixture answers `GET /…/{op}?repeat=N` after N calls of one operation
//! (components/fixtures/cache for the cache, components/fixtures/capbench for sql and
//! messaging); the per-call cost is (time at N = 1001 − time at N = 1) / 1000, medians of
//! sequential requests on one keep-alive connection, so HTTP and instantiation cancel out.
//! Native side: the same operation through the same capability crate (agora-cache, agora-sql,
//! agora-messaging) and the same backend, on a multi-threaded tokio runtime like the host's.

use crate::harness::process::{agora_serve, spawn_and_read_addr};
use crate::{cargo, components, target_dir};
use agora_cache::{CacheBackend, MemoryCache, RedisCache};
use agora_messaging::{Message, MessagingBackend};
use agora_sql::{Namespace, SqlBackend, Value};
use anyhow::{Context as _, bail};
use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

const CALLS: u32 = 1000;
const SAMPLES: usize = 25;
const VALUE: &[u8] = b"a sixteen byte v";
/// The fixture's component name, so the native side opens the same sql namespace.
const COMPONENT: &str = "capbench";
const BENCH_SUBJECT: &str = "bench.capabilities";

/// The production backends.
pub(crate) struct Urls {
    pub(crate) redis: String,
    pub(crate) database: String,
    pub(crate) nats: String,
}

/// One measured row.
struct Row {
    operation: &'static str,
    backend: String,
    guest: Duration,
    native: Duration,
}

/// The native operation of a row.
enum Native {
    Cache(Arc<dyn CacheBackend>),
    Sql(Arc<dyn Namespace>, &'static str),
    Publish(Arc<dyn MessagingBackend>),
}

pub(crate) fn run(urls: &Urls) -> anyhow::Result<()> {
    let cache_fixture = components::build_and_find("fixture-cache")?;
    let capbench = components::build_and_find("fixture-capbench")?;
    crate::run(cargo().args(["build", "--release", "--package", "agora-host"]))?;
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    let work = target_dir().join("bench-capabilities");
    let _ = std::fs::remove_dir_all(&work);
    std::fs::create_dir_all(&work)?;
    let sqlite_dir = work.join("sql");

    let redis_up = RedisCache::new(&urls.redis)
        .is_ok_and(|cache| runtime.block_on(cache.get("agora:probe")).is_ok());
    let postgres = runtime.block_on(agora_sql::connect(Some(&urls.database), &work));
    let nats = runtime.block_on(agora_messaging::connect(Some(&urls.nats)));

    let mut rows = Vec::new();
    // Cache: the in-memory default and Redis.
    for backend in ["in-memory", "Redis"] {
        let redis = backend == "Redis";
        if redis && !redis_up {
            eprintln!(
                "xtask: SKIPPED the Redis rows: {} is unreachable",
                urls.redis
            );
            continue;
        }
        let mut args = Vec::new();
        if redis {
            args = vec!["--redis-url".to_owned(), urls.redis.clone()];
        }
        let native: Arc<dyn CacheBackend> = if redis {
            Arc::new(RedisCache::new(&urls.redis)?)
        } else {
            Arc::new(MemoryCache::default())
        };
        let manifest = manifest(&work, "bench", &cache_fixture, "grants = { cache = true }")?;
        let guest = guest_run(&runtime, &manifest, &work, &args, |addr| {
            Box::pin(guest_per_call(addr, "/c/key", Some("/c/key")))
        })?;
        let native = native_run(&runtime, Native::Cache(native))?;
        rows.push(report("cache.get (16 B)", backend, guest, native));
    }
    // Sql and messaging: the embedded set, then the production set.
    for production in [false, true] {
        let (sql, messaging): (Arc<dyn SqlBackend>, Arc<dyn MessagingBackend>) = if production {
            match (&postgres, &nats) {
                (Ok(sql), Ok(messaging)) => (sql.clone(), messaging.clone()),
                (Err(err), _) => {
                    eprintln!("xtask: SKIPPED the PostgreSQL and NATS rows: {err}");
                    continue;
                }
                (_, Err(err)) => {
                    eprintln!("xtask: SKIPPED the PostgreSQL and NATS rows: {err}");
                    continue;
                }
            }
        } else {
            let sqlite_url = format!("sqlite://{}", sqlite_dir.display());
            (
                runtime.block_on(agora_sql::connect(Some(&sqlite_url), &work))?,
                runtime.block_on(agora_messaging::connect(None))?,
            )
        };
        let args = if production {
            vec![
                "--database-url".to_owned(),
                urls.database.clone(),
                "--nats-url".to_owned(),
                urls.nats.clone(),
            ]
        } else {
            vec![
                "--database-url".to_owned(),
                format!("sqlite://{}", sqlite_dir.display()),
            ]
        };
        let (sql_label, bus_label) = if production {
            ("PostgreSQL", "NATS JetStream")
        } else {
            ("SQLite", "in-process bus")
        };
        let manifest = manifest(
            &work,
            COMPONENT,
            &capbench,
            r#"grants = { sql = true, publish = ["bench.>"] }"#,
        )?;
        let namespace = runtime.block_on(sql.namespace(COMPONENT))?;
        for (operation, path, statement) in [
            (
                "sql.query (1 row by key)",
                "/c/sql-query",
                "select v from kv where id = $1",
            ),
            (
                "sql.execute (update 1 row)",
                "/c/sql-execute",
                "update kv set v = $1 where id = $2",
            ),
        ] {
            let guest = guest_run(&runtime, &manifest, &work, &args, |addr| {
                Box::pin(guest_per_call(addr, path, None))
            })?;
            let native = native_run(&runtime, Native::Sql(namespace.clone(), statement))?;
            rows.push(report(operation, sql_label, guest, native));
        }
        let guest = guest_run(&runtime, &manifest, &work, &args, |addr| {
            Box::pin(guest_per_call(addr, "/c/publish", None))
        })?;
        let native = native_run(&runtime, Native::Publish(messaging.clone()))?;
        rows.push(report("messaging.publish (16 B)", bus_label, guest, native));
        if production {
            runtime.block_on(async {
                agora_messaging::NatsBackend::connect(&urls.nats)
                    .await?
                    .purge_subject(BENCH_SUBJECT)
                    .await
            })?;
        }
    }

    println!();
    println!("| operation | backend | guest µs/call | native µs/call | guest ÷ native |");
    println!("|---|---|---:|---:|---:|");
    for row in rows {
        println!(
            "| {} | {} | {:.2} | {:.2} | {:.2} |",
            row.operation,
            row.backend,
            micros(row.guest),
            micros(row.native),
            row.guest.as_secs_f64() / row.native.as_secs_f64()
        );
    }
    println!();
    println!(
        "per-call = (median at {} calls − median at 1 call) / {CALLS}, {SAMPLES} samples each",
        CALLS + 1
    );
    Ok(())
}

fn report(operation: &'static str, backend: &str, guest: Duration, native: Duration) -> Row {
    eprintln!(
        "xtask: {operation} on {backend}: guest {:.2} µs/call, native {:.2} µs/call",
        micros(guest),
        micros(native)
    );
    Row {
        operation,
        backend: backend.to_owned(),
        guest,
        native,
    }
}

fn manifest(
    work: &Path,
    name: &str,
    source: &Path,
    grants: &str,
) -> anyhow::Result<std::path::PathBuf> {
    let manifest = work.join(format!("{name}.toml"));
    std::fs::write(
        &manifest,
        format!(
            "[[component]]\nname = \"{name}\"\nsource = {:?}\nroutes = [\"/c/...\"]\n{grants}\n",
            source.display().to_string()
        ),
    )?;
    Ok(manifest)
}

/// Starts `agora serve` on `manifest` with `args`, measures with `measure`, stops it.
fn guest_run(
    runtime: &tokio::runtime::Runtime,
    manifest: &Path,
    work: &Path,
    args: &[String],
    measure: impl FnOnce(&str) -> std::pin::Pin<Box<dyn Future<Output = anyhow::Result<Duration>> + '_>>,
) -> anyhow::Result<Duration> {
    let mut command = agora_serve(manifest, &work.join("data"));
    command.args(args);
    let (mut child, addr) = spawn_and_read_addr(&mut command)?;
    let result = runtime.block_on(measure(&addr));
    let _ = child.kill();
    let _ = child.wait();
    result
}

fn micros(d: Duration) -> f64 {
    d.as_secs_f64() * 1e6
}

fn median(mut samples: Vec<Duration>) -> Duration {
    samples.sort_unstable();
    samples[samples.len() / 2]
}

/// Per-call cost of `GET path?repeat=N` on the fixture at `addr`. With `put`, the value is
/// stored there first (the cache fixture); otherwise `/c/setup` prepares the fixture.
async fn guest_per_call(addr: &str, path: &str, put: Option<&str>) -> anyhow::Result<Duration> {
    let stream = tokio::net::TcpStream::connect(addr).await?;
    let (mut sender, connection) =
        hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(stream)).await?;
    tokio::spawn(connection);
    let mut send = async |method: http::Method, path: String, body: &'static [u8]| {
        let request = http::Request::builder()
            .method(method.clone())
            .uri(&path)
            .header(http::header::HOST, addr)
            .body(Full::new(Bytes::from_static(body)))?;
        let started = Instant::now();
        sender
            .ready()
            .await
            .context("the connection to agora closed")?;
        let response = sender
            .send_request(request)
            .await
            .with_context(|| format!("{method} {path}"))?;
        let status = response.status();
        let body = response.into_body().collect().await?.to_bytes();
        if !status.is_success() {
            bail!(
                "the fixture answered {status}: {}",
                String::from_utf8_lossy(&body)
            );
        }
        anyhow::Ok(started.elapsed())
    };
    match put {
        Some(key) => send(http::Method::PUT, key.to_owned(), VALUE).await?,
        None => send(http::Method::POST, "/c/setup".to_owned(), b"").await?,
    };
    let mut timings = [Vec::new(), Vec::new()];
    for _ in 0..SAMPLES {
        for (slot, repeat) in [1, CALLS + 1].into_iter().enumerate() {
            let path = format!("{path}?repeat={repeat}");
            timings[slot].push(send(http::Method::GET, path, b"").await?);
        }
    }
    let [one, many] = timings;
    Ok(median(many).saturating_sub(median(one)) / CALLS)
}

/// Runs the native loop as a task on the runtime's workers, as the host runs a guest: a loop
/// driven from `block_on`'s thread would pay a cross-thread wake-up on every I/O await.
fn native_run(runtime: &tokio::runtime::Runtime, native: Native) -> anyhow::Result<Duration> {
    runtime
        .block_on(async move { tokio::spawn(async move { native_per_call(&native).await }).await? })
}

async fn native_per_call(native: &Native) -> anyhow::Result<Duration> {
    let key = "agora:bench:key";
    if let Native::Cache(cache) = native {
        let quota = agora_cache::Quota {
            namespace: "agora:bench:",
            max_keys: 1,
        };
        cache.set(key, VALUE, None, quota).await?;
    }
    let mut samples = Vec::new();
    for _ in 0..SAMPLES {
        let started = Instant::now();
        for _ in 0..CALLS {
            match native {
                Native::Cache(cache) => {
                    std::hint::black_box(cache.get(key).await?);
                }
                Native::Sql(namespace, statement) => {
                    let params = if statement.starts_with("select") {
                        vec![Value::Int(1)]
                    } else {
                        vec![Value::Text("sixteen byte val".into()), Value::Int(1)]
                    };
                    if statement.starts_with("select") {
                        std::hint::black_box(namespace.query(statement, params).await?);
                    } else {
                        std::hint::black_box(namespace.execute(statement, params).await?);
                    }
                }
                Native::Publish(bus) => {
                    bus.publish(&Message::new(BENCH_SUBJECT, VALUE, Vec::new()))
                        .await?;
                }
            }
        }
        samples.push(started.elapsed() / CALLS);
    }
    if let Native::Cache(cache) = native {
        cache.delete(key, "agora:bench:").await?;
    }
    Ok(median(samples))
}
