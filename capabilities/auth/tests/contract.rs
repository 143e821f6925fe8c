//! The auth contract, written once and run against every revocation store: the in-memory
//! default and the machine's real Redis (`AGORA_TEST_REDIS_URL`, default
//! `redis://127.0.0.1:6379`). Where Redis is unreachable the Redis tests say SKIPPED — except
//! under `CI=true`, where they fail.
//!
//! Each test gets two stores standing for two host replicas: the same memory store twice, or
//! two separate connections to one Redis. Bad tokens are built with jsonwebtoken directly;
//! expired ones get an `exp` in the past, so no test waits on a clock.

#![allow(clippy::unwrap_used)]

use agora_auth::bindings::agora::platform::auth::{Error, Host};
use agora_auth::{
    AuthConfig, AuthCtx, AuthError, Authority, Claims, Keys, MemoryRevocationStore,
    RedisRevocationStore, RevocationStore, TokenType, VerifyError,
};
use base64::Engine as _;
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use std::sync::{Arc, OnceLock};

const ISSUER: &str = "https://agora.test";
const AUDIENCE: &str = "agora-shop";

fn redis_url() -> String {
    std::env::var("AGORA_TEST_REDIS_URL").unwrap_or_else(|_| "redis://127.0.0.1:6379".into())
}

/// The key pair of "this host", shared by every replica in a test: (private, public) PEM.
fn pem() -> &'static (String, String) {
    static PEM: OnceLock<(String, String)> = OnceLock::new();
    PEM.get_or_init(|| Keys::generate_ed25519_pem().unwrap())
}

fn keys() -> Keys {
    let (private, public) = pem();
    Keys::ed25519_from_pem(private.as_bytes(), public.as_bytes()).unwrap()
}

/// Default lifetimes but a one-hour refresh lifetime, so what tests leave in Redis expires soon.
fn config() -> AuthConfig {
    AuthConfig {
        refresh_ttl: std::time::Duration::from_secs(3600),
        ..AuthConfig::new(ISSUER, AUDIENCE)
    }
}

/// Two replicas' stores.
struct Stores {
    a: Arc<dyn RevocationStore>,
    b: Arc<dyn RevocationStore>,
}

impl Stores {
    fn authority_a(&self) -> Authority {
        Authority::new(keys(), config(), self.a.clone()).unwrap()
    }
    fn authority_b(&self) -> Authority {
        Authority::new(keys(), config(), self.b.clone()).unwrap()
    }
}

fn memory_stores() -> Stores {
    let store: Arc<dyn RevocationStore> = Arc::new(MemoryRevocationStore::default());
    Stores {
        a: store.clone(),
        b: store,
    }
}

/// Two connections to Redis, or None (after saying SKIPPED) when it is unreachable outside CI.
async fn redis_stores() -> Option<Stores> {
    let url = redis_url();
    let a = RedisRevocationStore::new(&url).unwrap();
    match a.is_family_revoked("probe").await {
        Ok(_) => Some(Stores {
            a: Arc::new(a),
            b: Arc::new(RedisRevocationStore::new(&url).unwrap()),
        }),
        Err(err) if std::env::var("CI").as_deref() == Ok("true") => {
            panic!("Redis at {url} is required under CI=true: {err}")
        }
        Err(err) => {
            eprintln!("SKIPPED: Redis at {url} is unreachable: {err}");
            None
        }
    }
}

/// A subject no other test run uses.
fn subject() -> String {
    format!("user-{}", uuid::Uuid::new_v4().simple())
}

fn roles() -> Vec<String> {
    vec!["customer".into(), "admin".into()]
}

fn now() -> u64 {
    jsonwebtoken::get_current_timestamp()
}

/// Claims as this host would issue them for a fresh access token in `fam`.
fn access_claims(sub: &str, fam: &str) -> Claims {
    let now = now();
    Claims {
        sub: sub.to_owned(),
        roles: roles(),
        iss: ISSUER.into(),
        aud: AUDIENCE.into(),
        iat: now,
        nbf: now,
        exp: now + 600,
        jti: uuid::Uuid::new_v4().simple().to_string(),
        typ: TokenType::Access,
        fam: fam.to_owned(),
    }
}

