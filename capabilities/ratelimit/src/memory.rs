//! The embedded backend: buckets in this process. Not shared with other replicas: use Redis
//! when more than one host runs.

use crate::{Decision, LimitError, Rate, RateLimiter, TOKEN};
use std::collections::HashMap;
use std::sync::{Mutex, MutexGuard, PoisonError};
use std::time::Duration;
use tokio::time::Instant;

/// The most buckets a [`MemoryRateLimiter`] holds.
pub const MAX_KEYS: usize = 100_000;

/// After a sweep that freed nothing, how long new keys go untracked before the next sweep
/// (a sweep walks every bucket under the lock).
const SWEEP_BACKOFF: Duration = Duration::from_secs(1);

struct Bucket {
    /// Micro-tokens, at most the rate's capacity.
    tokens: u64,
    last: Instant,
    /// The rate of the last check, which tells when the bucket is full again.
    rate: Rate,
}

#[derive(Default)]
struct State {
    buckets: HashMap<String, Bucket>,
    /// While full: no sweep before this.
    next_sweep: Option<Instant>,
    /// Warned that new keys go untracked, since the last time there was room.
    warned: bool,
}

/// The in-memory rate limiter.
///
/// Holds at most [`MAX_KEYS`] buckets. When full, a new key first drops every bucket that has
/// refilled completely (such a bucket is the same as none); if all are still refilling, the
/// request is allowed without a bucket, and a warning is logged once until there is room again.
pub struct MemoryRateLimiter {
    state: Mutex<State>,
    max_keys: usize,
}

impl Default for MemoryRateLimiter {
    fn default() -> MemoryRateLimiter {
        MemoryRateLimiter {
            state: Mutex::default(),
            max_keys: MAX_KEYS,
        }
    }
}

impl MemoryRateLimiter {
    fn lock(&self) -> MutexGuard<'_, State> {
        // Every update is written whole after its arithmetic: a poisoned lock is consistent.
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

fn capacity(rate: Rate) -> u64 {
    u64::from(rate.burst) * TOKEN
}

/// `tokens` micro-tokens at `last`, refilled at `rate` until `now` (capped at its capacity).
fn refilled(tokens: u64, last: Instant, rate: Rate, now: Instant) -> u64 {
    let elapsed = now.saturating_duration_since(last).as_nanos();
    let per_period = u128::from(rate.limit) * u128::from(TOKEN);
    let added = elapsed
        .checked_mul(per_period)
        .map_or(u128::MAX, |x| x / rate.period.as_nanos());
    let tokens = u128::from(tokens).saturating_add(added);
    u64::try_from(tokens).map_or(capacity(rate), |t| t.min(capacity(rate)))
}

/// [`refilled`], with the time the bucket is now accounted up to: `now` when it is full,
/// otherwise `last` advanced by exactly the time the added micro-tokens took — so a slow rate
/// under frequent checks still refills (no fraction is thrown away on each call).
fn refill(tokens: u64, last: Instant, rate: Rate, now: Instant) -> (u64, Instant) {
    let cap = capacity(rate);
    let tokens = tokens.min(cap);
    let after = refilled(tokens, last, rate, now);
    if after >= cap {
        return (cap, now);
    }
    let added = u128::from(after - tokens);
    let per_period = u128::from(rate.limit) * u128::from(TOKEN);
    let nanos = added * rate.period.as_nanos() / per_period;
    let advanced = last + Duration::from_nanos(u64::try_from(nanos).unwrap_or(u64::MAX));
    (after, advanced.min(now))
}

/// The time until `tokens` (< one token) reach one token at `rate`, rounded up to the ms.
fn retry_after(tokens: u64, rate: Rate) -> Duration {
    let missing = u128::from(TOKEN.saturating_sub(tokens));
    let per_period = u128::from(rate.limit) * u128::from(TOKEN);
    let nanos = (missing * rate.period.as_nanos()).div_ceil(per_period);
    let millis = nanos.div_ceil(1_000_000).max(1);
    Duration::from_millis(u64::try_from(millis).unwrap_or(u64::MAX))
}

impl State {
    /// Makes room for one more bucket if it can; false when every bucket is still refilling.
    fn make_room(&mut self, now: Instant, max_keys: usize) -> bool {
        if self.next_sweep.is_some_and(|next| now < next) {
            return false;
        }
        self.buckets
            .retain(|_, b| refilled(b.tokens, b.last, b.rate, now) < capacity(b.rate));
        if self.buckets.len() < max_keys {
            self.next_sweep = None;
            self.warned = false;
            true
        } else {
            self.next_sweep = Some(now + SWEEP_BACKOFF);
            false
        }
    }
}

#[async_trait::async_trait]
impl RateLimiter for MemoryRateLimiter {
    async fn check(&self, key: &str, rate: Rate) -> Result<Decision, LimitError> {
        let rate = rate.normalized();
        let now = Instant::now();
        let mut state = self.lock();
        let bucket = match state.buckets.get_mut(key) {
            Some(bucket) => {
                (bucket.tokens, bucket.last) = refill(bucket.tokens, bucket.last, rate, now);
                bucket.rate = rate;
                bucket
            }
            None => {
                if state.buckets.len() >= self.max_keys && !state.make_room(now, self.max_keys) {
                    let warn = !state.warned;
                    state.warned = true;
                    drop(state);
                    if warn {
                        tracing::warn!(
                            max_keys = self.max_keys,
                            "memory rate limiter full: requests on new keys are allowed untracked"
                        );
                    }
                    return Ok(Decision::Allowed {
                        remaining: rate.burst - 1,
                    });
                }
                state.buckets.entry(key.to_owned()).or_insert(Bucket {
                    tokens: capacity(rate),
                    last: now,
                    rate,
                })
            }
        };
        Ok(match bucket.tokens.checked_sub(TOKEN) {
            Some(left) => {
                bucket.tokens = left;
                Decision::Allowed {
                    remaining: u32::try_from(left / TOKEN).unwrap_or(u32::MAX),
                }
            }
            None => Decision::Limited {
                retry_after: retry_after(bucket.tokens, rate),
            },
        })
    }

