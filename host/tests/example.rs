//! The example component (components/example), which uses every capability — sql with
//! migrations and transactions, the outbox, messaging with a subscription and a dead-letter
//! subscription, cache, config and logging — end to end over real HTTP and real events, on
//! both backend sets: embedded (SQLite, in-memory cache, in-process bus) and production
//! (PostgreSQL, Redis, NATS JetStream).

#![allow(clippy::unwrap_used)]

mod common;

use agora_host::{Host, HostConfig};
use common::{Backends, TestHost, component, unique_name};
use serde_json::{Value, json};
use std::time::{Duration, Instant};

fn migrations() -> String {
    std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../components/example/migrations")
        .display()
        .to_string()
}

/// The manifest: `name` is the example with every grant; `other` is the same code under
/// another name (its own namespaces; it may publish only to `other.*`); both mount under their
/// own name.
fn manifest(name: &str, other: &str, subject: &str) -> String {
    let source = component("example").display().to_string();
    let migrations = migrations();
    format!(
        r#"
[[component]]
name = "{name}"
source = {source:?}
routes = ["/{name}/..."]
migrations = {migrations:?}
grants = {{ sql = true, cache = true, publish = ["example.*"] }}
config = {{ greeting = "hi from the manifest", note_subject = "{subject}" }}
config_env = {{ secret = "AGORA_EXAMPLE_TEST_SECRET" }}
[component.messaging]
subscribe = ["{subject}", "dlq.{name}.>"]
max_deliver = 3
backoff_ms = 50
backoff_max_ms = 200

[[component]]
name = "{other}"
source = {source:?}
routes = ["/{other}/..."]
migrations = {migrations:?}
grants = {{ sql = true, cache = true, publish = ["other.*"] }}
"#
    )
}

async fn json(response: reqwest::Response) -> (u16, Value) {
    let status = response.status().as_u16();
    let text = response.text().await.unwrap();
    let value = serde_json::from_str(&text).unwrap_or_else(|_| panic!("not JSON: {text}"));
    (status, value)
}

