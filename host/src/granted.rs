//! One component's share of the host's capabilities, as its grants allow ([`Granted`]): built
//! when the component loads, kept across hot swaps, and read by every store of the component.

use crate::calls::InternalCalls;
use agora_capability::{Meter, Prepared};
use agora_messaging::{MessagingBackend, MessagingCtx};
use agora_sql::{Namespace, SqlCtx};
use std::sync::Arc;

/// One component's share of the host's capabilities, as its grants allow.
#[derive(Clone)]
pub struct Granted {
    pub(crate) name: Arc<str>,
    /// Its database namespace, when granted.
    pub sql: Option<Arc<dyn Namespace>>,
    /// The subject patterns it may publish to (empty: none).
    pub publish: Arc<[String]>,
    /// The broker.
    pub messaging: Arc<dyn MessagingBackend>,
    /// The origins it may send HTTP requests to (empty: none).
    pub http: Arc<[String]>,
    /// The HTTP trigger, for its in-process calls.
    pub internal: InternalCalls,
    /// The parts of the capability units it holds grants of, by unit name: each store starts
    /// with their state.
    pub units: Arc<[(&'static str, Arc<dyn Prepared>)]>,
    pub(crate) may_publish: Arc<dyn Fn(&str) -> bool + Send + Sync>,
    /// Where its sql calls and publishes are reported (the metrics).
    pub(crate) meters: Meters,
}

/// The meters of the capabilities the host wires itself, for one component.
#[derive(Clone, Default)]
pub struct Meters {
    /// sql statements, `begin` and `commit`.
    pub sql: Meter,
    /// Direct publishes (not those through a transaction's outbox).
    pub publish: Meter,
}

impl Meters {
    /// The meters of component `name`.
    pub fn of(name: &str) -> Meters {
        Meters {
            sql: crate::metrics::capability_meter(name, "sql"),
            publish: crate::metrics::capability_meter(name, "publish"),
        }
    }
}

impl Granted {
    /// The sql context of one store.
    pub fn sql_ctx(&self) -> SqlCtx {
        match &self.sql {
            Some(namespace) => {
                let messaging = self.messaging.clone();
                SqlCtx::granted(namespace.clone(), self.may_publish.clone())
                    .with_publish_check(Arc::new(move |row: &agora_sql::OutboxMessage| {
                        let message = agora_messaging::Message {
                            id: row.id.clone(),
                            subject: row.subject.clone(),
                            payload: row.payload.clone(),
                            headers: row.headers.clone(),
                        };
                        messaging.check(&message).map_err(|err| match err {
                            agora_messaging::MessagingError::Invalid(reason)
                            | agora_messaging::MessagingError::Unavailable(reason) => reason,
                        })
                    }))
                    .metered(self.meters.sql.clone())
            }
            None => SqlCtx::denied(),
        }
    }

    /// The messaging context of one store.
    pub fn messaging_ctx(&self) -> MessagingCtx {
        if self.publish.is_empty() {
            MessagingCtx::denied()
        } else {
            MessagingCtx::granted(self.messaging.clone(), &self.name, self.publish.clone())
                .metered(self.meters.publish.clone())
        }
    }

    /// Whether the component may publish to `subject`.
    pub fn may_publish(&self, subject: &str) -> bool {
        (self.may_publish)(subject)
    }
}
