//! What a store holds for one instance: the WASI and wasi:http contexts, its resource table, and
//! the limits it runs under.
//!
//! By default a store lives exactly as long as one request: it is created before instantiation
//! and dropped with the instance, so nothing a guest does survives into the next request. A
//! component with `[component.instances] reuse = N` keeps its instance for up to N requests
//! (`instances.rs`); [`renew_store`] readies it for each.

use crate::calls::{CallContext, Caller, InternalCalls};
use crate::granted::Granted;
use crate::manifest::INTERNAL_DOMAIN;
use crate::manifest::Limits;
use agora_capability::{Prepared, Slots, StoreData, StoreInfo};
use std::pin::Pin;
use std::sync::{Arc, Weak};
use std::task::{Context, Poll};
use std::time::Instant;
use tokio::io::AsyncWrite;
use wasmtime::component::ResourceTable;
use wasmtime::{Store, UpdateDeadline};
use wasmtime_wasi::cli::{IsTerminal, StdoutStream};
use wasmtime_wasi::{WasiCtx, WasiCtxView, WasiView};
use wasmtime_wasi_http::{
    RequestOptions, WasiBody, WasiHttpCtx, WasiHttpCtxView, WasiHttpHooks, WasiHttpView,
};

/// What a store is made of: one component's name, engine, limits and capabilities
/// (`LoadedComponent::store_spec`).
pub struct StoreSpec<'a> {
    /// The manifest name.
    pub name: &'a Arc<str>,
    /// The engine its code was compiled for.
    pub engine: &'a wasmtime::Engine,
    /// Its per-instance limits.
    pub limits: &'a Limits,
    /// Its share of the host's capabilities.
    pub capabilities: &'a Granted,
}

/// The data of a per-request store.
pub struct InstanceState {
    wasi: WasiCtx,
    http: WasiHttpCtx,
    outbound: OutboundHttp,
    table: ResourceTable,
    /// Memory limits; also records whether a limit was hit.
    pub limits: GuestLimits,
    /// When the request's wall-clock deadline passes.
    pub deadline: Instant,
    /// Set by the epoch callback when it interrupted the guest for its deadline.
    pub deadline_hit: bool,
    /// The capability units' state, one value per unit.
    slots: Slots,
}

impl InstanceState {
    /// A fresh state for one instance of `component`, due by `deadline`.
    pub fn new(component: &StoreSpec<'_>, deadline: Instant) -> InstanceState {
        let name = component.name;
        let slots = Slots::of_units(units(component), &StoreInfo { deadline });
        let wasi = WasiCtx::builder()
            .stdout(GuestLog::new(name.clone(), Stream::Stdout))
            .stderr(GuestLog::new(name.clone(), Stream::Stderr))
            .build();
        InstanceState {
            wasi,
            http: WasiHttpCtx::new(),
            outbound: OutboundHttp {
                component: name.clone(),
                allowed: component.capabilities.http.clone(),
                internal: component.capabilities.internal.clone(),
                context: CallContext::default(),
            },
            table: ResourceTable::new(),
            limits: GuestLimits {
                max_memory_bytes: usize::try_from(component.limits.memory_bytes)
                    .unwrap_or(usize::MAX),
                memory_denied: false,
            },
            deadline,
            deadline_hit: false,
            slots,
        }
    }

    /// Readies a reused instance for its next request, due by `deadline`: each unit's per-store
    /// state starts again (a request's budgets are its own; a unit whose state no call changes
    /// keeps it, `Prepared::renew`), the limits' flags are cleared.
    /// The guest's memory and the resource table stay as the last request left them.
    fn renew(&mut self, component: &StoreSpec<'_>, deadline: Instant) {
        self.slots
            .renew_units(units(component), &StoreInfo { deadline });
        self.deadline = deadline;
        self.deadline_hit = false;
        self.limits.memory_denied = false;
        self.outbound.context = CallContext::default();
    }

    /// Whether the guest still holds host resources (streams, requests, a transaction…).
    pub fn holds_resources(&self) -> bool {
        !self.table.is_empty()
    }

    /// Records where the request this instance serves came from, for the in-process calls it
    /// makes.
    pub fn set_call_context(&mut self, context: CallContext) {
        self.outbound.context = context;
    }
}

/// The parts of the capability units `component` holds, in order: what its stores' slots are
/// made and renewed from.
fn units<'a>(component: &'a StoreSpec<'_>) -> impl ExactSizeIterator<Item = &'a dyn Prepared> {
    component.capabilities.units.iter().map(|(_, part)| &**part)
}

