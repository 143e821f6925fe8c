//! Signing and verification keys, loaded from PEM (environment or files) or generated for
//! development. Key material never appears in `Debug` output or in errors.

use ed25519_dalek::pkcs8::spki::der::pem::LineEnding;
use ed25519_dalek::pkcs8::{EncodePrivateKey as _, EncodePublicKey as _};
use jsonwebtoken::{Algorithm, DecodingKey, EncodingKey, Header, Validation};
use sha2::Digest as _;
use std::path::Path;

/// Environment variable holding the private key PEM.
pub const PRIVATE_KEY_VAR: &str = "AGORA_AUTH_PRIVATE_KEY";
/// Environment variable holding the public key PEM.
pub const PUBLIC_KEY_VAR: &str = "AGORA_AUTH_PUBLIC_KEY";
/// Environment variable naming a file that holds the private key PEM.
pub const PRIVATE_KEY_FILE_VAR: &str = "AGORA_AUTH_PRIVATE_KEY_FILE";
/// Environment variable naming a file that holds the public key PEM.
pub const PUBLIC_KEY_FILE_VAR: &str = "AGORA_AUTH_PUBLIC_KEY_FILE";
/// Environment variable choosing the algorithm: `EdDSA` (default) or `RS256`. HS256 is never
/// chosen from the environment; use [`Keys::hs256`] explicitly.
pub const ALGORITHM_VAR: &str = "AGORA_AUTH_ALGORITHM";

/// Public keys (PEM, one or more blocks) of earlier signing keys, still accepted on tokens that
/// name them by `kid` until those tokens expire.
pub const PREVIOUS_PUBLIC_KEYS_VAR: &str = "AGORA_AUTH_PREVIOUS_PUBLIC_KEYS";
/// A file holding [`PREVIOUS_PUBLIC_KEYS_VAR`]'s PEM blocks.
pub const PREVIOUS_PUBLIC_KEYS_FILE_VAR: &str = "AGORA_AUTH_PREVIOUS_PUBLIC_KEYS_FILE";

/// Shortest HS256 secret accepted, in bytes.
pub const MIN_HS256_SECRET_BYTES: usize = 32;

/// Why keys could not be loaded.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum KeyError {
    /// Neither the PEM variables nor the file variables are set.
    #[error(
        "no auth keys configured: set {PRIVATE_KEY_VAR} and {PUBLIC_KEY_VAR} (PEM) or {PRIVATE_KEY_FILE_VAR} and {PUBLIC_KEY_FILE_VAR}"
    )]
    Missing,
    /// A key is not a PEM of the expected kind (the message never contains key material).
    #[error("invalid {what}: {reason}")]
    Invalid {
        /// Which key ("private key", "public key", "secret").
        what: &'static str,
        /// Why, without key material.
        reason: String,
    },
    /// The private and the public key do not belong together.
    #[error("the private key and the public key do not form a pair")]
    Mismatch,
    /// An unsupported algorithm was asked for.
    #[error("unsupported auth algorithm {0:?} (use EdDSA or RS256; HS256 only explicitly)")]
    Algorithm(String),
    /// A key file could not be read.
    #[error("cannot read {path}: {reason}")]
    File {
        /// The file.
        path: String,
        /// The I/O error.
        reason: String,
    },
    /// The operating system's random source failed while generating a key.
    #[error("no randomness for key generation: {0}")]
    Random(String),
}

/// A signing algorithm this crate accepts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum KeyAlgorithm {
    /// Ed25519 signatures (the default).
    EdDSA,
    /// RSASSA-PKCS1-v1_5 with SHA-256.
    RS256,
    /// HMAC-SHA256 with a shared secret: only when configured explicitly.
    HS256,
}

impl KeyAlgorithm {
    /// The jsonwebtoken algorithm.
    pub fn jwt(self) -> Algorithm {
        match self {
            KeyAlgorithm::EdDSA => Algorithm::EdDSA,
            KeyAlgorithm::RS256 => Algorithm::RS256,
            KeyAlgorithm::HS256 => Algorithm::HS256,
        }
    }

    /// The `alg` header value of tokens signed with this algorithm.
    pub fn name(self) -> &'static str {
        match self {
            KeyAlgorithm::EdDSA => "EdDSA",
            KeyAlgorithm::RS256 => "RS256",
            KeyAlgorithm::HS256 => "HS256",
        }
    }
}

