//! The cache contract, written once and run against every backend: the in-memory default and
//! the machine's real Redis (`AGORA_TEST_REDIS_URL`, default `redis://127.0.0.1:6379`). Where
//! Redis is unreachable the Redis tests say SKIPPED — except under `CI=true`, where they fail.

#![allow(clippy::unwrap_used)]

use agora_cache::bindings::agora::platform::cache::{Error, Host};
use agora_cache::{
    BackendError, CacheBackend, CacheCtx, CacheLimits, MemoryCache, Quota, RedisCache,
};
use std::sync::Arc;
use std::time::Duration;

fn redis_url() -> String {
    std::env::var("AGORA_TEST_REDIS_URL").unwrap_or_else(|_| "redis://127.0.0.1:6379".into())
}

/// The Redis backend, or None (after saying SKIPPED) when it is unreachable outside CI.
async fn redis() -> Option<Arc<dyn CacheBackend>> {
    let url = redis_url();
    let cache = RedisCache::new(&url).unwrap();
    match cache.get("agora:probe").await {
        Ok(_) => Some(Arc::new(cache)),
        Err(err) if std::env::var("CI").as_deref() == Ok("true") => {
            panic!("Redis at {url} is required under CI=true: {err}")
        }
        Err(err) => {
            eprintln!("SKIPPED: Redis at {url} is unreachable: {err}");
            None
        }
    }
}

/// A namespace no other test run uses.
fn component() -> String {
    format!("test-{}", uuid::Uuid::new_v4().simple())
}

async fn contract(backend: Arc<dyn CacheBackend>) {
    let name = component();
    let mut ctx = CacheCtx::granted(backend.clone(), &name);

    // Missing, set, get, overwrite.
    assert_eq!(ctx.get("greeting".into()).await.unwrap(), Ok(None));
    ctx.set("greeting".into(), b"hello".to_vec(), None)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(
        ctx.get("greeting".into()).await.unwrap(),
        Ok(Some(b"hello".to_vec()))
    );
    ctx.set("greeting".into(), vec![0, 255, 7], None)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(
        ctx.get("greeting".into()).await.unwrap(),
        Ok(Some(vec![0, 255, 7])),
        "binary values survive"
    );

    // Delete reports whether the key was there.
    assert_eq!(ctx.delete("greeting".into()).await.unwrap(), Ok(true));
    assert_eq!(ctx.delete("greeting".into()).await.unwrap(), Ok(false));
    assert_eq!(ctx.get("greeting".into()).await.unwrap(), Ok(None));

    // TTL: present before expiry, gone after.
    ctx.set("short".into(), b"x".to_vec(), Some(1000))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(
        ctx.get("short".into()).await.unwrap(),
        Ok(Some(b"x".to_vec()))
    );
    tokio::time::sleep(Duration::from_millis(1500)).await;
    assert_eq!(ctx.get("short".into()).await.unwrap(), Ok(None), "expired");

    // Counters: a missing key counts as 0, the value is decimal text, non-numbers are refused.
    assert_eq!(ctx.incr("visits".into(), 1).await.unwrap(), Ok(1));
    assert_eq!(ctx.incr("visits".into(), 41).await.unwrap(), Ok(42));
    assert_eq!(ctx.incr("visits".into(), -2).await.unwrap(), Ok(40));
    assert_eq!(
        ctx.get("visits".into()).await.unwrap(),
        Ok(Some(b"40".to_vec()))
    );
    ctx.set("word".into(), b"abc".to_vec(), None)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(
        ctx.incr("word".into(), 1).await.unwrap(),
        Err(Error::NotANumber)
    );
    ctx.set("big".into(), i64::MAX.to_string().into_bytes(), None)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(
        ctx.incr("big".into(), 1).await.unwrap(),
        Err(Error::NotANumber),
        "overflow"
    );

    // Concurrent increments are atomic.
    let mut tasks = Vec::new();
    for _ in 0..20 {
        let mut ctx = ctx.clone();
        tasks.push(tokio::spawn(async move {
            ctx.incr("race".into(), 1).await.unwrap().unwrap()
        }));
    }
    let mut seen: Vec<i64> = Vec::new();
    for task in tasks {
        seen.push(task.await.unwrap());
    }
    seen.sort_unstable();
    assert_eq!(
        seen,
        (1..=20).collect::<Vec<i64>>(),
        "each increment seen once"
    );

    // Namespaces: another component does not see these keys, and vice versa.
    let mut other = CacheCtx::granted(backend.clone(), &component());
    assert_eq!(other.get("visits".into()).await.unwrap(), Ok(None));
    other
        .set("visits".into(), b"7".to_vec(), None)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(
        ctx.get("visits".into()).await.unwrap(),
        Ok(Some(b"40".to_vec()))
    );

    // Bad input is an error value, never a trap.
    assert!(matches!(
        ctx.get(String::new()).await.unwrap(),
        Err(Error::Invalid(_))
    ));
    assert!(matches!(
        ctx.get("k".repeat(513)).await.unwrap(),
        Err(Error::Invalid(_))
    ));
    assert!(matches!(
        ctx.set("v".into(), vec![0; (1 << 20) + 1], None)
            .await
            .unwrap(),
        Err(Error::Invalid(_))
    ));
    assert!(matches!(
        ctx.set("v".into(), b"x".to_vec(), Some(0)).await.unwrap(),
        Err(Error::Invalid(_))
    ));

    // Without a grant every call is denied.
    let mut denied = CacheCtx::denied();
    assert_eq!(
        denied.get("visits".into()).await.unwrap(),
        Err(Error::Denied)
    );
    assert_eq!(
        denied.incr("visits".into(), 1).await.unwrap(),
        Err(Error::Denied)
    );

    for key in ["visits", "word", "big", "race"] {
        ctx.delete(key.into()).await.unwrap().unwrap();
    }
    other.delete("visits".into()).await.unwrap().unwrap();

    quota(backend).await;
}

