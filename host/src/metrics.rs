//! The host's Prometheus metrics: one process-wide registry, written to on the request, event,
//! capability, outbox and swap paths, and read as the Prometheus text exposition format by
//! `GET /metrics` on the metrics listener (`ops.rs`).
//!
//! Counters and histograms are plain atomics behind a read-mostly map per family, keyed by
//! their label values; every label value comes from the manifest (component names, route
//! *patterns*, subscribed subjects) or from a short fixed list (methods, status classes,
//! outcomes), so the number of series is bounded by the manifest, never by what clients send.
//! Values that exist anyway (instances in use, the serving version, cache hits, readiness) are
//! read when scraped instead of being counted twice.

use std::collections::HashMap;
use std::fmt::Write as _;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, LazyLock, OnceLock, RwLock};
use std::time::Duration;

/// Upper bounds, in seconds, of the latency histograms' buckets (`+Inf` is implied).
pub const BUCKETS: [f64; 14] = [
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
];

/// A monotonically increasing count.
#[derive(Default)]
pub struct Counter(AtomicU64);

impl Counter {
    /// Adds one.
    pub fn inc(&self) {
        self.0.fetch_add(1, Ordering::Relaxed);
    }

    /// The count.
    pub fn get(&self) -> u64 {
        self.0.load(Ordering::Relaxed)
    }
}

/// A value that goes up and down (stored as `f64` bits).
#[derive(Default)]
pub struct Gauge(AtomicU64);

impl Gauge {
    /// Sets the value.
    pub fn set(&self, value: f64) {
        self.0.store(value.to_bits(), Ordering::Relaxed);
    }

    /// The value.
    pub fn get(&self) -> f64 {
        f64::from_bits(self.0.load(Ordering::Relaxed))
    }
}

/// Observations counted into [`BUCKETS`], with their count and sum.
pub struct Histogram {
    buckets: [AtomicU64; BUCKETS.len()],
    count: AtomicU64,
    sum_nanos: AtomicU64,
}

impl Default for Histogram {
    fn default() -> Self {
        Histogram {
            buckets: std::array::from_fn(|_| AtomicU64::new(0)),
            count: AtomicU64::new(0),
            sum_nanos: AtomicU64::new(0),
        }
    }
}

impl Histogram {
    /// Counts one observation of `elapsed`.
    pub fn observe(&self, elapsed: Duration) {
        let seconds = elapsed.as_secs_f64();
        // Only the first bucket that holds it is counted; the exposition adds them up.
        if let Some(index) = BUCKETS.iter().position(|bound| seconds <= *bound) {
            self.buckets[index].fetch_add(1, Ordering::Relaxed);
        }
        self.count.fetch_add(1, Ordering::Relaxed);
        let nanos = u64::try_from(elapsed.as_nanos()).unwrap_or(u64::MAX);
        self.sum_nanos.fetch_add(nanos, Ordering::Relaxed);
    }

    /// How many observations were counted.
    pub fn count(&self) -> u64 {
        self.count.load(Ordering::Relaxed)
    }
}

