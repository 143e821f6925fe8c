//! agora's host: runs WebAssembly components (wasi:http/proxy) behind an HTTP listener.
//!
//! [`Host::load`] reads a manifest, builds the one engine of the process, compiles (or loads
//! from the on-disk cache) and pre-links every component, and builds the routing table. Every
//! problem with the manifest or a component surfaces there, as a [`HostError`] whose message is
//! one line. [`Host::serve`] then answers requests until its shutdown future resolves, and
//! drains.
//!
//! ```no_run
//! # async fn run() -> anyhow::Result<()> {
//! use agora_host::{Host, HostConfig};
//! let host = Host::load(&HostConfig::new("agora.toml")).await?;
//! let listener = tokio::net::TcpListener::bind("127.0.0.1:8080").await?;
//! host.serve(listener, async { let _ = tokio::signal::ctrl_c().await; }).await;
//! # Ok(()) }
//! ```

pub mod admin;
pub mod calls;
pub mod capabilities;
pub mod compile_cache;
pub mod component;
pub mod edge;
pub mod engine;
pub mod fleet;
pub mod granted;
pub mod instances;
pub mod manifest;
pub mod metrics;
pub mod ops;
pub mod outbox;
pub mod policy;
pub mod replica;
pub mod response;
pub mod router;
pub mod server;
pub mod state;
pub mod swap;
pub mod telemetry;
pub mod triggers;
pub mod watch;

use component::{LoadError, LoadedComponent};
use engine::{EngineSettings, EpochTicker, HostEngine};
use manifest::{Manifest, ManifestError};
use router::Router;
use std::future::Future;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;
use swap::{Components, Slot};
use tokio::net::TcpListener;
use triggers::http::HttpTrigger;

pub use compile_cache::Origin;
pub use server::Drained;

/// Default time in-flight requests get to finish after a shutdown signal.
pub const DEFAULT_DRAIN_TIMEOUT: Duration = Duration::from_secs(30);

/// How to start a host.
#[derive(Debug, Clone)]
pub struct HostConfig {
    /// The manifest file.
    pub manifest: PathBuf,
    /// Where the host keeps its state (the compile cache, embedded databases).
    pub data_dir: PathBuf,
    /// Allocate instances on demand even where the pooling allocator would work.
    pub force_on_demand: bool,
    /// Time in-flight requests get to finish after shutdown is requested, and then again the
    /// time the in-process bus gets to handle the events it holds.
    pub drain_timeout: Duration,
    /// Redis for the cache capability; `None` = the in-memory cache.
    pub redis_url: Option<String>,
    /// Redis for auth state (revocations, refresh families) and rate-limit buckets; `None` =
    /// the database after `redis_url`'s on the same server ([`agora_redis::next_database`]),
    /// or memory without `redis_url`. Never the cache's keyspace.
    pub auth_redis_url: Option<String>,
    /// `postgres://…` or `sqlite://DIR` for the sql capability; `None` = SQLite files under
    /// `data_dir/sql`.
    pub database_url: Option<String>,
    /// NATS (with JetStream) for messaging; `None` = the in-process bus.
    pub nats_url: Option<String>,
    /// Keys that sign and verify tokens. `None`: when the manifest needs auth, a key generated
    /// for this process on embedded backends, an error with Redis (replicas must share keys).
    pub auth_keys: Option<agora_auth::Keys>,
    /// Swap a component in when its file changes (`agora serve --watch`).
    pub watch: bool,
    /// Join this fleet (needs `nats_url`): run its desired versions and report what runs.
    pub fleet: Option<String>,
    /// Bounds on the connections of the public and admin listeners.
    pub connections: server::ConnectionLimits,
    /// The lowest rate at which a client's request body must arrive.
    pub body_rate: triggers::http::BodyRate,
}

impl HostConfig {
    /// Defaults for `manifest`: data in `.agora/`, pooling when possible, 30 s drain.
    pub fn new(manifest: impl Into<PathBuf>) -> HostConfig {
        HostConfig {
            manifest: manifest.into(),
            data_dir: PathBuf::from(".agora"),
            force_on_demand: false,
            drain_timeout: DEFAULT_DRAIN_TIMEOUT,
            redis_url: None,
            auth_redis_url: None,
            database_url: None,
            nats_url: None,
            auth_keys: None,
            watch: false,
            fleet: None,
            connections: server::ConnectionLimits::default(),
            body_rate: triggers::http::BodyRate::default(),
        }
    }
}

