//! `agora:platform/cache` — the host side of the cache capability.
//!
//! A component that imports the interface gets a [`CacheCtx`] in its store: the shared backend
//! (Redis or in-memory) and the key prefix of its own namespace. Every key a guest names is
//! prefixed with `agora:<component>:` before it reaches the backend, so no component can read
//! or write another's keys. A component the manifest grants no cache gets `denied` from every
//! call (and, before that, a load error from the host if it imports the interface at all).
//!
//! ```no_run
//! use std::sync::Arc;
//! use agora_cache::{CacheCtx, MemoryCache};
//! # struct State { cache: CacheCtx }
//! # fn link(linker: &mut wasmtime::component::Linker<State>) -> wasmtime::Result<()> {
//! agora_cache::add_to_linker(linker, |state: &mut State| &mut state.cache)?;
//! let ctx = CacheCtx::granted(Arc::new(MemoryCache::default()), "catalog");
//! # Ok(()) }
//! ```

#![deny(missing_docs)]

mod backend;
mod memory;
mod redis;

pub use backend::{BackendError, CacheBackend, Quota};
pub use memory::MemoryCache;
pub use redis::RedisCache;

use std::sync::Arc;
use std::time::{Duration, Instant};
use tracing::Instrument as _;
use wasmtime::component::{HasSelf, Linker};

/// Generated bindings of the `agora:platform/cache` interface.
#[allow(missing_docs)]
pub mod bindings {
    wasmtime::component::bindgen!({
        path: "../../wit",
        world: "agora:platform/cache-user",
        imports: { default: async | trappable | tracing },
        additional_derives: [PartialEq, Eq],
    });
}

use bindings::agora::platform::cache::{Error, Host};

/// The WIT name of the interface, as it appears in a component's imports.
pub const INTERFACE: &str = "agora:platform/cache";

/// Longest key a guest may use, in bytes.
pub const MAX_KEY_BYTES: usize = 512;
/// Default largest value a component may store, in bytes.
pub const MAX_VALUE_BYTES: usize = 1 << 20;
/// Default number of live keys a component may hold.
pub const MAX_KEYS: u64 = 10_000;

/// What one component may hold in the cache: with [`MAX_KEY_BYTES`], at most
/// `max_keys × (max_value_bytes + MAX_KEY_BYTES)` bytes, so no component can flood the store.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CacheLimits {
    /// Live keys at once; a new key past it answers `invalid` naming the quota.
    pub max_keys: u64,
    /// Largest value, in bytes.
    pub max_value_bytes: usize,
}

impl Default for CacheLimits {
    fn default() -> Self {
        CacheLimits {
            max_keys: MAX_KEYS,
            max_value_bytes: MAX_VALUE_BYTES,
        }
    }
}

/// The cache state of one store. The default denies every call.
#[derive(Clone)]
pub struct CacheCtx {
    /// The backend and the key prefix; cloned into every store, so both are shared.
    grant: Option<(Arc<dyn CacheBackend>, Arc<str>)>,
    limits: CacheLimits,
    /// Hits and misses of `get`, shared by every store of the component.
    stats: Arc<CacheStats>,
    /// Where each call's time and outcome go.
    meter: agora_capability::Meter,
}

/// How a component's `get` calls went, counted by the host.
#[derive(Debug, Default)]
pub struct CacheStats {
    hits: std::sync::atomic::AtomicU64,
    misses: std::sync::atomic::AtomicU64,
}

impl CacheStats {
    /// `get` calls that found a value.
    pub fn hits(&self) -> u64 {
        self.hits.load(std::sync::atomic::Ordering::Relaxed)
    }

    /// `get` calls that found nothing (errors are neither hits nor misses).
    pub fn misses(&self) -> u64 {
        self.misses.load(std::sync::atomic::Ordering::Relaxed)
    }
}

impl CacheCtx {
    /// A component with a cache grant: `backend`, namespaced under `component`, with the
    /// default [`CacheLimits`].
    pub fn granted(backend: Arc<dyn CacheBackend>, component: &str) -> CacheCtx {
        CacheCtx::granted_with(backend, component, CacheLimits::default())
    }

    /// A component with a cache grant held to `limits`.
    pub fn granted_with(
        backend: Arc<dyn CacheBackend>,
        component: &str,
        limits: CacheLimits,
    ) -> CacheCtx {
        CacheCtx {
            grant: Some((backend, Arc::from(format!("agora:{component}:")))),
            limits,
            stats: Arc::default(),
            meter: agora_capability::Meter::default(),
        }
    }

    /// The same, reporting each call to `meter`.
    pub fn metered(mut self, meter: agora_capability::Meter) -> CacheCtx {
        self.meter = meter;
        self
    }

