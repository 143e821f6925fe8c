//! In-process calls to other components: `http://NAME.agora.internal`, which the host routes to
//! component NAME (running its edge checks: route policy, the forwarded bearer token) without a
//! network hop. Needs `grants = { http = ["http://NAME.agora.internal"] }`.
//!
//! The request goes to wasi:http directly rather than through wstd's `Client`: wstd writes the
//! request body before it looks at the response, so a request the host refuses (an ungranted
//! origin) would surface as "connection reset" instead of the host's error code
//! (`http-request-denied`).

use crate::http::Method;

/// An answer: status and body.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Answer {
    /// The HTTP status.
    pub status: u16,
    /// The whole body.
    pub body: Vec<u8>,
}

/// Sends `METHOD http://COMPONENT.agora.internal PATH` (path with its query) with `headers`
/// and `body`, and reads the whole answer. The error says why no answer came, naming the
/// wasi:http error code (`http-request-denied` for an ungranted component).
pub async fn call(
    component: &str,
    method: &Method,
    path: &str,
    headers: &[(&str, &[u8])],
    body: Option<&[u8]>,
) -> Result<Answer, String> {
    use wasip2::http::outgoing_handler;
    use wasip2::http::types::{self, Fields, OutgoingBody, OutgoingRequest, Scheme};
    use wstd::io::{AsyncInputStream, AsyncOutputStream, AsyncPollable, AsyncRead as _};

    let authority = format!("{component}.agora.internal");
    let entries: Vec<(String, Vec<u8>)> = headers
        .iter()
        .map(|(name, value)| ((*name).to_owned(), value.to_vec()))
        .collect();
    let fields = Fields::from_list(&entries).map_err(|err| format!("bad header: {err:?}"))?;
    let request = OutgoingRequest::new(fields);
    let wasi_method = match method.as_str() {
        "GET" => types::Method::Get,
        "POST" => types::Method::Post,
        "PUT" => types::Method::Put,
        "PATCH" => types::Method::Patch,
        "DELETE" => types::Method::Delete,
        "HEAD" => types::Method::Head,
        "OPTIONS" => types::Method::Options,
        other => types::Method::Other(other.to_owned()),
    };
    request
        .set_method(&wasi_method)
        .and_then(|()| request.set_scheme(Some(&Scheme::Http)))
        .and_then(|()| request.set_authority(Some(&authority)))
        .and_then(|()| request.set_path_with_query(Some(path)))
        .map_err(|()| format!("bad request {method} http://{authority}{path}"))?;
    let outgoing = request.body().map_err(|()| "no request body")?;
    let pending = outgoing_handler::handle(request, None).map_err(|code| error_text(&code))?;
    if let Some(bytes) = body {
        // Write errors are ignored: a request the callee's edge refuses has no reader for its
        // body, and its answer (a 401, say) is what counts.
        if let Ok(stream) = outgoing.write() {
            let stream = AsyncOutputStream::new(stream);
            if stream.write_all(bytes).await.is_ok() {
                let _ = stream.flush().await;
            }
        }
    }
    // A refused request has no body left to finish, hence the ignored result.
    let _ = OutgoingBody::finish(outgoing, None);
    AsyncPollable::new(pending.subscribe()).wait_for().await;
    let response = pending
        .get()
        .ok_or("no response although ready")?
        .map_err(|()| "response already taken")?
        .map_err(|code| error_text(&code))?;
    let status = response.status();
    let incoming = response
        .consume()
        .map_err(|()| "response body already taken")?;
    let stream = incoming
        .stream()
        .map_err(|()| "response body already read")?;
    let mut bytes = Vec::new();
    AsyncInputStream::new(stream)
        .read_to_end(&mut bytes)
        .await
        .map_err(|err| format!("reading the answer: {err}"))?;
    Ok(Answer {
        status,
        body: bytes,
    })
}

/// A wasi:http error code as its WIT name, payload included: `HTTP-request-denied` reads as
/// `http-request-denied`, `DNS-error(…)` as `dns-error(DnsErrorPayload { … })`.
fn error_text(code: &wasip2::http::types::ErrorCode) -> String {
    kebab_variant(&format!("{code:?}"))
}

/// `ErrorCode::HttpRequestDenied` → `http-request-denied`; a payload is kept as it is.
fn kebab_variant(debug: &str) -> String {
    let debug = debug.strip_prefix("ErrorCode::").unwrap_or(debug);
    let end = debug
        .find(|c: char| !c.is_ascii_alphanumeric())
        .unwrap_or(debug.len());
    let (name, payload) = debug.split_at(end);
    let mut text = String::new();
    for (i, c) in name.chars().enumerate() {
        if c.is_ascii_uppercase() && i > 0 {
            text.push('-');
        }
        text.push(c.to_ascii_lowercase());
    }
    text + payload
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn error_codes_read_as_their_wit_names() {
        assert_eq!(kebab_variant("HttpRequestDenied"), "http-request-denied");
        assert_eq!(
            kebab_variant("ErrorCode::DnsError(DnsErrorPayload { rcode: None })"),
            "dns-error(DnsErrorPayload { rcode: None })"
        );
    }
}
