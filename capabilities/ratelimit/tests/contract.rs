//! The rate-limiting contract, written once and run against every backend: the in-memory
//! default and the machine's real Redis (`AGORA_TEST_REDIS_URL`, default
//! `redis://127.0.0.1:6379`). Where Redis is unreachable the Redis tests say SKIPPED — except
//! under `CI=true`, where they fail.
//!
//! Each test gets two limiters standing for two host replicas: the same memory limiter twice,
//! or two separate connections to one Redis; and its own key prefix, so runs never share a
//! bucket. Rates are slow (per minute or hour) wherever a test must not see a refill, and the
//! one test that waits for a refill sleeps the `retry_after` it was given.

#![allow(clippy::unwrap_used)]

use agora_ratelimit::{
    Decision, KEY_PREFIX, LimitError, MemoryRateLimiter, Rate, RateLimiter, RedisRateLimiter,
};
use std::sync::Arc;
use std::time::Duration;

fn redis_url() -> String {
    std::env::var("AGORA_TEST_REDIS_URL").unwrap_or_else(|_| "redis://127.0.0.1:6379".into())
}

/// Two replicas' limiters, and a key prefix no other test run uses.
struct Limiters {
    a: Arc<dyn RateLimiter>,
    b: Arc<dyn RateLimiter>,
    prefix: String,
}

impl Limiters {
    fn key(&self, name: &str) -> String {
        format!("{}{name}", self.prefix)
    }
}

fn prefix() -> String {
    format!("test-{}:", uuid::Uuid::new_v4().simple())
}

fn rate(text: &str) -> Rate {
    text.parse().unwrap()
}

fn memory_limiters() -> Limiters {
    let limiter: Arc<dyn RateLimiter> = Arc::new(MemoryRateLimiter::default());
    Limiters {
        a: limiter.clone(),
        b: limiter,
        prefix: prefix(),
    }
}

/// Two connections to Redis, or None (after saying SKIPPED) when it is unreachable outside CI.
async fn redis_limiters() -> Option<Limiters> {
    let url = redis_url();
    let a = RedisRateLimiter::new(&url).unwrap();
    let probe = format!("{}probe", prefix());
    match a.check(&probe, rate("1000000/s")).await {
        Ok(_) => Some(Limiters {
            a: Arc::new(a),
            b: Arc::new(RedisRateLimiter::new(&url).unwrap()),
            prefix: prefix(),
        }),
        Err(err) if std::env::var("CI").as_deref() == Ok("true") => {
            panic!("Redis at {url} is required under CI=true: {err}")
        }
        Err(err) => {
            eprintln!("SKIPPED: Redis at {url} is unreachable: {err}");
            None
        }
    }
}

async fn check(limiter: &Arc<dyn RateLimiter>, key: &str, rate: Rate) -> Decision {
    limiter.check(key, rate).await.unwrap()
}

fn retry_after(decision: Decision) -> Duration {
    match decision {
        Decision::Limited { retry_after } => retry_after,
        Decision::Allowed { remaining } => panic!("allowed ({remaining} left), expected limited"),
    }
}

/// Takes the whole burst of a fresh `key` (remaining counting down), then is limited with a
/// retry-after of at most one token's time; a limited check takes nothing.
async fn drain(limiter: &Arc<dyn RateLimiter>, key: &str, rate: Rate) -> Duration {
    for left in (0..rate.burst).rev() {
        assert_eq!(
            check(limiter, key, rate).await,
            Decision::Allowed { remaining: left },
            "{key} at {rate} burst {}",
            rate.burst
        );
    }
    let first = retry_after(check(limiter, key, rate).await);
    assert!(first > Duration::ZERO);
    assert!(first <= rate.period / rate.limit, "{first:?} for {rate}");
    let second = retry_after(check(limiter, key, rate).await);
    assert!(second <= first, "{second:?} after {first:?}");
    first
}

async fn fresh_key_allows_the_burst_then_limits(l: Limiters) {
    drain(&l.a, &l.key("burst"), rate("10/min").with_burst(5)).await;
    // The default burst is N.
    let default = rate("3/h");
    assert_eq!(default.burst, 3);
    drain(&l.a, &l.key("default"), default).await;
    // A burst above N.
    drain(&l.a, &l.key("above"), rate("1/h").with_burst(4)).await;
    // A burst of one.
    drain(&l.a, &l.key("one"), rate("100/h").with_burst(1)).await;
}

async fn keys_are_independent(l: Limiters) {
    let r = rate("2/h");
    drain(&l.a, &l.key("x"), r).await;
    // Neither another key nor one that shares a prefix is touched.
    drain(&l.a, &l.key("y"), r).await;
    drain(&l.a, &l.key("x:"), r).await;
    drain(&l.a, &l.key("xx"), r).await;
    drain(&l.a, &l.key(""), r).await;
    retry_after(check(&l.a, &l.key("x"), r).await);
}

