//! The whole shop, as the repository's agora.toml serves it, over real HTTP on both backend
//! sets: register → the admin creates a product → order → PAID → notifications, and the
//! declined-payment flow (PAYMENT_FAILED, stock released) — and the same flow while every
//! component of the shop is swapped back and forth through the admin API.
//!
//! The manifest is agora.toml itself with three test adjustments: paths made absolute, no rate
//! limits (tests share one client address), and the first admin's credentials (plus a cheap
//! argon2 cost) given as config values instead of environment variables.

#![allow(clippy::unwrap_used)]

mod common;

use common::{Backends, TestHost};
use serde_json::{Value, json};
use std::path::Path;
use std::time::{Duration, Instant};

const ADMIN_PASSWORD: &str = "admin-password-for-tests";

/// agora.toml, adjusted for a test (see the module doc).
fn shop_manifest(admin_email: &str) -> String {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    let text = std::fs::read_to_string(root.join("agora.toml")).unwrap();
    let mut out = String::new();
    for line in text.lines() {
        let line = line
            .replace(
                "source = \"target/",
                &format!("source = \"{}/target/", root.display()),
            )
            .replace(
                "migrations = \"components/",
                &format!("migrations = \"{}/components/", root.display()),
            );
        if line.starts_with("rate_limit") {
            continue;
        }
        match line.split('=').next().map(str::trim) {
            Some("[component.config_env]") => out.push_str(&format!(
                "[component.config]\nargon2_memory_kib = \"1024\"\nargon2_iterations = \"1\"\n\
                 admin_email = {admin_email:?}\nadmin_password = {ADMIN_PASSWORD:?}\n"
            )),
            Some("admin_email") | Some("admin_password") => {}
            _ => {
                out.push_str(&line);
                out.push('\n');
            }
        }
    }
    assert!(
        out.contains(admin_email),
        "the account table was not adjusted"
    );
    out
}

struct Client {
    http: reqwest::Client,
    host: TestHost,
}

impl Client {
    async fn call(
        &self,
        method: reqwest::Method,
        path: &str,
        token: Option<&str>,
        body: Option<Value>,
    ) -> (u16, Value) {
        let mut request = self.http.request(method, self.host.url(path));
        if let Some(token) = token {
            request = request.bearer_auth(token);
        }
        if let Some(body) = body {
            request = request.json(&body);
        }
        let response = request.send().await.unwrap();
        let status = response.status().as_u16();
        let text = response.text().await.unwrap();
        (status, serde_json::from_str(&text).unwrap_or(Value::Null))
    }

    async fn get(&self, path: &str, token: &str) -> Value {
        let (status, body) = self
            .call(reqwest::Method::GET, path, Some(token), None)
            .await;
        assert_eq!(status, 200, "GET {path}: {body}");
        body
    }

    async fn post(&self, path: &str, token: Option<&str>, body: Value, expect: u16) -> Value {
        let (status, answer) = self
            .call(reqwest::Method::POST, path, token, Some(body))
            .await;
        assert_eq!(status, expect, "POST {path}: {answer}");
        answer
    }

