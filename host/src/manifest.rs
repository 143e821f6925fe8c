//! The shop's manifest: which components run, where their code is, which routes they serve and
//! under which limits.
//!
//! The manifest is TOML. Unknown keys are an error, so a typo never silently falls back to a
//! default. Relative paths are resolved against the manifest's own folder, so a manifest means the
//! same thing whatever the working directory of `agora serve` is.
//!
//! ```toml
//! [auth]                         # tokens the host issues and verifies (all optional)
//! issuer = "https://shop.example"
//! audience = "shop"
//! access_ttl_s = 900
//! refresh_ttl_s = 604800
//! leeway_s = 30
//!
//! [edge]
//! trusted_proxy_hops = 1         # proxies whose X-Forwarded-For entry is believed
//!
//! [[component]]
//! name = "hello"
//! source = "target/components/hello.wasm"
//! routes = ["/hello", "/hello/..."]
//!
//! [component.config]             # wasi:config/store values
//! greeting = "hello"
//!
//! [component.config_env]         # values read from the environment at load (secrets)
//! api_key = "HELLO_API_KEY"
//! admin_email = { env = "AGORA_ADMIN_EMAIL", optional = true }
//!
//! [component.grants]            # deny by default
//! cache = true                   # agora:platform/cache
//! sql = true                     # agora:platform/sql (own schema / SQLite file)
//! publish = ["order.*"]          # agora:platform/messaging, NATS-style patterns
//! http = ["https://api.example.com", "http://catalog.agora.internal"]  # outbound wasi:http,
//!                                # by origin; NAME.agora.internal calls component NAME in-process
//! auth = true                    # agora:platform/auth (issue and revoke tokens)
//! keyvalue = true                # wasi:keyvalue store, atomics, batch (over the cache backend)
//! logging = false                # wasi:logging and wasi:config/store are granted unless denied
//!
//! migrations = "migrations/hello"  # SQL migrations, applied once at load (needs sql)
//! startup = "/hello/internal/start" # POSTed in-process once loaded; non-2xx stops the start
//!
//! [component.messaging]          # subscriptions, delivered to the exported handler
//! subscribe = ["payment.succeeded"]
//! max_deliver = 5                # attempts before the dead-letter subject
//! backoff_ms = 1000              # first redelivery delay, doubling up to backoff_max_ms
//! backoff_max_ms = 60000
//!
//! [[component.policy]]          # route policies; without one a route is public
//! routes = ["/hello/admin/..."]  # path patterns (`*` = one segment); default: all routes
//! methods = ["POST", "DELETE"]   # default: every method
//! access = "authenticated"       # public | authenticated | internal
//! roles = ["ADMIN"]              # one of them is required (implies authenticated)
//! rate_limit = { per_ip = "10/s", per_subject = "100/min" }
//!
//! [component.limits]
//! memory_mib = 64
//! deadline_ms = 5000
//! body_kib = 512
//! concurrency = 32
//! sql_result_kib = 65536         # rows one sql query reads into the host; default: memory_mib
//! sql_connections = 8            # database connections the component may hold at once
//!
//! [component.instances]          # default: a fresh instance for every request
//! reuse = 100                    # requests one instance serves, one at a time (1: fresh)
//! idle_ms = 10000                # an idle instance is dropped after this long
//! ```

use crate::policy::{Access, PathPattern, Policy, RateLimits};
use agora_auth::AuthConfig;
use serde::Deserialize;
use std::collections::{BTreeMap, HashSet};
use std::path::{Path, PathBuf};
use std::time::Duration;

/// The host part of the origin through which a component calls component NAME in-process:
/// `http://NAME.agora.internal`.
pub const INTERNAL_DOMAIN: &str = ".agora.internal";

/// Most database connections one component's pool may hold (`limits.sql_connections`).
pub const MAX_SQL_CONNECTIONS: u64 = 1000;

/// Default cap on each linear memory of one instance.
pub const DEFAULT_MEMORY_MIB: u64 = 128;
/// Default wall-clock deadline of one request.
pub const DEFAULT_DEADLINE_MS: u64 = 30_000;
/// Default cap on a request body.
pub const DEFAULT_BODY_KIB: u64 = 1024;
/// Default cap on instances of one component running at the same time.
pub const DEFAULT_CONCURRENCY: u32 = 100;
/// Default number of delivery attempts of one message before it is dead-lettered.
pub const DEFAULT_MAX_DELIVER: u32 = 5;
/// Default delay before the first redelivery.
pub const DEFAULT_BACKOFF_MS: u64 = 1000;
/// Default cap on the redelivery delay.
pub const DEFAULT_BACKOFF_MAX_MS: u64 = 60_000;

/// A parsed and validated manifest.
#[derive(Debug, Clone)]
pub struct Manifest {
    /// Where the manifest was read from (used in error messages).
    pub path: PathBuf,
    /// The components, in manifest order.
    pub components: Vec<ComponentSpec>,
    /// `[auth]`: issuer, audience and lifetimes of the tokens the host issues and verifies.
    pub auth: AuthConfig,
    /// `[edge]`: how the host reads requests at the edge.
    pub edge: EdgeSettings,
}

/// `[edge]`: settings of the HTTP edge.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct EdgeSettings {
    /// How many proxies in front of the host append to `X-Forwarded-For`. 0 (the default): the
    /// client IP is the TCP peer and the header is ignored; N: the N-th address from the
    /// right of the header is the client (what the nearest trusted proxy saw).
    pub trusted_proxy_hops: u32,
}

