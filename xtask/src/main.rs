//! `cargo xtask`: the project's own commands.
//!
//! - `build-components`: every component crate under components/ → target/components/NAME.wasm
//! - `dev`: build the components agora.toml serves and the host, serve agora.toml on embedded
//!   backends
//! - `test`: build every component, then format check, clippy and the whole test suite
//! - `bench …` and `load …`: run by the `agora-bench` crate (bench/), built only when asked
//!
//! xtask itself has light dependencies only, so it builds in seconds on a fresh clone.

use anyhow::Context as _;
use clap::{Parser, Subcommand};
use std::ffi::OsString;
use std::path::PathBuf;
use std::process::Command;
use xtask::{cargo, components, root, run, step, target_dir};

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
    /// Build the components agora.toml serves and the host, then serve agora.toml (embedded
    /// backends).
    Dev {
        /// Address to listen on.
        #[arg(long, default_value = "127.0.0.1:8080")]
        listen: String,
        /// Serve the release host instead of the dev-profile one `cargo xtask test` shares (its
        /// dependencies are optimised either way; the release build compiles them once more).
        #[arg(long)]
        release: bool,
    },
    /// Build every component, check formatting and lints, run the whole test suite.
    Test,
    /// Measure throughput and latency (see BENCHMARKS.md): `cargo xtask bench --help`.
    #[command(disable_help_flag = true)]
    Bench {
        /// hello | capabilities | shop | swap, and their options.
        #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
        args: Vec<OsString>,
    },
    /// Run a load generator against a URL (used by `bench`; handy on its own):
    /// `cargo xtask load --help`.
    #[command(disable_help_flag = true)]
    Load {
        /// The URL and options.
        #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
        args: Vec<OsString>,
    },
}

fn main() -> anyhow::Result<()> {
    match Cli::parse().command {
        Task::BuildComponents => components::build_all().map(drop),
        Task::Dev { listen, release } => dev(&listen, release),
        Task::Test => test(),
        Task::Bench { args } => bench("bench", args),
        Task::Load { args } => bench("load", args),
    }
}

/// Runs `agora-bench COMMAND ARGS…` (bench/): cargo builds it first, with its progress shown.
fn bench(command: &str, args: Vec<OsString>) -> anyhow::Result<()> {
    run(cargo()
        .args(["run", "--package", "agora-bench", "--", command])
        .args(args))
}

/// The admin account `cargo xtask dev` creates when the environment names none.
const DEV_ADMIN_EMAIL: &str = "admin@shop.local";
const DEV_ADMIN_PASSWORD: &str = "agora-dev-admin";

fn dev(listen: &str, release: bool) -> anyhow::Result<()> {
    // The components build beside the host's: that one waits on one chain of crates
    // (cranelift, wasmtime, its WASI crates) for most of its time, with a core to spare.
    let components = std::thread::spawn(|| {
        components::build_served(&root().join("agora.toml"), components::Output::Beside)
    });
    let host = build_host(release);
    let components = joined(components);
    let agora = host?;
    components?;
    let email = std::env::var("AGORA_ADMIN_EMAIL").unwrap_or_else(|_| DEV_ADMIN_EMAIL.into());
    let password =
        std::env::var("AGORA_ADMIN_PASSWORD").unwrap_or_else(|_| DEV_ADMIN_PASSWORD.into());
    eprintln!(
        "xtask: the shop's admin is {email} (password from AGORA_ADMIN_PASSWORD, default `{DEV_ADMIN_PASSWORD}`)"
    );
    eprintln!(
        "xtask: starting {} serve --manifest agora.toml --listen {listen} (the first start \
         compiles each component; later ones load them from the compile cache)",
        agora.display()
    );
    let mut serve = Command::new(&agora);
    serve
        .current_dir(root())
        .env("AGORA_ADMIN_EMAIL", &email)
        .env("AGORA_ADMIN_PASSWORD", &password)
        .args(["serve", "--manifest", "agora.toml", "--listen", listen]);
    exec(serve)
}

/// What a build run on its own thread (the components, beside another build) came to.
fn joined<T>(build: std::thread::JoinHandle<anyhow::Result<T>>) -> anyhow::Result<T> {
    build
        .join()
        .map_err(|_| anyhow::anyhow!("the components build panicked"))?
}

/// Builds the host `dev` serves and returns the binary's path.
fn build_host(release: bool) -> anyhow::Result<PathBuf> {
    if release {
        step("building the host (release)", || {
            run(cargo().args([
                "build",
                "--release",
                "--package",
                "agora-host",
                "--bin",
                "agora",
            ]))
        })?;
        return Ok(target_dir().join("release/agora"));
    }
    // Features as `cargo test --workspace` resolves them, so this is the very binary the suite
    // builds, on the same compiled dependencies (wasmtime among them): every workspace member
    // takes part in feature resolution, and `--examples` (there are none) makes cargo count the
    // dev-dependencies' features too, as a test build does.
    step(
        "building the host (dev profile, dependencies optimised; `cargo xtask test` reuses it)",
        || run(cargo().args(["build", "--workspace", "--bin", "agora", "--examples"])),
    )?;
    Ok(target_dir().join("debug/agora"))
}

