//! The production backend: NATS JetStream.
//!
//! Every subject lives in one stream, [`STREAM`], that captures `agora.>` on file storage,
//! keeps messages for 7 days and drops a repeated `Nats-Msg-Id` within 2 minutes. A message to
//! `order.created` travels as `agora.order.created`.
//!
//! Each (component, subject) pair is a durable pull consumer named by [`consumer_name`],
//! filtering `agora.<subject>`, with explicit acks and `max_ack_pending` = the subscription's
//! concurrency. Every host replica that subscribes the pair pulls from the same consumer, so
//! JetStream hands each message to one of them. Redelivery is a NAK with the backoff delay;
//! dead-lettering is done here from the delivery count JetStream reports (the consumer has no
//! `max_deliver` of its own), followed by a TERM so the message is never delivered again.
//! A dead letter NATS refuses as too large (the dead-letter headers took the message over the
//! server's `max_payload`) is published without its payload, naming the original's stream
//! sequence ([`crate::ORIGINAL_SEQUENCE`]); one NATS refuses for good, or cannot take in
//! [`DEAD_LETTER_ATTEMPTS`] deliveries, ends with a TERM and an error log naming that
//! sequence — the stream keeps the message, and no ack slot stays taken by it.
//!
//! A message is refused at publish ([`MessagingBackend::check`]) when its header block and
//! payload together exceed the `max_payload` the server announced to this connection.
//!
//! `max_ack_pending` bounds the consumer as a whole: JetStream counts unacknowledged messages
//! per consumer, across every replica pulling from it, and a message waiting out its backoff
//! counts too. Each subscription also bounds its own handlers with a semaphore.
//!
//! The client reconnects by itself; the delivery loop of a subscription recreates the stream,
//! its consumer and its pull stream after any error, so deliveries resume after a NATS restart
//! (even one that lost its store). Messages already pulled but not yet handed to a handler when
//! a subscription stops or its pull stream fails come back after the ack wait.

use crate::backend::{
    Delivery, Message, MessageHandler, MessagingBackend, MessagingError, Subscription,
    SubscriptionSpec, dead_letter, run_handler, slim_dead_letter, sort_headers, stopped,
};
use crate::subject::{consumer_name, validate_headers, validate_subject};
use async_nats::jetstream::context::PublishErrorKind;
use async_nats::jetstream::{self, AckKind, consumer, stream};
use async_nats::{HeaderMap, HeaderName, HeaderValue};
use futures::StreamExt as _;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::{Semaphore, watch};
use tokio::task::JoinSet;

/// The JetStream stream holding every agora subject.
pub const STREAM: &str = "AGORA";
/// What the NATS subject of an agora subject starts with.
pub const WIRE_PREFIX: &str = "agora.";
/// Upper bound on connecting to NATS (TCP, handshake and the stream check each).
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
/// Upper bound on one publish, until JetStream confirms it stored the message.
pub const PUBLISH_TIMEOUT: Duration = Duration::from_secs(5);
/// How long messages stay in the stream.
pub const MAX_AGE: Duration = Duration::from_secs(7 * 24 * 60 * 60);
/// The window in which a repeated message id is dropped.
pub const DUPLICATE_WINDOW: Duration = Duration::from_secs(120);
/// Deliveries, from the last one `max_deliver` allows, on which publishing its dead letter is
/// tried: when NATS is unavailable each time, the message is terminated after the last (it
/// stays in the stream, its sequence logged) instead of being redelivered for ever while it
/// holds one of the consumer's `max_ack_pending` slots.
pub const DEAD_LETTER_ATTEMPTS: u32 = 5;
/// Pause before a delivery loop recreates its consumer after an error.
const RETRY_DELAY: Duration = Duration::from_millis(500);
/// How long one pull request waits for messages, and the idle heartbeat that detects a dead
/// connection within it.
const PULL_EXPIRES: Duration = Duration::from_secs(30);
const PULL_HEARTBEAT: Duration = Duration::from_secs(5);

struct Inner {
    url: String,
    jetstream: jetstream::Context,
}

/// The NATS JetStream backend. Clones share one connection.
#[derive(Clone)]
pub struct NatsBackend {
    inner: Arc<Inner>,
}

fn unavailable(what: &str, err: impl std::fmt::Display) -> MessagingError {
    MessagingError::Unavailable(format!("{what}: {err}"))
}

