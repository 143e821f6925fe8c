//! The one trait a host capability implements: [`Capability`].
//!
//! A capability is one crate. It says, once, everything the host needs to know of it:
//!
//! - its **grant**: the key of `grants = { … }` in a component's manifest entry that turns it
//!   on ([`Capability::name`]), and what a valid value of that key is
//!   ([`Capability::check_grant`]);
//! - its **WIT interfaces** ([`Capability::interfaces`]): a component importing one of them
//!   without the grant fails to load, with a hint naming the grant to add
//!   ([`Capability::grant_hint`]) — deny by default, checked at load;
//! - how it **links** ([`Capability::link`]): its host functions find their per-store state in
//!   the store's [`Slots`], so the host's store type needs no field per capability;
//! - its **per-component state** ([`Capability::prepare`], run at load for each component
//!   that holds the grant) and, from that, the **per-store state** each instance starts with
//!   ([`Prepared::instance`]). A store of a component without the grant holds the state's
//!   [`Default`], which must deny every call — the second check, at call time;
//! - what it **reports** to the admin API ([`Capability::describe`], [`Prepared::describe`]) and
//!   to Prometheus: the time and outcome of each call through the [`Meter`] it is given, and
//!   its own counters ([`Prepared::counters`]).
//!
//! The host keeps one list of capabilities; adding one is its crate plus one line in that list.
//! The pattern follows Spin's factors (init → link, configure the app, prepare per instance)
//! and wasmCloud's host plugins, sized to agora: one trait, no builder types.

#![deny(missing_docs)]

use std::any::{Any, TypeId};
use std::sync::Arc;
use std::time::{Duration, Instant};
use wasmtime::component::{Linker, ResourceTable};

/// The per-store state of the capabilities: one value per type.
///
/// A host function reaches its state with [`Slots::get_mut`]; a state that was never put in
/// (the component holds no grant) is created from its [`Default`], the denied state.
#[derive(Default)]
pub struct Slots {
    values: Vec<(TypeId, Box<dyn Any + Send>)>,
    /// Made by [`Slots::of_units`]: the first `units` values are the units' states, in the
    /// order of their parts (none replaced another of its type).
    units: Option<usize>,
}

impl Slots {
    /// The slots a store of a component starts with: each of `parts`' [`Prepared::instance`].
    pub fn of_units<'a>(
        parts: impl ExactSizeIterator<Item = &'a dyn Prepared>,
        store: &StoreInfo,
    ) -> Slots {
        let count = parts.len();
        let mut slots = Slots {
            values: Vec::with_capacity(count),
            units: None,
        };
        for part in parts {
            slots.insert(part.instance(store));
        }
        if slots.values.len() == count {
            slots.units = Some(count);
        }
        slots
    }

    /// Readies the slots [`Slots::of_units`] made from the same `parts` for the store's next
    /// request or event (a reused instance): each part's [`Prepared::renew`] on its own state,
    /// in place; the denied states created since are dropped, as a new store would not have
    /// them. Slots made otherwise are made again.
    pub fn renew_units<'a>(
        &mut self,
        parts: impl ExactSizeIterator<Item = &'a dyn Prepared>,
        store: &StoreInfo,
    ) {
        match self.units {
            Some(count) if count == parts.len() => {
                self.values.truncate(count);
                for (part, (id, state)) in parts.zip(&mut self.values) {
                    part.renew(state, store);
                    *id = (**state).type_id();
                }
            }
            _ => *self = Slots::of_units(parts, store),
        }
    }

    /// Puts `value` in its type's slot, replacing what was there.
    pub fn insert(&mut self, value: Box<dyn Any + Send>) {
        let id = (*value).type_id();
        match self.values.iter_mut().find(|(slot, _)| *slot == id) {
            Some(slot) => slot.1 = value,
            None => self.values.push((id, value)),
        }
    }

    /// The state of type `C`, created from `C::default()` (denied) when absent.
    pub fn get_mut<C: Any + Send + Default>(&mut self) -> &mut C {
        let id = TypeId::of::<C>();
        let index = match self.values.iter().position(|(slot, _)| *slot == id) {
            Some(index) => index,
            None => {
                self.values.push((id, Box::new(C::default())));
                self.values.len() - 1
            }
        };
        match self.values[index].1.downcast_mut::<C>() {
            Some(value) => value,
            // A slot is keyed by the type of the value it holds.
            None => unreachable!("the slot of {id:?} holds a value of that type"),
        }
    }
}