/// The series of one metric, one per set of label values.
pub struct Family<T, const N: usize> {
    name: &'static str,
    help: &'static str,
    labels: [&'static str; N],
    series: RwLock<Series<T, N>>,
}

impl<T: Default, const N: usize> Family<T, N> {
    fn new(name: &'static str, help: &'static str, labels: [&'static str; N]) -> Self {
        Family {
            name,
            help,
            labels,
            series: RwLock::new(HashMap::new()),
        }
    }

    /// The series of `values` (created at its first use). Keep the handle where the same
    /// labels are used again and again: a lookup hashes the values.
    pub fn with(&self, values: [&str; N]) -> Arc<T> {
        let hash = hash_of(&values);
        let same = |key: &[Box<str>; N]| key.iter().map(|k| &**k).eq(values.iter().copied());
        {
            let series = self.series.read().unwrap_or_else(|e| e.into_inner());
            if let Some(found) = series
                .get(&hash)
                .and_then(|bucket| bucket.iter().find(|(key, _)| same(key)))
            {
                return found.1.clone();
            }
        }
        let mut series = self.series.write().unwrap_or_else(|e| e.into_inner());
        let bucket = series.entry(hash).or_default();
        if let Some(found) = bucket.iter().find(|(key, _)| same(key)) {
            return found.1.clone();
        }
        let value = Arc::new(T::default());
        bucket.push((values.map(Box::from), value.clone()));
        value
    }

    fn snapshot(&self) -> Vec<([Box<str>; N], Arc<T>)> {
        let series = self.series.read().unwrap_or_else(|e| e.into_inner());
        let mut all: Vec<_> = series
            .values()
            .flatten()
            .map(|(key, value)| (key.clone(), value.clone()))
            .collect();
        all.sort_by(|a, b| a.0.cmp(&b.0));
        all
    }
}

/// The series of a family, grouped by the hash of their label values (a borrowed key of
/// owned strings cannot be looked up without allocating; a hash can).
type Series<T, const N: usize> = HashMap<u64, Vec<([Box<str>; N], Arc<T>)>>;

fn hash_of(values: &[&str]) -> u64 {
    use std::hash::{Hash as _, Hasher as _};
    let mut hasher = std::collections::hash_map::DefaultHasher::new();
    values.hash(&mut hasher);
    hasher.finish()
}

/// Every metric the host counts as it goes.
pub struct Metrics {
    /// HTTP requests answered, by component, route pattern, method and status class.
    pub http_requests: Family<Counter, 4>,
    /// Time to answer an HTTP request (edge, instance and guest), by component and route.
    pub http_duration: Family<Histogram, 2>,
    /// Time to instantiate a component for one request or event.
    pub instantiation: Family<Histogram, 1>,
    /// Requests refused because the component ran its concurrency limit of instances.
    pub concurrency_refusals: Family<Counter, 1>,
    /// Capability calls by component, capability and outcome (`ok`, `error`).
    pub capability_calls: Family<Counter, 3>,
    /// Time of one capability call, by component and capability.
    pub capability_duration: Family<Histogram, 2>,
    /// Deliveries of events by component, subscribed subject and outcome (`handled`,
    /// `retried`, `dead_lettered`).
    pub events: Family<Counter, 3>,
    /// Time to handle one delivery, by component and subscribed subject.
    pub event_duration: Family<Histogram, 2>,
    /// Rows waiting in a component's outbox, as of the relay's last look.
    pub outbox_pending: Family<Gauge, 1>,
    /// Age of the oldest row waiting in a component's outbox (the relay's lag).
    pub outbox_oldest: Family<Gauge, 1>,
    /// Requests refused by a rate limit, by component.
    pub rate_limit_refusals: Family<Counter, 1>,
    /// Requests whose credentials were refused at the edge, by reason.
    pub auth_failures: Family<Counter, 1>,
    /// Hot swaps by component and outcome (`applied`, `refused`, `failed`).
    pub swaps: Family<Counter, 2>,
}

static METRICS: LazyLock<Metrics> = LazyLock::new(|| Metrics {
    http_requests: Family::new(
        "agora_http_requests_total",
        "HTTP requests answered, by component, route pattern, method and status class.",
        ["component", "route", "method", "status_class"],
    ),
    http_duration: Family::new(
        "agora_http_request_duration_seconds",
        "Time to answer an HTTP request: edge checks, instantiation and the guest.",
        ["component", "route"],
    ),
    instantiation: Family::new(
        "agora_instantiation_duration_seconds",
        "Time to instantiate a component for one request or event.",
        ["component"],
    ),
    concurrency_refusals: Family::new(
        "agora_concurrency_refusals_total",
        "Requests refused because the component ran as many instances as its limit.",
        ["component"],
    ),
    capability_calls: Family::new(
        "agora_capability_calls_total",
        "Capability calls, by component, capability and outcome.",
        ["component", "capability", "outcome"],
    ),
    capability_duration: Family::new(
        "agora_capability_call_duration_seconds",
        "Time of one capability call.",
        ["component", "capability"],
    ),
    events: Family::new(
        "agora_events_total",
        "Event deliveries, by component, subscribed subject and outcome.",
        ["component", "subject", "outcome"],
    ),
    event_duration: Family::new(
        "agora_event_handling_duration_seconds",
        "Time to handle one event delivery.",
        ["component", "subject"],
    ),
    outbox_pending: Family::new(
        "agora_outbox_pending_rows",
        "Rows waiting in the component's outbox at the relay's last look.",
        ["component"],
    ),
    outbox_oldest: Family::new(
        "agora_outbox_oldest_pending_seconds",
        "Age of the oldest row waiting in the component's outbox at the relay's last look.",
        ["component"],
    ),
    rate_limit_refusals: Family::new(
        "agora_rate_limit_refusals_total",
        "Requests refused by a rate limit.",
        ["component"],
    ),
    auth_failures: Family::new(
        "agora_auth_failures_total",
        "Requests whose credentials the edge refused, by reason.",
        ["reason"],
    ),
    swaps: Family::new(
        "agora_swaps_total",
        "Hot swaps, by component and outcome.",
        ["component", "outcome"],
    ),
});

/// The process-wide metrics.
pub fn metrics() -> &'static Metrics {
    &METRICS
}

/// The series one component uses on every request or event, resolved when it loads.
pub struct ComponentSeries {
    /// `agora_instantiation_duration_seconds{component}`.
    pub instantiation: Arc<Histogram>,
    /// `agora_concurrency_refusals_total{component}`.
    pub refusals: Arc<Counter>,
    /// `agora_rate_limit_refusals_total{component}`.
    pub rate_limited: Arc<Counter>,
}

impl ComponentSeries {
    /// The series of `component`.
    pub fn of(component: &str) -> ComponentSeries {
        let metrics = metrics();
        ComponentSeries {
            instantiation: metrics.instantiation.with([component]),
            refusals: metrics.concurrency_refusals.with([component]),
            rate_limited: metrics.rate_limit_refusals.with([component]),
        }
    }
}

/// The meter of `capability`'s calls for `component`: its series are resolved once, here.
pub fn capability_meter(component: &str, capability: &'static str) -> agora_capability::Meter {
    let metrics = metrics();
    let ok = metrics.capability_calls.with([component, capability, "ok"]);
    let error = metrics
        .capability_calls
        .with([component, capability, "error"]);
    let duration = metrics.capability_duration.with([component, capability]);
    agora_capability::Meter::new(move |success, elapsed| {
        if success { &ok } else { &error }.inc();
        duration.observe(elapsed);
    })
}

/// The status class label of `status`: `2xx`, `4xx`, ….
pub fn status_class(status: u16) -> &'static str {
    STATUS_CLASSES[status_index(status)]
}

