//! The component's own database (`agora:platform/sql`). Needs `grants = { sql = true }`.
//!
//! Parameters are written `$1`, `$2`, … on both backends (SQLite and PostgreSQL) and passed
//! with [`params!`](crate::params); rows are read by column name into ordinary Rust types.
//!
//! ```ignore
//! use agora_sdk::{params, sql};
//! sql::execute("insert into notes (id, body) values ($1, $2)", &params![id, "hello"])?;
//! for row in sql::query("select id, body from notes", &[])?.iter() {
//!     let body: String = row.get("body")?;
//! }
//! let tx = sql::begin()?;
//! tx.execute("update stock set n = n - $1 where id = $2", &params![1, id])?;
//! tx.publish_event(&agora_sdk::events::Event::new("stock.reserved", 1, &id))?;
//! tx.commit()?;
//! ```

use crate::bindings::agora::platform::sql as wit;
use crate::events::Event;
use serde::Serialize;
use std::fmt;

pub use crate::time::{TimeError, Timestamp};
pub use wit::Value;

/// Builds an array of [`Value`]s from anything convertible, for `&params![…]` where a
/// `&[Value]` is expected: `params![id, "text", 3, None::<i64>]`.
#[macro_export]
macro_rules! params {
    ($($value:expr),* $(,)?) => {
        [$($crate::sql::Value::from($value)),*]
    };
}

/// Why a database call failed.
#[derive(Debug, Clone, PartialEq)]
pub enum SqlError {
    /// The database rejected the statement; the message starts with the SQLSTATE if any.
    Query(String),
    /// A unique constraint was violated ("already exists").
    UniqueViolation(String),
    /// A value could not be converted (unsupported column type, bad decimal, …).
    Unsupported(String),
    /// The database is unreachable; retry later.
    Unavailable(String),
    /// The transaction was already committed or rolled back.
    Closed,
    /// No sql grant (or, for a transactional publish, no grant for the subject).
    Denied,
    /// A row did not have the column, or its value did not fit the Rust type asked for.
    Decode(String),
}

impl fmt::Display for SqlError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            SqlError::Query(m) => write!(f, "query failed: {m}"),
            SqlError::UniqueViolation(m) => write!(f, "unique constraint violated: {m}"),
            SqlError::Unsupported(m) => write!(f, "unsupported value: {m}"),
            SqlError::Unavailable(m) => write!(f, "database unavailable: {m}"),
            SqlError::Closed => f.write_str("the transaction is already finished"),
            SqlError::Denied => f.write_str("not granted by the manifest"),
            SqlError::Decode(m) => write!(f, "cannot read the row: {m}"),
        }
    }
}

impl std::error::Error for SqlError {}

impl From<wit::Error> for SqlError {
    fn from(err: wit::Error) -> Self {
        match err {
            wit::Error::Query(m) => SqlError::Query(m),
            wit::Error::UniqueViolation(m) => SqlError::UniqueViolation(m),
            wit::Error::Unsupported(m) => SqlError::Unsupported(m),
            wit::Error::Unavailable(m) => SqlError::Unavailable(m),
            wit::Error::Closed => SqlError::Closed,
            wit::Error::Denied => SqlError::Denied,
        }
    }
}

/// An exact decimal number, kept as its text (`"1234.50"`).
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Decimal(pub String);

macro_rules! value_from {
    ($($t:ty => $case:ident($conv:expr)),* $(,)?) => {
        $(impl From<$t> for Value {
            fn from(v: $t) -> Value {
                Value::$case($conv(v))
            }
        })*
    };
}

value_from! {
    bool => Boolean(|v| v),
    i64 => Int(|v| v),
    i32 => Int(i64::from),
    u32 => Int(i64::from),
    f64 => Float(|v| v),
    String => Text(|v| v),
    &str => Text(str::to_owned),
    &String => Text(String::clone),
    Vec<u8> => Bytes(|v| v),
    &[u8] => Bytes(<[u8]>::to_vec),
    Timestamp => Timestamp(|v: Timestamp| v.0),
    Decimal => Decimal(|v: Decimal| v.0),
}