    fn kind(&self) -> &'static str {
        "memory"
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    fn limiter(max_keys: usize) -> MemoryRateLimiter {
        MemoryRateLimiter {
            state: Mutex::default(),
            max_keys,
        }
    }

    fn rate(text: &str) -> Rate {
        text.parse().unwrap()
    }

    async fn check(limiter: &MemoryRateLimiter, key: &str, rate: Rate) -> Decision {
        limiter.check(key, rate).await.unwrap()
    }

    fn limited(ms: u64) -> Decision {
        Decision::Limited {
            retry_after: Duration::from_millis(ms),
        }
    }

    async fn advance(ms: u64) {
        tokio::time::advance(Duration::from_millis(ms)).await;
    }

    #[tokio::test(start_paused = true)]
    async fn a_slow_rate_refills_under_frequent_checks() {
        let limiter = MemoryRateLimiter::default();
        let rate: Rate = "1/h".parse().expect("rate");
        assert!(matches!(
            limiter.check("k", rate).await,
            Ok(Decision::Allowed { .. })
        ));
        // A check every 50 ms for an hour and a bit: each earns 13.9 micro-tokens, whose
        // fractions must add up: the hour's token arrives, and only one.
        let mut allowed = 0;
        for _ in 0..3_700_000 / 50 {
            tokio::time::advance(Duration::from_millis(50)).await;
            if matches!(limiter.check("k", rate).await, Ok(Decision::Allowed { .. })) {
                allowed += 1;
            }
        }
        assert_eq!(allowed, 1);
    }

    #[tokio::test(start_paused = true)]
    async fn refills_continuously_and_retry_after_is_exact() {
        let l = MemoryRateLimiter::default();
        let r = rate("20/s").with_burst(2);
        assert_eq!(check(&l, "k", r).await, Decision::Allowed { remaining: 1 });
        assert_eq!(check(&l, "k", r).await, Decision::Allowed { remaining: 0 });
        assert_eq!(check(&l, "k", r).await, limited(50));
        advance(30).await;
        assert_eq!(check(&l, "k", r).await, limited(20));
        advance(19).await;
        assert_eq!(check(&l, "k", r).await, limited(1));
        advance(1).await;
        assert_eq!(check(&l, "k", r).await, Decision::Allowed { remaining: 0 });
        // Never beyond the burst.
        advance(10_000).await;
        assert_eq!(check(&l, "k", r).await, Decision::Allowed { remaining: 1 });
    }

