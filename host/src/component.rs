//! Loading one component: read its bytes, compile (or load from the cache), link it against the
//! host's imports and check that it exports what a route needs.
//!
//! Every step that can fail does so here, at load, with a message naming the component, its file
//! and the reason — never on a request.

use crate::calls::InternalCalls;
use crate::capabilities::{Unit, Units};
use crate::compile_cache::{CompileCache, Origin, sha256_hex};
pub use crate::granted::Granted;
use crate::manifest::{ComponentSpec, Limits, one_line};
use crate::policy::Policy;
use crate::state::InstanceState;
use crate::triggers::first_look::HttpPre;
use agora_cache::CacheBackend;
use agora_messaging::MessagingBackend;
use agora_messaging::bindings::subscriber::SubscriberPre;
use agora_sql::SqlBackend;
use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::Arc;
use tokio::sync::Semaphore;
use wasmtime::Engine;
use wasmtime::component::{Component, Linker};

/// A component ready to serve: pre-linked, with its limits and its concurrency gate.
pub struct LoadedComponent {
    /// The manifest name.
    pub name: Arc<str>,
    /// SHA-256 of the component bytes, lowercase hex.
    pub digest: String,
    /// Whether the machine code was compiled now or came from the cache.
    pub origin: Origin,
    /// How this version came to run.
    pub installed: Installed,
    /// Per-instance limits.
    pub limits: Limits,
    /// The engine it was compiled for.
    pub engine: Engine,
    /// Pre-linked for requests, when it exports wasi:http/incoming-handler (and its first
    /// look, when it exports agora:platform/first-look).
    pub proxy: Option<HttpPre>,
    /// Pre-linked for messages, when it exports agora:platform/handler.
    pub subscriber: Option<SubscriberPre<InstanceState>>,
    /// One permit per instance allowed to run at once (requests and events together).
    pub permits: Arc<Semaphore>,
    /// This version's idle instances, when the component reuses them.
    pub instances: Arc<crate::instances::Instances>,
    /// What its instances may use, per its grants.
    pub capabilities: Granted,
    /// Its route policies, in manifest order.
    pub policies: Arc<[Policy]>,
    /// Its manifest entry (routes, grants), as loaded.
    pub spec: Arc<ComponentSpec>,
    /// When it was loaded.
    pub loaded_at: std::time::SystemTime,
    /// Its metric series used on every request (resolved once).
    pub series: Arc<crate::metrics::ComponentSeries>,
}

/// The capabilities a host offers, shared by every component it loads.
#[derive(Clone)]
pub struct Capabilities {
    /// The cache backend (Redis or in-memory).
    pub cache: Arc<dyn CacheBackend>,
    /// The sql backend (PostgreSQL or SQLite); the sql unit opens the components' databases
    /// on it.
    pub sql: Arc<dyn SqlBackend>,
    /// The message broker (NATS JetStream or the in-process bus): the publish unit publishes
    /// to it, the event trigger subscribes on it.
    pub messaging: Arc<dyn MessagingBackend>,
    /// The HTTP trigger, for in-process calls between components.
    pub internal: InternalCalls,
    /// The capability units ([`crate::capabilities::units`]).
    pub units: Units,
}

/// Why a component could not be loaded. The message is one line naming component and file.
#[derive(Debug, thiserror::Error)]
#[error("component `{component}` ({}): {reason}", file.display())]
pub struct LoadError {
    /// The component's name.
    pub component: String,
    /// Its file.
    pub file: PathBuf,
    /// What went wrong.
    pub reason: String,
}

/// The linker every component is linked with: WASI 0.2 (including wasi:cli, which Rust guests
/// import) and wasi:http — what `wasmtime serve -Scli` provides — and every unit's
/// interfaces.
pub fn host_linker(engine: &Engine, units: &[Unit]) -> anyhow::Result<Linker<InstanceState>> {
    let mut linker = Linker::<InstanceState>::new(engine);
    wasmtime_wasi::p2::add_to_linker_async(&mut linker)?;
    wasmtime_wasi_http::p2::add_only_http_to_linker_async(&mut linker)?;
    for unit in units {
        unit.link(&mut linker)?;
    }
    Ok(linker)
}

/// How a version of a component came to run.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Installed {
    /// Loaded from the manifest's file when the host started.
    Manifest,
    /// Uploaded through the admin API.
    Admin,
    /// Swapped in by `agora serve --watch` after its file changed.
    Watch,
    /// The fleet's desired version (`agora deploy`).
    Fleet,
}

