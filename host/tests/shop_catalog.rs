//! The shop's catalog component (components/catalog), end to end over real HTTP with the real
//! `catalog.wasm`, on both backend sets: embedded (SQLite, in-memory cache) and production
//! (PostgreSQL, Redis).
//!
//! Admin writes and their validation, the host's role checks, public reads and lists, the
//! cache (observable through `x-cache`), and the internal reserve/release endpoints, which
//! only components may call: the tests reach them through `fixture-catalog-caller`, a
//! component that forwards a request to `http://catalog.agora.internal` in-process.
//!
//! On PostgreSQL the `catalog` schema outlives the test and is shared by every run: each test
//! uses SKUs, categories and names carrying a tag of its own and never assumes a table is
//! empty.

#![allow(clippy::unwrap_used)]

mod common;

use common::shop::{Answer, Setup, ShopManifest};
use common::{Backends, json_error};
use reqwest::Method;
use serde_json::{Value, json};
use std::sync::atomic::{AtomicU64, Ordering};

const ADMIN_API_TOKEN: &str = "catalog-tests-admin-api-token";

/// agora.toml's catalog without its sample products (a test counts what it lists), and the
/// caller fixture at `/call/...`, which forwards to `http://catalog.agora.internal`.
fn manifest() -> ShopManifest {
    ShopManifest::load()
        .only(&["catalog"])
        .config("catalog", "sample_products", "false")
        .with(&common::component_table(
            "catalog-caller",
            "fixture-catalog-caller",
            &["/call/..."],
            r#"grants = { http = ["http://catalog.agora.internal"] }"#,
        ))
}

/// A running shop with the catalog, tokens for an admin and a user, and a tag unique to the
/// test for SKUs, names and categories.
struct Shop {
    shop: common::shop::Shop,
    admin: String,
    user: String,
    tag: String,
    /// `x-cache` values seen by [`Shop::product`].
    hits: AtomicU64,
    misses: AtomicU64,
}

impl std::ops::Deref for Shop {
    type Target = common::shop::Shop;
    fn deref(&self) -> &common::shop::Shop {
        &self.shop
    }
}

impl Answer {
    /// Asserts the status and agora's error shape (`request_id` = the `x-request-id` header)
    /// and returns the error object.
    fn error(&self, status: u16, code: &str) -> &Value {
        assert_eq!(self.status, status, "{}", self.text);
        let error = &self.json()["error"];
        assert_eq!(error["code"], code, "{}", self.body);
        assert!(
            !error["message"].as_str().unwrap().is_empty(),
            "{}",
            self.body
        );
        let request_id = error["request_id"].as_str().unwrap();
        assert!(!request_id.is_empty(), "{}", self.body);
        // Answers forwarded by the caller fixture carry the inner call's id separately.
        let header = self
            .header("x-inner-request-id")
            .or_else(|| self.header("x-request-id"));
        assert_eq!(Some(request_id), header, "{}", self.body);
        error
    }

    /// Asserts 400 `validation_failed` about `field`.
    fn invalid(&self, field: &str) {
        let error = self.error(400, "validation_failed");
        assert_eq!(error["field"], field, "{}", self.body);
    }
}

impl Shop {
    async fn start(backends: &Backends) -> Shop {
        // The catalog publishes and subscribes to nothing: no NATS.
        let backends = Backends {
            nats_url: None,
            ..backends.clone()
        };
        let setup = Setup::new(backends).admin_api(ADMIN_API_TOKEN);
        let shop = common::shop::Shop::start(&manifest(), setup).await;
        let sign = |roles: &[&str]| shop.token(&uuid::Uuid::new_v4().to_string(), roles);
        Shop {
            admin: sign(&["USER", "ADMIN"]),
            user: sign(&["USER"]),
            shop,
            tag: uuid::Uuid::new_v4().simple().to_string()[..12].to_owned(),
            hits: AtomicU64::new(0),
            misses: AtomicU64::new(0),
        }
    }

    /// As the admin.
    async fn admin(&self, method: Method, path: &str, body: Option<Value>) -> Answer {
        self.send(method, path, Some(&self.admin), body).await
    }

    /// A unique SKU.
    fn sku(&self, stem: &str) -> String {
        format!("{stem}-{}", self.tag)
    }

