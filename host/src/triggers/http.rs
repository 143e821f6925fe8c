//! The HTTP trigger: one request in, one instance of the routed component, one response out.
//!
//! Invariants:
//! - By default a request never touches an instance another request used: the store is created
//!   for it and dropped when its guest task ends. A component that opts into reuse
//!   (`[component.instances] reuse = N`) has its instance serve up to N of its own requests,
//!   one at a time; a request that traps, runs past its deadline or is refused memory drops
//!   its instance ([`crate::instances`]).
//! - Whatever the guest does — trap, loop, exhaust memory, read too much — only its own request
//!   fails, with a JSON error carrying the request id; the answer's status tells which limit was
//!   hit (413 body, 408 body too slow, 503 concurrency, 504 deadline, 500 trap).
//! - A component that exports a first look ([`first_look`]) is asked about a request without a
//!   body before wasi:http: an answer goes out whole and no wasi:http resource is made; a pass
//!   makes them from the kept request and calls `handle` on the same instance.
//! - The guest runs on the request's task until it has answered; what it still does after that
//!   (streaming the body after the response head has gone out) runs in a task of its own
//!   ([`GuestTask`]); the concurrency permit and the deadline cover the whole run.

use crate::calls::{Caller, InternalHandler};
use crate::component::LoadedComponent;
use crate::edge::Edge;
use crate::metrics::RouteSeries;
use crate::response::{REQUEST_ID_HEADER, ResponseBody, error_response};
use crate::router::Router;
use crate::swap::Slot;
use crate::triggers::first_look::bindings::exports::agora::platform::first_look::Reply;
use crate::triggers::first_look::{self, HttpExports};
use bytes::Bytes;
use futures::FutureExt as _;
use futures::future::{self, Either};
use http::{HeaderName, HeaderValue, Request, Response, StatusCode};
use hyper::body::{Body, Frame, SizeHint};
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::task::{Context, Poll, ready};
use std::time::{Duration, Instant};
use tracing::Instrument as _;
use wasmtime::component::Resource;
use wasmtime_wasi_http::p2::bindings::http::types::Scheme;
use wasmtime_wasi_http::p2::body::HyperOutgoingBody;
use wasmtime_wasi_http::p2::types::{HostIncomingRequest, HostResponseOutparam};
use wasmtime_wasi_http::{WasiBody, WasiHttpView as _};

/// How deep in-process calls may nest (a component calling a component calling …) before the
/// host answers 508 instead of recursing.
pub const MAX_CALL_DEPTH: u32 = 8;

/// Default lowest rate at which a client's request body must arrive.
pub const DEFAULT_BODY_MIN_RATE: u64 = 1024;
/// Default time a client's body may take before [`DEFAULT_BODY_MIN_RATE`] applies.
pub const DEFAULT_BODY_GRACE: Duration = Duration::from_secs(5);

/// The lowest rate at which a client's request body must arrive: the host waits on the client
/// for at most `grace` plus one second per `min_bytes_per_s` bytes received so far, then cuts
/// the body, answers 408 and frees the instance. Only time spent waiting on the client counts,
/// not time the component took before reading on. In-process calls are not bounded by it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BodyRate {
    /// Bytes per second, averaged over the body so far (0: no lower bound).
    pub min_bytes_per_s: u64,
    /// Waiting allowed before the rate applies.
    pub grace: Duration,
}

impl Default for BodyRate {
    fn default() -> Self {
        BodyRate {
            min_bytes_per_s: DEFAULT_BODY_MIN_RATE,
            grace: DEFAULT_BODY_GRACE,
        }
    }
}

impl BodyRate {
    /// How long the host may have waited on the client once `received` bytes arrived.
    fn allowance(&self, received: u64) -> Duration {
        let per_byte = Duration::from_secs(1)
            .checked_div(u32::try_from(self.min_bytes_per_s).unwrap_or(u32::MAX))
            .unwrap_or(Duration::MAX);
        let earned = per_byte.saturating_mul(u32::try_from(received).unwrap_or(u32::MAX));
        self.grace.saturating_add(earned)
    }
}

/// What a route points at: the component's slot, and the series its requests count into.
struct Routed {
    slot: Arc<Slot>,
    series: RouteSeries,
}

/// Routes requests to components and runs them.
pub struct HttpTrigger {
    router: Router<Routed>,
    ids: RequestIds,
    edge: Edge,
    body_rate: BodyRate,
}