impl Installed {
    /// Its name in the admin API and in logs.
    pub fn as_str(self) -> &'static str {
        match self {
            Installed::Manifest => "manifest",
            Installed::Admin => "admin",
            Installed::Watch => "watch",
            Installed::Fleet => "fleet",
        }
    }
}

/// Compiled, linked and export-checked code: what a hot swap replaces.
pub struct Code {
    /// SHA-256 of the bytes, lowercase hex.
    pub digest: String,
    /// Compiled now or read from the cache.
    pub origin: Origin,
    /// Pre-linked for requests.
    pub proxy: Option<HttpPre>,
    /// Pre-linked for messages.
    pub subscriber: Option<SubscriberPre<InstanceState>>,
}

/// Checks that `bytes` start like a WebAssembly component (not empty, not a core module).
pub fn check_header(bytes: &[u8]) -> Result<(), String> {
    if bytes.is_empty() {
        return Err("empty file: no WebAssembly bytes".into());
    }
    if !bytes.starts_with(b"\0asm") {
        return Err("not a WebAssembly file".into());
    }
    // A core module has version 1; a component has layer 1 in bytes 6..8.
    if bytes.get(6..8) != Some(&[1, 0]) {
        return Err("a core WebAssembly module, not a component (build for wasm32-wasip2)".into());
    }
    Ok(())
}

/// Checks `bytes` (whose SHA-256 is `digest`) as the code of the component `spec` describes: a
/// component (not a core module), compiled (or read from the cache), importing only what its
/// grants allow, linked, and exporting what its routes and subscriptions need. CPU-bound
/// (compiling): run it off the async threads.
pub fn prepare(
    spec: &ComponentSpec,
    bytes: &[u8],
    digest: String,
    engine: &Engine,
    linker: &Linker<InstanceState>,
    cache: &CompileCache,
    units: &[Unit],
) -> Result<Code, String> {
    check_header(bytes)?;
    let (component, origin) = cache
        .load(engine, bytes, &digest)
        .map_err(|err| format!("does not compile: {err:#}"))?;
    check_grants(spec, &component, engine, units)?;
    let pre = linker
        .instantiate_pre(&component)
        .map_err(|err| format!("cannot be linked: {err:#}"))?;
    let proxy = match HttpPre::new(pre.clone()) {
        Ok(proxy) => Some(proxy),
        Err(_) if spec.routes.is_empty() => None,
        Err(err) => {
            return Err(format!(
                "does not export wasi:http/incoming-handler@0.2 (is it a wasi:http/proxy component?): {err:#}"
            ));
        }
    };
    let subscriber = match SubscriberPre::new(pre) {
        Ok(subscriber) => Some(subscriber),
        Err(_) if spec.messaging.subscribe.is_empty() => None,
        Err(err) => {
            return Err(format!(
                "subscribes to {} but does not export {} (register one with agora_sdk::export_handler!): {err:#}",
                spec.messaging.subscribe.join(", "),
                agora_messaging::HANDLER_INTERFACE
            ));
        }
    };
    Ok(Code {
        digest,
        origin,
        proxy,
        subscriber,
    })
}

/// Where one load stands among the manifest's components (1-based), for the progress log.
#[derive(Debug, Clone, Copy)]
pub struct Position {
    /// This component's place, from 1.
    pub index: usize,
    /// How many the manifest names.
    pub total: usize,
}

