//! The fleet: desired component versions shared by every replica through NATS JetStream.
//!
//! `agora deploy` stores a component's bytes in a JetStream object store and names them as the
//! component's desired version in a key-value bucket; every host replica watches that bucket,
//! fetches the bytes and swaps the component, then reports what it runs in a second bucket,
//! which `agora status` reads. This module is the storage and the protocol, not the swap;
//! [`status`] turns what it reads into the text `agora status` and `agora deploy` print.
//!
//! A fleet named `F` (letters, digits, `-`, `_`) lives in three buckets, so several fleets (and
//! test runs) can share one NATS:
//!
//! - [`desired_bucket`] `agora-fleet-F`, a key-value bucket: key = component name, value = JSON
//!   `{"component","digest","size","deployed_at"}`; the KV revision of an entry is its
//!   [`Desired::revision`]. It keeps [`DESIRED_HISTORY`] values per component, so a previous
//!   version can be found again.
//! - [`wasm_bucket`] `agora-wasm-F`, an object store: the bytes of every deployed version,
//!   content-addressed as `sha256-<hex>` ([`object_name`]); identical bytes are stored once.
//! - [`replicas_bucket`] `agora-replicas-F`, a key-value bucket with a `max_age` of
//!   [`REPORT_TTL`]: key = replica id, value = the JSON of a [`ReplicaReport`]. A replica must
//!   re-report at least every [`REPORT_INTERVAL`], or it disappears from [`Fleet::replicas`].
//!
//! The three names have distinct prefixes, so no fleet's bucket can be another fleet's.
//!
//! Every network call is bounded ([`CONNECT_TIMEOUT`], [`REQUEST_TIMEOUT`],
//! [`TRANSFER_TIMEOUT`]): an unreachable NATS gives an error, never a hang. Every error is one
//! line naming the URL, the bucket or the component.

use async_nats::jetstream::{self, kv, object_store};
use base64::Engine as _;
use futures::{Stream, StreamExt as _, TryStreamExt as _};
use serde::{Deserialize, Serialize};
use sha2::{Digest as _, Sha256};
use std::future::Future;
use std::sync::Arc;
use std::time::{Duration, SystemTime};
use tokio::io::AsyncReadExt as _;

use crate::manifest::one_line;

mod status;

pub use status::{Verdicts, format_status};

/// Upper bound on connecting to NATS.
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
/// Upper bound on one request to NATS (a bucket, a key, an object's metadata).
pub const REQUEST_TIMEOUT: Duration = Duration::from_secs(5);
/// Upper bound on uploading or downloading the bytes of one component.
pub const TRANSFER_TIMEOUT: Duration = Duration::from_secs(10);
/// Limit of one attempt at listing a bucket's keys, and how many attempts are made. A listing
/// takes milliseconds, except when an entry is replaced while it runs: the client then waits for
/// its consumer's idle heartbeat (seconds) before it notices it is done — quicker to ask again.
const LIST_TIMEOUT: Duration = Duration::from_secs(1);
const LIST_ATTEMPTS: u32 = 5;
/// The largest component a fleet stores: 64 MiB.
pub const MAX_COMPONENT_BYTES: u64 = 64 << 20;
/// How many desired versions of each component the desired bucket keeps.
pub const DESIRED_HISTORY: i64 = 10;
/// How long a replica report lives: a replica silent for this long is gone from
/// [`Fleet::replicas`].
pub const REPORT_TTL: Duration = Duration::from_secs(30);
/// How often a replica should report, well within [`REPORT_TTL`].
pub const REPORT_INTERVAL: Duration = Duration::from_secs(10);

