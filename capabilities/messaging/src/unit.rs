//! The publish capability as a unit of the host ([`Publish`]): the grant `publish = ["…"]`,
//! `agora:platform/messaging` linked to each store's [`MessagingCtx`], and the part of a
//! granted component ([`Publisher`]), which the sql capability's outbox and the host's relay
//! also read.

use crate::{INTERFACE, Message, MessagingBackend, MessagingCtx, MessagingError};
use agora_capability::{Capability, ComponentInfo, Prepared, StoreData, StoreInfo};
use std::any::Any;
use std::sync::Arc;
use wasmtime::component::{HasSelf, Linker};

/// The capability: the broker (NATS JetStream or the in-process bus) it publishes to.
pub struct Publish {
    backend: Arc<dyn MessagingBackend>,
}

impl Publish {
    /// Publishing to `backend` (the host's broker).
    pub fn new(backend: Arc<dyn MessagingBackend>) -> Publish {
        Publish { backend }
    }
}

/// The subject patterns a grant names; Err says what a grant may be.
fn patterns(value: &toml::Value) -> Result<Vec<String>, String> {
    let invalid = || {
        "grants.publish must be a list of subject patterns (`*` one token, a final `>` any \
         number), e.g. publish = [\"order.*\"]"
            .to_owned()
    };
    let items = value.as_array().ok_or_else(invalid)?;
    let mut patterns = Vec::with_capacity(items.len());
    for item in items {
        let pattern = item.as_str().ok_or_else(invalid)?;
        crate::validate_pattern(pattern)
            .map_err(|err| format!("grants.publish `{pattern}`: {err}"))?;
        patterns.push(pattern.to_owned());
    }
    Ok(patterns)
}

#[async_trait::async_trait]
impl<S: StoreData> Capability<S> for Publish {
    fn name(&self) -> &'static str {
        "publish"
    }

    fn interfaces(&self) -> &'static [&'static str] {
        &[INTERFACE]
    }

    fn grant_hint(&self) -> &'static str {
        "publish = [\"…\"]"
    }

    fn check_grant(&self, value: &toml::Value) -> Result<bool, String> {
        patterns(value).map(|patterns| !patterns.is_empty())
    }

    fn link(&self, linker: &mut Linker<S>) -> wasmtime::Result<()> {
        fn ctx<S: StoreData>(state: &mut S) -> &mut MessagingCtx {
            state.slots().get_mut::<MessagingCtx>()
        }
        crate::bindings::publisher::agora::platform::messaging::add_to_linker::<
            S,
            HasSelf<MessagingCtx>,
        >(linker, ctx::<S>)
    }

    async fn prepare(&self, component: &ComponentInfo<'_>) -> Result<Arc<dyn Prepared>, String> {
        let patterns: Arc<[String]> = patterns(component.grant)?.into();
        Ok(Arc::new(Publisher {
            backend: self.backend.clone(),
            ctx: MessagingCtx::granted(self.backend.clone(), component.name, patterns)
                .metered(component.meter.clone()),
        }))
    }

    fn describe(&self) -> serde_json::Value {
        serde_json::json!({ "backend": self.backend.kind() })
    }
}

/// The publish capability's part of a component that holds the grant: the broker and the
/// subject patterns it may publish to.
#[derive(Clone)]
pub struct Publisher {
    backend: Arc<dyn MessagingBackend>,
    ctx: MessagingCtx,
}

impl Publisher {
    /// Whether the component may publish to `subject`: a valid subject that one of its
    /// patterns matches.
    pub fn may_publish(&self, subject: &str) -> bool {
        crate::validate_subject(subject).is_ok() && self.ctx.may_publish(subject)
    }

    /// The broker.
    pub fn backend(&self) -> &Arc<dyn MessagingBackend> {
        &self.backend
    }

    /// Whether the broker would ever store `message` ([`MessagingBackend::check`]), as the
    /// reason it never would.
    pub fn check(&self, message: &Message) -> Result<(), String> {
        self.backend.check(message).map_err(|err| match err {
            MessagingError::Invalid(reason) | MessagingError::Unavailable(reason) => reason,
        })
    }
}

impl Prepared for Publisher {
    fn instance(&self, _store: &StoreInfo) -> Box<dyn Any + Send> {
        Box::new(self.ctx.clone())
    }

    fn describe(&self) -> serde_json::Value {
        serde_json::json!({ "patterns": self.ctx.patterns() })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn check(value: toml::Value) -> Result<bool, String> {
        let unit = Publish::new(Arc::new(crate::MemoryBus::new()));
        <Publish as Capability<Store>>::check_grant(&unit, &value)
    }

    struct Store(agora_capability::Slots, wasmtime::component::ResourceTable);

    impl StoreData for Store {
        fn slots(&mut self) -> &mut agora_capability::Slots {
            &mut self.0
        }

        fn slots_and_table(
            &mut self,
        ) -> (
            &mut agora_capability::Slots,
            &mut wasmtime::component::ResourceTable,
        ) {
            (&mut self.0, &mut self.1)
        }
    }

    #[test]
    fn a_grant_is_a_list_of_valid_patterns_and_an_empty_one_grants_nothing() {
        let list = |items: &[&str]| toml::Value::Array(items.iter().map(|&i| i.into()).collect());
        assert_eq!(check(list(&["order.*", "audit.>"])), Ok(true));
        assert_eq!(check(list(&[])), Ok(false));
        let err = check(list(&["a..b"])).expect_err("an invalid pattern");
        assert!(err.starts_with("grants.publish `a..b`: "), "{err}");
        let err = check(true.into()).expect_err("not a list");
        assert!(err.contains("must be a list of subject patterns"), "{err}");
        let err = check(toml::Value::Array(vec![3.into()])).expect_err("not strings");
        assert!(err.contains("must be a list of subject patterns"), "{err}");
    }
}