impl HttpTrigger {
    /// A trigger serving `router`, checking requests at `edge`, with the default
    /// [`BodyRate`] for clients' bodies.
    pub fn new(router: Router<Arc<Slot>>, edge: Edge) -> HttpTrigger {
        HttpTrigger {
            router: router.map(|pattern, slot| Routed {
                series: RouteSeries::new(slot.name(), pattern),
                slot,
            }),
            ids: RequestIds::new(),
            edge,
            body_rate: BodyRate::default(),
        }
    }

    /// The same trigger bounding clients' bodies by `rate`.
    pub fn with_body_rate(mut self, rate: BodyRate) -> HttpTrigger {
        self.body_rate = rate;
        self
    }

    /// The edge checks of this trigger.
    pub fn edge(&self) -> &Edge {
        &self.edge
    }

    /// Answers one request from a client. Never fails: every problem becomes an error
    /// response. Every answer carries the request id in [`REQUEST_ID_HEADER`].
    ///
    /// A request whose body the host refused before any component read it (no route, an edge
    /// refusal, a declared length over the limit, …) gets `Connection: close`: the connection
    /// cannot be reused with that body unread, and a client told so does not send its next
    /// request on it.
    pub fn handle(
        &self,
        request: Request<WasiBody>,
        caller: Caller,
    ) -> impl Future<Output = Response<ResponseBody>> + Send + '_ {
        let has_body = !request.body().is_end_stream();
        self.handle_for(request, caller, None)
            .map(move |mut response| {
                if has_body && response.extensions().get::<FromGuest>().is_none() {
                    response
                        .headers_mut()
                        .insert(http::header::CONNECTION, HeaderValue::from_static("close"));
                }
                response
            })
    }

    /// Answers an in-process call to component `target` (`http://TARGET.agora.internal/…`):
    /// like [`HttpTrigger::handle`], except that the path must be one of `target`'s routes.
    pub fn handle_internal<'a>(
        &'a self,
        request: Request<WasiBody>,
        caller: Caller,
        target: &str,
    ) -> impl Future<Output = Response<ResponseBody>> + Send + use<'a> {
        self.handle_for(request, caller, Some(target))
    }

    // The layers from here to the guest's run are plain functions returning futures, joined
    // by combinators: an `async fn` keeps its arguments beside the future it awaits, so each
    // layer wrapping the next by `.await` held the request once more, and hyper moves the
    // whole of it into its dispatcher for every request (6 984 bytes before, BENCHMARKS.md).
    fn handle_for<'a>(
        &'a self,
        request: Request<WasiBody>,
        caller: Caller,
        target: Option<&str>,
    ) -> impl Future<Output = Response<ResponseBody>> + Send + use<'a> {
        let request_id = self.ids.next();
        let header = HeaderValue::from_str(&request_id).ok();
        self.route(request, caller, target, request_id)
            .map(move |mut response| {
                if let Some(value) = header {
                    response
                        .headers_mut()
                        .insert(HeaderName::from_static(REQUEST_ID_HEADER), value);
                }
                response
            })
    }

    /// Finds the component for `request`, runs the edge checks and the component inside the
    /// request's span.
    fn route<'a>(
        &'a self,
        request: Request<WasiBody>,
        caller: Caller,
        target: Option<&str>,
        request_id: Arc<str>,
    ) -> impl Future<Output = Response<ResponseBody>> + Send + use<'a> {
        let started = Instant::now();
        let path = request.uri().path();
        let route = self
            .router
            .lookup(path)
            .filter(|route| target.is_none_or(|target| **route.target.slot.name() == *target));
        let Some(route) = route else {
            tracing::debug!(%request_id, %path, target, "no route");
            crate::metrics::metrics()
                .http_requests
                .with([
                    "",
                    "",
                    crate::metrics::method_label(request.method()),
                    "4xx",
                ])
                .inc();
            let message = match target {
                Some(target) => format!("component `{target}` serves no route {path}"),
                None => format!("no component serves {path}"),
            };
            return Either::Left(future::ready(error_response(
                StatusCode::NOT_FOUND,
                "not_found",
                &message,
                &request_id,
            )));
        };
        let depth = match &caller {
            Caller::Internal { depth, .. } => *depth,
            Caller::External { .. } => 0,
        };
        if depth > MAX_CALL_DEPTH {
            tracing::warn!(%request_id, %path, depth, "in-process calls nested too deep");
            return Either::Left(future::ready(error_response(
                StatusCode::LOOP_DETECTED,
                "call_depth_exceeded",
                &format!("in-process calls nested more than {MAX_CALL_DEPTH} deep"),
                &request_id,
            )));
        }
        // The version serving now answers this request to its end, whatever swaps meanwhile.
        let component = route.target.slot.current();
        let method = crate::metrics::MethodLabel::of(request.method());
        // Each field is a log field and an exported attribute, so none is written twice: the
        // route, method and path under their OpenTelemetry names, the status recorded once, and
        // the duration left to the span's own timing (the access log line carries it).
        let span = tracing::info_span!(
            "request",
            request_id = %request_id,
            component = %component.name,
            digest = %&component.digest[..12],
            "http.route" = %route.pattern,
            "http.request.method" = method.as_str(),
            "url.path" = %path,
            caller = tracing::field::Empty,
            parent_request_id = tracing::field::Empty,
            subject = tracing::field::Empty,
            trace_id = tracing::field::Empty,
            span_id = tracing::field::Empty,
            "otel.name" = %format_args!("{} {}", method.as_str(), route.pattern),
            "otel.kind" = "server",
            "http.response.status_code" = tracing::field::Empty,
            // The steps inside the request, as attributes rather than child spans (one span
            // per request keeps tracing's cost in budget): `refused` when the edge answered
            // (absent: admitted), and how long instantiating the guest took; the guest's own
            // time is the rest of the span.
            "agora.edge" = tracing::field::Empty,
            "agora.instantiation_us" = tracing::field::Empty,
            // With reuse on, which request of its instance this is (absent: a fresh instance).
            "agora.instance_request" = tracing::field::Empty,
            // `answered`, `cached` or `passed` when the component's first look saw the request
            // (absent: no first look, or a request with a body).
            "agora.first_look" = tracing::field::Empty,
        );
        crate::telemetry::continue_from(
            &span,
            request
                .headers()
                .iter()
                .filter_map(|(name, value)| Some((name.as_str(), value.to_str().ok()?))),
        );
        let (mut parts, body) = request.into_parts();
        let series = &route.target.series;
        let answer = async move {
            let request_id = &request_id;
            let response = match self
                .edge
                .admit(&component, &mut parts, &caller, request_id)
                .await
            {
                Err(refusal) => {
                    tracing::Span::current().record("agora.edge", "refused");
                    refusal
                }
                Ok(admitted) => {
                    let span = tracing::Span::current();
                    if let Caller::Internal {
                        component,
                        parent_request_id,
                        ..
                    } = &caller
                    {
                        span.record("caller", &**component);
                        if let Some(parent) = parent_request_id {
                            span.record("parent_request_id", &**parent);
                        }
                    }
                    if let Some(identity) = &admitted.identity {
                        span.record("subject", identity.subject.as_str());
                    }
                    let context = crate::calls::CallContext {
                        client_ip: admitted.client_ip,
                        depth,
                        request_id: Some(request_id.clone()),
                    };
                    let body_rate = match caller {
                        Caller::External { .. } if self.body_rate.min_bytes_per_s > 0 => {
                            Some(self.body_rate)
                        }
                        _ => None,
                    };
                    invoke(
                        &component,
                        Request::from_parts(parts, body),
                        context,
                        body_rate,
                        request_id,
                    )
                    .await
                }
            };
            let status = response.status().as_u16();
            let elapsed = started.elapsed();
            series.record(method, status, elapsed);
            let duration_ms = elapsed.as_secs_f64() * 1000.0;
            tracing::Span::current().record("http.response.status_code", status);
            tracing::info!(status, duration_ms, "request served");
            response
        };
        Either::Right(answer.instrument(span))
    }
}

