//! agora's guest SDK: what a domain component needs, as ordinary Rust.
//!
//! - [`cache`]: typed get/set (bytes or JSON), TTLs as `Duration`, counters — keys are private
//!   to the component (the host namespaces them).
//! - [`config`]: the component's configuration (manifest values and secrets from the
//!   environment).
//! - [`log`]: structured log lines that the host tags with the component and request.
//! - [`http`]: JSON answers in agora's error shape and JSON request bodies.
//! - [`input`]: request bodies checked field by field (text, whole numbers, order lines),
//!   each mistake a 400 naming the field.
//! - [`sql`]: the component's own database — typed parameters ([`params!`]), rows read by
//!   column name into Rust types, transactions that publish through an outbox.
//! - [`time`]: [`time::Timestamp`], microseconds since the epoch written as RFC 3339 UTC;
//!   dates that do not exist are refused.
//! - [`events`]: publish messages and versioned JSON events; receive them with a
//!   [`events::Handler`] registered by [`export_handler!`].
//! - [`call`]: in-process calls to other components (`http://NAME.agora.internal`).
//! - [`auth`]: issue, refresh and revoke session tokens (the host keeps the signing key), and
//!   read the caller's verified [`auth::Identity`] from the headers the host injects.
//!
//! - [`serve`]: [`serve_http!`] exports a component's wasi:http handler with a first look at
//!   each request that may answer it whole, before wstd reads all of it (a hot path such as
//!   a cached read).
//!
//! Every call returns a `Result` whose error says what went wrong; nothing here panics on bad
//! input or a backend outage. HTTP handling itself is [wstd]'s: a component depends on both
//! crates and marks its handler `#[wstd::http_server]` (the macro refers to `::wstd`), or
//! exports it with [`serve_http!`].
//!
//! ```ignore
//! use agora_sdk::{cache, http};
//! #[wstd::http_server]
//! async fn main(request: http::Request<http::Body>) -> Result<http::Response<http::Body>, http::Error> {
//!     let visits = cache::incr("visits", 1).unwrap_or(0);
//!     Ok(http::json(http::StatusCode::OK, &serde_json::json!({ "visits": visits })))
//! }
//! ```

#[doc(hidden)]
pub mod bindings {
    wit_bindgen::generate!({
        path: "../../wit",
        world: "agora:platform/sdk",
        generate_all,
        pub_export_macro: true,
        additional_derives: [PartialEq],
        default_bindings_module: "agora_sdk::bindings",
    });
}

/// The first look's export (`wit/first-look.wit`), exported by [`serve_http!`].
#[doc(hidden)]
pub mod first_look_bindings {
    wit_bindgen::generate!({
        path: "../../wit",
        world: "agora:platform/http-first-look",
        pub_export_macro: true,
        default_bindings_module: "agora_sdk::first_look_bindings",
    });
}

pub mod auth;
pub mod cache;
pub mod call;
pub mod config;
pub mod events;
pub mod http;
pub mod input;
pub mod log;
pub mod serve;
pub mod sql;
pub mod time;

/// The wasi:http bindings [`serve_http!`] exports through (the version wstd uses).
#[doc(hidden)]
pub use wasip2 as __wasip2;
