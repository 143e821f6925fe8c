//! `cargo xtask bench`: throughput and latency of agora against its peers, measured in one run
//! with one load generator, so the ratios compare like with like.
//!
//! `bench hello` serves components/hello three ways — agora, `wasmtime serve -Scli` (both with a
//! fresh instance per request) and a native hyper handler — and prints a Markdown table for
//! BENCHMARKS.md.

use crate::loadgen::{self, LoadArgs, Report};
use crate::{cargo, components, root, target_dir};
use anyhow::{Context as _, bail};
use std::io::{BufRead as _, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// The wasmtime CLI the benchmark compares against (same wasmtime as the host).
const WASMTIME_VERSION: &str = "48.0.8";

#[derive(clap::Subcommand)]
pub enum Which {
    /// agora vs `wasmtime serve -Scli` vs native hyper on the hello component.
    Hello {
        /// Concurrent connections of the load generator.
        #[arg(long, default_value_t = 32)]
        connections: usize,
        /// Seconds measured per server (after a 2 s warm-up).
        #[arg(long, default_value_t = 10)]
        seconds: u64,
        /// Measure each server this many times, alternating, and keep the median run.
        #[arg(long, default_value_t = 3)]
        rounds: usize,
    },
    /// Per-call cost of each capability from a guest vs the same call made natively.
    Capabilities {
        #[command(flatten)]
        backends: BackendUrls,
    },
}

/// The production backends a benchmark runs on (flag, environment, or the local default).
#[derive(clap::Args, Debug, Clone)]
pub struct BackendUrls {
    /// Redis (cache, rate limits, revocations).
    #[arg(
        long,
        env = "AGORA_REDIS_URL",
        default_value = "redis://127.0.0.1:6379"
    )]
    pub redis_url: String,
    /// PostgreSQL (sql).
    #[arg(
        long,
        env = "AGORA_DATABASE_URL",
        default_value = "postgres://postgres@127.0.0.1:5432/test"
    )]
    pub database_url: String,
    /// NATS with JetStream (messaging).
    #[arg(long, env = "AGORA_NATS_URL", default_value = "nats://127.0.0.1:4222")]
    pub nats_url: String,
}

pub fn run_bench(which: Which) -> anyhow::Result<()> {
    match which {
        Which::Capabilities { backends } => {
            crate::bench_capabilities::run(&crate::bench_capabilities::Urls {
                redis: backends.redis_url,
                database: backends.database_url,
                nats: backends.nats_url,
            })
        }
        Which::Hello {
            connections,
            seconds,
            rounds,
        } => hello(connections, seconds, rounds.max(1)),
    }
}

struct Server {
    label: &'static str,
    start: Box<dyn Fn() -> anyhow::Result<(Child, String)>>,
}

