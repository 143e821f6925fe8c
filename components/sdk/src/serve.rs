//! A component's wasi:http entry point with a first look at each request
//! ([`serve_http!`](crate::serve_http)).
//!
//! wstd's `#[wstd::http_server]` reads the whole request before the handler runs: every
//! header (lowered into the guest one `realloc` at a time and parsed into a `HeaderMap`), the
//! method, scheme, authority, path and body; then it writes the answer through its async
//! reactor. On a path as short as a cached read that is a large share of the request: about
//! 12 µs of core time on the bench machine, a fifth of a reused hello (BENCHMARKS.md, sixth
//! session). The first look costs less again under agora: the component also exports
//! `agora:platform/first-look` (`wit/first-look.wit`), and the host hands it a request without
//! a body as plain values in one call and takes a [`Quick`] answer back as one value — no
//! wasi:http resource made, no host call. Elsewhere (`wasmtime serve`, a request with a body)
//! the same `peek` runs inside wasi:http's handler: a [`Peek`] reads from the host only what
//! it is asked (the method, the path, one header), and a [`Quick`] answer is written straight
//! (nine host calls for a body under 4 KiB), without wstd's reactor. A request the first look
//! does not answer goes to the component's usual wstd handler, unchanged.
//!
//! A [`Quick::cached`] answer names a key of the component's cache instead of a body: under
//! agora the host reads the value after `peek` has returned and answers with it (no value: the
//! request goes to the handler), so the component is neither suspended across the cache's
//! round trip nor handed the value to copy back; elsewhere `peek`'s own `read` function reads
//! it inside the handler.

use crate::first_look_bindings::exports::agora::platform::first_look::{
    Answer, CachedAnswer, Reply, RequestHead,
};
use crate::http::{
    ApiError, Body, Error, Method, REQUEST_ID_HEADER, RETRY_AFTER_SECONDS, Request, Response,
    StatusCode,
};
use wasip2::http::types::{
    Fields, IncomingRequest, Method as WasiMethod, OutgoingBody, OutgoingResponse, ResponseOutparam,
};

/// The request as a first look sees it: under agora's first look, the head the host passed;
/// inside wasi:http's handler, the request, each accessor asking the host for that part only.
pub struct Peek<'a> {
    request: Looked<'a>,
}

enum Looked<'a> {
    Head(&'a RequestHead),
    Wasi(&'a IncomingRequest),
}

impl Peek<'_> {
    /// The request's method (`None` for a name the `http` crate refuses, which the host's
    /// HTTP parser does not let through).
    pub fn method(&self) -> Option<Method> {
        let request = match self.request {
            Looked::Head(head) => return Method::from_bytes(head.method.as_bytes()).ok(),
            Looked::Wasi(request) => request,
        };
        Some(match request.method() {
            WasiMethod::Get => Method::GET,
            WasiMethod::Head => Method::HEAD,
            WasiMethod::Post => Method::POST,
            WasiMethod::Put => Method::PUT,
            WasiMethod::Delete => Method::DELETE,
            WasiMethod::Connect => Method::CONNECT,
            WasiMethod::Options => Method::OPTIONS,
            WasiMethod::Trace => Method::TRACE,
            WasiMethod::Patch => Method::PATCH,
            WasiMethod::Other(name) => Method::from_bytes(name.as_bytes()).ok()?,
        })
    }

    /// The path, without the query (`/` when the request names none).
    pub fn path(&self) -> String {
        match self.request {
            Looked::Head(head) => path_of(Some(head.path_with_query.clone())),
            Looked::Wasi(request) => path_of(request.path_with_query()),
        }
    }

    /// The id the host gave this request (as [`crate::http::request_id`]; empty outside
    /// agora's HTTP trigger).
    pub fn request_id(&self) -> String {
        self.header(REQUEST_ID_HEADER).unwrap_or_default()
    }

    /// The first value of header `name` (lower case), when present and text.
    pub fn header(&self, name: &str) -> Option<String> {
        let first = match self.request {
            Looked::Head(head) => head
                .headers
                .iter()
                .find(|(header, _)| header.eq_ignore_ascii_case(name))
                .map(|(_, value)| value.clone())?,
            Looked::Wasi(request) => request.headers().get(name).into_iter().next()?,
        };
        String::from_utf8(first).ok()
    }
}

