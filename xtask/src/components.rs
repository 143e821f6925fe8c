//! The component builder: compiles component crates under components/ for wasm32-wasip2 in
//! release and writes target/components/NAME.wasm.
//!
//! A crate counts as a component when it has a binary or a cdylib target; library crates (the
//! guest SDK) are built as dependencies only. `cargo xtask build-components` and `test` build
//! every component (fixtures included); `dev` builds only those its manifest serves. The target
//! is installed with rustup when missing.

use crate::{cargo, niced_cargo, root, run, step};
use anyhow::{Context as _, bail};
use std::path::{Path, PathBuf};
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

/// Where the built components go: target/components/ of the repository (what agora.toml names).
fn out_dir() -> PathBuf {
    root().join("target/components")
}

/// Where a components build shows cargo's output.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Output {
    /// On this terminal, cargo's progress included.
    Terminal,
    /// In target/components/build.log (its tail is shown if the build fails), with one job at a
    /// lower CPU priority: for a build that runs beside the host's. That one holds the terminal
    /// and spends most of its time in one chain of crates compiled one after the other, so a
    /// core is mostly idle.
    Beside,
}

/// Builds all components; prints one line per component with its size.
pub fn build_all() -> anyhow::Result<Vec<Built>> {
    build_all_with(Output::Terminal)
}

/// [`build_all`] with cargo's output shown as `output` says.
pub fn build_all_with(output: Output) -> anyhow::Result<Vec<Built>> {
    let artifacts = component_artifacts()?;
    let what = format!(
        "building all {} components under components/ for {TARGET} (release)",
        artifacts.len()
    );
    build(&what, &["--workspace"], artifacts, output)
}

/// Builds the components `manifest` serves from target/components/ (sources elsewhere are
/// served as they are); prints one line per component with its size.
pub fn build_served(manifest: &Path, output: Output) -> anyhow::Result<Vec<Built>> {
    let text = std::fs::read_to_string(manifest)
        .with_context(|| format!("cannot read {}", manifest.display()))?;
    let manifest_dir = manifest.parent().unwrap_or(Path::new("."));
    let served = served_components(&text, manifest_dir, &out_dir())
        .with_context(|| format!("in {}", manifest.display()))?;
    let artifacts: Vec<(String, String)> = component_artifacts()?
        .into_iter()
        .filter(|(name, _)| served.contains(name))
        .collect();
    if let Some(missing) = served
        .iter()
        .find(|name| !artifacts.iter().any(|(built, _)| built == *name))
    {
        bail!(
            "{} serves target/components/{missing}.wasm, but no component crate under \
             components/ is named {missing}",
            manifest.display()
        );
    }
    let what = format!(
        "building the {} components {} serves ({}) for {TARGET} (release)",
        artifacts.len(),
        manifest.file_name().map_or_else(
            || manifest.display().to_string(),
            |n| n.display().to_string()
        ),
        served.join(", ")
    );
    let mut packages = Vec::new();
    for name in &served {
        packages.push("--package");
        packages.push(name.as_str());
    }
    build(&what, &packages, artifacts, output)
}

/// Builds all components and returns the path of the one named `name`.
pub fn build_and_find(name: &str) -> anyhow::Result<PathBuf> {
    build_all()?
        .into_iter()
        .find(|c| c.name == name)
        .map(|c| c.path)
        .with_context(|| format!("no component named {name} was built"))
}