/// The status classes, as labelled.
const STATUS_CLASSES: [&str; 5] = ["1xx", "2xx", "3xx", "4xx", "5xx"];

/// Where `status`'s class is in [`STATUS_CLASSES`].
fn status_index(status: u16) -> usize {
    match status {
        100..=199 => 0,
        200..=299 => 1,
        300..=399 => 2,
        400..=499 => 3,
        _ => 4,
    }
}

/// The method labels: the standard methods, and `OTHER` for any other.
const METHODS: [&str; 8] = [
    "GET", "POST", "PUT", "DELETE", "PATCH", "HEAD", "OPTIONS", "OTHER",
];

/// The method label of `method`: the standard ones as they are, anything else `OTHER` (a
/// client chooses the method; the label must not let it choose the series).
pub fn method_label(method: &http::Method) -> &'static str {
    MethodLabel::of(method).as_str()
}

/// A method's label ([`method_label`]), as a series of a [`RouteSeries`] is kept under it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MethodLabel(usize);

impl MethodLabel {
    /// The label of `method`.
    pub fn of(method: &http::Method) -> MethodLabel {
        MethodLabel(match *method {
            http::Method::GET => 0,
            http::Method::POST => 1,
            http::Method::PUT => 2,
            http::Method::DELETE => 3,
            http::Method::PATCH => 4,
            http::Method::HEAD => 5,
            http::Method::OPTIONS => 6,
            _ => 7,
        })
    }

    /// The label's text.
    pub fn as_str(self) -> &'static str {
        METHODS[self.0]
    }
}

