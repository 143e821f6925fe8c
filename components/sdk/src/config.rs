//! The component's configuration (`wasi:config/store`): the manifest's `config` values and the
//! environment variables named in `config_env`.

use crate::bindings::wasi::config::store;
use std::fmt;

/// A required configuration value is missing or unreadable.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigError {
    /// The key asked for.
    pub key: String,
    /// What went wrong.
    pub reason: String,
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "config `{}`: {}", self.key, self.reason)
    }
}

impl std::error::Error for ConfigError {}

/// The value of `key`, if configured.
pub fn get(key: &str) -> Result<Option<String>, ConfigError> {
    store::get(key).map_err(|err| ConfigError {
        key: key.to_owned(),
        reason: format!("{err:?}"),
    })
}

/// The value of `key`, or an error saying it is not configured.
pub fn require(key: &str) -> Result<String, ConfigError> {
    get(key)?.ok_or_else(|| ConfigError {
        key: key.to_owned(),
        reason: "not configured (add it to [component.config] or [component.config_env])".into(),
    })
}

/// The value of `key` parsed as `T`, or `default` when not configured.
pub fn get_or<T: std::str::FromStr>(key: &str, default: T) -> Result<T, ConfigError> {
    match get(key)? {
        Some(text) => text.parse().map_err(|_| ConfigError {
            key: key.to_owned(),
            reason: format!("cannot parse `{text}`"),
        }),
        None => Ok(default),
    }
}
