//! The `users` table (migrations/0001_users.sql) and the account as the API shows it.
//!
//! Every read of a single account for a request (sign-in, `me`, role changes) sees live
//! accounts only: a soft-deleted account (`deleted_at` set) exists for the admin list alone.
//! The password hash is read only by the functions that return it next to the user
//! ([`live_by_email`], [`password_hash`]); [`User`] has no field for it, so it cannot reach an
//! answer.

use crate::input::Role;
use agora_sdk::events::{self, Event};
use agora_sdk::params;
use agora_sdk::sql::{self, Row, SqlError, Timestamp, Value};
use serde_json::{Value as Json, json};

/// The subject (and event type) announcing a new account.
pub const REGISTERED: &str = "account.registered";

/// The columns every [`User`] is read from.
const COLUMNS: &str = "id, email, name, phone, role, created_at, updated_at, deleted_at";

/// An account, without its password hash.
#[derive(Debug, Clone, PartialEq)]
pub struct User {
    pub id: String,
    pub email: String,
    pub name: String,
    pub phone: Option<String>,
    pub role: Role,
    pub created_at: Timestamp,
    pub updated_at: Timestamp,
    pub deleted_at: Option<Timestamp>,
}

impl User {
    /// A new live account created now.
    pub fn new(email: String, name: String, phone: Option<String>, role: Role) -> User {
        let now = Timestamp::now();
        User {
            id: events::uuid_v4(),
            email,
            name,
            phone,
            role,
            created_at: now,
            updated_at: now,
            deleted_at: None,
        }
    }

    /// `{id, email, name, phone, role, created_at, updated_at}`, times in RFC 3339 UTC.
    pub fn to_json(&self) -> Json {
        json!({
            "id": self.id,
            "email": self.email,
            "name": self.name,
            "phone": self.phone,
            "role": self.role.as_str(),
            "created_at": self.created_at.to_rfc3339(),
            "updated_at": self.updated_at.to_rfc3339(),
        })
    }

    /// [`User::to_json`] plus `deleted_at` (`null` for a live account), for administrators.
    pub fn to_admin_json(&self) -> Json {
        let mut value = self.to_json();
        value["deleted_at"] = self
            .deleted_at
            .map_or(Json::Null, |at| Json::String(at.to_rfc3339()));
        value
    }

    fn from_row(row: Row<'_>) -> Result<User, SqlError> {
        let role: String = row.get("role")?;
        Ok(User {
            id: row.get("id")?,
            email: row.get("email")?,
            name: row.get("name")?,
            phone: row.get("phone")?,
            role: Role::parse(&role)
                .ok_or_else(|| SqlError::Decode(format!("unknown role `{role}`")))?,
            created_at: Timestamp(row.get("created_at")?),
            updated_at: Timestamp(row.get("updated_at")?),
            deleted_at: row.get::<Option<i64>>("deleted_at")?.map(Timestamp),
        })
    }
}

/// Why [`insert`] failed.
pub enum InsertError {
    /// A live account already has the email.
    EmailTaken,
    /// Anything else.
    Sql(SqlError),
}

/// Stores a new account with its password hash and, in the same transaction, publishes
/// `account.registered` (`{user_id, email, name}`, version 1) through the outbox.
pub fn insert(user: &User, password_hash: &str) -> Result<(), InsertError> {
    let tx = sql::begin().map_err(InsertError::Sql)?;
    let inserted = tx.execute(
        "insert into users (id, email, password_hash, name, phone, role, created_at, updated_at) \
         values ($1, $2, $3, $4, $5, $6, $7, $8)",
        &params![
            &user.id,
            &user.email,
            password_hash,
            &user.name,
            user.phone.as_deref(),
            user.role.as_str(),
            user.created_at.micros(),
            user.updated_at.micros()
        ],
    );
    match inserted {
        Ok(_) => {}
        Err(SqlError::UniqueViolation(_)) => return Err(InsertError::EmailTaken),
        Err(err) => return Err(InsertError::Sql(err)),
    }
    let event = Event::new(
        REGISTERED,
        1,
        json!({ "user_id": user.id, "email": user.email, "name": user.name }),
    );
    tx.publish_event(&event).map_err(InsertError::Sql)?;
    match tx.commit() {
        Ok(()) => Ok(()),
        Err(SqlError::UniqueViolation(_)) => Err(InsertError::EmailTaken),
        Err(err) => Err(InsertError::Sql(err)),
    }
}

