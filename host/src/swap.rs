//! Hot swap: replacing a running component's code without a failed request.
//!
//! Every component lives in a [`Slot`]: an [`ArcSwap`] holding the version that serves, and the
//! version before it. A request or an event takes the current version once, when it starts,
//! and keeps that `Arc` to the end — so in-flight work finishes on the version it started with,
//! and the old version is freed when the last of it ends.
//!
//! A new version is checked completely before it is switched in, off the async threads (see
//! [`Components::install`]): the bytes must be a component, compile, import only what the
//! component's grants allow, link, export what its routes and subscriptions need, instantiate
//! once under its limits, and its new migrations must apply. Only then does one atomic store
//! make it current. Any failure leaves the running version untouched and says why.
//!
//! A swap changes the code only: routes, policies, grants, limits, configuration, the database
//! namespace and the concurrency gate are the manifest's and are shared by every version.

use crate::compile_cache::CompileCache;
use crate::component::{Installed, LoadedComponent, prepare};
use crate::state::{self, InstanceState};
use arc_swap::ArcSwap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tracing::Instrument as _;
use wasmtime::Engine;
use wasmtime::component::Linker;

/// One component's versions: the one serving and the one before it.
pub struct Slot {
    name: Arc<str>,
    current: ArcSwap<LoadedComponent>,
    previous: Mutex<Option<Arc<LoadedComponent>>>,
    /// Swaps of one component happen one at a time.
    swapping: tokio::sync::Mutex<()>,
}

impl Slot {
    /// A slot serving `component`.
    pub fn new(component: Arc<LoadedComponent>) -> Slot {
        Slot {
            name: component.name.clone(),
            current: ArcSwap::new(component),
            previous: Mutex::new(None),
            swapping: tokio::sync::Mutex::new(()),
        }
    }

    /// The component's name.
    pub fn name(&self) -> &Arc<str> {
        &self.name
    }

    /// The version serving now. Callers keep the `Arc` for the whole request or event.
    pub fn current(&self) -> Arc<LoadedComponent> {
        self.current.load_full()
    }

    /// The version before the current one, kept loaded for rollback.
    pub fn previous(&self) -> Option<Arc<LoadedComponent>> {
        self.previous
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .clone()
    }

    /// Makes `next` current and the current one previous. The version going out retires its
    /// reused instances: none of them serves another request.
    fn switch(&self, next: Arc<LoadedComponent>) -> Arc<LoadedComponent> {
        let mut previous = self
            .previous
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        next.instances.reopen();
        let old = self.current.swap(next);
        old.instances.retire();
        *previous = Some(old.clone());
        old
    }
}

/// What compiling and linking a new version needs: the host's one engine, its linker, the
/// compile cache and the capability units.
pub struct Loader {
    /// The engine every component is compiled for.
    pub engine: Engine,
    /// The linker with every host import.
    pub linker: Linker<InstanceState>,
    /// Compiled artifacts on disk.
    pub cache: CompileCache,
    /// The capability units, whose grants a new version's imports are checked against.
    pub units: crate::capabilities::Units,
}

/// A version, as the admin API and the fleet describe it.
#[derive(Debug, Clone, serde::Serialize)]
pub struct Version {
    /// `sha256:<hex>` of the bytes.
    pub digest: String,
    /// When it was loaded (RFC 3339).
    pub loaded_at: String,
    /// How it came: `manifest`, `admin`, `watch` or `fleet`.
    pub installed_by: &'static str,
    /// Whether its machine code was compiled for it (`false`: read from the compile cache).
    pub compiled: bool,
}

impl Version {
    /// The description of `component`'s version.
    pub fn of(component: &LoadedComponent) -> Version {
        Version {
            digest: format!("sha256:{}", component.digest),
            loaded_at: crate::fleet::timestamp(component.loaded_at),
            installed_by: component.installed.as_str(),
            compiled: matches!(component.origin, crate::Origin::Compiled),
        }
    }
}

