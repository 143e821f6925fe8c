//! The edge: what the host checks on a request before it instantiates the component that
//! serves it.
//!
//! In order:
//! 1. Every `x-agora-*` header the caller sent is removed: only the host writes them.
//! 2. The method is upper-cased (`get` is `GET`, for the policy and for the component alike)
//!    and the route's policy is found ([`crate::policy::resolve`]); an `internal` route called
//!    from outside answers 404, as if it did not exist.
//! 3. The per-IP token bucket (429 with `Retry-After` when empty).
//! 4. The bearer token: required on `authenticated` routes and routes with roles (401 for a
//!    missing, malformed, badly signed, expired, not-yet-valid, wrong-audience, wrong-issuer,
//!    wrong-type or revoked token; 503 when the revocation store cannot be asked), role check
//!    (403); on other routes a valid token is used and an invalid one ignored.
//! 5. The per-subject token bucket.
//! 6. The verified identity is written as `x-agora-subject`, `x-agora-roles` (comma-separated)
//!    and `x-agora-token-id`; on an in-process call from another component,
//!    `x-agora-caller` names that component and `x-agora-parent-request-id` the request it was
//!    serving; `x-agora-request-id` is always set.
//!
//! A rate limiter that cannot be reached lets requests through (with a warning): a Redis
//! outage must not take the shop down with it. Token checks fail closed.

use crate::calls::Caller;
use crate::component::LoadedComponent;
use crate::policy::{self, Access};
use crate::response::{ResponseBody, error_response};
use agora_auth::{Identity, Verifier, VerifyError};
use agora_ratelimit::{Decision, Rate, RateLimiter};
use http::{HeaderMap, HeaderName, HeaderValue, Response, StatusCode};
use std::net::IpAddr;
use std::sync::Arc;

/// Upper-cases a method sent in another case: methods are case-sensitive tokens in HTTP, but a
/// policy listing `PUT` must also cover `put`, and the component must see what was checked.
fn normalize_method(method: &mut http::Method) {
    let text = method.as_str();
    if text.bytes().any(|b| b.is_ascii_lowercase())
        && let Ok(upper) = http::Method::from_bytes(text.to_ascii_uppercase().as_bytes())
    {
        *method = upper;
    }
}

/// Header the host writes with the verified subject.
pub const SUBJECT_HEADER: &str = "x-agora-subject";
/// Header the host writes with the verified roles, comma-separated.
pub const ROLES_HEADER: &str = "x-agora-roles";
/// Header the host writes with the verified token's id (`jti`).
pub const TOKEN_ID_HEADER: &str = "x-agora-token-id";
/// Header the host writes on in-process calls: the calling component.
pub const CALLER_HEADER: &str = "x-agora-caller";
/// Header the host writes with the request's id (the `x-request-id` of the answer).
pub const REQUEST_ID_HEADER: &str = "x-agora-request-id";
/// Header the host writes on in-process calls: the id of the request the caller was serving,
/// so one client request can be followed through every component it reached.
pub const PARENT_REQUEST_ID_HEADER: &str = "x-agora-parent-request-id";
/// Prefix of the headers only the host may write.
pub const RESERVED_PREFIX: &str = "x-agora-";

/// What the edge learnt about an admitted request.
#[derive(Debug, Clone, Default)]
pub struct Admitted {
    /// The client's IP address, when known.
    pub client_ip: Option<IpAddr>,
    /// The verified identity, when the request carried a valid access token.
    pub identity: Option<Identity>,
}

/// The edge's state, shared by every request of a host.
pub struct Edge {
    verifier: Option<Arc<Verifier>>,
    limiter: Arc<dyn RateLimiter>,
    trusted_proxy_hops: u32,
}

impl Edge {
    /// An edge verifying tokens with `verifier` (`None`: no keys are configured, and no route
    /// needs a token) and counting requests in `limiter`.
    pub fn new(
        verifier: Option<Arc<Verifier>>,
        limiter: Arc<dyn RateLimiter>,
        trusted_proxy_hops: u32,
    ) -> Edge {
        Edge {
            verifier,
            limiter,
            trusted_proxy_hops,
        }
    }