/// Why a fleet operation failed. Every message is one line naming the URL, the bucket or the
/// component.
#[derive(Debug, thiserror::Error)]
pub enum FleetError {
    /// The fleet name is not usable in bucket names.
    #[error("invalid fleet name `{0}`: use 1 to 64 letters, digits, `-` and `_`")]
    InvalidFleet(String),
    /// The component name is not a manifest component name.
    #[error(
        "invalid component name `{0}`: use 1 to 64 characters of a-z, 0-9 and `-`, starting with a letter"
    )]
    InvalidComponent(String),
    /// The replica id is not usable as a key.
    #[error("invalid replica id `{0}`: use 1 to 128 letters, digits, `-` and `_`")]
    InvalidReplica(String),
    /// The component is larger than [`MAX_COMPONENT_BYTES`].
    #[error("component `{component}`: {size} bytes is over the fleet limit of {max} bytes")]
    TooLarge {
        /// The component.
        component: String,
        /// Its size.
        size: u64,
        /// [`MAX_COMPONENT_BYTES`].
        max: u64,
    },
    /// NATS could not be reached (or refused the connection).
    #[error("cannot connect to NATS at {url}: {reason}")]
    Connect {
        /// The server, without credentials.
        url: String,
        /// What went wrong.
        reason: String,
    },
    /// NATS answered a request with an error.
    #[error("NATS at {url}: {what}: {reason}")]
    Nats {
        /// The server, without credentials.
        url: String,
        /// The request, naming its bucket.
        what: String,
        /// What went wrong.
        reason: String,
    },
    /// NATS did not answer a request in time.
    #[error("NATS at {url}: {what}: no answer within {} ms", limit.as_millis())]
    TimedOut {
        /// The server, without credentials.
        url: String,
        /// The request, naming its bucket.
        what: String,
        /// The bound that passed.
        limit: Duration,
    },
    /// The object store has no bytes for a desired version.
    #[error(
        "component `{component}`: object {object} (digest {digest}) is missing from bucket {bucket}"
    )]
    MissingObject {
        /// The component.
        component: String,
        /// The object store.
        bucket: String,
        /// The object's name.
        object: String,
        /// The desired digest.
        digest: String,
    },
    /// The stored bytes are not those of the desired version.
    #[error(
        "component `{component}`: object in bucket {bucket} does not match digest {digest}: {reason}"
    )]
    Corrupt {
        /// The component.
        component: String,
        /// The object store.
        bucket: String,
        /// The desired digest.
        digest: String,
        /// How it differs.
        reason: String,
    },
    /// A bucket holds a value this version cannot read.
    #[error("bucket {bucket}, key `{key}`: cannot decode the value: {reason}")]
    Decode {
        /// The key-value bucket.
        bucket: String,
        /// The key.
        key: String,
        /// What went wrong.
        reason: String,
    },
}

/// The version of a component the fleet should run.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Desired {
    /// The component's manifest name.
    pub component: String,
    /// SHA-256 of the component bytes, lowercase hex.
    pub digest: String,
    /// Size of the component bytes.
    pub size: u64,
    /// When it was deployed, RFC 3339.
    pub deployed_at: String,
    /// The revision of the desired bucket that set it: larger is later, across components.
    pub revision: u64,
}

/// The value of a desired-bucket key (the revision is the entry's).
#[derive(Serialize, Deserialize)]
struct DesiredValue {
    component: String,
    digest: String,
    size: u64,
    deployed_at: String,
}

/// What one host process runs, as it last reported.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ReplicaReport {
    /// Unique id of the host process (see [`new_replica_id`]); the key of its report.
    pub replica: String,
    /// The machine it runs on (see [`hostname`]).
    pub hostname: String,
    /// When the process started, RFC 3339.
    pub started_at: String,
    /// When this report was made, RFC 3339.
    pub reported_at: String,
    /// Every component it runs.
    pub components: Vec<ComponentReport>,
}

/// One component of a [`ReplicaReport`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ComponentReport {
    /// The component's manifest name.
    pub name: String,
    /// SHA-256 of the bytes it runs, lowercase hex.
    pub digest: String,
    /// When that version was loaded, RFC 3339.
    pub loaded_at: String,
    /// The desired digest the replica last saw for it, if the fleet names one.
    #[serde(default)]
    pub desired: Option<String>,
    /// Why the replica refused that desired version, if it did.
    #[serde(default)]
    pub error: Option<String>,
}

