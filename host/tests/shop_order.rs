//! The shop's order and payment components (components/order, components/payment) with the
//! real catalog, end to end over real HTTP and real events: placing orders against catalog
//! stock, validation, visibility, cancellation, concurrent orders for the last units, and the
//! payment flow (order.created → payment → order PAID / PAYMENT_FAILED), including a trap
//! before charging and a duplicated order.created, which must each charge once.
//!
//! The order API tests run without the payment component, so orders stay `PENDING`. The
//! payment flow runs on both backend sets: embedded (SQLite, in-memory cache, in-process bus)
//! and production (PostgreSQL, Redis, NATS JetStream). There a copy of an `order.created`
//! message (same data, a new event id) is published straight to NATS (`agora.order.created`)
//! to show that a redelivered order is charged once.
//!
//! The components keep their names (order calls `http://catalog.agora.internal`), so on
//! PostgreSQL their schemas outlive the test and are shared by every run, and on NATS their
//! consumers are: each test makes products with SKUs of its own and reads only its own orders
//! and payments, never assuming a table is empty.

#![allow(clippy::unwrap_used)]

mod common;

use common::Backends;
use common::shop::{Answer, Setup, ShopManifest};
use reqwest::Method;
use serde_json::{Value, json};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// How long an order may take to reach its final state.
const SETTLE: Duration = Duration::from_secs(20);

/// Which components a shop runs besides order.
#[derive(Clone, Copy)]
struct Parts {
    catalog: Catalog,
    payment: bool,
}

/// What answers as `catalog`.
#[derive(Clone, Copy, PartialEq)]
enum Catalog {
    /// components/catalog.
    Real,
    /// A component that traps on every request (`fixture-trap`): the catalog failing.
    Trapping,
}

const EVERYTHING: Parts = Parts {
    catalog: Catalog::Real,
    payment: true,
};
/// Orders stay PENDING: nothing pays them.
const NO_PAYMENT: Parts = Parts {
    catalog: Catalog::Real,
    payment: false,
};

/// agora.toml's order, with `parts`' catalog and payment, redelivering quickly; the payment
/// takes the test cards (`tok_trap_once`).
fn manifest(parts: Parts) -> ShopManifest {
    let mut manifest = ShopManifest::load()
        .only(&["catalog", "order", "payment"])
        .config("catalog", "sample_products", "false")
        .config("payment", "test_payment_methods", "true");
    for quick in ["order", "payment"] {
        manifest = manifest.set(quick, "messaging.backoff_ms", 100).set(
            quick,
            "messaging.backoff_max_ms",
            1000,
        );
    }
    if parts.catalog == Catalog::Trapping {
        manifest = manifest.without("catalog").with(&common::component_table(
            "catalog",
            "fixture-trap",
            &["/api/products/..."],
            "",
        ));
    }
    if !parts.payment {
        manifest = manifest.without("payment");
    }
    manifest
}

/// A signed-in user: the id (the token's subject) and an access token.
#[derive(Clone)]
struct User {
    id: String,
    token: String,
}

impl Answer {
    /// Asserts the status and agora's error shape, and returns the error object.
    fn error(&self, status: u16, code: &str) -> &Value {
        assert_eq!(self.status, status, "{}", self.text);
        let error = &self.json()["error"];
        assert_eq!(error["code"], code, "{}", self.body);
        assert!(
            !error["message"].as_str().unwrap().is_empty(),
            "{}",
            self.body
        );
        assert_eq!(
            error["request_id"].as_str(),
            self.request_id(),
            "the body and the x-request-id header carry the same id: {}",
            self.body
        );
        error
    }

    /// Asserts 400 `validation_failed` about `field`.
    fn invalid(&self, field: &str) {
        let error = self.error(400, "validation_failed");
        assert_eq!(error["field"], field, "{}", self.body);
    }
}

/// A running shop, tokens for an admin, and a tag unique to the test for SKUs.
struct Shop {
    shop: common::shop::Shop,
    admin: User,
    tag: String,
}

