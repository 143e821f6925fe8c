//! Calls to the shop's components, as the end user: `http://NAME.agora.internal/…` through the
//! host, which routes them in-process to component NAME and runs its edge checks (route
//! policy, the forwarded bearer token) as for a client.
//!
//! The calls are [`agora_sdk::call::call`], which keeps the host's error code of a refused
//! request.

use serde::de::DeserializeOwned;
use serde_json::Value;

/// A component of the shop this gateway calls.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Service {
    Account,
    Catalog,
    Order,
    Notification,
}

impl Service {
    /// The component's name in the manifest.
    pub fn name(self) -> &'static str {
        match self {
            Service::Account => "account",
            Service::Catalog => "catalog",
            Service::Order => "order",
            Service::Notification => "notification",
        }
    }
}

/// The HTTP methods the gateway uses.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Method {
    Get,
    Post,
}

/// Who the gateway calls for: the end user's `Authorization` header, forwarded as is (the host
/// verifies it again for the callee).
#[derive(Debug, Clone, Default)]
pub struct Caller {
    pub authorization: Option<Vec<u8>>,
}

/// A failed call: the callee's error answer, or a transport failure (`status` 502).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CallError {
    /// The callee's HTTP status (502 when there was no answer).
    pub status: u16,
    /// Its error code (`unauthorized`, `unknown_product`, …).
    pub code: String,
    /// Its message.
    pub message: String,
    /// The request field a `validation_failed` error is about.
    pub field: Option<String>,
    /// The id the host gave the callee's request, for its log lines.
    pub request_id: Option<String>,
}

impl CallError {
    /// The callee's error from its answer: agora's `{"error": {"code", "message",
    /// "request_id", "field"?}}`, or a generic one naming the status when the body is not.
    pub fn from_answer(service: Service, status: u16, body: &[u8]) -> CallError {
        let json: Value = serde_json::from_slice(body).unwrap_or(Value::Null);
        let error = &json["error"];
        let text = |key: &str| error[key].as_str().map(str::to_owned);
        CallError {
            status,
            code: text("code").unwrap_or_else(|| "upstream_error".to_owned()),
            message: text("message")
                .unwrap_or_else(|| format!("the {} component answered {status}", service.name())),
            field: text("field"),
            request_id: text("request_id"),
        }
    }

    /// No usable answer from `service`.
    pub fn unavailable(service: Service, why: &str) -> CallError {
        CallError {
            status: 502,
            code: "upstream_unavailable".to_owned(),
            message: format!("calling the {} component failed: {why}", service.name()),
            field: None,
            request_id: None,
        }
    }
}

/// `METHOD http://SERVICE.agora.internal PATH` with a JSON body, as `caller`; the answer's JSON
/// (`null` for an empty one, such as 204), or the [`CallError`].
pub async fn call<T: DeserializeOwned>(
    caller: &Caller,
    method: Method,
    service: Service,
    path: &str,
    body: Option<&Value>,
) -> Result<T, CallError> {
    let body = body.map(|body| serde_json::to_vec(body).unwrap_or_default());
    let length = body.as_ref().map(|body| body.len().to_string());
    let mut headers: Vec<(&str, &[u8])> = vec![("accept", b"application/json")];
    if let Some(authorization) = &caller.authorization {
        headers.push(("authorization", authorization));
    }
    if let Some(length) = &length {
        headers.push(("content-type", b"application/json"));
        headers.push(("content-length", length.as_bytes()));
    }
    let method = match method {
        Method::Get => agora_sdk::http::Method::GET,
        Method::Post => agora_sdk::http::Method::POST,
    };
    let answer = agora_sdk::call::call(service.name(), &method, path, &headers, body.as_deref())
        .await
        .map_err(|why| CallError::unavailable(service, &why))?;
    let (status, bytes) = (answer.status, answer.body);
    if !(200..300).contains(&status) {
        return Err(CallError::from_answer(service, status, &bytes));
    }
    let json = if bytes.iter().all(u8::is_ascii_whitespace) {
        Value::Null
    } else {
        serde_json::from_slice(&bytes).map_err(|err| {
            CallError::unavailable(service, &format!("its answer is not JSON: {err}"))
        })?
    };
    serde_json::from_value(json).map_err(|err| {
        CallError::unavailable(
            service,
            &format!("its answer has an unexpected shape: {err}"),
        )
    })
}

/// Percent-encodes `text` for a path segment or a query value: everything but the unreserved
/// characters (RFC 3986) is escaped, so a value can never add a segment or a parameter.
pub fn encode(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for byte in text.bytes() {
        if byte.is_ascii_alphanumeric() || matches!(byte, b'-' | b'.' | b'_' | b'~') {
            out.push(char::from(byte));
        } else {
            out.push_str(&format!("%{byte:02X}"));
        }
    }
    out
}

/// `path?name=value&…` with the values that are present, encoded.
pub fn with_query(path: &str, params: &[(&str, Option<String>)]) -> String {
    let pairs: Vec<String> = params
        .iter()
        .filter_map(|(name, value)| Some(format!("{name}={}", encode(value.as_ref()?))))
        .collect();
    if pairs.is_empty() {
        path.to_owned()
    } else {
        format!("{path}?{}", pairs.join("&"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn values_are_encoded_so_they_stay_one_segment_or_parameter() {
        assert_eq!(encode("abc-1.2_3~"), "abc-1.2_3~");
        assert_eq!(encode("../accounts/me"), "..%2Faccounts%2Fme");
        assert_eq!(encode("a b&c=d?#"), "a%20b%26c%3Dd%3F%23");
        assert_eq!(encode("café"), "caf%C3%A9");
    }

    #[test]
    fn queries_keep_only_present_values() {
        assert_eq!(with_query("/api/x", &[("page", None)]), "/api/x");
        assert_eq!(
            with_query(
                "/api/products",
                &[
                    ("page", Some("2".into())),
                    ("category", None),
                    ("q", Some("red shoe&x".into())),
                ],
            ),
            "/api/products?page=2&q=red%20shoe%26x"
        );
    }

    #[test]
    fn callee_errors_keep_code_status_field_and_request_id() {
        let body = br#"{"error":{"code":"validation_failed","message":"name is required","field":"name","request_id":"r-1"}}"#;
        let error = CallError::from_answer(Service::Catalog, 400, body);
        assert_eq!(
            error,
            CallError {
                status: 400,
                code: "validation_failed".into(),
                message: "name is required".into(),
                field: Some("name".into()),
                request_id: Some("r-1".into()),
            }
        );
        let error = CallError::from_answer(Service::Order, 500, b"<html>oops</html>");
        assert_eq!(error.code, "upstream_error");
        assert_eq!(error.message, "the order component answered 500");
        let error = CallError::unavailable(Service::Account, "http-request-denied");
        assert_eq!(
            (error.status, error.code.as_str()),
            (502, "upstream_unavailable")
        );
    }
}
