//! `cargo xtask build-components`: compiles every component crate under components/ for
//! wasm32-wasip2 in release and writes target/components/NAME.wasm.
//!
//! A crate counts as a component when it has a binary or a cdylib target; library crates (the
//! guest SDK) are built as dependencies only. The target is installed with rustup when missing.

use crate::{cargo, root, run};
use anyhow::{Context as _, bail};
use std::path::PathBuf;
use std::process::Command;

const TARGET: &str = "wasm32-wasip2";

/// A built component.
pub struct Built {
    /// Package name (also the file stem).
    pub name: String,
    /// target/components/NAME.wasm
    pub path: PathBuf,
}

/// Where the components workspace builds (beside the host's build output).
pub fn target_dir() -> PathBuf {
    crate::target_dir().join("components")
}

/// Builds all components; prints one line per component with its size.
pub fn build_all() -> anyhow::Result<Vec<Built>> {
    ensure_target()?;
    let manifest = root().join("components/Cargo.toml");
    let started = std::time::Instant::now();
    eprintln!("xtask: building components for {TARGET} (release)");
    run(cargo()
        .args(["build", "--release", "--workspace", "--target", TARGET])
        .arg("--manifest-path")
        .arg(&manifest)
        .env("CARGO_TARGET_DIR", target_dir()))?;

    let out_dir = root().join("target/components");
    std::fs::create_dir_all(&out_dir)
        .with_context(|| format!("cannot create {}", out_dir.display()))?;
    let release = target_dir().join(TARGET).join("release");
    let mut built = Vec::new();
    for (name, artifact) in component_artifacts(&manifest)? {
        let from = release.join(&artifact);
        let to = out_dir.join(format!("{name}.wasm"));
        std::fs::copy(&from, &to)
            .with_context(|| format!("cannot copy {} to {}", from.display(), to.display()))?;
        let size = std::fs::metadata(&to)?.len();
        eprintln!(
            "  {name:<24} {:>8.1} KiB  target/components/{name}.wasm",
            size as f64 / 1024.0
        );
        built.push(Built { name, path: to });
    }
    eprintln!(
        "xtask: {} components built in {:.1} s",
        built.len(),
        started.elapsed().as_secs_f64()
    );
    Ok(built)
}

/// Builds all components and returns the path of the one named `name`.
pub fn build_and_find(name: &str) -> anyhow::Result<PathBuf> {
    build_all()?
        .into_iter()
        .find(|c| c.name == name)
        .map(|c| c.path)
        .with_context(|| format!("no component named {name} was built"))
}

/// `(package name, artifact file name)` for every component package, from `cargo metadata`.
fn component_artifacts(manifest: &std::path::Path) -> anyhow::Result<Vec<(String, String)>> {
    let output = cargo()
        .args([
            "metadata",
            "--format-version",
            "1",
            "--no-deps",
            "--manifest-path",
        ])
        .arg(manifest)
        .output()
        .context("cannot run cargo metadata")?;
    if !output.status.success() {
        bail!(
            "cargo metadata failed: {}",
            String::from_utf8_lossy(&output.stderr)
        );
    }
    let metadata: serde_json::Value =
        serde_json::from_slice(&output.stdout).context("cargo metadata printed invalid JSON")?;
    let mut artifacts = Vec::new();
    for package in metadata["packages"].as_array().into_iter().flatten() {
        let Some(name) = package["name"].as_str() else {
            continue;
        };
        for target in package["targets"].as_array().into_iter().flatten() {
            let kinds: Vec<&str> = target["kind"]
                .as_array()
                .into_iter()
                .flatten()
                .filter_map(|k| k.as_str())
                .collect();
            let Some(target_name) = target["name"].as_str() else {
                continue;
            };
            if kinds.contains(&"bin") {
                artifacts.push((name.to_owned(), format!("{target_name}.wasm")));
            } else if kinds.contains(&"cdylib") {
                artifacts.push((
                    name.to_owned(),
                    format!("{}.wasm", target_name.replace('-', "_")),
                ));
            }
        }
    }
    artifacts.sort();
    Ok(artifacts)
}

fn ensure_target() -> anyhow::Result<()> {
    let installed = Command::new("rustup")
        .args(["target", "list", "--installed"])
        .output();
    match installed {
        Ok(output) if String::from_utf8_lossy(&output.stdout).contains(TARGET) => Ok(()),
        Ok(_) => {
            eprintln!("xtask: installing the {TARGET} target with rustup");
            run(Command::new("rustup").args(["target", "add", TARGET]))
        }
        // No rustup: let cargo report a missing target if it really is missing.
        Err(_) => Ok(()),
    }
}
