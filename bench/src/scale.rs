//! `cargo xtask bench scale`: how agora's cost grows — curves, not single points.
//!
//! 1. **Connections**, 1 → 1 000 keep-alive connections on components/hello: req/s and p99 of
//!    agora with a fresh instance per request, agora reusing instances (`--reuse`), and the
//!    native hyper handler, each point measured in turn in one run.
//!    The same curve for the cached product read (`GET /api/products/{id}`, a Redis hit): the
//!    catalog fresh and reusing instances, on two hosts on the production backends, and native
//!    hyper doing the same Redis GET.
//! 2. **Components loaded**, 1 → 200 copies of hello under distinct routes: the time from
//!    `agora serve` to its address (every component loaded) with an empty data folder (hello
//!    compiled once: the copies share a digest) and again with its compile cache, the resident
//!    memory once idle, and the req/s of one of them.
//! 3. **Start and memory of the whole shop** (agora.toml, embedded backends): first-ever start
//!    (empty data folder: compile, create the databases, migrate), a start with the databases
//!    but an empty compile cache, and a warm start; each to the first answered request, with
//!    the idle RSS and where the seconds went (the host's own `compiled …` / `loaded …` lines).
//!
//! Raw results go to docs/bench/*.csv; `bench/plot.py` draws them (PNG beside them) when
//! python3 has matplotlib.