/// A completed swap.
#[derive(Debug, Clone, serde::Serialize)]
pub struct Swapped {
    /// The component.
    pub component: String,
    /// The version that served before.
    pub from: Version,
    /// The version serving now.
    pub to: Version,
    /// Migrations applied on the way (names), in order.
    pub migrations_applied: Vec<String>,
    /// Time from the bytes to the switch, in milliseconds.
    pub validation_ms: u64,
}

/// What an install did.
#[derive(Debug, Clone)]
pub enum Outcome {
    /// The new version serves.
    Swapped(Swapped),
    /// The bytes are the version already serving: nothing to do.
    Unchanged(Version),
}

/// Why nothing changed.
#[derive(Debug, thiserror::Error)]
pub enum SwapError {
    /// No component has that name.
    #[error("no component is named `{0}`")]
    UnknownComponent(String),
    /// The new version failed a check; the old one still serves.
    #[error(
        "component `{component}`: the new version was rejected, {current} still serves: {reason}"
    )]
    Rejected {
        /// The component.
        component: String,
        /// The digest still serving (`sha256:…`).
        current: String,
        /// Which check failed and how.
        reason: String,
    },
    /// Rollback asked for, but there is no earlier version.
    #[error("component `{0}` has no previous version to roll back to")]
    NoPrevious(String),
}

/// Every component of a host, by name, and the means to load new versions of them.
pub struct Components {
    slots: Vec<Arc<Slot>>,
    loader: Arc<Loader>,
}

impl Components {
    /// The registry of `slots` (manifest order).
    pub fn new(slots: Vec<Arc<Slot>>, loader: Loader) -> Components {
        Components {
            slots,
            loader: Arc::new(loader),
        }
    }

    /// Every slot, in manifest order.
    pub fn slots(&self) -> &[Arc<Slot>] {
        &self.slots
    }

    /// The slot of `name`.
    pub fn get(&self, name: &str) -> Option<&Arc<Slot>> {
        self.slots.iter().find(|slot| &*slot.name == name)
    }

    fn slot(&self, name: &str) -> Result<Arc<Slot>, SwapError> {
        self.get(name)
            .cloned()
            .ok_or_else(|| SwapError::UnknownComponent(name.to_owned()))
    }

    /// Validates `bytes` as the new version of `name` and, when every check passes, makes it
    /// current. Hashing and compiling run on a thread of their own at background priority.
    /// Counted in `agora_swaps_total{component, outcome}` (`applied`, `unchanged`, `refused`).
    pub async fn install(
        &self,
        name: &str,
        bytes: Vec<u8>,
        installed: Installed,
    ) -> Result<Outcome, SwapError> {
        let span = tracing::info_span!(
            "swap",
            component = name,
            installed_by = installed.as_str(),
            "otel.name" = %format_args!("swap {name}"),
        );
        let outcome = self
            .install_unmetered(name, bytes, installed)
            .instrument(span)
            .await;
        let label = match &outcome {
            Ok(Outcome::Swapped(_)) => "applied",
            Ok(Outcome::Unchanged(_)) => "unchanged",
            Err(SwapError::Rejected { .. }) => "refused",
            // No such component: not a series of its own (the name came from a caller).
            Err(_) => return outcome,
        };
        crate::metrics::metrics().swaps.with([name, label]).inc();
        outcome
    }

