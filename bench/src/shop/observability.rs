//! `bench shop --observability-cost`: what observability costs the shop — the cached product
//! read and the order burst on a host exporting nothing, one scraped every second and one
//! tracing every request and event over OTLP.

use super::orders::{burst_orders, listen_for_paid};
use super::{Args, SHOP};
use crate::harness::client::{Amount, Client, WARMUP_PER_CONNECTION, closed_loop};
use crate::harness::process::{
    Host, free_port, otlp_sink, scrape_every_second, spawn_and_read_addr,
};
use crate::harness::shop_host::{create_product, host_command, shop_manifest, warm};
use crate::harness::stats::median_of;
use agora_cache::RedisCache;
use anyhow::bail;
use std::path::Path;

/// How a host of [`observability_cost`] runs.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Observed {
    Nothing,
    Scraped,
    Traced,
}

impl Observed {
    fn label(self) -> &'static str {
        match self {
            Observed::Nothing => "nothing exported (metrics counted, no listener)",
            Observed::Scraped => "/metrics scraped every second",
            Observed::Traced => "every request and event traced (OTLP/HTTP, 100%)",
        }
    }
}

/// The shop served three ways, alternating for `--rounds` rounds: the product read (req/s)
/// and the order burst (orders/s placed, paid/s) of each, medians, and their ratios to the
/// host exporting nothing.
pub(super) fn observability_cost(
    args: &Args,
    work: &Path,
    client: &tokio::runtime::Runtime,
) -> anyhow::Result<()> {
    let (manifest, auth) = shop_manifest(work, &SHOP)?;
    let sink = otlp_sink()?;
    let modes = [Observed::Nothing, Observed::Scraped, Observed::Traced];
    let mut results: Vec<Vec<(f64, f64, f64)>> = vec![Vec::new(); modes.len()];
    let rounds = args.rounds.max(1);
    for round in 1..=rounds {
        for (index, mode) in modes.iter().enumerate() {
            eprintln!("xtask: round {round}/{rounds}: {}", mode.label());
            let (mut command, signer) =
                host_command(&args.backends, &manifest, work, "data", auth.clone())?;
            let metrics_port = free_port()?;
            match mode {
                Observed::Nothing => {}
                Observed::Scraped => {
                    command.args(["--metrics-listen", &format!("127.0.0.1:{metrics_port}")]);
                }
                Observed::Traced => {
                    command
                        .env("OTEL_EXPORTER_OTLP_ENDPOINT", &sink)
                        .env("OTEL_TRACES_SAMPLER", "always_on");
                }
            }
            let (child, addr) = spawn_and_read_addr(&mut command)?;
            let mut host = Host(Some(child));
            if *mode == Observed::Scraped {
                scrape_every_second(format!("127.0.0.1:{metrics_port}"));
            }
            let outcome = client.block_on(async {
                let tag = uuid::Uuid::new_v4().simple().to_string()[..10].to_owned();
                let admin = signer.token(&["USER", "ADMIN"])?;
                let mut connection = Client::connect(&addr).await?;
                let id =
                    create_product(&mut connection, &admin, &format!("bench-{tag}-read"), 1000)
                        .await?;
                let path = format!("/api/products/{id}");
                let key = format!("agora:catalog:product:{id}");
                let cache = RedisCache::new(&args.backends.redis_url)?;
                warm(&mut connection, &path, &cache, &key).await?;
                let warmup = Amount::Requests(WARMUP_PER_CONNECTION * args.connections as u64);
                closed_loop(&addr, &path, args.connections, warmup, true).await?;
                let read = closed_loop(
                    &addr,
                    &path,
                    args.connections,
                    Amount::Requests(args.requests),
                    true,
                )
                .await?;
                // A new connection: the host closes one idle for its keep-alive timeout
                // (15 s), which a long read outlasts.
                let mut connection = Client::connect(&addr).await?;
                let concurrency = args.order_concurrency.max(1);
                let mut products = Vec::new();
                for index in 0..concurrency {
                    let sku = format!("bench-{tag}-order-{index}");
                    products
                        .push(create_product(&mut connection, &admin, &sku, 1_000_000_000).await?);
                }
                let events = listen_for_paid(&args.backends.nats_url).await?;
                let burst = burst_orders(
                    args,
                    std::slice::from_ref(&addr),
                    &signer,
                    products,
                    &events,
                )
                .await?;
                anyhow::Ok((read, burst))
            });
            host.stop();
            let (read, burst) = outcome?;
            let placed = burst.post_us.len() as f64 / burst.post_window.as_secs_f64();
            let paid = burst.paid_us.len() as f64 / burst.paid_window.as_secs_f64();
            eprintln!(
                "        read {:.0} req/s; orders {placed:.1}/s placed, {paid:.1}/s paid; failed {}",
                read.rps(),
                burst.failed
            );
            if burst.failed > 0 || read.errors > 0 {
                bail!(
                    "{}: {} orders failed, {} read errors",
                    mode.label(),
                    burst.failed,
                    read.errors
                );
            }
            results[index].push((read.rps(), placed, paid));
        }
    }
    let medians: Vec<(f64, f64, f64)> = results
        .into_iter()
        .map(|runs| {
            let median = |pick: fn(&(f64, f64, f64)) -> f64| {
                median_of(runs.iter().map(pick)).unwrap_or_default()
            };
            (median(|r| r.0), median(|r| r.1), median(|r| r.2))
        })
        .collect();
    let base = medians[0];
    println!();
    println!(
        "the shop on PostgreSQL, Redis and NATS; cached product read: {} connections, {} \
         requests; orders: {} placed {} at a time; median of {rounds} rounds per mode, modes \
         alternating",
        args.connections, args.requests, args.orders, args.order_concurrency
    );
    println!();
    println!(
        "| host | read req/s | ÷ nothing | orders/s placed | ÷ nothing | paid/s | ÷ nothing |"
    );
    println!("|---|---:|---:|---:|---:|---:|---:|");
    for (mode, (read, placed, paid)) in modes.iter().zip(&medians) {
        println!(
            "| {} | {read:.0} | {:.3} | {placed:.1} | {:.3} | {paid:.1} | {:.3} |",
            mode.label(),
            read / base.0,
            placed / base.1,
            paid / base.2
        );
    }
    Ok(())
}