fn sign_with(claims: &Claims, algorithm: Algorithm, key: &EncodingKey) -> String {
    jsonwebtoken::encode(&Header::new(algorithm), claims, key).unwrap()
}

/// Signed with this host's own private key.
fn sign(claims: &Claims) -> String {
    let key = EncodingKey::from_ed_pem(pem().0.as_bytes()).unwrap();
    sign_with(claims, Algorithm::EdDSA, &key)
}

fn b64(bytes: &[u8]) -> String {
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes)
}

fn claims_of(token: &str) -> Claims {
    jsonwebtoken::dangerous::insecure_decode_claims(token).unwrap()
}

async fn issue_verify_and_host_calls(stores: Stores) {
    let authority = Arc::new(stores.authority_a());
    let mut ctx = AuthCtx::granted(authority.clone());
    let sub = subject();
    let pair = ctx.issue(sub.clone(), roles()).await.unwrap().unwrap();
    assert_eq!(pair.access_expires_in_s, 15 * 60);
    assert_eq!(pair.refresh_expires_in_s, 3600);
    let defaults = AuthConfig::new(ISSUER, AUDIENCE);
    assert_eq!(defaults.access_ttl.as_secs(), 15 * 60);
    assert_eq!(defaults.refresh_ttl.as_secs(), 7 * 24 * 3600);

    let identity = authority
        .verifier()
        .verify_access(&pair.access_token)
        .await
        .unwrap();
    assert_eq!(identity.subject, sub);
    assert_eq!(identity.roles, roles());
    let access = claims_of(&pair.access_token);
    assert_eq!(identity.token_id, access.jti);
    assert_eq!(access.typ, TokenType::Access);
    let refresh = claims_of(&pair.refresh_token);
    assert_eq!(refresh.typ, TokenType::Refresh);
    assert_eq!(refresh.fam, access.fam, "both tokens carry the session");
    assert_ne!(refresh.jti, access.jti);

    // Another replica verifies the same token.
    let identity_b = stores
        .authority_b()
        .verifier()
        .verify_access(&pair.access_token)
        .await
        .unwrap();
    assert_eq!(identity_b, identity);

    // Bad input is an error value, never a trap.
    for (subject, roles) in [
        (String::new(), vec![]),
        ("s".repeat(257), vec![]),
        ("bad\nsubject".into(), vec![]),
        (sub.clone(), vec![String::new()]),
        (sub.clone(), vec!["r".repeat(65)]),
        (sub.clone(), vec!["r".into(); 33]),
    ] {
        assert!(
            matches!(
                ctx.issue(subject, roles).await.unwrap(),
                Err(Error::Invalid(_))
            ),
            "invalid input"
        );
    }
    assert!(matches!(
        ctx.revoke_subject(String::new()).await.unwrap(),
        Err(Error::Invalid(_))
    ));
    assert!(matches!(
        ctx.refresh("garbage".into()).await.unwrap(),
        Err(Error::Rejected(_))
    ));
    assert!(matches!(
        ctx.revoke("garbage".into()).await.unwrap(),
        Err(Error::Rejected(_))
    ));

    // Without a grant, every call is denied.
    let mut denied = AuthCtx::denied();
    assert_eq!(
        denied.issue(sub.clone(), vec![]).await.unwrap(),
        Err(Error::Denied)
    );
    assert_eq!(
        denied.refresh(pair.refresh_token.clone()).await.unwrap(),
        Err(Error::Denied)
    );
    assert_eq!(
        denied.revoke(pair.refresh_token.clone()).await.unwrap(),
        Err(Error::Denied)
    );
    assert_eq!(
        denied.revoke_subject(sub).await.unwrap(),
        Err(Error::Denied)
    );
}

