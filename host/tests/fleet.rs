//! Fleet deploys: `agora deploy` stores a version in NATS JetStream, every `agora serve` replica
//! of the fleet swaps to it, `agora status` shows what each runs. Real processes, real NATS.

#![allow(clippy::unwrap_used)]

mod common;

use common::process::{Agora, ChildGuard, agora, wait_with_limit};
use common::{component, nats_url_or_skip, unique_name};
use std::path::Path;
use std::process::{Output, Stdio};
use std::time::{Duration, Instant};

fn migrations() -> std::path::PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../components/fixtures/swap-v1/migrations")
}

/// The swap fixture as component `name` (no subscription: nothing left behind in NATS).
fn manifest(dir: &Path, name: &str) -> std::path::PathBuf {
    let path = dir.join("agora.toml");
    std::fs::write(
        &path,
        format!(
            "[[component]]\nname = {name:?}\nsource = {:?}\nroutes = [\"/swap\", \"/swap/...\"]\n\
             grants = {{ sql = true, publish = [\"swap.ping\"] }}\nmigrations = {:?}\n",
            component("fixture-swap-v1").display().to_string(),
            migrations().display().to_string(),
        ),
    )
    .unwrap();
    path
}

/// A replica of `fleet` with its own data folder (its own SQLite file and compile cache).
fn replica(dir: &Path, manifest: &Path, nats: &str, fleet: &str, index: usize) -> Agora {
    let data = dir.join(format!("replica-{index}"));
    Agora::start(
        manifest,
        &data,
        &[],
        &["--nats-url", nats, "--fleet", fleet],
    )
}

fn fleet_command(args: &[&str], nats: &str, fleet: &str) -> Output {
    let mut child = ChildGuard::spawn(
        agora()
            .args(args)
            .args(["--nats-url", nats, "--fleet", fleet])
            .stdout(Stdio::piped())
            .stderr(Stdio::piped()),
    );
    wait_with_limit(&mut child, Duration::from_secs(60));
    child.wait_with_output()
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

/// The version `/swap` of `replica` answers with.
fn version(client: &reqwest::blocking::Client, replica: &Agora) -> String {
    let response = client
        .get(format!("http://{}/swap", replica.addr))
        .send()
        .unwrap();
    assert_eq!(response.status(), 200);
    let body: serde_json::Value = response.json().unwrap();
    body["version"].as_str().unwrap().to_owned()
}

#[test]
fn replicas_follow_deploys_and_a_late_one_starts_on_the_desired_version() {
    let Some(nats) = nats_url_or_skip() else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let fleet = unique_name("test");
    let name = "swap";
    let manifest = manifest(dir.path(), name);
    let client = reqwest::blocking::Client::builder()
        .timeout(Duration::from_secs(30))
        .build()
        .unwrap();
    let first = replica(dir.path(), &manifest, &nats, &fleet, 1);
    let second = replica(dir.path(), &manifest, &nats, &fleet, 2);
    assert_eq!(version(&client, &first), "v1");
    assert_eq!(version(&client, &second), "v1");

    // Deploy v2 without waiting, then time until both replicas serve it.
    let v2 = component("fixture-swap-v2");
    let deployed = fleet_command(
        &["deploy", name, v2.to_str().unwrap(), "--wait", "0"],
        &nats,
        &fleet,
    );
    assert!(deployed.status.success(), "{}", text(&deployed.stderr));
    let since_deploy = Instant::now();
    let stdout = text(&deployed.stdout);
    let digest = agora_host::compile_cache::sha256_hex(&std::fs::read(&v2).unwrap());
    assert!(stdout.contains(&digest), "{stdout}");
    let mut pending = vec![&first, &second];
    while !pending.is_empty() {
        assert!(
            since_deploy.elapsed() < Duration::from_secs(60),
            "replicas never served v2"
        );
        pending.retain(|replica| version(&client, replica) != "v2");
        std::thread::sleep(Duration::from_millis(10));
    }
    eprintln!(
        "both replicas served v2 {} ms after `agora deploy` returned",
        since_deploy.elapsed().as_millis()
    );

    // A replica started now comes up on v2: its very first answer.
    let late = replica(dir.path(), &manifest, &nats, &fleet, 3);
    assert_eq!(version(&client, &late), "v2");

    // `agora status` shows the three replicas on the desired version.
    let mut status = String::new();
    for _ in 0..100 {
        let output = fleet_command(&["status"], &nats, &fleet);
        assert!(output.status.success(), "{}", text(&output.stderr));
        status = text(&output.stdout);
        if status.matches("in sync").count() == 3 {
            break;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    assert_eq!(status.matches("in sync").count(), 3, "{status}");
    assert!(status.contains(&digest[..12]), "{status}");

    // A version every replica refuses: the deploy says so, all keep serving v2.
    let command = component("fixture-command");
    let refused = fleet_command(
        &["deploy", name, command.to_str().unwrap(), "--wait", "30"],
        &nats,
        &fleet,
    );
    assert_eq!(refused.status.code(), Some(1), "{}", text(&refused.stdout));
    let stderr = text(&refused.stderr);
    assert!(stderr.contains("refused"), "{stderr}");
    assert!(
        stderr.contains("does not export wasi:http/incoming-handler"),
        "{stderr}"
    );
    for replica in [&first, &second, &late] {
        assert_eq!(version(&client, replica), "v2");
    }
    let output = fleet_command(&["status"], &nats, &fleet);
    let status = text(&output.stdout);
    assert_eq!(status.matches("refused").count(), 3, "{status}");

    // Back to v1, waiting for the replicas: when the command returns, all of them run it.
    let v1 = component("fixture-swap-v1");
    let back = fleet_command(&["deploy", name, v1.to_str().unwrap()], &nats, &fleet);
    assert!(back.status.success(), "{}", text(&back.stderr));
    assert!(
        text(&back.stdout).contains("3 replica(s)"),
        "{}",
        text(&back.stdout)
    );
    for replica in [&first, &second, &late] {
        assert_eq!(version(&client, replica), "v1");
    }

    for replica in [first, second, late] {
        let (code, log) = replica.stop(libc::SIGTERM);
        assert_eq!(code, Some(0), "{log}");
        assert!(log.contains("joined the fleet"), "{log}");
    }
}

#[test]
fn deploy_refuses_bad_input_with_one_line() {
    let dir = tempfile::tempdir().unwrap();
    let not_wasm = dir.path().join("not.wasm");
    std::fs::write(&not_wasm, "hello").unwrap();
    let missing = dir.path().join("missing.wasm");
    let hello = component("hello");
    let cases = [
        (
            not_wasm.to_str().unwrap(),
            "nats://127.0.0.1:4222",
            "not.wasm: not a WebAssembly file",
        ),
        (
            missing.to_str().unwrap(),
            "nats://127.0.0.1:4222",
            "cannot read",
        ),
        (hello.to_str().unwrap(), "nats://127.0.0.1:1", "127.0.0.1:1"),
    ];
    for (file, nats, expected) in cases {
        let output = fleet_command(&["deploy", "hello", file], nats, "test");
        assert_eq!(output.status.code(), Some(2), "{file}");
        let stderr = text(&output.stderr);
        assert!(stderr.contains(expected), "{file}: {stderr}");
        assert_eq!(stderr.trim().lines().count(), 1, "{stderr}");
    }
}