/// Replaces this process with `command` where the platform can (Ctrl-C and the exit status
/// then belong to the host alone); elsewhere runs it and waits.
fn exec(mut command: Command) -> anyhow::Result<()> {
    #[cfg(unix)]
    {
        use std::os::unix::process::CommandExt as _;
        let error = command.exec();
        Err(error).with_context(|| format!("cannot start {command:?}"))
    }
    #[cfg(not(unix))]
    {
        run(&mut command)
    }
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
    check_chromium()?;
    // The components build beside fmt and the host's clippy (the suite needs them only when
    // it runs); clippy of the components waits for it, as it shares its build folder.
    let components = std::thread::spawn(|| components::build_all_with(components::Output::Beside));
    let checked = step("cargo fmt --check (host workspace and components)", || {
        run(cargo().args(["fmt", "--all", "--check"]))?;
        run(cargo()
            .args(["fmt", "--all", "--check", "--manifest-path"])
            .arg(root().join("components/Cargo.toml")))
    })
    .and_then(|()| {
        step("cargo clippy (host workspace)", || {
            run(cargo().args([
                "clippy",
                "--workspace",
                "--all-targets",
                "--",
                "-D",
                "warnings",
            ]))
        })
    });
    joined(components)?;
    checked?;
    step("cargo clippy (components)", || {
        run(cargo()
            .args(["clippy", "--workspace", "--release", "--manifest-path"])
            .arg(root().join("components/Cargo.toml"))
            .args(["--", "-D", "warnings"])
            .env("CARGO_TARGET_DIR", components::target_dir()))
    })?;
    step("cargo test --workspace", || {
        run(cargo().args(["test", "--workspace"]))
    })?;
    // The pure logic of the guest SDK and of the shop's components (time encoding, row
    // decoding, validation) is tested natively: their calls into the host are only made from
    // inside a component.
    step(
        "cargo test of the guest SDK and the shop's components (native target)",
        || {
            let mut native = cargo();
            native.arg("test");
            for package in NATIVE_TESTED {
                native.args(["--package", package]);
            }
            run(native
                .args(["--target", &host_triple()?])
                .arg("--manifest-path")
                .arg(root().join("components/Cargo.toml"))
                .env("CARGO_TARGET_DIR", components::target_dir()))
        },
    )?;
    eprintln!(
        "xtask: the whole suite passed in {}",
        xtask::duration(started.elapsed())
    );
    Ok(())
}

/// The names host/tests/shop_gateway.rs looks for on PATH to run the GraphiQL page.
const CHROMIUM: &[&str] = &[
    "chromium",
    "chromium-browser",
    "google-chrome",
    "google-chrome-stable",
];

/// The GraphiQL test runs in headless Chromium; without one it is skipped, except under
/// `CI=true`, where it fails. Say so before the long build rather than after it.
fn check_chromium() -> anyhow::Result<()> {
    let path = std::env::var_os("PATH").unwrap_or_default();
    let found = std::env::split_paths(&path)
        .any(|dir| CHROMIUM.iter().any(|name| dir.join(name).is_file()));
    if found {
        return Ok(());
    }
    let how = "install it (Debian/Ubuntu: `apt-get update && apt-get install -y chromium`, \
               as .ci/run does), or run `.ci/run`, which installs it when it is missing";
    if std::env::var("CI").as_deref() == Ok("true") {
        anyhow::bail!(
            "CI=true and no Chromium on PATH (looked for {}): the gateway's GraphiQL test \
             needs it under CI; {how}",
            CHROMIUM.join(", ")
        );
    }
    eprintln!("xtask: no Chromium on PATH: the gateway's GraphiQL test will say SKIPPED; {how}");
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

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    fn forwarded(argv: &[&str]) -> Vec<String> {
        match Cli::try_parse_from(argv).unwrap().command {
            Task::Bench { args } | Task::Load { args } => args
                .into_iter()
                .map(|arg| arg.into_string().unwrap())
                .collect(),
            _ => panic!("{argv:?} is not bench or load"),
        }
    }

    #[test]
    fn bench_and_load_hand_every_argument_to_agora_bench() {
        assert_eq!(
            forwarded(&["xtask", "bench", "hello", "--seconds", "1"]),
            ["hello", "--seconds", "1"]
        );
        assert_eq!(forwarded(&["xtask", "bench", "--help"]), ["--help"]);
        assert_eq!(
            forwarded(&["xtask", "load", "http://127.0.0.1:1/", "--connections", "2"]),
            ["http://127.0.0.1:1/", "--connections", "2"]
        );
        assert!(forwarded(&["xtask", "bench"]).is_empty());
    }

    #[test]
    fn dev_serves_the_dev_profile_host_unless_asked_for_release() {
        let Task::Dev { listen, release } = Cli::try_parse_from(["xtask", "dev"]).unwrap().command
        else {
            panic!("not dev");
        };
        assert_eq!((listen.as_str(), release), ("127.0.0.1:8080", false));
        let Task::Dev { release, .. } = Cli::try_parse_from(["xtask", "dev", "--release"])
            .unwrap()
            .command
        else {
            panic!("not dev");
        };
        assert!(release);
    }
}
