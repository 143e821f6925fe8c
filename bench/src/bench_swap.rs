//! `cargo xtask bench swap`: zero-downtime hot swap on the shop, served by the release host on
//! the production backends (PostgreSQL, Redis, NATS JetStream) with its admin API on.
//!
//! 1. **Upload → serving**, for each of the shop's components (account, catalog, order,
//!    payment, notification, gateway), `--repeats` times each:
//!    - *compiled*: the component's .wasm with a custom section appended (name `agora-bench`,
//!      a random nonce as payload), so its bytes are new and the compile cache misses;
//!    - *from cache*: then the original bytes again, which the host compiled (or read from its
//!      cache) when it started, so the compile cache hits — checked: the answer must say
//!      `"compiled": false`.
//!
//!    Timed from sending `PUT /admin/components/{name}` to its 200 (the host answers once the
//!    new version is current), and to the answer of the component's probe request sent right
//!    after it on a kept connection (the first request the new version serves); the host's own
//!    `validation_ms` is shown beside. After each swap the admin API must name the uploaded
//!    digest as current.
//! 2. **A product read while components are swapped.** The cached `GET /api/products/{id}`
//!    (every answer must be a 200 with `x-cache: hit`, as in `bench shop`) by `--connections`
//!    closed-loop connections for `--seconds`, in four phases: no swaps; the catalog (which
//!    serves the read) swapped every `--swap-every-ms` between two versions already in the
//!    compile cache; the order component swapped the same way (it plays no part in the read);
//!    the catalog switched between the same two versions by `POST …/rollback` (the switch
//!    alone, no validation).
//!    The phases alternate for `--rounds` rounds; each phase's rounds are pooled. Any failed
//!    request fails the benchmark, after the table is printed.
//!
//! The nonce versions' compile-cache entries are deleted after the run; the originals' are kept
//! (the folder is target/bench-swap/data).

use crate::bench::BackendUrls;
use crate::bench_shop::{self as shop, Amount, Client, Host, Signer};
use crate::loadgen::Report;
use crate::{cargo, components, target_dir};
use agora_cache::RedisCache;
use anyhow::{Context as _, bail};
use bytes::Bytes;
use http::{Method, StatusCode};
use std::io::{BufRead as _, BufReader};
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

/// A request a component answers cheaply; a 200 means it serves.
struct Probe {
    component: &'static str,
    method: Method,
    /// `{order}` stands for the id of the fixture's order.
    path: &'static str,
    as_who: Who,
    /// A JSON body.
    body: Option<&'static str>,
}

/// Whose token a request carries.
#[derive(Clone, Copy)]
enum Who {
    /// None (a public route).
    Anyone,
    /// The fixture's customer (roles `USER`).
    Customer,
    /// An admin (roles `USER`, `ADMIN`).
    Admin,
}