struct Inner {
    /// The fleet name.
    name: String,
    /// The server, without credentials.
    url: String,
    desired: kv::Store,
    replicas: kv::Store,
    wasm: object_store::ObjectStore,
}

/// A connection to one fleet's buckets. Clones share the connection.
#[derive(Clone)]
pub struct Fleet {
    inner: Arc<Inner>,
}

impl std::fmt::Debug for Fleet {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Fleet")
            .field("name", &self.inner.name)
            .field("url", &self.inner.url)
            .finish_non_exhaustive()
    }
}

/// The key-value bucket of `fleet`'s desired versions.
pub fn desired_bucket(fleet: &str) -> String {
    format!("agora-fleet-{fleet}")
}

/// The key-value bucket of `fleet`'s replica reports.
pub fn replicas_bucket(fleet: &str) -> String {
    format!("agora-replicas-{fleet}")
}

/// The object store of `fleet`'s component bytes.
pub fn wasm_bucket(fleet: &str) -> String {
    format!("agora-wasm-{fleet}")
}

/// The object holding the bytes whose SHA-256 is `digest` (lowercase hex).
pub fn object_name(digest: &str) -> String {
    format!("sha256-{digest}")
}

/// `at` as RFC 3339 in UTC, as reports and desired versions spell times.
pub fn timestamp(at: SystemTime) -> String {
    time::OffsetDateTime::from(at)
        .format(&time::format_description::well_known::Rfc3339)
        .unwrap_or_default()
}

/// This machine's name (from the kernel, then `HOSTNAME`), or `unknown`.
pub fn hostname() -> String {
    ["/proc/sys/kernel/hostname", "/etc/hostname"]
        .iter()
        .filter_map(|path| std::fs::read_to_string(path).ok())
        .map(|name| name.trim().to_string())
        .chain(std::env::var("HOSTNAME").ok())
        .find(|name| !name.is_empty())
        .unwrap_or_else(|| "unknown".to_string())
}

/// A fresh id for this host process: the host name (letters, digits and `-` of it), the process
/// id and 8 random hex digits, e.g. `web-1-4242-9f3c0a1b`. Valid as a replica id.
pub fn new_replica_id() -> String {
    let host: String = hostname()
        .chars()
        .map(|c| if c.is_ascii_alphanumeric() { c } else { '-' })
        .take(64)
        .collect();
    let random = uuid::Uuid::new_v4().simple().to_string();
    format!("{host}-{}-{}", std::process::id(), &random[..8])
}

fn validate_fleet(name: &str) -> Result<(), FleetError> {
    let valid = !name.is_empty()
        && name.len() <= 64
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_');
    if valid {
        Ok(())
    } else {
        Err(FleetError::InvalidFleet(name.to_string()))
    }
}

/// The rule of manifest component names.
fn validate_component(name: &str) -> Result<(), FleetError> {
    crate::manifest::validate_name(name).map_err(|_| FleetError::InvalidComponent(name.to_string()))
}

fn validate_replica(id: &str) -> Result<(), FleetError> {
    let valid = !id.is_empty()
        && id.len() <= 128
        && id
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_');
    if valid {
        Ok(())
    } else {
        Err(FleetError::InvalidReplica(id.to_string()))
    }
}

fn is_sha256_hex(digest: &str) -> bool {
    digest.len() == 64
        && digest
            .chars()
            .all(|c| c.is_ascii_digit() || ('a'..='f').contains(&c))
}

/// Runs `future` within `limit`, or fails naming `what`.
async fn within<T>(
    url: &str,
    limit: Duration,
    what: &str,
    future: impl Future<Output = T>,
) -> Result<T, FleetError> {
    tokio::time::timeout(limit, future)
        .await
        .map_err(|_| FleetError::TimedOut {
            url: url.to_string(),
            what: what.to_string(),
            limit,
        })
}

