//! The messaging contract, written once and run against every backend: the in-process bus and
//! the machine's real NATS JetStream (`AGORA_TEST_NATS_URL`, default `nats://127.0.0.1:4222`).
//! Where NATS is unreachable the NATS tests say SKIPPED — except under `CI=true`, where they
//! fail.
//!
//! Every test uses its own subjects and component names, so leftovers in the shared `AGORA`
//! stream never interfere, and deletes the consumers it created. No assertion is about speed:
//! the tests wait (with generous limits) for what must happen, and check lower bounds only.

#![allow(clippy::unwrap_used)]

use agora_messaging::bindings::publisher::agora::platform::messaging::{Error, Host};
use agora_messaging::{
    Backoff, DEAD_LETTER_DELIVERIES, DEAD_LETTER_PAYLOAD_DROPPED, DEAD_LETTER_REASON, Delivery,
    MemoryBus, Message, MessageHandler, MessagingBackend, MessagingCtx, MessagingError,
    NatsBackend, ORIGINAL_ID, ORIGINAL_SEQUENCE, ORIGINAL_SUBJECT, SubscriptionSpec,
    dead_letter_subject,
};
use std::collections::HashSet;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio::sync::Notify;

/// Generous bound for something that must happen.
const WAIT: Duration = Duration::from_secs(30);
/// How long to watch for something that must not happen.
const QUIET: Duration = Duration::from_millis(1500);

fn nats_url() -> String {
    std::env::var("AGORA_TEST_NATS_URL").unwrap_or_else(|_| "nats://127.0.0.1:4222".into())
}

fn under_ci() -> bool {
    std::env::var("CI").as_deref() == Ok("true")
}

/// The NATS backend, or None (after saying SKIPPED) when it is unreachable outside CI.
async fn nats() -> Option<Arc<dyn MessagingBackend>> {
    let url = nats_url();
    match NatsBackend::connect(&url).await {
        Ok(backend) => Some(Arc::new(backend)),
        Err(err) if under_ci() => panic!("NATS at {url} is required under CI=true: {err}"),
        Err(err) => {
            eprintln!("SKIPPED: NATS at {url} is unreachable: {err}");
            None
        }
    }
}

fn memory() -> Arc<dyn MessagingBackend> {
    Arc::new(MemoryBus::new())
}

/// A name no other test run uses, valid as a component and as a subject token.
fn unique(prefix: &str) -> String {
    format!(
        "{prefix}{}",
        &uuid::Uuid::new_v4().simple().to_string()[..12]
    )
}

type Behaviour = Box<dyn Fn(&Delivery) -> Result<(), String> + Send + Sync>;

/// A handler that records every delivery (with when it started) and answers by `behaviour`.
struct Recorder {
    seen: Mutex<Vec<(Delivery, Instant)>>,
    changed: Notify,
    behaviour: Behaviour,
    running: AtomicUsize,
    most_running: AtomicUsize,
    work: Duration,
}

impl Recorder {
    fn new(
        behaviour: impl Fn(&Delivery) -> Result<(), String> + Send + Sync + 'static,
    ) -> Arc<Recorder> {
        Recorder::slow(Duration::ZERO, behaviour)
    }

    fn ok() -> Arc<Recorder> {
        Recorder::new(|_| Ok(()))
    }

    /// One that takes `work` per delivery.
    fn slow(
        work: Duration,
        behaviour: impl Fn(&Delivery) -> Result<(), String> + Send + Sync + 'static,
    ) -> Arc<Recorder> {
        Arc::new(Recorder {
            seen: Mutex::new(Vec::new()),
            changed: Notify::new(),
            behaviour: Box::new(behaviour),
            running: AtomicUsize::new(0),
            most_running: AtomicUsize::new(0),
            work,
        })
    }

    fn deliveries(&self) -> Vec<Delivery> {
        self.seen
            .lock()
            .unwrap()
            .iter()
            .map(|(d, _)| d.clone())
            .collect()
    }

    fn timed(&self) -> Vec<(Delivery, Instant)> {
        self.seen.lock().unwrap().clone()
    }

    fn count(&self) -> usize {
        self.seen.lock().unwrap().len()
    }

    /// Waits until at least `n` deliveries were seen; panics after [`WAIT`].
    async fn wait_for(&self, n: usize, what: &str) -> Vec<Delivery> {
        let deadline = tokio::time::Instant::now() + WAIT;
        loop {
            let notified = self.changed.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            if self.count() >= n {
                return self.deliveries();
            }
            if tokio::time::timeout_at(deadline, notified).await.is_err() {
                panic!(
                    "{what}: expected {n} deliveries within {WAIT:?}, saw {}: {:?}",
                    self.count(),
                    self.deliveries()
                );
            }
        }
    }
}

