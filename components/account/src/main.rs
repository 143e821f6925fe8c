//! The shop's accounts: registration, sign-in, sessions, profiles and roles.
//!
//! Passwords are hashed with argon2id (see `password.rs`); sessions are tokens the host issues
//! and checks (`agora_sdk::auth`), so this component never sees a signing key, and it learns
//! who calls from the identity headers the host writes after verifying the access token.
//! Every answer is JSON; every error is `{"error": {"code", "message", "request_id"}}` (plus
//! `field` for `validation_failed`).
//!
//! | route | who | answer |
//! |---|---|---|
//! | `POST /api/accounts/register` `{email, password, name, phone?}` | anyone | 201 `{user, access_token, refresh_token, token_type, expires_in, refresh_expires_in}`; 409 `email_taken`; 400 `validation_failed` |
//! | `POST /api/accounts/login` `{email, password}` | anyone | 200 as above; 401 `invalid_credentials` (unknown email, wrong password, deleted account alike) |
//! | `POST /api/accounts/refresh` `{refresh_token}` | anyone | 200 the new token pair; 401 `invalid_refresh_token` (a reused one also ends its session) |
//! | `POST /api/accounts/logout` `{refresh_token}` | anyone | 204; 401 `invalid_refresh_token` |
//! | `GET /api/accounts/me` | signed in | 200 the user; 404 once deleted |
//! | `PATCH /api/accounts/me` `{name?, phone?}` | signed in | 200 the user; only given fields change, `"phone": null` clears it |
//! | `POST /api/accounts/me/password` `{old_password, new_password}` | signed in | 204, every session ends; 401 `invalid_credentials` |
//! | `DELETE /api/accounts/me` | signed in | 204: soft delete (`deleted_at`), every session ends |
//! | `GET /api/accounts?page=&page_size=` | ADMIN | 200 `{items, total, page, page_size}`, newest first, deleted accounts included with `deleted_at` |
//! | `PUT /api/accounts/{id}/role` `{role: "USER" \| "ADMIN"}` | ADMIN | 200 the user, whose sessions end (the role applies from its next sign-in); 404 unknown id |
//! | `POST /api/accounts/internal/bootstrap` | the host, at start | 204; creates or promotes the first admin from `admin_email` / `admin_password` |
//!
//! A user is `{id, email, name, phone, role, created_at, updated_at}` (RFC 3339 UTC). Emails
//! are stored trimmed and lowercased, so they are unique regardless of case; a deleted
//! account's email may register again. Tokens carry `["USER"]`, or `["USER", "ADMIN"]` for an
//! admin. A registration publishes `account.registered` (version 1, data
//! `{user_id, email, name}`) through the outbox, in the transaction of the insert.
//!
//! The manifest (paths relative to the repository's root):
//!
//! ```toml
//! [[component]]
//! name = "account"
//! source = "target/components/account.wasm"
//! routes = ["/api/accounts", "/api/accounts/..."]
//! migrations = "components/account/migrations"
//! startup = "/api/accounts/internal/bootstrap"
//! grants = { sql = true, auth = true, publish = ["account.registered"] }
//!
//! [component.config]               # optional: argon2id cost (default 19456 KiB, 2 iterations)
//! # argon2_memory_kib = "19456"
//! # argon2_iterations = "2"
//!
//! [component.config_env]           # the first admin; without both, none is created
//! admin_email = { env = "AGORA_ADMIN_EMAIL", optional = true }
//! admin_password = { env = "AGORA_ADMIN_PASSWORD", optional = true }
//!
//! [[component.policy]]             # register, login, refresh, logout: public (no policy)
//! routes = ["/api/accounts/me/..."]  # also /api/accounts/me itself
//! access = "authenticated"
//!
//! [[component.policy]]
//! routes = ["/api/accounts"]
//! methods = ["GET"]
//! roles = ["ADMIN"]
//!
//! [[component.policy]]
//! routes = ["/api/accounts/*/role"]
//! methods = ["PUT"]
//! roles = ["ADMIN"]
//!
//! [[component.policy]]
//! routes = ["/api/accounts/internal/..."]
//! access = "internal"
//! ```
//!
//! Give the login and registration routes a per-IP `rate_limit` in production; the admin's
//! name can be set with `admin_name` (default `Administrator`).

mod handlers;
mod input;
mod password;
mod users;

use agora_sdk::http::{self, ApiError, Body, Error, Method, Request, Response, StatusCode};

#[wstd::http_server]
async fn main(mut request: Request<Body>) -> Result<Response<Body>, Error> {
    let request_id = http::request_id(&request).to_owned();
    let answer = route(&mut request).await;
    Ok(answer.unwrap_or_else(|error| error.into_response(&request_id)))
}

/// Dispatches on the path below `/api/accounts`.
async fn route(request: &mut Request<Body>) -> handlers::Answer {
    let path = request.uri().path().to_owned();
    let segments: Vec<&str> = path.split('/').filter(|s| !s.is_empty()).collect();
    let Some(rest) = segments.strip_prefix(&["api", "accounts"]) else {
        return Err(ApiError::not_found(format!("no route {path}")));
    };
    let method = request.method().clone();
    let allowed: &[Method] = match rest {
        [] => &[Method::GET],
        ["register" | "login" | "refresh" | "logout"] => &[Method::POST],
        ["me"] => &[Method::GET, Method::PATCH, Method::DELETE],
        ["me", "password"] => &[Method::POST],
        ["internal", "bootstrap"] => &[Method::POST],
        [_, "role"] => &[Method::PUT],
        _ => return Err(ApiError::not_found(format!("no route {path}"))),
    };
    if !allowed.contains(&method) {
        let names: Vec<&str> = allowed.iter().map(Method::as_str).collect();
        return Err(ApiError::new(
            StatusCode::METHOD_NOT_ALLOWED,
            "method_not_allowed",
            format!("{path} answers {}", names.join(", ")),
        ));
    }
    match (method, rest) {
        (_, []) => handlers::list(request),
        (_, ["register"]) => handlers::register(request).await,
        (_, ["login"]) => handlers::login(request).await,
        (_, ["refresh"]) => handlers::refresh(request).await,
        (_, ["logout"]) => handlers::logout(request).await,
        (Method::GET, ["me"]) => handlers::get_me(request),
        (Method::PATCH, ["me"]) => handlers::patch_me(request).await,
        (_, ["me"]) => handlers::delete_me(request),
        (_, ["me", "password"]) => handlers::change_password(request).await,
        (_, ["internal", "bootstrap"]) => handlers::bootstrap(request),
        (_, [id, "role"]) => {
            let id = (*id).to_owned();
            handlers::set_role(request, &id).await
        }
        _ => Err(ApiError::not_found(format!("no route {path}"))),
    }
}
