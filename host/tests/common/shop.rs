//! The shop as the repository's agora.toml serves it, for the shop tests.
//!
//! [`ShopManifest`] is agora.toml itself, parsed: a test never carries its own copy of the
//! shop's routes, grants, policies or subscriptions, so a policy changed in agora.toml is the
//! policy every shop test runs with. What a test changes (fewer components, a fixture, a quicker
//! redelivery, a config value) it changes through the builder methods, in its own
//! `manifest()` function. [`Shop`] serves such a manifest in-process and [`Client`] talks JSON
//! to it (or to any `agora` address).

use super::{Backends, TestHost, TestKeys};
use agora_host::HostConfig;
use reqwest::Method;
use serde_json::Value;
use std::path::{Path, PathBuf};
use std::time::Duration;

/// The repository's root (where agora.toml lives).
pub fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

/// agora.toml, parsed, adjusted for a test and ready to be served.
#[derive(Clone, Debug)]
pub struct ShopManifest {
    document: toml::Table,
}

impl ShopManifest {
    /// agora.toml with the adjustments every shop test needs — the one place they are made:
    ///
    /// - `source` and `migrations` absolute (the test writes the manifest elsewhere);
    /// - no `rate_limit` in any policy: a test's requests all come from one address and a few
    ///   users, faster than any customer;
    /// - no `config_env`: environment variables are process-wide, so a test gives such values
    ///   as `config` ([`ShopManifest::first_admin`]);
    /// - the account's argon2 cheap (1 MiB, one pass), unless a test sets its own cost.
    pub fn load() -> ShopManifest {
        let path = root().join("agora.toml");
        let text = std::fs::read_to_string(&path)
            .unwrap_or_else(|err| panic!("cannot read {}: {err}", path.display()));
        let mut document: toml::Table = text
            .parse()
            .unwrap_or_else(|err| panic!("{} is not TOML: {err}", path.display()));
        let absolute = |relative: &toml::Value| {
            toml::Value::String(
                root()
                    .join(relative.as_str().expect("a path"))
                    .display()
                    .to_string(),
            )
        };
        for component in components_mut(&mut document) {
            for key in ["source", "migrations"] {
                if let Some(path) = component.get(key) {
                    let path = absolute(path);
                    component.insert(key.into(), path);
                }
            }
            component.remove("config_env");
            if let Some(toml::Value::Array(policies)) = component.get_mut("policy") {
                for policy in policies.iter_mut().filter_map(toml::Value::as_table_mut) {
                    policy.remove("rate_limit");
                }
            }
        }
        ShopManifest { document }
            .config("account", "argon2_memory_kib", "1024")
            .config("account", "argon2_iterations", "1")
    }

    /// Keeps only the components named `names` (in agora.toml's order).
    pub fn only(mut self, names: &[&str]) -> ShopManifest {
        for name in names {
            self.component(name);
        }
        if let Some(toml::Value::Array(components)) = self.document.get_mut("component") {
            components.retain(|c| names.contains(&c["name"].as_str().unwrap_or_default()));
        }
        self
    }

    /// Removes the component `name`.
    pub fn without(mut self, name: &str) -> ShopManifest {
        self.component(name);
        if let Some(toml::Value::Array(components)) = self.document.get_mut("component") {
            components.retain(|c| c["name"].as_str() != Some(name));
        }
        self
    }

    /// Sets `key` (dotted for a nested table: `messaging.backoff_ms`) of component `name`.
    pub fn set(mut self, name: &str, key: &str, value: impl Into<toml::Value>) -> ShopManifest {
        let mut table = self.component(name);
        let mut keys: Vec<&str> = key.split('.').collect();
        let last = keys.pop().unwrap();
        for key in keys {
            table = table
                .entry(key)
                .or_insert_with(|| toml::Value::Table(toml::Table::new()))
                .as_table_mut()
                .unwrap_or_else(|| panic!("`{key}` of component `{name}` is not a table"));
        }
        table.insert(last.into(), value.into());
        self
    }

    /// Sets the config value `key` of component `name`.
    pub fn config(self, name: &str, key: &str, value: &str) -> ShopManifest {
        self.set(name, &format!("config.{key}"), value)
    }

    /// The first admin, created by the account's startup request.
    pub fn first_admin(self, email: &str, password: &str) -> ShopManifest {
        self.config("account", "admin_email", email)
            .config("account", "admin_password", password)
    }

    /// Appends the `[[component]]` tables of `text` (fixtures; see [`super::component_table`]).
    pub fn with(mut self, text: &str) -> ShopManifest {
        let extra: toml::Table = text
            .parse()
            .unwrap_or_else(|err| panic!("not TOML: {err}\n{text}"));
        let Some(toml::Value::Array(extra)) = extra.get("component") else {
            panic!("no [[component]] in {text}");
        };
        match self.document.get_mut("component") {
            Some(toml::Value::Array(components)) => components.extend(extra.iter().cloned()),
            _ => {
                self.document
                    .insert("component".into(), toml::Value::Array(extra.clone()));
            }
        }
        self
    }