use crate::harness::backends::{BackendUrls, client_and_server};
use crate::harness::client::Client;
use crate::harness::process::{Host, agora_serve, spawn_and_read_addr};
use crate::harness::shop_host::{
    create_product, host_command, shop_manifest, warm, with_reuse, with_setting,
};
use crate::loadgen::{self, LoadArgs};
use crate::{root, target_dir};
use agora_cache::RedisCache;
use anyhow::{Context as _, bail};
use std::io::{BufRead as _, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

/// Connection counts of the first curve.
const CONNECTIONS: [usize; 6] = [1, 4, 16, 64, 256, 1000];
/// Component counts of the second curve.
const COMPONENTS: [usize; 5] = [1, 10, 50, 100, 200];

/// Where the raw results (and the plots) go.
pub(crate) fn results_dir() -> PathBuf {
    root().join("docs/bench")
}

pub(crate) fn run(seconds: u64, reuse: u32, backends: &BackendUrls) -> anyhow::Result<()> {
    let hello = crate::hello::build_hello_and_servers()?.hello;
    let work = target_dir().join("bench-scale");
    let _ = std::fs::remove_dir_all(&work);
    std::fs::create_dir_all(&work)?;
    let out = results_dir();
    std::fs::create_dir_all(&out)?;
    println!("{}", crate::harness::stats::Machine::observe().line());

    let connections = connections_curve(&hello, &work, seconds, reuse)?;
    std::fs::write(out.join("scale-connections.csv"), &connections)?;
    let read = read_curve(&work, backends, seconds, reuse)?;
    std::fs::write(out.join("scale-read.csv"), &read)?;
    let components = components_curve(&hello, &work, seconds)?;
    std::fs::write(out.join("scale-components.csv"), &components)?;
    let start = shop_start(&work)?;
    std::fs::write(out.join("start.csv"), &start)?;
    plot(&out);
    Ok(())
}

/// Draws docs/bench/*.csv with bench/plot.py when python3 has matplotlib; says how otherwise.
pub(crate) fn plot(out: &Path) {
    let script = root().join("bench/plot.py");
    let status = Command::new("python3").arg(&script).arg(out).status();
    match status {
        Ok(status) if status.success() => eprintln!("xtask: plots written to {}", out.display()),
        _ => eprintln!(
            "xtask: no plots drawn (bench/plot.py needs python3 with matplotlib: \
             `python3 -m pip install matplotlib`); the CSV files are in {}",
            out.display()
        ),
    }
}

/// The cached product read against connections: the catalog fresh and reusing instances (two
/// hosts on the production backends) and native hyper doing the same Redis GET. Same rows as
/// [`connections_curve`].
fn read_curve(
    work: &Path,
    backends: &BackendUrls,
    seconds: u64,
    reuse: u32,
) -> anyhow::Result<String> {
    let (client, server) = client_and_server(backends, work)?;
    let (catalog, auth) = shop_manifest(work, &["catalog"])?;
    // As for hello: room for every connection (the shop's catalog runs 100 at once, and
    // answers 503 past that).
    with_setting(
        &catalog,
        "catalog",
        ("limits", "concurrency", 1000),
        &catalog,
    )?;
    let reusing = work.join("catalog-reuse.toml");
    with_reuse(&catalog, "catalog", reuse, &reusing)?;
    let (mut fresh_command, signer) =
        host_command(backends, &catalog, work, "data-read", auth.clone())?;
    let (mut reuse_command, _) = host_command(backends, &reusing, work, "data-read-reuse", auth)?;
    fresh_command.args(["--max-connections-per-ip", "0"]);
    reuse_command.args(["--max-connections-per-ip", "0"]);
    let (child, fresh_addr) = spawn_and_read_addr(&mut fresh_command)?;
    let mut fresh_host = Host(Some(child));
    let (child, reuse_addr) = spawn_and_read_addr(&mut reuse_command)?;
    let mut reuse_host = Host(Some(child));
    let cache = std::sync::Arc::new(RedisCache::new(&backends.redis_url)?);
    let (path, key, native_addr) = client.block_on(async {
        let admin = signer.token(&["USER", "ADMIN"])?;
        let mut http = Client::connect(&fresh_addr).await?;
        let tag = uuid::Uuid::new_v4().simple().to_string();
        let id = create_product(&mut http, &admin, &format!("scale-{}", &tag[..10]), 1000).await?;
        // A Redis client of its own, first used on the server's workers: a client first used
        // here would live on this runtime, which does not run while the load does.
        let native_cache = std::sync::Arc::new(RedisCache::new(&backends.redis_url)?);
        let native_addr = crate::shop::start_native(&server, native_cache).await?;
        anyhow::Ok((
            format!("/api/products/{id}"),
            format!("agora:catalog:product:{id}"),
            native_addr,
        ))
    })?;
    let mut csv = String::from("server,connections,rps,p50_ms,p99_ms,errors\n");
    println!();
    println!(
        "Connections (GET /api/products/{{id}}, a cache hit on Redis; {seconds} s per point after \
         1 s warm-up):"
    );
    println!();
    println!("| server | connections | req/s | p50 ms | p99 ms | errors |");
    println!("|---|---:|---:|---:|---:|---:|");
    let reuse_label = format!("agora catalog, reuse = {reuse}");
    for (label, addr) in [
        ("agora catalog, fresh instance", fresh_addr.as_str()),
        (reuse_label.as_str(), reuse_addr.as_str()),
        ("native hyper + Redis GET", native_addr.as_str()),
    ] {
        // A fresh cache entry (60 s) for each curve, made through the host measured next (or
        // the fresh one, for native): the curve is shorter than its lifetime.
        let warm_through = if label.starts_with("native") {
            fresh_addr.as_str()
        } else {
            addr
        };
        client.block_on(async {
            let mut http = Client::connect(warm_through).await?;
            warm(&mut http, &path, &cache, &key).await.map(drop)
        })?;
        curve(label, &format!("http://{addr}{path}"), seconds, &mut csv)?;
    }
    reuse_host.stop();
    fresh_host.stop();
    Ok(csv)
}

/// `name,connections,rps,p50_ms,p99_ms,errors` rows, printed as a table too.
fn connections_curve(
    hello: &Path,
    work: &Path,
    seconds: u64,
    reuse: u32,
) -> anyhow::Result<String> {
    let fresh = write_manifest(
        work,
        "fresh.toml",
        &hello_table("hello", hello, r#"["/..."]"#, ""),
    )?;
    let reusing = write_manifest(work, "reuse.toml", &reusing_manifest(hello, reuse))?;
    let native = target_dir().join("release/agora-native-hello");
    let mut csv = String::from("server,connections,rps,p50_ms,p99_ms,errors\n");
    println!();
    println!("Connections (hello, {seconds} s per point after 1 s warm-up):");
    println!();
    println!("| server | connections | req/s | p50 ms | p99 ms | errors |");
    println!("|---|---:|---:|---:|---:|---:|");
    let reuse_label = format!("agora, reuse = {reuse}");
    let servers: [(&str, Command); 3] = [
        (
            "agora, fresh instance",
            scale_serve(&fresh, &work.join("data")),
        ),
        (&reuse_label, scale_serve(&reusing, &work.join("data"))),
        ("native hyper", {
            let mut command = Command::new(&native);
            command.arg("127.0.0.1:0");
            command
        }),
    ];
    for (label, mut command) in servers {
        let (child, addr) = spawn_and_read_addr(&mut command)?;
        let mut host = Host(Some(child));
        curve(label, &format!("http://{addr}/"), seconds, &mut csv)?;
        host.stop();
    }
    Ok(csv)
}

/// Loads `url` with each of [`CONNECTIONS`] in turn: one table row and one CSV row (`label`,
/// connections, req/s, p50, p99, errors) each.
fn curve(label: &str, url: &str, seconds: u64, csv: &mut String) -> anyhow::Result<()> {
    for connections in CONNECTIONS {
        eprintln!("xtask: {label}, {connections} connections");
        let report = loadgen::measure(&LoadArgs {
            url: url.to_owned(),
            connections,
            seconds,
            warmup: 1,
            rate: None,
        })?;
        let row = [
            label.to_owned(),
            connections.to_string(),
            format!("{:.0}", report.rps()),
            format!("{:.3}", report.percentile_ms(0.5)),
            format!("{:.3}", report.percentile_ms(0.99)),
            report.errors.to_string(),
        ];
        println!("| {} |", row.join(" | "));
        csv_row(csv, &row);
    }
    Ok(())
}

/// `components,start_cold_ms,start_warm_ms,rss_idle_mib,rps_one` rows.
fn components_curve(hello: &Path, work: &Path, seconds: u64) -> anyhow::Result<String> {
    let mut csv = String::from("components,start_cold_ms,start_warm_ms,rss_idle_mib,rps_one\n");
    println!();
    println!(
        "Components loaded (copies of hello, one route each; cold: empty data folder, hello \
         compiled once; warm: from the compile cache; req/s of one copy, 32 connections, {seconds} s):"
    );
    println!();
    println!(
        "| components | start, cold (ms) | start, warm (ms) | RSS idle (MiB) | req/s of one |"
    );
    println!("|---:|---:|---:|---:|---:|");
    for count in COMPONENTS {
        let tables: String = (0..count)
            .map(|i| hello_table(&format!("h{i}"), hello, &format!(r#"["/h{i}"]"#), ""))
            .collect();
        let manifest = write_manifest(work, &format!("components-{count}.toml"), &tables)?;
        let data = work.join(format!("data-{count}"));
        let _ = std::fs::remove_dir_all(&data);
        let (mut cold_host, _, cold) = start_and_answer(&manifest, &data, "/h0")?;
        cold_host.stop();
        let (mut host, addr, warm) = start_and_answer(&manifest, &data, "/h0")?;
        std::thread::sleep(Duration::from_secs(1));
        let rss = host
            .0
            .as_ref()
            .and_then(|c| crate::hello::rss_kib(c.id()))
            .unwrap_or(0);
        let report = loadgen::measure(&LoadArgs {
            url: format!("http://{addr}/h0"),
            connections: 32,
            seconds,
            warmup: 1,
            rate: None,
        })?;
        host.stop();
        let row = [
            count.to_string(),
            cold.as_millis().to_string(),
            warm.as_millis().to_string(),
            format!("{:.1}", rss as f64 / 1024.0),
            format!("{:.0}", report.rps()),
        ];
        println!("| {} |", row.join(" | "));
        csv_row(&mut csv, &row);
    }
    Ok(csv)
}

/// `start,ms_to_listening,ms_to_first_answer,rss_idle_mib,compile_ms,cache_load_ms,components`
/// rows for the whole shop on its embedded backends.
fn shop_start(work: &Path) -> anyhow::Result<String> {
    let manifest = root().join("agora.toml");
    let data = work.join("shop-data");
    let _ = std::fs::remove_dir_all(&data);
    let mut csv = String::from(
        "start,ms_to_listening,ms_to_first_answer,rss_idle_mib,compile_ms,cache_load_ms,components\n",
    );
    println!();
    println!(
        "Start of the whole shop (agora.toml, embedded backends; compile and cache-load times \
         are the host's own load_ms, summed over components):"
    );
    println!();
    println!(
        "| start | to listening (ms) | to first answer (ms) | RSS idle (MiB) | compiling (ms) | \
         from compile cache (ms) | components |"
    );
    println!("|---|---:|---:|---:|---:|---:|---:|");
    for kind in [
        "first-ever (empty data folder)",
        "cold compile cache (databases kept)",
        "warm",
    ] {
        if kind.starts_with("cold") {
            std::fs::remove_dir_all(data.join("compiled")).context("emptying the compile cache")?;
        }
        let log = work.join("shop-start.log");
        let mut command = agora_serve(&manifest, &data);
        command
            .env("RUST_LOG", "info")
            .env("NO_COLOR", "1")
            .current_dir(root())
            .stdout(Stdio::piped())
            .stderr(std::fs::File::create(&log)?);
        let started = Instant::now();
        let mut child = command.spawn().context("starting agora serve")?;
        let stdout = child.stdout.take().context("no stdout")?;
        let mut reader = BufReader::new(stdout);
        let mut line = String::new();
        reader.read_line(&mut line)?;
        let listening = started.elapsed();
        std::thread::spawn(move || std::io::copy(&mut reader, &mut std::io::sink()));
        let mut host = Host(Some(child));
        let addr = line
            .trim()
            .rsplit("http://")
            .next()
            .filter(|_| line.contains("http://"))
            .with_context(|| format!("agora serve printed {line:?}; see {}", log.display()))?
            .to_owned();
        first_answer(&addr, "/api/products")?;
        let answered = started.elapsed();
        std::thread::sleep(Duration::from_secs(1));
        let rss = host
            .0
            .as_ref()
            .and_then(|c| crate::hello::rss_kib(c.id()))
            .unwrap_or(0);
        host.stop();
        let (compile_ms, cache_ms, components) = load_times(&std::fs::read_to_string(&log)?);
        let row = [
            kind.to_owned(),
            listening.as_millis().to_string(),
            answered.as_millis().to_string(),
            format!("{:.1}", rss as f64 / 1024.0),
            compile_ms.to_string(),
            cache_ms.to_string(),
            components.to_string(),
        ];
        println!("| {} |", row.join(" | "));
        csv_row(&mut csv, &row);
    }
    Ok(csv)
}

/// Appends `fields` as one CSV line, each field quoted (labels hold commas).
pub(crate) fn csv_row(csv: &mut String, fields: &[String]) {
    let quoted: Vec<String> = fields
        .iter()
        .map(|field| format!("\"{}\"", field.replace('"', "\"\"")))
        .collect();
    csv.push_str(&quoted.join(","));
    csv.push('\n');
}

/// Sums the host's `load_ms=` of its `compiled …` and `loaded … from the compile cache` lines.
fn load_times(log: &str) -> (u64, u64, usize) {
    let (mut compiled, mut cached, mut count) = (0, 0, 0);
    for line in log.lines() {
        let Some(ms) = line
            .split_whitespace()
            .find_map(|field| field.strip_prefix("load_ms="))
            .and_then(|ms| ms.parse::<u64>().ok())
        else {
            continue;
        };
        count += 1;
        if line.contains("from the compile cache") {
            cached += ms;
        } else {
            compiled += ms;
        }
    }
    (compiled, cached, count)
}

/// A `[[component]]` table serving hello as `name` on `routes`, with `extra` TOML after it.
pub(crate) fn hello_table(name: &str, hello: &Path, routes: &str, extra: &str) -> String {
    format!(
        "[[component]]\nname = \"{name}\"\nsource = {:?}\nroutes = {routes}\n\
         [component.limits]\nconcurrency = 1000\n{extra}\n",
        hello.display().to_string(),
    )
}

/// A manifest serving `component` on every path, its instances reused for `reuse` requests.
pub(crate) fn reusing_manifest(component: &Path, reuse: u32) -> String {
    hello_table(
        "hello",
        component,
        r#"["/..."]"#,
        &format!("[component.instances]\nreuse = {reuse}\n"),
    )
}

/// Starts `agora serve` on `manifest` and waits for `GET path` to answer 200: the host, its
/// address and the time from the start.
fn start_and_answer(
    manifest: &Path,
    data: &Path,
    path: &str,
) -> anyhow::Result<(Host, String, Duration)> {
    let started = Instant::now();
    let (child, addr) = spawn_and_read_addr(&mut scale_serve(manifest, data))?;
    let host = Host(Some(child));
    first_answer(&addr, path)?;
    Ok((host, addr, started.elapsed()))
}

fn write_manifest(work: &Path, file: &str, text: &str) -> anyhow::Result<PathBuf> {
    let path = work.join(file);
    std::fs::write(&path, text)?;
    Ok(path)
}

/// `agora serve` for these curves: no cap on connections per client address (every load
/// connection comes from 127.0.0.1).
fn scale_serve(manifest: &Path, data: &Path) -> Command {
    let mut command = agora_serve(manifest, data);
    command.args(["--max-connections-per-ip", "0"]);
    command
}

/// Waits for `GET path` to answer 200 (bounded: 60 s).
fn first_answer(addr: &str, path: &str) -> anyhow::Result<()> {
    let deadline = Instant::now() + Duration::from_secs(60);
    while Instant::now() < deadline {
        if let Ok(status) = get_status(addr, path)
            && status == 200
        {
            return Ok(());
        }
        std::thread::sleep(Duration::from_millis(2));
    }
    bail!("GET http://{addr}{path} did not answer 200 within 60 s")
}

/// One `GET` over a plain TCP connection: the status code.
fn get_status(addr: &str, path: &str) -> anyhow::Result<u16> {
    use std::io::{Read as _, Write as _};
    let mut stream = std::net::TcpStream::connect(addr)?;
    stream.set_read_timeout(Some(Duration::from_secs(5)))?;
    write!(
        stream,
        "GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n"
    )?;
    let mut head = [0u8; 12];
    stream.read_exact(&mut head)?;
    let text = std::str::from_utf8(&head[9..12])?;
    Ok(text.parse()?)
}
