//! Fault tests: the shop under a steady load of orders while a backend or a host fails, and
//! what must hold afterwards — every order answered 201 reaches `PAID` or `PAYMENT_FAILED`,
//! with exactly one payment and one gateway charge, and each notification once.
//!
//! Every scenario runs the real `agora` binary on the shop's manifest against servers of its
//! own — PostgreSQL (`initdb`/`pg_ctl` from `/usr/lib/postgresql/*/bin`, or
//! `AGORA_TEST_PG_BIN`), `redis-server` and `nats-server` (from `PATH`) on free ports in a
//! temporary folder — so stopping them disturbs no other test. Where a server binary is
//! missing a scenario says SKIPPED, except under `CI=true`, where it fails. The scenarios run
//! one at a time (they share two cores with the rest of the suite), each with a few seconds
//! of load: this is the short mode the suite runs; `AGORA_CHAOS_ORDERS` raises the number of
//! orders each phase waits for, for a longer run.
//!
//! What each scenario shows is in docs/reliability.md.

#![allow(clippy::unwrap_used)]

mod common;

use agora_sql::{SqlBackend, Value};
use common::process::Agora;
use common::shop::ShopManifest;
use serde_json::{Value as Json, json};
use std::collections::{BTreeMap, HashMap, HashSet};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// One scenario at a time: each starts servers, a host and a load of its own.
static SERIAL: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

const ADMIN_EMAIL: &str = "chaos-admin@shop.test";
const ADMIN_PASSWORD: &str = "chaos-admin-password";
/// The shop's components: agora.toml without the demos.
const SHOP: [&str; 5] = ["account", "catalog", "order", "payment", "notification"];
/// The components' deadline here: long enough for a database call to give up (5 s) and
/// answer 503 before the deadline's 504, short enough that the broker redelivers what a
/// killed host held after 20 s (the deadline plus the host's 10 s grace).
const DEADLINE_MS: u64 = 10_000;
/// Concurrent clients placing orders, and their pause between two orders.
const WORKERS: usize = 3;
const PAUSE: Duration = Duration::from_millis(40);
/// Orders placed at once just before the SIGTERM.
const BURST: usize = 40;
/// Generous bound for something that must happen.
const WAIT: Duration = Duration::from_secs(120);

fn under_ci() -> bool {
    std::env::var("CI").as_deref() == Ok("true")
}

/// Orders each phase of a scenario waits for (`AGORA_CHAOS_ORDERS`, default 8).
fn phase_orders() -> usize {
    std::env::var("AGORA_CHAOS_ORDERS")
        .ok()
        .and_then(|n| n.parse().ok())
        .unwrap_or(8)
}

