//! One OpenTelemetry trace from HTTP through NATS to every component: the real binary serves
//! the shop of agora.toml on PostgreSQL, Redis and NATS, exporting spans over OTLP/HTTP (JSON)
//! to a receiver this test runs. An order placed with a `traceparent` of the test's own must
//! come back as one trace: the order request continuing the test's span, the catalog's
//! in-process reservation, `order.created` handled by payment and notification,
//! `payment.succeeded` by order, `order.paid` by notification — each span's parent inside the
//! trace. The JSON log lines carry the same trace id.

#![allow(clippy::unwrap_used)]

mod common;

use common::process::Agora;
use serde_json::{Value, json};
use std::collections::HashMap;
use std::io::{BufRead as _, BufReader, Read as _, Write as _};
use std::net::TcpListener;
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// An OTLP/HTTP receiver: every body POSTed to it, parsed as JSON.
fn receiver() -> (String, Arc<Mutex<Vec<Value>>>) {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    let bodies = Arc::new(Mutex::new(Vec::new()));
    let kept = bodies.clone();
    std::thread::spawn(move || {
        for stream in listener.incoming().map_while(Result::ok) {
            let kept = kept.clone();
            std::thread::spawn(move || serve_otlp(stream, &kept));
        }
    });
    (format!("http://{addr}"), bodies)
}

/// Answers the requests of one keep-alive connection, keeping each body.
fn serve_otlp(stream: std::net::TcpStream, kept: &Mutex<Vec<Value>>) {
    let mut reader = BufReader::new(stream.try_clone().unwrap());
    let mut writer = stream;
    loop {
        let mut length = 0usize;
        let mut line = String::new();
        if reader.read_line(&mut line).unwrap_or(0) == 0 {
            return;
        }
        loop {
            line.clear();
            if reader.read_line(&mut line).unwrap_or(0) == 0 {
                return;
            }
            let header = line.trim_end();
            if header.is_empty() {
                break;
            }
            if let Some((name, value)) = header.split_once(':')
                && name.eq_ignore_ascii_case("content-length")
            {
                length = value.trim().parse().unwrap_or(0);
            }
        }
        let mut body = vec![0; length];
        if reader.read_exact(&mut body).is_err() {
            return;
        }
        if let Ok(value) = serde_json::from_slice(&body) {
            kept.lock().unwrap().push(value);
        }
        let answer =
            "HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: 2\r\n\r\n{}";
        if writer.write_all(answer.as_bytes()).is_err() {
            return;
        }
    }
}

/// One exported span, as much of it as the test reads.
#[derive(Debug, Clone)]
struct Span {
    trace: String,
    id: String,
    parent: String,
    name: String,
    attributes: HashMap<String, String>,
}

fn spans(bodies: &[Value]) -> Vec<Span> {
    let mut found = Vec::new();
    for body in bodies {
        for resource in body["resourceSpans"].as_array().into_iter().flatten() {
            for scope in resource["scopeSpans"].as_array().into_iter().flatten() {
                for span in scope["spans"].as_array().into_iter().flatten() {
                    let attributes = span["attributes"]
                        .as_array()
                        .into_iter()
                        .flatten()
                        .filter_map(|attribute| {
                            let value = &attribute["value"];
                            let text =
                                value["stringValue"]
                                    .as_str()
                                    .map(str::to_owned)
                                    .or_else(|| {
                                        value["intValue"].as_str().map(str::to_owned).or_else(
                                            || value["intValue"].as_i64().map(|n| n.to_string()),
                                        )
                                    })?;
                            Some((attribute["key"].as_str()?.to_owned(), text))
                        })
                        .collect();
                    found.push(Span {
                        trace: span["traceId"].as_str().unwrap_or("").to_owned(),
                        id: span["spanId"].as_str().unwrap_or("").to_owned(),
                        parent: span["parentSpanId"].as_str().unwrap_or("").to_owned(),
                        name: span["name"].as_str().unwrap_or("").to_owned(),
                        attributes,
                    });
                }
            }
        }
    }
    found
}

