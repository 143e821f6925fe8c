//! Logging and tracing set-up: `tracing` events to stderr, filtered `RUST_LOG`-style.

use std::io::IsTerminal as _;
use tracing_subscriber::EnvFilter;

/// The filter used when `RUST_LOG` is not set.
pub const DEFAULT_FILTER: &str = "info,wasmtime=warn,cranelift=warn";

/// Installs the global subscriber. Calling it again is harmless (the first one stays).
pub fn init() {
    let filter =
        EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new(DEFAULT_FILTER));
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::stderr().is_terminal())
        .try_init();
}