/// Bounds `future` by `limit`, turning a timeout into `Unavailable`.
async fn bounded<T>(
    limit: Duration,
    what: &str,
    future: impl Future<Output = Result<T, MessagingError>>,
) -> Result<T, MessagingError> {
    tokio::time::timeout(limit, future)
        .await
        .unwrap_or_else(|_| {
            Err(MessagingError::Unavailable(format!(
                "{what}: no answer within {} ms",
                limit.as_millis()
            )))
        })
}

impl NatsBackend {
    /// Connects to the NATS server at `url` (`nats://host:port`) and gets or creates the
    /// [`STREAM`]. Fails within a few seconds, naming the URL, when the server is unreachable or
    /// has no JetStream.
    pub async fn connect(url: &str) -> Result<NatsBackend, MessagingError> {
        let (options, real_url) = crate::connect_options(url).await.map_err(|reason| {
            MessagingError::Unavailable(format!("NATS at {}: {reason}", redact(url)))
        })?;
        let url = redact(url);
        let logged_url = url.clone();
        let options = options
            .name("agora")
            .connection_timeout(CONNECT_TIMEOUT)
            .event_callback(move |event| {
                let url = logged_url.clone();
                async move {
                    match event {
                        async_nats::Event::Connected => tracing::info!(%url, "NATS connected"),
                        async_nats::Event::Disconnected => {
                            tracing::warn!(%url, "NATS disconnected; reconnecting")
                        }
                        other => tracing::warn!(%url, event = %other, "NATS event"),
                    }
                }
            });
        let what = format!("cannot connect to NATS at {url}");
        let client = bounded(CONNECT_TIMEOUT + Duration::from_secs(1), &what, async {
            options
                .connect(real_url.as_str())
                .await
                .map_err(|err| unavailable(&what, err))
        })
        .await?;
        let jetstream = jetstream::ContextBuilder::new()
            .timeout(PUBLISH_TIMEOUT)
            .build(client);
        let backend = NatsBackend {
            inner: Arc::new(Inner {
                url: url.clone(),
                jetstream,
            }),
        };
        backend.stream().await.map_err(|err| {
            MessagingError::Unavailable(format!(
                "NATS at {url} has no usable JetStream (is the server started with -js?): {err}"
            ))
        })?;
        Ok(backend)
    }

    /// The URL this backend connected to, without any password in it.
    pub fn url(&self) -> &str {
        &self.inner.url
    }

    /// Deletes every stored message on `subject` (a pattern is allowed), e.g. after a
    /// benchmark. Consumers are left alone.
    pub async fn purge_subject(&self, subject: &str) -> Result<u64, MessagingError> {
        let stream = self.stream().await?;
        let what = format!("NATS at {}: purge {subject}", self.inner.url);
        let purged = bounded(CONNECT_TIMEOUT, &what, async {
            stream
                .purge()
                .filter(format!("{WIRE_PREFIX}{subject}"))
                .await
                .map_err(|err| unavailable(&what, err))
        })
        .await?;
        Ok(purged.purged)
    }

    /// Gets or creates the stream (again after a NATS restart that lost it).
    async fn stream(&self) -> Result<stream::Stream, MessagingError> {
        let config = stream::Config {
            name: STREAM.to_string(),
            description: Some("agora messages: agora.<subject>".to_string()),
            subjects: vec![format!("{WIRE_PREFIX}>")],
            storage: stream::StorageType::File,
            retention: stream::RetentionPolicy::Limits,
            max_age: MAX_AGE,
            duplicate_window: DUPLICATE_WINDOW,
            ..Default::default()
        };
        let what = format!("NATS at {}: stream {STREAM}", self.inner.url);
        bounded(CONNECT_TIMEOUT, &what, async {
            self.inner
                .jetstream
                .get_or_create_stream(config)
                .await
                .map_err(|err| unavailable(&what, err))
        })
        .await
    }

    /// Finds the durable consumer of `spec` again after the message stream failed, or — when
    /// NATS lost it (a server that lost its store, a consumer deleted by hand) — creates it
    /// anew starting at `since`, when the subscription began: a message published while it was
    /// missing is delivered (one handled before may be delivered again), none is lost.
    async fn recover_consumer(
        &self,
        spec: &SubscriptionSpec,
        name: &str,
        since: time::OffsetDateTime,
    ) -> Result<consumer::PullConsumer, MessagingError> {
        let stream = self.stream().await?;
        if let Ok(existing) = stream.get_consumer::<consumer::pull::Config>(name).await {
            return Ok(existing);
        }
        tracing::warn!(consumer = %name, "NATS lost the consumer; recreating it from when the subscription began");
        self.consumer(
            spec,
            name,
            consumer::DeliverPolicy::ByStartTime { start_time: since },
        )
        .await
    }

