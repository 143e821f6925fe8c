//! In-process calls between components: who is calling ([`Caller`], [`CallContext`]) and the
//! seam through which an instance's outbound `wasi:http` reaches the HTTP trigger
//! ([`InternalHandler`]). A leaf below the edge, the trigger and the store: the request path
//! reads top-down (server → router → edge → trigger → instance) and the instance calls back up
//! only through this trait.

use crate::response::ResponseBody;
use http::{Request, Response};
use std::net::IpAddr;
use std::pin::Pin;
use std::sync::{Arc, OnceLock, Weak};
use wasmtime_wasi_http::WasiBody;

/// Where a request comes from.
#[derive(Debug, Clone)]
pub enum Caller {
    /// A client over the network.
    External {
        /// The TCP peer.
        peer: IpAddr,
    },
    /// Another component, through `http://NAME.agora.internal`.
    Internal {
        /// The calling component.
        component: Arc<str>,
        /// The client of the request the caller is serving, when it has one.
        client_ip: Option<IpAddr>,
        /// How many in-process calls deep this one is (1 for a call from a request).
        depth: u32,
        /// The id of the request the caller was serving, when it was serving one.
        parent_request_id: Option<Arc<str>>,
    },
}

/// What answers the in-process calls of components: the HTTP trigger, set once it exists (it
/// holds the components, which hold this): a weak reference, so a host that is dropped is not
/// kept alive by its own components.
pub type InternalCalls = Arc<OnceLock<Weak<dyn InternalHandler>>>;

/// The seam between a component's outbound `wasi:http` and the host's HTTP trigger: a request
/// to `http://NAME.agora.internal` is handed to this, with its caller, instead of the network.
/// The trigger implements it (edge checks included), as wasmtime-wasi-http's `WasiHttpHooks`
/// is the seam for sending.
pub trait InternalHandler: Send + Sync {
    /// Answers `request`, from `caller`, to the component named `target`.
    fn handle_internal(
        &self,
        request: Request<WasiBody>,
        caller: Caller,
        target: String,
    ) -> Pin<Box<dyn Future<Output = Response<ResponseBody>> + Send + '_>>;
}

/// Where the request an instance serves came from.
#[derive(Debug, Clone, Default)]
pub struct CallContext {
    /// The client's address, passed on to the components this one calls (for their per-IP
    /// rate limits).
    pub client_ip: Option<IpAddr>,
    /// 0 for a client's request or an event; N for the N-th nested in-process call.
    pub depth: u32,
    /// The id of the request the instance serves (none for an event).
    pub request_id: Option<Arc<str>>,
}
