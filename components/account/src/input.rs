//! Request bodies and the rules account data follows.
//!
//! Bodies are read as a JSON object and then field by field, so that a missing or mistyped
//! field is a 400 `validation_failed` naming it (rather than serde's `invalid_json` about the
//! whole body). Each rule returns the value as stored (trimmed, lowercased for emails).

use agora_sdk::http::{ApiError, Body, Request};
use agora_sdk::input;
use serde_json::{Map, Value};

/// Longest email address accepted (RFC 5321's path limit).
pub const MAX_EMAIL_CHARS: usize = 254;
/// Shortest password accepted.
pub const MIN_PASSWORD_CHARS: usize = 8;
/// Longest password accepted.
pub const MAX_PASSWORD_CHARS: usize = 256;
/// Longest name accepted.
pub const MAX_NAME_CHARS: usize = 200;
/// Longest phone number accepted.
pub const MAX_PHONE_CHARS: usize = 32;

/// The fields of a JSON object body.
pub struct Fields(Map<String, Value>);

impl Fields {
    /// Reads the request body, which must be a JSON object.
    pub async fn read(request: &mut Request<Body>) -> Result<Fields, ApiError> {
        input::json_object(request).await.map(Fields)
    }

    /// A required string field.
    pub fn string(&self, name: &str) -> Result<String, ApiError> {
        self.optional_string(name)?
            .flatten()
            .ok_or_else(|| ApiError::validation(name, format!("{name} is required")))
    }

    /// A field that may be absent (`None`), `null` (`Some(None)`) or a string.
    pub fn optional_string(&self, name: &str) -> Result<Option<Option<String>>, ApiError> {
        match self.0.get(name) {
            None => Ok(None),
            Some(Value::Null) => Ok(Some(None)),
            Some(Value::String(text)) => Ok(Some(Some(text.clone()))),
            Some(_) => Err(ApiError::validation(
                name,
                format!("{name} must be a string"),
            )),
        }
    }

    /// Refuses any field not in `allowed`, naming it: a client sending `email` to a profile
    /// update must learn that it was not applied.
    pub fn only(&self, allowed: &[&str]) -> Result<(), ApiError> {
        match self.0.keys().find(|key| !allowed.contains(&key.as_str())) {
            Some(key) => Err(ApiError::validation(
                key,
                format!(
                    "{key} cannot be set here (accepted: {})",
                    allowed.join(", ")
                ),
            )),
            None => Ok(()),
        }
    }
}

/// An email address as stored: trimmed and lowercased; one `@` between a non-empty local part
/// and a domain holding a dot (no empty labels), no whitespace or control characters, at most
/// [`MAX_EMAIL_CHARS`].
pub fn email(field: &str, raw: &str) -> Result<String, ApiError> {
    let email = raw.trim().to_lowercase();
    let invalid = |why: &str| ApiError::validation(field, format!("{field} {why}"));
    if email.is_empty() {
        return Err(invalid("is required"));
    }
    if email.chars().count() > MAX_EMAIL_CHARS {
        return Err(invalid(&format!(
            "must be at most {MAX_EMAIL_CHARS} characters"
        )));
    }
    if email.chars().any(|c| c.is_whitespace() || c.is_control()) {
        return Err(invalid("must not contain spaces"));
    }
    let (local, domain) = match email.split_once('@') {
        Some((local, domain)) if !domain.contains('@') => (local, domain),
        _ => return Err(invalid("must contain exactly one @")),
    };
    if local.is_empty() {
        return Err(invalid("needs a name before the @"));
    }
    if !domain.contains('.') || domain.split('.').any(str::is_empty) {
        return Err(invalid(
            "needs a domain with a dot after the @ (name@example.com)",
        ));
    }
    Ok(email)
}

/// A new password: [`MIN_PASSWORD_CHARS`] to [`MAX_PASSWORD_CHARS`] characters (kept as
/// given: spaces count).
pub fn password(field: &str, password: &str) -> Result<(), ApiError> {
    let chars = password.chars().count();
    if chars < MIN_PASSWORD_CHARS {
        return Err(ApiError::validation(
            field,
            format!("{field} must be at least {MIN_PASSWORD_CHARS} characters"),
        ));
    }
    if chars > MAX_PASSWORD_CHARS {
        return Err(ApiError::validation(
            field,
            format!("{field} must be at most {MAX_PASSWORD_CHARS} characters"),
        ));
    }
    Ok(())
}

