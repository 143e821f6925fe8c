//! Part 1 of `bench shop`: the cached product read, agora against a native hyper handler in
//! this process doing the same work (one Redis GET of the catalog's cache entry).

use super::Args;
use crate::harness::backends::{BackendUrls, SERVER_THREADS};
use crate::harness::client::{Amount, Client, WARMUP_PER_CONNECTION, closed_loop};
use crate::harness::cpu::CpuOf;
use crate::harness::shop_host::{Signer, create_product, warm};
use crate::harness::stats::{median, median_of};
use crate::loadgen::Report;
use agora_cache::{CacheBackend as _, RedisCache};
use anyhow::bail;
use bytes::Bytes;
use http::{Method, StatusCode, header};
use http_body_util::Full;
use hyper_util::rt::TokioIo;
use std::sync::Arc;

pub(super) struct ReadResult {
    agora: Report,
    /// The catalog reusing its instances (`--reuse`), when measured.
    reused: Option<Report>,
    native: Report,
    body_bytes: usize,
    same_body: bool,
    /// Per round: agora, agora reusing (0 when not measured), native req/s.
    rounds: Vec<(f64, f64, f64)>,
    /// Median over the rounds of each side's CPU time per request, in µs (the host's process;
    /// the native side's server threads, not the load generator's): agora, agora reusing,
    /// native. `None` where `/proc` cannot tell.
    cpu_us: [Option<f64>; 3],
}

impl ReadResult {
    pub(super) fn print(&self, args: &Args) {
        let rounds: Vec<String> = self
            .rounds
            .iter()
            .map(|(a, r, n)| match self.reused {
                Some(_) => format!("{a:.0} / {r:.0} / {n:.0}"),
                None => format!("{a:.0} / {n:.0}"),
            })
            .collect();
        let sides = match self.reused {
            Some(_) => "agora / agora reusing / native",
            None => "agora / native",
        };
        println!(
            "GET /api/products/{{id}}, cache hit ({} B of JSON; native answers the same bytes: {}); \
             {} connections, {} requests per side and round, median of {} rounds \
             ({sides} req/s per round: {})",
            self.body_bytes,
            if self.same_body { "yes" } else { "NO" },
            args.connections,
            args.requests,
            args.rounds,
            rounds.join(", ")
        );
        println!();
        println!("| server | per request | req/s | p50 ms | p99 ms | errors | CPU µs/request |");
        println!("|---|---|---:|---:|---:|---:|---:|");
        let reuse_work = format!(
            "edge checks, catalog instance reused (up to {} requests each), cache.get → Redis GET, cached bytes answered",
            args.reuse
        );
        let (main_label, main_work) = if args.shop_reuse > 1 {
            (
                format!(
                    "agora serve (release), the shop reusing instances (up to {})",
                    args.shop_reuse
                ),
                "edge checks, catalog instance reused, cache.get → Redis GET, cached bytes answered",
            )
        } else {
            (
                "agora serve (release), fresh instance per request".to_owned(),
                "edge checks, fresh catalog instance, cache.get → Redis GET, cached bytes answered",
            )
        };
        let [agora_cpu, reused_cpu, native_cpu] = self.cpu_us;
        let mut rows = vec![(main_label.as_str(), main_work, &self.agora, agora_cpu)];
        if let Some(reused) = &self.reused {
            rows.push((
                "agora serve (release), reused instances",
                &reuse_work,
                reused,
                reused_cpu,
            ));
        }
        rows.push((
            "native hyper",
            "one Redis GET (agora-cache client, kept connection), bytes answered",
            &self.native,
            native_cpu,
        ));
        for (label, work, report, cpu) in rows {
            println!(
                "| {label} | {work} | {:.0} | {:.3} | {:.3} | {} | {} |",
                report.rps(),
                report.percentile_ms(0.5),
                report.percentile_ms(0.99),
                report.errors,
                cpu_text(cpu),
            );
        }
        // CPU per request: native ÷ agora, so that above 1 is agora ahead, like the req/s one.
        let ratio = |label: &str, agora: &Report, cpu: Option<f64>| {
            let cpu = match (cpu, native_cpu) {
                (Some(agora), Some(native)) if agora > 0.0 => format!("{:.2}", native / agora),
                _ => "—".to_owned(),
            };
            println!(
                "| **{label} ÷ native** | | **{:.2}** | {:.2} | {:.2} | | {cpu} (native ÷ agora) |",
                agora.rps() / self.native.rps(),
                agora.percentile_ms(0.5) / self.native.percentile_ms(0.5),
                agora.percentile_ms(0.99) / self.native.percentile_ms(0.99),
            );
        };
        // The main host's row says its mode: fresh, or the shop's own reuse (`--shop-reuse`).
        ratio(
            if args.shop_reuse > 1 {
                "agora, the shop reusing"
            } else {
                "agora, fresh"
            },
            &self.agora,
            agora_cpu,
        );
        if let Some(reused) = &self.reused {
            ratio("agora, reused", reused, reused_cpu);
        }
    }
}

