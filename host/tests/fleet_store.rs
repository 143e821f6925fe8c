//! The fleet's storage and protocol against a real NATS with JetStream
//! (`AGORA_TEST_NATS_URL`, default nats://127.0.0.1:4222; skipped when unreachable, except
//! under `CI=true`). Each test uses a fleet of its own.

#![allow(clippy::unwrap_used)]

mod common;

use agora_host::fleet::{
    self, ComponentReport, Desired, Fleet, FleetError, MAX_COMPONENT_BYTES, ReplicaReport,
};
use futures::{StreamExt as _, TryStreamExt as _};
use std::time::{Duration, Instant, SystemTime};

/// A hang guard only: nothing here is expected to take more than a fraction of it.
const GUARD: Duration = Duration::from_secs(15);

async fn fleet_or_skip(stem: &str) -> Option<Fleet> {
    let url = common::nats_url_or_skip()?;
    let name = common::unique_name(stem);
    let fleet = tokio::time::timeout(GUARD, Fleet::connect(&url, &name))
        .await
        .expect("connect hangs")
        .unwrap_or_else(|err| panic!("cannot connect: {err}"));
    assert_eq!(fleet.name(), name);
    Some(fleet)
}

fn sha256_hex(bytes: &[u8]) -> String {
    agora_host::compile_cache::sha256_hex(bytes)
}

/// JetStream through a connection of its own, as another client would see it.
async fn raw_jetstream() -> async_nats::jetstream::Context {
    let url = common::nats_url_or_skip().unwrap();
    async_nats::jetstream::new(async_nats::connect(url).await.unwrap())
}

/// The raw object store of `fleet`.
async fn raw_wasm_store(fleet: &Fleet) -> async_nats::jetstream::object_store::ObjectStore {
    raw_jetstream()
        .await
        .get_object_store(fleet::wasm_bucket(fleet.name()))
        .await
        .unwrap()
}

#[tokio::test]
async fn deploy_sets_the_desired_version() {
    let Some(fleet) = fleet_or_skip("deploy").await else {
        return;
    };
    assert!(fleet.desired().await.unwrap().is_empty());

    let bytes = b"\0asm component one".repeat(1000);
    let before = SystemTime::now();
    let deployed = fleet.deploy("api", &bytes).await.unwrap();
    assert_eq!(deployed.component, "api");
    assert_eq!(deployed.digest, sha256_hex(&bytes));
    assert_eq!(deployed.size, bytes.len() as u64);
    assert!(deployed.revision > 0);
    let deployed_at = time::OffsetDateTime::parse(
        &deployed.deployed_at,
        &time::format_description::well_known::Rfc3339,
    )
    .unwrap();
    assert!(deployed_at >= time::OffsetDateTime::from(before) - Duration::from_secs(1));

    let other = fleet.deploy("worker", b"worker bytes").await.unwrap();
    assert!(other.revision > deployed.revision);

    let desired = fleet.desired().await.unwrap();
    assert_eq!(desired, vec![deployed.clone(), other.clone()]);

    // A new version replaces the old one in `desired`.
    let newer = fleet.deploy("api", b"api v2").await.unwrap();
    let desired = fleet.desired().await.unwrap();
    assert_eq!(desired, vec![newer.clone(), other]);

    // The previous versions stay in the bucket's history, up to DESIRED_HISTORY of them.
    let jetstream = raw_jetstream().await;
    let bucket = jetstream
        .get_key_value(fleet::desired_bucket(fleet.name()))
        .await
        .unwrap();
    let history: Vec<_> = bucket
        .history("api")
        .await
        .unwrap()
        .try_collect()
        .await
        .unwrap();
    let revisions: Vec<u64> = history.iter().map(|entry| entry.revision).collect();
    assert_eq!(revisions, vec![deployed.revision, newer.revision]);
    let stream = jetstream
        .get_stream(format!("KV_{}", fleet::desired_bucket(fleet.name())))
        .await
        .unwrap();
    assert_eq!(
        stream.cached_info().config.max_messages_per_subject,
        fleet::DESIRED_HISTORY
    );
}