/// Why a host could not start. The message is one line, naming the file and the component.
#[derive(Debug, thiserror::Error)]
pub enum HostError {
    /// The manifest is unreadable or invalid.
    #[error(transparent)]
    Manifest(#[from] ManifestError),
    /// A component failed to load.
    #[error("manifest {manifest}: {error}", manifest = manifest.display())]
    Component {
        /// The manifest naming the component.
        manifest: PathBuf,
        /// What went wrong.
        error: LoadError,
    },
    /// A backend URL is malformed.
    #[error("{0}")]
    Backend(String),
    /// The engine could not be created.
    #[error("cannot start the WebAssembly engine: {0:#}")]
    Engine(anyhow::Error),
}

/// The cache backend: Redis when a URL is given, the in-memory cache otherwise.
fn cache_backend(redis_url: Option<&str>) -> Result<Arc<dyn agora_cache::CacheBackend>, HostError> {
    match redis_url {
        Some(url) => {
            let cache = agora_cache::RedisCache::new(url)
                .map_err(|err| HostError::Backend(format!("invalid Redis URL `{url}`: {err}")))?;
            Ok(Arc::new(cache))
        }
        None => Ok(Arc::new(agora_cache::MemoryCache::default())),
    }
}

/// The signing keys: the configured ones, or — on embedded backends, when the manifest needs
/// them — a key pair generated for this process.
fn auth_keys(
    config: &HostConfig,
    manifest: &Manifest,
) -> Result<Option<agora_auth::Keys>, HostError> {
    if !manifest.uses_auth() {
        return Ok(config.auth_keys.clone());
    }
    // Replicas of a fleet answer the same clients: a token revoked on one, or a bucket spent
    // on one, must count on all of them, so they share Redis (and, with it, keys).
    let shared = config.redis_url.is_some() || config.auth_redis_url.is_some();
    if let (Some(fleet), false) = (&config.fleet, shared) {
        return Err(HostError::Backend(format!(
            "auth: the manifest issues or checks tokens and this host joins fleet `{fleet}`, \
             whose replicas must share revocations: give --redis-url (or --no-fleet for a single host)"
        )));
    }
    if let Some(keys) = &config.auth_keys {
        return Ok(Some(keys.clone()));
    }
    if shared {
        return Err(HostError::Backend(format!(
            "auth: the manifest issues or checks tokens and replicas share Redis, so they must share keys: {}",
            agora_auth::KeyError::Missing
        )));
    }
    tracing::warn!(
        "no auth keys configured: tokens are signed with a key generated for this process and end with it (set {} and {})",
        agora_auth::PRIVATE_KEY_VAR,
        agora_auth::PUBLIC_KEY_VAR
    );
    agora_auth::Keys::generate_ed25519()
        .map(Some)
        .map_err(|err| HostError::Backend(format!("auth: {err}")))
}

/// The revocation store and the rate limiter of a host.
type EdgeBackends = (
    Arc<dyn agora_auth::RevocationStore>,
    Arc<dyn agora_ratelimit::RateLimiter>,
);

/// Where auth state and rate-limit buckets live: the auth Redis URL, else the database after
/// the cache's, else memory (`None`).
fn auth_redis_url(config: &HostConfig) -> Result<Option<String>, HostError> {
    match (&config.auth_redis_url, &config.redis_url) {
        (Some(url), _) => Ok(Some(url.clone())),
        (None, Some(cache)) => agora_redis::next_database(cache)
            .map(Some)
            .map_err(|err| HostError::Backend(format!("auth: {err} (or give --auth-redis-url)"))),
        (None, None) => Ok(None),
    }
}

/// The revocation store and the rate limiter: in Redis when it is configured (shared by
/// replicas), in memory otherwise.
fn edge_backends(redis_url: Option<&str>) -> Result<EdgeBackends, HostError> {
    let invalid = |err: &dyn std::fmt::Display| {
        HostError::Backend(format!(
            "invalid Redis URL `{}`: {err}",
            redis_url.unwrap_or("")
        ))
    };
    match redis_url {
        Some(url) => Ok((
            Arc::new(agora_auth::RedisRevocationStore::new(url).map_err(|e| invalid(&e))?),
            Arc::new(agora_ratelimit::RedisRateLimiter::new(url).map_err(|e| invalid(&e))?),
        )),
        None => Ok((
            Arc::new(agora_auth::MemoryRevocationStore::default()),
            Arc::new(agora_ratelimit::MemoryRateLimiter::default()),
        )),
    }
}

/// Sends the `startup` request of component `name`: `POST path`, in-process, as the
/// internal caller `agora`. Anything but 2xx is an error quoting the answer.
async fn startup(trigger: &HttpTrigger, name: &str, path: &str) -> Result<(), String> {
    use http_body_util::BodyExt as _;
    let request = http::Request::post(format!("http://{name}{}{path}", manifest::INTERNAL_DOMAIN))
        .body(
            http_body_util::Empty::new()
                .map_err(|never| match never {})
                .boxed_unsync(),
        )
        .map_err(|err| format!("startup `{path}`: {err}"))?;
    let caller = calls::Caller::Internal {
        component: Arc::from("agora"),
        client_ip: None,
        depth: 1,
        parent_request_id: None,
    };
    let response = trigger.handle_internal(request, caller, name).await;
    let status = response.status();
    // Read the body whatever the status: a guest still writing it must not see the
    // connection go away.
    let body = match response.into_body().collect().await {
        Ok(collected) => String::from_utf8_lossy(&collected.to_bytes()).into_owned(),
        Err(err) => format!("(body unreadable: {err:?})"),
    };
    if status.is_success() {
        tracing::info!(
            component = name,
            path,
            status = status.as_u16(),
            "startup request done"
        );
        return Ok(());
    }
    let body: String = manifest::one_line(&body).chars().take(300).collect();
    Err(format!("startup POST {path} answered {status}: {body}"))
}

/// A loaded host, ready to serve.
pub struct Host {
    engine: HostEngine,
    manifest: Manifest,
    components: Arc<Components>,
    capabilities: component::Capabilities,
    trigger: Arc<HttpTrigger>,
    drain_timeout: Duration,
    connections: server::ConnectionLimits,
    admin: Option<(TcpListener, admin::AdminToken)>,
    ops: Option<TcpListener>,
    watch: bool,
    replica: Option<(Arc<replica::Replica>, replica::Updates)>,
    started: std::time::SystemTime,
    _epoch: EpochTicker,
}

impl Host {
    /// Loads the manifest and every component it names, connects the backends, opens each
    /// component's database and applies its migrations.
    pub async fn load(config: &HostConfig) -> Result<Host, HostError> {
        let manifest = Manifest::load(&config.manifest)?;
        let max_memory_bytes = manifest
            .components
            .iter()
            .map(|c| c.limits.memory_bytes)
            .max()
            .unwrap_or(manifest::DEFAULT_MEMORY_MIB << 20);
        let engine = HostEngine::new(EngineSettings {
            max_memory_bytes,
            force_on_demand: config.force_on_demand,
        })
        .map_err(HostError::Engine)?;
        let cache_backend = cache_backend(config.redis_url.as_deref())?;
        let (revocations, limiter) = edge_backends(auth_redis_url(config)?.as_deref())?;
        let authority = match auth_keys(config, &manifest)? {
            Some(keys) => Some(Arc::new(
                agora_auth::Authority::new(keys, manifest.auth.clone(), revocations)
                    .map_err(|err| HostError::Backend(format!("auth: {err}")))?,
            )),
            None => None,
        };
        let sql = agora_sql::connect(config.database_url.as_deref(), &config.data_dir)
            .await
            .map_err(|err| HostError::Backend(format!("sql: {err}")))?;
        let messaging = agora_messaging::connect(config.nats_url.as_deref())
            .await
            .map_err(|err| HostError::Backend(format!("messaging: {err}")))?;
        let units = capabilities::units(&capabilities::Backends {
            cache: cache_backend.clone(),
            authority: authority.clone(),
            sql: sql.clone(),
            messaging: messaging.clone(),
        });
        capabilities::check_manifest(&manifest, &units)?;
        let linker = component::host_linker(&engine.engine, &units).map_err(HostError::Engine)?;
        let cache =
            compile_cache::CompileCache::new(config.data_dir.join("compiled"), &engine.engine);
        let internal = calls::InternalCalls::default();
        let capabilities = component::Capabilities {
            cache: cache_backend,
            sql,
            messaging,
            internal: internal.clone(),
            units: units.clone(),
        };
        let mut components = Vec::with_capacity(manifest.components.len());
        let total = manifest.components.len();
        for (index, spec) in manifest.components.iter().enumerate() {
            // Each load logs its progress (`compiling 3/8 catalog…`, `loaded 4/8 order from the
            // compile cache…`): a cold start compiles for seconds per component.
            let position = component::Position {
                index: index + 1,
                total,
            };
            let loaded = component::load(
                spec,
                position,
                &engine.engine,
                &linker,
                &cache,
                &capabilities,
            )
            .await
            .map_err(|error| HostError::Component {
                manifest: manifest.path.clone(),
                error,
            })?;
            components.push(Arc::new(loaded));
        }
        tracing::info!(
            cache = capabilities.cache.kind(),
            sql = %capabilities.sql.dialect(),
            messaging = capabilities.messaging.kind(),
            rate_limits = limiter.kind(),
            auth = authority.as_ref().map_or("none", |a| a.verifier().algorithm().name()),
            "backends"
        );
        let slots: Vec<Arc<Slot>> = components
            .into_iter()
            .map(|loaded| Arc::new(Slot::new(loaded)))
            .collect();
        let router = Router::new(
            manifest
                .components
                .iter()
                .zip(&slots)
                .flat_map(|(spec, slot)| spec.routes.iter().map(|r| (r.clone(), slot.clone()))),
        );
        let edge = edge::Edge::new(
            authority.map(|a| Arc::new(a.verifier().clone())),
            limiter,
            manifest.edge.trusted_proxy_hops,
        );
        let trigger = Arc::new(HttpTrigger::new(router, edge).with_body_rate(config.body_rate));
        let handler: Arc<dyn calls::InternalHandler> = trigger.clone();
        let _ = internal.set(Arc::downgrade(&handler));
        let epoch = engine.start_epoch_ticker();
        let components = Arc::new(Components::new(
            slots,
            swap::Loader {
                engine: engine.engine.clone(),
                linker,
                cache,
                units,
            },
        ));
        // A replica runs the fleet's desired versions from its first request on.
        let replica = match (&config.fleet, &config.nats_url) {
            (None, _) => None,
            (Some(_), None) => {
                return Err(HostError::Backend(
                    "fleet: joining a fleet needs NATS (--nats-url)".into(),
                ));
            }
            (Some(name), Some(url)) => {
                let joined = async {
                    let fleet = fleet::Fleet::connect(url, name).await?;
                    replica::Replica::join(fleet, components.clone()).await
                };
                Some(
                    joined
                        .await
                        .map_err(|err| HostError::Backend(format!("fleet `{name}`: {err}")))?,
                )
            }
        };
        for spec in &manifest.components {
            if let Some(path) = &spec.startup {
                startup(&trigger, &spec.name, path)
                    .await
                    .map_err(|reason| HostError::Component {
                        manifest: manifest.path.clone(),
                        error: LoadError {
                            component: spec.name.clone(),
                            file: spec.source.clone(),
                            reason,
                        },
                    })?;
            }
        }
        let connections = config
            .connections
            .resolved(manifest.edge.trusted_proxy_hops as usize);
        Ok(Host {
            engine,
            manifest,
            capabilities,
            components,
            trigger,
            drain_timeout: config.drain_timeout,
            connections,
            admin: None,
            ops: None,
            watch: config.watch,
            replica,
            started: std::time::SystemTime::now(),
            _epoch: epoch,
        })
    }