/// The read on the host at `addr` (process `pid`), on the catalog-only host `reuse` (address and
/// process) when given, and on the native baseline; each side's CPU time comes from `/proc`.
pub(super) async fn product_read(
    args: &Args,
    (addr, pid): (&str, u32),
    reuse: Option<(&str, u32)>,
    signer: &Signer,
    tag: &str,
    server: &tokio::runtime::Runtime,
) -> anyhow::Result<ReadResult> {
    let admin = signer.token(&["USER", "ADMIN"])?;
    let mut client = Client::connect(addr).await?;
    let id = create_product(&mut client, &admin, &format!("bench-{tag}-read"), 1000).await?;
    let path = format!("/api/products/{id}");
    let key = format!("agora:catalog:product:{id}");
    let cache = Arc::new(RedisCache::new(&args.backends.redis_url)?);

    let native_addr = start_native(server, cache.clone()).await?;
    let (body_bytes, same_body) = {
        let agora_body = warm(&mut client, &path, &cache, &key).await?;
        let mut native = Client::connect(&native_addr).await?;
        let answer = native.send(Method::GET, &path, None, None).await?;
        if answer.status != StatusCode::OK {
            bail!("the native handler answered {}", answer.describe());
        }
        (agora_body.len(), agora_body == answer.body)
    };

    let rounds = args.rounds.max(1);
    let mut sides = vec![("agora", addr, CpuOf::Process(pid))];
    if let Some((reuse_addr, reuse_pid)) = reuse {
        sides.push((
            "agora reusing instances",
            reuse_addr,
            CpuOf::Process(reuse_pid),
        ));
    }
    sides.push((
        "native",
        native_addr.as_str(),
        CpuOf::OwnThreads(SERVER_THREADS),
    ));
    let mut reports: Vec<Vec<Report>> = vec![Vec::new(); sides.len()];
    let mut cpu_us: Vec<Vec<f64>> = vec![Vec::new(); sides.len()];
    for round in 1..=rounds {
        for (index, (side, target, cpu_of)) in sides.iter().enumerate() {
            let expect_hit = *side != "native";
            // A fresh entry (60 s TTL) before each run: the run cannot outlive it. On a new
            // connection: the host closes one idle for its keep-alive timeout (15 s), which a
            // long run outlasts.
            client = Client::connect(if expect_hit { target } else { addr }).await?;
            warm(&mut client, &path, &cache, &key).await?;
            eprintln!(
                "xtask: round {round}/{rounds}: {side} ({} connections, {} requests)",
                args.connections, args.requests
            );
            let warmup = WARMUP_PER_CONNECTION * args.connections as u64;
            let (warmup, measured) = (Amount::Requests(warmup), Amount::Requests(args.requests));
            closed_loop(target, &path, args.connections, warmup, expect_hit).await?;
            let cpu_before = cpu_of.seconds();
            let report = closed_loop(target, &path, args.connections, measured, expect_hit).await?;
            let cpu = cpu_before
                .zip(cpu_of.seconds())
                .map(|(before, after)| (after - before) * 1e6 / report.ok.max(1) as f64);
            eprintln!(
                "        {:.0} req/s, p50 {:.3} ms, p99 {:.3} ms, errors {}, CPU {} µs/request",
                report.rps(),
                report.percentile_ms(0.5),
                report.percentile_ms(0.99),
                report.errors,
                cpu_text(cpu),
            );
            reports[index].push(report);
            cpu_us[index].extend(cpu);
        }
    }
    let rps = |side: usize, round: usize| reports[side][round].rps();
    let native_side = sides.len() - 1;
    let rounds = (0..rounds)
        .map(|round| {
            let reused = if reuse.is_some() { rps(1, round) } else { 0.0 };
            (rps(0, round), reused, rps(native_side, round))
        })
        .collect();
    let native = median(reports.pop().unwrap_or_default());
    let reused = reuse
        .is_some()
        .then(|| median(reports.pop().unwrap_or_default()));
    let cpu_median = |side: usize| median_of(cpu_us[side].iter().copied());
    let cpu_us = [
        cpu_median(0),
        if reuse.is_some() { cpu_median(1) } else { None },
        cpu_median(native_side),
    ];
    Ok(ReadResult {
        agora: median(reports.pop().unwrap_or_default()),
        reused,
        native,
        body_bytes,
        same_body,
        rounds,
        cpu_us,
    })
}

