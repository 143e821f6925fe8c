//! The shop's `account` component (components/account), end to end: real HTTP to a host
//! started in-process with the real account.wasm, tokens issued and checked by the host.
//!
//! Every endpoint's success and error answers run on the embedded backends, each test on a
//! fresh SQLite database; the main flow (register → event → login → me → refresh → logout)
//! also runs on PostgreSQL, Redis and NATS, where the `account` schema outlives the test, so
//! every email is unique per test. The `account.registered` event is observed on the host's
//! own message backend, through a subscription of the test's own.

#![allow(clippy::unwrap_used)]

mod common;

use agora_auth::Keys;
use agora_messaging::{Delivery, MessageHandler, MessagingBackend, Subscription, SubscriptionSpec};
use agora_sql::Value as SqlValue;
use common::shop::{Answer, Setup, Shop, ShopManifest};
use common::{Backends, unique_name};
use reqwest::Method;
use serde_json::{Value, json};
use std::sync::{Arc, OnceLock};
use std::time::Duration;
use tokio::sync::mpsc;

const PASSWORD: &str = "correct horse battery";

/// agora.toml's `account` alone, with `config` (the first admin, in tests given as config
/// rather than environment variables, which are process-wide; another argon2 cost than the
/// harness's cheap one); with `edge`, also the edge fixture at `/edge/...`, which can issue a
/// token for any subject.
fn manifest(config: &[(&str, &str)], edge: bool) -> ShopManifest {
    let mut manifest = ShopManifest::load().only(&["account"]);
    for (key, value) in config {
        manifest = manifest.config("account", key, value);
    }
    if edge {
        manifest = manifest.with(&common::component_table(
            "edge",
            "fixture-edge",
            &["/edge/..."],
            "grants = { auth = true }",
        ));
    }
    manifest
}

/// One signing key for every host of this test binary.
fn keys() -> Keys {
    static KEYS: OnceLock<Keys> = OnceLock::new();
    KEYS.get_or_init(|| {
        let (private, public) = Keys::generate_ed25519_pem().unwrap();
        Keys::ed25519_from_pem(private.as_bytes(), public.as_bytes()).unwrap()
    })
    .clone()
}

/// A shop on `backends`, signing with `keys`.
fn setup(backends: &Backends, keys: Keys) -> Setup {
    Setup::new(backends.clone()).keys(keys)
}

impl Shop {
    /// `GET /api/accounts/me`; the user.
    async fn me(&self, token: &str) -> Value {
        ok(self.get("/api/accounts/me", Some(token)).await, 200)
    }

    /// The password hash stored for the live account `email`.
    async fn stored_hash(&self, email: &str) -> String {
        let sql = self
            .host
            .component("account")
            .capabilities
            .database()
            .unwrap()
            .namespace()
            .clone();
        let rows = sql
            .query(
                "select password_hash from users where email = $1 and deleted_at is null",
                vec![SqlValue::Text(email.to_owned())],
            )
            .await
            .unwrap();
        match rows.rows.as_slice() {
            [row] => match &row[0] {
                SqlValue::Text(hash) => hash.clone(),
                other => panic!("a hash as {other:?}"),
            },
            other => panic!("{} accounts with {email}", other.len()),
        }
    }

    /// Starts observing `account.registered` on the host's own message backend.
    async fn observe(&self) -> Observer {
        let messaging = self
            .host
            .component("account")
            .capabilities
            .database()
            .and_then(|database| database.publisher())
            .unwrap()
            .backend()
            .clone();
        let name = unique_name("observer");
        let (sender, events) = mpsc::unbounded_channel();
        let subscription = messaging
            .subscribe(
                SubscriptionSpec::new(name.clone(), "account.registered"),
                Arc::new(Collect(sender)),
            )
            .await
            .unwrap();
        Observer {
            name,
            subscription,
            events,
            messaging,
        }
    }
}

/// Hands every delivery to the test.
struct Collect(mpsc::UnboundedSender<agora_messaging::Message>);

#[async_trait::async_trait]
impl MessageHandler for Collect {
    async fn handle(&self, delivery: Delivery) -> Result<(), String> {
        let _ = self.0.send(delivery.message);
        Ok(())
    }
}

/// A subscription of the test's own to `account.registered`.
struct Observer {
    name: String,
    subscription: Subscription,
    events: mpsc::UnboundedReceiver<agora_messaging::Message>,
    messaging: Arc<dyn MessagingBackend>,
}

impl Observer {
    /// The next event about one of `emails` (others' events on a shared broker are skipped),
    /// as `(headers, envelope)`; fails after a generous minute.
    async fn next_about(&mut self, emails: &[&str]) -> (Vec<(String, String)>, Value) {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
        loop {
            let message = tokio::time::timeout_at(deadline, self.events.recv())
                .await
                .expect("no account.registered event within a minute")
                .expect("the subscription ended");
            assert_eq!(message.subject, "account.registered");
            let event: Value = serde_json::from_slice(&message.payload).unwrap();
            if emails.contains(&event["data"]["email"].as_str().unwrap_or_default()) {
                return (message.headers, event);
            }
        }
    }

    /// Stops the subscription and deletes its consumer (which outlives it on NATS).
    async fn finish(self) {
        self.subscription.stop().await;
        self.messaging
            .remove_consumer(&self.name, "account.registered")
            .await
            .unwrap();
    }
}

/// The JSON of a successful answer with `status`.
fn ok(answer: Answer, status: u16) -> Value {
    answer.ok(status).clone()
}

