//! `wasi:config/store` — a component reads its own configuration: the manifest's
//! `[component.config]` values and the `[component.config_env]` ones the host read from its
//! environment at load (secrets among them: the values are never logged or reported).
//!
//! A capability unit ([`Config`], grant `config`): a component reads only its own values, so
//! every component holds it unless its manifest entry says `config = false`. The host (which
//! owns the manifest) resolves the values; the unit keeps them per component and serves them
//! to each store.

#![deny(missing_docs)]

use agora_capability::{Capability, ComponentInfo, Prepared, StoreData, StoreInfo};
use std::any::Any;
use std::sync::Arc;
use wasmtime::component::Linker;
use wasmtime_wasi_config::{WasiConfig, WasiConfigVariables};

/// The WIT name of the interface, as it appears in a component's imports.
pub const INTERFACE: &str = "wasi:config/store";

/// The configuration one store reads. The default (a component denied the capability) is
/// empty: every `get` answers none.
#[derive(Clone, Default)]
pub struct ConfigCtx {
    values: Arc<WasiConfigVariables>,
}

impl Prepared for ConfigCtx {
    fn instance(&self, _: &StoreInfo) -> Box<dyn Any + Send> {
        Box::new(self.clone())
    }

    // The state is the part itself, which no call changes: a reused instance keeps it.
    fn renew(&self, _: &mut Box<dyn Any + Send>, _: &StoreInfo) {}
}

/// The capability unit: `wasi:config/store`, granted unless the manifest says
/// `config = false`.
#[derive(Debug, Default)]
pub struct Config;

#[async_trait::async_trait]
impl<S: StoreData> Capability<S> for Config {
    fn name(&self) -> &'static str {
        "config"
    }

    fn interfaces(&self) -> &'static [&'static str] {
        &[INTERFACE]
    }

    fn grant_hint(&self) -> &'static str {
        "config = true"
    }

    fn check_grant(&self, value: &toml::Value) -> Result<bool, String> {
        agora_capability::check_bool_grant("config", value)
    }

    fn default_grant(&self) -> Option<toml::Value> {
        Some(toml::Value::Boolean(true))
    }

    fn link(&self, linker: &mut Linker<S>) -> wasmtime::Result<()> {
        fn ctx<S: StoreData>(state: &mut S) -> WasiConfig<'_> {
            WasiConfig::new(&state.slots().get_mut::<ConfigCtx>().values)
        }
        wasmtime_wasi_config::add_to_linker(linker, ctx::<S>)
    }

    async fn prepare(&self, component: &ComponentInfo<'_>) -> Result<Arc<dyn Prepared>, String> {
        let values = WasiConfigVariables::from_iter(component.config.clone());
        Ok(Arc::new(ConfigCtx {
            values: Arc::new(values),
        }))
    }

    fn describe(&self) -> serde_json::Value {
        serde_json::Value::Null
    }
}
