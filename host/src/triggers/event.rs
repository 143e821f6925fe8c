//! The event trigger: one delivered message, one instance of the subscribed component — fresh,
//! or with `[component.instances] reuse = N` one that handled earlier events cleanly — its
//! exported `agora:platform/handler` called once.
//!
//! The broker owns the delivery contract (ack on `Ok`, redelivery with backoff otherwise,
//! dead-letter after `max_deliver`); this trigger turns everything that can go wrong in the guest
//! — an `Err`, a trap, a deadline, running out of memory — into an `Err` with a reason, so a
//! failing component never loses a message and never affects another component.

use crate::component::LoadedComponent;
use crate::manifest::ComponentSpec;
use crate::swap::Slot;
use agora_messaging::bindings::subscriber::Subscriber;
use agora_messaging::bindings::subscriber::exports::agora::platform::handler::Message;
use agora_messaging::{
    Backoff, Delivery, MessageHandler, MessagingBackend, Subscription, SubscriptionSpec,
};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tracing::Instrument as _;

/// How long the broker waits for an acknowledgement beyond the component's own deadline
/// before it considers a delivery lost (a crashed host) and redelivers it.
const ACK_GRACE: Duration = Duration::from_secs(10);

/// Delivers one subscription's messages to a component.
pub struct EventHandler {
    slot: Arc<Slot>,
    /// The subscribed subject (pattern): the metrics' label, bounded by the manifest.
    subject: String,
    /// Deliveries of one message before the broker dead-letters it.
    max_deliver: u32,
    /// The broker's kind (`nats`, `memory`), for the spans.
    system: &'static str,
}

/// Starts every subscription the manifest declares for `component`.
pub async fn subscribe(
    spec: &ComponentSpec,
    slot: &Arc<Slot>,
    backend: &Arc<dyn MessagingBackend>,
) -> Result<Vec<Subscription>, String> {
    let mut subscriptions = Vec::with_capacity(spec.messaging.subscribe.len());
    for subject in &spec.messaging.subscribe {
        let subscription_spec = SubscriptionSpec {
            component: spec.name.clone(),
            subject: subject.clone(),
            max_deliver: spec.messaging.max_deliver,
            backoff: Backoff {
                initial: Duration::from_millis(spec.messaging.backoff_ms),
                max: Duration::from_millis(spec.messaging.backoff_max_ms),
            },
            concurrency: (spec.limits.concurrency as usize).clamp(1, 64),
            ack_wait: Duration::from_millis(spec.limits.deadline_ms) + ACK_GRACE,
        };
        let handler = Arc::new(EventHandler {
            slot: slot.clone(),
            subject: subject.clone(),
            max_deliver: spec.messaging.max_deliver,
            system: backend.kind(),
        });
        let subscription = backend
            .subscribe(subscription_spec, handler)
            .await
            .map_err(|err| format!("cannot subscribe to `{subject}`: {err}"))?;
        tracing::info!(component = %spec.name, subject, "subscribed");
        subscriptions.push(subscription);
    }
    Ok(subscriptions)
}