/// What a store's data gives the capabilities: their slots and the resource table.
pub trait StoreData: Send + 'static {
    /// The capabilities' per-store state.
    fn slots(&mut self) -> &mut Slots;
    /// The slots and the store's resource table at once (for interfaces with resources).
    fn slots_and_table(&mut self) -> (&mut Slots, &mut ResourceTable);
}

/// What a capability sees of a component it prepares.
#[derive(Clone, Copy)]
pub struct ComponentInfo<'a> {
    /// The component's manifest name (1 to 57 of `a-z`, `0-9`, `-`).
    pub name: &'a str,
    /// The value of its grant, already accepted by [`Capability::check_grant`].
    pub grant: &'a toml::Value,
    /// Live cache keys the component may hold (`limits.cache_keys`).
    pub cache_keys: u64,
    /// Largest cache value, in bytes (`limits.cache_value_kib`).
    pub cache_value_bytes: u64,
    /// The deadline of one request or event, in milliseconds (`limits.deadline_ms`).
    pub deadline_ms: u64,
    /// Where the capability reports each call it serves for this component.
    pub meter: &'a Meter,
    /// Its configuration (`[component.config]`, and `[component.config_env]` read from the
    /// environment at load), by key. Some values are secrets: never log them.
    pub config: &'a std::collections::BTreeMap<String, String>,
    /// Connections its database pool may hold (`limits.sql_connections`).
    pub sql_connections: u32,
    /// Largest result one sql call may read into host memory, in bytes
    /// (`limits.sql_result_kib`).
    pub sql_result_bytes: u64,
    /// Its migrations folder (`migrations`), if it names one.
    pub migrations: Option<&'a std::path::Path>,
    /// The parts of the capabilities listed before this one in the host's list that the
    /// component holds grants of, by capability name: a capability built on another (sql's
    /// outbox publishes under the publish grant) finds that one's part with
    /// [`ComponentInfo::part`].
    pub prepared: &'a [(&'static str, Arc<dyn Prepared>)],
}

impl ComponentInfo<'_> {
    /// The part of type `P` an earlier capability prepared for this component, if the
    /// component holds that capability's grant.
    pub fn part<P: Prepared>(&self) -> Option<&P> {
        part(self.prepared)
    }
}

impl std::fmt::Debug for ComponentInfo<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // The configuration may hold secrets: only its keys are shown.
        f.debug_struct("ComponentInfo")
            .field("name", &self.name)
            .field("grant", &self.grant)
            .field("config_keys", &self.config.keys().collect::<Vec<_>>())
            .field(
                "prepared",
                &self
                    .prepared
                    .iter()
                    .map(|(name, _)| name)
                    .collect::<Vec<_>>(),
            )
            .finish_non_exhaustive()
    }
}

/// The part of type `P` among a component's prepared `parts`, if there is one.
pub fn part<'a, P: Prepared>(parts: &'a [(&'static str, Arc<dyn Prepared>)]) -> Option<&'a P> {
    parts.iter().find_map(|(_, part)| {
        let part: &dyn Any = part.as_ref();
        part.downcast_ref::<P>()
    })
}

/// Where a capability reports the calls it serves for one component: their time and whether
/// they succeeded (the host's `agora_capability_calls_total` and
/// `agora_capability_call_duration_seconds`). The default reports nowhere.
#[derive(Clone, Default)]
pub struct Meter(Option<Arc<dyn Fn(bool, Duration) + Send + Sync>>);

impl Meter {
    /// A meter that hands each call's outcome and time to `record`.
    pub fn new(record: impl Fn(bool, Duration) + Send + Sync + 'static) -> Meter {
        Meter(Some(Arc::new(record)))
    }

    /// Reports one call that started at `started`.
    pub fn record(&self, ok: bool, started: Instant) {
        if let Some(record) = &self.0 {
            record(ok, started.elapsed());
        }
    }
}

impl std::fmt::Debug for Meter {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(if self.0.is_some() {
            "Meter(recording)"
        } else {
            "Meter(off)"
        })
    }
}

/// The target of the spans of capability calls (and the host's busiest inner steps). They are
/// `debug` spans, so that only the host's exporting layer, which enables this target, records
/// them: without an exporter they are disabled at their call site and cost nothing.
pub const SPAN_TARGET: &str = "agora::span";

/// Gives the W3C trace context of the current call as message headers (`traceparent`,
/// `tracestate`); installed once by the host when it exports traces.
static TRACE_HEADERS: std::sync::OnceLock<TraceHeaders> = std::sync::OnceLock::new();

/// The source of the current call's trace-context headers.
pub type TraceHeaders = fn() -> Vec<(String, String)>;

/// Installs the source of the headers [`add_trace_headers`] adds (the host, once, when it
/// exports traces).
pub fn set_trace_headers(source: TraceHeaders) {
    let _ = TRACE_HEADERS.set(source);
}

/// Puts the trace context of the current call into `headers` of a message a capability sends
/// for a guest, replacing any the guest wrote (the host's is the true one), so whoever
/// receives the message continues the trace. Leaves `headers` alone when traces are not
/// exported.
pub fn add_trace_headers(headers: &mut Vec<(String, String)>) {
    let Some(source) = TRACE_HEADERS.get() else {
        return;
    };
    let trace = source();
    if trace.is_empty() {
        return;
    }
    headers.retain(|(name, _)| {
        !trace
            .iter()
            .any(|(traced, _)| traced.eq_ignore_ascii_case(name))
    });
    headers.extend(trace);
}

/// A count a capability keeps of one component, exposed as `agora_<capability>_<name>_total`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct UnitCounter {
    /// The counter's name within the capability, e.g. `hits` (lower case, `_` between words).
    pub name: &'static str,
    /// One sentence saying what it counts.
    pub help: &'static str,
    /// The count.
    pub value: u64,
}

