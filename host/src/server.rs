//! The HTTP listener: accepts connections, serves HTTP/1.1 with keep-alive, and drains on
//! shutdown.
//!
//! Shutdown order: stop accepting, let every in-flight request finish (idle keep-alive
//! connections are closed at once), and give up after the drain timeout.

use crate::edge::Caller;
use crate::triggers::http::HttpTrigger;
use http::Request;
use http_body_util::BodyExt as _;
use hyper::body::Incoming;
use hyper::server::conn::http1;
use hyper_util::rt::TokioIo;
use hyper_util::server::graceful::GracefulShutdown;
use std::convert::Infallible;
use std::future::Future;
use std::sync::Arc;
use std::time::Duration;
use tokio::net::TcpListener;

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
    shutdown: impl Future<Output = ()>,
    drain_timeout: Duration,
) -> Drained {
    let graceful = GracefulShutdown::new();
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
        let connection = http1::Builder::new()
            .keep_alive(true)
            .serve_connection(TokioIo::new(stream), service);
        let connection = graceful.watch(connection);
        tokio::spawn(async move {
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