/// The keys of one host: always a verification key, and a signing key unless the host only
/// verifies; plus the verification keys of earlier signing keys (a rotation). Every key has a
/// `kid` — the first 16 hex digits of the SHA-256 of its public PEM (of the secret, for
/// HS256) — written into the header of each token it signs, so a verifier picks the key a
/// token names. Cheap to share behind an `Arc`.
#[derive(Clone)]
pub struct Keys {
    algorithm: KeyAlgorithm,
    encoding: Option<EncodingKey>,
    decoding: DecodingKey,
    kid: String,
    previous: Vec<VerificationKey>,
}

/// A key that verifies tokens only: an earlier signing key's public half.
#[derive(Clone)]
struct VerificationKey {
    algorithm: KeyAlgorithm,
    decoding: DecodingKey,
    kid: String,
}

impl std::fmt::Debug for Keys {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Keys")
            .field("algorithm", &self.algorithm)
            .field("kid", &self.kid)
            .field("can_sign", &self.encoding.is_some())
            .field(
                "previous",
                &self.previous.iter().map(|k| &k.kid).collect::<Vec<_>>(),
            )
            .finish_non_exhaustive()
    }
}

/// The `kid` of a key with this public material.
fn key_id(public: &[u8]) -> String {
    let text = String::from_utf8_lossy(public);
    let normalized: String = text.split_whitespace().collect();
    hex::encode(&sha2::Sha256::digest(normalized.as_bytes())[..8])
}

/// The PEM blocks of `text`, each with its BEGIN and END lines.
fn pem_blocks(text: &str) -> Vec<String> {
    let mut blocks = Vec::new();
    let mut current: Option<String> = None;
    for line in text.lines() {
        let line = line.trim();
        if line.starts_with("-----BEGIN ") {
            current = Some(String::new());
        }
        if let Some(block) = &mut current {
            block.push_str(line);
            block.push('\n');
        }
        if line.starts_with("-----END ")
            && let Some(block) = current.take()
        {
            blocks.push(block);
        }
    }
    blocks
}

fn invalid(what: &'static str, err: jsonwebtoken::errors::Error) -> KeyError {
    // jsonwebtoken's messages name the problem, never the key bytes.
    KeyError::Invalid {
        what,
        reason: err.to_string(),
    }
}

impl Keys {
    /// An Ed25519 (EdDSA) key pair from PEM: a PKCS#8 private key and an SPKI public key.
    pub fn ed25519_from_pem(private_pem: &[u8], public_pem: &[u8]) -> Result<Keys, KeyError> {
        Keys::from_pem(KeyAlgorithm::EdDSA, Some(private_pem), public_pem)
    }

    /// An RS256 key pair from PEM (PKCS#1 or PKCS#8 private key, public key).
    pub fn rs256_from_pem(private_pem: &[u8], public_pem: &[u8]) -> Result<Keys, KeyError> {
        Keys::from_pem(KeyAlgorithm::RS256, Some(private_pem), public_pem)
    }

    /// HS256 with a shared `secret` of at least [`MIN_HS256_SECRET_BYTES`] bytes. Every host
    /// that verifies can then also sign: prefer EdDSA.
    pub fn hs256(secret: &[u8]) -> Result<Keys, KeyError> {
        if secret.len() < MIN_HS256_SECRET_BYTES {
            return Err(KeyError::Invalid {
                what: "secret",
                reason: format!(
                    "{} bytes, at least {MIN_HS256_SECRET_BYTES} are required",
                    secret.len()
                ),
            });
        }
        Ok(Keys {
            algorithm: KeyAlgorithm::HS256,
            encoding: Some(EncodingKey::from_secret(secret)),
            decoding: DecodingKey::from_secret(secret),
            kid: key_id(secret),
            previous: Vec::new(),
        })
    }

