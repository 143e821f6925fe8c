//! `agora`: the command line of the host.
//!
//! Exit codes: 0 after a clean shutdown (SIGINT or SIGTERM, in-flight requests drained), 1 when
//! the drain timed out or serving failed, 2 for a bad manifest, component or address — with a
//! one-line message on stderr.

use agora_host::admin::{ADMIN_TOKEN_VAR, AdminToken};
use agora_host::fleet::{Fleet, Verdicts};
use agora_host::{Drained, Host, HostConfig};
use clap::{Parser, Subcommand};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

/// The binary's allocator. glibc's malloc takes a lock on the arena a block came from whenever
/// another thread frees it, and a request's allocations (its store, its instance's state, the
/// cache's reply) are often freed on the other worker thread: with a fresh instance per
/// request that was two `futex` calls a request. jemalloc frees without that contention: a
/// cached read with a fresh instance went from 62–67 to 50–55 µs of CPU; a reused one moved
/// less than its rounds' spread (BENCHMARKS.md, fifteenth session). The library (and so every
/// in-process test) keeps the system allocator; the benches' native baselines use jemalloc too.
#[cfg(not(target_env = "msvc"))]
#[global_allocator]
static ALLOCATOR: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

#[derive(Parser)]
#[command(
    name = "agora",
    version,
    about = "Run WebAssembly components as an HTTP service"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Serve the components of a manifest over HTTP.
    Serve(Box<ServeArgs>),
    /// Make FILE the version of component NAME on every replica of a fleet.
    Deploy(DeployArgs),
    /// Show the fleet's desired versions and what each replica runs.
    Status(FleetArgs),
}

#[derive(clap::Args)]
struct FleetArgs {
    /// NATS with JetStream, where the fleet keeps its versions.
    #[arg(long, env = "AGORA_NATS_URL")]
    nats_url: String,
    /// The fleet (several can share one NATS).
    #[arg(long, env = "AGORA_FLEET", default_value = "default")]
    fleet: String,
}

#[derive(clap::Args)]
struct DeployArgs {
    /// The component's name in the manifest.
    name: String,
    /// The new version's .wasm file.
    file: PathBuf,
    #[command(flatten)]
    fleet: FleetArgs,
    /// Seconds to wait for every live replica to run it or refuse it (0: do not wait).
    #[arg(long, default_value_t = 30)]
    wait: u64,
}

#[derive(clap::Args)]
struct ServeArgs {
    /// The manifest (TOML) naming the components, their routes and limits.
    #[arg(long, env = "AGORA_MANIFEST")]
    manifest: PathBuf,
    /// Address to listen on.
    #[arg(long, env = "AGORA_LISTEN", default_value = "127.0.0.1:8080")]
    listen: SocketAddr,
    /// Folder for the host's state: compiled components, embedded databases.
    #[arg(long, env = "AGORA_DATA_DIR", default_value = ".agora")]
    data_dir: PathBuf,
    /// Seconds in-flight requests get to finish after SIGINT/SIGTERM (and then, again, the
    /// events the in-process bus holds).
    #[arg(long, env = "AGORA_DRAIN_TIMEOUT", default_value_t = 30)]
    drain_timeout: u64,
    /// Redis for the cache capability (`redis://host:port/db`); default: in-memory cache.
    #[arg(long, env = "AGORA_REDIS_URL")]
    redis_url: Option<String>,
    /// Redis for auth state (revocations, refresh families) and rate-limit buckets; default:
    /// the database after --redis-url's on the same server (`redis://h:6379/0` → `/1`), so
    /// nothing a component stores in the cache shares their keyspace.
    #[arg(long, env = "AGORA_AUTH_REDIS_URL")]
    auth_redis_url: Option<String>,
    /// Database for the sql capability: `postgres://user@host/db` (a schema and a role per
    /// component) or `sqlite://DIR` (a file per component); default: SQLite under the data dir.
    #[arg(long, env = "AGORA_DATABASE_URL")]
    database_url: Option<String>,
    /// NATS with JetStream for messaging (`nats://host:4222`); default: the in-process bus.
    /// With NATS the host also joins a fleet (see --fleet).
    #[arg(long, env = "AGORA_NATS_URL")]
    nats_url: Option<String>,
    /// The fleet this replica belongs to when NATS is given: it runs the versions `agora
    /// deploy` sets and reports what it runs to `agora status`.
    #[arg(long, env = "AGORA_FLEET", default_value = "default")]
    fleet: String,
    /// Do not join a fleet even with NATS.
    #[arg(long, env = "AGORA_NO_FLEET")]
    no_fleet: bool,
    /// Also serve the admin API on this address (off unless given); needs AGORA_ADMIN_TOKEN.
    #[arg(long, env = "AGORA_ADMIN_LISTEN")]
    admin_listen: Option<SocketAddr>,
    /// How log lines are written to stderr: `text`, or `json` (one object per line, with
    /// the request's or event's `trace_id` when spans are exported).
    #[arg(long, env = "AGORA_LOG_FORMAT", value_enum, default_value_t)]
    log_format: agora_host::telemetry::LogFormat,
    /// Also serve `/metrics` (Prometheus), `/healthz` and `/readyz` on this address, without
    /// a token (off unless given): bind it where only the operator's network reaches.
    #[arg(long, env = "AGORA_METRICS_LISTEN")]
    metrics_listen: Option<SocketAddr>,
    /// Swap a component in when its .wasm file changes (validated first; debounced).
    #[arg(long, env = "AGORA_WATCH")]
    watch: bool,
    /// Allocate instances on demand instead of from the pooling allocator.
    #[arg(long, env = "AGORA_ON_DEMAND")]
    on_demand: bool,
    #[command(flatten)]
    clients: ClientArgs,
}

