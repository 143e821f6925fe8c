//! `cargo xtask bench shop`: the shop (components/catalog, order, payment, notification) on the
//! production backends — PostgreSQL, Redis, NATS JetStream — served by the release host.
//!
//! 1. **A cached product read.** `GET /api/products/{id}` after one warm-up miss, so every
//!    measured request is a cache hit (checked: each answer's `x-cache` must say `hit`), against
//!    a native hyper handler in this process doing the same work: one Redis GET of the cached
//!    product JSON (the catalog's key, through the same `agora-cache` Redis client the host
//!    uses, on one kept multiplexed connection) and answering it. Same client, same number of
//!    connections and requests; the sides alternate for `--rounds` rounds and the median round
//!    (by req/s) of each is shown. With `--reuse N` (default 100) a third side: a second host
//!    serving only the catalog, reusing each instance for up to N requests.
//! 2. **Orders.** First `--idle-orders` orders one at a time, each polled until PAID (the
//!    pipeline's latency on an idle shop); then `--orders` orders (one customer and one token
//!    each, one line of quantity 1, `tok_visa`) placed by `--order-concurrency` closed-loop
//!    clients, or with `--order-rate R` at R per second in an open loop (at most
//!    `--order-concurrency` in flight; a POST late for want of a free client counts from its
//!    due time). orders/s is the POST rate; 201 → PAID is the time from the 201 to the first
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
//!
//! The parts: [`read`] (the cached product read and its native baseline), [`orders`], and
//! [`observability`] (`--observability-cost`: the read and the order burst with nothing
//! exported, scraped and traced).

mod observability;
mod orders;
mod read;

pub(crate) use read::{serve_native, start_native};

use crate::harness::backends::{BackendUrls, client_and_server};
use crate::harness::process::{Host, spawn_and_read_addr};
use crate::harness::shop_host::{host_command, replica_command, shop_manifest, with_reuse};
use crate::harness::stats::Machine;
use crate::{cargo, components, target_dir};
use observability::observability_cost;
use orders::orders;
use read::product_read;

/// The shop's components this benchmark serves (account, hello and example are left out).
const SHOP: [&str; 4] = ["catalog", "order", "payment", "notification"];

#[derive(clap::Args)]
pub(crate) struct Args {
    #[command(flatten)]
    backends: BackendUrls,
    /// Product read: concurrent keep-alive connections.
    #[arg(long, default_value_t = 32)]
    connections: usize,
    /// Product read: requests measured per side and round.
    #[arg(long, default_value_t = 20_000)]
    requests: u64,
    /// Product read: rounds (agora then native each round); the median round is shown. Seven:
    /// on two shared cores one side's rate moves by a fifth between minutes, and three rounds
    /// could not tell a ratio of 0.6 from 0.7 (BENCHMARKS.md, eleventh session).
    #[arg(long, default_value_t = 7)]
    rounds: usize,
    /// Product read: also measured on a second host serving only the catalog, whose instances
    /// each serve up to this many requests (`[component.instances] reuse`); 1 leaves it out.
    #[arg(long, default_value_t = 100, value_parser = clap::value_parser!(u32).range(1..))]
    reuse: u32,
    /// The main host's components (catalog, order, payment, notification) reuse each instance
    /// for up to this many requests or events; 1 (the default): agora.toml's fresh instances.
    /// The orders are measured in that mode.
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u32).range(1..))]
    shop_reuse: u32,
    /// Orders placed one at a time first, each waiting for PAID (the idle shop's latency).
    #[arg(long, default_value_t = 20)]
    idle_orders: usize,
    /// Orders then placed by concurrent clients.
    #[arg(long, default_value_t = 200)]
    orders: usize,
    /// Orders placed at once (closed loop), or at most in flight at once (with
    /// `--order-rate`).
    #[arg(long, default_value_t = 8)]
    order_concurrency: usize,
    /// Orders per second, placed at fixed times whether or not earlier ones were answered (an
    /// open loop); a POST's latency counts from when it was due. Without it, a closed loop.
    #[arg(long, value_parser = crate::loadgen::parse_rate)]
    order_rate: Option<f64>,
    /// Orders: hosts serving the shop at once, sharing PostgreSQL, Redis and NATS (started after
    /// the read); the placing clients are spread over them, and each host's `/metrics` then
    /// tells how many events it handled — each must be handled once per component in all.
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u16).range(1..=8))]
    replicas: u16,
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