/// Loads the component `spec` describes: compiles and links it, then prepares its part of each
/// unit it holds a grant of (the sql unit opens its database and applies its new migrations).
///
/// Logs its progress at `info`, counted by `position`: `compiling 3/8 catalog (425 KiB)…`
/// before a compile (a cold compile cache takes seconds per component), then `compiled 3/8
/// catalog in 9.1 s` or `loaded 4/8 order from the compile cache in 41 ms`.
pub async fn load(
    spec: &ComponentSpec,
    position: Position,
    engine: &Engine,
    linker: &Linker<InstanceState>,
    cache: &CompileCache,
    capabilities: &Capabilities,
) -> Result<LoadedComponent, LoadError> {
    let fail = |reason: String| LoadError {
        component: spec.name.clone(),
        file: spec.source.clone(),
        reason: one_line(&reason),
    };
    let config = resolve_config(spec).map_err(fail)?;
    let bytes = std::fs::read(&spec.source).map_err(|err| fail(format!("cannot read: {err}")))?;
    let digest = sha256_hex(&bytes);
    let Position { index, total } = position;
    let name = spec.name.as_str();
    if !cache.contains(&digest) {
        tracing::info!(
            component = name,
            digest = %&digest[..12],
            "compiling {index}/{total} {name} ({} KiB)…",
            bytes.len().div_ceil(1024)
        );
    }
    let started = std::time::Instant::now();
    let code = prepare(
        spec,
        &bytes,
        digest,
        engine,
        linker,
        cache,
        &capabilities.units,
    )
    .map_err(fail)?;
    let load_ms = started.elapsed().as_millis() as u64;
    match code.origin {
        Origin::Compiled => tracing::info!(
            component = name,
            digest = %&code.digest[..12],
            load_ms,
            "compiled {index}/{total} {name} in {:.1} s",
            started.elapsed().as_secs_f64()
        ),
        Origin::Cache => tracing::info!(
            component = name,
            digest = %&code.digest[..12],
            load_ms,
            "loaded {index}/{total} {name} from the compile cache in {load_ms} ms"
        ),
    }
    let units = crate::capabilities::prepare(spec, &capabilities.units, &config)
        .await
        .map_err(fail)?;
    Ok(LoadedComponent {
        name: Arc::from(spec.name.as_str()),
        digest: code.digest,
        origin: code.origin,
        installed: Installed::Manifest,
        limits: spec.limits,
        engine: engine.clone(),
        proxy: code.proxy,
        subscriber: code.subscriber,
        permits: Arc::new(Semaphore::new(spec.limits.concurrency as usize)),
        instances: crate::instances::Instances::new(spec.instances),
        capabilities: Granted {
            http: spec.grants.http.clone().into(),
            internal: capabilities.internal.clone(),
            units: units.into(),
        },
        policies: spec.policies.clone().into(),
        spec: Arc::new(spec.clone()),
        loaded_at: std::time::SystemTime::now(),
        series: Arc::new(crate::metrics::ComponentSeries::of(&spec.name)),
    })
}

impl LoadedComponent {
    /// What a store of this component is made of.
    pub fn store_spec(&self) -> crate::state::StoreSpec<'_> {
        crate::state::StoreSpec {
            name: &self.name,
            engine: &self.engine,
            limits: &self.limits,
            capabilities: &self.capabilities,
        }
    }

    /// Another version of this component: `code` with everything else — grants, database
    /// namespace, configuration, policies, limits and the concurrency gate — shared, so a swap
    /// changes the code and nothing else. Its reused instances are its own.
    pub fn with_code(&self, code: Code, installed: Installed) -> LoadedComponent {
        LoadedComponent {
            name: self.name.clone(),
            digest: code.digest,
            origin: code.origin,
            installed,
            limits: self.limits,
            engine: self.engine.clone(),
            proxy: code.proxy,
            subscriber: code.subscriber,
            permits: self.permits.clone(),
            instances: crate::instances::Instances::new(self.spec.instances),
            capabilities: self.capabilities.clone(),
            policies: self.policies.clone(),
            spec: self.spec.clone(),
            loaded_at: std::time::SystemTime::now(),
            series: self.series.clone(),
        }
    }
}

/// The component's configuration: manifest values plus values read from the environment.
/// Errors name the variable, never a value.
fn resolve_config(spec: &ComponentSpec) -> Result<BTreeMap<String, String>, String> {
    let mut config = spec.config.clone();
    for (key, variable) in &spec.config_env {
        let name = variable.name();
        match std::env::var(name) {
            Ok(value) => {
                config.insert(key.clone(), value);
            }
            Err(_) if variable.optional() => {}
            Err(_) => {
                return Err(format!(
                    "config key `{key}` reads environment variable {name}, which is not set"
                ));
            }
        }
    }
    Ok(config)
}

/// Refuses a component that imports a capability its manifest entry does not grant.
fn check_grants(
    spec: &ComponentSpec,
    component: &Component,
    engine: &Engine,
    units: &[Unit],
) -> Result<(), String> {
    for (name, _) in component.component_type().imports(engine) {
        let interface = name.split('@').next().unwrap_or(name);
        crate::capabilities::check_import(spec, units, interface)?;
    }
    Ok(())
}
