//! The metrics listener of the real binary (`--metrics-listen`): what a scrape holds after
//! requests the test made, checked by `promtool check metrics` and by a real Prometheus
//! scraping the host; `/healthz` and `/readyz`, including readiness lost while draining and
//! while a backend does not answer.
//!
//! promtool and prometheus come from Debian's `prometheus` package (`.ci/run` installs it):
//! without them those checks print SKIPPED, and fail under `CI=true`.

#![allow(clippy::unwrap_used)]

mod common;

use common::component_table;
use common::process::Agora;
use std::io::Write as _;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

fn under_ci() -> bool {
    std::env::var("CI").as_deref() == Ok("true")
}

/// The path of `tool` when it is installed; None after a SKIPPED line (a failure under CI).
fn tool(tool: &str) -> Option<String> {
    let found = std::env::var_os("PATH").and_then(|paths| {
        std::env::split_paths(&paths)
            .map(|dir| dir.join(tool))
            .find(|path| path.is_file())
    });
    match found {
        Some(path) => Some(path.to_string_lossy().into_owned()),
        None => {
            assert!(
                !under_ci(),
                "{tool} is required under CI=true (Debian package prometheus)"
            );
            eprintln!("SKIPPED: {tool} not installed");
            None
        }
    }
}

/// An echo component on `/echo` and `/echo/...`, served with a metrics listener.
fn start(dir: &std::path::Path) -> (Agora, String) {
    start_with(dir, &[])
}

/// [`start`] with more arguments for `agora serve`.
fn start_with(dir: &std::path::Path, args: &[&str]) -> (Agora, String) {
    let manifest = dir.join("agora.toml");
    std::fs::write(
        &manifest,
        component_table("echo", "fixture-echo", &["/echo", "/echo/..."], ""),
    )
    .unwrap();
    let agora = Agora::start(
        &manifest,
        &common::shared_data_dir(),
        &[],
        &[&["--metrics-listen", "127.0.0.1:0"], args].concat(),
    );
    let metrics = agora.line_after("agora metrics on http://");
    let metrics = metrics
        .strip_suffix("/metrics")
        .expect("the metrics line ends with /metrics")
        .to_owned();
    (agora, metrics)
}

fn get(url: &str) -> (u16, String) {
    let response = reqwest::blocking::get(url).unwrap();
    let status = response.status().as_u16();
    (status, response.text().unwrap())
}

/// The value of the sample written exactly as `series` (name and labels) in `scrape`.
fn sample(scrape: &str, series: &str) -> Option<f64> {
    scrape.lines().find_map(|line| {
        line.strip_prefix(series)
            .and_then(|rest| rest.strip_prefix(' '))
            .and_then(|value| value.trim().parse().ok())
    })
}

#[test]
fn a_scrape_counts_requests_by_route_pattern_and_passes_promtool() {
    let dir = tempfile::tempdir().unwrap();
    let (agora, metrics) = start(dir.path());
    for path in ["/echo/a/1", "/echo/b/2", "/echo/c?x=1", "/nothing/here"] {
        get(&format!("http://{}{path}", agora.addr));
    }
    let (status, scrape) = get(&format!("http://{metrics}/metrics"));
    assert_eq!(status, 200, "{scrape}");

    // The route label is the manifest's pattern, never the path a client chose.
    let echo = "component=\"echo\",route=\"/echo/...\"";
    assert_eq!(
        sample(
            &scrape,
            &format!("agora_http_requests_total{{{echo},method=\"GET\",status_class=\"2xx\"}}")
        ),
        Some(3.0),
        "{scrape}"
    );
    assert!(!scrape.contains("/echo/a/1"), "a raw path became a label");
    assert_eq!(
        sample(
            &scrape,
            "agora_http_requests_total{component=\"\",route=\"\",method=\"GET\",status_class=\"4xx\"}"
        ),
        Some(1.0),
        "the request no component serves is counted without a route: {scrape}"
    );
    assert_eq!(
        sample(
            &scrape,
            &format!("agora_http_request_duration_seconds_count{{{echo}}}")
        ),
        Some(3.0)
    );
    assert_eq!(
        sample(
            &scrape,
            &format!("agora_http_request_duration_seconds_bucket{{{echo},le=\"+Inf\"}}")
        ),
        Some(3.0)
    );
    let instantiations = sample(
        &scrape,
        "agora_instantiation_duration_seconds_count{component=\"echo\"}",
    );
    assert!(
        instantiations.is_some_and(|n| n >= 3.0),
        "{instantiations:?}"
    );
    assert_eq!(
        sample(&scrape, "agora_instances_in_use{component=\"echo\"}"),
        Some(0.0)
    );
    let info = scrape
        .lines()
        .find(|line| line.starts_with("agora_component_info{component=\"echo\",version=\""))
        .expect("agora_component_info of echo");
    assert!(info.ends_with("} 1"), "{info}");
    assert_eq!(sample(&scrape, "agora_ready"), Some(1.0));
    assert_eq!(sample(&scrape, "agora_draining"), Some(0.0));
    assert!(sample(&scrape, "process_resident_memory_bytes").is_some_and(|bytes| bytes > 0.0));
    assert!(sample(&scrape, "process_open_fds").is_some_and(|fds| fds > 0.0));

    if let Some(promtool) = tool("promtool") {
        let mut check = Command::new(promtool)
            .args(["check", "metrics"])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        check
            .stdin
            .take()
            .unwrap()
            .write_all(scrape.as_bytes())
            .unwrap();
        let output = check.wait_with_output().unwrap();
        assert!(
            output.status.success(),
            "promtool check metrics: {}{}\n{scrape}",
            String::from_utf8_lossy(&output.stdout),
            String::from_utf8_lossy(&output.stderr)
        );
    }
    let (code, _) = agora.stop(libc::SIGTERM);
    assert_eq!(code, Some(0));
}

