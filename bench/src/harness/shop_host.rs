//! The shop as the benches that serve it set it up: agora.toml's components and policies in a
//! manifest of the run, the release host's command on the production backends with a key pair
//! generated for the run and the signer of its tokens, and the requests the benches build on
//! (a product created, its cached read warmed, an order's body).

use crate::harness::backends::BackendUrls;
use crate::harness::client::Client;
use crate::harness::process::agora_serve;
use crate::root;
use agora_auth::{Claims, Keys, TokenType};
use agora_cache::{CacheBackend as _, RedisCache};
use anyhow::{Context as _, bail};
use bytes::Bytes;
use http::{Method, StatusCode};
use serde_json::{Value as Json, json};
use std::path::Path;
use std::process::Command;
use std::time::{SystemTime, UNIX_EPOCH};

/// agora.toml's `[auth]`, `[edge]` and its components named in `shop`, with absolute paths and
/// a fresh instance per request (their `instances` tables dropped); and the issuer and audience
/// tokens must carry.
pub(crate) fn shop_manifest(
    work: &Path,
    shop: &[&str],
) -> anyhow::Result<(std::path::PathBuf, (String, String))> {
    let root = root();
    let text = std::fs::read_to_string(root.join("agora.toml")).context("reading agora.toml")?;
    let mut manifest: toml::Table = text.parse().context("parsing agora.toml")?;
    let components = manifest
        .remove("component")
        .and_then(|c| c.as_array().cloned())
        .context("agora.toml has no [[component]]")?;
    let mut kept = Vec::new();
    for mut component in components {
        let Some(table) = component.as_table_mut() else {
            continue;
        };
        let name = table.get("name").and_then(|n| n.as_str()).unwrap_or("");
        if !shop.contains(&name) {
            continue;
        }
        // The benches choose the isolation mode themselves (fresh unless they ask for reuse):
        // agora.toml's `instances` would otherwise decide what a "fresh" row measures.
        table.remove("instances");
        for key in ["source", "migrations"] {
            if let Some(path) = table.get(key).and_then(|p| p.as_str()) {
                let absolute = root.join(path).display().to_string();
                table.insert(key.to_owned(), toml::Value::String(absolute));
            }
        }
        kept.push(component);
    }
    if kept.len() != shop.len() {
        bail!("agora.toml does not declare all of {shop:?}");
    }
    manifest.insert("component".to_owned(), toml::Value::Array(kept));
    let auth = manifest.get("auth").and_then(|a| a.as_table());
    let claim = |key: &str| {
        auth.and_then(|a| a.get(key))
            .and_then(|v| v.as_str())
            .unwrap_or("agora")
            .to_owned()
    };
    let (issuer, audience) = (claim("issuer"), claim("audience"));
    let path = work.join("shop.toml");
    std::fs::write(&path, toml::to_string(&manifest)?)?;
    Ok((path, (issuer, audience)))
}

/// A copy of the manifest at `manifest` in which `component` reuses each instance for up to
/// `reuse` requests (`[component.instances] reuse`), written to `out`.
pub(crate) fn with_reuse(
    manifest: &Path,
    component: &str,
    reuse: u32,
    out: &Path,
) -> anyhow::Result<()> {
    with_setting(
        manifest,
        component,
        ("instances", "reuse", i64::from(reuse)),
        out,
    )
}

/// A copy of the manifest at `manifest` in which `component`'s `[component.TABLE]` has `KEY =
/// value` (`setting` = (TABLE, KEY, value); the table's other keys kept), written to `out`.
pub(crate) fn with_setting(
    manifest: &Path,
    component: &str,
    setting: (&str, &str, i64),
    out: &Path,
) -> anyhow::Result<()> {
    let (table_name, key, value) = setting;
    let mut table: toml::Table = std::fs::read_to_string(manifest)?.parse()?;
    let entry = table
        .get_mut("component")
        .and_then(|c| c.as_array_mut())
        .and_then(|c| {
            c.iter_mut()
                .find(|c| c.get("name").and_then(|n| n.as_str()) == Some(component))
        })
        .and_then(|c| c.as_table_mut())
        .with_context(|| format!("{} has no component {component}", manifest.display()))?;
    let settings = entry
        .entry(table_name)
        .or_insert_with(|| toml::Value::Table(toml::Table::new()))
        .as_table_mut()
        .with_context(|| format!("`{table_name}` of {component} is not a table"))?;
    settings.insert(key.into(), toml::Value::Integer(value));
    std::fs::write(out, toml::to_string(&table)?)?;
    Ok(())
}

