//! HTTP helpers: JSON answers, agora's error shape, JSON request bodies.

use serde::Serialize;
use serde::de::DeserializeOwned;
pub use wstd::http::{Body, Error, Method, Request, Response, StatusCode};

/// A JSON response with `status`.
pub fn json<T: Serialize>(status: StatusCode, value: &T) -> Response<Body> {
    json_bytes(status, encode(value))
}

/// `value` as JSON bytes; a value that cannot be encoded becomes agora's `internal` error body.
pub fn encode<T: Serialize>(value: &T) -> Vec<u8> {
    serde_json::to_vec(value).unwrap_or_else(|err| {
        format!(r#"{{"error":{{"code":"internal","message":"cannot encode the answer: {err}"}}}}"#)
            .into_bytes()
    })
}

/// A response with `status` whose body is `body`, JSON already encoded (a cached answer
/// served as it is, without decoding it first).
pub fn json_bytes(status: StatusCode, body: Vec<u8>) -> Response<Body> {
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

/// Header the host sets on every request it routes to a component: the request's id, the same
/// one it returns to the client in `x-request-id`. Clients cannot set it (the host removes
/// every `x-agora-*` header they send).
pub const REQUEST_ID_HEADER: &str = "x-agora-request-id";

/// The id the host gave this request (empty when the request did not come through agora's
/// HTTP trigger, for example in a native unit test).
pub fn request_id(request: &Request<Body>) -> &str {
    request
        .headers()
        .get(REQUEST_ID_HEADER)
        .and_then(|value| value.to_str().ok())
        .unwrap_or("")
}

/// The `Retry-After` of every 503 answer [`ApiError::into_response`] renders, in seconds.
pub const RETRY_AFTER_SECONDS: &str = "1";

/// An error answer of an API: `{"error": {"code", "message", "request_id"}}` (plus `field`
/// for a validation error), with a status. Build one with the constructors, return it with
/// `?` from a handler that returns `Result<_, ApiError>`, and render it with
/// [`ApiError::into_response`] once the request id is at hand.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ApiError {
    /// The HTTP status.
    pub status: StatusCode,
    /// A stable, machine-readable code (`email_taken`, `not_found`, …).
    pub code: String,
    /// A sentence for humans.
    pub message: String,
    /// The request field a validation error is about.
    pub field: Option<String>,
}

impl ApiError {
    /// An error with `status`, `code` and `message`.
    pub fn new(status: StatusCode, code: &str, message: impl Into<String>) -> ApiError {
        ApiError {
            status,
            code: code.to_owned(),
            message: message.into(),
            field: None,
        }
    }

    /// 400 `validation_failed` about `field`.
    pub fn validation(field: &str, message: impl Into<String>) -> ApiError {
        ApiError {
            field: Some(field.to_owned()),
            ..ApiError::new(StatusCode::BAD_REQUEST, "validation_failed", message)
        }
    }

    /// 404 `not_found`.
    pub fn not_found(message: impl Into<String>) -> ApiError {
        ApiError::new(StatusCode::NOT_FOUND, "not_found", message)
    }

    /// 401 `unauthorized`.
    pub fn unauthorized(message: impl Into<String>) -> ApiError {
        ApiError::new(StatusCode::UNAUTHORIZED, "unauthorized", message)
    }

    /// 403 `forbidden`.
    pub fn forbidden(message: impl Into<String>) -> ApiError {
        ApiError::new(StatusCode::FORBIDDEN, "forbidden", message)
    }

    /// 500 `internal`: something the caller cannot fix (a backend failed). The message is
    /// also logged.
    pub fn internal(message: impl Into<String>) -> ApiError {
        let message = message.into();
        crate::log::error("api", &message);
        ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, "internal", message)
    }

    /// The error's JSON body: `{"error": {"code", "message", "request_id"}}`, plus `field`.
    pub(crate) fn body(&self, request_id: &str) -> Vec<u8> {
        let mut error = serde_json::json!({
            "code": self.code,
            "message": self.message,
            "request_id": request_id,
        });
        if let Some(field) = &self.field {
            error["field"] = serde_json::Value::String(field.clone());
        }
        encode(&serde_json::json!({ "error": error }))
    }

    /// The JSON answer, carrying `request_id`.
    pub fn into_response(self, request_id: &str) -> Response<Body> {
        let mut response = json_bytes(self.status, self.body(request_id));
        // A backend that is down for now (a database restarting): say when to try again.
        if self.status == StatusCode::SERVICE_UNAVAILABLE {
            response.headers_mut().insert(
                "retry-after",
                wstd::http::HeaderValue::from_static(RETRY_AFTER_SECONDS),
            );
        }
        response
    }
}

/// A database failure: 503 `unavailable` when the database cannot be reached (the client may
/// retry), 500 `internal` (logged) otherwise.
impl From<crate::sql::SqlError> for ApiError {
    fn from(err: crate::sql::SqlError) -> ApiError {
        match err {
            crate::sql::SqlError::Unavailable(message) => ApiError::new(
                StatusCode::SERVICE_UNAVAILABLE,
                "unavailable",
                format!("the database is unavailable: {message}"),
            ),
            other => ApiError::internal(format!("database: {other}")),
        }
    }
}

/// An empty 204 answer.
pub fn no_content() -> Response<Body> {
    let mut response = Response::new(Body::empty());
    *response.status_mut() = StatusCode::NO_CONTENT;
    response
}

/// Whether `text` is a UUID in its 36-character hyphenated form (any version).
pub fn is_uuid(text: &str) -> bool {
    text.len() == 36
        && text.bytes().enumerate().all(|(i, b)| match i {
            8 | 13 | 18 | 23 => b == b'-',
            _ => b.is_ascii_hexdigit(),
        })
}

