//! Session tokens (`agora:platform/auth`) and the caller's verified identity.
//!
//! Issuing, refreshing and revoking tokens needs `grants = { auth = true }`. The host keeps the
//! signing key: a component asks it to [`issue`] a [`TokenPair`] for a user it has
//! authenticated by its own means, and clients then send `Authorization: Bearer <access>`.
//!
//! The host verifies access tokens itself. On every request it routes to a component it first
//! removes each client-sent header starting with `x-agora-`, then, when the request carried a
//! valid access token (on public routes too), adds the verified identity:
//!
//! | header                | value                                                     |
//! |-----------------------|-----------------------------------------------------------|
//! | [`SUBJECT_HEADER`]    | the verified subject                                      |
//! | [`ROLES_HEADER`]      | the roles, comma-separated (empty string for none)        |
//! | [`TOKEN_ID_HEADER`]   | the access token's id (its `jti`)                         |
//! | [`CALLER_HEADER`]     | internal calls only: the name of the calling component    |
//!
//! [`Identity::from_headers`] and [`caller`] read them back:
//!
//! ```ignore
//! use agora_sdk::auth::{self, Identity};
//! let Some(identity) = Identity::from_headers(request.headers()) else {
//!     return Ok(http::error(StatusCode::UNAUTHORIZED, "unauthenticated", "sign in first"));
//! };
//! if !identity.has_role("ADMIN") { /* 403 */ }
//!
//! let pair = auth::issue(&user_id, &["USER"])?;
//! Ok(http::json(StatusCode::OK, &pair)) // {"access_token", …, "token_type": "Bearer", …}
//! ```

use crate::bindings::agora::platform::auth as wit;
use serde::Serialize;
use std::fmt;
use std::time::Duration;
use wstd::http::HeaderMap;

/// The prefix of every header the host injects; the host drops client-sent headers with it.
pub const HEADER_PREFIX: &str = "x-agora-";
/// The verified subject of the request's access token.
pub const SUBJECT_HEADER: &str = "x-agora-subject";
/// The access token's roles, comma-separated; an empty value means no roles.
pub const ROLES_HEADER: &str = "x-agora-roles";
/// The access token's id (its `jti` claim).
pub const TOKEN_ID_HEADER: &str = "x-agora-token-id";
/// On internal calls only: the name of the component that made the call.
pub const CALLER_HEADER: &str = "x-agora-caller";

/// Why an auth call failed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AuthError {
    /// Unacceptable arguments (empty or over-long subject, too many roles, an empty or
    /// over-long role, control characters, a comma or space in a role); the message says which.
    Invalid(String),
    /// The refresh token is not acceptable (malformed, foreign, expired, revoked or reused);
    /// a client should sign in again. The message says why.
    Rejected(String),
    /// The revocation store is down or slow; nothing was issued. Retry later.
    Unavailable(String),
    /// The manifest grants this component no auth.
    Denied,
}

impl fmt::Display for AuthError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            AuthError::Invalid(m) => write!(f, "invalid auth call: {m}"),
            AuthError::Rejected(m) => write!(f, "refresh token rejected: {m}"),
            AuthError::Unavailable(m) => write!(f, "auth unavailable: {m}"),
            AuthError::Denied => f.write_str("this component has no auth grant"),
        }
    }
}

impl std::error::Error for AuthError {}

impl From<wit::Error> for AuthError {
    fn from(err: wit::Error) -> Self {
        match err {
            wit::Error::Invalid(m) => AuthError::Invalid(m),
            wit::Error::Rejected(m) => AuthError::Rejected(m),
            wit::Error::Unavailable(m) => AuthError::Unavailable(m),
            wit::Error::Denied => AuthError::Denied,
        }
    }
}

/// A freshly issued access token and refresh token.
///
/// Serializes as an OAuth 2.0 style token answer, so a component can return it as is:
/// `{"access_token", "refresh_token", "token_type": "Bearer", "expires_in": <access seconds>,
/// "refresh_expires_in": <refresh seconds>}`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TokenPair {
    /// Sent by clients as `Authorization: Bearer <access_token>`; verified by the host.
    pub access_token: String,
    /// Kept by the client and given back (once) to [`refresh`], or to [`revoke`] on logout.
    pub refresh_token: String,
    /// How long until the access token expires.
    pub access_expires_in: Duration,
    /// How long until the refresh token expires (unless used or revoked first).
    pub refresh_expires_in: Duration,
}

