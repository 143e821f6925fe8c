//! wasi:keyvalue@0.2.0-draft2 from a component written against the standard interfaces (not
//! agora's SDK), over real HTTP, on both cache backends: the in-memory default and the
//! machine's Redis. The capability is a unit (`capabilities/keyvalue`), added to the host
//! by one line.

#![allow(clippy::unwrap_used)]

mod common;

use agora_host::{Host, HostConfig};
use common::{TestHost, component_table, redis_url_or_skip, unique_name};
use serde_json::{Value, json};

/// The most keys the first component may hold.
const MAX_KEYS: u64 = 150;

async fn start(redis_url: Option<String>) -> (TestHost, String, String) {
    let (alpha, beta) = (unique_name("kv-alpha"), unique_name("kv-beta"));
    let manifest = [
        component_table(
            &alpha,
            "fixture-keyvalue",
            &["/alpha"],
            &format!(
                "grants = {{ keyvalue = [\"default\", \"sessions\"] }}\n\
                 [component.limits]\ncache_keys = {MAX_KEYS}\ncache_value_kib = 1"
            ),
        ),
        component_table(
            &beta,
            "fixture-keyvalue",
            &["/beta"],
            "grants = { keyvalue = true }",
        ),
    ]
    .concat();
    let host = TestHost::start_with(&manifest, |config| config.redis_url = redis_url).await;
    (host, alpha, beta)
}

/// Runs `ops` in the component at `path`; the list of their results.
async fn run(host: &TestHost, path: &str, ops: Value) -> Vec<Value> {
    let response = reqwest::Client::new()
        .post(host.url(path))
        .body(ops.to_string())
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    let answer: Value = response.json().await.unwrap();
    answer
        .as_array()
        .cloned()
        .unwrap_or_else(|| panic!("{answer}"))
}

