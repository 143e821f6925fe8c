//! `agora`: the command line of the host.
//!
//! Exit codes: 0 after a clean shutdown (SIGINT or SIGTERM, in-flight requests drained), 1 when
//! the drain timed out or serving failed, 2 for a bad manifest, component or address — with a
//! one-line message on stderr.

use agora_host::admin::{ADMIN_TOKEN_VAR, AdminToken};
use agora_host::{Drained, Host, HostConfig};
use clap::{Parser, Subcommand};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

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
    Serve(ServeArgs),
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
    /// Seconds in-flight requests get to finish after SIGINT/SIGTERM.
    #[arg(long, env = "AGORA_DRAIN_TIMEOUT", default_value_t = 30)]
    drain_timeout: u64,
    /// Redis for the cache capability (`redis://host:port/db`); default: in-memory cache.
    #[arg(long, env = "AGORA_REDIS_URL")]
    redis_url: Option<String>,
    /// Database for the sql capability: `postgres://user@host/db` (a schema and a role per
    /// component) or `sqlite://DIR` (a file per component); default: SQLite under the data dir.
    #[arg(long, env = "AGORA_DATABASE_URL")]
    database_url: Option<String>,
    /// NATS with JetStream for messaging (`nats://host:4222`); default: the in-process bus.
    #[arg(long, env = "AGORA_NATS_URL")]
    nats_url: Option<String>,
    /// Also serve the admin API on this address (off unless given); needs AGORA_ADMIN_TOKEN.
    #[arg(long, env = "AGORA_ADMIN_LISTEN")]
    admin_listen: Option<SocketAddr>,
    /// Allocate instances on demand instead of from the pooling allocator.
    #[arg(long, env = "AGORA_ON_DEMAND")]
    on_demand: bool,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    agora_host::telemetry::init();
    match cli.command {
        Command::Serve(args) => serve(args),
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
    let config = HostConfig {
        manifest: args.manifest,
        data_dir: args.data_dir,
        force_on_demand: args.on_demand,
        drain_timeout: Duration::from_secs(args.drain_timeout),
        redis_url: args.redis_url,
        database_url: args.database_url,
        nats_url: args.nats_url,
        auth_keys,
    };
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(err) => {
            eprintln!("error: cannot start the async runtime: {err}");
            return ExitCode::FAILURE;
        }
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
        let addr = listener.local_addr().unwrap_or(args.listen);
        // Scripts and tests read this line to find the port (`--listen 127.0.0.1:0`).
        println!("agora listening on http://{addr}");
        if let Some(admin_addr) = admin_addr {
            println!("agora admin API on http://{admin_addr}");
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
