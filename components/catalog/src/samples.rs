//! Sample products for a development shop (`cargo xtask dev`), added by the internal `seed`
//! route when the configuration asks for them and the catalog is empty.

use crate::{handlers, products};
use agora_sdk::http::{self, ApiError, Body, Response};
use agora_sdk::{config, log};
use serde_json::{Map, json};

/// Sample products for a development shop: `(name, description, price_cents, sku, stock,
/// category)`.
const SAMPLES: [(&str, &str, i64, &str, i64, &str); 4] = [
    (
        "Espresso cup",
        "A thick-walled porcelain cup, 80 ml.",
        1250,
        "CUP-ESP-80",
        40,
        "kitchen",
    ),
    (
        "Pour-over kettle",
        "Gooseneck kettle, 1 litre, stainless steel.",
        4990,
        "KET-PO-1L",
        12,
        "kitchen",
    ),
    (
        "Canvas tote",
        "Heavy cotton tote bag with an inner pocket.",
        1800,
        "BAG-TOTE-C",
        25,
        "bags",
    ),
    (
        "Notebook A5",
        "Dotted pages, lay-flat binding, 160 pages.",
        950,
        "NB-A5-DOT",
        60,
        "stationery",
    ),
];

/// Adds [`SAMPLES`] when the configuration asks for them and the catalog is empty.
pub fn seed() -> Result<Response<Body>, ApiError> {
    let wanted = config::get_or("sample_products", String::from("false"))
        .map_err(|err| ApiError::internal(err.to_string()))?;
    if wanted != "true" {
        return Ok(http::no_content());
    }
    let count = products::count().map_err(ApiError::from)?;
    if count > 0 {
        return Ok(http::no_content());
    }
    for (name, description, price_cents, sku, stock, category) in SAMPLES {
        let mut body = Map::new();
        body.insert("name".into(), json!(name));
        body.insert("description".into(), json!(description));
        body.insert("price_cents".into(), json!(price_cents));
        body.insert("sku".into(), json!(sku));
        body.insert("stock".into(), json!(stock));
        body.insert("category".into(), json!(category));
        match handlers::create(body) {
            Ok(_) => {}
            // Another replica seeded the same product at the same moment.
            Err(error) if error.code == "sku_taken" => {}
            Err(error) => return Err(error),
        }
    }
    log::info(
        "products",
        &format!("{} sample products added", SAMPLES.len()),
    );
    Ok(http::no_content())
}
