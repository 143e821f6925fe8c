//! The fleet part of `cargo xtask bench swap`: from `agora deploy` to every replica serving the
//! new version.
//!
//! Two release `agora serve` replicas of a fleet made for the run (NATS JetStream; embedded
//! SQLite each), serving `fixture-swap-v1` as component `swap` (it answers `{"version": …}`).
//! Each deploy runs the real `agora deploy swap FILE --wait 0` and then polls both replicas
//! until both answer with the deployed version: *compiled* deploys send v2 with a fresh custom
//! section (bytes no replica has seen: each fetches and compiles them), *from cache* deploys
//! alternate the plain v1 and v2 (both replicas compiled them before).

use crate::harness::process::{Host, agora_serve, spawn_and_read_addr};
use crate::harness::stats::{micros_since, percentile_ms};
use crate::target_dir;
use anyhow::{Context as _, bail};
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

/// How long a deploy may take to reach both replicas before the benchmark gives up.
const PATIENCE: Duration = Duration::from_secs(30);

/// Times of one kind of deploy, in µs.
#[derive(Default)]
pub(super) struct DeployTimes {
    /// `agora deploy` started → exited (stored, desired version set).
    pub(super) command_us: Vec<u32>,
    /// `agora deploy` started → both replicas answer with the new version.
    pub(super) serving_us: Vec<u32>,
}

/// What the fleet part measured.
pub(super) struct FleetResult {
    /// Deploys of bytes no replica had compiled.
    pub(super) compiled: DeployTimes,
    /// Deploys of versions both replicas had compiled before.
    pub(super) cached: DeployTimes,
}

/// Runs `repeats` deploys of each kind on two replicas sharing `nats_url`.
pub(super) fn run(
    nats_url: &str,
    repeats: usize,
    with_nonce: impl Fn(&[u8]) -> Vec<u8>,
) -> anyhow::Result<FleetResult> {
    let work = target_dir().join("bench-swap/fleet");
    let _ = std::fs::remove_dir_all(&work);
    std::fs::create_dir_all(&work)?;
    let root = crate::root();
    let v1 = root.join("target/components/fixture-swap-v1.wasm");
    let v2 = root.join("target/components/fixture-swap-v2.wasm");
    let manifest = work.join("agora.toml");
    std::fs::write(
        &manifest,
        format!(
            "[[component]]\nname = \"swap\"\nsource = {:?}\nroutes = [\"/swap\", \"/swap/...\"]\n\
             grants = {{ sql = true, publish = [\"swap.ping\"] }}\nmigrations = {:?}\n",
            v1.display().to_string(),
            root.join("components/fixtures/swap-v1/migrations")
                .display()
                .to_string(),
        ),
    )?;
    let fleet = format!("bench-{}", &uuid::Uuid::new_v4().simple().to_string()[..8]);
    let agora = target_dir().join("release/agora");
    let mut replicas = Vec::new();
    for index in 1..=2 {
        let mut command = agora_serve(&manifest, &work.join(format!("replica-{index}")));
        command.args(["--nats-url", nats_url, "--fleet", &fleet]);
        let (child, addr) = spawn_and_read_addr(&mut command)?;
        replicas.push((Host(Some(child)), addr));
    }
    eprintln!("xtask: fleet `{fleet}`: two replicas up; deploying");
    let client = reqwest::blocking::Client::builder()
        .timeout(Duration::from_secs(10))
        .build()?;
    let addrs: Vec<String> = replicas.iter().map(|(_, addr)| addr.clone()).collect();
    let deploy = |file: &Path, expected: &str, times: &mut DeployTimes| -> anyhow::Result<()> {
        let started = Instant::now();
        let status = Command::new(&agora)
            .args(["deploy", "swap"])
            .arg(file)
            .args(["--nats-url", nats_url, "--fleet", &fleet, "--wait", "0"])
            .stdout(Stdio::null())
            .status()
            .context("running agora deploy")?;
        if !status.success() {
            bail!("agora deploy failed ({status})");
        }
        times.command_us.push(micros_since(started));
        let mut pending = addrs.clone();
        while !pending.is_empty() {
            if started.elapsed() > PATIENCE {
                bail!("after {PATIENCE:?}, {pending:?} do not serve {expected}");
            }
            pending.retain(|addr| version(&client, addr).as_deref() != Some(expected));
            std::thread::sleep(Duration::from_millis(2));
        }
        times.serving_us.push(micros_since(started));
        Ok(())
    };
    let mut result = FleetResult {
        compiled: DeployTimes::default(),
        cached: DeployTimes::default(),
    };
    let fresh = work.join("fresh.wasm");
    let v2_bytes = std::fs::read(&v2)?;
    let outcome = (|| {
        // Both plain versions compiled on both replicas first.
        deploy(&v2, "v2", &mut DeployTimes::default())?;
        deploy(&v1, "v1", &mut DeployTimes::default())?;
        for round in 0..repeats {
            std::fs::write(&fresh, with_nonce(&v2_bytes))?;
            deploy(&fresh, "v2", &mut result.compiled)?;
            let (file, expected) = if round % 2 == 0 {
                (&v1, "v1")
            } else {
                (&v2, "v2")
            };
            deploy(file, expected, &mut result.cached)?;
            eprintln!("xtask: fleet deploy round {}/{repeats} done", round + 1);
        }
        anyhow::Ok(())
    })();
    for (mut host, _) in replicas {
        host.stop();
    }
    outcome?;
    Ok(result)
}

/// The version `/swap` of the replica at `addr` answers with, if it answers.
fn version(client: &reqwest::blocking::Client, addr: &str) -> Option<String> {
    let response = client.get(format!("http://{addr}/swap")).send().ok()?;
    let body: serde_json::Value = response.json().ok()?;
    body["version"].as_str().map(str::to_owned)
}

/// The table rows of `result`.
pub(super) fn print(result: &FleetResult) {
    println!(
        "| fleet deploy (2 replicas) | deploys | `agora deploy` ms (median / max) | deploy → both serving ms (median / max) |"
    );
    println!("|---|---:|---:|---:|");
    for (label, times) in [
        ("compiled (new bytes)", &result.compiled),
        ("from cache", &result.cached),
    ] {
        let ms = |v: &[u32]| {
            let mut sorted = v.to_vec();
            sorted.sort_unstable();
            format!(
                "{:.1} / {:.1}",
                percentile_ms(&sorted, 0.5),
                percentile_ms(&sorted, 1.0)
            )
        };
        println!(
            "| {label} | {} | {} | {} |",
            times.serving_us.len(),
            ms(&times.command_us),
            ms(&times.serving_us)
        );
    }
}