/// A CPU time per request as the tables show it (`—`: unknown).
fn cpu_text(cpu_us: Option<f64>) -> String {
    cpu_us.map_or_else(|| "—".to_owned(), |us| format!("{us:.1}"))
}

/// The native baseline: a hyper server on `server`'s workers answering
/// `GET /api/products/{id}` with the bytes of the catalog's cache entry.
pub(crate) async fn start_native(
    server: &tokio::runtime::Runtime,
    cache: Arc<RedisCache>,
) -> anyhow::Result<String> {
    start_native_on(server, cache, "127.0.0.1:0").await
}

/// `agora-bench native-read`: [`start_native`] on `listen`, on a runtime like the bench's,
/// until the process is stopped; prints the address it serves on.
pub(crate) fn serve_native(listen: &str, backends: &BackendUrls) -> anyhow::Result<()> {
    let server = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    let cache = Arc::new(RedisCache::new(&backends.redis_url)?);
    let addr = server.block_on(start_native_on(&server, cache, listen))?;
    println!(
        "native read on http://{addr}/api/products/{{id}} (Redis {})",
        backends.redis_url
    );
    server.block_on(tokio::signal::ctrl_c())?;
    Ok(())
}

async fn start_native_on(
    server: &tokio::runtime::Runtime,
    cache: Arc<RedisCache>,
    listen: &str,
) -> anyhow::Result<String> {
    let listen = listen.to_owned();
    let listener = server
        .spawn(async move { tokio::net::TcpListener::bind(listen).await })
        .await??;
    let addr = listener.local_addr()?.to_string();
    server.spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            let _ = stream.set_nodelay(true);
            let cache = cache.clone();
            tokio::spawn(async move {
                let service = hyper::service::service_fn(move |request| {
                    let cache = cache.clone();
                    async move { Ok::<_, std::convert::Infallible>(native_get(&cache, request).await) }
                });
                let _ = hyper::server::conn::http1::Builder::new()
                    .keep_alive(true)
                    .serve_connection(TokioIo::new(stream), service)
                    .await;
            });
        }
    });
    Ok(addr)
}

async fn native_get(
    cache: &RedisCache,
    request: http::Request<hyper::body::Incoming>,
) -> http::Response<Full<Bytes>> {
    let respond = |status: StatusCode, body: Bytes| {
        let mut response = http::Response::new(Full::new(body));
        *response.status_mut() = status;
        response.headers_mut().insert(
            header::CONTENT_TYPE,
            header::HeaderValue::from_static("application/json"),
        );
        response
    };
    let Some(id) = request.uri().path().strip_prefix("/api/products/") else {
        return respond(StatusCode::NOT_FOUND, Bytes::from_static(b"{}"));
    };
    match cache.get(&format!("agora:catalog:product:{id}")).await {
        Ok(Some(json)) => respond(StatusCode::OK, Bytes::from(json)),
        Ok(None) => respond(StatusCode::NOT_FOUND, Bytes::from_static(b"{}")),
        Err(_) => respond(StatusCode::SERVICE_UNAVAILABLE, Bytes::from_static(b"{}")),
    }
}