/// Checks agora's error shape (the body's request id is the `x-request-id` header's) and
/// returns the `error` object.
fn error(answer: Answer, status: u16) -> Value {
    let header_id = answer
        .request_id()
        .map(str::to_owned)
        .expect("x-request-id header");
    let text = &answer.text;
    assert_eq!(answer.status, status, "{text}");
    let body = answer.json();
    let error = body["error"].clone();
    assert_eq!(error["request_id"], json!(header_id), "{text}");
    assert!(!header_id.is_empty());
    assert!(
        error["message"].as_str().is_some_and(|m| !m.is_empty()),
        "{text}"
    );
    error
}

/// The error's `(code, field)`.
fn code_and_field(answer: Answer, status: u16) -> (String, Option<String>) {
    let error = error(answer, status);
    (
        error["code"].as_str().unwrap().to_owned(),
        error["field"].as_str().map(str::to_owned),
    )
}

/// The host's own 401: a JSON error with a Bearer challenge, before the component ran.
fn refused_by_host(answer: Answer) {
    let challenge = answer
        .header("www-authenticate")
        .unwrap_or_default()
        .to_owned();
    assert!(challenge.starts_with("Bearer"), "challenge: {challenge:?}");
    assert_eq!(error(answer, 401)["code"], "unauthorized");
}

/// The host's own 403: the policy's role is missing, so the component never ran.
fn forbidden_by_host(answer: Answer) {
    let error = error(answer, 403);
    assert_eq!(error["code"], "forbidden");
    let message = error["message"].as_str().unwrap();
    assert!(message.contains("needs the role ADMIN"), "{message}");
}

/// An email no other test (or run, on a shared database) uses.
fn unique_email(stem: &str) -> String {
    format!(
        "{stem}-{}@shop.test",
        &uuid::Uuid::new_v4().simple().to_string()[..12]
    )
}

fn token<'a>(session: &'a Value, kind: &str) -> &'a str {
    session[kind].as_str().unwrap()
}

/// A user as answered: exactly these fields, RFC 3339 UTC times, no password hash.
fn assert_user_shape(user: &Value) {
    let mut keys: Vec<&str> = user
        .as_object()
        .unwrap()
        .keys()
        .map(String::as_str)
        .collect();
    keys.sort_unstable();
    assert_eq!(
        keys,
        [
            "created_at",
            "email",
            "id",
            "name",
            "phone",
            "role",
            "updated_at"
        ],
        "{user}"
    );
    assert!(
        uuid::Uuid::parse_str(user["id"].as_str().unwrap()).is_ok(),
        "{user}"
    );
    for at in ["created_at", "updated_at"] {
        let text = user[at].as_str().unwrap();
        assert!(
            text.len() >= 20 && text.as_bytes()[10] == b'T' && text.ends_with('Z'),
            "{at}: {text}"
        );
    }
}