impl Serialize for TokenPair {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        #[derive(Serialize)]
        struct Answer<'a> {
            access_token: &'a str,
            refresh_token: &'a str,
            token_type: &'static str,
            expires_in: u64,
            refresh_expires_in: u64,
        }
        Answer {
            access_token: &self.access_token,
            refresh_token: &self.refresh_token,
            token_type: "Bearer",
            expires_in: self.access_expires_in.as_secs(),
            refresh_expires_in: self.refresh_expires_in.as_secs(),
        }
        .serialize(serializer)
    }
}

impl From<wit::TokenPair> for TokenPair {
    fn from(pair: wit::TokenPair) -> Self {
        TokenPair {
            access_token: pair.access_token,
            refresh_token: pair.refresh_token,
            access_expires_in: Duration::from_secs(pair.access_expires_in_s),
            refresh_expires_in: Duration::from_secs(pair.refresh_expires_in_s),
        }
    }
}

/// Starts a new session for `subject` (a stable user id) with `roles` (`&["USER"]`, or a
/// `&[String]`), which come back in every verified [`Identity`] of its requests.
pub fn issue<R: AsRef<str>>(subject: &str, roles: &[R]) -> Result<TokenPair, AuthError> {
    let roles: Vec<String> = roles.iter().map(|role| role.as_ref().to_owned()).collect();
    Ok(wit::issue(subject, &roles)?.into())
}

/// Rotates a session: consumes `refresh_token` and returns a new pair for the same subject,
/// roles and session. Using a refresh token a second time revokes its whole session.
pub fn refresh(refresh_token: &str) -> Result<TokenPair, AuthError> {
    Ok(wit::refresh(refresh_token)?.into())
}

/// Logout: revokes the session `refresh_token` belongs to (its refresh and access tokens).
/// An expired refresh token is accepted, and revoking twice succeeds.
pub fn revoke(refresh_token: &str) -> Result<(), AuthError> {
    Ok(wit::revoke(refresh_token)?)
}

/// Revokes every current session of `subject` (for example after a password change).
pub fn revoke_subject(subject: &str) -> Result<(), AuthError> {
    Ok(wit::revoke_subject(subject)?)
}

/// Who sent a request, as verified by the host from its access token.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Identity {
    /// The subject the token was issued for.
    pub subject: String,
    /// The token's roles, in order; empty when it has none.
    pub roles: Vec<String>,
    /// The access token's id (its `jti`), for example for audit logs.
    pub token_id: String,
}

impl Identity {
    /// The identity the host injected into `headers`, or `None` when the request carried no
    /// valid access token (no [`SUBJECT_HEADER`], or an empty one).
    ///
    /// Values are trimmed; roles are split on commas and empty pieces dropped. A missing
    /// [`ROLES_HEADER`] means no roles and a missing [`TOKEN_ID_HEADER`] an empty `token_id`
    /// (the host always sends both).
    pub fn from_headers(headers: &HeaderMap) -> Option<Identity> {
        let subject = header(headers, SUBJECT_HEADER)?;
        let roles = header(headers, ROLES_HEADER)
            .map(|roles| {
                roles
                    .split(',')
                    .map(str::trim)
                    .filter(|role| !role.is_empty())
                    .map(str::to_owned)
                    .collect()
            })
            .unwrap_or_default();
        let token_id = header(headers, TOKEN_ID_HEADER).unwrap_or_default();
        Some(Identity {
            subject,
            roles,
            token_id,
        })
    }

    /// True if the token carries `role` (compared exactly, case-sensitive).
    pub fn has_role(&self, role: &str) -> bool {
        self.roles.iter().any(|r| r == role)
    }
}

/// On an internal call (one component calling another through the host), the name of the
/// calling component; `None` on requests from outside.
pub fn caller(headers: &HeaderMap) -> Option<String> {
    header(headers, CALLER_HEADER)
}

/// The trimmed value of header `name`, if present, UTF-8 and not empty.
fn header(headers: &HeaderMap, name: &str) -> Option<String> {
    let value = std::str::from_utf8(headers.get(name)?.as_bytes())
        .ok()?
        .trim();
    (!value.is_empty()).then(|| value.to_owned())
}

#[cfg(test)]
mod tests {
    use super::*;
    use wstd::http::{HeaderName, HeaderValue};

