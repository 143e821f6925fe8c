//! On-disk cache of compiled components.
//!
//! An entry is named by the SHA-256 of the component's bytes and the engine's compatibility hash
//! (wasmtime version, target and every setting that changes generated code), so a restart with
//! unchanged components and the same host binary loads machine code instead of compiling, and
//! anything else misses.
//!
//! Invariants: an entry is written to a temporary file and renamed into place, so a reader never
//! sees a half-written file, and a file is never modified once in place (it is mapped into
//! memory while loaded). An entry that fails to load is removed and compiled again.

use anyhow::Context as _;
use sha2::{Digest, Sha256};
use std::hash::{Hash, Hasher};
use std::io::Write as _;
use std::path::{Path, PathBuf};
use wasmtime::Engine;
use wasmtime::component::Component;

/// Where a loaded component's machine code came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Origin {
    /// Compiled now (and stored for next time).
    Compiled,
    /// Loaded from the cache.
    Cache,
}

/// The cache folder of one engine.
#[derive(Debug, Clone)]
pub struct CompileCache {
    dir: PathBuf,
    engine_key: String,
}

impl CompileCache {
    /// A cache under `dir` for `engine`; the folder is created on first write.
    pub fn new(dir: PathBuf, engine: &Engine) -> CompileCache {
        // `DefaultHasher::new()` uses fixed keys, so the value is stable for a given host binary,
        // which is all the cache needs (a new binary may recompile once).
        let mut hasher = std::hash::DefaultHasher::new();
        engine.precompile_compatibility_hash().hash(&mut hasher);
        CompileCache {
            dir,
            engine_key: format!("{:016x}", hasher.finish()),
        }
    }

    /// Returns the compiled `bytes` (whose SHA-256 is `digest`), from the cache when possible.
    pub fn load(
        &self,
        engine: &Engine,
        bytes: &[u8],
        digest: &str,
    ) -> anyhow::Result<(Component, Origin)> {
        let path = self.entry_path(digest);
        if path.exists() {
            // SAFETY: the file was written by `precompile_component` of an engine with the same
            // compatibility hash (it is part of the name) and is never modified in place.
            match unsafe { Component::deserialize_file(engine, &path) } {
                Ok(component) => return Ok((component, Origin::Cache)),
                Err(err) => {
                    tracing::warn!(path = %path.display(), error = %err, "discarding unreadable compile-cache entry");
                    let _ = std::fs::remove_file(&path);
                }
            }
        }
        let compiled = engine.precompile_component(bytes)?;
        if let Err(err) = self.store(&path, &compiled) {
            tracing::warn!(dir = %self.dir.display(), error = %format!("{err:#}"), "cannot write the compile cache; continuing without it");
            // SAFETY: `compiled` was produced just now by `precompile_component` of this engine.
            let component = unsafe { Component::deserialize(engine, &compiled)? };
            return Ok((component, Origin::Compiled));
        }
        // SAFETY: as above; the file now holds exactly `compiled` and is never modified.
        let component = unsafe { Component::deserialize_file(engine, &path)? };
        Ok((component, Origin::Compiled))
    }

    /// Whether an entry for the component whose SHA-256 is `digest` is in place (a load will
    /// then most likely not compile; an unreadable entry is still compiled again).
    pub fn contains(&self, digest: &str) -> bool {
        self.entry_path(digest).is_file()
    }

    fn entry_path(&self, digest: &str) -> PathBuf {
        self.dir.join(format!("{digest}-{}.cwasm", self.engine_key))
    }

    fn store(&self, path: &Path, compiled: &[u8]) -> anyhow::Result<()> {
        std::fs::create_dir_all(&self.dir)
            .with_context(|| format!("cannot create {}", self.dir.display()))?;
        // Unique per process and per call: two loads of the same component may race.
        static NEXT: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
        let n = NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let tmp = path.with_extension(format!("tmp.{}.{n}", std::process::id()));
        let mut file = std::fs::File::create(&tmp)
            .with_context(|| format!("cannot create {}", tmp.display()))?;
        file.write_all(compiled)
            .and_then(|()| file.sync_all())
            .with_context(|| format!("cannot write {}", tmp.display()))?;
        std::fs::rename(&tmp, path)
            .with_context(|| format!("cannot rename {} into place", tmp.display()))?;
        Ok(())
    }
}

/// SHA-256 of `bytes`, lowercase hex.
pub fn sha256_hex(bytes: &[u8]) -> String {
    hex::encode(Sha256::digest(bytes))
}
