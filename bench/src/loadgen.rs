//! An HTTP/1.1 load generator: N keep-alive connections on one thread.
//!
//! - Closed loop (the default): each connection sends the next GET as soon as the previous
//!   answer's body is read (like `wrk -t1 -cN`).
//! - Open loop (`--rate R`): requests are due at fixed times, R per second in all, whether or
//!   not earlier ones were answered; the next free connection sends each at its time. A
//!   latency counts from when the request was due, not from when a connection was free to
//!   send it, so a server that falls behind shows it in the latencies (no coordinated
//!   omission); a request sent late only by the generator's timer counts from when it was sent.
//!   Its req/s is the offered rate whenever nothing fails; the latencies say whether the server
//!   kept up. Every request due in the measured window is counted, answered after it or not;
//!   the connections bound how many are in flight at once.
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
    /// Requests per second in all, sent at fixed times (an open loop); without it, a closed
    /// loop.
    #[arg(long, value_parser = parse_rate)]
    pub rate: Option<f64>,
}

/// A rate of requests per second: a finite number above 0.
pub(crate) fn parse_rate(text: &str) -> Result<f64, String> {
    match text.parse::<f64>() {
        Ok(rate) if rate.is_finite() && rate > 0.0 => Ok(rate),
        _ => Err(format!(
            "`{text}` is not a rate above 0 (requests per second)"
        )),
    }
}

/// Waits for `due`, the time a request of an open loop is due, and returns where its latency
/// starts: when the timer fired, if `due` was still ahead (the timer's millisecond resolution
/// is the generator's delay, not the server's); `due` itself, if it passed while every
/// connection was busy (that wait is the server's).
pub(crate) async fn start_at(due: Instant) -> Instant {
    if due > Instant::now() {
        tokio::time::sleep_until(due.into()).await;
        Instant::now()
    } else {
        due
    }
}

/// When each request of an open loop is due: request `n` (from 0) at `start + n / rate`.
struct Schedule {
    start: Instant,
    rate: f64,
    next: std::cell::Cell<u64>,
}

impl Schedule {
    /// The due time of the next request not yet taken by a connection.
    fn take(&self) -> Instant {
        let n = self.next.get();
        self.next.set(n + 1);
        self.start + Duration::from_secs_f64(n as f64 / self.rate)
    }
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
    let local = tokio::task::LocalSet::new();
    local.block_on(&runtime, async move {
        let start = Instant::now();
        let measure_from = start + Duration::from_secs(args.warmup);
        let stop_at = measure_from + Duration::from_secs(args.seconds);
        let schedule = args.rate.map(|rate| {
            std::rc::Rc::new(Schedule {
                start,
                rate,
                next: std::cell::Cell::new(0),
            })
        });
        let mut workers = Vec::new();
        for _ in 0..args.connections.max(1) {
            let uri = uri.clone();
            let authority = authority.clone();
            let schedule = schedule.clone();
            workers.push(tokio::task::spawn_local(async move {
                connection_loop(uri, authority, measure_from, stop_at, schedule).await
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
    schedule: Option<std::rc::Rc<Schedule>>,
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
            // `due`: when the request counts as sent, for the window. `sent`: where its
            // latency starts ([`start_at`]). Closed loop: both now.
            let (due, sent) = match &schedule {
                None => {
                    let now = Instant::now();
                    (now, now)
                }
                Some(schedule) => {
                    let due = schedule.take();
                    if due >= stop_at {
                        break 'reconnect;
                    }
                    (due, start_at(due).await)
                }
            };
            if due >= stop_at {
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
            // A closed loop counts what finished in the window; an open loop, every request due
            // in it.
            let counted = due >= measure_from && (schedule.is_some() || done <= stop_at);
            if counted {
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

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;
    use std::sync::atomic::{AtomicU64, Ordering};

    /// A server on a free port of this machine answering 200 to every request, counting them.
    fn server() -> (String, Arc<AtomicU64>) {
        let served = Arc::new(AtomicU64::new(0));
        let counter = served.clone();
        let (sender, receiver) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .expect("a runtime");
            runtime.block_on(async move {
                let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
                    .await
                    .expect("a free port");
                sender
                    .send(listener.local_addr().expect("its address"))
                    .expect("the test waits");
                loop {
                    let Ok((stream, _)) = listener.accept().await else {
                        continue;
                    };
                    let counter = counter.clone();
                    tokio::spawn(async move {
                        let service = hyper::service::service_fn(move |_request| {
                            counter.fetch_add(1, Ordering::Relaxed);
                            async {
                                Ok::<_, std::convert::Infallible>(http::Response::new(
                                    http_body_util::Full::new(Bytes::from_static(b"ok")),
                                ))
                            }
                        });
                        let _ = hyper::server::conn::http1::Builder::new()
                            .serve_connection(hyper_util::rt::TokioIo::new(stream), service)
                            .await;
                    });
                }
            });
        });
        let addr = receiver.recv().expect("the server's address");
        (format!("http://{addr}/"), served)
    }

    #[test]
    fn an_open_loop_sends_the_rate_times_the_seconds_and_counts_each_due_request() {
        let (url, served) = server();
        let report = measure(&LoadArgs {
            url,
            connections: 4,
            seconds: 1,
            warmup: 1,
            rate: Some(200.0),
        })
        .expect("a run");
        // 200 requests due in the second of warm-up and 200 in the measured second: the count
        // follows from the schedule, however fast the server answers.
        assert_eq!((report.ok, report.errors), (200, 0));
        assert_eq!(report.latencies_us.len(), 200);
        assert_eq!(served.load(Ordering::Relaxed), 400);
    }

    #[test]
    fn a_closed_loop_counts_what_finished_in_the_window() {
        let (url, served) = server();
        let report = measure(&LoadArgs {
            url,
            connections: 2,
            seconds: 1,
            warmup: 0,
            rate: None,
        })
        .expect("a run");
        assert!(report.ok > 0 && report.errors == 0, "{report:?}");
        assert_eq!(report.latencies_us.len() as u64, report.ok);
        assert!(served.load(Ordering::Relaxed) >= report.ok);
    }

    #[test]
    fn a_rate_must_be_a_number_above_zero() {
        assert_eq!(parse_rate("200"), Ok(200.0));
        assert_eq!(parse_rate("0.5"), Ok(0.5));
        for bad in ["0", "-3", "NaN", "inf", "fast"] {
            assert!(parse_rate(bad).is_err(), "{bad}");
        }
    }
}