#[test]
fn probes_answer_without_a_token_and_readiness_ends_when_draining() {
    let dir = tempfile::tempdir().unwrap();
    let (agora, metrics) = start(dir.path());
    assert_eq!(get(&format!("http://{metrics}/healthz")).0, 200);
    let (status, body) = get(&format!("http://{metrics}/readyz"));
    assert_eq!(status, 200, "{body}");
    let (status, body) = get(&format!("http://{metrics}/admin/components"));
    assert_eq!(status, 404, "{body}");
    let post = reqwest::blocking::Client::new()
        .post(format!("http://{metrics}/metrics"))
        .send()
        .unwrap();
    assert_eq!(post.status().as_u16(), 405);

    // A request held in flight keeps the host draining after SIGTERM; meanwhile it is alive
    // but not ready.
    let slow = {
        let url = format!("http://{}/echo?sleep_ms=3000", agora.addr);
        std::thread::spawn(move || get(&url).0)
    };
    std::thread::sleep(Duration::from_millis(300));
    common::process::signal(&agora.child, libc::SIGTERM);
    let deadline = Instant::now() + Duration::from_secs(2);
    let (status, body) = loop {
        let answer = get(&format!("http://{metrics}/readyz"));
        if answer.0 != 200 || Instant::now() > deadline {
            break answer;
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    assert_eq!(status, 503, "{body}");
    assert!(body.contains("draining"), "{body}");
    assert_eq!(get(&format!("http://{metrics}/healthz")).0, 200);
    let (_, scrape) = get(&format!("http://{metrics}/metrics"));
    assert_eq!(sample(&scrape, "agora_draining"), Some(1.0));
    assert_eq!(sample(&scrape, "agora_ready"), Some(0.0));
    assert_eq!(
        sample(&scrape, "agora_instances_in_use{component=\"echo\"}"),
        Some(1.0)
    );
    assert_eq!(slow.join().unwrap(), 200, "the in-flight request finished");
    let (code, _) = agora.wait();
    assert_eq!(code, Some(0));
}

#[test]
fn a_backend_that_does_not_answer_makes_the_host_unready_but_alive() {
    let dir = tempfile::tempdir().unwrap();
    // Nothing listens on port 1: the host starts (Redis is connected lazily) and serves, but
    // its cache cannot be reached.
    let (agora, metrics) = start_with(dir.path(), &["--redis-url", "redis://127.0.0.1:1"]);
    assert_eq!(get(&format!("http://{}/echo", agora.addr)).0, 200);
    assert_eq!(get(&format!("http://{metrics}/healthz")).0, 200);
    let (status, body) = get(&format!("http://{metrics}/readyz"));
    assert_eq!(status, 503, "{body}");
    assert!(body.contains("cache (redis)"), "{body}");
    let (_, scrape) = get(&format!("http://{metrics}/metrics"));
    assert_eq!(sample(&scrape, "agora_ready"), Some(0.0));
    assert_eq!(sample(&scrape, "agora_draining"), Some(0.0));
    let (code, _) = agora.stop(libc::SIGTERM);
    assert_eq!(code, Some(0));
}

#[test]
fn a_real_prometheus_scrapes_the_host_and_answers_a_query_about_a_request() {
    let Some(prometheus) = tool("prometheus") else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let (agora, metrics) = start(dir.path());
    for _ in 0..5 {
        assert_eq!(get(&format!("http://{}/echo/promql", agora.addr)).0, 200);
    }
    let config = dir.path().join("prometheus.yml");
    std::fs::write(
        &config,
        format!(
            "global:\n  scrape_interval: 1s\nscrape_configs:\n  - job_name: agora\n    static_configs:\n      - targets: ['{metrics}']\n"
        ),
    )
    .unwrap();
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let _server = common::process::ChildGuard::spawn(
        Command::new(prometheus)
            .arg(format!("--config.file={}", config.display()))
            .arg(format!(
                "--storage.tsdb.path={}",
                dir.path().join("tsdb").display()
            ))
            .arg(format!("--web.listen-address=127.0.0.1:{port}"))
            .stdout(Stdio::null())
            .stderr(Stdio::null()),
    );
    let query = "sum by (component, route) (agora_http_requests_total{component=\"echo\",status_class=\"2xx\"})";
    let client = reqwest::blocking::Client::new();
    let deadline = Instant::now() + Duration::from_secs(60);
    let answer = loop {
        let answer = client
            .get(format!("http://127.0.0.1:{port}/api/v1/query"))
            .query(&[("query", query)])
            .send()
            .ok()
            .and_then(|response| response.json::<serde_json::Value>().ok());
        let value = answer.as_ref().and_then(|answer| {
            answer["data"]["result"][0]["value"][1]
                .as_str()
                .map(str::to_owned)
        });
        if value.is_some() || Instant::now() > deadline {
            break answer;
        }
        std::thread::sleep(Duration::from_millis(250));
    };
    let answer = answer.expect("Prometheus answered the query API");
    let result = &answer["data"]["result"][0];
    assert_eq!(result["metric"]["route"], "/echo/...", "{answer}");
    assert_eq!(result["value"][1], "5", "{answer}");
    let (code, _) = agora.stop(libc::SIGTERM);
    assert_eq!(code, Some(0));
}