    async fn install_unmetered(
        &self,
        name: &str,
        bytes: Vec<u8>,
        installed: Installed,
    ) -> Result<Outcome, SwapError> {
        let slot = self.slot(name)?;
        let _one_at_a_time = slot.swapping.lock().await;
        let started = Instant::now();
        let current = slot.current();
        let rejected = |reason: String| SwapError::Rejected {
            component: name.to_owned(),
            current: format!("sha256:{}", current.digest),
            reason: crate::manifest::one_line(&reason),
        };
        // Off the async threads, at a priority below theirs: requests go first.
        let (sender, receiver) = tokio::sync::oneshot::channel();
        let loader = self.loader.clone();
        let spec = current.spec.clone();
        let running = current.digest.clone();
        std::thread::Builder::new()
            .name(format!("agora-validate-{name}"))
            .spawn(move || {
                crate::engine::lower_thread_priority();
                let digest = crate::compile_cache::sha256_hex(&bytes);
                let prepared = if digest == running {
                    Ok(None)
                } else {
                    prepare(
                        &spec,
                        &bytes,
                        digest,
                        &loader.engine,
                        &loader.linker,
                        &loader.cache,
                        &loader.units,
                    )
                    .map(Some)
                };
                let _ = sender.send(prepared);
            })
            .map_err(|err| rejected(format!("cannot start validating: {err}")))?;
        let prepared = receiver
            .await
            .map_err(|_| rejected("validation stopped unexpectedly".into()))?;
        let Some(code) = prepared.map_err(&rejected)? else {
            return Ok(Outcome::Unchanged(Version::of(&current)));
        };
        let candidate = current.with_code(code, installed);
        probe(&candidate).await.map_err(&rejected)?;
        let migrations_applied = match candidate.capabilities.database() {
            Some(database) => database
                .apply_migrations(candidate.spec.migrations.as_deref())
                .await
                .map_err(&rejected)?,
            None => Vec::new(),
        };
        let candidate = Arc::new(candidate);
        let old = slot.switch(candidate.clone());
        let swapped = Swapped {
            component: name.to_owned(),
            from: Version::of(&old),
            to: Version::of(&candidate),
            migrations_applied,
            validation_ms: started.elapsed().as_millis() as u64,
        };
        tracing::info!(
            component = name,
            from = %&old.digest[..12],
            to = %&candidate.digest[..12],
            installed_by = installed.as_str(),
            origin = ?candidate.origin,
            validation_ms = swapped.validation_ms,
            "component swapped"
        );
        Ok(Outcome::Swapped(swapped))
    }

    /// Makes the previous version of `name` current again (and the current one previous).
    pub async fn rollback(&self, name: &str) -> Result<Swapped, SwapError> {
        let slot = self.slot(name)?;
        let _one_at_a_time = slot.swapping.lock().await;
        let started = Instant::now();
        let previous = slot
            .previous()
            .ok_or_else(|| SwapError::NoPrevious(name.to_owned()))?;
        let old = slot.switch(previous.clone());
        let swapped = Swapped {
            component: name.to_owned(),
            from: Version::of(&old),
            to: Version::of(&previous),
            migrations_applied: Vec::new(),
            validation_ms: started.elapsed().as_millis() as u64,
        };
        tracing::info!(
            component = name,
            from = %&old.digest[..12],
            to = %&previous.digest[..12],
            "component rolled back"
        );
        crate::metrics::metrics()
            .swaps
            .with([name, "rolled_back"])
            .inc();
        Ok(swapped)
    }
}

/// Instantiates `candidate` once, without calling it, under its own limits: what a request
/// would do first. A version whose instantiation traps or exceeds its memory never serves.
async fn probe(candidate: &LoadedComponent) -> Result<(), String> {
    let deadline = Instant::now() + Duration::from_millis(candidate.limits.deadline_ms);
    let mut store = state::new_store(&candidate.store_spec(), deadline);
    let instantiated = if let Some(proxy) = &candidate.proxy {
        proxy.instantiate(&mut store).await.map(drop)
    } else if let Some(subscriber) = &candidate.subscriber {
        subscriber.instantiate_async(&mut store).await.map(drop)
    } else {
        return Ok(());
    };
    instantiated.map_err(|err| {
        if store.data().limits.memory_denied {
            format!(
                "cannot be instantiated within its memory limit of {} MiB: {err:#}",
                candidate.limits.memory_bytes >> 20
            )
        } else {
            format!("cannot be instantiated: {err:#}")
        }
    })
}