/// Whether a component may not set header `name` on what it sends (wasi:http's `fields`, a
/// first look's answer): wasmtime-wasi-http's default headers, without the `Arc` its default
/// hook builds for every header of every request and response (`forbidden_header_filter`).
pub fn forbidden_header(name: &http::HeaderName) -> bool {
    wasmtime_wasi_http::DEFAULT_FORBIDDEN_HEADERS.contains(name)
}

/// A store for one request or event of `component`: its limits, and a deadline enforced by
/// epoch interruption (a guest computing past it is interrupted; before it, the guest yields at
/// every epoch tick so other tasks on the thread run).
pub fn new_store(component: &StoreSpec<'_>, deadline: Instant) -> Store<InstanceState> {
    let mut store = Store::new(component.engine, InstanceState::new(component, deadline));
    store.limiter(|state| &mut state.limits);
    store.set_epoch_deadline(1);
    store.epoch_deadline_callback(|mut ctx| {
        if Instant::now() >= ctx.data().deadline {
            ctx.data_mut().deadline_hit = true;
            Ok(UpdateDeadline::Interrupt)
        } else {
            Ok(UpdateDeadline::Yield(1))
        }
    });
    store
}

/// Readies the store of a reused instance of `component` for a request due by `deadline`
/// (see [`InstanceState::renew`]).
pub fn renew_store(store: &mut Store<InstanceState>, component: &StoreSpec<'_>, deadline: Instant) {
    store.data_mut().renew(component, deadline);
    store.set_epoch_deadline(1);
}

impl StoreData for InstanceState {
    fn slots(&mut self) -> &mut Slots {
        &mut self.slots
    }

    fn slots_and_table(&mut self) -> (&mut Slots, &mut ResourceTable) {
        (&mut self.slots, &mut self.table)
    }
}

impl WasiView for InstanceState {
    fn ctx(&mut self) -> WasiCtxView<'_> {
        WasiCtxView {
            ctx: &mut self.wasi,
            table: &mut self.table,
        }
    }
}

impl WasiHttpView for InstanceState {
    fn http(&mut self) -> WasiHttpCtxView<'_> {
        WasiHttpCtxView {
            ctx: &mut self.http,
            table: &mut self.table,
            hooks: &mut self.outbound,
        }
    }
}

/// Outbound wasi:http, limited to the origins the manifest grants (`grants.http`). A request
/// to any other origin fails with `HTTP-request-denied` — an error value, not a trap.
/// `http://NAME.agora.internal` is component NAME, called in-process through the HTTP
/// trigger (edge checks included) without a network hop.
struct OutboundHttp {
    component: Arc<str>,
    allowed: Arc<[String]>,
    internal: InternalCalls,
    context: CallContext,
}

type SendFuture = Box<
    dyn Future<
            Output = wasmtime_wasi_http::Result<(
                http::Response<WasiBody>,
                Box<dyn Future<Output = wasmtime_wasi_http::Result<()>> + Send>,
            )>,
        > + Send,
>;

impl WasiHttpHooks for OutboundHttp {
    fn is_forbidden_header(&mut self, name: &http::HeaderName) -> bool {
        forbidden_header(name)
    }