    #[tokio::test(start_paused = true)]
    async fn retry_after_rounds_up() {
        let l = MemoryRateLimiter::default();
        let r = rate("3/s").with_burst(1);
        assert_eq!(check(&l, "k", r).await, Decision::Allowed { remaining: 0 });
        // One token per 333.33… ms.
        assert_eq!(check(&l, "k", r).await, limited(334));
        advance(333).await;
        assert_eq!(check(&l, "k", r).await, limited(1));
        advance(1).await;
        assert_eq!(check(&l, "k", r).await, Decision::Allowed { remaining: 0 });
        // A bucket short of a token by less than a millisecond's worth still says 1 ms.
        let fast = rate("1000000/s").with_burst(1);
        assert_eq!(
            check(&l, "f", fast).await,
            Decision::Allowed { remaining: 0 }
        );
        assert_eq!(check(&l, "f", fast).await, limited(1));
    }

    #[tokio::test(start_paused = true)]
    async fn another_rate_keeps_the_tokens_up_to_its_burst() {
        let l = MemoryRateLimiter::default();
        let slow = rate("10/h");
        for left in (5..10).rev() {
            assert_eq!(
                check(&l, "k", slow).await,
                Decision::Allowed { remaining: left }
            );
        }
        // 5 tokens left; a burst of 3 caps them at 3.
        let small = slow.with_burst(3);
        assert_eq!(
            check(&l, "k", small).await,
            Decision::Allowed { remaining: 2 }
        );
    }

    #[tokio::test(start_paused = true)]
    async fn hand_built_rates_are_usable() {
        let l = MemoryRateLimiter::default();
        let zero = Rate {
            limit: 0,
            period: Duration::ZERO,
            burst: 0,
        };
        assert_eq!(
            check(&l, "z", zero).await,
            Decision::Allowed { remaining: 0 }
        );
        assert_eq!(check(&l, "z", zero).await, limited(1));
        let long = Rate {
            limit: 1,
            period: Duration::MAX,
            burst: u32::MAX,
        };
        assert_eq!(
            check(&l, "l", long).await,
            Decision::Allowed {
                remaining: u32::MAX - 1
            }
        );
        let huge = Rate {
            limit: u32::MAX,
            period: Duration::from_nanos(1),
            burst: u32::MAX,
        };
        assert_eq!(
            check(&l, "h", huge).await,
            Decision::Allowed {
                remaining: u32::MAX - 1
            }
        );
        advance(1).await;
        assert_eq!(
            check(&l, "h", huge).await,
            Decision::Allowed {
                remaining: u32::MAX - 1
            }
        );
    }

    #[tokio::test(start_paused = true)]
    async fn full_drops_refilled_buckets_else_allows_untracked() {
        let l = limiter(3);
        let (fast, slow) = (rate("1/s"), rate("1/min"));
        assert_eq!(
            check(&l, "a", slow).await,
            Decision::Allowed { remaining: 0 }
        );
        for key in ["b", "c"] {
            assert_eq!(
                check(&l, key, fast).await,
                Decision::Allowed { remaining: 0 }
            );
        }
        // Full, every bucket refilling: a new key is allowed, untracked, again and again.
        for _ in 0..3 {
            assert_eq!(
                check(&l, "d", fast).await,
                Decision::Allowed { remaining: 0 }
            );
        }
        assert!(l.lock().warned);
        assert_eq!(l.lock().buckets.len(), 3);
        // Known keys are still limited.
        assert_eq!(check(&l, "a", slow).await, limited(60_000));
        assert_eq!(check(&l, "b", fast).await, limited(1000));

        // "b" and "c" refill completely in 1 s, "a" in a minute.
        advance(1000).await;
        assert_eq!(
            check(&l, "d", fast).await,
            Decision::Allowed { remaining: 0 }
        );
        {
            let state = l.lock();
            let mut keys: Vec<_> = state.buckets.keys().cloned().collect();
            keys.sort();
            assert_eq!(keys, ["a", "d"]);
            assert!(!state.warned);
        }
        assert_eq!(check(&l, "d", fast).await, limited(1000));
    }

    #[tokio::test(start_paused = true)]
    async fn at_most_max_keys_buckets() {
        let l = MemoryRateLimiter::default();
        let r = rate("1/h");
        for i in 0..=MAX_KEYS {
            let decision = check(&l, &i.to_string(), r).await;
            assert_eq!(decision, Decision::Allowed { remaining: 0 });
        }
        assert_eq!(l.lock().buckets.len(), MAX_KEYS);
        assert!(l.lock().warned);
    }
}
