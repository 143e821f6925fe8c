//! Reused instances (`[component.instances] reuse = N`): the idle instances of one version of
//! one component, waiting for their next request or event.
//!
//! Requests and events keep separate idle lists (an instance is made for the exports it
//! serves: `wasi:http/incoming-handler` or `agora:platform/handler`); everything below holds for
//! both, and "request" means either.
//!
//! Invariants:
//! - An instance serves one request at a time and at most `reuse` requests in all.
//! - An instance comes back only from a request that ended cleanly: one that trapped, ran past
//!   its deadline, was refused memory or ended holding host resources is dropped instead.
//! - Idle instances belong to one version: when a swap (or a rollback) switches versions, the
//!   version going out retires its idle instances and drops those still serving when they end.
//! - An instance idle for `idle_ms` is dropped (checked when an instance is taken, and by a
//!   sweeper task while the pool lives), so a quiet component gives its memory back.
//! - Idle instances are at most the component's `limits.concurrency` (each came back from a
//!   request that held a permit).

use crate::manifest::Reuse;
use crate::state::{self, InstanceState, StoreSpec};
use crate::triggers::first_look::HttpExports;
use agora_messaging::bindings::subscriber::Subscriber;
use std::sync::{Arc, Mutex, PoisonError, Weak};
use std::time::{Duration, Instant};
use wasmtime::Store;

/// An instance between two requests: its store, the handle of its exports (`E`:
/// [`HttpExports`] for requests, [`Subscriber`] for events), the requests it has served and
/// when it came back.
pub struct Idle<E> {
    store: Store<InstanceState>,
    exports: E,
    served: u32,
    since: Instant,
}

/// The idle instances of one version of a component.
pub struct Instances {
    reuse: Reuse,
    inner: Mutex<Inner>,
}

/// Which idle list: instances made for requests or for events.
pub trait Exports: Sized {
    /// This kind's list in `inner`.
    fn list(inner: &mut Inner) -> &mut Vec<Idle<Self>>;
}

impl Exports for HttpExports {
    fn list(inner: &mut Inner) -> &mut Vec<Idle<Self>> {
        &mut inner.requests
    }
}

impl Exports for Subscriber {
    fn list(inner: &mut Inner) -> &mut Vec<Idle<Self>> {
        &mut inner.events
    }
}

/// The idle lists of one version.
#[derive(Default)]
pub struct Inner {
    /// Oldest first; taken from the end (the most recently used is the warmest).
    requests: Vec<Idle<HttpExports>>,
    /// The same, for events.
    events: Vec<Idle<Subscriber>>,
    retired: bool,
}

/// Instances taken out of the lists, dropped once the lock is released.
type Dropped = (Vec<Idle<HttpExports>>, Vec<Idle<Subscriber>>);

impl Instances {
    /// A pool for a component reusing instances as `reuse` says. With reuse on and a tokio
    /// runtime at hand, a sweeper task drops instances idle past `reuse.idle`; it ends with
    /// the pool.
    pub fn new(reuse: Reuse) -> Arc<Instances> {
        let instances = Arc::new(Instances {
            reuse,
            inner: Mutex::new(Inner::default()),
        });
        if reuse.enabled()
            && let Ok(runtime) = tokio::runtime::Handle::try_current()
        {
            runtime.spawn(sweep(Arc::downgrade(&instances), reuse.idle));
        }
        instances
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// The store for the next request (`E` = [`HttpExports`]) or event (`E` =
    /// [`Subscriber`]) of `component`, due by `deadline`: an idle instance's, readied by
    /// [`state::renew_store`], with its exports and the requests it has served; or a new
    /// store, to instantiate in.
    pub fn checkout<E: Exports>(
        &self,
        component: &StoreSpec<'_>,
        deadline: Instant,
    ) -> (Store<InstanceState>, Option<(E, u32)>) {
        match self.take::<E>() {
            Some(Idle {
                mut store,
                exports,
                served,
                ..
            }) => {
                state::renew_store(&mut store, component, deadline);
                (store, Some((exports, served)))
            }
            None => (state::new_store(component, deadline), None),
        }
    }

    /// An idle instance not idle too long, if reuse is on and one is waiting.
    fn take<E: Exports>(&self) -> Option<Idle<E>> {
        if !self.reuse.enabled() {
            return None;
        }
        let (taken, expired) = {
            let mut inner = self.lock();
            let expired = self.expire(&mut inner, Instant::now());
            (E::list(&mut inner).pop(), expired)
        };
        drop(expired);
        taken
    }

    /// Takes back the instance of a request or event whose call returned, now that it has
    /// served `served`: it waits for the next one only if the call ended cleanly (no deadline,
    /// no memory refusal, no host resource still held), it has served fewer than `reuse`, and
    /// this version still serves. Otherwise it is dropped.
    pub fn check_in<E: Exports>(&self, store: Store<InstanceState>, exports: E, served: u32) {
        if served >= self.reuse.requests {
            return;
        }
        let state = store.data();
        if state.deadline_hit || state.limits.memory_denied || state.holds_resources() {
            return;
        }
        let mut inner = self.lock();
        if inner.retired {
            drop(inner);
            return;
        }
        E::list(&mut inner).push(Idle {
            store,
            exports,
            served,
            since: Instant::now(),
        });
    }

    /// Drops the idle instances and every instance that comes back later: this version stops
    /// serving.
    pub fn retire(&self) {
        let dropped: Dropped = {
            let mut inner = self.lock();
            inner.retired = true;
            (
                std::mem::take(&mut inner.requests),
                std::mem::take(&mut inner.events),
            )
        };
        drop(dropped);
    }

    /// Takes instances back again: this version serves again (a rollback).
    pub fn reopen(&self) {
        self.lock().retired = false;
    }

    /// Instances waiting idle now (for requests and for events).
    pub fn idle(&self) -> usize {
        let inner = self.lock();
        inner.requests.len() + inner.events.len()
    }

    /// Removes the instances idle since before `now - reuse.idle`.
    fn expire(&self, inner: &mut Inner, now: Instant) -> Dropped {
        (
            expired(&mut inner.requests, now, self.reuse.idle),
            expired(&mut inner.events, now, self.reuse.idle),
        )
    }
}

/// Takes the instances of `list` idle for `idle` or longer (the oldest are first).
fn expired<E>(list: &mut Vec<Idle<E>>, now: Instant, idle: Duration) -> Vec<Idle<E>> {
    let keep_from = list
        .iter()
        .position(|entry| now.duration_since(entry.since) < idle)
        .unwrap_or(list.len());
    list.drain(..keep_from).collect()
}

/// Drops instances idle too long, every `idle / 2` (at least every second), while the pool
/// lives.
async fn sweep(instances: Weak<Instances>, idle: Duration) {
    let period = (idle / 2).clamp(Duration::from_millis(10), Duration::from_secs(1));
    let mut ticks = tokio::time::interval(period);
    ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        ticks.tick().await;
        let Some(instances) = instances.upgrade() else {
            return;
        };
        let expired = {
            let mut inner = instances.lock();
            instances.expire(&mut inner, Instant::now())
        };
        drop(expired);
    }
}
