//! The production backends a bench runs on: their URLs (flag, environment, or the local
//! default), and a check that fails with one clear message per unreachable one.

use agora_cache::{CacheBackend as _, RedisCache};
use anyhow::bail;
use std::path::Path;

/// The production backends a benchmark runs on (flag, environment, or the local default).
#[derive(clap::Args, Debug, Clone)]
pub(crate) struct BackendUrls {
    /// Redis (cache, rate limits, revocations).
    #[arg(
        long,
        env = "AGORA_REDIS_URL",
        default_value = "redis://127.0.0.1:6379"
    )]
    pub(crate) redis_url: String,
    /// PostgreSQL (sql).
    #[arg(
        long,
        env = "AGORA_DATABASE_URL",
        default_value = "postgres://postgres@127.0.0.1:5432/test"
    )]
    pub(crate) database_url: String,
    /// NATS with JetStream (messaging).
    #[arg(long, env = "AGORA_NATS_URL", default_value = "nats://127.0.0.1:4222")]
    pub(crate) nats_url: String,
}

/// The name of the server runtime's threads ([`crate::harness::cpu::CpuOf::OwnThreads`]).
pub(crate) const SERVER_THREADS: &str = "bench-server";

/// The runtimes of a bench on the production backends, once they answer: the client side on
/// one thread, like `cargo xtask load`, and a multi-threaded one shaped like the host's for the
/// native baseline (its threads named [`SERVER_THREADS`]).
pub(crate) fn client_and_server(
    backends: &BackendUrls,
    work: &Path,
) -> anyhow::Result<(tokio::runtime::Runtime, tokio::runtime::Runtime)> {
    let client = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let server = tokio::runtime::Builder::new_multi_thread()
        .thread_name(SERVER_THREADS)
        .enable_all()
        .build()?;
    client.block_on(check_backends(backends, work))?;
    Ok((client, server))
}

/// Fails with one clear message per unreachable backend.
pub(crate) async fn check_backends(backends: &BackendUrls, work: &Path) -> anyhow::Result<()> {
    let mut down = Vec::new();
    let redis = RedisCache::new(&backends.redis_url).map_err(|e| e.to_string());
    let redis = match redis {
        Ok(cache) => cache
            .get("agora:bench:probe")
            .await
            .map_err(|e| e.to_string()),
        Err(err) => Err(err),
    };
    if let Err(err) = redis {
        down.push(format!("Redis at {}: {err}", backends.redis_url));
    }
    if let Err(err) = agora_sql::connect(Some(&backends.database_url), work).await {
        down.push(format!("PostgreSQL at {}: {err}", backends.database_url));
    }
    if let Err(err) = agora_messaging::connect(Some(&backends.nats_url)).await {
        down.push(format!("NATS at {}: {err}", backends.nats_url));
    }
    if !down.is_empty() {
        bail!(
            "this benchmark needs PostgreSQL, Redis and NATS (JetStream); unreachable:\n  {}\n\
             (set --database-url / --redis-url / --nats-url or AGORA_DATABASE_URL / \
             AGORA_REDIS_URL / AGORA_NATS_URL)",
            down.join("\n  ")
        );
    }
    Ok(())
}