/// The HTTP series of one route of one component (`agora_http_requests_total` by method and
/// status class, `agora_http_request_duration_seconds`), each found in its family at the
/// route's first request of its kind and kept: a request then counts itself with the
/// series' own atomics, without hashing label values, taking a family's lock or cloning an
/// `Arc` (two lookups a request before; BENCHMARKS.md). A series still appears only once a
/// request of its kind was answered.
pub struct RouteSeries {
    component: Box<str>,
    route: Box<str>,
    duration: OnceLock<Arc<Histogram>>,
    requests: [[OnceLock<Arc<Counter>>; STATUS_CLASSES.len()]; METHODS.len()],
}

impl RouteSeries {
    /// The series of `route` (its pattern) of `component`.
    pub fn new(component: &str, route: &str) -> RouteSeries {
        RouteSeries {
            component: component.into(),
            route: route.into(),
            duration: OnceLock::new(),
            requests: Default::default(),
        }
    }

    /// Counts a request with `method` answered with `status` after `elapsed`.
    pub fn record(&self, method: MethodLabel, status: u16, elapsed: Duration) {
        let (method, class) = (method.0, status_index(status));
        let labels = [&*self.component, &*self.route];
        self.requests[method][class]
            .get_or_init(|| {
                metrics().http_requests.with([
                    labels[0],
                    labels[1],
                    METHODS[method],
                    STATUS_CLASSES[class],
                ])
            })
            .inc();
        self.duration
            .get_or_init(|| metrics().http_duration.with(labels))
            .observe(elapsed);
    }
}

/// The Prometheus text exposition of a metrics snapshot.
#[derive(Default)]
pub struct Exposition {
    text: String,
}

impl Exposition {
    /// Starts a metric: its HELP and TYPE lines.
    pub fn header(&mut self, name: &str, kind: &str, help: &str) {
        let _ = writeln!(self.text, "# HELP {name} {}", escape_help(help));
        let _ = writeln!(self.text, "# TYPE {name} {kind}");
    }

    /// One sample of `name` with `labels`.
    pub fn sample(&mut self, name: &str, labels: &[(&str, &str)], value: f64) {
        self.text.push_str(name);
        if !labels.is_empty() {
            self.text.push('{');
            for (i, (label, value)) in labels.iter().enumerate() {
                if i > 0 {
                    self.text.push(',');
                }
                let _ = write!(self.text, "{label}=\"{}\"", escape_value(value));
            }
            self.text.push('}');
        }
        let _ = writeln!(self.text, " {}", format_value(value));
    }

    /// A metric with a single unlabelled sample.
    pub fn single(&mut self, name: &str, kind: &str, help: &str, value: f64) {
        self.header(name, kind, help);
        self.sample(name, &[], value);
    }

    fn counters<const N: usize>(&mut self, family: &Family<Counter, N>) {
        self.header(family.name, "counter", family.help);
        for (values, counter) in family.snapshot() {
            let labels = zip(&family.labels, &values);
            self.sample(family.name, &labels, counter.get() as f64);
        }
    }

    fn gauges<const N: usize>(&mut self, family: &Family<Gauge, N>) {
        self.header(family.name, "gauge", family.help);
        for (values, gauge) in family.snapshot() {
            let labels = zip(&family.labels, &values);
            self.sample(family.name, &labels, gauge.get());
        }
    }

    fn histograms<const N: usize>(&mut self, family: &Family<Histogram, N>) {
        self.header(family.name, "histogram", family.help);
        let bucket = format!("{}_bucket", family.name);
        let sum = format!("{}_sum", family.name);
        let count = format!("{}_count", family.name);
        for (values, histogram) in family.snapshot() {
            let total = histogram.count();
            let mut cumulative = 0;
            for (bound, observed) in BUCKETS.iter().zip(&histogram.buckets) {
                cumulative += observed.load(Ordering::Relaxed);
                let le = format_value(*bound);
                let mut labels = zip(&family.labels, &values);
                labels.push(("le", &le));
                // A bucket read after `count` may hold observations `count` missed; the
                // exposition must never show a bucket above the +Inf one.
                self.sample(&bucket, &labels, cumulative.min(total) as f64);
            }
            let mut labels = zip(&family.labels, &values);
            labels.push(("le", "+Inf"));
            self.sample(&bucket, &labels, total as f64);
            labels.pop();
            let seconds = histogram.sum_nanos.load(Ordering::Relaxed) as f64 / 1e9;
            self.sample(&sum, &labels, seconds);
            self.sample(&count, &labels, total as f64);
        }
    }

