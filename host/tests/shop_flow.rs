//! The whole shop, as the repository's agora.toml serves it, over real HTTP on both backend
//! sets: register → the admin creates a product → order → PAID → notifications, and the
//! declined-payment flow (PAYMENT_FAILED, stock released) — and the same flow while every
//! component of the shop is swapped back and forth through the admin API.
//!
//! The manifest is agora.toml itself as the shop harness adjusts it for every test
//! (common/shop.rs), with the first admin's credentials given as config values.

#![allow(clippy::unwrap_used)]

mod common;

use common::Backends;
use common::shop::{Setup, Shop, ShopManifest};
use serde_json::{Value, json};
use std::time::{Duration, Instant};

const ADMIN_PASSWORD: &str = "admin-password-for-tests";

/// `GET path` as `token`'s user, which must answer 200; the body.
async fn get(shop: &Shop, path: &str, token: &str) -> Value {
    let answer = shop.get(path, Some(token)).await;
    assert_eq!(answer.status, 200, "GET {path}: {}", answer.body);
    answer.body
}

/// `POST path`, which must answer `expect`; the body.
async fn post(shop: &Shop, path: &str, token: Option<&str>, body: Value, expect: u16) -> Value {
    let answer = shop.post(path, token, body).await;
    assert_eq!(answer.status, expect, "POST {path}: {}", answer.body);
    answer.body
}