fn skip<T>(what: &str) -> Option<T> {
    assert!(!under_ci(), "{what} is required under CI=true");
    eprintln!("SKIPPED: {what}");
    None
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// Waits until something accepts TCP connections on `port`.
fn wait_for_port(port: u16, what: &str) {
    let deadline = Instant::now() + Duration::from_secs(60);
    while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
        assert!(Instant::now() < deadline, "{what} did not start on {port}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// The first `name` on `PATH`.
fn on_path(name: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path)
        .map(|dir| dir.join(name))
        .find(|candidate| candidate.is_file())
}

fn run(command: &mut Command, what: &str) {
    let output = command.output().unwrap();
    assert!(
        output.status.success(),
        "{what} failed: {}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
}

// ---------------------------------------------------------------------------------------------
// Private servers.

/// A PostgreSQL cluster of this test's own, in a temporary folder, on a free port.
struct PrivatePostgres {
    bin: PathBuf,
    dir: tempfile::TempDir,
    port: u16,
}

impl PrivatePostgres {
    /// The folder holding `initdb` and `pg_ctl`: `AGORA_TEST_PG_BIN`, or the newest
    /// `/usr/lib/postgresql/*/bin`.
    fn bin() -> Option<PathBuf> {
        if let Ok(dir) = std::env::var("AGORA_TEST_PG_BIN") {
            return Some(dir.into());
        }
        let mut versions: Vec<(u32, PathBuf)> = std::fs::read_dir("/usr/lib/postgresql")
            .ok()?
            .filter_map(|entry| {
                let entry = entry.ok()?;
                let version = entry.file_name().to_str()?.parse().ok()?;
                let bin = entry.path().join("bin");
                bin.join("initdb").is_file().then_some((version, bin))
            })
            .collect();
        versions.sort();
        versions.pop().map(|(_, bin)| bin)
    }

    /// `program` of the cluster's binaries, run as the `postgres` user when this test runs as
    /// root (PostgreSQL refuses to run as root).
    fn command(&self, program: &str) -> Command {
        let program = self.bin.join(program);
        // SAFETY: geteuid has no preconditions.
        if unsafe { libc::geteuid() } == 0 {
            let mut command = Command::new("runuser");
            command.args(["-u", "postgres", "--"]).arg(program);
            command
        } else {
            Command::new(program)
        }
    }

    fn start() -> Option<PrivatePostgres> {
        let Some(bin) = PrivatePostgres::bin() else {
            return skip("PostgreSQL's initdb (set AGORA_TEST_PG_BIN) is not installed");
        };
        let dir = tempfile::tempdir().unwrap();
        // SAFETY: geteuid has no preconditions.
        if unsafe { libc::geteuid() } == 0 {
            let id = |flag: &str| -> u32 {
                let output = Command::new("id")
                    .args([flag, "postgres"])
                    .output()
                    .unwrap();
                String::from_utf8_lossy(&output.stdout)
                    .trim()
                    .parse()
                    .unwrap()
            };
            std::os::unix::fs::chown(dir.path(), Some(id("-u")), Some(id("-g"))).unwrap();
        }
        let postgres = PrivatePostgres {
            bin,
            dir,
            port: free_port(),
        };
        run(
            postgres
                .command("initdb")
                .args([
                    "-U",
                    "postgres",
                    "-A",
                    "trust",
                    "-E",
                    "UTF8",
                    "--no-sync",
                    "-D",
                ])
                .arg(postgres.data()),
            "initdb",
        );
        postgres.resume();
        Some(postgres)
    }

    fn data(&self) -> PathBuf {
        self.dir.path().join("data")
    }

    fn url(&self) -> String {
        format!("postgres://postgres@127.0.0.1:{}/postgres", self.port)
    }

    /// Starts the server (again) on its port, and waits until it accepts connections.
    fn resume(&self) {
        let options = format!(
            "-p {} -k {} -c listen_addresses=127.0.0.1 -c fsync=off -c max_connections=300",
            self.port,
            self.dir.path().display()
        );
        run(
            self.command("pg_ctl")
                .arg("-D")
                .arg(self.data())
                .arg("-l")
                .arg(self.dir.path().join("log"))
                .args(["-o", &options, "-w", "-t", "60", "start"])
                .stdout(Stdio::null()),
            "pg_ctl start",
        );
        wait_for_port(self.port, "PostgreSQL");
    }

    /// Stops the server the way an operator's restart does: it ends every session.
    fn pause(&self) {
        run(
            self.command("pg_ctl")
                .arg("-D")
                .arg(self.data())
                .args(["-m", "fast", "-w", "-t", "60", "stop"])
                .stdout(Stdio::null()),
            "pg_ctl stop",
        );
    }
}

impl Drop for PrivatePostgres {
    fn drop(&mut self) {
        let _ = self
            .command("pg_ctl")
            .arg("-D")
            .arg(self.data())
            .args(["-m", "immediate", "-w", "stop"])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status();
    }
}

/// A server run as a child process on a fixed port, which the test can stop and start again.
struct PrivateServer {
    name: &'static str,
    program: PathBuf,
    args: Vec<String>,
    port: u16,
    child: Option<Child>,
}

impl PrivateServer {
    fn start(name: &'static str, args: Vec<String>, port: u16) -> Option<PrivateServer> {
        let Some(program) = on_path(name) else {
            return skip(&format!("{name} is not on PATH"));
        };
        let mut server = PrivateServer {
            name,
            program,
            args,
            port,
            child: None,
        };
        server.resume();
        Some(server)
    }

    /// `redis-server` on a free port, keeping nothing on disk.
    fn redis(dir: &Path) -> Option<PrivateServer> {
        let port = free_port();
        let port_text = port.to_string();
        let args = [
            "--port",
            port_text.as_str(),
            "--bind",
            "127.0.0.1",
            "--save",
            "",
            "--appendonly",
            "no",
            "--dir",
        ]
        .iter()
        .map(|arg| arg.to_string())
        .chain([dir.display().to_string()])
        .collect();
        PrivateServer::start("redis-server", args, port)
    }

    /// `nats-server` with JetStream storing under `store`, on a free port.
    fn nats(store: &Path) -> Option<PrivateServer> {
        let port = free_port();
        let port_text = port.to_string();
        let args = ["-a", "127.0.0.1", "-p", port_text.as_str(), "-js", "-sd"]
            .iter()
            .map(|arg| arg.to_string())
            .chain([store.display().to_string()])
            .collect();
        PrivateServer::start("nats-server", args, port)
    }

    fn resume(&mut self) {
        assert!(self.child.is_none(), "{} already runs", self.name);
        let child = Command::new(&self.program)
            .args(&self.args)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        self.child = Some(child);
        wait_for_port(self.port, self.name);
    }

    /// Kills the server (SIGKILL: nothing is flushed that was not already written).
    fn pause(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

impl Drop for PrivateServer {
    fn drop(&mut self) {
        self.pause();
    }
}

/// PostgreSQL, Redis and NATS of one scenario.
struct Servers {
    postgres: PrivatePostgres,
    redis: PrivateServer,
    nats: PrivateServer,
    _dir: tempfile::TempDir,
}

impl Servers {
    fn start() -> Option<Servers> {
        let dir = tempfile::tempdir().unwrap();
        let postgres = PrivatePostgres::start()?;
        let redis = PrivateServer::redis(dir.path())?;
        let nats = PrivateServer::nats(&dir.path().join("jetstream"))?;
        Some(Servers {
            postgres,
            redis,
            nats,
            _dir: dir,
        })
    }

    fn args(&self) -> Vec<String> {
        vec![
            "--database-url".into(),
            self.postgres.url(),
            "--redis-url".into(),
            format!("redis://127.0.0.1:{}", self.redis.port),
            "--nats-url".into(),
            format!("nats://127.0.0.1:{}", self.nats.port),
        ]
    }
}

// ---------------------------------------------------------------------------------------------
// The shop.

/// agora.toml's shop components as the shop harness adjusts them for a test (no rate limits:
/// the load comes from one address and one user), the first admin in the config, the test
/// cards, and a deadline of [`DEADLINE_MS`].
fn write_manifest(dir: &Path) -> PathBuf {
    let mut manifest = ShopManifest::load()
        .only(&SHOP)
        .first_admin(ADMIN_EMAIL, ADMIN_PASSWORD)
        // `tok_trap_once`: the first delivery of the order's event traps.
        .config("payment", "test_payment_methods", "true");
    for name in SHOP {
        manifest = manifest.set(name, "limits.deadline_ms", DEADLINE_MS as i64);
    }
    manifest.write(dir)
}

/// What every host of a scenario shares: the manifest, the signing keys, the backends.
struct Setup {
    manifest: PathBuf,
    env: Vec<(String, String)>,
    args: Vec<String>,
    _dir: tempfile::TempDir,
}

impl Setup {
    fn new(args: Vec<String>) -> Setup {
        let dir = tempfile::tempdir().unwrap();
        let manifest = write_manifest(dir.path());
        let (private, public) = agora_auth::Keys::generate_ed25519_pem().unwrap();
        Setup {
            manifest,
            env: vec![
                (agora_auth::PRIVATE_KEY_VAR.into(), private),
                (agora_auth::PUBLIC_KEY_VAR.into(), public),
            ],
            args,
            _dir: dir,
        }
    }

    /// Starts a host (off the async runtime: it blocks until the host listens).
    async fn host(&self) -> Agora {
        let manifest = self.manifest.clone();
        let env = self.env.clone();
        let args = self.args.clone();
        tokio::task::spawn_blocking(move || {
            let env: Vec<(&str, &str)> =
                env.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
            let args: Vec<&str> = args.iter().map(String::as_str).collect();
            Agora::start(&manifest, &common::shared_data_dir(), &env, &args)
        })
        .await
        .unwrap()
    }
}

/// Stops `host` with `signal` and returns its exit code and log.
async fn stop(host: Agora, signal: libc::c_int) -> (Option<i32>, String) {
    tokio::task::spawn_blocking(move || host.stop(signal))
        .await
        .unwrap()
}

/// A customer with a token, and a product with all the stock the load needs.
struct Shop {
    http: reqwest::Client,
    token: String,
    product: String,
}

impl Shop {
    async fn prepare(addr: &str) -> Shop {
        let http = reqwest::Client::builder()
            .timeout(Duration::from_secs(30))
            .build()
            .unwrap();
        let post = |path: &str, token: Option<&str>, body: Json| {
            let mut request = http.post(format!("http://{addr}{path}")).json(&body);
            if let Some(token) = token {
                request = request.bearer_auth(token);
            }
            async move {
                let response = request.send().await.unwrap();
                let status = response.status().as_u16();
                let body: Json = response.json().await.unwrap_or(Json::Null);
                (status, body)
            }
        };
        let (status, admin) = post(
            "/api/accounts/login",
            None,
            json!({ "email": ADMIN_EMAIL, "password": ADMIN_PASSWORD }),
        )
        .await;
        assert_eq!(status, 200, "admin login: {admin}");
        let admin = admin["access_token"].as_str().unwrap().to_owned();
        let run = uuid::Uuid::new_v4().simple().to_string();
        let (status, product) = post(
            "/api/products",
            Some(&admin),
            json!({
                "name": format!("Kettle {run}"), "description": "Steel, 1.7 l",
                "price_cents": 3000, "sku": format!("KET-{run}"), "stock": 1_000_000,
                "images": [], "category": "kitchen",
            }),
        )
        .await;
        assert_eq!(status, 201, "product: {product}");
        let (status, customer) = post(
            "/api/accounts/register",
            None,
            json!({ "email": format!("dora-{run}@shop.test"), "password": "correct horse",
                    "name": "Dora" }),
        )
        .await;
        assert_eq!(status, 201, "register: {customer}");
        Shop {
            http,
            token: customer["access_token"].as_str().unwrap().to_owned(),
            product: product["id"].as_str().unwrap().to_owned(),
        }
    }
}

/// One answer to an order.
#[derive(Clone, Debug)]
struct Answer {
    status: u16,
    retry_after: bool,
    body: String,
}

#[derive(Default)]
struct Tally {
    answers: Vec<Answer>,
    /// The ids of the orders answered 201.
    created: Vec<String>,
    /// Requests that got no answer (a host stopped or killed).
    unanswered: usize,
}

/// Clients placing orders against whichever hosts are in `addrs`, until stopped.
struct Load {
    addrs: Arc<Mutex<Vec<String>>>,
    tally: Arc<Mutex<Tally>>,
    stop: Arc<AtomicBool>,
    workers: Vec<tokio::task::JoinHandle<()>>,
}

impl Load {
    fn start(shop: &Shop, addrs: Vec<String>) -> Load {
        let load = Load {
            addrs: Arc::new(Mutex::new(addrs)),
            tally: Arc::default(),
            stop: Arc::default(),
            workers: Vec::new(),
        };
        let workers = (0..WORKERS)
            .map(|index| {
                let (http, token, product) =
                    (shop.http.clone(), shop.token.clone(), shop.product.clone());
                let (addrs, tally, stop) =
                    (load.addrs.clone(), load.tally.clone(), load.stop.clone());
                tokio::spawn(async move {
                    let mut turn = index;
                    while !stop.load(Ordering::Relaxed) {
                        let addr = {
                            let addrs = addrs.lock().unwrap();
                            (!addrs.is_empty()).then(|| addrs[turn % addrs.len()].clone())
                        };
                        turn += 1;
                        if let Some(addr) = addr {
                            let sent = http
                                .post(format!("http://{addr}/api/orders"))
                                .bearer_auth(&token)
                                .json(&json!({
                                    "items": [{ "product_id": product, "quantity": 1 }],
                                    "payment_method": "tok_visa",
                                }))
                                .send()
                                .await;
                            match sent {
                                Ok(response) => {
                                    let status = response.status().as_u16();
                                    let retry_after =
                                        response.headers().contains_key("retry-after");
                                    let body = response.text().await.unwrap_or_default();
                                    let mut tally = tally.lock().unwrap();
                                    if status == 201 {
                                        let order: Json = serde_json::from_str(&body).unwrap();
                                        tally
                                            .created
                                            .push(order["id"].as_str().unwrap().to_owned());
                                    }
                                    tally.answers.push(Answer {
                                        status,
                                        retry_after,
                                        body: body.chars().take(300).collect(),
                                    });
                                }
                                Err(_) => tally.lock().unwrap().unanswered += 1,
                            }
                        }
                        tokio::time::sleep(PAUSE).await;
                    }
                })
            })
            .collect();
        Load { workers, ..load }
    }

    fn set_hosts(&self, addrs: Vec<String>) {
        *self.addrs.lock().unwrap() = addrs;
    }

    /// How many answers so far, and how many of them were 201.
    fn counts(&self) -> (usize, usize) {
        let tally = self.tally.lock().unwrap();
        (tally.answers.len(), tally.created.len())
    }

    /// Waits until `n` more orders than `since` were answered 201.
    async fn wait_created(&self, since: usize, n: usize, what: &str) {
        let deadline = Instant::now() + WAIT;
        while self.counts().1 < since + n {
            assert!(
                Instant::now() < deadline,
                "{what}: {n} orders were not created within {WAIT:?}; answers since: {:?}",
                self.answers_since(0)
                    .iter()
                    .rev()
                    .take(5)
                    .collect::<Vec<_>>()
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// Waits until `n` answers after answer number `since` were not 201.
    async fn wait_refused(&self, since: usize, n: usize, what: &str) {
        let deadline = Instant::now() + WAIT;
        loop {
            let refused = self
                .answers_since(since)
                .iter()
                .filter(|answer| answer.status != 201)
                .count();
            if refused >= n {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "{what}: fewer than {n} refusals within {WAIT:?}"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    fn answers_since(&self, since: usize) -> Vec<Answer> {
        self.tally.lock().unwrap().answers[since..].to_vec()
    }

    async fn finish(self) -> Tally {
        self.stop.store(true, Ordering::Relaxed);
        for worker in self.workers {
            worker.await.unwrap();
        }
        std::mem::take(&mut *self.tally.lock().unwrap())
    }
}

/// Every answer is 201 or, when the shop could not take the order for now, 503 with a
/// `Retry-After`; returns how many were 503.
fn assert_refusals_say_retry(tally: &Tally) -> usize {
    let wrong: Vec<(u16, bool, &str)> = tally
        .answers
        .iter()
        .filter(|answer| answer.status != 201 && !(answer.status == 503 && answer.retry_after))
        .map(|answer| (answer.status, answer.retry_after, answer.body.as_str()))
        .collect();
    assert!(
        wrong.is_empty(),
        "answers other than 201 and 503 with Retry-After: {wrong:?}"
    );
    tally
        .answers
        .iter()
        .filter(|answer| answer.status == 503)
        .count()
}

// ---------------------------------------------------------------------------------------------
// What must hold at the end, read from the components' own tables.

fn text(value: &Value) -> String {
    match value {
        Value::Text(text) => text.clone(),
        other => panic!("expected text, got {other:?}"),
    }
}

/// The shop's tables, read directly.
struct Tables {
    backend: Arc<dyn SqlBackend>,
}

impl Tables {
    async fn open(database_url: &str) -> Tables {
        let scratch = tempfile::tempdir().unwrap();
        Tables {
            backend: agora_sql::connect(Some(database_url), scratch.path())
                .await
                .unwrap(),
        }
    }

    async fn rows(&self, component: &str, sql: &str) -> Vec<Vec<Value>> {
        let namespace = self.backend.namespace(component).await.unwrap();
        namespace.query(sql, vec![]).await.unwrap().rows
    }

    /// Waits until every order of `created` is terminal and its notifications are stored,
    /// then checks each has exactly one payment and one gateway charge and that no
    /// notification was stored twice.
    async fn assert_all_handled(&self, created: &[String]) {
        assert!(!created.is_empty(), "the load created no order");
        let unique: HashSet<&String> = created.iter().collect();
        assert_eq!(
            unique.len(),
            created.len(),
            "an order id was answered twice"
        );
        let deadline = Instant::now() + WAIT;
        loop {
            let statuses: HashMap<String, String> = self
                .rows("order", "select id, status from orders")
                .await
                .iter()
                .map(|row| (text(&row[0]), text(&row[1])))
                .collect();
            let notified = self.notifications().await;
            let pending: Vec<(&String, Option<&String>)> = created
                .iter()
                .map(|id| (id, statuses.get(id)))
                .filter(|(id, status)| {
                    !matches!(status.map(String::as_str), Some("PAID" | "PAYMENT_FAILED"))
                        || !notified.contains_key(&("order.created".to_owned(), id.to_string()))
                        || !(notified.contains_key(&("order.paid".to_owned(), id.to_string()))
                            || notified
                                .contains_key(&("payment.failed".to_owned(), id.to_string())))
                })
                .collect();
            if pending.is_empty() {
                break;
            }
            assert!(
                Instant::now() < deadline,
                "{} of {} orders answered 201 were not handled within {WAIT:?} (order, status): \
                 {:?}",
                pending.len(),
                created.len(),
                pending.iter().take(10).collect::<Vec<_>>()
            );
            tokio::time::sleep(Duration::from_millis(200)).await;
        }

        let mut payments: HashMap<String, usize> = HashMap::new();
        for row in self.rows("payment", "select order_id from payments").await {
            *payments.entry(text(&row[0])).or_default() += 1;
        }
        let mut charges: HashMap<String, usize> = HashMap::new();
        for row in self
            .rows("payment", "select order_id from gateway_calls")
            .await
        {
            *charges.entry(text(&row[0])).or_default() += 1;
        }
        for id in created {
            assert_eq!(payments.get(id), Some(&1), "payments of order {id}");
            assert_eq!(charges.get(id), Some(&1), "gateway charges of order {id}");
        }
        let twice: Vec<_> = self
            .notifications()
            .await
            .into_iter()
            .filter(|(_, count)| *count > 1)
            .collect();
        assert!(
            twice.is_empty(),
            "notifications stored more than once: {twice:?}"
        );
    }

    /// (kind, order id) → how many notifications say it.
    async fn notifications(&self) -> BTreeMap<(String, String), usize> {
        let mut seen = BTreeMap::new();
        for row in self
            .rows("notification", "select kind, data from notifications")
            .await
        {
            let data: Json = serde_json::from_str(&text(&row[1])).unwrap_or(Json::Null);
            let Some(order) = data["order_id"].as_str() else {
                continue;
            };
            *seen.entry((text(&row[0]), order.to_owned())).or_default() += 1;
        }
        seen
    }
}

// ---------------------------------------------------------------------------------------------
// The scenarios.

/// The in-process bus keeps nothing across a restart: a SIGTERM mid-burst drains it (and
/// writes what it could not handle back to an outbox) before the host exits, so a restart
/// finds every event handled or still to relay.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_mid_burst_on_the_embedded_backends_loses_no_event() {
    let _serial = SERIAL.lock().await;
    let dir = tempfile::tempdir().unwrap();
    let database_url = format!("sqlite://{}", dir.path().join("sql").display());
    let setup = Setup::new(vec!["--database-url".into(), database_url.clone()]);
    let host = setup.host().await;
    let shop = Shop::prepare(&host.addr).await;
    let load = Load::start(&shop, vec![host.addr.clone()]);
    load.wait_created(0, phase_orders(), "before the burst")
        .await;
    // A burst whose payments trap once: at the SIGTERM their events wait out a backoff.
    let burst: Vec<_> = (0..BURST)
        .map(|_| {
            let request = shop
                .http
                .post(format!("http://{}/api/orders", host.addr))
                .bearer_auth(&shop.token)
                .json(&json!({
                    "items": [{ "product_id": shop.product, "quantity": 1 }],
                    "payment_method": "tok_trap_once",
                }));
            tokio::spawn(async move {
                let response = request.send().await.unwrap();
                assert_eq!(response.status(), 201);
                let order: Json = response.json().await.unwrap();
                order["id"].as_str().unwrap().to_owned()
            })
        })
        .collect();
    let mut burst_ids = Vec::new();
    for order in burst {
        burst_ids.push(order.await.unwrap());
    }

    let (code, log) = stop(host, libc::SIGTERM).await;
    assert_eq!(code, Some(0), "a clean exit: {log}");
    let mut tally = load.finish().await;
    tally.created.extend(burst_ids);

    let host = setup.host().await;
    Tables::open(&database_url)
        .await
        .assert_all_handled(&tally.created)
        .await;
    stop(host, libc::SIGTERM).await;
}

/// PostgreSQL restarted under load: orders meanwhile get 503 with `Retry-After`, the host
/// recovers by itself, and every order answered 201 is paid.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_restarted_under_load() {
    let _serial = SERIAL.lock().await;
    let Some(servers) = Servers::start() else {
        return;
    };
    let setup = Setup::new(servers.args());
    let host = setup.host().await;
    let shop = Shop::prepare(&host.addr).await;
    let load = Load::start(&shop, vec![host.addr.clone()]);
    load.wait_created(0, phase_orders(), "before the outage")
        .await;

    servers.postgres.pause();
    let (outage, created) = load.counts();
    load.wait_refused(outage, 3, "during the outage").await;
    servers.postgres.resume();
    let (_, before) = load.counts();
    load.wait_created(before, phase_orders(), "after the restart")
        .await;
    let tally = load.finish().await;

    assert!(created > 0);
    let refused = assert_refusals_say_retry(&tally);
    assert!(
        refused >= 3,
        "orders during the outage were refused with 503"
    );
    Tables::open(&servers.postgres.url())
        .await
        .assert_all_handled(&tally.created)
        .await;
    stop(host, libc::SIGTERM).await;
}

/// Redis stopped under load: product pages still come from the database, token checks fail
/// closed with 503 and `Retry-After`, and all recovers when Redis is back.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_stopped_under_load() {
    let _serial = SERIAL.lock().await;
    let Some(mut servers) = Servers::start() else {
        return;
    };
    let setup = Setup::new(servers.args());
    let host = setup.host().await;
    let shop = Shop::prepare(&host.addr).await;
    let load = Load::start(&shop, vec![host.addr.clone()]);
    load.wait_created(0, phase_orders(), "before the outage")
        .await;

    servers.redis.pause();
    let (outage, _) = load.counts();
    load.wait_refused(outage, 3, "during the outage").await;
    let product = shop
        .http
        .get(format!(
            "http://{}/api/products/{}",
            host.addr, shop.product
        ))
        .send()
        .await
        .unwrap();
    assert_eq!(
        product.status(),
        200,
        "product pages fall back to the database"
    );
    let body: Json = product.json().await.unwrap();
    assert_eq!(body["id"], json!(shop.product));
    let orders = shop
        .http
        .get(format!("http://{}/api/orders", host.addr))
        .bearer_auth(&shop.token)
        .send()
        .await
        .unwrap();
    assert_eq!(orders.status(), 503, "token checks fail closed");
    assert!(orders.headers().contains_key("retry-after"));

    servers.redis.resume();
    let (_, before) = load.counts();
    load.wait_created(before, phase_orders(), "after Redis is back")
        .await;
    let tally = load.finish().await;
    assert!(assert_refusals_say_retry(&tally) >= 3);
    Tables::open(&servers.postgres.url())
        .await
        .assert_all_handled(&tally.created)
        .await;
    stop(host, libc::SIGTERM).await;
}

/// NATS restarted under load: orders are still taken, their events wait in the outboxes and
/// are relayed when NATS is back; none is lost.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nats_restarted_under_load() {
    let _serial = SERIAL.lock().await;
    let Some(mut servers) = Servers::start() else {
        return;
    };
    let setup = Setup::new(servers.args());
    let host = setup.host().await;
    let shop = Shop::prepare(&host.addr).await;
    let load = Load::start(&shop, vec![host.addr.clone()]);
    load.wait_created(0, phase_orders(), "before the outage")
        .await;

    servers.nats.pause();
    let (_, before) = load.counts();
    load.wait_created(before, phase_orders(), "while NATS is down")
        .await;
    servers.nats.resume();
    let (_, before) = load.counts();
    load.wait_created(before, phase_orders(), "after NATS is back")
        .await;
    let tally = load.finish().await;
    assert_refusals_say_retry(&tally);
    Tables::open(&servers.postgres.url())
        .await
        .assert_all_handled(&tally.created)
        .await;
    stop(host, libc::SIGTERM).await;
}

/// The host SIGKILLed mid-burst and started again: every order answered 201 ends terminal
/// with exactly one payment, and no notification is stored twice.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn host_killed_mid_burst_and_restarted() {
    let _serial = SERIAL.lock().await;
    let Some(servers) = Servers::start() else {
        return;
    };
    let setup = Setup::new(servers.args());
    let host = setup.host().await;
    let shop = Shop::prepare(&host.addr).await;
    let load = Load::start(&shop, vec![host.addr.clone()]);
    load.wait_created(0, phase_orders(), "before the kill")
        .await;

    stop(host, libc::SIGKILL).await;
    let host = setup.host().await;
    load.set_hosts(vec![host.addr.clone()]);
    let (_, before) = load.counts();
    load.wait_created(before, phase_orders(), "after the restart")
        .await;
    let tally = load.finish().await;
    assert_refusals_say_retry(&tally);
    Tables::open(&servers.postgres.url())
        .await
        .assert_all_handled(&tally.created)
        .await;
    stop(host, libc::SIGTERM).await;
}

/// Two hosts on the same backends, one SIGKILLed mid-burst: the other keeps taking orders
/// and consuming events — its own and those the dead one left unacknowledged.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_of_two_hosts_killed_the_other_carries_on() {
    let _serial = SERIAL.lock().await;
    let Some(servers) = Servers::start() else {
        return;
    };
    let setup = Setup::new(servers.args());
    let first = setup.host().await;
    let second = setup.host().await;
    let shop = Shop::prepare(&first.addr).await;
    let load = Load::start(&shop, vec![first.addr.clone(), second.addr.clone()]);
    load.wait_created(0, phase_orders(), "on both hosts").await;

    load.set_hosts(vec![second.addr.clone()]);
    stop(first, libc::SIGKILL).await;
    let (_, before) = load.counts();
    load.wait_created(before, phase_orders(), "on the survivor")
        .await;
    let tally = load.finish().await;
    assert_refusals_say_retry(&tally);
    Tables::open(&servers.postgres.url())
        .await
        .assert_all_handled(&tally.created)
        .await;
    stop(second, libc::SIGTERM).await;
}
