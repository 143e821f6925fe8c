//! Part 2 of `bench shop`: orders, one at a time on an idle shop and then in a burst (a closed
//! loop, or an open loop at `--order-rate`), each followed to PAID by polling and to
//! `order.paid` on NATS.

use super::Args;
use crate::harness::client::Client;
use crate::harness::cpu::CpuTimes;
use crate::harness::shop_host::{Signer, create_product, order_body};
use crate::harness::stats::{micros_since, percentile_ms};
use anyhow::{Context as _, bail};
use http::{Method, StatusCode};
use serde_json::Value as Json;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// An order not PAID this long after its 201 fails the benchmark.
const SETTLE_TIMEOUT: Duration = Duration::from_secs(60);
/// Connections the order poller uses.
const POLL_CONNECTIONS: usize = 2;
/// When a burst's orders are read back, how often one whose `order.paid` has not arrived is
/// polled (to see one that ended otherwise, or whose event was lost).
const STRAGGLER_POLL: Duration = Duration::from_secs(1);

/// Latencies of one phase of orders, in µs, sorted.
#[derive(Default)]
pub(super) struct Phase {
    orders: usize,
    pub(super) failed: usize,
    /// POST → 201.
    pub(super) post_us: Vec<u32>,
    /// 201 → the first GET answering PAID (one at a time; a burst reads its orders back
    /// only after its last `order.paid`, untimed).
    pub(super) paid_us: Vec<u32>,
    /// Orders seen paid: by GET one at a time, by `order.paid` in a burst.
    pub(super) paid_count: usize,
    /// 201 → `order.paid` received from NATS.
    event_us: Vec<u32>,
    /// First POST sent → last 201 received.
    pub(super) post_window: Duration,
    /// First POST sent → last PAID seen (a burst: the last `order.paid` received).
    pub(super) paid_window: Duration,
    /// Orders answered 201 whose `order.paid` had not arrived when the last 201 did: the
    /// backlog a pipeline that falls behind builds up (a few in flight when it keeps up).
    unpaid_at_end: Option<usize>,
    /// CPU seconds each serving process spent from the first POST to the last PAID.
    cpu: Vec<(&'static str, f64)>,
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
        let by_get = if self.paid_us.is_empty() {
            "read back after".to_owned()
        } else {
            format!(
                "{:.1} / {:.1}",
                p(&self.paid_us, 0.5),
                p(&self.paid_us, 0.99)
            )
        };
        format!(
            "| {label} | {} | {} | {:.1} / {:.1} | {by_get} | {:.1} / {:.1} | {} | {} | {} |",
            self.orders,
            rate(self.post_us.len(), self.post_window),
            p(&self.post_us, 0.5),
            p(&self.post_us, 0.99),
            p(&self.event_us, 0.5),
            p(&self.event_us, 0.99),
            rate(self.paid_count, self.paid_window),
            self.unpaid_at_end
                .map_or_else(|| "—".to_owned(), |n| n.to_string()),
            self.failed
        )
    }

    fn poll_resolution_ms(&self) -> f64 {
        self.poll_time.as_secs_f64() * 1000.0 / self.poll_rounds.max(1) as f64
    }
}

pub(super) struct OrdersResult {
    idle: Phase,
    burst: Phase,
}

impl OrdersResult {
    pub(super) fn print(&self, args: &Args) {
        println!(
            "orders: one line of quantity 1, tok_visa, one customer (token) per order; \
             {} products. One at a time: each polled with GET /api/orders/{{id}} every {} ms \
             ({:.1} ms per round) until PAID. In the burst nothing polls: an order counts as \
             paid when its order.paid arrives on NATS, and the burst ends with the last one; \
             every order is then read back with GET ({} rounds over {POLL_CONNECTIONS} \
             connections) and must be PAID",
            args.order_concurrency.max(1),
            args.poll_ms,
            self.idle.poll_resolution_ms(),
            self.burst.poll_rounds,
        );
        println!();
        println!(
            "| orders placed | orders | orders/s (POST → 201) | POST p50 / p99 ms | \
             201 → PAID (GET) p50 / p99 ms | 201 → order.paid (NATS) p50 / p99 ms | \
             paid/s (first POST → last paid) | not yet paid at the last 201 | failed |"
        );
        println!("|---|---:|---:|---:|---:|---:|---:|---:|---:|");
        println!("{}", self.idle.row("one at a time, idle shop", false));
        println!("{}", self.burst.row(&placing(args), true));
        if let Some(unpaid) = self.burst.unpaid_at_end {
            // What a sustained run settles at: a pipeline that falls behind pays its backlog
            // only after placing stops, which the paid/s of the whole burst hides.
            let window = self.burst.post_window.as_secs_f64();
            let placed = self.burst.post_us.len();
            println!();
            println!(
                "while placing (first POST → last 201, {window:.1} s): {:.1} orders paid per \
                 second against {:.1} placed (paid ÷ placed {:.2})",
                placed.saturating_sub(unpaid) as f64 / window,
                placed as f64 / window,
                placed.saturating_sub(unpaid) as f64 / placed.max(1) as f64,
            );
        }
        if !self.burst.cpu.is_empty() {
            let orders = self.burst.paid_count.max(1) as f64;
            let total: f64 = self.burst.cpu.iter().map(|(_, s)| s).sum();
            let each: Vec<String> = self
                .burst
                .cpu
                .iter()
                .map(|(name, seconds)| format!("{name} {:.2}", seconds * 1000.0 / orders))
                .collect();
            println!();
            println!(
                "CPU per paid order in the burst (ms, first POST → last PAID, {:.1} s on {} \
                 cores): {}; all {:.2} ({:.0}% of the cores)",
                self.burst.paid_window.as_secs_f64(),
                crate::harness::stats::cores(),
                each.join(", "),
                total * 1000.0 / orders,
                100.0 * total
                    / (self.burst.paid_window.as_secs_f64()
                        * crate::harness::stats::cores() as f64)
            );
        }
    }
}

