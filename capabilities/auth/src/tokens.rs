//! Token claims, issuing with rotation ([`Authority`]) and verification ([`Verifier`]).

use crate::keys::{KeyError, Keys};
use crate::store::{RevocationStore, StoreError, UseOutcome};
use base64::Engine as _;
use jsonwebtoken::errors::ErrorKind;
use jsonwebtoken::{Header, Validation};
use serde::{Deserialize, Serialize};
use std::sync::Arc;
use std::time::Duration;

/// Longest subject accepted, in bytes.
pub const MAX_SUBJECT_BYTES: usize = 256;
/// Most roles one token may carry.
pub const MAX_ROLES: usize = 32;
/// Longest role accepted, in bytes.
pub const MAX_ROLE_BYTES: usize = 64;

/// What tokens say about who issued them and for whom, and how long they live.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AuthConfig {
    /// The `iss` claim written and required.
    pub issuer: String,
    /// The `aud` claim written and required.
    pub audience: String,
    /// Lifetime of an access token (default 15 minutes).
    pub access_ttl: Duration,
    /// Lifetime of a refresh token (default 7 days); each rotation starts a new one.
    pub refresh_ttl: Duration,
    /// Clock skew tolerated between replicas when checking `exp` and `nbf` (default 30 s).
    pub leeway: Duration,
}

impl AuthConfig {
    /// A configuration with the default lifetimes.
    pub fn new(issuer: impl Into<String>, audience: impl Into<String>) -> AuthConfig {
        AuthConfig {
            issuer: issuer.into(),
            audience: audience.into(),
            access_ttl: Duration::from_secs(15 * 60),
            refresh_ttl: Duration::from_secs(7 * 24 * 3600),
            leeway: Duration::from_secs(30),
        }
    }

    /// How long a revocation mark must live to outlast every token of its family: no token
    /// of a revoked family is issued after the mark, and none lives longer than this.
    fn revocation_ttl(&self) -> Duration {
        self.access_ttl.max(self.refresh_ttl) + self.leeway + Duration::from_secs(1)
    }
}

impl Default for AuthConfig {
    /// Issuer and audience `agora`.
    fn default() -> Self {
        AuthConfig::new("agora", "agora")
    }
}

/// Whether a token is an access or a refresh token.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum TokenType {
    /// Presented on requests; short-lived.
    Access,
    /// Presented only to `refresh` and `revoke`; single use.
    Refresh,
}

impl std::fmt::Display for TokenType {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            TokenType::Access => "access",
            TokenType::Refresh => "refresh",
        })
    }
}

/// The claims of every token this crate issues.
///
/// Both kinds carry `fam`, the session (refresh family) they were issued in: a refresh token
/// needs it for rotation, and an access token carries it so that logout and `revoke-subject`
/// end the access tokens of the session too, instead of letting them run out their 15 minutes.
/// The price is one store lookup per verified request.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Claims {
    /// The subject (user id).
    pub sub: String,
    /// The roles granted at issue time.
    pub roles: Vec<String>,
    /// Issuer.
    pub iss: String,
    /// Audience.
    pub aud: String,
    /// Issued at (seconds since the Unix epoch).
    pub iat: u64,
    /// Not before (seconds since the Unix epoch).
    pub nbf: u64,
    /// Expiry (seconds since the Unix epoch).
    pub exp: u64,
    /// Unique token id.
    pub jti: String,
    /// Access or refresh.
    pub typ: TokenType,
    /// The session (refresh family) id.
    pub fam: String,
}

/// The verified identity behind an access token.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Identity {
    /// The subject (user id).
    pub subject: String,
    /// Its roles.
    pub roles: Vec<String>,
    /// The token's `jti`.
    pub token_id: String,
}

/// Why a token was not accepted. The host answers 401 for all but `Unavailable`.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum VerifyError {
    /// No token was given.
    #[error("no token")]
    Missing,
    /// Not a JWT, or its claims are not ours.
    #[error("malformed token: {0}")]
    Malformed(String),
    /// The signature does not verify with this host's key (tampered, or another key).
    #[error("bad token signature")]
    BadSignature,
    /// The header names an algorithm other than the configured one (including `none`).
    #[error("token algorithm {found:?} is not accepted")]
    Algorithm {
        /// The `alg` of the header.
        found: String,
    },
    /// Past its `exp`.
    #[error("token expired")]
    Expired,
    /// Before its `nbf`.
    #[error("token not yet valid")]
    NotYetValid,
    /// Issued for another audience.
    #[error("token issued for another audience")]
    WrongAudience,
    /// Issued by another issuer.
    #[error("token issued by another issuer")]
    WrongIssuer,
    /// An access token where a refresh token was expected, or the reverse.
    #[error("a {found} token where a {expected} token was expected")]
    WrongType {
        /// What was asked for.
        expected: TokenType,
        /// What the token is.
        found: TokenType,
    },
    /// Its session was revoked (logout, revoke-subject, refresh-token reuse).
    #[error("token revoked")]
    Revoked,
    /// The revocation store could not be asked; the token is not accepted.
    #[error("cannot check revocation: {0}")]
    Unavailable(String),
}