/// A display name as stored: trimmed, not blank, at most [`MAX_NAME_CHARS`].
pub fn name(field: &str, raw: &str) -> Result<String, ApiError> {
    let name = raw.trim();
    if name.is_empty() {
        return Err(ApiError::validation(
            field,
            format!("{field} must not be blank"),
        ));
    }
    if name.chars().count() > MAX_NAME_CHARS {
        return Err(ApiError::validation(
            field,
            format!("{field} must be at most {MAX_NAME_CHARS} characters"),
        ));
    }
    if name.chars().any(char::is_control) {
        return Err(ApiError::validation(
            field,
            format!("{field} must not contain control characters"),
        ));
    }
    Ok(name.to_owned())
}

/// A phone number as stored: trimmed, at most [`MAX_PHONE_CHARS`] of digits, spaces, `+`,
/// `-` and parentheses, with at least one digit.
pub fn phone(field: &str, raw: &str) -> Result<String, ApiError> {
    let phone = raw.trim();
    let allowed = |c: char| c.is_ascii_digit() || matches!(c, ' ' | '+' | '-' | '(' | ')');
    if phone.chars().count() > MAX_PHONE_CHARS {
        return Err(ApiError::validation(
            field,
            format!("{field} must be at most {MAX_PHONE_CHARS} characters"),
        ));
    }
    if !phone.chars().all(allowed) || !phone.chars().any(|c| c.is_ascii_digit()) {
        return Err(ApiError::validation(
            field,
            format!("{field} may hold only digits, spaces, +, - and parentheses"),
        ));
    }
    Ok(phone.to_owned())
}

/// An account's role.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    /// A customer.
    User,
    /// An administrator of the shop.
    Admin,
}

impl Role {
    /// As stored and answered: `USER` or `ADMIN`.
    pub fn as_str(self) -> &'static str {
        match self {
            Role::User => "USER",
            Role::Admin => "ADMIN",
        }
    }

    /// The roles its access tokens carry: an admin is a user too.
    pub fn token_roles(self) -> &'static [&'static str] {
        match self {
            Role::User => &["USER"],
            Role::Admin => &["USER", "ADMIN"],
        }
    }

    /// Parses a stored or requested role (exact spelling).
    pub fn parse(text: &str) -> Option<Role> {
        match text {
            "USER" => Some(Role::User),
            "ADMIN" => Some(Role::Admin),
            _ => None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn emails_are_normalised_and_checked() {
        assert_eq!(
            email("email", "  Ada.Lovelace@Example.COM ").as_deref(),
            Ok("ada.lovelace@example.com")
        );
        assert_eq!(email("email", "a@b.co").as_deref(), Ok("a@b.co"));
        for bad in [
            "",
            "   ",
            "no-at.example.com",
            "two@@example.com",
            "a@b@example.com",
            "@example.com",
            "ada@localhost",
            "ada@example.",
            "ada@.example.com",
            "ada@example..com",
            "ada lovelace@example.com",
            "ada@exa\tmple.com",
        ] {
            let error = email("email", bad).expect_err(bad);
            assert_eq!(error.code, "validation_failed", "{bad}");
            assert_eq!(error.field.as_deref(), Some("email"), "{bad}");
        }
        let long = format!("{}@example.com", "a".repeat(MAX_EMAIL_CHARS - 12));
        assert_eq!(long.len(), MAX_EMAIL_CHARS);
        assert!(email("email", &long).is_ok());
        assert!(email("email", &format!("a{long}")).is_err());
    }

    #[test]
    fn passwords_names_and_phones() {
        assert!(password("password", "12345678").is_ok());
        assert!(password("password", "1234567").is_err());
        assert!(password("password", &"x".repeat(MAX_PASSWORD_CHARS)).is_ok());
        assert!(password("password", &"x".repeat(MAX_PASSWORD_CHARS + 1)).is_err());
        assert!(
            password("password", "ééééééé").is_err(),
            "counts characters"
        );

        assert_eq!(name("name", "  Ada ").as_deref(), Ok("Ada"));
        assert!(name("name", " \t ").is_err());
        assert!(name("name", &"n".repeat(MAX_NAME_CHARS + 1)).is_err());

        assert_eq!(
            phone("phone", " +44 (20) 7946-0958 ").as_deref(),
            Ok("+44 (20) 7946-0958")
        );
        assert!(phone("phone", "call me").is_err());
        assert!(phone("phone", "+-()").is_err());
        assert!(phone("phone", "").is_err());
        assert!(phone("phone", &"1".repeat(MAX_PHONE_CHARS + 1)).is_err());
    }

    #[test]
    fn roles() {
        assert_eq!(Role::parse("ADMIN"), Some(Role::Admin));
        assert_eq!(Role::parse("admin"), None);
        assert_eq!(Role::Admin.token_roles(), ["USER", "ADMIN"]);
        assert_eq!(Role::User.as_str(), "USER");
    }
}