impl InternalHandler for HttpTrigger {
    fn handle_internal(
        &self,
        request: Request<WasiBody>,
        caller: Caller,
        target: String,
    ) -> std::pin::Pin<Box<dyn std::future::Future<Output = Response<ResponseBody>> + Send + '_>>
    {
        Box::pin(HttpTrigger::handle_internal(self, request, caller, &target))
    }
}

/// How a request reaches its guest: as wasi:http's resources made before the run, or, for a
/// first look, as the request itself (the look borrows its head) and the answer's sender,
/// kept for wasi:http's handler in case the look passes. One per request, moved once into the
/// guest's run: its size costs nothing a box would not cost more.
#[allow(clippy::large_enum_variant)]
enum Handed<B> {
    Now {
        request: Resource<HostIncomingRequest>,
        outparam: Resource<HostResponseOutparam>,
    },
    AfterLook {
        request: Request<B>,
        sender: tokio::sync::oneshot::Sender<
            Result<
                Response<HyperOutgoingBody>,
                wasmtime_wasi_http::p2::bindings::http::types::ErrorCode,
            >,
        >,
    },
}

/// Marks a response the component itself gave (it had the request body to read).
#[derive(Debug, Clone, Copy)]
struct FromGuest;

/// What ended a guest task, as far as the host can tell.
struct TaskEnd {
    result: wasmtime::Result<()>,
    deadline_hit: bool,
    memory_denied: bool,
}

