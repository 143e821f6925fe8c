//! The HTTP listener: accepts connections, serves HTTP/1.1 with keep-alive, and drains on
//! shutdown.
//!
//! Every connection is bounded before a component sees it ([`ConnectionLimits`]): a cap on open
//! connections and on connections per client address (refused past it with a `503` written
//! on the spot and the socket closed), and a header timeout that closes a connection whose
//! request head has not fully arrived in time — counted from the connection's start, and from
//! the end of the previous response on a kept-alive connection, so it is the idle keep-alive
//! timeout too ([`HeadWatch`]). A body that arrives too slowly is cut by the HTTP trigger
//! ([`crate::triggers::http::BodyRate`]).
//!
//! Shutdown order: stop accepting, let every in-flight request finish (idle keep-alive
//! connections are closed at once), and give up after the drain timeout.

use crate::calls::Caller;
use crate::response::ResponseBody;
use crate::triggers::http::HttpTrigger;
use bytes::Bytes;
use futures::FutureExt as _;
use http::{Request, Response};
use http_body_util::BodyExt as _;
use hyper::body::{Body, Frame, Incoming, SizeHint};
use hyper::server::conn::http1;
use hyper_util::rt::TokioIo;
use hyper_util::server::graceful::GracefulShutdown;
use std::collections::HashMap;
use std::convert::Infallible;
use std::future::Future;
use std::net::IpAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};
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

/// The HTTP/1.1 settings of every connection of a listener. hyper's own header timeout is
/// off: [`HeadWatch`] keeps it.
pub fn http1_builder() -> http1::Builder {
    let mut builder = http1::Builder::new();
    builder.keep_alive(true).header_read_timeout(None);
    builder
}

/// The header timeout of one connection: when it began waiting for its next request head (its
/// start, or the end of its previous response), or that it is answering a request. One timer
/// per connection ([`HeadWatch::expired`]) reads it, re-armed only when it fires, where
/// hyper's header timeout boxes a timer and puts it in and out of tokio's timer wheel for
/// every request (1.5% of a reused cached read's CPU, BENCHMARKS.md).
#[derive(Debug)]
struct HeadWatch {
    base: Instant,
    /// Milliseconds from `base` to when the connection began waiting for a request head, or
    /// [`HeadWatch::ANSWERING`].
    waiting_since_ms: AtomicU64,
}

impl HeadWatch {
    const ANSWERING: u64 = u64::MAX;

    /// The watch of a connection that starts now, waiting for its first request head.
    fn new() -> Arc<HeadWatch> {
        Arc::new(HeadWatch {
            base: Instant::now(),
            waiting_since_ms: AtomicU64::new(0),
        })
    }

    /// A request head arrived: no timeout runs until its response has ended.
    fn request(&self) {
        self.waiting_since_ms
            .store(Self::ANSWERING, Ordering::Relaxed);
    }

    /// The response ended (or was dropped): the connection waits for a head again.
    fn answered(&self) {
        let since = u64::try_from(self.base.elapsed().as_millis()).unwrap_or(Self::ANSWERING - 1);
        self.waiting_since_ms.store(since, Ordering::Relaxed);
    }

    /// Resolves once the connection has waited `timeout` for a request head; never while a
    /// request is answered.
    async fn expired(&self, timeout: Duration) {
        let mut at = self.base + timeout;
        loop {
            tokio::time::sleep_until(at.into()).await;
            let now = Instant::now();
            at = match self.waiting_since_ms.load(Ordering::Relaxed) {
                Self::ANSWERING => now + timeout,
                since => {
                    let due = self.base + Duration::from_millis(since) + timeout;
                    if due <= now {
                        return;
                    }
                    due
                }
            };
        }
    }

    /// Marks a request arrived and gives its response a body that marks the connection
    /// waiting again once hyper has sent it and dropped it.
    fn watch<F>(self: &Arc<Self>, answer: F) -> impl Future<Output = Response<WatchedBody>> + use<F>
    where
        F: Future<Output = Response<ResponseBody>>,
    {
        self.request();
        let watch = self.clone();
        async move { answer.await.map(|body| WatchedBody { body, watch }) }
    }

    /// Drives `connection` until it ends, or until it has waited `timeout` for a request head
    /// (it is then dropped, which closes it). `listener` names it in logs.
    async fn drive(
        &self,
        connection: impl Future<Output = Result<(), hyper::Error>>,
        timeout: Duration,
        listener: &'static str,
    ) {
        tokio::select! {
            biased;
            ended = connection => if let Err(err) = ended {
                tracing::debug!(listener, error = %err, "connection ended with an error");
            },
            () = self.expired(timeout) => {
                tracing::debug!(listener, "no request head within the header timeout; connection closed");
            }
        }
    }
}

/// A response's body on a watched connection ([`HeadWatch`]).
struct WatchedBody {
    body: ResponseBody,
    watch: Arc<HeadWatch>,
}

impl Drop for WatchedBody {
    fn drop(&mut self) {
        self.watch.answered();
    }
}

impl Body for WatchedBody {
    type Data = Bytes;
    type Error = <ResponseBody as Body>::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Self::Error>>> {
        Pin::new(&mut self.body).poll_frame(cx)
    }

