//! The shop's catalog: products managed by admins, read by anyone (by id through the cache),
//! and stock reserved and released by the order component.
//!
//! Routes (JSON everywhere; ids are UUIDs; money is integer cents; every error is
//! `{"error": {"code", "message", "request_id"}}`, plus `field` for `validation_failed`):
//!
//! - `POST /api/products` (ADMIN) `{name, description?, price_cents, sku, stock, images?,
//!   category?}` → 201 the product (and `location`); 409 `sku_taken`; 400 `validation_failed`
//!   naming the field (blank name or sku, `price_cents` ≤ 0, `stock` < 0, wrong types,
//!   unknown fields).
//! - `PATCH /api/products/{id}` (ADMIN) with any of `name`, `description`, `price_cents`,
//!   `stock`, `images`, `category` → 200 the product; `sku` → 400 (immutable); 404.
//! - `DELETE /api/products/{id}` (ADMIN) → 204; 404.
//! - `GET /api/products/{id}` → 200 the product, 404 `not_found`; read through the cache
//!   (config `cache_ttl_s`, default 60, `0` turns caching off) and answered with
//!   `x-cache: hit` or `x-cache: miss`. Every change of a product (PATCH, DELETE, reserve,
//!   release) drops its cache entry after the commit.
//! - `GET /api/products?page&page_size&category&q` → `{items, total, page, page_size}`,
//!   newest first (ties by id, ascending); `category` matches exactly, `q` is a
//!   case-insensitive substring of the name or the description (LIKE wildcards escaped; on
//!   SQLite `lower()` folds ASCII letters only). `total` and the page are two statements, so
//!   a concurrent write can make them disagree by that write.
//! - `POST /api/products/internal/reserve` (internal) `{reservation_id, items: [{product_id,
//!   quantity}]}` → 200 `{reservation_id, items: [{product_id, name, sku, unit_price_cents,
//!   quantity}], total_cents}`. All or nothing in one transaction with conditional updates
//!   (`stock >= quantity`), so stock never goes below zero even under concurrent
//!   reservations; 422 `unknown_product` / 409 `insufficient_stock` name the product and
//!   change nothing. Idempotent: an existing `reservation_id` answers its stored result and
//!   touches no stock.
//! - `POST /api/products/internal/release` (internal) `{reservation_id}` → 204; the stock comes
//!   back once (a second release, or an unknown id, changes nothing).
//! - `POST /api/products/internal/seed` (internal; meant as the manifest's `startup`) → 204;
//!   when config `sample_products = "true"` and the catalog is empty, adds a few sample
//!   products (for `cargo xtask dev`); otherwise does nothing.
//!
//! The host enforces the policies below; the component checks them again (an admin identity
//! for writes, an internal caller for `internal/...`), so a manifest that forgets one fails
//! closed.
//!
//! ```toml
//! [[component]]
//! name = "catalog"
//! source = "target/components/catalog.wasm"
//! routes = ["/api/products/..."]
//! migrations = "components/catalog/migrations"
//! grants = { sql = true, cache = true }
//! config = { cache_ttl_s = "60" }
//!
//! [[component.policy]]                  # writes: admins only
//! routes = ["/api/products/..."]
//! methods = ["POST", "PATCH", "PUT", "DELETE"]
//! roles = ["ADMIN"]
//!
//! [[component.policy]]                  # more literal segments: wins over the one above
//! routes = ["/api/products/internal/..."]
//! access = "internal"                   # other components only (404 from outside)
//! ```
//!
//! The order component reaches the internal routes with
//! `grants = { http = ["http://catalog.agora.internal"] }` and
//! `POST http://catalog.agora.internal/api/products/internal/reserve`.

use agora_sdk::auth::{self, Identity};
use agora_sdk::http::{self, ApiError, Body, Error, Method, Page, Request, Response, StatusCode};
use agora_sdk::sql::{self, Row, Rows, SqlError, Timestamp};
use agora_sdk::{cache, config, events, log, params};
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value as Json, json};
use std::time::Duration;

/// The columns of a product, in [`product_from`]'s order.
const COLUMNS: &str =
    "id, name, description, price_cents, sku, stock, images, category, created_at, updated_at";

/// Fields of a product a client may write (`sku` only when creating).
const WRITABLE: [&str; 7] = [
    "name",
    "description",
    "price_cents",
    "sku",
    "stock",
    "images",
    "category",
];