/// How the burst places its orders, for the log and the table.
fn placing(args: &Args) -> String {
    match args.order_rate {
        Some(rate) => format!(
            "{rate} per second (open loop, at most {} in flight)",
            args.order_concurrency.max(1)
        ),
        None => format!("{} at a time", args.order_concurrency.max(1)),
    }
}

/// An order answered 201.
#[derive(Clone)]
struct Placed {
    id: String,
    token: String,
    created: Instant,
}

/// What the placing clients and the read-back share.
#[derive(Default)]
struct Progress {
    placed: Mutex<Vec<Placed>>,
    failed: AtomicUsize,
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
pub(super) type PaidEvents = Arc<Mutex<std::collections::HashMap<String, Instant>>>;

pub(super) async fn listen_for_paid(nats_url: &str) -> anyhow::Result<PaidEvents> {
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

/// Of `placed`: how many have no `order.paid` yet, and when the last one seen arrived.
fn awaited(events: &PaidEvents, placed: &[Placed]) -> (usize, Option<Instant>) {
    let seen = events.lock().unwrap_or_else(|e| e.into_inner());
    let arrived: Vec<Instant> = placed
        .iter()
        .filter_map(|order| seen.get(&order.id).copied())
        .collect();
    (placed.len() - arrived.len(), arrived.into_iter().max())
}

/// 201 → `order.paid` for each of `placed`, waiting up to 5 s for stragglers.
async fn event_latencies(events: &PaidEvents, placed: &[Placed]) -> Vec<u32> {
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let latencies: Vec<u32> = {
            let seen = events.lock().unwrap_or_else(|e| e.into_inner());
            placed
                .iter()
                .filter_map(|order| {
                    seen.get(&order.id)
                        .map(|at| at.duration_since(order.created))
                })
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

/// The orders on the hosts at `addrs` (the first one also serves the idle orders and the
/// polling; the placing clients are spread over all).
pub(super) async fn orders(
    args: &Args,
    addrs: &[String],
    signer: &Signer,
    tag: &str,
) -> anyhow::Result<OrdersResult> {
    let addr = addrs[0].as_str();
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
    let burst = burst_orders(args, addrs, signer, products, &events).await?;
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
        placed.push(Placed { id, token, created });
    }
    phase.post_us.sort_unstable();
    phase.paid_us.sort_unstable();
    phase.paid_count = phase.paid_us.len();
    phase.event_us = event_latencies(events, &placed).await;
    Ok(phase)
}

/// `--orders` orders placed by `--order-concurrency` clients (a closed loop, or an open one at
/// `--order-rate`), paid as their `order.paid` arrives, then each read back PAID.
pub(super) async fn burst_orders(
    args: &Args,
    addrs: &[String],
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
    eprintln!("xtask: placing {} orders, {}", args.orders, placing(args));

    let progress = Arc::new(Progress::default());
    let next = Arc::new(AtomicUsize::new(0));
    let mut placers = tokio::task::JoinSet::new();
    let mut clients = Vec::new();
    for index in 0..concurrency {
        clients.push(Client::connect(&addrs[index % addrs.len()]).await?);
    }
    let addr = addrs[0].as_str();
    let cpu_before = CpuTimes::now();
    let started = Instant::now();
    let rate = args.order_rate;
    for mut client in clients {
        let (progress, next, tokens, products) = (
            progress.clone(),
            next.clone(),
            tokens.clone(),
            products.clone(),
        );
        placers.spawn(async move {
            let mut latencies = Vec::new();
            loop {
                let index = next.fetch_add(1, Ordering::Relaxed);
                let Some(token) = tokens.get(index) else {
                    break;
                };
                let body = order_body(&products[index % products.len()]);
                // Open loop: order `index` is due at `index / rate`.
                let sent = match rate {
                    None => Instant::now(),
                    Some(rate) => {
                        let due = started + Duration::from_secs_f64(index as f64 / rate);
                        crate::loadgen::start_at(due).await
                    }
                };
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
                        progress
                            .placed
                            .lock()
                            .unwrap_or_else(|e| e.into_inner())
                            .push(Placed {
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
        let events = events.clone();
        move || {
            // Of this burst's orders: the idle phase's are in `events` too.
            let placed = progress.placed.lock().unwrap_or_else(|e| e.into_inner());
            let (unpaid, _) = awaited(&events, &placed);
            eprintln!(
                "xtask: {:>5.1} s: {} of {total} orders placed, {} paid (order.paid seen), \
                 {} failed",
                started.elapsed().as_secs_f64(),
                placed.len(),
                placed.len() - unpaid,
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
    let placed = progress
        .placed
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .clone();
    let (unpaid_at_end, _) = awaited(events, &placed);
    // The burst ends with the last `order.paid` of its orders (or SETTLE_TIMEOUT after the
    // last 201 without it); nothing polls the shop meanwhile.
    let last_event = loop {
        let (missing, last) = awaited(events, &placed);
        if missing == 0 || last_created.elapsed() > SETTLE_TIMEOUT {
            break last;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    };
    let cpu = CpuTimes::now().since(&cpu_before);
    ticker.abort();
    print_progress();
    if let Some(err) = placing_error {
        return Err(err.context("placing orders"));
    }
    // Then every order is read back: PAID, or polled until it is (one whose event was lost).
    eprintln!(
        "xtask: checking that each of {} orders is PAID",
        placed.len()
    );
    let (checked, poll_rounds, poll_time) = read_back(
        addr,
        placed.clone(),
        &progress,
        events,
        Duration::from_millis(args.poll_ms),
    )
    .await?;
    let failed = progress.report_failures();
    let Some(last_event) = last_event else {
        bail!("no order was placed and paid");
    };
    if checked < placed.len() {
        bail!(
            "{} of {} orders were not PAID",
            placed.len() - checked,
            placed.len()
        );
    }
    post_us.sort_unstable();
    let event_us = event_latencies(events, &placed).await;
    Ok(Phase {
        orders: args.orders,
        failed,
        post_us,
        paid_us: Vec::new(),
        paid_count: event_us.len(),
        event_us,
        post_window: last_created.duration_since(started),
        paid_window: last_event.duration_since(started),
        unpaid_at_end: Some(unpaid_at_end),
        cpu,
        poll_rounds,
        poll_time,
    })
}

/// After a burst: reads `orders` back in rounds at least `every` apart, split over
/// [`POLL_CONNECTIONS`] connections, until none is pending: an order once its `order.paid`
/// arrived on NATS, or [`STRAGGLER_POLL`] after its 201 or its last poll without it. An order
/// that ended otherwise is a failure of `progress`; one still PENDING [`SETTLE_TIMEOUT`] after
/// its 201 fails the run. Returns how many were PAID, the rounds and their total time.
async fn read_back(
    addr: &str,
    mut pending: Vec<Placed>,
    progress: &Progress,
    events: &PaidEvents,
    every: Duration,
) -> anyhow::Result<(usize, u64, Duration)> {
    let mut clients = Vec::new();
    for _ in 0..POLL_CONNECTIONS {
        clients.push(Client::connect(addr).await?);
    }
    let mut paid = 0;
    let (mut rounds, mut poll_time) = (0u64, Duration::ZERO);
    let mut polled_at = std::collections::HashMap::<String, Instant>::new();
    while !pending.is_empty() {
        let round_started = Instant::now();
        let snapshot: Vec<Placed> = {
            let seen = events.lock().unwrap_or_else(|e| e.into_inner());
            pending
                .iter()
                .filter(|order| {
                    let last = polled_at.get(&order.id).copied().unwrap_or(order.created);
                    seen.contains_key(&order.id) || last.elapsed() >= STRAGGLER_POLL
                })
                .cloned()
                .collect()
        };
        for order in &snapshot {
            polled_at.insert(order.id.clone(), round_started);
        }
        // Split the pending orders over the connections and poll each once.
        let mut tasks = tokio::task::JoinSet::new();
        for (slot, mut client) in clients.drain(..).enumerate() {
            let mine: Vec<Placed> = snapshot
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
                    let status = answer
                        .json()
                        .ok()
                        .and_then(|o| o["status"].as_str().map(str::to_owned));
                    let status = match status {
                        Some(status) if answer.status == StatusCode::OK => status,
                        _ => bail!("GET {path}: {}", answer.describe()),
                    };
                    seen.push((order, status));
                }
                anyhow::Ok((client, seen))
            });
        }
        let mut settled = std::collections::HashSet::new();
        while let Some(result) = tasks.join_next().await {
            let (client, seen) = result??;
            clients.push(client);
            for (order, status) in seen {
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
                        paid += 1;
                        settled.insert(order.id);
                    }
                    other => {
                        progress.fail(format!("order {} ended {other}, not PAID", order.id));
                        settled.insert(order.id);
                    }
                }
            }
        }
        pending.retain(|order| !settled.contains(&order.id));
        polled_at.retain(|id, _| !settled.contains(id));
        tokio::time::sleep_until((round_started + every).into()).await;
        rounds += 1;
        poll_time += round_started.elapsed();
    }
    Ok((paid, rounds, poll_time))
}
