//! Log lines (`wasi:logging`). The host adds the component's name and the request id; `context`
//! groups related lines (for example the operation).

use crate::bindings::wasi::logging::logging::{Level, log};

/// A debugging detail.
pub fn debug(context: &str, message: &str) {
    log(Level::Debug, context, message);
}

/// Something an operator may want to know.
pub fn info(context: &str, message: &str) {
    log(Level::Info, context, message);
}

/// Something went wrong but the request goes on.
pub fn warn(context: &str, message: &str) {
    log(Level::Warn, context, message);
}

/// The request failed.
pub fn error(context: &str, message: &str) {
    log(Level::Error, context, message);
}
