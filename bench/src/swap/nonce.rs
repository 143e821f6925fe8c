//! New bytes for the same code: a component's .wasm with a custom section holding a random
//! nonce (so the compile cache misses), and the removal of those versions' compile-cache
//! entries after the run.

use bytes::Bytes;

/// The name of the custom section that makes a version's bytes new.
const NONCE_SECTION: &str = "agora-bench";

/// `wasm` with a component-level custom section appended: id 0, its size, the name
/// [`NONCE_SECTION`] and a random nonce. New bytes, so the compile cache misses; the same code.
pub(super) fn with_nonce(wasm: &[u8]) -> Bytes {
    let mut content = leb128(NONCE_SECTION.len());
    content.extend_from_slice(NONCE_SECTION.as_bytes());
    content.extend_from_slice(uuid::Uuid::new_v4().as_bytes());
    let mut bytes = wasm.to_vec();
    bytes.push(0);
    bytes.extend(leb128(content.len()));
    bytes.extend(content);
    Bytes::from(bytes)
}

/// `n` as unsigned LEB128.
fn leb128(mut n: usize) -> Vec<u8> {
    let mut out = Vec::new();
    loop {
        let byte = (n & 0x7f) as u8;
        n >>= 7;
        if n == 0 {
            out.push(byte);
            return out;
        }
        out.push(byte | 0x80);
    }
}

/// Deletes the compile-cache entries of `digests` (`sha256:<hex>`): named `<hex>-<engine>.cwasm`.
pub(super) fn remove_cache_entries(dir: &std::path::Path, digests: &[String]) {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return;
    };
    let prefixes: Vec<String> = digests
        .iter()
        .map(|d| format!("{}-", d.trim_start_matches("sha256:")))
        .collect();
    let mut removed = 0;
    for entry in entries.flatten() {
        let name = entry.file_name().to_string_lossy().into_owned();
        if prefixes.iter().any(|p| name.starts_with(p))
            && std::fs::remove_file(entry.path()).is_ok()
        {
            removed += 1;
        }
    }
    eprintln!(
        "xtask: removed {removed} compile-cache entries of the nonce versions from {}",
        dir.display()
    );
}