    /// Creates (or finds) the durable consumer of `spec` and returns it.
    async fn consumer(
        &self,
        spec: &SubscriptionSpec,
        name: &str,
        deliver_policy: consumer::DeliverPolicy,
    ) -> Result<consumer::PullConsumer, MessagingError> {
        let stream = self.stream().await?;
        let config = consumer::pull::Config {
            durable_name: Some(name.to_string()),
            description: Some(format!(
                "agora: {} receives {}",
                spec.component, spec.subject
            )),
            filter_subject: format!("{WIRE_PREFIX}{}", spec.subject),
            ack_policy: consumer::AckPolicy::Explicit,
            deliver_policy,
            ack_wait: spec.ack_wait,
            max_ack_pending: i64::try_from(spec.concurrency).unwrap_or(i64::MAX),
            ..Default::default()
        };
        let what = format!("NATS at {}: consumer {name}", self.inner.url);
        bounded(CONNECT_TIMEOUT, &what, async {
            stream
                .create_consumer(config)
                .await
                .map_err(|err| unavailable(&what, err))
        })
        .await
    }

    fn deliver_loop(
        &self,
        spec: SubscriptionSpec,
        name: String,
        handler: Arc<dyn MessageHandler>,
        first: consumer::PullConsumer,
        mut stop: watch::Receiver<()>,
    ) -> impl Future<Output = ()> + Send + 'static {
        let backend = self.clone();
        let since = time::OffsetDateTime::now_utc();
        async move {
            let spec = Arc::new(spec);
            let permits = Arc::new(Semaphore::new(spec.concurrency));
            let mut tasks = JoinSet::new();
            let mut ready = Some(first);
            'fetching: loop {
                let recovering = ready.is_none();
                let consumer = match ready.take() {
                    Some(consumer) => Ok(consumer),
                    None => tokio::select! {
                        biased;
                        () = stopped(&mut stop) => break 'fetching,
                        consumer = backend.recover_consumer(&spec, &name, since) => consumer,
                    },
                };
                let messages = match consumer {
                    Ok(consumer) => consumer
                        .stream()
                        .max_messages_per_batch(spec.concurrency)
                        .expires(PULL_EXPIRES)
                        .heartbeat(PULL_HEARTBEAT)
                        .messages()
                        .await
                        .map_err(|err| unavailable("cannot pull messages", err)),
                    Err(err) => Err(err),
                };
                match messages {
                    Ok(mut messages) => {
                        if recovering {
                            tracing::info!(consumer = %name, "NATS message stream recreated");
                        }
                        loop {
                            tokio::select! {
                                biased;
                                () = stopped(&mut stop) => break 'fetching,
                                Some(_) = tasks.join_next(), if !tasks.is_empty() => {}
                                next = messages.next() => match next {
                                    Some(Ok(message)) => {
                                        let permit = tokio::select! {
                                            biased;
                                            () = stopped(&mut stop) => {
                                                // Hand it back at once rather than after the ack wait.
                                                let _ = message.ack_with(AckKind::Nak(None)).await;
                                                break 'fetching;
                                            }
                                            permit = permits.clone().acquire_owned() => permit,
                                        };
                                        let Ok(permit) = permit else { break 'fetching };
                                        let (backend, spec, handler) =
                                            (backend.clone(), spec.clone(), handler.clone());
                                        tasks.spawn(async move {
                                            backend.deliver(&spec, handler, message).await;
                                            drop(permit);
                                        });
                                    }
                                    Some(Err(err)) => {
                                        tracing::warn!(
                                            consumer = %name, error = %err,
                                            "NATS message stream failed; recreating it"
                                        );
                                        break;
                                    }
                                    None => {
                                        tracing::warn!(
                                            consumer = %name,
                                            "NATS message stream ended; recreating it"
                                        );
                                        break;
                                    }
                                },
                            }
                        }
                    }
                    Err(err) => {
                        tracing::warn!(consumer = %name, error = %err, "cannot fetch messages; retrying");
                    }
                }
                tokio::select! {
                    biased;
                    () = stopped(&mut stop) => break 'fetching,
                    () = tokio::time::sleep(RETRY_DELAY) => {}
                }
            }
            while tasks.join_next().await.is_some() {}
        }
    }

    /// Publishes a dead letter; when NATS refuses it as invalid (the dead-letter headers took a
    /// message that fitted over `max_payload`), publishes it without its payload, pointing at
    /// the original's stream `sequence` instead.
    async fn publish_dead_letter(
        &self,
        dead: &Message,
        sequence: u64,
    ) -> Result<(), MessagingError> {
        match self.publish(dead).await {
            Err(MessagingError::Invalid(reason)) => {
                tracing::warn!(
                    message_id = %dead.id,
                    stream_sequence = sequence,
                    %reason,
                    "the dead letter is too large for NATS; publishing it without its payload"
                );
                self.publish(&slim_dead_letter(dead, Some(sequence))).await
            }
            other => other,
        }
    }

    /// Hands one JetStream message to the handler and acknowledges, redelivers or dead-letters
    /// it by the outcome.
    async fn deliver(
        &self,
        spec: &SubscriptionSpec,
        handler: Arc<dyn MessageHandler>,
        raw: jetstream::Message,
    ) {
        let (delivery, sequence) = match raw.info() {
            Ok(info) => (
                u32::try_from(info.delivered.max(1)).unwrap_or(u32::MAX),
                info.stream_sequence,
            ),
            Err(err) => {
                tracing::warn!(error = %err, "JetStream message without delivery info");
                (1, 0)
            }
        };
        let message = decode(&raw, sequence);

        // While the handler runs, keep extending the ack deadline so a slow handler is not
        // redelivered to another replica; a host that dies stops extending it.
        let handling = run_handler(
            handler,
            Delivery {
                message: message.clone(),
                delivery,
            },
        );
        tokio::pin!(handling);
        let mut progress = tokio::time::interval_at(
            tokio::time::Instant::now() + spec.ack_wait / 2,
            (spec.ack_wait / 2).max(Duration::from_millis(100)),
        );
        let result = loop {
            tokio::select! {
                result = &mut handling => break result,
                _ = progress.tick() => {
                    if let Err(err) = raw.ack_with(AckKind::Progress).await {
                        tracing::debug!(message_id = %message.id, error = %err, "cannot extend the ack deadline");
                    }
                }
            }
        };

        let (kind, outcome) = match result {
            Ok(()) => (AckKind::Ack, "acknowledge"),
            Err(reason) if delivery >= spec.max_deliver => {
                let dead = dead_letter(&spec.component, &message, delivery, &reason);
                tracing::warn!(
                    component = %spec.component,
                    message_id = %message.id,
                    dead_letter_subject = %dead.subject,
                    %reason,
                    delivery,
                    "message failed its last delivery; dead-lettering"
                );
                match self.publish_dead_letter(&dead, sequence).await {
                    Ok(()) => (AckKind::Term, "terminate"),
                    Err(err @ MessagingError::Invalid(_)) => {
                        // Never publishable: redelivering it would only hold an ack slot.
                        tracing::error!(
                            component = %spec.component,
                            message_id = %message.id,
                            stream_sequence = sequence,
                            error = %err,
                            "NATS refuses the dead letter; the message stays in stream {STREAM} \
                             at its sequence and is not delivered again"
                        );
                        (AckKind::Term, "terminate")
                    }
                    Err(err)
                        if delivery
                            >= spec.max_deliver.saturating_add(DEAD_LETTER_ATTEMPTS - 1) =>
                    {
                        tracing::error!(
                            component = %spec.component,
                            message_id = %message.id,
                            stream_sequence = sequence,
                            error = %err,
                            "cannot publish a dead letter after {DEAD_LETTER_ATTEMPTS} attempts; \
                             the message stays in stream {STREAM} at its sequence and is not \
                             delivered again"
                        );
                        (AckKind::Term, "terminate")
                    }
                    Err(err) => {
                        // Not lost: it comes back after the backoff and is dead-lettered then.
                        tracing::error!(
                            message_id = %message.id,
                            error = %err,
                            "cannot publish a dead letter; retrying later"
                        );
                        (
                            AckKind::Nak(Some(spec.backoff.delay(delivery))),
                            "redeliver",
                        )
                    }
                }
            }
            Err(reason) => {
                tracing::debug!(
                    component = %spec.component,
                    message_id = %message.id,
                    %reason,
                    delivery,
                    "message handler failed; redelivering after the backoff"
                );
                (
                    AckKind::Nak(Some(spec.backoff.delay(delivery))),
                    "redeliver",
                )
            }
        };
        if let Err(err) = raw.ack_with(kind).await {
            // JetStream redelivers it after the ack wait.
            tracing::warn!(message_id = %message.id, error = %err, "cannot {outcome} a message");
        }
    }
}

