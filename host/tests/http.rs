//! The HTTP trigger over real HTTP: routing, isolation of failing guests, and each limit.

#![allow(clippy::unwrap_used)]

mod common;

use common::{TestHost, component_table, json_error};
use std::time::Duration;

fn client() -> reqwest::Client {
    reqwest::Client::builder()
        .timeout(Duration::from_secs(30))
        .build()
        .unwrap()
}

async fn echo(response: reqwest::Response) -> serde_json::Value {
    assert_eq!(response.status(), 200);
    response.json().await.unwrap()
}

#[tokio::test(flavor = "multi_thread")]
async fn routes_exact_prefix_and_most_specific() {
    let manifest = [
        component_table(
            "hello",
            "hello",
            &["/hello", "/hello/...", "/api/special"],
            "",
        ),
        component_table(
            "echo",
            "fixture-echo",
            &["/api/...", "/api/catalog/..."],
            "",
        ),
    ]
    .concat();
    let host = TestHost::start(&manifest).await;
    let http = client();

    for path in ["/hello", "/hello/", "/hello/deep/path", "/api/special"] {
        let response = http.get(host.url(path)).send().await.unwrap();
        assert_eq!(response.status(), 200, "{path}");
        assert!(response.headers().contains_key("x-request-id"));
        assert_eq!(response.text().await.unwrap(), "Hello, world!\n", "{path}");
    }

    // The component sees the original path and query, not a rewritten one.
    let seen = echo(
        http.get(host.url("/api/catalog/items/42?q=red%20shoes&page=2"))
            .send()
            .await
            .unwrap(),
    )
    .await;
    assert_eq!(seen["path"], "/api/catalog/items/42");
    assert_eq!(seen["query"], "q=red%20shoes&page=2");
    assert_eq!(seen["method"], "GET");

    let seen = echo(http.get(host.url("/api")).send().await.unwrap()).await;
    assert_eq!(seen["path"], "/api");

    // Whole segments only: /helloworld is not under /hello/...
    for path in ["/helloworld", "/", "/nothing/here"] {
        let response = http.get(host.url(path)).send().await.unwrap();
        let (code, message, _) = json_error(response, 404).await;
        assert_eq!(code, "not_found");
        assert!(message.contains(path), "{message}");
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn a_trap_fails_only_its_own_request() {
    let manifest = [
        component_table("trap", "fixture-trap", &["/trap"], ""),
        component_table("hello", "hello", &["/hello"], ""),
    ]
    .concat();
    let host = TestHost::start(&manifest).await;
    let http = client();

    let mut request_ids = std::collections::HashSet::new();
    for _ in 0..3 {
        let (trapping, healthy) = tokio::join!(
            http.get(host.url("/trap")).send(),
            http.get(host.url("/hello")).send()
        );
        let (code, message, request_id) = json_error(trapping.unwrap(), 500).await;
        assert_eq!(code, "component_trapped");
        assert!(message.contains("`trap`"), "{message}");
        assert!(request_ids.insert(request_id), "request ids are unique");
        assert_eq!(healthy.unwrap().status(), 200);
    }
    let after = http.get(host.url("/trap?ok")).send().await.unwrap();
    assert_eq!(after.status(), 200);
    assert_eq!(after.text().await.unwrap(), "still alive\n");
}

#[tokio::test(flavor = "multi_thread")]
async fn the_deadline_stops_a_busy_guest_and_a_waiting_one() {
    let manifest = [
        component_table(
            "spin",
            "fixture-spin",
            &["/spin"],
            "limits = { deadline_ms = 300 }",
        ),
        component_table(
            "echo",
            "fixture-echo",
            &["/echo"],
            "limits = { deadline_ms = 300 }",
        ),
        component_table("hello", "hello", &["/hello"], ""),
    ]
    .concat();
    let host = TestHost::start(&manifest).await;
    let http = client();

    let (busy, waiting, healthy) = tokio::join!(
        http.get(host.url("/spin")).send(),
        http.get(host.url("/echo?sleep_ms=5000")).send(),
        async {
            tokio::time::sleep(Duration::from_millis(50)).await;
            http.get(host.url("/hello")).send().await
        }
    );
    let (code, message, _) = json_error(busy.unwrap(), 504).await;
    assert_eq!(code, "deadline_exceeded");
    assert!(message.contains("300 ms"), "{message}");
    let (code, _, _) = json_error(waiting.unwrap(), 504).await;
    assert_eq!(code, "deadline_exceeded");
    assert_eq!(
        healthy.unwrap().status(),
        200,
        "others are served meanwhile"
    );

    let after = http.get(host.url("/spin?ok")).send().await.unwrap();
    assert_eq!(after.status(), 200);
    let quick = http
        .get(host.url("/echo?sleep_ms=10"))
        .send()
        .await
        .unwrap();
    assert_eq!(quick.status(), 200);
}

#[tokio::test(flavor = "multi_thread")]
async fn the_memory_cap_stops_a_hog() {
    let manifest = [
        component_table(
            "hog",
            "fixture-hog",
            &["/hog"],
            "limits = { memory_mib = 32 }",
        ),
        component_table("hello", "hello", &["/hello"], ""),
    ]
    .concat();
    let host = TestHost::start(&manifest).await;
    let http = client();

    let response = http.get(host.url("/hog")).send().await.unwrap();
    let (code, message, _) = json_error(response, 500).await;
    assert_eq!(code, "memory_limit_exceeded");
    assert!(message.contains("32 MiB"), "{message}");

    assert_eq!(
        http.get(host.url("/hog?ok")).send().await.unwrap().status(),
        200
    );
    assert_eq!(
        http.get(host.url("/hello")).send().await.unwrap().status(),
        200
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn the_body_limit_answers_413() {
    let manifest = component_table(
        "echo",
        "fixture-echo",
        &["/echo"],
        "limits = { body_kib = 1 }",
    );
    let host = TestHost::start(&manifest).await;
    let http = client();

    // Declared too large: refused before the component runs, and the connection with the body
    // unread is not reused (the answer says so).
    let response = http
        .post(host.url("/echo"))
        .body(vec![b'x'; 2048])
        .send()
        .await
        .unwrap();
    assert_eq!(response.headers()["connection"], "close");
    let (code, message, _) = json_error(response, 413).await;
    assert_eq!(code, "body_too_large");
    assert!(message.contains("1024 bytes"), "{message}");

    // Chunked, no length: cut off while the component reads it.
    let chunks: Vec<Result<Vec<u8>, std::io::Error>> =
        (0..8).map(|_| Ok(vec![b'y'; 512])).collect();
    let response = http
        .post(host.url("/echo"))
        .body(reqwest::Body::wrap_stream(futures::stream::iter(chunks)))
        .send()
        .await
        .unwrap();
    let (code, _, _) = json_error(response, 413).await;
    assert_eq!(code, "body_too_large");

    // Within the limit, both ways; the component read the body, the connection stays open.
    let response = http
        .post(host.url("/echo"))
        .body(vec![b'z'; 1024])
        .send()
        .await
        .unwrap();
    assert_eq!(response.headers().get("connection"), None);
    let seen = echo(response).await;
    assert_eq!(seen["body_len"], 1024);
    let chunks: Vec<Result<Vec<u8>, std::io::Error>> =
        (0..2).map(|_| Ok(vec![b'y'; 300])).collect();
    let seen = echo(
        http.post(host.url("/echo"))
            .body(reqwest::Body::wrap_stream(futures::stream::iter(chunks)))
            .send()
            .await
            .unwrap(),
    )
    .await;
    assert_eq!(seen["body_len"], 600);
}

/// A client that goes away does not cut its request's run short: the guest runs to its end,
/// holding its permit meanwhile, as if the client had stayed (a run dropped halfway could leave
/// half of its work done).
#[tokio::test(flavor = "multi_thread")]
async fn a_request_whose_client_went_away_still_runs_to_its_end() {
    let manifest = component_table(
        "echo",
        "fixture-echo",
        &["/echo"],
        "limits = { concurrency = 1 }",
    );
    let host = TestHost::start(&manifest).await;
    let http = client();

    let gone = tokio::spawn({
        let http = http.clone();
        let url = host.url("/echo?sleep_ms=4000");
        async move { http.get(url).send().await }
    });
    host.wait_until_in_flight("echo", 1).await;
    // Dropping the client's request closes its connection; the host notices at once (a run
    // it dropped would give the permit back within milliseconds, long before the guest's
    // 4 s are over).
    gone.abort();
    assert!(gone.await.unwrap_err().is_cancelled());
    tokio::time::sleep(Duration::from_millis(500)).await;
    let refused = http.get(host.url("/echo")).send().await.unwrap();
    assert_eq!(
        refused.status(),
        503,
        "the run of the request whose client went away still holds the only permit"
    );
    // It ends by itself and gives the permit back.
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    loop {
        let status = http.get(host.url("/echo")).send().await.unwrap().status();
        if status == 200 {
            break;
        }
        assert_eq!(status, 503);
        assert!(
            std::time::Instant::now() < deadline,
            "the abandoned run never gave its permit back"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn the_concurrency_cap_answers_503_and_recovers() {
    let manifest = [
        component_table(
            "echo",
            "fixture-echo",
            &["/echo"],
            "limits = { concurrency = 1 }",
        ),
        component_table("hello", "hello", &["/hello"], ""),
    ]
    .concat();
    let host = TestHost::start(&manifest).await;
    let http = client();

    let slow = tokio::spawn({
        let http = http.clone();
        let url = host.url("/echo?sleep_ms=1500");
        async move { http.get(url).send().await.unwrap().status() }
    });
    // Once the slow request holds the only permit, the host refuses the next one. (Probing
    // before that could take the permit first and have the slow request refused instead.)
    host.wait_until_in_flight("echo", 1).await;
    let refused = http.get(host.url("/echo")).send().await.unwrap();
    assert_eq!(
        refused.status(),
        503,
        "a second concurrent request is refused"
    );
    assert_eq!(
        refused
            .headers()
            .get("retry-after")
            .unwrap()
            .to_str()
            .unwrap(),
        "1"
    );
    let (code, message, _) = json_error(refused, 503).await;
    assert_eq!(code, "overloaded");
    assert!(message.contains("`echo`"), "{message}");
    // Another component is not affected by echo's cap.
    assert_eq!(
        http.get(host.url("/hello")).send().await.unwrap().status(),
        200
    );

    assert_eq!(
        slow.await.unwrap(),
        200,
        "the request holding the permit completes"
    );
    let after = http.get(host.url("/echo")).send().await.unwrap();
    assert_eq!(after.status(), 200, "the permit is returned");
}

#[tokio::test(flavor = "multi_thread")]
async fn on_demand_allocation_serves_too() {
    let manifest = component_table("hello", "hello", &["/..."], "");
    let host = TestHost::start_with(&manifest, |config| config.force_on_demand = true).await;
    let response = client().get(host.url("/any/path")).send().await.unwrap();
    assert_eq!(response.status(), 200);
    assert_eq!(response.text().await.unwrap(), "Hello, world!\n");
}

#[tokio::test(flavor = "multi_thread")]
async fn shutdown_drains_in_flight_requests() {
    let manifest = component_table("echo", "fixture-echo", &["/echo"], "");
    let host = TestHost::start(&manifest).await;
    let http = client();
    let slow = tokio::spawn({
        let url = host.url("/echo?sleep_ms=2000");
        async move { http.get(url).send().await.unwrap().status() }
    });
    host.wait_until_in_flight("echo", 1).await;
    let drained = host.stop().await;
    assert_eq!(drained, agora_host::Drained::Clean);
    assert_eq!(slow.await.unwrap(), 200, "the in-flight request finished");
}