    /// A component without a cache grant: every call answers `denied`.
    pub fn denied() -> CacheCtx {
        CacheCtx {
            grant: None,
            limits: CacheLimits::default(),
            stats: Arc::default(),
            meter: agora_capability::Meter::default(),
        }
    }

    fn quota(&self) -> Quota<'_> {
        Quota {
            namespace: self.grant.as_ref().map_or("", |(_, prefix)| prefix),
            max_keys: self.limits.max_keys,
        }
    }

    /// The hit and miss counts of this component's `get` calls.
    pub fn stats(&self) -> &CacheStats {
        &self.stats
    }

    fn namespaced(&self, key: &str) -> Result<(&dyn CacheBackend, String), Error> {
        let Some((backend, prefix)) = &self.grant else {
            return Err(Error::Denied);
        };
        if key.is_empty() {
            return Err(Error::Invalid("the key is empty".into()));
        }
        if key.len() > MAX_KEY_BYTES {
            return Err(Error::Invalid(format!(
                "the key is {} bytes, over the {MAX_KEY_BYTES}-byte limit",
                key.len()
            )));
        }
        Ok((backend.as_ref(), format!("{prefix}{key}")))
    }
}

fn to_guest(err: BackendError) -> Error {
    match err {
        BackendError::Unavailable(message) => {
            tracing::warn!(%message, "cache unavailable");
            Error::Unavailable(message)
        }
        BackendError::NotANumber => Error::NotANumber,
        BackendError::QuotaExceeded(max_keys) => Error::Invalid(format!(
            "quota exceeded: the component already holds {max_keys} keys, its limit \
             (delete some, or let them expire)"
        )),
    }
}

impl CacheCtx {
    /// The span of one cache call (OpenTelemetry's database client conventions).
    fn span(&self, operation: &'static str) -> tracing::Span {
        tracing::debug_span!(
            target: agora_capability::SPAN_TARGET,
            "cache",
            "otel.name" = %format_args!("cache {operation}"),
            "otel.kind" = "client",
            "db.system.name" = self.grant.as_ref().map_or("none", |(backend, _)| backend.kind()),
            "db.operation.name" = operation,
        )
    }

    /// Reports a call that started at `started` to the meter, and hands its result on.
    fn report<T>(
        &self,
        started: Instant,
        result: Result<T, Error>,
    ) -> wasmtime::Result<Result<T, Error>> {
        self.meter.record(result.is_ok(), started);
        Ok(result)
    }
}

impl CacheCtx {
    /// `get` as a guest's call makes it — in the component's namespace, under the same key
    /// checks, with its span, its meter and its hit and miss counts — for the host reading a
    /// value on the component's behalf (a first look's cached answer, `wit/first-look.wit`).
    pub async fn lookup(&self, key: &str) -> Result<Option<Vec<u8>>, Error> {
        let started = Instant::now();
        let span = self.span("get");
        let result = self.get_unmetered(key).instrument(span).await;
        self.meter.record(result.is_ok(), started);
        result
    }
}

impl Host for CacheCtx {
    async fn get(&mut self, key: String) -> wasmtime::Result<Result<Option<Vec<u8>>, Error>> {
        Ok(self.lookup(&key).await)
    }

    async fn set(
        &mut self,
        key: String,
        value: Vec<u8>,
        ttl_ms: Option<u64>,
    ) -> wasmtime::Result<Result<(), Error>> {
        let started = Instant::now();
        let span = self.span("set");
        let result = self
            .set_unmetered(key, value, ttl_ms)
            .instrument(span)
            .await;
        self.report(started, result)
    }

    async fn delete(&mut self, key: String) -> wasmtime::Result<Result<bool, Error>> {
        let started = Instant::now();
        let result = match self.namespaced(&key) {
            Ok((backend, key)) => {
                let namespace = self.quota().namespace;
                backend
                    .delete(&key, namespace)
                    .instrument(self.span("delete"))
                    .await
                    .map_err(to_guest)
            }
            Err(err) => Err(err),
        };
        self.report(started, result)
    }

    async fn incr(&mut self, key: String, delta: i64) -> wasmtime::Result<Result<i64, Error>> {
        let started = Instant::now();
        let result = match self.namespaced(&key) {
            Ok((backend, key)) => backend
                .incr(&key, delta, self.quota())
                .instrument(self.span("incr"))
                .await
                .map_err(to_guest),
            Err(err) => Err(err),
        };
        self.report(started, result)
    }
}