    /// The client address of a request: the TCP peer, or — behind `trusted_proxy_hops`
    /// proxies — the address the nearest trusted proxy saw in `X-Forwarded-For`.
    pub fn client_ip(&self, headers: &HeaderMap, caller: &Caller) -> Option<IpAddr> {
        match caller {
            Caller::Internal { client_ip, .. } => *client_ip,
            Caller::External { peer } => {
                if self.trusted_proxy_hops == 0 {
                    return Some(*peer);
                }
                let forwarded: Vec<&str> = headers
                    .get_all("x-forwarded-for")
                    .iter()
                    .filter_map(|value| value.to_str().ok())
                    .flat_map(|value| value.split(','))
                    .map(str::trim)
                    .collect();
                let hops = self.trusted_proxy_hops as usize;
                forwarded
                    .len()
                    .checked_sub(hops)
                    .and_then(|index| forwarded[index].parse().ok())
                    .or(Some(*peer))
            }
        }
    }

    /// Runs the checks for a request to `component`; on success `parts` holds the identity
    /// headers and nothing else under [`RESERVED_PREFIX`].
    pub async fn admit(
        &self,
        component: &LoadedComponent,
        parts: &mut http::request::Parts,
        caller: &Caller,
        request_id: &str,
    ) -> Result<Admitted, Response<ResponseBody>> {
        strip_reserved(&mut parts.headers);
        normalize_method(&mut parts.method);
        let path = parts.uri.path();
        let (index, policy) = policy::resolve(&component.policies, parts.method.as_str(), path);
        if policy.access == Access::Internal && matches!(caller, Caller::External { .. }) {
            tracing::debug!(%path, "internal route requested from outside");
            return Err(error_response(
                StatusCode::NOT_FOUND,
                "not_found",
                &format!("no component serves {path}"),
                request_id,
            ));
        }
        let client_ip = self.client_ip(&parts.headers, caller);
        if let (Some(rate), Some(ip)) = (policy.rate_limit.per_ip, client_ip) {
            let key = format!("{}/{index}/ip/{ip}", component.name);
            self.limit(&key, rate, &format!("client {ip}"), request_id)
                .await
                .inspect_err(|_| component.series.rate_limited.inc())?;
        }
        let token = bearer(&parts.headers);
        let identity = if policy.needs_token() {
            let identity = self.verify(token, request_id).await?;
            if !policy.roles.is_empty() && !policy.roles.iter().any(|r| identity.roles.contains(r))
            {
                tracing::info!(subject = %identity.subject, required = ?policy.roles, "role missing");
                auth_failure("role_missing");
                return Err(error_response(
                    StatusCode::FORBIDDEN,
                    "forbidden",
                    &format!(
                        "this route needs the role {}",
                        policy.roles.join(" or the role ")
                    ),
                    request_id,
                ));
            }
            Some(identity)
        } else {
            match (token, &self.verifier) {
                (Ok(Some(token)), Some(verifier)) => match verifier.verify_access(token).await {
                    Ok(identity) => Some(identity),
                    Err(err) => {
                        tracing::debug!(error = %err, "token on a public route ignored");
                        None
                    }
                },
                _ => None,
            }
        };
        if let (Some(rate), Some(identity)) = (policy.rate_limit.per_subject, &identity) {
            let key = format!("{}/{index}/sub/{}", component.name, identity.subject);
            self.limit(&key, rate, "this subject", request_id)
                .await
                .inspect_err(|_| component.series.rate_limited.inc())?;
        }
        if let Some(identity) = &identity {
            insert(&mut parts.headers, SUBJECT_HEADER, &identity.subject);
            insert(&mut parts.headers, ROLES_HEADER, &identity.roles.join(","));
            insert(&mut parts.headers, TOKEN_ID_HEADER, &identity.token_id);
        }
        if let Caller::Internal {
            component,
            parent_request_id,
            ..
        } = caller
        {
            insert(&mut parts.headers, CALLER_HEADER, component);
            if let Some(parent) = parent_request_id {
                insert(&mut parts.headers, PARENT_REQUEST_ID_HEADER, parent);
            }
        }
        insert(&mut parts.headers, REQUEST_ID_HEADER, request_id);
        Ok(Admitted {
            client_ip,
            identity,
        })
    }