/// A request handed to its guest: the run that answers it (driven by [`invoke`]), where the
/// answer arrives, and what the request's body did meanwhile.
struct Started {
    guest: GuestTask,
    receiver: tokio::sync::oneshot::Receiver<
        Result<
            Response<HyperOutgoingBody>,
            wasmtime_wasi_http::p2::bindings::http::types::ErrorCode,
        >,
    >,
    body_flags: Arc<BodyFlags>,
    has_body: bool,
}

fn invoke<'a>(
    component: &'a LoadedComponent,
    request: Request<WasiBody>,
    context: crate::calls::CallContext,
    body_rate: Option<BodyRate>,
    request_id: &'a str,
) -> impl Future<Output = Response<ResponseBody>> + Send + use<'a> {
    // Everything before the first wait is done in `start`, a plain function: what it builds
    // (the guest's run, kilobytes) lives on its stack and then in the run's box, not in the
    // request's future, which the layers above it and hyper's dispatcher move by value.
    match start(component, request, context, body_rate, request_id) {
        Ok(started) => Either::Right(answer(component, started, request_id)),
        Err(refused) => Either::Left(future::ready(refused)),
    }
}

/// Waits for the answer of a request [`start`] handed to its guest.
async fn answer(
    component: &LoadedComponent,
    started: Started,
    request_id: &str,
) -> Response<ResponseBody> {
    let Started {
        mut guest,
        receiver,
        body_flags,
        has_body,
    } = started;
    let limits = component.limits;
    let outcome = guest.answer(receiver).await;
    if body_flags.exceeded.load(Ordering::Relaxed) {
        return body_too_large(limits.body_bytes, request_id);
    }
    if body_flags.slow.load(Ordering::Relaxed) {
        tracing::warn!("request body arrived too slowly; cut");
        let mut response = error_response(
            StatusCode::REQUEST_TIMEOUT,
            "body_too_slow",
            "the request body arrived too slowly",
            request_id,
        );
        response
            .headers_mut()
            .insert(http::header::CONNECTION, HeaderValue::from_static("close"));
        return response;
    }
    match outcome {
        Ok(Ok(mut response)) => {
            // Returning drops `guest`, which spawns what its run still has to do.
            if has_body {
                // Only [`HttpTrigger::handle`]'s check of a request with a body reads it (an
                // extension costs a map's allocation per response).
                response.extensions_mut().insert(FromGuest);
            }
            response
        }
        Ok(Err(code)) => {
            tracing::warn!(error = ?code, "component answered with an error");
            error_response(
                StatusCode::INTERNAL_SERVER_ERROR,
                "component_error",
                &format!("component `{}` failed: {code:?}", component.name),
                request_id,
            )
        }
        Err(_) => {
            let end = guest.end().await;
            failure_response(component, end, request_id)
        }
    }
}