    fn headers(pairs: &[(&'static str, &str)]) -> HeaderMap {
        let mut map = HeaderMap::new();
        for (name, value) in pairs {
            map.append(*name, HeaderValue::from_str(value).expect("a valid value"));
        }
        map
    }

    #[test]
    fn identity_reads_the_injected_headers() {
        let map = headers(&[
            (SUBJECT_HEADER, "user-42"),
            (ROLES_HEADER, "USER,ADMIN"),
            (TOKEN_ID_HEADER, "jti-1"),
        ]);
        let identity = Identity::from_headers(&map).expect("an identity");
        assert_eq!(
            identity,
            Identity {
                subject: "user-42".into(),
                roles: vec!["USER".into(), "ADMIN".into()],
                token_id: "jti-1".into(),
            }
        );
        assert!(identity.has_role("ADMIN"));
        assert!(!identity.has_role("admin"));
        assert!(!identity.has_role(""));
        assert_eq!(caller(&map), None);
    }

    #[test]
    fn empty_or_missing_roles_are_no_roles() {
        for map in [
            headers(&[
                (SUBJECT_HEADER, "u"),
                (ROLES_HEADER, ""),
                (TOKEN_ID_HEADER, "t"),
            ]),
            headers(&[(SUBJECT_HEADER, "u"), (TOKEN_ID_HEADER, "t")]),
            headers(&[
                (SUBJECT_HEADER, "u"),
                (ROLES_HEADER, " , ,"),
                (TOKEN_ID_HEADER, "t"),
            ]),
        ] {
            let identity = Identity::from_headers(&map).expect("an identity");
            assert_eq!(identity.roles, Vec::<String>::new());
            assert!(!identity.has_role("USER"));
        }
    }

    #[test]
    fn values_are_trimmed() {
        let map = headers(&[
            (SUBJECT_HEADER, "  user-42 "),
            (ROLES_HEADER, " USER , ADMIN ,"),
            (TOKEN_ID_HEADER, " jti-1 "),
            (CALLER_HEADER, " account "),
        ]);
        let identity = Identity::from_headers(&map).expect("an identity");
        assert_eq!(identity.subject, "user-42");
        assert_eq!(identity.roles, ["USER", "ADMIN"]);
        assert_eq!(identity.token_id, "jti-1");
        assert_eq!(caller(&map).as_deref(), Some("account"));
    }

    #[test]
    fn no_subject_is_no_identity() {
        let map = headers(&[(ROLES_HEADER, "USER"), (TOKEN_ID_HEADER, "t")]);
        assert_eq!(Identity::from_headers(&map), None);
        let map = headers(&[(SUBJECT_HEADER, "  "), (TOKEN_ID_HEADER, "t")]);
        assert_eq!(Identity::from_headers(&map), None);
        assert_eq!(Identity::from_headers(&HeaderMap::new()), None);
        assert_eq!(caller(&headers(&[(CALLER_HEADER, "")])), None);
    }

    #[test]
    fn header_names_match_case_insensitively() {
        let mut map = HeaderMap::new();
        let name = HeaderName::from_bytes(b"X-Agora-Subject").expect("a valid name");
        map.insert(name, HeaderValue::from_static("u"));
        assert_eq!(
            Identity::from_headers(&map).map(|identity| identity.subject),
            Some("u".into())
        );
    }

    #[test]
    fn utf8_subjects_are_read() {
        let mut map = HeaderMap::new();
        map.insert(
            SUBJECT_HEADER,
            HeaderValue::from_bytes("jürgen".as_bytes()).expect("a valid value"),
        );
        assert_eq!(
            Identity::from_headers(&map).map(|identity| identity.subject),
            Some("jürgen".into())
        );
    }

    #[test]
    fn token_pairs_serialize_as_a_token_answer() {
        let pair = TokenPair {
            access_token: "a".into(),
            refresh_token: "r".into(),
            access_expires_in: Duration::from_secs(900),
            refresh_expires_in: Duration::from_secs(2_592_000),
        };
        assert_eq!(
            serde_json::to_value(&pair).expect("encodes"),
            serde_json::json!({
                "access_token": "a",
                "refresh_token": "r",
                "token_type": "Bearer",
                "expires_in": 900,
                "refresh_expires_in": 2_592_000,
            })
        );
    }
}