#[async_trait::async_trait]
impl MessageHandler for Recorder {
    async fn handle(&self, delivery: Delivery) -> Result<(), String> {
        let now = self.running.fetch_add(1, Ordering::SeqCst) + 1;
        self.most_running.fetch_max(now, Ordering::SeqCst);
        self.seen
            .lock()
            .unwrap()
            .push((delivery.clone(), Instant::now()));
        self.changed.notify_waiters();
        if !self.work.is_zero() {
            tokio::time::sleep(self.work).await;
        }
        self.running.fetch_sub(1, Ordering::SeqCst);
        (self.behaviour)(&delivery)
    }
}

/// Forwards to several recorders' shared log: two subscriptions feeding one view.
struct Both(Arc<Recorder>);

#[async_trait::async_trait]
impl MessageHandler for Both {
    async fn handle(&self, delivery: Delivery) -> Result<(), String> {
        self.0.handle(delivery).await
    }
}

fn spec(component: &str, subject: &str) -> SubscriptionSpec {
    let mut spec = SubscriptionSpec::new(component, subject);
    spec.backoff = Backoff {
        initial: Duration::from_millis(200),
        max: Duration::from_secs(1),
    };
    spec
}

async fn cleanup(backend: &Arc<dyn MessagingBackend>, consumers: &[(&str, &str)]) {
    for (component, subject) in consumers {
        backend.remove_consumer(component, subject).await.unwrap();
    }
}

async fn publish_delivers_once_intact(backend: Arc<dyn MessagingBackend>) {
    let component = unique("c");
    let subject = format!("{}.created", unique("order"));
    let recorder = Recorder::ok();
    let subscription = backend
        .subscribe(spec(&component, &subject), recorder.clone())
        .await
        .unwrap();

    let message = Message::new(
        subject.clone(),
        vec![0, 1, 2, 255, b'{', b'}'],
        vec![
            ("a-first".into(), "one".into()),
            ("content-type".into(), "application/json".into()),
            ("multi".into(), "x".into()),
            ("multi".into(), "y".into()),
        ],
    );
    backend.publish(&message).await.unwrap();

    let seen = recorder.wait_for(1, "one message").await;
    assert_eq!(
        seen[0].message, message,
        "id, subject, payload and headers intact"
    );
    assert_eq!(seen[0].delivery, 1);
    tokio::time::sleep(QUIET).await;
    assert_eq!(
        recorder.count(),
        1,
        "acknowledged messages are not redelivered"
    );

    subscription.stop().await;
    cleanup(&backend, &[(&component, &subject)]).await;
}

async fn guest_publish_checks_grants(backend: Arc<dyn MessagingBackend>) {
    let component = unique("c");
    let topic = unique("shop");
    let subject = format!("{topic}.order.created");
    let grants: Arc<[String]> = Arc::from(vec![format!("{topic}.order.*")]);
    let mut ctx = MessagingCtx::granted(backend.clone(), &component, grants);
    let recorder = Recorder::ok();
    let subscription = backend
        .subscribe(spec(&component, &subject), recorder.clone())
        .await
        .unwrap();

    let headers = vec![("k".to_string(), "v".to_string())];
    let id = ctx
        .publish(subject.clone(), b"hello".to_vec(), headers.clone())
        .await
        .unwrap()
        .unwrap();
    assert!(uuid::Uuid::parse_str(&id).is_ok(), "the id is a UUID: {id}");
    let seen = recorder.wait_for(1, "guest publish").await;
    assert_eq!(seen[0].message.id, id);
    assert_eq!(seen[0].message.payload, b"hello");
    assert_eq!(seen[0].message.headers, headers);

    // Outside the grant: denied. Malformed: invalid. Without a grant: denied.
    assert_eq!(
        ctx.publish(format!("{topic}.payment.created"), vec![], vec![])
            .await
            .unwrap(),
        Err(Error::Denied)
    );
    assert_eq!(
        ctx.publish(format!("{topic}.order.created.v2"), vec![], vec![])
            .await
            .unwrap(),
        Err(Error::Denied),
        "`*` is one token"
    );
    for bad in [
        String::new(),
        format!("{topic}.order.*"),
        format!("{topic}..x"),
        "a b".into(),
    ] {
        assert!(
            matches!(
                ctx.publish(bad.clone(), vec![], vec![]).await.unwrap(),
                Err(Error::Invalid(_))
            ),
            "{bad:?} is invalid"
        );
    }
    assert!(matches!(
        ctx.publish(subject.clone(), vec![0; (1 << 20) + 1], vec![])
            .await
            .unwrap(),
        Err(Error::Invalid(_))
    ));
    assert!(matches!(
        ctx.publish(
            subject.clone(),
            vec![],
            vec![("Nats-Msg-Id".into(), "x".into())]
        )
        .await
        .unwrap(),
        Err(Error::Invalid(_))
    ));
    let mut denied = MessagingCtx::denied();
    assert_eq!(
        denied
            .publish(subject.clone(), vec![], vec![])
            .await
            .unwrap(),
        Err(Error::Denied)
    );
    tokio::time::sleep(QUIET).await;
    assert_eq!(recorder.count(), 1, "refused publishes deliver nothing");

    subscription.stop().await;
    cleanup(&backend, &[(&component, &subject)]).await;
}

