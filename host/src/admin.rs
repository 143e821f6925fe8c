//! The admin API: a second listener, off unless configured, for operators.
//!
//! Every path under `/admin/` needs `Authorization: Bearer <admin token>`; the token comes
//! from the environment (`AGORA_ADMIN_TOKEN`) and is compared in constant time (SHA-256 of
//! both sides, compared with `subtle`, so neither its bytes nor its length leak through
//! timing). `/healthz` answers without a token and says nothing but "ok" (for probes).
//!
//! - `GET /admin/health` — uptime, component count, backends.
//! - `GET /admin/components` — every loaded component: content digest, routes, policies,
//!   grants, subscriptions, limits, load time.
//! - `GET /admin/components/{name}` — one of them, with its current and previous versions.
//! - `PUT /admin/components/{name}` — the body is a new version's wasm: validated off the
//!   request path and swapped in atomically (see [`crate::swap`]). 200 with what changed (or
//!   `"changed": false` when those bytes already serve), 422 with the failed check and the
//!   version still serving, 413 above [`MAX_UPLOAD_BYTES`].
//! - `POST /admin/components/{name}/rollback` — the previous version serves again; 409 when
//!   there is none.

use crate::component::{Installed, LoadedComponent};
use crate::fleet::timestamp as rfc3339;
use crate::response::{ResponseBody, error_response, json_response};
use crate::swap::{Components, Outcome, SwapError, Version};
use http::{HeaderValue, Method, Request, Response, StatusCode};
use http_body_util::BodyExt as _;
use hyper::body::Incoming;
use serde_json::{Value, json};
use sha2::{Digest as _, Sha256};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::SystemTime;
use subtle::ConstantTimeEq as _;
use tokio::net::TcpListener;

/// Environment variable holding the admin token.
pub const ADMIN_TOKEN_VAR: &str = "AGORA_ADMIN_TOKEN";
/// Shortest admin token accepted.
pub const MIN_ADMIN_TOKEN_CHARS: usize = 16;
/// Largest component upload accepted.
pub const MAX_UPLOAD_BYTES: usize = 64 << 20;

/// The admin token, kept only as its SHA-256.
#[derive(Clone)]
pub struct AdminToken {
    digest: [u8; 32],
}

impl std::fmt::Debug for AdminToken {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("AdminToken(..)")
    }
}

impl AdminToken {
    /// Accepts a token of at least [`MIN_ADMIN_TOKEN_CHARS`] visible ASCII characters.
    pub fn new(token: &str) -> Result<AdminToken, String> {
        if token.chars().count() < MIN_ADMIN_TOKEN_CHARS {
            return Err(format!(
                "{ADMIN_TOKEN_VAR} must be at least {MIN_ADMIN_TOKEN_CHARS} characters"
            ));
        }
        if !token.bytes().all(|b| b.is_ascii_graphic()) {
            return Err(format!(
                "{ADMIN_TOKEN_VAR} may hold visible ASCII characters only (no spaces)"
            ));
        }
        Ok(AdminToken {
            digest: Sha256::digest(token.as_bytes()).into(),
        })
    }

    /// Whether `given` is the token, in time independent of where they differ.
    pub fn matches(&self, given: &str) -> bool {
        let given: [u8; 32] = Sha256::digest(given.as_bytes()).into();
        given.ct_eq(&self.digest).into()
    }
}

/// Marks an answer given after the request's body was read whole.
#[derive(Debug, Clone, Copy)]
struct BodyRead;

/// Which backends the host runs on.
#[derive(Debug, Clone)]
pub struct Backends {
    /// `postgres` or `sqlite`.
    pub sql: String,
    /// `redis` or `memory`.
    pub cache: &'static str,
    /// `nats` or `memory`.
    pub messaging: &'static str,
    /// `redis` or `memory`.
    pub rate_limits: &'static str,
    /// What each capability unit says of itself, by name.
    pub units: serde_json::Map<String, Value>,
}

/// What the admin API reads.
pub struct AdminState {
    token: AdminToken,
    components: Arc<Components>,
    started: SystemTime,
    backends: Backends,
    ids: AtomicU64,
}

impl AdminState {
    /// The state of a host that started at `started` with `components`.
    pub fn new(
        token: AdminToken,
        components: Arc<Components>,
        started: SystemTime,
        backends: Backends,
    ) -> AdminState {
        AdminState {
            token,
            components,
            started,
            backends,
            ids: AtomicU64::new(1),
        }
    }

