//! The shop's manifest: which components run, where their code is, which routes they serve and
//! under which limits.
//!
//! The manifest is TOML. Unknown keys are an error, so a typo never silently falls back to a
//! default. Relative paths are resolved against the manifest's own folder, so a manifest means the
//! same thing whatever the working directory of `agora serve` is.
//!
//! ```toml
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
//!
//! [component.grants]            # deny by default
//! cache = true                   # agora:platform/cache
//! sql = true                     # agora:platform/sql (own schema / SQLite file)
//! publish = ["order.*"]          # agora:platform/messaging, NATS-style patterns
//! http = ["https://api.example.com"]  # outbound wasi:http, by origin
//!
//! migrations = "migrations/hello"  # SQL migrations, applied once at load (needs sql)
//!
//! [component.messaging]          # subscriptions, delivered to the exported handler
//! subscribe = ["payment.succeeded"]
//! max_deliver = 5                # attempts before the dead-letter subject
//! backoff_ms = 1000              # first redelivery delay, doubling up to backoff_max_ms
//! backoff_max_ms = 60000
//!
//! [component.limits]
//! memory_mib = 64
//! deadline_ms = 5000
//! body_kib = 512
//! concurrency = 32
//! ```

use serde::Deserialize;
use std::collections::{BTreeMap, HashSet};
use std::path::{Path, PathBuf};

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
    /// Capabilities the component may use.
    pub grants: Grants,
    /// wasi:config/store values written in the manifest.
    pub config: BTreeMap<String, String>,
    /// wasi:config/store keys whose values come from environment variables (key → variable).
    /// Secrets belong here: the manifest holds only the variable's name.
    pub config_env: BTreeMap<String, String>,
    /// The folder of SQL migrations, resolved against the manifest's folder.
    pub migrations: Option<PathBuf>,
    /// Subscriptions and their delivery settings.
    pub messaging: Messaging,
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
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Grants {
    /// `agora:platform/cache`, namespaced to the component.
    #[serde(default)]
    pub cache: bool,
    /// `agora:platform/sql`: the component's own schema (PostgreSQL) or file (SQLite).
    #[serde(default)]
    pub sql: bool,
    /// `agora:platform/messaging`: subject patterns the component may publish to (`*` one
    /// token, a final `>` any number). Empty: no messaging.
    #[serde(default)]
    pub publish: Vec<String>,
    /// Outbound `wasi:http`: the origins (`scheme://host[:port]`) the component may send
    /// requests to. Empty: every outgoing request is refused with `HTTP-request-denied`.
    #[serde(default)]
    pub http: Vec<String>,
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
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            memory_bytes: DEFAULT_MEMORY_MIB << 20,
            deadline_ms: DEFAULT_DEADLINE_MS,
            body_bytes: DEFAULT_BODY_KIB << 10,
            concurrency: DEFAULT_CONCURRENCY,
        }
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
    grants: Grants,
    #[serde(default)]
    config: BTreeMap<String, String>,
    #[serde(default)]
    config_env: BTreeMap<String, String>,
    migrations: Option<PathBuf>,
    #[serde(default)]
    messaging: RawMessaging,
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
struct RawLimits {
    memory_mib: Option<u64>,
    deadline_ms: Option<u64>,
    body_kib: Option<u64>,
    concurrency: Option<u32>,
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
            if let Some(key) = raw.config.keys().find(|k| raw.config_env.contains_key(*k)) {
                return Err(invalid(format!(
                    "config key `{key}` is set both in `config` and in `config_env`"
                )));
            }
            for pattern in &raw.grants.publish {
                agora_messaging::validate_pattern(pattern)
                    .map_err(|err| invalid(format!("grants.publish `{pattern}`: {err}")))?;
            }
            let mut grants = raw.grants;
            for origin in &mut grants.http {
                *origin = normalise_origin(origin)
                    .map_err(|err| invalid(format!("grants.http `{origin}`: {err}")))?;
            }
            if raw.migrations.is_some() && !grants.sql {
                return Err(invalid(
                    "`migrations` needs the sql grant (add `sql = true` to [component.grants])"
                        .into(),
                ));
            }
            let messaging = raw.messaging.resolve().map_err(invalid)?;
            components.push(ComponentSpec {
                source: base.join(&raw.source),
                migrations: raw.migrations.map(|dir| base.join(dir)),
                name: raw.name,
                routes,
                limits,
                grants,
                config: raw.config,
                config_env: raw.config_env,
                messaging,
            });
        }
        let manifest = Manifest {
            path: path.to_owned(),
            components,
        };
        manifest.check_route_clashes()?;
        Ok(manifest)
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
        Ok(Limits {
            memory_bytes: memory_mib << 20,
            deadline_ms,
            body_bytes: body_kib.saturating_mul(1024),
            concurrency: u32::try_from(concurrency).unwrap_or(u32::MAX),
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

fn validate_name(name: &str) -> Result<(), String> {
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
        assert!(order.grants.sql && !order.grants.cache);
        assert_eq!(order.grants.publish, ["order.*", "audit.>"]);
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
                "name = \"a\"\nsource = \"a.wasm\"\ngrants = { publish = [\"a..b\"] }",
                "grants.publish `a..b`",
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