/// Hands `request` to its guest: checks the declared length and the concurrency permit,
/// readies an instance and the guest's run. `Err` is the answer when it cannot start.
// The refusal is a response answered at once, not an error passed up through layers.
#[allow(clippy::result_large_err)]
fn start(
    component: &LoadedComponent,
    request: Request<WasiBody>,
    context: crate::calls::CallContext,
    body_rate: Option<BodyRate>,
    request_id: &str,
) -> Result<Started, Response<ResponseBody>> {
    let limits = component.limits;
    let has_body = !request.body().is_end_stream();
    let declared_length = request
        .headers()
        .get(http::header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    if declared_length.is_some_and(|len| len > limits.body_bytes) {
        return Err(body_too_large(limits.body_bytes, request_id));
    }
    let Ok(permit) = component.permits.clone().try_acquire_owned() else {
        component.series.refusals.inc();
        tracing::warn!(
            concurrency = limits.concurrency,
            "concurrency limit reached; refusing"
        );
        return Err(overloaded(
            &format!(
                "component `{}` is already running {} instances, its limit; retry shortly",
                component.name, limits.concurrency
            ),
            request_id,
        ));
    };

    let deadline = Instant::now() + Duration::from_millis(limits.deadline_ms);
    let body_flags = Arc::new(BodyFlags::default());
    let request = request.map(|body| {
        // A body already at its end (a GET) cannot make the host wait: no pace to keep.
        let pace = body_rate
            .filter(|_| !body.is_end_stream())
            .map(|rate| Pace::new(rate, body_flags.clone()));
        LimitedBody {
            inner: body,
            remaining: limits.body_bytes,
            limit: limits.body_bytes,
            flags: body_flags.clone(),
            pace,
        }
    });

    let Some(proxy) = component.proxy.clone() else {
        // The manifest check at load makes this unreachable: only components exporting
        // wasi:http get routes.
        return Err(error_response(
            StatusCode::NOT_FOUND,
            "not_found",
            &format!("component `{}` serves no HTTP", component.name),
            request_id,
        ));
    };

    // A reused instance (`[component.instances] reuse = N`) when one is idle, else a fresh one.
    let (mut store, reused) = component
        .instances
        .checkout::<HttpExports>(&component.store_spec(), deadline);
    store.data_mut().set_call_context(context);

    let (sender, receiver) = tokio::sync::oneshot::channel();
    // A request the component's first look may answer reaches wasi:http only if it does not:
    // its resources are made after the look, so an answered request leaves none behind.
    let handed = if proxy.has_first_look() && first_look::lookable(&request) {
        Handed::AfterLook { request, sender }
    } else {
        let resources = store
            .data_mut()
            .http()
            .new_incoming_request(Scheme::Http, request)
            .and_then(|req| Ok((req, store.data_mut().http().new_response_outparam(sender)?)));
        match resources {
            Ok((request, outparam)) => Handed::Now { request, outparam },
            Err(err) => {
                return Err(error_response(
                    StatusCode::BAD_REQUEST,
                    "bad_request",
                    &format!("the request cannot be passed to the component: {err}"),
                    request_id,
                ));
            }
        }
    };

    let instantiation = component.series.instantiation.clone();
    let instances = component.instances.clone();
    let guest = GuestTask::new(
        async move {
            let _permit = permit;
            let run = async {
                let (instance, served) = match reused {
                    Some((instance, served)) => {
                        tracing::Span::current().record("agora.instance_request", served + 1);
                        (instance, served)
                    }
                    None => {
                        let instantiating = Instant::now();
                        // Boxed: a reused instance's run (most requests, where reuse is on)
                        // does not carry instantiation's kilobyte-sized future.
                        let instance = Box::pin(proxy.instantiate(&mut store)).await?;
                        let took = instantiating.elapsed();
                        instantiation.observe(took);
                        tracing::Span::current().record(
                            "agora.instantiation_us",
                            u64::try_from(took.as_micros()).unwrap_or(u64::MAX),
                        );
                        (instance, 0)
                    }
                };
                let (guest_request, outparam) = match handed {
                    Handed::Now { request, outparam } => (request, outparam),
                    Handed::AfterLook { request, sender } => {
                        let (head, body) = request.into_parts();
                        let reply = instance.look(&mut store, &head).await?;
                        let answered = match reply {
                            Some(Reply::Answer(answer)) => {
                                Some(("answered", first_look::response_of(answer)))
                            }
                            Some(Reply::Cached(cached)) => {
                                first_look::from_cache(&mut store, cached)
                                    .await
                                    .map(|response| ("cached", response))
                            }
                            None => None,
                        };
                        let span = tracing::Span::current();
                        if let Some((how, response)) = answered {
                            span.record("agora.first_look", how);
                            let _ = sender.send(response);
                            return Ok((instance, served + 1));
                        }
                        span.record("agora.first_look", "passed");
                        let request = Request::from_parts(head, body);
                        let request = store
                            .data_mut()
                            .http()
                            .new_incoming_request(Scheme::Http, request)?;
                        let outparam = store.data_mut().http().new_response_outparam(sender)?;
                        (request, outparam)
                    }
                };
                instance.handle(&mut store, guest_request, outparam).await?;
                Ok((instance, served + 1))
            };
            // Epoch interruption stops a guest that computes past its deadline; this timeout
            // stops one that waits past it (on a timer or a slow body).
            let (result, timed_out) = match tokio::time::timeout_at(deadline.into(), run).await {
                Ok(result) => (result, false),
                Err(_) => (
                    Err(wasmtime::Error::msg("deadline elapsed while waiting")),
                    true,
                ),
            };
            let state = store.data();
            let deadline_hit = timed_out || state.deadline_hit;
            let memory_denied = state.limits.memory_denied;
            // A call that returned may leave its instance for the next request; a trap never.
            let result =
                result.map(|(instance, served)| instances.check_in(store, instance, served));
            TaskEnd {
                result,
                deadline_hit,
                memory_denied,
            }
        }
        .in_current_span(),
    );
    Ok(Started {
        guest,
        receiver,
        body_flags,
        has_body,
    })
}

/// The guest's run for one request (instantiate or take an instance, `handle`, give it back),
/// driven on the request's own task until it has answered and either ended or has to wait
/// (on a body the client reads, a timer, …); only then is the rest spawned as a task of its
/// own. A small answer thus costs no task and no wake-up across threads. Once started, the run
/// always goes to its end: if the request's future is dropped first (the client went away),
/// the rest is spawned. A panic in it ends only this request, as in a spawned task.
struct GuestTask {
    run: Option<Pin<Box<dyn std::future::Future<Output = TaskEnd> + Send>>>,
    ended: Option<TaskEnd>,
}

impl GuestTask {
    fn new(run: impl std::future::Future<Output = TaskEnd> + Send + 'static) -> GuestTask {
        GuestTask {
            run: Some(Box::pin(run)),
            ended: None,
        }
    }

    /// Polls the run once, unless it has ended; keeps its end.
    fn poll_run(&mut self, cx: &mut Context<'_>) {
        let Some(run) = self.run.as_mut() else {
            return;
        };
        let polled =
            std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| run.as_mut().poll(cx)));
        let end = match polled {
            Ok(Poll::Pending) => return,
            Ok(Poll::Ready(end)) => end,
            Err(_) => TaskEnd {
                result: Err(wasmtime::Error::msg("the guest's task panicked")),
                deadline_hit: false,
                memory_denied: false,
            },
        };
        self.run = None;
        self.ended = Some(end);
    }

    /// Runs the guest until `answer` (the response it sets, or its sender dropped).
    async fn answer<T>(
        &mut self,
        mut answer: tokio::sync::oneshot::Receiver<T>,
    ) -> Result<T, tokio::sync::oneshot::error::RecvError> {
        std::future::poll_fn(|cx| {
            self.poll_run(cx);
            Pin::new(&mut answer).poll(cx)
        })
        .await
    }

    /// Runs the guest to its end and says how it ended.
    async fn end(&mut self) -> TaskEnd {
        std::future::poll_fn(|cx| {
            self.poll_run(cx);
            match self.ended.take() {
                Some(end) => Poll::Ready(end),
                None => Poll::Pending,
            }
        })
        .await
    }
}

