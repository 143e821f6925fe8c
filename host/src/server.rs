//! The HTTP listener: accepts connections, serves HTTP/1.1 with keep-alive, and drains on
//! shutdown.
//!
//! Every connection is bounded before a component sees it ([`ConnectionLimits`]): a cap on open
//! connections and on connections per client address (refused past it with a `503` written
//! on the spot and the socket closed), and a header timeout that closes a connection whose
//! request head has not fully arrived in time — counted from the connection's start, and from
//! the end of the previous response on a kept-alive connection, so it is the idle keep-alive
//! timeout too. A body that arrives too slowly is cut by the HTTP trigger
//! ([`crate::triggers::http::BodyRate`]).
//!
//! Shutdown order: stop accepting, let every in-flight request finish (idle keep-alive
//! connections are closed at once), and give up after the drain timeout.

use crate::calls::Caller;
use crate::triggers::http::HttpTrigger;
use http::Request;
use http_body_util::BodyExt as _;
use hyper::body::Incoming;
use hyper::server::conn::http1;
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::server::graceful::GracefulShutdown;
use std::collections::HashMap;
use std::convert::Infallible;
use std::future::Future;
use std::net::IpAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::net::{TcpListener, TcpStream};

/// Default cap on the connections a listener holds open at once.
pub const DEFAULT_MAX_CONNECTIONS: usize = 4096;
/// Default cap on the connections one client address holds open at once.
pub const DEFAULT_MAX_CONNECTIONS_PER_IP: usize = 256;
/// Default time a client has to send a complete request head (and the idle keep-alive timeout).
pub const DEFAULT_HEADER_TIMEOUT: Duration = Duration::from_secs(15);

/// Bounds on the connections of one listener.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ConnectionLimits {
    /// Connections open at once; one more is answered `503` and closed.
    pub max_connections: usize,
    /// Connections open at once from one peer address; `Some(0)` turns the cap off. `None`:
    /// [`DEFAULT_MAX_CONNECTIONS_PER_IP`], or off when the manifest trusts proxies in front
    /// of the host (every connection then comes from a proxy's address).
    pub max_per_ip: Option<usize>,
    /// Time from the start of a connection, or from the end of the previous response on a
    /// kept-alive one, to a complete request head; the connection is closed after it.
    pub header_timeout: Duration,
}

impl Default for ConnectionLimits {
    fn default() -> Self {
        ConnectionLimits {
            max_connections: DEFAULT_MAX_CONNECTIONS,
            max_per_ip: None,
            header_timeout: DEFAULT_HEADER_TIMEOUT,
        }
    }
}

/// Counts a listener's open connections, in all and per peer address.
#[derive(Debug)]
pub struct ConnectionGate {
    limits: ConnectionLimits,
    open: Mutex<Counts>,
}

#[derive(Debug, Default)]
struct Counts {
    total: usize,
    per_ip: HashMap<IpAddr, usize>,
}

/// Why a connection was not admitted.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refused {
    /// The listener holds `max_connections`.
    Full,
    /// The peer address holds `max_per_ip`.
    PerIp,
}

impl ConnectionLimits {
    /// The limits with the per-address cap settled: the default one unless proxies in front
    /// of the host (`trusted_proxy_hops` > 0) make every peer address a proxy's.
    pub fn resolved(mut self, trusted_proxy_hops: usize) -> ConnectionLimits {
        if self.max_per_ip.is_none() {
            self.max_per_ip = Some(if trusted_proxy_hops > 0 {
                0
            } else {
                DEFAULT_MAX_CONNECTIONS_PER_IP
            });
        }
        self
    }
}

impl ConnectionGate {
    /// A gate applying `limits`.
    pub fn new(limits: ConnectionLimits) -> Arc<ConnectionGate> {
        Arc::new(ConnectionGate {
            limits: limits.resolved(0),
            open: Mutex::new(Counts::default()),
        })
    }

    /// Admits one connection from `peer`; the permit counts it until dropped.
    pub fn admit(self: &Arc<Self>, peer: IpAddr) -> Result<ConnectionPermit, Refused> {
        let mut open = self
            .open
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        if open.total >= self.limits.max_connections {
            return Err(Refused::Full);
        }
        let from_peer = open.per_ip.get(&peer).copied().unwrap_or(0);
        let per_ip = self.limits.max_per_ip.unwrap_or(0);
        if per_ip > 0 && from_peer >= per_ip {
            return Err(Refused::PerIp);
        }
        open.total += 1;
        open.per_ip.insert(peer, from_peer + 1);
        Ok(ConnectionPermit {
            gate: self.clone(),
            peer,
        })
    }
}

/// One admitted connection; dropping it frees its place.
#[derive(Debug)]
pub struct ConnectionPermit {
    gate: Arc<ConnectionGate>,
    peer: IpAddr,
}

impl Drop for ConnectionPermit {
    fn drop(&mut self) {
        let mut open = self
            .gate
            .open
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        open.total = open.total.saturating_sub(1);
        if let Some(count) = open.per_ip.get_mut(&self.peer) {
            *count -= 1;
            if *count == 0 {
                open.per_ip.remove(&self.peer);
            }
        }
    }
}

