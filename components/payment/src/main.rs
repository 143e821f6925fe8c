//! The shop's payments: each `order.created` is charged once through a simulated gateway, and
//! the outcome announced as `payment.succeeded` or `payment.failed`.
//!
//! The gateway (simulated, see [`gateway`]) decides by the order's `payment_method`:
//! `tok_visa` succeeds; `tok_decline` is declined with reason `card_declined`; anything else is
//! declined with reason `unknown_payment_method`.
//!
//! Test only, when the configuration says `test_payment_methods = "true"` (otherwise it is an
//! unknown method): `tok_trap_once` traps (panics) the first time it is seen for an order —
//! after recording that in a committed row of `trap_marks`, before charging — and succeeds
//! when the event is redelivered. It shows that a trap half-way charges once.
//!
//! Exactly one charge per order, even when `order.created` is delivered twice (the broker
//! delivers at least once; a copy may arrive with another event id) or the component traps
//! half-way:
//! 1. a payment already recorded for the order → the event is acknowledged, nothing is
//!    charged or published (recorded in `handled_events` as `duplicate`);
//! 2. the gateway is called with the order id as its idempotency key: a second call with the
//!    same key (a trap after the charge, or two copies handled at once) charges nothing and
//!    answers the first outcome; `gateway_calls` holds one row per real charge;
//! 3. the payment (UNIQUE `order_id`) and its event are written in one transaction, through the
//!    outbox; a unique violation means a concurrent copy won, and this one is acknowledged.
//!
//! Route (authenticated; JSON errors `{"error": {"code", "message", "request_id"}}`):
//! - `GET /api/payments?order_id=ID` → `{items: [payment]}`, the payments of that order,
//!   visible to their owner (`user_id` = the caller) and to ADMINs; 404 `not_found` when the
//!   caller can see none (none yet, or not theirs); 400 `validation_failed` (field
//!   `order_id`) when it is missing or not a UUID.
//!
//! A payment is `{id, order_id, user_id, amount_cents, method, status: "SUCCEEDED" |
//! "FAILED", reason, created_at}` (`reason` null when it succeeded).
//!
//! Events (envelope `{id, type, version: 1, occurred_at, data}`): handles `order.created`
//! `{order_id, user_id, items, total_cents, payment_method}`; publishes `payment.succeeded`
//! `{payment_id, order_id, user_id, amount_cents}` and `payment.failed` `{payment_id,
//! order_id, user_id, amount_cents, reason}`.
//!
//! ```toml
//! [[component]]
//! name = "payment"
//! source = "target/components/payment.wasm"
//! routes = ["/api/payments/..."]        # also matches /api/payments itself
//! migrations = "components/payment/migrations"
//! grants = { sql = true, publish = ["payment.*"] }
//! # config = { test_payment_methods = "true" }   # tests only: enables tok_trap_once
//!
//! [[component.policy]]
//! access = "authenticated"
//!
//! [component.messaging]
//! subscribe = ["order.created"]
//! ```

use agora_sdk::auth::Identity;
use agora_sdk::events::{self, Event, Handler, Message};
use agora_sdk::http::{self, ApiError, Body, Error, Method, Request, Response, StatusCode};
use agora_sdk::sql::{self, Row, SqlError, Timestamp};
use agora_sdk::{config, log, params};
use serde::{Deserialize, Serialize};

const SUCCEEDED: &str = "SUCCEEDED";
const FAILED: &str = "FAILED";

/// The event version this component writes and understands.
const VERSION: u32 = 1;

/// Test-only payment method: traps once per order before charging, then succeeds.
const TRAP_ONCE: &str = "tok_trap_once";

const COLUMNS: &str = "id, order_id, user_id, amount_cents, method, status, reason, created_at";

#[derive(Debug, Clone, PartialEq, Serialize)]
struct Payment {
    id: String,
    order_id: String,
    user_id: String,
    amount_cents: i64,
    method: String,
    status: String,
    reason: Option<String>,
    created_at: String,
}