/// The wire subject and headers of `message` (its id as `Nats-Msg-Id`), or why NATS would
/// never take them.
fn wire(message: &Message) -> Result<(String, HeaderMap), MessagingError> {
    validate_subject(&message.subject).map_err(MessagingError::Invalid)?;
    validate_headers(&message.headers).map_err(MessagingError::Invalid)?;
    let mut headers = HeaderMap::new();
    for (name, value) in &message.headers {
        let name: HeaderName = name
            .parse()
            .map_err(|_| MessagingError::Invalid(format!("bad header name `{name}`")))?;
        let value: HeaderValue = value
            .parse()
            .map_err(|_| MessagingError::Invalid(format!("bad header value for `{name}`")))?;
        headers.append(name, value);
    }
    let id: HeaderValue = message
        .id
        .parse()
        .map_err(|_| MessagingError::Invalid("the message id has a line break".into()))?;
    headers.insert(async_nats::header::NATS_MESSAGE_ID, id);
    Ok((format!("{WIRE_PREFIX}{}", message.subject), headers))
}

/// The size of `headers` as sent (`NATS/1.0` line, `name: value` lines, blank line).
fn header_block_len(headers: &HeaderMap) -> usize {
    let lines: usize = headers
        .iter()
        .map(|(name, values)| {
            let name: &str = name.as_ref();
            values
                .iter()
                .map(|value| name.len() + 2 + value.as_str().len() + 2)
                .sum::<usize>()
        })
        .sum();
    "NATS/1.0\r\n".len() + lines + 2
}