async fn every_rejection_is_distinct(stores: Stores) {
    let authority = stores.authority_a();
    let verifier = authority.verifier();
    let sub = subject();
    let pair = authority.issue(&sub, &roles()).await.unwrap();
    let fam = claims_of(&pair.access_token).fam;
    let verify = |token: String| async move { verifier.verify_access(&token).await };

    // Hand-built good token: accepted, so each case below fails for its one reason.
    assert!(verify(sign(&access_claims(&sub, &fam))).await.is_ok());

    assert_eq!(verify(String::new()).await, Err(VerifyError::Missing));
    assert!(matches!(
        verify("not-a-jwt".into()).await,
        Err(VerifyError::Malformed(_))
    ));
    assert!(matches!(
        verify("a.b.c".into()).await,
        Err(VerifyError::Malformed(_))
    ));
    // Signed, but the claims are not ours (no typ/fam/roles).
    let foreign = serde_json::json!({
        "sub": sub, "iss": ISSUER, "aud": AUDIENCE, "exp": now() + 600, "nbf": now()
    });
    let key = EncodingKey::from_ed_pem(pem().0.as_bytes()).unwrap();
    let foreign = jsonwebtoken::encode(&Header::new(Algorithm::EdDSA), &foreign, &key).unwrap();
    assert!(matches!(
        verify(foreign).await,
        Err(VerifyError::Malformed(_))
    ));

    // alg none, assembled by hand.
    let payload = b64(&serde_json::to_vec(&access_claims(&sub, &fam)).unwrap());
    let none = format!("{}.{payload}.", b64(br#"{"alg":"none","typ":"JWT"}"#));
    assert_eq!(
        verify(none).await,
        Err(VerifyError::Algorithm {
            found: "none".into()
        })
    );
    // HS256 keyed with the public key (algorithm confusion).
    let hs = sign_with(
        &access_claims(&sub, &fam),
        Algorithm::HS256,
        &EncodingKey::from_secret(pem().1.as_bytes()),
    );
    assert_eq!(
        verify(hs).await,
        Err(VerifyError::Algorithm {
            found: "HS256".into()
        })
    );

    // Another key.
    let (other_private, _) = Keys::generate_ed25519_pem().unwrap();
    let other = sign_with(
        &access_claims(&sub, &fam),
        Algorithm::EdDSA,
        &EncodingKey::from_ed_pem(other_private.as_bytes()).unwrap(),
    );
    assert_eq!(verify(other).await, Err(VerifyError::BadSignature));
    // Tampered payload (roles raised) under the original signature.
    let mut raised = claims_of(&pair.access_token);
    raised.roles.push("superuser".into());
    let parts: Vec<&str> = pair.access_token.split('.').collect();
    let tampered = format!(
        "{}.{}.{}",
        parts[0],
        b64(&serde_json::to_vec(&raised).unwrap()),
        parts[2]
    );
    assert_eq!(verify(tampered).await, Err(VerifyError::BadSignature));

    let mut expired = access_claims(&sub, &fam);
    expired.iat = now() - 7200;
    expired.nbf = now() - 7200;
    expired.exp = now() - 3600;
    assert_eq!(verify(sign(&expired)).await, Err(VerifyError::Expired));

    let mut early = access_claims(&sub, &fam);
    early.nbf = now() + 3600;
    early.exp = now() + 7200;
    assert_eq!(verify(sign(&early)).await, Err(VerifyError::NotYetValid));

    let mut aud = access_claims(&sub, &fam);
    aud.aud = "another-service".into();
    assert_eq!(verify(sign(&aud)).await, Err(VerifyError::WrongAudience));

    let mut iss = access_claims(&sub, &fam);
    iss.iss = "https://evil.test".into();
    assert_eq!(verify(sign(&iss)).await, Err(VerifyError::WrongIssuer));

    assert_eq!(
        verify(pair.refresh_token.clone()).await,
        Err(VerifyError::WrongType {
            expected: TokenType::Access,
            found: TokenType::Refresh
        })
    );
    // ... and an access token is no refresh token.
    assert!(matches!(
        authority.refresh(&pair.access_token).await,
        Err(AuthError::Rejected(_))
    ));

    authority.revoke(&pair.refresh_token).await.unwrap();
    assert_eq!(
        verify(pair.access_token.clone()).await,
        Err(VerifyError::Revoked)
    );

    // Every variant above is distinct.
    let all = [
        VerifyError::Missing,
        VerifyError::Malformed(String::new()),
        VerifyError::BadSignature,
        VerifyError::Algorithm {
            found: String::new(),
        },
        VerifyError::Expired,
        VerifyError::NotYetValid,
        VerifyError::WrongAudience,
        VerifyError::WrongIssuer,
        VerifyError::WrongType {
            expected: TokenType::Access,
            found: TokenType::Refresh,
        },
        VerifyError::Revoked,
    ];
    for (i, x) in all.iter().enumerate() {
        for y in &all[i + 1..] {
            assert_ne!(std::mem::discriminant(x), std::mem::discriminant(y));
        }
    }
}

async fn refresh_rotates_and_reuse_revokes_the_family(stores: Stores) {
    let authority = stores.authority_a();
    let sub = subject();
    let first = authority.issue(&sub, &roles()).await.unwrap();
    let second = authority.refresh(&first.refresh_token).await.unwrap();
    let fam = claims_of(&first.refresh_token).fam;
    assert_eq!(claims_of(&second.refresh_token).fam, fam, "same session");
    assert_eq!(claims_of(&second.access_token).sub, sub);
    assert_eq!(claims_of(&second.access_token).roles, roles());
    assert_ne!(second.refresh_token, first.refresh_token);
    assert!(
        authority
            .verifier()
            .verify_access(&second.access_token)
            .await
            .is_ok()
    );

    // Reuse of the rotated token: rejected, and the whole session goes.
    let reuse = authority.refresh(&first.refresh_token).await;
    assert!(
        matches!(&reuse, Err(AuthError::Rejected(m)) if m.contains("already used")),
        "{reuse:?}"
    );
    assert!(matches!(
        authority.refresh(&second.refresh_token).await,
        Err(AuthError::Rejected(_))
    ));
    assert_eq!(
        authority
            .verifier()
            .verify_access(&second.access_token)
            .await,
        Err(VerifyError::Revoked)
    );

    // Another session of the same subject is untouched.
    let other = authority.issue(&sub, &roles()).await.unwrap();
    assert!(authority.refresh(&other.refresh_token).await.is_ok());

    // An expired refresh token is rejected (built by hand, exp in the past).
    let mut expired = claims_of(&other.refresh_token);
    expired.exp = now() - 3600;
    expired.jti = uuid::Uuid::new_v4().simple().to_string();
    assert!(matches!(
        authority.refresh(&sign(&expired)).await,
        Err(AuthError::Rejected(m)) if m.contains("expired")
    ));
    // A well-signed refresh token the store never saw is rejected.
    let mut unknown = claims_of(&other.refresh_token);
    unknown.jti = uuid::Uuid::new_v4().simple().to_string();
    assert!(matches!(
        authority.refresh(&sign(&unknown)).await,
        Err(AuthError::Rejected(m)) if m.contains("unknown")
    ));

    // Concurrent rotations of one token: exactly one wins.
    let pair = authority.issue(&subject(), &roles()).await.unwrap();
    let replica = stores.authority_b();
    let (x, y) = tokio::join!(
        authority.refresh(&pair.refresh_token),
        replica.refresh(&pair.refresh_token)
    );
    assert_eq!(
        [x.is_ok(), y.is_ok()].iter().filter(|ok| **ok).count(),
        1,
        "{x:?} {y:?}"
    );
}

async fn revoke_is_logout(stores: Stores) {
    let authority = stores.authority_a();
    let sub = subject();
    let session = authority.issue(&sub, &roles()).await.unwrap();
    let kept = authority.issue(&sub, &roles()).await.unwrap();
    let rotated = authority.refresh(&session.refresh_token).await.unwrap();

    // Logging out with the current refresh token ends the session on every replica.
    let mut ctx = AuthCtx::granted(Arc::new(stores.authority_b()));
    ctx.revoke(rotated.refresh_token.clone())
        .await
        .unwrap()
        .unwrap();
    assert!(matches!(
        authority.refresh(&rotated.refresh_token).await,
        Err(AuthError::Rejected(_))
    ));
    assert_eq!(
        authority
            .verifier()
            .verify_access(&rotated.access_token)
            .await,
        Err(VerifyError::Revoked)
    );
    // Idempotent; an expired refresh token of a session still logs it out.
    ctx.revoke(rotated.refresh_token.clone())
        .await
        .unwrap()
        .unwrap();
    let mut expired = claims_of(&kept.refresh_token);
    expired.exp = now() - 3600;
    let expired = sign(&expired);
    assert!(
        authority
            .verifier()
            .verify_access(&kept.access_token)
            .await
            .is_ok()
    );
    authority.revoke(&expired).await.unwrap();
    assert_eq!(
        authority.verifier().verify_access(&kept.access_token).await,
        Err(VerifyError::Revoked)
    );
    assert!(authority.refresh(&kept.refresh_token).await.is_err());
    // An access token does not log out.
    assert!(matches!(
        authority.revoke(&session.access_token).await,
        Err(AuthError::Rejected(_))
    ));
}

async fn revoke_subject_ends_every_session(stores: Stores) {
    let authority = stores.authority_a();
    let sub = subject();
    let bystander = subject();
    let one = authority.issue(&sub, &roles()).await.unwrap();
    let two = authority.issue(&sub, &roles()).await.unwrap();
    let two = authority.refresh(&two.refresh_token).await.unwrap();
    let theirs = authority.issue(&bystander, &roles()).await.unwrap();

    let mut ctx = AuthCtx::granted(Arc::new(stores.authority_b()));
    ctx.revoke_subject(sub.clone()).await.unwrap().unwrap();

    for pair in [&one, &two] {
        assert!(matches!(
            authority.refresh(&pair.refresh_token).await,
            Err(AuthError::Rejected(_))
        ));
        assert_eq!(
            authority.verifier().verify_access(&pair.access_token).await,
            Err(VerifyError::Revoked)
        );
    }
    // Other subjects, and sessions issued afterwards, are unaffected.
    assert!(authority.refresh(&theirs.refresh_token).await.is_ok());
    let after = authority.issue(&sub, &roles()).await.unwrap();
    assert!(
        authority
            .verifier()
            .verify_access(&after.access_token)
            .await
            .is_ok()
    );
    assert!(authority.refresh(&after.refresh_token).await.is_ok());
    // A subject without sessions is fine.
    ctx.revoke_subject(subject()).await.unwrap().unwrap();
}

async fn replicas_share_rotation(stores: Stores) {
    let a = stores.authority_a();
    let b = stores.authority_b();
    let sub = subject();
    let first = a.issue(&sub, &roles()).await.unwrap();
    // B rotates what A issued; A sees the old token as reused.
    let second = b.refresh(&first.refresh_token).await.unwrap();
    assert!(
        a.verifier()
            .verify_access(&second.access_token)
            .await
            .is_ok()
    );
    assert!(matches!(
        a.refresh(&first.refresh_token).await,
        Err(AuthError::Rejected(m)) if m.contains("already used")
    ));
    // The family revoked on A is revoked on B.
    assert!(matches!(
        b.refresh(&second.refresh_token).await,
        Err(AuthError::Rejected(_))
    ));
    assert_eq!(
        b.verifier().verify_access(&second.access_token).await,
        Err(VerifyError::Revoked)
    );
}

macro_rules! suite {
    ($($case:ident),* $(,)?) => {
        mod memory {
            $(
                #[tokio::test]
                async fn $case() {
                    super::$case(super::memory_stores()).await;
                }
            )*
        }
        mod redis {
            $(
                #[tokio::test]
                async fn $case() {
                    if let Some(stores) = super::redis_stores().await {
                        super::$case(stores).await;
                    }
                }
            )*
        }
    };
}

suite!(
    issue_verify_and_host_calls,
    every_rejection_is_distinct,
    refresh_rotates_and_reuse_revokes_the_family,
    revoke_is_logout,
    revoke_subject_ends_every_session,
    replicas_share_rotation,
);

#[tokio::test]
async fn redis_down_is_unavailable() {
    // Nothing listens on port 1: every call must fail fast as unavailable, never hang or trap.
    let store: Arc<dyn RevocationStore> =
        Arc::new(RedisRevocationStore::new("redis://127.0.0.1:1").unwrap());
    let authority = Arc::new(Authority::new(keys(), config(), store).unwrap());
    let mut ctx = AuthCtx::granted(authority.clone());
    assert!(matches!(
        ctx.issue(subject(), roles()).await.unwrap(),
        Err(Error::Unavailable(_))
    ));
    let token = sign(&access_claims(&subject(), "fam"));
    assert!(matches!(
        authority.verifier().verify_access(&token).await,
        Err(VerifyError::Unavailable(_))
    ));
}

#[test]
fn a_verify_only_key_cannot_issue() {
    let store: Arc<dyn RevocationStore> = Arc::new(MemoryRevocationStore::default());
    assert!(Authority::new(keys().verify_only(), config(), store).is_err());
}
