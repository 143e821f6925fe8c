//! `cargo xtask bench`: throughput and latency of agora against its peers, measured in one run
//! with one load generator, so the ratios compare like with like.
//!
//! `bench hello` serves components/hello three ways — agora, `wasmtime serve -Scli` and a native
//! hyper handler — and prints a Markdown table for BENCHMARKS.md. Both wasm servers run in both
//! isolation modes: a fresh instance per request, and instances reused for up to `--reuse`
//! requests (agora's `[component.instances] reuse`, wasmtime's `--max-instance-reuse-count`).
//! One more row serves the same answer written on wasi:http's own bindings instead of wstd
//! (components/fixtures/hello-wasi), reused, to show what the guest's binding costs a request.

use crate::harness::process::{
    agora_serve, free_port, otlp_sink, scrape_every_second, spawn_and_read_addr,
};
use crate::loadgen::{self, LoadArgs, Report};
use crate::scale::{hello_table, reusing_manifest};
use crate::{cargo, components, root, target_dir};
use anyhow::{Context as _, bail};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// The wasmtime CLI the benchmark compares against (same wasmtime as the host).
const WASMTIME_VERSION: &str = "48.0.8";

struct Server {
    label: &'static str,
    start: Box<dyn Fn() -> anyhow::Result<(Child, String)>>,
}

