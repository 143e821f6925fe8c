//! Instance reuse (`[component.instances] reuse = N`): an instance serves up to N requests of
//! its component, one at a time, and is retired by a trap, a deadline, a memory refusal, host
//! resources left open, a swap, or idleness. Real components (fixture-reuse answers with how
//! many requests its instance has served), real HTTP.

#![allow(clippy::unwrap_used)]

mod common;

use common::{TestHost, component, component_table, json_error};
use std::time::Duration;

const ADMIN_TOKEN: &str = "reuse-test-admin-token";

/// The fixture's grants: it imports the cache and publishes (for the event tests).
const GRANTS: &str = "grants = { cache = true, publish = [\"reuse.ping\"] }";

fn reusing(name: &str, instances: &str, limits: &str) -> String {
    component_table(
        name,
        "fixture-reuse",
        &[&format!("/{name}")],
        &format!("{GRANTS}\nlimits = {{ {limits} }}\ninstances = {{ {instances} }}"),
    )
}

/// `GET path`: the status and the count the fixture answered (0 for an error).
async fn served(host: &TestHost, path: &str) -> (u16, u64) {
    let response = reqwest::get(host.url(path)).await.unwrap();
    let status = response.status().as_u16();
    let body = response.text().await.unwrap();
    (status, body.trim().parse().unwrap_or(0))
}

