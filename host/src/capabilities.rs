//! The host's list of capability units: each a crate implementing
//! [`agora_capability::Capability`], each one line in [`units`]. A unit's grant, WIT
//! interfaces, linking, per-component and per-store state and admin report all live in its
//! crate; the host reads grants from `grants = { … }` by the unit's name, refuses a component
//! that imports a unit's interface without the grant (at load), and puts each store's state in
//! its [`agora_capability::Slots`] (the default, denied, when the grant is absent).
//!
//! Units, in the order they are prepared: publish, sql (its outbox reads the publish part),
//! cache, keyvalue, auth, logging, config. The one grant the host wires itself is `http`:
//! outbound wasi:http, which wasmtime-wasi-http links and the HTTP trigger serves for
//! in-process calls. The host also keeps the sql and messaging backends for what is not a
//! guest's call: the event trigger's subscriptions, the outbox relay and the readiness probes.

use crate::manifest::{ComponentSpec, Manifest, ManifestError};
use crate::state::InstanceState;
use agora_capability::{Capability, ComponentInfo, Prepared};
use std::borrow::Cow;
use std::collections::BTreeMap;
use std::sync::Arc;

/// One capability unit, for the host's store type.
pub type Unit = Arc<dyn Capability<InstanceState>>;

/// The host's units, shared by every component and every loader.
pub type Units = Arc<[Unit]>;

/// The grant keys the host wires itself (not units).
const BUILT_IN_GRANTS: &[&str] = &["http"];

/// The shared backends a unit may be built on.
pub struct Backends {
    /// The cache backend (Redis or in-memory).
    pub cache: Arc<dyn agora_cache::CacheBackend>,
    /// The host's token authority, when it has keys.
    pub authority: Option<Arc<agora_auth::Authority>>,
    /// The database (PostgreSQL or SQLite).
    pub sql: Arc<dyn agora_sql::SqlBackend>,
    /// The message broker (NATS JetStream or the in-process bus).
    pub messaging: Arc<dyn agora_messaging::MessagingBackend>,
}

/// Every capability unit of the host: one line each.
pub fn units(backends: &Backends) -> Units {
    let units: Vec<Unit> = vec![
        Arc::new(agora_messaging::Publish::new(backends.messaging.clone())),
        Arc::new(agora_sql::Sql::new(backends.sql.clone())),
        Arc::new(agora_cache::Cache::new(backends.cache.clone())),
        Arc::new(agora_keyvalue::KeyValue::new(backends.cache.clone())),
        Arc::new(agora_auth::Auth::new(backends.authority.clone())),
        Arc::new(agora_logging::Logging),
        Arc::new(agora_config::Config),
    ];
    units.into()
}

/// Checks every component's unit grants: each key of `grants` names a built-in capability or
/// a unit, and each unit accepts its value. The error names the component and the grant.
pub fn check_manifest(manifest: &Manifest, units: &[Unit]) -> Result<(), ManifestError> {
    for spec in &manifest.components {
        let invalid = |message: String| ManifestError::Invalid {
            path: manifest.path.clone(),
            component: spec.name.clone(),
            message,
        };
        for (key, value) in &spec.grants.units {
            let Some(unit) = units.iter().find(|unit| unit.name() == key) else {
                let known: Vec<&str> = BUILT_IN_GRANTS
                    .iter()
                    .copied()
                    .chain(units.iter().map(|unit| unit.name()))
                    .collect();
                return Err(invalid(format!(
                    "unknown grant `{key}` (known: {})",
                    known.join(", ")
                )));
            };
            unit.check_grant(value).map_err(invalid)?;
        }
    }
    Ok(())
}

/// The grant `spec` holds of `unit` (written in its manifest entry, or else the unit's
/// default), if it grants something.
fn granted<'a>(spec: &'a ComponentSpec, unit: &Unit) -> Option<Cow<'a, toml::Value>> {
    spec.grants
        .units
        .get(unit.name())
        .map(Cow::Borrowed)
        .or_else(|| unit.default_grant().map(Cow::Owned))
        .filter(|value| unit.check_grant(value).unwrap_or(false))
}

/// The error for a component importing `interface` of a unit it holds no grant of, if any.
pub fn check_import(spec: &ComponentSpec, units: &[Unit], interface: &str) -> Result<(), String> {
    for unit in units {
        if unit.interfaces().contains(&interface) && granted(spec, unit).is_none() {
            return Err(format!(
                "imports {interface} but the manifest grants no {} (add `grants = {{ {} }}`)",
                unit.name(),
                unit.grant_hint()
            ));
        }
    }
    Ok(())
}

/// The units' parts of a component `spec` describes, for those it holds a grant of, in the
/// units' order (each sees the parts before it).
pub async fn prepare(
    spec: &ComponentSpec,
    units: &[Unit],
    config: &BTreeMap<String, String>,
) -> Result<Vec<(&'static str, Arc<dyn Prepared>)>, String> {
    let mut prepared = Vec::new();
    for unit in units {
        let Some(grant) = granted(spec, unit) else {
            continue;
        };
        let meter = crate::metrics::capability_meter(&spec.name, unit.name());
        let info = ComponentInfo {
            name: &spec.name,
            meter: &meter,
            grant: &grant,
            config,
            cache_keys: spec.limits.cache_keys,
            cache_value_bytes: spec.limits.cache_value_bytes,
            deadline_ms: spec.limits.deadline_ms,
            sql_connections: spec.limits.sql_connections,
            sql_result_bytes: spec.limits.sql_result_bytes,
            migrations: spec.migrations.as_deref(),
            prepared: &prepared,
        };
        let part = unit
            .prepare(&info)
            .await
            .map_err(|err| format!("{}: {err}", unit.name()))?;
        prepared.push((unit.name(), part));
    }
    Ok(prepared)
}