pub(crate) fn run(
    connections: usize,
    seconds: u64,
    rounds: usize,
    reuse: u32,
) -> anyhow::Result<()> {
    let Hellos {
        hello,
        hello_wasi,
        hello_first_look,
    } = build_hello_and_servers()?;
    let wasmtime = ensure_wasmtime_cli()?;
    let release = target_dir().join("release");
    let work = target_dir().join("bench-hello");
    let _ = std::fs::remove_dir_all(&work);
    std::fs::create_dir_all(&work)?;
    let manifest = work.join("agora.toml");
    std::fs::write(&manifest, hello_table("hello", &hello, r#"["/..."]"#, ""))?;

    let reuse_manifest = work.join("agora-reuse.toml");
    std::fs::write(&reuse_manifest, reusing_manifest(&hello, reuse))?;
    let wasi_manifest = work.join("agora-reuse-wasi.toml");
    std::fs::write(&wasi_manifest, reusing_manifest(&hello_wasi, reuse))?;
    let look_manifest = work.join("agora-first-look.toml");
    std::fs::write(
        &look_manifest,
        hello_table("hello", &hello_first_look, r#"["/..."]"#, ""),
    )?;
    let look_reuse_manifest = work.join("agora-reuse-first-look.toml");
    std::fs::write(
        &look_reuse_manifest,
        reusing_manifest(&hello_first_look, reuse),
    )?;

    let native = release.join("agora-native-hello");
    let data_dir = work.join("data");
    let sink = otlp_sink()?;
    let (manifest_scraped, data_scraped) = (manifest.clone(), data_dir.clone());
    let (manifest_traced, data_traced) = (manifest.clone(), data_dir.clone());
    let data_reusing = data_dir.clone();
    let data_wasi = data_dir.clone();
    let (data_look, data_look_reusing) = (data_dir.clone(), data_dir.clone());
    let (hello_for_reuse, wasmtime_reuse) = (hello.clone(), wasmtime.clone());
    let reuse_count = reuse.to_string();
    let hello_for_wasmtime = hello.clone();
    let hello_for_tuned = hello.clone();
    let wasmtime_tuned = wasmtime.clone();
    let servers = [
        Server {
            label: "agora serve",
            start: Box::new(move || spawn_and_read_addr(&mut agora_serve(&manifest, &data_dir))),
        },
        Server {
            label: "agora serve, /metrics scraped every second",
            start: Box::new(move || {
                let port = free_port()?;
                let started = spawn_and_read_addr(
                    agora_serve(&manifest_scraped, &data_scraped)
                        .args(["--metrics-listen", &format!("127.0.0.1:{port}")]),
                )?;
                scrape_every_second(format!("127.0.0.1:{port}"));
                Ok(started)
            }),
        },
        Server {
            label: "agora serve, every request traced (OTLP/HTTP, 100%)",
            start: Box::new(move || {
                spawn_and_read_addr(
                    agora_serve(&manifest_traced, &data_traced)
                        .env("OTEL_EXPORTER_OTLP_ENDPOINT", &sink)
                        .env("OTEL_TRACES_SAMPLER", "always_on"),
                )
            }),
        },
        Server {
            label: "wasmtime serve -Scli",
            start: Box::new(move || start_wasmtime(&wasmtime, &hello_for_wasmtime, &[])),
        },
        Server {
            label: "wasmtime serve -Scli, agora's pool tuning",
            start: Box::new(move || {
                start_wasmtime(
                    &wasmtime_tuned,
                    &hello_for_tuned,
                    &[
                        "-O",
                        "pooling-memory-keep-resident=16777216",
                        "-O",
                        "pooling-table-keep-resident=65536",
                        "-O",
                        "pooling-pagemap-scan=auto",
                    ],
                )
            }),
        },
        Server {
            label: "agora serve, instances reused ([component.instances] reuse)",
            start: Box::new(move || {
                spawn_and_read_addr(&mut agora_serve(&reuse_manifest, &data_reusing))
            }),
        },
        Server {
            label: WASI_LABEL,
            start: Box::new(move || {
                spawn_and_read_addr(&mut agora_serve(&wasi_manifest, &data_wasi))
            }),
        },
        Server {
            label: LOOK_LABEL,
            start: Box::new(move || {
                spawn_and_read_addr(&mut agora_serve(&look_manifest, &data_look))
            }),
        },
        Server {
            label: LOOK_REUSED_LABEL,
            start: Box::new(move || {
                spawn_and_read_addr(&mut agora_serve(&look_reuse_manifest, &data_look_reusing))
            }),
        },
        Server {
            label: "wasmtime serve -Scli, --max-instance-reuse-count",
            start: Box::new(move || {
                start_wasmtime(
                    &wasmtime_reuse,
                    &hello_for_reuse,
                    &["--max-instance-reuse-count", &reuse_count],
                )
            }),
        },
        Server {
            label: "native hyper",
            start: Box::new(move || spawn_and_read_addr(Command::new(&native).arg("127.0.0.1:0"))),
        },
    ];

    let mut results: Vec<Vec<(Report, u64)>> = vec![Vec::new(); servers.len()];
    for round in 1..=rounds {
        for (index, server) in servers.iter().enumerate() {
            eprintln!(
                "xtask: round {round}/{rounds}: {} ({connections} connections, {seconds} s)",
                server.label
            );
            let (mut child, addr) = (server.start)()?;
            let outcome = measure_server(&mut child, &addr, connections, seconds);
            let _ = child.kill();
            let _ = child.wait();
            let (report, rss_kib) = outcome?;
            eprintln!(
                "        {:.0} req/s, p50 {:.3} ms, p99 {:.3} ms, errors {}, RSS {} MiB",
                report.rps(),
                report.percentile_ms(0.5),
                report.percentile_ms(0.99),
                report.errors,
                rss_kib / 1024
            );
            results[index].push((report, rss_kib));
        }
    }

    let medians: Vec<(Report, u64)> = results
        .into_iter()
        .map(|mut runs| {
            runs.sort_by(|a, b| a.0.rps().total_cmp(&b.0.rps()));
            runs.swap_remove(runs.len() / 2)
        })
        .collect();
    let agora_rps = medians[0].0.rps();
    println!();
    println!("| server | req/s | p50 ms | p99 ms | errors | RSS MiB | agora ÷ this (req/s) |");
    println!("|---|---:|---:|---:|---:|---:|---:|");
    for (server, (report, rss_kib)) in servers.iter().zip(&medians) {
        println!(
            "| {} | {:.0} | {:.3} | {:.3} | {} | {} | {:.2} |",
            server.label,
            report.rps(),
            report.percentile_ms(0.5),
            report.percentile_ms(0.99),
            report.errors,
            rss_kib / 1024,
            agora_rps / report.rps()
        );
    }
    println!();
    println!(
        "median of {rounds} rounds; {connections} connections; {seconds} s measured after 2 s warm-up; \
         fresh instance per request unless the row says reused"
    );
    println!(
        "observability cost: scraped metrics keep {:.1}% of agora's req/s, full tracing {:.1}% \
         (metrics are always counted; the first row counts them too)",
        100.0 * medians[1].0.rps() / agora_rps,
        100.0 * medians[2].0.rps() / agora_rps
    );
    let rps = |label: &str| {
        servers
            .iter()
            .zip(&medians)
            .find(|(server, _)| server.label == label)
            .map_or(f64::NAN, |(_, (report, _))| report.rps())
    };
    let mut csv = String::from("server,rps,p50_ms,p99_ms,errors,rss_mib\n");
    for (server, (report, rss_kib)) in servers.iter().zip(&medians) {
        let row = [
            server.label.to_owned(),
            format!("{:.0}", report.rps()),
            format!("{:.3}", report.percentile_ms(0.5)),
            format!("{:.3}", report.percentile_ms(0.99)),
            report.errors.to_string(),
            (rss_kib / 1024).to_string(),
        ];
        crate::scale::csv_row(&mut csv, &row);
    }
    let out = crate::scale::results_dir();
    std::fs::create_dir_all(&out)?;
    std::fs::write(out.join("hello.csv"), csv)?;
    crate::scale::plot(&out);
    let native = rps("native hyper");
    let reusing = rps("agora serve, instances reused ([component.instances] reuse)");
    println!(
        "side by side, same mode: fresh instances agora ÷ wasmtime serve {:.2}; instances reused \
         (up to {reuse} requests each) agora ÷ wasmtime serve {:.2}; agora ÷ native hyper: fresh \
         {:.2}, reused {:.2}; reused, hello on wasi:http's bindings instead of wstd ÷ native \
         {:.2}; hello answered at agora's first look ÷ native: fresh {:.2}, reused {:.2}",
        agora_rps / rps("wasmtime serve -Scli"),
        reusing / rps("wasmtime serve -Scli, --max-instance-reuse-count"),
        agora_rps / native,
        reusing / native,
        rps(WASI_LABEL) / native,
        rps(LOOK_LABEL) / native,
        rps(LOOK_REUSED_LABEL) / native
    );
    Ok(())
}

/// The row of hello written on wasi:http's own bindings (components/fixtures/hello-wasi).
const WASI_LABEL: &str = "agora serve, instances reused, hello on wasi:http's bindings (no wstd)";

/// The rows of hello answered at agora's first look (components/fixtures/hello-first-look).
const LOOK_LABEL: &str =
    "agora serve, hello at agora's first look (one call, no wasi:http resource)";
const LOOK_REUSED_LABEL: &str = "agora serve, instances reused, hello at agora's first look";

/// The three builds of the hello answer the bench serves.
pub(crate) struct Hellos {
    /// components/hello (wstd).
    pub(crate) hello: PathBuf,
    /// components/fixtures/hello-wasi (wasi:http's bindings).
    pub(crate) hello_wasi: PathBuf,
    /// components/fixtures/hello-first-look (agora's first look, wasi:http behind it).
    pub(crate) hello_first_look: PathBuf,
}

/// Builds the components (returning both hellos' files), agora and the native baseline
/// (release).
pub(crate) fn build_hello_and_servers() -> anyhow::Result<Hellos> {
    let built = components::build_all()?;
    let find = |name: &str| {
        built
            .iter()
            .find(|c| c.name == name)
            .map(|c| c.path.clone())
            .with_context(|| format!("no component named {name} was built"))
    };
    let hellos = Hellos {
        hello: find("hello")?,
        hello_wasi: find("fixture-hello-wasi")?,
        hello_first_look: find("fixture-hello-first-look")?,
    };
    eprintln!("xtask: building agora and the native baseline (release)");
    crate::run(cargo().args([
        "build",
        "--release",
        "--package",
        "agora-host",
        "--package",
        "agora-native-hello",
    ]))?;
    Ok(hellos)
}

/// Starts `wasmtime serve -Scli` on a free port with `options`.
fn start_wasmtime(
    wasmtime: &Path,
    component: &Path,
    options: &[&str],
) -> anyhow::Result<(Child, String)> {
    let addr = format!("127.0.0.1:{}", free_port()?);
    let child = Command::new(wasmtime)
        .args(["serve", "-Scli", "--addr", &addr])
        .args(options)
        .arg(component)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .context("cannot start wasmtime serve")?;
    Ok((child, addr))
}

/// Waits until `addr` answers, loads it, and returns the report and the server's RSS.
fn measure_server(
    child: &mut Child,
    addr: &str,
    connections: usize,
    seconds: u64,
) -> anyhow::Result<(Report, u64)> {
    wait_until_serving(child, addr)?;
    let report = loadgen::measure(&LoadArgs {
        url: format!("http://{addr}/"),
        connections,
        seconds,
        warmup: 2,
        rate: None,
    })?;
    let rss_kib = rss_kib(child.id()).unwrap_or(0);
    if report.ok == 0 {
        bail!("no successful request to {addr}");
    }
    Ok((report, rss_kib))
}

fn wait_until_serving(child: &mut Child, addr: &str) -> anyhow::Result<()> {
    let deadline = Instant::now() + Duration::from_secs(60);
    while Instant::now() < deadline {
        if let Some(status) = child.try_wait()? {
            bail!("server exited early ({status})");
        }
        if std::net::TcpStream::connect(addr).is_ok() {
            return Ok(());
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    bail!("{addr} did not start serving within 60 s")
}

/// The resident memory of process `pid`, in KiB.
pub(crate) fn rss_kib(pid: u32) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
}

/// The wasmtime CLI, installed from crates.io on first use under the build folder.
fn ensure_wasmtime_cli() -> anyhow::Result<PathBuf> {
    let tools = target_dir().join("tools");
    let binary = tools.join("bin/wasmtime");
    if installed_version(&binary).is_some_and(|v| v.contains(WASMTIME_VERSION)) {
        return Ok(binary);
    }
    eprintln!(
        "xtask: installing wasmtime-cli {WASMTIME_VERSION} with cargo install (first use; takes a while)"
    );
    crate::run(
        cargo()
            .args(["install", "wasmtime-cli", "--locked", "--version"])
            .arg(WASMTIME_VERSION)
            .arg("--root")
            .arg(&tools)
            .env("CARGO_TARGET_DIR", target_dir().join("tools-build"))
            .current_dir(root()),
    )?;
    if !binary.exists() {
        bail!("cargo install did not produce {}", binary.display());
    }
    Ok(binary)
}

fn installed_version(binary: &Path) -> Option<String> {
    let output = Command::new(binary).arg("--version").output().ok()?;
    Some(String::from_utf8_lossy(&output.stdout).into_owned())
}
