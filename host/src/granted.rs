//! One component's share of the host's capabilities, as its grants allow ([`Granted`]): built
//! when the component loads, kept across hot swaps, and read by every store of the component.

use crate::calls::InternalCalls;
use agora_capability::Prepared;
use std::sync::Arc;

/// One component's share of the host's capabilities, as its grants allow.
#[derive(Clone)]
pub struct Granted {
    /// The origins it may send HTTP requests to (empty: none).
    pub http: Arc<[String]>,
    /// The HTTP trigger, for its in-process calls.
    pub internal: InternalCalls,
    /// The parts of the capability units it holds grants of, by unit name: each store starts
    /// with their state.
    pub units: Arc<[(&'static str, Arc<dyn Prepared>)]>,
}

impl Granted {
    /// Its database, when it holds the sql grant: what the outbox relay, a swap's migrations
    /// and the readiness probe work on.
    pub fn database(&self) -> Option<&agora_sql::Database> {
        agora_capability::part(&self.units)
    }
}