    /// The text.
    pub fn finish(self) -> String {
        self.text
    }
}

fn zip<'a, const N: usize>(
    names: &'a [&'static str; N],
    values: &'a [Box<str>; N],
) -> Vec<(&'a str, &'a str)> {
    names
        .iter()
        .zip(values.iter())
        .map(|(name, value)| (*name, &**value))
        .collect()
}

fn escape_value(value: &str) -> String {
    value
        .replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}

fn escape_help(help: &str) -> String {
    help.replace('\\', "\\\\").replace('\n', "\\n")
}

fn format_value(value: f64) -> String {
    if value.is_infinite() {
        if value > 0.0 { "+Inf" } else { "-Inf" }.to_owned()
    } else if value.is_nan() {
        "NaN".to_owned()
    } else {
        value.to_string()
    }
}

impl Metrics {
    /// Writes every counted metric to `out`.
    pub fn expose(&self, out: &mut Exposition) {
        out.counters(&self.http_requests);
        out.histograms(&self.http_duration);
        out.histograms(&self.instantiation);
        out.counters(&self.concurrency_refusals);
        out.counters(&self.capability_calls);
        out.histograms(&self.capability_duration);
        out.counters(&self.events);
        out.histograms(&self.event_duration);
        out.gauges(&self.outbox_pending);
        out.gauges(&self.outbox_oldest);
        out.counters(&self.rate_limit_refusals);
        out.counters(&self.auth_failures);
        out.counters(&self.swaps);
    }
}

/// The process's own metrics from `/proc/self` (Linux): resident memory, CPU time, open file
/// descriptors and start time, under the names every Prometheus client library uses.
pub fn expose_process(out: &mut Exposition) {
    let Some(stat) = ProcessStat::read() else {
        return;
    };
    out.single(
        "process_cpu_seconds_total",
        "counter",
        "Total user and system CPU time spent in seconds.",
        stat.cpu_seconds,
    );
    out.single(
        "process_resident_memory_bytes",
        "gauge",
        "Resident memory size in bytes.",
        stat.resident_bytes,
    );
    out.single(
        "process_virtual_memory_bytes",
        "gauge",
        "Virtual memory size in bytes.",
        stat.virtual_bytes,
    );
    if let Some(start) = stat.start_time_seconds {
        out.single(
            "process_start_time_seconds",
            "gauge",
            "Start time of the process since unix epoch in seconds.",
            start,
        );
    }
    if let Ok(fds) = std::fs::read_dir("/proc/self/fd") {
        out.single(
            "process_open_fds",
            "gauge",
            "Number of open file descriptors.",
            fds.count() as f64,
        );
    }
}

struct ProcessStat {
    cpu_seconds: f64,
    resident_bytes: f64,
    virtual_bytes: f64,
    start_time_seconds: Option<f64>,
}