#[tokio::test]
async fn the_same_bytes_are_stored_once() {
    let Some(fleet) = fleet_or_skip("same").await else {
        return;
    };
    let bytes = vec![7u8; 300 * 1024]; // Several chunks.
    let first = fleet.deploy("api", &bytes).await.unwrap();
    let store = raw_wasm_store(&fleet).await;
    let object = fleet::object_name(&first.digest);
    let stored = store.info(&object).await.unwrap();
    assert_eq!(stored.size, bytes.len());

    let second = fleet.deploy("api", &bytes).await.unwrap();
    assert_eq!(second.digest, first.digest);
    assert!(
        second.revision > first.revision,
        "a redeploy is a new revision"
    );
    // Not uploaded again: the object is the very same one.
    let again = store.info(&object).await.unwrap();
    assert_eq!(again.nuid, stored.nuid);
    assert_eq!(again.modified, stored.modified);

    // Another component with the same bytes shares the object.
    let twin = fleet.deploy("twin", &bytes).await.unwrap();
    assert_eq!(twin.digest, first.digest);
    assert_eq!(store.info(&object).await.unwrap().nuid, stored.nuid);
    assert_eq!(fleet.fetch(&twin).await.unwrap(), bytes);
}

#[tokio::test]
async fn fetch_returns_the_deployed_bytes() {
    let Some(fleet) = fleet_or_skip("fetch").await else {
        return;
    };
    let bytes: Vec<u8> = (0..400_000u32).map(|i| (i * 31 % 251) as u8).collect();
    let deployed = fleet.deploy("api", &bytes).await.unwrap();
    assert_eq!(fleet.fetch(&deployed).await.unwrap(), bytes);

    // Through another connection, from what `desired` says.
    let url = common::nats_url_or_skip().unwrap();
    let other = Fleet::connect(&url, fleet.name()).await.unwrap();
    let desired = other.desired().await.unwrap();
    assert_eq!(other.fetch(&desired[0]).await.unwrap(), bytes);

    let empty = fleet.deploy("empty", b"").await.unwrap();
    assert_eq!(empty.size, 0);
    assert!(fleet.fetch(&empty).await.unwrap().is_empty());
}

#[tokio::test]
async fn fetch_refuses_bytes_that_do_not_match() {
    let Some(fleet) = fleet_or_skip("corrupt").await else {
        return;
    };
    let bytes = b"the real component".to_vec();
    let deployed = fleet.deploy("api", &bytes).await.unwrap();

    // Someone overwrites the object with other bytes of the same length.
    let store = raw_wasm_store(&fleet).await;
    let forged = b"a forged component".to_vec();
    assert_eq!(forged.len(), bytes.len());
    store
        .put(
            fleet::object_name(&deployed.digest).as_str(),
            &mut forged.as_slice(),
        )
        .await
        .unwrap();
    let err = fleet.fetch(&deployed).await.unwrap_err();
    assert!(matches!(err, FleetError::Corrupt { .. }), "{err:?}");
    let message = err.to_string();
    assert!(message.contains(&deployed.digest), "{message}");
    assert!(message.contains("`api`"), "{message}");
    assert!(message.contains(&sha256_hex(&forged)), "{message}");
    assert!(!message.contains('\n'));

    // Bytes of another length.
    store
        .put(
            fleet::object_name(&deployed.digest).as_str(),
            &mut &b"short"[..],
        )
        .await
        .unwrap();
    let message = fleet.fetch(&deployed).await.unwrap_err().to_string();
    assert!(message.contains(&deployed.digest), "{message}");
    assert!(message.contains("5 bytes"), "{message}");

    // Deploying the real bytes again repairs the object.
    let redeployed = fleet.deploy("api", &bytes).await.unwrap();
    assert_eq!(fleet.fetch(&redeployed).await.unwrap(), bytes);

    // A desired version naming a digest the bytes do not have.
    let wrong = Desired {
        digest: sha256_hex(b"something else"),
        ..redeployed.clone()
    };
    let err = fleet.fetch(&wrong).await.unwrap_err();
    assert!(matches!(err, FleetError::MissingObject { .. }), "{err:?}");
    assert!(err.to_string().contains(&wrong.digest), "{err}");

    // A size that does not match.
    let wrong = Desired {
        size: redeployed.size + 1,
        ..redeployed.clone()
    };
    let err = fleet.fetch(&wrong).await.unwrap_err();
    assert!(err.to_string().contains(&wrong.digest), "{err}");

    // Not a digest at all.
    let wrong = Desired {
        digest: "../../etc".into(),
        ..redeployed
    };
    let err = fleet.fetch(&wrong).await.unwrap_err();
    assert!(matches!(err, FleetError::Corrupt { .. }), "{err:?}");
}

