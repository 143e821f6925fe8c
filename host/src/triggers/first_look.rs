//! What an HTTP component exports, pre-linked: wasi:http's handler, and `agora:platform/
//! first-look` when the component has one (`wit/first-look.wit`).
//!
//! Invariants:
//! - The first look sees only requests without a body, and only ones wasi:http would take
//!   (they name an authority): a request it does not answer goes to wasi:http's `handle` on
//!   the same instance, as if the first look had not been there.
//! - An answer is held to what wasi:http holds a component's response to: a status of
//!   100–999, header names and values `fields` accepts, none of the headers a component may
//!   not set, and a `content-length`, if given, that is the body's. Otherwise the request
//!   fails with the 500 a bad response in wasi:http gets.
//! - A cached answer is read from the component's own cache, as its `cache.get` would read it
//!   (namespace, key checks, span, meter, counts), after the call: a hit is answered as above
//!   with the value as the body; a miss, or a cache that is unavailable, passes the request on
//!   to wasi:http on the same instance; a key `get` refuses, or no cache grant, is a 500.

use crate::state::{InstanceState, forbidden_header};
use bytes::Bytes;
use http::{HeaderName, HeaderValue, Request, Response, StatusCode};
use http_body_util::BodyExt as _;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use wasmtime::Store;
use wasmtime::component::types::ComponentItem;
use wasmtime::component::{ComponentExportIndex, Func, InstancePre, Resource, TypedFunc};
use wasmtime_wasi_http::p2::bindings::http::types::{ErrorCode, IncomingRequest, ResponseOutparam};
use wasmtime_wasi_http::p2::body::HyperOutgoingBody;

/// Generated bindings of `agora:platform/http-first-look`.
#[allow(missing_docs)]
pub mod bindings {
    wasmtime::component::bindgen!({
        path: "../wit",
        world: "agora:platform/http-first-look",
        exports: { default: async },
    });
}

use agora_cache::bindings::agora::platform::cache::Error as CacheError;
use agora_capability::StoreData as _;
use bindings::exports::agora::platform::first_look::{Answer, CachedAnswer, Reply};
use wasmtime::component::{ComponentType, Lower};

/// The interface of wasi:http's handler, as wasmtime-wasi-http's bindings name it (an export of
/// a compatible 0.2 version answers to it).
const HANDLER_INTERFACE: &str = "wasi:http/incoming-handler@0.2.12";
/// The first look's interface (`wit/first-look.wit`).
const FIRST_LOOK_INTERFACE: &str = "agora:platform/first-look@0.1.0";

/// `request-head` lowered from the request's own parts: the guest gets the same record as
/// bindgen's owned `RequestHead` would give it, without the host copying the method, the path
/// and every header into strings and vectors of its own first.
#[derive(ComponentType, Lower)]
#[component(record)]
pub struct HeadRef<'a> {
    method: &'a str,
    #[component(name = "path-with-query")]
    path_with_query: &'a str,
    headers: Vec<(&'a str, &'a [u8])>,
}

/// What the first look sees of a request (its head, `request`): the method, the path and
/// query, and every header.
pub fn head_of(request: &http::request::Parts) -> HeadRef<'_> {
    HeadRef {
        method: request.method.as_str(),
        path_with_query: request
            .uri
            .path_and_query()
            .map_or("/", |path| path.as_str()),
        headers: request
            .headers
            .iter()
            .map(|(name, value)| (name.as_str(), value.as_bytes()))
            .collect(),
    }
}

/// A component's HTTP exports, pre-linked: instantiating it gives [`HttpExports`]. Cloning it
/// is one reference count (a request takes a clone).
#[derive(Clone)]
pub struct HttpPre(Arc<Linked>);

struct Linked {
    pre: InstancePre<InstanceState>,
    /// wasi:http's `handle`.
    handle: ComponentExportIndex,
    /// `agora:platform/first-look`'s `look`, when exported.
    look: Option<ComponentExportIndex>,
    /// Whether an instance's exports were checked against [`HandleParams`] (and `look`'s
    /// against [`LookParams`] and [`LookResults`]): they are the component's, the same for
    /// every instance of `pre`, so the first instance is checked and the others are not.
    checked: AtomicBool,
}

/// What `handle` is called with.
type HandleParams = (Resource<IncomingRequest>, Resource<ResponseOutparam>);

