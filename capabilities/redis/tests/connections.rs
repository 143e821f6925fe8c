//! Which connection a call runs on, against the machine's real Redis (`AGORA_TEST_REDIS_URL`,
//! default `redis://127.0.0.1:6379`): shared on a multi-threaded runtime, one per thread on
//! single-threaded runtimes. Skipped where Redis is unreachable, except under `CI=true`.

#![allow(clippy::unwrap_used)]

use agora_redis::LazyRedis;
use std::sync::Arc;
use std::time::Duration;

fn redis() -> Option<Arc<LazyRedis>> {
    let url =
        std::env::var("AGORA_TEST_REDIS_URL").unwrap_or_else(|_| "redis://127.0.0.1:6379".into());
    let reachable = std::net::TcpStream::connect_timeout(
        &url.trim_start_matches("redis://")
            .split('/')
            .next()
            .unwrap()
            .parse()
            .unwrap(),
        Duration::from_secs(1),
    )
    .is_ok();
    if !reachable {
        assert!(
            std::env::var("CI").as_deref() != Ok("true"),
            "Redis at {url} is unreachable under CI"
        );
        eprintln!("SKIPPED: Redis at {url} is unreachable");
        return None;
    }
    Some(Arc::new(
        LazyRedis::new(&url, Duration::from_secs(2)).unwrap(),
    ))
}

/// The server's id of the connection the call ran on.
async fn client_id(redis: &LazyRedis) -> i64 {
    redis
        .run_commands(
            |mut connection| async move {
                redis::cmd("CLIENT")
                    .arg("ID")
                    .query_async(&mut connection)
                    .await
            },
            |message| message,
        )
        .await
        .unwrap()
}

/// Two calls on a single-threaded runtime on its own thread.
fn on_own_thread(redis: Arc<LazyRedis>) -> std::thread::JoinHandle<(i64, i64)> {
    std::thread::spawn(move || {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        runtime.block_on(async { (client_id(&redis).await, client_id(&redis).await) })
    })
}

#[test]
fn each_single_threaded_runtime_gets_its_own_connection_and_keeps_it() {
    let Some(redis) = redis() else { return };
    let (a1, a2) = on_own_thread(redis.clone()).join().unwrap();
    let (b1, b2) = on_own_thread(redis.clone()).join().unwrap();
    assert_eq!(a1, a2, "a thread keeps its connection");
    assert_eq!(b1, b2, "a thread keeps its connection");
    assert_ne!(a1, b1, "two threads share no connection");
}

#[test]
fn a_multi_threaded_runtime_shares_one_connection() {
    let Some(redis) = redis() else { return };
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let ids = runtime.block_on(async {
        let tasks: Vec<_> = (0..8)
            .map(|_| {
                let redis = redis.clone();
                tokio::spawn(async move { client_id(&redis).await })
            })
            .collect();
        let mut ids = Vec::new();
        for task in tasks {
            ids.push(task.await.unwrap());
        }
        ids
    });
    assert!(ids.iter().all(|id| *id == ids[0]), "{ids:?}");
}
