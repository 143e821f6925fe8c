//! One function per endpoint. Each returns the answer or an [`ApiError`], which `main`
//! renders with the request id.

use crate::input::{self, Fields, Role};
use crate::password::Hasher;
use crate::users::{self, InsertError, ProfileChange, User};
use agora_sdk::auth::{self, AuthError, Identity, TokenPair};
use agora_sdk::http::{self, ApiError, Body, Request, Response, StatusCode};
use agora_sdk::{config, log};
use serde::Serialize;

/// A finished answer, or the error to render.
pub type Answer = Result<Response<Body>, ApiError>;

/// The same answer for an unknown email, a wrong password and a deleted account, so that
/// sign-in does not tell which addresses have accounts.
fn invalid_credentials() -> ApiError {
    ApiError::new(
        StatusCode::UNAUTHORIZED,
        "invalid_credentials",
        "the email or the password is wrong",
    )
}

fn invalid_refresh_token(reason: &str) -> ApiError {
    ApiError::new(
        StatusCode::UNAUTHORIZED,
        "invalid_refresh_token",
        format!("the refresh token is not valid ({reason}); sign in again"),
    )
}

/// An auth capability failure that is not about the client's token.
fn auth_error(err: AuthError) -> ApiError {
    match err {
        AuthError::Unavailable(message) => ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "auth_unavailable",
            format!("sessions are unavailable, retry later: {message}"),
        ),
        other => ApiError::internal(format!("auth: {other}")),
    }
}

/// A refresh or logout failure: a rejected or malformed token is the client's (401).
fn refresh_error(err: AuthError) -> ApiError {
    match err {
        AuthError::Rejected(reason) | AuthError::Invalid(reason) => invalid_refresh_token(&reason),
        other => auth_error(other),
    }
}

/// `{user, access_token, refresh_token, token_type, expires_in, refresh_expires_in}`.
#[derive(Serialize)]
struct Session {
    user: serde_json::Value,
    #[serde(flatten)]
    tokens: TokenPair,
}

/// A new session for `user`, as the answer of a registration or a sign-in.
fn session(status: StatusCode, user: &User) -> Answer {
    let tokens = auth::issue(&user.id, user.role.token_roles()).map_err(auth_error)?;
    Ok(http::json(
        status,
        &Session {
            user: user.to_json(),
            tokens,
        },
    ))
}

/// The verified caller; the host already refused requests without a valid token on these
/// routes, so a missing identity means the manifest lacks the policy.
fn identity(request: &Request<Body>) -> Result<Identity, ApiError> {
    Identity::from_headers(request.headers()).ok_or_else(|| {
        ApiError::unauthorized("sign in first: this route needs a bearer access token")
    })
}

/// The caller's live account (404 when it was deleted or never existed).
fn me(request: &Request<Body>) -> Result<User, ApiError> {
    let identity = identity(request)?;
    users::live_by_id(&identity.subject)
        .map_err(ApiError::from)?
        .ok_or_else(|| ApiError::not_found("this account does not exist (any more)"))
}

/// `POST /api/accounts/register` `{email, password, name, phone?}` → 201 a session.
pub async fn register(request: &mut Request<Body>) -> Answer {
    let fields = Fields::read(request).await?;
    let email = input::email("email", &fields.string("email")?)?;
    let password = fields.string("password")?;
    input::password("password", &password)?;
    let name = input::name("name", &fields.string("name")?)?;
    let phone = fields
        .optional_string("phone")?
        .flatten()
        .map(|phone| input::phone("phone", &phone))
        .transpose()?;
    let hasher = Hasher::from_config()?;
    // Checked before hashing to spare the work; the unique index decides under a race.
    if users::email_taken(&email).map_err(ApiError::from)? {
        return Err(email_taken());
    }
    let user = User::new(email, name, phone, Role::User);
    match users::insert(&user, &hasher.hash(&password)?) {
        Ok(()) => {}
        Err(InsertError::EmailTaken) => return Err(email_taken()),
        Err(InsertError::Sql(err)) => return Err(ApiError::from(err)),
    }
    log::info("register", &format!("account {} registered", user.id));
    session(StatusCode::CREATED, &user)
}

fn email_taken() -> ApiError {
    ApiError::new(
        StatusCode::CONFLICT,
        "email_taken",
        "an account with this email already exists",
    )
}

