//! `cargo xtask bench shop`: the shop (components/catalog, order, payment, notification) on the
//! production backends — PostgreSQL, Redis, NATS JetStream — served by the release host.
//!
//! 1. **A cached product read.** `GET /api/products/{id}` after one warm-up miss, so every
//!    measured request is a cache hit (checked: each answer's `x-cache` must say `hit`), against
//!    a native hyper handler in this process doing the same work: one Redis GET of the cached
//!    product JSON (the catalog's key, through the same `agora-cache` Redis client the host
//!    uses, on one kept multiplexed connection) and answering it. Same client, same number of
//!    connections and requests; the sides alternate for `--rounds` rounds and the median round
//!    (by req/s) of each is shown.
//! 2. **Orders.** First `--idle-orders` orders one at a time, each polled until PAID (the
//!    pipeline's latency on an idle shop); then `--orders` orders (one customer and one token
//!    each, one line of quantity 1, `tok_visa`) placed by `--order-concurrency` closed-loop
//!    clients. orders/s is the POST rate; 201 → PAID is the time from the 201 to the first
//!    `GET /api/orders/{id}` that answers `PAID` (every pending order is polled once per round,
//!    rounds at least `--poll-ms` apart, on two connections of their own, so the resolution is
//!    the round time, printed); 201 → order.paid is when the order component's `order.paid`
//!    event reached a plain NATS subscription of this process (no polling, no load).
//!
//! The host runs the components and policies of agora.toml (its catalog, order, payment and
//! notification tables, paths made absolute), with a key pair generated for the run and handed
//! over in `AGORA_AUTH_PRIVATE_KEY` / `AGORA_AUTH_PUBLIC_KEY`; this process signs the tokens.
//! Products get SKUs unique to the run; nothing is cleaned up (the schemas and consumers are
//! the shop's own).

use crate::bench::spawn_and_read_addr;
use crate::loadgen::Report;
use crate::{cargo, components, root, target_dir};
use agora_auth::{Claims, Keys, TokenType};
use agora_cache::{CacheBackend as _, RedisCache};
use anyhow::{Context as _, bail};
use bytes::Bytes;
use http::{HeaderMap, Method, StatusCode, header};
use http_body_util::{BodyExt as _, Full};
use hyper::client::conn::http1::SendRequest;
use hyper_util::rt::TokioIo;
use serde_json::{Value as Json, json};
use std::path::Path;
use std::process::{Child, Command};
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

/// The shop's components this benchmark serves (account, hello and example are left out).
const SHOP: [&str; 4] = ["catalog", "order", "payment", "notification"];
/// Requests per connection of a warm-up before each measured read run.
pub(crate) const WARMUP_PER_CONNECTION: u64 = 50;
/// Any single request taking longer than this fails the benchmark.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(30);
/// An order not PAID this long after its 201 fails the benchmark.
const SETTLE_TIMEOUT: Duration = Duration::from_secs(60);
/// Connections the order poller uses.
const POLL_CONNECTIONS: usize = 2;

/// `bench` with the shop added to the other benchmarks.
#[derive(clap::Subcommand)]
pub enum Which {
    #[command(flatten)]
    Other(crate::bench::Which),
    /// The shop on PostgreSQL, Redis and NATS: a cached product read against native hyper +
    /// Redis, then orders per second and order → PAID latency.
    Shop(Args),
    /// Hot swap on the shop: upload → serving per component (compiled and from the compile
    /// cache), and a product read's latency while components are swapped.
    Swap(crate::bench_swap::Args),
}

#[derive(clap::Args)]
pub struct Args {
    #[command(flatten)]
    backends: crate::bench::BackendUrls,
    /// Product read: concurrent keep-alive connections.
    #[arg(long, default_value_t = 32)]
    connections: usize,
    /// Product read: requests measured per side and round.
    #[arg(long, default_value_t = 20_000)]
    requests: u64,
    /// Product read: rounds (agora then native each round); the median round is shown.
    #[arg(long, default_value_t = 3)]
    rounds: usize,
    /// Orders placed one at a time first, each waiting for PAID (the idle shop's latency).
    #[arg(long, default_value_t = 20)]
    idle_orders: usize,
    /// Orders then placed by concurrent clients.
    #[arg(long, default_value_t = 200)]
    orders: usize,
    /// Orders placed at once (closed loop).
    #[arg(long, default_value_t = 8)]
    order_concurrency: usize,
    /// Shortest time between two polling rounds of the pending orders, in milliseconds.
    #[arg(long, default_value_t = 5)]
    poll_ms: u64,
    /// Measure what observability costs instead: the shop served with nothing exported, with
    /// `/metrics` scraped every second, and with every request and event traced over OTLP
    /// (100% sampled, to a receiver in this process) — alternating, `--rounds` times — each
    /// on the cached product read and on the order burst.
    #[arg(long)]
    observability_cost: bool,
}

pub fn run_bench(which: Which) -> anyhow::Result<()> {
    match which {
        Which::Other(which) => crate::bench::run_bench(which),
        Which::Shop(args) => run(&args),
        Which::Swap(args) => crate::bench_swap::run(&args),
    }
}

