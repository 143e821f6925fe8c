//! The shop's orders: placed against stock the catalog reserves, paid or failed by the
//! payment component's events, cancelled by their owner.
//!
//! Routes (JSON everywhere; ids are UUIDs; money is integer cents; every error is
//! `{"error": {"code", "message", "request_id"}}`, plus `field` for `validation_failed`).
//! Every route needs a signed-in user (the host checks the token; the component checks the
//! identity again and answers 401 without one).
//!
//! - `POST /api/orders` `{items: [{product_id, quantity}], payment_method}` → 201 the order
//!   (status `PENDING`, and a `location` header). 400 `validation_failed` naming the field:
//!   `items` empty or over 100 lines, `items[i].product_id` not a UUID (or repeated),
//!   `items[i].quantity` not a whole number from 1 to 1 000 000, `payment_method` blank or over
//!   64 characters, unknown fields. The stock is reserved at once through the catalog
//!   (reservation id = the new order's id, all or nothing, at the catalog's current prices):
//!   422 `unknown_product` / 409 `insufficient_stock` name the product; the catalog unreachable
//!   or failing → 503 `catalog_unavailable`. Then the order, its lines and `order.created` are
//!   written in one transaction; if that fails, the reservation is released again.
//! - `GET /api/orders?page&page_size` → `{items, total, page, page_size}`: the caller's orders,
//!   newest first.
//! - `GET /api/orders/{id}` → the order, to its owner or an ADMIN; 404 `not_found` for anyone
//!   else and for a malformed id.
//! - `POST /api/orders/{id}/cancel` → 200 the order, `CANCELLED`: owner only (404 for others,
//!   403 for an ADMIN who is not the owner), only while `PENDING` (else 409
//!   `not_cancellable`). In one transaction the status changes and `order.cancelled` is
//!   written to the outbox; the stock is released through the catalog before that transaction
//!   commits, so a catalog failure (503 `catalog_unavailable`) leaves the order `PENDING` and
//!   the stock reserved, and a successful cancel always gives the stock back.
//!
//! An order is `{id, user_id, status, items: [{product_id, name, quantity,
//! unit_price_cents}], total_cents, payment_method, created_at, updated_at}`.
//!
//! Events (envelope `{id, type, version: 1, occurred_at, data}`, all through the outbox, in
//! the transaction of the change they announce):
//! - publishes `order.created` `{order_id, user_id, items: [{product_id, quantity,
//!   unit_price_cents}], total_cents, payment_method}`, `order.paid` `{order_id, user_id,
//!   total_cents}`, `order.cancelled` `{order_id, user_id}`;
//! - handles `payment.succeeded` → `PAID` (only from `PENDING`; publishes `order.paid`) and
//!   `payment.failed` → `PAYMENT_FAILED` (only from `PENDING`) with the stock released through
//!   the catalog inside the transaction (a catalog failure rolls it back and returns `Err`, so
//!   the host redelivers). The transitions are conditional (`where status = 'PENDING'`), which
//!   makes both handlers idempotent: a redelivered event finds the order already moved on and
//!   is acknowledged without change (and logged). So is a payment event for an order in any
//!   other state. Out of scope: a payment that succeeds for an order cancelled in the
//!   meantime is acknowledged and logged as a warning; refunding it is not implemented.
//!
//! Known limit: if the component dies between the catalog's reservation and the commit of the
//! order (a trap, a deadline), the reservation is not released (no order refers to it);
//! the catalog keeps it under the order id, so a reconciler could release it.
//!
//! ```toml
//! [[component]]
//! name = "order"
//! source = "target/components/order.wasm"
//! routes = ["/api/orders/..."]          # also matches /api/orders itself
//! migrations = "components/order/migrations"
//! grants = { sql = true, publish = ["order.*"], http = ["http://catalog.agora.internal"] }
//!
//! [[component.policy]]                  # every route: a signed-in user
//! access = "authenticated"
//!
//! [component.messaging]
//! subscribe = ["payment.succeeded", "payment.failed"]
//! ```
//!
//! The code: `handlers.rs` (one function per route), `input.rs` (the order's body, on
//! `agora_sdk::input`),
//! `orders.rs` (the SQL), `calls.rs` (the catalog, in-process), `events.rs` (what is published
//! and the payment events handled).

mod calls;
mod events;
mod handlers;
mod input;
mod orders;

use agora_sdk::auth::Identity;
use agora_sdk::http::{self, ApiError, Body, Error, Method, Page, Request, Response, StatusCode};

#[wstd::http_server]
async fn main(mut request: Request<Body>) -> Result<Response<Body>, Error> {
    let request_id = http::request_id(&request).to_owned();
    Ok(route(&mut request)
        .await
        .unwrap_or_else(|error| error.into_response(&request_id)))
}

/// Checks the caller's identity and dispatches on method and path.
async fn route(request: &mut Request<Body>) -> handlers::Answer {
    let path = request.uri().path().to_owned();
    let segments: Vec<&str> = path.split('/').filter(|s| !s.is_empty()).collect();
    let method = request.method().clone();
    // The host's policy makes every route authenticated; this is the second line.
    let identity = Identity::from_headers(request.headers())
        .ok_or_else(|| ApiError::unauthorized("sign in to see or place orders"))?;
    match (&method, segments.as_slice()) {
        (&Method::POST, ["api", "orders"]) => {
            let new = input::NewOrder::parse(&agora_sdk::input::json_object(request).await?)?;
            handlers::create(&identity, new).await
        }
        (&Method::GET, ["api", "orders"]) => {
            handlers::list(&identity, Page::from_request(request)?)
        }
        (&Method::GET, ["api", "orders", id]) => handlers::get(&identity, id),
        (&Method::POST, ["api", "orders", id, "cancel"]) => handlers::cancel(&identity, id).await,
        (_, ["api", "orders"] | ["api", "orders", _] | ["api", "orders", _, "cancel"]) => {
            Err(ApiError::new(
                StatusCode::METHOD_NOT_ALLOWED,
                "method_not_allowed",
                format!("{method} is not allowed on {path}"),
            ))
        }
        _ => Err(ApiError::not_found(format!("no route {path}"))),
    }
}