/// `url` without the credentials of its user-info part (`nats://user:secret@host` →
/// `nats://***@host`), for logs and error messages.
pub fn redact(url: &str) -> String {
    url.split(',')
        .map(|part| {
            let (scheme, rest) = match part.split_once("://") {
                Some((scheme, rest)) => (format!("{scheme}://"), rest),
                None => (String::new(), part),
            };
            let authority = &rest[..rest.find('/').unwrap_or(rest.len())];
            match authority.rfind('@') {
                Some(at) => format!("{scheme}***{}", &rest[at..]),
                None => part.to_string(),
            }
        })
        .collect::<Vec<_>>()
        .join(",")
}

/// Turns a JetStream message into a [`Message`]: the id from `Nats-Msg-Id` (or the stream
/// sequence for a message published without one), the subject without [`WIRE_PREFIX`], the
/// broker's `Nats-*` headers left out.
fn decode(raw: &jetstream::Message, sequence: u64) -> Message {
    let mut id = None;
    let mut headers = Vec::new();
    if let Some(map) = &raw.headers {
        for (name, values) in map.iter() {
            let name: &str = name.as_ref();
            if name.eq_ignore_ascii_case("Nats-Msg-Id") {
                id = values.first().map(|value| value.as_str().to_string());
            } else if !(name.len() >= 5 && name[..5].eq_ignore_ascii_case("nats-")) {
                for value in values {
                    headers.push((name.to_string(), value.as_str().to_string()));
                }
            }
        }
    }
    sort_headers(&mut headers);
    let subject = raw.subject.as_str();
    Message {
        id: id.unwrap_or_else(|| format!("{STREAM}-{sequence}")),
        subject: subject
            .strip_prefix(WIRE_PREFIX)
            .unwrap_or(subject)
            .to_string(),
        payload: raw.payload.to_vec(),
        headers,
    }
}

#[async_trait::async_trait]
impl MessagingBackend for NatsBackend {
    async fn ping(&self) -> Result<(), MessagingError> {
        self.inner
            .jetstream
            .query_account()
            .await
            .map(drop)
            .map_err(|err| unavailable("jetstream account info", err))
    }