fn hello(connections: usize, seconds: u64, rounds: usize) -> anyhow::Result<()> {
    let hello = components::build_and_find("hello")?;
    eprintln!("xtask: building agora and the native baseline (release)");
    crate::run(cargo().args([
        "build",
        "--release",
        "--package",
        "agora-host",
        "--package",
        "agora-native-hello",
    ]))?;
    let wasmtime = ensure_wasmtime_cli()?;
    let release = target_dir().join("release");
    let work = target_dir().join("bench-hello");
    let _ = std::fs::remove_dir_all(&work);
    std::fs::create_dir_all(&work)?;
    let manifest = work.join("agora.toml");
    std::fs::write(
        &manifest,
        format!(
            "[[component]]\nname = \"hello\"\nsource = {:?}\nroutes = [\"/...\"]\n\
             [component.limits]\nconcurrency = 1000\n",
            hello.display().to_string()
        ),
    )?;

    let agora = release.join("agora");
    let native = release.join("agora-native-hello");
    let data_dir = work.join("data");
    let sink = otlp_sink()?;
    let (agora_scraped, manifest_scraped, data_scraped) =
        (agora.clone(), manifest.clone(), data_dir.clone());
    let (agora_traced, manifest_traced, data_traced) =
        (agora.clone(), manifest.clone(), data_dir.clone());
    let hello_for_wasmtime = hello.clone();
    let hello_for_tuned = hello.clone();
    let wasmtime_tuned = wasmtime.clone();
    let servers = [
        Server {
            label: "agora serve",
            start: Box::new(move || {
                spawn_and_read_addr(
                    Command::new(&agora)
                        .args(["serve", "--listen", "127.0.0.1:0", "--manifest"])
                        .arg(&manifest)
                        .arg("--data-dir")
                        .arg(&data_dir)
                        .env("RUST_LOG", "warn"),
                )
            }),
        },
        Server {
            label: "agora serve, /metrics scraped every second",
            start: Box::new(move || {
                let port = free_port()?;
                let started = spawn_and_read_addr(
                    Command::new(&agora_scraped)
                        .args(["serve", "--listen", "127.0.0.1:0", "--manifest"])
                        .arg(&manifest_scraped)
                        .arg("--data-dir")
                        .arg(&data_scraped)
                        .args(["--metrics-listen", &format!("127.0.0.1:{port}")])
                        .env("RUST_LOG", "warn"),
                )?;
                scrape_every_second(format!("127.0.0.1:{port}"));
                Ok(started)
            }),
        },
        Server {
            label: "agora serve, every request traced (OTLP/HTTP, 100%)",
            start: Box::new(move || {
                spawn_and_read_addr(
                    Command::new(&agora_traced)
                        .args(["serve", "--listen", "127.0.0.1:0", "--manifest"])
                        .arg(&manifest_traced)
                        .arg("--data-dir")
                        .arg(&data_traced)
                        .env("RUST_LOG", "warn")
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
                    ],
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
         fresh instance per request on both wasm servers"
    );
    println!(
        "observability cost: scraped metrics keep {:.1}% of agora's req/s, full tracing {:.1}% \
         (metrics are always counted; the first row counts them too)",
        100.0 * medians[1].0.rps() / agora_rps,
        100.0 * medians[2].0.rps() / agora_rps
    );
    Ok(())
}

/// Scrapes `GET /metrics` on `addr` every second until the server stops answering.
pub(crate) fn scrape_every_second(addr: String) {
    std::thread::spawn(move || {
        use std::io::{Read as _, Write as _};
        // The listener comes up with the public one; give it a moment.
        std::thread::sleep(Duration::from_millis(500));
        loop {
            let Ok(mut stream) = std::net::TcpStream::connect(&addr) else {
                return;
            };
            let request =
                format!("GET /metrics HTTP/1.1\r\nhost: {addr}\r\nconnection: close\r\n\r\n");
            if stream.write_all(request.as_bytes()).is_err() {
                return;
            }
            let mut scrape = Vec::new();
            let _ = stream.read_to_end(&mut scrape);
            std::thread::sleep(Duration::from_secs(1));
        }
    });
}

/// An OTLP/HTTP receiver that accepts and drops every export (the bench measures the cost of
/// exporting, not a collector); returns its endpoint.
pub(crate) fn otlp_sink() -> anyhow::Result<String> {
    let listener = std::net::TcpListener::bind("127.0.0.1:0")?;
    let endpoint = format!("http://{}", listener.local_addr()?);
    std::thread::spawn(move || {
        for stream in listener.incoming().map_while(Result::ok) {
            std::thread::spawn(move || drain_exports(stream));
        }
    });
    Ok(endpoint)
}

/// Answers 200 to each request of one keep-alive connection, reading its body.
fn drain_exports(stream: std::net::TcpStream) {
    use std::io::{Read as _, Write as _};
    let Ok(read_half) = stream.try_clone() else {
        return;
    };
    let mut reader = BufReader::new(read_half);
    let mut writer = stream;
    loop {
        let mut length = 0usize;
        let mut line = String::new();
        loop {
            line.clear();
            if reader.read_line(&mut line).unwrap_or(0) == 0 {
                return;
            }
            let header = line.trim_end();
            if header.is_empty() {
                break;
            }
            if let Some((name, value)) = header.split_once(':')
                && name.eq_ignore_ascii_case("content-length")
            {
                length = value.trim().parse().unwrap_or(0);
            }
        }
        let mut body = vec![0; length];
        if reader.read_exact(&mut body).is_err() {
            return;
        }
        let answer = "HTTP/1.1 200 OK\r\ncontent-length: 0\r\n\r\n";
        if writer.write_all(answer.as_bytes()).is_err() {
            return;
        }
    }
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

/// `agora serve` of the release build on `manifest`, on a free port, its data in `data_dir`,
/// logging warnings only.
pub fn agora_serve(manifest: &Path, data_dir: &Path) -> Command {
    let mut command = Command::new(target_dir().join("release/agora"));
    command
        .args(["serve", "--listen", "127.0.0.1:0", "--manifest"])
        .arg(manifest)
        .arg("--data-dir")
        .arg(data_dir)
        .env("RUST_LOG", "warn");
    command
}

/// Starts `command` and reads `... http://ADDR` from the first line of its stdout.
pub fn spawn_and_read_addr(command: &mut Command) -> anyhow::Result<(Child, String)> {
    let mut child = command
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .with_context(|| format!("cannot start {command:?}"))?;
    let stdout = child.stdout.take().context("no stdout")?;
    let mut line = String::new();
    let mut reader = BufReader::new(stdout);
    reader.read_line(&mut line)?;
    // The rest of its output is read and dropped: a closed pipe must not stop it.
    std::thread::spawn(move || std::io::copy(&mut reader, &mut std::io::sink()));
    let Some(addr) = line
        .trim()
        .rsplit("http://")
        .next()
        .filter(|_| line.contains("http://"))
    else {
        let _ = child.kill();
        bail!("{command:?} did not print its address (got {line:?})");
    };
    Ok((child, addr.trim_end_matches('/').to_owned()))
}

pub(crate) fn free_port() -> anyhow::Result<u16> {
    Ok(std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port())
}

fn rss_kib(pid: u32) -> Option<u64> {
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