    /// Keys from PEM for `algorithm` (EdDSA or RS256). Without `private_pem` the keys can only
    /// verify (a replica that never issues). With it, the pair is checked to match.
    pub fn from_pem(
        algorithm: KeyAlgorithm,
        private_pem: Option<&[u8]>,
        public_pem: &[u8],
    ) -> Result<Keys, KeyError> {
        let (encoding, decoding) = match algorithm {
            KeyAlgorithm::EdDSA => (
                private_pem
                    .map(EncodingKey::from_ed_pem)
                    .transpose()
                    .map_err(|e| invalid("private key", e))?,
                DecodingKey::from_ed_pem(public_pem).map_err(|e| invalid("public key", e))?,
            ),
            KeyAlgorithm::RS256 => (
                private_pem
                    .map(EncodingKey::from_rsa_pem)
                    .transpose()
                    .map_err(|e| invalid("private key", e))?,
                DecodingKey::from_rsa_pem(public_pem).map_err(|e| invalid("public key", e))?,
            ),
            KeyAlgorithm::HS256 => {
                return Err(KeyError::Algorithm(
                    "HS256 has no PEM keys; use Keys::hs256".into(),
                ));
            }
        };
        let keys = Keys {
            algorithm,
            encoding,
            decoding,
            kid: key_id(public_pem),
            previous: Vec::new(),
        };
        keys.check_pair()?;
        Ok(keys)
    }

    /// These keys, also accepting tokens signed by each key of `pem` (one or more public-key
    /// PEM blocks, Ed25519 or RSA, told apart by their content): the keys of earlier
    /// rotations. A key that is the current one is ignored.
    pub fn with_previous_pem(mut self, pem: &str) -> Result<Keys, KeyError> {
        let blocks = pem_blocks(pem);
        if blocks.is_empty() && !pem.trim().is_empty() {
            return Err(KeyError::Invalid {
                what: "previous public keys",
                reason: "no PEM block found".into(),
            });
        }
        for block in blocks {
            let kid = key_id(block.as_bytes());
            if kid == self.kid || self.previous.iter().any(|k| k.kid == kid) {
                continue;
            }
            let (algorithm, decoding) = match DecodingKey::from_ed_pem(block.as_bytes()) {
                Ok(decoding) => (KeyAlgorithm::EdDSA, decoding),
                Err(_) => (
                    KeyAlgorithm::RS256,
                    DecodingKey::from_rsa_pem(block.as_bytes())
                        .map_err(|e| invalid("previous public key", e))?,
                ),
            };
            self.previous.push(VerificationKey {
                algorithm,
                decoding,
                kid,
            });
        }
        Ok(self)
    }

    /// The `kid` of the current key (written into the tokens it signs).
    pub fn kid(&self) -> &str {
        &self.kid
    }

    /// The `kid`s of the earlier keys still accepted.
    pub fn previous_kids(&self) -> Vec<&str> {
        self.previous.iter().map(|k| k.kid.as_str()).collect()
    }

    /// The key that verifies a token whose header names `kid` (none: the current key, as
    /// tokens signed before keys had ids carry none), and its algorithm.
    pub(crate) fn verification_key(
        &self,
        kid: Option<&str>,
    ) -> Option<(KeyAlgorithm, &DecodingKey)> {
        match kid {
            None => Some((self.algorithm, &self.decoding)),
            Some(kid) if kid == self.kid => Some((self.algorithm, &self.decoding)),
            Some(kid) => self
                .previous
                .iter()
                .find(|k| k.kid == kid)
                .map(|k| (k.algorithm, &k.decoding)),
        }
    }

    /// Keys from the environment: the PEM in [`PRIVATE_KEY_VAR`] / [`PUBLIC_KEY_VAR`], or the
    /// files named by [`PRIVATE_KEY_FILE_VAR`] / [`PUBLIC_KEY_FILE_VAR`]; the algorithm from
    /// [`ALGORITHM_VAR`] (EdDSA when unset). Without a private key the keys only verify.
    pub fn from_env() -> Result<Keys, KeyError> {
        Keys::from_lookup(|name| std::env::var(name).ok().filter(|v| !v.trim().is_empty()))
    }