/// `POST /api/accounts/login` `{email, password}` → 200 a session, or 401
/// `invalid_credentials`.
pub async fn login(request: &mut Request<Body>) -> Answer {
    let fields = Fields::read(request).await?;
    let email = fields.string("email")?.trim().to_lowercase();
    let password = fields.string("password")?;
    let hasher = Hasher::from_config()?;
    let Some((user, stored)) = users::live_by_email(&email).map_err(ApiError::from)? else {
        hasher.verify_nothing(&password);
        return Err(invalid_credentials());
    };
    if !hasher.verify(&password, &stored) {
        return Err(invalid_credentials());
    }
    if !hasher.is_current(&stored) {
        // The cost changed since this hash was made: store one at today's cost. A failure
        // here must not fail the sign-in.
        let rehashed = hasher
            .hash(&password)
            .and_then(|hash| users::set_password_hash(&user.id, &hash).map_err(ApiError::from));
        if let Err(err) = rehashed {
            log::warn(
                "login",
                &format!("password of {} not rehashed: {err}", user.id),
            );
        }
    }
    session(StatusCode::OK, &user)
}

/// `POST /api/accounts/refresh` `{refresh_token}` → 200 the new pair (the old refresh token is
/// used up; using it again ends the session).
pub async fn refresh(request: &mut Request<Body>) -> Answer {
    let fields = Fields::read(request).await?;
    let token = fields.string("refresh_token")?;
    let pair = auth::refresh(&token).map_err(refresh_error)?;
    Ok(http::json(StatusCode::OK, &pair))
}

/// `POST /api/accounts/logout` `{refresh_token}` → 204; the session's access tokens stop
/// working too.
pub async fn logout(request: &mut Request<Body>) -> Answer {
    let fields = Fields::read(request).await?;
    let token = fields.string("refresh_token")?;
    auth::revoke(&token).map_err(refresh_error)?;
    Ok(agora_sdk::http::no_content())
}

/// `GET /api/accounts/me` → the caller's account.
pub fn get_me(request: &Request<Body>) -> Answer {
    Ok(http::json(StatusCode::OK, &me(request)?.to_json()))
}

/// `PATCH /api/accounts/me` `{name?, phone?}` → 200 the account; absent fields stay,
/// `"phone": null` clears the phone number.
pub async fn patch_me(request: &mut Request<Body>) -> Answer {
    let identity = identity(request)?;
    let fields = Fields::read(request).await?;
    fields.only(&["name", "phone"])?;
    let name = match fields.optional_string("name")? {
        None => None,
        Some(None) => return Err(ApiError::validation("name", "name must not be null")),
        Some(Some(name)) => Some(input::name("name", &name)?),
    };
    let phone = match fields.optional_string("phone")? {
        None => None,
        Some(None) => Some(None),
        Some(Some(phone)) => Some(Some(input::phone("phone", &phone)?)),
    };
    let user = users::update_profile(&identity.subject, ProfileChange { name, phone })
        .map_err(ApiError::from)?
        .ok_or_else(|| ApiError::not_found("this account does not exist (any more)"))?;
    Ok(http::json(StatusCode::OK, &user.to_json()))
}

/// `POST /api/accounts/me/password` `{old_password, new_password}` → 204; every session of
/// the account ends (sign in again with the new password).
pub async fn change_password(request: &mut Request<Body>) -> Answer {
    let identity = identity(request)?;
    let fields = Fields::read(request).await?;
    let old = fields.string("old_password")?;
    let new = fields.string("new_password")?;
    input::password("new_password", &new)?;
    let hasher = Hasher::from_config()?;
    let stored = users::password_hash(&identity.subject)
        .map_err(ApiError::from)?
        .ok_or_else(|| ApiError::not_found("this account does not exist (any more)"))?;
    if !hasher.verify(&old, &stored) {
        return Err(invalid_credentials());
    }
    if !users::set_password_hash(&identity.subject, &hasher.hash(&new)?).map_err(ApiError::from)? {
        return Err(ApiError::not_found(
            "this account does not exist (any more)",
        ));
    }
    // After the write: a retry (with the new password as the old one) revokes again.
    auth::revoke_subject(&identity.subject).map_err(auth_error)?;
    log::info(
        "password",
        &format!("password of {} changed", identity.subject),
    );
    Ok(agora_sdk::http::no_content())
}

/// `DELETE /api/accounts/me` → 204: the account is soft-deleted and every session ends.
pub fn delete_me(request: &Request<Body>) -> Answer {
    let identity = identity(request)?;
    let deleted = users::soft_delete(&identity.subject).map_err(ApiError::from)?;
    // Also when it was already deleted: a retry after a failed revocation finishes the job.
    auth::revoke_subject(&identity.subject).map_err(auth_error)?;
    if !deleted {
        return Err(ApiError::not_found(
            "this account does not exist (any more)",
        ));
    }
    log::info("delete", &format!("account {} deleted", identity.subject));
    Ok(agora_sdk::http::no_content())
}

/// Refuses a caller without the ADMIN role. The host's policy already does; this keeps the
/// component safe under a manifest that forgot it.
fn require_admin(request: &Request<Body>) -> Result<Identity, ApiError> {
    let identity = identity(request)?;
    if !identity.has_role(Role::Admin.as_str()) {
        return Err(ApiError::forbidden("this route is for administrators"));
    }
    Ok(identity)
}