fn nats_error(url: &str, what: &str, err: impl std::fmt::Display) -> FleetError {
    FleetError::Nats {
        url: url.to_string(),
        what: what.to_string(),
        reason: one_line(&err.to_string()),
    }
}

/// A key-value bucket: what the client's `create_key_value` would create. That call first asks
/// for the account's JetStream info, which async-nats 0.51 cannot decode from a NATS 2.9
/// server, so the bucket's stream is created here directly.
struct Bucket {
    name: String,
    description: String,
    history: i64,
    max_age: Duration,
}

/// Gets the key-value `bucket`, creating it when absent.
async fn key_value(
    url: &str,
    jetstream: &jetstream::Context,
    bucket: Bucket,
) -> Result<kv::Store, FleetError> {
    let what = format!("bucket {}", bucket.name);
    within(url, REQUEST_TIMEOUT, &what, async {
        if let Ok(store) = jetstream.get_key_value(&bucket.name).await {
            return Ok(store);
        }
        let config = jetstream::stream::Config {
            name: format!("KV_{}", bucket.name),
            description: Some(bucket.description),
            subjects: vec![format!("$KV.{}.>", bucket.name)],
            max_messages_per_subject: bucket.history,
            max_age: bucket.max_age,
            storage: jetstream::stream::StorageType::File,
            discard: jetstream::stream::DiscardPolicy::New,
            allow_rollup: true,
            deny_delete: true,
            allow_direct: true,
            num_replicas: 1,
            ..Default::default()
        };
        // Creating a bucket that exists with the same configuration is fine; when another
        // replica created it with another one meanwhile, it is used as it is.
        let created = jetstream.create_stream(config).await;
        jetstream
            .get_key_value(&bucket.name)
            .await
            .map_err(|err| match created {
                Err(create) => nats_error(
                    url,
                    &format!(
                        "cannot create bucket {} (is JetStream enabled?)",
                        bucket.name
                    ),
                    create,
                ),
                Ok(_) => nats_error(url, &what, err),
            })
    })
    .await?
}

/// Gets the object store of `config`, creating it when absent.
async fn objects(
    url: &str,
    jetstream: &jetstream::Context,
    config: object_store::Config,
) -> Result<object_store::ObjectStore, FleetError> {
    let what = format!("bucket {}", config.bucket);
    let bucket = config.bucket.clone();
    within(url, REQUEST_TIMEOUT, &what, async {
        if let Ok(store) = jetstream.get_object_store(&bucket).await {
            return Ok(store);
        }
        match jetstream.create_object_store(config).await {
            Ok(store) => Ok(store),
            Err(err) => jetstream.get_object_store(&bucket).await.map_err(|_| {
                nats_error(
                    url,
                    &format!("cannot create bucket {bucket} (is JetStream enabled?)"),
                    err,
                )
            }),
        }
    })
    .await?
}

