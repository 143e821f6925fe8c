//! The edge, end to end over real HTTP with the real `fixture-edge` component: token checks
//! for every rejection case, role checks, internal routes and in-process calls, forged
//! identity headers, rate limits on both backends (and two hosts sharing Redis), and the
//! admin API's authentication.

#![allow(clippy::unwrap_used)]

mod common;

use agora_auth::{Claims, Keys};
use base64::Engine as _;
use common::{TestHost, TestKeys, component_table, json_error, redis_url_or_skip, unique_name};
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use serde_json::{Value, json};
use std::time::{SystemTime, UNIX_EPOCH};

const ISSUER: &str = "agora-test";
const AUDIENCE: &str = "shop";

fn test_keys() -> TestKeys {
    TestKeys::new()
}

/// The manifest of these tests: `name` (the edge fixture) with one policy of each kind, and
/// `NAME-peer` (the same fixture) with an internal route.
fn manifest(name: &str) -> String {
    let peer = format!("{name}-peer");
    let mut text = format!(
        "[auth]\nissuer = {ISSUER:?}\naudience = {AUDIENCE:?}\n\n{}",
        component_table(
            name,
            "fixture-edge",
            &["/edge/..."],
            &format!(
                "grants = {{ auth = true, http = [\"http://{peer}.agora.internal\"] }}\n\
                 [[component.policy]]\nroutes = [\"/edge/private/...\"]\naccess = \"authenticated\"\n\
                 [[component.policy]]\nroutes = [\"/edge/admin/...\"]\nroles = [\"ADMIN\"]\n\
                 [[component.policy]]\nroutes = [\"/edge/internal/...\"]\naccess = \"internal\"\n\
                 [[component.policy]]\nroutes = [\"/edge/limited\"]\nrate_limit = {{ per_ip = \"3/min\" }}\n\
                 [[component.policy]]\nroutes = [\"/edge/limited-user\"]\naccess = \"authenticated\"\n\
                 rate_limit = {{ per_subject = \"2/min\" }}\n"
            ),
        )
    );
    text.push_str(&component_table(
        &peer,
        "fixture-edge",
        &["/peer/..."],
        "grants = { auth = true }\n[[component.policy]]\nroutes = [\"/peer/internal/...\"]\naccess = \"internal\"\n\
         [[component.policy]]\nroutes = [\"/peer/internal/admin\"]\naccess = \"internal\"\nroles = [\"ADMIN\"]\n",
    ));
    text
}

async fn start(name: &str, keys: &TestKeys, redis_url: Option<&str>) -> TestHost {
    let keys = keys.keys.clone();
    let redis_url = redis_url.map(str::to_owned);
    TestHost::start_with(&manifest(name), move |config| {
        config.auth_keys = Some(keys);
        config.redis_url = redis_url;
    })
    .await
}

fn now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs()
}

/// Valid access-token claims; tests change one field to make them invalid.
fn claims(subject: &str, roles: &[&str]) -> Claims {
    common::access_claims(subject, roles, ISSUER, AUDIENCE)
}

fn sign(keys: &TestKeys, claims: &Claims) -> String {
    keys.sign(claims)
}

fn b64(bytes: &[u8]) -> String {
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes)
}

async fn get(url: &str, token: Option<&str>) -> reqwest::Response {
    let mut request = reqwest::Client::new().get(url);
    if let Some(token) = token {
        request = request.bearer_auth(token);
    }
    request.send().await.unwrap()
}

async fn post(url: &str, body: Value) -> reqwest::Response {
    reqwest::Client::new()
        .post(url)
        .json(&body)
        .send()
        .await
        .unwrap()
}

/// Issues a session through the component's auth capability.
async fn issue(host: &TestHost, subject: &str, roles: &[&str]) -> Value {
    let response = post(
        &host.url("/edge/issue"),
        json!({ "subject": subject, "roles": roles }),
    )
    .await;
    assert_eq!(response.status(), 200);
    response.json().await.unwrap()
}

/// An error answered by the component itself: `(code, message)`.
async fn component_error(response: reqwest::Response, status: u16) -> (String, String) {
    assert_eq!(response.status().as_u16(), status, "unexpected status");
    let body: Value = response.json().await.unwrap();
    (
        body["error"]["code"].as_str().unwrap().to_owned(),
        body["error"]["message"].as_str().unwrap().to_owned(),
    )
}