/// Waits until `name`'s instance is back among the idle ones: the client has its response
/// before the guest's call returns, so the next request could otherwise race the return
/// (bounded: a hang guard, not a timing check).
async fn until_idle(host: &TestHost, name: &str, count: usize) {
    for _ in 0..500 {
        if host.component(name).instances.idle() == count {
            return;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    panic!("{name} never had {count} idle instances");
}

/// Waits until no request of `name` is running (its guest calls have returned).
async fn wait_no_instance_running(host: &TestHost, name: &str) {
    for _ in 0..500 {
        if host.in_flight(name) == 0 {
            return;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    panic!("{name} still runs a request");
}

/// Requests `/name` once and waits for its instance to come back idle; returns the count.
async fn next(host: &TestHost, name: &str) -> u64 {
    let (status, count) = served(host, &format!("/{name}")).await;
    assert_eq!(status, 200);
    until_idle(host, name, 1).await;
    count
}

#[tokio::test(flavor = "multi_thread")]
async fn by_default_every_request_gets_a_fresh_instance() {
    let manifest = component_table("fresh", "fixture-reuse", &["/fresh"], GRANTS);
    let host = TestHost::start(&manifest).await;
    for _ in 0..3 {
        assert_eq!(served(&host, "/fresh").await, (200, 1));
    }
    assert_eq!(host.component("fresh").instances.idle(), 0);
}

#[tokio::test(flavor = "multi_thread")]
async fn an_instance_serves_up_to_reuse_requests_of_its_own_component() {
    let manifest = [
        reusing("a", "reuse = 3", "concurrency = 4"),
        reusing("b", "reuse = 3", "concurrency = 4"),
    ]
    .concat();
    let host = TestHost::start(&manifest).await;
    let mut counts = Vec::new();
    for _ in 0..2 {
        counts.push(next(&host, "a").await);
    }
    let scrape = metrics(&host).await;
    assert!(
        scrape.contains("agora_instances_idle{component=\"a\"} 1\n"),
        "{scrape}"
    );
    // Another component never gets `a`'s instance, though both run the same code.
    let (status, b) = served(&host, "/b").await;
    assert_eq!((status, b), (200, 1));
    // The third request is the instance's last: it does not come back, the fourth gets a
    // fresh one.
    let (status, third) = served(&host, "/a").await;
    assert_eq!(status, 200);
    counts.push(third);
    wait_no_instance_running(&host, "a").await;
    assert_eq!(host.component("a").instances.idle(), 0);
    counts.push(next(&host, "a").await);
    assert_eq!(counts, [1, 2, 3, 1]);
}

/// Brings `r` to an instance that has served two requests, then requests `/r?query` and
/// checks that the instance did not come back: the next request gets a fresh one. Returns the
/// status `?query` got.
async fn retired_by(host: &TestHost, query: &str) -> u16 {
    assert_eq!(next(host, "r").await, 1, "before ?{query}");
    assert_eq!(next(host, "r").await, 2, "before ?{query}");
    let status = served(host, &format!("/r?{query}")).await.0;
    wait_no_instance_running(host, "r").await;
    assert_eq!(host.component("r").instances.idle(), 0, "after ?{query}");
    assert_eq!(next(host, "r").await, 1, "after ?{query}");
    // Retire that one too, so the next round starts from no instance.
    assert_eq!(served(host, "/r?trap").await.0, 500);
    status
}

#[tokio::test(flavor = "multi_thread")]
async fn a_trap_a_deadline_a_memory_refusal_and_held_resources_retire_the_instance() {
    let manifest = reusing("r", "reuse = 100", "deadline_ms = 1000, memory_mib = 32");
    let host = TestHost::start(&manifest).await;
    assert_eq!(retired_by(&host, "trap").await, 500);
    assert_eq!(retired_by(&host, "spin").await, 504);
    assert_eq!(retired_by(&host, "hog").await, 500);
    // Held resources end the instance, not the request.
    assert_eq!(retired_by(&host, "hold").await, 200);
}

#[tokio::test(flavor = "multi_thread")]
async fn the_errors_of_a_reused_instance_are_the_usual_ones() {
    let manifest = reusing("r", "reuse = 100", "deadline_ms = 1000, memory_mib = 32");
    let host = TestHost::start(&manifest).await;
    assert_eq!(next(&host, "r").await, 1);
    let (code, _, _) = json_error(reqwest::get(host.url("/r?trap")).await.unwrap(), 500).await;
    assert_eq!(code, "component_trapped");
    assert_eq!(next(&host, "r").await, 1);
    let (code, _, _) = json_error(reqwest::get(host.url("/r?spin")).await.unwrap(), 504).await;
    assert_eq!(code, "deadline_exceeded");
    assert_eq!(next(&host, "r").await, 1);
    let (code, _, _) = json_error(reqwest::get(host.url("/r?hog")).await.unwrap(), 500).await;
    assert_eq!(code, "memory_limit_exceeded");
    assert_eq!(next(&host, "r").await, 1);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_swap_and_a_rollback_retire_the_instances_of_the_version_going_out() {
    let manifest = reusing("r", "reuse = 100", "concurrency = 4");
    let host = TestHost::start_full(&manifest, |_| {}, Some(ADMIN_TOKEN)).await;
    let admin = format!("http://{}/admin/components/r", host.admin_addr.unwrap());
    let client = reqwest::Client::new();
    assert_eq!(next(&host, "r").await, 1);
    assert_eq!(next(&host, "r").await, 2);

    // The same code under another digest: a swap that changes nothing but the version.
    let original = std::fs::read(component("fixture-reuse")).unwrap();
    let variant = common::with_custom_section(&original, "agora-test", b"variant");
    let swapped = client
        .put(&admin)
        .bearer_auth(ADMIN_TOKEN)
        .body(variant)
        .send()
        .await
        .unwrap();
    assert_eq!(swapped.status(), 200);
    assert_eq!(next(&host, "r").await, 1, "the new version starts afresh");
    assert_eq!(next(&host, "r").await, 2);

    let rolled_back = client
        .post(format!("{admin}/rollback"))
        .bearer_auth(ADMIN_TOKEN)
        .send()
        .await
        .unwrap();
    assert_eq!(rolled_back.status(), 200);
    // The first version's instance (which had served 2) was retired at the swap.
    assert_eq!(
        next(&host, "r").await,
        1,
        "the rolled-back version starts afresh"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn an_idle_instance_is_dropped_after_idle_ms() {
    let manifest = reusing("r", "reuse = 100, idle_ms = 50", "concurrency = 4");
    let host = TestHost::start(&manifest).await;
    assert_eq!(next(&host, "r").await, 1);
    assert_eq!(next(&host, "r").await, 2);
    // The sweeper drops it without a request coming (bounded wait).
    until_idle(&host, "r", 0).await;
    assert_eq!(served(&host, "/r").await, (200, 1));
}

/// A component handling `reuse.ping` events (and publishing them on `?publish=TAG`), with
/// `instances` as its `[component.instances]`.
fn handling_events(instances: &str) -> String {
    component_table(
        "ev",
        "fixture-reuse",
        &["/ev"],
        &format!(
            "{GRANTS}\ninstances = {{ {instances} }}\n\
             [component.messaging]\nsubscribe = [\"reuse.ping\"]\nmax_deliver = 1\n"
        ),
    )
}

/// Publishes `tag` and waits until its event was handled and its instance is back (or gone):
/// the count of events that instance had handled, 0 when the handler failed. Bounded.
async fn event(host: &TestHost, tag: &str) -> u64 {
    assert_eq!(served(host, &format!("/ev?publish={tag}")).await.0, 200);
    for _ in 0..500 {
        let (status, count) = served(host, &format!("/ev?event={tag}")).await;
        if status == 200 || tag == "trap" && dead_lettered(host).await == 1 {
            wait_no_instance_running(host, "ev").await;
            return count;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    panic!("event {tag} was never handled");
}

/// The host's `/metrics` page.
async fn metrics(host: &TestHost) -> String {
    reqwest::get(format!("http://{}/metrics", host.metrics_addr))
        .await
        .unwrap()
        .text()
        .await
        .unwrap()
}

/// Events of `ev` dead-lettered so far, from `/metrics`.
async fn dead_lettered(host: &TestHost) -> u64 {
    metrics(host)
        .await
        .lines()
        .find(|line| {
            line.starts_with("agora_events_total{")
                && line.contains("component=\"ev\"")
                && line.contains("dead_lettered")
        })
        .and_then(|line| line.rsplit(' ').next()?.parse().ok())
        .unwrap_or(0)
}

#[tokio::test(flavor = "multi_thread")]
async fn events_reuse_instances_too_and_a_failing_handler_retires_its_instance() {
    let host = TestHost::start(&handling_events("reuse = 100")).await;
    assert_eq!(event(&host, "a").await, 1);
    assert_eq!(event(&host, "b").await, 2);
    assert_eq!(event(&host, "c").await, 3);
    // The handler traps: its instance is dropped (the event is dead-lettered, max_deliver = 1).
    event(&host, "trap").await;
    assert_eq!(event(&host, "d").await, 1);
}

#[tokio::test(flavor = "multi_thread")]
async fn by_default_every_event_gets_a_fresh_instance() {
    let host = TestHost::start(&handling_events("reuse = 1")).await;
    assert_eq!(event(&host, "a").await, 1);
    assert_eq!(event(&host, "b").await, 1);
}

/// The bench's two hellos (`cargo xtask bench hello`) give the same answer, reused: hello on
/// wstd and fixture-hello-wasi on wasi:http's own bindings. The bench compares their speed,
/// so they must do the same work for the client.
#[tokio::test(flavor = "multi_thread")]
async fn hello_on_wasi_bindings_answers_as_hello_does_and_is_reused() {
    let manifest = [
        component_table("hello", "hello", &["/hello"], "instances = { reuse = 10 }"),
        component_table(
            "wasi",
            "fixture-hello-wasi",
            &["/wasi"],
            "instances = { reuse = 10 }",
        ),
    ]
    .concat();
    let host = TestHost::start(&manifest).await;
    for _ in 0..3 {
        let mut answers = Vec::new();
        for name in ["hello", "wasi"] {
            let response = reqwest::get(host.url(&format!("/{name}"))).await.unwrap();
            let mut headers: Vec<String> = response
                .headers()
                .keys()
                .filter(|name| *name != "x-request-id" && *name != "date")
                .map(ToString::to_string)
                .collect();
            headers.sort();
            answers.push((
                response.status().as_u16(),
                headers,
                response.text().await.unwrap(),
            ));
            until_idle(&host, name, 1).await;
        }
        assert_eq!(
            answers[0],
            (200, answers[0].1.clone(), "Hello, world!\n".into())
        );
        assert_eq!(answers[1], answers[0]);
    }
}
