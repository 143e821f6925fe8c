//! `agora:platform/auth` — the host side of the auth capability: tokens issued by the host,
//! with keys that never enter a guest.
//!
//! - [`Keys`]: EdDSA (Ed25519) from PEM by default, RS256 allowed, HS256 only explicitly.
//! - [`Authority`]: issues a session (an access and a refresh token), rotates refresh tokens
//!   (a reused one revokes its session), revokes a session (logout) or every session of a
//!   subject.
//! - [`Verifier`]: what the host runs on each request carrying `Authorization: Bearer`; every
//!   reason to refuse a token is its own [`VerifyError`] variant.
//! - [`RevocationStore`]: the state shared by replicas — [`MemoryRevocationStore`] embedded,
//!   [`RedisRevocationStore`] in production.
//! - [`AuthCtx`]: the per-store state a component's calls go to; granted or denied.
//! - [`Auth`]: the capability unit (grant `auth = true`) the host lists.
//!
//! Every token carries the session (refresh family) id `fam`, access tokens included, so that
//! logout and `revoke-subject` also end the session's access tokens: the verifier looks the
//! family up in the store on each request (one Redis `EXISTS`).
//!
//! ```no_run
//! use std::sync::Arc;
//! use agora_auth::{AuthConfig, AuthCtx, Authority, Keys, MemoryRevocationStore};
//! # struct State { auth: AuthCtx }
//! # fn link(linker: &mut wasmtime::component::Linker<State>) -> anyhow::Result<()> {
//! agora_auth::add_to_linker(linker, |state: &mut State| &mut state.auth)?;
//! let authority = Authority::new(
//!     Keys::from_env()?,
//!     AuthConfig::new("https://shop.example", "shop"),
//!     Arc::new(MemoryRevocationStore::default()),
//! )?;
//! let ctx = AuthCtx::granted(Arc::new(authority));
//! # Ok(()) }
//! ```

#![deny(missing_docs)]

mod keys;
mod memory;
mod redis;
mod store;
mod tokens;

pub use keys::{
    ALGORITHM_VAR, KeyAlgorithm, KeyError, Keys, MIN_HS256_SECRET_BYTES,
    PREVIOUS_PUBLIC_KEYS_FILE_VAR, PREVIOUS_PUBLIC_KEYS_VAR, PRIVATE_KEY_FILE_VAR, PRIVATE_KEY_VAR,
    PUBLIC_KEY_FILE_VAR, PUBLIC_KEY_VAR,
};
pub use memory::MemoryRevocationStore;
pub use redis::{CALL_TIMEOUT, KEY_PREFIX, RedisRevocationStore};
pub use store::{RevocationStore, StoreError, UseOutcome};
pub use tokens::{
    AuthConfig, AuthError, Authority, Claims, Identity, MAX_ROLE_BYTES, MAX_ROLES,
    MAX_SUBJECT_BYTES, TokenPair, TokenType, Verifier, VerifyError,
};

use std::sync::Arc;
use wasmtime::component::{HasSelf, Linker};

/// Generated bindings of the `agora:platform/auth` interface.
#[allow(missing_docs)]
pub mod bindings {
    wasmtime::component::bindgen!({
        path: "../../wit",
        world: "agora:platform/auth-user",
        imports: { default: async | trappable | tracing },
        additional_derives: [PartialEq, Eq],
    });
}

use bindings::agora::platform::auth::{Error, Host, TokenPair as WitTokenPair};

/// The WIT name of the interface, as it appears in a component's imports.
pub const INTERFACE: &str = "agora:platform/auth";

/// The auth state of one store. The default is [`AuthCtx::denied`].
#[derive(Clone, Default)]
pub struct AuthCtx {
    grant: Option<Arc<Authority>>,
    meter: agora_capability::Meter,
}

impl std::fmt::Debug for AuthCtx {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AuthCtx")
            .field("granted", &self.grant.is_some())
            .finish()
    }
}

impl AuthCtx {
    /// A component with an auth grant: its calls go to `authority`.
    pub fn granted(authority: Arc<Authority>) -> AuthCtx {
        AuthCtx {
            grant: Some(authority),
            meter: agora_capability::Meter::default(),
        }
    }

    /// The same context, reporting each call to `meter`.
    pub fn metered(mut self, meter: agora_capability::Meter) -> AuthCtx {
        self.meter = meter;
        self
    }

    /// A component without an auth grant: every call answers `denied`.
    pub fn denied() -> AuthCtx {
        AuthCtx {
            grant: None,
            meter: agora_capability::Meter::default(),
        }
    }