    /// Polls `path` until `done` holds (at most 30 s), returning the last answer.
    async fn wait_until(&self, path: &str, token: &str, done: impl Fn(&Value) -> bool) -> Value {
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let body = self.get(path, token).await;
            if done(&body) {
                return body;
            }
            assert!(Instant::now() < deadline, "{path} never got there: {body}");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
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

async fn the_shop_flow(adjust: impl FnOnce(&mut agora_host::HostConfig), swapping: bool) {
    let run = uuid::Uuid::new_v4().simple().to_string();
    let admin_email = format!("admin-{run}@shop.test");
    let host = TestHost::start_full(&shop_manifest(&admin_email), adjust, Some(ADMIN_TOKEN)).await;
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let swapper = swapping.then(|| swap_continuously(host.admin_addr.unwrap(), stop.clone()));
    let shop = Client {
        http: reqwest::Client::new(),
        host,
    };

    // The first admin exists from the start; a customer registers.
    let admin = shop
        .post(
            "/api/accounts/login",
            None,
            json!({ "email": admin_email, "password": ADMIN_PASSWORD }),
            200,
        )
        .await;
    assert_eq!(admin["user"]["role"], "ADMIN", "{admin}");
    let admin = admin["access_token"].as_str().unwrap().to_owned();
    let email = format!("carol-{run}@shop.test");
    let carol = shop
        .post(
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
    shop.post("/api/products", Some(&carol), product.clone(), 403)
        .await;
    let created = shop.post("/api/products", Some(&admin), product, 201).await;
    let product_id = created["id"].as_str().unwrap().to_owned();

    // The customer browses: search, then the product page (read through the cache).
    let found = shop
        .get(&format!("/api/products?q=teapot%20{run}"), &carol)
        .await;
    assert_eq!(found["total"], 1, "{found}");
    assert_eq!(found["items"][0]["id"], json!(product_id));

    // Order two; paid with the test card that succeeds.
    let order = shop
        .post(
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
    let paid = shop
        .wait_until(&format!("/api/orders/{order_id}"), &carol, |o| {
            o["status"] != "PENDING"
        })
        .await;
    assert_eq!(paid["status"], "PAID", "{paid}");
    let payments = shop
        .get(&format!("/api/payments?order_id={order_id}"), &carol)
        .await;
    assert_eq!(payments["items"][0]["status"], "SUCCEEDED", "{payments}");
    assert_eq!(payments["items"][0]["amount_cents"], 2500);
    let stock = shop
        .get(&format!("/api/products/{product_id}"), &carol)
        .await;
    assert_eq!(stock["stock"], 3);

    // Declined: the order fails and its stock comes back.
    let declined = shop
        .post(
            "/api/orders",
            Some(&carol),
            json!({ "items": [{ "product_id": product_id, "quantity": 3 }],
                    "payment_method": "tok_decline" }),
            201,
        )
        .await;
    let declined_id = declined["id"].as_str().unwrap().to_owned();
    let failed = shop
        .wait_until(&format!("/api/orders/{declined_id}"), &carol, |o| {
            o["status"] != "PENDING"
        })
        .await;
    assert_eq!(failed["status"], "PAYMENT_FAILED", "{failed}");
    let restocked = shop
        .wait_until(&format!("/api/products/{product_id}"), &carol, |p| {
            p["stock"] == 3
        })
        .await;
    assert_eq!(restocked["stock"], 3);
    let payments = shop
        .get(&format!("/api/payments?order_id={declined_id}"), &carol)
        .await;
    assert_eq!(payments["items"][0]["status"], "FAILED");
    assert_eq!(payments["items"][0]["reason"], "card_declined");

    // Carol was told about each step, and only Carol.
    let notifications = shop
        .wait_until("/api/notifications?page_size=100", &carol, |n| {
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
    shop.host.stop().await;
}

#[tokio::test]
async fn the_shop_flow_on_the_embedded_backends() {
    the_shop_flow(|_| {}, false).await;
}

/// The flow on PostgreSQL, Redis and NATS (skipped when one is unreachable, outside CI).
async fn the_shop_flow_on_production_backends(swapping: bool) {
    let Some(backends) = Backends::production() else {
        return;
    };
    let keys = common::TestKeys::new().keys;
    the_shop_flow(
        move |config| {
            backends.apply(config);
            config.auth_keys = Some(keys);
        },
        swapping,
    )
    .await;
}

#[tokio::test]
async fn the_shop_flow_on_postgres_redis_and_nats() {
    the_shop_flow_on_production_backends(false).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_shop_flow_while_every_component_is_swapped_on_postgres_redis_and_nats() {
    the_shop_flow_on_production_backends(true).await;
}