/// The rest of the run (streaming the body, returning the instance) goes on in a task of its
/// own, whether the request answered, failed early or was dropped.
impl Drop for GuestTask {
    fn drop(&mut self) {
        if let Some(run) = self.run.take()
            && let Ok(runtime) = tokio::runtime::Handle::try_current()
        {
            runtime.spawn(run);
        }
    }
}

/// The answer when the guest ended without setting a response.
fn failure_response(
    component: &LoadedComponent,
    end: TaskEnd,
    request_id: &str,
) -> Response<ResponseBody> {
    let name = &component.name;
    let deadline_ms = component.limits.deadline_ms;
    if end.deadline_hit {
        tracing::warn!(deadline_ms, "component exceeded its deadline");
        return error_response(
            StatusCode::GATEWAY_TIMEOUT,
            "deadline_exceeded",
            &format!("component `{name}` did not answer within {deadline_ms} ms"),
            request_id,
        );
    }
    let error = match end.result {
        Ok(()) => {
            tracing::error!("component returned without setting a response");
            return error_response(
                StatusCode::INTERNAL_SERVER_ERROR,
                "no_response",
                &format!("component `{name}` returned without a response"),
                request_id,
            );
        }
        Err(error) => error,
    };
    if error
        .downcast_ref::<wasmtime::PoolConcurrencyLimitError>()
        .is_some()
    {
        tracing::warn!(error = %error, "instance pool exhausted");
        return overloaded(
            "the host is running as many instances as it can; retry shortly",
            request_id,
        );
    }
    if end.memory_denied {
        tracing::error!(error = %format!("{error:#}"), memory_limit_bytes = component.limits.memory_bytes, "component trapped: out of memory");
        return error_response(
            StatusCode::INTERNAL_SERVER_ERROR,
            "memory_limit_exceeded",
            &format!(
                "component `{name}` ran out of memory (limit {} MiB)",
                component.limits.memory_bytes >> 20
            ),
            request_id,
        );
    }
    tracing::error!(error = ?error, "component trapped");
    error_response(
        StatusCode::INTERNAL_SERVER_ERROR,
        "component_trapped",
        &format!("component `{name}` trapped while handling the request"),
        request_id,
    )
}

