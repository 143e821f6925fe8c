//! The catalog, called in-process through the host (`http://catalog.agora.internal`): stock
//! reserved under an order's id, and released again. A catalog that cannot be reached or
//! answers unexpectedly is a 503 `catalog_unavailable`.

use crate::orders::Item;
use agora_sdk::http::{ApiError, Body, Request, StatusCode};
use agora_sdk::log;
use serde::Deserialize;
use serde_json::{Value as Json, json};
use wstd::http::Client;

/// The catalog, called in-process through the host.
const CATALOG: &str = "http://catalog.agora.internal";
const RESERVE: &str = "/api/products/internal/reserve";
const RELEASE: &str = "/api/products/internal/release";

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
pub async fn reserve(
    order_id: &str,
    items: &[(String, i64)],
) -> Result<(Vec<Item>, i64), ApiError> {
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
pub async fn release(order_id: &str) -> Result<(), ApiError> {
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

fn catalog_unavailable(message: String) -> ApiError {
    log::warn("catalog", &message);
    ApiError::new(
        StatusCode::SERVICE_UNAVAILABLE,
        "catalog_unavailable",
        format!("the catalog is unavailable, try again later ({message})"),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    const ID: &str = "0b9f3c1e-7a2d-4e5f-8a6b-1c2d3e4f5a6b";

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