/// agora.toml's shop, each component with its probe.
static PROBES: [Probe; 6] = [
    Probe {
        component: "account",
        method: Method::GET,
        path: "/api/accounts?page_size=1",
        as_who: Who::Admin,
        body: None,
    },
    Probe {
        component: "catalog",
        method: Method::GET,
        path: "/api/products?page_size=1",
        as_who: Who::Anyone,
        body: None,
    },
    Probe {
        component: "order",
        method: Method::GET,
        path: "/api/orders",
        as_who: Who::Customer,
        body: None,
    },
    Probe {
        component: "payment",
        method: Method::GET,
        path: "/api/payments?order_id={order}",
        as_who: Who::Customer,
        body: None,
    },
    Probe {
        component: "notification",
        method: Method::GET,
        path: "/api/notifications",
        as_who: Who::Customer,
        body: None,
    },
    Probe {
        component: "gateway",
        method: Method::POST,
        path: "/graphql",
        as_who: Who::Anyone,
        body: Some(r#"{"query":"{ __typename }"}"#),
    },
];

/// The name of the custom section that makes a version's bytes new.
const NONCE_SECTION: &str = "agora-bench";
/// How long one admin request may take (a compile on two busy cores can be slow).
const ADMIN_TIMEOUT: Duration = Duration::from_secs(600);

#[derive(clap::Args)]
pub struct Args {
    #[command(flatten)]
    backends: BackendUrls,
    /// Upload → serving: swaps measured per component and kind (compiled, from the cache).
    #[arg(long, default_value_t = 5)]
    repeats: usize,
    /// Product read: concurrent keep-alive connections.
    #[arg(long, default_value_t = 8)]
    connections: usize,
    /// Product read: seconds measured per phase and round.
    #[arg(long, default_value_t = 10)]
    seconds: u64,
    /// Product read: rounds of the four phases (no swaps; catalog, order uploaded; catalog
    /// rolled back).
    #[arg(long, default_value_t = 3)]
    rounds: usize,
    /// Product read: milliseconds between the starts of two swaps.
    #[arg(long, default_value_t = 200)]
    swap_every_ms: u64,
}

pub fn run(args: &Args) -> anyhow::Result<()> {
    let cores = std::thread::available_parallelism().map_or(0, usize::from);
    let load_before = shop::load_average();
    let work = target_dir().join("bench-swap");
    std::fs::create_dir_all(&work)?;
    // The client side: one thread, as in `bench shop`.
    let client = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    client.block_on(shop::check_backends(&args.backends, &work))?;

    let built = components::build_all()?;
    let mut wasm = Vec::new();
    for probe in &PROBES {
        let path = &built
            .iter()
            .find(|c| c.name == probe.component)
            .with_context(|| format!("no component named {} was built", probe.component))?
            .path;
        let bytes = std::fs::read(path).with_context(|| format!("reading {}", path.display()))?;
        wasm.push(Bytes::from(bytes));
    }
    eprintln!("xtask: building agora (release)");
    crate::run(cargo().args(["build", "--release", "--package", "agora-host"]))?;

    let names: Vec<&str> = PROBES.iter().map(|p| p.component).collect();
    let (manifest, auth) = shop::shop_manifest(&work, &names)?;
    let (mut command, signer) = shop::host_command(&args.backends, &manifest, &work, auth)?;
    let token = format!("bench-swap-{}", uuid::Uuid::new_v4().simple());
    command
        .args(["--admin-listen", "127.0.0.1:0"])
        .env("AGORA_ADMIN_TOKEN", &token);
    eprintln!(
        "xtask: starting agora with the shop ({}) and its admin API",
        names.join(", ")
    );
    let (mut host, addr, admin_addr) = spawn_with_admin(&mut command)?;
    let admin = AdminApi {
        addr: admin_addr,
        token,
    };

    let mut nonce_digests = Vec::new();
    let outcome = client.block_on(async {
        eprintln!("xtask: creating a product and a paid order (for the probes and the load)");
        let fixture = Fixture::create(&addr, &signer).await?;
        let swaps =
            upload_to_serving(args, &addr, &admin, &fixture, &wasm, &mut nonce_digests).await?;
        let catalog = wasm[index_of("catalog")].clone();
        let order = wasm[index_of("order")].clone();
        let pairs = [("catalog", catalog), ("order", order)];
        let phases = under_swaps(args, &addr, &admin, &fixture, pairs, &mut nonce_digests).await?;
        anyhow::Ok((swaps, phases))
    });
    host.stop();
    remove_cache_entries(&work.join("data/compiled"), &nonce_digests);
    let (swaps, phases) = outcome?;
    eprintln!("xtask: fleet: two replicas, `agora deploy` → both serving");
    let fleet = crate::bench_fleet::run(&args.backends.nats_url, args.repeats, |bytes| {
        with_nonce(bytes).to_vec()
    })?;
    let load_after = shop::load_average();

    println!();
    println!(
        "machine: {cores} cores; load average {load_before} before, {load_after} after \
         (1, 5, 15 min)"
    );
    println!();
    print_swaps(args, &swaps);
    println!();
    print_phases(args, &phases);
    println!();
    crate::bench_fleet::print(&fleet);
    let failed: u64 = phases.iter().map(|p| p.report.errors).sum();
    if failed > 0 {
        bail!(
            "{failed} requests failed during the product read (see above): a swap must cost none"
        );
    }
    Ok(())
}

fn index_of(component: &str) -> usize {
    PROBES
        .iter()
        .position(|p| p.component == component)
        .unwrap_or_default()
}

/// Starts the host and reads the lines it prints first: `agora listening on http://ADDR` and
/// `agora admin API on http://ADDR`. The rest of its stdout is read on a thread of its own, so
/// the host never writes to a closed pipe.
fn spawn_with_admin(command: &mut Command) -> anyhow::Result<(Host, String, String)> {
    // stderr is inherited: the host's errors show in the benchmark's output.
    let child = command.stdout(Stdio::piped()).spawn();
    let mut host = Host(Some(
        child.with_context(|| format!("cannot start {command:?}"))?,
    ));
    let stdout = host.0.as_mut().and_then(|child| child.stdout.take());
    let mut lines = BufReader::new(stdout.context("no stdout")?).lines();
    let (mut addr, mut admin) = (None, None);
    while addr.is_none() || admin.is_none() {
        let Some(line) = lines.next().transpose()? else {
            bail!("the host stopped before printing both its addresses (see its errors above)");
        };
        let found = line.split_once("http://").map(|(_, a)| a.trim().to_owned());
        if line.starts_with("agora admin API on ") {
            admin = found;
        } else if line.starts_with("agora listening on ") {
            addr = found;
        }
    }
    std::thread::spawn(move || lines.for_each(drop));
    Ok((host, addr.unwrap_or_default(), admin.unwrap_or_default()))
}

/// What the probes and the load need in the shop: tokens, a product, and a paid order of the
/// customer's (so that the payment component has a payment to answer with).
struct Fixture {
    admin: String,
    customer: String,
    product: String,
    order: String,
}

impl Fixture {
    async fn create(addr: &str, signer: &Signer) -> anyhow::Result<Fixture> {
        let admin = signer.token(&["USER", "ADMIN"])?;
        let customer = signer.token(&["USER"])?;
        let mut client = Client::connect(addr).await?;
        let tag = uuid::Uuid::new_v4().simple().to_string()[..10].to_owned();
        let sku = format!("bench-swap-{tag}");
        let product = shop::create_product(&mut client, &admin, &sku, 1_000_000).await?;
        let body = shop::order_body(&product);
        let answer = client
            .send(Method::POST, "/api/orders", Some(&customer), Some(&body))
            .await?;
        if answer.status != StatusCode::CREATED {
            bail!("POST /api/orders: {}", answer.describe());
        }
        let order = answer.json()?["id"]
            .as_str()
            .context("the order has no id")?
            .to_owned();
        let path = format!("/api/payments?order_id={order}");
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            let answer = client
                .send(Method::GET, &path, Some(&customer), None)
                .await?;
            if answer.status == StatusCode::OK {
                break;
            }
            if Instant::now() > deadline {
                bail!("GET {path}, 60 s after the order: {}", answer.describe());
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        Ok(Fixture {
            admin,
            customer,
            product,
            order,
        })
    }

    fn token(&self, who: Who) -> Option<&str> {
        match who {
            Who::Anyone => None,
            Who::Customer => Some(&self.customer),
            Who::Admin => Some(&self.admin),
        }
    }
}

// --- the admin API -----------------------------------------------------------------------

/// Where the host's admin API listens, and its token.
#[derive(Clone)]
struct AdminApi {
    addr: String,
    token: String,
}

/// What a PUT installed.
struct Installed {
    /// `sha256:<hex>`.
    digest: String,
    compiled: bool,
    validation_ms: u64,
}

impl AdminApi {
    async fn connect(&self) -> anyhow::Result<Client> {
        Ok(Client::connect(&self.addr)
            .await?
            .with_timeout(ADMIN_TIMEOUT))
    }

    /// `PUT /admin/components/{component}` with `wasm`; it must change the version serving.
    async fn put(
        &self,
        client: &mut Client,
        component: &str,
        wasm: Bytes,
    ) -> anyhow::Result<Installed> {
        let path = format!("/admin/components/{component}");
        let answer = client
            .send_bytes(
                Method::PUT,
                &path,
                Some(&self.token),
                Some(("application/wasm", wasm)),
            )
            .await?;
        if answer.status != StatusCode::OK {
            bail!("PUT {path}: {}", answer.describe());
        }
        let json = answer.json()?;
        if json["changed"] != true {
            bail!("PUT {path} changed nothing: {}", answer.describe());
        }
        let current = &json["current"];
        match (current["digest"].as_str(), current["compiled"].as_bool()) {
            (Some(digest), Some(compiled)) => Ok(Installed {
                digest: digest.to_owned(),
                compiled,
                validation_ms: json["validation_ms"].as_u64().unwrap_or_default(),
            }),
            _ => bail!(
                "PUT {path}: no current digest and compiled: {}",
                answer.describe()
            ),
        }
    }

    /// `POST /admin/components/{component}/rollback`; it must change the version serving.
    async fn rollback(&self, client: &mut Client, component: &str) -> anyhow::Result<()> {
        let path = format!("/admin/components/{component}/rollback");
        let answer = client
            .send(Method::POST, &path, Some(&self.token), None)
            .await?;
        if answer.status != StatusCode::OK || answer.json()?["changed"] != true {
            bail!("POST {path}: {}", answer.describe());
        }
        Ok(())
    }

    /// The digest of the version of `component` serving now.
    async fn current(&self, client: &mut Client, component: &str) -> anyhow::Result<String> {
        let path = format!("/admin/components/{component}");
        let answer = client
            .send(Method::GET, &path, Some(&self.token), None)
            .await?;
        if answer.status != StatusCode::OK {
            bail!("GET {path}: {}", answer.describe());
        }
        answer.json()?["digest"]
            .as_str()
            .map(str::to_owned)
            .with_context(|| format!("GET {path}: no digest: {}", answer.describe()))
    }
}

/// `wasm` with a component-level custom section appended: id 0, its size, the name
/// [`NONCE_SECTION`] and a random nonce. New bytes, so the compile cache misses; the same code.
fn with_nonce(wasm: &[u8]) -> Bytes {
    let mut content = leb128(NONCE_SECTION.len());
    content.extend_from_slice(NONCE_SECTION.as_bytes());
    content.extend_from_slice(uuid::Uuid::new_v4().as_bytes());
    let mut bytes = wasm.to_vec();
    bytes.push(0);
    bytes.extend(leb128(content.len()));
    bytes.extend(content);
    Bytes::from(bytes)
}

/// `n` as unsigned LEB128.
fn leb128(mut n: usize) -> Vec<u8> {
    let mut out = Vec::new();
    loop {
        let byte = (n & 0x7f) as u8;
        n >>= 7;
        if n == 0 {
            out.push(byte);
            return out;
        }
        out.push(byte | 0x80);
    }
}

/// Deletes the compile-cache entries of `digests` (`sha256:<hex>`): named `<hex>-<engine>.cwasm`.
fn remove_cache_entries(dir: &std::path::Path, digests: &[String]) {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return;
    };
    let prefixes: Vec<String> = digests
        .iter()
        .map(|d| format!("{}-", d.trim_start_matches("sha256:")))
        .collect();
    let mut removed = 0;
    for entry in entries.flatten() {
        let name = entry.file_name().to_string_lossy().into_owned();
        if prefixes.iter().any(|p| name.starts_with(p))
            && std::fs::remove_file(entry.path()).is_ok()
        {
            removed += 1;
        }
    }
    eprintln!(
        "xtask: removed {removed} compile-cache entries of the nonce versions from {}",
        dir.display()
    );
}

// --- 1. upload → serving -----------------------------------------------------------------

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
            let at = |q| shop::percentile_ms(v, q) * scale;
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

struct ComponentSwaps {
    probe: &'static Probe,
    wasm_bytes: usize,
    compiled: Samples,
    cached: Samples,
}

async fn upload_to_serving(
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
                let put_us = shop::micros_since(started);
                ask(&mut app, probe, fixture, "the first request after the swap").await?;
                let first_answer_us = shop::micros_since(started);
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
    let took = shop::micros_since(sent);
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

fn print_swaps(args: &Args, swaps: &[ComponentSwaps]) {
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

// --- 2. a product read while components are swapped ------------------------------------------

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
struct Phase {
    /// The component swapped during it, if any, and how.
    swapped: Option<(&'static str, SwapBy)>,
    report: Report,
    /// p99 of each round, ms.
    round_p99_ms: Vec<f64>,
    /// Request sent → 200 of every swap made during it, µs, sorted.
    put_us: Vec<u32>,
}

async fn under_swaps(
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
            shop::warm(&mut client, &path, &cache, &key).await?;
            let warmup = Amount::Requests(shop::WARMUP_PER_CONNECTION * connections as u64);
            let warmed = shop::closed_loop(addr, &path, connections, warmup, true).await?;
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
            let report = shop::closed_loop(addr, &path, connections, load, true).await;
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
        put_us.push(shop::micros_since(sent));
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

fn print_phases(args: &Args, phases: &[Phase]) {
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
                shop::percentile_ms(&phase.put_us, 0.5),
                shop::percentile_ms(&phase.put_us, 1.0)
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
