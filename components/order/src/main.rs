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

use agora_sdk::auth::Identity;
use agora_sdk::events::{self, Event, Handler, Message};
use agora_sdk::http::{self, ApiError, Body, Error, Method, Page, Request, Response, StatusCode};
use agora_sdk::sql::{self, Row, SqlError, Timestamp, Transaction};
use agora_sdk::{log, params};
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value as Json, json};
use wstd::http::Client;

/// The catalog, called in-process through the host.
const CATALOG: &str = "http://catalog.agora.internal";
const RESERVE: &str = "/api/products/internal/reserve";
const RELEASE: &str = "/api/products/internal/release";

const MAX_LINES: usize = 100;
const MAX_QUANTITY: i64 = 1_000_000;
const MAX_PAYMENT_METHOD: usize = 64;

const PENDING: &str = "PENDING";
const PAID: &str = "PAID";
const PAYMENT_FAILED: &str = "PAYMENT_FAILED";
const CANCELLED: &str = "CANCELLED";

/// The event version this component writes and understands.
const VERSION: u32 = 1;

/// The columns of an order, in [`order_from`]'s order.
const COLUMNS: &str = "id, user_id, status, total_cents, payment_method, created_at, updated_at";

#[derive(Debug, Clone, PartialEq, Serialize)]
struct Order {
    id: String,
    user_id: String,
    status: String,
    items: Vec<Item>,
    total_cents: i64,
    payment_method: String,
    created_at: String,
    updated_at: String,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
struct Item {
    product_id: String,
    name: String,
    quantity: i64,
    unit_price_cents: i64,
}

/// A validated `POST /api/orders` body.
#[derive(Debug, Clone, PartialEq)]
struct NewOrder {
    /// `(product_id, quantity)`, product ids lower-cased.
    items: Vec<(String, i64)>,
    payment_method: String,
}

#[derive(Serialize)]
struct CreatedLine<'a> {
    product_id: &'a str,
    quantity: i64,
    unit_price_cents: i64,
}

#[derive(Serialize)]
struct OrderCreated<'a> {
    order_id: &'a str,
    user_id: &'a str,
    items: Vec<CreatedLine<'a>>,
    total_cents: i64,
    payment_method: &'a str,
}

#[derive(Serialize)]
struct OrderPaid<'a> {
    order_id: &'a str,
    user_id: &'a str,
    total_cents: i64,
}

#[derive(Serialize)]
struct OrderCancelled<'a> {
    order_id: &'a str,
    user_id: &'a str,
}

/// `data` of `payment.succeeded` and `payment.failed` (`reason` only in the latter).
#[derive(Debug, Deserialize)]
struct PaymentOutcome {
    payment_id: String,
    order_id: String,
    user_id: String,
    amount_cents: i64,
    #[serde(default)]
    reason: Option<String>,
}

#[wstd::http_server]
async fn main(mut request: Request<Body>) -> Result<Response<Body>, Error> {
    let request_id = http::request_id(&request).to_owned();
    Ok(route(&mut request)
        .await
        .unwrap_or_else(|error| error.into_response(&request_id)))
}

