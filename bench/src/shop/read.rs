//! Part 1 of `bench shop`: the cached product read, agora against a native hyper handler in
//! this process doing the same work (one Redis GET of the catalog's cache entry).

use super::Args;
use crate::harness::client::{Amount, Client, WARMUP_PER_CONNECTION, closed_loop};
use crate::harness::shop_host::{Signer, create_product, warm};
use crate::harness::stats::median;
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
        println!("| server | per request | req/s | p50 ms | p99 ms | errors |");
        println!("|---|---|---:|---:|---:|---:|");
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
        let mut rows = vec![(main_label.as_str(), main_work, &self.agora)];
        if let Some(reused) = &self.reused {
            rows.push((
                "agora serve (release), reused instances",
                &reuse_work,
                reused,
            ));
        }
        rows.push((
            "native hyper",
            "one Redis GET (agora-cache client, kept connection), bytes answered",
            &self.native,
        ));
        for (label, work, report) in rows {
            println!(
                "| {label} | {work} | {:.0} | {:.3} | {:.3} | {} |",
                report.rps(),
                report.percentile_ms(0.5),
                report.percentile_ms(0.99),
                report.errors
            );
        }
        let ratio = |label: &str, agora: &Report| {
            println!(
                "| **{label} ÷ native** | | **{:.2}** | {:.2} | {:.2} | |",
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
        );
        if let Some(reused) = &self.reused {
            ratio("agora, reused", reused);
        }
    }
}

pub(super) async fn product_read(
    args: &Args,
    addr: &str,
    reuse_addr: Option<&str>,
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
    let mut sides = vec![("agora", addr)];
    if let Some(reuse_addr) = reuse_addr {
        sides.push(("agora reusing instances", reuse_addr));
    }
    sides.push(("native", native_addr.as_str()));
    let mut reports: Vec<Vec<Report>> = vec![Vec::new(); sides.len()];
    for round in 1..=rounds {
        for (index, (side, target)) in sides.iter().enumerate() {
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
            let report = closed_loop(target, &path, args.connections, measured, expect_hit).await?;
            eprintln!(
                "        {:.0} req/s, p50 {:.3} ms, p99 {:.3} ms, errors {}",
                report.rps(),
                report.percentile_ms(0.5),
                report.percentile_ms(0.99),
                report.errors
            );
            reports[index].push(report);
        }
    }
    let rps = |side: usize, round: usize| reports[side][round].rps();
    let native_side = sides.len() - 1;
    let rounds = (0..rounds)
        .map(|round| {
            let reused = if reuse_addr.is_some() {
                rps(1, round)
            } else {
                0.0
            };
            (rps(0, round), reused, rps(native_side, round))
        })
        .collect();
    let native = median(reports.pop().unwrap_or_default());
    let reused = reuse_addr
        .is_some()
        .then(|| median(reports.pop().unwrap_or_default()));
    Ok(ReadResult {
        agora: median(reports.pop().unwrap_or_default()),
        reused,
        native,
        body_bytes,
        same_body,
        rounds,
    })
}

/// The native baseline: a hyper server on `server`'s workers answering
/// `GET /api/products/{id}` with the bytes of the catalog's cache entry.
pub(crate) async fn start_native(
    server: &tokio::runtime::Runtime,
    cache: Arc<RedisCache>,
) -> anyhow::Result<String> {
    let listener = server
        .spawn(async { tokio::net::TcpListener::bind("127.0.0.1:0").await })
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