    /// Creates a product (201) from `fields` over a valid default, and returns it.
    async fn create(&self, fields: Value) -> Value {
        let mut body = json!({
            "name": "Mug",
            "description": "A mug",
            "price_cents": 1250,
            "sku": self.sku(&uuid::Uuid::new_v4().simple().to_string()[..8]),
            "stock": 10,
            "images": ["https://img.example/mug.png"],
            "category": format!("kitchen-{}", self.tag),
        });
        for (key, value) in fields.as_object().unwrap() {
            body[key] = value.clone();
        }
        let answer = self.admin(Method::POST, "/api/products", Some(body)).await;
        assert_eq!(answer.status, 201, "{}", answer.body);
        answer.body
    }

    /// `GET /api/products/{id}`: the answer and its `x-cache`.
    async fn product(&self, id: &str) -> (Answer, String) {
        let answer = self.get(&format!("/api/products/{id}"), None).await;
        let cache = answer
            .header("x-cache")
            .unwrap_or_else(|| panic!("no x-cache header: {}", answer.body))
            .to_owned();
        match cache.as_str() {
            "hit" => self.hits.fetch_add(1, Ordering::Relaxed),
            "miss" => self.misses.fetch_add(1, Ordering::Relaxed),
            other => panic!("x-cache: {other}"),
        };
        (answer, cache)
    }

    async fn stock(&self, id: &str) -> i64 {
        let (answer, _) = self.product(id).await;
        assert_eq!(answer.status, 200, "{}", answer.body);
        answer.body["stock"].as_i64().unwrap()
    }

    /// `POST /api/products/internal/ACTION` from another component, in-process.
    async fn internal(&self, action: &str, body: Value) -> Answer {
        self.send(
            Method::POST,
            &format!("/call/catalog/api/products/internal/{action}"),
            None,
            Some(body),
        )
        .await
    }

    async fn reserve(&self, reservation_id: impl Into<String>, items: Value) -> Answer {
        let reservation_id = reservation_id.into();
        self.internal(
            "reserve",
            json!({ "reservation_id": reservation_id, "items": items }),
        )
        .await
    }

    async fn release(&self, reservation_id: &str) -> Answer {
        self.internal("release", json!({ "reservation_id": reservation_id }))
            .await
    }
}

fn id_of(product: &Value) -> String {
    product["id"].as_str().unwrap().to_owned()
}

fn new_id() -> String {
    uuid::Uuid::new_v4().to_string()
}

// --- admin writes -------------------------------------------------------------------------