/// Register → `account.registered` → sign in → me → refresh → logout, on `backends`.
async fn main_flow(backends: Backends) {
    let shop = Shop::start(&manifest(&[], false), setup(&backends, keys())).await;
    let mut observer = shop.observe().await;
    let email = unique_email("ada");

    let registered = shop
        .post(
            "/api/accounts/register",
            None,
            json!({
                "email": format!("  {}  ", email.to_uppercase()),
                "password": PASSWORD,
                "name": " Ada Lovelace ",
                "phone": "+44 20 7946 0958",
            }),
        )
        .await;
    let registered = ok(registered, 201);
    let user = &registered["user"];
    assert_user_shape(user);
    assert_eq!(user["email"], json!(email), "stored trimmed and lowercased");
    assert_eq!(user["name"], "Ada Lovelace");
    assert_eq!(user["phone"], "+44 20 7946 0958");
    assert_eq!(user["role"], "USER");
    assert_eq!(user["created_at"], user["updated_at"]);
    assert_eq!(registered["token_type"], "Bearer");
    assert!(registered["expires_in"].as_u64().unwrap() > 0);
    assert!(registered["refresh_expires_in"].as_u64().unwrap() > 0);
    assert!(!registered.to_string().contains("argon2"), "{registered}");
    let user_id = user["id"].as_str().unwrap().to_owned();

    // The event, relayed from the outbox after the commit.
    let (headers, event) = observer.next_about(&[&email]).await;
    assert_eq!(event["type"], "account.registered");
    assert_eq!(event["version"], 1);
    assert!(uuid::Uuid::parse_str(event["id"].as_str().unwrap()).is_ok());
    assert!(event["occurred_at"].as_str().unwrap().ends_with('Z'));
    assert_eq!(
        event["data"],
        json!({ "user_id": user_id, "email": email, "name": "Ada Lovelace" })
    );
    assert!(
        headers
            .iter()
            .any(|(name, value)| name == "agora-event-type" && value == "account.registered"),
        "{headers:?}"
    );

    // The registration's own token works; so does a sign-in with another spelling.
    assert_eq!(
        shop.me(token(&registered, "access_token")).await,
        registered["user"]
    );
    let session = shop.login(&email.to_uppercase(), PASSWORD).await;
    assert_eq!(session["user"], registered["user"]);
    assert_eq!(session["token_type"], "Bearer");
    let me = shop.me(token(&session, "access_token")).await;
    assert_eq!(me["id"], json!(user_id));

    // A second registration of the address publishes nothing; the next event is the next
    // account's.
    let again = shop
        .post(
            "/api/accounts/register",
            None,
            json!({ "email": email, "password": PASSWORD, "name": "Imposter" }),
        )
        .await;
    assert_eq!(code_and_field(again, 409).0, "email_taken");
    let other = unique_email("grace");
    shop.register(&other, PASSWORD, "Grace Hopper").await;
    let (_, event) = observer.next_about(&[&email, &other]).await;
    assert_eq!(event["data"]["email"], json!(other));
    observer.finish().await;

    // Refresh, then logout of the refreshed session.
    let refreshed = shop
        .post(
            "/api/accounts/refresh",
            None,
            json!({ "refresh_token": token(&session, "refresh_token") }),
        )
        .await;
    let refreshed = ok(refreshed, 200);
    assert_ne!(
        token(&refreshed, "access_token"),
        token(&session, "access_token")
    );
    assert_eq!(
        shop.me(token(&refreshed, "access_token")).await["id"],
        json!(user_id)
    );
    let logout = shop
        .post(
            "/api/accounts/logout",
            None,
            json!({ "refresh_token": token(&refreshed, "refresh_token") }),
        )
        .await;
    assert_eq!(logout.status, 204);
    refused_by_host(
        shop.get("/api/accounts/me", Some(token(&refreshed, "access_token")))
            .await,
    );
    // The registration's session is another one: still signed in.
    shop.me(token(&registered, "access_token")).await;
    shop.stop().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn register_login_me_refresh_logout_on_the_embedded_backends() {
    let data = tempfile::tempdir().unwrap();
    main_flow(Backends::embedded(data.path())).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn register_login_me_refresh_logout_on_postgres_redis_and_nats() {
    if let Some(production) = Backends::production() {
        main_flow(production).await;
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn registration_validates_every_field() {
    let data = tempfile::tempdir().unwrap();
    let shop = Shop::start(
        &manifest(&[], false),
        setup(&Backends::embedded(data.path()), keys()),
    )
    .await;
    let valid = || {
        json!({
            "email": unique_email("val"),
            "password": PASSWORD,
            "name": "Val Idation",
            "phone": "+1 (555) 010-0000",
        })
    };
    let cases: Vec<(&str, Value, &str)> = vec![
        ("email", json!(null), "missing"),
        ("email", json!(42), "not a string"),
        ("email", json!(""), "empty"),
        ("email", json!("no-at.example.com"), "no @"),
        ("email", json!("two@@example.com"), "two @"),
        ("email", json!("a@b@example.com"), "two @ apart"),
        ("email", json!("@example.com"), "empty local part"),
        ("email", json!("ada@localhost"), "no dot in the domain"),
        ("email", json!("ada lovelace@example.com"), "a space"),
        (
            "email",
            json!(format!("{}@example.com", "a".repeat(243))),
            "255 characters",
        ),
        ("password", json!(null), "missing"),
        ("password", json!("1234567"), "7 characters"),
        ("password", json!("x".repeat(257)), "257 characters"),
        ("name", json!(null), "missing"),
        ("name", json!("   "), "blank"),
        ("name", json!("n".repeat(201)), "201 characters"),
        ("phone", json!("call me maybe"), "letters"),
        ("phone", json!("1".repeat(33)), "33 characters"),
        ("phone", json!(5550100), "a number"),
    ];
    for (field, value, what) in cases {
        let mut body = valid();
        if value.is_null() {
            body.as_object_mut().unwrap().remove(field);
        } else {
            body[field] = value;
        }
        let response = shop.post("/api/accounts/register", None, body).await;
        assert_eq!(
            code_and_field(response, 400),
            ("validation_failed".into(), Some(field.into())),
            "{field}: {what}"
        );
    }

    // The limits themselves are accepted, an absent or null phone too.
    let mut longest = valid();
    longest["email"] = json!(format!("{}@example.com", "b".repeat(242)));
    longest["password"] = json!("p".repeat(256));
    longest["name"] = json!("n".repeat(200));
    longest["phone"] = json!("1".repeat(32));
    ok(
        shop.post("/api/accounts/register", None, longest).await,
        201,
    );
    let mut shortest = valid();
    shortest["password"] = json!("12345678");
    shortest.as_object_mut().unwrap().remove("phone");
    let created = ok(
        shop.post("/api/accounts/register", None, shortest).await,
        201,
    );
    assert_eq!(created["user"]["phone"], Value::Null);

    // A role in the body is not a way to become an admin.
    let mut sneaky = valid();
    sneaky["role"] = json!("ADMIN");
    let created = ok(shop.post("/api/accounts/register", None, sneaky).await, 201);
    assert_eq!(created["user"]["role"], "USER");

    // Uniqueness ignores case and surrounding spaces.
    let taken = valid();
    ok(
        shop.post("/api/accounts/register", None, taken.clone())
            .await,
        201,
    );
    let mut shouting = valid();
    shouting["email"] = json!(format!(
        " {} ",
        taken["email"].as_str().unwrap().to_uppercase()
    ));
    let response = shop.post("/api/accounts/register", None, shouting).await;
    let conflict = error(response, 409);
    assert_eq!(conflict["code"], "email_taken");

    // Bodies that are not a JSON object, and a wrong method.
    let response = shop
        .send(Method::POST, "/api/accounts/register", None, None)
        .await;
    assert_eq!(code_and_field(response, 400).0, "invalid_json");
    let response = shop
        .post("/api/accounts/register", None, json!(["a list"]))
        .await;
    assert_eq!(code_and_field(response, 400).0, "invalid_json");
    let response = shop
        .send(Method::GET, "/api/accounts/register", None, None)
        .await;
    assert_eq!(code_and_field(response, 405).0, "method_not_allowed");
    let response = shop
        .send(Method::GET, "/api/accounts/nothing", None, None)
        .await;
    assert_eq!(code_and_field(response, 404).0, "not_found");
    shop.stop().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_failed_sign_in_says_the_same_whatever_the_reason() {
    let data = tempfile::tempdir().unwrap();
    let shop = Shop::start(
        &manifest(&[], false),
        setup(&Backends::embedded(data.path()), keys()),
    )
    .await;
    let email = unique_email("same");
    shop.register(&email, PASSWORD, "Same Answer").await;
    let gone = unique_email("gone");
    let session = shop.register(&gone, PASSWORD, "Gone Soon").await;
    let deleted = shop
        .send(
            Method::DELETE,
            "/api/accounts/me",
            Some(token(&session, "access_token")),
            None,
        )
        .await;
    assert_eq!(deleted.status, 204);

    let mut answers = Vec::new();
    for (who, password) in [
        (unique_email("nobody"), PASSWORD),
        (email.clone(), "wrong password"),
        (gone.clone(), PASSWORD),
    ] {
        let response = shop
            .post(
                "/api/accounts/login",
                None,
                json!({ "email": who, "password": password }),
            )
            .await;
        let mut answer = error(response, 401);
        assert_eq!(answer["code"], "invalid_credentials", "{who}");
        answer.as_object_mut().unwrap().remove("request_id");
        answers.push(answer);
    }
    assert_eq!(answers[0], answers[1], "unknown email vs wrong password");
    assert_eq!(answers[0], answers[2], "unknown email vs deleted account");

    // A missing field is the client's mistake, not a failed sign-in.
    let response = shop
        .post("/api/accounts/login", None, json!({ "email": email }))
        .await;
    assert_eq!(
        code_and_field(response, 400),
        ("validation_failed".into(), Some("password".into()))
    );
    shop.login(&email, PASSWORD).await;
    shop.stop().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn refresh_tokens_rotate_and_a_reused_one_ends_the_session() {
    let data = tempfile::tempdir().unwrap();
    let shop = Shop::start(
        &manifest(&[], false),
        setup(&Backends::embedded(data.path()), keys()),
    )
    .await;
    let email = unique_email("rotate");
    shop.register(&email, PASSWORD, "Ro Tate").await;
    let session = shop.login(&email, PASSWORD).await;
    let first_refresh = token(&session, "refresh_token");

    let refresh = |refresh_token: String| {
        shop.post(
            "/api/accounts/refresh",
            None,
            json!({ "refresh_token": refresh_token }),
        )
    };
    let rotated = ok(refresh(first_refresh.to_owned()).await, 200);
    assert_eq!(rotated["token_type"], "Bearer");
    assert_ne!(token(&rotated, "refresh_token"), first_refresh);
    let access = token(&rotated, "access_token");
    assert_eq!(shop.me(access).await["email"], json!(email));

    // The used refresh token again: refused, and the whole session ends with it.
    let reuse = error(refresh(first_refresh.to_owned()).await, 401);
    assert_eq!(reuse["code"], "invalid_refresh_token");
    refused_by_host(shop.get("/api/accounts/me", Some(access)).await);
    let after = error(
        refresh(token(&rotated, "refresh_token").to_owned()).await,
        401,
    );
    assert_eq!(after["code"], "invalid_refresh_token");

    // Not a token at all, an access token in its place, and none.
    let garbage = error(refresh("not-a-token".into()).await, 401);
    assert_eq!(garbage["code"], "invalid_refresh_token");
    let fresh = shop.login(&email, PASSWORD).await;
    let wrong_kind = error(refresh(token(&fresh, "access_token").to_owned()).await, 401);
    assert_eq!(wrong_kind["code"], "invalid_refresh_token");
    let response = shop.post("/api/accounts/refresh", None, json!({})).await;
    assert_eq!(
        code_and_field(response, 400),
        ("validation_failed".into(), Some("refresh_token".into()))
    );
    shop.stop().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn logout_ends_that_session_only() {
    let data = tempfile::tempdir().unwrap();
    let shop = Shop::start(
        &manifest(&[], false),
        setup(&Backends::embedded(data.path()), keys()),
    )
    .await;
    let email = unique_email("logout");
    let phone = shop.register(&email, PASSWORD, "Log Out").await;
    let laptop = shop.login(&email, PASSWORD).await;

    let logout = |refresh_token: &str| {
        shop.post(
            "/api/accounts/logout",
            None,
            json!({ "refresh_token": refresh_token }),
        )
    };
    assert_eq!(logout(token(&laptop, "refresh_token")).await.status, 204);
    refused_by_host(
        shop.get("/api/accounts/me", Some(token(&laptop, "access_token")))
            .await,
    );
    let refresh = shop
        .post(
            "/api/accounts/refresh",
            None,
            json!({ "refresh_token": token(&laptop, "refresh_token") }),
        )
        .await;
    assert_eq!(error(refresh, 401)["code"], "invalid_refresh_token");
    // Logging out twice is fine; the other session goes on.
    assert_eq!(logout(token(&laptop, "refresh_token")).await.status, 204);
    shop.me(token(&phone, "access_token")).await;

    let garbage = error(logout("garbage").await, 401);
    assert_eq!(garbage["code"], "invalid_refresh_token");
    shop.stop().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn the_me_routes_need_a_token() {
    let data = tempfile::tempdir().unwrap();
    let shop = Shop::start(
        &manifest(&[], false),
        setup(&Backends::embedded(data.path()), keys()),
    )
    .await;
    for (method, path) in [
        (Method::GET, "/api/accounts/me"),
        (Method::PATCH, "/api/accounts/me"),
        (Method::DELETE, "/api/accounts/me"),
        (Method::POST, "/api/accounts/me/password"),
    ] {
        let response = shop.send(method, path, None, Some(json!({}))).await;
        refused_by_host(response);
    }
    refused_by_host(shop.get("/api/accounts/me", Some("not.a.token")).await);
    // The internal bootstrap route does not exist from outside.
    let response = shop
        .post("/api/accounts/internal/bootstrap", None, json!({}))
        .await;
    assert_eq!(code_and_field(response, 404).0, "not_found");
    shop.stop().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn patch_changes_only_the_given_fields() {
    let data = tempfile::tempdir().unwrap();
    let shop = Shop::start(
        &manifest(&[], false),
        setup(&Backends::embedded(data.path()), keys()),
    )
    .await;
    let email = unique_email("patch");
    let registered = ok(
        shop.post(
            "/api/accounts/register",
            None,
            json!({ "email": email, "password": PASSWORD, "name": "Pat Ch", "phone": "555 0100" }),
        )
        .await,
        201,
    );
    let access = token(&registered, "access_token");
    let before = registered["user"].clone();
    let patch =
        |body: Value| shop.send(Method::PATCH, "/api/accounts/me", Some(access), Some(body));

    let renamed = ok(patch(json!({ "name": "  Patricia Ch  " })).await, 200);
    assert_user_shape(&renamed);
    assert_eq!(renamed["name"], "Patricia Ch");
    assert_eq!(renamed["phone"], "555 0100", "untouched");
    assert_eq!(renamed["email"], before["email"]);
    assert_eq!(renamed["created_at"], before["created_at"]);
    assert!(
        renamed["updated_at"].as_str().unwrap() > before["updated_at"].as_str().unwrap(),
        "{renamed}"
    );

    let rephoned = ok(patch(json!({ "phone": "+1 (555) 010-0199" })).await, 200);
    assert_eq!(rephoned["phone"], "+1 (555) 010-0199");
    assert_eq!(rephoned["name"], "Patricia Ch", "untouched");

    let cleared = ok(patch(json!({ "phone": null })).await, 200);
    assert_eq!(cleared["phone"], Value::Null);
    assert_eq!(cleared["name"], "Patricia Ch");

    let same = ok(patch(json!({})).await, 200);
    assert_eq!(
        (&same["name"], &same["phone"]),
        (&cleared["name"], &Value::Null)
    );

    for (body, field) in [
        (json!({ "name": "  " }), "name"),
        (json!({ "name": null }), "name"),
        (json!({ "name": "n".repeat(201) }), "name"),
        (json!({ "phone": "call me" }), "phone"),
        (json!({ "phone": "1".repeat(33) }), "phone"),
        (json!({ "email": "new@shop.test" }), "email"),
        (json!({ "role": "ADMIN" }), "role"),
    ] {
        assert_eq!(
            code_and_field(patch(body.clone()).await, 400),
            ("validation_failed".into(), Some(field.into())),
            "{body}"
        );
    }
    let unchanged = shop.me(access).await;
    assert_eq!(unchanged, same);
    assert_eq!(unchanged["role"], "USER");
    shop.stop().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_password_change_ends_every_session() {
    let data = tempfile::tempdir().unwrap();
    let shop = Shop::start(
        &manifest(&[], false),
        setup(&Backends::embedded(data.path()), keys()),
    )
    .await;
    let email = unique_email("pw");
    let first = shop.register(&email, PASSWORD, "Pass Word").await;
    let second = shop.login(&email, PASSWORD).await;
    let change = |body: Value| {
        shop.send(
            Method::POST,
            "/api/accounts/me/password",
            Some(token(&first, "access_token")),
            Some(body),
        )
    };
    let new_password = "a much better passphrase";

    let wrong = error(
        change(json!({ "old_password": "not it at all", "new_password": new_password })).await,
        401,
    );
    assert_eq!(wrong["code"], "invalid_credentials");
    for (body, field) in [
        (
            json!({ "old_password": PASSWORD, "new_password": "short" }),
            "new_password",
        ),
        (
            json!({ "old_password": PASSWORD, "new_password": "x".repeat(257) }),
            "new_password",
        ),
        (json!({ "old_password": PASSWORD }), "new_password"),
        (json!({ "new_password": new_password }), "old_password"),
    ] {
        assert_eq!(
            code_and_field(change(body.clone()).await, 400),
            ("validation_failed".into(), Some(field.into())),
            "{body}"
        );
    }
    // Nothing changed so far.
    shop.me(token(&second, "access_token")).await;

    let changed = change(json!({ "old_password": PASSWORD, "new_password": new_password })).await;
    assert_eq!(changed.status, 204);
    for session in [&first, &second] {
        refused_by_host(
            shop.get("/api/accounts/me", Some(token(session, "access_token")))
                .await,
        );
        let refresh = shop
            .post(
                "/api/accounts/refresh",
                None,
                json!({ "refresh_token": token(session, "refresh_token") }),
            )
            .await;
        assert_eq!(error(refresh, 401)["code"], "invalid_refresh_token");
    }
    let old = shop
        .post(
            "/api/accounts/login",
            None,
            json!({ "email": email, "password": PASSWORD }),
        )
        .await;
    assert_eq!(error(old, 401)["code"], "invalid_credentials");
    let session = shop.login(&email, new_password).await;
    shop.me(token(&session, "access_token")).await;
    shop.stop().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_deleted_account_is_gone_but_listed_for_admins() {
    let data = tempfile::tempdir().unwrap();
    let admin_email = unique_email("admin");
    let shop = Shop::start(
        &manifest(
            &[("admin_email", &admin_email), ("admin_password", PASSWORD)],
            true,
        ),
        setup(&Backends::embedded(data.path()), keys()),
    )
    .await;
    let email = unique_email("leaving");
    let first = shop.register(&email, PASSWORD, "Lea Ving").await;
    let second = shop.login(&email, PASSWORD).await;
    let user_id = first["user"]["id"].as_str().unwrap().to_owned();

    let deleted = shop
        .send(
            Method::DELETE,
            "/api/accounts/me",
            Some(token(&first, "access_token")),
            None,
        )
        .await;
    assert_eq!(deleted.status, 204);
    for session in [&first, &second] {
        refused_by_host(
            shop.get("/api/accounts/me", Some(token(session, "access_token")))
                .await,
        );
    }
    let login = shop
        .post(
            "/api/accounts/login",
            None,
            json!({ "email": email, "password": PASSWORD }),
        )
        .await;
    assert_eq!(error(login, 401)["code"], "invalid_credentials");

    // A token that still passes (here minted by another component with the auth grant)
    // finds no account.
    let minted = ok(
        shop.post(
            "/edge/issue",
            None,
            json!({ "subject": user_id, "roles": ["USER"] }),
        )
        .await,
        200,
    );
    let minted = token(&minted, "access_token");
    assert_eq!(
        code_and_field(shop.get("/api/accounts/me", Some(minted)).await, 404).0,
        "not_found"
    );
    let patch = shop
        .send(
            Method::PATCH,
            "/api/accounts/me",
            Some(minted),
            Some(json!({ "name": "Back" })),
        )
        .await;
    assert_eq!(code_and_field(patch, 404).0, "not_found");
    let again = shop
        .send(Method::DELETE, "/api/accounts/me", Some(minted), None)
        .await;
    assert_eq!(code_and_field(again, 404).0, "not_found");

    // Admins still see it, with when it was deleted; its address may register again.
    let admin = shop.login(&admin_email, PASSWORD).await;
    let list = ok(
        shop.get("/api/accounts", Some(token(&admin, "access_token")))
            .await,
        200,
    );
    let item = list["items"]
        .as_array()
        .unwrap()
        .iter()
        .find(|item| item["id"] == json!(user_id))
        .unwrap()
        .clone();
    assert!(
        item["deleted_at"].as_str().unwrap().ends_with('Z'),
        "{item}"
    );
    let again = shop.register(&email, PASSWORD, "Lea Ving Again").await;
    assert_ne!(again["user"]["id"], json!(user_id));
    shop.stop().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn admins_list_accounts_and_change_roles() {
    let data = tempfile::tempdir().unwrap();
    let admin_email = unique_email("admin");
    let shop = Shop::start(
        &manifest(
            &[("admin_email", &admin_email), ("admin_password", PASSWORD)],
            false,
        ),
        setup(&Backends::embedded(data.path()), keys()),
    )
    .await;
    let admin = shop.login(&admin_email, PASSWORD).await;
    assert_eq!(admin["user"]["role"], "ADMIN");
    let admin_token = token(&admin, "access_token");
    let mut ids = Vec::new();
    for n in 1..=5 {
        let session = shop
            .register(
                &unique_email(&format!("u{n}")),
                PASSWORD,
                &format!("User {n}"),
            )
            .await;
        ids.push(session["user"]["id"].as_str().unwrap().to_owned());
    }
    let admin_id = admin["user"]["id"].as_str().unwrap().to_owned();

    // Newest first, deleted_at on every item, pages of two: 5 4 | 3 2 | 1 admin | (none).
    let mut seen = Vec::new();
    for (n, expected) in [(1, 2), (2, 2), (3, 2), (4, 0)] {
        let path = format!("/api/accounts?page={n}&page_size=2");
        let list = ok(shop.get(&path, Some(admin_token)).await, 200);
        assert_eq!(list["total"], 6, "{list}");
        assert_eq!(
            (list["page"].as_u64(), list["page_size"].as_u64()),
            (Some(n), Some(2))
        );
        let items = list["items"].as_array().unwrap();
        assert_eq!(items.len(), expected, "{list}");
        for item in items {
            assert_eq!(item["deleted_at"], Value::Null);
            assert!(item.get("password_hash").is_none());
            seen.push(item["id"].as_str().unwrap().to_owned());
        }
    }
    let mut newest_first: Vec<String> = ids.iter().rev().cloned().collect();
    newest_first.push(admin_id.clone());
    assert_eq!(seen, newest_first);
    let defaults = ok(shop.get("/api/accounts", Some(admin_token)).await, 200);
    assert_eq!(
        (defaults["page"].as_u64(), defaults["page_size"].as_u64()),
        (Some(1), Some(20))
    );
    assert_eq!(defaults["items"].as_array().unwrap().len(), 6);
    for query in [
        "/api/accounts?page_size=0",
        "/api/accounts?page_size=101",
        "/api/accounts?page=x",
    ] {
        let (code, field) = code_and_field(shop.get(query, Some(admin_token)).await, 400);
        assert_eq!(code, "validation_failed", "{query}");
        assert!(field.is_some(), "{query}");
    }

    // A user is refused by the host: 403 with a token, 401 without.
    let user_email = unique_email("climber");
    let user = shop.register(&user_email, PASSWORD, "Clim Ber").await;
    let user_id = user["user"]["id"].as_str().unwrap().to_owned();
    let role_path = format!("/api/accounts/{user_id}/role");
    let user_token = token(&user, "access_token");
    forbidden_by_host(shop.get("/api/accounts", Some(user_token)).await);
    let promote_self = shop
        .send(
            Method::PUT,
            &role_path,
            Some(user_token),
            Some(json!({ "role": "ADMIN" })),
        )
        .await;
    forbidden_by_host(promote_self);
    let anonymous = shop
        .send(
            Method::PUT,
            &role_path,
            None,
            Some(json!({ "role": "ADMIN" })),
        )
        .await;
    refused_by_host(anonymous);

    // The admin: bad roles, unknown ids, then a promotion that ends the user's sessions.
    let shop_ref = &shop;
    let put_role = |path: String, role: Value| async move {
        let body = json!({ "role": role });
        shop_ref
            .send(Method::PUT, &path, Some(admin_token), Some(body))
            .await
    };
    for role in [json!("SUPERUSER"), json!("admin"), json!(null), json!(1)] {
        assert_eq!(
            code_and_field(put_role(role_path.clone(), role.clone()).await, 400),
            ("validation_failed".into(), Some("role".into())),
            "{role}"
        );
    }
    for unknown in [uuid::Uuid::new_v4().to_string(), "not-a-uuid".to_owned()] {
        let response = put_role(format!("/api/accounts/{unknown}/role"), json!("ADMIN")).await;
        assert_eq!(code_and_field(response, 404).0, "not_found");
    }
    let promoted = ok(put_role(role_path.clone(), json!("ADMIN")).await, 200);
    assert_user_shape(&promoted);
    assert_eq!(
        (&promoted["id"], &promoted["role"]),
        (&json!(user_id), &json!("ADMIN"))
    );
    refused_by_host(shop.get("/api/accounts/me", Some(user_token)).await);
    let user = shop.login(&user_email, PASSWORD).await;
    assert_eq!(user["user"]["role"], "ADMIN");
    let list = ok(
        shop.get("/api/accounts", Some(token(&user, "access_token")))
            .await,
        200,
    );
    assert_eq!(list["total"], 7);

    // And back: demoted, signed out, a user again at the next sign-in.
    let demoted = ok(put_role(role_path.clone(), json!("USER")).await, 200);
    assert_eq!(demoted["role"], "USER");
    refused_by_host(
        shop.get("/api/accounts", Some(token(&user, "access_token")))
            .await,
    );
    let user = shop.login(&user_email, PASSWORD).await;
    forbidden_by_host(
        shop.get("/api/accounts", Some(token(&user, "access_token")))
            .await,
    );
    shop.stop().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn the_first_admin_comes_from_the_configuration() {
    let data = tempfile::tempdir().unwrap();
    let backends = Backends::embedded(data.path());

    // Without the settings nobody is created; a user registers.
    let shop = Shop::start(&manifest(&[], false), setup(&backends, keys())).await;
    let user_email = unique_email("early");
    shop.register(&user_email, PASSWORD, "Early Bird").await;
    shop.stop().await;

    // With them, the admin is created (email normalised like any other).
    let boss = unique_email("boss");
    let shop = Shop::start(
        &manifest(
            &[
                ("admin_email", &format!("  {}  ", boss.to_uppercase())),
                ("admin_password", PASSWORD),
            ],
            false,
        ),
        setup(&backends, keys()),
    )
    .await;
    let admin = shop.login(&boss, PASSWORD).await;
    assert_eq!(admin["user"]["role"], "ADMIN");
    assert_eq!(admin["user"]["name"], "Administrator");
    assert_eq!(
        shop.me(token(&admin, "access_token")).await["email"],
        json!(boss)
    );
    let list = ok(
        shop.get("/api/accounts", Some(token(&admin, "access_token")))
            .await,
        200,
    );
    assert_eq!(list["total"], 2);
    shop.stop().await;

    // A restart naming an account registered before the setting leaves it as it is: a
    // customer with its own password, refused on ADMIN routes (whoever registered the address
    // first must not become an admin by it). The earlier admin stays one, nobody is created
    // twice.
    let shop = Shop::start(
        &manifest(
            &[
                ("admin_email", &user_email),
                ("admin_password", "another password"),
            ],
            false,
        ),
        setup(&backends, keys()),
    )
    .await;
    let early = shop.login(&user_email, PASSWORD).await;
    assert_eq!(early["user"]["role"], "USER");
    let denied = shop
        .get("/api/accounts", Some(token(&early, "access_token")))
        .await;
    assert_eq!(error(denied, 403)["code"], "forbidden");
    let refused = shop
        .post(
            "/api/accounts/login",
            None,
            json!({ "email": user_email, "password": "another password" }),
        )
        .await;
    assert_eq!(error(refused, 401)["code"], "invalid_credentials");
    let admin = shop.login(&boss, PASSWORD).await;
    assert_eq!(admin["user"]["role"], "ADMIN");
    let list = ok(
        shop.get("/api/accounts", Some(token(&admin, "access_token")))
            .await,
        200,
    );
    assert_eq!(list["total"], 2);
    shop.stop().await;

    // A bad or half-given setting stops the start, saying why.
    for (config, expected) in [
        (
            vec![
                ("admin_email", "not-an-email"),
                ("admin_password", PASSWORD),
            ],
            "admin_email",
        ),
        (
            vec![("admin_email", "ok@shop.test"), ("admin_password", "short")],
            "admin_password",
        ),
        (
            vec![("admin_email", "ok@shop.test")],
            "admin_password is not",
        ),
        (vec![("admin_password", PASSWORD)], "admin_email is not"),
    ] {
        let Err(message) =
            Shop::try_start(&manifest(&config, false), setup(&backends, keys())).await
        else {
            panic!("{config:?} must stop the start");
        };
        assert!(message.contains("startup"), "{message}");
        assert!(message.contains(expected), "{expected}: {message}");
        assert!(
            !message.contains(PASSWORD),
            "the password is not quoted: {message}"
        );
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn passwords_are_argon2id_and_rehashed_when_the_cost_changes() {
    let data = tempfile::tempdir().unwrap();
    let backends = Backends::embedded(data.path());
    let shop = Shop::start(&manifest(&[], false), setup(&backends, keys())).await;
    let email = unique_email("cost");
    shop.register(&email, PASSWORD, "Cos T").await;
    let cheap = shop.stored_hash(&email).await;
    assert!(
        cheap.starts_with("$argon2id$v=19$m=1024,t=1,p=1$"),
        "{cheap}"
    );
    assert!(!cheap.contains(PASSWORD));
    shop.stop().await;

    let dearer = manifest(
        &[("argon2_memory_kib", "2048"), ("argon2_iterations", "2")],
        false,
    );
    let shop = Shop::start(&dearer, setup(&backends, keys())).await;
    let wrong = shop
        .post(
            "/api/accounts/login",
            None,
            json!({ "email": email, "password": "not the password" }),
        )
        .await;
    assert_eq!(error(wrong, 401)["code"], "invalid_credentials");
    assert_eq!(
        shop.stored_hash(&email).await,
        cheap,
        "a failed sign-in changes nothing"
    );
    shop.login(&email, PASSWORD).await;
    let rehashed = shop.stored_hash(&email).await;
    assert!(
        rehashed.starts_with("$argon2id$v=19$m=2048,t=2,p=1$"),
        "{rehashed}"
    );
    shop.login(&email, PASSWORD).await;
    assert_eq!(shop.stored_hash(&email).await, rehashed, "rehashed once");

    // A cost argon2 cannot use is a clear error, not a crash.
    let broken = Shop::start(
        &manifest(&[("argon2_memory_kib", "1")], false),
        setup(&backends, keys()),
    )
    .await;
    let response = broken
        .post(
            "/api/accounts/login",
            None,
            json!({ "email": email, "password": PASSWORD }),
        )
        .await;
    let failure = error(response, 500);
    assert!(
        failure["message"]
            .as_str()
            .unwrap()
            .contains("argon2_memory_kib"),
        "{failure}"
    );
}

/// The `kid` in the header of `jwt`.
fn kid(jwt: &str) -> String {
    use base64::Engine as _;
    let header = jwt.split('.').next().unwrap();
    let bytes = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(header)
        .unwrap();
    let header: Value = serde_json::from_slice(&bytes).unwrap();
    header["kid"].as_str().unwrap().to_owned()
}

/// A key rotation across restarts: the host signs with the new key and still accepts the
/// tokens of the old one (named by `kid`) while they live; once the old public key is dropped
/// from the configuration, its tokens are refused.
#[tokio::test(flavor = "multi_thread")]
async fn a_key_rotation_keeps_earlier_tokens_valid_until_the_old_key_is_dropped() {
    let data = tempfile::tempdir().unwrap();
    let backends = Backends::embedded(data.path());
    let (old_private, old_public) = Keys::generate_ed25519_pem().unwrap();
    let (new_private, new_public) = Keys::generate_ed25519_pem().unwrap();
    let old = Keys::ed25519_from_pem(old_private.as_bytes(), old_public.as_bytes()).unwrap();
    let new = Keys::ed25519_from_pem(new_private.as_bytes(), new_public.as_bytes()).unwrap();
    assert_ne!(old.kid(), new.kid());

    let shop = Shop::try_start(&manifest(&[], false), setup(&backends, old.clone()))
        .await
        .unwrap();
    let email = unique_email("rotation");
    shop.register(&email, PASSWORD, "Rita Rotation").await;
    let before = shop.login(&email, PASSWORD).await;
    assert_eq!(kid(token(&before, "access_token")), old.kid());
    shop.stop().await;

    let rotated = new.clone().with_previous_pem(&old_public).unwrap();
    let shop = Shop::try_start(&manifest(&[], false), setup(&backends, rotated))
        .await
        .unwrap();
    assert_eq!(
        shop.me(token(&before, "access_token")).await["email"],
        json!(email)
    );
    let after = shop.login(&email, PASSWORD).await;
    assert_eq!(kid(token(&after, "access_token")), new.kid());
    shop.stop().await;

    let shop = Shop::try_start(&manifest(&[], false), setup(&backends, new))
        .await
        .unwrap();
    let refused = shop
        .get("/api/accounts/me", Some(token(&before, "access_token")))
        .await;
    assert_eq!(refused.status, 401);
    assert_eq!(
        shop.me(token(&after, "access_token")).await["email"],
        json!(email)
    );
    shop.stop().await;
}
