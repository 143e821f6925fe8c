//! `agora serve --watch`: swaps a component in when its `.wasm` file changes on disk.
//!
//! The files are polled (every [`POLL_INTERVAL`]), which works the same on every file system,
//! including bind mounts where change notifications do not arrive. A change is acted on only
//! once the file has kept the same size, modification time and inode for [`SETTLE_TIME`] — a
//! build still writing it is left alone — and its bytes are read and then checked against a
//! second look at the file, so bytes that changed during the read are never used. The bytes then
//! go through the same validation as an upload ([`Components::install`]): a truncated or
//! otherwise broken file is rejected with a warning and the running version keeps serving; the
//! next change of the file is tried again.

use crate::component::Installed;
use crate::swap::{Components, Outcome};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};
use tokio::sync::watch;
use tokio::task::JoinHandle;

/// How often the files are looked at.
pub const POLL_INTERVAL: Duration = Duration::from_millis(200);
/// How long a changed file must stay unchanged before it is loaded.
pub const SETTLE_TIME: Duration = Duration::from_millis(500);

/// What identifies one state of a file.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Stamp {
    len: u64,
    modified: Option<SystemTime>,
    inode: u64,
}

async fn stamp(path: &Path) -> Option<Stamp> {
    let metadata = tokio::fs::metadata(path).await.ok()?;
    #[cfg(unix)]
    let inode = std::os::unix::fs::MetadataExt::ino(&metadata);
    #[cfg(not(unix))]
    let inode = 0;
    Some(Stamp {
        len: metadata.len(),
        modified: metadata.modified().ok(),
        inode,
    })
}

/// One watched file.
struct Watched {
    component: String,
    path: PathBuf,
    /// The state last acted on (loaded, found identical, or rejected).
    settled: Option<Stamp>,
    /// A newer state and when it was first seen.
    pending: Option<(Stamp, Instant)>,
}

/// Watches the file of every component until `stop` turns true.
pub fn spawn(components: Arc<Components>, mut stop: watch::Receiver<bool>) -> JoinHandle<()> {
    tokio::spawn(async move {
        let mut files = Vec::new();
        for slot in components.slots() {
            let path = slot.current().spec.source.clone();
            files.push(Watched {
                component: slot.name().to_string(),
                settled: stamp(&path).await,
                path,
                pending: None,
            });
        }
        tracing::info!(
            files = files.len(),
            poll_ms = POLL_INTERVAL.as_millis() as u64,
            settle_ms = SETTLE_TIME.as_millis() as u64,
            "watching component files for changes"
        );
        loop {
            tokio::select! {
                () = tokio::time::sleep(POLL_INTERVAL) => {}
                _ = stop.changed() => return,
            }
            if *stop.borrow() {
                return;
            }
            for file in &mut files {
                poll(&components, file).await;
            }
        }
    })
}

async fn poll(components: &Components, file: &mut Watched) {
    let Some(now) = stamp(&file.path).await else {
        // Missing for the moment (a build replacing it): look again on the next poll.
        file.pending = None;
        return;
    };
    if Some(now) == file.settled {
        file.pending = None;
        return;
    }
    match file.pending {
        Some((seen, since)) if seen == now => {
            if since.elapsed() < SETTLE_TIME {
                return;
            }
        }
        _ => {
            file.pending = Some((now, Instant::now()));
            return;
        }
    }
    let bytes = match tokio::fs::read(&file.path).await {
        Ok(bytes) => bytes,
        Err(err) => {
            tracing::debug!(component = %file.component, error = %err, "changed file unreadable; retrying");
            file.pending = None;
            return;
        }
    };
    // The file must not have changed while it was read.
    if stamp(&file.path).await != Some(now) || bytes.len() as u64 != now.len {
        file.pending = None;
        return;
    }
    file.pending = None;
    file.settled = Some(now);
    tracing::info!(component = %file.component, path = %file.path.display(), bytes = bytes.len(), "component file changed; validating");
    match components
        .install(&file.component, bytes, Installed::Watch)
        .await
    {
        Ok(Outcome::Swapped(_)) => {}
        Ok(Outcome::Unchanged(version)) => {
            tracing::info!(component = %file.component, digest = %version.digest, "file changed but holds the version already serving");
        }
        Err(err) => {
            tracing::warn!(component = %file.component, error = %err, "changed file rejected; the running version keeps serving");
        }
    }
}
