//! Orders in the database: the `orders` and `order_items` tables, every SQL statement of the
//! component, and the status an order moves through (`PENDING`, then `PAID`,
//! `PAYMENT_FAILED` or `CANCELLED`).
//!
//! A status only ever leaves `PENDING` through [`leave_pending`], a conditional update, so
//! two concurrent transitions cannot both succeed.

use crate::events;
use agora_sdk::http::{self, Page};
use agora_sdk::params;
use agora_sdk::sql::{self, Row, SqlError, Timestamp, Transaction};
use serde::{Deserialize, Serialize};

/// Placed, stock reserved, waiting for the payment.
pub const PENDING: &str = "PENDING";
/// The payment succeeded.
pub const PAID: &str = "PAID";
/// The payment failed; the stock was released.
pub const PAYMENT_FAILED: &str = "PAYMENT_FAILED";
/// Cancelled by its owner; the stock was released.
pub const CANCELLED: &str = "CANCELLED";

/// The columns of an order, in [`order_from`]'s order.
const COLUMNS: &str = "id, user_id, status, total_cents, payment_method, created_at, updated_at";

/// The columns of a line, in [`item_from`]'s order.
const ITEM_COLUMNS: &str = "order_id, product_id, name, quantity, unit_price_cents";

/// An order as answered.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Order {
    pub id: String,
    pub user_id: String,
    pub status: String,
    pub items: Vec<Item>,
    pub total_cents: i64,
    pub payment_method: String,
    pub created_at: String,
    pub updated_at: String,
}

/// One line of an order, at the price the catalog reserved it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Item {
    pub product_id: String,
    pub name: String,
    pub quantity: i64,
    pub unit_price_cents: i64,
}

/// The order, its lines and `order.created`, in one transaction.
pub fn insert(order: &Order, now: Timestamp) -> Result<(), SqlError> {
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
    // All lines in one statement: an order of N lines costs the same round trips as one of
    // one line (at most 100 lines, 600 parameters).
    let mut values = Vec::with_capacity(order.items.len() * 6);
    for (line, item) in order.items.iter().enumerate() {
        values.extend(params![
            &order.id,
            i64::try_from(line).unwrap_or(i64::MAX),
            &item.product_id,
            &item.name,
            item.quantity,
            item.unit_price_cents,
        ]);
    }
    tx.execute(
        &format!(
            "insert into order_items (order_id, line, product_id, name, quantity, \
             unit_price_cents) values {}",
            sql::values(order.items.len(), 6)
        ),
        &values,
    )?;
    tx.publish_event(&events::order_created(order))?;
    tx.commit()
}

/// One page of `user_id`'s orders, newest first, with how many there are in all.
pub fn of_user(user_id: &str, page: &Page) -> Result<(Vec<Order>, i64), SqlError> {
    let total: i64 = sql::query(
        "select count(*) as n from orders where user_id = $1",
        &params![user_id],
    )?
    .first()
    .map(|row| row.get("n"))
    .transpose()?
    .unwrap_or(0);
    let rows = sql::query(
        &format!(
            "select {COLUMNS} from orders where user_id = $1 \
             order by created_at desc, id desc limit $2 offset $3"
        ),
        &params![user_id, i64::from(page.page_size), page.offset()],
    )?;
    let mut orders = rows.iter().map(order_from).collect::<Result<Vec<_>, _>>()?;
    attach_items(&mut orders)?;
    Ok((orders, total))
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
pub fn load(id: &str) -> Result<Option<Order>, SqlError> {
    if !http::is_uuid(id) {
        return Ok(None);
    }
    let order = sql::query_opt(
        &format!("select {COLUMNS} from orders where id = $1"),
        &params![id],
        order_from,
    )?;
    let Some(mut order) = order else {
        return Ok(None);
    };
    attach_items(std::slice::from_mut(&mut order))?;
    Ok(Some(order))
}

/// As [`load`], inside `tx`.
pub fn load_in(tx: &Transaction, id: &str) -> Result<Option<Order>, SqlError> {
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

/// The status of order `id`, inside `tx`; `None` for an unknown order.
pub fn status_in(tx: &Transaction, id: &str) -> Result<Option<String>, SqlError> {
    let rows = tx.query("select status from orders where id = $1", &params![id])?;
    rows.first().map(|row| row.get("status")).transpose()
}

/// Moves order `id` from `PENDING` to `status` inside `tx`, in the same statement answering
/// its owner and total (what a payment is checked against); `None` when the order is unknown
/// or had already left `PENDING`.
pub fn leave_pending(
    tx: &Transaction,
    id: &str,
    status: &str,
    now: Timestamp,
) -> Result<Option<(String, i64)>, SqlError> {
    let rows = tx.query(
        "update orders set status = $1, updated_at = $2 where id = $3 and status = $4 \
         returning user_id, total_cents",
        &params![status, now.micros(), id, PENDING],
    )?;
    rows.first()
        .map(|row| Ok((row.get("user_id")?, row.get("total_cents")?)))
        .transpose()
}
