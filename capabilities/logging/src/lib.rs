//! `wasi:logging` — the host side of component logging.
//!
//! Every `log` call becomes a `tracing` event with target `agora::guest`, the component's name
//! and the guest's `context` as fields, at the matching level (`critical` is logged as error
//! with `critical = true`). The message is cut at [`MAX_MESSAGE_BYTES`], so a guest cannot flood
//! the log with one call. Logging needs no grant: it reveals nothing and reaches nothing.
//!
//! ```no_run
//! use agora_logging::LoggingCtx;
//! # struct State { logging: LoggingCtx }
//! # fn link(linker: &mut wasmtime::component::Linker<State>) -> wasmtime::Result<()> {
//! agora_logging::add_to_linker(linker, |state: &mut State| &mut state.logging)?;
//! let ctx = LoggingCtx::new("catalog".into());
//! # Ok(()) }
//! ```

#![deny(missing_docs)]

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

/// The logging state of one store: whose logs these are.
#[derive(Clone)]
pub struct LoggingCtx {
    component: Arc<str>,
}

impl LoggingCtx {
    /// Logs of `component`.
    pub fn new(component: Arc<str>) -> LoggingCtx {
        LoggingCtx { component }
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
        let component = &*self.component;
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