impl CacheCtx {
    async fn get_unmetered(&self, key: &str) -> Result<Option<Vec<u8>>, Error> {
        let (backend, key) = self.namespaced(key)?;
        let result = backend.get(&key).await.map_err(to_guest);
        let counter = match &result {
            Ok(Some(_)) => &self.stats.hits,
            Ok(None) => &self.stats.misses,
            Err(_) => return result,
        };
        counter.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        result
    }

    async fn set_unmetered(
        &mut self,
        key: String,
        value: Vec<u8>,
        ttl_ms: Option<u64>,
    ) -> Result<(), Error> {
        let (backend, key) = self.namespaced(&key)?;
        let max_value = self.limits.max_value_bytes;
        if value.len() > max_value {
            return Err(Error::Invalid(format!(
                "the value is {} bytes, over the {max_value}-byte limit",
                value.len()
            )));
        }
        if ttl_ms == Some(0) {
            return Err(Error::Invalid(
                "ttl-ms must be greater than 0 (omit it for no expiry)".into(),
            ));
        }
        let ttl = ttl_ms.map(Duration::from_millis);
        let quota = self.quota();
        backend
            .set(&key, &value, ttl, quota)
            .await
            .map_err(to_guest)
    }
}

impl Default for CacheCtx {
    /// Denied: a store of a component without the grant.
    fn default() -> Self {
        CacheCtx::denied()
    }
}

/// The capability unit: `grants = { cache = true }` gives a component its namespace of the
/// host's cache backend, held to its `limits.cache_keys` and `limits.cache_value_kib`.
pub struct Cache {
    backend: Arc<dyn CacheBackend>,
}

impl Cache {
    /// The cache capability on `backend` (Redis or in-memory).
    pub fn new(backend: Arc<dyn CacheBackend>) -> Cache {
        Cache { backend }
    }
}

impl agora_capability::Prepared for CacheCtx {
    fn instance(&self, _store: &agora_capability::StoreInfo) -> Box<dyn std::any::Any + Send> {
        Box::new(self.clone())
    }

    // The state is the part itself, which no call changes (the counts are shared atomics): a
    // reused instance keeps it.
    fn renew(&self, _: &mut Box<dyn std::any::Any + Send>, _: &agora_capability::StoreInfo) {}

    /// The hits and misses of the component's `get` calls (shared by all its stores).
    fn describe(&self) -> serde_json::Value {
        serde_json::json!({ "hits": self.stats.hits(), "misses": self.stats.misses() })
    }

    /// `agora_cache_hits_total` and `agora_cache_misses_total`.
    fn counters(&self) -> Vec<agora_capability::UnitCounter> {
        vec![
            agora_capability::UnitCounter {
                name: "hits",
                help: "Cache gets that found a value.",
                value: self.stats.hits(),
            },
            agora_capability::UnitCounter {
                name: "misses",
                help: "Cache gets that found nothing (errors are neither hits nor misses).",
                value: self.stats.misses(),
            },
        ]
    }
}

#[async_trait::async_trait]
impl<S: agora_capability::StoreData> agora_capability::Capability<S> for Cache {
    fn name(&self) -> &'static str {
        "cache"
    }

    fn interfaces(&self) -> &'static [&'static str] {
        &[INTERFACE]
    }

    fn grant_hint(&self) -> &'static str {
        "cache = true"
    }

    fn check_grant(&self, value: &toml::Value) -> Result<bool, String> {
        agora_capability::check_bool_grant("cache", value)
    }

    fn link(&self, linker: &mut Linker<S>) -> wasmtime::Result<()> {
        fn ctx<S: agora_capability::StoreData>(state: &mut S) -> &mut CacheCtx {
            state.slots().get_mut::<CacheCtx>()
        }
        add_to_linker(linker, ctx::<S>)
    }

    async fn prepare(
        &self,
        component: &agora_capability::ComponentInfo<'_>,
    ) -> Result<Arc<dyn agora_capability::Prepared>, String> {
        Ok(Arc::new(
            CacheCtx::granted_with(
                self.backend.clone(),
                component.name,
                CacheLimits {
                    max_keys: component.cache_keys,
                    max_value_bytes: usize::try_from(component.cache_value_bytes)
                        .unwrap_or(usize::MAX),
                },
            )
            .metered(component.meter.clone()),
        ))
    }

    fn describe(&self) -> serde_json::Value {
        serde_json::json!({ "backend": self.backend.kind() })
    }
}

/// Adds `agora:platform/cache` to `linker`; `get` finds the [`CacheCtx`] in a store's data.
pub fn add_to_linker<T: Send + 'static>(
    linker: &mut Linker<T>,
    get: fn(&mut T) -> &mut CacheCtx,
) -> wasmtime::Result<()> {
    bindings::agora::platform::cache::add_to_linker::<T, HasSelf<CacheCtx>>(linker, get)
}
