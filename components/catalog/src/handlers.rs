//! One function per route: each takes what the route table read from the request (the
//! caller was checked there) and answers with a response or an [`ApiError`].

use crate::cache;
use crate::input::{Draft, Filter, Reserve, reservation_id};
use crate::products::{self, Product};
use crate::reservations::{self, Line, Reserved};
use agora_sdk::http::{self, ApiError, Body, Page, Request, Response, StatusCode};
use agora_sdk::sql::{SqlError, Timestamp};
use agora_sdk::{events, log};
use serde_json::{Map, Value as Json, json};

/// What a route answers: a response, or an error in agora's shape.
pub type Answer = Result<Response<Body>, ApiError>;

/// `GET /api/products/{id}`, through the cache. Also a 404 carries `x-cache: miss`.
pub fn get(id: &str, request_id: &str) -> Answer {
    match read(id)? {
        Some((body, cached)) => Ok(cache::x_cache(
            http::json_bytes(StatusCode::OK, body),
            cached,
        )),
        None => Ok(cache::x_cache(
            not_found(id).into_response(request_id),
            "miss",
        )),
    }
}

/// Product `id`'s JSON through the cache, and `hit` or `miss` (the `x-cache` it is answered
/// with); `None` when there is no such product. A miss reads the database and fills the cache.
pub fn read(id: &str) -> Result<Option<(Vec<u8>, &'static str)>, ApiError> {
    let ttl = cache::ttl();
    if ttl.is_some()
        && http::is_uuid(id)
        && let Some(body) = cache::read(id)
    {
        return Ok(Some((body, "hit")));
    }
    let Some(product) = products::find(id)? else {
        return Ok(None);
    };
    let body = http::encode(&product);
    if let Some(ttl) = ttl {
        cache::write(id, &body, ttl);
    }
    Ok(Some((body, "miss")))
}

/// `GET /api/products?page&page_size&category&q`.
pub fn list(request: &Request<Body>) -> Answer {
    let page = Page::from_request(request)?;
    let filter = Filter::from_request(request)?;
    let (items, total) = products::page(&filter, &page)?;
    Ok(http::json(StatusCode::OK, &page.list(&items, total)))
}

/// `POST /api/products` (also how the samples are added).
pub fn create(body: Map<String, Json>) -> Answer {
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
    match products::insert(&product, now) {
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

/// `PATCH /api/products/{id}`: only the fields given change.
pub fn patch(id: &str, body: Map<String, Json>) -> Answer {
    let draft = Draft::parse(&body, true)?;
    if !http::is_uuid(id) {
        return Err(not_found(id));
    }
    let columns = products::changes(draft);
    if columns.is_empty() {
        // Nothing to change: answer the product as it is.
        let product = products::find(id)?.ok_or_else(|| not_found(id))?;
        return Ok(http::json(StatusCode::OK, &product));
    }
    let product = products::update(id, columns)?.ok_or_else(|| not_found(id))?;
    cache::invalidate(&[id]);
    Ok(http::json(StatusCode::OK, &product))
}

/// `DELETE /api/products/{id}`.
pub fn delete(id: &str) -> Answer {
    if !http::is_uuid(id) {
        return Err(not_found(id));
    }
    let deleted = products::delete(id)?;
    // Dropped even when nothing was deleted: a stale entry must not outlive its row.
    cache::invalidate(&[id]);
    if deleted == 0 {
        return Err(not_found(id));
    }
    log::info("products", &format!("product {id} deleted"));
    Ok(http::no_content())
}

/// `POST /api/products/internal/reserve`.
pub fn reserve(body: Map<String, Json>) -> Answer {
    let request = Reserve::parse(&body)?;
    let id = request.reservation_id.as_str();
    let lines = match reservations::reserve(&request)? {
        Reserved::Replayed(lines) => lines,
        Reserved::Taken(lines) => {
            let touched: Vec<&str> = lines.iter().map(|line| line.product_id.as_str()).collect();
            cache::invalidate(&touched);
            log::info(
                "reservations",
                &format!("reservation {id}: {} line(s) reserved", lines.len()),
            );
            lines
        }
    };
    Ok(reservation_answer(id, &lines))
}

/// `POST /api/products/internal/release`.
pub fn release(body: Map<String, Json>) -> Answer {
    let id = reservation_id(&body)?;
    if let Some(touched) = reservations::release(&id)? {
        let touched: Vec<&str> = touched.iter().map(String::as_str).collect();
        cache::invalidate(&touched);
        log::info("reservations", &format!("reservation {id} released"));
    }
    Ok(http::no_content())
}

fn reservation_answer(id: &str, lines: &[Line]) -> Response<Body> {
    http::json(
        StatusCode::OK,
        &json!({
            "reservation_id": id,
            "items": lines,
            "total_cents": reservations::total_cents(lines).unwrap_or(i64::MAX),
        }),
    )
}

/// The 404 of an unknown product `id`.
pub fn not_found(id: &str) -> ApiError {
    ApiError::not_found(format!("no product {id}"))
}

fn sku_taken(sku: &str) -> ApiError {
    ApiError::new(
        StatusCode::CONFLICT,
        "sku_taken",
        format!("a product with sku {sku} already exists"),
    )
}
