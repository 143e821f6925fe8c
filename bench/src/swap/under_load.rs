//! Part 2 of `bench swap`: the cached product read under load while the catalog or the order
//! component is swapped (uploaded or rolled back) every `--swap-every-ms`.

use super::Args;
use super::admin::AdminApi;
use super::fixture::Fixture;
use super::nonce::with_nonce;
use crate::harness::client::{Amount, Client, WARMUP_PER_CONNECTION, closed_loop};
use crate::harness::shop_host::warm;
use crate::harness::stats::{micros_since, percentile_ms};
use crate::loadgen::Report;
use agora_cache::RedisCache;
use anyhow::bail;
use bytes::Bytes;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

/// How a phase swaps its component.
#[derive(Clone, Copy)]
enum SwapBy {
    /// `PUT /admin/components/{name}` with the other version's bytes: validated, then switched.
    Upload,
    /// `POST /admin/components/{name}/rollback`: the previous version, kept loaded, switched
    /// back in without any validation.
    Rollback,
}

/// One phase of the product read, its rounds pooled.
pub(super) struct Phase {
    /// The component swapped during it, if any, and how.
    swapped: Option<(&'static str, SwapBy)>,
    pub(super) report: Report,
    /// p99 of each round, ms.
    round_p99_ms: Vec<f64>,
    /// Request sent → 200 of every swap made during it, µs, sorted.
    put_us: Vec<u32>,
}

pub(super) async fn under_swaps(
    args: &Args,
    addr: &str,
    admin: &AdminApi,
    fixture: &Fixture,
    originals: [(&'static str, Bytes); 2],
    nonce_digests: &mut Vec<String>,
) -> anyhow::Result<Vec<Phase>> {
    let mut client = Client::connect(addr).await?;
    let path = format!("/api/products/{}", fixture.product);
    let key = format!("agora:catalog:product:{}", fixture.product);
    let cache = RedisCache::new(&args.backends.redis_url)?;

    // Two versions of each swapped component, both in the compile cache: a nonce version
    // compiled now, and the original; the original serves when a phase starts.
    let mut admin_client = admin.connect().await?;
    let mut pairs = Vec::new();
    for (name, original) in originals {
        let nonce = with_nonce(&original);
        eprintln!("xtask: compiling a second version of {name} for the swaps under load");
        nonce_digests.push(
            admin
                .put(&mut admin_client, name, nonce.clone())
                .await?
                .digest,
        );
        admin.put(&mut admin_client, name, original.clone()).await?;
        pairs.push((name, [nonce, original]));
    }

    let mut phases: Vec<Phase> = [
        None,
        Some(("catalog", SwapBy::Upload)),
        Some(("order", SwapBy::Upload)),
        Some(("catalog", SwapBy::Rollback)),
    ]
    .into_iter()
    .map(|swapped| Phase {
        swapped,
        report: Report {
            ok: 0,
            errors: 0,
            window: Duration::ZERO,
            latencies_us: Vec::new(),
        },
        round_p99_ms: Vec::new(),
        put_us: Vec::new(),
    })
    .collect();
    let rounds = args.rounds.max(1);
    let connections = args.connections.max(1);
    let every = Duration::from_millis(args.swap_every_ms.max(1));
    for round in 1..=rounds {
        for phase in &mut phases {
            // A fresh entry (60 s TTL) before each run: the run cannot outlive it.
            warm(&mut client, &path, &cache, &key).await?;
            let warmup = Amount::Requests(WARMUP_PER_CONNECTION * connections as u64);
            let warmed = closed_loop(addr, &path, connections, warmup, true).await?;
            if warmed.errors > 0 {
                bail!(
                    "{} requests of the warm-up failed (no swaps yet)",
                    warmed.errors
                );
            }
            eprintln!(
                "xtask: round {round}/{rounds}: {} ({connections} connections, {} s)",
                phase.label(args),
                args.seconds
            );
            let stop = Arc::new(AtomicBool::new(false));
            let swapper = phase.swapped.and_then(|(name, by)| {
                let (_, versions) = pairs.iter().find(|(n, _)| *n == name)?;
                Some(tokio::spawn(swap_back_and_forth(
                    admin.clone(),
                    name,
                    versions.clone(),
                    by,
                    every,
                    stop.clone(),
                )))
            });
            let load = Amount::For(Duration::from_secs(args.seconds));
            let report = closed_loop(addr, &path, connections, load, true).await;
            stop.store(true, Ordering::Relaxed);
            let put_us = match swapper {
                Some(swapper) => swapper.await??,
                None => Vec::new(),
            };
            let report = report?;
            eprintln!(
                "        {:.0} req/s, p50 {:.3} ms, p99 {:.3} ms, failed {}, {} swaps",
                report.rps(),
                report.percentile_ms(0.5),
                report.percentile_ms(0.99),
                report.errors,
                put_us.len()
            );
            phase.round_p99_ms.push(report.percentile_ms(0.99));
            phase.put_us.extend(put_us);
            phase.report.ok += report.ok;
            phase.report.errors += report.errors;
            phase.report.window += report.window;
            phase.report.latencies_us.extend(report.latencies_us);
        }
    }
    for phase in &mut phases {
        phase.report.latencies_us.sort_unstable();
        phase.put_us.sort_unstable();
    }
    Ok(phases)
}

impl Phase {
    fn label(&self, args: &Args) -> String {
        let every = args.swap_every_ms;
        match self.swapped {
            None => "no swaps".to_owned(),
            Some((name, SwapBy::Upload)) => format!("{name} swapped every {every} ms (PUT)"),
            Some((name, SwapBy::Rollback)) => {
                format!("{name} rolled back and forth every {every} ms (POST …/rollback)")
            }
        }
    }
}

/// Until `stop`: every `every` (or as soon as the previous swap is done, when it took longer)
/// makes the other of `versions` serve (`versions[1]` serves at the start and `versions[0]`
/// is the previous version): by uploading it, which must be a compile-cache hit, or by a
/// rollback. Ends with `versions[1]` serving again; returns the swaps' request → 200 times, µs.
async fn swap_back_and_forth(
    admin: AdminApi,
    name: &'static str,
    versions: [Bytes; 2],
    by: SwapBy,
    every: Duration,
    stop: Arc<AtomicBool>,
) -> anyhow::Result<Vec<u32>> {
    let mut client = admin.connect().await?;
    let started = Instant::now();
    let mut put_us = Vec::new();
    let mut next = 0;
    loop {
        let at = started + every * (put_us.len() as u32 + 1);
        tokio::time::sleep_until(at.into()).await;
        if stop.load(Ordering::Relaxed) {
            break;
        }
        let sent = Instant::now();
        match by {
            SwapBy::Upload => {
                let installed = admin.put(&mut client, name, versions[next].clone()).await?;
                if installed.compiled {
                    bail!("{name}: a swap under load compiled; both versions should be cached");
                }
            }
            SwapBy::Rollback => admin.rollback(&mut client, name).await?,
        }
        put_us.push(micros_since(sent));
        next = 1 - next;
    }
    if next == 1 {
        match by {
            SwapBy::Upload => drop(admin.put(&mut client, name, versions[1].clone()).await?),
            SwapBy::Rollback => admin.rollback(&mut client, name).await?,
        }
    }
    Ok(put_us)
}

pub(super) fn print_phases(args: &Args, phases: &[Phase]) {
    let rounds = args.rounds.max(1);
    println!(
        "GET /api/products/{{id}}, cache hit; {} connections; {rounds} rounds × {} s per phase, \
         phases alternating, rounds pooled; swaps: PUT of the other of two versions in the \
         compile cache, or a rollback to the previous version, every {} ms",
        args.connections.max(1),
        args.seconds,
        args.swap_every_ms
    );
    println!();
    println!(
        "| phase | swaps | swap request → 200 ms (median / max) | requests | req/s | p50 ms | p99 ms | \
         p99.9 ms | max ms | failed | p99 ÷ no swaps | p99 per round ms |"
    );
    println!("|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---|");
    let base = phases
        .first()
        .map_or(f64::NAN, |p| p.report.percentile_ms(0.99));
    for phase in phases {
        let report = &phase.report;
        let puts = if phase.put_us.is_empty() {
            "—".to_owned()
        } else {
            format!(
                "{:.1} / {:.1}",
                percentile_ms(&phase.put_us, 0.5),
                percentile_ms(&phase.put_us, 1.0)
            )
        };
        let per_round: Vec<String> = phase
            .round_p99_ms
            .iter()
            .map(|p| format!("{p:.2}"))
            .collect();
        println!(
            "| {} | {} | {puts} | {} | {:.0} | {:.3} | {:.3} | {:.3} | {:.3} | {} | {:.2} | {} |",
            phase.label(args),
            phase.put_us.len(),
            report.ok + report.errors,
            report.rps(),
            report.percentile_ms(0.5),
            report.percentile_ms(0.99),
            report.percentile_ms(0.999),
            report.percentile_ms(1.0),
            report.errors,
            report.percentile_ms(0.99) / base,
            per_round.join(", ")
        );
    }
}