/// Polls `GET path` until `done` holds for its JSON, or fails after a generous minute.
async fn eventually(host: &TestHost, path: &str, done: impl Fn(&Value) -> bool) -> Value {
    let started = Instant::now();
    loop {
        let (status, body) = json(reqwest::get(host.url(path)).await.unwrap()).await;
        assert_eq!(status, 200, "{body}");
        if done(&body) {
            return body;
        }
        assert!(
            started.elapsed() < Duration::from_secs(60),
            "gave up waiting on {path}: {body}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

fn event_note_ids(received: &Value) -> Vec<String> {
    let mut ids: Vec<String> = received["events"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["note_id"].as_str().unwrap().to_owned())
        .collect();
    ids.sort();
    ids
}

async fn scenario(backends: Backends) {
    // SAFETY: tests in this file set the variable to the same value; nothing reads it
    // concurrently in a way that could observe a torn write.
    unsafe { std::env::set_var("AGORA_EXAMPLE_TEST_SECRET", "s3cret") };
    let (name, other) = (unique_name("example"), unique_name("other"));
    // A subject of its own: other tests' consumers on a shared NATS must not see its events.
    let subject = format!("example.{name}");
    let host = TestHost::start_with(&manifest(&name, &other, &subject), |config| {
        backends.apply(config)
    })
    .await;
    let http = reqwest::Client::new();
    let post = |path: String, body: Value| http.post(host.url(&path)).json(&body).send();

    // config (manifest value and secret from the environment) and the cache counter.
    let (status, info) = json(
        http.get(host.url(&format!("/{name}/info")))
            .send()
            .await
            .unwrap(),
    )
    .await;
    assert_eq!(status, 200);
    assert_eq!(info["greeting"], "hi from the manifest");
    assert_eq!(info["has_secret"], true);
    assert_eq!(info["notes_created"], 0);

    // A committed transaction stores the note and publishes its event through the outbox.
    let (status, hello) = json(
        post(format!("/{name}/notes"), json!({"body": "hello"}))
            .await
            .unwrap(),
    )
    .await;
    assert_eq!(status, 201, "{hello}");
    let hello_id = hello["id"].as_str().unwrap().to_owned();

    // Read through the cache: a miss, then a hit.
    let get_note = |id: &str| http.get(host.url(&format!("/{name}/notes/{id}"))).send();
    let (status, first) = json(get_note(&hello_id).await.unwrap()).await;
    assert_eq!((status, &first["cached"]), (200, &json!(false)), "{first}");
    assert_eq!(first["note"]["body"], "hello");
    let (_, second) = json(get_note(&hello_id).await.unwrap()).await;
    assert_eq!(second["cached"], true, "{second}");
    assert_eq!(second["note"], first["note"]);

    // A rolled-back transaction stores nothing and publishes nothing.
    let (status, rolled) = json(
        post(format!("/{name}/notes"), json!({"body": "rollback"}))
            .await
            .unwrap(),
    )
    .await;
    assert_eq!(
        (status, &rolled["rolled_back"]),
        (409, &json!(true)),
        "{rolled}"
    );
    let rolled_id = rolled["id"].as_str().unwrap().to_owned();

    // Redelivery: the handler fails the first delivery of this one.
    let (_, flaky) = json(
        post(
            format!("/{name}/notes"),
            json!({"body": "fail-once please"}),
        )
        .await
        .unwrap(),
    )
    .await;
    let flaky_id = flaky["id"].as_str().unwrap().to_owned();
    // Redelivery after a trap: the handler panics (a trap) in the first delivery of this one.
    let (_, trapping) = json(
        post(
            format!("/{name}/notes"),
            json!({"body": "trap-once please"}),
        )
        .await
        .unwrap(),
    )
    .await;
    let trapping_id = trapping["id"].as_str().unwrap().to_owned();
    // Dead letter: the handler fails every delivery of this one.
    let (_, poison) = json(
        post(format!("/{name}/notes"), json!({"body": "poison pill"}))
            .await
            .unwrap(),
    )
    .await;
    let poison_id = poison["id"].as_str().unwrap().to_owned();

    let received = eventually(&host, &format!("/{name}/received"), |body| {
        event_note_ids(body).len() >= 3 && !body["dead_letters"].as_array().unwrap().is_empty()
    })
    .await;
    let mut expected = vec![hello_id.clone(), flaky_id.clone(), trapping_id.clone()];
    expected.sort();
    assert_eq!(event_note_ids(&received), expected, "{received}");
    assert!(!event_note_ids(&received).contains(&rolled_id));
    let delivery_of = |id: &str| {
        received["events"]
            .as_array()
            .unwrap()
            .iter()
            .find(|e| e["note_id"] == id)
            .map(|e| e["delivery"].clone())
            .unwrap()
    };
    assert_eq!(delivery_of(&hello_id), 1);
    assert_eq!(
        delivery_of(&flaky_id),
        2,
        "redelivered once after the failure"
    );
    assert_eq!(
        delivery_of(&trapping_id),
        2,
        "redelivered once after the trap"
    );
    assert_eq!(received["failures"][&trapping_id], 1, "{received}");
    let dead = &received["dead_letters"][0];
    assert_eq!(dead["subject"], subject.as_str(), "{received}");
    assert!(
        dead["reason"].as_str().unwrap().contains(&poison_id),
        "{received}"
    );
    assert_eq!(received["failures"][&flaky_id], 1, "{received}");
    assert_eq!(
        received["failures"][&poison_id], 3,
        "max_deliver attempts: {received}"
    );

    // Only the committed notes exist, in order.
    let (_, notes) = json(
        http.get(host.url(&format!("/{name}/notes")))
            .send()
            .await
            .unwrap(),
    )
    .await;
    let bodies: Vec<&str> = notes["items"]
        .as_array()
        .unwrap()
        .iter()
        .map(|n| n["body"].as_str().unwrap())
        .collect();
    assert_eq!(
        bodies,
        [
            "hello",
            "fail-once please",
            "trap-once please",
            "poison pill"
        ]
    );
    let (_, info) = json(
        http.get(host.url(&format!("/{name}/info")))
            .send()
            .await
            .unwrap(),
    )
    .await;
    assert_eq!(info["notes_created"], 4);

    // Publishing directly: granted subjects only, as an error value otherwise (`other` may
    // publish only to `other.*`) — never a trap.
    let publish = async |who: &str, subject: &str| {
        let url = host.url(&format!("/{who}/publish/{subject}"));
        json(http.post(url).body("x").send().await.unwrap()).await
    };
    let (status, published) = publish(&name, "example.direct").await;
    assert_eq!(status, 200, "{published}");
    for (who, subject) in [(&name, "order.created"), (&other, "example.direct")] {
        let (status, refused) = publish(who, subject).await;
        assert_eq!(
            (status, &refused["error"]["code"]),
            (403, &json!("denied")),
            "{who} → {subject}: {refused}"
        );
    }

    // Isolation: `other` runs the same migrations in its own namespace and sees none of the
    // example's rows, and cannot reach the example's namespace by name.
    let sql = |who: &str, statement: String| {
        http.post(host.url(&format!("/{who}/sql")))
            .json(&json!({ "statement": statement }))
            .send()
    };
    let (status, count) = json(
        sql(&other, "select count(*) as n from notes".into())
            .await
            .unwrap(),
    )
    .await;
    assert_eq!(
        (status, &count["rows"][0]["n"]),
        (200, &json!(0)),
        "{count}"
    );
    let (status, count) = json(
        sql(&name, "select count(*) as n from notes".into())
            .await
            .unwrap(),
    )
    .await;
    assert_eq!(
        (status, &count["rows"][0]["n"]),
        (200, &json!(4)),
        "{count}"
    );
    let escape = match backends
        .database_url
        .as_deref()
        .and_then(|url| url.strip_prefix("sqlite://"))
    {
        Some(dir) => format!("attach database '{dir}/{name}.sqlite' as theirs"),
        None => format!("select * from {}.notes", name.replace('-', "_")),
    };
    let (status, refused) = json(sql(&other, escape.clone()).await.unwrap()).await;
    assert_eq!(status, 400, "{escape} must fail: {refused}");
    assert_eq!(refused["error"]["code"], "sql_error", "{refused}");

    drop(host);
    cleanup(&backends, &[&name, &other], &subject).await;
}

/// Drops what the production backends keep of a test's components.
async fn cleanup(backends: &Backends, names: &[&str], subject: &str) {
    if let Some(url) = backends
        .database_url
        .as_deref()
        .filter(|u| u.starts_with("postgres"))
    {
        let postgres = agora_sql::PostgresBackend::connect(url).await.unwrap();
        for name in names {
            postgres.drop_namespace(name).await.unwrap();
        }
    }
    if let Some(url) = &backends.nats_url {
        let nats = agora_messaging::connect(Some(url)).await.unwrap();
        for name in names {
            for subject in [subject.to_owned(), format!("dlq.{name}.>")] {
                nats.remove_consumer(name, &subject).await.unwrap();
            }
        }
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn every_capability_on_the_embedded_backends() {
    let data = tempfile::tempdir().unwrap();
    scenario(Backends {
        database_url: Some(format!("sqlite://{}", data.path().join("sql").display())),
        ..Backends::default()
    })
    .await;
}

#[tokio::test(flavor = "multi_thread")]
async fn every_capability_on_postgres_redis_and_nats() {
    if let Some(production) = Backends::production() {
        scenario(production).await;
    }
}

/// A message committed to the outbox but not relayed — a host killed between commit and relay
/// — is relayed when a host starts again.
#[tokio::test(flavor = "multi_thread")]
async fn an_unrelayed_outbox_message_is_relayed_after_a_restart() {
    for backends in backend_sets() {
        let (name, other) = (unique_name("example"), unique_name("other"));
        let subject = format!("example.{name}");
        let dir = tempfile::tempdir().unwrap();
        let manifest_path = dir.path().join("agora.toml");
        std::fs::write(&manifest_path, manifest(&name, &other, &subject)).unwrap();
        unsafe { std::env::set_var("AGORA_EXAMPLE_TEST_SECRET", "s3cret") };
        let mut config = HostConfig::new(&manifest_path);
        config.data_dir = common::shared_data_dir();
        backends.apply(&mut config);
        if config.database_url.is_none() {
            config.database_url = Some(format!("sqlite://{}", dir.path().join("sql").display()));
        }

        // The first host loads (so the namespace and the subscription's consumer exist) but
        // never relays: what a guest's committed transaction leaves when the host dies.
        let first = Host::load(&config).await.unwrap();
        let namespace = first.components()[0]
            .capabilities
            .database()
            .unwrap()
            .namespace()
            .clone();
        let note_id = uuid::Uuid::new_v4().to_string();
        let event = json!({
            "id": uuid::Uuid::new_v4().to_string(), "type": subject, "version": 1,
            "occurred_at": "2026-11-25T00:00:00Z",
            "data": {"id": note_id, "body": "from the outbox", "created_at": "2026-11-25T00:00:00Z"}
        });
        let mut tx = namespace.begin().await.unwrap();
        tx.outbox_insert(&agora_sql::OutboxMessage {
            id: uuid::Uuid::new_v4().to_string(),
            subject: subject.clone(),
            payload: serde_json::to_vec(&event).unwrap(),
            headers: vec![],
        })
        .await
        .unwrap();
        tx.commit().await.unwrap();
        drop(first);

        let cfg = config.clone();
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let host = Host::load(&cfg).await.unwrap();
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let server = tokio::spawn(host.serve(listener, async {
            let _ = stopped.await;
        }));
        let started = Instant::now();
        loop {
            let body: Value = reqwest::get(format!("http://{addr}/{name}/received"))
                .await
                .unwrap()
                .json()
                .await
                .unwrap();
            if event_note_ids(&body) == [note_id.clone()] {
                break;
            }
            assert!(
                started.elapsed() < Duration::from_secs(60),
                "not relayed: {body}"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        stop.send(()).unwrap();
        server.await.unwrap().unwrap();
        cleanup(&backends, &[&name, &other], &subject).await;
    }
}

/// The embedded set, and the production set when its servers are reachable.
fn backend_sets() -> Vec<Backends> {
    std::iter::once(Backends::default())
        .chain(Backends::production())
        .collect()
}

/// The load error of the example component as `ex` with `grants` (a manifest line).
async fn load_error(grants: &str) -> String {
    let source = component("example").display().to_string();
    let dir = tempfile::tempdir().unwrap();
    let manifest = dir.path().join("agora.toml");
    std::fs::write(
        &manifest,
        format!(
            "[[component]]\nname = \"ex\"\nsource = {source:?}\nroutes = [\"/ex/...\"]\n{grants}\n"
        ),
    )
    .unwrap();
    let mut config = HostConfig::new(&manifest);
    config.data_dir = common::shared_data_dir();
    config.database_url = Some(format!("sqlite://{}", dir.path().join("sql").display()));
    match Host::load(&config).await {
        Ok(_) => panic!("`{grants}` must not load"),
        Err(err) => err.to_string(),
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn ungranted_imports_fail_to_load() {
    for (grants, interface, hint) in [
        (
            r#"grants = { cache = true, publish = ["example.*"] }"#,
            "agora:platform/sql",
            "grants no sql (add `grants = { sql = true }`)",
        ),
        (
            "grants = { cache = true, sql = true }",
            "agora:platform/messaging",
            r#"grants no publish (add `grants = { publish = ["…"] }`)"#,
        ),
        // Logging and configuration are granted unless the manifest denies them.
        (
            r#"grants = { cache = true, sql = true, publish = ["example.*"], logging = false }"#,
            "wasi:logging/logging",
            "grants no logging (add `grants = { logging = true }`)",
        ),
        (
            r#"grants = { cache = true, sql = true, publish = ["example.*"], config = false }"#,
            "wasi:config/store",
            "grants no config (add `grants = { config = true }`)",
        ),
    ] {
        let message = load_error(grants).await;
        assert!(message.contains("component `ex`"), "{message}");
        assert!(message.contains(interface), "{message}");
        assert!(message.contains(hint), "{message}");
    }
}

/// The sql and publish grants are checked by their units like every other: a malformed one
/// fails the load, naming the component and what a valid grant is.
#[tokio::test(flavor = "multi_thread")]
async fn malformed_sql_and_publish_grants_fail_to_load() {
    for (grants, expected) in [
        (
            "grants = { sql = \"yes\" }",
            "grants.sql must be true or false",
        ),
        (
            "grants = { publish = \"order.*\" }",
            "grants.publish must be a list of subject patterns",
        ),
        (
            "grants = { publish = [\"a..b\"] }",
            "grants.publish `a..b`: ",
        ),
    ] {
        let message = load_error(grants).await;
        assert!(message.contains("component `ex`"), "{message}");
        assert!(message.contains(expected), "{message}");
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn a_failing_migration_stops_the_load_with_its_name() {
    let dir = tempfile::tempdir().unwrap();
    let migrations = dir.path().join("migrations");
    std::fs::create_dir(&migrations).unwrap();
    std::fs::write(
        migrations.join("0001_ok.sql"),
        "create table a (id integer);",
    )
    .unwrap();
    std::fs::write(
        migrations.join("0002_broken.sql"),
        "create tabel b (id integer);",
    )
    .unwrap();
    let source = component("example").display().to_string();
    let manifest = dir.path().join("agora.toml");
    std::fs::write(
        &manifest,
        format!(
            "[[component]]\nname = \"ex\"\nsource = {source:?}\nmigrations = \"migrations\"\n\
             grants = {{ sql = true, cache = true, publish = [\"example.*\"] }}\n"
        ),
    )
    .unwrap();
    let mut config = HostConfig::new(&manifest);
    config.data_dir = common::shared_data_dir();
    config.database_url = Some(format!("sqlite://{}", dir.path().join("sql").display()));
    let Err(err) = Host::load(&config).await else {
        panic!("a failing migration must stop the load");
    };
    let message = err.to_string();
    assert!(message.contains("component `ex`"), "{message}");
    assert!(message.contains("0002_broken"), "{message}");
    assert!(!message.contains('\n'), "{message}");
}

/// `cargo xtask dev` serves the repository's agora.toml: it must load as it is and serve the
/// shop (the demos live in examples/agora.toml: `shop_exposure.rs`).
#[tokio::test(flavor = "multi_thread")]
async fn the_repository_manifest_loads_and_serves() {
    let manifest = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../agora.toml");
    let data = tempfile::tempdir().unwrap();
    let mut config = HostConfig::new(&manifest);
    config.data_dir = data.path().to_owned();
    let host = Host::load(&config)
        .await
        .unwrap_or_else(|err| panic!("agora.toml does not load: {err}"));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let server = tokio::spawn(host.serve(listener, async {
        let _ = stopped.await;
    }));
    // The shop: the catalog's startup request seeded the sample products.
    let products: Value = reqwest::get(format!("http://{addr}/api/products"))
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(products["total"], 4, "{products}");
    // Policies hold: the account routes need a token, internal ones do not exist outside.
    let me = reqwest::get(format!("http://{addr}/api/accounts/me"))
        .await
        .unwrap();
    assert_eq!(me.status(), 401);
    let seed = reqwest::Client::new()
        .post(format!("http://{addr}/api/products/internal/seed"))
        .send()
        .await
        .unwrap();
    assert_eq!(seed.status(), 404);
    stop.send(()).unwrap();
    server.await.unwrap().unwrap();
}