#[tokio::test]
async fn watch_yields_later_deploys() {
    let Some(fleet) = fleet_or_skip("watch").await else {
        return;
    };
    let before = fleet.deploy("api", b"before the watch").await.unwrap();
    let mut changes = Box::pin(fleet.watch().await.unwrap());

    // From another connection, as `agora deploy` would.
    let url = common::nats_url_or_skip().unwrap();
    let deployer = Fleet::connect(&url, fleet.name()).await.unwrap();
    let first = deployer.deploy("api", b"version two").await.unwrap();
    let second = deployer.deploy("worker", b"worker one").await.unwrap();

    let seen = tokio::time::timeout(GUARD, changes.next())
        .await
        .expect("watch hangs")
        .expect("watch ended")
        .unwrap();
    // Not the value from before the watch.
    assert_ne!(seen.revision, before.revision);
    assert_eq!(seen, first);
    let seen = tokio::time::timeout(GUARD, changes.next())
        .await
        .expect("watch hangs")
        .expect("watch ended")
        .unwrap();
    assert_eq!(seen, second);

    // The stream outlives the fleet handle it came from.
    drop(fleet);
    let third = deployer.deploy("api", b"version three").await.unwrap();
    let seen = tokio::time::timeout(GUARD, changes.next())
        .await
        .expect("watch hangs")
        .expect("watch ended")
        .unwrap();
    assert_eq!(seen, third);
}

#[tokio::test]
async fn watch_never_replays_history_after_its_consumer_is_lost() {
    let Some(fleet) = fleet_or_skip("rewatch").await else {
        return;
    };
    let old = fleet.deploy("api", b"old version").await.unwrap();
    fleet.deploy("api", b"older than the watch").await.unwrap();
    let mut changes = Box::pin(fleet.watch().await.unwrap());

    // The server loses the watch's consumer (as after a restart that lost its state); the
    // client notices the missing heartbeats and recreates it from the start of the bucket.
    let url = common::nats_url_or_skip().unwrap();
    let jetstream = async_nats::jetstream::new(async_nats::connect(url).await.unwrap());
    let stream = jetstream
        .get_stream(format!("KV_{}", fleet::desired_bucket(fleet.name())))
        .await
        .unwrap();
    let names: Vec<String> = stream.consumer_names().try_collect().await.unwrap();
    assert!(!names.is_empty());
    for name in names {
        stream.delete_consumer(&name).await.unwrap();
    }
    let new = fleet.deploy("api", b"new version").await.unwrap();

    // The loss shows as an error; the stream goes on.
    let deadline = Instant::now() + Duration::from_secs(40);
    let seen = loop {
        let next = tokio::time::timeout_at(deadline.into(), changes.next())
            .await
            .expect("watch hangs")
            .expect("watch ended");
        match next {
            Ok(desired) => break desired,
            Err(err) => {
                let message = err.to_string();
                assert!(message.contains("heartbeat"), "{message}");
                assert!(
                    message.contains(&fleet::desired_bucket(fleet.name())),
                    "{message}"
                );
            }
        }
    };
    assert_ne!(seen.revision, old.revision, "history replayed");
    assert_eq!(seen, new);

    // And keeps following.
    let newer = fleet.deploy("worker", b"worker").await.unwrap();
    let seen = tokio::time::timeout(GUARD, changes.next())
        .await
        .expect("watch hangs")
        .expect("watch ended")
        .unwrap();
    assert_eq!(seen, newer);
}

fn report(replica: &str, digest: &str) -> ReplicaReport {
    ReplicaReport {
        replica: replica.into(),
        hostname: "test-host".into(),
        started_at: fleet::timestamp(SystemTime::now()),
        reported_at: fleet::timestamp(SystemTime::now()),
        components: vec![ComponentReport {
            name: "api".into(),
            digest: digest.into(),
            loaded_at: fleet::timestamp(SystemTime::now()),
            desired: Some(digest.into()),
            error: None,
        }],
    }
}