    /// The versions serving now, in manifest order.
    pub fn components(&self) -> Vec<Arc<LoadedComponent>> {
        self.components
            .slots()
            .iter()
            .map(|slot| slot.current())
            .collect()
    }

    /// Every component's slot, and the means to swap in new versions.
    pub fn registry(&self) -> &Arc<Components> {
        &self.components
    }

    /// Serves the admin API on `listener` too (from [`Host::serve`] on), authenticated by
    /// `token`.
    pub fn with_admin(mut self, listener: TcpListener, token: admin::AdminToken) -> Host {
        self.admin = Some((listener, token));
        self
    }

    /// Serves the metrics and the probes (`/metrics`, `/healthz`, `/readyz`) on `listener`
    /// too, from [`Host::serve`] on, without a token.
    pub fn with_metrics(mut self, listener: TcpListener) -> Host {
        self.ops = Some(listener);
        self
    }

    /// The readiness checks of the backends: the cache, the broker, and each component's
    /// database (a `select 1` on its own pool).
    fn probes(&self) -> Vec<(String, ops::Probe)> {
        let cache = self.capabilities.cache.clone();
        let messaging = self.capabilities.messaging.clone();
        let mut probes = vec![
            (
                format!("cache ({})", cache.kind()),
                ops::probe(cache, |cache| async move { cache.ping().await }),
            ),
            (
                format!("messaging ({})", messaging.kind()),
                ops::probe(messaging, |messaging| async move { messaging.ping().await }),
            ),
        ];
        for slot in self.components.slots() {
            if let Some(database) = slot.current().capabilities.database() {
                let namespace = database.namespace().clone();
                probes.push((
                    format!("sql of `{}`", slot.name()),
                    ops::probe(namespace, |namespace| async move {
                        namespace.query("select 1", Vec::new()).await.map(drop)
                    }),
                ));
            }
        }
        probes
    }