impl From<StoreError> for VerifyError {
    fn from(err: StoreError) -> Self {
        let StoreError::Unavailable(message) = err;
        VerifyError::Unavailable(message)
    }
}

/// Why issuing, refreshing or revoking failed (mirrors the WIT `error` but `denied`).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AuthError {
    /// Bad subject or roles.
    #[error("invalid: {0}")]
    Invalid(String),
    /// The refresh token is not acceptable (see the WIT for the cases).
    #[error("rejected: {0}")]
    Rejected(String),
    /// The revocation store is down, or signing failed.
    #[error("unavailable: {0}")]
    Unavailable(String),
}

impl From<StoreError> for AuthError {
    fn from(err: StoreError) -> Self {
        let StoreError::Unavailable(message) = err;
        AuthError::Unavailable(message)
    }
}

impl From<VerifyError> for AuthError {
    fn from(err: VerifyError) -> Self {
        match err {
            VerifyError::Unavailable(message) => AuthError::Unavailable(message),
            other => AuthError::Rejected(other.to_string()),
        }
    }
}

/// A freshly issued pair.
#[derive(Clone, PartialEq, Eq)]
pub struct TokenPair {
    /// The access token.
    pub access_token: String,
    /// The refresh token.
    pub refresh_token: String,
    /// Seconds until the access token expires.
    pub access_expires_in_s: u64,
    /// Seconds until the refresh token expires.
    pub refresh_expires_in_s: u64,
}

impl std::fmt::Debug for TokenPair {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Tokens are credentials: keep them out of logs.
        f.debug_struct("TokenPair")
            .field("access_expires_in_s", &self.access_expires_in_s)
            .field("refresh_expires_in_s", &self.refresh_expires_in_s)
            .finish_non_exhaustive()
    }
}

/// Verifies tokens: signature, algorithm, time, issuer, audience, type and revocation.
#[derive(Clone)]
pub struct Verifier {
    keys: Arc<Keys>,
    config: Arc<AuthConfig>,
    store: Arc<dyn RevocationStore>,
}

impl std::fmt::Debug for Verifier {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Verifier")
            .field("keys", &self.keys)
            .field("config", &self.config)
            .field("store", &self.store.kind())
            .finish()
    }
}

fn seconds(duration: Duration) -> u64 {
    duration.as_secs()
}

impl Verifier {
    /// A verifier with `keys` (the verification key is enough), checking revocation in `store`.
    pub fn new(keys: Keys, config: AuthConfig, store: Arc<dyn RevocationStore>) -> Verifier {
        Verifier {
            keys: Arc::new(keys),
            config: Arc::new(config),
            store,
        }
    }

    /// The algorithm tokens must be signed with.
    pub fn algorithm(&self) -> crate::keys::KeyAlgorithm {
        self.keys.algorithm()
    }

    /// Verifies an access token and returns who it stands for.
    pub async fn verify_access(&self, token: &str) -> Result<Identity, VerifyError> {
        let claims = self.verify(token, TokenType::Access, true).await?;
        Ok(Identity {
            subject: claims.sub,
            roles: claims.roles,
            token_id: claims.jti,
        })
    }

