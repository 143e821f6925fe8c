//! Events: the ones this component publishes (`order.created`, `order.paid`,
//! `order.cancelled`, each written to the outbox in the transaction of its change) and the
//! payment events it handles (`payment.succeeded`, `payment.failed`).
//!
//! Both handlers are idempotent: an order moves only from `PENDING`, so a redelivered event
//! finds it moved on and is acknowledged without change.

use crate::calls;
use crate::orders::{self, CANCELLED, Order, PAID, PAYMENT_FAILED};
use agora_sdk::events::{Event, Handler, Message};
use agora_sdk::log;
use agora_sdk::sql::{self, Timestamp, Transaction};
use serde::{Deserialize, Serialize};

/// The event version this component writes and understands.
const VERSION: u32 = 1;

#[derive(Serialize)]
struct CreatedLine<'a> {
    product_id: &'a str,
    quantity: i64,
    unit_price_cents: i64,
}

/// `data` of `order.created`.
#[derive(Serialize)]
pub struct OrderCreated<'a> {
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

/// `data` of `order.cancelled`.
#[derive(Serialize)]
pub struct OrderCancelled<'a> {
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

/// `order.created` for a new `order`.
pub fn order_created(order: &Order) -> Event<OrderCreated<'_>> {
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
    Event::new("order.created", VERSION, created)
}

/// `order.cancelled` for order `order_id` of `user_id`.
pub fn order_cancelled<'a>(order_id: &'a str, user_id: &'a str) -> Event<OrderCancelled<'a>> {
    Event::new(
        "order.cancelled",
        VERSION,
        OrderCancelled { order_id, user_id },
    )
}

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

/// Moves the order of a payment event from `PENDING` to `status` inside `tx`, answering its
/// owner and total; `None` (logged) when it is unknown or has left `PENDING` already (a
/// redelivery, a cancelled order), found out then by reading it — one statement on the path
/// every order takes.
fn settle(
    tx: &Transaction,
    event: &Event<PaymentOutcome>,
    status: &str,
) -> Result<Option<(String, i64)>, String> {
    let payment = &event.data;
    let failed = |err: agora_sdk::sql::SqlError| err.to_string();
    let Some((user_id, total_cents)) =
        orders::leave_pending(tx, &payment.order_id, status, Timestamp::now()).map_err(failed)?
    else {
        match orders::status_in(tx, &payment.order_id).map_err(failed)? {
            None => log::warn(
                "payments",
                &format!(
                    "{} {} is about unknown order {}: acknowledged",
                    event.kind, event.id, payment.order_id
                ),
            ),
            Some(status) => {
                let note = if status == CANCELLED && event.kind == "payment.succeeded" {
                    log::warn
                } else {
                    log::info
                };
                note(
                    "payments",
                    &format!(
                        "{} {} (payment {}) for order {} acknowledged without change: the \
                         order is {status}",
                        event.kind, event.id, payment.payment_id, payment.order_id
                    ),
                );
            }
        }
        return Ok(None);
    };
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
    let Some((user_id, total_cents)) = settle(&tx, event, PAID)? else {
        return Ok(());
    };
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
    if settle(&tx, event, PAYMENT_FAILED)?.is_none() {
        return Ok(());
    }
    calls::release(&payment.order_id)
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
