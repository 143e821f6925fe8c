//! `wasi:keyvalue@0.2.0-draft2` — the standard key-value interfaces Spin components import
//! (`store`, `atomics`, `batch`) — on agora's cache backends (Redis, or the in-memory cache).
//!
//! The grant names the buckets a component may open: `grants = { keyvalue = true }` is the
//! bucket `default` (as in Spin), `keyvalue = ["default", "sessions"]` those. Each bucket's keys
//! live under `agora-kv:<component>:<bucket>:`, so no component reaches another's buckets, and
//! all of a component's buckets share its cache limits: at most `limits.cache_keys` live keys
//! and `limits.cache_value_kib` per value. Values never expire (the cache's TTL stays an agora
//! extension of `agora:platform/cache`). `open` of a bucket the grant does not name is
//! `no-such-store`; every call of a component without the grant is `access-denied`.
//!
//! Durability is the backend's: Redis keeps what it is configured to keep, the in-memory cache
//! keeps values for the life of the process (its per-component quota keeps one component from
//! evicting another's, but the cache as a whole evicts its least recently used entries when
//! full). `list-keys` pages through a bucket's live keys in byte order, 100 at a time; the
//! cursor is the last key of the previous page.
//!
//! The capability is one unit ([`KeyValue`] implements [`agora_capability::Capability`]): the
//! host lists it once and touches nothing else for it.

#![deny(missing_docs)]

use agora_cache::{BackendError, CacheBackend, Quota};
use agora_capability::{Capability, ComponentInfo, Prepared, StoreData, StoreInfo};
use bindings::wasi::keyvalue::atomics::{self, CasError};
use bindings::wasi::keyvalue::batch;
use bindings::wasi::keyvalue::store::{self, Error, KeyResponse};
use std::any::Any;
use std::sync::Arc;
use wasmtime::component::{HasData, Linker, Resource, ResourceTable};

/// Generated bindings of `wasi:keyvalue@0.2.0-draft2`.
#[allow(missing_docs)]
pub mod bindings {
    wasmtime::component::bindgen!({
        path: "../../wit",
        world: "wasi:keyvalue/imports@0.2.0-draft2",
        imports: { default: async | trappable | tracing },
        with: {
            "wasi:keyvalue/store.bucket": crate::Bucket,
            "wasi:keyvalue/atomics.cas": crate::Cas,
        },
    });
}

/// The grant key and the bucket `keyvalue = true` names.
pub const DEFAULT_BUCKET: &str = "default";
/// Keys one `list-keys` call returns at most.
pub const PAGE: usize = 100;
/// Longest key, in bytes (as the cache's).
pub const MAX_KEY_BYTES: usize = agora_cache::MAX_KEY_BYTES;
/// Longest bucket name, in bytes.
pub const MAX_BUCKET_NAME: usize = 64;

const INTERFACES: &[&str] = &[
    "wasi:keyvalue/store",
    "wasi:keyvalue/atomics",
    "wasi:keyvalue/batch",
];

/// The capability: the cache backend it stores in.
pub struct KeyValue {
    backend: Arc<dyn CacheBackend>,
}

impl KeyValue {
    /// wasi:keyvalue on `backend` (the host's cache backend).
    pub fn new(backend: Arc<dyn CacheBackend>) -> KeyValue {
        KeyValue { backend }
    }
}

/// The buckets a grant names; Err says what a grant may be.
fn buckets(value: &toml::Value) -> Result<Vec<String>, String> {
    let invalid = || {
        "grants.keyvalue must be true, false or a list of bucket names (1 to 64 of a-z, 0-9, \
         `-`, `_`), e.g. keyvalue = [\"default\"]"
            .to_owned()
    };
    match value {
        toml::Value::Boolean(true) => Ok(vec![DEFAULT_BUCKET.to_owned()]),
        toml::Value::Boolean(false) => Ok(Vec::new()),
        toml::Value::Array(items) => {
            let mut names = Vec::new();
            for item in items {
                let name = item.as_str().ok_or_else(invalid)?;
                let valid = !name.is_empty()
                    && name.len() <= MAX_BUCKET_NAME
                    && name.bytes().all(|b| {
                        b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-' || b == b'_'
                    });
                if !valid {
                    return Err(format!("grants.keyvalue: bucket `{name}`: {}", invalid()));
                }
                if !names.iter().any(|known| known == name) {
                    names.push(name.to_owned());
                }
            }
            Ok(names)
        }
        _ => Err(invalid()),
    }
}