    async fn handle(&self, request: Request<Incoming>) -> Response<ResponseBody> {
        let request_id = format!("admin-{:08x}", self.ids.fetch_add(1, Ordering::Relaxed));
        let path = request.uri().path().trim_end_matches('/').to_owned();
        let method = request.method().clone();
        let has_body = !hyper::body::Body::is_end_stream(request.body());
        let mut response = self.route(request, &path, &request_id).await;
        // A body left unread (a refusal before the upload was read: never read for someone
        // without the token) ends the connection; saying so keeps the client from sending its
        // next request on it.
        if has_body && response.extensions().get::<BodyRead>().is_none() {
            response
                .headers_mut()
                .insert(http::header::CONNECTION, HeaderValue::from_static("close"));
        }
        tracing::info!(
            target: "agora::admin",
            %method,
            %path,
            status = response.status().as_u16(),
            "admin request"
        );
        response
    }

    async fn route(
        &self,
        request: Request<Incoming>,
        path: &str,
        request_id: &str,
    ) -> Response<ResponseBody> {
        if path == "/healthz" {
            return json_response(StatusCode::OK, &json!({ "status": "ok" }));
        }
        let not_found = || {
            error_response(
                StatusCode::NOT_FOUND,
                "not_found",
                &format!("no admin endpoint {path}"),
                request_id,
            )
        };
        if path != "/admin" && !path.starts_with("/admin/") {
            return not_found();
        }
        if let Err(message) = self.authenticate(&request) {
            let mut response = error_response(
                StatusCode::UNAUTHORIZED,
                "unauthorized",
                message,
                request_id,
            );
            response.headers_mut().insert(
                http::header::WWW_AUTHENTICATE,
                HeaderValue::from_static("Bearer realm=\"agora-admin\""),
            );
            return response;
        }
        let method = request.method().clone();
        match path {
            "/admin/health" => only(&method, &[Method::GET], path, request_id)
                .unwrap_or_else(|| json_response(StatusCode::OK, &self.health())),
            "/admin/components" => only(&method, &[Method::GET], path, request_id)
                .unwrap_or_else(|| {
                    json_response(
                        StatusCode::OK,
                        &json!({ "items": self.components.slots().iter().map(|slot| describe(&slot.current(), slot.previous().as_deref())).collect::<Vec<_>>() }),
                    )
                }),
            _ => {
                let Some(rest) = path.strip_prefix("/admin/components/") else {
                    return not_found();
                };
                let (name, action) = match rest.split_once('/') {
                    Some((name, action)) => (name, Some(action)),
                    None => (rest, None),
                };
                let Some(slot) = self.components.get(name) else {
                    return error_response(
                        StatusCode::NOT_FOUND,
                        "unknown_component",
                        &format!("no component is named `{name}`"),
                        request_id,
                    );
                };
                match action {
                    None => {
                        if let Some(refused) =
                            only(&method, &[Method::GET, Method::PUT], path, request_id)
                        {
                            return refused;
                        }
                        if method == Method::PUT {
                            return self.upload(name, request, request_id).await;
                        }
                        json_response(
                            StatusCode::OK,
                            &describe(&slot.current(), slot.previous().as_deref()),
                        )
                    }
                    Some("rollback") => {
                        if let Some(refused) = only(&method, &[Method::POST], path, request_id) {
                            return refused;
                        }
                        match self.components.rollback(name).await {
                            Ok(swapped) => json_response(
                                StatusCode::OK,
                                &json!({
                                    "changed": true,
                                    "component": name,
                                    "message": format!("rolled `{name}` back from {} to {}", swapped.from.digest, swapped.to.digest),
                                    "current": swapped.to,
                                    "previous": swapped.from,
                                }),
                            ),
                            Err(err) => swap_refusal(&err, &slot.current(), request_id),
                        }
                    }
                    Some(_) => not_found(),
                }
            }
        }
    }

