//! The helpers `cargo xtask` and the benchmarks (bench/, `agora-bench`) share: where the
//! repository and its build output are, how to run cargo, and the component builder.

pub mod components;

use anyhow::{Context as _, bail};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

/// The repository root (the folder holding xtask/ and bench/).
///
/// Read from the environment `cargo run` sets (the running package's folder, one level below
/// the root for both xtask and agora-bench), not from the path baked in at compile time: two
/// clones sharing one CARGO_TARGET_DIR share the uplifted binaries, and a baked path would send
/// one clone's commands to the other's tree.
pub fn root() -> PathBuf {
    let manifest_dir = std::env::var_os("CARGO_MANIFEST_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_MANIFEST_DIR")));
    manifest_dir
        .parent()
        .map(Path::to_path_buf)
        .unwrap_or_else(|| PathBuf::from("."))
}

/// The cargo that runs this process, in the repository root, without the variables `cargo run`
/// set for this process.
///
/// Those (`CARGO_PKG_NAME=xtask`, `CARGO_MANIFEST_DIR`, …) would otherwise reach the nested
/// cargo, and build scripts that watch them (ring's `rerun-if-env-changed=CARGO_PKG_NAME`)
/// would run again, rebuilding ring and everything above it (rustls, async-nats,
/// wasmtime-wasi-http, the host) whenever a plain `cargo build` or `cargo test` follows a
/// `cargo xtask` one, or the reverse.
pub fn cargo() -> Command {
    in_root(Command::new(cargo_program()))
}

/// [`cargo`] at a lower CPU priority (`nice -n 10`), where the platform has `nice`: for a build
/// that runs beside another one.
pub fn niced_cargo() -> Command {
    let path = std::env::var_os("PATH").unwrap_or_default();
    let nice = cfg!(unix) && std::env::split_paths(&path).any(|dir| dir.join("nice").is_file());
    if !nice {
        return cargo();
    }
    let mut command = Command::new("nice");
    command.args(["-n", "10"]).arg(cargo_program());
    in_root(command)
}

fn cargo_program() -> std::ffi::OsString {
    std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into())
}

/// `command` in the repository root, without the variables `cargo run` set for this process.
fn in_root(mut command: Command) -> Command {
    command.current_dir(root());
    for (name, _) in std::env::vars_os() {
        if name.to_str().is_some_and(set_by_cargo_run) {
            command.env_remove(name);
        }
    }
    command
}

/// Whether `cargo run` sets `name` for the program it runs (and a build outside would not).
fn set_by_cargo_run(name: &str) -> bool {
    name.starts_with("CARGO_PKG_")
        || matches!(
            name,
            "CARGO_MANIFEST_DIR"
                | "CARGO_MANIFEST_PATH"
                | "CARGO_MANIFEST_LINKS"
                | "CARGO_CRATE_NAME"
                | "CARGO_BIN_NAME"
                | "CARGO_PRIMARY_PACKAGE"
        )
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

/// Runs one long step of a command: says what it starts (`xtask: building the host…`), then
/// how long it took (`xtask: building the host… done in 312 s`) or that it failed.
pub fn step<T>(what: &str, work: impl FnOnce() -> anyhow::Result<T>) -> anyhow::Result<T> {
    eprintln!("xtask: {what}…");
    let started = Instant::now();
    let outcome = work();
    match &outcome {
        Ok(_) => eprintln!("xtask: {what}… done in {}", duration(started.elapsed())),
        Err(_) => eprintln!(
            "xtask: {what}… failed after {}",
            duration(started.elapsed())
        ),
    }
    outcome
}

/// `0.4 s`, `12 s`, `312 s (5.2 min)`.
pub fn duration(elapsed: Duration) -> String {
    let seconds = elapsed.as_secs_f64();
    if seconds < 10.0 {
        format!("{seconds:.1} s")
    } else if seconds < 120.0 {
        format!("{seconds:.0} s")
    } else {
        format!("{seconds:.0} s ({:.1} min)", seconds / 60.0)
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    #[test]
    fn nested_cargo_commands_do_not_inherit_what_cargo_run_set() {
        // `cargo test` sets these for the test binary, as `cargo run` does for xtask.
        assert!(std::env::var_os("CARGO_PKG_NAME").is_some());
        for command in [cargo(), niced_cargo()] {
            let removed: Vec<String> = command
                .get_envs()
                .filter(|(_, value)| value.is_none())
                .map(|(name, _)| name.to_string_lossy().into_owned())
                .collect();
            for name in ["CARGO_PKG_NAME", "CARGO_PKG_VERSION", "CARGO_MANIFEST_DIR"] {
                assert!(removed.iter().any(|r| r == name), "{name} in {removed:?}");
            }
            assert!(
                !removed
                    .iter()
                    .any(|r| r == "CARGO_TARGET_DIR" || r == "CARGO_HOME")
            );
            assert_eq!(command.get_current_dir(), Some(root().as_path()));
        }
        assert!(set_by_cargo_run("CARGO_PRIMARY_PACKAGE"));
        assert!(!set_by_cargo_run("CARGO"));
    }

    #[test]
    fn durations_read_well_at_every_scale() {
        assert_eq!(duration(Duration::from_millis(400)), "0.4 s");
        assert_eq!(duration(Duration::from_millis(12_300)), "12 s");
        assert_eq!(duration(Duration::from_secs(312)), "312 s (5.2 min)");
    }
}
