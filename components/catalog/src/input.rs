//! Request bodies and query parameters, read field by field so that each mistake is a 400
//! `validation_failed` naming the field: a product draft (create and patch), the search
//! filter of the list, and the reserve and release bodies of the order component.

use agora_sdk::http::{self, ApiError, Body, Request};
use agora_sdk::input::{self, Lines, TextError};
use serde_json::{Map, Value as Json};

/// Fields of a product a client may write (`sku` only when creating).
const WRITABLE: [&str; 7] = [
    "name",
    "description",
    "price_cents",
    "sku",
    "stock",
    "images",
    "category",
];

/// Longest name (characters).
const MAX_NAME: usize = 200;
/// Longest sku (characters).
const MAX_SKU: usize = 64;
/// Longest description (characters).
const MAX_DESCRIPTION: usize = 10_000;
/// Longest category (characters).
const MAX_CATEGORY: usize = 100;
/// Most images of a product.
const MAX_IMAGES: usize = 50;
/// Longest image URL (characters).
const MAX_IMAGE: usize = 2_048;
/// Longest search text `q` (characters).
const MAX_QUERY: usize = 200;
/// Longest reservation id (characters).
const MAX_RESERVATION_ID: usize = 128;
/// Most lines of a reservation.
const MAX_LINES: usize = 100;
/// Largest quantity of one line.
const MAX_QUANTITY: i64 = 1_000_000;

/// The writable fields present in a request body, validated.
#[derive(Debug, Default)]
pub struct Draft {
    pub name: Option<String>,
    pub description: Option<String>,
    pub price_cents: Option<i64>,
    pub sku: Option<String>,
    pub stock: Option<i64>,
    pub images: Option<Vec<String>>,
    pub category: Option<String>,
}

impl Draft {
    /// Reads `body`. On a PATCH (`partial`) `sku` is refused and `null` is not a value; on a
    /// POST `null` stands for "absent" (the optional fields take their defaults).
    pub fn parse(body: &Map<String, Json>, partial: bool) -> Result<Draft, ApiError> {
        if partial && body.contains_key("sku") {
            return Err(ApiError::validation("sku", "sku is immutable"));
        }
        if let Some(unknown) = input::unknown_field(body, &WRITABLE) {
            return Err(ApiError::validation(
                unknown,
                format!("unknown field `{unknown}`"),
            ));
        }
        let field = |name: &str| -> Result<Option<&Json>, ApiError> {
            match body.get(name) {
                Some(Json::Null) if partial => {
                    Err(ApiError::validation(name, format!("{name} cannot be null")))
                }
                Some(Json::Null) | None => Ok(None),
                Some(value) => Ok(Some(value)),
            }
        };
        let name = field("name")?
            .map(|value| text("name", value, MAX_NAME, true))
            .transpose()?;
        let description = field("description")?
            .map(|value| text("description", value, MAX_DESCRIPTION, false))
            .transpose()?;
        let price_cents = field("price_cents")?
            .map(|value| whole("price_cents", value))
            .transpose()?;
        if price_cents.is_some_and(|price| price <= 0) {
            return Err(ApiError::validation(
                "price_cents",
                "price_cents must be greater than 0",
            ));
        }
        let sku = field("sku")?
            .map(|value| text("sku", value, MAX_SKU, true))
            .transpose()?;
        let stock = field("stock")?
            .map(|value| whole("stock", value))
            .transpose()?;
        if stock.is_some_and(|stock| stock < 0) {
            return Err(ApiError::validation("stock", "stock must not be negative"));
        }
        let images = field("images")?.map(images).transpose()?;
        let category = field("category")?
            .map(|value| text("category", value, MAX_CATEGORY, false))
            .transpose()?;
        Ok(Draft {
            name,
            description,
            price_cents,
            sku,
            stock,
            images,
            category,
        })
    }
}

/// A string field of at most `max` characters; `trimmed` ones are stored trimmed and must not
/// be blank.
fn text(field: &str, value: &Json, max: usize, trimmed: bool) -> Result<String, ApiError> {
    input::text(value, max, trimmed).map_err(|error| {
        let message = match error {
            TextError::NotText => format!("{field} must be a string"),
            TextError::Blank => format!("{field} must not be blank"),
            TextError::TooLong => format!("{field} must be at most {max} characters"),
        };
        ApiError::validation(field, message)
    })
}

/// A whole-number field.
fn whole(field: &str, value: &Json) -> Result<i64, ApiError> {
    value
        .as_i64()
        .ok_or_else(|| ApiError::validation(field, format!("{field} must be a whole number")))
}