async fn replicas_share_a_consumer(backend: Arc<dyn MessagingBackend>) {
    let component = unique("c");
    let subject = format!("{}.placed", unique("order"));
    let log = Recorder::ok();
    let first = backend
        .subscribe(spec(&component, &subject), Arc::new(Both(log.clone())))
        .await
        .unwrap();
    let second = backend
        .subscribe(spec(&component, &subject), Arc::new(Both(log.clone())))
        .await
        .unwrap();

    let mut published = HashSet::new();
    for n in 0..20 {
        let message = Message::new(subject.clone(), format!("{n}").into_bytes(), vec![]);
        published.insert(message.id.clone());
        backend.publish(&message).await.unwrap();
    }
    log.wait_for(20, "20 messages over two replicas").await;
    tokio::time::sleep(QUIET).await;
    let seen = log.deliveries();
    let ids: Vec<String> = seen.iter().map(|d| d.message.id.clone()).collect();
    assert_eq!(
        ids.len(),
        20,
        "each message handled exactly once overall: {ids:?}"
    );
    assert_eq!(ids.into_iter().collect::<HashSet<_>>(), published);

    first.stop().await;
    second.stop().await;
    cleanup(&backend, &[(&component, &subject)]).await;
}

async fn every_component_gets_every_message(backend: Arc<dyn MessagingBackend>) {
    let (alpha, beta) = (unique("a"), unique("b"));
    let subject = format!("{}.shipped", unique("order"));
    let (a, b) = (Recorder::ok(), Recorder::ok());
    let sub_a = backend
        .subscribe(spec(&alpha, &subject), a.clone())
        .await
        .unwrap();
    let sub_b = backend
        .subscribe(spec(&beta, &subject), b.clone())
        .await
        .unwrap();

    for n in 0..5 {
        backend
            .publish(&Message::new(subject.clone(), vec![n], vec![]))
            .await
            .unwrap();
    }
    a.wait_for(5, "component a").await;
    b.wait_for(5, "component b").await;
    tokio::time::sleep(QUIET).await;
    assert_eq!(a.count(), 5);
    assert_eq!(b.count(), 5);
    let payloads = |r: &Recorder| {
        let mut p: Vec<Vec<u8>> = r
            .deliveries()
            .into_iter()
            .map(|d| d.message.payload)
            .collect();
        p.sort();
        p
    };
    assert_eq!(payloads(&a), payloads(&b));

    sub_a.stop().await;
    sub_b.stop().await;
    cleanup(&backend, &[(&alpha, &subject), (&beta, &subject)]).await;
}

async fn an_error_is_redelivered_after_the_backoff(backend: Arc<dyn MessagingBackend>) {
    let component = unique("c");
    let subject = format!("{}.paid", unique("order"));
    let recorder = Recorder::new(|d| {
        if d.delivery == 1 {
            Err("not yet".into())
        } else {
            Ok(())
        }
    });
    let mut spec = spec(&component, &subject);
    spec.backoff = Backoff {
        initial: Duration::from_millis(500),
        max: Duration::from_secs(5),
    };
    let subscription = backend.subscribe(spec, recorder.clone()).await.unwrap();
    let message = Message::new(subject.clone(), b"x".to_vec(), vec![]);
    backend.publish(&message).await.unwrap();

    recorder.wait_for(2, "a failed message comes back").await;
    tokio::time::sleep(QUIET).await;
    let seen = recorder.timed();
    assert_eq!(seen.len(), 2, "delivered twice: {seen:?}");
    assert_eq!((seen[0].0.delivery, seen[1].0.delivery), (1, 2));
    assert_eq!(seen[1].0.message, message);
    assert!(
        seen[1].1.duration_since(seen[0].1) >= Duration::from_millis(500),
        "the redelivery waits for the backoff"
    );

    subscription.stop().await;
    cleanup(&backend, &[(&component, &subject)]).await;
}