    /// Runs `operation` on the authority (`denied` without the grant), inside its span, and
    /// reports it to the meter.
    async fn call<T, F>(
        &self,
        operation: &'static str,
        call: impl FnOnce(Arc<Authority>) -> F,
    ) -> Result<T, Error>
    where
        F: std::future::Future<Output = Result<T, AuthError>>,
    {
        let started = std::time::Instant::now();
        let result = match &self.grant {
            None => Err(Error::Denied),
            Some(authority) => {
                let span = tracing::debug_span!(
                    target: agora_capability::SPAN_TARGET,
                    "auth",
                    "otel.name" = %format_args!("auth {operation}"),
                    "auth.operation" = operation,
                );
                tracing::Instrument::instrument(call(authority.clone()), span)
                    .await
                    .map_err(to_guest)
            }
        };
        self.meter.record(result.is_ok(), started);
        result
    }
}

fn to_guest(err: AuthError) -> Error {
    match err {
        AuthError::Invalid(message) => Error::Invalid(message),
        AuthError::Rejected(message) => Error::Rejected(message),
        AuthError::Unavailable(message) => {
            tracing::warn!(%message, "auth unavailable");
            Error::Unavailable(message)
        }
    }
}

fn to_wit(pair: TokenPair) -> WitTokenPair {
    WitTokenPair {
        access_token: pair.access_token,
        refresh_token: pair.refresh_token,
        access_expires_in_s: pair.access_expires_in_s,
        refresh_expires_in_s: pair.refresh_expires_in_s,
    }
}

impl Host for AuthCtx {
    async fn issue(
        &mut self,
        subject: String,
        roles: Vec<String>,
    ) -> wasmtime::Result<Result<WitTokenPair, Error>> {
        let issued = self
            .call("issue", |authority| async move {
                authority.issue(&subject, &roles).await
            })
            .await;
        Ok(issued.map(to_wit))
    }

    async fn refresh(
        &mut self,
        refresh_token: String,
    ) -> wasmtime::Result<Result<WitTokenPair, Error>> {
        let refreshed = self
            .call("refresh", |authority| async move {
                authority.refresh(&refresh_token).await
            })
            .await;
        Ok(refreshed.map(to_wit))
    }

    async fn revoke(&mut self, refresh_token: String) -> wasmtime::Result<Result<(), Error>> {
        Ok(self
            .call("revoke", |authority| async move {
                authority.revoke(&refresh_token).await
            })
            .await)
    }

    async fn revoke_subject(&mut self, subject: String) -> wasmtime::Result<Result<(), Error>> {
        Ok(self
            .call("revoke_subject", |authority| async move {
                authority.revoke_subject(&subject).await
            })
            .await)
    }
}

impl agora_capability::Prepared for AuthCtx {
    fn instance(&self, _: &agora_capability::StoreInfo) -> Box<dyn std::any::Any + Send> {
        Box::new(self.clone())
    }
}

/// The capability unit: `agora:platform/auth`, for components whose manifest entry says
/// `auth = true`. Their calls go to the host's [`Authority`]; on a host without keys (no
/// component granted auth and no route needing a token) they answer `denied`.
pub struct Auth {
    authority: Option<Arc<Authority>>,
}

impl Auth {
    /// The unit over the host's `authority`, if it has one.
    pub fn new(authority: Option<Arc<Authority>>) -> Auth {
        Auth { authority }
    }
}

#[async_trait::async_trait]
impl<S: agora_capability::StoreData> agora_capability::Capability<S> for Auth {
    fn name(&self) -> &'static str {
        "auth"
    }

    fn interfaces(&self) -> &'static [&'static str] {
        &[INTERFACE]
    }

    fn grant_hint(&self) -> &'static str {
        "auth = true"
    }

    fn check_grant(&self, value: &toml::Value) -> Result<bool, String> {
        agora_capability::check_bool_grant("auth", value)
    }

    fn link(&self, linker: &mut Linker<S>) -> wasmtime::Result<()> {
        fn ctx<S: agora_capability::StoreData>(state: &mut S) -> &mut AuthCtx {
            state.slots().get_mut::<AuthCtx>()
        }
        add_to_linker(linker, ctx::<S>)
    }

    async fn prepare(
        &self,
        component: &agora_capability::ComponentInfo<'_>,
    ) -> Result<Arc<dyn agora_capability::Prepared>, String> {
        Ok(Arc::new(match &self.authority {
            Some(authority) => AuthCtx::granted(authority.clone()).metered(component.meter.clone()),
            None => AuthCtx::denied(),
        }))
    }

    fn describe(&self) -> serde_json::Value {
        serde_json::json!({ "keys": self.authority.is_some() })
    }
}

/// Adds `agora:platform/auth` to `linker`; `get` finds the [`AuthCtx`] in a store's data.
pub fn add_to_linker<T: Send + 'static>(
    linker: &mut Linker<T>,
    get: fn(&mut T) -> &mut AuthCtx,
) -> wasmtime::Result<()> {
    bindings::agora::platform::auth::add_to_linker::<T, HasSelf<AuthCtx>>(linker, get)
}
