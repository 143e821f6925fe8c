//! agora's first look (`agora:platform/first-look`, `wit/first-look.wit`): a component that
//! exports it answers a request without a body in one call, as a value; a request it passes on,
//! and every request with a body, reaches its wasi:http handler on the same instance; a cached
//! answer is read from the component's cache by the host. Real components
//! (fixture-hello-first-look, fixture-cached-first-look, built with `agora_sdk::serve_http!`),
//! real HTTP, the in-memory cache and Redis.

#![allow(clippy::unwrap_used)]

mod common;

use common::{TestHost, component_table, json_error, redis_url_or_skip, unique_name};
use std::time::Duration;

fn hello(instances: &str) -> String {
    component_table(
        "hello",
        "fixture-hello-first-look",
        &["/..."],
        &format!("instances = {{ {instances} }}"),
    )
}

/// Waits until `hello`'s instance is back idle: the client has its answer before the guest's
/// call returns (bounded: a hang guard, not a timing check).
async fn until_idle(host: &TestHost) {
    for _ in 0..500 {
        if host.component("hello").instances.idle() == 1 {
            return;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    panic!("hello's instance never came back idle");
}

async fn get(host: &TestHost, path: &str) -> reqwest::Response {
    let response = reqwest::get(host.url(path)).await.unwrap();
    if response.status().is_success() {
        // The same instance must serve the next request of the test.
        until_idle(host).await;
    }
    response
}

#[tokio::test(flavor = "multi_thread")]
async fn a_request_without_a_body_is_answered_whole_at_the_first_look() {
    let host = TestHost::start(&hello("reuse = 100")).await;
    let response = get(&host, "/").await;
    assert_eq!(response.status(), 200);
    // Given whole: sent with its length, not streamed in chunks as wasi:http's body is.
    assert_eq!(response.headers()["content-length"], "14");
    assert!(response.headers().get("transfer-encoding").is_none());
    assert!(response.headers().contains_key("x-request-id"));
    assert_eq!(response.text().await.unwrap(), "Hello, world!\n");

    // The same instance looked at both (reuse is kept through the first look).
    assert_eq!(get(&host, "/count").await.text().await.unwrap(), "2");
    // A HEAD is looked at too, and gets no body.
    let head = reqwest::Client::new()
        .head(host.url("/"))
        .send()
        .await
        .unwrap();
    assert_eq!(head.status(), 200);
    until_idle(&host).await;
    assert_eq!(get(&host, "/count").await.text().await.unwrap(), "4");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_request_passed_on_or_with_a_body_reaches_wasi_http_on_the_same_instance() {
    let host = TestHost::start(&hello("reuse = 100")).await;
    assert_eq!(get(&host, "/count").await.text().await.unwrap(), "1");
    // Passed on: the wstd handler answers, and the handler's own first look did not run again
    // (the count is the host's one look at /pass).
    let passed = get(&host, "/pass").await;
    assert_eq!(passed.status(), 200);
    assert_eq!(passed.text().await.unwrap(), "passed on; 2");
    assert_eq!(get(&host, "/count").await.text().await.unwrap(), "3");

    // With a body the host does not look: wasi:http's handler does, and streams its answer.
    let posted = reqwest::Client::new()
        .post(host.url("/"))
        .body("a body")
        .send()
        .await
        .unwrap();
    assert_eq!(posted.status(), 200);
    assert_eq!(posted.headers()["transfer-encoding"], "chunked");
    assert_eq!(posted.text().await.unwrap(), "Hello, world!\n");
    until_idle(&host).await;
    assert_eq!(get(&host, "/count").await.text().await.unwrap(), "5");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_first_look_that_traps_or_answers_badly_fails_only_its_request() {
    let host = TestHost::start(&hello("reuse = 100")).await;
    assert_eq!(get(&host, "/count").await.text().await.unwrap(), "1");

    let (code, message, _) = json_error(get(&host, "/forbidden").await, 500).await;
    assert_eq!(code, "component_error");
    assert!(message.contains("connection"), "{message}");
    // A refused answer is the guest's mistake, not a trap: its instance stays.
    until_idle(&host).await;
    assert_eq!(get(&host, "/count").await.text().await.unwrap(), "3");

    let (code, _, _) = json_error(get(&host, "/trap").await, 500).await;
    assert_eq!(code, "component_trapped");
    // The trap retired the instance: a fresh one counts from 1.
    assert_eq!(get(&host, "/count").await.text().await.unwrap(), "1");
    assert_eq!(
        get(&host, "/").await.text().await.unwrap(),
        "Hello, world!\n"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn a_fresh_instance_per_request_answers_at_the_first_look_too() {
    let host = TestHost::start(&component_table(
        "hello",
        "fixture-hello-first-look",
        &["/..."],
        "",
    ))
    .await;
    for _ in 0..3 {
        let response = reqwest::get(host.url("/count")).await.unwrap();
        assert_eq!(response.status(), 200);
        assert_eq!(response.text().await.unwrap(), "1");
    }
}

/// `name`, a fixture-cached-first-look reusing its instance, granted the cache.
fn cached(name: &str) -> String {
    component_table(
        name,
        "fixture-cached-first-look",
        &["/..."],
        "instances = { reuse = 100 }\ngrants = { cache = true }",
    )
}

/// Sends `request` and, when it succeeded, waits until `name`'s one instance is idle again.
async fn sent(host: &TestHost, name: &str, request: reqwest::RequestBuilder) -> reqwest::Response {
    let response = request.send().await.unwrap();
    for _ in 0..500 {
        if host.component(name).instances.idle() == 1 {
            return response;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    panic!("{name}'s instance never came back idle");
}

/// The cache reads the instance's guest made itself.
async fn guest_reads(host: &TestHost, name: &str, http: &reqwest::Client) -> String {
    let reads = sent(host, name, http.get(host.url("/reads"))).await;
    assert_eq!(reads.status(), 200);
    reads.text().await.unwrap()
}

/// A cached answer, end to end: the host reads the value after the look, a miss reaches the
/// handler (which does not read that key again), a request with a body has the handler's own
/// look read it, and a key the cache refuses fails only its request.
async fn cached_answers(host: &TestHost, name: &str) {
    let http = reqwest::Client::new();
    let missed = sent(host, name, http.get(host.url("/cached/greeting"))).await;
    assert_eq!(missed.status(), 404);
    assert_eq!(missed.headers()["x-from"], "handler");
    // The handler was told the host had just missed that key.
    assert_eq!(missed.text().await.unwrap(), "passed on; missed: true");
    assert_eq!(guest_reads(host, name, &http).await, "0");

    let value = "hello from the cache";
    let stored = sent(
        host,
        name,
        http.put(host.url("/value/greeting")).body(value),
    )
    .await;
    assert_eq!(stored.status(), 204);
    let hit = sent(host, name, http.get(host.url("/cached/greeting"))).await;
    assert_eq!(hit.status(), 200);
    assert_eq!(hit.headers()["x-from"], "first-look");
    assert_eq!(hit.headers()["content-length"], value.len().to_string());
    assert!(hit.headers().contains_key("x-request-id"));
    assert_eq!(hit.text().await.unwrap(), value);
    // The host read it: the guest did not.
    assert_eq!(guest_reads(host, name, &http).await, "0");

    // With a body the host does not look; the handler's own look reads the value itself.
    let posted = sent(
        host,
        name,
        http.post(host.url("/cached/greeting")).body("a body"),
    )
    .await;
    assert_eq!(posted.status(), 200);
    assert_eq!(posted.headers()["x-from"], "first-look");
    assert_eq!(posted.text().await.unwrap(), value);
    assert_eq!(guest_reads(host, name, &http).await, "1");

    // A key `cache.get` refuses fails the request, naming why; the instance serves on.
    let long = "k".repeat(600);
    let refused = http
        .get(host.url(&format!("/cached/{long}")))
        .send()
        .await
        .unwrap();
    let (code, message, _) = json_error(refused, 500).await;
    assert_eq!(code, "component_error");
    assert!(message.contains("512-byte"), "{message}");
    let again = sent(host, name, http.get(host.url("/cached/greeting"))).await;
    assert_eq!(again.text().await.unwrap(), value);
    assert_eq!(guest_reads(host, name, &http).await, "1");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_cached_answer_is_read_by_the_host_on_the_in_memory_cache() {
    let host = TestHost::start(&cached("cached")).await;
    cached_answers(&host, "cached").await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_cached_answer_is_read_by_the_host_on_redis() {
    let Some(url) = redis_url_or_skip() else {
        return;
    };
    // Its own namespace in Redis: the keys of other runs are not this one's.
    let name = unique_name("cached");
    let host = TestHost::start_with(&cached(&name), |config| config.redis_url = Some(url)).await;
    cached_answers(&host, &name).await;
}