/// One `[[component]]` table.
#[derive(Debug, Clone)]
pub struct ComponentSpec {
    /// Unique name: lowercase letters, digits and `-`.
    pub name: String,
    /// The `.wasm` file, already resolved against the manifest's folder.
    pub source: PathBuf,
    /// Route patterns: `/exact` or `/prefix/...`.
    pub routes: Vec<String>,
    /// Per-instance limits.
    pub limits: Limits,
    /// Whether an instance serves more than one request (`[component.instances]`).
    pub instances: Reuse,
    /// Capabilities the component may use.
    pub grants: Grants,
    /// wasi:config/store values written in the manifest.
    pub config: BTreeMap<String, String>,
    /// wasi:config/store keys whose values come from environment variables.
    /// Secrets belong here: the manifest holds only the variable's name.
    pub config_env: BTreeMap<String, EnvVar>,
    /// A path the host sends `POST` to, in-process, once the component is loaded and before
    /// the host serves (for example to create the first admin account); anything but 2xx
    /// stops the start.
    pub startup: Option<String>,
    /// The folder of SQL migrations, resolved against the manifest's folder.
    pub migrations: Option<PathBuf>,
    /// Subscriptions and their delivery settings.
    pub messaging: Messaging,
    /// Route policies (`[[component.policy]]`), in manifest order.
    pub policies: Vec<Policy>,
}

/// An environment variable a config value comes from: `key = "VAR"` (required) or
/// `key = { env = "VAR", optional = true }` (the key is absent when the variable is).
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(untagged)]
pub enum EnvVar {
    /// Required: a missing variable stops the load.
    Required(String),
    /// Written as a table.
    Table {
        /// The variable.
        env: String,
        /// Whether the component starts without it.
        #[serde(default)]
        optional: bool,
    },
}

impl EnvVar {
    /// The variable's name.
    pub fn name(&self) -> &str {
        match self {
            EnvVar::Required(name) | EnvVar::Table { env: name, .. } => name,
        }
    }

    /// Whether the component may start without it.
    pub fn optional(&self) -> bool {
        matches!(self, EnvVar::Table { optional: true, .. })
    }
}

/// `[component.messaging]`: what the component subscribes to and how failed deliveries are
/// retried.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Messaging {
    /// Subject patterns delivered to the component's exported handler.
    pub subscribe: Vec<String>,
    /// Delivery attempts of one message before it goes to the dead-letter subject.
    pub max_deliver: u32,
    /// Delay before the first redelivery, in milliseconds; doubles on each further attempt.
    pub backoff_ms: u64,
    /// Cap on the redelivery delay, in milliseconds.
    pub backoff_max_ms: u64,
}

impl Default for Messaging {
    fn default() -> Self {
        Messaging {
            subscribe: Vec::new(),
            max_deliver: DEFAULT_MAX_DELIVER,
            backoff_ms: DEFAULT_BACKOFF_MS,
            backoff_max_ms: DEFAULT_BACKOFF_MAX_MS,
        }
    }
}

/// Capabilities granted to one component (`[component.grants]`). Deny by default: a component
/// that imports a capability it is not granted fails to load.
#[derive(Debug, Clone, Default, PartialEq, Deserialize)]
pub struct Grants {
    /// Outbound `wasi:http`: the origins (`scheme://host[:port]`) the component may send
    /// requests to. Empty: every outgoing request is refused with `HTTP-request-denied`.
    #[serde(default)]
    pub http: Vec<String>,
    /// The grants of capability units (`sql = true`, `publish = ["order.*"]`, `cache = true`,
    /// `keyvalue = true`, `auth = true`, …), by unit name; the host checks each against its
    /// unit (an unknown key is an error there, naming the known ones).
    #[serde(flatten)]
    pub units: std::collections::BTreeMap<String, toml::Value>,
}

impl Grants {
    /// Whether the component holds the sql unit's grant (`sql = true`): only then may it name
    /// migrations.
    pub fn sql(&self) -> bool {
        self.units.get("sql").and_then(toml::Value::as_bool) == Some(true)
    }

    /// Whether the component holds the auth unit's grant (`auth = true`): the host then needs
    /// keys to sign its tokens.
    pub fn issues_tokens(&self) -> bool {
        self.units.get("auth").and_then(toml::Value::as_bool) == Some(true)
    }

    /// The components this one may call in-process (origins `http://NAME.agora.internal`).
    pub fn internal_calls(&self) -> impl Iterator<Item = &str> {
        self.http.iter().filter_map(|origin| {
            origin
                .strip_prefix("http://")
                .and_then(|host| host.strip_suffix(INTERNAL_DOMAIN))
        })
    }
}

/// Limits applied to every instance of one component.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// Cap on each linear memory, in bytes.
    pub memory_bytes: u64,
    /// Wall-clock deadline of one request, in milliseconds.
    pub deadline_ms: u64,
    /// Cap on the request body, in bytes.
    pub body_bytes: u64,
    /// Instances allowed to run at once; further requests get 503.
    pub concurrency: u32,
    /// Live cache keys the component may hold at once.
    pub cache_keys: u64,
    /// Largest value the component may store in the cache, in bytes.
    pub cache_value_bytes: u64,
    /// Cap on the rows one sql query reads into host memory, in bytes (default: the memory
    /// limit); past it the query fails with a `too_large` error.
    pub sql_result_bytes: u64,
    /// Database connections the component may hold at once (its pool); a call waits for one
    /// until its deadline, then fails with `unavailable`.
    pub sql_connections: u32,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            memory_bytes: DEFAULT_MEMORY_MIB << 20,
            deadline_ms: DEFAULT_DEADLINE_MS,
            body_bytes: DEFAULT_BODY_KIB << 10,
            concurrency: DEFAULT_CONCURRENCY,
            cache_keys: agora_cache::MAX_KEYS,
            cache_value_bytes: agora_cache::MAX_VALUE_BYTES as u64,
            sql_result_bytes: DEFAULT_MEMORY_MIB << 20,
            sql_connections: agora_sql::DEFAULT_CONNECTIONS,
        }
    }
}