#[async_trait::async_trait]
impl<S: StoreData> Capability<S> for KeyValue {
    fn name(&self) -> &'static str {
        "keyvalue"
    }

    fn interfaces(&self) -> &'static [&'static str] {
        INTERFACES
    }

    fn grant_hint(&self) -> &'static str {
        "keyvalue = true"
    }

    fn check_grant(&self, value: &toml::Value) -> Result<bool, String> {
        buckets(value).map(|names| !names.is_empty())
    }

    fn link(&self, linker: &mut Linker<S>) -> wasmtime::Result<()> {
        fn view<S: StoreData>(state: &mut S) -> KeyValueView<'_> {
            let (slots, table) = state.slots_and_table();
            KeyValueView {
                ctx: slots.get_mut::<KeyValueCtx>(),
                table,
            }
        }
        bindings::wasi::keyvalue::store::add_to_linker::<S, KeyValueData>(linker, view::<S>)?;
        bindings::wasi::keyvalue::atomics::add_to_linker::<S, KeyValueData>(linker, view::<S>)?;
        bindings::wasi::keyvalue::batch::add_to_linker::<S, KeyValueData>(linker, view::<S>)
    }

    async fn prepare(&self, component: &ComponentInfo<'_>) -> Result<Arc<dyn Prepared>, String> {
        let buckets = buckets(component.grant)?;
        Ok(Arc::new(KeyValueCtx {
            grant: Some(Arc::new(Grant {
                backend: self.backend.clone(),
                namespace: format!("agora-kv:{}:", component.name),
                buckets,
                max_keys: component.cache_keys,
                max_value_bytes: usize::try_from(component.cache_value_bytes).unwrap_or(usize::MAX),
            })),
        }))
    }

    fn describe(&self) -> serde_json::Value {
        serde_json::json!({ "backend": self.backend.kind(), "version": "0.2.0-draft2" })
    }
}

/// One component's grant: its backend, namespace, buckets and limits.
struct Grant {
    backend: Arc<dyn CacheBackend>,
    /// `agora-kv:<component>:`: the prefix of all its keys, and its quota's namespace.
    namespace: String,
    buckets: Vec<String>,
    max_keys: u64,
    max_value_bytes: usize,
}

impl Grant {
    fn quota(&self) -> Quota<'_> {
        Quota {
            namespace: &self.namespace,
            max_keys: self.max_keys,
        }
    }
}

/// The keyvalue state of one store (or of one component, from which each store's is cloned).
/// The default denies every call.
#[derive(Clone, Default)]
pub struct KeyValueCtx {
    grant: Option<Arc<Grant>>,
}

impl Prepared for KeyValueCtx {
    fn instance(&self, _store: &StoreInfo) -> Box<dyn Any + Send> {
        Box::new(self.clone())
    }

    fn describe(&self) -> serde_json::Value {
        match &self.grant {
            Some(grant) => serde_json::json!({ "buckets": grant.buckets }),
            None => serde_json::Value::Null,
        }
    }
}

/// An open bucket: its grant and the prefix of its keys.
pub struct Bucket {
    grant: Arc<Grant>,
    /// `agora-kv:<component>:<bucket>:`.
    prefix: String,
}

impl Bucket {
    /// The backend key of the guest's `key`, or the error for a key that is too long.
    fn key(&self, key: &str) -> Result<String, Error> {
        if key.len() > MAX_KEY_BYTES {
            return Err(Error::Other(format!(
                "the key is {} bytes, over the {MAX_KEY_BYTES}-byte limit",
                key.len()
            )));
        }
        Ok(format!("{}{key}", self.prefix))
    }

    fn check_value(&self, value: &[u8]) -> Result<(), Error> {
        let max = self.grant.max_value_bytes;
        if value.len() > max {
            return Err(Error::Other(format!(
                "the value is {} bytes, over the {max}-byte limit (limits.cache_value_kib)",
                value.len()
            )));
        }
        Ok(())
    }
}

/// A compare-and-swap handle: a key and the value it held when the handle was made.
pub struct Cas {
    grant: Arc<Grant>,
    key: String,
    current: Option<Vec<u8>>,
}

fn to_guest(err: BackendError) -> Error {
    match err {
        BackendError::Unavailable(message) => {
            tracing::warn!(%message, "keyvalue unavailable");
            Error::Other(format!("unavailable: {message}"))
        }
        BackendError::NotANumber => {
            Error::Other("the value is not a decimal 64-bit integer, or would overflow".into())
        }
        BackendError::QuotaExceeded(max_keys) => Error::Other(format!(
            "quota exceeded: the component already holds {max_keys} keys, its limit \
             (limits.cache_keys; delete some)"
        )),
    }
}

/// The keyvalue view of a store's data: its state and its resource table (buckets, CAS
/// handles).
pub struct KeyValueView<'a> {
    ctx: &'a mut KeyValueCtx,
    table: &'a mut ResourceTable,
}