/// `GET /api/accounts?page=&page_size=` (ADMIN) → every account, newest first, deleted ones
/// included with their `deleted_at`.
pub fn list(request: &Request<Body>) -> Answer {
    require_admin(request)?;
    let page = http::Page::from_request(request)?;
    let (users, total) =
        users::page(i64::from(page.page_size), page.offset()).map_err(ApiError::from)?;
    let items: Vec<serde_json::Value> = users.iter().map(User::to_admin_json).collect();
    Ok(http::json(StatusCode::OK, &page.list(&items, total)))
}

/// `PUT /api/accounts/{id}/role` `{role}` (ADMIN) → 200 the account. Its sessions end, so
/// the new role is in its tokens from its next sign-in.
pub async fn set_role(request: &mut Request<Body>, id: &str) -> Answer {
    let admin = require_admin(request)?;
    let fields = Fields::read(request).await?;
    let role = fields.string("role")?;
    let role = Role::parse(&role)
        .ok_or_else(|| ApiError::validation("role", "role must be USER or ADMIN"))?;
    let user = users::set_role(id, role)
        .map_err(ApiError::from)?
        .ok_or_else(|| ApiError::not_found(format!("no account {id}")))?;
    auth::revoke_subject(&user.id).map_err(auth_error)?;
    log::info(
        "role",
        &format!(
            "{} set the role of {} to {}",
            admin.subject,
            user.id,
            role.as_str()
        ),
    );
    Ok(http::json(StatusCode::OK, &user.to_json()))
}

/// `POST /api/accounts/internal/bootstrap`, sent by the host at start (the manifest's
/// `startup`): with the configuration's `admin_email` and `admin_password`, creates that
/// account as an ADMIN when no live account has the address. An existing account is never
/// touched — not promoted, its password kept: whoever registered the address before the
/// operator set it must not become an admin by it (a warning says so; an admin promotes it
/// with `PUT /api/accounts/{id}/role` if that is meant). Without the settings it does nothing.
/// A bad or half-given configuration answers 500, which stops the host's start.
pub fn bootstrap(request: &Request<Body>) -> Answer {
    if auth::caller(request.headers()).is_none() {
        // Only the host (or another component) reaches internal routes; the policy makes
        // this route invisible from outside, and this keeps it so without one.
        return Err(ApiError::not_found("no such route"));
    }
    let setting = |key: &str| {
        config::get(key)
            .map(|value| value.filter(|v| !v.trim().is_empty()))
            .map_err(|err| bootstrap_error(&err.to_string()))
    };
    let (email, password) = match (setting("admin_email")?, setting("admin_password")?) {
        (None, None) => return Ok(agora_sdk::http::no_content()),
        (Some(email), Some(password)) => (email, password),
        (Some(_), None) => {
            return Err(bootstrap_error(
                "admin_email is set but admin_password is not",
            ));
        }
        (None, Some(_)) => {
            return Err(bootstrap_error(
                "admin_password is set but admin_email is not",
            ));
        }
    };
    let email = input::email("admin_email", &email).map_err(|err| bootstrap_error(&err.message))?;
    input::password("admin_password", &password).map_err(|err| bootstrap_error(&err.message))?;
    let name = setting("admin_name")?.unwrap_or_else(|| "Administrator".to_owned());
    let name = input::name("admin_name", &name).map_err(|err| bootstrap_error(&err.message))?;
    let hasher = Hasher::from_config()?;
    // Twice at most: a replica starting at the same time may insert it between our read and
    // our insert, and then it exists.
    for _ in 0..2 {
        if let Some((user, _)) = users::live_by_email(&email).map_err(ApiError::from)? {
            if user.role != Role::Admin {
                log::warn(
                    "bootstrap",
                    &format!(
                        "account {} already holds admin_email and is not an ADMIN: left as it is \
                         (an admin can promote it with PUT /api/accounts/{}/role)",
                        user.id, user.id
                    ),
                );
            }
            return Ok(agora_sdk::http::no_content());
        }
        let user = User::new(email.clone(), name.clone(), None, Role::Admin);
        match users::insert(&user, &hasher.hash(&password)?) {
            Ok(()) => {
                log::info("bootstrap", &format!("admin account {} created", user.id));
                return Ok(agora_sdk::http::no_content());
            }
            Err(InsertError::EmailTaken) => continue,
            Err(InsertError::Sql(err)) => return Err(ApiError::from(err)),
        }
    }
    Err(bootstrap_error(
        "the admin account kept changing; try again",
    ))
}

fn bootstrap_error(reason: &str) -> ApiError {
    ApiError::new(
        StatusCode::INTERNAL_SERVER_ERROR,
        "invalid_configuration",
        format!("cannot create the first admin account: {reason}"),
    )
}
