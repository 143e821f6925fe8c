//! The notification component over real HTTP and real events: the events it consumes become
//! notifications of the user they concern, once per event id, listed newest first to that
//! user only, and marked read by that user only. Events are published by components/example
//! (its `POST …/publish/{subject}` route), so they travel the same bus as the shop's.

#![allow(clippy::unwrap_used)]

mod common;

use common::shop::{Setup, ShopManifest};
use common::{json_error, unique_name};
use serde_json::{Value, json};
use std::path::Path;
use std::time::{Duration, Instant};

/// agora.toml's notification, redelivering quickly, and components/example as the publisher
/// of the events (its `POST /publisher/publish/{subject}` route).
fn manifest() -> ShopManifest {
    let migrations = Path::new(env!("CARGO_MANIFEST_DIR")).join("../components/example/migrations");
    ShopManifest::load()
        .only(&["notification"])
        .set("notification", "messaging.backoff_ms", 50)
        .with(&common::component_table(
            "publisher",
            "example",
            &["/publisher/..."],
            &format!(
                "migrations = {:?}\ngrants = {{ sql = true, cache = true, publish = [\"account.*\", \"order.*\", \"payment.*\"] }}",
                migrations.display().to_string()
            ),
        ))
}

struct Shop {
    shop: common::shop::Shop,
}

impl std::ops::Deref for Shop {
    type Target = common::shop::Shop;
    fn deref(&self) -> &common::shop::Shop {
        &self.shop
    }
}

impl Shop {
    async fn start() -> Shop {
        Shop {
            shop: common::shop::Shop::start(&manifest(), Setup::embedded()).await,
        }
    }

    fn token(&self, user: &str) -> String {
        self.shop.token(user, &["USER"])
    }

    /// Publishes `event` (an envelope) on its type's subject through the example component.
    async fn publish(&self, event: &Value) {
        let subject = event["type"].as_str().unwrap();
        let response = reqwest::Client::new()
            .post(self.host.url(&format!("/publisher/publish/{subject}")))
            .body(event.to_string())
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), 200, "publish {subject}");
    }

    async fn notifications(&self, user: &str, query: &str) -> Value {
        let path = format!("/api/notifications{query}");
        let answer = self.shop.get(&path, Some(&self.token(user))).await;
        assert_eq!(answer.status, 200);
        answer.body
    }

    /// Waits (up to 20 s) until `user` has `count` notifications.
    async fn wait_for(&self, user: &str, count: u64) -> Value {
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            let list = self.notifications(user, "").await;
            if list["total"] == count || Instant::now() > deadline {
                assert_eq!(list["total"], count, "notifications of {user}: {list}");
                return list;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}

fn event(kind: &str, data: Value) -> Value {
    json!({
        "id": uuid::Uuid::new_v4().to_string(),
        "type": kind,
        "version": 1,
        "occurred_at": "2026-11-26T00:00:00Z",
        "data": data,
    })
}

#[tokio::test]
async fn each_event_becomes_one_notification_for_its_user_only() {
    let shop = Shop::start().await;
    let (alice, bob) = (unique_name("alice"), unique_name("bob"));
    let order = uuid::Uuid::new_v4().to_string();

    let registered = event(
        "account.registered",
        json!({ "user_id": alice, "email": "alice@example.com", "name": "Alice" }),
    );
    shop.publish(&registered).await;
    // The same event delivered twice (say, relayed again after a crash) is stored once.
    shop.publish(&registered).await;
    shop.wait_for(&alice, 1).await;
    for (kind, data) in [
        (
            "order.created",
            json!({ "order_id": order, "user_id": alice, "items": [], "total_cents": 1999,
                    "payment_method": "tok_visa" }),
        ),
        (
            "payment.failed",
            json!({ "payment_id": "p", "order_id": order, "user_id": alice,
                    "amount_cents": 1999, "reason": "card_declined" }),
        ),
        (
            "order.paid",
            json!({ "order_id": order, "user_id": alice, "total_cents": 1999 }),
        ),
        (
            "order.paid",
            json!({ "order_id": "other", "user_id": bob, "total_cents": 500 }),
        ),
    ] {
        let user = data["user_id"].as_str().unwrap().to_owned();
        let before = shop.notifications(&user, "").await["total"]
            .as_u64()
            .unwrap();
        shop.publish(&event(kind, data)).await;
        // One at a time, so "newest first" has a defined order.
        shop.wait_for(&user, before + 1).await;
    }
    let list = shop.wait_for(&alice, 4).await;
    let kinds: Vec<&str> = list["items"]
        .as_array()
        .unwrap()
        .iter()
        .map(|n| n["type"].as_str().unwrap())
        .collect();
    assert_eq!(
        kinds,
        [
            "order.paid",
            "payment.failed",
            "order.created",
            "account.registered"
        ],
        "newest first: {list}"
    );
    let paid = &list["items"][0];
    assert_eq!(paid["user_id"], json!(alice));
    assert_eq!(paid["read"], false);
    assert!(paid["body"].as_str().unwrap().contains("19.99"), "{paid}");
    assert_eq!(paid["data"]["order_id"], json!(order));
    let failed = &list["items"][1];
    assert!(
        failed["body"].as_str().unwrap().contains("card_declined"),
        "{failed}"
    );
    assert_eq!(
        (list["page"].clone(), list["page_size"].clone()),
        (json!(1), json!(20))
    );

    let page = shop.notifications(&alice, "?page=2&page_size=3").await;
    assert_eq!(page["total"], 4);
    assert_eq!(page["items"].as_array().unwrap().len(), 1);
    assert_eq!(page["items"][0]["type"], "account.registered");

    let bobs = shop.wait_for(&bob, 1).await;
    assert_eq!(bobs["items"][0]["data"]["order_id"], "other");

    // Marking read: the owner can, another user gets 404 and changes nothing.
    let id = paid["id"].as_str().unwrap();
    let client = reqwest::Client::new();
    let read = |user: &str| {
        client
            .post(shop.host.url(&format!("/api/notifications/{id}/read")))
            .bearer_auth(shop.token(user))
            .send()
    };
    let (code, _, _) = json_error(read(&bob).await.unwrap(), 404).await;
    assert_eq!(code, "not_found");
    assert_eq!(
        shop.notifications(&alice, "").await["items"][0]["read"],
        false
    );
    let marked: Value = read(&alice).await.unwrap().json().await.unwrap();
    assert_eq!(marked["read"], true);
    assert!(marked["read_at"].as_str().is_some());
    assert_eq!(
        shop.notifications(&alice, "").await["items"][0]["read"],
        true
    );

    // Bad input and no token.
    let (code, message, _) = json_error(
        client
            .get(shop.host.url("/api/notifications?page_size=101"))
            .bearer_auth(shop.token(&alice))
            .send()
            .await
            .unwrap(),
        400,
    )
    .await;
    assert_eq!(code, "validation_failed");
    assert!(message.contains("page_size"), "{message}");
    let anonymous = client
        .get(shop.host.url("/api/notifications"))
        .send()
        .await
        .unwrap();
    json_error(anonymous, 401).await;
    shop.shop.stop().await;
}
