//! Shared test support: real components from target/components, a host started in-process on
//! an ephemeral port, and real HTTP to it.

#![allow(dead_code, clippy::unwrap_used)]

pub mod process;
pub mod shop;

use agora_host::{Drained, Host, HostConfig};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use tokio::sync::oneshot;
use tokio::task::JoinHandle;

/// The built component `name` (target/components/NAME.wasm).
pub fn component(name: &str) -> PathBuf {
    let path = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../target/components")
        .join(format!("{name}.wasm"));
    assert!(
        path.exists(),
        "{} is missing: run `cargo xtask build-components` (or `cargo xtask test`)",
        path.display()
    );
    path
}

/// One `[[component]]` table serving `routes` from target/components/`file`.wasm, with extra
/// TOML lines (limits) appended.
pub fn component_table(name: &str, file: &str, routes: &[&str], extra: &str) -> String {
    format!(
        "[[component]]\nname = {name:?}\nsource = {:?}\nroutes = {routes:?}\n{extra}\n",
        component(file).display().to_string()
    )
}

/// A compile cache shared by the tests of one run, so each component compiles once.
pub fn shared_data_dir() -> PathBuf {
    Path::new(env!("CARGO_TARGET_TMPDIR")).join("agora-test-data")
}

/// A host serving on 127.0.0.1 at an ephemeral port until dropped.
pub struct TestHost {
    pub addr: SocketAddr,
    /// The admin API's address, when it was started with one.
    pub admin_addr: Option<SocketAddr>,
    /// The metrics listener's address (`/metrics`, `/healthz`, `/readyz`).
    pub metrics_addr: SocketAddr,
    pub dir: tempfile::TempDir,
    shutdown: Option<oneshot::Sender<()>>,
    task: Option<JoinHandle<Result<Drained, agora_host::HostError>>>,
    registry: Arc<agora_host::swap::Components>,
}

impl TestHost {
    /// Writes `manifest` to a temporary folder and starts a host on it.
    pub async fn start(manifest: &str) -> TestHost {
        TestHost::start_with(manifest, |_| {}).await
    }

    /// Like [`TestHost::start`], with a chance to adjust the configuration.
    pub async fn start_with(manifest: &str, adjust: impl FnOnce(&mut HostConfig)) -> TestHost {
        TestHost::start_full(manifest, adjust, None).await
    }

    /// Like [`TestHost::start_with`], with the admin API on its own ephemeral port when
    /// `admin_token` is given.
    pub async fn start_full(
        manifest: &str,
        adjust: impl FnOnce(&mut HostConfig),
        admin_token: Option<&str>,
    ) -> TestHost {
        TestHost::try_start_full(manifest, adjust, admin_token)
            .await
            .unwrap_or_else(|err| panic!("host failed to load: {err}"))
    }

    /// Like [`TestHost::start_full`]; the load error as text when the host does not load.
    pub async fn try_start_full(
        manifest: &str,
        adjust: impl FnOnce(&mut HostConfig),
        admin_token: Option<&str>,
    ) -> Result<TestHost, String> {
        let dir = tempfile::tempdir().unwrap();
        let manifest_path = dir.path().join("agora.toml");
        std::fs::write(&manifest_path, manifest).unwrap();
        let mut config = HostConfig::new(&manifest_path);
        config.data_dir = shared_data_dir();
        adjust(&mut config);
        let host = Host::load(&config).await.map_err(|err| err.to_string())?;
        let mut admin_addr = None;
        let host = match admin_token {
            Some(token) => {
                let admin = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
                admin_addr = Some(admin.local_addr().unwrap());
                host.with_admin(admin, agora_host::admin::AdminToken::new(token).unwrap())
            }
            None => host,
        };
        let metrics = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let metrics_addr = metrics.local_addr().unwrap();
        let host = host.with_metrics(metrics);
        let registry = host.registry().clone();
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let (shutdown, signal) = oneshot::channel::<()>();
        let task = tokio::spawn(host.serve(listener, async {
            let _ = signal.await;
        }));
        Ok(TestHost {
            addr,
            admin_addr,
            metrics_addr,
            dir,
            shutdown: Some(shutdown),
            task: Some(task),
            registry,
        })
    }

    /// The version of `component` serving now (its granted capabilities, to look behind it).
    pub fn component(&self, component: &str) -> Arc<agora_host::component::LoadedComponent> {
        self.registry
            .get(component)
            .unwrap_or_else(|| panic!("no component `{component}`"))
            .current()
    }

