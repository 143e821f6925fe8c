//! Stock reservations in the database: the `reservations` table, and the conditional updates
//! of `products.stock` that take and give back the stock of an order.
//!
//! A reservation is all or nothing, in one transaction, and keyed by its id (the order's), so
//! a repeated reserve answers the stored lines and a repeated release changes nothing.

use crate::input::Reserve;
use agora_sdk::http::{ApiError, StatusCode};
use agora_sdk::params;
use agora_sdk::sql::{self, Rows, SqlError, Timestamp};
use serde::Serialize;

/// One line of a reservation, as answered.
#[derive(Debug, Clone, Serialize)]
pub struct Line {
    pub product_id: String,
    pub name: String,
    pub sku: String,
    pub unit_price_cents: i64,
    pub quantity: i64,
}

/// What a reserve did.
pub enum Reserved {
    /// The reservation existed already: its stored lines, no stock touched.
    Replayed(Vec<Line>),
    /// The stock was taken now (the cache of these products is stale).
    Taken(Vec<Line>),
}

const STORED: &str = "select line, product_id, name, sku, unit_price, quantity \
                      from reservations where reservation_id = $1 order by line";

/// Takes the stock of `request`, or answers the stored lines of the same reservation.
pub fn reserve(request: &Reserve) -> Result<Reserved, ApiError> {
    let id = request.reservation_id.as_str();
    // A replay is rare, so nothing reads the stored reservation up front (that read cost every
    // new order a statement): the unique key on (reservation_id, line) refuses a replay's
    // insert of its lines, which rolls back the stock it took, and the stored lines are answered — as
    // for a concurrent twin. A replay that cannot take the stock (it is gone since) is
    // recognised where that is found out, before any error is answered.
    let tx = sql::begin().map_err(ApiError::from)?;
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
            if let Some(lines) = stored(tx.query(STORED, &params![id]).map_err(ApiError::from)?)? {
                drop(tx);
                return Ok(Reserved::Replayed(lines));
            }
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
    // All lines in one statement (at most 100 lines, 800 parameters).
    let mut values = Vec::with_capacity(lines.len() * 8);
    for (number, line) in lines.iter().enumerate() {
        values.extend(params![
            id,
            i64::try_from(number).unwrap_or(i64::MAX),
            &line.product_id,
            &line.name,
            &line.sku,
            line.quantity,
            line.unit_price_cents,
            now,
        ]);
    }
    let inserted = tx.execute(
        &format!(
            "insert into reservations (reservation_id, line, product_id, name, sku, quantity, \
             unit_price, created_at) values {}",
            sql::values(lines.len(), 8)
        ),
        &values,
    );
    match inserted {
        Ok(_) => {}
        // The same reservation, stored before or committed concurrently: undo ours (the stock
        // this transaction took comes back with it), answer the stored one.
        Err(SqlError::UniqueViolation(_)) => {
            drop(tx);
            let lines = stored(sql::query(STORED, &params![id]).map_err(ApiError::from)?)?
                .ok_or_else(|| ApiError::internal(format!("reservation {id} vanished")))?;
            return Ok(Reserved::Replayed(lines));
        }
        Err(err) => return Err(ApiError::from(err)),
    }
    tx.commit().map_err(ApiError::from)?;
    Ok(Reserved::Taken(lines))
}

/// Gives the stock of reservation `id` back, once: the products whose stock came back, or
/// `None` when there was nothing (left) to release.
pub fn release(id: &str) -> Result<Option<Vec<String>>, ApiError> {
    let tx = sql::begin().map_err(ApiError::from)?;
    // Flipping the flag first is what makes a release count once: a concurrent release of the
    // same reservation waits for this row lock and then changes no row.
    let flipped = tx
        .execute(
            "update reservations set released = true \
             where reservation_id = $1 and released = false",
            &params![id],
        )
        .map_err(ApiError::from)?;
    if flipped == 0 {
        return Ok(None);
    }
    let rows = tx
        .query(
            "select product_id, quantity from reservations \
             where reservation_id = $1 order by product_id",
            &params![id],
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
    Ok(Some(touched))
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

/// What the lines cost together; a total beyond 64 bits is refused.
pub fn total_cents(lines: &[Line]) -> Result<i64, ApiError> {
    lines
        .iter()
        .try_fold(0i64, |total, line| {
            line.unit_price_cents
                .checked_mul(line.quantity)
                .and_then(|cost| total.checked_add(cost))
        })
        .ok_or_else(|| ApiError::validation("items", "the total does not fit in 64 bits"))
}
