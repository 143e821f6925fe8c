//! The smallest agora component: a wasi:http/proxy handler that greets its caller.
//!
//! It uses nothing beyond wasi:http, so `wasmtime serve -Scli` serves the same binary; the
//! benchmark (`cargo xtask bench hello`) relies on that.

use wstd::http::{Body, Error, Request, Response};

#[wstd::http_server]
async fn main(_request: Request<Body>) -> Result<Response<Body>, Error> {
    Ok(Response::new("Hello, world!\n".into()))
}
