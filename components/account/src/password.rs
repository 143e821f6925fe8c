//! Password hashing: argon2id, stored as a PHC string (`$argon2id$v=19$m=…,t=…,p=1$salt$hash`).
//!
//! The cost defaults to OWASP's recommendation (19 MiB, 2 iterations, 1 lane). The
//! configuration keys `argon2_memory_kib` and `argon2_iterations` override it, for example to
//! make tests cheap. Verification uses the parameters written in the stored hash, so a change
//! of cost applies to new hashes; a successful sign-in rehashes a password whose hash used
//! other parameters ([`Hasher::is_current`]).
//!
//! Salts are 16 bytes from the host's secure random source (`wasi:random`, through wstd), the
//! same source the SDK's UUIDs use.

use agora_sdk::config;
use agora_sdk::http::ApiError;
use argon2::password_hash::{PasswordHasher as _, PasswordVerifier as _, phc::PasswordHash};
use argon2::{Algorithm, Argon2, Params, Version};

/// Configuration key: argon2 memory cost in KiB.
pub const MEMORY_KEY: &str = "argon2_memory_kib";
/// Configuration key: argon2 iterations (time cost).
pub const ITERATIONS_KEY: &str = "argon2_iterations";
/// Largest memory cost accepted from the configuration (1 GiB), far above what an instance's
/// memory limit lets through anyway.
const MAX_MEMORY_KIB: u32 = 1 << 20;
/// Bytes of salt per hash.
const SALT_BYTES: usize = 16;

/// Hashes and verifies passwords with the configured cost.
pub struct Hasher {
    argon2: Argon2<'static>,
    params: Params,
}

impl Hasher {
    /// A hasher with the configured (or default) cost; a 500 naming the key when the
    /// configuration holds a value argon2 cannot use.
    pub fn from_config() -> Result<Hasher, ApiError> {
        let bad = |err: String| ApiError::internal(format!("password hashing: {err}"));
        let memory =
            config::get_or(MEMORY_KEY, Params::DEFAULT_M_COST).map_err(|e| bad(e.to_string()))?;
        let iterations = config::get_or(ITERATIONS_KEY, Params::DEFAULT_T_COST)
            .map_err(|e| bad(e.to_string()))?;
        Hasher::new(memory, iterations).map_err(bad)
    }

    /// A hasher costing `memory_kib` KiB and `iterations` passes, on one lane.
    pub fn new(memory_kib: u32, iterations: u32) -> Result<Hasher, String> {
        let costs = format!("`{MEMORY_KEY}` = {memory_kib}, `{ITERATIONS_KEY}` = {iterations}");
        if memory_kib > MAX_MEMORY_KIB {
            return Err(format!("{costs}: memory above {MAX_MEMORY_KIB} KiB"));
        }
        let params = Params::new(memory_kib, iterations, Params::DEFAULT_P_COST, None)
            .map_err(|err| format!("{costs}: {err}"))?;
        Ok(Hasher {
            argon2: Argon2::new(Algorithm::Argon2id, Version::V0x13, params.clone()),
            params,
        })
    }

    /// The PHC string of `password` with a fresh random salt.
    pub fn hash(&self, password: &str) -> Result<String, ApiError> {
        let mut salt = [0u8; SALT_BYTES];
        wstd::rand::get_random_bytes(&mut salt);
        self.hash_with_salt(password, &salt)
            .map_err(|err| ApiError::internal(format!("cannot hash a password: {err}")))
    }

    fn hash_with_salt(&self, password: &str, salt: &[u8]) -> Result<String, String> {
        self.argon2
            .hash_password_with_salt(password.as_bytes(), salt)
            .map(|hash| hash.to_string())
            .map_err(|err| err.to_string())
    }

    /// Whether `password` matches the stored PHC string `stored`. A stored value that is not a
    /// PHC string matches nothing.
    pub fn verify(&self, password: &str, stored: &str) -> bool {
        match PasswordHash::new(stored) {
            Ok(hash) => self
                .argon2
                .verify_password(password.as_bytes(), &hash)
                .is_ok(),
            Err(_) => false,
        }
    }

    /// Spends what a [`Hasher::verify`] spends, for a sign-in with an email no account has: the
    /// answer must not come back faster than a wrong password's.
    pub fn verify_nothing(&self, password: &str) {
        let hash = self
            .argon2
            .hash_password_with_salt(password.as_bytes(), &[0u8; SALT_BYTES]);
        std::hint::black_box(hash.is_ok());
    }

    /// Whether `stored` was made with the current algorithm and cost (if not, a sign-in that
    /// has the password at hand rehashes it).
    pub fn is_current(&self, stored: &str) -> bool {
        let Ok(hash) = PasswordHash::new(stored) else {
            return false;
        };
        let Ok(params) = Params::try_from(&hash) else {
            return false;
        };
        hash.algorithm == argon2::ARGON2ID_IDENT
            && params.m_cost() == self.params.m_cost()
            && params.t_cost() == self.params.t_cost()
            && params.p_cost() == self.params.p_cost()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hashes_verify_and_carry_their_cost() {
        let hasher = Hasher::new(64, 1).expect("valid costs");
        let stored = hasher
            .hash_with_salt("correct horse", b"sixteen byte salt")
            .expect("hashes");
        assert!(
            stored.starts_with("$argon2id$v=19$m=64,t=1,p=1$"),
            "{stored}"
        );
        assert!(hasher.verify("correct horse", &stored));
        assert!(!hasher.verify("correct horsE", &stored));
        assert!(!hasher.verify("correct horse", "not a phc string"));
        assert!(hasher.is_current(&stored));
        // Another cost verifies with the stored parameters, and asks for a rehash.
        let dearer = Hasher::new(128, 2).expect("valid costs");
        assert!(dearer.verify("correct horse", &stored));
        assert!(!dearer.is_current(&stored));
        assert!(!hasher.is_current("$argon2i$v=19$m=64,t=1,p=1$c2FsdHNhbHQ$aGFzaGhhc2g"));
    }

    #[test]
    fn unusable_costs_are_refused_naming_the_keys() {
        let error = Hasher::new(1, 1).err().expect("too little memory");
        assert!(error.contains(MEMORY_KEY), "{error}");
        assert!(Hasher::new(64, 0).is_err());
        assert!(Hasher::new(MAX_MEMORY_KIB + 1, 1).is_err());
        assert!(Hasher::new(Params::DEFAULT_M_COST, Params::DEFAULT_T_COST).is_ok());
    }
}