struct KeyValueData;

impl HasData for KeyValueData {
    type Data<'a> = KeyValueView<'a>;
}

impl KeyValueView<'_> {
    fn bucket(&self, bucket: &Resource<Bucket>) -> wasmtime::Result<&Bucket> {
        Ok(self.table.get(bucket)?)
    }
}

impl store::Host for KeyValueView<'_> {
    async fn open(
        &mut self,
        identifier: String,
    ) -> wasmtime::Result<Result<Resource<Bucket>, Error>> {
        let Some(grant) = &self.ctx.grant else {
            return Ok(Err(Error::AccessDenied));
        };
        if !grant.buckets.contains(&identifier) {
            return Ok(Err(Error::NoSuchStore));
        }
        let bucket = Bucket {
            prefix: format!("{}{identifier}:", grant.namespace),
            grant: grant.clone(),
        };
        Ok(Ok(self.table.push(bucket)?))
    }
}

impl store::HostBucket for KeyValueView<'_> {
    async fn get(
        &mut self,
        bucket: Resource<Bucket>,
        key: String,
    ) -> wasmtime::Result<Result<Option<Vec<u8>>, Error>> {
        let bucket = self.bucket(&bucket)?;
        let key = match bucket.key(&key) {
            Ok(key) => key,
            Err(err) => return Ok(Err(err)),
        };
        Ok(bucket.grant.backend.get(&key).await.map_err(to_guest))
    }

    async fn set(
        &mut self,
        bucket: Resource<Bucket>,
        key: String,
        value: Vec<u8>,
    ) -> wasmtime::Result<Result<(), Error>> {
        let bucket = self.bucket(&bucket)?;
        Ok(set(bucket, &key, &value).await)
    }

    async fn delete(
        &mut self,
        bucket: Resource<Bucket>,
        key: String,
    ) -> wasmtime::Result<Result<(), Error>> {
        let bucket = self.bucket(&bucket)?;
        Ok(delete(bucket, &key).await)
    }

    async fn exists(
        &mut self,
        bucket: Resource<Bucket>,
        key: String,
    ) -> wasmtime::Result<Result<bool, Error>> {
        let bucket = self.bucket(&bucket)?;
        let key = match bucket.key(&key) {
            Ok(key) => key,
            Err(err) => return Ok(Err(err)),
        };
        Ok(bucket
            .grant
            .backend
            .get(&key)
            .await
            .map(|value| value.is_some())
            .map_err(to_guest))
    }

    async fn list_keys(
        &mut self,
        bucket: Resource<Bucket>,
        cursor: Option<String>,
    ) -> wasmtime::Result<Result<KeyResponse, Error>> {
        let bucket = self.bucket(&bucket)?;
        let after = cursor.map(|cursor| format!("{}{cursor}", bucket.prefix));
        let listed = bucket
            .grant
            .backend
            .keys(
                &bucket.grant.namespace,
                &bucket.prefix,
                after.as_deref(),
                PAGE,
            )
            .await;
        Ok(listed.map_err(to_guest).map(|(keys, more)| {
            let keys: Vec<String> = keys
                .into_iter()
                .filter_map(|key| key.strip_prefix(&bucket.prefix).map(str::to_owned))
                .collect();
            let cursor = if more { keys.last().cloned() } else { None };
            KeyResponse { keys, cursor }
        }))
    }

    async fn drop(&mut self, bucket: Resource<Bucket>) -> wasmtime::Result<()> {
        self.table.delete(bucket)?;
        Ok(())
    }
}

async fn set(bucket: &Bucket, key: &str, value: &[u8]) -> Result<(), Error> {
    let key = bucket.key(key)?;
    bucket.check_value(value)?;
    bucket
        .grant
        .backend
        .set(&key, value, None, bucket.grant.quota())
        .await
        .map_err(to_guest)
}

async fn delete(bucket: &Bucket, key: &str) -> Result<(), Error> {
    let key = bucket.key(key)?;
    bucket
        .grant
        .backend
        .delete(&key, &bucket.grant.namespace)
        .await
        .map(|_| ())
        .map_err(to_guest)
}

