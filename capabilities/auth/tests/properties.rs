//! Token parsing against inputs nobody here chose: arbitrary strings and every single-byte
//! change of a valid token are refused with an error value — never a panic, never accepted.

#![allow(clippy::unwrap_used)]

use agora_auth::{AuthConfig, Authority, Keys, MemoryRevocationStore};
use proptest::prelude::*;
use std::sync::{Arc, OnceLock};

fn runtime() -> &'static tokio::runtime::Runtime {
    static RUNTIME: OnceLock<tokio::runtime::Runtime> = OnceLock::new();
    RUNTIME.get_or_init(|| {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap()
    })
}

/// An authority with a fresh key, and one access token it issued.
fn issued() -> &'static (Authority, String) {
    static ISSUED: OnceLock<(Authority, String)> = OnceLock::new();
    ISSUED.get_or_init(|| {
        let authority = Authority::new(
            Keys::generate_ed25519().unwrap(),
            AuthConfig::new("agora", "agora"),
            Arc::new(MemoryRevocationStore::default()),
        )
        .unwrap();
        let pair = runtime()
            .block_on(authority.issue("subject-1", &["USER".to_owned()]))
            .unwrap();
        (authority, pair.access_token)
    })
}

proptest! {
    #![proptest_config(ProptestConfig::default())]

    #[test]
    fn arbitrary_text_is_refused(token in any::<String>()) {
        let (authority, _) = issued();
        let verdict = runtime().block_on(authority.verifier().verify_access(&token));
        prop_assert!(verdict.is_err());
    }

    #[test]
    fn token_shaped_garbage_is_refused(
        header in "[A-Za-z0-9_-]{0,60}",
        payload in "[A-Za-z0-9_-]{0,120}",
        signature in "[A-Za-z0-9_-]{0,90}",
    ) {
        let (authority, _) = issued();
        let token = format!("{header}.{payload}.{signature}");
        let verdict = runtime().block_on(authority.verifier().verify_access(&token));
        prop_assert!(verdict.is_err());
    }

    #[test]
    fn any_changed_byte_of_a_valid_token_is_refused(index in any::<prop::sample::Index>(), byte in any::<u8>()) {
        let (authority, token) = issued();
        let mut bytes = token.clone().into_bytes();
        let at = index.index(bytes.len());
        prop_assume!(bytes[at] != byte);
        bytes[at] = byte;
        let changed = String::from_utf8_lossy(&bytes).into_owned();
        prop_assume!(changed != *token);
        let verdict = runtime().block_on(authority.verifier().verify_access(&changed));
        prop_assert!(verdict.is_err(), "accepted after byte {} changed: {}", at, changed);
    }
}

#[test]
fn the_valid_token_itself_is_accepted() {
    let (authority, token) = issued();
    let identity = runtime()
        .block_on(authority.verifier().verify_access(token))
        .unwrap();
    assert_eq!(identity.subject, "subject-1");
}
