//! agora:platform/cache from a real component over real HTTP, on both backends: the in-memory
//! default and the machine's Redis.

#![allow(clippy::unwrap_used)]

mod common;

use agora_host::{Host, HostConfig};
use common::{TestHost, component_table, redis_url_or_skip, unique_name};
use std::time::Duration;

const GRANTED: &str = "grants = { cache = true }";

async fn start(redis_url: Option<String>) -> (TestHost, String, String) {
    let (alpha, beta) = (unique_name("alpha"), unique_name("beta"));
    let manifest = [
        component_table(&alpha, "fixture-cache", &["/alpha/..."], GRANTED),
        component_table(&beta, "fixture-cache", &["/beta/..."], GRANTED),
        component_table("hello", "hello", &["/hello"], ""),
    ]
    .concat();
    let host = TestHost::start_with(&manifest, |config| config.redis_url = redis_url).await;
    (host, alpha, beta)
}

async fn status_and_text(response: reqwest::Response) -> (u16, String) {
    (response.status().as_u16(), response.text().await.unwrap())
}

/// The same scenario on whichever backend the host was started with.
async fn scenario(host: &TestHost) {
    let http = reqwest::Client::new();
    let put = |path: &str, body: &'static str| http.put(host.url(path)).body(body).send();
    let post = |path: &str| http.post(host.url(path)).send();
    let get = |path: &str| http.get(host.url(path)).send();
    let get_status = async |path: &str| get(path).await.unwrap().status().as_u16();

    assert_eq!(put("/alpha/greeting", "hi").await.unwrap().status(), 204);
    let (status, text) = status_and_text(get("/alpha/greeting").await.unwrap()).await;
    assert_eq!((status, text.as_str()), (200, "hi"));

    // Another component does not see alpha's keys.
    assert_eq!(get_status("/beta/greeting").await, 404);

    // Counters.
    for expected in [2, 4] {
        let response = post("/alpha/visits/incr?by=2").await.unwrap();
        let body: serde_json::Value = response.json().await.unwrap();
        assert_eq!(body["value"], expected);
    }
    assert_eq!(put("/alpha/word", "abc").await.unwrap().status(), 204);
    let (status, text) = status_and_text(post("/alpha/word/incr").await.unwrap()).await;
    assert_eq!(status, 409, "{text}");
    assert!(text.contains("not_a_number"), "{text}");

    // Delete.
    let response = http
        .delete(host.url("/alpha/greeting"))
        .send()
        .await
        .unwrap();
    let body: serde_json::Value = response.json().await.unwrap();
    assert_eq!(body["deleted"], true);
    assert_eq!(get_status("/alpha/greeting").await, 404);

    // Expiry.
    assert_eq!(
        put("/alpha/flash?ttl_ms=1000", "x").await.unwrap().status(),
        204
    );
    assert_eq!(get_status("/alpha/flash").await, 200);
    tokio::time::sleep(Duration::from_millis(1500)).await;
    assert_eq!(get_status("/alpha/flash").await, 404);

    // Bad input is an error value the guest turns into 400.
    let (status, text) = status_and_text(put("/alpha/flash?ttl_ms=0", "x").await.unwrap()).await;
    assert_eq!(status, 400, "{text}");
    assert!(text.contains("ttl-ms"), "{text}");

    for key in ["visits", "word"] {
        http.delete(host.url(&format!("/alpha/{key}")))
            .send()
            .await
            .unwrap();
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn the_cache_over_http_on_the_in_memory_backend() {
    let (host, _, _) = start(None).await;
    scenario(&host).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn the_cache_over_http_on_redis() {
    let Some(url) = redis_url_or_skip() else {
        return;
    };
    let (host, alpha, _) = start(Some(url.clone())).await;
    scenario(&host).await;

    // The keys really live in Redis, under the component's namespace.
    let http = reqwest::Client::new();
    http.put(host.url("/alpha/seen-by-redis"))
        .body("yes")
        .send()
        .await
        .unwrap();
    let direct = agora_cache::RedisCache::new(&url).unwrap();
    let stored = agora_cache::CacheBackend::get(&direct, &format!("agora:{alpha}:seen-by-redis"))
        .await
        .unwrap();
    assert_eq!(stored.as_deref(), Some(&b"yes"[..]));
    agora_cache::CacheBackend::delete(
        &direct,
        &format!("agora:{alpha}:seen-by-redis"),
        &format!("agora:{alpha}:"),
    )
    .await
    .unwrap();
}

#[tokio::test(flavor = "multi_thread")]
async fn redis_down_is_an_error_value_and_others_are_served() {
    let (host, _, _) = start(Some("redis://127.0.0.1:1".into())).await;
    let http = reqwest::Client::new();
    let (status, text) =
        status_and_text(http.get(host.url("/alpha/anything")).send().await.unwrap()).await;
    assert_eq!(status, 503, "{text}");
    assert!(text.contains("unavailable"), "{text}");
    assert_eq!(
        http.get(host.url("/hello")).send().await.unwrap().status(),
        200
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn importing_the_cache_without_a_grant_fails_to_load() {
    let dir = tempfile::tempdir().unwrap();
    let manifest = dir.path().join("agora.toml");
    std::fs::write(
        &manifest,
        component_table("nogrant", "fixture-cache", &["/c/..."], ""),
    )
    .unwrap();
    let mut config = HostConfig::new(&manifest);
    config.data_dir = common::shared_data_dir();
    let Err(err) = Host::load(&config).await else {
        panic!("a component importing an ungranted capability must not load");
    };
    let message = err.to_string();
    assert!(message.contains("component `nogrant`"), "{message}");
    assert!(message.contains("agora:platform/cache"), "{message}");
    assert!(message.contains("grants no cache"), "{message}");
}

#[tokio::test]
async fn the_admin_api_counts_each_components_hits_and_misses() {
    let (alpha, beta) = (unique_name("alpha"), unique_name("beta"));
    let manifest = [
        component_table(&alpha, "fixture-cache", &["/alpha/..."], GRANTED),
        component_table(&beta, "fixture-cache", &["/beta/..."], GRANTED),
    ]
    .concat();
    let token = "an-admin-token-for-tests";
    let host = TestHost::start_full(&manifest, |_| {}, Some(token)).await;
    let http = reqwest::Client::new();
    assert_eq!(
        http.get(host.url("/alpha/k"))
            .send()
            .await
            .unwrap()
            .status(),
        404
    );
    assert_eq!(
        http.put(host.url("/alpha/k"))
            .body("v")
            .send()
            .await
            .unwrap()
            .status(),
        204
    );
    for _ in 0..2 {
        assert_eq!(
            http.get(host.url("/alpha/k"))
                .send()
                .await
                .unwrap()
                .status(),
            200
        );
    }
    let listed: serde_json::Value = http
        .get(format!(
            "http://{}/admin/components",
            host.admin_addr.unwrap()
        ))
        .bearer_auth(token)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let cache_of = |name: &str| {
        listed["items"]
            .as_array()
            .unwrap()
            .iter()
            .find(|c| c["name"] == name)
            .unwrap()["cache"]
            .clone()
    };
    assert_eq!(
        cache_of(&alpha),
        serde_json::json!({ "hits": 2, "misses": 1 })
    );
    assert_eq!(
        cache_of(&beta),
        serde_json::json!({ "hits": 0, "misses": 0 })
    );
    host.stop().await;
}