/// `data` of `order.created` (the lines are not needed to charge).
#[derive(Debug, Deserialize)]
struct OrderCreated {
    order_id: String,
    user_id: String,
    total_cents: i64,
    payment_method: String,
}

#[derive(Serialize)]
struct PaymentSucceeded<'a> {
    payment_id: &'a str,
    order_id: &'a str,
    user_id: &'a str,
    amount_cents: i64,
}

#[derive(Serialize)]
struct PaymentFailed<'a> {
    payment_id: &'a str,
    order_id: &'a str,
    user_id: &'a str,
    amount_cents: i64,
    reason: &'a str,
}

#[wstd::http_server]
async fn main(request: Request<Body>) -> Result<Response<Body>, Error> {
    let request_id = http::request_id(&request).to_owned();
    Ok(route(&request).unwrap_or_else(|error| error.into_response(&request_id)))
}

fn route(request: &Request<Body>) -> Result<Response<Body>, ApiError> {
    let path = request.uri().path().to_owned();
    let segments: Vec<&str> = path.split('/').filter(|s| !s.is_empty()).collect();
    let identity = Identity::from_headers(request.headers())
        .ok_or_else(|| ApiError::unauthorized("sign in to see payments"))?;
    match (request.method(), segments.as_slice()) {
        (&Method::GET, ["api", "payments"]) => {
            let order_id = http::query(request, "order_id").unwrap_or_default();
            list(&identity, order_id.trim())
        }
        (method, ["api", "payments"]) => Err(ApiError::new(
            StatusCode::METHOD_NOT_ALLOWED,
            "method_not_allowed",
            format!("{method} is not allowed on {path}"),
        )),
        _ => Err(ApiError::not_found(format!("no route {path}"))),
    }
}

fn list(identity: &Identity, order_id: &str) -> Result<Response<Body>, ApiError> {
    if order_id.is_empty() {
        return Err(ApiError::validation(
            "order_id",
            "pass the order's id: /api/payments?order_id=ID",
        ));
    }
    if !http::is_uuid(order_id) {
        return Err(ApiError::validation("order_id", "order_id must be a UUID"));
    }
    let rows = sql::query(
        &format!("select {COLUMNS} from payments where order_id = $1 order by created_at, id"),
        &params![order_id.to_ascii_lowercase()],
    )
    .map_err(ApiError::from)?;
    let payments: Vec<Payment> = rows
        .iter()
        .map(payment_from)
        .collect::<Result<Vec<_>, _>>()
        .map_err(ApiError::from)?
        .into_iter()
        .filter(|payment| payment.user_id == identity.subject || identity.has_role("ADMIN"))
        .collect();
    if payments.is_empty() {
        return Err(ApiError::not_found(format!(
            "no payment for order {order_id}"
        )));
    }
    Ok(http::json(
        StatusCode::OK,
        &serde_json::json!({ "items": payments }),
    ))
}

fn payment_from(row: Row<'_>) -> Result<Payment, SqlError> {
    Ok(Payment {
        id: row.get("id")?,
        order_id: row.get("order_id")?,
        user_id: row.get("user_id")?,
        amount_cents: row.get("amount_cents")?,
        method: row.get("method")?,
        status: row.get("status")?,
        reason: row.get("reason")?,
        created_at: Timestamp(row.get("created_at")?).to_rfc3339(),
    })
}

// --- The gateway (simulated) ---------------------------------------------------------------

/// True when the configuration enables the test-only payment methods (`tok_trap_once`).
fn test_methods() -> bool {
    config::get_or("test_payment_methods", false).unwrap_or(false)
}

/// What the gateway decides for a payment method (`test_methods`: whether the test-only ones
/// are known): `Ok` charged, `Err(reason)` declined.
fn decide(method: &str, test_methods: bool) -> Result<(), &'static str> {
    match method {
        "tok_visa" => Ok(()),
        TRAP_ONCE if test_methods => Ok(()),
        "tok_decline" => Err("card_declined"),
        _ => Err("unknown_payment_method"),
    }
}