    /// The names of the components served, in order.
    pub fn names(&self) -> Vec<String> {
        match self.document.get("component") {
            Some(toml::Value::Array(components)) => components
                .iter()
                .filter_map(|c| c["name"].as_str().map(str::to_owned))
                .collect(),
            _ => Vec::new(),
        }
    }

    /// The issuer and audience of the tokens the host issues and accepts (`[auth]`).
    pub fn issuer_and_audience(&self) -> (String, String) {
        let auth = self.document.get("auth").and_then(toml::Value::as_table);
        let get = |key: &str| {
            auth.and_then(|auth| auth.get(key))
                .and_then(toml::Value::as_str)
                .unwrap_or("agora")
                .to_owned()
        };
        (get("issuer"), get("audience"))
    }

    /// The manifest's text.
    pub fn to_toml(&self) -> String {
        toml::to_string(&self.document).unwrap()
    }

    /// Writes the manifest to `dir`/agora.toml and returns that path.
    pub fn write(&self, dir: &Path) -> PathBuf {
        let path = dir.join("agora.toml");
        std::fs::write(&path, self.to_toml()).unwrap();
        path
    }

    /// The table of component `name`; fails the test when agora.toml has no such component.
    fn component(&mut self, name: &str) -> &mut toml::Table {
        components_mut(&mut self.document)
            .find(|c| c.get("name").and_then(toml::Value::as_str) == Some(name))
            .unwrap_or_else(|| panic!("the manifest has no component `{name}`"))
    }
}

fn components_mut(document: &mut toml::Table) -> impl Iterator<Item = &mut toml::Table> {
    document
        .get_mut("component")
        .and_then(toml::Value::as_array_mut)
        .into_iter()
        .flatten()
        .filter_map(toml::Value::as_table_mut)
}

/// How a [`Shop`] starts besides its manifest.
pub struct Setup {
    /// Where the data lives; without a database URL, SQLite files of the shop's own.
    pub backends: Backends,
    /// Signs the tests' tokens; the host signs and verifies with its keys.
    pub signer: TestKeys,
    /// The admin API's bearer token, when the admin API is wanted.
    pub admin_token: Option<String>,
}

impl Setup {
    /// Fresh keys on `backends`, no admin API.
    pub fn new(backends: Backends) -> Setup {
        Setup {
            backends,
            signer: TestKeys::new(),
            admin_token: None,
        }
    }

    /// The embedded backends with a database of the shop's own.
    pub fn embedded() -> Setup {
        Setup::new(Backends::default())
    }

    /// Signing and verifying with `keys` (whose private half the test does not need).
    pub fn keys(mut self, keys: agora_auth::Keys) -> Setup {
        self.signer.keys = keys;
        self
    }

    /// With the admin API on, behind `token`.
    pub fn admin_api(mut self, token: &str) -> Setup {
        self.admin_token = Some(token.to_owned());
        self
    }
}

/// A host serving a [`ShopManifest`] in-process, on 127.0.0.1 at an ephemeral port, until
/// dropped; derefs to its [`Client`].
pub struct Shop {
    pub host: TestHost,
    pub client: Client,
    pub setup: Setup,
    /// The database URL the host uses.
    pub database_url: String,
    issuer: String,
    audience: String,
    /// The SQLite files, when the setup names no database.
    data: tempfile::TempDir,
}

impl Shop {
    /// Starts `manifest`; the test fails when the host does not load.
    pub async fn start(manifest: &ShopManifest, setup: Setup) -> Shop {
        Shop::try_start(manifest, setup)
            .await
            .unwrap_or_else(|err| panic!("host failed to load: {err}"))
    }

    /// Starts `manifest` (which runs the startup requests); the load error as text.
    pub async fn try_start(manifest: &ShopManifest, setup: Setup) -> Result<Shop, String> {
        let data = tempfile::tempdir().unwrap();
        let database_url = setup
            .backends
            .database_url
            .clone()
            .unwrap_or_else(|| format!("sqlite://{}", data.path().join("sql").display()));
        let host = Shop::host(manifest, &setup, &database_url).await?;
        let (issuer, audience) = manifest.issuer_and_audience();
        Ok(Shop {
            client: Client::new(&host.url("")),
            host,
            setup,
            database_url,
            issuer,
            audience,
            data,
        })
    }

    /// Stops this host and serves `manifest` on the same data, keys and admin token.
    pub async fn restart(mut self, manifest: &ShopManifest) -> Shop {
        let next = Shop::host(manifest, &self.setup, &self.database_url)
            .await
            .unwrap_or_else(|err| panic!("host failed to load: {err}"));
        self.client = Client::new(&next.url(""));
        (self.issuer, self.audience) = manifest.issuer_and_audience();
        std::mem::replace(&mut self.host, next).stop().await;
        self
    }

    async fn host(
        manifest: &ShopManifest,
        setup: &Setup,
        database_url: &str,
    ) -> Result<TestHost, String> {
        let mut backends = setup.backends.clone();
        backends.database_url = Some(database_url.to_owned());
        let keys = setup.signer.keys.clone();
        TestHost::try_start_full(
            &manifest.to_toml(),
            move |config: &mut HostConfig| {
                backends.apply(config);
                config.auth_keys = Some(keys);
            },
            setup.admin_token.as_deref(),
        )
        .await
    }