    /// Checks everything but revocation (and `exp` when `check_exp` is false).
    fn decode(
        &self,
        token: &str,
        expected: TokenType,
        check_exp: bool,
    ) -> Result<Claims, VerifyError> {
        let token = token.trim();
        if token.is_empty() {
            return Err(VerifyError::Missing);
        }
        let header = token_header(token)?;
        let found = header.alg;
        let Some((algorithm, decoding)) = self.keys.verification_key(header.kid.as_deref()) else {
            // A key this host does not hold (retired, or never ours): as good as forged.
            return Err(VerifyError::BadSignature);
        };
        if found != algorithm.name() {
            return Err(VerifyError::Algorithm { found });
        }
        let mut validation = Validation::new(algorithm.jwt());
        validation.leeway = seconds(self.config.leeway);
        validation.validate_exp = check_exp;
        validation.validate_nbf = true;
        validation.set_issuer(&[&self.config.issuer]);
        validation.set_audience(&[&self.config.audience]);
        validation.set_required_spec_claims(&["exp", "nbf", "iss", "aud", "sub"]);
        let data =
            jsonwebtoken::decode::<Claims>(token, decoding, &validation).map_err(
                |err| match err.kind() {
                    ErrorKind::InvalidSignature => VerifyError::BadSignature,
                    ErrorKind::InvalidAlgorithm => VerifyError::Algorithm {
                        found: found.clone(),
                    },
                    ErrorKind::ExpiredSignature => VerifyError::Expired,
                    ErrorKind::ImmatureSignature => VerifyError::NotYetValid,
                    ErrorKind::InvalidAudience => VerifyError::WrongAudience,
                    ErrorKind::InvalidIssuer => VerifyError::WrongIssuer,
                    _ => VerifyError::Malformed(err.to_string()),
                },
            )?;
        let claims = data.claims;
        if claims.typ != expected {
            return Err(VerifyError::WrongType {
                expected,
                found: claims.typ,
            });
        }
        Ok(claims)
    }

    async fn verify(
        &self,
        token: &str,
        expected: TokenType,
        check_exp: bool,
    ) -> Result<Claims, VerifyError> {
        let claims = self.decode(token, expected, check_exp)?;
        if self.store.is_family_revoked(&claims.fam).await? {
            return Err(VerifyError::Revoked);
        }
        Ok(claims)
    }
}

/// The `alg` of a compact JWT's header, read before any verification so that `none` and
/// every unexpected algorithm get their own error.
/// The header fields a verifier reads before it picks a key.
#[derive(Deserialize)]
struct TokenHeader {
    alg: String,
    #[serde(default)]
    kid: Option<String>,
}

fn token_header(token: &str) -> Result<TokenHeader, VerifyError> {
    let mut parts = token.split('.');
    let (Some(header), Some(_), Some(_), None) =
        (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return Err(VerifyError::Malformed(
            "a JWT has three dot-separated parts".into(),
        ));
    };
    let bytes = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(header)
        .map_err(|e| VerifyError::Malformed(format!("header: {e}")))?;
    serde_json::from_slice(&bytes).map_err(|e| VerifyError::Malformed(format!("header: {e}")))
}

/// Issues, rotates and revokes sessions. Every replica builds one with the same keys,
/// configuration and a shared store.
#[derive(Clone, Debug)]
pub struct Authority {
    verifier: Verifier,
}

fn check_text(what: &str, value: &str, max: usize) -> Result<(), AuthError> {
    if value.is_empty() {
        return Err(AuthError::Invalid(format!("the {what} is empty")));
    }
    if value.len() > max {
        return Err(AuthError::Invalid(format!(
            "the {what} is {} bytes, over the {max}-byte limit",
            value.len()
        )));
    }
    if value.chars().any(char::is_control) {
        return Err(AuthError::Invalid(format!(
            "the {what} contains control characters"
        )));
    }
    Ok(())
}

fn check_subject(subject: &str) -> Result<(), AuthError> {
    check_text("subject", subject, MAX_SUBJECT_BYTES)
}

fn check_roles(roles: &[String]) -> Result<(), AuthError> {
    if roles.len() > MAX_ROLES {
        return Err(AuthError::Invalid(format!(
            "{} roles, at most {MAX_ROLES} are allowed",
            roles.len()
        )));
    }
    roles.iter().try_for_each(|role| {
        check_text("role", role, MAX_ROLE_BYTES)?;
        // The host passes roles to components comma-separated (`x-agora-roles`).
        if role.contains([',', ' ']) {
            return Err(AuthError::Invalid(format!(
                "the role `{role}` contains a comma or a space"
            )));
        }
        Ok(())
    })
}

fn new_id() -> String {
    uuid::Uuid::new_v4().simple().to_string()
}

impl Authority {
    /// An authority signing with `keys`, which must hold a private key.
    pub fn new(
        keys: Keys,
        config: AuthConfig,
        store: Arc<dyn RevocationStore>,
    ) -> Result<Authority, KeyError> {
        if !keys.can_sign() {
            return Err(KeyError::Invalid {
                what: "private key",
                reason: "an authority needs a private key to sign".into(),
            });
        }
        Ok(Authority {
            verifier: Verifier::new(keys, config, store),
        })
    }