    /// [`Keys::from_env`] with the variables looked up by `var`.
    fn from_lookup(var: impl Fn(&str) -> Option<String>) -> Result<Keys, KeyError> {
        let algorithm = match var(ALGORITHM_VAR).as_deref() {
            None | Some("EdDSA") => KeyAlgorithm::EdDSA,
            Some("RS256") => KeyAlgorithm::RS256,
            Some(other) => return Err(KeyError::Algorithm(other.to_owned())),
        };
        let read = |pem_var: &str, file_var: &str| -> Result<Option<Vec<u8>>, KeyError> {
            if let Some(pem) = var(pem_var) {
                return Ok(Some(pem.into_bytes()));
            }
            match var(file_var) {
                Some(path) => read_file(Path::new(&path)).map(Some),
                None => Ok(None),
            }
        };
        let private = read(PRIVATE_KEY_VAR, PRIVATE_KEY_FILE_VAR)?;
        let public = read(PUBLIC_KEY_VAR, PUBLIC_KEY_FILE_VAR)?.ok_or(KeyError::Missing)?;
        let keys = Keys::from_pem(algorithm, private.as_deref(), &public)?;
        match read(PREVIOUS_PUBLIC_KEYS_VAR, PREVIOUS_PUBLIC_KEYS_FILE_VAR)? {
            Some(previous) => keys.with_previous_pem(&String::from_utf8_lossy(&previous)),
            None => Ok(keys),
        }
    }

    /// Keys from PEM files (`private` optional: without it the keys only verify).
    pub fn from_files(
        algorithm: KeyAlgorithm,
        private: Option<&Path>,
        public: &Path,
    ) -> Result<Keys, KeyError> {
        let private = private.map(read_file).transpose()?;
        Keys::from_pem(algorithm, private.as_deref(), &read_file(public)?)
    }

    /// A fresh Ed25519 key pair as PEM: `(private PKCS#8, public SPKI)`. For development and
    /// tests, or to provision a key once; a host that generates its key at start-up
    /// invalidates every token when it restarts and cannot share sessions with replicas.
    pub fn generate_ed25519_pem() -> Result<(String, String), KeyError> {
        let mut seed = [0u8; 32];
        getrandom::getrandom(&mut seed).map_err(|e| KeyError::Random(e.to_string()))?;
        let signing = ed25519_dalek::SigningKey::from_bytes(&seed);
        seed.fill(0);
        let private = signing
            .to_pkcs8_pem(LineEnding::LF)
            .map_err(|e| KeyError::Random(format!("encoding the generated key: {e}")))?;
        let public = signing
            .verifying_key()
            .to_public_key_pem(LineEnding::LF)
            .map_err(|e| KeyError::Random(format!("encoding the generated key: {e}")))?;
        Ok((private.as_str().to_owned(), public))
    }

    /// A fresh Ed25519 key pair (see [`Keys::generate_ed25519_pem`]).
    pub fn generate_ed25519() -> Result<Keys, KeyError> {
        let (private, public) = Keys::generate_ed25519_pem()?;
        Keys::ed25519_from_pem(private.as_bytes(), public.as_bytes())
    }

    /// The same verification key without the signing key: what a verify-only replica holds.
    pub fn verify_only(&self) -> Keys {
        Keys {
            algorithm: self.algorithm,
            encoding: None,
            decoding: self.decoding.clone(),
            kid: self.kid.clone(),
            previous: self.previous.clone(),
        }
    }

    /// The algorithm of these keys.
    pub fn algorithm(&self) -> KeyAlgorithm {
        self.algorithm
    }

    /// Whether these keys can sign (issue tokens).
    pub fn can_sign(&self) -> bool {
        self.encoding.is_some()
    }

    pub(crate) fn encoding(&self) -> Option<&EncodingKey> {
        self.encoding.as_ref()
    }

    /// Signs a probe with the private key and verifies it with the public one.
    fn check_pair(&self) -> Result<(), KeyError> {
        let Some(encoding) = &self.encoding else {
            return Ok(());
        };
        #[derive(serde::Serialize, serde::Deserialize)]
        struct Probe {
            probe: bool,
        }
        let token = jsonwebtoken::encode(
            &Header::new(self.algorithm.jwt()),
            &Probe { probe: true },
            encoding,
        )
        .map_err(|e| invalid("private key", e))?;
        let mut validation = Validation::new(self.algorithm.jwt());
        validation.required_spec_claims.clear();
        validation.validate_exp = false;
        validation.validate_aud = false;
        jsonwebtoken::decode::<Probe>(&token, &self.decoding, &validation)
            .map(|_| ())
            .map_err(|_| KeyError::Mismatch)
    }
}

