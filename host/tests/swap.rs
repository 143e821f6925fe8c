//! Hot swap through the admin API and `--watch`: real components (fixture-swap-v1 and -v2, which
//! answer with their version), real HTTP, load running while versions change.

#![allow(clippy::unwrap_used)]

mod common;

use common::{TestHost, component, component_table};
use serde_json::Value;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

const ADMIN_TOKEN: &str = "swap-test-admin-token";

fn migrations() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../components/fixtures/swap-v1/migrations")
}

/// The swap fixture named `swap` from `source`, with its grants, migrations and subscription,
/// and `hello` beside it.
fn manifest(source: &Path, migrations: &Path) -> String {
    format!(
        "[[component]]\nname = \"swap\"\nsource = {:?}\nroutes = [\"/swap\", \"/swap/...\"]\n\
         grants = {{ sql = true, publish = [\"swap.ping\"] }}\nmigrations = {:?}\n\
         [component.messaging]\nsubscribe = [\"swap.ping\"]\nbackoff_ms = 50\n\n{}",
        source.display().to_string(),
        migrations.display().to_string(),
        component_table("hello", "hello", &["/hello"], ""),
    )
}

async fn start(source: &Path, migrations: &Path, watch: bool) -> TestHost {
    TestHost::start_full(
        &manifest(source, migrations),
        |config| {
            config.watch = watch;
            // A database of this host's own: the fixture's table starts empty.
            config.database_url = Some(format!(
                "sqlite://{}",
                tempfile::tempdir().unwrap().keep().join("sql").display()
            ));
        },
        Some(ADMIN_TOKEN),
    )
    .await
}

struct Admin {
    base: String,
    client: reqwest::Client,
}

impl Admin {
    fn of(host: &TestHost) -> Admin {
        Admin {
            base: format!("http://{}", host.admin_addr.unwrap()),
            client: reqwest::Client::new(),
        }
    }

    async fn put(&self, name: &str, bytes: Vec<u8>) -> (u16, Value) {
        let response = self
            .client
            .put(format!("{}/admin/components/{name}", self.base))
            .bearer_auth(ADMIN_TOKEN)
            .header("content-type", "application/wasm")
            .body(bytes)
            .send()
            .await
            .unwrap();
        (response.status().as_u16(), response.json().await.unwrap())
    }

    async fn rollback(&self, name: &str) -> (u16, Value) {
        let response = self
            .client
            .post(format!("{}/admin/components/{name}/rollback", self.base))
            .bearer_auth(ADMIN_TOKEN)
            .send()
            .await
            .unwrap();
        (response.status().as_u16(), response.json().await.unwrap())
    }

    async fn get(&self, name: &str) -> Value {
        let response = self
            .client
            .get(format!("{}/admin/components/{name}", self.base))
            .bearer_auth(ADMIN_TOKEN)
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), 200);
        response.json().await.unwrap()
    }
}

fn wasm(name: &str) -> Vec<u8> {
    std::fs::read(component(name)).unwrap()
}

fn digest(bytes: &[u8]) -> String {
    format!("sha256:{}", agora_host::compile_cache::sha256_hex(bytes))
}

async fn version(client: &reqwest::Client, host: &TestHost) -> String {
    let response = client.get(host.url("/swap")).send().await.unwrap();
    assert_eq!(response.status(), 200);
    let body: Value = response.json().await.unwrap();
    body["version"].as_str().unwrap().to_owned()
}

