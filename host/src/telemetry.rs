//! Logs and traces: `tracing` events to stderr (text, or JSON with `--log-format json`),
//! filtered `RUST_LOG`-style, and — only when `OTEL_EXPORTER_OTLP_ENDPOINT` (or
//! `OTEL_EXPORTER_OTLP_TRACES_ENDPOINT`) is set — the same spans exported over OTLP/HTTP.
//!
//! The exporter honours the standard variables: `OTEL_EXPORTER_OTLP_PROTOCOL`
//! (`http/protobuf`, the default, or `http/json`), `OTEL_EXPORTER_OTLP_HEADERS`,
//! `OTEL_SERVICE_NAME` (default `agora`), `OTEL_RESOURCE_ATTRIBUTES`, `OTEL_TRACES_SAMPLER`
//! and its argument, `OTEL_BSP_*` for batching, `OTEL_SDK_DISABLED=true` to turn it off.
//! Without an endpoint no OpenTelemetry layer is installed: nothing costs more than tracing.
//!
//! W3C trace context (`traceparent`, `tracestate`) crosses every hop: read from an incoming
//! request ([`continue_from`]), written on in-process calls, on each message a component
//! publishes or writes to its outbox ([`current_headers`]), and read from a delivered message.

use opentelemetry::propagation::{Extractor, Injector, TextMapPropagator as _};
use opentelemetry::trace::{TraceContextExt as _, TracerProvider as _};
use opentelemetry_otlp::WithExportConfig as _;
use opentelemetry_sdk::propagation::TraceContextPropagator;
use opentelemetry_sdk::trace::SdkTracerProvider;
use std::io::IsTerminal as _;
use std::sync::OnceLock;
use tracing_opentelemetry::OpenTelemetrySpanExt as _;
use tracing_subscriber::EnvFilter;
use tracing_subscriber::Layer as _;
use tracing_subscriber::layer::SubscriberExt as _;
use tracing_subscriber::util::SubscriberInitExt as _;

/// The filter used when `RUST_LOG` is not set.
pub const DEFAULT_FILTER: &str = "info,wasmtime=warn,cranelift=warn";

/// The filter of one-shot commands (`agora deploy`, `agora status`) when `RUST_LOG` is not set:
/// their output is what they print, not the client libraries' chatter.
pub const COMMAND_FILTER: &str = "warn";

/// The W3C trace-context headers.
pub const TRACE_HEADERS: [&str; 2] = ["traceparent", "tracestate"];

/// How log lines are written.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, clap::ValueEnum)]
pub enum LogFormat {
    /// One human-readable line per event.
    #[default]
    Text,
    /// One JSON object per event, with the fields of its spans (`trace_id` among them).
    Json,
}

/// Whether spans are exported (an OpenTelemetry layer is installed).
static EXPORTING: OnceLock<bool> = OnceLock::new();

/// Whether a log line may print a request's or an event's span, and so its `trace_id` and
/// `span_id`: JSON logs print the current span whatever its level; text logs print a span only
/// when `RUST_LOG` enables it, and those spans are `info`.
static LOGGED_IDS: OnceLock<bool> = OnceLock::new();

/// The exporter's provider, flushed by [`Telemetry::shutdown`].
pub struct Telemetry {
    provider: Option<SdkTracerProvider>,
}

impl Telemetry {
    /// Exports what is still buffered and stops the exporter (at exit).
    pub fn shutdown(self) {
        if let Some(provider) = self.provider {
            if let Err(err) = provider.force_flush() {
                eprintln!("warning: exporting the last spans failed: {err}");
            }
            let _ = provider.shutdown();
        }
    }
}

/// Installs the global subscriber with [`DEFAULT_FILTER`], text logs. Calling it again is
/// harmless (the first one stays).
pub fn init() -> Telemetry {
    init_with(DEFAULT_FILTER, LogFormat::Text)
}