    /// Requests shutdown and waits for the drain to finish.
    pub async fn stop(self) {
        self.host.stop().await;
    }

    /// An access token for `subject` with `roles`, signed with the host's key for the
    /// manifest's issuer and audience.
    pub fn token(&self, subject: &str, roles: &[&str]) -> String {
        self.setup.signer.sign(&super::access_claims(
            subject,
            roles,
            &self.issuer,
            &self.audience,
        ))
    }

    /// Where the shop's own SQLite files are (when the setup names no database).
    pub fn data_dir(&self) -> &Path {
        self.data.path()
    }
}

impl std::ops::Deref for Shop {
    type Target = Client;
    fn deref(&self) -> &Client {
        &self.client
    }
}

/// An answer: status, headers, the body as text and as JSON (`null` when empty or not JSON).
#[derive(Debug)]
pub struct Answer {
    pub status: u16,
    pub headers: reqwest::header::HeaderMap,
    pub text: String,
    pub body: Value,
}

impl Answer {
    /// The header `name`, when present and text.
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).and_then(|v| v.to_str().ok())
    }

    /// The `x-request-id` header.
    pub fn request_id(&self) -> Option<&str> {
        self.header("x-request-id")
    }

    /// Asserts `status`; the JSON body (the test fails when the body is not JSON).
    pub fn ok(&self, status: u16) -> &Value {
        assert_eq!(self.status, status, "{}", self.text);
        self.json()
    }

    /// The JSON body; the test fails when the body is neither empty nor JSON.
    pub fn json(&self) -> &Value {
        assert!(
            self.text.is_empty() || !self.body.is_null() || self.text.trim() == "null",
            "not JSON ({}): {}",
            self.status,
            self.text
        );
        &self.body
    }
}

/// JSON over HTTP to one agora: bearer tokens, status and body of every answer.
#[derive(Clone)]
pub struct Client {
    http: reqwest::Client,
    base: String,
}

impl Client {
    /// A client of `base` (`http://ADDR`).
    pub fn new(base: &str) -> Client {
        Client {
            http: reqwest::Client::new(),
            base: base.trim_end_matches('/').to_owned(),
        }
    }

    /// A client whose requests give up after `timeout`.
    pub fn with_timeout(base: &str, timeout: Duration) -> Client {
        Client {
            http: reqwest::Client::builder().timeout(timeout).build().unwrap(),
            base: base.trim_end_matches('/').to_owned(),
        }
    }

    /// `base` + `path`.
    pub fn url(&self, path: &str) -> String {
        format!("{}{path}", self.base)
    }

    /// Sends `method path` with a bearer `token` and a JSON `body` when given.
    pub async fn send(
        &self,
        method: Method,
        path: &str,
        token: Option<&str>,
        body: Option<Value>,
    ) -> Answer {
        let mut request = self.http.request(method, self.url(path));
        if let Some(token) = token {
            request = request.bearer_auth(token);
        }
        if let Some(body) = body {
            request = request.json(&body);
        }
        let response = request.send().await.unwrap();
        let status = response.status().as_u16();
        let headers = response.headers().clone();
        let text = response.text().await.unwrap();
        let body = serde_json::from_str(&text).unwrap_or(Value::Null);
        Answer {
            status,
            headers,
            text,
            body,
        }
    }

    pub async fn get(&self, path: &str, token: Option<&str>) -> Answer {
        self.send(Method::GET, path, token, None).await
    }

    pub async fn post(&self, path: &str, token: Option<&str>, body: Value) -> Answer {
        self.send(Method::POST, path, token, Some(body)).await
    }

    pub async fn put(&self, path: &str, token: Option<&str>, body: Value) -> Answer {
        self.send(Method::PUT, path, token, Some(body)).await
    }

    pub async fn patch(&self, path: &str, token: Option<&str>, body: Value) -> Answer {
        self.send(Method::PATCH, path, token, Some(body)).await
    }

    pub async fn delete(&self, path: &str, token: Option<&str>) -> Answer {
        self.send(Method::DELETE, path, token, None).await
    }

    /// Registers an account; the 201 answer (a session: user and tokens).
    pub async fn register(&self, email: &str, password: &str, name: &str) -> Value {
        let body = serde_json::json!({ "email": email, "password": password, "name": name });
        self.post("/api/accounts/register", None, body)
            .await
            .ok(201)
            .clone()
    }

    /// Signs in; the 200 answer (a session: user and tokens).
    pub async fn login(&self, email: &str, password: &str) -> Value {
        let body = serde_json::json!({ "email": email, "password": password });
        self.post("/api/accounts/login", None, body)
            .await
            .ok(200)
            .clone()
    }
}

/// The `access_token` (or another `kind` of token) of a session.
pub fn session_token<'a>(session: &'a Value, kind: &str) -> &'a str {
    session[kind]
        .as_str()
        .unwrap_or_else(|| panic!("no {kind} in {session}"))
}