async fn refills_after_retry_after(l: Limiters) {
    let key = l.key("refill");
    let r = rate("20/s").with_burst(2);
    for round in 0..2 {
        // Refills may land between checks here: no count is asserted, only that the burst
        // goes and a limit comes.
        let mut allowed = 0;
        let wait = loop {
            match check(&l.a, &key, r).await {
                Decision::Allowed { .. } => allowed += 1,
                Decision::Limited { retry_after } => break retry_after,
            }
            assert!(allowed <= 10, "never limited");
        };
        if round == 0 {
            assert!(allowed >= 2, "{allowed}");
        }
        assert!(
            wait > Duration::ZERO && wait <= Duration::from_millis(50),
            "{wait:?}"
        );
        tokio::time::sleep(wait + Duration::from_millis(10)).await;
        assert!(
            matches!(check(&l.b, &key, r).await, Decision::Allowed { .. }),
            "limited after waiting the retry-after"
        );
    }
}

async fn concurrent_checks_take_exactly_the_burst(l: Limiters) {
    let key = Arc::new(l.key("concurrent"));
    let r = rate("10/h");
    let tasks: Vec<_> = (0..4)
        .map(|i| {
            let limiter = if i % 2 == 0 { l.a.clone() } else { l.b.clone() };
            let key = key.clone();
            tokio::spawn(async move {
                let mut allowed = 0;
                for _ in 0..10 {
                    if let Decision::Allowed { .. } = check(&limiter, &key, r).await {
                        allowed += 1;
                    }
                }
                allowed
            })
        })
        .collect();
    let mut allowed = 0;
    for task in tasks {
        allowed += task.await.unwrap();
    }
    assert_eq!(allowed, 10);
}

async fn replicas_share_one_bucket(l: Limiters) {
    let key = l.key("shared");
    let r = rate("5/h");
    for left in [4, 3, 2] {
        assert_eq!(
            check(&l.a, &key, r).await,
            Decision::Allowed { remaining: left }
        );
    }
    for left in [1, 0] {
        assert_eq!(
            check(&l.b, &key, r).await,
            Decision::Allowed { remaining: left }
        );
    }
    retry_after(check(&l.a, &key, r).await);
    retry_after(check(&l.b, &key, r).await);
}

macro_rules! suite {
    ($($case:ident),* $(,)?) => {
        mod memory {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
                async fn $case() {
                    super::$case(super::memory_limiters()).await;
                }
            )*

            #[test]
            fn kind() {
                assert_eq!(agora_ratelimit::RateLimiter::kind(&agora_ratelimit::MemoryRateLimiter::default()), "memory");
            }
        }
        mod redis {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
                async fn $case() {
                    if let Some(limiters) = super::redis_limiters().await {
                        super::$case(limiters).await;
                    }
                }
            )*
        }
    };
}

suite!(
    fresh_key_allows_the_burst_then_limits,
    keys_are_independent,
    refills_after_retry_after,
    concurrent_checks_take_exactly_the_burst,
    replicas_share_one_bucket,
);

#[tokio::test]
async fn redis_bucket_layout_and_expiry() {
    let Some(l) = redis_limiters().await else {
        return;
    };
    assert_eq!(l.a.kind(), "redis");
    let client = ::redis::Client::open(redis_url()).unwrap();
    let mut c = ::redis::aio::ConnectionManager::new(client).await.unwrap();

    let key = l.key("layout");
    check(&l.a, &key, rate("1/s").with_burst(3)).await;
    let stored = format!("{KEY_PREFIX}{key}");
    assert!(stored.starts_with("agora-ratelimit:test-"));
    let (tokens, ts): (String, u64) = ::redis::cmd("HMGET")
        .arg(&stored)
        .arg("tokens")
        .arg("ts")
        .query_async(&mut c)
        .await
        .unwrap();
    assert_eq!(tokens, "2000000", "micro-tokens");
    let (seconds, micros): (u64, u64) = ::redis::cmd("TIME").query_async(&mut c).await.unwrap();
    let now = seconds * 1_000_000 + micros;
    assert!(ts <= now && now - ts < 60_000_000, "ts {ts} now {now}");
    // One token short: full again in 1 s, expiring 1 s after.
    let pttl: i64 = ::redis::cmd("PTTL")
        .arg(&stored)
        .query_async(&mut c)
        .await
        .unwrap();
    assert!(1000 < pttl && pttl <= 2000, "{pttl}");

    let slow = l.key("slow");
    check(&l.a, &slow, rate("1/h").with_burst(2)).await;
    let pttl: i64 = ::redis::cmd("PTTL")
        .arg(format!("{KEY_PREFIX}{slow}"))
        .query_async(&mut c)
        .await
        .unwrap();
    assert!(3_600_000 < pttl && pttl <= 3_601_000, "{pttl}");
}

#[tokio::test]
async fn redis_down_is_unavailable() {
    // Nothing listens on port 1: every check fails as unavailable (the limiter's own 1 s
    // bound, not this test's guard against a hang, is what ends it).
    let limiter = RedisRateLimiter::new("redis://127.0.0.1:1").unwrap();
    for _ in 0..2 {
        let result =
            tokio::time::timeout(Duration::from_secs(30), limiter.check("any", rate("10/s")))
                .await
                .expect("an unreachable Redis must not hang the limiter");
        assert!(
            matches!(&result, Err(LimitError::Unavailable(m)) if m.contains("redis")),
            "{result:?}"
        );
    }
    assert!(RedisRateLimiter::new("not a url").is_err());
    assert_eq!(
        LimitError::Unavailable("x".into()).to_string(),
        "rate limiter unavailable: x"
    );
}
