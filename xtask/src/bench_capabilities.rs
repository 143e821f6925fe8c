//! `cargo xtask bench capabilities`: what one capability call costs from a guest, against the
//! same operation made natively from Rust on the same backend, in the same run.
//!
//! Guest side: components/fixtures/cache answers `GET /c/{key}?repeat=N` after N `cache.get`
//! calls; the per-call cost is (time at N = 1001 − time at N = 1) / 1000, medians of sequential
//! requests on one keep-alive connection, so HTTP and instantiation cancel out. Native side: the
//! same `get` through agora-cache's backend (in-memory, or Redis over its own connection), on a
//! multi-threaded tokio runtime like the host's.

use crate::bench::spawn_and_read_addr;
use crate::{cargo, components, target_dir};
use agora_cache::{CacheBackend, MemoryCache, RedisCache};
use anyhow::bail;
use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use std::process::Command;
use std::time::{Duration, Instant};

const CALLS: u32 = 1000;
const SAMPLES: usize = 25;
const VALUE: &[u8] = b"a sixteen byte v";

pub fn run(redis_url: &str) -> anyhow::Result<()> {
    let fixture = components::build_and_find("fixture-cache")?;
    crate::run(cargo().args(["build", "--release", "--package", "agora-host"]))?;
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let redis_up = RedisCache::new(redis_url)
        .is_ok_and(|cache| runtime.block_on(cache.get("agora:probe")).is_ok());
    let mut rows = Vec::new();
    for backend in ["memory", "redis"] {
        if backend == "redis" && !redis_up {
            eprintln!("xtask: SKIPPED the Redis row: {redis_url} is unreachable");
            continue;
        }
        eprintln!("xtask: cache.get on {backend}: guest vs native");
        let work = target_dir().join("bench-capabilities");
        let _ = std::fs::remove_dir_all(&work);
        std::fs::create_dir_all(&work)?;
        let manifest = work.join("agora.toml");
        std::fs::write(
            &manifest,
            format!(
                "[[component]]\nname = \"bench\"\nsource = {:?}\nroutes = [\"/c/...\"]\ngrants = {{ cache = true }}\n",
                fixture.display().to_string()
            ),
        )?;
        let mut command = Command::new(target_dir().join("release/agora"));
        command
            .args(["serve", "--listen", "127.0.0.1:0", "--manifest"])
            .arg(&manifest)
            .arg("--data-dir")
            .arg(work.join("data"))
            .env("RUST_LOG", "warn");
        if backend == "redis" {
            command.args(["--redis-url", redis_url]);
        }
        let (mut child, addr) = spawn_and_read_addr(&mut command)?;
        let guest = runtime.block_on(guest_per_call(&addr));
        let _ = child.kill();
        let _ = child.wait();
        let guest = guest?;
        let native: Box<dyn CacheBackend> = if backend == "redis" {
            Box::new(RedisCache::new(redis_url)?)
        } else {
            Box::new(MemoryCache::default())
        };
        // The host runs on a multi-threaded tokio runtime; so does the native side.
        let native = tokio::runtime::Builder::new_multi_thread()
            .enable_all()
            .build()?
            .block_on(native_per_call(native.as_ref()))?;
        eprintln!(
            "        guest {:.2} µs/call, native {:.2} µs/call",
            micros(guest),
            micros(native)
        );
        rows.push((backend, guest, native));
    }
    println!();
    println!("| operation | backend | guest µs/call | native µs/call | guest ÷ native |");
    println!("|---|---|---:|---:|---:|");
    for (backend, guest, native) in rows {
        println!(
            "| cache.get (16 B) | {backend} | {:.2} | {:.2} | {:.2} |",
            micros(guest),
            micros(native),
            guest.as_secs_f64() / native.as_secs_f64()
        );
    }
    println!();
    println!(
        "per-call = (median at {} calls − median at 1 call) / {CALLS}, {SAMPLES} samples each",
        CALLS + 1
    );
    Ok(())
}

fn micros(d: Duration) -> f64 {
    d.as_secs_f64() * 1e6
}

fn median(mut samples: Vec<Duration>) -> Duration {
    samples.sort_unstable();
    samples[samples.len() / 2]
}

async fn guest_per_call(addr: &str) -> anyhow::Result<Duration> {
    let stream = tokio::net::TcpStream::connect(addr).await?;
    let (mut sender, connection) =
        hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(stream)).await?;
    tokio::spawn(connection);
    let mut send = async |method: http::Method, path: String, body: &'static [u8]| {
        let request = http::Request::builder()
            .method(method)
            .uri(path)
            .header(http::header::HOST, addr)
            .body(Full::new(Bytes::from_static(body)))?;
        let started = Instant::now();
        let response = sender.send_request(request).await?;
        let status = response.status();
        response.into_body().collect().await?;
        if !status.is_success() {
            bail!("the fixture answered {status}");
        }
        anyhow::Ok(started.elapsed())
    };
    send(http::Method::PUT, "/c/key".into(), VALUE).await?;
    let mut timings = [Vec::new(), Vec::new()];
    for _ in 0..SAMPLES {
        for (slot, repeat) in [1, CALLS + 1].into_iter().enumerate() {
            let path = format!("/c/key?repeat={repeat}");
            timings[slot].push(send(http::Method::GET, path, b"").await?);
        }
    }
    let [one, many] = timings;
    Ok(median(many).saturating_sub(median(one)) / CALLS)
}

async fn native_per_call(cache: &dyn CacheBackend) -> anyhow::Result<Duration> {
    let key = "agora:bench:key";
    cache.set(key, VALUE, None).await?;
    let mut samples = Vec::new();
    for _ in 0..SAMPLES {
        let started = Instant::now();
        for _ in 0..CALLS {
            std::hint::black_box(cache.get(key).await?);
        }
        samples.push(started.elapsed() / CALLS);
    }
    cache.delete(key).await?;
    Ok(median(samples))
}