async fn admin_writes(backends: Backends) {
    let shop = Shop::start(&backends).await;
    let sku = shop.sku("MUG");

    // 201 with every field, timestamps in RFC 3339 UTC.
    let created = shop
        .admin(
            Method::POST,
            "/api/products",
            Some(json!({
                "name": "Blue mug", "description": "Ceramic, 300 ml", "price_cents": 1250,
                "sku": sku, "stock": 7, "images": ["https://img.example/1.png"],
                "category": "kitchen",
            })),
        )
        .await;
    assert_eq!(created.status, 201, "{}", created.body);
    let product = created.body.clone();
    let id = id_of(&product);
    assert!(uuid::Uuid::parse_str(&id).is_ok(), "{product}");
    assert_eq!(
        created.header("location"),
        Some(format!("/api/products/{id}").as_str())
    );
    for (field, value) in [
        ("name", json!("Blue mug")),
        ("description", json!("Ceramic, 300 ml")),
        ("price_cents", json!(1250)),
        ("sku", json!(sku)),
        ("stock", json!(7)),
        ("images", json!(["https://img.example/1.png"])),
        ("category", json!("kitchen")),
    ] {
        assert_eq!(product[field], value, "{field}: {product}");
    }
    let created_at = product["created_at"].as_str().unwrap();
    assert!(
        created_at.len() >= 20 && created_at.as_bytes()[10] == b'T' && created_at.ends_with('Z'),
        "{created_at}"
    );
    assert_eq!(product["updated_at"], product["created_at"]);

    // Optional fields default; the public read answers the same product, no token needed.
    let minimal = shop
        .admin(
            Method::POST,
            "/api/products",
            Some(json!({"name": "Plain", "price_cents": 1, "sku": shop.sku("PLAIN"), "stock": 0})),
        )
        .await;
    assert_eq!(minimal.status, 201, "{}", minimal.body);
    assert_eq!(minimal.body["description"], "");
    assert_eq!(minimal.body["category"], "");
    assert_eq!(minimal.body["images"], json!([]));
    let (read, _) = shop.product(&id).await;
    assert_eq!((read.status, &read.body), (200, &product));

    // 409: the SKU is taken.
    let taken = shop
        .admin(
            Method::POST,
            "/api/products",
            Some(json!({"name": "Other", "price_cents": 5, "sku": sku, "stock": 1})),
        )
        .await;
    taken.error(409, "sku_taken");

    // 400 naming the field.
    let valid = json!({"name": "N", "price_cents": 5, "sku": shop.sku("V"), "stock": 1});
    for (change, field) in [
        (json!({"name": "  "}), "name"),
        (json!({"name": null}), "name"),
        (json!({"sku": ""}), "sku"),
        (json!({"sku": " \t"}), "sku"),
        (json!({"price_cents": 0}), "price_cents"),
        (json!({"price_cents": -100}), "price_cents"),
        (json!({"price_cents": 9.99}), "price_cents"),
        (json!({"price_cents": "12"}), "price_cents"),
        (json!({"stock": -1}), "stock"),
        (json!({"images": "https://img.example/1.png"}), "images"),
        (json!({"images": [1]}), "images"),
        (json!({"description": 3}), "description"),
        (json!({"color": "blue"}), "color"),
    ] {
        let mut body = valid.clone();
        for (key, value) in change.as_object().unwrap() {
            body[key] = value.clone();
        }
        let answer = shop
            .admin(Method::POST, "/api/products", Some(body.clone()))
            .await;
        answer.invalid(field);
    }
    let mut missing = valid.clone();
    missing.as_object_mut().unwrap().remove("stock");
    shop.admin(Method::POST, "/api/products", Some(missing))
        .await
        .invalid("stock");
    shop.admin(Method::POST, "/api/products", Some(json!([1, 2])))
        .await
        .error(400, "invalid_json");

    // PATCH changes only what it names.
    let path = format!("/api/products/{id}");
    let patched = shop
        .admin(
            Method::PATCH,
            &path,
            Some(json!({"price_cents": 1500, "images": []})),
        )
        .await;
    assert_eq!(patched.status, 200, "{}", patched.body);
    let after = &patched.body;
    assert_eq!(after["price_cents"], 1500);
    assert_eq!(after["images"], json!([]));
    for unchanged in [
        "id",
        "name",
        "description",
        "sku",
        "stock",
        "category",
        "created_at",
    ] {
        assert_eq!(after[unchanged], product[unchanged], "{unchanged}: {after}");
    }
    assert!(
        after["updated_at"].as_str().unwrap() > product["updated_at"].as_str().unwrap(),
        "{after}"
    );
    let patched = shop
        .admin(
            Method::PATCH,
            &path,
            Some(json!({"name": "Green mug", "description": "", "stock": 0, "category": "mugs"})),
        )
        .await;
    assert_eq!(patched.status, 200, "{}", patched.body);
    assert_eq!(
        (
            &patched.body["name"],
            &patched.body["description"],
            &patched.body["stock"],
            &patched.body["category"],
            &patched.body["price_cents"],
        ),
        (
            &json!("Green mug"),
            &json!(""),
            &json!(0),
            &json!("mugs"),
            &json!(1500)
        )
    );

    // PATCH is validated like POST, and the SKU is immutable.
    let answer = shop
        .admin(Method::PATCH, &path, Some(json!({"sku": "NEW"})))
        .await;
    answer.invalid("sku");
    assert_eq!(answer.body["error"]["message"], "sku is immutable");
    for (body, field) in [
        (json!({"name": ""}), "name"),
        (json!({"price_cents": 0}), "price_cents"),
        (json!({"stock": -5}), "stock"),
        (json!({"name": null}), "name"),
        (json!({"images": [""]}), "images"),
    ] {
        shop.admin(Method::PATCH, &path, Some(body))
            .await
            .invalid(field);
    }
    let (read, _) = shop.product(&id).await;
    assert_eq!(
        read.body["price_cents"], 1500,
        "refused patches change nothing"
    );
    let unknown = format!("/api/products/{}", new_id());
    shop.admin(Method::PATCH, &unknown, Some(json!({"stock": 1})))
        .await
        .error(404, "not_found");

    // The host checks roles: 401 without a token, 403 without ADMIN; reads stay public.
    let body = json!({"name": "X", "price_cents": 5, "sku": shop.sku("X"), "stock": 1});
    let refused = shop
        .send(Method::POST, "/api/products", None, Some(body.clone()))
        .await;
    refused.error(401, "unauthorized");
    assert!(refused.header("www-authenticate").is_some());
    let response = reqwest::Client::new()
        .post(shop.host.url("/api/products"))
        .bearer_auth(&shop.user)
        .json(&body)
        .send()
        .await
        .unwrap();
    let (code, _, _) = json_error(response, 403).await;
    assert_eq!(code, "forbidden");
    for method in [Method::PATCH, Method::DELETE, Method::PUT] {
        shop.send(
            method.clone(),
            &path,
            Some(shop.user.as_str()),
            Some(json!({"stock": 1})),
        )
        .await
        .error(403, "forbidden");
        shop.send(method, &path, None, Some(json!({"stock": 1})))
            .await
            .error(401, "unauthorized");
    }
    let (read, _) = shop.product(&id).await;
    assert_eq!(read.body["stock"], 0, "refused writes change nothing");

    // DELETE: 204, then 404 everywhere.
    let deleted = shop.admin(Method::DELETE, &path, None).await;
    assert_eq!((deleted.status, &deleted.body), (204, &Value::Null));
    let (read, _) = shop.product(&id).await;
    read.error(404, "not_found");
    shop.admin(Method::DELETE, &path, None)
        .await
        .error(404, "not_found");
    shop.admin(Method::PATCH, &path, Some(json!({"stock": 1})))
        .await
        .error(404, "not_found");
    let (read, _) = shop.product("not-a-uuid").await;
    read.error(404, "not_found");

    // Its SKU is free again.
    let again = shop
        .admin(
            Method::POST,
            "/api/products",
            Some(json!({"name": "Again", "price_cents": 5, "sku": sku, "stock": 1})),
        )
        .await;
    assert_eq!(again.status, 201, "{}", again.body);
}

