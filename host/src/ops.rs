//! The operations listener (`--metrics-listen`): what probes and Prometheus ask, without a
//! token, so it belongs on an address only the operator's network reaches — never the public
//! listener's.
//!
//! - `GET /metrics`: the Prometheus text exposition ([`crate::metrics`]) plus what is read when
//!   scraped: the version each component serves, its instances in use, its capability units'
//!   counters (the cache's hits and misses), readiness and draining, the process's own.
//! - `GET /healthz`: 200 while the process answers (liveness).
//! - `GET /readyz`: 200 when every component is loaded, the host is serving and each backend
//!   answers within a second; 503 with the reasons otherwise, and from the moment the host
//!   starts draining (so a load balancer stops sending before the listener closes).

use crate::metrics::{self, Exposition};
use crate::response::{ResponseBody, json_response};
use crate::swap::Components;
use bytes::Bytes;
use futures::future::BoxFuture;
use http::{HeaderValue, Method, Request, Response, StatusCode};
use http_body_util::BodyExt as _;
use hyper::body::Incoming;
use serde_json::json;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;
use tokio::net::TcpListener;

/// How long one backend's readiness check may take.
const PROBE_TIMEOUT: Duration = Duration::from_secs(1);

/// A readiness check of one backend: `Err` says why it is not usable.
pub type Probe = Arc<dyn Fn() -> BoxFuture<'static, Result<(), String>> + Send + Sync>;

/// The probe that runs `check` on `target` each time it is asked.
pub fn probe<T, F, Fut, E>(target: T, check: F) -> Probe
where
    T: Clone + Send + Sync + 'static,
    F: Fn(T) -> Fut + Send + Sync + 'static,
    Fut: std::future::Future<Output = Result<(), E>> + Send + 'static,
    E: std::fmt::Display,
{
    Arc::new(move || {
        let checked = check(target.clone());
        Box::pin(async move { checked.await.map_err(|err| err.to_string()) })
    })
}

/// What the listener reads.
pub struct OpsState {
    components: Arc<Components>,
    probes: Vec<(String, Probe)>,
    serving: Arc<AtomicBool>,
    draining: Arc<AtomicBool>,
}

impl OpsState {
    /// The state of a host serving `components`, ready when `serving` and every probe pass,
    /// unready once `draining`.
    pub fn new(
        components: Arc<Components>,
        probes: Vec<(String, Probe)>,
        serving: Arc<AtomicBool>,
        draining: Arc<AtomicBool>,
    ) -> OpsState {
        OpsState {
            components,
            probes,
            serving,
            draining,
        }
    }

    async fn handle(&self, request: Request<Incoming>) -> Response<ResponseBody> {
        let path = request.uri().path();
        if request.method() != Method::GET && request.method() != Method::HEAD {
            let mut response = json_response(
                StatusCode::METHOD_NOT_ALLOWED,
                &json!({ "error": { "code": "method_not_allowed", "message": "only GET" } }),
            );
            response
                .headers_mut()
                .insert(http::header::ALLOW, HeaderValue::from_static("GET, HEAD"));
            return response;
        }
        match path {
            "/healthz" => json_response(StatusCode::OK, &json!({ "status": "ok" })),
            "/readyz" => {
                let reasons = self.unready().await;
                if reasons.is_empty() {
                    json_response(StatusCode::OK, &json!({ "status": "ready" }))
                } else {
                    json_response(
                        StatusCode::SERVICE_UNAVAILABLE,
                        &json!({ "status": "not ready", "reasons": reasons }),
                    )
                }
            }
            "/metrics" => {
                let ready = self.unready().await.is_empty();
                text_response(self.exposition(ready))
            }
            _ => json_response(
                StatusCode::NOT_FOUND,
                &json!({ "error": { "code": "not_found", "message": format!("no endpoint {path}; try /metrics, /healthz or /readyz") } }),
            ),
        }
    }