/// The path of a request's `path_with_query`, as `http::Uri::path` gives it.
fn path_of(path_with_query: Option<String>) -> String {
    let mut path = path_with_query.unwrap_or_default();
    if let Some(query) = path.find('?') {
        path.truncate(query);
    }
    if path.is_empty() {
        path.push('/');
    }
    path
}

/// A whole answer given at the first look: a status, headers and the complete body — or, from
/// [`Quick::cached`], the body the component's cache holds under a key.
pub struct Quick {
    status: StatusCode,
    headers: Vec<(String, Vec<u8>)>,
    body: QuickBody,
}

enum QuickBody {
    Bytes(Vec<u8>),
    /// The value under `key` of the component's cache; `read` reads it where the host does
    /// not (inside wasi:http's handler).
    Cached {
        key: String,
        read: fn(&str) -> Option<Vec<u8>>,
    },
}

impl Quick {
    /// An answer with `status` and `body`, and no header of its own.
    pub fn new(status: StatusCode, body: Vec<u8>) -> Quick {
        Quick {
            status,
            headers: Vec::new(),
            body: QuickBody::Bytes(body),
        }
    }

    /// An answer with `status` whose body is the value the component's cache holds under
    /// `key` (as [`crate::cache::get`] names it), when it holds one; when it does not, the
    /// request goes to the component's `serve`, as if `peek` had answered `None`.
    ///
    /// Under agora's first look the host reads the value itself, after `peek` has returned:
    /// the component is not resumed across the cache's round trip and never copies the value.
    /// Inside wasi:http's handler (a request with a body, or another host) `read` reads it
    /// — typically a function around [`crate::cache::get`] that counts an error as a miss.
    /// A miss at the first look is not read again by `read`: the request goes to `serve`.
    pub fn cached(status: StatusCode, key: String, read: fn(&str) -> Option<Vec<u8>>) -> Quick {
        Quick {
            status,
            headers: Vec::new(),
            body: QuickBody::Cached { key, read },
        }
    }

    /// A JSON answer with `status` whose body is `body`, already encoded (the same answer as
    /// [`crate::http::json_bytes`]).
    pub fn json_bytes(status: StatusCode, body: Vec<u8>) -> Quick {
        Quick::new(status, body).header("content-type", "application/json")
    }

    /// `error` as agora's error answer for request `request_id` (the same answer as
    /// [`ApiError::into_response`]).
    pub fn error(error: &ApiError, request_id: &str) -> Quick {
        let quick = Quick::json_bytes(error.status, error.body(request_id));
        // A backend that is down for now (a database restarting): say when to try again.
        if error.status == StatusCode::SERVICE_UNAVAILABLE {
            quick.header("retry-after", RETRY_AFTER_SECONDS)
        } else {
            quick
        }
    }

    /// The answer with header `name: value` added.
    pub fn header(mut self, name: &str, value: &str) -> Quick {
        self.headers.push((name.into(), value.as_bytes().to_vec()));
        self
    }

    /// The answer as agora's first look returns it.
    fn into_reply(self) -> Reply {
        let status = self.status.as_u16();
        match self.body {
            QuickBody::Bytes(body) => Reply::Answer(Answer {
                status,
                headers: self.headers,
                body,
            }),
            QuickBody::Cached { key, .. } => Reply::Cached(CachedAnswer {
                key,
                status,
                headers: self.headers,
            }),
        }
    }

    /// Writes the answer to `out`, reading a cached body first; `Err(out)` when there is no
    /// cached value (or the host's first look has just found none under its key: [`missed`]),
    /// for the component's `serve` to answer.
    fn resolve_and_send(self, out: ResponseOutparam) -> Result<(), ResponseOutparam> {
        let body = match self.body {
            QuickBody::Bytes(body) => body,
            QuickBody::Cached { key, read } => {
                if missed(&key) {
                    return Err(out);
                }
                match read(&key) {
                    Some(body) => body,
                    None => return Err(out),
                }
            }
        };
        send(self.status, &self.headers, &body, out);
        Ok(())
    }
}

