//! `wasi:logging` — the host side of component logging.
//!
//! Every `log` call becomes a `tracing` event with target `agora::guest`, the component's name
//! and the guest's `context` as fields, at the matching level (`critical` is logged as error
//! with `critical = true`). The message is cut at [`MAX_MESSAGE_BYTES`], so a guest cannot flood
//! the log with one call.
//!
//! A capability unit ([`Logging`], grant `logging`): it reveals nothing and reaches nothing, so
//! every component holds it unless its manifest entry says `logging = false`.

#![deny(missing_docs)]

use agora_capability::{Capability, ComponentInfo, Prepared, StoreData, StoreInfo};
use std::any::Any;
use std::sync::Arc;
use wasmtime::component::{HasSelf, Linker};

/// Generated bindings of `wasi:logging/logging`.
#[allow(missing_docs)]
pub mod bindings {
    wasmtime::component::bindgen!({
        path: "../../wit",
        world: "agora:platform/logging-user",
    });
}

use bindings::wasi::logging::logging::{Host, Level};

/// The WIT name of the interface, as it appears in a component's imports.
pub const INTERFACE: &str = "wasi:logging/logging";

/// Longest message kept, in bytes; the rest is replaced by a marker.
pub const MAX_MESSAGE_BYTES: usize = 16 * 1024;

/// The logging state of one store: whose logs these are. The default (a component denied
/// logging) drops every call.
#[derive(Clone, Default)]
pub struct LoggingCtx {
    component: Option<Arc<str>>,
}

impl LoggingCtx {
    /// Logs of `component`.
    pub fn new(component: Arc<str>) -> LoggingCtx {
        LoggingCtx {
            component: Some(component),
        }
    }
}

impl Prepared for LoggingCtx {
    fn instance(&self, _: &StoreInfo) -> Box<dyn Any + Send> {
        Box::new(self.clone())
    }

    // The state is the part itself, which no call changes: a reused instance keeps it.
    fn renew(&self, _: &mut Box<dyn Any + Send>, _: &StoreInfo) {}
}

/// The capability unit: `wasi:logging/logging`, granted unless the manifest says
/// `logging = false`.
#[derive(Debug, Default)]
pub struct Logging;

#[async_trait::async_trait]
impl<S: StoreData> Capability<S> for Logging {
    fn name(&self) -> &'static str {
        "logging"
    }

    fn interfaces(&self) -> &'static [&'static str] {
        &[INTERFACE]
    }

    fn grant_hint(&self) -> &'static str {
        "logging = true"
    }

    fn check_grant(&self, value: &toml::Value) -> Result<bool, String> {
        agora_capability::check_bool_grant("logging", value)
    }

    fn default_grant(&self) -> Option<toml::Value> {
        Some(toml::Value::Boolean(true))
    }

    fn link(&self, linker: &mut Linker<S>) -> wasmtime::Result<()> {
        fn ctx<S: StoreData>(state: &mut S) -> &mut LoggingCtx {
            state.slots().get_mut::<LoggingCtx>()
        }
        add_to_linker(linker, ctx::<S>)
    }

    async fn prepare(&self, component: &ComponentInfo<'_>) -> Result<Arc<dyn Prepared>, String> {
        Ok(Arc::new(LoggingCtx::new(component.name.into())))
    }

    fn describe(&self) -> serde_json::Value {
        serde_json::json!({ "target": "agora::guest" })
    }
}

/// `text` cut to at most `max` bytes on a character boundary, with a marker when cut.
fn truncated(text: &str, max: usize) -> std::borrow::Cow<'_, str> {
    if text.len() <= max {
        return text.into();
    }
    let mut end = max;
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}… [{} bytes cut]", &text[..end], text.len() - end).into()
}

impl Host for LoggingCtx {
    fn log(&mut self, level: Level, context: String, message: String) {
        let Some(component) = self.component.as_deref() else {
            return;
        };
        let context = truncated(&context, 256);
        let message = truncated(&message, MAX_MESSAGE_BYTES);
        match level {
            Level::Trace => {
                tracing::trace!(target: "agora::guest", component, context = %context, "{message}")
            }
            Level::Debug => {
                tracing::debug!(target: "agora::guest", component, context = %context, "{message}")
            }
            Level::Info => {
                tracing::info!(target: "agora::guest", component, context = %context, "{message}")
            }
            Level::Warn => {
                tracing::warn!(target: "agora::guest", component, context = %context, "{message}")
            }
            Level::Error => {
                tracing::error!(target: "agora::guest", component, context = %context, "{message}")
            }
            Level::Critical => {
                tracing::error!(target: "agora::guest", component, context = %context, critical = true, "{message}")
            }
        }
    }
}

/// Adds `wasi:logging/logging` to `linker`; `get` finds the [`LoggingCtx`] in a store's data.
pub fn add_to_linker<T: Send + 'static>(
    linker: &mut Linker<T>,
    get: fn(&mut T) -> &mut LoggingCtx,
) -> wasmtime::Result<()> {
    bindings::wasi::logging::logging::add_to_linker::<T, HasSelf<LoggingCtx>>(linker, get)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn long_messages_are_cut_on_a_character_boundary() {
        let text = "é".repeat(10);
        let cut = truncated(&text, 5);
        assert!(cut.starts_with("éé"));
        assert!(cut.ends_with("[16 bytes cut]"), "{cut}");
        assert_eq!(truncated("short", 5), "short");
    }
}