/// Charges `amount_cents` with `method` under `idempotency_key`, as an external gateway
/// would: its record is committed on its own (outside the caller's transaction), and a second
/// call with the same key charges nothing and answers the first outcome.
fn gateway(
    idempotency_key: &str,
    order_id: &str,
    amount_cents: i64,
    method: &str,
) -> Result<Result<(), String>, SqlError> {
    let decision = decide(method, test_methods());
    let (outcome, reason) = match decision {
        Ok(()) => (SUCCEEDED, None),
        Err(reason) => (FAILED, Some(reason)),
    };
    let charged = sql::execute(
        "insert into gateway_calls (idempotency_key, order_id, amount_cents, method, outcome, \
         reason, replays, created_at) values ($1, $2, $3, $4, $5, $6, 0, $7) \
         on conflict (idempotency_key) do nothing",
        &params![
            idempotency_key,
            order_id,
            amount_cents,
            method,
            outcome,
            reason,
            Timestamp::now().micros(),
        ],
    )?;
    if charged == 1 {
        log::info(
            "gateway",
            &format!("charged {amount_cents} cents for order {order_id}: {outcome}"),
        );
        return Ok(decision.map_err(str::to_owned));
    }
    // A replay: the first call's outcome, nothing charged.
    sql::execute(
        "update gateway_calls set replays = replays + 1 where idempotency_key = $1",
        &params![idempotency_key],
    )?;
    let first = sql::query_opt(
        "select outcome, reason from gateway_calls where idempotency_key = $1",
        &params![idempotency_key],
        |row| {
            let outcome: String = row.get("outcome")?;
            let reason: Option<String> = row.get("reason")?;
            Ok((outcome, reason))
        },
    )?;
    log::info(
        "gateway",
        &format!("idempotent replay for order {order_id}: nothing charged"),
    );
    Ok(match first {
        Some((outcome, _)) if outcome == SUCCEEDED => Ok(()),
        Some((_, reason)) => Err(reason.unwrap_or_else(|| "declined".to_owned())),
        None => Err("gateway_error".to_owned()),
    })
}

// --- Events --------------------------------------------------------------------------------

struct Inbox;

impl Handler for Inbox {
    fn handle(message: Message) -> Result<(), String> {
        if message.subject != "order.created" {
            log::warn(
                "payments",
                &format!("message {} on {} ignored", message.id, message.subject),
            );
            return Ok(());
        }
        let event: Event<OrderCreated> = message.event()?;
        if event.version != VERSION {
            return Err(format!(
                "order.created version {} of event {} is not understood (only {VERSION})",
                event.version, event.id
            ));
        }
        charge(&event, message.delivery).map_err(|err| {
            let err = format!(
                "order.created {} (order {}, delivery {}): {err}",
                event.id, event.data.order_id, message.delivery
            );
            log::warn("payments", &err);
            err
        })
    }
}

agora_sdk::export_handler!(Inbox);

/// Records that `event` was handled in delivery `delivery`, and how.
fn handled(
    tx: Option<&sql::Transaction>,
    event: &Event<OrderCreated>,
    delivery: u32,
    outcome: &str,
) -> Result<(), SqlError> {
    let statement = "insert into handled_events (event_id, order_id, outcome, delivery, \
                     handled_at) values ($1, $2, $3, $4, $5) on conflict (event_id) do nothing";
    let values = params![
        &event.id,
        &event.data.order_id,
        outcome,
        delivery,
        Timestamp::now().micros()
    ];
    match tx {
        Some(tx) => tx.execute(statement, &values),
        None => sql::execute(statement, &values),
    }
    .map(drop)
}

fn payment_exists(order_id: &str) -> Result<bool, SqlError> {
    Ok(!sql::query(
        "select id from payments where order_id = $1",
        &params![order_id],
    )?
    .is_empty())
}

