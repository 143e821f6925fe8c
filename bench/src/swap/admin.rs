//! The host's admin API as `bench swap` uses it: PUT a component's bytes, roll it back, ask
//! which version serves.

use crate::harness::client::Client;
use anyhow::{Context as _, bail};
use bytes::Bytes;
use http::{Method, StatusCode};
use std::time::Duration;

/// How long one admin request may take (a compile on two busy cores can be slow).
const ADMIN_TIMEOUT: Duration = Duration::from_secs(600);

/// Where the host's admin API listens, and its token.
#[derive(Clone)]
pub(super) struct AdminApi {
    pub(super) addr: String,
    pub(super) token: String,
}

/// What a PUT installed.
pub(super) struct Installed {
    /// `sha256:<hex>`.
    pub(super) digest: String,
    pub(super) compiled: bool,
    pub(super) validation_ms: u64,
}

impl AdminApi {
    pub(super) async fn connect(&self) -> anyhow::Result<Client> {
        Ok(Client::connect(&self.addr)
            .await?
            .with_timeout(ADMIN_TIMEOUT))
    }

    /// `PUT /admin/components/{component}` with `wasm`; it must change the version serving.
    pub(super) async fn put(
        &self,
        client: &mut Client,
        component: &str,
        wasm: Bytes,
    ) -> anyhow::Result<Installed> {
        let path = format!("/admin/components/{component}");
        let answer = client
            .send_bytes(
                Method::PUT,
                &path,
                Some(&self.token),
                Some(("application/wasm", wasm)),
            )
            .await?;
        if answer.status != StatusCode::OK {
            bail!("PUT {path}: {}", answer.describe());
        }
        let json = answer.json()?;
        if json["changed"] != true {
            bail!("PUT {path} changed nothing: {}", answer.describe());
        }
        let current = &json["current"];
        match (current["digest"].as_str(), current["compiled"].as_bool()) {
            (Some(digest), Some(compiled)) => Ok(Installed {
                digest: digest.to_owned(),
                compiled,
                validation_ms: json["validation_ms"].as_u64().unwrap_or_default(),
            }),
            _ => bail!(
                "PUT {path}: no current digest and compiled: {}",
                answer.describe()
            ),
        }
    }

    /// `POST /admin/components/{component}/rollback`; it must change the version serving.
    pub(super) async fn rollback(
        &self,
        client: &mut Client,
        component: &str,
    ) -> anyhow::Result<()> {
        let path = format!("/admin/components/{component}/rollback");
        let answer = client
            .send(Method::POST, &path, Some(&self.token), None)
            .await?;
        if answer.status != StatusCode::OK || answer.json()?["changed"] != true {
            bail!("POST {path}: {}", answer.describe());
        }
        Ok(())
    }

    /// The digest of the version of `component` serving now.
    pub(super) async fn current(
        &self,
        client: &mut Client,
        component: &str,
    ) -> anyhow::Result<String> {
        let path = format!("/admin/components/{component}");
        let answer = client
            .send(Method::GET, &path, Some(&self.token), None)
            .await?;
        if answer.status != StatusCode::OK {
            bail!("GET {path}: {}", answer.describe());
        }
        answer.json()?["digest"]
            .as_str()
            .map(str::to_owned)
            .with_context(|| format!("GET {path}: no digest: {}", answer.describe()))
    }
}
