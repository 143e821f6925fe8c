//! A closed-loop HTTP/1.1 load generator: N keep-alive connections on one thread, each sending
//! the next GET as soon as the previous answer's body is read (like `wrk -t1 -cN`).
//!
//! The same generator measures every server of a benchmark, so their figures compare like with
//! like. Only 200 answers count as successes; anything else is counted as an error.

use anyhow::{Context as _, bail};
use bytes::Bytes;
use http_body_util::{BodyExt, Empty};
use std::time::{Duration, Instant};

/// Options of `cargo xtask load`.
#[derive(clap::Args, Debug, Clone)]
pub struct LoadArgs {
    /// The URL to GET (http:// only).
    pub url: String,
    /// Concurrent connections.
    #[arg(long, default_value_t = 32)]
    pub connections: usize,
    /// Seconds of measurement.
    #[arg(long, default_value_t = 10)]
    pub seconds: u64,
    /// Seconds of load before measuring.
    #[arg(long, default_value_t = 2)]
    pub warmup: u64,
}

/// What one run measured.
#[derive(Debug, Clone)]
pub struct Report {
    /// Successful requests in the measured window.
    pub ok: u64,
    /// Failed requests (non-200 or transport errors) in the measured window.
    pub errors: u64,
    /// Length of the measured window.
    pub window: Duration,
    /// Latency of each successful request, sorted, in microseconds.
    pub latencies_us: Vec<u32>,
}

impl Report {
    /// Successful requests per second.
    pub fn rps(&self) -> f64 {
        self.ok as f64 / self.window.as_secs_f64()
    }

    /// The latency below which `q` (0..=1) of the requests finished, in milliseconds.
    pub fn percentile_ms(&self, q: f64) -> f64 {
        if self.latencies_us.is_empty() {
            return f64::NAN;
        }
        let index = ((self.latencies_us.len() - 1) as f64 * q).round() as usize;
        f64::from(self.latencies_us[index]) / 1000.0
    }
}

pub fn run_cli(args: LoadArgs) -> anyhow::Result<()> {
    let report = measure(&args)?;
    println!(
        "{:.0} req/s, p50 {:.3} ms, p99 {:.3} ms, {} ok, {} errors",
        report.rps(),
        report.percentile_ms(0.50),
        report.percentile_ms(0.99),
        report.ok,
        report.errors
    );
    Ok(())
}

/// Runs the load described by `args` and returns what it measured.
pub fn measure(args: &LoadArgs) -> anyhow::Result<Report> {
    let uri: http::Uri = args.url.parse().context("invalid URL")?;
    if uri.scheme_str() != Some("http") {
        bail!("only http:// URLs are supported");
    }
    let authority = uri.authority().context("URL without host")?.clone();
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    runtime.block_on(async move {
        let start = Instant::now();
        let measure_from = start + Duration::from_secs(args.warmup);
        let stop_at = measure_from + Duration::from_secs(args.seconds);
        let mut workers = Vec::new();
        for _ in 0..args.connections.max(1) {
            let uri = uri.clone();
            let authority = authority.clone();
            workers.push(tokio::spawn(async move {
                connection_loop(uri, authority, measure_from, stop_at).await
            }));
        }
        let mut report = Report {
            ok: 0,
            errors: 0,
            window: Duration::from_secs(args.seconds),
            latencies_us: Vec::new(),
        };
        for worker in workers {
            let (ok, errors, latencies) = worker.await?;
            report.ok += ok;
            report.errors += errors;
            report.latencies_us.extend(latencies);
        }
        report.latencies_us.sort_unstable();
        Ok(report)
    })
}

async fn connection_loop(
    uri: http::Uri,
    authority: http::uri::Authority,
    measure_from: Instant,
    stop_at: Instant,
) -> (u64, u64, Vec<u32>) {
    let (mut ok, mut errors, mut latencies) = (0u64, 0u64, Vec::new());
    'reconnect: while Instant::now() < stop_at {
        let Ok(stream) = tokio::net::TcpStream::connect(authority.as_str()).await else {
            errors += u64::from(Instant::now() >= measure_from);
            tokio::time::sleep(Duration::from_millis(10)).await;
            continue;
        };
        let _ = stream.set_nodelay(true);
        let Ok((mut sender, connection)) =
            hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(stream)).await
        else {
            errors += u64::from(Instant::now() >= measure_from);
            continue;
        };
        tokio::spawn(connection);
        loop {
            let sent = Instant::now();
            if sent >= stop_at {
                break 'reconnect;
            }
            let request = http::Request::get(uri.clone())
                .header(http::header::HOST, authority.as_str())
                .body(Empty::<Bytes>::new());
            let Ok(request) = request else {
                errors += 1;
                break 'reconnect;
            };
            let outcome = match sender.send_request(request).await {
                Ok(response) => {
                    let status = response.status();
                    let body = response.into_body().collect().await;
                    body.is_ok() && status == http::StatusCode::OK
                }
                Err(_) => false,
            };
            let done = Instant::now();
            if sent >= measure_from && done <= stop_at {
                if outcome {
                    ok += 1;
                    let micros = done.duration_since(sent).as_micros();
                    latencies.push(u32::try_from(micros).unwrap_or(u32::MAX));
                } else {
                    errors += 1;
                }
            }
            if !outcome && sender.ready().await.is_err() {
                continue 'reconnect;
            }
        }
    }
    (ok, errors, latencies)
}