    fn kind(&self) -> &'static str {
        "nats"
    }

    fn check(&self, message: &Message) -> Result<(), MessagingError> {
        let (subject, headers) = wire(message)?;
        // What the server counts against its `max_payload` (from the INFO it sent this
        // connection): the header block as sent, plus the payload.
        let size = header_block_len(&headers) + message.payload.len();
        let max_payload = self.inner.jetstream.client().max_payload();
        if size > max_payload {
            return Err(MessagingError::Invalid(format!(
                "NATS at {}: the message to {subject} is {size} bytes with its headers, over \
                 the server's max_payload of {max_payload} bytes",
                self.inner.url
            )));
        }
        Ok(())
    }

    async fn publish(&self, message: &Message) -> Result<(), MessagingError> {
        self.check(message)?;
        let (subject, headers) = wire(message)?;
        let payload = bytes::Bytes::from(message.payload.clone());
        let what = format!("NATS at {}: publish to {subject}", self.inner.url);
        let attempt = || async {
            let ack = self
                .inner
                .jetstream
                .publish_with_headers(subject.clone(), headers.clone(), payload.clone())
                .await?;
            ack.await
        };
        bounded(PUBLISH_TIMEOUT, &what, async {
            let ack = match attempt().await {
                // The stream is gone (a NATS restart that lost its store): recreate it, retry.
                Err(err) if err.kind() == PublishErrorKind::StreamNotFound => {
                    tracing::warn!(url = %self.inner.url, "stream {STREAM} missing; recreating it");
                    self.stream().await?;
                    attempt().await
                }
                other => other,
            };
            match ack {
                Ok(ack) => {
                    if ack.duplicate {
                        tracing::debug!(message_id = %message.id, "duplicate publish dropped by JetStream");
                    }
                    Ok(())
                }
                Err(err) if err.kind() == PublishErrorKind::MaxPayloadExceeded => {
                    Err(MessagingError::Invalid(format!(
                        "{what}: the message is larger than the server's max_payload: {err}"
                    )))
                }
                Err(err) => Err(unavailable(&what, err)),
            }
        })
        .await
    }

    async fn subscribe(
        &self,
        spec: SubscriptionSpec,
        handler: Arc<dyn MessageHandler>,
    ) -> Result<Subscription, MessagingError> {
        spec.validate()?;
        let name = consumer_name(&spec.component, &spec.subject);
        // Create the consumer before returning, so that every message published from now on
        // is kept for it, and an unreachable NATS is an error here rather than a log line.
        // A new consumer starts with the messages published after it was created, as on the
        // in-process bus; from then on it is durable (it keeps its place across restarts, hot
        // swaps and replicas). An existing one is found as it is.
        // Re-creating an existing one with its own start policy applies changed settings
        // (ack wait, concurrency) without moving its place.
        let existing: Option<consumer::PullConsumer> =
            self.stream().await?.get_consumer(&name).await.ok();
        let policy = match existing {
            Some(existing) => existing.cached_info().config.deliver_policy,
            None => consumer::DeliverPolicy::New,
        };
        let first = self.consumer(&spec, &name, policy).await?;
        let (stop, stop_rx) = watch::channel(());
        let task = tokio::spawn(self.deliver_loop(spec, name, handler, first, stop_rx));
        Ok(Subscription::new(stop, task))
    }

    async fn remove_consumer(&self, component: &str, subject: &str) -> Result<(), MessagingError> {
        let name = consumer_name(component, subject);
        let what = format!("NATS at {}: delete consumer {name}", self.inner.url);
        bounded(PUBLISH_TIMEOUT, &what, async {
            match self
                .inner
                .jetstream
                .delete_consumer_from_stream(&name, STREAM)
                .await
            {
                Ok(_) => Ok(()),
                Err(err) => match err.kind() {
                    stream::ConsumerErrorKind::JetStream(js)
                        if js.code() == 404
                            || js.error_code() == jetstream::ErrorCode::CONSUMER_NOT_FOUND =>
                    {
                        Ok(())
                    }
                    _ => Err(unavailable(&what, err)),
                },
            }
        })
        .await
    }
}

#[cfg(test)]
mod tests {
    use super::redact;

    #[test]
    fn credentials_stay_out_of_messages() {
        assert_eq!(redact("nats://127.0.0.1:4222"), "nats://127.0.0.1:4222");
        assert_eq!(
            redact("nats://user:secret@nats:4222"),
            "nats://***@nats:4222"
        );
        assert_eq!(redact("token@nats:4222"), "***@nats:4222");
        assert_eq!(
            redact("tls://a:b@host:4222,tls://host2"),
            "tls://***@host:4222,tls://host2"
        );
        assert_eq!(
            redact("nats://h1,nats://u:p@h2/x"),
            "nats://h1,nats://***@h2/x"
        );
    }
}