const MAX_NAME: usize = 200;
const MAX_SKU: usize = 64;
const MAX_DESCRIPTION: usize = 10_000;
const MAX_CATEGORY: usize = 100;
const MAX_IMAGES: usize = 50;
const MAX_IMAGE: usize = 2_048;
const MAX_QUERY: usize = 200;
const MAX_RESERVATION_ID: usize = 128;
const MAX_LINES: usize = 100;
const MAX_QUANTITY: i64 = 1_000_000;

/// Cache TTL when `cache_ttl_s` is not configured.
const DEFAULT_CACHE_TTL_S: u64 = 60;

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
struct Product {
    id: String,
    name: String,
    description: String,
    price_cents: i64,
    sku: String,
    stock: i64,
    images: Vec<String>,
    category: String,
    created_at: String,
    updated_at: String,
}

/// One line of a reservation, as answered.
#[derive(Debug, Clone, Serialize)]
struct Line {
    product_id: String,
    name: String,
    sku: String,
    unit_price_cents: i64,
    quantity: i64,
}

#[wstd::http_server]
async fn main(mut request: Request<Body>) -> Result<Response<Body>, Error> {
    let request_id = http::request_id(&request).to_owned();
    Ok(route(&mut request, &request_id)
        .await
        .unwrap_or_else(|error| error.into_response(&request_id)))
}

async fn route(request: &mut Request<Body>, request_id: &str) -> Result<Response<Body>, ApiError> {
    let path = request.uri().path().to_owned();
    let segments: Vec<&str> = path.split('/').filter(|s| !s.is_empty()).collect();
    let method = request.method().clone();
    match segments.as_slice() {
        ["api", "products"] => match method {
            Method::GET => list(request),
            Method::POST => {
                require_admin(request)?;
                create(json_object(request).await?)
            }
            _ => Err(method_not_allowed(&method, &path)),
        },
        ["api", "products", "internal", action] => {
            if auth::caller(request.headers()).is_none() {
                return Err(ApiError::not_found(format!("no route {path}")));
            }
            match (&method, *action) {
                (&Method::POST, "reserve") => reserve(json_object(request).await?),
                (&Method::POST, "release") => release(json_object(request).await?),
                (&Method::POST, "seed") => seed(),
                (_, "reserve" | "release" | "seed") => Err(method_not_allowed(&method, &path)),
                _ => Err(ApiError::not_found(format!("no route {path}"))),
            }
        }
        ["api", "products", id] => match method {
            Method::GET => get(id, request_id),
            Method::PATCH => {
                require_admin(request)?;
                let body = json_object(request).await?;
                patch(id, body)
            }
            Method::DELETE => {
                require_admin(request)?;
                delete(id)
            }
            _ => Err(method_not_allowed(&method, &path)),
        },
        _ => Err(ApiError::not_found(format!("no route {path}"))),
    }
}

// --- products ---------------------------------------------------------------------------

fn get(id: &str, request_id: &str) -> Result<Response<Body>, ApiError> {
    let ttl = cache_ttl();
    let key = cache_key(id);
    if ttl.is_some() && http::is_uuid(id) {
        match cache::get_json::<Product>(&key) {
            Ok(Some(product)) => return Ok(x_cache(http::json(StatusCode::OK, &product), "hit")),
            Ok(None) => {}
            Err(err) => log::warn("cache", &format!("reading {key}: {err}")),
        }
    }
    let Some(product) = find(id)? else {
        let missing = ApiError::not_found(format!("no product {id}"));
        return Ok(x_cache(missing.into_response(request_id), "miss"));
    };
    if ttl.is_some()
        && let Err(err) = cache::set_json(&key, &product, ttl)
    {
        log::warn("cache", &format!("writing {key}: {err}"));
    }
    Ok(x_cache(http::json(StatusCode::OK, &product), "miss"))
}