impl Fleet {
    /// Connects to the NATS (with JetStream) at `nats_url` and gets the buckets of the fleet
    /// named `fleet`, creating them when absent. `fleet` is 1 to 64 letters, digits, `-` and
    /// `_`. Fails within a few seconds, naming the URL, when NATS is unreachable.
    pub async fn connect(nats_url: &str, fleet: &str) -> Result<Fleet, FleetError> {
        validate_fleet(fleet)?;
        let url = agora_messaging::redact(nats_url);
        let (options, nats_url) =
            agora_messaging::connect_options(nats_url)
                .await
                .map_err(|reason| FleetError::Connect {
                    url: url.clone(),
                    reason,
                })?;
        let logged_url = url.clone();
        let options = options
            .name("agora-fleet")
            .connection_timeout(CONNECT_TIMEOUT)
            .event_callback(move |event| {
                let url = logged_url.clone();
                async move {
                    match event {
                        async_nats::Event::Connected => {
                            tracing::debug!(%url, "fleet NATS connected")
                        }
                        async_nats::Event::Disconnected => {
                            tracing::warn!(%url, "fleet NATS disconnected; reconnecting")
                        }
                        other => tracing::warn!(%url, event = %other, "fleet NATS event"),
                    }
                }
            });
        let client = tokio::time::timeout(
            CONNECT_TIMEOUT + Duration::from_secs(1),
            options.connect(nats_url.as_str()),
        )
        .await
        .map_err(|_| FleetError::Connect {
            url: url.clone(),
            reason: format!("no answer within {} ms", CONNECT_TIMEOUT.as_millis()),
        })?
        .map_err(|err| FleetError::Connect {
            url: url.clone(),
            reason: one_line(&err.to_string()),
        })?;
        let jetstream = jetstream::ContextBuilder::new()
            .timeout(REQUEST_TIMEOUT)
            .build(client);
        let desired = key_value(
            &url,
            &jetstream,
            Bucket {
                name: desired_bucket(fleet),
                description: format!("agora fleet {fleet}: desired component versions"),
                history: DESIRED_HISTORY,
                max_age: Duration::ZERO,
            },
        )
        .await?;
        let replicas = key_value(
            &url,
            &jetstream,
            Bucket {
                name: replicas_bucket(fleet),
                description: format!("agora fleet {fleet}: replica reports"),
                history: 1,
                max_age: REPORT_TTL,
            },
        )
        .await?;
        let wasm = objects(
            &url,
            &jetstream,
            object_store::Config {
                bucket: wasm_bucket(fleet),
                description: Some(format!("agora fleet {fleet}: component bytes")),
                ..Default::default()
            },
        )
        .await?;
        Ok(Fleet {
            inner: Arc::new(Inner {
                name: fleet.to_string(),
                url,
                desired,
                replicas,
                wasm,
            }),
        })
    }

    /// The fleet's name.
    pub fn name(&self) -> &str {
        &self.inner.name
    }

    /// The NATS URL, without credentials.
    pub fn url(&self) -> &str {
        &self.inner.url
    }

    /// Stores `bytes` as the object [`object_name`] of their SHA-256 — uploaded only when the
    /// object store does not already hold exactly those bytes under it — then makes them the
    /// desired version of `component`. Deploying the same bytes again reuses the object and
    /// still sets a new revision. Returns the new desired version.
    pub async fn deploy(&self, component: &str, bytes: &[u8]) -> Result<Desired, FleetError> {
        validate_component(component)?;
        let size = bytes.len() as u64;
        if size > MAX_COMPONENT_BYTES {
            return Err(FleetError::TooLarge {
                component: component.to_string(),
                size,
                max: MAX_COMPONENT_BYTES,
            });
        }
        let sha = Sha256::digest(bytes);
        let digest = hex::encode(sha);
        let object = object_name(&digest);
        // What the object store itself records for an object with these bytes.
        let stored_digest = format!(
            "SHA-256={}",
            base64::engine::general_purpose::URL_SAFE.encode(sha)
        );
        let url = self.url();
        let bucket = wasm_bucket(self.name());

        let what = format!("bucket {bucket}: info {object}");
        let present =
            match within(url, REQUEST_TIMEOUT, &what, self.inner.wasm.info(&object)).await? {
                Ok(info) => {
                    !info.deleted
                        && info.size as u64 == size
                        && info.digest.as_deref() == Some(stored_digest.as_str())
                }
                Err(err) if err.kind() == object_store::InfoErrorKind::NotFound => false,
                Err(err) => return Err(nats_error(url, &what, err)),
            };
        if !present {
            let what = format!("bucket {bucket}: upload {object} for component `{component}`");
            let mut reader = bytes;
            within(
                url,
                TRANSFER_TIMEOUT,
                &what,
                self.inner.wasm.put(object.as_str(), &mut reader),
            )
            .await?
            .map_err(|err| nats_error(url, &what, err))?;
        }

        let value = DesiredValue {
            component: component.to_string(),
            digest,
            size,
            deployed_at: timestamp(SystemTime::now()),
        };
        let json = serde_json::to_vec(&value).map_err(|err| {
            nats_error(url, &format!("bucket {}", desired_bucket(self.name())), err)
        })?;
        let what = format!(
            "bucket {}: set the desired version of `{component}`",
            desired_bucket(self.name())
        );
        let revision = within(
            url,
            REQUEST_TIMEOUT,
            &what,
            self.inner.desired.put(component, json.into()),
        )
        .await?
        .map_err(|err| nats_error(url, &what, err))?;
        Ok(Desired {
            component: value.component,
            digest: value.digest,
            size,
            deployed_at: value.deployed_at,
            revision,
        })
    }