fn run(args: &Args) -> anyhow::Result<()> {
    let cores = std::thread::available_parallelism().map_or(0, usize::from);
    let load_before = load_average();
    // Kept between runs: the data folder holds only the host's compiled components here.
    let work = target_dir().join("bench-shop");
    std::fs::create_dir_all(&work)?;

    // The client side: one thread, like `cargo xtask load`. The native baseline gets a
    // multi-threaded runtime of its own, shaped like the host's.
    let client = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let server = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    client.block_on(check_backends(&args.backends, &work))?;

    components::build_all()?;
    eprintln!("xtask: building agora (release)");
    crate::run(cargo().args(["build", "--release", "--package", "agora-host"]))?;
    if args.observability_cost {
        return observability_cost(args, &work, &client);
    }

    let (manifest, auth) = shop_manifest(&work, &SHOP)?;
    let (mut command, signer) = host_command(&args.backends, &manifest, &work, auth)?;
    eprintln!("xtask: starting agora with the shop (catalog, order, payment, notification)");
    let (child, addr) = spawn_and_read_addr(&mut command)?;
    let mut host = Host(Some(child));

    let outcome = client.block_on(async {
        let tag = uuid::Uuid::new_v4().simple().to_string()[..10].to_owned();
        let read = product_read(args, &addr, &signer, &tag, &server).await?;
        let orders = orders(args, &addr, &signer, &tag).await?;
        anyhow::Ok((read, orders))
    });
    host.stop();
    let (read, orders) = outcome?;
    let load_after = load_average();

    println!();
    println!(
        "machine: {cores} cores; load average {load_before} before, {load_after} after \
         (1, 5, 15 min)"
    );
    println!();
    read.print(args);
    println!();
    orders.print(args);
    Ok(())
}