fn list(request: &Request<Body>) -> Result<Response<Body>, ApiError> {
    let page = Page::from_request(request)?;
    let mut conditions = Vec::new();
    let mut values = Vec::new();
    if let Some(category) = http::query(request, "category").filter(|c| !c.is_empty()) {
        values.push(sql::Value::from(category));
        conditions.push(format!("category = ${}", values.len()));
    }
    if let Some(q) = http::query(request, "q").filter(|q| !q.trim().is_empty()) {
        if q.chars().count() > MAX_QUERY {
            return Err(ApiError::validation(
                "q",
                format!("q must be at most {MAX_QUERY} characters"),
            ));
        }
        let pattern = format!("%{}%", escape_like(&q.trim().to_lowercase()));
        values.push(sql::Value::from(pattern.clone()));
        values.push(sql::Value::from(pattern));
        let (a, b) = (values.len() - 1, values.len());
        conditions.push(format!(
            "(lower(name) like ${a} escape '\\' or lower(description) like ${b} escape '\\')"
        ));
    }
    let filter = if conditions.is_empty() {
        String::new()
    } else {
        format!(" where {}", conditions.join(" and "))
    };
    let total: i64 = sql::query(
        &format!("select count(*) as total from products{filter}"),
        &values,
    )
    .map_err(ApiError::from)?
    .first()
    .map(|row| row.get("total"))
    .transpose()
    .map_err(ApiError::from)?
    .unwrap_or(0);
    values.push(sql::Value::from(i64::from(page.page_size)));
    values.push(sql::Value::from(page.offset()));
    let (limit, offset) = (values.len() - 1, values.len());
    let rows = sql::query(
        &format!(
            "select {COLUMNS} from products{filter} \
             order by created_at desc, id limit ${limit} offset ${offset}"
        ),
        &values,
    )
    .map_err(ApiError::from)?;
    let items = products_from(&rows)?;
    Ok(http::json(StatusCode::OK, &page.list(&items, total)))
}

/// Sample products for a development shop: `(name, description, price_cents, sku, stock,
/// category)`.
const SAMPLES: [(&str, &str, i64, &str, i64, &str); 4] = [
    (
        "Espresso cup",
        "A thick-walled porcelain cup, 80 ml.",
        1250,
        "CUP-ESP-80",
        40,
        "kitchen",
    ),
    (
        "Pour-over kettle",
        "Gooseneck kettle, 1 litre, stainless steel.",
        4990,
        "KET-PO-1L",
        12,
        "kitchen",
    ),
    (
        "Canvas tote",
        "Heavy cotton tote bag with an inner pocket.",
        1800,
        "BAG-TOTE-C",
        25,
        "bags",
    ),
    (
        "Notebook A5",
        "Dotted pages, lay-flat binding, 160 pages.",
        950,
        "NB-A5-DOT",
        60,
        "stationery",
    ),
];

/// Adds [`SAMPLES`] when the configuration asks for them and the catalog is empty.
fn seed() -> Result<Response<Body>, ApiError> {
    let wanted = config::get_or("sample_products", String::from("false"))
        .map_err(|err| ApiError::internal(err.to_string()))?;
    if wanted != "true" {
        return Ok(http::no_content());
    }
    let count: i64 = sql::query("select count(*) as n from products", &[])
        .and_then(|rows| rows.first().map_or(Ok(0), |row| row.get("n")))
        .map_err(ApiError::from)?;
    if count > 0 {
        return Ok(http::no_content());
    }
    for (name, description, price_cents, sku, stock, category) in SAMPLES {
        let mut body = Map::new();
        body.insert("name".into(), json!(name));
        body.insert("description".into(), json!(description));
        body.insert("price_cents".into(), json!(price_cents));
        body.insert("sku".into(), json!(sku));
        body.insert("stock".into(), json!(stock));
        body.insert("category".into(), json!(category));
        match create(body) {
            Ok(_) => {}
            // Another replica seeded the same product at the same moment.
            Err(error) if error.code == "sku_taken" => {}
            Err(error) => return Err(error),
        }
    }
    log::info(
        "products",
        &format!("{} sample products added", SAMPLES.len()),
    );
    Ok(http::no_content())
}

fn create(body: Map<String, Json>) -> Result<Response<Body>, ApiError> {
    let draft = Draft::parse(&body, false)?;
    let required = |field: &str| ApiError::validation(field, format!("{field} is required"));
    let now = Timestamp::now();
    let product = Product {
        id: events::uuid_v4(),
        name: draft.name.ok_or_else(|| required("name"))?,
        description: draft.description.unwrap_or_default(),
        price_cents: draft.price_cents.ok_or_else(|| required("price_cents"))?,
        sku: draft.sku.ok_or_else(|| required("sku"))?,
        stock: draft.stock.ok_or_else(|| required("stock"))?,
        images: draft.images.unwrap_or_default(),
        category: draft.category.unwrap_or_default(),
        created_at: now.to_rfc3339(),
        updated_at: now.to_rfc3339(),
    };
    let inserted = sql::execute(
        "insert into products (id, name, description, price_cents, sku, stock, images, \
         category, created_at, updated_at) values ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10)",
        &params![
            &product.id,
            &product.name,
            &product.description,
            product.price_cents,
            &product.sku,
            product.stock,
            images_json(&product.images),
            &product.category,
            now.micros(),
            now.micros(),
        ],
    );
    match inserted {
        Ok(_) => {}
        Err(SqlError::UniqueViolation(_)) => return Err(sku_taken(&product.sku)),
        Err(err) => return Err(ApiError::from(err)),
    }
    log::info(
        "products",
        &format!("product {} created (sku {})", product.id, product.sku),
    );
    let mut response = http::json(StatusCode::CREATED, &product);
    if let Ok(location) = format!("/api/products/{}", product.id).parse() {
        response.headers_mut().insert("location", location);
    }
    Ok(response)
}

