//! Loading one component: read its bytes, compile (or load from the cache), link it against the
//! host's imports and check that it exports what a route needs.
//!
//! Every step that can fail does so here, at load, with a message naming the component, its file
//! and the reason — never on a request.

use crate::compile_cache::{CompileCache, Origin, sha256_hex};
use crate::manifest::{ComponentSpec, Limits, one_line};
use crate::state::InstanceState;
use agora_cache::{CacheBackend, CacheCtx};
use std::path::PathBuf;
use std::sync::Arc;
use tokio::sync::Semaphore;
use wasmtime::Engine;
use wasmtime::component::{Component, Linker};
use wasmtime_wasi_config::{WasiConfig, WasiConfigVariables};
use wasmtime_wasi_http::p2::bindings::ProxyPre;

/// A component ready to serve: pre-linked, with its limits and its concurrency gate.
pub struct LoadedComponent {
    /// The manifest name.
    pub name: Arc<str>,
    /// SHA-256 of the component bytes, lowercase hex.
    pub digest: String,
    /// Whether the machine code was compiled now or came from the cache.
    pub origin: Origin,
    /// Per-instance limits.
    pub limits: Limits,
    /// The pre-linked instance a fresh instance per request is made from.
    pub proxy: ProxyPre<InstanceState>,
    /// One permit per instance allowed to run at once.
    pub permits: Arc<Semaphore>,
    /// Its cache namespace (cloned into every store), or denied.
    pub cache: CacheCtx,
    /// Its wasi:config/store values. Never logged: some come from secrets.
    pub config: Arc<WasiConfigVariables>,
}

/// The capabilities a host offers, shared by every component it loads.
#[derive(Clone)]
pub struct Capabilities {
    /// The cache backend (Redis or in-memory).
    pub cache: Arc<dyn CacheBackend>,
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
/// import) and wasi:http — what `wasmtime serve -Scli` provides.
pub fn host_linker(engine: &Engine) -> anyhow::Result<Linker<InstanceState>> {
    let mut linker = Linker::<InstanceState>::new(engine);
    wasmtime_wasi::p2::add_to_linker_async(&mut linker)?;
    wasmtime_wasi_http::p2::add_only_http_to_linker_async(&mut linker)?;
    agora_cache::add_to_linker(&mut linker, |state| &mut state.cache)?;
    agora_logging::add_to_linker(&mut linker, |state| &mut state.logging)?;
    wasmtime_wasi_config::add_to_linker(&mut linker, |state| WasiConfig::new(&state.config))?;
    Ok(linker)
}

/// Loads the component `spec` describes.
pub fn load(
    spec: &ComponentSpec,
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
    if !bytes.starts_with(b"\0asm") {
        return Err(fail("not a WebAssembly file".into()));
    }
    // A core module has version 1; a component has layer 1 in bytes 6..8.
    if bytes.get(6..8) != Some(&[1, 0]) {
        return Err(fail(
            "a core WebAssembly module, not a component (build for wasm32-wasip2)".into(),
        ));
    }
    let digest = sha256_hex(&bytes);
    let (component, origin) = cache
        .load(engine, &bytes, &digest)
        .map_err(|err| fail(format!("does not compile: {err:#}")))?;
    check_grants(spec, &component, engine).map_err(fail)?;
    let pre = linker
        .instantiate_pre(&component)
        .map_err(|err| fail(format!("cannot be linked: {err:#}")))?;
    let proxy = ProxyPre::new(pre).map_err(|err| {
        fail(format!(
            "does not export wasi:http/incoming-handler@0.2 (is it a wasi:http/proxy component?): {err:#}"
        ))
    })?;
    Ok(LoadedComponent {
        name: Arc::from(spec.name.as_str()),
        digest,
        origin,
        limits: spec.limits,
        proxy,
        permits: Arc::new(Semaphore::new(spec.limits.concurrency as usize)),
        cache: if spec.grants.cache {
            CacheCtx::granted(capabilities.cache.clone(), &spec.name)
        } else {
            CacheCtx::denied()
        },
        config: Arc::new(config),
    })
}

/// The component's configuration: manifest values plus values read from the environment.
/// Errors name the variable, never a value.
fn resolve_config(spec: &ComponentSpec) -> Result<WasiConfigVariables, String> {
    let mut config = WasiConfigVariables::new();
    for (key, value) in &spec.config {
        config.insert(key, value);
    }
    for (key, variable) in &spec.config_env {
        let value = std::env::var(variable).map_err(|_| {
            format!("config key `{key}` reads environment variable {variable}, which is not set")
        })?;
        config.insert(key, value);
    }
    Ok(config)
}

/// Refuses a component that imports a capability its manifest entry does not grant.
fn check_grants(
    spec: &ComponentSpec,
    component: &Component,
    engine: &Engine,
) -> Result<(), String> {
    for (name, _) in component.component_type().imports(engine) {
        let interface = name.split('@').next().unwrap_or(name);
        if interface == agora_cache::INTERFACE && !spec.grants.cache {
            return Err(format!(
                "imports {interface} but the manifest grants no cache (add `grants = {{ cache = true }}`)"
            ));
        }
    }
    Ok(())
}