async fn the_last_failure_goes_to_the_dead_letter_subject(backend: Arc<dyn MessagingBackend>) {
    let component = unique("c");
    let subject = format!("{}.refunded", unique("order"));
    let dlq = dead_letter_subject(&component, &subject);
    let watcher_name = unique("w");
    let watcher = Recorder::ok();
    let watching = backend
        .subscribe(spec(&watcher_name, &dlq), watcher.clone())
        .await
        .unwrap();

    let failing = Recorder::new(|d| Err(format!("boom on {}", d.delivery)));
    let mut spec = spec(&component, &subject);
    spec.max_deliver = 3;
    spec.backoff = Backoff {
        initial: Duration::from_millis(100),
        max: Duration::from_millis(400),
    };
    let subscription = backend.subscribe(spec, failing.clone()).await.unwrap();
    let message = Message::new(
        subject.clone(),
        b"refund".to_vec(),
        vec![("trace".into(), "t-1".into())],
    );
    backend.publish(&message).await.unwrap();

    failing.wait_for(3, "three attempts").await;
    let dead = watcher.wait_for(1, "the dead letter").await;
    tokio::time::sleep(QUIET).await;
    let attempts: Vec<u32> = failing.deliveries().iter().map(|d| d.delivery).collect();
    assert_eq!(attempts, vec![1, 2, 3], "exactly max_deliver attempts");
    assert_eq!(watcher.count(), 1, "dead-lettered once");

    let dead = &dead[0].message;
    assert_eq!(dead.subject, dlq);
    assert_eq!(dead.payload, message.payload);
    assert_eq!(dead.header("trace"), Some("t-1"), "original headers kept");
    assert_eq!(dead.header(DEAD_LETTER_REASON), Some("boom on 3"));
    assert_eq!(dead.header(DEAD_LETTER_DELIVERIES), Some("3"));
    assert_eq!(dead.header(ORIGINAL_SUBJECT), Some(subject.as_str()));
    assert_eq!(dead.header(ORIGINAL_ID), Some(message.id.as_str()));

    subscription.stop().await;
    watching.stop().await;
    cleanup(&backend, &[(&component, &subject), (&watcher_name, &dlq)]).await;
}

async fn a_panicking_handler_is_redelivered(backend: Arc<dyn MessagingBackend>) {
    let component = unique("c");
    let subject = format!("{}.cancelled", unique("order"));
    let recorder = Recorder::new(|d| {
        if d.delivery == 1 && d.message.payload == b"x" {
            panic!("handler bug (expected by this test)");
        }
        Ok(())
    });
    let subscription = backend
        .subscribe(spec(&component, &subject), recorder.clone())
        .await
        .unwrap();
    backend
        .publish(&Message::new(subject.clone(), b"x".to_vec(), vec![]))
        .await
        .unwrap();

    let seen = recorder.wait_for(2, "redelivery after a panic").await;
    assert_eq!((seen[0].delivery, seen[1].delivery), (1, 2));
    assert!(
        subscription.is_running(),
        "a panic does not stop the subscription"
    );

    // And the subscription keeps delivering afterwards.
    backend
        .publish(&Message::new(subject.clone(), b"y".to_vec(), vec![]))
        .await
        .unwrap();
    recorder.wait_for(3, "next message after a panic").await;

    subscription.stop().await;
    cleanup(&backend, &[(&component, &subject)]).await;
}

async fn wildcards_match_tokens(backend: Arc<dyn MessagingBackend>) {
    let component = unique("c");
    let topic = unique("x");
    let pattern = format!("{topic}.*");
    let recorder = Recorder::ok();
    let subscription = backend
        .subscribe(spec(&component, &pattern), recorder.clone())
        .await
        .unwrap();
    for suffix in ["a", "b", "a.deep"] {
        backend
            .publish(&Message::new(format!("{topic}.{suffix}"), vec![], vec![]))
            .await
            .unwrap();
    }
    backend
        .publish(&Message::new(format!("{topic}x.a"), vec![], vec![]))
        .await
        .unwrap();

    recorder.wait_for(2, "x.a and x.b").await;
    tokio::time::sleep(QUIET).await;
    let mut subjects: Vec<String> = recorder
        .deliveries()
        .into_iter()
        .map(|d| d.message.subject)
        .collect();
    subjects.sort();
    assert_eq!(subjects, vec![format!("{topic}.a"), format!("{topic}.b")]);

    subscription.stop().await;
    cleanup(&backend, &[(&component, &pattern)]).await;
}

