//! Products read through the cache: the key of a product, how long it stays, and dropping
//! it after every change (the `x-cache` header says whether an answer came from the cache).
//!
//! The cached value is the answer's JSON body itself, written on a miss and served as it is on
//! a hit: a hit decodes and encodes nothing. Only this component writes its keys (the cache
//! is namespaced per component); a version that changes a product's JSON shape must change
//! [`key`]'s prefix, so that it never serves the old shape.

use agora_sdk::http::{Body, Response};
use agora_sdk::{cache, config, log};
use std::sync::OnceLock;
use std::time::Duration;

/// Cache TTL when `cache_ttl_s` is not configured.
const DEFAULT_CACHE_TTL_S: u64 = 60;

/// The cache key of product `id` (a UUID: one key whatever the case of its digits).
pub fn key(id: &str) -> String {
    const PREFIX: &str = "product:";
    let mut key = String::with_capacity(PREFIX.len() + id.len());
    key.push_str(PREFIX);
    key.push_str(id);
    key[PREFIX.len()..].make_ascii_lowercase();
    key
}

/// How long a product stays cached; `None` when `cache_ttl_s` is 0 (no caching).
///
/// Read once per instance: a component's configuration cannot change under an instance (a new
/// version or a restart brings new instances), and a reused instance would otherwise ask the
/// host for it on every read.
pub fn ttl() -> Option<Duration> {
    static TTL: OnceLock<Option<Duration>> = OnceLock::new();
    *TTL.get_or_init(|| {
        let seconds = config::get_or("cache_ttl_s", DEFAULT_CACHE_TTL_S).unwrap_or_else(|err| {
            log::warn("config", &format!("{err}; using {DEFAULT_CACHE_TTL_S}"));
            DEFAULT_CACHE_TTL_S
        });
        (seconds > 0).then(|| Duration::from_secs(seconds))
    })
}

/// Drops the cached copies of products that changed (after the commit). A failure is logged:
/// the entry then expires with its TTL.
pub fn invalidate(ids: &[&str]) {
    for id in ids {
        let key = key(id);
        if let Err(err) = cache::delete(&key) {
            log::error("cache", &format!("cannot drop {key}: {err}"));
        }
    }
}

/// Marks `response` as served from the cache (`hit`) or not (`miss`).
pub fn x_cache(mut response: Response<Body>, value: &'static str) -> Response<Body> {
    response
        .headers_mut()
        .insert("x-cache", wstd::http::HeaderValue::from_static(value));
    response
}

/// The cached answer body of product `id`, if any; a cache that fails is logged and counts
/// as a miss. Not read again when the host's first look has just missed it.
pub fn read(id: &str) -> Option<Vec<u8>> {
    let key = key(id);
    if agora_sdk::serve::missed(&key) {
        return None;
    }
    read_key(&key)
}

/// The cached answer body under `key` (a product's [`key`]), if any; a cache that fails is
/// logged and counts as a miss.
pub fn read_key(key: &str) -> Option<Vec<u8>> {
    match cache::get(key) {
        Ok(body) => body,
        Err(err) => {
            log::warn("cache", &format!("reading {key}: {err}"));
            None
        }
    }
}

/// Caches the answer `body` of product `id` for `ttl`; a failure is logged (the next read
/// misses).
pub fn write(id: &str, body: &[u8], ttl: Duration) {
    let key = key(id);
    if let Err(err) = cache::set(&key, body, Some(ttl)) {
        log::warn("cache", &format!("writing {key}: {err}"));
    }
}