/// Bounds on what clients hold: connections, time to send a request head, body pace.
#[derive(clap::Args)]
struct ClientArgs {
    /// Connections each listener (public, admin, metrics) holds open at once; past it a new one is
    /// answered 503 and closed.
    #[arg(long, env = "AGORA_MAX_CONNECTIONS", default_value_t = agora_host::server::DEFAULT_MAX_CONNECTIONS as u64, value_parser = clap::value_parser!(u64).range(1..))]
    max_connections: u64,
    /// Connections one client address holds open at once (0: no cap). Default 256, or no cap
    /// when the manifest trusts proxies in front of the host (`[edge] trusted_proxy_hops`).
    #[arg(long, env = "AGORA_MAX_CONNECTIONS_PER_IP")]
    max_connections_per_ip: Option<usize>,
    /// Milliseconds a client has to send a complete request head, from the connection's start
    /// or, on a kept-alive connection, from the end of the previous response (the idle
    /// keep-alive timeout).
    #[arg(long, env = "AGORA_HEADER_TIMEOUT_MS", default_value_t = agora_host::server::DEFAULT_HEADER_TIMEOUT.as_millis() as u64, value_parser = clap::value_parser!(u64).range(1..))]
    header_timeout_ms: u64,
    /// Lowest pace of a request body, in bytes per second (0: none); a slower body is cut
    /// with 408.
    #[arg(long, env = "AGORA_BODY_MIN_RATE", default_value_t = agora_host::triggers::http::DEFAULT_BODY_MIN_RATE)]
    body_min_rate: u64,
    /// Milliseconds a body may wait on its client before --body-min-rate applies.
    #[arg(long, env = "AGORA_BODY_GRACE_MS", default_value_t = agora_host::triggers::http::DEFAULT_BODY_GRACE.as_millis() as u64)]
    body_grace_ms: u64,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let telemetry = match &cli.command {
        Command::Serve(args) => {
            agora_host::telemetry::init_with(agora_host::telemetry::DEFAULT_FILTER, args.log_format)
        }
        Command::Deploy(_) | Command::Status(_) => agora_host::telemetry::init_with(
            agora_host::telemetry::COMMAND_FILTER,
            agora_host::telemetry::LogFormat::Text,
        ),
    };
    match cli.command {
        Command::Serve(args) => {
            let code = serve(*args);
            telemetry.shutdown();
            code
        }
        Command::Deploy(args) => fleet_command(deploy(args)),
        Command::Status(args) => fleet_command(status(args)),
    }
}