/// A component holds at most its quota of live keys: a new key past it is refused (the
/// others' keys untouched), an existing one can still be overwritten and incremented, and
/// room comes back when keys are deleted or expire.
async fn quota(backend: Arc<dyn CacheBackend>) {
    let limits = CacheLimits {
        max_keys: 3,
        max_value_bytes: 8,
    };
    let mut ctx = CacheCtx::granted_with(backend.clone(), &component(), limits);
    let mut other = CacheCtx::granted(backend.clone(), &component());
    other
        .set("kept".into(), b"1".to_vec(), None)
        .await
        .unwrap()
        .unwrap();
    fn over_quota<T>(result: Result<T, Error>) -> bool {
        matches!(result, Err(Error::Invalid(message)) if message.contains("quota"))
    }
    ctx.set("a".into(), b"1".to_vec(), None)
        .await
        .unwrap()
        .unwrap();
    ctx.incr("b".into(), 1).await.unwrap().unwrap();
    ctx.set("short".into(), b"1".to_vec(), Some(150))
        .await
        .unwrap()
        .unwrap();
    assert!(over_quota(
        ctx.set("d".into(), b"1".to_vec(), None).await.unwrap()
    ));
    assert!(over_quota(ctx.incr("e".into(), 1).await.unwrap()));
    assert!(matches!(
        ctx.set("a".into(), vec![0; 9], None).await.unwrap(),
        Err(Error::Invalid(message)) if message.contains("8-byte")
    ));
    ctx.set("a".into(), b"2".to_vec(), None)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(ctx.incr("b".into(), 1).await.unwrap(), Ok(2));
    assert_eq!(
        other.get("kept".into()).await.unwrap(),
        Ok(Some(b"1".to_vec()))
    );
    // A deleted key and an expired one make room again.
    ctx.delete("a".into()).await.unwrap().unwrap();
    ctx.set("d".into(), b"1".to_vec(), None)
        .await
        .unwrap()
        .unwrap();
    tokio::time::sleep(Duration::from_millis(300)).await;
    ctx.set("e".into(), b"1".to_vec(), None)
        .await
        .unwrap()
        .unwrap();
    assert!(over_quota(
        ctx.set("f".into(), b"1".to_vec(), None).await.unwrap()
    ));
    for key in ["b", "d", "e"] {
        ctx.delete(key.into()).await.unwrap().unwrap();
    }
    other.delete("kept".into()).await.unwrap().unwrap();
}