// --- what observability costs -------------------------------------------------------------

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
fn observability_cost(
    args: &Args,
    work: &Path,
    client: &tokio::runtime::Runtime,
) -> anyhow::Result<()> {
    let (manifest, auth) = shop_manifest(work, &SHOP)?;
    let sink = crate::bench::otlp_sink()?;
    let modes = [Observed::Nothing, Observed::Scraped, Observed::Traced];
    let mut results: Vec<Vec<(f64, f64, f64)>> = vec![Vec::new(); modes.len()];
    let rounds = args.rounds.max(1);
    for round in 1..=rounds {
        for (index, mode) in modes.iter().enumerate() {
            eprintln!("xtask: round {round}/{rounds}: {}", mode.label());
            let (mut command, signer) =
                host_command(&args.backends, &manifest, work, auth.clone())?;
            let metrics_port = crate::bench::free_port()?;
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
                crate::bench::scrape_every_second(format!("127.0.0.1:{metrics_port}"));
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
                let concurrency = args.order_concurrency.max(1);
                let mut products = Vec::new();
                for index in 0..concurrency {
                    let sku = format!("bench-{tag}-order-{index}");
                    products
                        .push(create_product(&mut connection, &admin, &sku, 1_000_000_000).await?);
                }
                let events = listen_for_paid(&args.backends.nats_url).await?;
                let burst = burst_orders(args, &addr, &signer, products, &events).await?;
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
                let mut values: Vec<f64> = runs.iter().map(pick).collect();
                values.sort_by(f64::total_cmp);
                values[values.len() / 2]
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

// --- the backends and the host -----------------------------------------------------------

/// Fails with one clear message per unreachable backend.
pub(crate) async fn check_backends(
    backends: &crate::bench::BackendUrls,
    work: &Path,
) -> anyhow::Result<()> {
    let mut down = Vec::new();
    let redis = RedisCache::new(&backends.redis_url).map_err(|e| e.to_string());
    let redis = match redis {
        Ok(cache) => cache
            .get("agora:bench:probe")
            .await
            .map_err(|e| e.to_string()),
        Err(err) => Err(err),
    };
    if let Err(err) = redis {
        down.push(format!("Redis at {}: {err}", backends.redis_url));
    }
    if let Err(err) = agora_sql::connect(Some(&backends.database_url), work).await {
        down.push(format!("PostgreSQL at {}: {err}", backends.database_url));
    }
    if let Err(err) = agora_messaging::connect(Some(&backends.nats_url)).await {
        down.push(format!("NATS at {}: {err}", backends.nats_url));
    }
    if !down.is_empty() {
        bail!(
            "this benchmark needs PostgreSQL, Redis and NATS (JetStream); unreachable:\n  {}\n\
             (set --database-url / --redis-url / --nats-url or AGORA_DATABASE_URL / \
             AGORA_REDIS_URL / AGORA_NATS_URL)",
            down.join("\n  ")
        );
    }
    Ok(())
}

/// agora.toml's `[auth]`, `[edge]` and its components named in `shop`, with absolute paths;
/// and the issuer and audience tokens must carry.
pub(crate) fn shop_manifest(
    work: &Path,
    shop: &[&str],
) -> anyhow::Result<(std::path::PathBuf, (String, String))> {
    let root = root();
    let text = std::fs::read_to_string(root.join("agora.toml")).context("reading agora.toml")?;
    let mut manifest: toml::Table = text.parse().context("parsing agora.toml")?;
    let components = manifest
        .remove("component")
        .and_then(|c| c.as_array().cloned())
        .context("agora.toml has no [[component]]")?;
    let mut kept = Vec::new();
    for mut component in components {
        let Some(table) = component.as_table_mut() else {
            continue;
        };
        let name = table.get("name").and_then(|n| n.as_str()).unwrap_or("");
        if !shop.contains(&name) {
            continue;
        }
        for key in ["source", "migrations"] {
            if let Some(path) = table.get(key).and_then(|p| p.as_str()) {
                let absolute = root.join(path).display().to_string();
                table.insert(key.to_owned(), toml::Value::String(absolute));
            }
        }
        kept.push(component);
    }
    if kept.len() != shop.len() {
        bail!("agora.toml does not declare all of {shop:?}");
    }
    manifest.insert("component".to_owned(), toml::Value::Array(kept));
    let auth = manifest.get("auth").and_then(|a| a.as_table());
    let claim = |key: &str| {
        auth.and_then(|a| a.get(key))
            .and_then(|v| v.as_str())
            .unwrap_or("agora")
            .to_owned()
    };
    let (issuer, audience) = (claim("issuer"), claim("audience"));
    let path = work.join("shop.toml");
    std::fs::write(&path, toml::to_string(&manifest)?)?;
    Ok((path, (issuer, audience)))
}

/// `agora serve` (the release build) on `manifest` and the production backends, on a free
/// port, data under `work`, `RUST_LOG=warn`, with a key pair generated for the run (handed
/// over in `AGORA_AUTH_PRIVATE_KEY` / `AGORA_AUTH_PUBLIC_KEY`); and the signer of the run's
/// tokens for `auth` (issuer, audience).
pub(crate) fn host_command(
    backends: &crate::bench::BackendUrls,
    manifest: &Path,
    work: &Path,
    auth: (String, String),
) -> anyhow::Result<(Command, Signer)> {
    let (private_pem, public_pem) =
        Keys::generate_ed25519_pem().context("generating the run's key pair")?;
    let signer = Signer {
        key: jsonwebtoken::EncodingKey::from_ed_pem(private_pem.as_bytes())?,
        issuer: auth.0,
        audience: auth.1,
    };
    let mut command = crate::bench::agora_serve(manifest, &work.join("data"));
    command
        .args(["--database-url", &backends.database_url])
        .args(["--redis-url", &backends.redis_url])
        .args(["--nats-url", &backends.nats_url])
        .env("AGORA_AUTH_PRIVATE_KEY", &private_pem)
        .env("AGORA_AUTH_PUBLIC_KEY", &public_pem);
    Ok((command, signer))
}

/// The host process; stopped with SIGTERM (so it drains) when dropped or stopped.
pub(crate) struct Host(pub(crate) Option<Child>);

impl Host {
    pub(crate) fn stop(&mut self) {
        let Some(mut child) = self.0.take() else {
            return;
        };
        let _ = Command::new("kill")
            .args(["-TERM", &child.id().to_string()])
            .status();
        let deadline = Instant::now() + Duration::from_secs(40);
        while Instant::now() < deadline {
            if let Ok(Some(_)) = child.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        let _ = child.kill();
        let _ = child.wait();
    }
}

impl Drop for Host {
    fn drop(&mut self) {
        self.stop();
    }
}

/// Signs access tokens with the run's key.
pub(crate) struct Signer {
    key: jsonwebtoken::EncodingKey,
    issuer: String,
    audience: String,
}

impl Signer {
    /// A token for a new subject with `roles`, valid for an hour.
    pub(crate) fn token(&self, roles: &[&str]) -> anyhow::Result<String> {
        let now = SystemTime::now().duration_since(UNIX_EPOCH)?.as_secs();
        let claims = Claims {
            sub: uuid::Uuid::new_v4().to_string(),
            roles: roles.iter().map(|r| (*r).to_owned()).collect(),
            iss: self.issuer.clone(),
            aud: self.audience.clone(),
            iat: now,
            nbf: now,
            exp: now + 3600,
            jti: uuid::Uuid::new_v4().simple().to_string(),
            typ: TokenType::Access,
            fam: uuid::Uuid::new_v4().simple().to_string(),
        };
        let header = jsonwebtoken::Header::new(jsonwebtoken::Algorithm::EdDSA);
        Ok(jsonwebtoken::encode(&header, &claims, &self.key)?)
    }
}

/// One keep-alive HTTP/1.1 connection.
pub(crate) struct Client {
    sender: SendRequest<Full<Bytes>>,
    authority: String,
    /// How long one exchange may take ([`REQUEST_TIMEOUT`] unless changed).
    timeout: Duration,
}

pub(crate) struct Answer {
    pub(crate) status: StatusCode,
    pub(crate) headers: HeaderMap,
    pub(crate) body: Bytes,
}

impl Answer {
    pub(crate) fn json(&self) -> anyhow::Result<Json> {
        serde_json::from_slice(&self.body).with_context(|| {
            format!(
                "not JSON ({}): {}",
                self.status,
                String::from_utf8_lossy(&self.body)
            )
        })
    }

    pub(crate) fn describe(&self) -> String {
        format!("{} {}", self.status, String::from_utf8_lossy(&self.body))
    }
}

impl Client {
    pub(crate) async fn connect(addr: &str) -> anyhow::Result<Client> {
        let stream = tokio::net::TcpStream::connect(addr)
            .await
            .with_context(|| format!("cannot connect to {addr}"))?;
        stream.set_nodelay(true)?;
        let (sender, connection) =
            hyper::client::conn::http1::handshake(TokioIo::new(stream)).await?;
        tokio::spawn(connection);
        Ok(Client {
            sender,
            authority: addr.to_owned(),
            timeout: REQUEST_TIMEOUT,
        })
    }

    /// The same connection, allowing `timeout` for one exchange.
    pub(crate) fn with_timeout(self, timeout: Duration) -> Client {
        Client { timeout, ..self }
    }

    pub(crate) async fn send(
        &mut self,
        method: Method,
        path: &str,
        token: Option<&str>,
        body: Option<&Json>,
    ) -> anyhow::Result<Answer> {
        let body = match body {
            Some(body) => Some(("application/json", Bytes::from(serde_json::to_vec(body)?))),
            None => None,
        };
        self.send_bytes(method, path, token, body).await
    }

    /// `send` with a body of any type: `(content type, bytes)`.
    pub(crate) async fn send_bytes(
        &mut self,
        method: Method,
        path: &str,
        token: Option<&str>,
        body: Option<(&str, Bytes)>,
    ) -> anyhow::Result<Answer> {
        let mut request = http::Request::builder()
            .method(method.clone())
            .uri(path)
            .header(header::HOST, &self.authority);
        if let Some(token) = token {
            request = request.header(header::AUTHORIZATION, format!("Bearer {token}"));
        }
        let body = match body {
            Some((content_type, bytes)) => {
                request = request.header(header::CONTENT_TYPE, content_type);
                bytes
            }
            None => Bytes::new(),
        };
        let request = request.body(Full::new(body))?;
        let exchange = async {
            self.sender.ready().await.context("the connection closed")?;
            let response = self.sender.send_request(request).await?;
            let (parts, body) = response.into_parts();
            let body = body.collect().await?.to_bytes();
            anyhow::Ok(Answer {
                status: parts.status,
                headers: parts.headers,
                body,
            })
        };
        let timeout = self.timeout;
        tokio::time::timeout(timeout, exchange)
            .await
            .with_context(|| format!("{method} {path}: no answer within {timeout:?}"))?
            .with_context(|| format!("{method} {path}"))
    }
}

/// Creates a product as an admin; returns its id.
pub(crate) async fn create_product(
    client: &mut Client,
    admin: &str,
    sku: &str,
    stock: i64,
) -> anyhow::Result<String> {
    let product = json!({
        "name": format!("Bench product {sku}"),
        "description": "A product created by `cargo xtask bench shop`: a plain cotton T-shirt, \
                        machine washable, in three colours and five sizes.",
        "price_cents": 1999,
        "sku": sku,
        "stock": stock,
        "images": ["https://shop.example/images/bench-1.jpg", "https://shop.example/images/bench-2.jpg"],
        "category": "bench",
    });
    let answer = client
        .send(Method::POST, "/api/products", Some(admin), Some(&product))
        .await?;
    if answer.status != StatusCode::CREATED {
        bail!("creating product {sku}: {}", answer.describe());
    }
    answer.json()?["id"]
        .as_str()
        .map(str::to_owned)
        .context("the created product has no id")
}

pub(crate) fn load_average() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .map(|l| l.split_whitespace().take(3).collect::<Vec<_>>().join(" "))
        .unwrap_or_else(|_| "?".into())
}

pub(crate) fn micros_since(start: Instant) -> u32 {
    u32::try_from(start.elapsed().as_micros()).unwrap_or(u32::MAX)
}

pub(crate) fn percentile_ms(sorted_us: &[u32], q: f64) -> f64 {
    if sorted_us.is_empty() {
        return f64::NAN;
    }
    let index = ((sorted_us.len() - 1) as f64 * q).round() as usize;
    f64::from(sorted_us[index]) / 1000.0
}

// --- 1. the cached product read ----------------------------------------------------------

struct ReadResult {
    agora: Report,
    native: Report,
    body_bytes: usize,
    same_body: bool,
    rounds: Vec<(f64, f64)>,
}

impl ReadResult {
    fn print(&self, args: &Args) {
        let rounds: Vec<String> = self
            .rounds
            .iter()
            .map(|(a, n)| format!("{a:.0} / {n:.0}"))
            .collect();
        println!(
            "GET /api/products/{{id}}, cache hit ({} B of JSON; native answers the same bytes: {}); \
             {} connections, {} requests per side and round, median of {} rounds \
             (agora / native req/s per round: {})",
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
        for (label, work, report) in [
            (
                "agora serve (release)",
                "edge checks, fresh catalog instance, cache.get → Redis GET, JSON decoded and re-encoded",
                &self.agora,
            ),
            (
                "native hyper",
                "one Redis GET (agora-cache client, kept connection), bytes answered",
                &self.native,
            ),
        ] {
            println!(
                "| {label} | {work} | {:.0} | {:.3} | {:.3} | {} |",
                report.rps(),
                report.percentile_ms(0.5),
                report.percentile_ms(0.99),
                report.errors
            );
        }
        println!(
            "| **agora ÷ native** | | **{:.2}** | {:.2} | {:.2} | |",
            self.agora.rps() / self.native.rps(),
            self.agora.percentile_ms(0.5) / self.native.percentile_ms(0.5),
            self.agora.percentile_ms(0.99) / self.native.percentile_ms(0.99),
        );
    }
}

async fn product_read(
    args: &Args,
    addr: &str,
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
    let (mut agora, mut native) = (Vec::new(), Vec::new());
    for round in 1..=rounds {
        for (side, target, expect_hit) in [
            ("agora", addr, true),
            ("native", native_addr.as_str(), false),
        ] {
            // A fresh entry (60 s TTL) before each run: the run cannot outlive it.
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
            if side == "agora" {
                agora.push(report);
            } else {
                native.push(report);
            }
        }
    }
    let per_round = agora.iter().zip(&native).map(|(a, n)| (a.rps(), n.rps()));
    let rounds = per_round.collect();
    Ok(ReadResult {
        agora: median(agora),
        native: median(native),
        body_bytes,
        same_body,
        rounds,
    })
}

fn median(mut runs: Vec<Report>) -> Report {
    runs.sort_by(|a, b| a.rps().total_cmp(&b.rps()));
    runs.swap_remove(runs.len() / 2)
}

/// Drops the product's cache entry, reads it once through agora (a miss, which fills the
/// cache) and once more (which must be a hit); returns the body.
pub(crate) async fn warm(
    client: &mut Client,
    path: &str,
    cache: &RedisCache,
    key: &str,
) -> anyhow::Result<Bytes> {
    cache.delete(key, "agora:catalog:").await?;
    for expected in ["miss", "hit"] {
        let answer = client.send(Method::GET, path, None, None).await?;
        let x_cache = answer.headers.get("x-cache").and_then(|v| v.to_str().ok());
        if answer.status != StatusCode::OK || x_cache != Some(expected) {
            bail!(
                "GET {path}: expected 200 with x-cache: {expected}, got {} with x-cache {x_cache:?}",
                answer.describe()
            );
        }
        if expected == "hit" {
            return Ok(answer.body);
        }
    }
    unreachable!("the loop returns on the hit")
}

/// The native baseline: a hyper server on `server`'s workers answering
/// `GET /api/products/{id}` with the bytes of the catalog's cache entry.
async fn start_native(
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

/// How much load a closed loop sends.
#[derive(Clone, Copy)]
pub(crate) enum Amount {
    /// This many requests in all.
    Requests(u64),
    /// Requests until this long after the first one was sent.
    For(Duration),
}

/// GETs of `path` over `connections` keep-alive connections, each sending the next as soon as
/// the previous answer is read, `amount` of them; the clock runs from the first request
/// (connections are opened before) to the last answer. With `expect_hit`, an answer without
/// `x-cache: hit` counts as an error.
pub(crate) async fn closed_loop(
    addr: &str,
    path: &str,
    connections: usize,
    amount: Amount,
    expect_hit: bool,
) -> anyhow::Result<Report> {
    let mut clients = Vec::new();
    for _ in 0..connections.max(1) {
        clients.push(Client::connect(addr).await?);
    }
    let (requests, deadline) = match amount {
        Amount::Requests(requests) => (requests, None),
        Amount::For(duration) => (u64::MAX, Some(Instant::now() + duration)),
    };
    let remaining = Arc::new(AtomicU64::new(requests));
    let started = Instant::now();
    let mut tasks = tokio::task::JoinSet::new();
    for mut client in clients {
        let remaining = remaining.clone();
        let path = path.to_owned();
        tasks.spawn(async move {
            let (mut ok, mut errors, mut latencies) = (0u64, 0u64, Vec::new());
            let mut first_error = None;
            while deadline.is_none_or(|deadline| Instant::now() < deadline)
                && remaining
                    .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |n| n.checked_sub(1))
                    .is_ok()
            {
                let sent = Instant::now();
                let answer = client.send(Method::GET, &path, None, None).await;
                let elapsed = micros_since(sent);
                let good = match &answer {
                    Ok(answer) => {
                        answer.status == StatusCode::OK
                            && (!expect_hit
                                || answer.headers.get("x-cache").is_some_and(|v| v == "hit"))
                    }
                    Err(_) => false,
                };
                if good {
                    ok += 1;
                    latencies.push(elapsed);
                } else {
                    errors += 1;
                    first_error.get_or_insert_with(|| match &answer {
                        Ok(answer) => format!(
                            "{} x-cache {:?}",
                            answer.describe(),
                            answer.headers.get("x-cache")
                        ),
                        Err(err) => format!("{err:#}"),
                    });
                    if answer.is_err() {
                        // The connection is gone; open another one.
                        match Client::connect(&client.authority).await {
                            Ok(fresh) => client = fresh,
                            Err(_) => break,
                        }
                    }
                }
            }
            (ok, errors, latencies, first_error)
        });
    }
    let mut report = Report {
        ok: 0,
        errors: 0,
        window: Duration::ZERO,
        latencies_us: Vec::new(),
    };
    let mut first_error = None;
    while let Some(result) = tasks.join_next().await {
        let (ok, errors, latencies, error) = result?;
        report.ok += ok;
        report.errors += errors;
        report.latencies_us.extend(latencies);
        first_error = first_error.or(error);
    }
    report.window = started.elapsed();
    report.latencies_us.sort_unstable();
    if let Some(error) = first_error {
        eprintln!(
            "xtask: {} of {} requests to {addr} failed; the first: {error}",
            report.errors,
            report.ok + report.errors
        );
    }
    if report.ok == 0 {
        bail!("no successful request to {addr}{path}");
    }
    Ok(report)
}

// --- 2. orders ---------------------------------------------------------------------------

/// Latencies of one phase of orders, in µs, sorted.
#[derive(Default)]
struct Phase {
    orders: usize,
    failed: usize,
    /// POST → 201.
    post_us: Vec<u32>,
    /// 201 → the first GET answering PAID.
    paid_us: Vec<u32>,
    /// 201 → `order.paid` received from NATS.
    event_us: Vec<u32>,
    /// First POST sent → last 201 received.
    post_window: Duration,
    /// First POST sent → last PAID seen.
    paid_window: Duration,
    /// Polling rounds and their total time (the resolution of `paid_us`).
    poll_rounds: u64,
    poll_time: Duration,
}

impl Phase {
    fn row(&self, label: &str, rate: bool) -> String {
        let p = |v: &[u32], q| percentile_ms(v, q);
        let rate = |n: usize, d: Duration| {
            if rate {
                format!("{:.1}", n as f64 / d.as_secs_f64())
            } else {
                "—".to_owned()
            }
        };
        format!(
            "| {label} | {} | {} | {:.1} / {:.1} | {:.1} / {:.1} | {:.1} / {:.1} | {} | {} |",
            self.orders,
            rate(self.post_us.len(), self.post_window),
            p(&self.post_us, 0.5),
            p(&self.post_us, 0.99),
            p(&self.paid_us, 0.5),
            p(&self.paid_us, 0.99),
            p(&self.event_us, 0.5),
            p(&self.event_us, 0.99),
            rate(self.paid_us.len(), self.paid_window),
            self.failed
        )
    }

    fn poll_resolution_ms(&self) -> f64 {
        self.poll_time.as_secs_f64() * 1000.0 / self.poll_rounds.max(1) as f64
    }
}

struct OrdersResult {
    idle: Phase,
    burst: Phase,
}

impl OrdersResult {
    fn print(&self, args: &Args) {
        println!(
            "orders: one line of quantity 1, tok_visa, one customer (token) per order; \
             {} products; PAID polled with GET /api/orders/{{id}} in rounds ≥ {} ms apart \
             (one at a time: {:.1} ms per round; {} at a time: {} rounds of {:.1} ms on average \
             over {POLL_CONNECTIONS} connections)",
            args.order_concurrency.max(1),
            args.poll_ms,
            self.idle.poll_resolution_ms(),
            args.order_concurrency,
            self.burst.poll_rounds,
            self.burst.poll_resolution_ms(),
        );
        println!();
        println!(
            "| orders placed | orders | orders/s (POST → 201) | POST p50 / p99 ms | \
             201 → PAID (GET) p50 / p99 ms | 201 → order.paid (NATS) p50 / p99 ms | \
             paid/s (first POST → last PAID) | failed |"
        );
        println!("|---|---:|---:|---:|---:|---:|---:|---:|");
        println!("{}", self.idle.row("one at a time, idle shop", false));
        println!(
            "{}",
            self.burst
                .row(&format!("{} at a time", args.order_concurrency), true)
        );
    }
}

/// An order answered 201 and not yet seen PAID.
#[derive(Clone)]
struct Pending {
    id: String,
    token: String,
    created: Instant,
}

/// What the placing clients, the poller and the NATS listener share.
#[derive(Default)]
struct Progress {
    placed: AtomicUsize,
    failed: AtomicUsize,
    paid: AtomicUsize,
    placing_done: AtomicBool,
    pending: Mutex<Vec<Pending>>,
    first_failure: Mutex<Option<String>>,
}

impl Progress {
    fn fail(&self, message: String) {
        self.failed.fetch_add(1, Ordering::Relaxed);
        let mut first = self.first_failure.lock().unwrap_or_else(|e| e.into_inner());
        first.get_or_insert(message);
    }

    fn report_failures(&self) -> usize {
        let failed = self.failed.load(Ordering::Relaxed);
        if failed > 0 {
            let first = self
                .first_failure
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .clone();
            eprintln!(
                "xtask: {failed} orders failed; the first: {}",
                first.unwrap_or_default()
            );
        }
        failed
    }
}

/// When each `order.paid` arrived, by order id: a plain NATS subscription to the subject the
/// shop's order component publishes to (JetStream stores it; this reads nothing from the
/// shop's consumers).
type PaidEvents = Arc<Mutex<std::collections::HashMap<String, Instant>>>;

async fn listen_for_paid(nats_url: &str) -> anyhow::Result<PaidEvents> {
    use futures::StreamExt as _;
    let client = async_nats::connect(nats_url)
        .await
        .with_context(|| format!("connecting to NATS at {nats_url}"))?;
    let mut subscriber = client.subscribe("agora.order.paid").await?;
    client.flush().await?;
    let events = PaidEvents::default();
    let seen = events.clone();
    tokio::spawn(async move {
        let _client = client;
        while let Some(message) = subscriber.next().await {
            let at = Instant::now();
            let event: Json = serde_json::from_slice(&message.payload).unwrap_or_default();
            if let Some(id) = event["data"]["order_id"].as_str() {
                let mut seen = seen.lock().unwrap_or_else(|e| e.into_inner());
                seen.insert(id.to_owned(), at);
            }
        }
    });
    Ok(events)
}

/// 201 → `order.paid` for each of `placed`, waiting up to 5 s for stragglers.
async fn event_latencies(events: &PaidEvents, placed: &[(String, Instant)]) -> Vec<u32> {
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let latencies: Vec<u32> = {
            let seen = events.lock().unwrap_or_else(|e| e.into_inner());
            placed
                .iter()
                .filter_map(|(id, created)| seen.get(id).map(|at| at.duration_since(*created)))
                .map(|d| u32::try_from(d.as_micros()).unwrap_or(u32::MAX))
                .collect()
        };
        if latencies.len() == placed.len() || Instant::now() > deadline {
            if latencies.len() < placed.len() {
                eprintln!(
                    "xtask: no order.paid seen on NATS for {} of {} orders",
                    placed.len() - latencies.len(),
                    placed.len()
                );
            }
            let mut latencies = latencies;
            latencies.sort_unstable();
            return latencies;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

pub(crate) fn order_body(product_id: &str) -> Json {
    json!({
        "items": [{ "product_id": product_id, "quantity": 1 }],
        "payment_method": "tok_visa",
    })
}

async fn orders(
    args: &Args,
    addr: &str,
    signer: &Signer,
    tag: &str,
) -> anyhow::Result<OrdersResult> {
    let admin = signer.token(&["USER", "ADMIN"])?;
    let mut client = Client::connect(addr).await?;
    let concurrency = args.order_concurrency.max(1);
    // One product per placing client, so they do not all wait on one stock row.
    let mut products = Vec::new();
    for index in 0..concurrency {
        let sku = format!("bench-{tag}-order-{index}");
        products.push(create_product(&mut client, &admin, &sku, 1_000_000_000).await?);
    }
    let events = listen_for_paid(&args.backends.nats_url).await?;
    let idle = idle_orders(args, addr, signer, &products[0], &events).await?;
    let burst = burst_orders(args, addr, signer, products, &events).await?;
    Ok(OrdersResult { idle, burst })
}

/// `--idle-orders` orders one after the other, each polled every `--poll-ms` until PAID.
async fn idle_orders(
    args: &Args,
    addr: &str,
    signer: &Signer,
    product: &str,
    events: &PaidEvents,
) -> anyhow::Result<Phase> {
    eprintln!(
        "xtask: placing {} orders one at a time (each waits for PAID)",
        args.idle_orders
    );
    let mut client = Client::connect(addr).await?;
    let mut poller = Client::connect(addr).await?;
    let every = Duration::from_millis(args.poll_ms);
    let mut phase = Phase {
        orders: args.idle_orders,
        ..Phase::default()
    };
    let mut placed = Vec::new();
    for _ in 0..args.idle_orders {
        let token = signer.token(&["USER"])?;
        let sent = Instant::now();
        let answer = client
            .send(
                Method::POST,
                "/api/orders",
                Some(&token),
                Some(&order_body(product)),
            )
            .await?;
        let created = Instant::now();
        if answer.status != StatusCode::CREATED {
            bail!("POST /api/orders: {}", answer.describe());
        }
        phase.post_us.push(micros_since(sent));
        let id = answer.json()?["id"]
            .as_str()
            .context("the order has no id")?
            .to_owned();
        let path = format!("/api/orders/{id}");
        loop {
            let round = Instant::now();
            let answer = poller.send(Method::GET, &path, Some(&token), None).await?;
            let at = Instant::now();
            let status = answer.json()?["status"].as_str().map(str::to_owned);
            phase.poll_rounds += 1;
            phase.poll_time += at.duration_since(round).max(every);
            match status.as_deref() {
                Some("PAID") => {
                    phase.paid_us.push(micros_since(created));
                    break;
                }
                Some("PENDING") if created.elapsed() < SETTLE_TIMEOUT => {}
                _ => bail!("GET {path}: {}", answer.describe()),
            }
            tokio::time::sleep_until((round + every).into()).await;
        }
        placed.push((id, created));
    }
    phase.post_us.sort_unstable();
    phase.paid_us.sort_unstable();
    phase.event_us = event_latencies(events, &placed).await;
    Ok(phase)
}

/// `--orders` orders placed by `--order-concurrency` closed-loop clients while a poller
/// watches them turn PAID.
async fn burst_orders(
    args: &Args,
    addr: &str,
    signer: &Signer,
    products: Vec<String>,
    events: &PaidEvents,
) -> anyhow::Result<Phase> {
    let concurrency = args.order_concurrency.max(1);
    let mut tokens = Vec::new();
    for _ in 0..args.orders {
        tokens.push(signer.token(&["USER"])?);
    }
    let tokens = Arc::new(tokens);
    let products = Arc::new(products);
    eprintln!(
        "xtask: placing {} orders, {concurrency} at a time",
        args.orders
    );

    let progress = Arc::new(Progress::default());
    let next = Arc::new(AtomicUsize::new(0));
    let placed = Arc::new(Mutex::new(Vec::new()));
    let mut placers = tokio::task::JoinSet::new();
    let mut clients = Vec::new();
    for _ in 0..concurrency {
        clients.push(Client::connect(addr).await?);
    }
    let started = Instant::now();
    for mut client in clients {
        let (progress, next, tokens, products, placed) = (
            progress.clone(),
            next.clone(),
            tokens.clone(),
            products.clone(),
            placed.clone(),
        );
        placers.spawn(async move {
            let mut latencies = Vec::new();
            loop {
                let index = next.fetch_add(1, Ordering::Relaxed);
                let Some(token) = tokens.get(index) else {
                    break;
                };
                let body = order_body(&products[index % products.len()]);
                let sent = Instant::now();
                let answer = client
                    .send(Method::POST, "/api/orders", Some(token), Some(&body))
                    .await?;
                let created = Instant::now();
                let id = answer
                    .json()
                    .ok()
                    .and_then(|o| o["id"].as_str().map(str::to_owned));
                match id {
                    Some(id) if answer.status == StatusCode::CREATED => {
                        latencies.push(micros_since(sent));
                        progress.placed.fetch_add(1, Ordering::Relaxed);
                        placed
                            .lock()
                            .unwrap_or_else(|e| e.into_inner())
                            .push((id.clone(), created));
                        progress
                            .pending
                            .lock()
                            .unwrap_or_else(|e| e.into_inner())
                            .push(Pending {
                                id,
                                token: token.clone(),
                                created,
                            });
                    }
                    _ => progress.fail(format!("POST /api/orders: {}", answer.describe())),
                }
            }
            anyhow::Ok((latencies, Instant::now()))
        });
    }
    let print_progress = {
        let progress = progress.clone();
        let total = args.orders;
        move || {
            eprintln!(
                "xtask: {:>5.1} s: {} of {total} orders placed, {} paid, {} failed",
                started.elapsed().as_secs_f64(),
                progress.placed.load(Ordering::Relaxed),
                progress.paid.load(Ordering::Relaxed),
                progress.failed.load(Ordering::Relaxed)
            );
        }
    };
    let ticker = {
        let print_progress = print_progress.clone();
        tokio::spawn(async move {
            let mut interval = tokio::time::interval(Duration::from_secs(2));
            interval.tick().await;
            loop {
                interval.tick().await;
                print_progress();
            }
        })
    };
    let poller = tokio::spawn(poll_until_paid(
        addr.to_owned(),
        progress.clone(),
        Duration::from_millis(args.poll_ms),
    ));

    let mut post_us = Vec::new();
    let mut last_created = started;
    let mut placing_error = None;
    while let Some(result) = placers.join_next().await {
        match result? {
            Ok((latencies, done)) => {
                post_us.extend(latencies);
                last_created = last_created.max(done);
            }
            Err(err) => placing_error = placing_error.or(Some(err)),
        }
    }
    progress.placing_done.store(true, Ordering::Relaxed);
    let polled = poller.await?;
    ticker.abort();
    print_progress();
    if let Some(err) = placing_error {
        return Err(err.context("placing orders"));
    }
    let (mut paid_us, last_paid, poll_rounds, poll_time) = polled?;
    let failed = progress.report_failures();
    if paid_us.is_empty() {
        bail!("no order was placed and paid");
    }
    post_us.sort_unstable();
    paid_us.sort_unstable();
    let placed = placed.lock().unwrap_or_else(|e| e.into_inner()).clone();
    Ok(Phase {
        orders: args.orders,
        failed,
        post_us,
        paid_us,
        event_us: event_latencies(events, &placed).await,
        post_window: last_created.duration_since(started),
        paid_window: last_paid.duration_since(started),
        poll_rounds,
        poll_time,
    })
}

/// Polls every pending order once per round (rounds at least `every` apart, split over
/// [`POLL_CONNECTIONS`] connections) until placing is done and nothing is pending. Returns
/// the 201 → PAID times (µs), when the last order was seen PAID, the rounds and their total
/// time.
async fn poll_until_paid(
    addr: String,
    progress: Arc<Progress>,
    every: Duration,
) -> anyhow::Result<(Vec<u32>, Instant, u64, Duration)> {
    let mut clients = Vec::new();
    for _ in 0..POLL_CONNECTIONS {
        clients.push(Client::connect(&addr).await?);
    }
    let (mut paid, mut last_paid) = (Vec::new(), Instant::now());
    let (mut rounds, mut poll_time) = (0u64, Duration::ZERO);
    loop {
        let round_started = Instant::now();
        let done_placing = progress.placing_done.load(Ordering::Relaxed);
        let snapshot = progress
            .pending
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone();
        if snapshot.is_empty() {
            if done_placing {
                break;
            }
            tokio::time::sleep(Duration::from_millis(1)).await;
            continue;
        }
        // Split the pending orders over the connections and poll each once.
        let mut tasks = tokio::task::JoinSet::new();
        for (slot, mut client) in clients.drain(..).enumerate() {
            let mine: Vec<Pending> = snapshot
                .iter()
                .skip(slot)
                .step_by(POLL_CONNECTIONS)
                .cloned()
                .collect();
            tasks.spawn(async move {
                let mut seen = Vec::new();
                for order in mine {
                    let path = format!("/api/orders/{}", order.id);
                    let answer = client
                        .send(Method::GET, &path, Some(&order.token), None)
                        .await?;
                    let at = Instant::now();
                    let status = answer
                        .json()
                        .ok()
                        .and_then(|o| o["status"].as_str().map(str::to_owned));
                    let status = match status {
                        Some(status) if answer.status == StatusCode::OK => status,
                        _ => bail!("GET {path}: {}", answer.describe()),
                    };
                    seen.push((order, status, at));
                }
                anyhow::Ok((client, seen))
            });
        }
        let mut settled = Vec::new();
        while let Some(result) = tasks.join_next().await {
            let (client, seen) = result??;
            clients.push(client);
            for (order, status, at) in seen {
                match status.as_str() {
                    "PENDING" => {
                        if order.created.elapsed() > SETTLE_TIMEOUT {
                            bail!(
                                "order {} is still PENDING {SETTLE_TIMEOUT:?} after its 201",
                                order.id
                            );
                        }
                    }
                    "PAID" => {
                        paid.push(
                            u32::try_from(at.duration_since(order.created).as_micros())
                                .unwrap_or(u32::MAX),
                        );
                        last_paid = last_paid.max(at);
                        progress.paid.fetch_add(1, Ordering::Relaxed);
                        settled.push(order.id);
                    }
                    other => {
                        progress.fail(format!("order {} ended {other}, not PAID", order.id));
                        settled.push(order.id);
                    }
                }
            }
        }
        progress
            .pending
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .retain(|order| !settled.contains(&order.id));
        tokio::time::sleep_until((round_started + every).into()).await;
        rounds += 1;
        poll_time += round_started.elapsed();
    }
    Ok((paid, last_paid, rounds, poll_time))
}
