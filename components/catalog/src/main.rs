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
//!   release) drops its cache entry after the commit. For a UUID id it is answered at the
//!   first look (`agora_sdk::serve_http!`), before wstd reads the whole request.
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
//!
//! The code: `handlers.rs` (one function per route), `input.rs` (request bodies and query
//! parameters, on `agora_sdk::input`), `products.rs` and `reservations.rs` (the SQL), `cache.rs` (products read
//! through the cache), `samples.rs` (the development shop's sample products).

mod cache;
mod handlers;
mod input;
mod products;
mod reservations;
mod samples;

use agora_sdk::auth::{self, Identity};
use agora_sdk::http::{self, ApiError, Body, Error, Method, Request, Response, StatusCode};
use agora_sdk::input::json_object;
use agora_sdk::serve::{Peek, Quick};

agora_sdk::serve_http!(product_read, serve);

/// `GET /api/products/{id}` for a UUID id, answered at the first look, before wstd reads the
/// whole request: with caching on, as the cached value under the product's key (a miss goes to
/// [`serve`], which reads the database and fills the cache); with caching off, the product's
/// read (see [`handlers::read`]), which needs only the path, and the request id when it
/// fails. Every other request goes to [`serve`].
fn product_read(request: &Peek<'_>) -> Option<Quick> {
    if request.method()? != Method::GET {
        return None;
    }
    let path = request.path();
    // Ids are UUIDs, whose hex digits carry no case (as in `route`).
    let id = path.strip_prefix("/api/products/")?.to_ascii_lowercase();
    if !http::is_uuid(&id) {
        return None;
    }
    if cache::ttl().is_some() {
        // The host reads the cache after this call (agora's first look) and answers with the
        // cached bytes as they are; with no value the request goes to `serve`, whose read
        // fills the cache.
        return Some(
            Quick::cached(StatusCode::OK, cache::key(&id), cache::read_key)
                .header("content-type", "application/json")
                .header("x-cache", "hit"),
        );
    }
    Some(match handlers::read(&id) {
        Ok(Some((body, cached))) => {
            Quick::json_bytes(StatusCode::OK, body).header("x-cache", cached)
        }
        Ok(None) => {
            Quick::error(&handlers::not_found(&id), &request.request_id()).header("x-cache", "miss")
        }
        Err(error) => Quick::error(&error, &request.request_id()),
    })
}

async fn serve(mut request: Request<Body>) -> Result<Response<Body>, Error> {
    let request_id = http::request_id(&request).to_owned();
    Ok(route(&mut request, &request_id)
        .await
        .unwrap_or_else(|error| error.into_response(&request_id)))
}

/// Dispatches on path and method, checking who may call before reading a body.
async fn route(request: &mut Request<Body>, request_id: &str) -> handlers::Answer {
    let path = request.uri().path().to_owned();
    let segments: Vec<&str> = path.split('/').filter(|s| !s.is_empty()).collect();
    let method = request.method().clone();
    match segments.as_slice() {
        ["api", "products"] => match method {
            Method::GET => handlers::list(request),
            Method::POST => {
                require_admin(request)?;
                handlers::create(json_object(request).await?)
            }
            _ => Err(method_not_allowed(&method, &path)),
        },
        ["api", "products", "internal", action] => {
            if auth::caller(request.headers()).is_none() {
                return Err(ApiError::not_found(format!("no route {path}")));
            }
            match (&method, *action) {
                (&Method::POST, "reserve") => handlers::reserve(json_object(request).await?),
                (&Method::POST, "release") => handlers::release(json_object(request).await?),
                (&Method::POST, "seed") => samples::seed(),
                (_, "reserve" | "release" | "seed") => Err(method_not_allowed(&method, &path)),
                _ => Err(ApiError::not_found(format!("no route {path}"))),
            }
        }
        ["api", "products", id] => {
            // Ids are UUIDs, whose hex digits carry no case: one spelling for the database
            // and the cache, so an update through any spelling drops the one cached copy.
            let id = &id.to_ascii_lowercase();
            product_route(request, request_id, method, &path, id).await
        }
        _ => Err(ApiError::not_found(format!("no route {path}"))),
    }
}

/// `/api/products/{id}`, `id` in lower case.
async fn product_route(
    request: &mut Request<Body>,
    request_id: &str,
    method: Method,
    path: &str,
    id: &str,
) -> handlers::Answer {
    match method {
        Method::GET => handlers::get(id, request_id),
        Method::PATCH => {
            require_admin(request)?;
            let body = json_object(request).await?;
            handlers::patch(id, body)
        }
        Method::DELETE => {
            require_admin(request)?;
            handlers::delete(id)
        }
        _ => Err(method_not_allowed(&method, path)),
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