    /// `PUT /admin/components/{name}`: the body is the new version. Every answer given after
    /// the body was read carries [`BodyRead`].
    async fn upload(
        &self,
        name: &str,
        request: Request<Incoming>,
        request_id: &str,
    ) -> Response<ResponseBody> {
        let too_large = || {
            error_response(
                StatusCode::PAYLOAD_TOO_LARGE,
                "upload_too_large",
                &format!(
                    "a component upload may hold at most {} MiB; nothing changed",
                    MAX_UPLOAD_BYTES >> 20
                ),
                request_id,
            )
        };
        let declared = request
            .headers()
            .get(http::header::CONTENT_LENGTH)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.parse::<u64>().ok());
        if declared.is_some_and(|len| len > MAX_UPLOAD_BYTES as u64) {
            return too_large();
        }
        let body = http_body_util::Limited::new(request.into_body(), MAX_UPLOAD_BYTES);
        let bytes = match body.collect().await {
            Ok(collected) => collected.to_bytes(),
            Err(err) if err.is::<http_body_util::LengthLimitError>() => return too_large(),
            Err(err) => {
                return error_response(
                    StatusCode::BAD_REQUEST,
                    "upload_incomplete",
                    &format!("the upload did not arrive whole ({err}); nothing changed"),
                    request_id,
                );
            }
        };
        let mut response = self.install(name, bytes, request_id).await;
        response.extensions_mut().insert(BodyRead);
        response
    }

    /// Installs the uploaded `bytes` as the new version of `name`.
    async fn install(
        &self,
        name: &str,
        bytes: bytes::Bytes,
        request_id: &str,
    ) -> Response<ResponseBody> {
        if bytes.is_empty() {
            return error_response(
                StatusCode::BAD_REQUEST,
                "empty_upload",
                "the body must be the component's .wasm bytes (it was empty); nothing changed",
                request_id,
            );
        }
        match self
            .components
            .install(name, bytes.to_vec(), Installed::Admin)
            .await
        {
            Ok(Outcome::Swapped(swapped)) => json_response(
                StatusCode::OK,
                &json!({
                    "changed": true,
                    "component": name,
                    "message": format!("`{name}` now runs {} (was {})", swapped.to.digest, swapped.from.digest),
                    "current": swapped.to,
                    "previous": swapped.from,
                    "migrations_applied": swapped.migrations_applied,
                    "validation_ms": swapped.validation_ms,
                }),
            ),
            Ok(Outcome::Unchanged(version)) => json_response(
                StatusCode::OK,
                &json!({
                    "changed": false,
                    "component": name,
                    "message": format!("`{name}` already runs {}; nothing changed", version.digest),
                    "current": version,
                }),
            ),
            Err(err) => match self.components.get(name) {
                Some(slot) => swap_refusal(&err, &slot.current(), request_id),
                None => error_response(
                    StatusCode::NOT_FOUND,
                    "unknown_component",
                    &err.to_string(),
                    request_id,
                ),
            },
        }
    }

    fn authenticate(&self, request: &Request<Incoming>) -> Result<(), &'static str> {
        let value = request
            .headers()
            .get(http::header::AUTHORIZATION)
            .ok_or("the admin API needs `Authorization: Bearer <admin token>`")?;
        let token = value
            .to_str()
            .ok()
            .and_then(|v| v.split_once(' '))
            .filter(|(scheme, _)| scheme.eq_ignore_ascii_case("bearer"))
            .map(|(_, token)| token.trim())
            .ok_or("the Authorization header is not `Bearer <admin token>`")?;
        if self.token.matches(token) {
            Ok(())
        } else {
            tracing::warn!(target: "agora::admin", "admin request with a wrong token");
            Err("wrong admin token")
        }
    }

    fn health(&self) -> Value {
        let uptime_s = SystemTime::now()
            .duration_since(self.started)
            .map_or(0, |d| d.as_secs());
        json!({
            "status": "ok",
            "uptime_s": uptime_s,
            "started_at": rfc3339(self.started),
            "components": self.components.slots().len(),
            "backends": {
                "sql": self.backends.sql,
                "cache": self.backends.cache,
                "messaging": self.backends.messaging,
                "rate_limits": self.backends.rate_limits,
                "units": self.backends.units,
            },
        })
    }
}

/// `Some(405)` unless `method` is one of `allowed`.
fn only(
    method: &Method,
    allowed: &[Method],
    path: &str,
    request_id: &str,
) -> Option<Response<ResponseBody>> {
    if allowed.contains(method) {
        return None;
    }
    let names: Vec<&str> = allowed.iter().map(Method::as_str).collect();
    let mut response = error_response(
        StatusCode::METHOD_NOT_ALLOWED,
        "method_not_allowed",
        &format!("{method} {path}: only {} is served", names.join(", ")),
        request_id,
    );
    if let Ok(allow) = HeaderValue::from_str(&names.join(", ")) {
        response.headers_mut().insert(http::header::ALLOW, allow);
    }
    Some(response)
}