/// `agora serve` (the release build) on `manifest` and the production backends, on a free
/// port, data in `work`/`data`, `RUST_LOG=warn`, with a key pair generated for the run (handed
/// over in `AGORA_AUTH_PRIVATE_KEY` / `AGORA_AUTH_PUBLIC_KEY`); and the signer of the run's
/// tokens for `auth` (issuer, audience).
pub(crate) fn host_command(
    backends: &BackendUrls,
    manifest: &Path,
    work: &Path,
    data: &str,
    auth: (String, String),
) -> anyhow::Result<(Command, Signer)> {
    let (private_pem, public_pem) =
        Keys::generate_ed25519_pem().context("generating the run's key pair")?;
    let signer = Signer {
        key: jsonwebtoken::EncodingKey::from_ed_pem(private_pem.as_bytes())?,
        issuer: auth.0,
        audience: auth.1,
    };
    let mut command = agora_serve(manifest, &work.join(data));
    command
        .args(["--database-url", &backends.database_url])
        .args(["--redis-url", &backends.redis_url])
        .args(["--nats-url", &backends.nats_url])
        .env("AGORA_AUTH_PRIVATE_KEY", &private_pem)
        .env("AGORA_AUTH_PUBLIC_KEY", &public_pem);
    Ok((command, signer))
}

/// `agora serve` like `first` (a [`host_command`]'s: same manifest, backends and key pair) but
/// with its data in `work`/`data` and without `first`'s `--metrics-listen`: another replica of
/// the same shop.
pub(crate) fn replica_command(first: &Command, work: &Path, data: &str) -> Command {
    let mut command = Command::new(first.get_program());
    let mut args = Vec::new();
    let mut given = first.get_args();
    while let Some(arg) = given.next() {
        if arg == "--metrics-listen" {
            given.next();
            continue;
        }
        args.push(arg.to_owned());
    }
    if let Some(at) = args.iter().position(|arg| arg == "--data-dir")
        && let Some(dir) = args.get_mut(at + 1)
    {
        *dir = work.join(data).into_os_string();
    }
    command.args(args);
    for (key, value) in first.get_envs() {
        if let Some(value) = value {
            command.env(key, value);
        }
    }
    command
}

/// Signs access tokens with the run's key.
pub(crate) struct Signer {
    key: jsonwebtoken::EncodingKey,
    issuer: String,
    audience: String,
}

impl Signer {
    /// A token for a new subject with `roles`, valid for an hour.
    pub(crate) fn token(&self, roles: &[&str]) -> anyhow::Result<String> {
        let now = SystemTime::now().duration_since(UNIX_EPOCH)?.as_secs();
        let claims = Claims {
            sub: uuid::Uuid::new_v4().to_string(),
            roles: roles.iter().map(|r| (*r).to_owned()).collect(),
            iss: self.issuer.clone(),
            aud: self.audience.clone(),
            iat: now,
            nbf: now,
            exp: now + 3600,
            jti: uuid::Uuid::new_v4().simple().to_string(),
            typ: TokenType::Access,
            fam: uuid::Uuid::new_v4().simple().to_string(),
        };
        let header = jsonwebtoken::Header::new(jsonwebtoken::Algorithm::EdDSA);
        Ok(jsonwebtoken::encode(&header, &claims, &self.key)?)
    }
}

/// Creates a product as an admin; returns its id.
pub(crate) async fn create_product(
    client: &mut Client,
    admin: &str,
    sku: &str,
    stock: i64,
) -> anyhow::Result<String> {
    let product = json!({
        "name": format!("Bench product {sku}"),
        "description": "A product created by `cargo xtask bench shop`: a plain cotton T-shirt, \
                        machine washable, in three colours and five sizes.",
        "price_cents": 1999,
        "sku": sku,
        "stock": stock,
        "images": ["https://shop.example/images/bench-1.jpg", "https://shop.example/images/bench-2.jpg"],
        "category": "bench",
    });
    let answer = client
        .send(Method::POST, "/api/products", Some(admin), Some(&product))
        .await?;
    if answer.status != StatusCode::CREATED {
        bail!("creating product {sku}: {}", answer.describe());
    }
    answer.json()?["id"]
        .as_str()
        .map(str::to_owned)
        .context("the created product has no id")
}

/// Drops the product's cache entry, reads it once through agora (a miss, which fills the
/// cache) and once more (which must be a hit); returns the body.
pub(crate) async fn warm(
    client: &mut Client,
    path: &str,
    cache: &RedisCache,
    key: &str,
) -> anyhow::Result<Bytes> {
    cache.delete(key, "agora:catalog:").await?;
    for expected in ["miss", "hit"] {
        let answer = client.send(Method::GET, path, None, None).await?;
        let x_cache = answer.headers.get("x-cache").and_then(|v| v.to_str().ok());
        if answer.status != StatusCode::OK || x_cache != Some(expected) {
            bail!(
                "GET {path}: expected 200 with x-cache: {expected}, got {} with x-cache {x_cache:?}",
                answer.describe()
            );
        }
        if expected == "hit" {
            return Ok(answer.body);
        }
    }
    unreachable!("the loop returns on the hit")
}

pub(crate) fn order_body(product_id: &str) -> Json {
    json!({
        "items": [{ "product_id": product_id, "quantity": 1 }],
        "payment_method": "tok_visa",
    })
}
