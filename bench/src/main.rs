//! `agora-bench`: the benchmarks behind `cargo xtask bench` and the load generator behind
//! `cargo xtask load`. They call the capability crates natively, so they live in a crate of
//! their own that xtask builds (dev profile, like before the split) only when asked.
//!
//! - `bench hello`: agora vs `wasmtime serve -Scli` vs native hyper, same load, same run
//! - `bench capabilities`: per-call cost of each capability from a guest vs natively
//! - `bench shop`: the shop on PostgreSQL, Redis and NATS: a cached product read, orders
//! - `bench swap`: hot swap on the shop: upload → serving per component, latency under swaps
//! - `load URL`: the closed-loop load generator on its own

mod bench;
mod bench_capabilities;
mod bench_fleet;
mod bench_shop;
mod bench_swap;
mod loadgen;

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
        which: bench_shop::Which,
    },
    /// Run a load generator against a URL (used by `bench`; handy on its own).
    Load(loadgen::LoadArgs),
}

fn main() -> anyhow::Result<()> {
    match Cli::parse().command {
        Task::Bench { which } => bench_shop::run_bench(which),
        Task::Load(args) => loadgen::run_cli(args),
    }
}