async fn route(request: &mut Request<Body>) -> Result<Response<Body>, ApiError> {
    let path = request.uri().path().to_owned();
    let segments: Vec<&str> = path.split('/').filter(|s| !s.is_empty()).collect();
    let method = request.method().clone();
    // The host's policy makes every route authenticated; this is the second line.
    let identity = Identity::from_headers(request.headers())
        .ok_or_else(|| ApiError::unauthorized("sign in to see or place orders"))?;
    match (&method, segments.as_slice()) {
        (&Method::POST, ["api", "orders"]) => {
            let new = NewOrder::parse(&json_object(request).await?)?;
            create(&identity, new).await
        }
        (&Method::GET, ["api", "orders"]) => list(&identity, Page::from_request(request)?),
        (&Method::GET, ["api", "orders", id]) => get(&identity, id),
        (&Method::POST, ["api", "orders", id, "cancel"]) => cancel(&identity, id).await,
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

impl NewOrder {
    fn parse(body: &Map<String, Json>) -> Result<NewOrder, ApiError> {
        if let Some(unknown) = body
            .keys()
            .find(|key| !matches!(key.as_str(), "items" | "payment_method"))
        {
            return Err(ApiError::validation(
                unknown,
                format!("unknown field `{unknown}`: an order has items and payment_method"),
            ));
        }
        let Some(Json::Array(lines)) = body.get("items") else {
            return Err(ApiError::validation(
                "items",
                "items must be an array of {product_id, quantity}",
            ));
        };
        if lines.is_empty() || lines.len() > MAX_LINES {
            return Err(ApiError::validation(
                "items",
                format!("an order holds 1 to {MAX_LINES} lines"),
            ));
        }
        let mut items: Vec<(String, i64)> = Vec::with_capacity(lines.len());
        for (i, line) in lines.iter().enumerate() {
            let Json::Object(line) = line else {
                return Err(ApiError::validation(
                    &format!("items[{i}]"),
                    "each line must be an object {product_id, quantity}",
                ));
            };
            if let Some(unknown) = line
                .keys()
                .find(|key| !matches!(key.as_str(), "product_id" | "quantity"))
            {
                return Err(ApiError::validation(
                    &format!("items[{i}].{unknown}"),
                    format!("unknown field `{unknown}`: a line has product_id and quantity"),
                ));
            }
            let product_id = match line.get("product_id") {
                Some(Json::String(id)) if http::is_uuid(id) => id.to_ascii_lowercase(),
                _ => {
                    return Err(ApiError::validation(
                        &format!("items[{i}].product_id"),
                        "product_id must be a product's id (a UUID)",
                    ));
                }
            };
            if items.iter().any(|(seen, _)| *seen == product_id) {
                return Err(ApiError::validation(
                    &format!("items[{i}].product_id"),
                    format!("product {product_id} appears twice: give it one line"),
                ));
            }
            let quantity = match line.get("quantity").and_then(Json::as_i64) {
                Some(quantity) if (1..=MAX_QUANTITY).contains(&quantity) => quantity,
                _ => {
                    return Err(ApiError::validation(
                        &format!("items[{i}].quantity"),
                        format!("quantity must be a whole number from 1 to {MAX_QUANTITY}"),
                    ));
                }
            };
            items.push((product_id, quantity));
        }
        let payment_method = match body.get("payment_method") {
            Some(Json::String(method))
                if !method.trim().is_empty()
                    && method.trim().chars().count() <= MAX_PAYMENT_METHOD
                    && !method.chars().any(char::is_control) =>
            {
                method.trim().to_owned()
            }
            _ => {
                return Err(ApiError::validation(
                    "payment_method",
                    format!(
                        "payment_method must be a non-blank string of at most \
                         {MAX_PAYMENT_METHOD} characters"
                    ),
                ));
            }
        };
        Ok(NewOrder {
            items,
            payment_method,
        })
    }
}

async fn create(identity: &Identity, new: NewOrder) -> Result<Response<Body>, ApiError> {
    let order_id = events::uuid_v4();
    let (items, total_cents) = reserve(&order_id, &new.items).await?;
    let now = Timestamp::now();
    let order = Order {
        id: order_id.clone(),
        user_id: identity.subject.clone(),
        status: PENDING.to_owned(),
        items,
        total_cents,
        payment_method: new.payment_method,
        created_at: now.to_rfc3339(),
        updated_at: now.to_rfc3339(),
    };
    if let Err(err) = insert(&order, now) {
        // Nothing refers to the reservation: give the stock back before answering.
        if let Err(release_err) = release(&order_id).await {
            log::error(
                "orders",
                &format!(
                    "order {order_id} was not stored and its reservation could not be \
                     released: {release_err}"
                ),
            );
        }
        return Err(ApiError::from(err));
    }
    log::info(
        "orders",
        &format!(
            "order {order_id} placed by {}: {} line(s), {total_cents} cents",
            order.user_id,
            order.items.len()
        ),
    );
    let mut response = http::json(StatusCode::CREATED, &order);
    if let Ok(location) = format!("/api/orders/{order_id}").parse() {
        response.headers_mut().insert("location", location);
    }
    Ok(response)
}

/// The order, its lines and `order.created`, in one transaction.
fn insert(order: &Order, now: Timestamp) -> Result<(), SqlError> {
    let tx = sql::begin()?;
    tx.execute(
        "insert into orders (id, user_id, status, total_cents, payment_method, created_at, \
         updated_at) values ($1, $2, $3, $4, $5, $6, $7)",
        &params![
            &order.id,
            &order.user_id,
            &order.status,
            order.total_cents,
            &order.payment_method,
            now.micros(),
            now.micros(),
        ],
    )?;
    for (line, item) in order.items.iter().enumerate() {
        tx.execute(
            "insert into order_items (order_id, line, product_id, name, quantity, \
             unit_price_cents) values ($1, $2, $3, $4, $5, $6)",
            &params![
                &order.id,
                i64::try_from(line).unwrap_or(i64::MAX),
                &item.product_id,
                &item.name,
                item.quantity,
                item.unit_price_cents,
            ],
        )?;
    }
    let created = OrderCreated {
        order_id: &order.id,
        user_id: &order.user_id,
        items: order
            .items
            .iter()
            .map(|item| CreatedLine {
                product_id: &item.product_id,
                quantity: item.quantity,
                unit_price_cents: item.unit_price_cents,
            })
            .collect(),
        total_cents: order.total_cents,
        payment_method: &order.payment_method,
    };
    tx.publish_event(&Event::new("order.created", VERSION, &created))?;
    tx.commit()
}

fn list(identity: &Identity, page: Page) -> Result<Response<Body>, ApiError> {
    let total: i64 = sql::query(
        "select count(*) as n from orders where user_id = $1",
        &params![&identity.subject],
    )
    .map_err(ApiError::from)?
    .first()
    .map(|row| row.get("n"))
    .transpose()
    .map_err(ApiError::from)?
    .unwrap_or(0);
    let rows = sql::query(
        &format!(
            "select {COLUMNS} from orders where user_id = $1 \
             order by created_at desc, id desc limit $2 offset $3"
        ),
        &params![&identity.subject, i64::from(page.page_size), page.offset()],
    )
    .map_err(ApiError::from)?;
    let mut orders = rows
        .iter()
        .map(order_from)
        .collect::<Result<Vec<_>, _>>()
        .map_err(ApiError::from)?;
    attach_items(&mut orders).map_err(ApiError::from)?;
    Ok(http::json(StatusCode::OK, &page.list(&orders, total)))
}

fn get(identity: &Identity, id: &str) -> Result<Response<Body>, ApiError> {
    let order = load(id)?
        .filter(|order| order.user_id == identity.subject || identity.has_role("ADMIN"))
        .ok_or_else(|| not_found(id))?;
    Ok(http::json(StatusCode::OK, &order))
}

async fn cancel(identity: &Identity, id: &str) -> Result<Response<Body>, ApiError> {
    if !http::is_uuid(id) {
        return Err(not_found(id));
    }
    let tx = sql::begin().map_err(ApiError::from)?;
    let Some(mut order) = load_in(&tx, id).map_err(ApiError::from)? else {
        return Err(not_found(id));
    };
    if order.user_id != identity.subject {
        return Err(if identity.has_role("ADMIN") {
            ApiError::forbidden(format!("only the owner may cancel order {id}"))
        } else {
            not_found(id)
        });
    }
    let now = Timestamp::now();
    let changed = if order.status == PENDING {
        tx.execute(
            "update orders set status = $1, updated_at = $2 where id = $3 and status = $4",
            &params![CANCELLED, now.micros(), id, PENDING],
        )
        .map_err(ApiError::from)?
    } else {
        0
    };
    if changed == 0 {
        return Err(ApiError::new(
            StatusCode::CONFLICT,
            "not_cancellable",
            format!(
                "order {id} is {}: only a PENDING order can be cancelled",
                order.status
            ),
        ));
    }
    tx.publish_event(&Event::new(
        "order.cancelled",
        VERSION,
        &OrderCancelled {
            order_id: id,
            user_id: &order.user_id,
        },
    ))
    .map_err(ApiError::from)?;
    // Released before the commit: if the catalog fails, dropping `tx` rolls the cancel back
    // and the order keeps its stock, consistently.
    release(&order.id).await?;
    tx.commit().map_err(ApiError::from)?;
    log::info("orders", &format!("order {id} cancelled, stock released"));
    order.status = CANCELLED.to_owned();
    order.updated_at = now.to_rfc3339();
    Ok(http::json(StatusCode::OK, &order))
}

fn order_from(row: Row<'_>) -> Result<Order, SqlError> {
    Ok(Order {
        id: row.get("id")?,
        user_id: row.get("user_id")?,
        status: row.get("status")?,
        items: Vec::new(),
        total_cents: row.get("total_cents")?,
        payment_method: row.get("payment_method")?,
        created_at: Timestamp(row.get("created_at")?).to_rfc3339(),
        updated_at: Timestamp(row.get("updated_at")?).to_rfc3339(),
    })
}

fn item_from(row: Row<'_>) -> Result<(String, Item), SqlError> {
    Ok((
        row.get("order_id")?,
        Item {
            product_id: row.get("product_id")?,
            name: row.get("name")?,
            quantity: row.get("quantity")?,
            unit_price_cents: row.get("unit_price_cents")?,
        },
    ))
}

const ITEM_COLUMNS: &str = "order_id, product_id, name, quantity, unit_price_cents";

/// Reads the lines of `orders` (one query) into them.
fn attach_items(orders: &mut [Order]) -> Result<(), SqlError> {
    if orders.is_empty() {
        return Ok(());
    }
    let placeholders: Vec<String> = (1..=orders.len()).map(|n| format!("${n}")).collect();
    let ids: Vec<sql::Value> = orders
        .iter()
        .map(|order| sql::Value::from(&order.id))
        .collect();
    let rows = sql::query(
        &format!(
            "select {ITEM_COLUMNS} from order_items where order_id in ({}) \
             order by order_id, line",
            placeholders.join(", ")
        ),
        &ids,
    )?;
    for row in rows.iter() {
        let (order_id, item) = item_from(row)?;
        if let Some(order) = orders.iter_mut().find(|order| order.id == order_id) {
            order.items.push(item);
        }
    }
    Ok(())
}

/// The order `id` with its lines, or `None` (also for a malformed id).
fn load(id: &str) -> Result<Option<Order>, ApiError> {
    if !http::is_uuid(id) {
        return Ok(None);
    }
    let order = sql::query_opt(
        &format!("select {COLUMNS} from orders where id = $1"),
        &params![id],
        order_from,
    )
    .map_err(ApiError::from)?;
    let Some(mut order) = order else {
        return Ok(None);
    };
    attach_items(std::slice::from_mut(&mut order)).map_err(ApiError::from)?;
    Ok(Some(order))
}

/// As [`load`], inside `tx`.
fn load_in(tx: &Transaction, id: &str) -> Result<Option<Order>, SqlError> {
    let rows = tx.query(
        &format!("select {COLUMNS} from orders where id = $1"),
        &params![id],
    )?;
    let Some(mut order) = rows.first().map(order_from).transpose()? else {
        return Ok(None);
    };
    let items = tx.query(
        &format!("select {ITEM_COLUMNS} from order_items where order_id = $1 order by line"),
        &params![id],
    )?;
    for row in items.iter() {
        order.items.push(item_from(row)?.1);
    }
    Ok(Some(order))
}

// --- The catalog -------------------------------------------------------------------------

/// What the catalog answered.
struct CatalogAnswer {
    status: StatusCode,
    body: Json,
}

impl CatalogAnswer {
    /// The `error.code` of an error answer, if any.
    fn code(&self) -> Option<&str> {
        self.body.pointer("/error/code").and_then(Json::as_str)
    }
}

/// `POST {CATALOG}{path}` with a JSON body. Transport failures are 503 `catalog_unavailable`.
async fn call_catalog(path: &str, body: &Json) -> Result<CatalogAnswer, ApiError> {
    let url = format!("{CATALOG}{path}");
    let request = Request::post(&url)
        .header("content-type", "application/json")
        .body(Body::from(body.to_string()))
        .map_err(|err| ApiError::internal(format!("cannot build the request to {url}: {err}")))?;
    let mut response = Client::new()
        .send(request)
        .await
        .map_err(|err| catalog_unavailable(format!("{url}: {err:?}")))?;
    let status = response.status();
    let bytes = response
        .body_mut()
        .contents()
        .await
        .map_err(|err| catalog_unavailable(format!("{url}: reading the answer: {err:?}")))?
        .to_vec();
    let body = if bytes.is_empty() {
        Json::Null
    } else {
        serde_json::from_slice(&bytes).unwrap_or(Json::Null)
    };
    Ok(CatalogAnswer { status, body })
}

/// Reserves `items` under `order_id`: the lines at the catalog's prices, and the total.
async fn reserve(order_id: &str, items: &[(String, i64)]) -> Result<(Vec<Item>, i64), ApiError> {
    let lines: Vec<Json> = items
        .iter()
        .map(|(product_id, quantity)| json!({ "product_id": product_id, "quantity": quantity }))
        .collect();
    let answer = call_catalog(
        RESERVE,
        &json!({ "reservation_id": order_id, "items": lines }),
    )
    .await?;
    // The product the catalog's error is about: the one its message names.
    let named = || {
        let message = answer
            .body
            .pointer("/error/message")
            .and_then(Json::as_str)
            .unwrap_or("");
        items
            .iter()
            .find(|(id, _)| message.contains(id.as_str()))
            .or(items.first())
            .cloned()
            .unwrap_or_default()
    };
    match (answer.status, answer.code()) {
        (StatusCode::OK, _) => reserved(order_id, items, &answer.body).map_err(catalog_unavailable),
        (StatusCode::UNPROCESSABLE_ENTITY, Some("unknown_product")) => {
            let (product_id, _) = named();
            Err(ApiError::new(
                StatusCode::UNPROCESSABLE_ENTITY,
                "unknown_product",
                format!("product {product_id} does not exist"),
            ))
        }
        (StatusCode::CONFLICT, Some("insufficient_stock")) => {
            let (product_id, quantity) = named();
            Err(ApiError::new(
                StatusCode::CONFLICT,
                "insufficient_stock",
                format!("product {product_id} does not have {quantity} in stock"),
            ))
        }
        (status, code) => Err(catalog_unavailable(format!(
            "reserving stock answered {} {}",
            status.as_u16(),
            code.unwrap_or("(no error code)")
        ))),
    }
}

/// Reads a successful reservation answer, checking it covers exactly what was asked.
fn reserved(
    order_id: &str,
    asked: &[(String, i64)],
    body: &Json,
) -> Result<(Vec<Item>, i64), String> {
    #[derive(Deserialize)]
    struct Line {
        product_id: String,
        name: String,
        unit_price_cents: i64,
        quantity: i64,
    }
    #[derive(Deserialize)]
    struct Answer {
        items: Vec<Line>,
        total_cents: i64,
    }
    let answer: Answer = serde_json::from_value(body.clone()).map_err(|err| {
        format!("the reservation of order {order_id} answered unexpected JSON: {err}")
    })?;
    let matches = answer.items.len() == asked.len()
        && answer
            .items
            .iter()
            .zip(asked)
            .all(|(line, (id, quantity))| line.product_id == *id && line.quantity == *quantity);
    let sum = answer.items.iter().try_fold(0i64, |sum, line| {
        line.unit_price_cents
            .checked_mul(line.quantity)
            .and_then(|cost| sum.checked_add(cost))
    });
    if !matches || sum != Some(answer.total_cents) {
        return Err(format!(
            "the reservation of order {order_id} does not match the order"
        ));
    }
    let items = answer
        .items
        .into_iter()
        .map(|line| Item {
            product_id: line.product_id,
            name: line.name,
            quantity: line.quantity,
            unit_price_cents: line.unit_price_cents,
        })
        .collect();
    Ok((items, answer.total_cents))
}

/// Gives the stock of `order_id`'s reservation back (the catalog does it once, so repeating
/// is harmless).
async fn release(order_id: &str) -> Result<(), ApiError> {
    let answer = call_catalog(RELEASE, &json!({ "reservation_id": order_id })).await?;
    if answer.status.is_success() {
        Ok(())
    } else {
        Err(catalog_unavailable(format!(
            "releasing the stock of order {order_id} answered {} {}",
            answer.status.as_u16(),
            answer.code().unwrap_or("(no error code)")
        )))
    }
}

// --- Events ------------------------------------------------------------------------------

struct Inbox;

impl Handler for Inbox {
    fn handle(message: Message) -> Result<(), String> {
        let failed = match message.subject.as_str() {
            "payment.succeeded" => false,
            "payment.failed" => true,
            other => {
                log::warn(
                    "payments",
                    &format!("message {} on {other} ignored", message.id),
                );
                return Ok(());
            }
        };
        let event: Event<PaymentOutcome> = message.event()?;
        if event.version != VERSION {
            return Err(format!(
                "{} version {} of event {} is not understood (only {VERSION})",
                event.kind, event.version, event.id
            ));
        }
        let result = if failed {
            wstd::runtime::block_on(payment_failed(&event))
        } else {
            paid(&event)
        };
        if let Err(err) = &result {
            log::warn(
                "payments",
                &format!(
                    "{} {} (delivery {}) failed, to be redelivered: {err}",
                    message.subject, event.id, message.delivery
                ),
            );
        }
        result
    }
}

agora_sdk::export_handler!(Inbox);

/// The order of a payment event, when it is still `PENDING`; `None` (logged) otherwise.
fn pending_order(
    tx: &Transaction,
    event: &Event<PaymentOutcome>,
) -> Result<Option<(String, i64)>, String> {
    let payment = &event.data;
    let row = tx
        .query(
            "select user_id, status, total_cents from orders where id = $1",
            &params![&payment.order_id],
        )
        .map_err(|err| err.to_string())?;
    let Some(row) = row.first() else {
        log::warn(
            "payments",
            &format!(
                "{} {} is about unknown order {}: acknowledged",
                event.kind, event.id, payment.order_id
            ),
        );
        return Ok(None);
    };
    let read = |err: SqlError| err.to_string();
    let user_id: String = row.get("user_id").map_err(read)?;
    let status: String = row.get("status").map_err(read)?;
    let total_cents: i64 = row.get("total_cents").map_err(read)?;
    if status != PENDING {
        let note = if status == CANCELLED && event.kind == "payment.succeeded" {
            log::warn
        } else {
            log::info
        };
        note(
            "payments",
            &format!(
                "{} {} (payment {}) for order {} acknowledged without change: the order is \
                 {status}",
                event.kind, event.id, payment.payment_id, payment.order_id
            ),
        );
        return Ok(None);
    }
    if user_id != payment.user_id || total_cents != payment.amount_cents {
        log::warn(
            "payments",
            &format!(
                "{} {} does not match order {} (user {} vs {user_id}, {} vs {total_cents} \
                 cents)",
                event.kind, event.id, payment.order_id, payment.user_id, payment.amount_cents
            ),
        );
    }
    Ok(Some((user_id, total_cents)))
}

/// `payment.succeeded`: `PENDING` → `PAID`, announcing `order.paid`.
fn paid(event: &Event<PaymentOutcome>) -> Result<(), String> {
    let payment = &event.data;
    let tx = sql::begin().map_err(|err| err.to_string())?;
    let Some((user_id, total_cents)) = pending_order(&tx, event)? else {
        return Ok(());
    };
    let changed = tx
        .execute(
            "update orders set status = $1, updated_at = $2 where id = $3 and status = $4",
            &params![PAID, Timestamp::now().micros(), &payment.order_id, PENDING],
        )
        .map_err(|err| err.to_string())?;
    if changed == 0 {
        return Ok(());
    }
    tx.publish_event(&Event::new(
        "order.paid",
        VERSION,
        &OrderPaid {
            order_id: &payment.order_id,
            user_id: &user_id,
            total_cents,
        },
    ))
    .map_err(|err| err.to_string())?;
    tx.commit().map_err(|err| err.to_string())?;
    log::info(
        "payments",
        &format!(
            "order {} paid (payment {})",
            payment.order_id, payment.payment_id
        ),
    );
    Ok(())
}

/// `payment.failed`: `PENDING` → `PAYMENT_FAILED`, the stock released before the commit (a
/// catalog failure rolls back and asks for a redelivery).
async fn payment_failed(event: &Event<PaymentOutcome>) -> Result<(), String> {
    let payment = &event.data;
    let tx = sql::begin().map_err(|err| err.to_string())?;
    if pending_order(&tx, event)?.is_none() {
        return Ok(());
    }
    let changed = tx
        .execute(
            "update orders set status = $1, updated_at = $2 where id = $3 and status = $4",
            &params![
                PAYMENT_FAILED,
                Timestamp::now().micros(),
                &payment.order_id,
                PENDING
            ],
        )
        .map_err(|err| err.to_string())?;
    if changed == 0 {
        return Ok(());
    }
    release(&payment.order_id)
        .await
        .map_err(|err| err.to_string())?;
    tx.commit().map_err(|err| err.to_string())?;
    log::info(
        "payments",
        &format!(
            "order {}: payment {} failed ({}), stock released",
            payment.order_id,
            payment.payment_id,
            payment.reason.as_deref().unwrap_or("no reason given")
        ),
    );
    Ok(())
}

// --- Errors ------------------------------------------------------------------------------

fn not_found(id: &str) -> ApiError {
    ApiError::not_found(format!("no order {id}"))
}

fn catalog_unavailable(message: String) -> ApiError {
    log::warn("catalog", &message);
    ApiError::new(
        StatusCode::SERVICE_UNAVAILABLE,
        "catalog_unavailable",
        format!("the catalog is unavailable, try again later ({message})"),
    )
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

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(body: Json) -> Result<NewOrder, ApiError> {
        match body {
            Json::Object(map) => NewOrder::parse(&map),
            _ => panic!("not an object"),
        }
    }

    const ID: &str = "0b9f3c1e-7a2d-4e5f-8a6b-1c2d3e4f5a6b";

    #[test]
    fn uuids_are_recognised() {
        assert!(http::is_uuid(ID));
        assert!(http::is_uuid(&ID.to_ascii_uppercase()));
        assert!(!http::is_uuid("0b9f3c1e7a2d4e5f8a6b1c2d3e4f5a6b"));
        assert!(!http::is_uuid("0b9f3c1e-7a2d-4e5f-8a6b-1c2d3e4f5a6g"));
        assert!(!http::is_uuid(""));
    }

    #[test]
    fn a_valid_order_is_read() {
        let new = parse(json!({
            "items": [{"product_id": ID.to_ascii_uppercase(), "quantity": 2}],
            "payment_method": " tok_visa ",
        }))
        .expect("valid");
        assert_eq!(new.items, vec![(ID.to_owned(), 2)]);
        assert_eq!(new.payment_method, "tok_visa");
    }

    #[test]
    fn invalid_orders_name_the_field() {
        let many: Vec<Json> = (0..=MAX_LINES)
            .map(|_| json!({"product_id": ID, "quantity": 1}))
            .collect();
        for (body, field) in [
            (json!({"payment_method": "tok_visa"}), "items"),
            (json!({"items": [], "payment_method": "tok_visa"}), "items"),
            (
                json!({"items": many, "payment_method": "tok_visa"}),
                "items",
            ),
            (
                json!({"items": [1], "payment_method": "tok_visa"}),
                "items[0]",
            ),
            (
                json!({"items": [{"product_id": "nope", "quantity": 1}], "payment_method": "x"}),
                "items[0].product_id",
            ),
            (
                json!({"items": [{"product_id": ID, "quantity": 0}], "payment_method": "x"}),
                "items[0].quantity",
            ),
            (
                json!({"items": [{"product_id": ID, "quantity": 1.5}], "payment_method": "x"}),
                "items[0].quantity",
            ),
            (
                json!({"items": [{"product_id": ID, "quantity": 1}, {"product_id": ID, "quantity": 1}], "payment_method": "x"}),
                "items[1].product_id",
            ),
            (
                json!({"items": [{"product_id": ID, "quantity": 1}], "payment_method": "  "}),
                "payment_method",
            ),
            (
                json!({"items": [{"product_id": ID, "quantity": 1}]}),
                "payment_method",
            ),
            (
                json!({"items": [{"product_id": ID, "quantity": 1}], "payment_method": "x", "total_cents": 1}),
                "total_cents",
            ),
        ] {
            let error = parse(body.clone()).expect_err("invalid");
            assert_eq!(error.code, "validation_failed", "{body}");
            assert_eq!(error.field.as_deref(), Some(field), "{body}");
        }
    }

    #[test]
    fn a_reservation_must_cover_the_order() {
        let asked = vec![(ID.to_owned(), 2)];
        let answer = json!({
            "reservation_id": "r",
            "items": [{"product_id": ID, "name": "Mug", "sku": "M", "unit_price_cents": 250, "quantity": 2}],
            "total_cents": 500,
        });
        let (items, total) = reserved("r", &asked, &answer).expect("matches");
        assert_eq!(total, 500);
        assert_eq!(items[0].name, "Mug");
        let mut wrong = answer.clone();
        wrong["total_cents"] = json!(499);
        assert!(reserved("r", &asked, &wrong).is_err());
    }
}
