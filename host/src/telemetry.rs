//! Logging and tracing set-up: `tracing` events to stderr, filtered `RUST_LOG`-style.

use std::io::IsTerminal as _;
use tracing_subscriber::EnvFilter;

/// The filter used when `RUST_LOG` is not set.
pub const DEFAULT_FILTER: &str = "info,wasmtime=warn,cranelift=warn";

/// The filter of one-shot commands (`agora deploy`, `agora status`) when `RUST_LOG` is not set:
/// their output is what they print, not the client libraries' chatter.
pub const COMMAND_FILTER: &str = "warn";

/// Installs the global subscriber with [`DEFAULT_FILTER`]. Calling it again is harmless (the
/// first one stays).
pub fn init() {
    init_with(DEFAULT_FILTER);
}

/// Installs the global subscriber, filtered by `RUST_LOG` or else by `default`.
pub fn init_with(default: &str) {
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new(default));
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::stderr().is_terminal())
        .try_init();
}