    /// How instances are allocated on this machine.
    pub fn allocation(&self) -> engine::Allocation {
        self.engine.allocation
    }

    /// Serves HTTP on `listener` and the manifest's subscriptions until `shutdown` resolves,
    /// then drains: in-flight requests and events finish, and the outboxes get a last pass.
    ///
    /// Fails only when a subscription cannot be created (the broker refused it).
    pub async fn serve(
        self,
        listener: TcpListener,
        shutdown: impl Future<Output = ()>,
    ) -> Result<Drained, HostError> {
        let serving = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let draining = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let (ops_stop, ops_stopped) = tokio::sync::watch::channel(false);
        let probes = self.probes();
        let ops = self.ops.map(|listener| {
            let state = ops::OpsState::new(
                self.components.clone(),
                probes,
                serving.clone(),
                draining.clone(),
            );
            tokio::spawn(ops::serve(
                listener,
                Arc::new(state),
                self.connections,
                ops_stopped,
            ))
        });
        // Not ready from the moment the host is asked to stop: load balancers stop sending
        // while in-flight work drains.
        let shutdown = {
            let draining = draining.clone();
            async move {
                shutdown.await;
                draining.store(true, std::sync::atomic::Ordering::Relaxed);
            }
        };
        let mut subscriptions = Vec::new();
        for (spec, slot) in self.manifest.components.iter().zip(self.components.slots()) {
            let started = triggers::event::subscribe(spec, slot, &self.capabilities.messaging)
                .await
                .map_err(|error| HostError::Component {
                    manifest: self.manifest.path.clone(),
                    error: LoadError {
                        component: spec.name.clone(),
                        file: spec.source.clone(),
                        reason: error,
                    },
                })?;
            subscriptions.extend(started);
        }
        // Relays start once every subscription exists, so the messages a crashed host left in
        // an outbox reach this host's consumers too.
        let (stop, stopped) = tokio::sync::watch::channel(false);
        let relays: Vec<_> = self
            .components
            .slots()
            .iter()
            .filter_map(|slot| outbox::spawn(slot.current(), stopped.clone()))
            .collect();
        let watcher = self
            .watch
            .then(|| watch::spawn(self.components.clone(), stopped.clone()));
        let replica = self
            .replica
            .map(|(replica, updates)| replica.spawn(updates, stopped.clone()));
        serving.store(true, std::sync::atomic::Ordering::Relaxed);
        let (admin_stop, admin_stopped) = tokio::sync::watch::channel(false);
        let admin = self.admin.map(|(listener, token)| {
            let state = admin::AdminState::new(
                token,
                self.components.clone(),
                self.started,
                admin::Backends {
                    sql: self.capabilities.sql.dialect().to_string(),
                    cache: self.capabilities.cache.kind(),
                    messaging: self.capabilities.messaging.kind(),
                    rate_limits: self.trigger.edge().limiter_kind(),
                    units: self
                        .capabilities
                        .units
                        .iter()
                        .map(|unit| (unit.name().to_owned(), unit.describe()))
                        .collect(),
                },
            );
            tokio::spawn(admin::serve(
                listener,
                Arc::new(state),
                self.connections,
                admin_stopped,
            ))
        });
        let drained = server::serve(
            listener,
            self.trigger.clone(),
            self.connections,
            shutdown,
            self.drain_timeout,
        )
        .await;
        let _ = admin_stop.send(true);
        if let Some(admin) = admin {
            let _ = admin.await;
        }
        // The in-process bus keeps nothing across a restart: let the events it holds (and
        // those their handlers publish) be handled before the subscriptions stop.
        let messaging = &self.capabilities.messaging;
        let components: Vec<_> = self
            .components
            .slots()
            .iter()
            .map(|slot| slot.current())
            .collect();
        let settle_deadline = std::time::Instant::now() + self.drain_timeout;
        if !outbox::settle(&components, messaging, settle_deadline).await {
            tracing::warn!(
                unhandled = messaging.unhandled(),
                "events still unhandled at the drain timeout; they go back to their outboxes"
            );
        }
        for subscription in subscriptions {
            subscription.stop().await;
        }
        let _ = stop.send(true);
        if let Some(watcher) = watcher {
            let _ = watcher.await;
        }
        if let Some(replica) = replica {
            let _ = replica.await;
        }
        for relay in relays {
            let _ = relay.await;
        }
        // What is still unhandled (a relay's last pass, a message waiting out its backoff)
        // goes back to an outbox, relayed on the next start.
        outbox::keep_unhandled(&components, messaging).await;
        let _ = ops_stop.send(true);
        if let Some(ops) = ops {
            let _ = ops.await;
        }
        Ok(drained)
    }
}
