//! Auth state and rate-limit buckets never share a keyspace a component can fill: with Redis
//! they live in the database after the cache's (or the one `auth_redis_url` names), and each
//! component's cache is held to its quota.

#![allow(clippy::unwrap_used)]

mod common;

use common::{TestHost, component_table, redis_url_or_skip, unique_name};

/// The keys of database `db` of the Redis at `url` that start with `prefix`.
fn keys(url: &str, db: u32, prefix: &str) -> Vec<String> {
    let base = url.trim_end_matches('/');
    let client = redis::Client::open(format!("{base}/{db}")).unwrap();
    let mut connection = client.get_connection().unwrap();
    redis::cmd("KEYS")
        .arg(format!("{prefix}*"))
        .query(&mut connection)
        .unwrap()
}

#[tokio::test(flavor = "multi_thread")]
async fn rate_limit_buckets_live_outside_the_cache_database() {
    let Some(redis) = redis_url_or_skip() else {
        return;
    };
    let redis = redis.trim_end_matches('/').to_owned();
    // The component's name makes its bucket keys this test's own.
    let name = unique_name("keyspace");
    let limited = "[[component.policy]]\nrate_limit = { per_ip = \"1000/s\" }";
    let manifest = component_table(&name, "hello", &["/hello"], limited);
    let bucket = format!("agora-ratelimit:{name}/");

    for (auth_redis_url, db) in [(None, 1), (Some(format!("{redis}/7")), 7)] {
        let host = TestHost::start_with(&manifest, |config| {
            config.redis_url = Some(format!("{redis}/0"));
            config.auth_redis_url = auth_redis_url.clone();
        })
        .await;
        let response = reqwest::get(host.url("/hello")).await.unwrap();
        assert_eq!(response.status(), 200);
        assert!(
            !keys(&redis, db, &bucket).is_empty(),
            "no bucket in database {db} (auth_redis_url {auth_redis_url:?})"
        );
        assert!(
            keys(&redis, 0, &bucket).is_empty(),
            "a bucket in the cache's database (auth_redis_url {auth_redis_url:?})"
        );
        host.stop().await;
    }
}