impl ProcessStat {
    fn read() -> Option<ProcessStat> {
        let stat = std::fs::read_to_string("/proc/self/stat").ok()?;
        // The command name (field 2) is in parentheses and may hold spaces: fields are
        // counted after its closing one.
        let rest = &stat[stat.rfind(')')? + 2..];
        let fields: Vec<&str> = rest.split_whitespace().collect();
        // Field numbers as in proc(5), minus 3 (pid, comm and state come before `rest`'s 0).
        let field = |n: usize| fields.get(n - 3).and_then(|v| v.parse::<f64>().ok());
        // SAFETY: sysconf only reads a configuration value.
        let ticks = unsafe { libc::sysconf(libc::_SC_CLK_TCK) } as f64;
        // SAFETY: as above.
        let page = unsafe { libc::sysconf(libc::_SC_PAGESIZE) } as f64;
        let cpu_seconds = (field(14)? + field(15)?) / ticks;
        let virtual_bytes = field(23)?;
        let resident_bytes = field(24)? * page;
        let boot = std::fs::read_to_string("/proc/stat").ok().and_then(|s| {
            s.lines()
                .find_map(|line| line.strip_prefix("btime "))
                .and_then(|v| v.trim().parse::<f64>().ok())
        });
        let start_time_seconds = boot
            .zip(field(22))
            .map(|(boot, start)| boot + start / ticks);
        Some(ProcessStat {
            cpu_seconds,
            resident_bytes,
            virtual_bytes,
            start_time_seconds,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_histogram_is_cumulative_and_ends_with_its_count() {
        let family: Family<Histogram, 1> = Family::new("t_seconds", "help", ["component"]);
        let series = family.with(["a"]);
        series.observe(Duration::from_micros(300));
        series.observe(Duration::from_millis(30));
        series.observe(Duration::from_secs(60));
        let mut out = Exposition::default();
        out.histograms(&family);
        let text = out.finish();
        assert!(text.contains("t_seconds_bucket{component=\"a\",le=\"0.0005\"} 1\n"));
        assert!(text.contains("t_seconds_bucket{component=\"a\",le=\"0.05\"} 2\n"));
        assert!(text.contains("t_seconds_bucket{component=\"a\",le=\"10\"} 2\n"));
        assert!(text.contains("t_seconds_bucket{component=\"a\",le=\"+Inf\"} 3\n"));
        assert!(text.contains("t_seconds_count{component=\"a\"} 3\n"));
        assert!(text.contains("t_seconds_sum{component=\"a\"} 60.0303\n"));
    }

    #[test]
    fn label_values_are_escaped_and_series_are_shared() {
        let family: Family<Counter, 1> = Family::new("t_total", "help", ["route"]);
        family.with(["/a\"b\\c\nd"]).inc();
        family.with(["/a\"b\\c\nd"]).inc();
        let mut out = Exposition::default();
        out.counters(&family);
        assert!(
            out.finish()
                .contains("t_total{route=\"/a\\\"b\\\\c\\nd\"} 2\n")
        );
    }

    #[test]
    fn a_route_counts_into_the_families_series_and_creates_them_at_first_use() {
        // Labels no other test uses: the registry is process-wide.
        let (component, route) = ("route-series-test", "/route-series/...");
        let requests = |method, class| {
            let key = [component, route, method, class];
            let series = metrics().http_requests.snapshot();
            series
                .iter()
                .find(|(labels, _)| labels.iter().map(|l| &**l).eq(key))
                .map(|(_, counter)| counter.get())
        };
        let series = RouteSeries::new(component, route);
        assert_eq!(requests("GET", "2xx"), None, "no series before a request");
        let get = MethodLabel::of(&http::Method::GET);
        series.record(get, 200, Duration::from_millis(2));
        series.record(get, 204, Duration::from_millis(3));
        let brew = http::Method::from_bytes(b"BREW").expect("a valid method token");
        series.record(MethodLabel::of(&brew), 503, Duration::from_millis(4));
        assert_eq!(requests("GET", "2xx"), Some(2));
        assert_eq!(requests("OTHER", "5xx"), Some(1));
        assert_eq!(requests("GET", "5xx"), None);
        let duration = metrics().http_duration.with([component, route]);
        assert_eq!(duration.count(), 3);
        // The same series as a lookup in the family gives: counted there too.
        metrics()
            .http_requests
            .with([component, route, "GET", "2xx"])
            .inc();
        assert_eq!(requests("GET", "2xx"), Some(3));
    }

    #[test]
    fn methods_outside_the_standard_ones_share_one_label() {
        let custom = http::Method::from_bytes(b"BREW").expect("a valid method token");
        assert_eq!(method_label(&custom), "OTHER");
        assert_eq!(method_label(&http::Method::GET), "GET");
        assert_eq!(status_class(503), "5xx");
        assert_eq!(status_class(204), "2xx");
    }

    #[test]
    fn the_process_reads_its_own_memory() {
        let stat = ProcessStat::read().expect("/proc/self/stat");
        assert!(stat.resident_bytes > 0.0);
        assert!(stat.cpu_seconds >= 0.0);
        assert!(stat.start_time_seconds.is_some());
    }
}
