//! The host's own answers: the body type of every response, JSON answers and the JSON error
//! shape (`{"error": {"code", "message", "request_id"}}`) the edge, the HTTP trigger and the
//! admin API share. A leaf: it depends on no other module of the host.

use bytes::Bytes;
use http::{HeaderValue, Response, StatusCode};
use http_body_util::BodyExt as _;
use wasmtime_wasi_http::p2::body::HyperOutgoingBody;

/// The body type of every response the host sends.
pub type ResponseBody = HyperOutgoingBody;

/// Header carrying the request id on every response.
pub const REQUEST_ID_HEADER: &str = "x-request-id";

/// A JSON error: `{"error": {"code", "message", "request_id"}}`. The `x-request-id` header is
/// added by the HTTP trigger, as on every answer.
pub fn error_response(
    status: StatusCode,
    code: &str,
    message: &str,
    request_id: &str,
) -> Response<ResponseBody> {
    let body = serde_json::json!({
        "error": { "code": code, "message": message, "request_id": request_id }
    });
    json_response(status, &body)
}

/// A JSON answer with `status`.
pub fn json_response(status: StatusCode, body: &serde_json::Value) -> Response<ResponseBody> {
    let mut response = Response::new(
        http_body_util::Full::new(Bytes::from(body.to_string()))
            .map_err(|never| match never {})
            .boxed_unsync(),
    );
    *response.status_mut() = status;
    response.headers_mut().insert(
        http::header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    response
}
