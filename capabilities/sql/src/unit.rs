//! The sql capability as a unit of the host ([`Sql`]): the grant `sql = true`,
//! `agora:platform/sql` linked to each store's [`SqlCtx`] and resource table, and the part of a
//! granted component ([`Database`]): its namespace, opened and migrated at load, which the
//! host's outbox relay and readiness probe also read.
//!
//! The outbox is where sql meets messaging: `transaction.publish` checks the subject against
//! the component's publish grant and the message against the broker's rules. Both come from
//! the publish capability's part ([`agora_messaging::Publisher`]), which the host prepares
//! first; a component without the publish grant may publish nothing from a transaction.

use crate::{
    Bounds, Dialect, INTERFACE, Migration, Namespace, OutboxMessage, PublishCheck, SqlBackend,
    SqlCtx, SqlView,
};
use agora_capability::{Capability, ComponentInfo, Meter, Prepared, StoreData, StoreInfo};
use agora_messaging::{Message, Publisher};
use std::any::Any;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;
use wasmtime::component::Linker;

/// The capability: the database backend (PostgreSQL or SQLite) namespaces are opened on.
pub struct Sql {
    backend: Arc<dyn SqlBackend>,
}

impl Sql {
    /// sql on `backend` (the host's database).
    pub fn new(backend: Arc<dyn SqlBackend>) -> Sql {
        Sql { backend }
    }
}

#[async_trait::async_trait]
impl<S: StoreData> Capability<S> for Sql {
    fn name(&self) -> &'static str {
        "sql"
    }

    fn interfaces(&self) -> &'static [&'static str] {
        &[INTERFACE]
    }

    fn grant_hint(&self) -> &'static str {
        "sql = true"
    }

    fn check_grant(&self, value: &toml::Value) -> Result<bool, String> {
        agora_capability::check_bool_grant("sql", value)
    }

    fn link(&self, linker: &mut Linker<S>) -> wasmtime::Result<()> {
        fn view<S: StoreData>(state: &mut S) -> SqlView<'_> {
            let (slots, table) = state.slots_and_table();
            SqlView {
                ctx: slots.get_mut::<SqlCtx>(),
                table,
            }
        }
        crate::add_to_linker(linker, view::<S>)
    }

    async fn prepare(&self, component: &ComponentInfo<'_>) -> Result<Arc<dyn Prepared>, String> {
        let dialect = self.backend.dialect();
        let namespace = self
            .backend
            .namespace_with(component.name, component.sql_connections)
            .await
            .map_err(|err| format!("cannot open its {dialect} database: {err}"))?;
        let publisher = component.part::<Publisher>().cloned();
        let may_publish: Arc<dyn Fn(&str) -> bool + Send + Sync> = {
            let publisher = publisher.clone();
            Arc::new(move |subject: &str| {
                publisher
                    .as_ref()
                    .is_some_and(|publisher| publisher.may_publish(subject))
            })
        };
        let check = publisher.clone().map(|publisher| -> PublishCheck {
            Arc::new(move |row: &OutboxMessage| {
                publisher.check(&Message {
                    id: row.id.clone(),
                    subject: row.subject.clone(),
                    payload: row.payload.clone(),
                    headers: row.headers.clone(),
                })
            })
        });
        let database = Database {
            component: component.name.to_owned(),
            namespace,
            dialect,
            publisher,
            may_publish,
            check,
            meter: component.meter.clone(),
            max_result_bytes: usize::try_from(component.sql_result_bytes).unwrap_or(usize::MAX),
            max_statement: Duration::from_millis(component.deadline_ms),
        };
        database.apply_migrations(component.migrations).await?;
        Ok(Arc::new(database))
    }

    fn describe(&self) -> serde_json::Value {
        serde_json::json!({ "backend": self.backend.dialect().to_string() })
    }
}

/// The sql capability's part of a component that holds the grant: its database namespace,
/// what its transactions may publish, and the bounds of its calls.
pub struct Database {
    component: String,
    namespace: Arc<dyn Namespace>,
    dialect: Dialect,
    publisher: Option<Publisher>,
    may_publish: Arc<dyn Fn(&str) -> bool + Send + Sync>,
    check: Option<PublishCheck>,
    meter: Meter,
    max_result_bytes: usize,
    max_statement: Duration,
}

impl Database {
    /// The component's namespace.
    pub fn namespace(&self) -> &Arc<dyn Namespace> {
        &self.namespace
    }

    /// Whether a message the component's outbox holds for `subject` may be relayed: a valid
    /// subject its publish grant matches.
    pub fn may_publish(&self, subject: &str) -> bool {
        (self.may_publish)(subject)
    }

    /// The broker the outbox is relayed to, when the component holds the publish grant.
    pub fn publisher(&self) -> Option<&Publisher> {
        self.publisher.as_ref()
    }

    /// Applies the migrations of folder `dir` (if any) that the namespace has not seen, and
    /// logs them; returns their names. A swap applies those of the new version.
    pub async fn apply_migrations(&self, dir: Option<&Path>) -> Result<Vec<String>, String> {
        let Some(dir) = dir else {
            return Ok(Vec::new());
        };
        let migrations = Migration::load_dir(dir, self.dialect)
            .map_err(|err| format!("cannot read its migrations: {err}"))?;
        let applied = self
            .namespace
            .migrate(&migrations)
            .await
            .map_err(|err| format!("migration failed: {err}"))?;
        if !applied.is_empty() {
            tracing::info!(component = %self.component, applied = ?applied, "migrations applied");
        }
        Ok(applied)
    }

    /// The sql state of one store, whose calls end by `deadline`.
    pub fn ctx(&self, deadline: std::time::Instant) -> SqlCtx {
        let mut ctx = SqlCtx::granted(self.namespace.clone(), self.may_publish.clone());
        if let Some(check) = &self.check {
            ctx = ctx.with_publish_check(check.clone());
        }
        ctx.metered(self.meter.clone()).bounded(Bounds {
            deadline: Some(deadline),
            max_result_bytes: self.max_result_bytes,
            max_statement: Some(self.max_statement),
        })
    }
}

impl Prepared for Database {
    fn instance(&self, store: &StoreInfo) -> Box<dyn Any + Send> {
        Box::new(self.ctx(store.deadline))
    }

    /// A new state, as [`Prepared::instance`] makes, written over the last request's in its box
    /// (what that one left open, a transaction say, is dropped as before): one allocation less
    /// per request of a reused instance.
    fn renew(&self, state: &mut Box<dyn Any + Send>, store: &StoreInfo) {
        match state.downcast_mut::<SqlCtx>() {
            Some(ctx) => *ctx = self.ctx(store.deadline),
            None => *state = self.instance(store),
        }
    }

    fn describe(&self) -> serde_json::Value {
        serde_json::json!({ "dialect": self.dialect.to_string() })
    }
}