async fn a_repeated_id_is_delivered_once(backend: Arc<dyn MessagingBackend>) {
    let component = unique("c");
    let subject = format!("{}.created", unique("invoice"));
    let recorder = Recorder::ok();
    let subscription = backend
        .subscribe(spec(&component, &subject), recorder.clone())
        .await
        .unwrap();
    let message = Message::new(subject.clone(), b"once".to_vec(), vec![]);
    backend.publish(&message).await.unwrap();
    backend.publish(&message).await.unwrap();
    let other = Message::new(subject.clone(), b"other".to_vec(), vec![]);
    backend.publish(&other).await.unwrap();

    recorder.wait_for(2, "the message and another").await;
    tokio::time::sleep(QUIET).await;
    let ids: Vec<String> = recorder
        .deliveries()
        .into_iter()
        .map(|d| d.message.id)
        .collect();
    assert_eq!(ids.len(), 2, "the repeat was dropped: {ids:?}");
    assert!(ids.contains(&message.id) && ids.contains(&other.id));

    subscription.stop().await;
    cleanup(&backend, &[(&component, &subject)]).await;
}

async fn a_stopped_subscription_receives_nothing_and_its_consumer_keeps_messages(
    backend: Arc<dyn MessagingBackend>,
) {
    let component = unique("c");
    let subject = format!("{}.updated", unique("stock"));
    let recorder = Recorder::ok();
    let subscription = backend
        .subscribe(spec(&component, &subject), recorder.clone())
        .await
        .unwrap();
    backend
        .publish(&Message::new(subject.clone(), b"1".to_vec(), vec![]))
        .await
        .unwrap();
    recorder.wait_for(1, "before the stop").await;
    subscription.stop().await;

    for n in [b"2", b"3"] {
        backend
            .publish(&Message::new(subject.clone(), n.to_vec(), vec![]))
            .await
            .unwrap();
    }
    tokio::time::sleep(QUIET).await;
    assert_eq!(recorder.count(), 1, "nothing delivered after the stop");

    // The durable consumer kept them: the next subscription (a hot-swapped component, a new
    // replica) gets them.
    let later = Recorder::ok();
    let resumed = backend
        .subscribe(spec(&component, &subject), later.clone())
        .await
        .unwrap();
    let seen = later.wait_for(2, "messages kept while stopped").await;
    let mut payloads: Vec<Vec<u8>> = seen.into_iter().map(|d| d.message.payload).collect();
    payloads.sort();
    assert_eq!(payloads, vec![b"2".to_vec(), b"3".to_vec()]);

    // Dropping a subscription stops it too.
    drop(resumed);
    tokio::time::sleep(Duration::from_millis(300)).await;
    backend
        .publish(&Message::new(subject.clone(), b"4".to_vec(), vec![]))
        .await
        .unwrap();
    tokio::time::sleep(QUIET).await;
    assert_eq!(later.count(), 2, "nothing delivered after the drop");
    assert_eq!(recorder.count(), 1);

    cleanup(&backend, &[(&component, &subject)]).await;
}

async fn concurrency_is_bounded(backend: Arc<dyn MessagingBackend>) {
    let component = unique("c");
    let subject = format!("{}.resized", unique("image"));
    let recorder = Recorder::slow(Duration::from_millis(200), |_| Ok(()));
    let mut spec = spec(&component, &subject);
    spec.concurrency = 2;
    let subscription = backend.subscribe(spec, recorder.clone()).await.unwrap();
    for n in 0..8 {
        backend
            .publish(&Message::new(subject.clone(), vec![n], vec![]))
            .await
            .unwrap();
    }
    recorder.wait_for(8, "all messages").await;
    subscription.stop().await;
    let most = recorder.most_running.load(Ordering::SeqCst);
    assert!(
        (1..=2).contains(&most),
        "at most 2 handlers at once, saw {most}"
    );
    assert_eq!(
        recorder.running.load(Ordering::SeqCst),
        0,
        "stop waited for handlers"
    );

    cleanup(&backend, &[(&component, &subject)]).await;
}