/// Installs the global subscriber, filtered by `RUST_LOG` or else by `default`, writing
/// `format`, and exporting spans when the OTLP endpoint variables say where. Must run outside
/// an async runtime (the exporter's HTTP client is a blocking one, on a thread of its own).
pub fn init_with(default: &str, format: LogFormat) -> Telemetry {
    let directives = std::env::var("RUST_LOG")
        .ok()
        .filter(|directives| !directives.trim().is_empty())
        .unwrap_or_else(|| default.to_owned());
    let ansi = std::io::stderr().is_terminal();
    // One filter serves both layers ([`ExportFilter`]): tracing-subscriber's per-layer
    // filters, tried here, lost log lines and spans of events handled on other threads.
    let fmt = match format {
        LogFormat::Text => TextLogs {
            inner: tracing_subscriber::fmt::layer()
                .with_writer(std::io::stderr)
                .with_ansi(ansi),
            logs: EnvFilter::new(&directives),
        }
        .boxed(),
        LogFormat::Json => tracing_subscriber::fmt::layer()
            .json()
            .with_current_span(true)
            .with_span_list(false)
            .with_writer(std::io::stderr)
            .boxed(),
    };
    let provider = match exporter() {
        Ok(provider) => provider,
        Err(err) => {
            eprintln!("warning: spans will not be exported: {err}");
            None
        }
    };
    let filter = ExportFilter {
        logs: EnvFilter::new(&directives),
        exporting: provider.is_some(),
    };
    let otel = provider.as_ref().map(|provider| {
        // Per span only what a trace needs: no source location or thread attributes, no
        // busy/idle timing, and no OpenTelemetry context activated at each poll (the host
        // reads a span's context through tracing, not from OpenTelemetry's current context).
        tracing_opentelemetry::layer()
            .with_tracer(provider.tracer("agora"))
            .with_tracked_inactivity(false)
            .with_location(false)
            .with_threads(false)
            .with_context_activation(false)
    });
    let logs_info = EnvFilter::new(&directives)
        .max_level_hint()
        .is_none_or(|level| level >= tracing::level_filters::LevelFilter::INFO);
    let _ = LOGGED_IDS.set(format == LogFormat::Json || logs_info);
    let installed = tracing_subscriber::registry()
        .with(filter)
        .with(fmt)
        .with(otel)
        .try_init()
        .is_ok();
    let exporting = installed && provider.is_some();
    let _ = EXPORTING.set(exporting);
    if exporting {
        opentelemetry::global::set_text_map_propagator(TraceContextPropagator::new());
        agora_capability::set_trace_headers(current_headers);
    }
    Telemetry {
        provider: provider.filter(|_| exporting),
    }
}

/// The global filter: `RUST_LOG`'s directives (for the logs), and, when traces are exported,
/// every span of agora's own crates whatever the log level — the request and event spans
/// (`info`) and the capability calls' (`debug`, [`agora_capability::SPAN_TARGET`]). Without
/// an exporter those are disabled at their call site unless the log level asks for them, and
/// cost nothing. Events (log lines) always follow `RUST_LOG` alone.
struct ExportFilter {
    logs: EnvFilter,
    exporting: bool,
}

impl ExportFilter {
    fn exported(&self, metadata: &tracing::Metadata<'_>) -> bool {
        self.exporting
            && metadata.is_span()
            && metadata.level() <= &tracing::Level::DEBUG
            && metadata.target().starts_with("agora")
    }
}

impl<S> tracing_subscriber::Layer<S> for ExportFilter
where
    S: tracing::Subscriber + for<'a> tracing_subscriber::registry::LookupSpan<'a>,
{
    fn register_callsite(
        &self,
        metadata: &'static tracing::Metadata<'static>,
    ) -> tracing::subscriber::Interest {
        if self.exported(metadata) {
            return tracing::subscriber::Interest::always();
        }
        <EnvFilter as tracing_subscriber::Layer<S>>::register_callsite(&self.logs, metadata)
    }

    fn enabled(
        &self,
        metadata: &tracing::Metadata<'_>,
        context: tracing_subscriber::layer::Context<'_, S>,
    ) -> bool {
        self.exported(metadata)
            || <EnvFilter as tracing_subscriber::Layer<S>>::enabled(&self.logs, metadata, context)
    }

    fn max_level_hint(&self) -> Option<tracing::level_filters::LevelFilter> {
        let logs = <EnvFilter as tracing_subscriber::Layer<S>>::max_level_hint(&self.logs);
        if self.exporting {
            logs.map(|level| level.max(tracing::level_filters::LevelFilter::DEBUG))
        } else {
            logs
        }
    }

    fn on_new_span(
        &self,
        attributes: &tracing::span::Attributes<'_>,
        id: &tracing::span::Id,
        context: tracing_subscriber::layer::Context<'_, S>,
    ) {
        self.logs.on_new_span(attributes, id, context);
    }

    fn on_record(
        &self,
        id: &tracing::span::Id,
        values: &tracing::span::Record<'_>,
        context: tracing_subscriber::layer::Context<'_, S>,
    ) {
        self.logs.on_record(id, values, context);
    }

    fn on_enter(&self, id: &tracing::span::Id, context: tracing_subscriber::layer::Context<'_, S>) {
        self.logs.on_enter(id, context);
    }

    fn on_exit(&self, id: &tracing::span::Id, context: tracing_subscriber::layer::Context<'_, S>) {
        self.logs.on_exit(id, context);
    }

    fn on_close(&self, id: tracing::span::Id, context: tracing_subscriber::layer::Context<'_, S>) {
        self.logs.on_close(id, context);
    }
}