/// Most requests one instance may serve (`instances.reuse`).
pub const MAX_REUSE: u32 = 1_000_000;
/// Longest an idle instance may be kept (`instances.idle_ms`): one hour.
pub const MAX_IDLE_MS: u64 = 3_600_000;
/// How long an idle instance is kept by default (`instances.idle_ms`).
pub const DEFAULT_IDLE_MS: u64 = 10_000;

/// `[component.instances]`: how many requests one instance serves before it is dropped.
///
/// The default, `requests = 1`, is a fresh instance per request: nothing a request leaves in
/// the guest's memory reaches the next one. Above 1, requests of this component (one at a
/// time per instance) see what earlier requests left in the guest's globals and heap; never
/// another component's data, since each instance belongs to one component and version.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Reuse {
    /// Requests one instance serves (1: a fresh instance per request).
    pub requests: u32,
    /// How long an instance may wait idle for its next request before it is dropped.
    pub idle: Duration,
}

impl Default for Reuse {
    fn default() -> Self {
        Reuse {
            requests: 1,
            idle: Duration::from_millis(DEFAULT_IDLE_MS),
        }
    }
}

impl Reuse {
    /// Whether an instance may serve more than one request.
    pub fn enabled(&self) -> bool {
        self.requests > 1
    }
}