async fn bad_subscriptions_and_publishes_are_refused(backend: Arc<dyn MessagingBackend>) {
    let handler = Recorder::ok();
    for (component, subject) in [("c", "a..b"), ("c", "a.>.b"), ("c.d", "a"), ("", "a")] {
        let result = backend
            .subscribe(spec(component, subject), handler.clone())
            .await;
        assert!(
            matches!(result, Err(MessagingError::Invalid(_))),
            "{component:?} {subject:?}"
        );
    }
    let mut zero = spec("c", "a");
    zero.max_deliver = 0;
    assert!(matches!(
        backend.subscribe(zero, handler.clone()).await,
        Err(MessagingError::Invalid(_))
    ));
    for subject in ["", "a.*", "a.>", "a b"] {
        assert!(
            matches!(
                backend
                    .publish(&Message::new(subject, vec![], vec![]))
                    .await,
                Err(MessagingError::Invalid(_))
            ),
            "{subject:?}"
        );
    }
}

/// The largest message both backends take by default: the in-process bus's documented limit,
/// and the default `max_payload` of a NATS server (which the machine's server keeps).
const DEFAULT_LIMIT: usize = agora_messaging::MAX_MESSAGE_BYTES;

async fn messages_the_broker_never_takes_are_refused_before_publish(
    backend: Arc<dyn MessagingBackend>,
) {
    let subject = format!("{}.created", unique("order"));
    let small = Message::new(subject.clone(), vec![7; 1000], vec![]);
    assert_eq!(backend.check(&small), Ok(()));
    // The payload alone fits; with a header it does not: headers count, as on the wire.
    let whole = Message::new(
        subject.clone(),
        vec![7; DEFAULT_LIMIT],
        vec![("k".into(), "v".into())],
    );
    for message in [&whole] {
        assert!(
            matches!(backend.check(message), Err(MessagingError::Invalid(ref m)) if m.contains("bytes")),
            "{:?}",
            backend.check(message)
        );
        assert!(matches!(
            backend.publish(message).await,
            Err(MessagingError::Invalid(_))
        ));
    }
    for bad in [
        Message::new("a b", vec![], vec![]),
        Message::new(
            subject.clone(),
            vec![],
            vec![("Nats-Expected-Stream".into(), "x".into())],
        ),
        Message::new(
            subject.clone(),
            vec![],
            vec![("k".into(), "line\nbreak".into())],
        ),
    ] {
        assert!(
            matches!(backend.check(&bad), Err(MessagingError::Invalid(_))),
            "{bad:?}"
        );
    }
}

async fn a_dead_letter_too_large_for_the_broker_goes_without_its_payload(
    backend: Arc<dyn MessagingBackend>,
) {
    let component = unique("c");
    let subject = format!("{}.refunded", unique("order"));
    let dlq = dead_letter_subject(&component, &subject);
    let watcher_name = unique("w");
    let watcher = Recorder::ok();
    let watching = backend
        .subscribe(spec(&watcher_name, &dlq), watcher.clone())
        .await
        .unwrap();
    // A long reason: the dead-letter headers take the message over the broker's limit.
    let failing = Recorder::new(|_| Err("x".repeat(900)));
    let mut spec = spec(&component, &subject);
    spec.max_deliver = 1;
    let subscription = backend.subscribe(spec, failing.clone()).await.unwrap();
    let message = Message::new(subject.clone(), vec![7; DEFAULT_LIMIT - 200], vec![]);
    backend.publish(&message).await.unwrap();

    let dead = watcher.wait_for(1, "the dead letter").await;
    tokio::time::sleep(QUIET).await;
    assert_eq!(failing.count(), 1, "not redelivered once dead-lettered");
    assert_eq!(watcher.count(), 1, "dead-lettered once");
    let dead = &dead[0].message;
    assert!(dead.payload.is_empty());
    let size = message.payload.len().to_string();
    assert_eq!(
        dead.header(DEAD_LETTER_PAYLOAD_DROPPED),
        Some(size.as_str())
    );
    assert_eq!(dead.header(ORIGINAL_ID), Some(message.id.as_str()));
    assert!(dead.header(DEAD_LETTER_REASON).is_some());
    if backend.kind() == "nats" {
        let sequence = dead.header(ORIGINAL_SEQUENCE).unwrap_or_default();
        assert!(sequence.parse::<u64>().is_ok(), "{sequence:?}");
    }

    subscription.stop().await;
    watching.stop().await;
    cleanup(&backend, &[(&component, &subject), (&watcher_name, &dlq)]).await;
}