    /// Verifies a required token: 401 for every reason but an unreachable store (503).
    async fn verify(
        &self,
        token: Result<Option<&str>, &'static str>,
        request_id: &str,
    ) -> Result<Identity, Response<ResponseBody>> {
        let unauthorized = |message: &str| {
            let mut response = error_response(
                StatusCode::UNAUTHORIZED,
                "unauthorized",
                message,
                request_id,
            );
            let challenge = format!(
                "Bearer error=\"invalid_token\", error_description=\"{}\"",
                message.replace(['"', '\\'], "'")
            );
            if let Ok(value) = HeaderValue::from_str(&challenge) {
                response
                    .headers_mut()
                    .insert(http::header::WWW_AUTHENTICATE, value);
            }
            response
        };
        let token = match token {
            Ok(Some(token)) => token,
            Ok(None) => {
                auth_failure("missing");
                let mut response = unauthorized("this route needs a bearer token");
                response.headers_mut().insert(
                    http::header::WWW_AUTHENTICATE,
                    HeaderValue::from_static("Bearer"),
                );
                return Err(response);
            }
            Err(message) => {
                auth_failure("bad_header");
                return Err(unauthorized(message));
            }
        };
        let Some(verifier) = &self.verifier else {
            auth_failure("no_keys");
            return Err(error_response(
                StatusCode::INTERNAL_SERVER_ERROR,
                "auth_not_configured",
                "this route needs a token but the host has no auth keys",
                request_id,
            ));
        };
        match verifier.verify_access(token).await {
            Ok(identity) => Ok(identity),
            Err(VerifyError::Unavailable(reason)) => {
                auth_failure("unavailable");
                tracing::warn!(%reason, "token revocation store unavailable");
                let mut response = error_response(
                    StatusCode::SERVICE_UNAVAILABLE,
                    "auth_unavailable",
                    "tokens cannot be checked right now; retry shortly",
                    request_id,
                );
                response
                    .headers_mut()
                    .insert(http::header::RETRY_AFTER, HeaderValue::from_static("1"));
                Err(response)
            }
            Err(err) => {
                auth_failure(verify_reason(&err));
                tracing::info!(reason = %err, "token refused");
                Err(unauthorized(&format!("invalid bearer token: {err}")))
            }
        }
    }

    /// Takes a token from bucket `key`; 429 when it is empty. An unreachable limiter lets the
    /// request through.
    async fn limit(
        &self,
        key: &str,
        rate: Rate,
        who: &str,
        request_id: &str,
    ) -> Result<(), Response<ResponseBody>> {
        match self.limiter.check(key, rate).await {
            Ok(Decision::Allowed { .. }) => Ok(()),
            Ok(Decision::Limited { retry_after }) => {
                let seconds = retry_after.as_secs() + u64::from(retry_after.subsec_nanos() > 0);
                let seconds = seconds.max(1);
                tracing::info!(bucket = %key, retry_after_s = seconds, "rate limited");
                let mut response = error_response(
                    StatusCode::TOO_MANY_REQUESTS,
                    "rate_limited",
                    &format!("too many requests from {who} (limit {rate}); retry in {seconds} s"),
                    request_id,
                );
                response
                    .headers_mut()
                    .insert(http::header::RETRY_AFTER, HeaderValue::from(seconds));
                Err(response)
            }
            Err(err) => {
                tracing::warn!(error = %err, bucket = %key, "rate limiter unavailable; request let through");
                Ok(())
            }
        }
    }

    /// The rate limiter's backend, for logs.
    pub fn limiter_kind(&self) -> &'static str {
        self.limiter.kind()
    }
}

/// The bearer token of `Authorization`, `None` without the header, an error when the header
/// is not `Bearer <token>`.
fn bearer(headers: &HeaderMap) -> Result<Option<&str>, &'static str> {
    let Some(value) = headers.get(http::header::AUTHORIZATION) else {
        return Ok(None);
    };
    let value = value
        .to_str()
        .map_err(|_| "the Authorization header is not text")?;
    let (scheme, token) = value
        .split_once(' ')
        .ok_or("the Authorization header is not `Bearer <token>`")?;
    if !scheme.eq_ignore_ascii_case("bearer") {
        return Err("the Authorization header is not `Bearer <token>`");
    }
    let token = token.trim();
    if token.is_empty() {
        return Err("the Authorization header holds an empty token");
    }
    Ok(Some(token))
}