impl Shop {
    async fn start(backends: &Backends, parts: Parts) -> Shop {
        let shop = common::shop::Shop::start(&manifest(parts), Setup::new(backends.clone())).await;
        let mut shop = Shop {
            shop,
            admin: User {
                id: String::new(),
                token: String::new(),
            },
            tag: uuid::Uuid::new_v4().simple().to_string()[..12].to_owned(),
        };
        shop.admin = shop.user(&["USER", "ADMIN"]);
        shop
    }

    /// Stops the host and starts another one with `parts` on the same data and keys.
    async fn restart(mut self, parts: Parts) -> Shop {
        self.shop = self.shop.restart(&manifest(parts)).await;
        self
    }

    /// A new user with `roles` and a signed access token.
    fn user(&self, roles: &[&str]) -> User {
        let id = uuid::Uuid::new_v4().to_string();
        let token = self.shop.token(&id, roles);
        User { id, token }
    }

    /// `method path` as `user`, with a JSON `body`.
    async fn send(
        &self,
        method: Method,
        path: &str,
        user: Option<&User>,
        body: Option<Value>,
    ) -> Answer {
        let token = user.map(|user| user.token.as_str());
        let answer = self.shop.send(method, path, token, body).await;
        answer.json();
        answer
    }

    /// Creates a product priced `price_cents` with `stock` units; returns its id.
    async fn product(&self, name: &str, price_cents: i64, stock: i64) -> String {
        let sku = format!(
            "{name}-{}-{}",
            self.tag,
            &uuid::Uuid::new_v4().simple().to_string()[..8]
        );
        let answer = self
            .send(
                Method::POST,
                "/api/products",
                Some(&self.admin),
                Some(json!({
                    "name": name, "price_cents": price_cents, "sku": sku, "stock": stock,
                })),
            )
            .await;
        answer.ok(201)["id"].as_str().unwrap().to_owned()
    }

    async fn stock(&self, product_id: &str) -> i64 {
        let answer = self
            .send(
                Method::GET,
                &format!("/api/products/{product_id}"),
                None,
                None,
            )
            .await;
        answer.ok(200)["stock"].as_i64().unwrap()
    }

    /// `POST /api/orders` as `user`.
    async fn place(&self, user: &User, items: Value, payment_method: &str) -> Answer {
        self.send(
            Method::POST,
            "/api/orders",
            Some(user),
            Some(json!({ "items": items, "payment_method": payment_method })),
        )
        .await
    }

    /// Places an order that must succeed; returns it.
    async fn order(&self, user: &User, product_id: &str, quantity: i64, method: &str) -> Value {
        let answer = self
            .place(
                user,
                json!([{ "product_id": product_id, "quantity": quantity }]),
                method,
            )
            .await;
        answer.ok(201).clone()
    }

    async fn get_order(&self, user: &User, id: &str) -> Answer {
        self.send(Method::GET, &format!("/api/orders/{id}"), Some(user), None)
            .await
    }