    /// Every component's desired version now, sorted by component name.
    pub async fn desired(&self) -> Result<Vec<Desired>, FleetError> {
        let bucket = desired_bucket(self.name());
        let entries = self.latest(&self.inner.desired, &bucket).await?;
        let mut desired = entries
            .into_iter()
            .map(|entry| decode_desired(&bucket, &entry))
            .collect::<Result<Vec<_>, _>>()?;
        desired.sort_by(|a, b| a.component.cmp(&b.component));
        Ok(desired)
    }

    /// Desired-version changes from now on (not the current values): each new [`Desired`] as it
    /// is deployed. Removing a component's desired version (a delete or purge of its key) is not
    /// an instruction to replicas and is skipped. A value that cannot be decoded is yielded as
    /// an error and the stream goes on.
    ///
    /// The stream survives NATS restarts: while NATS is unreachable it waits, then the client
    /// recreates its consumer and the stream resumes after the last change it yielded (never
    /// yielding a change again, nor one from before the call). When the server loses the
    /// consumer, the stream yields a "missed idle heartbeat" error, recreates it and goes on.
    /// It ends only after yielding an error the client does not recover from (the connection
    /// is gone for good); watch again then. A replica should call `watch` before
    /// [`Fleet::desired`], so no change falls between the two.
    pub async fn watch(
        &self,
    ) -> Result<impl Stream<Item = Result<Desired, FleetError>> + Send + 'static, FleetError> {
        let bucket = desired_bucket(self.name());
        let url = self.url().to_string();
        let what = format!("bucket {bucket}: watch");
        // Changes up to here are not news. The client recreates its consumer after a
        // reconnect, replaying the whole history when nothing was delivered yet: what is not
        // past the last revision seen is left out.
        let floor = within(
            &url,
            REQUEST_TIMEOUT,
            &what,
            self.inner.desired.stream.get_info(),
        )
        .await?
        .map_err(|err| nats_error(&url, &what, err))?
        .state
        .last_sequence;
        let watch = within(&url, REQUEST_TIMEOUT, &what, self.inner.desired.watch_all())
            .await?
            .map_err(|err| nats_error(&url, &what, err))?;
        let state = Some((watch, floor, url, bucket));
        Ok(futures::stream::unfold(state, |state| async move {
            let (mut watch, mut seen, url, bucket) = state?;
            loop {
                match watch.next().await? {
                    Ok(entry) if entry.revision <= seen => continue,
                    Ok(entry) if entry.operation != kv::Operation::Put => seen = entry.revision,
                    Ok(entry) => {
                        let item = decode_desired(&bucket, &entry);
                        return Some((item, Some((watch, entry.revision, url, bucket))));
                    }
                    Err(err) => {
                        // The client recovers from a lost consumer by itself; any other
                        // failure ends the watch.
                        let recovers = std::error::Error::source(&err)
                            .and_then(|source| {
                                source.downcast_ref::<jetstream::consumer::push::OrderedError>()
                            })
                            .is_some_and(|ordered| {
                                ordered.kind()
                                    == jetstream::consumer::push::OrderedErrorKind::MissingHeartbeat
                            });
                        let what = format!("bucket {bucket}: watch");
                        let error = nats_error(&url, &what, err);
                        let next = recovers.then_some((watch, seen, url, bucket));
                        return Some((Err(error), next));
                    }
                }
            }
        }))
    }

    /// Downloads the bytes of `desired`, checking their size and SHA-256: bytes that do not match
    /// are an error, never returned.
    pub async fn fetch(&self, desired: &Desired) -> Result<Vec<u8>, FleetError> {
        let bucket = wasm_bucket(self.name());
        let corrupt = |reason: String| FleetError::Corrupt {
            component: desired.component.clone(),
            bucket: bucket.clone(),
            digest: desired.digest.clone(),
            reason,
        };
        if !is_sha256_hex(&desired.digest) {
            return Err(corrupt("the digest is not 64 lowercase hex digits".into()));
        }
        if desired.size > MAX_COMPONENT_BYTES {
            return Err(FleetError::TooLarge {
                component: desired.component.clone(),
                size: desired.size,
                max: MAX_COMPONENT_BYTES,
            });
        }
        let url = self.url();
        let object = object_name(&desired.digest);
        let what = format!("bucket {bucket}: get {object}");
        let reader = match within(url, REQUEST_TIMEOUT, &what, self.inner.wasm.get(&object)).await?
        {
            Ok(reader) => reader,
            Err(err) if err.kind() == object_store::GetErrorKind::NotFound => {
                return Err(FleetError::MissingObject {
                    component: desired.component.clone(),
                    bucket,
                    object,
                    digest: desired.digest.clone(),
                });
            }
            Err(err) => return Err(nats_error(url, &what, err)),
        };
        let stored = reader.info.size as u64;
        if stored != desired.size {
            return Err(corrupt(format!(
                "it holds {stored} bytes, {} expected",
                desired.size
            )));
        }
        let mut bytes = Vec::with_capacity(stored as usize);
        // One byte more than expected, so that a longer object shows.
        let mut limited = reader.take(desired.size + 1);
        let what = format!("bucket {bucket}: download {object}");
        match within(
            url,
            TRANSFER_TIMEOUT,
            &what,
            limited.read_to_end(&mut bytes),
        )
        .await?
        {
            Ok(_) => {}
            Err(err) if err.kind() == std::io::ErrorKind::InvalidData => {
                return Err(corrupt(one_line(&err.to_string())));
            }
            Err(err) => return Err(nats_error(url, &what, err)),
        }
        if bytes.len() as u64 != desired.size {
            return Err(corrupt(format!(
                "it holds {} bytes, {} expected",
                bytes.len(),
                desired.size
            )));
        }
        let actual = hex::encode(Sha256::digest(&bytes));
        if actual != desired.digest {
            return Err(corrupt(format!("its bytes have sha256 {actual}")));
        }
        Ok(bytes)
    }

    /// Publishes `report` under its replica id, replacing that replica's previous report. The
    /// report expires after [`REPORT_TTL`]: replicas re-report every [`REPORT_INTERVAL`].
    pub async fn report(&self, report: &ReplicaReport) -> Result<(), FleetError> {
        validate_replica(&report.replica)?;
        let bucket = replicas_bucket(self.name());
        let url = self.url();
        let what = format!("bucket {bucket}: report replica {}", report.replica);
        let json = serde_json::to_vec(report).map_err(|err| nats_error(url, &what, err))?;
        within(
            url,
            REQUEST_TIMEOUT,
            &what,
            self.inner.replicas.put(&report.replica, json.into()),
        )
        .await?
        .map_err(|err| nats_error(url, &what, err))?;
        Ok(())
    }

    /// Removes the report of `replica` (on a clean shutdown). Removing an absent report is fine.
    pub async fn withdraw(&self, replica: &str) -> Result<(), FleetError> {
        validate_replica(replica)?;
        let bucket = replicas_bucket(self.name());
        let url = self.url();
        let what = format!("bucket {bucket}: withdraw replica {replica}");
        within(
            url,
            REQUEST_TIMEOUT,
            &what,
            self.inner.replicas.purge(replica),
        )
        .await?
        .map_err(|err| nats_error(url, &what, err))?;
        Ok(())
    }

    /// The latest report of every live replica, sorted by replica id.
    pub async fn replicas(&self) -> Result<Vec<ReplicaReport>, FleetError> {
        let bucket = replicas_bucket(self.name());
        let entries = self.latest(&self.inner.replicas, &bucket).await?;
        let mut reports = entries
            .into_iter()
            .map(|entry| {
                serde_json::from_slice::<ReplicaReport>(&entry.value).map_err(|err| {
                    FleetError::Decode {
                        bucket: bucket.clone(),
                        key: entry.key.clone(),
                        reason: one_line(&err.to_string()),
                    }
                })
            })
            .collect::<Result<Vec<_>, _>>()?;
        reports.sort_by(|a, b| a.replica.cmp(&b.replica));
        Ok(reports)
    }

    /// The current value of every key of `store` (deleted keys left out).
    async fn latest(&self, store: &kv::Store, bucket: &str) -> Result<Vec<kv::Entry>, FleetError> {
        let url = self.url();
        let what = format!("bucket {bucket}: list keys");
        // Listing is an ordered consumer that ends when nothing is pending; a put racing it
        // (a replica reporting) can leave it waiting. Such a listing is abandoned and retried.
        let mut attempt = 1;
        let keys: Vec<String> = loop {
            let listed = within(url, LIST_TIMEOUT, &what, async {
                let keys = store
                    .keys()
                    .await
                    .map_err(|err| nats_error(url, &what, err))?;
                keys.try_collect()
                    .await
                    .map_err(|err| nats_error(url, &what, err))
            })
            .await;
            match listed {
                Ok(keys) => break keys?,
                Err(timed_out) if attempt >= LIST_ATTEMPTS => return Err(timed_out),
                Err(_) => attempt += 1,
            }
        };
        let mut entries = Vec::with_capacity(keys.len());
        for key in keys {
            let what = format!("bucket {bucket}: get `{key}`");
            let entry = within(url, REQUEST_TIMEOUT, &what, store.entry(key.as_str()))
                .await?
                .map_err(|err| nats_error(url, &what, err))?;
            // Gone since it was listed.
            if let Some(entry) = entry.filter(|entry| entry.operation == kv::Operation::Put) {
                entries.push(entry);
            }
        }
        Ok(entries)
    }
}