/// Polls `path` until `done` holds (at most 30 s), returning the last answer.
async fn wait_until(shop: &Shop, path: &str, token: &str, done: impl Fn(&Value) -> bool) -> Value {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let body = get(shop, path, token).await;
        if done(&body) {
            return body;
        }
        assert!(Instant::now() < deadline, "{path} never got there: {body}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

fn kinds(notifications: &Value) -> Vec<String> {
    notifications["items"]
        .as_array()
        .unwrap()
        .iter()
        .map(|n| n["type"].as_str().unwrap().to_owned())
        .collect()
}

const ADMIN_TOKEN: &str = "shop-flow-admin-token";
const SHOP: [&str; 6] = [
    "account",
    "catalog",
    "order",
    "payment",
    "notification",
    "gateway",
];

/// Swaps every shop component, one after the other, between its file and a variant of it (same
/// code, another digest) until `stop` is set; every swap must succeed. Returns the swap count.
fn swap_continuously(
    admin: std::net::SocketAddr,
    stop: std::sync::Arc<std::sync::atomic::AtomicBool>,
) -> tokio::task::JoinHandle<usize> {
    let versions: Vec<(&str, [Vec<u8>; 2])> = SHOP
        .iter()
        .map(|name| {
            let original = std::fs::read(common::component(name)).unwrap();
            let variant = common::with_custom_section(&original, "agora-test", b"variant");
            (*name, [variant, original])
        })
        .collect();
    tokio::spawn(async move {
        let client = reqwest::Client::new();
        let mut swaps = 0;
        while !stop.load(std::sync::atomic::Ordering::Relaxed) {
            for (name, bytes) in &versions {
                let response = client
                    .put(format!("http://{admin}/admin/components/{name}"))
                    .bearer_auth(ADMIN_TOKEN)
                    .body(bytes[swaps / SHOP.len() % 2].clone())
                    .send()
                    .await
                    .unwrap();
                let status = response.status();
                let body: Value = response.json().await.unwrap();
                assert_eq!(status, 200, "swapping {name}: {body}");
                assert_eq!(body["changed"], true, "swapping {name}: {body}");
                swaps += 1;
            }
        }
        swaps
    })
}

async fn the_shop_flow(backends: Backends, swapping: bool) {
    let run = uuid::Uuid::new_v4().simple().to_string();
    let admin_email = format!("admin-{run}@shop.test");
    let manifest = ShopManifest::load().first_admin(&admin_email, ADMIN_PASSWORD);
    let shop = Shop::start(&manifest, Setup::new(backends).admin_api(ADMIN_TOKEN)).await;
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let swapper = swapping.then(|| swap_continuously(shop.host.admin_addr.unwrap(), stop.clone()));

    // The first admin exists from the start; a customer registers.
    let admin = post(
        &shop,
        "/api/accounts/login",
        None,
        json!({ "email": admin_email, "password": ADMIN_PASSWORD }),
        200,
    )
    .await;
    assert_eq!(admin["user"]["role"], "ADMIN", "{admin}");
    let admin = admin["access_token"].as_str().unwrap().to_owned();
    let email = format!("carol-{run}@shop.test");
    let carol = post(
        &shop,
        "/api/accounts/register",
        None,
        json!({ "email": email, "password": "correct horse", "name": "Carol" }),
        201,
    )
    .await;
    let carol_id = carol["user"]["id"].as_str().unwrap().to_owned();
    let carol = carol["access_token"].as_str().unwrap().to_owned();

    // The admin adds a product; a customer may not.
    let product = json!({
        "name": format!("Teapot {run}"), "description": "Cast iron, 0.8 l",
        "price_cents": 1250, "sku": format!("TEA-{run}"), "stock": 5,
        "images": [], "category": format!("tea-{run}"),
    });
    post(&shop, "/api/products", Some(&carol), product.clone(), 403).await;
    let created = post(&shop, "/api/products", Some(&admin), product, 201).await;
    let product_id = created["id"].as_str().unwrap().to_owned();

    // The customer browses: search, then the product page (read through the cache).
    let found = get(&shop, &format!("/api/products?q=teapot%20{run}"), &carol).await;
    assert_eq!(found["total"], 1, "{found}");
    assert_eq!(found["items"][0]["id"], json!(product_id));

    // Order two; paid with the test card that succeeds.
    let order = post(
        &shop,
        "/api/orders",
        Some(&carol),
        json!({ "items": [{ "product_id": product_id, "quantity": 2 }],
                    "payment_method": "tok_visa" }),
        201,
    )
    .await;
    assert_eq!(order["status"], "PENDING");
    assert_eq!(order["total_cents"], 2500);
    assert_eq!(order["items"][0]["unit_price_cents"], 1250);
    let order_id = order["id"].as_str().unwrap().to_owned();
    let paid = wait_until(&shop, &format!("/api/orders/{order_id}"), &carol, |o| {
        o["status"] != "PENDING"
    })
    .await;
    assert_eq!(paid["status"], "PAID", "{paid}");
    let payments = get(&shop, &format!("/api/payments?order_id={order_id}"), &carol).await;
    assert_eq!(payments["items"][0]["status"], "SUCCEEDED", "{payments}");
    assert_eq!(payments["items"][0]["amount_cents"], 2500);
    let stock = get(&shop, &format!("/api/products/{product_id}"), &carol).await;
    assert_eq!(stock["stock"], 3);

    // Declined: the order fails and its stock comes back.
    let declined = post(
        &shop,
        "/api/orders",
        Some(&carol),
        json!({ "items": [{ "product_id": product_id, "quantity": 3 }],
                    "payment_method": "tok_decline" }),
        201,
    )
    .await;
    let declined_id = declined["id"].as_str().unwrap().to_owned();
    let failed = wait_until(&shop, &format!("/api/orders/{declined_id}"), &carol, |o| {
        o["status"] != "PENDING"
    })
    .await;
    assert_eq!(failed["status"], "PAYMENT_FAILED", "{failed}");
    let restocked = wait_until(&shop, &format!("/api/products/{product_id}"), &carol, |p| {
        p["stock"] == 3
    })
    .await;
    assert_eq!(restocked["stock"], 3);
    let payments = get(
        &shop,
        &format!("/api/payments?order_id={declined_id}"),
        &carol,
    )
    .await;
    assert_eq!(payments["items"][0]["status"], "FAILED");
    assert_eq!(payments["items"][0]["reason"], "card_declined");

    // Carol was told about each step, and only Carol.
    let notifications = wait_until(&shop, "/api/notifications?page_size=100", &carol, |n| {
        n["total"] == 5
    })
    .await;
    let mut seen = kinds(&notifications);
    seen.sort();
    assert_eq!(
        seen,
        [
            "account.registered",
            "order.created",
            "order.created",
            "order.paid",
            "payment.failed",
        ],
        "{notifications}"
    );
    assert!(
        notifications["items"]
            .as_array()
            .unwrap()
            .iter()
            .all(|n| n["user_id"] == json!(carol_id))
    );
    if let Some(swapper) = swapper {
        stop.store(true, std::sync::atomic::Ordering::Relaxed);
        let swaps = swapper.await.unwrap();
        eprintln!("{swaps} swaps during the flow");
        assert!(
            swaps >= SHOP.len(),
            "every component was swapped at least once"
        );
    }
    the_flow_shows_in_the_metrics(&shop, swapping).await;
    shop.stop().await;
}

/// What the flow did, as a scrape of the metrics listener shows it. The registry is the
/// process's, shared with the other flows of this file running alongside: counts are lower
/// bounds.
async fn the_flow_shows_in_the_metrics(shop: &Shop, swapped: bool) {
    let scrape = reqwest::get(format!("http://{}/metrics", shop.host.metrics_addr))
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    let value = |series: &str| -> f64 {
        scrape
            .lines()
            .find_map(|line| line.strip_prefix(series)?.strip_prefix(' ')?.parse().ok())
            .unwrap_or_else(|| panic!("no sample {series} in the scrape:\n{scrape}"))
    };
    let at_least = |series: &str, least: f64| {
        let found = value(series);
        assert!(
            found >= least,
            "{series} is {found}, expected at least {least}"
        );
    };
    // Two orders reached payment; one was paid, one declined; notification saw all of them.
    at_least(
        "agora_events_total{component=\"payment\",subject=\"order.created\",outcome=\"handled\"}",
        2.0,
    );
    at_least(
        "agora_events_total{component=\"order\",subject=\"payment.succeeded\",outcome=\"handled\"}",
        1.0,
    );
    at_least(
        "agora_events_total{component=\"order\",subject=\"payment.failed\",outcome=\"handled\"}",
        1.0,
    );
    at_least(
        "agora_event_handling_duration_seconds_count{component=\"notification\",subject=\"order.paid\"}",
        1.0,
    );
    // Their database work, the routes they answered, the edge's refusal of Carol's product.
    at_least(
        "agora_capability_calls_total{component=\"order\",capability=\"sql\",outcome=\"ok\"}",
        4.0,
    );
    at_least(
        "agora_capability_call_duration_seconds_count{component=\"catalog\",capability=\"sql\"}",
        1.0,
    );
    at_least(
        "agora_http_requests_total{component=\"order\",route=\"/api/orders\",method=\"POST\",status_class=\"2xx\"}",
        2.0,
    );
    at_least("agora_auth_failures_total{reason=\"role_missing\"}", 1.0);
    // Registering and signing in issued tokens through the auth capability.
    at_least(
        "agora_capability_calls_total{component=\"account\",capability=\"auth\",outcome=\"ok\"}",
        2.0,
    );
    // The catalog reads products through the cache; the order's outbox is watched.
    let cache_gets = value("agora_cache_hits_total{component=\"catalog\"}")
        + value("agora_cache_misses_total{component=\"catalog\"}");
    assert!(cache_gets >= 1.0, "no cache get counted:\n{scrape}");
    value("agora_outbox_pending_rows{component=\"order\"}");
    value("agora_outbox_oldest_pending_seconds{component=\"order\"}");
    if swapped {
        at_least(
            "agora_swaps_total{component=\"catalog\",outcome=\"applied\"}",
            1.0,
        );
    }
}

#[tokio::test]
async fn the_shop_flow_on_the_embedded_backends() {
    the_shop_flow(Backends::default(), false).await;
}

/// The flow on PostgreSQL, Redis and NATS (skipped when one is unreachable, outside CI).
async fn the_shop_flow_on_production_backends(swapping: bool) {
    let Some(backends) = Backends::production() else {
        return;
    };
    the_shop_flow(backends, swapping).await;
}

#[tokio::test]
async fn the_shop_flow_on_postgres_redis_and_nats() {
    the_shop_flow_on_production_backends(false).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_shop_flow_while_every_component_is_swapped_on_postgres_redis_and_nats() {
    the_shop_flow_on_production_backends(true).await;
}
