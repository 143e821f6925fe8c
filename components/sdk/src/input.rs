//! Validation of JSON request bodies, shared by the components: the body as an object, its
//! fields checked one by one, and the `items: [{product_id, quantity}]` lines of an order or
//! a stock reservation.
//!
//! Every mistake is a 400 `validation_failed` naming the field (see
//! [`ApiError::validation`]). The rules are shared; the wording of the messages stays each
//! caller's, passed in where two components say it differently, so that moving a component
//! onto these helpers changes none of its answers.
//!
//! ```ignore
//! use agora_sdk::{http::ApiError, input};
//! let body = input::json_object(&mut request).await?;
//! if let Some(unknown) = input::unknown_field(&body, &["name", "note"]) {
//!     return Err(ApiError::validation(unknown, format!("unknown field `{unknown}`")));
//! }
//! let name = body.get("name").and_then(|name| input::text(name, 200, true).ok());
//! ```

use crate::http::{self, ApiError, Body, Request, StatusCode};
use serde_json::{Map, Value as Json};

/// Reads the request body, which must be a JSON object: 400 `invalid_json` otherwise.
pub async fn json_object(request: &mut Request<Body>) -> Result<Map<String, Json>, ApiError> {
    object(http::json_body::<Json>(request).await?)
}

/// `value` as a JSON object, or 400 `invalid_json` ("the body must be a JSON object").
pub fn object(value: Json) -> Result<Map<String, Json>, ApiError> {
    match value {
        Json::Object(object) => Ok(object),
        _ => Err(ApiError::new(
            StatusCode::BAD_REQUEST,
            "invalid_json",
            "the body must be a JSON object",
        )),
    }
}

/// The first field of `object` that is not in `known`, if any: a client sending a field that
/// would be silently ignored must learn it was not applied.
pub fn unknown_field<'a>(object: &'a Map<String, Json>, known: &[&str]) -> Option<&'a str> {
    object
        .keys()
        .map(String::as_str)
        .find(|key| !known.contains(key))
}

/// Why a value is not acceptable text (see [`text`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TextError {
    /// Not a JSON string.
    NotText,
    /// Empty, or only whitespace, where text is required.
    Blank,
    /// Longer than allowed (in characters).
    TooLong,
}

/// A string of at most `max_chars` characters. With `trim`, it is trimmed first, must not be
/// blank, and is returned trimmed (the length is that of the trimmed text).
pub fn text(value: &Json, max_chars: usize, trim: bool) -> Result<String, TextError> {
    let Json::String(text) = value else {
        return Err(TextError::NotText);
    };
    let text = if trim { text.trim() } else { text.as_str() };
    if trim && text.is_empty() {
        return Err(TextError::Blank);
    }
    if text.chars().count() > max_chars {
        return Err(TextError::TooLong);
    }
    Ok(text.to_owned())
}

/// A whole number within `range` (a JSON integer: `1.5` and `"1"` are not).
pub fn whole_in(value: Option<&Json>, range: std::ops::RangeInclusive<i64>) -> Option<i64> {
    value
        .and_then(Json::as_i64)
        .filter(|number| range.contains(number))
}

/// How [`lines`] reads an `items` array of `{product_id, quantity}` lines.
#[derive(Debug, Clone)]
pub struct Lines<'a> {
    /// Most lines accepted (at least one is always required).
    pub max_lines: usize,
    /// Largest quantity of a line (the smallest is 1).
    pub max_quantity: i64,
    /// The message when there are no lines or more than `max_lines`.
    pub count_message: String,
    /// Reads a product id as stored (trimmed, lower-cased, …), or `None` when it is not one.
    pub product_id: fn(&str) -> Option<String>,
    /// The message when [`Lines::product_id`] refuses one (or it is not a string).
    pub product_id_message: &'a str,
    /// Each line must be an object with only `product_id` and `quantity`; otherwise a line
    /// that is no object is refused as a missing `product_id`, and other fields are ignored.
    pub closed: bool,
    /// A product may appear in one line only.
    pub distinct: bool,
}