#[test]
fn one_trace_follows_an_order_from_http_through_nats_to_every_component() {
    let (Some(database_url), Some(redis_url), Some(nats_url)) = (
        common::database_url_or_skip(),
        common::redis_url_or_skip(),
        common::nats_url_or_skip(),
    ) else {
        return;
    };
    let (endpoint, bodies) = receiver();
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    let data = tempfile::tempdir().unwrap();
    let admin_email = format!("{}@trace.test", common::unique_name("admin"));
    let (private_pem, public_pem) = agora_auth::Keys::generate_ed25519_pem().unwrap();
    let agora = Agora::start(
        &root.join("agora.toml"),
        data.path(),
        &[
            ("AGORA_ADMIN_EMAIL", admin_email.as_str()),
            ("AGORA_ADMIN_PASSWORD", "trace-admin-password"),
            ("OTEL_EXPORTER_OTLP_ENDPOINT", endpoint.as_str()),
            ("OTEL_EXPORTER_OTLP_PROTOCOL", "http/json"),
            ("OTEL_BSP_SCHEDULE_DELAY", "200"),
            ("OTEL_SERVICE_NAME", "agora-trace-test"),
            // Spans are exported whatever the log level: the event spans' own target logs
            // nothing here, and they must still be in the trace.
            ("RUST_LOG", "warn,agora_host::triggers::http=info"),
            ("AGORA_AUTH_PRIVATE_KEY", private_pem.as_str()),
            ("AGORA_AUTH_PUBLIC_KEY", public_pem.as_str()),
        ],
        &[
            "--database-url",
            &database_url,
            "--redis-url",
            &redis_url,
            "--nats-url",
            &nats_url,
            "--no-fleet",
            "--log-format",
            "json",
        ],
    );
    let base = format!("http://{}", agora.addr);
    let http = reqwest::blocking::Client::new();
    let login = |email: &str, password: &str| -> String {
        let session: Value = http
            .post(format!("{base}/api/accounts/login"))
            .json(&json!({ "email": email, "password": password }))
            .send()
            .unwrap()
            .json()
            .unwrap();
        session["access_token"]
            .as_str()
            .unwrap_or_else(|| panic!("no token: {session}"))
            .to_owned()
    };
    let admin = login(&admin_email, "trace-admin-password");
    let run = common::unique_name("trace");
    let product: Value = http
        .post(format!("{base}/api/products"))
        .bearer_auth(&admin)
        .json(&json!({
            "name": format!("Kettle {run}"), "description": "Steel, 1.7 l", "price_cents": 2500,
            "sku": format!("KET-{run}"), "stock": 3, "images": [], "category": "kitchen",
        }))
        .send()
        .unwrap()
        .json()
        .unwrap();
    let product_id = product["id"].as_str().unwrap().to_owned();
    let email = format!("{run}@trace.test");
    let registered = http
        .post(format!("{base}/api/accounts/register"))
        .json(&json!({ "email": email, "password": "correct horse", "name": "Tess" }))
        .send()
        .unwrap();
    assert_eq!(registered.status(), 201);
    let customer = login(&email, "correct horse");

    // The order continues a trace the test started.
    let trace_id = uuid::Uuid::new_v4().simple().to_string();
    let client_span = &uuid::Uuid::new_v4().simple().to_string()[..16];
    let traceparent = format!("00-{trace_id}-{client_span}-01");
    let order: Value = http
        .post(format!("{base}/api/orders"))
        .bearer_auth(&customer)
        .header("traceparent", &traceparent)
        .json(
            &json!({ "items": [{ "product_id": product_id, "quantity": 1 }],
                       "payment_method": "tok_visa" }),
        )
        .send()
        .unwrap()
        .json()
        .unwrap();
    let order_id = order["id"]
        .as_str()
        .unwrap_or_else(|| panic!("{order}"))
        .to_owned();
    // A request the edge refuses (no token), in the same trace.
    let refused = http
        .get(format!("{base}/api/orders/{order_id}"))
        .header("traceparent", &traceparent)
        .send()
        .unwrap();
    assert_eq!(refused.status(), 401);
    // Reads of the product in the same trace, which the catalog's first look sees: the first
    // may pass (nothing cached yet), a later one is answered from the cache.
    for _ in 0..3 {
        let read = http
            .get(format!("{base}/api/products/{product_id}"))
            .header("traceparent", &traceparent)
            .send()
            .unwrap();
        assert_eq!(read.status(), 200);
    }
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let seen: Value = http
            .get(format!("{base}/api/notifications?page_size=10"))
            .bearer_auth(&customer)
            .send()
            .unwrap()
            .json()
            .unwrap();
        let kinds: Vec<&str> = seen["items"]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(|n| n["type"].as_str())
            .collect();
        if kinds.contains(&"order.paid") && kinds.contains(&"order.created") {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "order {order_id} not paid and notified in 30 s: {seen}"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    // The last spans are exported at the drain's end.
    let (code, log) = agora.stop(libc::SIGTERM);
    assert_eq!(code, Some(0), "{log}");

    let all = spans(&bodies.lock().unwrap());
    let trace: Vec<&Span> = all.iter().filter(|span| span.trace == trace_id).collect();
    let described: Vec<String> = trace
        .iter()
        .map(|span| {
            format!(
                "{} {} <- {} [{}]",
                span.id,
                span.name,
                span.parent,
                span.attributes.get("component").map_or("", String::as_str)
            )
        })
        .collect();
    let find = |name: &str, component: &str| -> &Span {
        trace
            .iter()
            .copied()
            .find(|span| {
                span.name == name
                    && span.attributes.get("component").map(String::as_str) == Some(component)
            })
            .unwrap_or_else(|| {
                let elsewhere: Vec<String> = all
                    .iter()
                    .filter(|span| span.name == name)
                    .map(|span| format!("{} {} <- {} in {}", span.id, span.name, span.parent, span.trace))
                    .collect();
                panic!(
                    "no span {name:?} of {component} in trace {trace_id} ({} spans exported in all):\n{}\nspans of that name elsewhere:\n{}",
                    all.len(),
                    described.join("\n"),
                    elsewhere.join("\n")
                )
            })
    };
    let placed = find("POST /api/orders", "order");
    assert_eq!(
        placed.parent, client_span,
        "the request continues the caller's span"
    );
    assert_eq!(
        placed
            .attributes
            .get("http.response.status_code")
            .map(String::as_str),
        Some("201")
    );
    // The steps inside a request: how long instantiation took, and the edge's refusal.
    let instantiation_us = placed
        .attributes
        .get("agora.instantiation_us")
        .unwrap_or_else(|| panic!("no instantiation time on {placed:?}"));
    assert!(
        instantiation_us.parse::<u64>().is_ok(),
        "{instantiation_us}"
    );
    assert!(!placed.attributes.contains_key("agora.edge"), "{placed:?}");
    // The first look: absent for a request with a body; on the reads, what it did.
    assert!(
        !placed.attributes.contains_key("agora.first_look"),
        "{placed:?}"
    );
    let reads: Vec<&Span> = trace
        .iter()
        .copied()
        .filter(|span| span.name == "GET /api/products/..." && span.parent == client_span)
        .collect();
    let looks: Vec<&str> = reads
        .iter()
        .map(|span| {
            span.attributes
                .get("agora.first_look")
                .map_or("absent", String::as_str)
        })
        .collect();
    assert_eq!(looks.len(), 3, "{}", described.join("\n"));
    assert!(
        looks
            .iter()
            .all(|look| ["answered", "cached", "passed"].contains(look)),
        "{looks:?}"
    );
    // The catalog answers a product with its cached value, which the host reads.
    assert!(looks.contains(&"cached"), "{looks:?}");
    let refusal = trace
        .iter()
        .find(|span| span.attributes.get("agora.edge").map(String::as_str) == Some("refused"))
        .unwrap_or_else(|| panic!("no refused request in the trace:\n{}", described.join("\n")));
    assert_eq!(
        refusal
            .attributes
            .get("http.response.status_code")
            .map(String::as_str),
        Some("401")
    );
    assert!(
        !refusal.attributes.contains_key("agora.instantiation_us"),
        "a refused request instantiates nothing: {refusal:?}"
    );
    let reserved = trace
        .iter()
        .copied()
        .find(|span| {
            span.attributes.get("component").map(String::as_str) == Some("catalog")
                && span.attributes.contains_key("http.route")
        })
        .unwrap_or_else(|| panic!("no catalog request in the trace:\n{}", described.join("\n")));
    let paid_by = find("process order.created", "payment");
    let notified = find("process order.created", "notification");
    let settled = find("process payment.succeeded", "order");
    let told = find("process order.paid", "notification");

    // Every span but the requests the test sent (the order, the refused read, the product
    // reads) has its parent in the trace; each step descends from the one that caused it.
    let by_id: HashMap<&str, &Span> = trace.iter().map(|span| (span.id.as_str(), *span)).collect();
    let sent: Vec<&str> = [placed, refusal]
        .into_iter()
        .chain(reads.iter().copied())
        .map(|span| span.id.as_str())
        .collect();
    for span in &trace {
        if !sent.contains(&span.id.as_str()) {
            assert!(
                by_id.contains_key(span.parent.as_str()),
                "span {} ({}) has a parent outside the trace:\n{}",
                span.name,
                span.id,
                described.join("\n")
            );
        }
    }
    let descends = |span: &Span, ancestor: &Span| -> bool {
        let mut at = span;
        for _ in 0..64 {
            if at.id == ancestor.id {
                return true;
            }
            match by_id.get(at.parent.as_str()) {
                Some(parent) => at = parent,
                None => return false,
            }
        }
        false
    };
    for (step, cause) in [
        (reserved, placed),
        (paid_by, placed),
        (notified, placed),
        (settled, paid_by),
        (told, settled),
    ] {
        assert!(
            descends(step, cause),
            "{} of {:?} does not descend from {} of {:?}:\n{}",
            step.name,
            step.attributes.get("component"),
            cause.name,
            cause.attributes.get("component"),
            described.join("\n")
        );
    }
    let database = trace
        .iter()
        .find(|span| {
            span.attributes.get("db.system.name").map(String::as_str) == Some("postgresql")
        })
        .expect("a database span in the trace");
    assert!(descends(database, placed));
    assert_eq!(
        paid_by
            .attributes
            .get("messaging.system")
            .map(String::as_str),
        Some("nats")
    );

    // The JSON log lines name the same trace, and the span of the request they belong to.
    let logged = log
        .lines()
        .filter_map(|line| serde_json::from_str::<Value>(line).ok())
        .any(|line| {
            line["span"]["trace_id"] == json!(trace_id)
                && line["span"]["span_id"] == json!(placed.id)
                && line["span"]["component"] == "order"
        });
    assert!(
        logged,
        "no JSON log line carries trace id {trace_id} and span id {}",
        placed.id
    );
}