fn patch(id: &str, body: Map<String, Json>) -> Result<Response<Body>, ApiError> {
    let draft = Draft::parse(&body, true)?;
    if !http::is_uuid(id) {
        return Err(ApiError::not_found(format!("no product {id}")));
    }
    let mut columns: Vec<(&str, sql::Value)> = Vec::new();
    if let Some(name) = draft.name {
        columns.push(("name", name.into()));
    }
    if let Some(description) = draft.description {
        columns.push(("description", description.into()));
    }
    if let Some(price) = draft.price_cents {
        columns.push(("price_cents", price.into()));
    }
    if let Some(stock) = draft.stock {
        columns.push(("stock", stock.into()));
    }
    if let Some(images) = &draft.images {
        columns.push(("images", images_json(images).into()));
    }
    if let Some(category) = draft.category {
        columns.push(("category", category.into()));
    }
    if columns.is_empty() {
        // Nothing to change: answer the product as it is.
        let product = find(id)?.ok_or_else(|| ApiError::not_found(format!("no product {id}")))?;
        return Ok(http::json(StatusCode::OK, &product));
    }
    columns.push(("updated_at", Timestamp::now().micros().into()));
    let sets: Vec<String> = columns
        .iter()
        .enumerate()
        .map(|(i, (column, _))| format!("{column} = ${}", i + 1))
        .collect();
    let mut values: Vec<sql::Value> = columns.into_iter().map(|(_, value)| value).collect();
    values.push(id.into());
    let statement = format!(
        "update products set {} where id = ${}",
        sets.join(", "),
        values.len()
    );
    let tx = sql::begin().map_err(ApiError::from)?;
    if tx.execute(&statement, &values).map_err(ApiError::from)? == 0 {
        return Err(ApiError::not_found(format!("no product {id}")));
    }
    let rows = tx
        .query(
            &format!("select {COLUMNS} from products where id = $1"),
            &params![id],
        )
        .map_err(ApiError::from)?;
    let product = products_from(&rows)?
        .into_iter()
        .next()
        .ok_or_else(|| ApiError::not_found(format!("no product {id}")))?;
    tx.commit().map_err(ApiError::from)?;
    invalidate(&[id]);
    Ok(http::json(StatusCode::OK, &product))
}

fn delete(id: &str) -> Result<Response<Body>, ApiError> {
    if !http::is_uuid(id) {
        return Err(ApiError::not_found(format!("no product {id}")));
    }
    let deleted =
        sql::execute("delete from products where id = $1", &params![id]).map_err(ApiError::from)?;
    // Dropped even when nothing was deleted: a stale entry must not outlive its row.
    invalidate(&[id]);
    if deleted == 0 {
        return Err(ApiError::not_found(format!("no product {id}")));
    }
    log::info("products", &format!("product {id} deleted"));
    Ok(http::no_content())
}

/// The product `id` from the database.
fn find(id: &str) -> Result<Option<Product>, ApiError> {
    if !http::is_uuid(id) {
        return Ok(None);
    }
    let rows = sql::query(
        &format!("select {COLUMNS} from products where id = $1"),
        &params![id],
    )
    .map_err(ApiError::from)?;
    Ok(products_from(&rows)?.into_iter().next())
}

fn products_from(rows: &Rows) -> Result<Vec<Product>, ApiError> {
    rows.iter()
        .map(product_from)
        .collect::<Result<_, _>>()
        .map_err(ApiError::from)
}

fn product_from(row: Row<'_>) -> Result<Product, SqlError> {
    let images: String = row.get("images")?;
    Ok(Product {
        id: row.get("id")?,
        name: row.get("name")?,
        description: row.get("description")?,
        price_cents: row.get("price_cents")?,
        sku: row.get("sku")?,
        stock: row.get("stock")?,
        images: serde_json::from_str(&images)
            .map_err(|err| SqlError::Decode(format!("images: {err}")))?,
        category: row.get("category")?,
        created_at: row.get::<Timestamp>("created_at")?.to_rfc3339(),
        updated_at: row.get::<Timestamp>("updated_at")?.to_rfc3339(),
    })
}