fn serve(args: ServeArgs) -> ExitCode {
    let auth_keys = match agora_auth::Keys::from_env() {
        Ok(keys) => Some(keys),
        Err(agora_auth::KeyError::Missing) => None,
        Err(err) => {
            eprintln!("error: auth keys: {err}");
            return ExitCode::from(2);
        }
    };
    let admin_token = match args.admin_listen {
        None => None,
        Some(_) => match std::env::var(ADMIN_TOKEN_VAR) {
            Err(_) => {
                eprintln!("error: --admin-listen needs the admin token in {ADMIN_TOKEN_VAR}");
                return ExitCode::from(2);
            }
            Ok(token) => match AdminToken::new(&token) {
                Ok(token) => Some(token),
                Err(err) => {
                    eprintln!("error: {err}");
                    return ExitCode::from(2);
                }
            },
        },
    };
    let fleet = (args.nats_url.is_some() && !args.no_fleet).then_some(args.fleet);
    let config = HostConfig {
        manifest: args.manifest,
        data_dir: args.data_dir,
        force_on_demand: args.on_demand,
        drain_timeout: Duration::from_secs(args.drain_timeout),
        redis_url: args.redis_url,
        auth_redis_url: args.auth_redis_url,
        database_url: args.database_url,
        nats_url: args.nats_url,
        auth_keys,
        watch: args.watch,
        fleet,
        connections: agora_host::server::ConnectionLimits {
            max_connections: usize::try_from(args.clients.max_connections).unwrap_or(usize::MAX),
            max_per_ip: args.clients.max_connections_per_ip,
            header_timeout: Duration::from_millis(args.clients.header_timeout_ms),
        },
        body_rate: agora_host::triggers::http::BodyRate {
            min_bytes_per_s: args.clients.body_min_rate,
            grace: Duration::from_millis(args.clients.body_grace_ms),
        },
    };
    let Some(runtime) = runtime(tokio::runtime::Builder::new_multi_thread()) else {
        return ExitCode::FAILURE;
    };
    runtime.block_on(async move {
        let host = match Host::load(&config).await {
            Ok(host) => host,
            Err(err) => {
                eprintln!("error: {err}");
                return ExitCode::from(2);
            }
        };
        let shutdown = match shutdown_signal() {
            Ok(shutdown) => shutdown,
            Err(err) => {
                eprintln!("error: cannot install signal handlers: {err}");
                return ExitCode::FAILURE;
            }
        };
        let listener = match tokio::net::TcpListener::bind(args.listen).await {
            Ok(listener) => listener,
            Err(err) => {
                eprintln!("error: cannot listen on {}: {err}", args.listen);
                return ExitCode::from(2);
            }
        };
        let mut admin_addr = None;
        let host = match (args.admin_listen, admin_token) {
            (Some(admin_listen), Some(token)) => {
                let admin = match tokio::net::TcpListener::bind(admin_listen).await {
                    Ok(admin) => admin,
                    Err(err) => {
                        eprintln!("error: cannot listen on {admin_listen} (admin API): {err}");
                        return ExitCode::from(2);
                    }
                };
                admin_addr = admin.local_addr().ok();
                host.with_admin(admin, token)
            }
            _ => host,
        };
        let mut metrics_addr = None;
        let host = match args.metrics_listen {
            Some(metrics_listen) => {
                let ops = match tokio::net::TcpListener::bind(metrics_listen).await {
                    Ok(ops) => ops,
                    Err(err) => {
                        eprintln!("error: cannot listen on {metrics_listen} (metrics): {err}");
                        return ExitCode::from(2);
                    }
                };
                metrics_addr = ops.local_addr().ok();
                host.with_metrics(ops)
            }
            None => host,
        };
        let addr = listener.local_addr().unwrap_or(args.listen);
        // Scripts and tests read these lines; a reader that went away must not stop the
        // host (println! would panic on a closed pipe).
        let mut lines = format!("agora listening on http://{addr}\n");
        if let Some(admin_addr) = admin_addr {
            lines.push_str(&format!("agora admin API on http://{admin_addr}\n"));
        }
        if let Some(metrics_addr) = metrics_addr {
            lines.push_str(&format!("agora metrics on http://{metrics_addr}/metrics\n"));
        }
        {
            use std::io::Write as _;
            let mut stdout = std::io::stdout().lock();
            let _ = stdout.write_all(lines.as_bytes());
            let _ = stdout.flush();
        }
        tracing::info!(%addr, allocation = ?host.allocation(), components = host.components().len(), "serving");
        match host.serve(listener, shutdown).await {
            Ok(Drained::Clean) => ExitCode::SUCCESS,
            Ok(Drained::TimedOut) => ExitCode::FAILURE,
            Err(err) => {
                eprintln!("error: {err}");
                ExitCode::FAILURE
            }
        }
    })
}

