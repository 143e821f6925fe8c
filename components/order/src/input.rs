//! The body of `POST /api/orders`, read field by field so that each mistake is a 400
//! `validation_failed` naming the field.

use agora_sdk::http::{self, ApiError};
use agora_sdk::input::{self, Lines};
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
        if let Some(unknown) = input::unknown_field(body, &["items", "payment_method"]) {
            return Err(ApiError::validation(
                unknown,
                format!("unknown field `{unknown}`: an order has items and payment_method"),
            ));
        }
        let items = input::lines(
            body,
            &Lines {
                max_lines: MAX_LINES,
                max_quantity: MAX_QUANTITY,
                count_message: format!("an order holds 1 to {MAX_LINES} lines"),
                product_id: |id| http::is_uuid(id).then(|| id.to_ascii_lowercase()),
                product_id_message: "product_id must be a product's id (a UUID)",
                closed: true,
                distinct: true,
            },
        )?;
        let payment_method = match body.get("payment_method") {
            // Control characters are refused anywhere, also where trimming would drop them.
            Some(value @ Json::String(method)) if !method.chars().any(char::is_control) => {
                input::text(value, MAX_PAYMENT_METHOD, true).ok()
            }
            _ => None,
        }
        .ok_or_else(|| {
            ApiError::validation(
                "payment_method",
                format!(
                    "payment_method must be a non-blank string of at most \
                     {MAX_PAYMENT_METHOD} characters"
                ),
            )
        })?;
        Ok(NewOrder {
            items,
            payment_method,
        })
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