/// 401 with the JSON error and a Bearer challenge; returns the message.
async fn unauthorized(response: reqwest::Response) -> String {
    let challenge = response
        .headers()
        .get("www-authenticate")
        .map(|v| v.to_str().unwrap().to_owned())
        .unwrap_or_default();
    assert!(challenge.starts_with("Bearer"), "challenge: {challenge:?}");
    let (code, message, _) = json_error(response, 401).await;
    assert_eq!(code, "unauthorized");
    message
}

#[tokio::test]
async fn every_bad_token_is_refused_with_401_before_the_component_runs() {
    let keys = test_keys();
    let name = unique_name("edge");
    let host = start(&name, &keys, None).await;
    let private = host.url("/edge/private/x");

    // Missing, and not a bearer token at all.
    let message = unauthorized(get(&private, None).await).await;
    assert!(message.contains("needs a bearer token"), "{message}");
    let basic = reqwest::Client::new()
        .get(&private)
        .basic_auth("admin", Some("secret"))
        .send()
        .await
        .unwrap();
    assert!(unauthorized(basic).await.contains("Bearer <token>"));

    // Malformed.
    let message = unauthorized(get(&private, Some("not.a.jwt")).await).await;
    assert!(message.contains("malformed"), "{message}");

    // `alg: none`: a valid-looking token without a signature.
    let unsigned = format!(
        "{}.{}.",
        b64(br#"{"alg":"none","typ":"JWT"}"#),
        b64(&serde_json::to_vec(&claims("mallory", &["ADMIN"])).unwrap())
    );
    let message = unauthorized(get(&private, Some(&unsigned)).await).await;
    assert!(message.contains("algorithm"), "{message}");

    // HS256 with the public key as the secret (algorithm confusion).
    let public_pem = {
        let (_, public) = Keys::generate_ed25519_pem().unwrap();
        public
    };
    let confused = jsonwebtoken::encode(
        &Header::new(Algorithm::HS256),
        &claims("mallory", &["ADMIN"]),
        &EncodingKey::from_secret(public_pem.as_bytes()),
    )
    .unwrap();
    let message = unauthorized(get(&private, Some(&confused)).await).await;
    assert!(message.contains("algorithm"), "{message}");

    // Signed by another key.
    let other = test_keys();
    let message = unauthorized(get(&private, Some(&sign(&other, &claims("eve", &[])))).await).await;
    assert!(message.contains("signature"), "{message}");

    // Tampered: a role added to a genuine token's payload, signature kept.
    let genuine = sign(&keys, &claims("alice", &["USER"]));
    let parts: Vec<&str> = genuine.split('.').collect();
    let tampered = format!(
        "{}.{}.{}",
        parts[0],
        b64(&serde_json::to_vec(&claims("alice", &["USER", "ADMIN"])).unwrap()),
        parts[2]
    );
    let message = unauthorized(get(&private, Some(&tampered)).await).await;
    assert!(message.contains("signature"), "{message}");

    // Expired (beyond the 30 s leeway) and not yet valid.
    let mut expired = claims("alice", &[]);
    expired.iat = now() - 3600;
    expired.nbf = expired.iat;
    expired.exp = now() - 120;
    let message = unauthorized(get(&private, Some(&sign(&keys, &expired))).await).await;
    assert!(message.contains("expired"), "{message}");
    let mut early = claims("alice", &[]);
    early.nbf = now() + 3600;
    early.exp = now() + 7200;
    let message = unauthorized(get(&private, Some(&sign(&keys, &early))).await).await;
    assert!(
        message.contains("not valid yet") || message.contains("not yet"),
        "{message}"
    );

    // Another audience, another issuer.
    let mut audience = claims("alice", &[]);
    audience.aud = "another-shop".into();
    let message = unauthorized(get(&private, Some(&sign(&keys, &audience))).await).await;
    assert!(message.contains("audience"), "{message}");
    let mut issuer = claims("alice", &[]);
    issuer.iss = "someone-else".into();
    let message = unauthorized(get(&private, Some(&sign(&keys, &issuer))).await).await;
    assert!(message.contains("issuer"), "{message}");

    // A refresh token presented as an access token.
    let session = issue(&host, "alice", &["USER"]).await;
    let refresh = session["refresh_token"].as_str().unwrap();
    let message = unauthorized(get(&private, Some(refresh)).await).await;
    assert!(message.contains("refresh"), "{message}");

    // The genuine access token passes, and the component sees who it is.
    let access = session["access_token"].as_str().unwrap();
    let response = get(&private, Some(access)).await;
    assert_eq!(response.status(), 200);
    let seen: Value = response.json().await.unwrap();
    assert_eq!(seen["subject"], "alice");
    assert_eq!(seen["roles"], json!(["USER"]));
    assert!(seen["token_id"].as_str().is_some_and(|id| !id.is_empty()));

    // Revoked: after logout the session's access token is refused too.
    let logout = post(
        &host.url("/edge/logout"),
        json!({ "refresh_token": refresh }),
    )
    .await;
    assert_eq!(logout.status(), 204);
    let message = unauthorized(get(&private, Some(access)).await).await;
    assert!(message.contains("revoked"), "{message}");
    host.stop().await;
}

#[tokio::test]
async fn a_reused_refresh_token_revokes_its_whole_session() {
    let keys = test_keys();
    let name = unique_name("edge");
    let host = start(&name, &keys, None).await;
    let first = issue(&host, "bob", &["USER"]).await;
    let stolen = first["refresh_token"].as_str().unwrap().to_owned();

    let rotated = post(
        &host.url("/edge/refresh"),
        json!({ "refresh_token": stolen }),
    )
    .await;
    assert_eq!(rotated.status(), 200);
    let second: Value = rotated.json().await.unwrap();
    let access = second["access_token"].as_str().unwrap();
    assert_eq!(
        get(&host.url("/edge/private/x"), Some(access))
            .await
            .status(),
        200
    );

    // The first token again: refused, and the session it belongs to ends.
    let reuse = post(
        &host.url("/edge/refresh"),
        json!({ "refresh_token": stolen }),
    )
    .await;
    let (code, message) = component_error(reuse, 401).await;
    assert_eq!(code, "rejected", "{message}");
    assert!(
        message.contains("reuse") || message.contains("used"),
        "{message}"
    );
    let message = unauthorized(get(&host.url("/edge/private/x"), Some(access)).await).await;
    assert!(message.contains("revoked"), "{message}");
    let again = post(
        &host.url("/edge/refresh"),
        json!({ "refresh_token": second["refresh_token"] }),
    )
    .await;
    component_error(again, 401).await;
    host.stop().await;
}

#[tokio::test]
async fn roles_forged_headers_and_internal_routes() {
    let keys = test_keys();
    let name = unique_name("edge");
    let host = start(&name, &keys, None).await;
    let user = sign(&keys, &claims("carol", &["USER"]));
    let admin = sign(&keys, &claims("dave", &["USER", "ADMIN"]));

    // Role denial, and the role granted.
    let (code, message, _) =
        json_error(get(&host.url("/edge/admin/x"), Some(&user)).await, 403).await;
    assert_eq!(code, "forbidden");
    assert!(message.contains("ADMIN"), "{message}");
    unauthorized(get(&host.url("/edge/admin/x"), None).await).await;
    let response = get(&host.url("/edge/admin/x"), Some(&admin)).await;
    assert_eq!(response.status(), 200);
    assert_eq!(response.json::<Value>().await.unwrap()["subject"], "dave");

    // Identity headers sent by the client never reach the component: stripped on a public
    // route without a token, replaced by the verified identity with one.
    let forged = reqwest::Client::new()
        .get(host.url("/edge/public"))
        .header("x-agora-subject", "root")
        .header("X-Agora-Roles", "ADMIN")
        .header("x-agora-caller", "account")
        .header("x-agora-token-id", "forged")
        .send()
        .await
        .unwrap();
    assert_eq!(forged.status(), 200);
    let seen: Value = forged.json().await.unwrap();
    assert_eq!(seen["subject"], Value::Null);
    assert_eq!(seen["caller"], Value::Null);
    let headers = seen["agora_headers"].as_object().unwrap();
    assert_eq!(
        headers.keys().collect::<Vec<_>>(),
        ["x-agora-request-id"],
        "only the host's request id: {seen}"
    );
    assert_ne!(headers["x-agora-request-id"], "");
    let forged = reqwest::Client::new()
        .get(host.url("/edge/private/x"))
        .bearer_auth(&user)
        .header("x-agora-subject", "root")
        .header("x-agora-roles", "ADMIN")
        .send()
        .await
        .unwrap();
    let seen: Value = forged.json().await.unwrap();
    assert_eq!(seen["subject"], "carol");
    assert_eq!(seen["roles"], json!(["USER"]));

    // A bad token on a public route is ignored, not refused.
    let response = get(&host.url("/edge/public"), Some("garbage")).await;
    assert_eq!(response.status(), 200);
    assert_eq!(
        response.json::<Value>().await.unwrap()["subject"],
        Value::Null
    );

    // Internal routes do not exist from outside...
    let (code, _, _) =
        json_error(get(&host.url("/edge/internal/x"), Some(&admin)).await, 404).await;
    assert_eq!(code, "not_found");
    let (code, _, _) = json_error(get(&host.url("/peer/internal/x"), None).await, 404).await;
    assert_eq!(code, "not_found");

    // ...but another component reaches them in-process, with the forwarded token's identity,
    // its own name as the caller, and the header it forged stripped.
    let peer = format!("{name}-peer");
    let call = |path: &str, token: Option<&str>| {
        let url = host.url(&format!("/edge/call?target={peer}&path={path}"));
        let token = token.map(str::to_owned);
        async move { get(&url, token.as_deref()).await }
    };
    let response = call("/peer/internal/x", Some(&user)).await;
    assert_eq!(response.status(), 200);
    let outer_id = response.headers()["x-request-id"]
        .to_str()
        .unwrap()
        .to_owned();
    let outer: Value = response.json().await.unwrap();
    // The callee can tell which client request it serves a part of.
    assert_eq!(
        outer["body"]["agora_headers"]["x-agora-parent-request-id"],
        json!(outer_id),
        "{outer}"
    );
    assert_ne!(
        outer["body"]["agora_headers"]["x-agora-request-id"],
        json!(outer_id)
    );
    assert_eq!(outer["status"], 200, "{outer}");
    assert_eq!(outer["body"]["caller"], json!(name));
    assert_eq!(outer["body"]["subject"], "carol");
    assert_eq!(outer["body"]["path"], "/peer/internal/x");
    let outer: Value = call("/peer/internal/x", None).await.json().await.unwrap();
    assert_eq!(
        outer["body"]["subject"],
        Value::Null,
        "forged subject stripped: {outer}"
    );
    assert_eq!(
        outer["body"]["agora_headers"]["x-agora-caller"],
        json!(name)
    );
    // An internal route with a role checks the forwarded token like any other.
    let outer: Value = call("/peer/internal/admin", Some(&user))
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(outer["status"], 403, "{outer}");
    let outer: Value = call("/peer/internal/admin", Some(&admin))
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(outer["status"], 200, "{outer}");
    // A path the target does not serve, and a component not granted.
    let outer: Value = call("/edge/public", None).await.json().await.unwrap();
    assert_eq!(outer["status"], 404, "{outer}");
    let denied = get(
        &host.url("/edge/call?target=nobody&path=/peer/internal/x"),
        None,
    )
    .await;
    let (_, message) = component_error(denied, 502).await;
    assert!(message.contains("http-request-denied"), "{message}");
    host.stop().await;
}

/// Per-IP and per-subject buckets on one host, with `limiter` naming the backend in failures.
async fn rate_limits_hold(host: &TestHost, keys: &TestKeys) {
    for attempt in 1..=3 {
        let response = get(&host.url("/edge/limited"), None).await;
        assert_eq!(response.status(), 200, "request {attempt} of 3 allowed");
    }
    let limited = get(&host.url("/edge/limited"), None).await;
    let retry_after: u64 = limited.headers()["retry-after"]
        .to_str()
        .unwrap()
        .parse()
        .unwrap();
    assert!((1..=20).contains(&retry_after), "retry-after {retry_after}");
    let (code, message, _) = json_error(limited, 429).await;
    assert_eq!(code, "rate_limited");
    assert!(message.contains("3/min"), "{message}");
    // Other routes are not limited by that bucket.
    assert_eq!(get(&host.url("/edge/public"), None).await.status(), 200);

    let erin = sign(keys, &claims("erin", &[]));
    let frank = sign(keys, &claims("frank", &[]));
    for _ in 0..2 {
        let response = get(&host.url("/edge/limited-user"), Some(&erin)).await;
        assert_eq!(response.status(), 200);
    }
    json_error(get(&host.url("/edge/limited-user"), Some(&erin)).await, 429).await;
    // Another subject from the same address has its own bucket.
    assert_eq!(
        get(&host.url("/edge/limited-user"), Some(&frank))
            .await
            .status(),
        200
    );
}

#[tokio::test]
async fn rate_limits_in_memory() {
    let keys = test_keys();
    let host = start(&unique_name("edge"), &keys, None).await;
    rate_limits_hold(&host, &keys).await;
    host.stop().await;
}

#[tokio::test]
async fn rate_limits_in_redis_are_shared_by_two_hosts() {
    let Some(redis) = redis_url_or_skip() else {
        return;
    };
    let keys = test_keys();
    let name = unique_name("edge");
    let first = start(&name, &keys, Some(&redis)).await;
    rate_limits_hold(&first, &keys).await;

    // A second replica of the same manifest on the same Redis: it shares the buckets.
    let other = unique_name("edge");
    let a = start(&other, &keys, Some(&redis)).await;
    let b = start(&other, &keys, Some(&redis)).await;
    assert_eq!(get(&a.url("/edge/limited"), None).await.status(), 200);
    assert_eq!(get(&b.url("/edge/limited"), None).await.status(), 200);
    assert_eq!(get(&a.url("/edge/limited"), None).await.status(), 200);
    json_error(get(&b.url("/edge/limited"), None).await, 429).await;
    json_error(get(&a.url("/edge/limited"), None).await, 429).await;

    // Sessions too: a token issued through one replica and revoked through the other is
    // refused by both.
    let session = issue(&a, "grace", &["USER"]).await;
    let access = session["access_token"].as_str().unwrap();
    assert_eq!(
        get(&b.url("/edge/private/x"), Some(access)).await.status(),
        200
    );
    let logout = post(
        &b.url("/edge/logout"),
        json!({ "refresh_token": session["refresh_token"] }),
    )
    .await;
    assert_eq!(logout.status(), 204);
    unauthorized(get(&a.url("/edge/private/x"), Some(access)).await).await;
    first.stop().await;
    a.stop().await;
    b.stop().await;
}

#[tokio::test]
async fn an_unreachable_revocation_store_answers_503_and_limits_fail_open() {
    let keys = test_keys();
    let host = start(&unique_name("edge"), &keys, Some("redis://127.0.0.1:1")).await;
    let token = sign(&keys, &claims("heidi", &[]));
    let response = get(&host.url("/edge/private/x"), Some(&token)).await;
    assert_eq!(response.headers()["retry-after"], "1");
    let (code, _, _) = json_error(response, 503).await;
    assert_eq!(code, "auth_unavailable");
    // The limiter cannot count: requests beyond the limit go through.
    for _ in 0..5 {
        assert_eq!(get(&host.url("/edge/limited"), None).await.status(), 200);
    }
    host.stop().await;
}

#[tokio::test]
async fn the_admin_api_needs_the_admin_token() {
    let token = "an-admin-token-for-tests";
    let keys = test_keys();
    let name = unique_name("edge");
    let keys_for_host = keys.keys.clone();
    let host = TestHost::start_full(
        &manifest(&name),
        move |config| config.auth_keys = Some(keys_for_host),
        Some(token),
    )
    .await;
    let admin = format!("http://{}", host.admin_addr.unwrap());
    let client = reqwest::Client::new();

    for (authorization, case) in [
        (None, "no token"),
        (
            Some("Bearer wrong-token-of-some-length".to_owned()),
            "wrong token",
        ),
        (Some(format!("Bearer {token}x")), "token with a suffix"),
        (Some(format!("Basic {token}")), "another scheme"),
    ] {
        let mut request = client.get(format!("{admin}/admin/components"));
        if let Some(value) = authorization {
            request = request.header("authorization", value);
        }
        let response = request.send().await.unwrap();
        assert_eq!(response.status(), 401, "{case}");
        assert!(
            response.headers().contains_key("www-authenticate"),
            "{case}"
        );
        let body: Value = response.json().await.unwrap();
        assert_eq!(body["error"]["code"], "unauthorized", "{case}");
    }
    // Probes need no token and learn nothing.
    let health = client.get(format!("{admin}/healthz")).send().await.unwrap();
    assert_eq!(health.status(), 200);
    assert_eq!(
        health.json::<Value>().await.unwrap(),
        json!({ "status": "ok" })
    );

    let authorised = |method: reqwest::Method, path: &str| {
        client
            .request(method, format!("{admin}{path}"))
            .bearer_auth(token)
            .send()
    };
    let listed: Value = authorised(reqwest::Method::GET, "/admin/components")
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let items = listed["items"].as_array().unwrap();
    assert_eq!(items.len(), 2);
    let edge = &items[0];
    assert_eq!(edge["name"], json!(name));
    let wasm = std::fs::read(common::component("fixture-edge")).unwrap();
    let digest = {
        use sha2::Digest as _;
        hex::encode(sha2::Sha256::digest(&wasm))
    };
    assert_eq!(edge["digest"], json!(format!("sha256:{digest}")));
    assert_eq!(edge["routes"], json!(["/edge/..."]));
    assert_eq!(edge["grants"]["auth"], true);
    assert_eq!(edge["policies"][1]["roles"], json!(["ADMIN"]));
    assert_eq!(edge["policies"][3]["rate_limit"]["per_ip"], "3/min");
    assert!(edge["loaded_at"].as_str().unwrap().ends_with('Z'));

    let peer = format!("/admin/components/{name}-peer");
    for (method, path, status) in [
        (reqwest::Method::GET, peer.as_str(), 200),
        (reqwest::Method::GET, "/admin/components/nothing", 404),
        (reqwest::Method::POST, "/admin/components", 405),
    ] {
        let response = authorised(method.clone(), path).await.unwrap();
        assert_eq!(response.status(), status, "{method} {path}");
    }
    let health: Value = authorised(reqwest::Method::GET, "/admin/health")
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(health["status"], "ok");
    assert_eq!(health["components"], 2);
    assert_eq!(health["backends"]["rate_limits"], "memory");

    // The admin API is not on the public listener.
    assert_eq!(
        client
            .get(host.url("/admin/components"))
            .bearer_auth(token)
            .send()
            .await
            .unwrap()
            .status(),
        404
    );
    host.stop().await;
}

#[tokio::test]
async fn a_startup_request_runs_before_serving_and_a_failing_one_stops_the_load() {
    let keys = test_keys();
    let name = unique_name("edge");
    let good = manifest(&name).replacen(
        "routes = [\"/edge/...\"]\n",
        "routes = [\"/edge/...\"]\nstartup = \"/edge/started\"\n",
        1,
    );
    let host_keys = keys.keys.clone();
    let host = TestHost::start_with(&good, move |config| config.auth_keys = Some(host_keys)).await;
    assert_eq!(get(&host.url("/edge/public"), None).await.status(), 200);
    host.stop().await;

    // The fixture answers 400 to `POST /edge/issue` without a JSON body: the load stops,
    // quoting the answer.
    let bad = manifest(&name).replacen(
        "routes = [\"/edge/...\"]\n",
        "routes = [\"/edge/...\"]\nstartup = \"/edge/issue\"\n",
        1,
    );
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("agora.toml");
    std::fs::write(&path, bad).unwrap();
    let mut config = agora_host::HostConfig::new(&path);
    config.data_dir = common::shared_data_dir();
    config.auth_keys = Some(keys.keys.clone());
    let err = match agora_host::Host::load(&config).await {
        Ok(_) => panic!("a failing startup request must stop the load"),
        Err(err) => err.to_string(),
    };
    assert!(err.contains(&format!("component `{name}`")), "{err}");
    assert!(
        err.contains("startup POST /edge/issue answered 400"),
        "{err}"
    );
    assert!(err.contains("invalid_json"), "{err}");
    assert!(!err.contains('\n'), "{err}");
}

#[tokio::test]
async fn importing_auth_without_the_grant_is_a_load_error() {
    let name = unique_name("edge");
    let manifest = component_table(&name, "fixture-edge", &["/edge/..."], "");
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("agora.toml");
    std::fs::write(&path, manifest).unwrap();
    let mut config = agora_host::HostConfig::new(&path);
    config.data_dir = common::shared_data_dir();
    let err = match agora_host::Host::load(&config).await {
        Ok(_) => panic!("fixture-edge imports agora:platform/auth without a grant"),
        Err(err) => err.to_string(),
    };
    assert!(err.contains(&format!("component `{name}`")), "{err}");
    assert!(err.contains("imports agora:platform/auth"), "{err}");
    assert!(err.contains("grants no auth"), "{err}");
}