/// The writable fields present in a request body, validated.
#[derive(Debug, Default)]
struct Draft {
    name: Option<String>,
    description: Option<String>,
    price_cents: Option<i64>,
    sku: Option<String>,
    stock: Option<i64>,
    images: Option<Vec<String>>,
    category: Option<String>,
}

impl Draft {
    /// Reads `body`. On a PATCH (`partial`) `sku` is refused and `null` is not a value; on a
    /// POST `null` stands for "absent" (the optional fields take their defaults).
    fn parse(body: &Map<String, Json>, partial: bool) -> Result<Draft, ApiError> {
        if partial && body.contains_key("sku") {
            return Err(ApiError::validation("sku", "sku is immutable"));
        }
        if let Some(unknown) = body.keys().find(|key| !WRITABLE.contains(&key.as_str())) {
            return Err(ApiError::validation(
                unknown,
                format!("unknown field `{unknown}`"),
            ));
        }
        let field = |name: &str| -> Result<Option<&Json>, ApiError> {
            match body.get(name) {
                Some(Json::Null) if partial => {
                    Err(ApiError::validation(name, format!("{name} cannot be null")))
                }
                Some(Json::Null) | None => Ok(None),
                Some(value) => Ok(Some(value)),
            }
        };
        let name = field("name")?
            .map(|value| text("name", value, MAX_NAME, true))
            .transpose()?;
        let description = field("description")?
            .map(|value| text("description", value, MAX_DESCRIPTION, false))
            .transpose()?;
        let price_cents = field("price_cents")?
            .map(|value| whole("price_cents", value))
            .transpose()?;
        if price_cents.is_some_and(|price| price <= 0) {
            return Err(ApiError::validation(
                "price_cents",
                "price_cents must be greater than 0",
            ));
        }
        let sku = field("sku")?
            .map(|value| text("sku", value, MAX_SKU, true))
            .transpose()?;
        let stock = field("stock")?
            .map(|value| whole("stock", value))
            .transpose()?;
        if stock.is_some_and(|stock| stock < 0) {
            return Err(ApiError::validation("stock", "stock must not be negative"));
        }
        let images = field("images")?.map(images).transpose()?;
        let category = field("category")?
            .map(|value| text("category", value, MAX_CATEGORY, false))
            .transpose()?;
        Ok(Draft {
            name,
            description,
            price_cents,
            sku,
            stock,
            images,
            category,
        })
    }
}

/// A string field of at most `max` characters; `trimmed` ones are stored trimmed and must not
/// be blank.
fn text(field: &str, value: &Json, max: usize, trimmed: bool) -> Result<String, ApiError> {
    let Json::String(text) = value else {
        return Err(ApiError::validation(
            field,
            format!("{field} must be a string"),
        ));
    };
    let text = if trimmed { text.trim() } else { text.as_str() };
    if trimmed && text.is_empty() {
        return Err(ApiError::validation(
            field,
            format!("{field} must not be blank"),
        ));
    }
    if text.chars().count() > max {
        return Err(ApiError::validation(
            field,
            format!("{field} must be at most {max} characters"),
        ));
    }
    Ok(text.to_owned())
}

fn whole(field: &str, value: &Json) -> Result<i64, ApiError> {
    value
        .as_i64()
        .ok_or_else(|| ApiError::validation(field, format!("{field} must be a whole number")))
}

fn images(value: &Json) -> Result<Vec<String>, ApiError> {
    let invalid = |message: String| ApiError::validation("images", message);
    let Json::Array(items) = value else {
        return Err(invalid("images must be an array of strings".into()));
    };
    if items.len() > MAX_IMAGES {
        return Err(invalid(format!("at most {MAX_IMAGES} images")));
    }
    items
        .iter()
        .map(|item| match item {
            Json::String(url) if url.trim().is_empty() => {
                Err(invalid("an image must not be blank".into()))
            }
            Json::String(url) if url.chars().count() > MAX_IMAGE => Err(invalid(format!(
                "an image must be at most {MAX_IMAGE} characters"
            ))),
            Json::String(url) => Ok(url.trim().to_owned()),
            _ => Err(invalid("images must be an array of strings".into())),
        })
        .collect()
}

fn images_json(images: &[String]) -> String {
    serde_json::to_string(images).unwrap_or_else(|_| "[]".into())
}

fn sku_taken(sku: &str) -> ApiError {
    ApiError::new(
        StatusCode::CONFLICT,
        "sku_taken",
        format!("a product with sku {sku} already exists"),
    )
}