/// Runs each contract function on the in-process bus and on NATS.
macro_rules! contract {
    ($($test:ident),* $(,)?) => {
        mod memory_bus {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $test() {
                    super::$test(super::memory()).await;
                }
            )*
        }
        mod nats_jetstream {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $test() {
                    if let Some(backend) = super::nats().await {
                        super::$test(backend).await;
                    }
                }
            )*
        }
    };
}

contract!(
    publish_delivers_once_intact,
    guest_publish_checks_grants,
    replicas_share_a_consumer,
    every_component_gets_every_message,
    an_error_is_redelivered_after_the_backoff,
    the_last_failure_goes_to_the_dead_letter_subject,
    a_panicking_handler_is_redelivered,
    wildcards_match_tokens,
    a_repeated_id_is_delivered_once,
    a_stopped_subscription_receives_nothing_and_its_consumer_keeps_messages,
    concurrency_is_bounded,
    bad_subscriptions_and_publishes_are_refused,
    messages_the_broker_never_takes_are_refused_before_publish,
    a_dead_letter_too_large_for_the_broker_goes_without_its_payload,
);

#[tokio::test]
async fn an_unreachable_nats_is_an_error_naming_the_url_not_a_hang() {
    // Port 1 on loopback: nothing listens there, so connecting fails at once.
    let url = "nats://127.0.0.1:1";
    let result = tokio::time::timeout(WAIT, agora_messaging::connect(Some(url)))
        .await
        .expect("connect gives up by itself");
    match result {
        Err(MessagingError::Unavailable(text)) => {
            assert!(text.contains("127.0.0.1:1"), "names the URL: {text}")
        }
        Err(other) => panic!("expected Unavailable, got {other}"),
        Ok(_) => panic!("nothing listens on {url}"),
    }
}

#[tokio::test]
async fn no_url_means_the_in_process_bus() {
    let backend = agora_messaging::connect(None).await.unwrap();
    assert_eq!(backend.kind(), "memory");
}

// ---------------------------------------------------------------------------------------------
// NATS specifics: how the contract maps onto JetStream, and recovery from a NATS restart.

#[tokio::test]
async fn nats_stream_and_consumers_are_set_up_as_documented() {
    use async_nats::jetstream::{consumer, stream};
    let Some(backend) = nats().await else { return };
    let component = unique("c");
    let subject = format!("{}.*", unique("order"));
    let mut wanted = spec(&component, &subject);
    wanted.concurrency = 3;
    wanted.ack_wait = Duration::from_secs(20);
    let subscription = backend.subscribe(wanted, Recorder::ok()).await.unwrap();

    let client = async_nats::connect(nats_url()).await.unwrap();
    let jetstream = async_nats::jetstream::new(client);
    let mut agora = jetstream.get_stream(agora_messaging::STREAM).await.unwrap();
    let config = agora.info().await.unwrap().config.clone();
    assert_eq!(config.subjects, vec!["agora.>".to_string()]);
    assert_eq!(config.storage, stream::StorageType::File);
    assert_eq!(config.retention, stream::RetentionPolicy::Limits);
    assert_eq!(config.duplicate_window, Duration::from_secs(120));
    assert_eq!(config.max_age, Duration::from_secs(7 * 24 * 3600));

    let name = agora_messaging::consumer_name(&component, &subject);
    assert!(name.starts_with(&format!("{component}__")), "{name}");
    let info = agora.consumer_info(&name).await.unwrap();
    assert_eq!(info.config.durable_name.as_deref(), Some(name.as_str()));
    assert_eq!(info.config.filter_subject, format!("agora.{subject}"));
    assert_eq!(info.config.ack_policy, consumer::AckPolicy::Explicit);
    assert_eq!(info.config.deliver_policy, consumer::DeliverPolicy::New);
    assert_eq!(info.config.ack_wait, Duration::from_secs(20));
    assert_eq!(info.config.max_ack_pending, 3);

    subscription.stop().await;
    backend.remove_consumer(&component, &subject).await.unwrap();
    assert!(agora.consumer_info(&name).await.is_err(), "removed");
    backend
        .remove_consumer(&component, &subject)
        .await
        .expect("removing a missing consumer is not an error");
}

/// A NATS server of this test's own, on a free port, that the test can restart.
struct PrivateNats {
    binary: std::path::PathBuf,
    port: u16,
    child: Option<std::process::Child>,
}