#[tokio::test(flavor = "multi_thread")]
async fn admin_writes_on_the_embedded_backends() {
    admin_writes(Backends::default()).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn admin_writes_on_postgres_and_redis() {
    if let Some(backends) = Backends::production() {
        admin_writes(backends).await;
    }
}

// --- lists ----------------------------------------------------------------------------------

fn names(list: &Value) -> Vec<String> {
    list["items"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p["name"].as_str().unwrap().to_owned())
        .collect()
}

async fn lists(backends: Backends) {
    let shop = Shop::start(&backends).await;
    let tag = shop.tag.clone();
    let category = format!("tea-{tag}");
    let other = format!("coffee-{tag}");
    let in_category = |name: &str, description: &str| json!({"name": name, "description": description, "category": category});
    // Oldest first; lists answer newest first.
    shop.create(in_category(&format!("Blue Mug {tag}"), "ceramic"))
        .await;
    shop.create(in_category("Red Teapot", "A MUG-shaped teapot"))
        .await;
    shop.create(in_category("Cotton towel", "100% cotton, 50_50 weave"))
        .await;
    shop.create(in_category("Plain", "nothing to see")).await;
    shop.create(json!({"name": format!("Espresso mug {tag}"), "category": other}))
        .await;

    let shop = &shop;
    let list = |query: String| async move {
        let answer = shop.get(&format!("/api/products?{query}"), None).await;
        assert_eq!(answer.status, 200, "{query}: {}", answer.body);
        answer.body
    };

    // Category: exact match, newest first.
    let all = list(format!("category={category}")).await;
    assert_eq!(
        names(&all),
        [
            "Plain",
            "Cotton towel",
            "Red Teapot",
            &format!("Blue Mug {tag}")
        ]
    );
    assert_eq!(
        (&all["total"], &all["page"], &all["page_size"]),
        (&json!(4), &json!(1), &json!(20))
    );
    let item = &all["items"][0];
    for field in [
        "id",
        "name",
        "description",
        "price_cents",
        "sku",
        "stock",
        "images",
        "category",
        "created_at",
        "updated_at",
    ] {
        assert!(item.get(field).is_some(), "{field} missing: {item}");
    }
    let partial = list(format!("category=tea-{}", &tag[..6])).await;
    assert_eq!(partial["total"], 0, "category is an exact match");

    // q: case-insensitive, in the name or the description.
    let mugs = list(format!("category={category}&q=mUg")).await;
    assert_eq!(
        names(&mugs),
        ["Red Teapot", &format!("Blue Mug {tag}")],
        "{mugs}"
    );
    assert_eq!(mugs["total"], 2);
    let tagged = list(format!("q={}", tag.to_uppercase())).await;
    assert_eq!(
        names(&tagged),
        [format!("Espresso mug {tag}"), format!("Blue Mug {tag}")],
        "q alone searches every category: {tagged}"
    );
    let both = list(format!("category={other}&q=mug")).await;
    assert_eq!(names(&both), [format!("Espresso mug {tag}")]);
    let spaced = list(format!("category={category}&q=shaped+TEA")).await;
    assert_eq!(names(&spaced), ["Red Teapot"], "+ is a space: {spaced}");

    // LIKE wildcards in q are literal characters.
    for q in ["%25", "_", "0%25+c", "50_50", "%5C"] {
        let found = list(format!("category={category}&q={q}")).await;
        let expected: &[&str] = if q == "%5C" { &[] } else { &["Cotton towel"] };
        assert_eq!(names(&found), expected, "q={q}: {found}");
    }

    // Pages: totals on every page, pages in order.
    let first = list(format!("category={category}&page_size=3")).await;
    let second = list(format!("category={category}&page_size=3&page=2")).await;
    let third = list(format!("category={category}&page_size=3&page=3")).await;
    assert_eq!(
        (&first["total"], &second["total"], &third["total"]),
        (&json!(4), &json!(4), &json!(4))
    );
    assert_eq!(
        (&second["page"], &second["page_size"]),
        (&json!(2), &json!(3))
    );
    let paged: Vec<String> = [names(&first), names(&second)].concat();
    assert_eq!(paged, names(&all));
    assert_eq!(names(&third), Vec::<String>::new());

    // Bad paging parameters.
    for (query, field) in [
        ("page_size=101", "page_size"),
        ("page_size=0", "page_size"),
        ("page=0", "page"),
        ("page=x", "page"),
    ] {
        shop.get(&format!("/api/products?category={category}&{query}"), None)
            .await
            .invalid(field);
    }
    let largest = list(format!("category={category}&page_size=100")).await;
    assert_eq!(largest["page_size"], 100);
}

#[tokio::test(flavor = "multi_thread")]
async fn lists_on_the_embedded_backends() {
    lists(Backends::default()).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn lists_on_postgres_and_redis() {
    if let Some(backends) = Backends::production() {
        lists(backends).await;
    }
}

// --- the cache ------------------------------------------------------------------------------

async fn cache(backends: Backends) {
    let shop = Shop::start(&backends).await;
    let product = shop.create(json!({"name": "Cached", "stock": 3})).await;
    let id = id_of(&product);
    let path = format!("/api/products/{id}");

    let (first, cache) = shop.product(&id).await;
    assert_eq!((first.status, cache.as_str()), (200, "miss"));
    let (second, cache) = shop.product(&id).await;
    assert_eq!((second.status, cache.as_str()), (200, "hit"));
    assert_eq!(first.body, second.body);
    assert_eq!(second.body, product);
    // Reads by id, miss and hit alike, are answered at the catalog's first look
    // (agora_sdk::serve_http!): the same bytes and the same content type either way, and a
    // query string changes neither.
    assert_eq!(first.text, second.text);
    assert_eq!(
        (first.header("content-type"), second.header("content-type")),
        (Some("application/json"), Some("application/json"))
    );
    let (queried, cache) = shop.product(&format!("{id}?fields=all")).await;
    assert_eq!(
        (queried.status, cache.as_str(), &queried.text),
        (200, "hit", &first.text)
    );

    // A change drops the entry: the next read is a miss with the new values.
    let patched = shop
        .admin(
            Method::PATCH,
            &path,
            Some(json!({"name": "Renamed", "price_cents": 999})),
        )
        .await;
    assert_eq!(patched.status, 200, "{}", patched.body);
    let (read, cache) = shop.product(&id).await;
    assert_eq!((read.status, cache.as_str()), (200, "miss"));
    assert_eq!(
        (&read.body["name"], &read.body["price_cents"]),
        (&json!("Renamed"), &json!(999))
    );
    assert_eq!(read.body, patched.body);
    let (read, cache) = shop.product(&id).await;
    assert_eq!((cache.as_str(), &read.body), ("hit", &patched.body));

    // An id is a UUID: its upper-case spelling is the same product and the same cache entry,
    // and a change through either spelling drops that one entry.
    let upper = id.to_ascii_uppercase();
    let (read, cache) = shop.product(&upper).await;
    assert_eq!((read.status, cache.as_str()), (200, "hit"), "{}", read.body);
    assert_eq!(read.body, patched.body);
    let repriced = shop
        .admin(
            Method::PATCH,
            &format!("/api/products/{upper}"),
            Some(json!({"price_cents": 1234})),
        )
        .await;
    assert_eq!(repriced.status, 200, "{}", repriced.body);
    for spelling in [&id, &upper] {
        let (read, _) = shop.product(spelling).await;
        assert_eq!(
            read.body["price_cents"],
            json!(1234),
            "{spelling}: {}",
            read.body
        );
    }

    // So do stock changes by reserve and release.
    let reservation = new_id();
    let reserved = shop
        .reserve(&reservation, json!([{"product_id": id, "quantity": 2}]))
        .await;
    assert_eq!(reserved.status, 200, "{}", reserved.body);
    let (read, cache) = shop.product(&id).await;
    assert_eq!((cache.as_str(), &read.body["stock"]), ("miss", &json!(1)));
    let (_, cache) = shop.product(&id).await;
    assert_eq!(cache, "hit");
    assert_eq!(shop.release(&reservation).await.status, 204);
    let (read, cache) = shop.product(&id).await;
    assert_eq!((cache.as_str(), &read.body["stock"]), ("miss", &json!(3)));

    // A deleted product is a 404 miss, not a stale hit.
    let (_, cache) = shop.product(&id).await;
    assert_eq!(cache, "hit");
    assert_eq!(shop.admin(Method::DELETE, &path, None).await.status, 204);
    let (gone, cache) = shop.product(&id).await;
    gone.error(404, "not_found");
    assert_eq!(cache, "miss");
    let (gone, cache) = shop.product(&id).await;
    assert_eq!((gone.status, cache.as_str()), (404, "miss"));
    let (unknown, cache) = shop.product(&new_id()).await;
    assert_eq!((unknown.status, cache.as_str()), (404, "miss"));

    // The host counted the same hits and misses.
    let admin_api = format!(
        "http://{}/admin/components/catalog",
        shop.host.admin_addr.unwrap()
    );
    let described: Value = reqwest::Client::new()
        .get(admin_api)
        .bearer_auth(ADMIN_API_TOKEN)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(
        described["cache"],
        json!({
            "hits": shop.hits.load(Ordering::Relaxed),
            "misses": shop.misses.load(Ordering::Relaxed),
        }),
        "{described}"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn cache_hits_misses_and_invalidation_on_the_embedded_backends() {
    cache(Backends::default()).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn cache_hits_misses_and_invalidation_on_postgres_and_redis() {
    if let Some(backends) = Backends::production() {
        cache(backends).await;
    }
}

// --- reservations ---------------------------------------------------------------------------

async fn reservations(backends: Backends) {
    let shop = Shop::start(&backends).await;
    let mug = shop
        .create(json!({"name": "Mug", "price_cents": 1250, "stock": 5}))
        .await;
    let pot = shop
        .create(json!({"name": "Teapot", "price_cents": 4000, "stock": 2}))
        .await;
    let (mug_id, pot_id) = (id_of(&mug), id_of(&pot));

    // Internal routes do not exist from outside, token or not.
    for token in [None, Some(shop.admin.as_str()), Some(shop.user.as_str())] {
        for action in ["reserve", "release"] {
            let body = json!({"reservation_id": new_id(), "items": [{"product_id": mug_id, "quantity": 1}]});
            shop.send(
                Method::POST,
                &format!("/api/products/internal/{action}"),
                token,
                Some(body),
            )
            .await
            .error(404, "not_found");
        }
    }
    assert_eq!(shop.stock(&mug_id).await, 5);

    // Reserve: stock taken, prices and names returned, in the request's order.
    let first = new_id();
    let items = json!([
        {"product_id": pot_id, "quantity": 2},
        {"product_id": mug_id, "quantity": 3},
    ]);
    let reserved = shop.reserve(&first, items.clone()).await;
    assert_eq!(reserved.status, 200, "{}", reserved.body);
    assert_eq!(
        reserved.body["items"],
        json!([
            {"product_id": pot_id, "name": "Teapot", "sku": pot["sku"], "unit_price_cents": 4000, "quantity": 2},
            {"product_id": mug_id, "name": "Mug", "sku": mug["sku"], "unit_price_cents": 1250, "quantity": 3},
        ]),
        "{}",
        reserved.body
    );
    assert_eq!(reserved.body["total_cents"], 2 * 4000 + 3 * 1250);
    assert_eq!(
        (shop.stock(&mug_id).await, shop.stock(&pot_id).await),
        (2, 0)
    );

    // The same reservation again: the stored answer, no stock taken — even after a price
    // change, with other items, and when the stock those would take is gone (the teapots are).
    let path = format!("/api/products/{mug_id}");
    shop.admin(Method::PATCH, &path, Some(json!({"price_cents": 9999})))
        .await;
    for other in [&mug_id, &pot_id] {
        let replay = shop
            .reserve(&first, json!([{"product_id": other, "quantity": 1}]))
            .await;
        assert_eq!(
            (replay.status, &replay.body),
            (200, &reserved.body),
            "{}",
            replay.body
        );
    }
    assert_eq!(
        (shop.stock(&mug_id).await, shop.stock(&pot_id).await),
        (2, 0)
    );

    // Not enough of one: 409 naming it, nothing taken.
    let short = shop
        .reserve(
            &new_id(),
            json!([{"product_id": mug_id, "quantity": 1}, {"product_id": pot_id, "quantity": 1}]),
        )
        .await;
    let error = short.error(409, "insufficient_stock");
    assert!(
        error["message"].as_str().unwrap().contains(&pot_id),
        "{error}"
    );
    let short = shop
        .reserve(&new_id(), json!([{"product_id": mug_id, "quantity": 3}]))
        .await;
    short.error(409, "insufficient_stock");
    assert_eq!(
        (shop.stock(&mug_id).await, shop.stock(&pot_id).await),
        (2, 0),
        "all or nothing"
    );

    // An unknown product: 422 naming it, nothing taken.
    let ghost = new_id();
    let unknown = shop
        .reserve(
            &new_id(),
            json!([{"product_id": mug_id, "quantity": 1}, {"product_id": ghost, "quantity": 1}]),
        )
        .await;
    let error = unknown.error(422, "unknown_product");
    assert!(
        error["message"].as_str().unwrap().contains(&ghost),
        "{error}"
    );
    assert_eq!(shop.stock(&mug_id).await, 2);

    // Bad requests.
    for (body, field) in [
        (
            json!({"reservation_id": new_id(), "items": [{"product_id": mug_id, "quantity": 0}]}),
            "items[0].quantity",
        ),
        (
            json!({"reservation_id": new_id(), "items": [{"product_id": mug_id, "quantity": -2}]}),
            "items[0].quantity",
        ),
        (
            json!({"reservation_id": new_id(), "items": [{"product_id": mug_id, "quantity": 1}, {"product_id": mug_id}]}),
            "items[1].quantity",
        ),
        (
            json!({"reservation_id": new_id(), "items": [{"quantity": 1}]}),
            "items[0].product_id",
        ),
        (json!({"reservation_id": new_id(), "items": []}), "items"),
        (
            json!({"items": [{"product_id": mug_id, "quantity": 1}]}),
            "reservation_id",
        ),
    ] {
        shop.internal("reserve", body).await.invalid(field);
    }
    shop.internal("release", json!({}))
        .await
        .invalid("reservation_id");
    assert_eq!(shop.stock(&mug_id).await, 2);

    // Release: the stock comes back once.
    let released = shop.release(&first).await;
    assert_eq!((released.status, &released.body), (204, &Value::Null));
    assert_eq!(
        (shop.stock(&mug_id).await, shop.stock(&pot_id).await),
        (5, 2)
    );
    assert_eq!(shop.release(&first).await.status, 204);
    assert_eq!(shop.release(&new_id()).await.status, 204, "unknown id");
    assert_eq!(
        (shop.stock(&mug_id).await, shop.stock(&pot_id).await),
        (5, 2),
        "released once"
    );
    // A released reservation stays what it was: replaying it takes nothing again.
    let replay = shop.reserve(&first, items).await;
    assert_eq!((replay.status, &replay.body), (200, &reserved.body));
    assert_eq!(shop.stock(&mug_id).await, 5);

    // Now that stock is back, a new reservation sees the new price.
    let later = shop
        .reserve(&new_id(), json!([{"product_id": mug_id, "quantity": 5}]))
        .await;
    assert_eq!(later.status, 200, "{}", later.body);
    assert_eq!(later.body["items"][0]["unit_price_cents"], 9999);
    assert_eq!(later.body["total_cents"], 5 * 9999);
    assert_eq!(shop.stock(&mug_id).await, 0);

    // A deleted product's reservation still releases (nothing to return to).
    let doomed = shop.create(json!({"name": "Doomed", "stock": 1})).await;
    let doomed_id = id_of(&doomed);
    let hold = new_id();
    let held = shop
        .reserve(&hold, json!([{"product_id": doomed_id, "quantity": 1}]))
        .await;
    assert_eq!(held.status, 200, "{}", held.body);
    let path = format!("/api/products/{doomed_id}");
    assert_eq!(shop.admin(Method::DELETE, &path, None).await.status, 204);
    assert_eq!(shop.release(&hold).await.status, 204);
}

#[tokio::test(flavor = "multi_thread")]
async fn reserve_and_release_on_the_embedded_backends() {
    reservations(Backends::default()).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn reserve_and_release_on_postgres_and_redis() {
    if let Some(backends) = Backends::production() {
        reservations(backends).await;
    }
}

// --- concurrency ----------------------------------------------------------------------------

async fn concurrent(backends: Backends) {
    let shop = Shop::start(&backends).await;

    // The last five units, ten buyers at once: exactly five get one.
    let last = shop.create(json!({"name": "Last units", "stock": 5})).await;
    let id = id_of(&last);
    let answers = futures::future::join_all(
        (0..10).map(|_| shop.reserve(new_id(), json!([{"product_id": id, "quantity": 1}]))),
    )
    .await;
    let mut statuses: Vec<u16> = answers.iter().map(|a| a.status).collect();
    statuses.sort_unstable();
    assert_eq!(
        statuses,
        [200, 200, 200, 200, 200, 409, 409, 409, 409, 409],
        "{:?}",
        answers.iter().map(|a| &a.body).collect::<Vec<_>>()
    );
    for answer in answers.iter().filter(|a| a.status == 409) {
        answer.error(409, "insufficient_stock");
    }
    assert_eq!(shop.stock(&id).await, 0);

    // Two products reserved in opposite orders at once: no deadlock, stock adds up.
    let a = id_of(&shop.create(json!({"name": "A", "stock": 20})).await);
    let b = id_of(&shop.create(json!({"name": "B", "stock": 20})).await);
    let answers = futures::future::join_all((0..10).map(|i| {
        let items = if i % 2 == 0 {
            json!([{"product_id": a, "quantity": 1}, {"product_id": b, "quantity": 2}])
        } else {
            json!([{"product_id": b, "quantity": 2}, {"product_id": a, "quantity": 1}])
        };
        shop.reserve(new_id(), items)
    }))
    .await;
    for answer in &answers {
        assert_eq!(answer.status, 200, "{}", answer.body);
    }
    assert_eq!((shop.stock(&a).await, shop.stock(&b).await), (10, 0));

    // One reservation sent eight times at once: taken once, the same answer to all.
    let once = id_of(&shop.create(json!({"name": "Once", "stock": 10})).await);
    let reservation = new_id();
    let answers = futures::future::join_all(
        (0..8).map(|_| shop.reserve(&reservation, json!([{"product_id": once, "quantity": 2}]))),
    )
    .await;
    for answer in &answers {
        assert_eq!(answer.status, 200, "{}", answer.body);
        assert_eq!(answer.body, answers[0].body);
    }
    assert_eq!(shop.stock(&once).await, 8);

    // Released eight times at once: returned once.
    let answers = futures::future::join_all((0..8).map(|_| shop.release(&reservation))).await;
    for answer in &answers {
        assert_eq!(answer.status, 204, "{}", answer.body);
    }
    assert_eq!(shop.stock(&once).await, 10);
}

#[tokio::test(flavor = "multi_thread")]
async fn concurrent_reservations_never_oversell_on_the_embedded_backends() {
    concurrent(Backends::default()).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn concurrent_reservations_never_oversell_on_postgres_and_redis() {
    if let Some(backends) = Backends::production() {
        concurrent(backends).await;
    }
}