    /// Instances of `component` running right now (requests and events holding one of its
    /// concurrency permits, whichever version they run).
    pub fn in_flight(&self, component: &str) -> usize {
        let slot = self
            .registry
            .get(component)
            .unwrap_or_else(|| panic!("no component `{component}`"));
        let current = slot.current();
        current.limits.concurrency as usize - current.permits.available_permits()
    }

    /// Waits (30 s at most) until `n` instances of `component` run: requests sent before are
    /// then inside the component, not still on their way. The condition a test waits for,
    /// instead of a head start that a loaded machine may not honour.
    pub async fn wait_until_in_flight(&self, component: &str, n: usize) {
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
        while self.in_flight(component) < n {
            assert!(
                std::time::Instant::now() < deadline,
                "{n} instance(s) of `{component}` never ran at once"
            );
            tokio::time::sleep(std::time::Duration::from_millis(5)).await;
        }
    }

    /// `http://ADDR` + `path`.
    pub fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.addr)
    }

    /// Requests shutdown and waits for the drain to finish.
    pub async fn stop(mut self) -> Drained {
        if let Some(shutdown) = self.shutdown.take() {
            let _ = shutdown.send(());
        }
        self.task
            .take()
            .unwrap()
            .await
            .unwrap()
            .unwrap_or_else(|err| panic!("host failed to serve: {err}"))
    }
}

impl Drop for TestHost {
    fn drop(&mut self) {
        if let Some(shutdown) = self.shutdown.take() {
            let _ = shutdown.send(());
        }
    }
}

/// Checks the JSON error shape and returns `(code, message, request_id)`.
pub async fn json_error(response: reqwest::Response, status: u16) -> (String, String, String) {
    assert_eq!(response.status().as_u16(), status, "unexpected status");
    let header_id = response
        .headers()
        .get("x-request-id")
        .expect("x-request-id header")
        .to_str()
        .unwrap()
        .to_owned();
    let content_type = response.headers().get("content-type").cloned();
    assert_eq!(
        content_type.as_ref().and_then(|v| v.to_str().ok()),
        Some("application/json")
    );
    let body: serde_json::Value = response.json().await.unwrap();
    let error = &body["error"];
    let request_id = error["request_id"].as_str().unwrap().to_owned();
    assert_eq!(request_id, header_id, "body and header carry the same id");
    assert!(!request_id.is_empty());
    (
        error["code"].as_str().unwrap().to_owned(),
        error["message"].as_str().unwrap().to_owned(),
        request_id,
    )
}

/// The Redis the production-backend tests use (`AGORA_TEST_REDIS_URL`, default the local one),
/// or None after printing SKIPPED when it is unreachable — except under `CI=true`, where an
/// unreachable Redis fails the test.
pub fn redis_url_or_skip() -> Option<String> {
    service_url_or_skip("AGORA_TEST_REDIS_URL", "redis://127.0.0.1:6379", "Redis")
}

/// The PostgreSQL of the production-backend tests (see [`service_url_or_skip`]).
pub fn database_url_or_skip() -> Option<String> {
    service_url_or_skip(
        "AGORA_TEST_DATABASE_URL",
        "postgres://postgres@127.0.0.1:5432/test",
        "PostgreSQL",
    )
}

/// The NATS (with JetStream) of the production-backend tests (see [`service_url_or_skip`]).
pub fn nats_url_or_skip() -> Option<String> {
    service_url_or_skip("AGORA_TEST_NATS_URL", "nats://127.0.0.1:4222", "NATS")
}

/// The URL in `variable` (or `default`) when its server accepts TCP connections. Otherwise
/// the test is skipped with a SKIPPED line — except under `CI=true`, where it fails.
pub fn service_url_or_skip(variable: &str, default: &str, what: &str) -> Option<String> {
    let url = std::env::var(variable).unwrap_or_else(|_| default.into());
    let authority = url
        .split_once("://")
        .map_or(url.as_str(), |(_, rest)| rest)
        .split('/')
        .next()
        .unwrap_or("")
        .rsplit('@')
        .next()
        .unwrap_or("")
        .to_owned();
    let reachable = std::net::ToSocketAddrs::to_socket_addrs(&authority)
        .ok()
        .and_then(|mut addrs| addrs.next())
        .and_then(|addr| {
            std::net::TcpStream::connect_timeout(&addr, std::time::Duration::from_secs(2)).ok()
        })
        .is_some();
    if reachable {
        return Some(url);
    }
    assert!(
        std::env::var("CI").as_deref() != Ok("true"),
        "{what} at {url} is required under CI=true"
    );
    eprintln!("SKIPPED: {what} at {url} is unreachable");
    None
}

