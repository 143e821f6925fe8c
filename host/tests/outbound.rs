//! Outbound wasi:http is deny-by-default: a component reaches only the origins its manifest
//! grants (`grants.http`), and any other request fails inside the guest with
//! `HTTP-request-denied` — an error value it can answer (here 502), not a trap.

#![allow(clippy::unwrap_used)]

mod common;

use common::{TestHost, component_table};

async fn fetch(host: &TestHost, url: &str) -> (u16, serde_json::Value) {
    let response = reqwest::get(host.url(&format!("/fetch?url={url}")))
        .await
        .unwrap();
    let status = response.status().as_u16();
    (status, response.json().await.unwrap())
}

#[tokio::test(flavor = "multi_thread")]
async fn only_granted_origins_are_reachable() {
    let upstream = TestHost::start(&component_table("hello", "hello", &["/hello"], "")).await;
    let upstream_origin = format!("http://{}", upstream.addr);
    let manifest = [
        component_table(
            "fetch",
            "fixture-fetch",
            &["/fetch"],
            &format!("grants = {{ http = [\"{upstream_origin}/\"] }}"),
        ),
        component_table("closed", "fixture-fetch", &["/closed"], ""),
    ]
    .concat();
    let host = TestHost::start(&manifest).await;

    let (status, body) = fetch(&host, &format!("{upstream_origin}/hello")).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["status"], 200, "{body}");
    assert_eq!(body["body"], "Hello, world!\n");

    // Another healthy server, not granted: refused inside the host (wstd reports the failed
    // request as a reset connection), while the same URL answers a direct request.
    let other = TestHost::start(&component_table("hello", "hello", &["/hello"], "")).await;
    let other_url = other.url("/hello");
    assert_eq!(reqwest::get(&other_url).await.unwrap().status(), 200);
    let (status, body) = fetch(&host, &other_url).await;
    assert_eq!(status, 502, "{body}");
    assert_eq!(body["error"]["code"], "fetch_failed", "{body}");

    // No grant at all: not even the granted upstream of the other component.
    let response = reqwest::get(host.url(&format!("/closed?url={upstream_origin}/hello")))
        .await
        .unwrap();
    assert_eq!(response.status(), 502);
    let body: serde_json::Value = response.json().await.unwrap();
    assert_eq!(body["error"]["code"], "fetch_failed", "{body}");
}