/// The `images` field: an array of non-blank URLs, stored trimmed.
fn images(value: &Json) -> Result<Vec<String>, ApiError> {
    let invalid = |message: String| ApiError::validation("images", message);
    let Json::Array(items) = value else {
        return Err(invalid("images must be an array of strings".into()));
    };
    if items.len() > MAX_IMAGES {
        return Err(invalid(format!("at most {MAX_IMAGES} images")));
    }
    items
        .iter()
        .map(|item| match item {
            Json::String(url) if url.trim().is_empty() => {
                Err(invalid("an image must not be blank".into()))
            }
            Json::String(url) if url.chars().count() > MAX_IMAGE => Err(invalid(format!(
                "an image must be at most {MAX_IMAGE} characters"
            ))),
            Json::String(url) => Ok(url.trim().to_owned()),
            _ => Err(invalid("images must be an array of strings".into())),
        })
        .collect()
}

/// A validated reserve request.
pub struct Reserve {
    /// The order's id, trimmed.
    pub reservation_id: String,
    /// `(product_id, quantity)`, product ids trimmed.
    pub items: Vec<(String, i64)>,
}

impl Reserve {
    /// Reads and checks `body`.
    pub fn parse(body: &Map<String, Json>) -> Result<Reserve, ApiError> {
        let reservation_id = reservation_id(body)?;
        let items = input::lines(
            body,
            &Lines {
                max_lines: MAX_LINES,
                max_quantity: MAX_QUANTITY,
                count_message: format!("items must hold 1 to {MAX_LINES} lines"),
                product_id: |id| (!id.trim().is_empty()).then(|| id.trim().to_owned()),
                product_id_message: "product_id must be a product's id",
                closed: false,
                distinct: false,
            },
        )?;
        Ok(Reserve {
            reservation_id,
            items,
        })
    }
}

/// The `reservation_id` of a reserve or release body.
pub fn reservation_id(body: &Map<String, Json>) -> Result<String, ApiError> {
    body.get("reservation_id")
        .and_then(|id| input::text(id, MAX_RESERVATION_ID, true).ok())
        .ok_or_else(|| {
            ApiError::validation(
                "reservation_id",
                format!(
                    "reservation_id must be a non-blank string of at most {MAX_RESERVATION_ID} characters"
                ),
            )
        })
}

/// The filter of `GET /api/products`.
#[derive(Debug, Default, PartialEq)]
pub struct Filter {
    /// An exact category, when not empty.
    pub category: Option<String>,
    /// A search text (trimmed), when not blank.
    pub q: Option<String>,
}

impl Filter {
    /// Reads `category` and `q` from the query string.
    pub fn from_request(request: &Request<Body>) -> Result<Filter, ApiError> {
        let category = http::query(request, "category").filter(|c| !c.is_empty());
        let q = match http::query(request, "q").filter(|q| !q.trim().is_empty()) {
            Some(q) if q.chars().count() > MAX_QUERY => {
                return Err(ApiError::validation(
                    "q",
                    format!("q must be at most {MAX_QUERY} characters"),
                ));
            }
            Some(q) => Some(q.trim().to_owned()),
            None => None,
        };
        Ok(Filter { category, q })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn drafts_are_validated_field_by_field() {
        let body = |value: Json| value.as_object().cloned().unwrap_or_default();
        let field = |value: Json, partial| {
            Draft::parse(&body(value), partial)
                .err()
                .and_then(|err| err.field)
        };
        assert_eq!(field(json!({"name": "  "}), false).as_deref(), Some("name"));
        assert_eq!(
            field(json!({"price_cents": 0}), false).as_deref(),
            Some("price_cents")
        );
        assert_eq!(
            field(json!({"price_cents": 1.5}), false).as_deref(),
            Some("price_cents")
        );
        assert_eq!(field(json!({"stock": -1}), false).as_deref(), Some("stock"));
        assert_eq!(field(json!({"sku": ""}), false).as_deref(), Some("sku"));
        assert_eq!(field(json!({"sku": "A"}), true).as_deref(), Some("sku"));
        assert_eq!(
            field(json!({"color": "red"}), true).as_deref(),
            Some("color")
        );
        assert_eq!(field(json!({"name": null}), true).as_deref(), Some("name"));
        assert_eq!(
            field(json!({"images": ["a", 1]}), false).as_deref(),
            Some("images")
        );
        let draft = Draft::parse(&body(json!({"name": " Mug ", "description": null})), false)
            .expect("valid");
        assert_eq!(draft.name.as_deref(), Some("Mug"));
        assert_eq!(draft.description, None);
    }
}
