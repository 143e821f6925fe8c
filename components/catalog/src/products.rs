//! Products in the database: the `products` table and the SQL that reads and writes it
//! (reservations change its `stock` too, see `reservations.rs`).
//!
//! `images` is stored as a JSON array in a text column; times as microseconds since the
//! epoch, answered as RFC 3339.

use crate::input::{Draft, Filter};
use agora_sdk::http::{self, ApiError, Page};
use agora_sdk::params;
use agora_sdk::sql::{self, Row, Rows, SqlError, Timestamp};
use serde::{Deserialize, Serialize};

/// The columns of a product, in [`product_from`]'s order.
const COLUMNS: &str =
    "id, name, description, price_cents, sku, stock, images, category, created_at, updated_at";

/// A product as answered (and cached).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Product {
    pub id: String,
    pub name: String,
    pub description: String,
    pub price_cents: i64,
    pub sku: String,
    pub stock: i64,
    pub images: Vec<String>,
    pub category: String,
    pub created_at: String,
    pub updated_at: String,
}

/// The product `id` from the database.
pub fn find(id: &str) -> Result<Option<Product>, ApiError> {
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

/// One page of the products `filter` selects, newest first (ties by id), with how many it
/// selects in all.
pub fn page(filter: &Filter, page: &Page) -> Result<(Vec<Product>, i64), ApiError> {
    let mut conditions = Vec::new();
    let mut values = Vec::new();
    if let Some(category) = &filter.category {
        values.push(sql::Value::from(category));
        conditions.push(format!("category = ${}", values.len()));
    }
    if let Some(q) = &filter.q {
        let pattern = format!("%{}%", escape_like(&q.to_lowercase()));
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
    Ok((products_from(&rows)?, total))
}

/// How many products there are.
pub fn count() -> Result<i64, SqlError> {
    sql::query("select count(*) as n from products", &[])
        .and_then(|rows| rows.first().map_or(Ok(0), |row| row.get("n")))
}

/// Stores a new `product`; a taken sku is a [`SqlError::UniqueViolation`].
pub fn insert(product: &Product, now: Timestamp) -> Result<u64, SqlError> {
    sql::execute(
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
    )
}

/// The columns a PATCH `draft` changes, with their new values (none for an empty draft).
pub fn changes(draft: Draft) -> Vec<(&'static str, sql::Value)> {
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
    columns
}

/// Writes `columns` (and `updated_at`) to product `id` in one transaction and reads it back;
/// `None` when there is no such product.
pub fn update(
    id: &str,
    mut columns: Vec<(&'static str, sql::Value)>,
) -> Result<Option<Product>, ApiError> {
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
        return Ok(None);
    }
    let rows = tx
        .query(
            &format!("select {COLUMNS} from products where id = $1"),
            &params![id],
        )
        .map_err(ApiError::from)?;
    let Some(product) = products_from(&rows)?.into_iter().next() else {
        return Ok(None);
    };
    tx.commit().map_err(ApiError::from)?;
    Ok(Some(product))
}

/// Deletes product `id`; returns how many rows went (0 or 1).
pub fn delete(id: &str) -> Result<u64, ApiError> {
    sql::execute("delete from products where id = $1", &params![id]).map_err(ApiError::from)
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

fn images_json(images: &[String]) -> String {
    serde_json::to_string(images).unwrap_or_else(|_| "[]".into())
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn like_wildcards_are_escaped() {
        assert_eq!(escape_like("50%_off\\"), "50\\%\\_off\\\\");
        assert_eq!(escape_like("plain"), "plain");
    }
}