impl atomics::Host for KeyValueView<'_> {
    async fn increment(
        &mut self,
        bucket: Resource<Bucket>,
        key: String,
        delta: i64,
    ) -> wasmtime::Result<Result<i64, Error>> {
        let bucket = self.bucket(&bucket)?;
        let key = match bucket.key(&key) {
            Ok(key) => key,
            Err(err) => return Ok(Err(err)),
        };
        Ok(bucket
            .grant
            .backend
            .incr(&key, delta, bucket.grant.quota())
            .await
            .map_err(to_guest))
    }

    async fn swap(
        &mut self,
        cas: Resource<Cas>,
        value: Vec<u8>,
    ) -> wasmtime::Result<Result<(), CasError>> {
        let cas = self.table.delete(cas)?;
        if value.len() > cas.grant.max_value_bytes {
            let max = cas.grant.max_value_bytes;
            return Ok(Err(CasError::StoreError(Error::Other(format!(
                "the value is {} bytes, over the {max}-byte limit (limits.cache_value_kib)",
                value.len()
            )))));
        }
        let swapped = cas
            .grant
            .backend
            .swap(&cas.key, cas.current.as_deref(), &value, cas.grant.quota())
            .await;
        match swapped {
            Ok(true) => Ok(Ok(())),
            Ok(false) => {
                // Someone else wrote first: a new handle on the value now there, to retry with.
                let current = match cas.grant.backend.get(&cas.key).await {
                    Ok(current) => current,
                    Err(err) => return Ok(Err(CasError::StoreError(to_guest(err)))),
                };
                let handle = self.table.push(Cas {
                    grant: cas.grant,
                    key: cas.key,
                    current,
                })?;
                Ok(Err(CasError::CasFailed(handle)))
            }
            Err(err) => Ok(Err(CasError::StoreError(to_guest(err)))),
        }
    }
}

impl atomics::HostCas for KeyValueView<'_> {
    async fn new(
        &mut self,
        bucket: Resource<Bucket>,
        key: String,
    ) -> wasmtime::Result<Result<Resource<Cas>, Error>> {
        let bucket = self.bucket(&bucket)?;
        let key = match bucket.key(&key) {
            Ok(key) => key,
            Err(err) => return Ok(Err(err)),
        };
        let current = match bucket.grant.backend.get(&key).await {
            Ok(current) => current,
            Err(err) => return Ok(Err(to_guest(err))),
        };
        let cas = Cas {
            grant: bucket.grant.clone(),
            key,
            current,
        };
        Ok(Ok(self.table.push(cas)?))
    }

    async fn current(
        &mut self,
        cas: Resource<Cas>,
    ) -> wasmtime::Result<Result<Option<Vec<u8>>, Error>> {
        Ok(Ok(self.table.get(&cas)?.current.clone()))
    }

    async fn drop(&mut self, cas: Resource<Cas>) -> wasmtime::Result<()> {
        self.table.delete(cas)?;
        Ok(())
    }
}

impl batch::Host for KeyValueView<'_> {
    async fn get_many(
        &mut self,
        bucket: Resource<Bucket>,
        keys: Vec<String>,
    ) -> wasmtime::Result<Result<Vec<(String, Option<Vec<u8>>)>, Error>> {
        let bucket = self.bucket(&bucket)?;
        let mut found = Vec::with_capacity(keys.len());
        for key in keys {
            let full = match bucket.key(&key) {
                Ok(full) => full,
                Err(err) => return Ok(Err(err)),
            };
            match bucket.grant.backend.get(&full).await {
                Ok(value) => found.push((key, value)),
                Err(err) => return Ok(Err(to_guest(err))),
            }
        }
        Ok(Ok(found))
    }

    async fn set_many(
        &mut self,
        bucket: Resource<Bucket>,
        key_values: Vec<(String, Vec<u8>)>,
    ) -> wasmtime::Result<Result<(), Error>> {
        let bucket = self.bucket(&bucket)?;
        for (key, value) in &key_values {
            if let Err(err) = set(bucket, key, value).await {
                return Ok(Err(err));
            }
        }
        Ok(Ok(()))
    }

    async fn delete_many(
        &mut self,
        bucket: Resource<Bucket>,
        keys: Vec<String>,
    ) -> wasmtime::Result<Result<(), Error>> {
        let bucket = self.bucket(&bucket)?;
        for key in &keys {
            if let Err(err) = delete(bucket, key).await {
                return Ok(Err(err));
            }
        }
        Ok(Ok(()))
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    #[test]
    fn grants_name_buckets() {
        assert_eq!(buckets(&toml::Value::Boolean(true)).unwrap(), ["default"]);
        assert!(buckets(&toml::Value::Boolean(false)).unwrap().is_empty());
        let list = toml::Value::Array(vec!["a".into(), "b-2".into(), "a".into()]);
        assert_eq!(buckets(&list).unwrap(), ["a", "b-2"]);
        for bad in [
            toml::Value::String("default".into()),
            toml::Value::Array(vec!["".into()]),
            toml::Value::Array(vec!["Upper".into()]),
            toml::Value::Array(vec![toml::Value::Integer(1)]),
        ] {
            let err = buckets(&bad).unwrap_err();
            assert!(err.contains("grants.keyvalue"), "{err}");
        }
    }
}
