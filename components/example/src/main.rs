//! An example component that uses every capability agora offers, through the guest SDK.
//!
//! Routes (under whatever prefix the manifest gives it; the first path segment is skipped):
//! - `POST …/notes` `{"body": "…"}` → 201 the note. In one transaction: insert the note and
//!   publish `example.note-created` (config `note_subject`) through the outbox. A body of `"rollback"` rolls the
//!   transaction back instead (409), so nothing is stored or published.
//! - `GET …/notes/{id}` → the note, read through the cache (`"cached": true` on a hit).
//! - `GET …/notes` → every note, oldest first.
//! - `GET …/received` → the events the handler took in and the dead letters it saw.
//! - `POST …/publish/{subject}` → publishes the body directly (403 for ungranted subjects).
//! - `POST …/sql` `{"statement": "…"}` → runs a statement on the component's own database
//!   and answers its rows or its error (used to show the namespace isolation).
//! - `GET …/info` → configuration values, the counter of notes created, and a log line.
//!
//! Events: `example.note-created` (or the subject configured as `note_subject`) is handled by inserting into `received` (idempotent on the
//! event id). A note whose body contains `fail-once` fails its first delivery, one containing
//! `trap-once` traps (panics) in its first delivery, and one containing `poison` fails every
//! delivery and ends on the dead-letter subject, which this component also
//! subscribes to (`dlq.>`), recording it in `dead_letters`.

use agora_sdk::events::{self, Event, Handler, Message, PublishError};
use agora_sdk::http::{self, Body, Error, Method, Request, Response, StatusCode};
use agora_sdk::sql::{self, SqlError, Timestamp};
use agora_sdk::{cache, config, log, params};
use serde::{Deserialize, Serialize};
use std::time::Duration;

#[derive(Debug, Clone, Serialize, Deserialize)]
struct Note {
    id: String,
    body: String,
    created_at: String,
}

/// The subject notes are announced on, unless the configuration names another
/// (`note_subject`).
const NOTE_CREATED: &str = "example.note-created";

fn note_subject() -> String {
    config::get_or("note_subject", NOTE_CREATED.to_owned())
        .unwrap_or_else(|_| NOTE_CREATED.to_owned())
}

#[wstd::http_server]
async fn main(mut request: Request<Body>) -> Result<Response<Body>, Error> {
    let path = request.uri().path().to_owned();
    // Skip the mount prefix: `/example/notes/1` → ["notes", "1"].
    let segments: Vec<&str> = path.split('/').filter(|s| !s.is_empty()).skip(1).collect();
    let method = request.method().clone();
    let answer = match (method, segments.as_slice()) {
        (Method::POST, ["notes"]) => {
            #[derive(Deserialize)]
            struct NewNote {
                body: String,
            }
            let new: NewNote = match http::read_json(&mut request).await {
                Ok(new) => new,
                Err(response) => return Ok(response),
            };
            create_note(&new.body)
        }
        (Method::GET, ["notes"]) => list_notes(),
        (Method::GET, ["notes", id]) => get_note(id),
        (Method::GET, ["received"]) => received(),
        (Method::POST, ["publish", subject]) => {
            let payload = request.body_mut().contents().await?.to_vec();
            Ok(match events::publish(subject, &payload, &[]) {
                Ok(id) => http::json(StatusCode::OK, &serde_json::json!({ "id": id })),
                Err(err) => publish_error(&err),
            })
        }
        (Method::POST, ["sql"]) => {
            #[derive(Deserialize)]
            struct Statement {
                statement: String,
            }
            let statement: Statement = match http::read_json(&mut request).await {
                Ok(statement) => statement,
                Err(response) => return Ok(response),
            };
            sql::query(&statement.statement, &[]).map(|rows| {
                http::json(
                    StatusCode::OK,
                    &serde_json::json!({ "rows": rows.to_json() }),
                )
            })
        }
        (Method::GET, ["info"]) => info(),
        _ => Ok(http::error(StatusCode::NOT_FOUND, "not_found", &path)),
    };
    Ok(answer.unwrap_or_else(|err| sql_error(&err)))
}

fn create_note(body: &str) -> Result<Response<Body>, SqlError> {
    if body.trim().is_empty() {
        return Ok(http::error(
            StatusCode::BAD_REQUEST,
            "validation_failed",
            "body must not be blank",
        ));
    }
    let now = Timestamp::now();
    let note = Note {
        id: events::uuid_v4(),
        body: body.to_owned(),
        created_at: now.to_rfc3339(),
    };
    let tx = sql::begin()?;
    tx.execute(
        "insert into notes (id, body, created_at) values ($1, $2, $3)",
        &params![&note.id, &note.body, now.micros()],
    )?;
    tx.publish_event(&Event::new(&note_subject(), 1, &note))?;
    if body == "rollback" {
        tx.rollback()?;
        return Ok(http::json(
            StatusCode::CONFLICT,
            &serde_json::json!({ "rolled_back": true, "id": note.id }),
        ));
    }
    tx.commit()?;
    if let Err(err) = cache::incr("notes-created", 1) {
        log::warn("notes", &format!("counter not updated: {err}"));
    }
    log::info("notes", &format!("note {} created", note.id));
    Ok(http::json(StatusCode::CREATED, &note))
}

fn note_from(row: sql::Row<'_>) -> Result<Note, SqlError> {
    Ok(Note {
        id: row.get("id")?,
        body: row.get("body")?,
        created_at: Timestamp(row.get("created_at")?).to_rfc3339(),
    })
}