/// The text log layer, which formats a span's fields (to print them before the messages logged
/// inside it) only when `RUST_LOG` enables the span. Spans enabled only for the exporter — the
/// capability calls' `debug` spans, and every span under `RUST_LOG=warn` — are then not
/// formatted on each request: a log line names them without their fields, as it would not
/// name them at all without an exporter. (The JSON format prints every span's fields, the
/// trace ids among them, and keeps formatting them.)
struct TextLogs<L> {
    inner: L,
    logs: EnvFilter,
}

impl<L> TextLogs<L> {
    fn logged<S>(
        &self,
        id: &tracing::span::Id,
        context: &tracing_subscriber::layer::Context<'_, S>,
    ) -> bool
    where
        S: tracing::Subscriber + for<'a> tracing_subscriber::registry::LookupSpan<'a>,
    {
        context.metadata(id).is_some_and(|metadata| {
            <EnvFilter as tracing_subscriber::Layer<S>>::enabled(
                &self.logs,
                metadata,
                context.clone(),
            )
        })
    }
}

impl<S, L> tracing_subscriber::Layer<S> for TextLogs<L>
where
    S: tracing::Subscriber + for<'a> tracing_subscriber::registry::LookupSpan<'a>,
    L: tracing_subscriber::Layer<S>,
{
    fn on_register_dispatch(&self, subscriber: &tracing::Dispatch) {
        self.inner.on_register_dispatch(subscriber);
    }

    fn on_layer(&mut self, subscriber: &mut S) {
        self.inner.on_layer(subscriber);
    }

    fn on_new_span(
        &self,
        attributes: &tracing::span::Attributes<'_>,
        id: &tracing::span::Id,
        context: tracing_subscriber::layer::Context<'_, S>,
    ) {
        if self.logged(id, &context) {
            self.inner.on_new_span(attributes, id, context);
        }
    }

    fn on_record(
        &self,
        id: &tracing::span::Id,
        values: &tracing::span::Record<'_>,
        context: tracing_subscriber::layer::Context<'_, S>,
    ) {
        if self.logged(id, &context) {
            self.inner.on_record(id, values, context);
        }
    }

    fn on_event(
        &self,
        event: &tracing::Event<'_>,
        context: tracing_subscriber::layer::Context<'_, S>,
    ) {
        self.inner.on_event(event, context);
    }

    fn on_enter(&self, id: &tracing::span::Id, context: tracing_subscriber::layer::Context<'_, S>) {
        self.inner.on_enter(id, context);
    }

    fn on_exit(&self, id: &tracing::span::Id, context: tracing_subscriber::layer::Context<'_, S>) {
        self.inner.on_exit(id, context);
    }

    fn on_close(&self, id: tracing::span::Id, context: tracing_subscriber::layer::Context<'_, S>) {
        self.inner.on_close(id, context);
    }

    unsafe fn downcast_raw(&self, id: std::any::TypeId) -> Option<*const ()> {
        if id == std::any::TypeId::of::<Self>() {
            return Some(self as *const Self as *const ());
        }
        // SAFETY: forwarded as is; the inner layer answers for its own types.
        unsafe { self.inner.downcast_raw(id) }
    }
}