    fn is_end_stream(&self) -> bool {
        self.body.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.body.size_hint()
    }
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
    let builder = http1_builder();
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
        let watch = HeadWatch::new();
        let service = {
            let watch = watch.clone();
            hyper::service::service_fn(move |request: Request<Incoming>| {
                let trigger = trigger.clone();
                let caller = caller.clone();
                let request = request.map(|body| body.map_err(Into::into).boxed_unsync());
                watch
                    .watch(async move { trigger.handle(request, caller).await })
                    .map(Ok::<_, Infallible>)
            })
        };
        let connection = builder.serve_connection(TokioIo::new(stream), service);
        let connection = graceful.watch(connection);
        let header_timeout = limits.header_timeout;
        tokio::spawn(async move {
            let _permit = permit;
            watch.drive(connection, header_timeout, "http").await;
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
    let builder = http1_builder();
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
        let watch = HeadWatch::new();
        let service = {
            let watch = watch.clone();
            hyper::service::service_fn(move |request| {
                watch.watch(handle(request)).map(Ok::<_, Infallible>)
            })
        };
        let connection = builder.serve_connection(TokioIo::new(stream), service);
        let header_timeout = limits.header_timeout;
        tokio::spawn(async move {
            let _permit = permit;
            watch.drive(connection, header_timeout, name).await;
        });
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;
    use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};

    const TIMEOUT: Duration = Duration::from_millis(300);

    /// An internal listener with a header timeout of [`TIMEOUT`] whose answers take `answer_in`.
    async fn listener(answer_in: Duration) -> (String, tokio::sync::watch::Sender<bool>) {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap().to_string();
        let limits = ConnectionLimits {
            header_timeout: TIMEOUT,
            ..ConnectionLimits::default()
        };
        let (stop, stopped) = tokio::sync::watch::channel(false);
        tokio::spawn(serve_internal(
            listener,
            "test",
            limits,
            stopped,
            move |_request| async move {
                tokio::time::sleep(answer_in).await;
                crate::response::json_response(http::StatusCode::OK, &serde_json::json!({}))
            },
        ));
        (addr, stop)
    }

    /// Reads until the server closes the connection; `None` if it is still open after 10 s.
    async fn read_to_close(stream: &mut TcpStream) -> Option<String> {
        let mut read = Vec::new();
        tokio::time::timeout(Duration::from_secs(10), stream.read_to_end(&mut read))
            .await
            .ok()?
            .ok()?;
        Some(String::from_utf8_lossy(&read).into_owned())
    }

    const GET: &[u8] = b"GET / HTTP/1.1\r\nhost: test\r\n\r\n";

    #[tokio::test]
    async fn a_connection_without_a_whole_head_is_closed_after_the_header_timeout() {
        let (addr, _stop) = listener(Duration::ZERO).await;
        let mut stream = TcpStream::connect(&addr).await.unwrap();
        stream
            .write_all(b"GET / HTTP/1.1\r\nhost: te")
            .await
            .unwrap();
        let started = Instant::now();
        assert_eq!(read_to_close(&mut stream).await.as_deref(), Some(""));
        assert!(started.elapsed() >= TIMEOUT - Duration::from_millis(5));
    }

    #[tokio::test]
    async fn a_kept_alive_connection_idle_for_the_header_timeout_is_closed() {
        let (addr, _stop) = listener(Duration::ZERO).await;
        let mut stream = TcpStream::connect(&addr).await.unwrap();
        // Requests keep the connection open past several timeouts; then it idles and closes.
        for _ in 0..4 {
            stream.write_all(GET).await.unwrap();
            let mut answer = [0u8; 1024];
            let read = stream.read(&mut answer).await.unwrap();
            assert!(answer[..read].starts_with(b"HTTP/1.1 200"));
            tokio::time::sleep(TIMEOUT / 2).await;
        }
        let idle = Instant::now();
        assert_eq!(read_to_close(&mut stream).await.as_deref(), Some(""));
        // Counted from the end of the last response, not from the connection's start.
        assert!(idle.elapsed() >= TIMEOUT / 2 - Duration::from_millis(5));
    }

    #[tokio::test]
    async fn an_answer_slower_than_the_header_timeout_is_not_cut() {
        let (addr, _stop) = listener(TIMEOUT * 3).await;
        let mut stream = TcpStream::connect(&addr).await.unwrap();
        stream
            .write_all(b"GET / HTTP/1.1\r\nhost: test\r\nconnection: close\r\n\r\n")
            .await
            .unwrap();
        let answer = read_to_close(&mut stream).await.unwrap();
        assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
    }

    #[tokio::test]
    async fn the_watch_never_expires_while_a_request_is_answered() {
        let watch = HeadWatch::new();
        watch.request();
        let waited = tokio::time::timeout(
            Duration::from_millis(200),
            watch.expired(Duration::from_millis(20)),
        )
        .await;
        assert!(waited.is_err(), "expired while answering");
        watch.answered();
        tokio::time::timeout(
            Duration::from_secs(10),
            watch.expired(Duration::from_millis(20)),
        )
        .await
        .unwrap();
    }
}