/// Runs `cargo build` of the components workspace with `selection` (`--workspace` or
/// `--package …`), then copies each of `artifacts` to target/components/NAME.wasm.
fn build(
    what: &str,
    selection: &[&str],
    artifacts: Vec<(String, String)>,
    output: Output,
) -> anyhow::Result<Vec<Built>> {
    ensure_target()?;
    let log = out_dir().join("build.log");
    let what = match output {
        Output::Terminal => what.to_owned(),
        Output::Beside => format!(
            "{what}, in the background (one job, low priority; cargo's output in \
             target/components/build.log)"
        ),
    };
    step(&what, || {
        let mut command = match output {
            Output::Terminal => cargo(),
            Output::Beside => niced_cargo(),
        };
        command
            .args(["build", "--release", "--target", TARGET])
            .args(selection)
            .arg("--manifest-path")
            .arg(root().join("components/Cargo.toml"))
            .env("CARGO_TARGET_DIR", target_dir());
        match output {
            Output::Terminal => run(&mut command)?,
            Output::Beside => run_logged(command.args(["--jobs", "1"]), &log)?,
        }
        let out_dir = out_dir();
        std::fs::create_dir_all(&out_dir)
            .with_context(|| format!("cannot create {}", out_dir.display()))?;
        let release = target_dir().join(TARGET).join("release");
        let mut built = Vec::new();
        for (name, artifact) in artifacts {
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
        Ok(built)
    })
}

/// Runs `command` with its output written to `log`; when it fails, shows the log's last lines.
fn run_logged(command: &mut Command, log: &Path) -> anyhow::Result<()> {
    if let Some(dir) = log.parent() {
        std::fs::create_dir_all(dir).with_context(|| format!("cannot create {}", dir.display()))?;
    }
    let file =
        std::fs::File::create(log).with_context(|| format!("cannot create {}", log.display()))?;
    command.stdout(file.try_clone()?).stderr(file);
    let outcome = run(command);
    if outcome.is_err() {
        let text = std::fs::read_to_string(log).unwrap_or_default();
        let lines: Vec<&str> = text.lines().collect();
        eprintln!("xtask: the last lines of {}:", log.display());
        for line in &lines[lines.len().saturating_sub(40)..] {
            eprintln!("  {line}");
        }
    }
    outcome
}

/// The component crates a manifest serves: the file stems of its `[[component]]` sources that
/// lie in `out_dir` (target/components/NAME.wasm → NAME), in manifest order, without
/// duplicates. Relative sources are resolved against `manifest_dir`, as the host does.
fn served_components(
    manifest: &str,
    manifest_dir: &Path,
    out_dir: &Path,
) -> anyhow::Result<Vec<String>> {
    let manifest: toml::Table = manifest.parse().context("invalid TOML")?;
    let Some(components) = manifest.get("component") else {
        return Ok(Vec::new());
    };
    let components = components
        .as_array()
        .context("`component` must be an array of tables ([[component]])")?;
    let mut served = Vec::new();
    for (index, component) in components.iter().enumerate() {
        let source = component
            .get("source")
            .and_then(toml::Value::as_str)
            .with_context(|| format!("component #{} has no `source` string", index + 1))?;
        let path = manifest_dir.join(source);
        let Ok(inside) = path.strip_prefix(out_dir) else {
            continue;
        };
        let name = inside
            .to_str()
            .and_then(|file| file.strip_suffix(".wasm"))
            .filter(|stem| !stem.is_empty() && !stem.contains(['/', '\\']));
        let Some(name) = name else {
            bail!(
                "component #{} has source {source:?}: under target/components/ only NAME.wasm \
                 files are built",
                index + 1
            );
        };
        if !served.iter().any(|known| known == name) {
            served.push(name.to_owned());
        }
    }
    Ok(served)
}

/// `(package name, artifact file name)` for every component package, from `cargo metadata`.
fn component_artifacts() -> anyhow::Result<Vec<(String, String)>> {
    let output = cargo()
        .args([
            "metadata",
            "--format-version",
            "1",
            "--no-deps",
            "--manifest-path",
        ])
        .arg(root().join("components/Cargo.toml"))
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
        Ok(_) => step(
            &format!("installing the {TARGET} target with rustup"),
            || run(Command::new("rustup").args(["target", "add", TARGET])),
        ),
        // No rustup: let cargo report a missing target if it really is missing.
        Err(_) => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    fn served(manifest: &str) -> anyhow::Result<Vec<String>> {
        served_components(
            manifest,
            Path::new("/shop"),
            Path::new("/shop/target/components"),
        )
    }

    #[test]
    fn a_manifest_serves_the_crates_its_sources_name_in_target_components() {
        let manifest = r#"
            [[component]]
            name = "store"
            source = "target/components/catalog.wasm"
            routes = ["/..."]
            [[component]]
            name = "outside"
            source = "/elsewhere/outside.wasm"
            [[component]]
            name = "hello"
            source = "target/components/hello.wasm"
            [[component]]
            name = "hello-again"
            source = "target/components/hello.wasm"
        "#;
        assert_eq!(served(manifest).unwrap(), ["catalog", "hello"]);
    }

    #[test]
    fn a_manifest_without_components_serves_none() {
        assert!(served("[auth]\nissuer = \"x\"\n").unwrap().is_empty());
    }

    #[test]
    fn a_source_that_is_not_a_built_component_is_refused_with_a_reason() {
        let nested = "[[component]]\nname = \"x\"\nsource = \"target/components/a/b.wasm\"\n";
        let error = format!("{:#}", served(nested).unwrap_err());
        assert!(error.contains("only NAME.wasm"), "{error}");
        let missing = "[[component]]\nname = \"x\"\n";
        let error = format!("{:#}", served(missing).unwrap_err());
        assert!(error.contains("no `source`"), "{error}");
        let error = format!("{:#}", served("[[component]\n").unwrap_err());
        assert!(error.contains("invalid TOML"), "{error}");
    }

    /// The repository's own manifest maps onto component crates (its sources are where
    /// `build-components` writes them).
    #[test]
    fn the_shops_manifest_serves_crates_of_the_components_workspace() {
        let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
        let text = std::fs::read_to_string(root.join("agora.toml")).unwrap();
        let served = served_components(&text, &root, &root.join("target/components")).unwrap();
        assert!(served.len() >= 6, "{served:?}");
        for name in served {
            assert!(
                root.join("components")
                    .join(&name)
                    .join("Cargo.toml")
                    .is_file(),
                "agora.toml serves {name}, which is no crate under components/"
            );
        }
    }
}