// --- reservations -----------------------------------------------------------------------

/// A validated reserve request.
struct Reserve {
    reservation_id: String,
    items: Vec<(String, i64)>,
}

impl Reserve {
    fn parse(body: &Map<String, Json>) -> Result<Reserve, ApiError> {
        let reservation_id = reservation_id(body)?;
        let Some(Json::Array(items)) = body.get("items") else {
            return Err(ApiError::validation(
                "items",
                "items must be an array of {product_id, quantity}",
            ));
        };
        if items.is_empty() || items.len() > MAX_LINES {
            return Err(ApiError::validation(
                "items",
                format!("items must hold 1 to {MAX_LINES} lines"),
            ));
        }
        let items = items
            .iter()
            .enumerate()
            .map(|(i, item)| {
                let product_id = match item.get("product_id") {
                    Some(Json::String(id)) if !id.trim().is_empty() => id.trim().to_owned(),
                    _ => {
                        return Err(ApiError::validation(
                            &format!("items[{i}].product_id"),
                            "product_id must be a product's id",
                        ));
                    }
                };
                match item.get("quantity").and_then(Json::as_i64) {
                    Some(quantity) if (1..=MAX_QUANTITY).contains(&quantity) => {
                        Ok((product_id, quantity))
                    }
                    _ => Err(ApiError::validation(
                        &format!("items[{i}].quantity"),
                        format!("quantity must be a whole number from 1 to {MAX_QUANTITY}"),
                    )),
                }
            })
            .collect::<Result<_, _>>()?;
        Ok(Reserve {
            reservation_id,
            items,
        })
    }
}

fn reservation_id(body: &Map<String, Json>) -> Result<String, ApiError> {
    match body.get("reservation_id") {
        Some(Json::String(id))
            if !id.trim().is_empty() && id.trim().chars().count() <= MAX_RESERVATION_ID =>
        {
            Ok(id.trim().to_owned())
        }
        _ => Err(ApiError::validation(
            "reservation_id",
            format!(
                "reservation_id must be a non-blank string of at most {MAX_RESERVATION_ID} characters"
            ),
        )),
    }
}

const STORED: &str = "select line, product_id, name, sku, unit_price, quantity \
                      from reservations where reservation_id = $1 order by line";

fn reserve(body: Map<String, Json>) -> Result<Response<Body>, ApiError> {
    let request = Reserve::parse(&body)?;
    let id = request.reservation_id.as_str();
    // A replay needs no transaction.
    if let Some(lines) = stored(sql::query(STORED, &params![id]).map_err(ApiError::from)?)? {
        return Ok(reservation_answer(id, &lines));
    }
    let tx = sql::begin().map_err(ApiError::from)?;
    // Again inside the transaction (on SQLite it holds the write lock: this read is final).
    if let Some(lines) = stored(tx.query(STORED, &params![id]).map_err(ApiError::from)?)? {
        drop(tx);
        return Ok(reservation_answer(id, &lines));
    }
    // Rows are locked in product id order, so two reservations of the same products cannot
    // deadlock on PostgreSQL; the answer keeps the request's order.
    let mut order: Vec<usize> = (0..request.items.len()).collect();
    order.sort_by(|a, b| request.items[*a].0.cmp(&request.items[*b].0));
    let now = Timestamp::now().micros();
    let mut lines: Vec<Option<Line>> = vec![None; request.items.len()];
    for index in order {
        let (product_id, quantity) = &request.items[index];
        let taken = tx
            .query(
                "update products set stock = stock - $1, updated_at = $2 \
                 where id = $3 and stock >= $4 returning name, sku, price_cents",
                &params![*quantity, now, product_id, *quantity],
            )
            .map_err(ApiError::from)?;
        let Some(row) = taken.first() else {
            let left = tx
                .query(
                    "select sku, stock from products where id = $1",
                    &params![product_id],
                )
                .map_err(ApiError::from)?;
            // Dropping `tx` rolls back what earlier lines took.
            return Err(match left.first() {
                None => ApiError::new(
                    StatusCode::UNPROCESSABLE_ENTITY,
                    "unknown_product",
                    format!("product {product_id} does not exist"),
                ),
                Some(row) => {
                    let sku: String = row.get("sku").map_err(ApiError::from)?;
                    let stock: i64 = row.get("stock").map_err(ApiError::from)?;
                    ApiError::new(
                        StatusCode::CONFLICT,
                        "insufficient_stock",
                        format!(
                            "product {product_id} (sku {sku}) has {stock} in stock, \
                             {quantity} asked"
                        ),
                    )
                }
            });
        };
        lines[index] = Some(Line {
            product_id: product_id.clone(),
            name: row.get("name").map_err(ApiError::from)?,
            sku: row.get("sku").map_err(ApiError::from)?,
            unit_price_cents: row.get("price_cents").map_err(ApiError::from)?,
            quantity: *quantity,
        });
    }
    let lines: Vec<Line> = lines.into_iter().flatten().collect();
    total_cents(&lines)?;
    for (number, line) in lines.iter().enumerate() {
        let inserted = tx.execute(
            "insert into reservations (reservation_id, line, product_id, name, sku, quantity, \
             unit_price, released, created_at) values ($1, $2, $3, $4, $5, $6, $7, false, $8)",
            &params![
                id,
                i64::try_from(number).unwrap_or(i64::MAX),
                &line.product_id,
                &line.name,
                &line.sku,
                line.quantity,
                line.unit_price_cents,
                now,
            ],
        );
        match inserted {
            Ok(_) => {}
            // The same reservation committed concurrently (PostgreSQL): undo ours, answer theirs.
            Err(SqlError::UniqueViolation(_)) => {
                drop(tx);
                let lines = stored(sql::query(STORED, &params![id]).map_err(ApiError::from)?)?
                    .ok_or_else(|| ApiError::internal(format!("reservation {id} vanished")))?;
                return Ok(reservation_answer(id, &lines));
            }
            Err(err) => return Err(ApiError::from(err)),
        }
    }
    tx.commit().map_err(ApiError::from)?;
    let touched: Vec<&str> = lines.iter().map(|line| line.product_id.as_str()).collect();
    invalidate(&touched);
    log::info(
        "reservations",
        &format!("reservation {id}: {} line(s) reserved", lines.len()),
    );
    Ok(reservation_answer(id, &lines))
}