/// The answer when a swap or a rollback changed nothing: why, and what still serves.
fn swap_refusal(
    err: &SwapError,
    current: &LoadedComponent,
    request_id: &str,
) -> Response<ResponseBody> {
    let (status, code) = match err {
        SwapError::UnknownComponent(_) => (StatusCode::NOT_FOUND, "unknown_component"),
        SwapError::Rejected { .. } => (StatusCode::UNPROCESSABLE_ENTITY, "invalid_component"),
        SwapError::NoPrevious(_) => (StatusCode::CONFLICT, "no_previous_version"),
    };
    tracing::warn!(target: "agora::admin", component = %current.name, error = %err, "swap refused");
    json_response(
        status,
        &json!({
            "changed": false,
            "error": { "code": code, "message": err.to_string(), "request_id": request_id },
            "current": Version::of(current),
        }),
    )
}

/// What the admin API says about one component.
fn describe(component: &LoadedComponent, previous: Option<&LoadedComponent>) -> Value {
    let spec = &component.spec;
    let grants = &spec.grants;
    let mut described = json!({
        "name": &*component.name,
        "digest": format!("sha256:{}", component.digest),
        "compiled": matches!(component.origin, crate::Origin::Compiled),
        "loaded_at": rfc3339(component.loaded_at),
        "versions": {
            "current": Version::of(component),
            "previous": previous.map(Version::of),
        },
        "source": spec.source.display().to_string(),
        "routes": spec.routes,
        "policies": component.policies.iter().map(|p| json!({
            "routes": p.routes.iter().map(|r| r.as_str()).collect::<Vec<_>>(),
            "methods": p.methods,
            "access": p.access.as_str(),
            "roles": p.roles,
            "rate_limit": {
                "per_ip": p.rate_limit.per_ip.map(|r| r.to_string()),
                "per_subject": p.rate_limit.per_subject.map(|r| r.to_string()),
            },
        })).collect::<Vec<_>>(),
        "grants": grants_json(grants),
        "subscribe": spec.messaging.subscribe,
        "limits": {
            "memory_mib": spec.limits.memory_bytes >> 20,
            "deadline_ms": spec.limits.deadline_ms,
            "body_kib": spec.limits.body_bytes >> 10,
            "concurrency": spec.limits.concurrency,
            "cache_keys": spec.limits.cache_keys,
            "cache_value_kib": spec.limits.cache_value_bytes >> 10,
        },
    });
    // Each capability unit's report of the component, under the unit's name (`cache`: its
    // hits and misses, `keyvalue`: its buckets).
    if let Some(object) = described.as_object_mut() {
        for (name, part) in component.capabilities.units.iter() {
            let state = part.describe();
            if !state.is_null() {
                object.insert((*name).to_owned(), state);
            }
        }
    }
    described
}

/// Serves the admin API on `listener` until `stop` turns true.
pub async fn serve(
    listener: TcpListener,
    state: Arc<AdminState>,
    limits: crate::server::ConnectionLimits,
    stop: tokio::sync::watch::Receiver<bool>,
) {
    crate::server::serve_internal(listener, "admin", limits, stop, move |request| {
        let state = state.clone();
        async move { state.handle(request).await }
    })
    .await;
}

/// A component's grants as JSON: the built-in one (http), then each unit's grant as written.
fn grants_json(grants: &crate::manifest::Grants) -> Value {
    let mut object = serde_json::Map::new();
    object.insert("http".into(), json!(grants.http));
    for (name, value) in &grants.units {
        object.insert(name.clone(), toml_to_json(value));
    }
    Value::Object(object)
}

/// A grant's TOML value as JSON (the admin API's language).
fn toml_to_json(value: &toml::Value) -> Value {
    match value {
        toml::Value::String(text) => Value::String(text.clone()),
        toml::Value::Integer(n) => json!(n),
        toml::Value::Float(x) => json!(x),
        toml::Value::Boolean(b) => Value::Bool(*b),
        toml::Value::Datetime(at) => Value::String(at.to_string()),
        toml::Value::Array(items) => Value::Array(items.iter().map(toml_to_json).collect()),
        toml::Value::Table(table) => Value::Object(
            table
                .iter()
                .map(|(key, value)| (key.clone(), toml_to_json(value)))
                .collect(),
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokens_are_checked_whole() {
        let token = AdminToken::new("correct-horse-battery").expect("valid token");
        assert!(token.matches("correct-horse-battery"));
        assert!(!token.matches("correct-horse-batter"));
        assert!(!token.matches("correct-horse-battery "));
        assert!(!token.matches(""));
        assert!(AdminToken::new("short").is_err());
        assert!(AdminToken::new("has a space in the middle").is_err());
        assert_eq!(format!("{token:?}"), "AdminToken(..)");
    }
}