impl std::fmt::Display for ApiError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{} {}: {}",
            self.status.as_u16(),
            self.code,
            self.message
        )
    }
}

impl std::error::Error for ApiError {}

/// Reads the request body as JSON, or a 400 [`ApiError`] (`invalid_json`) saying why.
pub async fn json_body<T: DeserializeOwned>(request: &mut Request<Body>) -> Result<T, ApiError> {
    let bytes = request.body_mut().contents().await.map_err(|err| {
        ApiError::new(StatusCode::BAD_REQUEST, "unreadable_body", err.to_string())
    })?;
    serde_json::from_slice(bytes)
        .map_err(|err| ApiError::new(StatusCode::BAD_REQUEST, "invalid_json", err.to_string()))
}

/// Query parameter `name`, percent-decoded (`+` is a space), if present.
pub fn query(request: &Request<Body>, name: &str) -> Option<String> {
    query_param(request, name).map(percent_decode)
}

/// Decodes `%XX` escapes and `+`; invalid escapes are kept as they are.
pub fn percent_decode(text: &str) -> String {
    let bytes = text.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'+' => out.push(b' '),
            b'%' if i + 2 < bytes.len() => {
                let hex = std::str::from_utf8(&bytes[i + 1..i + 3]).ok();
                match hex.and_then(|h| u8::from_str_radix(h, 16).ok()) {
                    Some(byte) => {
                        out.push(byte);
                        i += 3;
                        continue;
                    }
                    None => out.push(b'%'),
                }
            }
            byte => out.push(byte),
        }
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// Default and largest page sizes of a list.
pub const DEFAULT_PAGE_SIZE: u32 = 20;
/// The largest `page_size` a list accepts.
pub const MAX_PAGE_SIZE: u32 = 100;

/// `?page=P&page_size=S` of a list request: `page` from 1, `page_size` 1 to 100 (default 20).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Page {
    /// 1-based page number.
    pub page: u32,
    /// Items per page.
    pub page_size: u32,
}

impl Page {
    /// Reads `page` and `page_size`; a 400 `validation_failed` naming the parameter when one
    /// is not a number in range.
    pub fn from_request(request: &Request<Body>) -> Result<Page, ApiError> {
        let number = |name: &str, default: u32, max: u32| match query_param(request, name) {
            None | Some("") => Ok(default),
            Some(text) => match text.parse::<u32>() {
                Ok(n) if (1..=max).contains(&n) => Ok(n),
                _ => Err(ApiError::validation(
                    name,
                    format!("{name} must be a whole number from 1 to {max}"),
                )),
            },
        };
        Ok(Page {
            page: number("page", 1, u32::MAX)?,
            page_size: number("page_size", DEFAULT_PAGE_SIZE, MAX_PAGE_SIZE)?,
        })
    }

    /// Rows to skip: `(page - 1) * page_size`.
    pub fn offset(&self) -> i64 {
        (i64::from(self.page) - 1) * i64::from(self.page_size)
    }

    /// The list answer: `{"items", "total", "page", "page_size"}`.
    pub fn list<T: Serialize>(&self, items: &[T], total: i64) -> serde_json::Value {
        serde_json::json!({
            "items": items,
            "total": total,
            "page": self.page,
            "page_size": self.page_size,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn uuids_and_database_errors() {
        assert!(is_uuid("5c0e2f8a-3b7d-4e61-9f0a-8d2c4b6e1f37"));
        assert!(!is_uuid("5c0e2f8a3b7d4e619f0a8d2c4b6e1f37"));
        assert!(!is_uuid("5c0e2f8a-3b7d-4e61-9f0a-8d2c4b6e1f3g"));
        assert!(is_uuid("5C0E2F8A-3B7D-4E61-9F0A-8D2C4B6E1F37"));
        assert!(!is_uuid("5c0e2f8a-3b7d-4e61-9f0a-8d2c4b6e1f3"));
        assert!(!is_uuid("5c0e2f8ax3b7d-4e61-9f0a-8d2c4b6e1f37"));
        assert!(!is_uuid("internal"));
        assert!(!is_uuid(""));
        let down = ApiError::from(crate::sql::SqlError::Unavailable("refused".into()));
        assert_eq!(
            (down.status, down.code.as_str()),
            (StatusCode::SERVICE_UNAVAILABLE, "unavailable")
        );
        assert!(down.message.contains("refused"), "{down}");
        let response = down.into_response("r-1");
        assert_eq!(
            response.headers().get("retry-after").map(|v| v.as_bytes()),
            Some(RETRY_AFTER_SECONDS.as_bytes())
        );
        let missing = ApiError::not_found("gone").into_response("r-2");
        assert!(missing.headers().get("retry-after").is_none());
    }

    #[test]
    fn percent_decoding() {
        assert_eq!(percent_decode("a+b%20c%2Fd"), "a b c/d");
        assert_eq!(percent_decode("100%"), "100%");
        assert_eq!(percent_decode("%zz%4"), "%zz%4");
        assert_eq!(percent_decode("caf%C3%A9"), "café");
    }

    #[test]
    fn api_errors_render_with_the_request_id_and_field() {
        let error = ApiError::validation("email", "email is not an address");
        assert_eq!(error.status, StatusCode::BAD_REQUEST);
        assert_eq!(error.code, "validation_failed");
        assert_eq!(error.field.as_deref(), Some("email"));
        assert_eq!(
            error.to_string(),
            "400 validation_failed: email is not an address"
        );
    }
}