/// What a capability sees of a store it starts.
#[derive(Debug, Clone, Copy)]
pub struct StoreInfo {
    /// When the request or event the store serves is due.
    pub deadline: Instant,
}

/// A capability's part of one component that holds its grant. The host finds a part by its
/// type ([`part`]) where it works with a capability beyond the guest's calls (the outbox relay
/// reads the sql part's database).
pub trait Prepared: Any + Send + Sync {
    /// The state one store of the component starts with, put in its [`Slots`].
    fn instance(&self, store: &StoreInfo) -> Box<dyn Any + Send>;

    /// Readies `state` — what [`Prepared::instance`] gave a store of this component, as the
    /// last request or event left it — for the next one of the same instance (reused
    /// instances), due as `store` says. By default a new state replaces it; a part whose state
    /// holds nothing a request could change keeps it as it is (no allocation per request).
    fn renew(&self, state: &mut Box<dyn Any + Send>, store: &StoreInfo) {
        *state = self.instance(store);
    }

    /// What the admin API shows of the capability for this component (`null`: nothing).
    fn describe(&self) -> serde_json::Value {
        serde_json::Value::Null
    }

    /// The counts it keeps of this component, for the metrics listener (none by default).
    fn counters(&self) -> Vec<UnitCounter> {
        Vec::new()
    }
}

/// [`Capability::check_grant`] for a grant that is `true` or `false` (`grants.NAME = true`).
pub fn check_bool_grant(name: &str, value: &toml::Value) -> Result<bool, String> {
    value
        .as_bool()
        .ok_or_else(|| format!("grants.{name} must be true or false"))
}

