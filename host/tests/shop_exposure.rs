//! The repository's agora.toml, as `cargo xtask dev` serves it, walked by a stranger: every
//! route of every component (the paths of openapi.yaml, each manifest route and policy
//! pattern, the internal and startup routes, the demos' routes) with every method, in upper
//! and lower case, without a token. Nothing but the routes openapi.yaml documents as public
//! (`security: []` or an empty alternative) may answer 2xx — no demo that runs a caller's SQL
//! or publishes to a caller's subject, no internal route, no route a policy protects.

#![allow(clippy::unwrap_used)]

mod common;

use agora_host::manifest::Manifest;
use common::TestHost;
use serde_json::Value;
use std::collections::BTreeSet;
use std::path::{Path, PathBuf};

fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

/// A host serving the repository's manifest `name` as it is, with data of its own in `data`.
async fn serve(name: &str, data: &Path) -> TestHost {
    TestHost::start_with("", |config| {
        config.manifest = root().join(name);
        config.data_dir = data.to_owned();
    })
    .await
}

/// `(METHOD, path template)` of every operation in openapi.yaml, and whether it is public.
fn documented_operations() -> Vec<(String, String, bool)> {
    let text = std::fs::read_to_string(root().join("openapi.yaml")).unwrap();
    let mut operations: Vec<(String, String, bool)> = Vec::new();
    let mut path: Option<String> = None;
    let mut in_paths = false;
    let mut lines = text.lines().peekable();
    while let Some(line) = lines.next() {
        if line.trim().is_empty() || line.trim_start().starts_with('#') {
            continue;
        }
        if !line.starts_with(' ') {
            in_paths = line == "paths:";
            path = None;
            continue;
        }
        if !in_paths {
            continue;
        }
        if let Some(p) = line.strip_prefix("  /") {
            path = Some(format!("/{}", p.trim_end_matches(':')));
            continue;
        }
        let method = line.trim_end().strip_prefix("    ").and_then(|m| {
            let m = m.strip_suffix(':')?;
            ["get", "post", "put", "patch", "delete", "head", "options"]
                .contains(&m)
                .then(|| m.to_ascii_uppercase())
        });
        if let (Some(method), Some(path)) = (method, &path) {
            operations.push((method, path.clone(), false));
            continue;
        }
        if line.trim() == "security: []"
            || (line.trim() == "security:" && lines.peek().is_some_and(|l| l.trim() == "- {}"))
        {
            let last = operations
                .last_mut()
                .expect("security before any operation");
            last.2 = true;
        }
    }
    assert!(
        operations.len() > 20,
        "openapi.yaml parsed to too few operations: {operations:?}"
    );
    operations
}

/// Whether `path` is an instance of `template` (`{x}` = one segment).
fn instance_of(path: &str, template: &str) -> bool {
    let path: Vec<&str> = path.split('/').collect();
    let template: Vec<&str> = template.split('/').collect();
    path.len() == template.len()
        && path
            .iter()
            .zip(&template)
            .all(|(p, t)| (t.starts_with('{') && !p.is_empty()) || p == t)
}

#[tokio::test(flavor = "multi_thread")]
async fn a_stranger_gets_2xx_only_from_the_documented_public_routes() {
    let manifest = Manifest::load(&root().join("agora.toml")).unwrap();
    let data = tempfile::tempdir().unwrap();
    let host = serve("agora.toml", data.path()).await;
    let addr = host.addr;
    let http = reqwest::Client::new();

    // A real product id, so that a public read of it answers (and a protected write of it
    // would too, were it unprotected).
    let products: Value = http
        .get(format!("http://{addr}/api/products"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let product = products["items"][0]["id"].as_str().unwrap().to_owned();
    let unknown = "00000000-0000-4000-8000-000000000000";

    let operations = documented_operations();
    let mut paths: BTreeSet<String> = BTreeSet::new();
    for (_, template, _) in &operations {
        paths.insert(template.replace("{id}", &product));
        paths.insert(template.replace("{id}", unknown));
    }
    for spec in &manifest.components {
        for route in &spec.routes {
            paths.insert(route.replace("/...", ""));
            paths.insert(route.replace("...", "anything"));
        }
        for policy in &spec.policies {
            for pattern in &policy.routes {
                paths.insert(pattern.example());
            }
        }
        if let Some(startup) = &spec.startup {
            paths.insert(startup.clone());
        }
    }
    // Internal routes the components serve to each other, and the demos' routes.
    for path in [
        "/api/products/internal/reserve",
        "/api/products/internal/release",
        "/api/products/internal/seed",
        "/api/accounts/internal/bootstrap",
        "/hello",
        "/example/info",
        "/example/sql",
        "/example/publish/payment.succeeded",
        "/example/notes",
    ] {
        paths.insert(path.to_owned());
    }

    let methods = [
        "GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS", "get", "post", "put", "patch",
        "delete", "PURGE",
    ];
    let mut answered = 0;
    let mut offenders = Vec::new();
    for path in &paths {
        for method in methods {
            let method = reqwest::Method::from_bytes(method.as_bytes()).unwrap();
            let mut request = http.request(method.clone(), format!("http://{addr}{path}"));
            if !matches!(method.as_str(), "GET" | "HEAD" | "OPTIONS" | "get") {
                request = request
                    .header("content-type", "application/json")
                    .body("{}");
            }
            let status = request.send().await.unwrap().status();
            answered += 1;
            if !status.is_success() {
                continue;
            }
            let mut upper = method.as_str().to_ascii_uppercase();
            if upper == "HEAD" {
                upper = "GET".into();
            }
            let public = operations
                .iter()
                .any(|(m, t, public)| *public && *m == upper && instance_of(path, t));
            if !public {
                offenders.push(format!("{method} {path} → {status}"));
            }
        }
    }
    assert!(
        offenders.is_empty(),
        "undocumented or protected routes answered a stranger with 2xx:\n{}",
        offenders.join("\n")
    );
    assert!(answered > 300, "only {answered} requests were made");
    host.stop().await;
}

/// examples/agora.toml serves the demos on their own: it loads as it is and answers.
#[tokio::test(flavor = "multi_thread")]
async fn the_examples_manifest_loads_and_serves() {
    let data = tempfile::tempdir().unwrap();
    let host = serve("examples/agora.toml", data.path()).await;
    let addr = host.addr;
    let info: Value = reqwest::get(format!("http://{addr}/example/info"))
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(info["greeting"], "hello from examples/agora.toml", "{info}");
    let hello = reqwest::get(format!("http://{addr}/hello")).await.unwrap();
    assert_eq!(hello.status(), 200);
    host.stop().await;
}