fn strip_reserved(headers: &mut HeaderMap) {
    let reserved: Vec<HeaderName> = headers
        .keys()
        .filter(|name| name.as_str().starts_with(RESERVED_PREFIX))
        .cloned()
        .collect();
    for name in reserved {
        tracing::debug!(header = %name, "caller-sent reserved header removed");
        headers.remove(name);
    }
}

fn insert(headers: &mut HeaderMap, name: &'static str, value: &str) {
    // Subjects and roles are checked at issue time (no control characters), so this holds.
    if let Ok(value) = HeaderValue::from_str(value) {
        // A `&str` name would be copied into a new header name on every call.
        headers.insert(HeaderName::from_static(name), value);
    }
}

/// Counts a refused credential in `agora_auth_failures_total{reason}`.
fn auth_failure(reason: &'static str) {
    crate::metrics::metrics().auth_failures.with([reason]).inc();
}

/// The metrics' reason label of a token refusal (a short fixed list).
fn verify_reason(err: &VerifyError) -> &'static str {
    match err {
        VerifyError::Missing => "missing",
        VerifyError::Malformed(_) => "malformed",
        VerifyError::BadSignature => "bad_signature",
        VerifyError::Algorithm { .. } => "algorithm",
        VerifyError::Expired => "expired",
        VerifyError::NotYetValid => "not_yet_valid",
        VerifyError::WrongAudience => "wrong_audience",
        VerifyError::WrongIssuer => "wrong_issuer",
        VerifyError::WrongType { .. } => "wrong_type",
        VerifyError::Revoked => "revoked",
        VerifyError::Unavailable(_) => "unavailable",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bearer_tokens_are_read_strictly() {
        let mut headers = HeaderMap::new();
        assert_eq!(bearer(&headers), Ok(None));
        headers.insert("authorization", HeaderValue::from_static("Bearer abc"));
        assert_eq!(bearer(&headers), Ok(Some("abc")));
        headers.insert("authorization", HeaderValue::from_static("bearer  abc "));
        assert_eq!(bearer(&headers), Ok(Some("abc")));
        headers.insert("authorization", HeaderValue::from_static("Basic abc"));
        assert!(bearer(&headers).is_err());
        headers.insert("authorization", HeaderValue::from_static("Bearer "));
        assert!(bearer(&headers).is_err());
        headers.insert("authorization", HeaderValue::from_static("abc"));
        assert!(bearer(&headers).is_err());
    }

    #[test]
    fn reserved_headers_are_stripped_whatever_their_case() {
        let mut headers = HeaderMap::new();
        headers.insert("X-Agora-Subject", HeaderValue::from_static("admin"));
        headers.insert("x-agora-anything", HeaderValue::from_static("1"));
        headers.insert("x-agoraish", HeaderValue::from_static("kept"));
        strip_reserved(&mut headers);
        assert_eq!(headers.len(), 1);
        assert!(headers.contains_key("x-agoraish"));
    }

    #[test]
    fn the_client_ip_comes_from_the_trusted_hop() {
        let edge = |hops| {
            Edge::new(
                None,
                Arc::new(agora_ratelimit::MemoryRateLimiter::default()),
                hops,
            )
        };
        let peer: IpAddr = "10.0.0.9".parse().expect("ip");
        let caller = Caller::External { peer };
        let mut headers = HeaderMap::new();
        headers.insert(
            "x-forwarded-for",
            HeaderValue::from_static("6.6.6.6, 203.0.113.7"),
        );
        assert_eq!(edge(0).client_ip(&headers, &caller), Some(peer));
        assert_eq!(
            edge(1).client_ip(&headers, &caller),
            "203.0.113.7".parse().ok()
        );
        assert_eq!(edge(2).client_ip(&headers, &caller), "6.6.6.6".parse().ok());
        assert_eq!(edge(3).client_ip(&headers, &caller), Some(peer));
    }
}