fn list_notes() -> Result<Response<Body>, SqlError> {
    let rows = sql::query(
        "select id, body, created_at from notes order by created_at, id",
        &[],
    )?;
    let notes = rows.iter().map(note_from).collect::<Result<Vec<_>, _>>()?;
    Ok(http::json(
        StatusCode::OK,
        &serde_json::json!({ "items": notes }),
    ))
}

fn get_note(id: &str) -> Result<Response<Body>, SqlError> {
    let key = format!("note:{id}");
    if let Ok(Some(note)) = cache::get_json::<Note>(&key) {
        return Ok(http::json(
            StatusCode::OK,
            &serde_json::json!({ "note": note, "cached": true }),
        ));
    }
    let note = sql::query_opt(
        "select id, body, created_at from notes where id = $1",
        &params![id],
        note_from,
    )?;
    let Some(note) = note else {
        return Ok(http::error(
            StatusCode::NOT_FOUND,
            "not_found",
            &format!("no note {id}"),
        ));
    };
    if let Err(err) = cache::set_json(&key, &note, Some(Duration::from_secs(60))) {
        log::warn("notes", &format!("note not cached: {err}"));
    }
    Ok(http::json(
        StatusCode::OK,
        &serde_json::json!({ "note": note, "cached": false }),
    ))
}

fn received() -> Result<Response<Body>, SqlError> {
    let events = sql::query(
        "select event_id, note_id, delivery from received order by note_id",
        &[],
    )?;
    let dead = sql::query(
        "select message_id, subject, reason from dead_letters order by message_id",
        &[],
    )?;
    let mut failures = serde_json::Map::new();
    for note in sql::query("select id from notes", &[])?.iter() {
        let id: String = note.get("id")?;
        if let Ok(Some(count)) = cache::get(&format!("failures:{id}")) {
            let count = String::from_utf8_lossy(&count).parse::<i64>().unwrap_or(0);
            failures.insert(id, count.into());
        }
    }
    Ok(http::json(
        StatusCode::OK,
        &serde_json::json!({
            "events": events.to_json(),
            "dead_letters": dead.to_json(),
            "failures": failures,
        }),
    ))
}

fn info() -> Result<Response<Body>, SqlError> {
    log::info("info", "info requested");
    let greeting = config::get_or("greeting", String::from("hello")).unwrap_or_default();
    let has_secret = matches!(config::get("secret"), Ok(Some(_)));
    let created = cache::get("notes-created")
        .ok()
        .flatten()
        .and_then(|v| String::from_utf8(v).ok())
        .and_then(|v| v.parse::<i64>().ok())
        .unwrap_or(0);
    Ok(http::json(
        StatusCode::OK,
        &serde_json::json!({
            "greeting": greeting,
            "has_secret": has_secret,
            "notes_created": created,
        }),
    ))
}

fn publish_error(err: &PublishError) -> Response<Body> {
    let (status, code) = match err {
        PublishError::Denied => (StatusCode::FORBIDDEN, "denied"),
        PublishError::Invalid(_) => (StatusCode::BAD_REQUEST, "invalid"),
        PublishError::Unavailable(_) => (StatusCode::SERVICE_UNAVAILABLE, "unavailable"),
    };
    http::error(status, code, &err.to_string())
}

fn sql_error(err: &SqlError) -> Response<Body> {
    let (status, code) = match err {
        SqlError::UniqueViolation(_) => (StatusCode::CONFLICT, "conflict"),
        SqlError::Unavailable(_) => (StatusCode::SERVICE_UNAVAILABLE, "unavailable"),
        SqlError::Denied => (StatusCode::FORBIDDEN, "denied"),
        SqlError::Query(_) | SqlError::Unsupported(_) => (StatusCode::BAD_REQUEST, "sql_error"),
        SqlError::Closed | SqlError::Decode(_) => (StatusCode::INTERNAL_SERVER_ERROR, "internal"),
    };
    http::error(status, code, &err.to_string())
}

struct Inbox;

impl Handler for Inbox {
    fn handle(message: Message) -> Result<(), String> {
        if message.subject.starts_with("dlq.") {
            let reason = message
                .header("agora-dead-letter-reason")
                .unwrap_or("")
                .to_owned();
            let original = message.header("agora-original-subject").unwrap_or("");
            log::warn("inbox", &format!("dead letter from {original}: {reason}"));
            return sql::execute(
                "insert into dead_letters (message_id, subject, reason) values ($1, $2, $3) \
                 on conflict (message_id) do nothing",
                &params![&message.id, original, reason],
            )
            .map(drop)
            .map_err(|err| err.to_string());
        }
        let event: Event<Note> = message.event()?;
        let note = event.data;
        if note.body.contains("trap-once") && message.delivery == 1 {
            let _ = cache::incr(&format!("failures:{}", note.id), 1);
            panic!("trapping on purpose in delivery 1 of note {}", note.id);
        }
        let fail = (note.body.contains("fail-once") && message.delivery == 1)
            || note.body.contains("poison");
        if fail {
            let _ = cache::incr(&format!("failures:{}", note.id), 1);
            return Err(format!(
                "refusing delivery {} of note {}",
                message.delivery, note.id
            ));
        }
        sql::execute(
            "insert into received (event_id, note_id, delivery) values ($1, $2, $3) \
             on conflict (event_id) do nothing",
            &params![&event.id, &note.id, message.delivery],
        )
        .map(drop)
        .map_err(|err| err.to_string())
    }
}

agora_sdk::export_handler!(Inbox);