    /// Polls the order until its status is `status`; fails after [`SETTLE`] with the last state.
    async fn settled(&self, user: &User, id: &str, status: &str) -> Value {
        let started = Instant::now();
        loop {
            let answer = self.get_order(user, id).await;
            let order = answer.ok(200);
            if order["status"] == status {
                return order.clone();
            }
            assert!(
                started.elapsed() < SETTLE,
                "order {id} did not become {status} within {SETTLE:?}; last state: {order}"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    async fn payments(&self, user: &User, order_id: &str) -> Answer {
        self.send(
            Method::GET,
            &format!("/api/payments?order_id={order_id}"),
            Some(user),
            None,
        )
        .await
    }

    /// The payment component's own database (the same one the host uses).
    async fn payment_db(&self) -> Arc<dyn agora_sql::Namespace> {
        let backend = agora_sql::connect(Some(&self.shop.database_url), self.shop.data_dir())
            .await
            .unwrap();
        backend.namespace("payment").await.unwrap()
    }
}

/// `select count(*) as n …` with one text parameter.
async fn count(db: &Arc<dyn agora_sql::Namespace>, statement: &str, param: &str) -> i64 {
    let rows = db
        .query(statement, vec![agora_sql::Value::Text(param.to_owned())])
        .await
        .unwrap();
    match rows.rows.first().and_then(|row| row.first()) {
        Some(agora_sql::Value::Int(n)) => *n,
        other => panic!("{statement}: not a count: {other:?}"),
    }
}

fn id_of(value: &Value) -> String {
    value["id"].as_str().unwrap().to_owned()
}

fn embedded() -> Backends {
    Backends::default()
}

// --- placing orders -----------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread")]
async fn placing_an_order_reserves_stock_at_the_catalog_price() {
    let shop = Shop::start(&embedded(), NO_PAYMENT).await;
    let alice = shop.user(&["USER"]);
    let mug = shop.product("Mug", 1250, 10).await;
    let tea = shop.product("Tea", 499, 5).await;

    let answer = shop
        .place(
            &alice,
            json!([
                { "product_id": mug, "quantity": 2 },
                { "product_id": tea.to_uppercase(), "quantity": 3 },
            ]),
            "tok_visa",
        )
        .await;
    let order = answer.ok(201).clone();
    assert_eq!(order["status"], "PENDING", "{order}");
    assert_eq!(order["user_id"], alice.id.as_str());
    assert_eq!(order["payment_method"], "tok_visa");
    assert_eq!(order["total_cents"], 2 * 1250 + 3 * 499);
    assert_eq!(
        order["items"],
        json!([
            { "product_id": mug, "name": "Mug", "quantity": 2, "unit_price_cents": 1250 },
            { "product_id": tea, "name": "Tea", "quantity": 3, "unit_price_cents": 499 },
        ])
    );
    assert!(uuid::Uuid::parse_str(order["id"].as_str().unwrap()).is_ok());
    assert!(order["created_at"].as_str().unwrap().ends_with('Z'));
    assert_eq!(order["created_at"], order["updated_at"]);
    assert_eq!((shop.stock(&mug).await, shop.stock(&tea).await), (8, 2));

    // A later price change does not touch the order: it keeps the price it was placed at.
    let patched = shop
        .send(
            Method::PATCH,
            &format!("/api/products/{mug}"),
            Some(&shop.admin),
            Some(json!({ "price_cents": 1500 })),
        )
        .await;
    patched.ok(200);
    let stored = shop.get_order(&alice, &id_of(&order)).await;
    assert_eq!(stored.ok(200), &order);
    let again = shop.order(&alice, &mug, 1, "tok_visa").await;
    assert_eq!(again["items"][0]["unit_price_cents"], 1500);
    assert_eq!(again["total_cents"], 1500);
    assert_eq!(shop.stock(&mug).await, 7);
}

#[tokio::test(flavor = "multi_thread")]
async fn unknown_products_short_stock_and_invalid_orders_are_refused() {
    let shop = Shop::start(&embedded(), NO_PAYMENT).await;
    let alice = shop.user(&["USER"]);
    let mug = shop.product("Mug", 1250, 3).await;
    let tea = shop.product("Tea", 499, 5).await;

    // Unknown product: 422 naming it, nothing reserved (all or nothing).
    let ghost = uuid::Uuid::new_v4().to_string();
    let answer = shop
        .place(
            &alice,
            json!([{ "product_id": tea, "quantity": 1 }, { "product_id": ghost, "quantity": 1 }]),
            "tok_visa",
        )
        .await;
    let error = answer.error(422, "unknown_product");
    assert!(
        error["message"].as_str().unwrap().contains(&ghost),
        "{error}"
    );
    assert_eq!(shop.stock(&tea).await, 5);

    // Short stock: 409 naming the product, no stock changes.
    let answer = shop
        .place(
            &alice,
            json!([{ "product_id": tea, "quantity": 2 }, { "product_id": mug, "quantity": 4 }]),
            "tok_visa",
        )
        .await;
    let error = answer.error(409, "insufficient_stock");
    assert!(error["message"].as_str().unwrap().contains(&mug), "{error}");
    assert_eq!((shop.stock(&mug).await, shop.stock(&tea).await), (3, 5));
    // Neither failure left an order behind.
    let list = shop
        .send(Method::GET, "/api/orders", Some(&alice), None)
        .await;
    assert_eq!(list.ok(200)["total"], 0, "{}", list.body);

    // Validation: 400 naming the field, before anything is reserved.
    let line = |product_id: &str, quantity: Value| json!({ "product_id": product_id, "quantity": quantity });
    for (body, field) in [
        (json!({ "payment_method": "tok_visa" }), "items"),
        (
            json!({ "items": [], "payment_method": "tok_visa" }),
            "items",
        ),
        (
            json!({ "items": vec![line(&mug, json!(1)); 101], "payment_method": "tok_visa" }),
            "items",
        ),
        (
            json!({ "items": [line("not-a-uuid", json!(1))], "payment_method": "tok_visa" }),
            "items[0].product_id",
        ),
        (
            json!({ "items": [line(&mug, json!(0))], "payment_method": "tok_visa" }),
            "items[0].quantity",
        ),
        (
            json!({ "items": [line(&tea, json!(1)), line(&mug, json!(-2))], "payment_method": "tok_visa" }),
            "items[1].quantity",
        ),
        (
            json!({ "items": [line(&mug, json!("2"))], "payment_method": "tok_visa" }),
            "items[0].quantity",
        ),
        (
            json!({ "items": [line(&mug, json!(1)), line(&mug, json!(1))], "payment_method": "tok_visa" }),
            "items[1].product_id",
        ),
        (
            json!({ "items": [line(&mug, json!(1))], "payment_method": "   " }),
            "payment_method",
        ),
        (json!({ "items": [line(&mug, json!(1))] }), "payment_method"),
        (
            json!({ "items": [line(&mug, json!(1))], "payment_method": 4242 }),
            "payment_method",
        ),
    ] {
        let answer = shop
            .send(Method::POST, "/api/orders", Some(&alice), Some(body))
            .await;
        answer.invalid(field);
    }
    let answer = reqwest::Client::new()
        .post(shop.shop.host.url("/api/orders"))
        .bearer_auth(&alice.token)
        .body("{not json")
        .send()
        .await
        .unwrap();
    assert_eq!(answer.status(), 400);
    assert_eq!((shop.stock(&mug).await, shop.stock(&tea).await), (3, 5));

    // No token: the host answers 401 before the component runs.
    let answer = shop
        .send(
            Method::POST,
            "/api/orders",
            None,
            Some(json!({ "items": [line(&mug, json!(1))], "payment_method": "tok_visa" })),
        )
        .await;
    answer.error(401, "unauthorized");
}

#[tokio::test(flavor = "multi_thread")]
async fn orders_are_visible_to_their_owner_and_admins_only() {
    let shop = Shop::start(&embedded(), NO_PAYMENT).await;
    let (alice, bob) = (shop.user(&["USER"]), shop.user(&["USER"]));
    let mug = shop.product("Mug", 1000, 100).await;
    let mut placed = Vec::new();
    for quantity in 1..=3 {
        placed.push(shop.order(&alice, &mug, quantity, "tok_visa").await);
    }
    let bobs = shop.order(&bob, &mug, 1, "tok_visa").await;

    // The caller's own orders, newest first, paginated.
    let list = shop
        .send(Method::GET, "/api/orders", Some(&alice), None)
        .await;
    let list = list.ok(200);
    assert_eq!(list["total"], 3, "{list}");
    assert_eq!((&list["page"], &list["page_size"]), (&json!(1), &json!(20)));
    let ids: Vec<&str> = list["items"]
        .as_array()
        .unwrap()
        .iter()
        .map(|o| o["id"].as_str().unwrap())
        .collect();
    let newest_first: Vec<&str> = placed
        .iter()
        .rev()
        .map(|o| o["id"].as_str().unwrap())
        .collect();
    assert_eq!(ids, newest_first);
    assert_eq!(list["items"][0], placed[2], "lines included");
    let page = shop
        .send(
            Method::GET,
            "/api/orders?page=2&page_size=2",
            Some(&alice),
            None,
        )
        .await;
    let page = page.ok(200);
    assert_eq!(page["total"], 3);
    assert_eq!(page["items"].as_array().unwrap().len(), 1);
    assert_eq!(page["items"][0]["id"], placed[0]["id"]);
    shop.send(Method::GET, "/api/orders?page_size=101", Some(&alice), None)
        .await
        .invalid("page_size");
    let list = shop
        .send(Method::GET, "/api/orders", Some(&bob), None)
        .await;
    assert_eq!(list.ok(200)["total"], 1);

    // One order: the owner and admins see it; anyone else gets 404, as for a malformed id.
    let id = id_of(&placed[0]);
    assert_eq!(shop.get_order(&alice, &id).await.ok(200), &placed[0]);
    assert_eq!(shop.get_order(&shop.admin, &id).await.ok(200), &placed[0]);
    shop.get_order(&bob, &id).await.error(404, "not_found");
    assert_eq!(shop.get_order(&bob, &id_of(&bobs)).await.ok(200), &bobs);
    for missing in [uuid::Uuid::new_v4().to_string(), "not-an-id".to_owned()] {
        shop.get_order(&alice, &missing)
            .await
            .error(404, "not_found");
        shop.get_order(&shop.admin, &missing)
            .await
            .error(404, "not_found");
    }
    // The admin's own list holds only the admin's orders.
    let list = shop
        .send(Method::GET, "/api/orders", Some(&shop.admin), None)
        .await;
    assert_eq!(list.ok(200)["total"], 0);
    // Without a token: 401.
    shop.send(Method::GET, &format!("/api/orders/{id}"), None, None)
        .await
        .error(401, "unauthorized");
}

#[tokio::test(flavor = "multi_thread")]
async fn cancelling_a_pending_order_gives_its_stock_back() {
    let shop = Shop::start(&embedded(), NO_PAYMENT).await;
    let (alice, bob) = (shop.user(&["USER"]), shop.user(&["USER"]));
    let mug = shop.product("Mug", 1000, 5).await;
    let order = shop.order(&alice, &mug, 2, "tok_visa").await;
    let id = id_of(&order);
    assert_eq!(shop.stock(&mug).await, 3);
    let path = format!("/api/orders/{id}/cancel");
    let cancel = async |user: &User| shop.send(Method::POST, &path, Some(user), None).await;

    // Someone else: 404; an admin who is not the owner: 403. Nothing changes.
    cancel(&bob).await.error(404, "not_found");
    cancel(&shop.admin).await.error(403, "forbidden");
    assert_eq!(shop.stock(&mug).await, 3);

    // The owner: CANCELLED, the stock back.
    let cancelled = cancel(&alice).await;
    let cancelled = cancelled.ok(200);
    assert_eq!(cancelled["status"], "CANCELLED", "{cancelled}");
    assert_eq!(cancelled["items"], order["items"]);
    assert_ne!(cancelled["updated_at"], order["updated_at"]);
    assert_eq!(shop.stock(&mug).await, 5);
    assert_eq!(
        shop.get_order(&alice, &id).await.ok(200)["status"],
        "CANCELLED"
    );

    // Only a PENDING order can be cancelled; the stock comes back once.
    let again = cancel(&alice).await;
    let error = again.error(409, "not_cancellable");
    assert!(
        error["message"].as_str().unwrap().contains("CANCELLED"),
        "{error}"
    );
    assert_eq!(shop.stock(&mug).await, 5);
    shop.send(
        Method::POST,
        &format!("/api/orders/{}/cancel", uuid::Uuid::new_v4()),
        Some(&alice),
        None,
    )
    .await
    .error(404, "not_found");
    shop.send(
        Method::GET,
        &format!("/api/orders/{id}/cancel"),
        Some(&alice),
        None,
    )
    .await
    .error(405, "method_not_allowed");
}

/// A failing catalog: placing and cancelling answer 503 `catalog_unavailable` and change
/// nothing; once the catalog is back, the cancel goes through.
#[tokio::test(flavor = "multi_thread")]
async fn a_failing_catalog_is_503_catalog_unavailable_and_changes_nothing() {
    let shop = Shop::start(&embedded(), NO_PAYMENT).await;
    let alice = shop.user(&["USER"]);
    let mug = shop.product("Mug", 1000, 5).await;
    let order = shop.order(&alice, &mug, 2, "tok_visa").await;
    let id = id_of(&order);

    let shop = shop
        .restart(Parts {
            catalog: Catalog::Trapping,
            payment: false,
        })
        .await;
    shop.place(
        &alice,
        json!([{ "product_id": mug, "quantity": 1 }]),
        "tok_visa",
    )
    .await
    .error(503, "catalog_unavailable");
    let cancel = format!("/api/orders/{id}/cancel");
    shop.send(Method::POST, &cancel, Some(&alice), None)
        .await
        .error(503, "catalog_unavailable");
    assert_eq!(
        shop.get_order(&alice, &id).await.ok(200),
        &order,
        "still PENDING"
    );
    let list = shop
        .send(Method::GET, "/api/orders", Some(&alice), None)
        .await;
    assert_eq!(list.ok(200)["total"], 1);

    let shop = shop.restart(NO_PAYMENT).await;
    assert_eq!(shop.stock(&mug).await, 3, "the reservation held");
    let cancelled = shop.send(Method::POST, &cancel, Some(&alice), None).await;
    assert_eq!(cancelled.ok(200)["status"], "CANCELLED");
    assert_eq!(shop.stock(&mug).await, 5);
}

/// Stock 3, eight concurrent orders of one unit: three are placed, five get 409, stock 0.
async fn last_units(shop: &Shop) {
    let mug = shop.product("Last", 700, 3).await;
    let buyers: Vec<User> = (0..8).map(|_| shop.user(&["USER"])).collect();
    let answers = futures::future::join_all(buyers.iter().map(|buyer| {
        shop.place(
            buyer,
            json!([{ "product_id": mug, "quantity": 1 }]),
            "tok_visa",
        )
    }))
    .await;
    let mut statuses: Vec<u16> = answers.iter().map(|a| a.status).collect();
    statuses.sort_unstable();
    assert_eq!(
        statuses,
        [201, 201, 201, 409, 409, 409, 409, 409],
        "{answers:?}"
    );
    for answer in answers.iter().filter(|a| a.status == 409) {
        answer.error(409, "insufficient_stock");
    }
    assert_eq!(shop.stock(&mug).await, 0);
}

#[tokio::test(flavor = "multi_thread")]
async fn concurrent_orders_for_the_last_units_on_the_embedded_backends() {
    let shop = Shop::start(&embedded(), NO_PAYMENT).await;
    last_units(&shop).await;
}

// --- payments -----------------------------------------------------------------------------

/// tok_visa → PAID, the payment visible to its owner and admins; tok_decline and an unknown
/// method → PAYMENT_FAILED with the stock released; tok_trap_once → one trap, then one charge.
async fn payment_flow(shop: &Shop) {
    let (alice, bob) = (shop.user(&["USER"]), shop.user(&["USER"]));
    let mug = shop.product("Mug", 1250, 10).await;
    let db = shop.payment_db().await;

    // Two lines (stored in one statement), read back as placed, and paid.
    let (cup, tea) = (
        shop.product("Cup", 800, 3).await,
        shop.product("Tea", 499, 3).await,
    );
    let lines = json!([
        { "product_id": tea, "quantity": 2 },
        { "product_id": cup, "quantity": 1 },
    ]);
    let two = shop.place(&bob, lines, "tok_visa").await.ok(201).clone();
    assert_eq!(two["items"].as_array().map(Vec::len), Some(2), "{two}");
    let settled = shop.settled(&bob, &id_of(&two), "PAID").await;
    assert_eq!(settled["items"], two["items"]);

    // Paid.
    let order = shop.order(&alice, &mug, 2, "tok_visa").await;
    let id = id_of(&order);
    let paid = shop.settled(&alice, &id, "PAID").await;
    assert_eq!(paid["total_cents"], 2500);
    assert_eq!(shop.stock(&mug).await, 8, "a paid order keeps its stock");
    let payments = shop.payments(&alice, &id).await;
    let payments = payments.ok(200);
    assert_eq!(payments["items"].as_array().unwrap().len(), 1, "{payments}");
    let payment = &payments["items"][0];
    assert_eq!(payment["order_id"], id.as_str());
    assert_eq!(payment["user_id"], alice.id.as_str());
    assert_eq!(payment["amount_cents"], 2500);
    assert_eq!(payment["method"], "tok_visa");
    assert_eq!(payment["status"], "SUCCEEDED");
    assert_eq!(payment["reason"], Value::Null);
    assert!(uuid::Uuid::parse_str(payment["id"].as_str().unwrap()).is_ok());
    assert!(payment["created_at"].as_str().unwrap().ends_with('Z'));
    assert_eq!(shop.payments(&shop.admin, &id).await.ok(200), payments);
    shop.payments(&bob, &id).await.error(404, "not_found");
    shop.payments(&alice, &uuid::Uuid::new_v4().to_string())
        .await
        .error(404, "not_found");
    shop.send(Method::GET, "/api/payments", Some(&alice), None)
        .await
        .invalid("order_id");
    shop.payments(&alice, "nope").await.invalid("order_id");
    shop.send(
        Method::GET,
        &format!("/api/payments?order_id={id}"),
        None,
        None,
    )
    .await
    .error(401, "unauthorized");
    // A paid order cannot be cancelled.
    shop.send(
        Method::POST,
        &format!("/api/orders/{id}/cancel"),
        Some(&alice),
        None,
    )
    .await
    .error(409, "not_cancellable");
    assert_eq!(shop.stock(&mug).await, 8);
    assert_eq!(
        count(
            &db,
            "select count(*) as n from gateway_calls where order_id = $1",
            &id
        )
        .await,
        1
    );

    // Declined, and an unknown method: PAYMENT_FAILED, the stock back.
    for (method, reason) in [
        ("tok_decline", "card_declined"),
        ("tok_mastercard", "unknown_payment_method"),
    ] {
        let order = shop.order(&alice, &mug, 3, method).await;
        let id = id_of(&order);
        shop.settled(&alice, &id, "PAYMENT_FAILED").await;
        assert_eq!(shop.stock(&mug).await, 8, "{method}: stock released");
        let payments = shop.payments(&alice, &id).await;
        let payment = &payments.ok(200)["items"][0];
        assert_eq!(
            (
                &payment["status"],
                &payment["reason"],
                &payment["amount_cents"]
            ),
            (&json!("FAILED"), &json!(reason), &json!(3750)),
            "{payment}"
        );
    }

    // A trap before charging: redelivered, then charged exactly once.
    let order = shop.order(&alice, &mug, 1, "tok_trap_once").await;
    let id = id_of(&order);
    shop.settled(&alice, &id, "PAID").await;
    let payments = shop.payments(&alice, &id).await;
    assert_eq!(payments.ok(200)["items"].as_array().unwrap().len(), 1);
    assert_eq!(payments.body["items"][0]["status"], "SUCCEEDED");
    let one = |table: &str| format!("select count(*) as n from {table} where order_id = $1");
    assert_eq!(
        count(&db, &one("trap_marks"), &id).await,
        1,
        "it trapped once"
    );
    let on_redelivery = "select count(*) as n from handled_events \
                         where order_id = $1 and outcome = 'charged' and delivery = 2";
    assert_eq!(
        count(&db, on_redelivery, &id).await,
        1,
        "charged when redelivered"
    );
    assert_eq!(
        count(&db, &one("gateway_calls"), &id).await,
        1,
        "one charge"
    );
    assert_eq!(count(&db, &one("payments"), &id).await, 1, "one payment");
    assert_eq!(shop.stock(&mug).await, 7);
}

#[tokio::test(flavor = "multi_thread")]
async fn payments_on_the_embedded_backends() {
    let shop = Shop::start(&embedded(), EVERYTHING).await;
    payment_flow(&shop).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn payments_on_postgres_redis_and_nats() {
    let Some(backends) = Backends::production() else {
        return;
    };
    let shop = Shop::start(&backends, EVERYTHING).await;
    payment_flow(&shop).await;
    duplicated_order_created(&shop, backends.nats_url.as_deref().unwrap()).await;
    last_units(&shop).await;
}

/// A copy of `order`'s order.created event (same data, a new event id), as a redelivery or a
/// second publisher would send it.
fn order_created_copy(order: &Value) -> agora_messaging::Message {
    let items: Vec<Value> = order["items"]
        .as_array()
        .unwrap()
        .iter()
        .map(|item| {
            json!({
                "product_id": item["product_id"],
                "quantity": item["quantity"],
                "unit_price_cents": item["unit_price_cents"],
            })
        })
        .collect();
    let event_id = uuid::Uuid::new_v4().to_string();
    let event = json!({
        "id": event_id,
        "type": "order.created",
        "version": 1,
        "occurred_at": order["created_at"],
        "data": {
            "order_id": order["id"],
            "user_id": order["user_id"],
            "items": items,
            "total_cents": order["total_cents"],
            "payment_method": order["payment_method"],
        },
    });
    let headers = vec![
        ("content-type".to_owned(), "application/json".to_owned()),
        ("agora-event-id".to_owned(), event_id.clone()),
        ("agora-event-type".to_owned(), "order.created".to_owned()),
        ("agora-event-version".to_owned(), "1".to_owned()),
    ];
    agora_messaging::Message {
        id: event_id,
        subject: "order.created".to_owned(),
        payload: serde_json::to_vec(&event).unwrap(),
        headers,
    }
}

/// order.created published again straight to NATS (`agora.order.created`): once after the
/// order is paid, once racing the original. Each order is charged once.
async fn duplicated_order_created(shop: &Shop, nats_url: &str) {
    let nats = agora_messaging::NatsBackend::connect(nats_url)
        .await
        .unwrap();
    let alice = shop.user(&["USER"]);
    let mug = shop.product("Mug", 900, 10).await;
    let db = shop.payment_db().await;
    let one = |table: &str| format!("select count(*) as n from {table} where order_id = $1");

    // After the payment: acknowledged, nothing charged or published.
    let order = shop.order(&alice, &mug, 1, "tok_visa").await;
    let id = id_of(&order);
    shop.settled(&alice, &id, "PAID").await;
    let copy = order_created_copy(&order);
    let copy_id = copy.id.clone();
    agora_messaging::MessagingBackend::publish(&nats, &copy)
        .await
        .unwrap();
    let started = Instant::now();
    while count(
        &db,
        "select count(*) as n from handled_events where event_id = $1 and outcome = 'duplicate'",
        &copy_id,
    )
    .await
        == 0
    {
        assert!(
            started.elapsed() < SETTLE,
            "the copy {copy_id} of order.created was not handled"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(
        count(&db, &one("gateway_calls"), &id).await,
        1,
        "one charge"
    );
    assert_eq!(count(&db, &one("payments"), &id).await, 1, "one payment");
    assert_eq!(
        shop.payments(&alice, &id).await.ok(200)["items"]
            .as_array()
            .unwrap()
            .len(),
        1
    );

    // Racing the original: whichever comes first charges, the other is a duplicate.
    let order = shop.order(&alice, &mug, 1, "tok_visa").await;
    let id = id_of(&order);
    agora_messaging::MessagingBackend::publish(&nats, &order_created_copy(&order))
        .await
        .unwrap();
    shop.settled(&alice, &id, "PAID").await;
    let started = Instant::now();
    while count(&db, &one("handled_events"), &id).await < 2 {
        assert!(
            started.elapsed() < SETTLE,
            "both copies of order.created for {id} were not handled"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let charged =
        "select count(*) as n from handled_events where order_id = $1 and outcome = 'charged'";
    assert_eq!(count(&db, charged, &id).await, 1);
    assert_eq!(
        count(&db, &one("gateway_calls"), &id).await,
        1,
        "one charge"
    );
    assert_eq!(count(&db, &one("payments"), &id).await, 1, "one payment");
    assert_eq!(shop.stock(&mug).await, 8);
}