#[async_trait::async_trait]
impl MessageHandler for EventHandler {
    async fn handle(&self, delivery: Delivery) -> Result<(), String> {
        // The version serving now handles this delivery to its end, whatever swaps meanwhile.
        let component = self.slot.current();
        // Each field is a log field and an exported attribute, so none is written twice: the
        // subject, message id and delivery count under their OpenTelemetry names, the duration
        // left to the span's own timing (the log line of the outcome carries it).
        let span = tracing::info_span!(
            "event",
            component = %component.name,
            digest = %&component.digest[..12],
            outcome = tracing::field::Empty,
            trace_id = tracing::field::Empty,
            span_id = tracing::field::Empty,
            "otel.name" = %format_args!("process {}", self.subject),
            "otel.kind" = "consumer",
            "messaging.system" = self.system,
            "messaging.operation.type" = "process",
            "messaging.destination.name" = %delivery.message.subject,
            "messaging.message.id" = %delivery.message.id,
            "messaging.message.delivery_count" = delivery.delivery,
        );
        // The delivery continues the trace of whatever published the message.
        crate::telemetry::continue_from(
            &span,
            delivery
                .message
                .headers
                .iter()
                .map(|(name, value)| (name.as_str(), value.as_str())),
        );
        let started = Instant::now();
        let count = delivery.delivery;
        let result = run(&component, delivery).instrument(span.clone()).await;
        let _entered = span.enter();
        let elapsed = started.elapsed();
        let duration_ms = elapsed.as_secs_f64() * 1000.0;
        let outcome = match &result {
            Ok(()) => {
                span.record("outcome", "ok");
                tracing::info!(duration_ms, "event handled");
                "handled"
            }
            Err(reason) if count >= self.max_deliver => {
                span.record("outcome", "dead_lettered");
                tracing::warn!(%reason, duration_ms, "event failed its last delivery; the broker dead-letters it");
                "dead_lettered"
            }
            Err(reason) => {
                span.record("outcome", "failed");
                tracing::warn!(%reason, duration_ms, "event failed; the broker will redeliver it");
                "retried"
            }
        };
        let metrics = crate::metrics::metrics();
        let labels = [&*component.name, self.subject.as_str()];
        metrics.events.with([labels[0], labels[1], outcome]).inc();
        metrics.event_duration.with(labels).observe(elapsed);
        result
    }
}

/// Handles one delivery on one version of the component.
async fn run(component: &LoadedComponent, delivery: Delivery) -> Result<(), String> {
    let Some(pre) = component.subscriber.clone() else {
        return Err(format!("component `{}` exports no handler", component.name));
    };
    // Events wait for a free instance rather than being refused: the broker holds them.
    let _permit = component
        .permits
        .clone()
        .acquire_owned()
        .await
        .map_err(|_| "the component is shutting down".to_owned())?;
    let deadline = Instant::now() + Duration::from_millis(component.limits.deadline_ms);
    // A reused instance (`[component.instances] reuse = N`) when one is idle, else a fresh one.
    let (mut store, reused) = component
        .instances
        .checkout::<Subscriber>(&component.store_spec(), deadline);
    let message = Message {
        id: delivery.message.id,
        subject: delivery.message.subject,
        payload: delivery.message.payload,
        headers: delivery.message.headers,
        delivery: delivery.delivery,
    };
    let run = async {
        let (instance, served) = match reused {
            Some(reused) => reused,
            None => {
                let instantiating = Instant::now();
                let instance = pre.instantiate_async(&mut store).await?;
                component
                    .series
                    .instantiation
                    .observe(instantiating.elapsed());
                (instance, 0)
            }
        };
        let handled = instance
            .agora_platform_handler()
            .call_handle(&mut store, &message)
            .await?;
        Ok::<_, wasmtime::Error>((handled, instance, served + 1))
    };
    let outcome = tokio::time::timeout_at(deadline.into(), run).await;
    let state = store.data();
    let (deadline_hit, memory_denied) = (state.deadline_hit, state.limits.memory_denied);
    // A handler that returned (`Ok` or `Err`) may leave its instance for the next event; a
    // trap never.
    let outcome = outcome.map(|called| {
        called.map(|(handled, instance, served)| {
            component.instances.check_in(store, instance, served);
            handled
        })
    });
    match outcome {
        Ok(Ok(Ok(()))) => Ok(()),
        Ok(Ok(Err(reason))) => Err(format!("the handler returned an error: {reason}")),
        Err(_) => Err(format!(
            "deadline of {} ms exceeded",
            component.limits.deadline_ms
        )),
        Ok(Err(_)) if deadline_hit => Err(format!(
            "deadline of {} ms exceeded",
            component.limits.deadline_ms
        )),
        Ok(Err(_)) if memory_denied => Err(format!(
            "out of memory (limit {} MiB)",
            component.limits.memory_bytes >> 20
        )),
        Ok(Err(trap)) => Err(format!("the handler trapped: {trap:#}")),
    }
}