impl PrivateNats {
    /// The `nats-server` binary: `AGORA_TEST_NATS_SERVER`, or the first on `PATH`.
    fn binary() -> Option<std::path::PathBuf> {
        if let Ok(path) = std::env::var("AGORA_TEST_NATS_SERVER") {
            return Some(path.into());
        }
        let path = std::env::var_os("PATH")?;
        std::env::split_paths(&path)
            .map(|dir| dir.join("nats-server"))
            .find(|candidate| candidate.is_file())
    }

    fn free_port() -> u16 {
        std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port()
    }

    async fn start(binary: std::path::PathBuf, store: &std::path::Path) -> PrivateNats {
        let mut nats = PrivateNats {
            binary,
            port: PrivateNats::free_port(),
            child: None,
        };
        nats.restart(store).await;
        nats
    }

    fn url(&self) -> String {
        format!("nats://127.0.0.1:{}", self.port)
    }

    fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// (Re)starts the server on the same port with JetStream storing under `store`, and waits
    /// until it accepts connections.
    async fn restart(&mut self, store: &std::path::Path) {
        self.kill();
        let child = std::process::Command::new(&self.binary)
            .args([
                "-a",
                "127.0.0.1",
                "-p",
                &self.port.to_string(),
                "-js",
                "-sd",
            ])
            .arg(store)
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .unwrap();
        self.child = Some(child);
        let deadline = Instant::now() + WAIT;
        while tokio::net::TcpStream::connect(("127.0.0.1", self.port))
            .await
            .is_err()
        {
            assert!(
                Instant::now() < deadline,
                "nats-server did not start on {}",
                self.port
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}

impl Drop for PrivateNats {
    fn drop(&mut self) {
        self.kill();
    }
}

/// Publishes `message`, retrying while the client reconnects after a restart.
async fn publish_until_accepted(backend: &Arc<dyn MessagingBackend>, message: &Message) {
    let deadline = Instant::now() + WAIT;
    loop {
        match backend.publish(message).await {
            Ok(()) => return,
            Err(err) => {
                assert!(Instant::now() < deadline, "NATS never came back: {err}");
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nats_deliveries_resume_after_a_nats_restart() {
    let Some(binary) = PrivateNats::binary() else {
        if under_ci() {
            panic!("nats-server is required under CI=true (set AGORA_TEST_NATS_SERVER or PATH)");
        }
        eprintln!("SKIPPED: no nats-server binary on PATH (set AGORA_TEST_NATS_SERVER)");
        return;
    };
    let store = tempfile::tempdir().unwrap();
    let mut nats = PrivateNats::start(binary, store.path()).await;
    let backend: Arc<dyn MessagingBackend> =
        Arc::new(NatsBackend::connect(&nats.url()).await.unwrap());

    let subject = "restart.test";
    let recorder = Recorder::ok();
    let subscription = backend
        .subscribe(spec("survivor", subject), recorder.clone())
        .await
        .unwrap();
    backend
        .publish(&Message::new(subject, b"before".to_vec(), vec![]))
        .await
        .unwrap();
    recorder.wait_for(1, "before the restart").await;

    // A restart that keeps the store: the same stream and consumer come back.
    nats.restart(store.path()).await;
    publish_until_accepted(&backend, &Message::new(subject, b"kept".to_vec(), vec![])).await;
    recorder
        .wait_for(2, "after a restart with the store kept")
        .await;

    // A restart that lost the store: the stream and the consumer are recreated.
    let fresh = tempfile::tempdir().unwrap();
    nats.restart(fresh.path()).await;
    publish_until_accepted(&backend, &Message::new(subject, b"fresh".to_vec(), vec![])).await;
    // Delivery is at least once: an acknowledgement lost in a restart brings a message back,
    // so wait for the new one and compare the distinct payloads in order of first delivery.
    let mut wanted = 3;
    let payloads = loop {
        let seen = recorder
            .wait_for(wanted, "after a restart that lost the store")
            .await;
        let mut payloads: Vec<Vec<u8>> = Vec::new();
        for delivery in seen {
            if !payloads.contains(&delivery.message.payload) {
                payloads.push(delivery.message.payload);
            }
        }
        if payloads.len() >= 3 {
            break payloads;
        }
        wanted += 1;
    };
    assert_eq!(
        payloads,
        vec![b"before".to_vec(), b"kept".to_vec(), b"fresh".to_vec()]
    );
    assert!(subscription.is_running());

    subscription.stop().await;
    drop(nats);
}