/// Polls until `/swap` answers `expected` (bounded: a hang guard, not a timing check).
async fn wait_for_version(client: &reqwest::Client, host: &TestHost, expected: &str) {
    for _ in 0..600 {
        if version(client, host).await == expected {
            return;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("the host never served {expected}");
}

async fn handled(client: &reqwest::Client, host: &TestHost) -> Value {
    let response = client.get(host.url("/swap/handled")).send().await.unwrap();
    assert_eq!(response.status(), 200);
    response.json().await.unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn twenty_swaps_under_load_fail_no_request_and_lose_no_event() {
    let host = start(&component("fixture-swap-v1"), &migrations(), false).await;
    let admin = Admin::of(&host);
    let client = reqwest::Client::new();
    let (v1, v2) = (wasm("fixture-swap-v1"), wasm("fixture-swap-v2"));
    assert_eq!(version(&client, &host).await, "v1");

    let stop = Arc::new(AtomicBool::new(false));
    let mut load = Vec::new();
    // Readers of the swapped component, and of another one.
    for path in [
        "/swap",
        "/swap",
        "/swap",
        "/swap",
        "/swap/slow?ms=30",
        "/hello",
    ] {
        let (client, url, stop) = (client.clone(), host.url(path), stop.clone());
        load.push(tokio::spawn(async move {
            let mut answers = Vec::new();
            while !stop.load(Ordering::Relaxed) {
                let response = client.get(&url).send().await.unwrap();
                let status = response.status().as_u16();
                let body = response.text().await.unwrap();
                answers.push((status, body));
            }
            (path, answers)
        }));
    }
    // Publishers: each accepted publish is one event the subscriber must handle.
    let publisher = {
        let (client, url, stop) = (client.clone(), host.url("/swap/publish"), stop.clone());
        tokio::spawn(async move {
            let mut answers = Vec::new();
            while !stop.load(Ordering::Relaxed) {
                let response = client.post(&url).send().await.unwrap();
                answers.push((response.status().as_u16(), response.text().await.unwrap()));
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
            answers
        })
    };

    for round in 0..20 {
        let (bytes, expected) = if round % 2 == 0 {
            (v2.clone(), "v2")
        } else {
            (v1.clone(), "v1")
        };
        let (status, body) = admin.put("swap", bytes.clone()).await;
        assert_eq!(status, 200, "swap {round}: {body}");
        assert_eq!(body["changed"], true, "{body}");
        assert_eq!(body["current"]["digest"], digest(&bytes), "{body}");
        assert_eq!(body["current"]["installed_by"], "admin");
        // The first two swaps compile; every later one finds its code in the compile cache.
        if round >= 2 {
            assert_eq!(body["current"]["compiled"], false, "{body}");
        }
        wait_for_version(&client, &host, expected).await;
        // Let the load run on this version for a while before the next swap.
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    stop.store(true, Ordering::Relaxed);

    let mut per_version = std::collections::BTreeMap::<String, usize>::new();
    let mut hello = 0;
    for task in load {
        let (path, answers) = task.await.unwrap();
        for (status, body) in answers {
            assert_eq!(status, 200, "{path} failed during swaps: {body}");
            if path == "/hello" {
                hello += 1;
                continue;
            }
            let body: Value = serde_json::from_str(&body).unwrap();
            let version = body["version"].as_str().unwrap().to_owned();
            assert!(version == "v1" || version == "v2", "{body}");
            *per_version.entry(version).or_default() += 1;
        }
    }
    let published = publisher.await.unwrap();
    for (status, body) in &published {
        assert_eq!(*status, 202, "a publish failed during swaps: {body}");
    }
    eprintln!(
        "20 swaps: {per_version:?} answers from /swap, {hello} from /hello, {} events published",
        published.len()
    );
    assert!(per_version.get("v1").is_some_and(|n| *n > 0));
    assert!(per_version.get("v2").is_some_and(|n| *n > 0));
    assert!(hello > 0);

    // Every published event is handled, by one version or the other.
    let mut last = Value::Null;
    for _ in 0..600 {
        last = handled(&client, &host).await;
        if last["count"].as_u64() == Some(published.len() as u64) {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(
        last["count"].as_u64(),
        Some(published.len() as u64),
        "{last}"
    );
    let by_version: u64 = last["versions"]
        .as_object()
        .unwrap()
        .iter()
        .map(|(version, n)| {
            assert!(version == "v1" || version == "v2", "{last}");
            n.as_u64().unwrap()
        })
        .sum();
    assert_eq!(by_version, published.len() as u64);
    host.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn in_flight_requests_finish_on_the_version_they_started_with() {
    let host = start(&component("fixture-swap-v1"), &migrations(), false).await;
    let admin = Admin::of(&host);
    let client = reqwest::Client::new();
    let slow = tokio::spawn(client.get(host.url("/swap/slow?ms=2500")).send());
    // The slow request runs on v1 when the swap happens.
    host.wait_until_in_flight("swap", 1).await;
    let (status, body) = admin.put("swap", wasm("fixture-swap-v2")).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(version(&client, &host).await, "v2");
    let slow = slow.await.unwrap().unwrap();
    assert_eq!(slow.status(), 200);
    let slow: Value = slow.json().await.unwrap();
    assert_eq!(
        slow["version"], "v1",
        "the in-flight request ended on its version"
    );
    host.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn broken_versions_are_rejected_and_the_old_one_keeps_serving() {
    let dir = tempfile::tempdir().unwrap();
    let own_migrations = dir.path().join("migrations");
    std::fs::create_dir(&own_migrations).unwrap();
    for entry in std::fs::read_dir(migrations()).unwrap() {
        let entry = entry.unwrap();
        std::fs::copy(entry.path(), own_migrations.join(entry.file_name())).unwrap();
    }
    let host = start(&component("fixture-swap-v1"), &own_migrations, false).await;
    let admin = Admin::of(&host);
    let client = reqwest::Client::new();
    let v1 = wasm("fixture-swap-v1");
    let v2 = wasm("fixture-swap-v2");

    let half = v2[..v2.len() / 2].to_vec();
    let cases: Vec<(&str, Vec<u8>, &str)> = vec![
        (
            "not wasm",
            b"this is not WebAssembly".to_vec(),
            "not a WebAssembly file",
        ),
        ("truncated wasm", half, "does not compile"),
        (
            "a core module",
            b"\0asm\x01\0\0\0".to_vec(),
            "a core WebAssembly module, not a component",
        ),
        (
            "no wasi:http export",
            wasm("fixture-command"),
            "does not export wasi:http/incoming-handler",
        ),
        (
            "an ungranted import",
            wasm("catalog"),
            "imports agora:platform/cache but the manifest grants no cache",
        ),
    ];
    for (what, bytes, expected) in cases {
        let (status, body) = admin.put("swap", bytes).await;
        assert_eq!(status, 422, "{what}: {body}");
        assert_eq!(body["changed"], false, "{what}: {body}");
        assert_eq!(body["error"]["code"], "invalid_component", "{what}");
        let message = body["error"]["message"].as_str().unwrap();
        assert!(message.contains(expected), "{what}: {message}");
        assert!(
            message.contains(&digest(&v1)),
            "{what} names the version still serving: {message}"
        );
        assert_eq!(body["current"]["digest"], digest(&v1), "{what}");
        assert_eq!(
            version(&client, &host).await,
            "v1",
            "{what}: v1 still serves"
        );
    }

    // A migration that fails: v2 is not switched in.
    std::fs::write(
        own_migrations.join("0002_broken.sql"),
        "CREATE TABLE handled (this is not sql);",
    )
    .unwrap();
    let (status, body) = admin.put("swap", v2.clone()).await;
    assert_eq!(status, 422, "{body}");
    let message = body["error"]["message"].as_str().unwrap();
    assert!(message.contains("migration failed"), "{message}");
    assert!(message.contains("0002_broken"), "{message}");
    assert_eq!(version(&client, &host).await, "v1");
    let described = admin.get("swap").await;
    assert_eq!(described["versions"]["current"]["digest"], digest(&v1));
    assert_eq!(described["versions"]["previous"], Value::Null);

    // Fixed: v2 goes in, with the migration.
    std::fs::write(
        own_migrations.join("0002_broken.sql"),
        "CREATE TABLE swap_notes (id TEXT PRIMARY KEY);",
    )
    .unwrap();
    let (status, body) = admin.put("swap", v2.clone()).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(
        body["migrations_applied"],
        serde_json::json!(["0002_broken"])
    );
    assert_eq!(version(&client, &host).await, "v2");

    // Other refusals: nothing uploaded, a name no component has, the same bytes again.
    let (status, body) = admin.put("swap", Vec::new()).await;
    assert_eq!(
        (status, body["error"]["code"].as_str()),
        (400, Some("empty_upload"))
    );
    // Refused before the upload is read: the connection closes, and the answer says so (a
    // client sending its next request on it would see it cut).
    let response = admin
        .client
        .put(format!("{}/admin/components/nope", admin.base))
        .bearer_auth(ADMIN_TOKEN)
        .body(v1.clone())
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 404);
    assert_eq!(response.headers()["connection"], "close");
    let body: Value = response.json().await.unwrap();
    assert_eq!(body["error"]["code"], "unknown_component");
    let (status, body) = admin.put("swap", v2.clone()).await;
    assert_eq!(status, 200);
    assert_eq!(body["changed"], false, "{body}");
    assert!(body["message"].as_str().unwrap().contains("already runs"));
    // Without the admin token nothing changes.
    let response = reqwest::Client::new()
        .put(format!("{}/admin/components/swap", admin.base))
        .body(v1.clone())
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 401);
    assert_eq!(response.headers()["connection"], "close");
    assert_eq!(version(&client, &host).await, "v2");
    host.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rollback_serves_the_previous_version_again() {
    let host = start(&component("fixture-swap-v1"), &migrations(), false).await;
    let admin = Admin::of(&host);
    let client = reqwest::Client::new();
    let (v1, v2) = (wasm("fixture-swap-v1"), wasm("fixture-swap-v2"));

    let (status, body) = admin.rollback("swap").await;
    assert_eq!(status, 409, "{body}");
    assert_eq!(body["error"]["code"], "no_previous_version");
    assert_eq!(body["changed"], false);

    let described = admin.get("swap").await;
    assert_eq!(described["versions"]["current"]["digest"], digest(&v1));
    assert_eq!(described["versions"]["current"]["installed_by"], "manifest");
    let (status, _) = admin.put("swap", v2.clone()).await;
    assert_eq!(status, 200);
    let described = admin.get("swap").await;
    assert_eq!(described["versions"]["current"]["digest"], digest(&v2));
    assert_eq!(described["versions"]["previous"]["digest"], digest(&v1));
    assert_eq!(version(&client, &host).await, "v2");

    let (status, body) = admin.rollback("swap").await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["changed"], true);
    assert_eq!(body["current"]["digest"], digest(&v1));
    assert_eq!(body["previous"]["digest"], digest(&v2));
    assert_eq!(version(&client, &host).await, "v1");
    let described = admin.get("swap").await;
    assert_eq!(described["digest"], digest(&v1));
    assert_eq!(described["versions"]["previous"]["digest"], digest(&v2));

    // Rolling back again goes forward to v2: the two versions trade places.
    let (status, _) = admin.rollback("swap").await;
    assert_eq!(status, 200);
    assert_eq!(version(&client, &host).await, "v2");

    // The other component was never touched.
    let hello = admin.get("hello").await;
    assert_eq!(hello["versions"]["previous"], Value::Null);
    let response = reqwest::Client::new()
        .post(format!("{}/admin/components/swap/rollback", admin.base))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 401);
    host.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn watch_swaps_a_changed_file_once_it_is_whole() {
    let dir = tempfile::tempdir().unwrap();
    let source = dir.path().join("swap.wasm");
    std::fs::write(&source, wasm("fixture-swap-v1")).unwrap();
    let host = start(&source, &migrations(), true).await;
    let admin = Admin::of(&host);
    let client = reqwest::Client::new();
    let v2 = wasm("fixture-swap-v2");

    // Write v2 in place in two halves with a pause, as a slow copy would; v1 serves throughout.
    let watching = {
        let (client, url) = (client.clone(), host.url("/swap"));
        let stop = Arc::new(AtomicBool::new(false));
        let flag = stop.clone();
        let task = tokio::spawn(async move {
            let mut seen = Vec::new();
            while !flag.load(Ordering::Relaxed) {
                let response = client.get(&url).send().await.unwrap();
                assert_eq!(response.status(), 200);
                let body: Value = response.json().await.unwrap();
                seen.push(body["version"].as_str().unwrap().to_owned());
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
            seen
        });
        (stop, task)
    };
    {
        use std::io::Write as _;
        let mut file = std::fs::File::create(&source).unwrap();
        file.write_all(&v2[..v2.len() / 2]).unwrap();
        file.sync_all().unwrap();
        tokio::time::sleep(Duration::from_millis(200)).await;
        file.write_all(&v2[v2.len() / 2..]).unwrap();
        file.sync_all().unwrap();
    }
    wait_for_version(&client, &host, "v2").await;
    watching.0.store(true, Ordering::Relaxed);
    let seen = watching.1.await.unwrap();
    let switched = seen.iter().position(|v| v == "v2").unwrap_or(seen.len());
    assert!(
        seen[..switched].iter().all(|v| v == "v1") && seen[switched..].iter().all(|v| v == "v2"),
        "one switch from v1 to v2: {seen:?}"
    );
    let described = admin.get("swap").await;
    assert_eq!(described["versions"]["current"]["digest"], digest(&v2));
    assert_eq!(described["versions"]["current"]["installed_by"], "watch");

    // A file that is not a component is never swapped in; v2 keeps serving.
    std::fs::write(&source, b"garbage, not wasm").unwrap();
    // Then a valid one is: the watcher goes on after a rejection.
    tokio::time::sleep(Duration::from_millis(1200)).await;
    assert_eq!(version(&client, &host).await, "v2");
    std::fs::write(&source, wasm("fixture-swap-v1")).unwrap();
    wait_for_version(&client, &host, "v1").await;
    host.stop().await;
}
