//! The HTTP side of the benches that talk to the shop: [`Client`], one keep-alive HTTP/1.1
//! connection sending any request, and [`closed_loop`], GETs of one path over many of them.

use crate::harness::stats::micros_since;
use crate::loadgen::Report;
use anyhow::{Context as _, bail};
use bytes::Bytes;
use http::{HeaderMap, Method, StatusCode, header};
use http_body_util::{BodyExt as _, Full};
use hyper::client::conn::http1::SendRequest;
use hyper_util::rt::TokioIo;
use serde_json::Value as Json;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

/// Requests per connection of a warm-up before each measured read run.
pub(crate) const WARMUP_PER_CONNECTION: u64 = 50;
/// Any single request taking longer than this fails the benchmark.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(30);

/// One keep-alive HTTP/1.1 connection.
pub(crate) struct Client {
    sender: SendRequest<Full<Bytes>>,
    authority: String,
    /// How long one exchange may take ([`REQUEST_TIMEOUT`] unless changed).
    timeout: Duration,
}

pub(crate) struct Answer {
    pub(crate) status: StatusCode,
    pub(crate) headers: HeaderMap,
    pub(crate) body: Bytes,
}

impl Answer {
    pub(crate) fn json(&self) -> anyhow::Result<Json> {
        serde_json::from_slice(&self.body).with_context(|| {
            format!(
                "not JSON ({}): {}",
                self.status,
                String::from_utf8_lossy(&self.body)
            )
        })
    }

    pub(crate) fn describe(&self) -> String {
        format!("{} {}", self.status, String::from_utf8_lossy(&self.body))
    }
}

impl Client {
    pub(crate) async fn connect(addr: &str) -> anyhow::Result<Client> {
        let stream = tokio::net::TcpStream::connect(addr)
            .await
            .with_context(|| format!("cannot connect to {addr}"))?;
        stream.set_nodelay(true)?;
        let (sender, connection) =
            hyper::client::conn::http1::handshake(TokioIo::new(stream)).await?;
        tokio::spawn(connection);
        Ok(Client {
            sender,
            authority: addr.to_owned(),
            timeout: REQUEST_TIMEOUT,
        })
    }

    /// The same connection, allowing `timeout` for one exchange.
    pub(crate) fn with_timeout(self, timeout: Duration) -> Client {
        Client { timeout, ..self }
    }

    pub(crate) async fn send(
        &mut self,
        method: Method,
        path: &str,
        token: Option<&str>,
        body: Option<&Json>,
    ) -> anyhow::Result<Answer> {
        let body = match body {
            Some(body) => Some(("application/json", Bytes::from(serde_json::to_vec(body)?))),
            None => None,
        };
        self.send_bytes(method, path, token, body).await
    }

    /// `send` with a body of any type: `(content type, bytes)`.
    pub(crate) async fn send_bytes(
        &mut self,
        method: Method,
        path: &str,
        token: Option<&str>,
        body: Option<(&str, Bytes)>,
    ) -> anyhow::Result<Answer> {
        let mut request = http::Request::builder()
            .method(method.clone())
            .uri(path)
            .header(header::HOST, &self.authority);
        if let Some(token) = token {
            request = request.header(header::AUTHORIZATION, format!("Bearer {token}"));
        }
        let body = match body {
            Some((content_type, bytes)) => {
                request = request.header(header::CONTENT_TYPE, content_type);
                bytes
            }
            None => Bytes::new(),
        };
        let request = request.body(Full::new(body))?;
        let exchange = async {
            self.sender.ready().await.context("the connection closed")?;
            let response = self.sender.send_request(request).await?;
            let (parts, body) = response.into_parts();
            let body = body.collect().await?.to_bytes();
            anyhow::Ok(Answer {
                status: parts.status,
                headers: parts.headers,
                body,
            })
        };
        let timeout = self.timeout;
        tokio::time::timeout(timeout, exchange)
            .await
            .with_context(|| format!("{method} {path}: no answer within {timeout:?}"))?
            .with_context(|| format!("{method} {path}"))
    }
}

/// How much load a closed loop sends.
#[derive(Clone, Copy)]
pub(crate) enum Amount {
    /// This many requests in all.
    Requests(u64),
    /// Requests until this long after the first one was sent.
    For(Duration),
}

/// GETs of `path` over `connections` keep-alive connections, each sending the next as soon as
/// the previous answer is read, `amount` of them; the clock runs from the first request
/// (connections are opened before) to the last answer. With `expect_hit`, an answer without
/// `x-cache: hit` counts as an error.
pub(crate) async fn closed_loop(
    addr: &str,
    path: &str,
    connections: usize,
    amount: Amount,
    expect_hit: bool,
) -> anyhow::Result<Report> {
    let mut clients = Vec::new();
    for _ in 0..connections.max(1) {
        clients.push(Client::connect(addr).await?);
    }
    let (requests, deadline) = match amount {
        Amount::Requests(requests) => (requests, None),
        Amount::For(duration) => (u64::MAX, Some(Instant::now() + duration)),
    };
    let remaining = Arc::new(AtomicU64::new(requests));
    let started = Instant::now();
    let mut tasks = tokio::task::JoinSet::new();
    for mut client in clients {
        let remaining = remaining.clone();
        let path = path.to_owned();
        tasks.spawn(async move {
            let (mut ok, mut errors, mut latencies) = (0u64, 0u64, Vec::new());
            let mut first_error = None;
            while deadline.is_none_or(|deadline| Instant::now() < deadline)
                && remaining
                    .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |n| n.checked_sub(1))
                    .is_ok()
            {
                let sent = Instant::now();
                let answer = client.send(Method::GET, &path, None, None).await;
                let elapsed = micros_since(sent);
                let good = match &answer {
                    Ok(answer) => {
                        answer.status == StatusCode::OK
                            && (!expect_hit
                                || answer.headers.get("x-cache").is_some_and(|v| v == "hit"))
                    }
                    Err(_) => false,
                };
                if good {
                    ok += 1;
                    latencies.push(elapsed);
                } else {
                    errors += 1;
                    first_error.get_or_insert_with(|| match &answer {
                        Ok(answer) => format!(
                            "{} x-cache {:?}",
                            answer.describe(),
                            answer.headers.get("x-cache")
                        ),
                        Err(err) => format!("{err:#}"),
                    });
                    if answer.is_err() {
                        // The connection is gone; open another one.
                        match Client::connect(&client.authority).await {
                            Ok(fresh) => client = fresh,
                            Err(_) => break,
                        }
                    }
                }
            }
            (ok, errors, latencies, first_error)
        });
    }
    let mut report = Report {
        ok: 0,
        errors: 0,
        window: Duration::ZERO,
        latencies_us: Vec::new(),
    };
    let mut first_error = None;
    while let Some(result) = tasks.join_next().await {
        let (ok, errors, latencies, error) = result?;
        report.ok += ok;
        report.errors += errors;
        report.latencies_us.extend(latencies);
        first_error = first_error.or(error);
    }
    report.window = started.elapsed();
    report.latencies_us.sort_unstable();
    if let Some(error) = first_error {
        eprintln!(
            "xtask: {} of {} requests to {addr} failed; the first: {error}",
            report.errors,
            report.ok + report.errors
        );
    }
    if report.ok == 0 {
        bail!("no successful request to {addr}{path}");
    }
    Ok(report)
}
