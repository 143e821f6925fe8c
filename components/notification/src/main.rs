//! The shop's notifications: for each event a user should hear about, one stored message.
//!
//! Consumes `account.registered`, `order.created`, `order.paid` and `payment.failed`
//! (docs/events.md) and stores a notification for the user the event concerns, once per event
//! id (deliveries are at least once). Serves, for the caller only (identity from the host):
//! - `GET /api/notifications?page&page_size` → the caller's, newest first, paginated.
//! - `POST /api/notifications/{id}/read` → 200 the notification, marked read (404 when it is
//!   not the caller's).
//!
//! Manifest:
//! ```toml
//! [[component]]
//! name = "notification"
//! source = "target/components/notification.wasm"
//! routes = ["/api/notifications", "/api/notifications/..."]
//! migrations = "components/notification/migrations"
//! grants = { sql = true }
//! [component.messaging]
//! subscribe = ["account.registered", "order.created", "order.paid", "payment.failed"]
//! [[component.policy]]
//! access = "authenticated"
//! ```

use agora_sdk::auth::Identity;
use agora_sdk::events::{self, Event, Handler, Message};
use agora_sdk::http::{self, ApiError, Body, Error, Method, Page, Request, Response, StatusCode};
use agora_sdk::params;
use agora_sdk::sql::{self, SqlError, Timestamp};
use serde::Serialize;
use serde_json::Value;

#[derive(Debug, Serialize)]
struct Notification {
    id: String,
    user_id: String,
    #[serde(rename = "type")]
    kind: String,
    title: String,
    body: String,
    read: bool,
    read_at: Option<String>,
    created_at: String,
    data: Value,
}

const COLUMNS: &str = "id, user_id, kind, title, body, data, read_at, created_at";

fn from_row(row: sql::Row<'_>) -> Result<Notification, SqlError> {
    let read_at: Option<i64> = row.get("read_at")?;
    let data: String = row.get("data")?;
    Ok(Notification {
        id: row.get("id")?,
        user_id: row.get("user_id")?,
        kind: row.get("kind")?,
        title: row.get("title")?,
        body: row.get("body")?,
        read: read_at.is_some(),
        read_at: read_at.map(|at| Timestamp(at).to_rfc3339()),
        created_at: Timestamp(row.get("created_at")?).to_rfc3339(),
        data: serde_json::from_str(&data).unwrap_or(Value::Null),
    })
}

#[wstd::http_server]
async fn main(request: Request<Body>) -> Result<Response<Body>, Error> {
    let request_id = http::request_id(&request).to_owned();
    Ok(route(&request).unwrap_or_else(|err| err.into_response(&request_id)))
}

fn route(request: &Request<Body>) -> Result<Response<Body>, ApiError> {
    let identity = Identity::from_headers(request.headers())
        .ok_or_else(|| ApiError::unauthorized("sign in first"))?;
    let path = request.uri().path().trim_end_matches('/').to_owned();
    let segments: Vec<&str> = path.split('/').filter(|s| !s.is_empty()).collect();
    match (request.method().clone(), segments.as_slice()) {
        (Method::GET, ["api", "notifications"]) => list(request, &identity),
        (Method::POST, ["api", "notifications", id, "read"]) => mark_read(id, &identity),
        (_, ["api", "notifications", ..]) => Err(ApiError::new(
            StatusCode::METHOD_NOT_ALLOWED,
            "method_not_allowed",
            format!("{} {path} is not served", request.method()),
        )),
        _ => Err(ApiError::not_found(format!("no route {path}"))),
    }
}

fn list(request: &Request<Body>, identity: &Identity) -> Result<Response<Body>, ApiError> {
    let page = Page::from_request(request)?;
    let total: i64 = sql::query(
        "select count(*) as n from notifications where user_id = $1",
        &params![&identity.subject],
    )
    .and_then(|rows| rows.first().map_or(Ok(0), |row| row.get("n")))
    .map_err(ApiError::from)?;
    let rows = sql::query(
        &format!(
            "select {COLUMNS} from notifications where user_id = $1 \
             order by created_at desc, id desc limit $2 offset $3"
        ),
        &params![&identity.subject, i64::from(page.page_size), page.offset()],
    )
    .map_err(ApiError::from)?;
    let items = rows
        .iter()
        .map(from_row)
        .collect::<Result<Vec<_>, _>>()
        .map_err(ApiError::from)?;
    Ok(http::json(StatusCode::OK, &page.list(&items, total)))
}

fn mark_read(id: &str, identity: &Identity) -> Result<Response<Body>, ApiError> {
    let not_found = || ApiError::not_found(format!("no notification {id}"));
    sql::execute(
        "update notifications set read_at = $1 where id = $2 and user_id = $3 and read_at is null",
        &params![Timestamp::now().micros(), id, &identity.subject],
    )
    .map_err(ApiError::from)?;
    let notification = sql::query_opt(
        &format!("select {COLUMNS} from notifications where id = $1 and user_id = $2"),
        &params![id, &identity.subject],
        from_row,
    )
    .map_err(ApiError::from)?
    .ok_or_else(not_found)?;
    Ok(http::json(StatusCode::OK, &notification))
}

/// `12.34` from 1234 cents.
fn money(cents: i64) -> String {
    format!("{}.{:02}", cents / 100, (cents % 100).abs())
}

fn text(data: &Value, key: &str) -> String {
    data[key].as_str().unwrap_or_default().to_owned()
}

/// What the user is told about an event: `(user, title, body)`, or `None` for an event this
/// component does not turn into a notification.
fn compose(event: &Event<Value>) -> Option<(String, String, String)> {
    let data = &event.data;
    let user = text(data, "user_id");
    let order = text(data, "order_id");
    let (title, body) = match event.kind.as_str() {
        "account.registered" => (
            "Welcome to the shop".to_owned(),
            format!(
                "Hello {}, your account {} is ready.",
                text(data, "name"),
                text(data, "email")
            ),
        ),
        "order.created" => (
            "Order received".to_owned(),
            format!(
                "Your order {order} of {} is waiting for payment.",
                money(data["total_cents"].as_i64().unwrap_or(0))
            ),
        ),
        "order.paid" => (
            "Order paid".to_owned(),
            format!(
                "We received {} for your order {order}.",
                money(data["total_cents"].as_i64().unwrap_or(0))
            ),
        ),
        "payment.failed" => (
            "Payment failed".to_owned(),
            format!(
                "The payment of {} for your order {order} failed: {}.",
                money(data["amount_cents"].as_i64().unwrap_or(0)),
                text(data, "reason")
            ),
        ),
        _ => return None,
    };
    (!user.is_empty()).then_some((user, title, body))
}

struct Inbox;

impl Handler for Inbox {
    fn handle(message: Message) -> Result<(), String> {
        let event: Event<Value> = message.event()?;
        let Some((user, title, body)) = compose(&event) else {
            agora_sdk::log::warn(
                "inbox",
                &format!("event {} of type {} ignored", event.id, event.kind),
            );
            return Ok(());
        };
        sql::execute(
            "insert into notifications (id, event_id, user_id, kind, title, body, data, created_at) \
             values ($1, $2, $3, $4, $5, $6, $7, $8) on conflict (event_id) do nothing",
            &params![
                events::uuid_v4(),
                &event.id,
                &user,
                &event.kind,
                &title,
                &body,
                event.data.to_string(),
                Timestamp::now().micros()
            ],
        )
        .map(drop)
        .map_err(|err| format!("cannot store the notification of event {}: {err}", event.id))
    }
}

agora_sdk::export_handler!(Inbox);