/// A host capability. `S` is the host's store data; a capability crate implements the trait
/// for every `S: StoreData`.
#[async_trait::async_trait]
pub trait Capability<S: StoreData>: Send + Sync + 'static {
    /// Its key in a component's `grants`, e.g. `keyvalue`.
    fn name(&self) -> &'static str;

    /// The WIT interfaces it provides, as a component's imports name them without their
    /// version, e.g. `wasi:keyvalue/store`.
    fn interfaces(&self) -> &'static [&'static str];

    /// The grant to add to a manifest entry, shown when a component imports one of
    /// [`Capability::interfaces`] without it, e.g. `keyvalue = true`.
    fn grant_hint(&self) -> &'static str;

    /// Checks the value of its grant: `Ok(true)` grants it, `Ok(false)` is a grant of nothing
    /// (`false`, an empty list), `Err` says what a valid value is.
    fn check_grant(&self, value: &toml::Value) -> Result<bool, String>;

    /// The grant a component holds when its manifest entry names none: `None` (the default)
    /// denies, as every capability that reaches data or the network must. A capability that
    /// reveals nothing and reaches nothing (logging, a component's own configuration) may be
    /// granted by default; the manifest can still deny it (`logging = false`).
    fn default_grant(&self) -> Option<toml::Value> {
        None
    }

    /// Adds its interfaces to `linker`. Host functions find their state with
    /// [`Slots::get_mut`].
    fn link(&self, linker: &mut Linker<S>) -> wasmtime::Result<()>;

    /// The part of a component that holds the grant, built once when it loads; an error
    /// fails the load with the message.
    async fn prepare(&self, component: &ComponentInfo<'_>) -> Result<Arc<dyn Prepared>, String>;

    /// What the admin API shows of the capability (its backend, for one).
    fn describe(&self) -> serde_json::Value;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Default, Debug, PartialEq)]
    struct Counter(u32);

    #[derive(Default, Debug, PartialEq)]
    struct Denied(bool);

    #[test]
    fn a_meter_reports_each_call_and_the_default_reports_nowhere() {
        use std::sync::atomic::{AtomicU64, Ordering};
        let calls = Arc::new(AtomicU64::new(0));
        let failed = Arc::new(AtomicU64::new(0));
        let meter = {
            let (calls, failed) = (calls.clone(), failed.clone());
            Meter::new(move |ok, _| {
                calls.fetch_add(1, Ordering::Relaxed);
                if !ok {
                    failed.fetch_add(1, Ordering::Relaxed);
                }
            })
        };
        meter.record(true, Instant::now());
        meter.clone().record(false, Instant::now());
        Meter::default().record(false, Instant::now());
        assert_eq!(calls.load(Ordering::Relaxed), 2);
        assert_eq!(failed.load(Ordering::Relaxed), 1);
        assert_eq!(format!("{:?}", Meter::default()), "Meter(off)");
    }

    struct Part(u32);

    impl Prepared for Part {
        fn instance(&self, _store: &StoreInfo) -> Box<dyn Any + Send> {
            Box::new(Counter(self.0))
        }
    }

    struct Other;

    impl Prepared for Other {
        fn instance(&self, _store: &StoreInfo) -> Box<dyn Any + Send> {
            Box::new(Denied(true))
        }
    }

    #[test]
    fn a_part_is_found_by_its_type() {
        let parts: Vec<(&'static str, Arc<dyn Prepared>)> =
            vec![("other", Arc::new(Other)), ("part", Arc::new(Part(7)))];
        assert_eq!(part::<Part>(&parts).map(|p| p.0), Some(7));
        assert!(part::<Other>(&parts[1..]).is_none());
        assert!(part::<Part>(&[]).is_none());
    }

    /// A part whose state counts the calls of one request (renewed by default).
    struct Budget;
    impl Prepared for Budget {
        fn instance(&self, _: &StoreInfo) -> Box<dyn Any + Send> {
            Box::new(Counter(0))
        }
    }

    /// A part whose state nothing changes (kept by a renew).
    struct Fixed;
    impl Prepared for Fixed {
        fn instance(&self, _: &StoreInfo) -> Box<dyn Any + Send> {
            Box::new(Denied(true))
        }
        fn renew(&self, _: &mut Box<dyn Any + Send>, _: &StoreInfo) {}
    }

    #[test]
    fn renewed_slots_start_each_request_as_a_new_store_would() {
        let store = StoreInfo {
            deadline: Instant::now(),
        };
        let parts: [&dyn Prepared; 2] = [&Budget, &Fixed];
        let mut slots = Slots::of_units(parts.into_iter(), &store);
        slots.get_mut::<Counter>().0 += 5;
        let kept: *const Denied = slots.get_mut::<Denied>();
        #[derive(Default)]
        struct NotGranted(u8);
        slots.get_mut::<NotGranted>().0 = 9;
        slots.renew_units(parts.into_iter(), &store);
        assert_eq!(
            *slots.get_mut::<Counter>(),
            Counter(0),
            "the budget starts again"
        );
        assert_eq!(*slots.get_mut::<Denied>(), Denied(true));
        assert!(
            std::ptr::eq(kept, slots.get_mut::<Denied>()),
            "kept in place"
        );
        assert_eq!(
            slots.get_mut::<NotGranted>().0,
            0,
            "a denied state is made again"
        );

        // Two parts of one state type: the slots are not in the parts' order, so a renew
        // makes them again rather than guess.
        let twice: [&dyn Prepared; 2] = [&Budget, &Budget];
        let mut slots = Slots::of_units(twice.into_iter(), &store);
        assert_eq!(slots.units, None);
        slots.get_mut::<Counter>().0 = 3;
        slots.renew_units(twice.into_iter(), &store);
        assert_eq!(*slots.get_mut::<Counter>(), Counter(0));
        assert_eq!(slots.values.len(), 1);
    }

    #[test]
    fn a_slot_holds_one_value_per_type_and_starts_denied() {
        let mut slots = Slots::default();
        assert_eq!(*slots.get_mut::<Counter>(), Counter(0));
        slots.insert(Box::new(Counter(3)));
        slots.get_mut::<Counter>().0 += 1;
        assert_eq!(*slots.get_mut::<Counter>(), Counter(4));
        assert_eq!(*slots.get_mut::<Denied>(), Denied(false));
        slots.insert(Box::new(Denied(true)));
        assert_eq!(*slots.get_mut::<Denied>(), Denied(true));
        assert_eq!(*slots.get_mut::<Counter>(), Counter(4));
        assert_eq!(slots.values.len(), 2);
    }
}
