//! The body of `POST /api/orders`, read field by field so that each mistake is a 400
//! `validation_failed` naming the field.

use agora_sdk::http::{self, ApiError, Body, Request, StatusCode};
use serde_json::{Map, Value as Json};

/// Most lines an order may hold.
const MAX_LINES: usize = 100;
/// Largest quantity of one line.
const MAX_QUANTITY: i64 = 1_000_000;
/// Longest payment method accepted (characters, once trimmed).
const MAX_PAYMENT_METHOD: usize = 64;

/// A validated `POST /api/orders` body.
#[derive(Debug, Clone, PartialEq)]
pub struct NewOrder {
    /// `(product_id, quantity)`, product ids lower-cased.
    pub items: Vec<(String, i64)>,
    /// Trimmed.
    pub payment_method: String,
}

impl NewOrder {
    /// Reads and checks `body`.
    pub fn parse(body: &Map<String, Json>) -> Result<NewOrder, ApiError> {
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

/// The request body, which must be a JSON object.
pub async fn json_object(request: &mut Request<Body>) -> Result<Map<String, Json>, ApiError> {
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
    use serde_json::json;

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
}