    /// Why the host is not ready (empty: it is).
    async fn unready(&self) -> Vec<String> {
        if self.draining.load(Ordering::Relaxed) {
            return vec!["draining".into()];
        }
        let mut reasons = Vec::new();
        if !self.serving.load(Ordering::Relaxed) {
            reasons.push("not serving yet".into());
        }
        let checks = self.probes.iter().map(|(name, probe)| {
            let probe = probe.clone();
            async move {
                match tokio::time::timeout(PROBE_TIMEOUT, probe()).await {
                    Ok(Ok(())) => None,
                    Ok(Err(reason)) => Some(format!("{name}: {reason}")),
                    Err(_) => Some(format!(
                        "{name}: no answer within {} ms",
                        PROBE_TIMEOUT.as_millis()
                    )),
                }
            }
        });
        reasons.extend(
            futures::future::join_all(checks)
                .await
                .into_iter()
                .flatten(),
        );
        reasons
    }

    fn exposition(&self, ready: bool) -> String {
        let mut out = Exposition::default();
        metrics::metrics().expose(&mut out);
        let components: Vec<_> = self
            .components
            .slots()
            .iter()
            .map(|slot| slot.current())
            .collect();
        out.header(
            "agora_component_info",
            "gauge",
            "The version each component serves (1 per component; version: its digest's first 12 hex digits).",
        );
        for component in &components {
            out.sample(
                "agora_component_info",
                &[
                    ("component", &component.name),
                    ("version", &component.digest[..12]),
                ],
                1.0,
            );
        }
        out.header(
            "agora_instances_in_use",
            "gauge",
            "Instances of the component running now (requests and events).",
        );
        for component in &components {
            let free = component.permits.available_permits() as f64;
            let in_use = (f64::from(component.limits.concurrency) - free).max(0.0);
            out.sample(
                "agora_instances_in_use",
                &[("component", &component.name)],
                in_use,
            );
        }
        out.header(
            "agora_instances_idle",
            "gauge",
            "Reused instances waiting for their next request ([component.instances] reuse).",
        );
        for component in &components {
            out.sample(
                "agora_instances_idle",
                &[("component", &component.name)],
                component.instances.idle() as f64,
            );
        }
        out.header(
            "agora_instances_limit",
            "gauge",
            "Instances the component may run at once (limits.concurrency).",
        );
        for component in &components {
            out.sample(
                "agora_instances_limit",
                &[("component", &component.name)],
                f64::from(component.limits.concurrency),
            );
        }
        // Each capability unit's counters, `agora_<unit>_<counter>_total{component}`.
        let mut unit_counters: Vec<(String, &'static str, String, u64)> = Vec::new();
        for component in &components {
            for (unit, part) in component.capabilities.units.iter() {
                for counter in part.counters() {
                    unit_counters.push((
                        format!("agora_{unit}_{}_total", counter.name),
                        counter.help,
                        component.name.to_string(),
                        counter.value,
                    ));
                }
            }
        }
        unit_counters.sort_by(|a, b| a.0.cmp(&b.0).then_with(|| a.2.cmp(&b.2)));
        let mut previous = String::new();
        for (name, help, component, value) in &unit_counters {
            if *name != previous {
                out.header(name, "counter", help);
                previous.clone_from(name);
            }
            out.sample(name, &[("component", component)], *value as f64);
        }
        out.single(
            "agora_ready",
            "gauge",
            "1 when /readyz answers 200: components loaded, serving, backends reachable, not draining.",
            if ready { 1.0 } else { 0.0 },
        );
        out.single(
            "agora_draining",
            "gauge",
            "1 once the host has been asked to stop and is draining in-flight work.",
            if self.draining.load(Ordering::Relaxed) {
                1.0
            } else {
                0.0
            },
        );
        metrics::expose_process(&mut out);
        out.finish()
    }
}

fn text_response(text: String) -> Response<ResponseBody> {
    let mut response = Response::new(
        http_body_util::Full::new(Bytes::from(text))
            .map_err(|never| match never {})
            .boxed_unsync(),
    );
    response.headers_mut().insert(
        http::header::CONTENT_TYPE,
        HeaderValue::from_static("text/plain; version=0.0.4; charset=utf-8"),
    );
    response
}

/// Serves the operations endpoints on `listener` until `stop` turns true.
pub async fn serve(
    listener: TcpListener,
    state: Arc<OpsState>,
    limits: crate::server::ConnectionLimits,
    stop: tokio::sync::watch::Receiver<bool>,
) {
    crate::server::serve_internal(listener, "metrics", limits, stop, move |request| {
        let state = state.clone();
        async move { state.handle(request).await }
    })
    .await;
}