fn release(body: Map<String, Json>) -> Result<Response<Body>, ApiError> {
    let id = reservation_id(&body)?;
    let tx = sql::begin().map_err(ApiError::from)?;
    // Flipping the flag first is what makes a release count once: a concurrent release of the
    // same reservation waits for this row lock and then changes no row.
    let flipped = tx
        .execute(
            "update reservations set released = true \
             where reservation_id = $1 and released = false",
            &params![&id],
        )
        .map_err(ApiError::from)?;
    if flipped == 0 {
        return Ok(http::no_content());
    }
    let rows = tx
        .query(
            "select product_id, quantity from reservations \
             where reservation_id = $1 order by product_id",
            &params![&id],
        )
        .map_err(ApiError::from)?;
    let now = Timestamp::now().micros();
    let mut touched = Vec::new();
    for row in rows.iter() {
        let product_id: String = row.get("product_id").map_err(ApiError::from)?;
        let quantity: i64 = row.get("quantity").map_err(ApiError::from)?;
        // A product deleted since keeps nothing to return to.
        tx.execute(
            "update products set stock = stock + $1, updated_at = $2 where id = $3",
            &params![quantity, now, &product_id],
        )
        .map_err(ApiError::from)?;
        touched.push(product_id);
    }
    tx.commit().map_err(ApiError::from)?;
    let touched: Vec<&str> = touched.iter().map(String::as_str).collect();
    invalidate(&touched);
    log::info("reservations", &format!("reservation {id} released"));
    Ok(http::no_content())
}

/// The lines of a stored reservation, or `None` when `rows` (from [`STORED`]) are empty.
fn stored(rows: Rows) -> Result<Option<Vec<Line>>, ApiError> {
    if rows.is_empty() {
        return Ok(None);
    }
    rows.iter()
        .map(|row| {
            Ok(Line {
                product_id: row.get("product_id")?,
                name: row.get("name")?,
                sku: row.get("sku")?,
                unit_price_cents: row.get("unit_price")?,
                quantity: row.get("quantity")?,
            })
        })
        .collect::<Result<Vec<_>, SqlError>>()
        .map(Some)
        .map_err(ApiError::from)
}

fn total_cents(lines: &[Line]) -> Result<i64, ApiError> {
    lines
        .iter()
        .try_fold(0i64, |total, line| {
            line.unit_price_cents
                .checked_mul(line.quantity)
                .and_then(|cost| total.checked_add(cost))
        })
        .ok_or_else(|| ApiError::validation("items", "the total does not fit in 64 bits"))
}

fn reservation_answer(id: &str, lines: &[Line]) -> Response<Body> {
    http::json(
        StatusCode::OK,
        &json!({
            "reservation_id": id,
            "items": lines,
            "total_cents": total_cents(lines).unwrap_or(i64::MAX),
        }),
    )
}

