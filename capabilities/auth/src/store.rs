//! The revocation store: the shared state that makes refresh-token rotation and revocation
//! hold across every host replica.

use std::time::Duration;

/// Why a store call failed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum StoreError {
    /// The store did not answer in time or is down.
    #[error("revocation store unavailable: {0}")]
    Unavailable(String),
}

/// What [`RevocationStore::mark_used`] found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum UseOutcome {
    /// The refresh token was live and unused; it is now used. Carries its recorded family.
    Fresh {
        /// The session family the token was registered in.
        family: String,
    },
    /// The refresh token had been used before: reuse. Carries its recorded family.
    Reused {
        /// The session family the token was registered in.
        family: String,
    },
    /// The store knows no such refresh token (never registered, or its record expired).
    Unknown,
}

/// Shared state of sessions. A session is a *family* of refresh tokens, one per rotation.
///
/// Implementations must make [`mark_used`](RevocationStore::mark_used) atomic across every
/// host sharing the store: of two concurrent calls for one token exactly one sees `Fresh`.
#[async_trait::async_trait]
pub trait RevocationStore: Send + Sync + 'static {
    /// Records the new, unused refresh token `jti` of `family` (a session of `subject`); the
    /// record lives for `ttl` (the token's lifetime).
    async fn register(
        &self,
        subject: &str,
        family: &str,
        jti: &str,
        ttl: Duration,
    ) -> Result<(), StoreError>;

    /// Atomically marks refresh token `jti` used and tells what it was before.
    async fn mark_used(&self, jti: &str) -> Result<UseOutcome, StoreError>;

    /// Revokes `family`; the mark lives for `ttl` (long enough to outlive its tokens).
    async fn revoke_family(&self, family: &str, ttl: Duration) -> Result<(), StoreError>;

    /// Whether `family` is revoked.
    async fn is_family_revoked(&self, family: &str) -> Result<bool, StoreError>;

    /// Revokes every family registered for `subject` (marks living for `ttl`) and forgets the
    /// subject's list. Returns how many families were revoked.
    async fn revoke_subject(&self, subject: &str, ttl: Duration) -> Result<usize, StoreError>;

    /// A short name for logs ("memory", "redis").
    fn kind(&self) -> &'static str;
}