    /// The verifier for this authority's tokens (same keys, configuration and store).
    pub fn verifier(&self) -> &Verifier {
        &self.verifier
    }

    /// The configuration.
    pub fn config(&self) -> &AuthConfig {
        &self.verifier.config
    }

    /// A new session for `subject` with `roles`.
    pub async fn issue(&self, subject: &str, roles: &[String]) -> Result<TokenPair, AuthError> {
        check_subject(subject)?;
        check_roles(roles)?;
        self.issue_in(subject, roles, &new_id()).await
    }

    /// Rotates `refresh_token`: consumes it and issues a new pair in its session. A token used
    /// a second time revokes its session.
    pub async fn refresh(&self, refresh_token: &str) -> Result<TokenPair, AuthError> {
        let claims = self
            .verifier
            .verify(refresh_token, TokenType::Refresh, true)
            .await?;
        let store = &self.verifier.store;
        match store.mark_used(&claims.jti).await? {
            UseOutcome::Fresh { family } if family == claims.fam => {
                self.issue_in(&claims.sub, &claims.roles, &claims.fam).await
            }
            UseOutcome::Fresh { .. } => Err(AuthError::Rejected(
                "the refresh token does not match its recorded session".into(),
            )),
            UseOutcome::Reused { .. } => {
                store
                    .revoke_family(&claims.fam, self.config().revocation_ttl())
                    .await?;
                tracing::warn!(
                    subject = %claims.sub,
                    session = %claims.fam,
                    "refresh token reused: session revoked"
                );
                Err(AuthError::Rejected(
                    "the refresh token was already used: its session is revoked".into(),
                ))
            }
            UseOutcome::Unknown => Err(AuthError::Rejected("unknown refresh token".into())),
        }
    }

    /// Logout: revokes the session of `refresh_token` (expired tokens accepted; idempotent).
    pub async fn revoke(&self, refresh_token: &str) -> Result<(), AuthError> {
        let claims = self
            .verifier
            .decode(refresh_token, TokenType::Refresh, false)?;
        self.verifier
            .store
            .revoke_family(&claims.fam, self.config().revocation_ttl())
            .await?;
        Ok(())
    }

    /// Revokes every session of `subject`.
    pub async fn revoke_subject(&self, subject: &str) -> Result<(), AuthError> {
        check_subject(subject)?;
        let count = self
            .verifier
            .store
            .revoke_subject(subject, self.config().revocation_ttl())
            .await?;
        tracing::info!(%subject, sessions = count, "revoked every session of a subject");
        Ok(())
    }

    async fn issue_in(
        &self,
        subject: &str,
        roles: &[String],
        family: &str,
    ) -> Result<TokenPair, AuthError> {
        let config = self.config();
        let keys = &self.verifier.keys;
        let Some(encoding) = keys.encoding() else {
            return Err(AuthError::Unavailable("no signing key".into()));
        };
        let now = jsonwebtoken::get_current_timestamp();
        let access_ttl = seconds(config.access_ttl);
        let refresh_ttl = seconds(config.refresh_ttl);
        let claims = |typ: TokenType, ttl: u64| Claims {
            sub: subject.to_owned(),
            roles: roles.to_vec(),
            iss: config.issuer.clone(),
            aud: config.audience.clone(),
            iat: now,
            nbf: now,
            exp: now.saturating_add(ttl),
            jti: new_id(),
            typ,
            fam: family.to_owned(),
        };
        let access = claims(TokenType::Access, access_ttl);
        let refresh = claims(TokenType::Refresh, refresh_ttl);
        let mut header = Header::new(keys.algorithm().jwt());
        header.typ = Some("JWT".into());
        header.kid = Some(keys.kid().to_owned());
        let sign = |claims: &Claims| {
            jsonwebtoken::encode(&header, claims, encoding)
                .map_err(|e| AuthError::Unavailable(format!("signing failed: {e}")))
        };
        let pair = TokenPair {
            access_token: sign(&access)?,
            refresh_token: sign(&refresh)?,
            access_expires_in_s: access_ttl,
            refresh_expires_in_s: refresh_ttl,
        };
        self.verifier
            .store
            .register(
                subject,
                family,
                &refresh.jti,
                config.refresh_ttl + config.leeway,
            )
            .await?;
        Ok(pair)
    }
}
