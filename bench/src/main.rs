//! `agora-bench`: the benchmarks behind `cargo xtask bench` and the load generator behind
//! `cargo xtask load`. They call the capability crates natively, so they live in a crate of
//! their own that xtask builds (dev profile, like before the split) only when asked.
//!
//! - `bench hello`: agora vs `wasmtime serve -Scli` vs native hyper, same load, same run
//! - `bench capabilities`: per-call cost of each capability from a guest vs natively
//! - `bench shop`: the shop on PostgreSQL, Redis and NATS: a cached product read, orders
//! - `bench swap`: hot swap on the shop: upload → serving per component, latency under swaps
//! - `load URL`: the closed-loop load generator on its own
//! - `native-read`: `bench shop`'s native baseline of the cached read, served on its own (to
//!   profile or load it by hand beside a host)
//!
//! This file holds the command line and the dispatch only. Each bench is a module of its own
//! (`hello`, `capabilities`, `shop/`, `swap/`); what more than one of them uses is in
//! `harness/`, and the load generator in `loadgen`. Modules depend in one direction:
//! main → the benches → the harness → the load generator.

/// The `agora` binary's allocator (host/src/main.rs): the native baselines here are measured
/// against agora with the same one.
#[cfg(not(target_env = "msvc"))]
#[global_allocator]
static ALLOCATOR: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

mod capabilities;
mod harness;
mod hello;
mod loadgen;
mod scale;
mod shop;
mod swap;

use clap::{Parser, Subcommand};
pub(crate) use xtask::{cargo, components, root, run, target_dir};

#[derive(Parser)]
#[command(name = "cargo xtask")]
struct Cli {
    #[command(subcommand)]
    command: Task,
}

#[derive(Subcommand)]
enum Task {
    /// Measure throughput and latency (see BENCHMARKS.md).
    Bench {
        #[command(subcommand)]
        which: Which,
    },
    /// Run a load generator against a URL (used by `bench`; handy on its own).
    Load(loadgen::LoadArgs),
    /// Serve `bench shop`'s native baseline of the cached product read on its own: one Redis
    /// GET of the catalog's cache entry per `GET /api/products/{id}`, until interrupted.
    NativeRead {
        /// Address to listen on.
        #[arg(long, default_value = "127.0.0.1:0")]
        listen: String,
        #[command(flatten)]
        backends: harness::backends::BackendUrls,
    },
}

// The benchmarks `bench` runs (the help shows `Task::Bench`'s doc comment).
#[derive(Subcommand)]
enum Which {
    /// agora vs `wasmtime serve -Scli` vs native hyper on the hello component.
    Hello {
        /// Concurrent connections of the load generator.
        #[arg(long, default_value_t = 32)]
        connections: usize,
        /// Seconds measured per server (after a 2 s warm-up).
        #[arg(long, default_value_t = 10)]
        seconds: u64,
        /// Measure each server this many times, alternating, and keep the median run.
        #[arg(long, default_value_t = 3)]
        rounds: usize,
        /// Requests one instance serves in the reuse rows: agora's `[component.instances]
        /// reuse` and `wasmtime serve --max-instance-reuse-count`.
        #[arg(long, default_value_t = 100, value_parser = clap::value_parser!(u32).range(2..))]
        reuse: u32,
    },
    /// How cost grows: connections 1 → 1 000 (hello, and the cached product read on Redis),
    /// components 1 → 200, and the whole shop's start and memory (first-ever, cold compile
    /// cache, warm); CSV and plots in docs/bench/.
    Scale {
        /// Seconds measured per point (after a 1 s warm-up).
        #[arg(long, default_value_t = 3)]
        seconds: u64,
        /// Requests one instance serves on the reuse curves.
        #[arg(long, default_value_t = 100, value_parser = clap::value_parser!(u32).range(2..))]
        reuse: u32,
        #[command(flatten)]
        backends: harness::backends::BackendUrls,
    },
    /// Per-call cost of each capability from a guest vs the same call made natively.
    Capabilities {
        #[command(flatten)]
        backends: harness::backends::BackendUrls,
    },
    /// The shop on PostgreSQL, Redis and NATS: a cached product read against native hyper +
    /// Redis, then orders per second and order → PAID latency.
    Shop(shop::Args),
    /// Hot swap on the shop: upload → serving per component (compiled and from the compile
    /// cache), and a product read's latency while components are swapped.
    Swap(swap::Args),
}

fn main() -> anyhow::Result<()> {
    match Cli::parse().command {
        Task::Bench { which } => bench(which),
        Task::Load(args) => loadgen::run_cli(args),
        Task::NativeRead { listen, backends } => shop::serve_native(&listen, &backends),
    }
}

fn bench(which: Which) -> anyhow::Result<()> {
    match which {
        Which::Hello {
            connections,
            seconds,
            rounds,
            reuse,
        } => hello::run(connections, seconds, rounds.max(1), reuse),
        Which::Scale {
            seconds,
            reuse,
            backends,
        } => scale::run(seconds, reuse, &backends),
        Which::Capabilities { backends } => capabilities::run(&capabilities::Urls {
            redis: backends.redis_url,
            database: backends.database_url,
            nats: backends.nats_url,
        }),
        Which::Shop(args) => shop::run(&args),
        Which::Swap(args) => swap::run(&args),
    }
}
