//! HTTP helpers: JSON answers, agora's error shape, JSON request bodies.

use serde::Serialize;
use serde::de::DeserializeOwned;
pub use wstd::http::{Body, Error, Method, Request, Response, StatusCode};

/// A JSON response with `status`.
pub fn json<T: Serialize>(status: StatusCode, value: &T) -> Response<Body> {
    let body = serde_json::to_vec(value).unwrap_or_else(|err| {
        format!(r#"{{"error":{{"code":"internal","message":"cannot encode the answer: {err}"}}}}"#)
            .into_bytes()
    });
    let mut response = Response::new(Body::from(body));
    *response.status_mut() = status;
    response.headers_mut().insert(
        "content-type",
        wstd::http::HeaderValue::from_static("application/json"),
    );
    response
}

/// agora's error answer: `{"error": {"code", "message"}}` with `status`. The host adds the
/// request id in the `x-request-id` header.
pub fn error(status: StatusCode, code: &str, message: &str) -> Response<Body> {
    json(
        status,
        &serde_json::json!({ "error": { "code": code, "message": message } }),
    )
}

/// Reads the request body as JSON, or answers 400 `invalid_json` saying why.
pub async fn read_json<T: DeserializeOwned>(
    request: &mut Request<Body>,
) -> Result<T, Response<Body>> {
    let bytes = match request.body_mut().contents().await {
        Ok(bytes) => bytes.to_vec(),
        Err(err) => {
            return Err(error(
                StatusCode::BAD_REQUEST,
                "unreadable_body",
                &err.to_string(),
            ));
        }
    };
    serde_json::from_slice(&bytes)
        .map_err(|err| error(StatusCode::BAD_REQUEST, "invalid_json", &err.to_string()))
}

/// The value of query parameter `name`, if present (no percent-decoding).
pub fn query_param<'a>(request: &'a Request<Body>, name: &str) -> Option<&'a str> {
    request
        .uri()
        .query()?
        .split('&')
        .find_map(|pair| pair.strip_prefix(name)?.strip_prefix('='))
}