/// The `items` of `body` as `(product_id, quantity)` pairs, checked by `rules`, in the
/// request's order. Errors name the field: `items`, `items[i]`, `items[i].product_id`,
/// `items[i].quantity` or `items[i].<unknown field>`.
pub fn lines(body: &Map<String, Json>, rules: &Lines<'_>) -> Result<Vec<(String, i64)>, ApiError> {
    let Some(Json::Array(lines)) = body.get("items") else {
        return Err(ApiError::validation(
            "items",
            "items must be an array of {product_id, quantity}",
        ));
    };
    if lines.is_empty() || lines.len() > rules.max_lines {
        return Err(ApiError::validation("items", rules.count_message.clone()));
    }
    let mut items: Vec<(String, i64)> = Vec::with_capacity(lines.len());
    for (i, line) in lines.iter().enumerate() {
        if rules.closed {
            let Json::Object(line) = line else {
                return Err(ApiError::validation(
                    &format!("items[{i}]"),
                    "each line must be an object {product_id, quantity}",
                ));
            };
            if let Some(unknown) = unknown_field(line, &["product_id", "quantity"]) {
                return Err(ApiError::validation(
                    &format!("items[{i}].{unknown}"),
                    format!("unknown field `{unknown}`: a line has product_id and quantity"),
                ));
            }
        }
        let product_id = match line.get("product_id") {
            Some(Json::String(id)) => (rules.product_id)(id),
            _ => None,
        }
        .ok_or_else(|| {
            ApiError::validation(&format!("items[{i}].product_id"), rules.product_id_message)
        })?;
        if rules.distinct && items.iter().any(|(seen, _)| *seen == product_id) {
            return Err(ApiError::validation(
                &format!("items[{i}].product_id"),
                format!("product {product_id} appears twice: give it one line"),
            ));
        }
        let quantity = whole_in(line.get("quantity"), 1..=rules.max_quantity).ok_or_else(|| {
            ApiError::validation(
                &format!("items[{i}].quantity"),
                format!(
                    "quantity must be a whole number from 1 to {}",
                    rules.max_quantity
                ),
            )
        })?;
        items.push((product_id, quantity));
    }
    Ok(items)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    const ID: &str = "0b9f3c1e-7a2d-4e5f-8a6b-1c2d3e4f5a6b";

    fn body(value: Json) -> Map<String, Json> {
        value.as_object().cloned().unwrap_or_default()
    }

    fn rules(closed: bool) -> Lines<'static> {
        Lines {
            max_lines: 2,
            max_quantity: 10,
            count_message: "1 or 2 lines".into(),
            product_id: |id| http::is_uuid(id).then(|| id.to_ascii_lowercase()),
            product_id_message: "a UUID",
            closed,
            distinct: closed,
        }
    }

    #[test]
    fn only_objects_are_bodies() {
        assert!(object(json!({"a": 1})).is_ok());
        for value in [json!([1]), json!("text"), json!(null), json!(3)] {
            let error = object(value).expect_err("not an object");
            assert_eq!(error.code, "invalid_json");
            assert_eq!(error.message, "the body must be a JSON object");
        }
    }

    #[test]
    fn unknown_fields_are_named() {
        let body = body(json!({"a": 1, "b": 2}));
        assert_eq!(unknown_field(&body, &["a", "b"]), None);
        assert_eq!(unknown_field(&body, &["a"]), Some("b"));
    }

    #[test]
    fn text_is_checked_as_asked() {
        assert_eq!(text(&json!("  Mug "), 3, true), Ok("Mug".into()));
        assert_eq!(text(&json!("  Mug "), 3, false), Err(TextError::TooLong));
        assert_eq!(text(&json!("   "), 3, true), Err(TextError::Blank));
        assert_eq!(text(&json!(""), 3, false), Ok(String::new()));
        assert_eq!(text(&json!(1), 3, true), Err(TextError::NotText));
        assert_eq!(text(&json!("ééé"), 3, true), Ok("ééé".into()));
    }

    #[test]
    fn whole_numbers_are_integers_in_range() {
        assert_eq!(whole_in(Some(&json!(3)), 1..=5), Some(3));
        assert_eq!(whole_in(Some(&json!(0)), 1..=5), None);
        assert_eq!(whole_in(Some(&json!(1.5)), 1..=5), None);
        assert_eq!(whole_in(Some(&json!("2")), 1..=5), None);
        assert_eq!(whole_in(None, 1..=5), None);
    }

    #[test]
    fn lines_are_read_in_order() {
        let upper = ID.to_ascii_uppercase();
        let read = lines(
            &body(json!({"items": [{"product_id": upper, "quantity": 2}]})),
            &rules(true),
        );
        assert_eq!(read, Ok(vec![(ID.to_owned(), 2)]));
    }

    #[test]
    fn closed_and_open_lines_name_the_field() {
        let line = |id: &str, quantity: Json| json!({"product_id": id, "quantity": quantity});
        for (items, closed, field) in [
            (json!(null), true, "items"),
            (json!([]), true, "items"),
            (
                json!([line(ID, json!(1)), line(ID, json!(1)), line(ID, json!(1))]),
                true,
                "items",
            ),
            (json!([1]), true, "items[0]"),
            (json!([1]), false, "items[0].product_id"),
            (
                json!([{"product_id": ID, "quantity": 1, "x": 1}]),
                true,
                "items[0].x",
            ),
            (json!([line("nope", json!(1))]), true, "items[0].product_id"),
            (json!([line(ID, json!(11))]), true, "items[0].quantity"),
            (
                json!([line(ID, json!(1)), line(ID, json!(1))]),
                true,
                "items[1].product_id",
            ),
        ] {
            let error = lines(&body(json!({"items": items})), &rules(closed)).expect_err("invalid");
            assert_eq!(error.field.as_deref(), Some(field), "{items}");
        }
        // Open lines ignore other fields and allow a product twice.
        let open = json!([{"product_id": ID, "quantity": 1, "x": 1}, line(ID, json!(1))]);
        assert_eq!(
            lines(&body(json!({"items": open})), &rules(false)).map(|l| l.len()),
            Ok(2)
        );
    }
}