/// 503 with `Retry-After: 1`: a limit on running instances was reached.
fn overloaded(message: &str, request_id: &str) -> Response<ResponseBody> {
    let mut response = error_response(
        StatusCode::SERVICE_UNAVAILABLE,
        "overloaded",
        message,
        request_id,
    );
    response
        .headers_mut()
        .insert(http::header::RETRY_AFTER, HeaderValue::from_static("1"));
    response
}

fn body_too_large(limit: u64, request_id: &str) -> Response<ResponseBody> {
    error_response(
        StatusCode::PAYLOAD_TOO_LARGE,
        "body_too_large",
        &format!("the request body exceeds the limit of {limit} bytes"),
        request_id,
    )
}

/// Length of a request id's random prefix, in hex digits.
const ID_PREFIX_LEN: usize = 12;

/// Request ids: a random per-process prefix and a counter — unique across replicas without a
/// random draw per request.
struct RequestIds {
    prefix: String,
    next: AtomicU64,
}

impl RequestIds {
    fn new() -> RequestIds {
        let random = uuid::Uuid::new_v4().simple().to_string();
        RequestIds {
            prefix: random[..ID_PREFIX_LEN].to_owned(),
            next: AtomicU64::new(1),
        }
    }

    /// `PREFIX-NNNNNNNN`: the counter in lowercase hex, at least 8 digits. Written by hand on
    /// the stack and shared (the request's calls hold it too), one allocation: it runs on every
    /// request, and `format!` was 0.7% of a reused hello request's CPU.
    fn next(&self) -> Arc<str> {
        const HEX: &[u8; 16] = b"0123456789abcdef";
        let n = self.next.fetch_add(1, Ordering::Relaxed);
        let digits = (16 - n.leading_zeros().min(60) as usize / 4).max(8);
        // A u64 is at most 16 hex digits.
        let mut id = [0u8; ID_PREFIX_LEN + 1 + 16];
        let prefix = self.prefix.as_bytes();
        id[..prefix.len()].copy_from_slice(prefix);
        id[prefix.len()] = b'-';
        let start = prefix.len() + 1;
        for (at, shift) in (0..digits).rev().enumerate() {
            id[start + at] = HEX[(n >> (shift * 4)) as usize & 0xf];
        }
        Arc::from(std::str::from_utf8(&id[..start + digits]).unwrap_or_default())
    }
}

/// The request body as the guest sees it: at most `limit` bytes, then an error (and a flag the
/// host turns into 413); from a client, no slower than its [`BodyRate`], then an error (and a
/// flag the host turns into 408).
struct LimitedBody {
    inner: WasiBody,
    remaining: u64,
    limit: u64,
    flags: Arc<BodyFlags>,
    pace: Option<Pace>,
}

/// What a request's body did that the host answers for, set by [`LimitedBody`] as the guest
/// reads it (one allocation per request for both).
#[derive(Default)]
struct BodyFlags {
    /// More than the limit arrived: 413.
    exceeded: AtomicBool,
    /// The client sent it too slowly: 408.
    slow: AtomicBool,
}

/// The time a body has made the host wait on its client, against its [`BodyRate`].
struct Pace {
    rate: BodyRate,
    received: u64,
    /// Time waited on the client before the current wait.
    waited: Duration,
    /// When the current wait began (the inner body answered `Pending`).
    waiting_since: Option<tokio::time::Instant>,
    timer: Pin<Box<tokio::time::Sleep>>,
    flags: Arc<BodyFlags>,
}