async fn scenario(host: &TestHost, backend: &str) {
    let results = run(
        host,
        "/alpha",
        json!([
            { "op": "get", "key": "greeting" },
            { "op": "exists", "key": "greeting" },
            { "op": "set", "key": "greeting", "value": "hello" },
            { "op": "get", "key": "greeting" },
            { "op": "exists", "key": "greeting" },
            { "op": "get", "bucket": "sessions", "key": "greeting" },
            { "op": "set", "bucket": "sessions", "key": "s1", "value": "alice" },
            { "op": "increment", "key": "visits", "delta": 5 },
            { "op": "increment", "key": "visits", "delta": -2 },
            { "op": "increment", "key": "greeting", "delta": 1 },
            { "op": "get", "bucket": "missing", "key": "x" },
            { "op": "delete", "key": "greeting" },
            { "op": "get", "key": "greeting" },
        ]),
    )
    .await;
    let expected = [
        json!({ "value": null }),
        json!({ "exists": false }),
        json!({ "ok": true }),
        json!({ "value": "hello" }),
        json!({ "exists": true }),
        // Buckets are apart: the same key in another bucket is another value.
        json!({ "value": null }),
        json!({ "ok": true }),
        json!({ "value": 5 }),
        json!({ "value": 3 }),
    ];
    for (index, want) in expected.iter().enumerate() {
        assert_eq!(
            &results[index], want,
            "{backend}: operation {index}: {results:?}"
        );
    }
    let not_a_number = results[9]["error"].as_str().unwrap_or("");
    assert!(
        not_a_number.contains("not a decimal"),
        "{backend}: {results:?}"
    );
    assert_eq!(
        results[10],
        json!({ "error": "Error::NoSuchStore" }),
        "{backend}"
    );
    assert_eq!(results[12], json!({ "value": null }), "{backend}");

    // Another component sees none of these keys, in a bucket of the same name.
    let other = run(
        host,
        "/beta",
        json!([
            { "op": "get", "key": "visits" },
            { "op": "list" },
            { "op": "get", "bucket": "sessions", "key": "s1" },
        ]),
    )
    .await;
    assert_eq!(other[0], json!({ "value": null }), "{backend}: {other:?}");
    assert_eq!(
        other[1],
        json!({ "keys": [], "pages": 1 }),
        "{backend}: {other:?}"
    );
    // beta's grant names only `default`.
    assert_eq!(
        other[2],
        json!({ "error": "Error::NoSuchStore" }),
        "{backend}"
    );

    // Compare-and-swap: over the value seen, and refused (with the value now there) when
    // another write came first.
    let cas = run(
        host,
        "/alpha",
        json!([
            { "op": "cas", "key": "counter", "value": "1" },
            { "op": "cas", "key": "counter", "value": "2" },
            { "op": "cas", "key": "counter", "value": "3", "meanwhile": "9" },
            { "op": "get", "key": "counter" },
        ]),
    )
    .await;
    assert_eq!(
        cas[0],
        json!({ "swapped": true, "seen": null }),
        "{backend}"
    );
    assert_eq!(cas[1], json!({ "swapped": true, "seen": "1" }), "{backend}");
    assert_eq!(
        cas[2],
        json!({ "swapped": false, "seen": "2", "current": "9" }),
        "{backend}"
    );
    assert_eq!(cas[3], json!({ "value": "9" }), "{backend}");

    // Batch operations and a listing that pages (100 keys a page).
    let pairs: serde_json::Map<String, Value> = (0..120)
        .map(|i| (format!("item-{i:03}"), Value::String(format!("v{i}"))))
        .collect();
    let batch = run(
        host,
        "/alpha",
        json!([
            { "op": "set_many", "pairs": pairs },
            { "op": "get_many", "keys": ["item-000", "item-119", "absent"] },
            { "op": "list" },
            { "op": "delete_many", "keys": ["item-000", "item-001"] },
            { "op": "exists", "key": "item-000" },
        ]),
    )
    .await;
    assert_eq!(batch[0], json!({ "ok": true }), "{backend}: {batch:?}");
    assert_eq!(
        batch[1],
        json!({ "values": [["item-000", "v0"], ["item-119", "v119"], ["absent", null]] }),
        "{backend}"
    );
    let listed: Vec<&str> = batch[2]["keys"]
        .as_array()
        .unwrap()
        .iter()
        .map(|key| key.as_str().unwrap())
        .collect();
    let mut want: Vec<String> = (0..120).map(|i| format!("item-{i:03}")).collect();
    want.extend(["counter".into(), "visits".into()]);
    want.sort();
    assert_eq!(
        listed, want,
        "{backend}: every key of the bucket, once, in order"
    );
    assert_eq!(batch[2]["pages"], 2, "{backend}");
    assert_eq!(batch[4], json!({ "exists": false }), "{backend}");

    // The component's limits hold: its value cap, and its key quota across its buckets.
    let limits = run(
        host,
        "/alpha",
        json!([
            { "op": "set", "key": "big", "value": "x".repeat(2000) },
            { "op": "set_many", "pairs": (0..40)
                .map(|i| (format!("more-{i}"), Value::String("v".into())))
                .collect::<serde_json::Map<String, Value>>() },
        ]),
    )
    .await;
    let big = limits[0]["error"].as_str().unwrap_or("");
    assert!(big.contains("1024-byte limit"), "{backend}: {limits:?}");
    let quota = limits[1]["error"].as_str().unwrap_or("");
    assert!(
        quota.contains(&format!("{MAX_KEYS} keys")),
        "{backend}: {limits:?}"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn a_wasi_keyvalue_component_runs_on_the_memory_backend() {
    let (host, _, _) = start(None).await;
    scenario(&host, "memory").await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_wasi_keyvalue_component_runs_on_redis() {
    let Some(url) = redis_url_or_skip() else {
        return;
    };
    let (host, _, _) = start(Some(url)).await;
    scenario(&host, "redis").await;
}

/// Loads `manifest` (written to a file) and returns the load error's message.
async fn load_error(manifest: &str) -> String {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("agora.toml");
    std::fs::write(&path, manifest).unwrap();
    let mut config = HostConfig::new(&path);
    config.data_dir = common::shared_data_dir();
    match Host::load(&config).await {
        Ok(_) => panic!("the manifest must not load:\n{manifest}"),
        Err(err) => err.to_string(),
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn keyvalue_grants_are_checked_at_load() {
    // Importing wasi:keyvalue without the grant: the hint names it.
    let message = load_error(&component_table(
        "nogrant",
        "fixture-keyvalue",
        &["/kv"],
        "",
    ))
    .await;
    assert!(message.contains("component `nogrant`"), "{message}");
    assert!(message.contains("wasi:keyvalue/store"), "{message}");
    assert!(message.contains("keyvalue = true"), "{message}");

    // A grant of nothing is no grant.
    let message = load_error(&component_table(
        "nothing",
        "fixture-keyvalue",
        &["/kv"],
        "grants = { keyvalue = false }",
    ))
    .await;
    assert!(message.contains("grants no keyvalue"), "{message}");

    // A malformed grant, and a grant no capability answers to.
    let message = load_error(&component_table(
        "bad",
        "fixture-keyvalue",
        &["/kv"],
        "grants = { keyvalue = \"default\" }",
    ))
    .await;
    assert!(message.contains("grants.keyvalue must be"), "{message}");
    let message = load_error(&component_table(
        "typo",
        "hello",
        &["/hello"],
        "grants = { keyvalues = true }",
    ))
    .await;
    assert!(message.contains("unknown grant `keyvalues`"), "{message}");
    assert!(message.contains("keyvalue"), "{message}");
}