/// The tracer provider exporting over OTLP, when an endpoint is configured.
fn exporter() -> Result<Option<SdkTracerProvider>, String> {
    let set = |name: &str| std::env::var(name).is_ok_and(|value| !value.trim().is_empty());
    if std::env::var("OTEL_SDK_DISABLED").is_ok_and(|value| value.eq_ignore_ascii_case("true"))
        || !(set("OTEL_EXPORTER_OTLP_ENDPOINT") || set("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT"))
    {
        return Ok(None);
    }
    // The standard default, protobuf: the crate's own default is JSON whenever its JSON
    // support is built in (pretty-printed, and costly at a span per request).
    let protocol = std::env::var("OTEL_EXPORTER_OTLP_TRACES_PROTOCOL")
        .or_else(|_| std::env::var("OTEL_EXPORTER_OTLP_PROTOCOL"))
        .unwrap_or_default();
    let protocol = match protocol.trim() {
        "" | "http/protobuf" => opentelemetry_otlp::Protocol::HttpBinary,
        "http/json" => opentelemetry_otlp::Protocol::HttpJson,
        other => {
            return Err(format!(
                "OTEL_EXPORTER_OTLP_PROTOCOL={other} is not supported: use http/protobuf \
                 (the default) or http/json"
            ));
        }
    };
    let exporter = opentelemetry_otlp::SpanExporter::builder()
        .with_http()
        .with_protocol(protocol)
        .build()
        .map_err(|err| format!("OTLP exporter: {err}"))?;
    let mut resource = opentelemetry_sdk::Resource::builder();
    if !set("OTEL_SERVICE_NAME") {
        resource = resource.with_service_name("agora");
    }
    let resource = resource
        .with_attribute(opentelemetry::KeyValue::new(
            "service.version",
            env!("CARGO_PKG_VERSION"),
        ))
        .build();
    Ok(Some(
        SdkTracerProvider::builder()
            .with_batch_exporter(exporter)
            .with_resource(resource)
            .build(),
    ))
}

/// Whether spans are exported.
pub fn exporting() -> bool {
    EXPORTING.get().copied().unwrap_or(false)
}

/// Makes `span` continue the trace whose context `headers` carry (a request's or a
/// message's), and records its ids in the span's `trace_id` and `span_id` fields when a log
/// line may show them.
/// Does nothing when spans are not exported.
pub fn continue_from<'h>(
    span: &tracing::Span,
    headers: impl IntoIterator<Item = (&'h str, &'h str)>,
) {
    if !exporting() {
        return;
    }
    let carrier = Carrier(
        headers
            .into_iter()
            .filter(|(name, _)| {
                TRACE_HEADERS
                    .iter()
                    .any(|trace| name.eq_ignore_ascii_case(trace))
            })
            .map(|(name, value)| (name.to_ascii_lowercase(), value.to_owned()))
            .collect(),
    );
    let parent = TraceContextPropagator::new().extract(&carrier);
    if parent.span().span_context().is_valid() {
        let _ = span.set_parent(parent);
    }
    // The ids are for the log lines (the exported span has them already): not recorded when
    // no log line can print them.
    if LOGGED_IDS.get().copied().unwrap_or(true) {
        let context = span.context();
        let ids = context.span().span_context().clone();
        span.record("trace_id", tracing::field::display(ids.trace_id()));
        span.record("span_id", tracing::field::display(ids.span_id()));
    }
}

/// The trace-context headers of the current span, to send with what it causes (an
/// in-process call, a message); empty when spans are not exported.
pub fn current_headers() -> Vec<(String, String)> {
    if !exporting() {
        return Vec::new();
    }
    let context = tracing::Span::current().context();
    let mut carrier = Carrier(Vec::new());
    TraceContextPropagator::new().inject_context(&context, &mut carrier);
    carrier.0
}

/// Header pairs, as the propagator reads and writes them.
struct Carrier(Vec<(String, String)>);

impl Extractor for Carrier {
    fn get(&self, key: &str) -> Option<&str> {
        self.0
            .iter()
            .find(|(name, _)| name == key)
            .map(|(_, value)| value.as_str())
    }

    fn keys(&self) -> Vec<&str> {
        self.0.iter().map(|(name, _)| name.as_str()).collect()
    }
}

impl Injector for Carrier {
    fn set(&mut self, key: &str, value: String) {
        self.0.push((key.to_owned(), value));
    }
}