impl Pace {
    fn new(rate: BodyRate, flags: Arc<BodyFlags>) -> Pace {
        Pace {
            rate,
            received: 0,
            waited: Duration::ZERO,
            waiting_since: None,
            timer: Box::pin(tokio::time::sleep(Duration::ZERO)),
            flags,
        }
    }

    /// Data (or the end) arrived: the current wait is over.
    fn arrived(&mut self, bytes: u64) {
        if let Some(since) = self.waiting_since.take() {
            self.waited += since.elapsed();
        }
        self.received += bytes;
    }

    /// The inner body is not ready: `true` when the client has used up its allowance (the
    /// timer is armed for the moment it will have, and wakes `cx` then).
    fn exhausted(&mut self, cx: &mut Context<'_>) -> bool {
        let now = tokio::time::Instant::now();
        let since = *self.waiting_since.get_or_insert(now);
        let left = self
            .rate
            .allowance(self.received)
            .saturating_sub(self.waited);
        let give_up = since + left;
        if give_up <= now {
            self.flags.slow.store(true, Ordering::Relaxed);
            return true;
        }
        if self.timer.deadline() != give_up {
            self.timer.as_mut().reset(give_up);
        }
        if self.timer.as_mut().poll(cx).is_ready() {
            self.flags.slow.store(true, Ordering::Relaxed);
            return true;
        }
        false
    }
}

impl Body for LimitedBody {
    type Data = Bytes;
    type Error = wasmtime_wasi_http::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Self::Error>>> {
        let polled = Pin::new(&mut self.inner).poll_frame(cx);
        let this = &mut *self;
        if let Some(pace) = &mut this.pace {
            match &polled {
                Poll::Pending => {
                    if pace.exhausted(cx) {
                        this.pace = None;
                        return Poll::Ready(Some(Err(
                            wasmtime_wasi_http::Error::ConnectionReadTimeout,
                        )));
                    }
                }
                Poll::Ready(Some(Ok(frame))) => {
                    pace.arrived(frame.data_ref().map_or(0, |data| data.len() as u64));
                }
                Poll::Ready(_) => pace.arrived(0),
            }
        }
        let frame = match ready!(polled) {
            None => return Poll::Ready(None),
            Some(Err(err)) => return Poll::Ready(Some(Err(err))),
            Some(Ok(frame)) => frame,
        };
        if let Some(data) = frame.data_ref() {
            let len = data.len() as u64;
            if len > self.remaining {
                self.flags.exceeded.store(true, Ordering::Relaxed);
                self.remaining = 0;
                let limit = self.limit;
                return Poll::Ready(Some(Err(wasmtime_wasi_http::Error::HttpRequestBodySize(
                    Some(limit),
                ))));
            }
            self.remaining -= len;
        }
        Poll::Ready(Some(Ok(frame)))
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use http_body_util::BodyExt as _;

    /// hyper moves the future of every request into its dispatcher, and each layer between it
    /// and the guest's run moved it again when they were `async fn`s awaiting one another:
    /// 6 984 bytes in a release build, copied several times a request. The guest's run is
    /// boxed once ([`GuestTask`]); this bounds the rest, so a layer that starts holding the
    /// request twice again, or an inline future of kilobytes, fails here rather than in a
    /// profile.
    #[test]
    fn a_request_future_stays_small() {
        let trigger = HttpTrigger::new(
            Router::new(Vec::new()),
            Edge::new(
                None,
                Arc::new(agora_ratelimit::MemoryRateLimiter::default()),
                0,
            ),
        );
        let request = Request::get("/products/1")
            .body(
                http_body_util::Empty::new()
                    .map_err(|never| match never {})
                    .boxed_unsync(),
            )
            .expect("a valid request");
        let caller = Caller::External {
            peer: std::net::Ipv4Addr::LOCALHOST.into(),
        };
        let answer = trigger.handle(request, caller);
        let size = std::mem::size_of_val(&answer);
        assert!(size <= 1536, "a request's future is {size} bytes");
    }

    #[test]
    fn request_ids_are_the_prefix_and_the_counter_in_hex() {
        let ids = RequestIds::new();
        for n in [
            0,
            1,
            0xff,
            0xffff_ffff,
            0x1_0000_0000,
            0xdead_beef_cafe,
            u64::MAX,
        ] {
            ids.next.store(n, Ordering::Relaxed);
            assert_eq!(*ids.next(), format!("{}-{n:08x}", ids.prefix));
        }
    }
}