/// The live account with `email` (already normalised) and its password hash.
pub fn live_by_email(email: &str) -> Result<Option<(User, String)>, SqlError> {
    sql::query_opt(
        &format!(
            "select {COLUMNS}, password_hash from users where email = $1 and deleted_at is null"
        ),
        &params![email],
        |row| Ok((User::from_row(row)?, row.get("password_hash")?)),
    )
}

/// Whether a live account has `email`.
pub fn email_taken(email: &str) -> Result<bool, SqlError> {
    Ok(!sql::query(
        "select id from users where email = $1 and deleted_at is null",
        &params![email],
    )?
    .is_empty())
}

/// The live account `id`.
pub fn live_by_id(id: &str) -> Result<Option<User>, SqlError> {
    sql::query_opt(
        &format!("select {COLUMNS} from users where id = $1 and deleted_at is null"),
        &params![id],
        User::from_row,
    )
}

/// The password hash of the live account `id`.
pub fn password_hash(id: &str) -> Result<Option<String>, SqlError> {
    sql::query_opt(
        "select password_hash from users where id = $1 and deleted_at is null",
        &params![id],
        |row| row.get("password_hash"),
    )
}

/// Replaces the password hash of the live account `id`; false when there is none.
pub fn set_password_hash(id: &str, hash: &str) -> Result<bool, SqlError> {
    let changed = sql::execute(
        "update users set password_hash = $1, updated_at = $2 where id = $3 and deleted_at is null",
        &params![hash, Timestamp::now().micros(), id],
    )?;
    Ok(changed > 0)
}

/// The profile fields a `PATCH` may change; `None` leaves a field as it is.
#[derive(Debug, Default)]
pub struct ProfileChange {
    pub name: Option<String>,
    /// `Some(None)` clears the phone number.
    pub phone: Option<Option<String>>,
}

/// Applies `change` to the live account `id` in one statement (so concurrent updates of
/// different fields do not undo each other) and returns the account as it is now.
pub fn update_profile(id: &str, change: ProfileChange) -> Result<Option<User>, SqlError> {
    let mut sets = Vec::new();
    let mut values: Vec<Value> = Vec::new();
    if let Some(name) = change.name {
        values.push(name.into());
        sets.push(format!("name = ${}", values.len()));
    }
    if let Some(phone) = change.phone {
        values.push(phone.into());
        sets.push(format!("phone = ${}", values.len()));
    }
    values.push(Timestamp::now().micros().into());
    sets.push(format!("updated_at = ${}", values.len()));
    values.push(id.into());
    let statement = format!(
        "update users set {} where id = ${} and deleted_at is null",
        sets.join(", "),
        values.len()
    );
    if sql::execute(&statement, &values)? == 0 {
        return Ok(None);
    }
    live_by_id(id)
}

/// Sets the role of the live account `id` and returns it; `None` when there is none.
pub fn set_role(id: &str, role: Role) -> Result<Option<User>, SqlError> {
    let changed = sql::execute(
        "update users set role = $1, updated_at = $2 where id = $3 and deleted_at is null",
        &params![role.as_str(), Timestamp::now().micros(), id],
    )?;
    if changed == 0 {
        return Ok(None);
    }
    live_by_id(id)
}

/// Soft-deletes the live account `id`; false when there is none.
pub fn soft_delete(id: &str) -> Result<bool, SqlError> {
    let now = Timestamp::now().micros();
    let changed = sql::execute(
        "update users set deleted_at = $1, updated_at = $1 where id = $2 and deleted_at is null",
        &params![now, id],
    )?;
    Ok(changed > 0)
}

/// One page of every account, deleted ones included, newest first; and how many there are.
pub fn page(limit: i64, offset: i64) -> Result<(Vec<User>, i64), SqlError> {
    let total: i64 = sql::query("select count(*) as n from users", &[])?
        .first()
        .map(|row| row.get("n"))
        .transpose()?
        .unwrap_or(0);
    let users = sql::query(
        &format!(
            "select {COLUMNS} from users order by created_at desc, id desc limit $1 offset $2"
        ),
        &params![limit, offset],
    )?
    .iter()
    .map(User::from_row)
    .collect::<Result<Vec<_>, _>>()?;
    Ok((users, total))
}