/// Writes an answer to `out`. A client gone away fails the write; the request is over either
/// way, so that is not an error here.
fn send(status: StatusCode, headers: &[(String, Vec<u8>)], body: &[u8], out: ResponseOutparam) {
    let headers = match Fields::from_list(headers) {
        Ok(headers) => headers,
        Err(err) => {
            let message = format!("the component's answer has a bad header: {err:?}");
            ResponseOutparam::set(
                out,
                Err(wasip2::http::types::ErrorCode::InternalError(Some(message))),
            );
            return;
        }
    };
    let response = OutgoingResponse::new(headers);
    // A StatusCode is 100..=999, which wasi:http takes.
    let _ = response.set_status_code(status.as_u16());
    let Ok(outgoing) = response.body() else {
        return;
    };
    ResponseOutparam::set(out, Ok(response));
    let Ok(stream) = outgoing.write() else {
        return;
    };
    // `blocking-write-and-flush` takes at most 4 096 bytes a call.
    for chunk in body.chunks(4096) {
        if stream.blocking_write_and_flush(chunk).is_err() {
            return;
        }
    }
    drop(stream);
    let _ = OutgoingBody::finish(outgoing, None);
}

/// Serves one request: `peek` looks first and may answer; otherwise wstd reads the request
/// and `serve` answers it, as `#[wstd::http_server]` would. Used by
/// [`serve_http!`](crate::serve_http).
#[doc(hidden)]
pub fn handle<F>(
    request: IncomingRequest,
    out: ResponseOutparam,
    peek: fn(&Peek<'_>) -> Option<Quick>,
    serve: fn(Request<Body>) -> F,
) where
    F: Future<Output = Result<Response<Body>, Error>>,
{
    // A request agora's first look has just passed on is not looked at twice; one whose cached
    // answer the host found no value for is looked at, but that key is not read again (here,
    // nor by `serve` if it asks [`missed`]).
    let last = LAST_LOOK.take();
    let passed_on = matches!(last, LastLook::PassedOn);
    MISSED.set(match last {
        LastLook::Cached(key) => Some(key),
        LastLook::Answered | LastLook::PassedOn => None,
    });
    let out = if passed_on {
        out
    } else {
        match peek(&Peek {
            request: Looked::Wasi(&request),
        }) {
            Some(quick) => match quick.resolve_and_send(out) {
                Ok(()) => return,
                Err(out) => out,
            },
            None => out,
        }
    };
    let responder = wstd::http::server::Responder::new(out);
    wstd::runtime::block_on(async move {
        match wstd::http::request::try_from_incoming(request) {
            Ok(request) => match serve(request).await {
                Ok(response) => {
                    // wstd's macro panics here; but the answer's status and headers are
                    // already sent, so a body that cannot be written (the client went away)
                    // has no one left to tell, and the instance may serve again.
                    let _ = responder.respond(response).await;
                }
                Err(err) => responder.fail(err),
            },
            Err(err) => responder.fail(err),
        }
    });
}

/// What this instance's last first look answered, for [`handle`].
#[derive(Default)]
enum LastLook {
    /// An answer, or no first look since the last handler call: `handle` looks itself.
    #[default]
    Answered,
    /// `None`: the host calls wasi:http's handler for that request next, on the same
    /// instance, and [`handle`] then skips `peek`.
    PassedOn,
    /// A cached answer under this key: when the host finds no value it calls wasi:http's
    /// handler next, which does not read that key again. (When it found one, the next handler
    /// call is another request's: `peek` runs, and only a cached answer under the same key
    /// goes to `serve` without a read — the same answer, found the long way.)
    Cached(String),
}

std::thread_local! {
    static LAST_LOOK: std::cell::RefCell<LastLook> = std::cell::RefCell::default();
    /// The key of the cached answer the host's first look found no value for, while the
    /// handler serves that request.
    static MISSED: std::cell::RefCell<Option<String>> = const { std::cell::RefCell::new(None) };
}

/// Whether agora's first look has just found no value under `key` for the request being
/// served: its [`Quick::cached`] answer under `key` missed, and the request came to `serve`.
/// A handler can then skip reading `key` itself and go to where the value comes from (it may
/// have been written in between; reading the source again is never wrong). Always `false`
/// outside `serve`, and under a host without the first look.
pub fn missed(key: &str) -> bool {
    MISSED.with_borrow(|missed| missed.as_deref() == Some(key))
}

/// agora's first look at a request without a body: `peek` sees its head and may answer it
/// whole; `None` passes the request on to the wasi:http handler ([`handle`]), where `peek`
/// does not run again. Used by [`serve_http!`](crate::serve_http).
#[doc(hidden)]
pub fn look(request: RequestHead, peek: fn(&Peek<'_>) -> Option<Quick>) -> Option<Reply> {
    let reply = peek(&Peek {
        request: Looked::Head(&request),
    })
    .map(Quick::into_reply);
    LAST_LOOK.set(match &reply {
        None => LastLook::PassedOn,
        Some(Reply::Answer(_)) => LastLook::Answered,
        Some(Reply::Cached(cached)) => LastLook::Cached(cached.key.clone()),
    });
    reply
}

/// Exports the component's wasi:http handler, in place of `#[wstd::http_server]`, and agora's
/// first look (`agora:platform/first-look`): `peek`
/// (`fn(&Peek) -> Option<Quick>`) looks at each request first and may answer it whole;
/// every other request goes to `serve` (`async fn(Request<Body>) -> Result<Response<Body>,
/// Error>`) as wstd reads it. Also defines the binary's `main`, which wasi:http never calls.
///
/// ```ignore
/// fn peek(request: &agora_sdk::serve::Peek) -> Option<agora_sdk::serve::Quick> { None }
/// async fn serve(request: Request<Body>) -> Result<Response<Body>, Error> { … }
/// agora_sdk::serve_http!(peek, serve);
/// ```
#[macro_export]
macro_rules! serve_http {
    ($peek:path, $serve:path) => {
        struct AgoraHttpServer;

        impl $crate::__wasip2::exports::http::incoming_handler::Guest for AgoraHttpServer {
            fn handle(
                request: $crate::__wasip2::http::types::IncomingRequest,
                out: $crate::__wasip2::http::types::ResponseOutparam,
            ) {
                $crate::serve::handle(request, out, $peek, $serve)
            }
        }

        $crate::__wasip2::http::proxy::export!(AgoraHttpServer with_types_in $crate::__wasip2);

        impl $crate::first_look_bindings::exports::agora::platform::first_look::Guest
            for AgoraHttpServer
        {
            fn look(
                request: $crate::first_look_bindings::exports::agora::platform::first_look::RequestHead,
            ) -> ::core::option::Option<
                $crate::first_look_bindings::exports::agora::platform::first_look::Reply,
            > {
                $crate::serve::look(request, $peek)
            }
        }

        $crate::first_look_bindings::export!(AgoraHttpServer with_types_in $crate::first_look_bindings);

        fn main() {}
    };
}

#[cfg(test)]
mod tests {
    use super::path_of;

    #[test]
    fn the_path_is_the_uri_path_without_its_query() {
        for (given, path) in [
            (Some("/api/products/1?fields=all"), "/api/products/1"),
            (Some("/api/products/1"), "/api/products/1"),
            (Some("/?"), "/"),
            (Some("?a=1"), "/"),
            (Some(""), "/"),
            (None, "/"),
        ] {
            assert_eq!(path_of(given.map(str::to_owned)), path, "{given:?}");
            if let Some(given) = given.filter(|g| g.starts_with('/')) {
                let uri: wstd::http::Uri = given.parse().unwrap();
                assert_eq!(uri.path(), path, "{given}");
            }
        }
    }
}
