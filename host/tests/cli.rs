//! The `agora` binary as an operator meets it: exit codes, one-line errors, the listening line,
//! signals and the compile cache across restarts.

#![allow(clippy::unwrap_used)]

mod common;

use common::{component, component_table};
use std::io::{BufRead as _, BufReader, Read as _};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

fn agora() -> Command {
    let mut command = Command::new(env!("CARGO_BIN_EXE_agora"));
    command.env("RUST_LOG", "info");
    command
}

/// Waits for `child` to exit, killing it (and failing) after `limit`.
fn wait_with_limit(child: &mut Child, limit: Duration) -> std::process::ExitStatus {
    let deadline = Instant::now() + limit;
    loop {
        if let Some(status) = child.try_wait().unwrap() {
            return status;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            panic!("agora did not exit within {limit:?}");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Everything the (exited) child wrote to its piped stderr.
fn read_stderr(child: &mut Child) -> String {
    let mut stderr = String::new();
    child
        .stderr
        .take()
        .unwrap()
        .read_to_string(&mut stderr)
        .unwrap();
    stderr
}

/// Runs `agora serve` on `manifest` and expects a load failure: exit 2, one line on stderr.
fn expect_load_error(dir: &Path, manifest: &str, expected: &[&str]) {
    let manifest_path = dir.join("agora.toml");
    std::fs::write(&manifest_path, manifest).unwrap();
    let mut child = agora()
        .args(["serve", "--listen", "127.0.0.1:0", "--manifest"])
        .arg(&manifest_path)
        .arg("--data-dir")
        .arg(dir.join("data"))
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let status = wait_with_limit(&mut child, Duration::from_secs(60));
    let stderr = read_stderr(&mut child);
    assert_eq!(status.code(), Some(2), "exit code for {manifest}: {stderr}");
    let lines: Vec<&str> = stderr.lines().collect();
    assert_eq!(lines.len(), 1, "exactly one line, got: {stderr}");
    let line = lines[0];
    assert!(line.starts_with("error: "), "{line}");
    assert!(
        !line.contains("panicked") && !line.contains("backtrace"),
        "{line}"
    );
    assert!(
        line.contains(&manifest_path.display().to_string()),
        "names the manifest: {line}"
    );
    for needle in expected {
        assert!(line.contains(needle), "expected `{needle}` in: {line}");
    }
}

#[test]
fn bad_manifests_and_components_exit_2_with_one_line() {
    let dir = tempfile::tempdir().unwrap();
    let text_file = dir.path().join("notes.wasm");
    std::fs::write(&text_file, "this is not wasm").unwrap();
    let core_module = dir.path().join("core.wasm");
    std::fs::write(&core_module, b"\0asm\x01\0\0\0").unwrap();
    let table = |name: &str, source: &Path| {
        format!(
            "[[component]]\nname = \"{name}\"\nsource = {:?}\nroutes = [\"/{name}\"]\n",
            source.display().to_string()
        )
    };

    expect_load_error(dir.path(), "[[component]\nname = \"x\"", &["agora.toml:1:"]);
    expect_load_error(
        dir.path(),
        &format!("{}colour = \"blue\"\n", table("hello", &component("hello"))),
        &["unknown field `colour`"],
    );
    expect_load_error(
        dir.path(),
        &[
            component_table("first", "hello", &["/shop/..."], ""),
            component_table("second", "fixture-echo", &["/shop/..."], ""),
        ]
        .concat(),
        &["`first`", "`second`", "/shop/..."],
    );
    // The second component fails after the first loaded: still one line.
    expect_load_error(
        dir.path(),
        &[
            table("hello", &component("hello")),
            table("ghost", &dir.path().join("missing.wasm")),
        ]
        .concat(),
        &["component `ghost`", "missing.wasm", "cannot read"],
    );
    expect_load_error(
        dir.path(),
        &table("notes", &text_file),
        &["component `notes`", "notes.wasm", "not a WebAssembly file"],
    );
    expect_load_error(
        dir.path(),
        &table("core", &core_module),
        &["component `core`", "core.wasm", "not a component"],
    );
    expect_load_error(
        dir.path(),
        &table("command", &component("fixture-command")),
        &[
            "component `command`",
            "fixture-command.wasm",
            "wasi:http/incoming-handler",
        ],
    );
}

#[test]
fn a_missing_manifest_exits_2() {
    let dir = tempfile::tempdir().unwrap();
    let missing = dir.path().join("nowhere.toml");
    let output = agora()
        .args(["serve", "--manifest"])
        .arg(&missing)
        .output()
        .unwrap();
    assert_eq!(output.status.code(), Some(2));
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(stderr.lines().count(), 1, "{stderr}");
    assert!(
        stderr.contains("nowhere.toml") && stderr.contains("cannot read"),
        "{stderr}"
    );
}

/// Starts `agora serve` on `manifest` and returns the child and its address (read from the
/// listening line on stdout).
fn start_agora(dir: &Path, manifest: &str) -> (Child, String) {
    let manifest_path = dir.join("agora.toml");
    std::fs::write(&manifest_path, manifest).unwrap();
    let mut child = agora()
        .args(["serve", "--listen", "127.0.0.1:0", "--drain-timeout", "10"])
        .arg("--manifest")
        .arg(&manifest_path)
        .arg("--data-dir")
        .arg(common::shared_data_dir())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut line = String::new();
    BufReader::new(child.stdout.take().unwrap())
        .read_line(&mut line)
        .unwrap();
    let addr = line
        .trim()
        .strip_prefix("agora listening on http://")
        .unwrap_or_else(|| panic!("unexpected first line: {line:?}"))
        .to_owned();
    (child, addr)
}

fn signal(child: &Child, signal: libc::c_int) {
    let pid = libc::pid_t::try_from(child.id()).unwrap();
    // SAFETY: sending a signal to our own child process.
    assert_eq!(unsafe { libc::kill(pid, signal) }, 0);
}

#[test]
fn sigterm_drains_in_flight_requests_and_exits_0() {
    let dir = tempfile::tempdir().unwrap();
    let (mut child, addr) = start_agora(
        dir.path(),
        &component_table("echo", "fixture-echo", &["/echo"], ""),
    );
    let slow = std::thread::spawn(move || {
        let runtime = tokio::runtime::Runtime::new().unwrap();
        runtime.block_on(async move {
            let response = reqwest::get(format!("http://{addr}/echo?sleep_ms=1000"))
                .await
                .unwrap();
            let status = response.status().as_u16();
            let body: serde_json::Value = response.json().await.unwrap();
            (status, body)
        })
    });
    std::thread::sleep(Duration::from_millis(300));
    signal(&child, libc::SIGTERM);
    let (status, body) = slow.join().unwrap();
    assert_eq!(status, 200, "the in-flight request finished after SIGTERM");
    assert_eq!(body["path"], "/echo");
    let exit = wait_with_limit(&mut child, Duration::from_secs(20));
    assert_eq!(exit.code(), Some(0));

    let stderr = read_stderr(&mut child);
    assert!(stderr.contains("SIGTERM received"), "{stderr}");
    // The request's span names the component, route, status and duration.
    let served = stderr
        .lines()
        .find(|l| l.contains("request served"))
        .unwrap_or_else(|| panic!("no request log line in: {stderr}"));
    for field in [
        "component=echo",
        "route=/echo",
        "status=200",
        "duration_ms=",
    ] {
        assert!(served.contains(field), "`{field}` missing in: {served}");
    }
}

#[test]
fn sigint_with_nothing_in_flight_exits_0() {
    let dir = tempfile::tempdir().unwrap();
    let (mut child, _addr) = start_agora(
        dir.path(),
        &component_table("hello", "hello", &["/hello"], ""),
    );
    signal(&child, libc::SIGINT);
    let exit = wait_with_limit(&mut child, Duration::from_secs(20));
    assert_eq!(exit.code(), Some(0));
}