pub(crate) fn run(args: &Args) -> anyhow::Result<()> {
    let machine = Machine::observe();
    // Kept between runs: the data folder holds only the host's compiled components here.
    let work = target_dir().join("bench-shop");
    std::fs::create_dir_all(&work)?;

    let (client, server) = client_and_server(&args.backends, &work)?;

    components::build_all()?;
    eprintln!("xtask: building agora (release)");
    crate::run(cargo().args(["build", "--release", "--package", "agora-host"]))?;
    if args.observability_cost {
        return observability_cost(args, &work, &client);
    }

    let (mut manifest, auth) = shop_manifest(&work, &SHOP)?;
    if args.shop_reuse > 1 {
        let reusing = work.join("shop-reuse.toml");
        std::fs::copy(&manifest, &reusing)?;
        for name in SHOP {
            with_reuse(&reusing, name, args.shop_reuse, &reusing)?;
        }
        manifest = reusing;
    }
    let (mut command, signer) = host_command(&args.backends, &manifest, &work, "data", auth)?;
    let mut metrics_addrs = Vec::new();
    if args.replicas > 1 {
        let port = crate::harness::process::free_port()?;
        command.args(["--metrics-listen", &format!("127.0.0.1:{port}")]);
        metrics_addrs.push(format!("127.0.0.1:{port}"));
    }
    eprintln!("xtask: starting agora with the shop (catalog, order, payment, notification)");
    let (child, addr) = spawn_and_read_addr(&mut command)?;
    let mut host = Host(Some(child));

    // The same catalog reusing its instances, on a host of its own (same backends, same cache
    // entries), for the read's side-by-side of the two modes.
    let mut reusing = None;
    if args.reuse > 1 {
        let (catalog, auth) = shop_manifest(&work, &["catalog"])?;
        let reuse_manifest = work.join("catalog-reuse.toml");
        with_reuse(&catalog, "catalog", args.reuse, &reuse_manifest)?;
        let (mut command, _) =
            host_command(&args.backends, &reuse_manifest, &work, "data-reuse", auth)?;
        eprintln!(
            "xtask: starting a second agora with the catalog only, reusing instances (reuse = {})",
            args.reuse
        );
        let (child, reuse_addr) = spawn_and_read_addr(&mut command)?;
        reusing = Some((Host(Some(child)), reuse_addr));
    }

    let mut replicas = Vec::new();
    let outcome = client.block_on(async {
        let tag = uuid::Uuid::new_v4().simple().to_string()[..10].to_owned();
        let reuse = reusing
            .as_ref()
            .and_then(|(host, addr)| Some((addr.as_str(), host.pid()?)));
        let pid = host.pid().unwrap_or_default();
        let read = product_read(args, (&addr, pid), reuse, &signer, &tag, &server).await;
        // The second host is stopped before the orders: it would share the machine's cores.
        if let Some((host, _)) = reusing.as_mut() {
            host.stop();
        }
        let read = read?;
        let mut addrs = vec![addr.clone()];
        for replica in 2..=args.replicas {
            let port = crate::harness::process::free_port()?;
            let mut command = replica_command(&command, &work, &format!("data-{replica}"));
            command.args(["--metrics-listen", &format!("127.0.0.1:{port}")]);
            eprintln!("xtask: starting replica {replica} of {}", args.replicas);
            let (child, replica_addr) = spawn_and_read_addr(&mut command)?;
            replicas.push(Host(Some(child)));
            addrs.push(replica_addr);
            metrics_addrs.push(format!("127.0.0.1:{port}"));
        }
        let orders = orders(args, &addrs, &signer, &tag).await?;
        let handled = if args.replicas > 1 {
            Some(handled_events(&metrics_addrs).await?)
        } else {
            None
        };
        anyhow::Ok((read, orders, handled))
    });
    for mut replica in replicas {
        replica.stop();
    }
    host.stop();
    let (read, orders, handled) = outcome?;
    println!();
    println!("{}", machine.line());
    println!();
    read.print(args);
    println!();
    orders.print(args);
    if args.shop_reuse > 1 {
        println!();
        println!(
            "(catalog, order, payment and notification reused instances for up to {} requests or events each)",
            args.shop_reuse
        );
    }
    if let Some(handled) = handled {
        println!();
        print_handled(&handled, args);
    }
    Ok(())
}

/// Events handled per (component, subject), one count per replica, from their `/metrics`.
type Handled = std::collections::BTreeMap<(String, String), Vec<u64>>;

/// Reads `agora_events_total{…,outcome="handled"}` from each replica's `/metrics`, after the
/// replicas have had a moment to acknowledge what they handled.
async fn handled_events(metrics_addrs: &[String]) -> anyhow::Result<Handled> {
    tokio::time::sleep(std::time::Duration::from_secs(1)).await;
    let mut handled = Handled::new();
    for (index, addr) in metrics_addrs.iter().enumerate() {
        let mut client = crate::harness::client::Client::connect(addr).await?;
        let answer = client
            .send(http::Method::GET, "/metrics", None, None)
            .await?;
        if answer.status != http::StatusCode::OK {
            anyhow::bail!("GET http://{addr}/metrics: {}", answer.describe());
        }
        for line in String::from_utf8_lossy(&answer.body).lines() {
            let Some(labels) = line
                .strip_prefix("agora_events_total{")
                .and_then(|rest| rest.split_once('}'))
            else {
                continue;
            };
            let label = |name: &str| {
                labels
                    .0
                    .split(',')
                    .find_map(|pair| pair.strip_prefix(&format!("{name}=\"")))
                    .map(|value| value.trim_end_matches('"').to_owned())
            };
            if label("outcome").as_deref() != Some("handled") {
                continue;
            }
            let (Some(component), Some(subject)) = (label("component"), label("subject")) else {
                continue;
            };
            let count = labels.1.trim().parse::<f64>().unwrap_or(0.0) as u64;
            let counts = handled
                .entry((component, subject))
                .or_insert_with(|| vec![0; metrics_addrs.len()]);
            counts[index] += count;
        }
    }
    Ok(handled)
}

fn print_handled(handled: &Handled, args: &Args) {
    let orders = args.idle_orders + args.orders;
    println!(
        "Events handled by {} replicas sharing PostgreSQL, Redis and NATS ({orders} orders placed, \
         spread over the replicas; from each replica's /metrics):",
        args.replicas
    );
    println!();
    println!("| component ← subject | per replica | in all |");
    println!("|---|---|---:|");
    for ((component, subject), counts) in handled {
        let per: Vec<String> = counts.iter().map(u64::to_string).collect();
        println!(
            "| {component} ← {subject} | {} | {} |",
            per.join(" / "),
            counts.iter().sum::<u64>()
        );
    }
}