/// Why a manifest could not be used. Every message fits on one line and names the file.
#[derive(Debug, thiserror::Error)]
pub enum ManifestError {
    /// The file could not be read.
    #[error("manifest {path}: cannot read: {source}")]
    Read {
        /// The manifest file.
        path: PathBuf,
        /// The I/O error.
        source: std::io::Error,
    },
    /// The TOML is malformed or has an unknown or mistyped key.
    #[error("manifest {path}:{line}:{column}: {message}")]
    Syntax {
        /// The manifest file.
        path: PathBuf,
        /// 1-based line of the problem.
        line: usize,
        /// 1-based column of the problem.
        column: usize,
        /// What is wrong.
        message: String,
    },
    /// A value is well-formed TOML but not acceptable.
    #[error("manifest {path}: component `{component}`: {message}")]
    Invalid {
        /// The manifest file.
        path: PathBuf,
        /// The component whose table holds the value.
        component: String,
        /// What is wrong.
        message: String,
    },
    /// Two components claim the same route.
    #[error(
        "manifest {path}: route `{route}` is claimed by both component `{first}` and component `{second}`"
    )]
    RouteClash {
        /// The manifest file.
        path: PathBuf,
        /// The route both claim (normalised).
        route: String,
        /// The component that claimed it first.
        first: String,
        /// The component that claimed it again.
        second: String,
    },
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawManifest {
    #[serde(default, rename = "component")]
    components: Vec<RawComponent>,
    #[serde(default)]
    auth: RawAuth,
    #[serde(default)]
    edge: RawEdge,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct RawAuth {
    issuer: Option<String>,
    audience: Option<String>,
    access_ttl_s: Option<u64>,
    refresh_ttl_s: Option<u64>,
    leeway_s: Option<u64>,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct RawEdge {
    #[serde(default)]
    trusted_proxy_hops: u32,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawPolicy {
    #[serde(default)]
    routes: Vec<String>,
    #[serde(default)]
    methods: Vec<String>,
    access: Option<String>,
    #[serde(default)]
    roles: Vec<String>,
    #[serde(default)]
    rate_limit: RawRateLimit,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct RawRateLimit {
    per_ip: Option<String>,
    per_subject: Option<String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawComponent {
    name: String,
    source: PathBuf,
    #[serde(default)]
    routes: Vec<String>,
    #[serde(default)]
    limits: RawLimits,
    #[serde(default)]
    instances: RawInstances,
    #[serde(default)]
    grants: Grants,
    #[serde(default)]
    config: BTreeMap<String, String>,
    #[serde(default)]
    config_env: BTreeMap<String, EnvVar>,
    migrations: Option<PathBuf>,
    startup: Option<String>,
    #[serde(default)]
    messaging: RawMessaging,
    #[serde(default, rename = "policy")]
    policies: Vec<RawPolicy>,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct RawMessaging {
    #[serde(default)]
    subscribe: Vec<String>,
    max_deliver: Option<u32>,
    backoff_ms: Option<u64>,
    backoff_max_ms: Option<u64>,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct RawInstances {
    reuse: Option<u32>,
    idle_ms: Option<u64>,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct RawLimits {
    memory_mib: Option<u64>,
    deadline_ms: Option<u64>,
    body_kib: Option<u64>,
    concurrency: Option<u32>,
    cache_keys: Option<u64>,
    cache_value_kib: Option<u64>,
    sql_result_kib: Option<u64>,
    sql_connections: Option<u32>,
}

impl Manifest {
    /// Reads, parses and validates the manifest at `path`.
    pub fn load(path: &Path) -> Result<Manifest, ManifestError> {
        let text = std::fs::read_to_string(path).map_err(|source| ManifestError::Read {
            path: path.to_owned(),
            source,
        })?;
        Manifest::parse(path, &text)
    }

    /// Parses and validates manifest text; `path` locates relative sources and names the file in
    /// errors.
    pub fn parse(path: &Path, text: &str) -> Result<Manifest, ManifestError> {
        let raw: RawManifest = toml::from_str(text).map_err(|err| {
            let (line, column) = err
                .span()
                .map(|span| line_and_column(text, span.start))
                .unwrap_or((1, 1));
            ManifestError::Syntax {
                path: path.to_owned(),
                line,
                column,
                message: one_line(err.message()),
            }
        })?;
        let base = path.parent().unwrap_or(Path::new(""));
        let mut names = HashSet::new();
        let mut components = Vec::with_capacity(raw.components.len());
        for raw in raw.components {
            let invalid = |message: String| ManifestError::Invalid {
                path: path.to_owned(),
                component: raw.name.clone(),
                message,
            };
            validate_name(&raw.name).map_err(invalid)?;
            if !names.insert(raw.name.clone()) {
                return Err(invalid("the name is used by another component".into()));
            }
            let mut routes = Vec::with_capacity(raw.routes.len());
            for route in &raw.routes {
                routes.push(normalise_route(route).map_err(invalid)?);
            }
            let limits = raw.limits.resolve().map_err(invalid)?;
            let instances = raw.instances.resolve().map_err(invalid)?;
            if let Some(key) = raw.config.keys().find(|k| raw.config_env.contains_key(*k)) {
                return Err(invalid(format!(
                    "config key `{key}` is set both in `config` and in `config_env`"
                )));
            }
            let mut grants = raw.grants;
            for origin in &mut grants.http {
                *origin = normalise_origin(origin)
                    .map_err(|err| invalid(format!("grants.http `{origin}`: {err}")))?;
            }
            if raw.migrations.is_some() && !grants.sql() {
                return Err(invalid(
                    "`migrations` needs the sql grant (add `sql = true` to [component.grants])"
                        .into(),
                ));
            }
            let messaging = raw.messaging.resolve().map_err(invalid)?;
            let startup = match &raw.startup {
                Some(path) => {
                    let router = crate::router::Router::new(routes.iter().map(|r| (r.clone(), ())));
                    if !path.starts_with('/') || router.lookup(path).is_none() {
                        return Err(invalid(format!(
                            "startup `{path}` is not a path among the component's routes"
                        )));
                    }
                    Some(path.clone())
                }
                None => None,
            };
            let mut policies = Vec::with_capacity(raw.policies.len());
            for (index, policy) in raw.policies.iter().enumerate() {
                policies.push(
                    policy
                        .resolve(&routes)
                        .map_err(|err| invalid(format!("policy {}: {err}", index + 1)))?,
                );
            }
            components.push(ComponentSpec {
                source: base.join(&raw.source),
                migrations: raw.migrations.map(|dir| base.join(dir)),
                name: raw.name,
                routes,
                limits,
                instances,
                grants,
                config: raw.config,
                config_env: raw.config_env,
                startup,
                messaging,
                policies,
            });
        }
        let manifest = Manifest {
            path: path.to_owned(),
            components,
            auth: raw
                .auth
                .resolve()
                .map_err(|message| ManifestError::Invalid {
                    path: path.to_owned(),
                    component: "[auth]".into(),
                    message,
                })?,
            edge: EdgeSettings {
                trusted_proxy_hops: raw.edge.trusted_proxy_hops,
            },
        };
        manifest.check_route_clashes()?;
        manifest.check_internal_calls()?;
        Ok(manifest)
    }

    /// Whether any component issues tokens or has a route that needs one: then the host
    /// needs signing keys.
    pub fn uses_auth(&self) -> bool {
        self.components
            .iter()
            .any(|c| c.grants.issues_tokens() || c.policies.iter().any(|p| p.needs_token()))
    }

    /// Every `NAME.agora.internal` origin must name a component of this manifest.
    fn check_internal_calls(&self) -> Result<(), ManifestError> {
        for component in &self.components {
            for target in component.grants.internal_calls() {
                if !self.components.iter().any(|c| c.name == target) {
                    return Err(ManifestError::Invalid {
                        path: self.path.clone(),
                        component: component.name.clone(),
                        message: format!(
                            "grants.http `http://{target}{INTERNAL_DOMAIN}`: no component is named `{target}`"
                        ),
                    });
                }
            }
        }
        Ok(())
    }

    fn check_route_clashes(&self) -> Result<(), ManifestError> {
        let mut owners: std::collections::HashMap<&str, &str> = Default::default();
        for component in &self.components {
            let mut own = HashSet::new();
            for route in &component.routes {
                if !own.insert(route.as_str()) {
                    return Err(ManifestError::Invalid {
                        path: self.path.clone(),
                        component: component.name.clone(),
                        message: format!("route `{route}` is listed twice"),
                    });
                }
                if let Some(first) = owners.insert(route, &component.name) {
                    return Err(ManifestError::RouteClash {
                        path: self.path.clone(),
                        route: route.clone(),
                        first: first.to_owned(),
                        second: component.name.clone(),
                    });
                }
            }
        }
        Ok(())
    }
}

impl RawInstances {
    fn resolve(&self) -> Result<Reuse, String> {
        let requests = match self.reuse {
            Some(0) => {
                return Err(
                    "instances.reuse must be at least 1 (1: a fresh instance per request)".into(),
                );
            }
            Some(n) if n > MAX_REUSE => {
                return Err(format!(
                    "instances.reuse is {n}, above the {MAX_REUSE} requests one instance may serve"
                ));
            }
            Some(n) => n,
            None => 1,
        };
        let idle_ms = match self.idle_ms {
            Some(0) => return Err("instances.idle_ms must be greater than 0".into()),
            Some(ms) if ms > MAX_IDLE_MS => {
                return Err(format!(
                    "instances.idle_ms is {ms}, above the {MAX_IDLE_MS} ms an idle instance may be kept"
                ));
            }
            Some(_) if requests == 1 => {
                return Err("instances.idle_ms needs instances.reuse above 1".into());
            }
            Some(ms) => ms,
            None => DEFAULT_IDLE_MS,
        };
        Ok(Reuse {
            requests,
            idle: Duration::from_millis(idle_ms),
        })
    }
}

impl RawLimits {
    fn resolve(&self) -> Result<Limits, String> {
        let defaults = Limits::default();
        let positive = |key: &str, value: Option<u64>, default: u64| match value {
            Some(0) => Err(format!("limits.{key} must be greater than 0")),
            Some(value) => Ok(value),
            None => Ok(default),
        };
        let memory_mib = positive("memory_mib", self.memory_mib, defaults.memory_bytes >> 20)?;
        if memory_mib > 4096 {
            return Err(format!(
                "limits.memory_mib is {memory_mib}, above the 4096 MiB a 32-bit memory can address"
            ));
        }
        let deadline_ms = positive("deadline_ms", self.deadline_ms, defaults.deadline_ms)?;
        let body_kib = positive("body_kib", self.body_kib, defaults.body_bytes >> 10)?;
        let concurrency = positive(
            "concurrency",
            self.concurrency.map(u64::from),
            u64::from(defaults.concurrency),
        )?;
        let cache_keys = positive("cache_keys", self.cache_keys, defaults.cache_keys)?;
        let cache_value_kib = positive(
            "cache_value_kib",
            self.cache_value_kib,
            defaults.cache_value_bytes >> 10,
        )?;
        if cache_value_kib > 64 << 10 {
            return Err(format!(
                "limits.cache_value_kib is {cache_value_kib}, above the 65536 KiB (64 MiB) a cache value may hold"
            ));
        }
        let sql_result_kib = positive("sql_result_kib", self.sql_result_kib, memory_mib << 10)?;
        let sql_connections = positive(
            "sql_connections",
            self.sql_connections.map(u64::from),
            u64::from(defaults.sql_connections),
        )?;
        if sql_connections > MAX_SQL_CONNECTIONS {
            return Err(format!(
                "limits.sql_connections is {sql_connections}, above the {MAX_SQL_CONNECTIONS} \
                 connections one component may hold"
            ));
        }
        Ok(Limits {
            memory_bytes: memory_mib << 20,
            deadline_ms,
            body_bytes: body_kib.saturating_mul(1024),
            concurrency: u32::try_from(concurrency).unwrap_or(u32::MAX),
            cache_keys,
            cache_value_bytes: cache_value_kib << 10,
            sql_result_bytes: sql_result_kib.saturating_mul(1024),
            sql_connections: u32::try_from(sql_connections).unwrap_or(u32::MAX),
        })
    }
}

impl RawAuth {
    fn resolve(self) -> Result<AuthConfig, String> {
        let mut config = AuthConfig::default();
        for (key, value, field) in [
            ("issuer", self.issuer, &mut config.issuer),
            ("audience", self.audience, &mut config.audience),
        ] {
            if let Some(value) = value {
                if value.trim().is_empty() {
                    return Err(format!("auth.{key} must not be empty"));
                }
                *field = value;
            }
        }
        for (key, value, field) in [
            ("access_ttl_s", self.access_ttl_s, &mut config.access_ttl),
            ("refresh_ttl_s", self.refresh_ttl_s, &mut config.refresh_ttl),
        ] {
            match value {
                Some(0) => return Err(format!("auth.{key} must be greater than 0")),
                Some(seconds) => *field = Duration::from_secs(seconds),
                None => {}
            }
        }
        if let Some(leeway) = self.leeway_s {
            config.leeway = Duration::from_secs(leeway);
        }
        if config.refresh_ttl < config.access_ttl {
            return Err(format!(
                "auth.refresh_ttl_s ({}) is below auth.access_ttl_s ({})",
                config.refresh_ttl.as_secs(),
                config.access_ttl.as_secs()
            ));
        }
        Ok(config)
    }
}

impl RawPolicy {
    fn resolve(&self, component_routes: &[String]) -> Result<Policy, String> {
        let mut routes = Vec::with_capacity(self.routes.len());
        let router = crate::router::Router::new(component_routes.iter().map(|r| (r.clone(), ())));
        for route in &self.routes {
            let pattern = PathPattern::parse(route)?;
            let example = pattern.example();
            if router.lookup(&example).is_none() {
                return Err(format!(
                    "route `{route}` is not among the component's routes ({})",
                    component_routes.join(", ")
                ));
            }
            routes.push(pattern);
        }
        let mut methods = Vec::with_capacity(self.methods.len());
        for method in &self.methods {
            let upper = method.to_ascii_uppercase();
            if upper.is_empty() || !upper.bytes().all(|b| b.is_ascii_uppercase()) {
                return Err(format!("method `{method}` is not an HTTP method"));
            }
            methods.push(upper);
        }
        for role in &self.roles {
            let valid = !role.is_empty()
                && role.len() <= agora_auth::MAX_ROLE_BYTES
                && role
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b"_-.:".contains(&b));
            if !valid {
                return Err(format!(
                    "role `{role}`: 1 to {} characters of A-Z, a-z, 0-9, `_`, `-`, `.` and `:`",
                    agora_auth::MAX_ROLE_BYTES
                ));
            }
        }
        let access = match self.access.as_deref() {
            None if self.roles.is_empty() => Access::Public,
            None | Some("authenticated") => Access::Authenticated,
            Some("public") if !self.roles.is_empty() => {
                return Err("a public route cannot require roles (use `authenticated`)".into());
            }
            Some("public") => Access::Public,
            Some("internal") => Access::Internal,
            Some(other) => {
                return Err(format!(
                    "access `{other}`: expected `public`, `authenticated` or `internal`"
                ));
            }
        };
        let rate = |key: &str, value: &Option<String>| {
            value
                .as_deref()
                .map(|text| {
                    text.parse::<agora_ratelimit::Rate>()
                        .map_err(|err| format!("rate_limit.{key}: {err}"))
                })
                .transpose()
        };
        Ok(Policy {
            routes,
            methods,
            access,
            roles: self.roles.clone(),
            rate_limit: RateLimits {
                per_ip: rate("per_ip", &self.rate_limit.per_ip)?,
                per_subject: rate("per_subject", &self.rate_limit.per_subject)?,
            },
        })
    }
}

impl RawMessaging {
    fn resolve(self) -> Result<Messaging, String> {
        let defaults = Messaging::default();
        let mut seen = HashSet::new();
        for subject in &self.subscribe {
            agora_messaging::validate_pattern(subject)
                .map_err(|err| format!("messaging.subscribe `{subject}`: {err}"))?;
            if !seen.insert(subject) {
                return Err(format!("messaging.subscribe lists `{subject}` twice"));
            }
        }
        let messaging = Messaging {
            max_deliver: self.max_deliver.unwrap_or(defaults.max_deliver),
            backoff_ms: self.backoff_ms.unwrap_or(defaults.backoff_ms),
            backoff_max_ms: self.backoff_max_ms.unwrap_or(defaults.backoff_max_ms),
            subscribe: self.subscribe,
        };
        if messaging.max_deliver == 0 {
            return Err("messaging.max_deliver must be at least 1".into());
        }
        if messaging.backoff_max_ms < messaging.backoff_ms {
            return Err(format!(
                "messaging.backoff_max_ms ({}) is below messaging.backoff_ms ({})",
                messaging.backoff_max_ms, messaging.backoff_ms
            ));
        }
        Ok(messaging)
    }
}

/// An origin as outbound requests are matched against it: lowercase `scheme://host[:port]`.
fn normalise_origin(origin: &str) -> Result<String, String> {
    let lower = origin.trim_end_matches('/').to_ascii_lowercase();
    let (scheme, authority) = lower
        .split_once("://")
        .ok_or("an origin is `http://host[:port]` or `https://host[:port]`")?;
    if scheme != "http" && scheme != "https" {
        return Err(format!("scheme `{scheme}` is not http or https"));
    }
    if authority.is_empty() || authority.contains(['/', '?', '#', '@', ' ']) {
        return Err("an origin has a host and optionally a port, no path, query or user".into());
    }
    Ok(lower)
}

/// The rule of component names: 1 to 64 characters of `a-z`, `0-9` and `-`, starting with a
/// letter.
pub fn validate_name(name: &str) -> Result<(), String> {
    let valid = !name.is_empty()
        && name.len() <= 64
        && name.starts_with(|c: char| c.is_ascii_lowercase())
        && name
            .chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-');
    if valid {
        Ok(())
    } else {
        Err(
            "the name must be 1 to 64 characters of a-z, 0-9 and `-`, starting with a letter"
                .into(),
        )
    }
}

/// Checks a route pattern and brings it to one spelling: a trailing `/` is dropped (except for
/// `/` itself), so `/a/` and `/a` are the same route.
fn normalise_route(route: &str) -> Result<String, String> {
    if !route.starts_with('/') {
        return Err(format!("route `{route}` must start with `/`"));
    }
    if route.contains(['?', '#']) || route.chars().any(char::is_whitespace) {
        return Err(format!(
            "route `{route}` may hold a path only (no query, fragment or spaces)"
        ));
    }
    let (stem, wildcard) = match route.strip_suffix("/...") {
        Some(stem) => (stem, true),
        None => (route, false),
    };
    if stem.contains("...") {
        return Err(format!(
            "route `{route}`: `...` is allowed only as the last segment (`/prefix/...`)"
        ));
    }
    let stem = stem.trim_end_matches('/');
    Ok(match (stem.is_empty(), wildcard) {
        (true, true) => "/...".to_owned(),
        (true, false) => "/".to_owned(),
        (false, true) => format!("{stem}/..."),
        (false, false) => stem.to_owned(),
    })
}

fn line_and_column(text: &str, offset: usize) -> (usize, usize) {
    let before = &text[..offset.min(text.len())];
    let line = before.matches('\n').count() + 1;
    let column = before.rsplit('\n').next().map_or(0, |l| l.chars().count()) + 1;
    (line, column)
}

/// Folds a possibly multi-line message onto one line.
pub(crate) fn one_line(message: &str) -> String {
    message.split_whitespace().collect::<Vec<_>>().join(" ")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(text: &str) -> Result<Manifest, ManifestError> {
        Manifest::parse(Path::new("/shop/agora.toml"), text)
    }

    #[test]
    fn resolves_sources_against_the_manifest_folder() {
        let manifest = parse(
            "[[component]]\nname = \"hello\"\nsource = \"c/hello.wasm\"\nroutes = [\"/hello/\"]\n",
        )
        .expect("valid manifest");
        let hello = &manifest.components[0];
        assert_eq!(hello.source, Path::new("/shop/c/hello.wasm"));
        assert_eq!(hello.routes, vec!["/hello"]);
        assert_eq!(hello.limits, Limits::default());
        assert_eq!(hello.grants, Grants::default());
        assert_eq!(hello.messaging, Messaging::default());
    }

    #[test]
    fn grants_migrations_and_subscriptions() {
        let manifest = parse(
            "[[component]]\nname = \"order\"\nsource = \"o.wasm\"\nmigrations = \"m/order\"\n\
             grants = { sql = true, publish = [\"order.*\", \"audit.>\"] }\n\
             [component.messaging]\nsubscribe = [\"payment.succeeded\"]\nmax_deliver = 3\nbackoff_ms = 10\n",
        )
        .expect("valid manifest");
        let order = &manifest.components[0];
        assert!(order.grants.sql() && !order.grants.units.contains_key("cache"));
        assert_eq!(
            order.grants.units["publish"],
            toml::Value::Array(vec!["order.*".into(), "audit.>".into()])
        );
        assert_eq!(
            order.migrations.as_deref(),
            Some(Path::new("/shop/m/order"))
        );
        assert_eq!(order.messaging.subscribe, ["payment.succeeded"]);
        assert_eq!(
            (order.messaging.max_deliver, order.messaging.backoff_ms),
            (3, 10)
        );
        assert_eq!(order.messaging.backoff_max_ms, DEFAULT_BACKOFF_MAX_MS);
        let origins = parse(
            "[[component]]\nname = \"gw\"\nsource = \"g.wasm\"\n\
             grants = { http = [\"HTTP://Example.com:8080/\", \"https://api.example.com\"] }\n",
        )
        .expect("valid manifest");
        assert_eq!(
            origins.components[0].grants.http,
            ["http://example.com:8080", "https://api.example.com"]
        );
    }

    #[test]
    fn unknown_keys_are_errors_with_a_position() {
        let err = parse("[[component]]\nname = \"a\"\nsource = \"a.wasm\"\nroute = []\n")
            .expect_err("unknown key");
        let message = err.to_string();
        assert!(message.contains("/shop/agora.toml:4:"), "{message}");
        assert!(message.contains("unknown field `route`"), "{message}");
        assert!(!message.contains('\n'), "{message}");
    }

    #[test]
    fn the_sql_result_cap_defaults_to_the_memory_limit() {
        let limits = |extra: &str| {
            parse(&format!(
                "[[component]]\nname = \"a\"\nsource = \"a.wasm\"\n[component.limits]\n{extra}\n"
            ))
            .map(|manifest| manifest.components[0].limits)
        };
        let memory = limits("memory_mib = 16").expect("valid");
        assert_eq!(memory.sql_result_bytes, 16 << 20);
        let capped = limits("sql_result_kib = 512").expect("valid");
        assert_eq!(capped.sql_result_bytes, 512 << 10);
        let err = limits("sql_result_kib = 0").expect_err("zero");
        assert!(err.to_string().contains("sql_result_kib"), "{err}");
    }

    #[test]
    fn the_sql_pool_is_bounded_per_component() {
        let limits = |extra: &str| {
            parse(&format!(
                "[[component]]\nname = \"a\"\nsource = \"a.wasm\"\n[component.limits]\n{extra}\n"
            ))
            .map(|manifest| manifest.components[0].limits)
        };
        let default = limits("").expect("valid");
        assert_eq!(default.sql_connections, agora_sql::DEFAULT_CONNECTIONS);
        assert_eq!(
            limits("sql_connections = 2")
                .expect("valid")
                .sql_connections,
            2
        );
        for bad in ["sql_connections = 0", "sql_connections = 1001"] {
            let err = limits(bad).expect_err(bad).to_string();
            assert!(err.contains("sql_connections"), "{err}");
        }
    }

    #[test]
    fn instance_reuse_is_off_by_default_and_checked_when_set() {
        let instances = |extra: &str| {
            parse(&format!(
                "[[component]]\nname = \"a\"\nsource = \"a.wasm\"\n[component.instances]\n{extra}\n"
            ))
            .map(|manifest| manifest.components[0].instances)
        };
        let default = instances("").expect("valid");
        assert_eq!(default, Reuse::default());
        assert!(!default.enabled());
        let reuse = instances("reuse = 50\nidle_ms = 2000").expect("valid");
        assert_eq!((reuse.requests, reuse.idle), (50, Duration::from_secs(2)));
        assert!(reuse.enabled());
        for (bad, says) in [
            ("reuse = 0", "instances.reuse must be at least 1"),
            ("reuse = 1000001", "above the 1000000 requests"),
            (
                "reuse = 5\nidle_ms = 0",
                "instances.idle_ms must be greater than 0",
            ),
            ("reuse = 5\nidle_ms = 3600001", "above the 3600000 ms"),
            ("idle_ms = 100", "idle_ms needs instances.reuse above 1"),
            ("count = 3", "unknown field `count`"),
        ] {
            let err = instances(bad).expect_err(bad).to_string();
            assert!(err.contains(says), "{bad}: {err}");
        }
    }

    #[test]
    fn unknown_limit_keys_are_errors() {
        let err = parse(
            "[[component]]\nname = \"a\"\nsource = \"a.wasm\"\n[component.limits]\nmemory = 3\n",
        )
        .expect_err("unknown key");
        assert!(err.to_string().contains("unknown field `memory`"), "{err}");
    }

    #[test]
    fn identical_routes_of_two_components_clash() {
        let err = parse(
            "[[component]]\nname = \"a\"\nsource = \"a.wasm\"\nroutes = [\"/api/...\"]\n\
             [[component]]\nname = \"b\"\nsource = \"b.wasm\"\nroutes = [\"/api/x\", \"/api/...\"]\n",
        )
        .expect_err("clash");
        let message = err.to_string();
        assert!(
            message.contains("`a`") && message.contains("`b`"),
            "{message}"
        );
        assert!(message.contains("/api/..."), "{message}");
    }

    #[test]
    fn nested_routes_of_two_components_do_not_clash() {
        parse(
            "[[component]]\nname = \"a\"\nsource = \"a.wasm\"\nroutes = [\"/api/...\"]\n\
             [[component]]\nname = \"b\"\nsource = \"b.wasm\"\nroutes = [\"/api/catalog/...\"]\n",
        )
        .expect("nesting is allowed: most specific wins");
    }

    #[test]
    fn bad_values_name_the_component() {
        for (body, expected) in [
            (
                "name = \"Bad_Name\"\nsource = \"a.wasm\"",
                "the name must be",
            ),
            (
                "name = \"a\"\nsource = \"a.wasm\"\nroutes = [\"x\"]",
                "must start with `/`",
            ),
            (
                "name = \"a\"\nsource = \"a.wasm\"\nroutes = [\"/a/.../b\"]",
                "last segment",
            ),
            (
                "name = \"a\"\nsource = \"a.wasm\"\nlimits = { concurrency = 0 }",
                "greater than 0",
            ),
            (
                "name = \"a\"\nsource = \"a.wasm\"\ngrants = { http = [\"ftp://x\"] }",
                "grants.http `ftp://x`: scheme `ftp`",
            ),
            (
                "name = \"a\"\nsource = \"a.wasm\"\ngrants = { http = [\"https://x/path\"] }",
                "no path",
            ),
            (
                "name = \"a\"\nsource = \"a.wasm\"\nmigrations = \"m\"",
                "needs the sql grant",
            ),
            (
                "name = \"a\"\nsource = \"a.wasm\"\nmessaging = { subscribe = [\"x.>.y\"] }",
                "messaging.subscribe `x.>.y`",
            ),
            (
                "name = \"a\"\nsource = \"a.wasm\"\nmessaging = { subscribe = [\"x\"], max_deliver = 0 }",
                "max_deliver must be at least 1",
            ),
            (
                "name = \"a\"\nsource = \"a.wasm\"\nlimits = { memory_mib = 5000 }",
                "4096 MiB",
            ),
        ] {
            let err = parse(&format!("[[component]]\n{body}\n")).expect_err(body);
            let message = err.to_string();
            assert!(message.contains(expected), "{message}");
        }
    }

    #[test]
    fn policies_auth_and_edge_settings() {
        let manifest = parse(
            "[auth]\nissuer = \"shop\"\naccess_ttl_s = 60\n[edge]\ntrusted_proxy_hops = 1\n\
             [[component]]\nname = \"catalog\"\nsource = \"c.wasm\"\nroutes = [\"/api/products/...\"]\n\
             [[component.policy]]\nroutes = [\"/api/products/...\"]\nmethods = [\"post\", \"DELETE\"]\nroles = [\"ADMIN\"]\n\
             rate_limit = { per_ip = \"10/s\" }\n\
             [[component.policy]]\nroutes = [\"/api/products/*/stock\"]\naccess = \"internal\"\n\
             [[component]]\nname = \"gateway\"\nsource = \"g.wasm\"\n\
             grants = { http = [\"http://catalog.agora.internal\"] }\n",
        )
        .expect("valid manifest");
        assert_eq!(manifest.auth.issuer, "shop");
        assert_eq!(manifest.auth.audience, "agora");
        assert_eq!(manifest.auth.access_ttl, Duration::from_secs(60));
        assert_eq!(manifest.edge.trusted_proxy_hops, 1);
        assert!(manifest.uses_auth());
        let catalog = &manifest.components[0];
        assert_eq!(catalog.policies.len(), 2);
        let admin = &catalog.policies[0];
        assert_eq!(admin.methods, ["POST", "DELETE"]);
        assert_eq!(admin.access, Access::Authenticated);
        assert_eq!(
            admin.rate_limit.per_ip.map(|r| r.to_string()),
            Some("10/s".into())
        );
        assert_eq!(catalog.policies[1].access, Access::Internal);
        assert_eq!(
            manifest.components[1]
                .grants
                .internal_calls()
                .collect::<Vec<_>>(),
            ["catalog"]
        );
    }

    #[test]
    fn bad_policies_name_the_component_and_the_policy() {
        for (body, expected) in [
            (
                "[[component.policy]]\naccess = \"private\"",
                "policy 1: access `private`",
            ),
            (
                "[[component.policy]]\naccess = \"public\"\nroles = [\"ADMIN\"]",
                "public route cannot require roles",
            ),
            (
                "[[component.policy]]\nroutes = [\"/elsewhere\"]",
                "not among the component's routes",
            ),
            ("[[component.policy]]\nroles = [\"A,B\"]", "role `A,B`"),
            (
                "[[component.policy]]\nmethods = [\"GE T\"]",
                "not an HTTP method",
            ),
            (
                "[[component.policy]]\nrate_limit = { per_ip = \"lots\" }",
                "rate_limit.per_ip",
            ),
            (
                "[[component.policy]]\nrate_limit = { per_day = \"1/s\" }",
                "unknown field `per_day`",
            ),
            (
                "grants = { http = [\"http://ghost.agora.internal\"] }",
                "no component is named `ghost`",
            ),
            (
                "startup = \"/elsewhere\"",
                "startup `/elsewhere` is not a path among the component's routes",
            ),
        ] {
            let text = format!(
                "[[component]]\nname = \"a\"\nsource = \"a.wasm\"\nroutes = [\"/a/...\"]\n{body}\n"
            );
            let err = parse(&text).expect_err(body);
            let message = err.to_string();
            assert!(message.contains(expected), "{message}");
            assert!(!message.contains('\n'), "{message}");
        }
        let err = parse("[auth]\naccess_ttl_s = 600\nrefresh_ttl_s = 60\n").expect_err("ttl");
        assert!(err.to_string().contains("below auth.access_ttl_s"), "{err}");
    }

    #[test]
    fn duplicate_names_are_errors() {
        let err = parse(
            "[[component]]\nname = \"a\"\nsource = \"a.wasm\"\n[[component]]\nname = \"a\"\nsource = \"b.wasm\"\n",
        )
        .expect_err("duplicate");
        assert!(
            err.to_string().contains("used by another component"),
            "{err}"
        );
    }
}