// --- helpers ----------------------------------------------------------------------------

fn cache_key(id: &str) -> String {
    format!("product:{id}")
}

/// How long a product stays cached; `None` when `cache_ttl_s` is 0 (no caching).
fn cache_ttl() -> Option<Duration> {
    let seconds = config::get_or("cache_ttl_s", DEFAULT_CACHE_TTL_S).unwrap_or_else(|err| {
        log::warn("config", &format!("{err}; using {DEFAULT_CACHE_TTL_S}"));
        DEFAULT_CACHE_TTL_S
    });
    (seconds > 0).then(|| Duration::from_secs(seconds))
}

/// Drops the cached copies of products that changed (after the commit). A failure is logged:
/// the entry then expires with its TTL.
fn invalidate(ids: &[&str]) {
    for id in ids {
        let key = cache_key(id);
        if let Err(err) = cache::delete(&key) {
            log::error("cache", &format!("cannot drop {key}: {err}"));
        }
    }
}

fn x_cache(mut response: Response<Body>, value: &'static str) -> Response<Body> {
    response
        .headers_mut()
        .insert("x-cache", wstd::http::HeaderValue::from_static(value));
    response
}

/// `%`, `_` and the escape character itself, escaped for `LIKE … ESCAPE '\'`.
fn escape_like(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        if matches!(c, '\\' | '%' | '_') {
            out.push('\\');
        }
        out.push(c);
    }
    out
}

async fn json_object(request: &mut Request<Body>) -> Result<Map<String, Json>, ApiError> {
    match http::json_body::<Json>(request).await? {
        Json::Object(object) => Ok(object),
        _ => Err(ApiError::new(
            StatusCode::BAD_REQUEST,
            "invalid_json",
            "the body must be a JSON object",
        )),
    }
}

/// Writes need an admin: the host checks the policy, this is the second line.
fn require_admin(request: &Request<Body>) -> Result<(), ApiError> {
    match Identity::from_headers(request.headers()) {
        None => Err(ApiError::unauthorized("sign in as an admin")),
        Some(identity) if !identity.has_role("ADMIN") => {
            Err(ApiError::forbidden("only admins may change the catalog"))
        }
        Some(_) => Ok(()),
    }
}

fn method_not_allowed(method: &Method, path: &str) -> ApiError {
    ApiError::new(
        StatusCode::METHOD_NOT_ALLOWED,
        "method_not_allowed",
        format!("{method} is not allowed on {path}"),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn like_wildcards_are_escaped() {
        assert_eq!(escape_like("50%_off\\"), "50\\%\\_off\\\\");
        assert_eq!(escape_like("plain"), "plain");
    }

    #[test]
    fn uuids_are_recognised() {
        assert!(http::is_uuid("0f8fad5b-d9cb-469f-a165-70867728950e"));
        assert!(!http::is_uuid("0f8fad5b-d9cb-469f-a165-70867728950"));
        assert!(!http::is_uuid("0f8fad5bxd9cb-469f-a165-70867728950e"));
        assert!(!http::is_uuid("internal"));
    }

    #[test]
    fn drafts_are_validated_field_by_field() {
        let body = |value: Json| value.as_object().cloned().unwrap_or_default();
        let field = |value: Json, partial| {
            Draft::parse(&body(value), partial)
                .err()
                .and_then(|err| err.field)
        };
        assert_eq!(field(json!({"name": "  "}), false).as_deref(), Some("name"));
        assert_eq!(
            field(json!({"price_cents": 0}), false).as_deref(),
            Some("price_cents")
        );
        assert_eq!(
            field(json!({"price_cents": 1.5}), false).as_deref(),
            Some("price_cents")
        );
        assert_eq!(field(json!({"stock": -1}), false).as_deref(), Some("stock"));
        assert_eq!(field(json!({"sku": ""}), false).as_deref(), Some("sku"));
        assert_eq!(field(json!({"sku": "A"}), true).as_deref(), Some("sku"));
        assert_eq!(
            field(json!({"color": "red"}), true).as_deref(),
            Some("color")
        );
        assert_eq!(field(json!({"name": null}), true).as_deref(), Some("name"));
        assert_eq!(
            field(json!({"images": ["a", 1]}), false).as_deref(),
            Some("images")
        );
        let draft = Draft::parse(&body(json!({"name": " Mug ", "description": null})), false)
            .expect("valid");
        assert_eq!(draft.name.as_deref(), Some("Mug"));
        assert_eq!(draft.description, None);
    }
}