impl HttpPre {
    /// The exports of `pre`: an error when it does not export wasi:http's handler; the first
    /// look when it exports one.
    pub fn new(pre: InstancePre<InstanceState>) -> wasmtime::Result<HttpPre> {
        // Looked up as the generated bindings look them up: an export of a semver-compatible
        // version of the interface answers to its name.
        let component = pre.component();
        let func = |interface: &str, name: &str| {
            let instance = component.get_export_index(None, interface)?;
            match component.get_export(Some(&instance), name)? {
                (ComponentItem::ComponentFunc(_), index) => Some(index),
                _ => None,
            }
        };
        let handle = func(HANDLER_INTERFACE, "handle").ok_or_else(|| {
            wasmtime::format_err!("no `handle` function in `{HANDLER_INTERFACE}`")
        })?;
        let look = func(FIRST_LOOK_INTERFACE, "look");
        Ok(HttpPre(Arc::new(Linked {
            pre,
            handle,
            look,
            checked: AtomicBool::new(false),
        })))
    }

    /// Whether the component answers at a first look.
    pub fn has_first_look(&self) -> bool {
        self.0.look.is_some()
    }

    /// A new instance in `store`, and its exports.
    pub async fn instantiate(
        &self,
        store: &mut Store<InstanceState>,
    ) -> wasmtime::Result<HttpExports> {
        let linked = &*self.0;
        let instance = linked.pre.instantiate_async(&mut *store).await?;
        let missing = |name: &str| wasmtime::format_err!("the instance exports no `{name}`");
        let handle = instance
            .get_func(&mut *store, linked.handle)
            .ok_or_else(|| missing("handle"))?;
        let look = match linked.look {
            Some(index) => Some(
                instance
                    .get_func(&mut *store, index)
                    .ok_or_else(|| missing("look"))?,
            ),
            None => None,
        };
        if !linked.checked.load(Ordering::Acquire) {
            // The type checks the calls rely on, made once for the loaded version's life: as
            // part of each fresh instance's work they cost ≈ 1.4% of a fresh cached read's CPU
            // (BENCHMARKS.md).
            handle.typed::<HandleParams, ()>(&*store)?;
            if let Some(look) = look {
                look.typed::<LookParams<'_>, LookResults>(&*store)?;
            }
            linked.checked.store(true, Ordering::Release);
        }
        Ok(HttpExports { handle, look })
    }
}

/// The HTTP exports of one instance, type-checked (as [`HttpPre::instantiate`] says).
pub struct HttpExports {
    /// wasi:http's `handle`, taking [`HandleParams`].
    handle: Func,
    /// `agora:platform/first-look`'s `look`, when exported, taking [`LookParams`] and
    /// returning [`LookResults`].
    look: Option<Func>,
}

/// What `look` is called with: the request's head, borrowed from the request.
type LookParams<'a> = (HeadRef<'a>,);
/// What `look` returns.
type LookResults = (Option<Reply>,);

