//! `cargo xtask`: the project's own commands.
//!
//! - `build-components`: every component crate under components/ → target/components/NAME.wasm
//! - `dev`: build components and host, serve agora.toml on embedded backends
//! - `test`: build components, then format check, clippy and the whole test suite
//! - `bench hello`: agora vs `wasmtime serve -Scli` vs native hyper, same load, same run
//! - `bench capabilities`: per-call cost of each capability from a guest vs natively
//! - `bench shop`: the shop on PostgreSQL, Redis and NATS: a cached product read, orders
//! - `bench swap`: hot swap on the shop: upload → serving per component, latency under swaps

mod bench;
mod bench_capabilities;
mod bench_fleet;
mod bench_shop;
mod bench_swap;
mod components;
mod loadgen;

use anyhow::{Context as _, bail};
use clap::{Parser, Subcommand};
use std::path::{Path, PathBuf};
use std::process::Command;

#[derive(Parser)]
#[command(name = "cargo xtask")]
struct Cli {
    #[command(subcommand)]
    command: Task,
}

#[derive(Subcommand)]
enum Task {
    /// Build every component under components/ into target/components/NAME.wasm.
    BuildComponents,
    /// Build components and host, then serve agora.toml (embedded backends).
    Dev {
        /// Address to listen on.
        #[arg(long, default_value = "127.0.0.1:8080")]
        listen: String,
    },
    /// Build components, check formatting and lints, run the whole test suite.
    Test,
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
        Task::BuildComponents => components::build_all().map(drop),
        Task::Dev { listen } => dev(&listen),
        Task::Test => test(),
        Task::Bench { which } => bench_shop::run_bench(which),
        Task::Load(args) => loadgen::run_cli(args),
    }
}

/// The repository root (the folder holding xtask/).
///
/// Read from the environment `cargo run` sets, not from the path baked in at compile time:
/// two clones sharing one CARGO_TARGET_DIR share the uplifted `xtask` binary, and a baked path
/// would send one clone's commands to the other's tree.
pub fn root() -> PathBuf {
    let manifest_dir = std::env::var_os("CARGO_MANIFEST_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_MANIFEST_DIR")));
    manifest_dir
        .parent()
        .map(Path::to_path_buf)
        .unwrap_or_else(|| PathBuf::from("."))
}

/// The cargo that runs this xtask.
pub fn cargo() -> Command {
    let mut command = Command::new(std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into()));
    command.current_dir(root());
    command
}

/// Where cargo puts build output for the host workspace.
pub fn target_dir() -> PathBuf {
    std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .map(|dir| {
            if dir.is_absolute() {
                dir
            } else {
                root().join(dir)
            }
        })
        .unwrap_or_else(|| root().join("target"))
}

/// Runs `command`, failing with its description when it does not succeed.
pub fn run(command: &mut Command) -> anyhow::Result<()> {
    let description = format!("{command:?}");
    let status = command
        .status()
        .with_context(|| format!("cannot start {description}"))?;
    if !status.success() {
        bail!("{description} failed ({status})");
    }
    Ok(())
}

/// The admin account `cargo xtask dev` creates when the environment names none.
const DEV_ADMIN_EMAIL: &str = "admin@shop.local";
const DEV_ADMIN_PASSWORD: &str = "agora-dev-admin";

fn dev(listen: &str) -> anyhow::Result<()> {
    components::build_all()?;
    let email = std::env::var("AGORA_ADMIN_EMAIL").unwrap_or_else(|_| DEV_ADMIN_EMAIL.into());
    let password =
        std::env::var("AGORA_ADMIN_PASSWORD").unwrap_or_else(|_| DEV_ADMIN_PASSWORD.into());
    eprintln!(
        "xtask: the shop's admin is {email} (password from AGORA_ADMIN_PASSWORD, default `{DEV_ADMIN_PASSWORD}`)"
    );
    eprintln!("xtask: building and starting the host (release)");
    run(cargo()
        .env("AGORA_ADMIN_EMAIL", &email)
        .env("AGORA_ADMIN_PASSWORD", &password)
        .args([
            "run",
            "--release",
            "--package",
            "agora-host",
            "--bin",
            "agora",
            "--",
            "serve",
            "--manifest",
            "agora.toml",
            "--listen",
            listen,
        ]))
}

/// Guest crates whose unit tests also run on the native target.
const NATIVE_TESTED: &[&str] = &[
    "agora-sdk",
    "account",
    "catalog",
    "order",
    "payment",
    "gateway",
];

fn test() -> anyhow::Result<()> {
    let started = std::time::Instant::now();
    components::build_all()?;
    eprintln!("xtask: cargo fmt --check");
    run(cargo().args(["fmt", "--all", "--check"]))?;
    run(cargo()
        .args(["fmt", "--all", "--check", "--manifest-path"])
        .arg(root().join("components/Cargo.toml")))?;
    eprintln!("xtask: cargo clippy (host workspace and components)");
    run(cargo().args([
        "clippy",
        "--workspace",
        "--all-targets",
        "--",
        "-D",
        "warnings",
    ]))?;
    run(cargo()
        .args(["clippy", "--workspace", "--release", "--manifest-path"])
        .arg(root().join("components/Cargo.toml"))
        .args(["--", "-D", "warnings"])
        .env("CARGO_TARGET_DIR", components::target_dir()))?;
    eprintln!("xtask: cargo test");
    run(cargo().args(["test", "--workspace"]))?;
    // The pure logic of the guest SDK and of the shop's components (time encoding, row
    // decoding, validation) is tested natively: their calls into the host are only made from
    // inside a component.
    eprintln!("xtask: cargo test of the guest SDK and the shop's components (native target)");
    let mut native = cargo();
    native.arg("test");
    for package in NATIVE_TESTED {
        native.args(["--package", package]);
    }
    run(native
        .args(["--target", &host_triple()?])
        .arg("--manifest-path")
        .arg(root().join("components/Cargo.toml"))
        .env("CARGO_TARGET_DIR", components::target_dir()))?;
    eprintln!(
        "xtask: the whole suite passed in {:.0} s",
        started.elapsed().as_secs_f64()
    );
    Ok(())
}

/// The triple rustc builds for by default (this machine's).
fn host_triple() -> anyhow::Result<String> {
    let output = Command::new(std::env::var("RUSTC").unwrap_or_else(|_| "rustc".into()))
        .arg("-vV")
        .output()?;
    String::from_utf8_lossy(&output.stdout)
        .lines()
        .find_map(|line| line.strip_prefix("host: "))
        .map(str::to_owned)
        .ok_or_else(|| anyhow::anyhow!("`rustc -vV` named no host triple"))
}