impl<T: Into<Value>> From<Option<T>> for Value {
    fn from(v: Option<T>) -> Value {
        v.map_or(Value::Null, Into::into)
    }
}

/// A Rust type a column value can be read into.
pub trait FromValue: Sized {
    /// Converts `value`, or says why it does not fit.
    fn from_value(value: &Value) -> Result<Self, String>;
}

fn mismatch<T>(want: &str, got: &Value) -> Result<T, String> {
    let got = match got {
        Value::Null => "null",
        Value::Boolean(_) => "boolean",
        Value::Int(_) => "int",
        Value::Float(_) => "float",
        Value::Text(_) => "text",
        Value::Bytes(_) => "bytes",
        Value::Timestamp(_) => "timestamp",
        Value::Decimal(_) => "decimal",
    };
    Err(format!("expected {want}, found {got}"))
}

impl FromValue for Value {
    fn from_value(value: &Value) -> Result<Self, String> {
        Ok(value.clone())
    }
}

impl FromValue for i64 {
    fn from_value(value: &Value) -> Result<Self, String> {
        match value {
            Value::Int(v) => Ok(*v),
            Value::Boolean(v) => Ok(i64::from(*v)),
            other => mismatch("int", other),
        }
    }
}

impl FromValue for i32 {
    fn from_value(value: &Value) -> Result<Self, String> {
        let v = i64::from_value(value)?;
        i32::try_from(v).map_err(|_| format!("{v} does not fit in i32"))
    }
}

impl FromValue for u32 {
    fn from_value(value: &Value) -> Result<Self, String> {
        let v = i64::from_value(value)?;
        u32::try_from(v).map_err(|_| format!("{v} does not fit in u32"))
    }
}

impl FromValue for f64 {
    fn from_value(value: &Value) -> Result<Self, String> {
        match value {
            Value::Float(v) => Ok(*v),
            Value::Int(v) => Ok(*v as f64),
            Value::Decimal(v) => v.parse().map_err(|_| format!("`{v}` is not a number")),
            other => mismatch("float", other),
        }
    }
}

impl FromValue for bool {
    fn from_value(value: &Value) -> Result<Self, String> {
        match value {
            Value::Boolean(v) => Ok(*v),
            // SQLite stores booleans as 0 and 1.
            Value::Int(0) => Ok(false),
            Value::Int(1) => Ok(true),
            other => mismatch("boolean", other),
        }
    }
}

impl FromValue for String {
    fn from_value(value: &Value) -> Result<Self, String> {
        match value {
            Value::Text(v) | Value::Decimal(v) => Ok(v.clone()),
            Value::Timestamp(v) => Ok(Timestamp(*v).to_rfc3339()),
            other => mismatch("text", other),
        }
    }
}

impl FromValue for Vec<u8> {
    fn from_value(value: &Value) -> Result<Self, String> {
        match value {
            Value::Bytes(v) => Ok(v.clone()),
            other => mismatch("bytes", other),
        }
    }
}

impl FromValue for Timestamp {
    fn from_value(value: &Value) -> Result<Self, String> {
        match value {
            Value::Timestamp(v) => Ok(Timestamp(*v)),
            // SQLite keeps what was bound: RFC 3339 text, or microseconds as an integer.
            Value::Int(v) => Ok(Timestamp(*v)),
            Value::Text(v) => v.parse().map_err(|err: TimeError| err.to_string()),
            other => mismatch("timestamp", other),
        }
    }
}

impl FromValue for Decimal {
    fn from_value(value: &Value) -> Result<Self, String> {
        match value {
            Value::Decimal(v) | Value::Text(v) => Ok(Decimal(v.clone())),
            Value::Int(v) => Ok(Decimal(v.to_string())),
            other => mismatch("decimal", other),
        }
    }
}

impl<T: FromValue> FromValue for Option<T> {
    fn from_value(value: &Value) -> Result<Self, String> {
        match value {
            Value::Null => Ok(None),
            other => T::from_value(other).map(Some),
        }
    }
}

/// The rows of a query.
#[derive(Debug, Clone)]
pub struct Rows {
    columns: Vec<String>,
    rows: Vec<Vec<Value>>,
}

