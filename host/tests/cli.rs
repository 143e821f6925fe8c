//! The `agora` binary as an operator meets it: exit codes, one-line errors, the listening line,
//! signals and the compile cache across restarts.

#![allow(clippy::unwrap_used)]

mod common;

use common::process::{Agora, ChildGuard, agora, signal, wait_with_limit};
use common::{component, component_table};
use std::io::{BufRead as _, BufReader, Read as _};
use std::path::Path;
use std::process::{Child, Stdio};
use std::time::Duration;

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

/// Whether `line` is the host's progress log of one component's load (`compiling 1/2 hello…`,
/// `compiled 1/2 hello in …`, `loaded 1/2 hello from the compile cache in …`).
fn is_progress(line: &str) -> bool {
    line.contains(" INFO ")
        && ["compiling ", "compiled ", "loaded "]
            .iter()
            .any(|verb| line.contains(verb))
}

/// Runs `agora serve` on `manifest` and expects a load failure: exit 2, one error line on
/// stderr, preceded at most by the progress lines of the components loaded before.
fn expect_load_error(dir: &Path, manifest: &str, expected: &[&str]) {
    let manifest_path = dir.join("agora.toml");
    std::fs::write(&manifest_path, manifest).unwrap();
    let mut child = ChildGuard::spawn(
        agora()
            .args(["serve", "--listen", "127.0.0.1:0", "--manifest"])
            .arg(&manifest_path)
            .arg("--data-dir")
            .arg(dir.join("data"))
            .stdout(Stdio::null())
            .stderr(Stdio::piped()),
    );
    let status = wait_with_limit(&mut child, Duration::from_secs(60));
    let stderr = read_stderr(&mut child);
    assert_eq!(status.code(), Some(2), "exit code for {manifest}: {stderr}");
    let lines: Vec<&str> = stderr.lines().collect();
    let Some((line, before)) = lines.split_last() else {
        panic!("nothing on stderr for {manifest}");
    };
    assert!(
        before.iter().all(|earlier| is_progress(earlier)),
        "only progress lines before the error, got: {stderr}"
    );
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
fn the_host_logs_each_component_as_it_compiles_or_loads_from_the_compile_cache() {
    let dir = tempfile::tempdir().unwrap();
    let manifest = dir.path().join("agora.toml");
    std::fs::write(
        &manifest,
        [
            component_table("hello", "hello", &["/hello"], ""),
            component_table("echo", "fixture-echo", &["/echo"], ""),
        ]
        .concat(),
    )
    .unwrap();
    // A data folder of its own: its compile cache starts empty.
    let data = dir.path().join("data");
    let find = |log: &str, needle: &str| -> String {
        log.lines()
            .find(|line| line.contains(needle))
            .unwrap_or_else(|| panic!("no `{needle}` line in: {log}"))
            .to_owned()
    };

    let (exit, cold) = Agora::start(&manifest, &data, &[], &[]).stop(libc::SIGTERM);
    assert_eq!(exit, Some(0), "{cold}");
    for needle in ["compiling 1/2 hello (", "compiling 2/2 echo ("] {
        assert!(is_progress(&find(&cold, needle)), "{cold}");
    }
    for needle in ["compiled 1/2 hello in ", "compiled 2/2 echo in "] {
        let line = find(&cold, needle);
        assert!(line.contains("load_ms="), "{line}");
    }
    assert!(
        cold.find("compiling 2/2").unwrap() > cold.find("compiled 1/2").unwrap(),
        "one at a time: {cold}"
    );
    assert!(!cold.contains("from the compile cache"), "{cold}");

    let (exit, warm) = Agora::start(&manifest, &data, &[], &[]).stop(libc::SIGTERM);
    assert_eq!(exit, Some(0), "{warm}");
    find(&warm, "loaded 1/2 hello from the compile cache in ");
    find(&warm, "loaded 2/2 echo from the compile cache in ");
    assert!(!warm.contains("compiling "), "{warm}");
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

/// Runs `agora serve` on `manifest` with `args` and `env` (and no inherited admin token),
/// expects exit 2 with one line on stderr within 30 s, and returns that line.
fn serve_expecting_exit_2(
    manifest: &Path,
    data_dir: &Path,
    args: &[&str],
    env: &[(&str, &str)],
) -> String {
    let mut child = ChildGuard::spawn(
        agora()
            .env_remove("AGORA_ADMIN_TOKEN")
            .envs(env.iter().copied())
            .args(["serve", "--listen", "127.0.0.1:0", "--manifest"])
            .arg(manifest)
            .arg("--data-dir")
            .arg(data_dir)
            .args(args)
            .stdout(Stdio::null())
            .stderr(Stdio::piped()),
    );
    let status = wait_with_limit(&mut child, Duration::from_secs(30));
    let stderr = read_stderr(&mut child);
    assert_eq!(status.code(), Some(2), "{args:?} {env:?}: {stderr}");
    assert_eq!(stderr.lines().count(), 1, "{stderr}");
    stderr
}

#[test]
fn unreachable_or_malformed_backends_exit_2_with_one_line() {
    let dir = tempfile::tempdir().unwrap();
    let manifest = dir.path().join("agora.toml");
    std::fs::write(&manifest, "").unwrap();
    // Nothing listens on port 1; each failure must come quickly, naming the backend.
    for (flag, url, expected) in [
        (
            "--database-url",
            "postgres://postgres@127.0.0.1:1/test",
            "sql",
        ),
        ("--database-url", "mysql://127.0.0.1/x", "sql"),
        ("--nats-url", "nats://127.0.0.1:1", "127.0.0.1:1"),
    ] {
        let stderr = serve_expecting_exit_2(&manifest, &dir.path().join("data"), &[flag, url], &[]);
        assert!(stderr.contains(expected), "{flag} {url}: {stderr}");
    }
}

/// Starts `agora serve` on `manifest` and returns the child and its address (read from the
/// listening line on stdout).
fn start_agora(dir: &Path, manifest: &str) -> Agora {
    start_agora_with_env(dir, manifest, &[])
}

/// [`start_agora`] with extra environment variables.
fn start_agora_with_env(dir: &Path, manifest: &str, env: &[(&str, &str)]) -> Agora {
    let manifest_path = dir.join("agora.toml");
    std::fs::write(&manifest_path, manifest).unwrap();
    Agora::start(&manifest_path, &common::shared_data_dir(), env, &[])
}

/// GET `url` with a timeout (a hung server fails the test instead of hanging it).
fn get_json(url: String) -> (u16, serde_json::Value) {
    let runtime = tokio::runtime::Runtime::new().unwrap();
    runtime.block_on(async move {
        let client = reqwest::Client::builder()
            .timeout(Duration::from_secs(30))
            .build()
            .unwrap();
        let response = client.get(url).send().await.unwrap();
        let status = response.status().as_u16();
        (status, response.json().await.unwrap())
    })
}

/// The body of a raw HTTP/1.1 `response` (its `content-length` or chunked framing undone).
fn http1_body(response: &str) -> String {
    let (head, mut rest) = response
        .split_once("\r\n\r\n")
        .unwrap_or_else(|| panic!("no end of headers in {response:?}"));
    if !head
        .to_ascii_lowercase()
        .contains("transfer-encoding: chunked")
    {
        return rest.to_owned();
    }
    let mut body = String::new();
    loop {
        let (size, after) = rest
            .split_once("\r\n")
            .unwrap_or_else(|| panic!("bad chunk in {response:?}"));
        let size = usize::from_str_radix(size.trim(), 16).unwrap();
        if size == 0 {
            return body;
        }
        body.push_str(&after[..size]);
        rest = &after[size + 2..];
    }
}

#[test]
fn sigterm_drains_in_flight_requests_and_exits_0() {
    use std::io::Write as _;
    let dir = tempfile::tempdir().unwrap();
    let agora = start_agora(
        dir.path(),
        &component_table("echo", "fixture-echo", &["/echo"], ""),
    );
    // A request the test holds in flight: with `expect: 100-continue` the host says `100
    // Continue` only once the component reads the body — the request is then inside echo, not
    // on its way — and echo answers only once the body is sent.
    let mut stream = std::net::TcpStream::connect(&agora.addr).unwrap();
    stream
        .set_read_timeout(Some(Duration::from_secs(30)))
        .unwrap();
    stream
        .write_all(
            b"POST /echo?sleep_ms=300 HTTP/1.1\r\nhost: agora\r\ncontent-length: 5\r\n\
              expect: 100-continue\r\n\r\n",
        )
        .unwrap();
    let mut reader = BufReader::new(stream.try_clone().unwrap());
    let mut line = String::new();
    reader.read_line(&mut line).unwrap();
    assert!(line.starts_with("HTTP/1.1 100 "), "{line:?}");
    reader.read_line(&mut line).unwrap();

    signal(&agora.child, libc::SIGTERM);
    // The listener closes when the drain begins: from then on the request is being drained.
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    while std::net::TcpStream::connect(&agora.addr).is_ok() {
        assert!(
            std::time::Instant::now() < deadline,
            "agora kept accepting after SIGTERM"
        );
        std::thread::sleep(Duration::from_millis(10));
    }
    stream.write_all(b"hello").unwrap();
    let mut response = String::new();
    reader.read_to_string(&mut response).unwrap();
    assert!(
        response.starts_with("HTTP/1.1 200 "),
        "the in-flight request finished after SIGTERM: {response}"
    );
    let body: serde_json::Value = serde_json::from_str(&http1_body(&response)).unwrap();
    assert_eq!(body["path"], "/echo");
    assert_eq!(body["body_len"], 5);

    let (exit, stderr) = agora.wait();
    assert_eq!(exit, Some(0));
    assert!(stderr.contains("SIGTERM received"), "{stderr}");
    // The line names the component and route (its span), the status and duration (its own).
    let served = stderr
        .lines()
        .find(|l| l.contains("request served"))
        .unwrap_or_else(|| panic!("no request log line in: {stderr}"));
    for field in [
        "component=echo",
        "http.route=/echo",
        "status=200",
        "duration_ms=",
    ] {
        assert!(served.contains(field), "`{field}` missing in: {served}");
    }
}

#[test]
fn the_access_log_can_be_turned_off_alone() {
    let dir = tempfile::tempdir().unwrap();
    let agora = start_agora_with_env(
        dir.path(),
        &component_table("hello", "hello", &["/hello"], ""),
        &[("RUST_LOG", "info,agora_host::triggers::http=warn")],
    );
    let response = reqwest::blocking::get(format!("http://{}/hello", agora.addr)).unwrap();
    assert_eq!(response.status(), 200);
    let (exit, stderr) = agora.stop(libc::SIGTERM);
    assert_eq!(exit, Some(0));
    assert!(!stderr.contains("request served"), "{stderr}");
    // Every other `info` line is still written.
    assert!(stderr.contains("SIGTERM received"), "{stderr}");
}

#[test]
fn sigint_with_nothing_in_flight_exits_0() {
    let dir = tempfile::tempdir().unwrap();
    let agora = start_agora(
        dir.path(),
        &component_table("hello", "hello", &["/hello"], ""),
    );
    let (exit, _) = agora.stop(libc::SIGINT);
    assert_eq!(exit, Some(0));
}

#[test]
fn config_comes_from_the_manifest_and_the_environment_and_secrets_are_not_logged() {
    const SECRET: &str = "s3cr3t-Value-never-logged";
    let dir = tempfile::tempdir().unwrap();
    let extra = "[component.config]\ngreeting = \"hello\"\n[component.config_env]\napi_key = \"AGORA_TEST_API_KEY\"";
    let agora = start_agora_with_env(
        dir.path(),
        &component_table("config", "fixture-config", &["/config"], extra),
        &[
            ("AGORA_TEST_API_KEY", SECRET),
            (
                "RUST_LOG",
                "agora=trace,agora_host=trace,agora_cache=trace,info",
            ),
        ],
    );
    let url = |query: &str| format!("http://{}/config{query}", agora.addr);
    let (_, all) = get_json(url(""));
    let (_, one) = get_json(url("?key=greeting"));
    let (_, missing) = get_json(url("?key=nope"));
    assert_eq!(all["all"]["greeting"], "hello");
    assert_eq!(all["all"]["api_key"], SECRET);
    assert_eq!(one["value"], "hello");
    assert_eq!(missing["value"], serde_json::Value::Null);

    let (exit, stderr) = agora.stop(libc::SIGTERM);
    assert_eq!(exit, Some(0));
    assert!(stderr.contains("request served"), "trace logging was on");
    assert!(!stderr.contains(SECRET), "the secret appears in the log");
}

#[test]
fn a_missing_config_variable_exits_2_naming_it() {
    let dir = tempfile::tempdir().unwrap();
    expect_load_error(
        dir.path(),
        &component_table(
            "config",
            "fixture-config",
            &["/config"],
            "config_env = { api_key = \"AGORA_TEST_SURELY_UNSET_VARIABLE\" }",
        ),
        &[
            "component `config`",
            "api_key",
            "AGORA_TEST_SURELY_UNSET_VARIABLE",
            "not set",
        ],
    );
}

#[test]
fn wasi_logging_calls_become_log_lines_tagged_with_the_component() {
    let dir = tempfile::tempdir().unwrap();
    let agora = start_agora_with_env(
        dir.path(),
        &component_table("logger", "fixture-logging", &["/log/..."], ""),
        &[("RUST_LOG", "info")],
    );
    let runtime = tokio::runtime::Runtime::new().unwrap();
    let status = runtime.block_on(async {
        reqwest::get(format!("http://{}/log/here", agora.addr))
            .await
            .unwrap()
            .status()
    });
    assert_eq!(status, 200);
    let (exit, stderr) = agora.stop(libc::SIGTERM);
    assert_eq!(exit, Some(0));
    for (level, name) in [("INFO", "info"), ("WARN", "warn"), ("ERROR", "error")] {
        let line = stderr
            .lines()
            .find(|l| l.contains(&format!("{name} message for /log/here")))
            .unwrap_or_else(|| panic!("no {name} line in: {stderr}"));
        assert!(line.contains(level), "{line}");
        assert!(line.contains("agora::guest"), "{line}");
        assert!(
            line.contains("component=\"logger\""),
            "the event's own field: {line}"
        );
        assert!(line.contains("context=fixture"), "{line}");
    }
    let critical = stderr
        .lines()
        .find(|l| l.contains("critical message for /log/here"))
        .unwrap_or_else(|| panic!("no critical line in: {stderr}"));
    assert!(critical.contains("critical=true"), "{critical}");
    assert!(
        !stderr.contains("debug message for /log/here"),
        "RUST_LOG=info filters guest debug logs"
    );
}

#[test]
fn admin_and_auth_settings_are_checked_at_start() {
    let dir = tempfile::tempdir().unwrap();
    let manifest = dir.path().join("agora.toml");
    std::fs::write(&manifest, "").unwrap();
    for (env, expected) in [
        (vec![], "AGORA_ADMIN_TOKEN"),
        (
            vec![("AGORA_ADMIN_TOKEN", "short")],
            "at least 16 characters",
        ),
        (
            vec![
                ("AGORA_ADMIN_TOKEN", "a-long-enough-admin-token"),
                ("AGORA_AUTH_PRIVATE_KEY", "not a pem"),
                ("AGORA_AUTH_PUBLIC_KEY", "not a pem either"),
            ],
            "auth keys",
        ),
    ] {
        let stderr = serve_expecting_exit_2(
            &manifest,
            &dir.path().join("data"),
            &["--admin-listen", "127.0.0.1:0"],
            &env,
        );
        assert!(stderr.contains(expected), "{env:?}: {stderr}");
        assert!(
            !stderr.contains("not a pem"),
            "key material echoed: {stderr}"
        );
    }
}

/// Replicas of a fleet must share revocations: a host joining one on NATS without Redis
/// refuses to start when its manifest uses tokens — before it connects to anything.
#[test]
fn a_fleet_without_a_shared_revocation_store_refuses_to_start() {
    let dir = tempfile::tempdir().unwrap();
    let manifest = dir.path().join("agora.toml");
    let protected = "[[component.policy]]\naccess = \"authenticated\"";
    std::fs::write(
        &manifest,
        common::component_table("hello", "hello", &["/hello"], protected),
    )
    .unwrap();
    let stderr = serve_expecting_exit_2(
        &manifest,
        &dir.path().join("data"),
        &["--nats-url", "nats://127.0.0.1:1"],
        &[],
    );
    assert!(stderr.contains("--redis-url"), "{stderr}");
    assert!(stderr.contains("fleet `default`"), "{stderr}");
}

#[test]
fn the_admin_api_listens_on_its_own_address_when_asked() {
    let dir = tempfile::tempdir().unwrap();
    let manifest_path = dir.path().join("agora.toml");
    std::fs::write(
        &manifest_path,
        common::component_table("hello", "hello", &["/hello"], ""),
    )
    .unwrap();
    let token = "a-long-enough-admin-token";
    let mut child = ChildGuard::spawn(
        agora()
            .env("AGORA_ADMIN_TOKEN", token)
            .args([
                "serve",
                "--listen",
                "127.0.0.1:0",
                "--admin-listen",
                "127.0.0.1:0",
            ])
            .arg("--manifest")
            .arg(&manifest_path)
            .arg("--data-dir")
            .arg(common::shared_data_dir())
            .stdout(Stdio::piped())
            .stderr(Stdio::null()),
    );
    let mut stdout = BufReader::new(child.stdout.take().unwrap());
    let mut lines = [String::new(), String::new()];
    for line in &mut lines {
        stdout.read_line(line).unwrap();
    }
    assert!(
        lines[0].starts_with("agora listening on http://"),
        "{lines:?}"
    );
    let admin = lines[1]
        .trim()
        .strip_prefix("agora admin API on ")
        .unwrap_or_else(|| panic!("second line: {lines:?}"))
        .to_owned();
    let runtime = tokio::runtime::Runtime::new().unwrap();
    let (anonymous, authorised) = runtime.block_on(async {
        let client = reqwest::Client::new();
        let url = format!("{admin}/admin/health");
        let anonymous = client.get(&url).send().await.unwrap().status().as_u16();
        let authorised: serde_json::Value = client
            .get(&url)
            .bearer_auth(token)
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        (anonymous, authorised)
    });
    assert_eq!(anonymous, 401);
    assert_eq!(authorised["status"], "ok");
    assert_eq!(authorised["components"], 1);
    signal(&child, libc::SIGTERM);
    assert_eq!(
        wait_with_limit(&mut child, Duration::from_secs(20)).code(),
        Some(0)
    );
}
