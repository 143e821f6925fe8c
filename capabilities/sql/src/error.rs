//! [`SqlError`]: why a backend call failed, and how a sqlx error becomes one.

/// Why a backend call failed. Every case maps onto one case of the WIT `error` variant (see
/// [`SqlError::to_guest`]); the host also sees the two set-up cases, `Config` and `Migration`.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SqlError {
    /// The database rejected the statement. The message is the database's, prefixed with its
    /// SQLSTATE code when it has one ("42P01: relation \"x\" does not exist").
    #[error("query failed: {0}")]
    Query(String),
    /// A unique (or primary key) constraint was violated.
    #[error("unique violation: {0}")]
    UniqueViolation(String),
    /// A parameter or a column could not be converted; the message names it.
    #[error("unsupported value: {0}")]
    Unsupported(String),
    /// The database could not be reached, a connection was lost or none was free in time.
    #[error("database unavailable: {0}")]
    Unavailable(String),
    /// A result went over the component's cap (`limits.sql_result_kib`); the message names
    /// it. The guest sees a `query` error with SQLSTATE 54000 (program limit exceeded).
    #[error("result too large: {0}")]
    TooLarge(String),
    /// The statement was still running at the deadline of the request or event that issued
    /// it, and was cancelled. The guest sees a `query` error with SQLSTATE 57014.
    #[error("timed out: {0}")]
    Timeout(String),
    /// The transaction was already committed or rolled back.
    #[error("the transaction is already committed or rolled back")]
    Closed,
    /// No sql grant, or no grant to publish to the subject.
    #[error("denied by the manifest")]
    Denied,
    /// A set-up problem of the host: a malformed database URL, an unusable component name,
    /// an unreadable migrations folder.
    #[error("sql configuration: {0}")]
    Config(String),
    /// A migration failed or was changed after it was applied; nothing of it was kept.
    #[error("migration {version}: {message}")]
    Migration {
        /// The migration's version (its file name without `.sql`).
        version: String,
        /// What went wrong, with the database's message.
        message: String,
    },
}

impl SqlError {
    /// The error of a statement cut at its deadline.
    pub(crate) fn timeout() -> SqlError {
        SqlError::Timeout(
            "the statement was cancelled at the deadline of the request or event that issued it"
                .into(),
        )
    }

    /// The message without the prefix naming the kind of error, to embed in another one.
    pub(crate) fn detail(&self) -> String {
        match self {
            SqlError::Query(message)
            | SqlError::UniqueViolation(message)
            | SqlError::Unsupported(message)
            | SqlError::Unavailable(message)
            | SqlError::TooLarge(message)
            | SqlError::Timeout(message)
            | SqlError::Config(message) => message.clone(),
            other => other.to_string(),
        }
    }

    /// The WIT error a guest gets for this error. `TooLarge` and `Timeout` become `query`
    /// errors prefixed with SQLSTATE `54000` and `57014` (the WIT has no case of their own);
    /// `Config` becomes `unavailable` and `Migration` becomes `query`: neither reaches a guest
    /// in normal operation.
    pub fn to_guest(&self) -> crate::bindings::agora::platform::sql::Error {
        use crate::bindings::agora::platform::sql::Error;
        match self {
            SqlError::Query(message) => Error::Query(message.clone()),
            SqlError::UniqueViolation(message) => Error::UniqueViolation(message.clone()),
            SqlError::Unsupported(message) => Error::Unsupported(message.clone()),
            SqlError::Unavailable(message) | SqlError::Config(message) => {
                Error::Unavailable(message.clone())
            }
            SqlError::TooLarge(message) => Error::Query(format!("54000: too_large: {message}")),
            SqlError::Timeout(message) => Error::Query(format!("57014: timeout: {message}")),
            SqlError::Closed => Error::Closed,
            SqlError::Denied => Error::Denied,
            SqlError::Migration { .. } => Error::Query(self.to_string()),
        }
    }
}

/// Whether a PostgreSQL SQLSTATE says the server, not the statement, failed: a connection
/// exception (class 08), or the server shutting down, restarting or not yet accepting
/// connections (57P01 `admin_shutdown`, 57P02 `crash_shutdown`, 57P03 `cannot_connect_now`).
/// A retry may succeed once the server is back.
fn server_unavailable(code: &str) -> bool {
    code.starts_with("08") || matches!(code, "57P01" | "57P02" | "57P03")
}

impl From<sqlx::Error> for SqlError {
    fn from(err: sqlx::Error) -> SqlError {
        match err {
            sqlx::Error::Database(db) => {
                let message = match db.code() {
                    // PostgreSQL: the SQLSTATE. SQLite's codes are numbers without meaning to
                    // a reader; its message already says what failed.
                    Some(code)
                        if db
                            .try_downcast_ref::<sqlx::postgres::PgDatabaseError>()
                            .is_some() =>
                    {
                        format!("{code}: {}", db.message())
                    }
                    _ => db.message().to_owned(),
                };
                let postgres = db
                    .try_downcast_ref::<sqlx::postgres::PgDatabaseError>()
                    .is_some();
                if db.is_unique_violation() {
                    SqlError::UniqueViolation(message)
                } else if postgres && db.code().as_deref().is_some_and(server_unavailable) {
                    SqlError::Unavailable(message)
                } else {
                    SqlError::Query(message)
                }
            }
            sqlx::Error::PoolTimedOut => SqlError::Unavailable(
                "no database connection became free in time (the pool is exhausted or the \
                 database is unreachable)"
                    .into(),
            ),
            sqlx::Error::PoolClosed => {
                SqlError::Unavailable("the connection pool is closed".into())
            }
            sqlx::Error::Io(err) => SqlError::Unavailable(format!("i/o error: {err}")),
            sqlx::Error::Tls(err) => SqlError::Unavailable(format!("tls error: {err}")),
            sqlx::Error::WorkerCrashed => {
                SqlError::Unavailable("the sqlite connection worker stopped".into())
            }
            sqlx::Error::Encode(err) => SqlError::Unsupported(format!("a parameter: {err}")),
            sqlx::Error::Decode(err) => SqlError::Unsupported(format!("a column: {err}")),
            sqlx::Error::ColumnDecode { index, source } => {
                SqlError::Unsupported(format!("column {index}: {source}"))
            }
            sqlx::Error::Configuration(err) => SqlError::Config(err.to_string()),
            other => SqlError::Query(other.to_string()),
        }
    }
}