impl From<wit::Rows> for Rows {
    fn from(rows: wit::Rows) -> Self {
        Rows {
            columns: rows.columns,
            rows: rows.rows,
        }
    }
}

impl Rows {
    /// The column names, in order.
    pub fn columns(&self) -> &[String] {
        &self.columns
    }

    /// How many rows there are.
    pub fn len(&self) -> usize {
        self.rows.len()
    }

    /// True when the query returned no row.
    pub fn is_empty(&self) -> bool {
        self.rows.is_empty()
    }

    /// Each row in order.
    pub fn iter(&self) -> impl Iterator<Item = Row<'_>> {
        self.rows.iter().map(|values| Row {
            columns: &self.columns,
            values,
        })
    }

    /// The first row, if any.
    pub fn first(&self) -> Option<Row<'_>> {
        self.iter().next()
    }

    /// Every row as a JSON object keyed by column name (timestamps as RFC 3339 text,
    /// decimals as text, bytes as an array of numbers).
    pub fn to_json(&self) -> Vec<serde_json::Value> {
        self.iter().map(|row| row.to_json()).collect()
    }
}

/// One row; read its columns by name or position.
#[derive(Debug, Clone, Copy)]
pub struct Row<'a> {
    columns: &'a [String],
    values: &'a [Value],
}

/// A column given by name or by 0-based position.
pub trait ColumnIndex {
    /// The position of the column in `columns`, if there is one.
    fn position(&self, columns: &[String]) -> Option<usize>;
    /// How to name it in an error.
    fn describe(&self) -> String;
}

impl ColumnIndex for &str {
    fn position(&self, columns: &[String]) -> Option<usize> {
        columns.iter().position(|c| c == self)
    }
    fn describe(&self) -> String {
        format!("column `{self}`")
    }
}

impl ColumnIndex for usize {
    fn position(&self, columns: &[String]) -> Option<usize> {
        (*self < columns.len()).then_some(*self)
    }
    fn describe(&self) -> String {
        format!("column #{self}")
    }
}

impl Row<'_> {
    /// The value of `column` converted to `T`; `Option<T>` for nullable columns.
    pub fn get<T: FromValue>(&self, column: impl ColumnIndex) -> Result<T, SqlError> {
        let index = column
            .position(self.columns)
            .ok_or_else(|| SqlError::Decode(format!("no {} in the result", column.describe())))?;
        T::from_value(&self.values[index])
            .map_err(|reason| SqlError::Decode(format!("{}: {reason}", column.describe())))
    }

    /// The row as a JSON object keyed by column name.
    pub fn to_json(&self) -> serde_json::Value {
        let object = self
            .columns
            .iter()
            .zip(self.values)
            .map(|(name, value)| {
                let json = match value {
                    Value::Null => serde_json::Value::Null,
                    Value::Boolean(v) => (*v).into(),
                    Value::Int(v) => (*v).into(),
                    Value::Float(v) => (*v).into(),
                    Value::Text(v) | Value::Decimal(v) => v.clone().into(),
                    Value::Bytes(v) => v.clone().into(),
                    Value::Timestamp(v) => Timestamp(*v).to_rfc3339().into(),
                };
                (name.clone(), json)
            })
            .collect();
        serde_json::Value::Object(object)
    }
}

/// Runs a statement that returns rows.
pub fn query(statement: &str, params: &[Value]) -> Result<Rows, SqlError> {
    Ok(wit::query(statement, params)?.into())
}