#[tokio::test]
async fn reports_round_trip() {
    let Some(fleet) = fleet_or_skip("reports").await else {
        return;
    };
    assert!(fleet.replicas().await.unwrap().is_empty());
    let digest = sha256_hex(b"api");
    let b = report("replica-b", &digest);
    let a = report(&fleet::new_replica_id(), &digest);
    fleet.report(&b).await.unwrap();
    fleet.report(&a).await.unwrap();
    let mut expected = vec![a.clone(), b.clone()];
    expected.sort_by(|x, y| x.replica.cmp(&y.replica));
    assert_eq!(fleet.replicas().await.unwrap(), expected);

    // A new report replaces the previous one.
    let mut refused = b.clone();
    refused.components[0].desired = Some(sha256_hex(b"api v2"));
    refused.components[0].error = Some("does not export wasi:http".into());
    fleet.report(&refused).await.unwrap();
    let replicas = fleet.replicas().await.unwrap();
    assert_eq!(replicas.len(), 2);
    assert!(replicas.contains(&refused), "{replicas:?}");

    // A clean shutdown withdraws it; withdrawing twice is fine.
    fleet.withdraw("replica-b").await.unwrap();
    fleet.withdraw("replica-b").await.unwrap();
    assert_eq!(fleet.replicas().await.unwrap(), vec![a.clone()]);
    fleet.withdraw(&a.replica).await.unwrap();
    assert!(fleet.replicas().await.unwrap().is_empty());

    // Reporting again after a withdrawal brings it back.
    fleet.report(&a).await.unwrap();
    assert_eq!(fleet.replicas().await.unwrap(), vec![a]);

    // Reports expire when not renewed.
    let stream = raw_jetstream()
        .await
        .get_stream(format!("KV_{}", fleet::replicas_bucket(fleet.name())))
        .await
        .unwrap();
    assert_eq!(stream.cached_info().config.max_age, fleet::REPORT_TTL);
    assert!(fleet::REPORT_INTERVAL * 2 < fleet::REPORT_TTL);

    // The status shows what was reported.
    let desired = fleet.desired().await.unwrap();
    let text = fleet::format_status(
        &desired,
        &fleet.replicas().await.unwrap(),
        SystemTime::now(),
    );
    assert!(text.contains("desired versions: none"), "{text}");
    assert!(text.contains("on test-host"), "{text}");
}

#[tokio::test]
async fn invalid_names_are_refused() {
    let Some(url) = common::nats_url_or_skip() else {
        return;
    };
    for name in ["", "a.b", "a b", "a/b", "a>", "é"] {
        let err = Fleet::connect(&url, name).await.unwrap_err();
        assert!(
            matches!(err, FleetError::InvalidFleet(_)),
            "{name:?}: {err:?}"
        );
        assert!(err.to_string().contains("invalid fleet name"), "{err}");
    }
    let err = Fleet::connect(&url, &"x".repeat(65)).await.unwrap_err();
    assert!(matches!(err, FleetError::InvalidFleet(_)), "{err:?}");

    let fleet = Fleet::connect(&url, &common::unique_name("names"))
        .await
        .unwrap();
    for component in ["", "Api", "a.b", "a>", "-api"] {
        let err = fleet.deploy(component, b"bytes").await.unwrap_err();
        assert!(
            matches!(err, FleetError::InvalidComponent(_)),
            "{component:?}: {err:?}"
        );
    }
    let err = fleet.report(&report("a.b", "x")).await.unwrap_err();
    assert!(matches!(err, FleetError::InvalidReplica(_)), "{err:?}");
    let err = fleet.withdraw("a*").await.unwrap_err();
    assert!(matches!(err, FleetError::InvalidReplica(_)), "{err:?}");
    assert!(fleet.desired().await.unwrap().is_empty());
}

#[tokio::test]
async fn too_large_components_are_refused() {
    let Some(fleet) = fleet_or_skip("large").await else {
        return;
    };
    let bytes = vec![0u8; MAX_COMPONENT_BYTES as usize + 1];
    let err = fleet.deploy("api", &bytes).await.unwrap_err();
    assert!(matches!(err, FleetError::TooLarge { .. }), "{err:?}");
    assert!(err.to_string().contains("`api`"), "{err}");
    assert!(fleet.desired().await.unwrap().is_empty());
}

#[tokio::test]
async fn an_unreachable_nats_is_an_error_not_a_hang() {
    let started = Instant::now();
    let err = tokio::time::timeout(
        fleet::CONNECT_TIMEOUT + Duration::from_secs(5),
        Fleet::connect("nats://127.0.0.1:1", "unreachable"),
    )
    .await
    .expect("connect hangs")
    .unwrap_err();
    assert!(matches!(err, FleetError::Connect { .. }), "{err:?}");
    let message = err.to_string();
    assert!(message.contains("nats://127.0.0.1:1"), "{message}");
    assert!(!message.contains('\n'), "{message}");
    eprintln!("failed after {:?}: {message}", started.elapsed());

    // Credentials stay out of the message.
    let err = Fleet::connect("nats://user:secret@127.0.0.1:1", "unreachable")
        .await
        .unwrap_err();
    assert!(!err.to_string().contains("secret"), "{err}");
}