fn read_file(path: &Path) -> Result<Vec<u8>, KeyError> {
    std::fs::read(path).map_err(|e| KeyError::File {
        path: path.display().to_string(),
        reason: e.to_string(),
    })
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;
    use std::collections::HashMap;

    #[test]
    fn generated_keys_sign_and_debug_hides_material() {
        let (private, public) = Keys::generate_ed25519_pem().unwrap();
        assert!(private.starts_with("-----BEGIN PRIVATE KEY-----"));
        assert!(public.starts_with("-----BEGIN PUBLIC KEY-----"));
        let keys = Keys::ed25519_from_pem(private.as_bytes(), public.as_bytes()).unwrap();
        assert!(keys.can_sign());
        let shown = format!("{keys:?}");
        assert!(shown.contains("EdDSA"), "{shown}");
        let body: String = private.lines().nth(1).unwrap().chars().take(16).collect();
        assert!(!shown.contains(&body), "Debug must not print key material");
        assert!(!keys.verify_only().can_sign());
    }

    #[test]
    fn mismatched_pair_is_refused() {
        let (private, _) = Keys::generate_ed25519_pem().unwrap();
        let (_, other_public) = Keys::generate_ed25519_pem().unwrap();
        assert_eq!(
            Keys::ed25519_from_pem(private.as_bytes(), other_public.as_bytes()).unwrap_err(),
            KeyError::Mismatch
        );
    }

    #[test]
    fn previous_keys_are_found_by_kid() {
        let (private, public) = Keys::generate_ed25519_pem().unwrap();
        let (_, old_a) = Keys::generate_ed25519_pem().unwrap();
        let (_, old_b) = Keys::generate_ed25519_pem().unwrap();
        let keys = Keys::ed25519_from_pem(private.as_bytes(), public.as_bytes())
            .unwrap()
            .with_previous_pem(&format!("{old_a}\n{old_b}\n{public}"))
            .unwrap();
        // The current key listed again is not a previous one; ids are stable across loads.
        assert_eq!(keys.previous_kids().len(), 2);
        let again = Keys::ed25519_from_pem(private.as_bytes(), public.as_bytes()).unwrap();
        assert_eq!(keys.kid(), again.kid());
        for kid in keys.previous_kids() {
            assert!(keys.verification_key(Some(kid)).is_some());
        }
        assert!(keys.verification_key(Some(keys.kid())).is_some());
        assert!(keys.verification_key(None).is_some());
        assert!(keys.verification_key(Some("0123456789abcdef")).is_none());
        assert!(
            keys.verify_only()
                .verification_key(Some(keys.previous_kids()[0]))
                .is_some()
        );
        assert!(matches!(
            again.clone().with_previous_pem("no pem here"),
            Err(KeyError::Invalid { .. })
        ));
        let broken = "-----BEGIN PUBLIC KEY-----\nAAAA\n-----END PUBLIC KEY-----\n";
        assert!(again.with_previous_pem(broken).is_err());
    }

    #[test]
    fn garbage_pem_is_invalid() {
        let err = Keys::ed25519_from_pem(b"not a pem", b"not a pem").unwrap_err();
        assert!(matches!(err, KeyError::Invalid { .. }), "{err:?}");
    }

    #[test]
    fn short_hs256_secret_is_refused() {
        assert!(Keys::hs256(&[7; 31]).is_err());
        assert_eq!(
            Keys::hs256(&[7; 32]).unwrap().algorithm(),
            KeyAlgorithm::HS256
        );
    }

    #[test]
    fn environment_lookup() {
        let (private, public) = Keys::generate_ed25519_pem().unwrap();
        let vars: HashMap<&str, String> =
            HashMap::from([(PRIVATE_KEY_VAR, private), (PUBLIC_KEY_VAR, public.clone())]);
        let keys = Keys::from_lookup(|name| vars.get(name).cloned()).unwrap();
        assert!(keys.can_sign());
        assert_eq!(keys.algorithm(), KeyAlgorithm::EdDSA);

        let verify_only: HashMap<&str, String> = HashMap::from([(PUBLIC_KEY_VAR, public)]);
        let keys = Keys::from_lookup(|name| verify_only.get(name).cloned()).unwrap();
        assert!(!keys.can_sign());

        assert_eq!(Keys::from_lookup(|_| None).unwrap_err(), KeyError::Missing);
        assert!(matches!(
            Keys::from_lookup(|name| (name == ALGORITHM_VAR).then(|| "HS256".to_owned())),
            Err(KeyError::Algorithm(_))
        ));
    }
}