impl HttpExports {
    /// Asks the first look about the head of a request [`lookable`] says it may see:
    /// `Ok(None)` passes the request on to wasi:http.
    pub async fn look(
        &self,
        store: &mut Store<InstanceState>,
        request: &http::request::Parts,
    ) -> wasmtime::Result<Option<Reply>> {
        let Some(look) = self.look else {
            return Ok(None);
        };
        let head = head_of(request);
        // A typed function's parameters carry the head's borrow, so it cannot be kept from one
        // request to the next; checking the export's type again on every call cost 1.6% of a
        // reused cached read's CPU (BENCHMARKS.md).
        // SAFETY: `instantiate` checked `look` (this instance's or, the same export of the same
        // component, another's) against `LookParams<'_>` and `LookResults`; a component type
        // check does not depend on lifetimes, so it holds for this borrow too.
        let look = unsafe { TypedFunc::<LookParams<'_>, LookResults>::new_unchecked(look) };
        let (reply,) = look.call_async(&mut *store, (head,)).await?;
        Ok(reply)
    }

    /// Calls wasi:http's `handle` with the request and where its response goes.
    pub async fn handle(
        &self,
        store: &mut Store<InstanceState>,
        request: Resource<IncomingRequest>,
        outparam: Resource<ResponseOutparam>,
    ) -> wasmtime::Result<()> {
        // SAFETY: `instantiate` checked `handle` (this instance's or, the same export of the
        // same component, another's) against `HandleParams` and `()`.
        let handle = unsafe { TypedFunc::<HandleParams, ()>::new_unchecked(self.handle) };
        handle.call_async(&mut *store, (request, outparam)).await
    }
}

/// Whether the first look may see `request`: no body, and an authority (in the URI or a
/// `host` header) wasi:http would take.
pub fn lookable<B: hyper::body::Body>(request: &Request<B>) -> bool {
    request.body().is_end_stream()
        && (request.uri().authority().is_some()
            || request
                .headers()
                .get(http::header::HOST)
                .is_some_and(|host| host.to_str().is_ok()))
}

/// A first look's cached answer read from the component's cache: `None` when there is no value
/// (or the cache is unavailable) and the request goes on to wasi:http; otherwise the response
/// (or the error) as for an `answer` whose body is the value.
pub async fn from_cache(
    store: &mut Store<InstanceState>,
    cached: CachedAnswer,
) -> Option<Result<Response<HyperOutgoingBody>, ErrorCode>> {
    let cache = store.data_mut().slots().get_mut::<agora_cache::CacheCtx>();
    let found = cache.lookup(&cached.key).await;
    cached_response(cached, found)
}

/// [`from_cache`]'s answer once the cache has answered `found`.
fn cached_response(
    cached: CachedAnswer,
    found: Result<Option<Vec<u8>>, CacheError>,
) -> Option<Result<Response<HyperOutgoingBody>, ErrorCode>> {
    let refused = |why: String| {
        Some(Err(ErrorCode::InternalError(Some(format!(
            "the first look's cached answer: {why}"
        )))))
    };
    match found {
        Ok(Some(body)) => Some(response_of(Answer {
            status: cached.status,
            headers: cached.headers,
            body,
        })),
        // Logged by the cache; the handler reads (or reports) it itself.
        Ok(None) | Err(CacheError::Unavailable(_) | CacheError::NotANumber) => None,
        Err(CacheError::Denied) => refused(
            "the component has no cache grant (add `cache = true` to its `grants`)".to_owned(),
        ),
        Err(CacheError::Invalid(why)) => refused(why),
    }
}

/// The response for a first look's `answer`, or the error wasi:http gives a bad response.
pub fn response_of(answer: Answer) -> Result<Response<HyperOutgoingBody>, ErrorCode> {
    let bad = |what: String| ErrorCode::InternalError(Some(what));
    let status = StatusCode::from_u16(answer.status)
        .map_err(|_| bad(format!("status {} is not 100–999", answer.status)))?;
    let length = answer.body.len() as u64;
    let mut response = Response::new(
        http_body_util::Full::new(Bytes::from(answer.body))
            .map_err(|never| match never {})
            .boxed_unsync(),
    );
    *response.status_mut() = status;
    let headers = response.headers_mut();
    headers.reserve(answer.headers.len());
    for (name, value) in answer.headers {
        let name = HeaderName::from_bytes(name.as_bytes())
            .map_err(|_| bad(format!("header name {name:?} is not valid")))?;
        if forbidden_header(&name) {
            return Err(bad(format!("header {name} may not be set by a component")));
        }
        // The lifted vector becomes the value as it is: checked, not copied.
        let value = HeaderValue::from_maybe_shared(Bytes::from(value))
            .map_err(|_| bad(format!("the value of header {name} is not valid")))?;
        if name == http::header::CONTENT_LENGTH
            && value.to_str().ok().and_then(|v| v.parse::<u64>().ok()) != Some(length)
        {
            return Err(bad(format!(
                "content-length {value:?} is not the body's {length} bytes"
            )));
        }
        headers.append(name, value);
    }
    Ok(response)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    fn answer(status: u16, headers: &[(&str, &str)], body: &str) -> Answer {
        Answer {
            status,
            headers: headers
                .iter()
                .map(|(n, v)| ((*n).to_owned(), v.as_bytes().to_vec()))
                .collect(),
            body: body.as_bytes().to_vec(),
        }
    }

    #[tokio::test]
    async fn an_answer_becomes_the_response_it_describes() {
        let response = response_of(answer(
            201,
            &[
                ("content-type", "application/json"),
                ("x-cache", "hit"),
                ("x-cache", "again"),
            ],
            "{}",
        ))
        .unwrap();
        assert_eq!(response.status(), StatusCode::CREATED);
        assert_eq!(response.headers()["content-type"], "application/json");
        let caches: Vec<_> = response.headers().get_all("x-cache").iter().collect();
        assert_eq!(caches, ["hit", "again"]);
        let body = response.into_body().collect().await.unwrap().to_bytes();
        assert_eq!(&body[..], b"{}");
    }

    #[test]
    fn a_response_wasi_http_would_refuse_is_an_error() {
        for (bad, why) in [
            (answer(99, &[], ""), "status"),
            (answer(1000, &[], ""), "status"),
            (answer(200, &[("bad name", "x")], ""), "name"),
            (answer(200, &[("x-a", "line\nbreak")], ""), "value"),
            (answer(200, &[("connection", "close")], ""), "forbidden"),
            (
                answer(200, &[("transfer-encoding", "chunked")], ""),
                "forbidden",
            ),
            (answer(200, &[("content-length", "3")], "four"), "length"),
            (answer(200, &[("content-length", "x")], "four"), "length"),
        ] {
            let Err(ErrorCode::InternalError(Some(message))) = response_of(bad) else {
                panic!("{why}: accepted");
            };
            assert!(!message.is_empty(), "{why}");
        }
        assert!(response_of(answer(200, &[("content-length", "4")], "four")).is_ok());
    }

    #[tokio::test]
    async fn a_cached_answer_is_the_value_a_miss_passes_and_a_refused_key_fails() {
        let cached = || CachedAnswer {
            key: "k".into(),
            status: 200,
            headers: vec![("content-type".into(), b"application/json".to_vec())],
        };
        let hit = cached_response(cached(), Ok(Some(b"{}".to_vec())))
            .unwrap()
            .unwrap();
        assert_eq!(hit.status(), StatusCode::OK);
        assert_eq!(hit.headers()["content-type"], "application/json");
        let body = hit.into_body().collect().await.unwrap().to_bytes();
        assert_eq!(&body[..], b"{}");

        assert!(cached_response(cached(), Ok(None)).is_none());
        let down = CacheError::Unavailable("redis: connection refused".into());
        assert!(cached_response(cached(), Err(down)).is_none());

        for (refused, named) in [
            (CacheError::Denied, "cache = true"),
            (
                CacheError::Invalid("the key is empty".into()),
                "the key is empty",
            ),
        ] {
            let Some(Err(ErrorCode::InternalError(Some(message)))) =
                cached_response(cached(), Err(refused))
            else {
                panic!("{named}: not refused");
            };
            assert!(message.contains(named), "{message}");
        }
        // The value is held to what an answer is held to.
        let mut lying = cached();
        lying.headers.push(("content-length".into(), b"9".to_vec()));
        assert!(matches!(
            cached_response(lying, Ok(Some(b"{}".to_vec()))),
            Some(Err(ErrorCode::InternalError(_)))
        ));
    }

    #[test]
    fn only_a_request_without_a_body_and_with_an_authority_is_looked_at() {
        let get = Request::get("http://shop.example/api/products/1?x=1")
            .header("x-agora-request-id", "r1")
            .body(http_body_util::Empty::<Bytes>::new())
            .unwrap();
        assert!(lookable(&get));
        let (get, _) = get.into_parts();
        let head = head_of(&get);
        assert_eq!(head.method, "GET");
        assert_eq!(head.path_with_query, "/api/products/1?x=1");
        assert_eq!(head.headers, [("x-agora-request-id", &b"r1"[..])]);

        let host_only = Request::get("/")
            .header("host", "shop.example")
            .body(http_body_util::Empty::<Bytes>::new())
            .unwrap();
        assert!(lookable(&host_only));
        assert_eq!(head_of(&host_only.into_parts().0).path_with_query, "/");

        let no_authority = Request::get("/")
            .body(http_body_util::Empty::<Bytes>::new())
            .unwrap();
        assert!(!lookable(&no_authority));

        let with_body = Request::post("http://shop.example/")
            .body(http_body_util::Full::new(Bytes::from_static(b"x")))
            .unwrap();
        assert!(!lookable(&with_body));
    }
}