/// Answers a connection the gate refused: a `503` written without waiting (the socket buffer
/// of a fresh connection has room for it), then the socket is closed.
pub fn refuse(stream: TcpStream, peer: IpAddr, why: Refused) {
    let reason = match why {
        Refused::Full => "the server holds as many connections as it may",
        Refused::PerIp => "too many connections from your address",
    };
    let body = format!(
        "{{\"error\":{{\"code\":\"too_many_connections\",\"message\":\"{reason}; retry shortly\"}}}}"
    );
    let answer = format!(
        "HTTP/1.1 503 Service Unavailable\r\ncontent-type: application/json\r\nretry-after: 1\r\n\
         connection: close\r\ncontent-length: {}\r\n\r\n{body}",
        body.len()
    );
    let _ = stream.try_write(answer.as_bytes());
    tracing::debug!(%peer, ?why, "connection refused");
    drop(stream);
}

/// The HTTP/1.1 settings of every connection of a listener bounded by `limits`.
pub fn http1_builder(limits: &ConnectionLimits) -> http1::Builder {
    let mut builder = http1::Builder::new();
    builder
        .keep_alive(true)
        .timer(TokioTimer::new())
        .header_read_timeout(limits.header_timeout);
    builder
}

/// How a server stopped.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Drained {
    /// Every connection finished within the drain timeout.
    Clean,
    /// The drain timeout passed with connections still open; they were dropped.
    TimedOut,
}

/// Serves `trigger` on `listener` until `shutdown` resolves, then drains for at most
/// `drain_timeout`.
pub async fn serve(
    listener: TcpListener,
    trigger: Arc<HttpTrigger>,
    limits: ConnectionLimits,
    shutdown: impl Future<Output = ()>,
    drain_timeout: Duration,
) -> Drained {
    let graceful = GracefulShutdown::new();
    let gate = ConnectionGate::new(limits);
    let builder = http1_builder(&limits);
    let mut shutdown = std::pin::pin!(shutdown);
    loop {
        let (stream, peer) = tokio::select! {
            () = &mut shutdown => break,
            accepted = listener.accept() => match accepted {
                Ok((stream, peer)) => (stream, peer),
                Err(err) => {
                    // Out of file descriptors and the like: wait a little rather than spin.
                    tracing::warn!(error = %err, "accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
        };
        let permit = match gate.admit(peer.ip()) {
            Ok(permit) => permit,
            Err(why) => {
                refuse(stream, peer.ip(), why);
                continue;
            }
        };
        // Small responses must not wait for Nagle's algorithm.
        let _ = stream.set_nodelay(true);
        let trigger = trigger.clone();
        let caller = Caller::External { peer: peer.ip() };
        let service = hyper::service::service_fn(move |request: Request<Incoming>| {
            let trigger = trigger.clone();
            let caller = caller.clone();
            let request = request.map(|body| body.map_err(Into::into).boxed_unsync());
            async move { Ok::<_, Infallible>(trigger.handle(request, caller).await) }
        });
        let connection = builder.serve_connection(TokioIo::new(stream), service);
        let connection = graceful.watch(connection);
        tokio::spawn(async move {
            let _permit = permit;
            if let Err(err) = connection.await {
                tracing::debug!(error = %err, "connection ended with an error");
            }
        });
    }
    drop(listener);
    tracing::info!(
        drain_timeout_ms = drain_timeout.as_millis() as u64,
        "shutting down: draining in-flight requests"
    );
    match tokio::time::timeout(drain_timeout, graceful.shutdown()).await {
        Ok(()) => {
            tracing::info!("drained");
            Drained::Clean
        }
        Err(_) => {
            tracing::warn!("drain timeout passed with requests still in flight");
            Drained::TimedOut
        }
    }
}

/// Serves an operator's API (admin, metrics) on `listener` until `stop` turns true: each
/// connection within `limits`, each request answered by `handle`. `name` is the listener's
/// name in logs.
pub async fn serve_internal<H, F>(
    listener: TcpListener,
    name: &'static str,
    limits: ConnectionLimits,
    mut stop: tokio::sync::watch::Receiver<bool>,
    handle: H,
) where
    H: Fn(Request<Incoming>) -> F + Clone + Send + Sync + 'static,
    F: Future<Output = http::Response<crate::response::ResponseBody>> + Send + 'static,
{
    let gate = ConnectionGate::new(limits);
    let builder = http1_builder(&limits);
    if let Ok(addr) = listener.local_addr() {
        tracing::info!(listener = name, %addr, "listening");
    }
    loop {
        let (stream, permit) = tokio::select! {
            _ = stop.changed() => break,
            accepted = listener.accept() => match accepted {
                Ok((stream, peer)) => match gate.admit(peer.ip()) {
                    Ok(permit) => (stream, permit),
                    Err(why) => {
                        refuse(stream, peer.ip(), why);
                        continue;
                    }
                },
                Err(err) => {
                    tracing::warn!(listener = name, error = %err, "accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
        };
        let handle = handle.clone();
        let service = hyper::service::service_fn(move |request| {
            let answer = handle(request);
            async move { Ok::<_, Infallible>(answer.await) }
        });
        let connection = builder.serve_connection(TokioIo::new(stream), service);
        tokio::spawn(async move {
            let _permit = permit;
            if let Err(err) = connection.await {
                tracing::debug!(listener = name, error = %err, "connection ended with an error");
            }
        });
    }
}