fn charge(event: &Event<OrderCreated>, delivery: u32) -> Result<(), String> {
    let order = &event.data;
    let failed = |err: SqlError| err.to_string();
    if payment_exists(&order.order_id).map_err(failed)? {
        log::info(
            "payments",
            &format!(
                "order.created {} for order {}: already charged, acknowledged",
                event.id, order.order_id
            ),
        );
        return handled(None, event, delivery, "duplicate").map_err(failed);
    }
    if order.payment_method == TRAP_ONCE && test_methods() {
        let first_time = sql::execute(
            "insert into trap_marks (order_id, created_at) values ($1, $2) \
             on conflict (order_id) do nothing",
            &params![&order.order_id, Timestamp::now().micros()],
        )
        .map_err(failed)?
            == 1;
        if first_time {
            panic!(
                "{TRAP_ONCE}: trapping on purpose before charging order {}",
                order.order_id
            );
        }
    }
    let outcome = gateway(
        &order.order_id,
        &order.order_id,
        order.total_cents,
        &order.payment_method,
    )
    .map_err(failed)?;
    let payment_id = events::uuid_v4();
    let (status, reason) = match &outcome {
        Ok(()) => (SUCCEEDED, None),
        Err(reason) => (FAILED, Some(reason.as_str())),
    };
    let tx = sql::begin().map_err(failed)?;
    let inserted = tx.execute(
        &format!("insert into payments ({COLUMNS}) values ($1, $2, $3, $4, $5, $6, $7, $8)"),
        &params![
            &payment_id,
            &order.order_id,
            &order.user_id,
            order.total_cents,
            &order.payment_method,
            status,
            reason,
            Timestamp::now().micros(),
        ],
    );
    match inserted {
        Ok(_) => {}
        // A copy of the event handled at the same time recorded it first.
        Err(SqlError::UniqueViolation(_)) => {
            drop(tx);
            log::info(
                "payments",
                &format!(
                    "order.created {} for order {}: recorded concurrently, acknowledged",
                    event.id, order.order_id
                ),
            );
            return handled(None, event, delivery, "duplicate").map_err(failed);
        }
        Err(err) => return Err(err.to_string()),
    }
    match reason {
        None => tx.publish_event(&Event::new(
            "payment.succeeded",
            VERSION,
            &PaymentSucceeded {
                payment_id: &payment_id,
                order_id: &order.order_id,
                user_id: &order.user_id,
                amount_cents: order.total_cents,
            },
        )),
        Some(reason) => tx.publish_event(&Event::new(
            "payment.failed",
            VERSION,
            &PaymentFailed {
                payment_id: &payment_id,
                order_id: &order.order_id,
                user_id: &order.user_id,
                amount_cents: order.total_cents,
                reason,
            },
        )),
    }
    .map_err(failed)?;
    handled(Some(&tx), event, delivery, "charged").map_err(failed)?;
    tx.commit().map_err(failed)?;
    log::info(
        "payments",
        &format!(
            "payment {payment_id} for order {}: {status}{}",
            order.order_id,
            reason.map(|r| format!(" ({r})")).unwrap_or_default()
        ),
    );
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_gateway_decides_by_payment_method() {
        for test_methods in [false, true] {
            assert_eq!(decide("tok_visa", test_methods), Ok(()));
            assert_eq!(decide("tok_decline", test_methods), Err("card_declined"));
            assert_eq!(
                decide("tok_mastercard", test_methods),
                Err("unknown_payment_method")
            );
            assert_eq!(decide("", test_methods), Err("unknown_payment_method"));
        }
        assert_eq!(decide(TRAP_ONCE, true), Ok(()));
        assert_eq!(decide(TRAP_ONCE, false), Err("unknown_payment_method"));
    }

    #[test]
    fn uuids_are_recognised() {
        assert!(http::is_uuid("0b9f3c1e-7a2d-4e5f-8a6b-1c2d3e4f5a6b"));
        assert!(!http::is_uuid("0b9f3c1e-7a2d-4e5f-8a6b-1c2d3e4f5a6"));
        assert!(!http::is_uuid("x"));
    }
}