/// Builds the async runtime, or says why it cannot.
fn runtime(mut builder: tokio::runtime::Builder) -> Option<tokio::runtime::Runtime> {
    builder
        .enable_all()
        .build()
        .inspect_err(|err| eprintln!("error: cannot start the async runtime: {err}"))
        .ok()
}

/// Runs a fleet command on a small runtime: exit 0 when it succeeded, its code otherwise.
fn fleet_command(command: impl std::future::Future<Output = Result<(), (u8, String)>>) -> ExitCode {
    let Some(runtime) = runtime(tokio::runtime::Builder::new_current_thread()) else {
        return ExitCode::FAILURE;
    };
    match runtime.block_on(command) {
        Ok(()) => ExitCode::SUCCESS,
        Err((code, message)) => {
            eprintln!("error: {message}");
            ExitCode::from(code)
        }
    }
}

/// `agora deploy NAME FILE`: stores the file, sets it as NAME's desired version, and (unless
/// `--wait 0`) waits until every live replica runs it or refused it. Exit 2 for a bad file or
/// an unreachable NATS, 1 when a replica refused the version or did not answer in time.
async fn deploy(args: DeployArgs) -> Result<(), (u8, String)> {
    let bytes = std::fs::read(&args.file)
        .map_err(|err| (2, format!("cannot read {}: {err}", args.file.display())))?;
    agora_host::component::check_header(&bytes)
        .map_err(|reason| (2, format!("{}: {reason}", args.file.display())))?;
    let fleet = Fleet::connect(&args.fleet.nats_url, &args.fleet.fleet)
        .await
        .map_err(|err| (2, err.to_string()))?;
    let desired = fleet
        .deploy(&args.name, &bytes)
        .await
        .map_err(|err| (2, err.to_string()))?;
    println!(
        "deployed {} sha256:{} ({} bytes) to fleet `{}` (revision {})",
        desired.component,
        desired.digest,
        desired.size,
        fleet.name(),
        desired.revision
    );
    if args.wait == 0 {
        return Ok(());
    }
    // Returns only once every live replica has given its verdict on this version (runs it, or
    // refused it and keeps its own), or the wait is over: a caller reading `agora status` next
    // sees every replica's answer, not whichever came first.
    let deadline = std::time::Instant::now() + Duration::from_secs(args.wait);
    loop {
        let replicas = match fleet.replicas().await {
            Ok(replicas) => replicas,
            Err(err) if std::time::Instant::now() < deadline => {
                eprintln!("warning: {err}; asking again");
                tokio::time::sleep(Duration::from_millis(200)).await;
                continue;
            }
            Err(err) => return Err((1, err.to_string())),
        };
        let verdicts = Verdicts::of(&replicas, &args.name, &desired.digest);
        if verdicts.complete() {
            if verdicts.refused.is_empty() {
                println!("fleet `{}`: {}", fleet.name(), verdicts.summary());
                return Ok(());
            }
            return Err((1, verdicts.summary()));
        }
        if std::time::Instant::now() >= deadline {
            return Err((
                1,
                format!(
                    "after {} s: {} (see `agora status`)",
                    args.wait,
                    verdicts.summary()
                ),
            ));
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// `agora status`: the desired versions and every live replica's.
async fn status(args: FleetArgs) -> Result<(), (u8, String)> {
    let fleet = Fleet::connect(&args.nats_url, &args.fleet)
        .await
        .map_err(|err| (2, err.to_string()))?;
    let desired = fleet.desired().await.map_err(|err| (2, err.to_string()))?;
    let replicas = fleet.replicas().await.map_err(|err| (2, err.to_string()))?;
    print!(
        "{}",
        agora_host::fleet::format_status(&desired, &replicas, std::time::SystemTime::now())
    );
    Ok(())
}

/// Installs the SIGINT and SIGTERM handlers now, so a signal that arrives right after the
/// listening line is printed is not lost, and returns a future that resolves on either.
fn shutdown_signal() -> std::io::Result<impl std::future::Future<Output = ()>> {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{SignalKind, signal};
        let mut interrupt = signal(SignalKind::interrupt())?;
        let mut terminate = signal(SignalKind::terminate())?;
        Ok(async move {
            tokio::select! {
                _ = interrupt.recv() => tracing::info!("SIGINT received"),
                _ = terminate.recv() => tracing::info!("SIGTERM received"),
            }
        })
    }
    #[cfg(not(unix))]
    {
        Ok(async {
            let _ = tokio::signal::ctrl_c().await;
            tracing::info!("Ctrl-C received");
        })
    }
}
