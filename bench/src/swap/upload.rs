//! Part 1 of `bench swap`: upload → serving, each of the shop's components swapped to new
//! bytes (compiled) and back to its original ones (from the compile cache).

use super::Args;
use super::admin::AdminApi;
use super::fixture::{Fixture, PROBES, Probe};
use super::nonce::with_nonce;
use crate::harness::client::Client;
use crate::harness::stats::{micros_since, percentile_ms};
use anyhow::bail;
use bytes::Bytes;
use http::StatusCode;
use std::time::Instant;

/// Times of one kind of swap of one component, sorted.
#[derive(Default)]
struct Samples {
    /// PUT sent → its 200, µs.
    put_us: Vec<u32>,
    /// The host's `validation_ms`.
    validation_ms: Vec<u32>,
    /// PUT sent → the probe's 200, µs.
    first_answer_us: Vec<u32>,
    /// The probe alone, sent just before the PUT (the version serving before), µs.
    before_us: Vec<u32>,
}

impl Samples {
    fn cells(&self) -> String {
        let ms = |v: &[u32], scale: f64| {
            let at = |q| percentile_ms(v, q) * scale;
            format!("{:.1} / {:.1}", at(0.5), at(1.0))
        };
        format!(
            "{} | {} | {} | {}",
            ms(&self.put_us, 1.0),
            ms(&self.validation_ms, 1000.0),
            ms(&self.first_answer_us, 1.0),
            ms(&self.before_us, 1.0)
        )
    }
}

pub(super) struct ComponentSwaps {
    probe: &'static Probe,
    wasm_bytes: usize,
    compiled: Samples,
    cached: Samples,
}

pub(super) async fn upload_to_serving(
    args: &Args,
    addr: &str,
    admin: &AdminApi,
    fixture: &Fixture,
    wasm: &[Bytes],
    nonce_digests: &mut Vec<String>,
) -> anyhow::Result<Vec<ComponentSwaps>> {
    let mut results = Vec::new();
    let mut admin_client = admin.connect().await?;
    let repeats = args.repeats.max(1);
    for (probe, original) in PROBES.iter().zip(wasm) {
        let name = probe.component;
        let mut app = Client::connect(addr).await?;
        ask(&mut app, probe, fixture, "before any swap").await?;
        let serving = admin.current(&mut admin_client, name).await?;
        let mut swaps = ComponentSwaps {
            probe,
            wasm_bytes: original.len(),
            compiled: Samples::default(),
            cached: Samples::default(),
        };
        for repeat in 1..=repeats {
            let kinds = [
                ("compiled", with_nonce(original), &mut swaps.compiled),
                ("from cache", original.clone(), &mut swaps.cached),
            ];
            for (kind, bytes, samples) in kinds {
                let compiled = kind == "compiled";
                let before_us = ask(&mut app, probe, fixture, "before the swap").await?;
                let started = Instant::now();
                let installed = admin.put(&mut admin_client, name, bytes).await?;
                let put_us = micros_since(started);
                ask(&mut app, probe, fixture, "the first request after the swap").await?;
                let first_answer_us = micros_since(started);
                if installed.compiled != compiled {
                    bail!(
                        "{name}: a {kind} version was installed with \"compiled\": {} \
                         (the compile cache did not behave as expected)",
                        installed.compiled
                    );
                }
                if compiled {
                    nonce_digests.push(installed.digest.clone());
                } else if installed.digest != serving {
                    bail!(
                        "{name}: the original bytes installed as {}, not {serving}",
                        installed.digest
                    );
                }
                let current = admin.current(&mut admin_client, name).await?;
                if current != installed.digest {
                    bail!(
                        "{name}: the PUT installed {} but the admin API says {current} serves",
                        installed.digest
                    );
                }
                eprintln!(
                    "xtask: {name} {repeat}/{repeats}, {kind}: PUT → 200 in {:.1} ms \
                     (validation {} ms), first answer {:.1} ms after the PUT was sent \
                     (the probe alone, before: {:.1} ms)",
                    f64::from(put_us) / 1000.0,
                    installed.validation_ms,
                    f64::from(first_answer_us) / 1000.0,
                    f64::from(before_us) / 1000.0
                );
                samples.put_us.push(put_us);
                samples
                    .validation_ms
                    .push(u32::try_from(installed.validation_ms).unwrap_or(u32::MAX));
                samples.first_answer_us.push(first_answer_us);
                samples.before_us.push(before_us);
            }
        }
        for samples in [&mut swaps.compiled, &mut swaps.cached] {
            samples.put_us.sort_unstable();
            samples.validation_ms.sort_unstable();
            samples.first_answer_us.sort_unstable();
            samples.before_us.sort_unstable();
        }
        results.push(swaps);
    }
    Ok(results)
}

/// Sends `probe` on `client`; it must answer 200. Returns how long it took, µs.
async fn ask(
    client: &mut Client,
    probe: &Probe,
    fixture: &Fixture,
    when: &str,
) -> anyhow::Result<u32> {
    let path = probe.path.replace("{order}", &fixture.order);
    let body = probe
        .body
        .map(|body| ("application/json", Bytes::from_static(body.as_bytes())));
    let token = fixture.token(probe.as_who);
    let sent = Instant::now();
    let answer = client
        .send_bytes(probe.method.clone(), &path, token, body)
        .await?;
    let took = micros_since(sent);
    if answer.status != StatusCode::OK {
        bail!(
            "{}'s probe {} {path}, {when}: {}",
            probe.component,
            probe.method,
            answer.describe()
        );
    }
    Ok(took)
}

pub(super) fn print_swaps(args: &Args, swaps: &[ComponentSwaps]) {
    println!(
        "upload → serving: PUT /admin/components/{{name}} with the .wasm; \"first answer\" is \
         the component's probe request, sent on a kept connection as soon as the PUT answered \
         (the last column: the same probe just before the PUT, on the version serving then); \
         {} swaps of each kind per component, median / max (ms)",
        args.repeats.max(1)
    );
    println!();
    println!(
        "| component | .wasm KiB | probe | version | PUT → 200 | validation_ms (host) | \
         PUT → first answer | the probe alone, before the PUT |"
    );
    println!("|---|---:|---|---|---:|---:|---:|---:|");
    for swap in swaps {
        let probe = swap.probe;
        println!(
            "| {} | {:.0} | `{} {}` | compiled | {} |",
            probe.component,
            swap.wasm_bytes as f64 / 1024.0,
            probe.method,
            probe.path,
            swap.compiled.cells()
        );
        println!("| | | | from cache | {} |", swap.cached.cells());
    }
}