    fn send_request(
        &mut self,
        request: http::Request<WasiBody>,
        options: Option<RequestOptions>,
        fut: Box<dyn Future<Output = wasmtime_wasi_http::Result<()>> + Send>,
    ) -> SendFuture {
        drop(fut);
        let mut request = request;
        // The call continues this request's or event's trace (W3C trace context).
        for (name, value) in crate::telemetry::current_headers() {
            if let (Ok(name), Ok(value)) = (
                http::HeaderName::from_bytes(name.as_bytes()),
                http::HeaderValue::from_str(&value),
            ) {
                request.headers_mut().insert(name, value);
            }
        }
        let uri = request.uri();
        let origin = format!(
            "{}://{}",
            uri.scheme_str().unwrap_or("https"),
            uri.authority().map_or("", |a| a.as_str())
        )
        .to_ascii_lowercase();
        if !self.allowed.contains(&origin) {
            tracing::warn!(component = %self.component, %origin, "outbound HTTP to an ungranted origin refused");
            return Box::new(async { Err(wasmtime_wasi_http::Error::HttpRequestDenied) });
        }
        if let Some(target) = origin
            .strip_prefix("http://")
            .and_then(|host| host.strip_suffix(INTERNAL_DOMAIN))
        {
            let target = target.to_owned();
            let handler = self.internal.get().and_then(Weak::upgrade);
            let caller = Caller::Internal {
                component: self.component.clone(),
                client_ip: self.context.client_ip,
                depth: self.context.depth + 1,
                parent_request_id: self.context.request_id.clone(),
            };
            return Box::new(async move {
                let Some(handler) = handler else {
                    return Err(wasmtime_wasi_http::Error::ConnectionRefused);
                };
                let response = handler.handle_internal(request, caller, target).await;
                Ok((
                    response,
                    Box::new(async { Ok(()) }) as Box<dyn Future<Output = _> + Send>,
                ))
            });
        }
        Box::new(async move {
            use http_body_util::BodyExt;
            let (response, io) = wasmtime_wasi_http::default_send_request(request, options).await?;
            Ok((
                response.map(BodyExt::boxed_unsync),
                Box::new(io) as Box<dyn Future<Output = _> + Send>,
            ))
        })
    }
}

/// Caps each linear memory and table of an instance and remembers a refusal, so the host can
/// tell "out of memory" from other traps.
pub struct GuestLimits {
    max_memory_bytes: usize,
    /// A memory grow was refused because of the cap.
    pub memory_denied: bool,
}

/// Table elements one table may hold; far above what a Rust guest uses.
const MAX_TABLE_ELEMENTS: usize = 1 << 20;

impl wasmtime::ResourceLimiter for GuestLimits {
    fn memory_growing(
        &mut self,
        _current: usize,
        desired: usize,
        _maximum: Option<usize>,
    ) -> wasmtime::Result<bool> {
        if desired > self.max_memory_bytes {
            self.memory_denied = true;
            return Ok(false);
        }
        Ok(true)
    }

    fn table_growing(
        &mut self,
        _current: usize,
        desired: usize,
        _maximum: Option<usize>,
    ) -> wasmtime::Result<bool> {
        Ok(desired <= MAX_TABLE_ELEMENTS)
    }
}

#[derive(Clone, Copy)]
enum Stream {
    Stdout,
    Stderr,
}

/// A guest's stdout or stderr: each line becomes a log event tagged with the component.
#[derive(Clone)]
struct GuestLog {
    component: Arc<str>,
    stream: Stream,
}

impl GuestLog {
    fn new(component: Arc<str>, stream: Stream) -> GuestLog {
        GuestLog { component, stream }
    }
}

impl IsTerminal for GuestLog {
    fn is_terminal(&self) -> bool {
        false
    }
}

impl StdoutStream for GuestLog {
    fn async_stream(&self) -> Box<dyn AsyncWrite + Send + Sync> {
        Box::new(LineWriter {
            log: self.clone(),
            pending: Vec::new(),
        })
    }
}

/// Longest line kept before it is emitted anyway.
const MAX_LINE: usize = 16 * 1024;

struct LineWriter {
    log: GuestLog,
    pending: Vec<u8>,
}

impl LineWriter {
    fn emit(&self, line: &[u8]) {
        let line = String::from_utf8_lossy(line);
        let line = line.trim_end();
        if line.is_empty() {
            return;
        }
        let component = &*self.log.component;
        match self.log.stream {
            Stream::Stdout => tracing::info!(target: "agora::guest", component, "{line}"),
            Stream::Stderr => tracing::warn!(target: "agora::guest", component, "{line}"),
        }
    }
}

impl AsyncWrite for LineWriter {
    fn poll_write(
        mut self: Pin<&mut Self>,
        _cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        self.pending.extend_from_slice(buf);
        while let Some(end) = self.pending.iter().position(|&b| b == b'\n') {
            let line: Vec<u8> = self.pending.drain(..=end).collect();
            self.emit(&line);
        }
        if self.pending.len() > MAX_LINE {
            let line = std::mem::take(&mut self.pending);
            self.emit(&line);
        }
        Poll::Ready(Ok(buf.len()))
    }

    fn poll_flush(self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Poll::Ready(Ok(()))
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        let line = std::mem::take(&mut self.pending);
        self.emit(&line);
        Poll::Ready(Ok(()))
    }
}

impl Drop for LineWriter {
    fn drop(&mut self) {
        let line = std::mem::take(&mut self.pending);
        self.emit(&line);
    }
}