fn decode_desired(bucket: &str, entry: &kv::Entry) -> Result<Desired, FleetError> {
    let decode_error = |reason: String| FleetError::Decode {
        bucket: bucket.to_string(),
        key: entry.key.clone(),
        reason,
    };
    let value: DesiredValue = serde_json::from_slice(&entry.value)
        .map_err(|err| decode_error(one_line(&err.to_string())))?;
    if value.component != entry.key {
        return Err(decode_error(format!(
            "it names component `{}`",
            value.component
        )));
    }
    Ok(Desired {
        component: value.component,
        digest: value.digest,
        size: value.size,
        deployed_at: value.deployed_at,
        revision: entry.revision,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names() {
        assert!(validate_fleet("prod_eu-1").is_ok());
        assert!(validate_fleet("").is_err());
        assert!(validate_fleet("a.b").is_err());
        assert!(validate_fleet("a b").is_err());
        assert!(validate_component("api-2").is_ok());
        assert!(validate_component("Api").is_err());
        assert!(validate_component("2api").is_err());
        assert!(validate_replica(&new_replica_id()).is_ok());
        assert!(validate_replica("a.b").is_err());
        assert_eq!(
            agora_messaging::redact("nats://user:secret@127.0.0.1:4222"),
            "nats://***@127.0.0.1:4222"
        );
    }
}