/// Compare-and-swap and key listing, what wasi:keyvalue's atomics and `list-keys` stand on:
/// a swap stores only over the expected value (or an absent key), counts against the quota
/// for a new key, and a listing pages through the live keys of one prefix in byte order.
async fn swap_and_keys(backend: Arc<dyn CacheBackend>) {
    let namespace = format!("agora:{}:", component());
    let quota = Quota {
        namespace: &namespace,
        max_keys: 4,
    };
    let key = |name: &str| format!("{namespace}{name}");

    assert!(backend.swap(&key("k"), None, b"1", quota).await.unwrap());
    assert!(!backend.swap(&key("k"), None, b"2", quota).await.unwrap());
    assert!(
        !backend
            .swap(&key("k"), Some(b"9"), b"2", quota)
            .await
            .unwrap()
    );
    assert!(
        backend
            .swap(&key("k"), Some(b"1"), b"2", quota)
            .await
            .unwrap()
    );
    assert_eq!(backend.get(&key("k")).await.unwrap(), Some(b"2".to_vec()));

    for name in ["b/2", "b/1", "a/1"] {
        backend.set(&key(name), b"x", None, quota).await.unwrap();
    }
    assert_eq!(
        backend.swap(&key("new"), None, b"1", quota).await,
        Err(BackendError::QuotaExceeded(4)),
        "a swap creating a key counts against the quota"
    );
    let (first, more) = backend.keys(&namespace, &key("b/"), None, 1).await.unwrap();
    assert_eq!((first.clone(), more), (vec![key("b/1")], true));
    let (rest, more) = backend
        .keys(&namespace, &key("b/"), Some(&first[0]), 10)
        .await
        .unwrap();
    assert_eq!((rest, more), (vec![key("b/2")], false));
    let (all, _) = backend
        .keys(&namespace, &namespace, None, 10)
        .await
        .unwrap();
    assert_eq!(all, vec![key("a/1"), key("b/1"), key("b/2"), key("k")]);

    // An expired key is neither listed nor the current value of a swap.
    backend.delete(&key("a/1"), &namespace).await.unwrap();
    backend
        .set(&key("short"), b"1", Some(Duration::from_millis(100)), quota)
        .await
        .unwrap();
    tokio::time::sleep(Duration::from_millis(250)).await;
    let (all, _) = backend
        .keys(&namespace, &namespace, None, 10)
        .await
        .unwrap();
    assert_eq!(all, vec![key("b/1"), key("b/2"), key("k")]);
    assert!(
        backend
            .swap(&key("short"), None, b"2", quota)
            .await
            .unwrap()
    );
    for name in ["b/1", "b/2", "k", "short"] {
        backend.delete(&key(name), &namespace).await.unwrap();
    }
}

#[tokio::test]
async fn memory_backend_meets_the_contract() {
    contract(Arc::new(MemoryCache::default())).await;
    swap_and_keys(Arc::new(MemoryCache::default())).await;
}

#[tokio::test]
async fn redis_backend_meets_the_contract() {
    if let Some(backend) = redis().await {
        contract(backend.clone()).await;
        swap_and_keys(backend).await;
    }
}

#[tokio::test]
async fn memory_backend_stays_within_its_bounds() {
    const QUOTA: Quota<'static> = Quota {
        namespace: "",
        max_keys: u64::MAX,
    };
    let cache = MemoryCache::new(3, 1 << 20);
    for key in ["a", "b", "c"] {
        cache.set(key, b"1", None, QUOTA).await.unwrap();
    }
    cache.get("a").await.unwrap();
    cache.set("d", b"1", None, QUOTA).await.unwrap();
    assert_eq!(
        cache.get("b").await.unwrap(),
        None,
        "least recently used goes"
    );
    for key in ["a", "c", "d"] {
        assert!(cache.get(key).await.unwrap().is_some(), "{key} stays");
    }

    let small = MemoryCache::new(100, 10);
    small.set("k1", b"12345", None, QUOTA).await.unwrap();
    small.set("k2", b"12345", None, QUOTA).await.unwrap();
    assert_eq!(small.get("k1").await.unwrap(), None, "byte bound evicts");
    assert!(small.get("k2").await.unwrap().is_some());
}

#[tokio::test]
async fn an_unreachable_redis_is_an_error_value_not_a_hang() {
    // Port 1 on loopback: nothing listens there, so connecting fails at once.
    let cache = RedisCache::new("redis://127.0.0.1:1").unwrap();
    for _ in 0..2 {
        assert!(matches!(
            cache.get("k").await,
            Err(BackendError::Unavailable(_))
        ));
        assert!(matches!(
            cache
                .incr(
                    "k",
                    1,
                    Quota {
                        namespace: "agora:x:",
                        max_keys: 1
                    }
                )
                .await,
            Err(BackendError::Unavailable(_))
        ));
    }
}