/// `wasm` with a component-level custom section appended: the same code under another digest,
/// a new version as far as a hot swap is concerned.
pub fn with_custom_section(wasm: &[u8], name: &str, payload: &[u8]) -> Vec<u8> {
    fn leb128(mut n: usize, out: &mut Vec<u8>) {
        loop {
            let byte = (n & 0x7f) as u8;
            n >>= 7;
            if n == 0 {
                out.push(byte);
                return;
            }
            out.push(byte | 0x80);
        }
    }
    let mut content = Vec::new();
    leb128(name.len(), &mut content);
    content.extend_from_slice(name.as_bytes());
    content.extend_from_slice(payload);
    let mut out = wasm.to_vec();
    out.push(0);
    leb128(content.len(), &mut out);
    out.extend_from_slice(&content);
    out
}

/// A component name no other test run uses (for backends that outlive the test).
pub fn unique_name(stem: &str) -> String {
    format!(
        "{stem}-{}",
        &uuid::Uuid::new_v4().simple().to_string()[..12]
    )
}

/// A freshly generated Ed25519 key pair: `keys` for the host, the private PEM for tests that
/// sign tokens themselves.
pub struct TestKeys {
    pub private_pem: String,
    pub keys: agora_auth::Keys,
}

impl TestKeys {
    pub fn new() -> TestKeys {
        let (private_pem, public_pem) = agora_auth::Keys::generate_ed25519_pem().unwrap();
        let keys =
            agora_auth::Keys::ed25519_from_pem(private_pem.as_bytes(), public_pem.as_bytes())
                .unwrap();
        TestKeys { private_pem, keys }
    }

    /// Signs `claims` with EdDSA, as the host does.
    pub fn sign(&self, claims: &agora_auth::Claims) -> String {
        let key = jsonwebtoken::EncodingKey::from_ed_pem(self.private_pem.as_bytes()).unwrap();
        let header = jsonwebtoken::Header::new(jsonwebtoken::Algorithm::EdDSA);
        jsonwebtoken::encode(&header, claims, &key).unwrap()
    }

    /// A valid access token for `subject` with `roles`, issuer and audience `agora` (the
    /// defaults of a manifest without `[auth]`).
    pub fn token(&self, subject: &str, roles: &[&str]) -> String {
        self.sign(&access_claims(subject, roles, "agora", "agora"))
    }
}

/// Valid access-token claims, ten minutes long, in a session of their own.
pub fn access_claims(
    subject: &str,
    roles: &[&str],
    issuer: &str,
    audience: &str,
) -> agora_auth::Claims {
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs();
    agora_auth::Claims {
        sub: subject.into(),
        roles: roles.iter().map(|r| r.to_string()).collect(),
        iss: issuer.into(),
        aud: audience.into(),
        iat: now,
        nbf: now,
        exp: now + 600,
        jti: uuid::Uuid::new_v4().simple().to_string(),
        typ: agora_auth::TokenType::Access,
        fam: uuid::Uuid::new_v4().simple().to_string(),
    }
}

/// Where a test host's backends live: `None` = the embedded one.
#[derive(Clone, Debug, Default)]
pub struct Backends {
    pub database_url: Option<String>,
    pub redis_url: Option<String>,
    pub nats_url: Option<String>,
}

impl Backends {
    /// PostgreSQL, Redis and NATS, when all three are reachable (under `CI=true` they must be).
    pub fn production() -> Option<Backends> {
        let (Some(database_url), Some(redis_url), Some(nats_url)) = (
            database_url_or_skip(),
            redis_url_or_skip(),
            nats_url_or_skip(),
        ) else {
            return None;
        };
        Some(Backends {
            database_url: Some(database_url),
            redis_url: Some(redis_url),
            nats_url: Some(nats_url),
        })
    }

    /// Embedded backends with the SQLite files in `dir` (a database of the test's own).
    pub fn embedded(dir: &Path) -> Backends {
        Backends {
            database_url: Some(format!("sqlite://{}", dir.join("sql").display())),
            ..Backends::default()
        }
    }

    /// Points `config` at these backends.
    pub fn apply(&self, config: &mut HostConfig) {
        config.database_url = self.database_url.clone();
        config.redis_url = self.redis_url.clone();
        config.nats_url = self.nats_url.clone();
    }
}