/// The first row of a query converted with `read`, or `None` when there is none.
pub fn query_opt<T>(
    statement: &str,
    params: &[Value],
    read: impl FnOnce(Row<'_>) -> Result<T, SqlError>,
) -> Result<Option<T>, SqlError> {
    query(statement, params)?.first().map(read).transpose()
}

/// Runs a statement and returns how many rows it changed.
pub fn execute(statement: &str, params: &[Value]) -> Result<u64, SqlError> {
    Ok(wit::execute(statement, params)?)
}

/// The `VALUES` of a multi-row insert: `rows` groups of `columns` numbered parameters,
/// `($1, $2), ($3, $4)` for 2 × 2 — one statement (one round trip) for all the rows, with
/// their values given in row order. Both databases take up to 32 766 parameters in one
/// statement (SQLite's limit; PostgreSQL's is 65 535).
pub fn values(rows: usize, columns: usize) -> String {
    let mut text = String::with_capacity(rows * columns * 5);
    for row in 0..rows {
        text.push_str(if row == 0 { "(" } else { ", (" });
        for column in 0..columns {
            if column > 0 {
                text.push_str(", ");
            }
            text.push('$');
            text.push_str(&(row * columns + column + 1).to_string());
        }
        text.push(')');
    }
    text
}

/// Starts a transaction; dropping it without [`Transaction::commit`] rolls it back.
pub fn begin() -> Result<Transaction, SqlError> {
    Ok(Transaction(wit::begin()?))
}

/// An open transaction.
pub struct Transaction(wit::Transaction);

impl Transaction {
    /// As [`query`], inside the transaction.
    pub fn query(&self, statement: &str, params: &[Value]) -> Result<Rows, SqlError> {
        Ok(self.0.query(statement, params)?.into())
    }

    /// As [`execute`], inside the transaction.
    pub fn execute(&self, statement: &str, params: &[Value]) -> Result<u64, SqlError> {
        Ok(self.0.execute(statement, params)?)
    }

    /// Publishes through the outbox: sent after a successful commit, never after a rollback.
    /// Returns the message id.
    pub fn publish(
        &self,
        subject: &str,
        payload: &[u8],
        headers: &[(String, String)],
    ) -> Result<String, SqlError> {
        Ok(self.0.publish(subject, payload, headers)?)
    }

    /// Publishes `event` (as JSON, to the subject named by its type) through the outbox.
    pub fn publish_event<T: Serialize>(&self, event: &Event<T>) -> Result<String, SqlError> {
        let payload = event.to_json().map_err(SqlError::Unsupported)?;
        self.publish(&event.kind, &payload, &event.headers())
    }

    /// Commits; on error everything is rolled back.
    pub fn commit(self) -> Result<(), SqlError> {
        Ok(self.0.commit()?)
    }

    /// Rolls back explicitly (dropping the transaction does the same).
    pub fn rollback(self) -> Result<(), SqlError> {
        Ok(self.0.rollback()?)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn values_number_the_parameters_row_by_row() {
        assert_eq!(values(1, 3), "($1, $2, $3)");
        assert_eq!(values(2, 2), "($1, $2), ($3, $4)");
        assert_eq!(values(3, 1), "($1), ($2), ($3)");
        assert_eq!(values(0, 4), "");
    }

    #[test]
    fn rows_read_into_rust_types_by_name_or_position() {
        let rows = Rows {
            columns: vec!["id".into(), "active".into(), "price".into(), "note".into()],
            rows: vec![vec![
                Value::Int(7),
                Value::Int(1), // SQLite's true
                Value::Decimal("12.50".into()),
                Value::Null,
            ]],
        };
        let row = rows.first().expect("one row");
        assert_eq!(row.get::<i64>("id"), Ok(7));
        assert_eq!(row.get::<u32>(0), Ok(7));
        assert_eq!(row.get::<bool>("active"), Ok(true));
        assert_eq!(row.get::<Decimal>("price"), Ok(Decimal("12.50".into())));
        assert_eq!(row.get::<Option<String>>("note"), Ok(None));
        let missing = row.get::<i64>("nope").expect_err("no such column");
        assert!(
            matches!(&missing, SqlError::Decode(m) if m.contains("`nope`")),
            "{missing}"
        );
        let wrong = row.get::<String>("id").expect_err("an int is not text");
        assert!(
            matches!(&wrong, SqlError::Decode(m) if m.contains("expected text, found int")),
            "{wrong}"
        );
        assert_eq!(
            rows.to_json(),
            vec![serde_json::json!({"id": 7, "active": 1, "price": "12.50", "note": null})]
        );
        assert_eq!(
            params![1, "a", None::<i64>, true],
            [
                Value::Int(1),
                Value::Text("a".into()),
                Value::Null,
                Value::Boolean(true)
            ]
        );
    }
}
