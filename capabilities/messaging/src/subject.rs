//! Subjects, patterns and the names derived from them.
//!
//! A subject is a dot-separated list of non-empty tokens (`order.created`). A pattern (used in
//! grants and subscriptions) may also hold NATS wildcards: a `*` token matches exactly one
//! token, a final `>` token matches one or more trailing tokens.

use sha2::{Digest as _, Sha256};

/// Longest subject or pattern, in bytes.
pub const MAX_SUBJECT_BYTES: usize = 256;

/// Longest header name or value, in bytes.
pub const MAX_HEADER_BYTES: usize = 4096;

/// Whether `subject` is matched by `pattern`, with NATS semantics: `*` stands for exactly one
/// token and a final `>` for one or more trailing tokens. Tokens are compared exactly.
///
/// ```
/// use agora_messaging::subject_matches;
/// assert!(subject_matches("order.*", "order.created"));
/// assert!(subject_matches("order.>", "order.item.added"));
/// assert!(!subject_matches("order.>", "order"));
/// assert!(!subject_matches("order.*", "order.item.added"));
/// ```
pub fn subject_matches(pattern: &str, subject: &str) -> bool {
    let mut wanted = pattern.split('.');
    let mut tokens = subject.split('.');
    loop {
        match (wanted.next(), tokens.next()) {
            (Some(">"), Some(_)) => return wanted.next().is_none(),
            (Some("*"), Some(_)) => {}
            (Some(want), Some(token)) if want == token => {}
            (None, None) => return true,
            _ => return false,
        }
    }
}

/// Checks a subject a message is published to: at most [`MAX_SUBJECT_BYTES`], non-empty
/// dot-separated tokens, no wildcard (`*`, `>`), no whitespace or control characters.
pub fn validate_subject(subject: &str) -> Result<(), String> {
    validate(subject, false)
}

/// Checks a pattern of a grant or a subscription: like [`validate_subject`], except that a
/// token may be `*` and the last token may be `>`.
pub fn validate_pattern(pattern: &str) -> Result<(), String> {
    validate(pattern, true)
}

fn validate(text: &str, wildcards: bool) -> Result<(), String> {
    let what = if wildcards { "pattern" } else { "subject" };
    if text.is_empty() {
        return Err(format!("the {what} is empty"));
    }
    if text.len() > MAX_SUBJECT_BYTES {
        return Err(format!(
            "the {what} is {} bytes, over the {MAX_SUBJECT_BYTES}-byte limit",
            text.len()
        ));
    }
    if let Some(bad) = text.chars().find(|c| c.is_whitespace() || c.is_control()) {
        return Err(format!(
            "the {what} `{}` contains whitespace or a control character ({bad:?})",
            text.escape_debug()
        ));
    }
    let count = text.split('.').count();
    for (index, token) in text.split('.').enumerate() {
        if token.is_empty() {
            return Err(format!("the {what} `{text}` has an empty token"));
        }
        let is_last = index + 1 == count;
        match token {
            "*" if wildcards => {}
            ">" if wildcards && is_last => {}
            ">" if wildcards => {
                return Err(format!("the {what} `{text}` has `>` before its last token"));
            }
            _ if token.contains(['*', '>']) => {
                return Err(if wildcards {
                    format!(
                        "the {what} `{text}` has a wildcard inside a token (`*` and `>` must be whole tokens)"
                    )
                } else {
                    format!("the {what} `{text}` has a wildcard; publish to a concrete subject")
                });
            }
            _ => {}
        }
    }
    Ok(())
}

/// Checks a component name used in consumer names and dead-letter subjects: a single subject
/// token (no dots, wildcards or whitespace).
pub(crate) fn validate_component(component: &str) -> Result<(), String> {
    validate_subject(component)
        .map_err(|err| format!("component name: {err}"))
        .and_then(|()| {
            if component.contains('.') {
                Err(format!("the component name `{component}` contains a dot"))
            } else {
                Ok(())
            }
        })
}

/// Checks message headers: names are non-empty printable ASCII without `:` and do not start
/// with `Nats-` (reserved for the broker); values hold no line breaks; each at most
/// [`MAX_HEADER_BYTES`].
pub fn validate_headers(headers: &[(String, String)]) -> Result<(), String> {
    for (name, value) in headers {
        if name.is_empty() {
            return Err("a header name is empty".into());
        }
        if name.len() > MAX_HEADER_BYTES || value.len() > MAX_HEADER_BYTES {
            return Err(format!(
                "the header `{}` is over the {MAX_HEADER_BYTES}-byte limit",
                name.escape_debug()
            ));
        }
        if name.chars().any(|c| !c.is_ascii_graphic() || c == ':') {
            return Err(format!(
                "the header name `{}` must be printable ASCII without `:` or spaces",
                name.escape_debug()
            ));
        }
        if name.len() >= 5 && name[..5].eq_ignore_ascii_case("nats-") {
            return Err(format!(
                "the header name `{name}` is reserved (`Nats-` headers belong to the broker)"
            ));
        }
        if value.contains(['\r', '\n']) {
            return Err(format!(
                "the value of header `{name}` contains a line break"
            ));
        }
    }
    Ok(())
}

/// The subject a message goes to after `component` failed it `max_deliver` times:
/// `dlq.<component>.<subject>`, where `subject` is the subject the message was published to.
pub fn dead_letter_subject(component: &str, subject: &str) -> String {
    format!("dlq.{component}.{subject}")
}

/// The durable consumer name of (component, subject pattern), valid as a NATS name.
///
/// The readable part is the component and the pattern with the characters NATS forbids in
/// names replaced (`order.created` → `order_created`, `*` → `_star_`, `>` → `_all_`), joined by
/// `__`; as that replacement can map two inputs to the same text, a short hash of the exact
/// pair follows, so distinct pairs never share a consumer.
pub fn consumer_name(component: &str, pattern: &str) -> String {
    fn readable(text: &str, out: &mut String) {
        for c in text.chars() {
            match c {
                'a'..='z' | 'A'..='Z' | '0'..='9' | '-' | '_' => out.push(c),
                '.' => out.push('_'),
                '*' => out.push_str("_star_"),
                '>' => out.push_str("_all_"),
                _ => out.push('~'),
            }
        }
    }
    let mut name = String::new();
    readable(component, &mut name);
    name.push_str("__");
    readable(pattern, &mut name);
    // Keep well under the 255-character limit of NATS names.
    if name.len() > 200 {
        let mut end = 200;
        while !name.is_char_boundary(end) {
            end -= 1;
        }
        name.truncate(end);
    }
    let mut hash = Sha256::new();
    hash.update(component.as_bytes());
    hash.update([0]);
    hash.update(pattern.as_bytes());
    let digest = hash.finalize();
    name.push_str("__");
    name.push_str(&hex::encode(&digest[..6]));
    name
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn literal_subjects_match_only_themselves() {
        assert!(subject_matches("order.created", "order.created"));
        assert!(!subject_matches("order.created", "order.created.v2"));
        assert!(!subject_matches("order.created", "order"));
        assert!(!subject_matches("order.created", "order.updated"));
        assert!(!subject_matches("order", "orders"));
    }

    #[test]
    fn star_matches_exactly_one_token() {
        assert!(subject_matches("order.*", "order.created"));
        assert!(subject_matches("*.created", "order.created"));
        assert!(subject_matches("*.*", "a.b"));
        assert!(subject_matches("x.*.z", "x.y.z"));
        assert!(!subject_matches("order.*", "order"));
        assert!(!subject_matches("order.*", "order.a.b"));
        assert!(!subject_matches("x.*.z", "x.z"));
    }

    #[test]
    fn greater_than_matches_one_or_more_trailing_tokens() {
        assert!(subject_matches(">", "order"));
        assert!(subject_matches(">", "order.created.v2"));
        assert!(subject_matches("order.>", "order.created"));
        assert!(subject_matches("order.>", "order.item.added"));
        assert!(subject_matches("*.>", "a.b.c"));
        assert!(!subject_matches("order.>", "order"));
        assert!(!subject_matches("order.>", "payment.created"));
    }

    #[test]
    fn subjects_are_validated() {
        for good in [
            "order.created",
            "a",
            "a-b_c.D9",
            "dlq.catalog.order.created",
        ] {
            assert_eq!(validate_subject(good), Ok(()), "{good}");
        }
        let long = "a".repeat(MAX_SUBJECT_BYTES + 1);
        for bad in [
            "",
            ".",
            "a.",
            ".a",
            "a..b",
            "a.*",
            "a.>",
            "a*",
            "a.b>c",
            "a b",
            "a\tb",
            "a\n",
            "a.\u{7}",
            long.as_str(),
        ] {
            assert!(validate_subject(bad).is_err(), "{bad:?} must be refused");
        }
        assert!(validate_subject(&"a".repeat(MAX_SUBJECT_BYTES)).is_ok());
    }

    #[test]
    fn patterns_are_validated() {
        for good in [
            "order.created",
            "order.*",
            "*.created",
            "*",
            ">",
            "order.>",
            "*.*.>",
        ] {
            assert_eq!(validate_pattern(good), Ok(()), "{good}");
        }
        for bad in [
            "", "a..b", "a.", ">.a", "a.>.b", "a*", "a.*b", "a.b>", "a b", "*.>>",
        ] {
            assert!(validate_pattern(bad).is_err(), "{bad:?} must be refused");
        }
    }

    #[test]
    fn components_are_single_tokens() {
        assert!(validate_component("catalog").is_ok());
        assert!(validate_component("order-service_2").is_ok());
        for bad in ["", "a.b", "a*", ">", "a b"] {
            assert!(validate_component(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn headers_are_validated() {
        let ok = vec![
            ("content-type".to_string(), "application/json".to_string()),
            ("x-trace".to_string(), String::new()),
        ];
        assert_eq!(validate_headers(&ok), Ok(()));
        for (name, value) in [
            ("", "v"),
            ("a b", "v"),
            ("a:b", "v"),
            ("Nats-Msg-Id", "v"),
            ("nats-expected-stream", "v"),
            ("é", "v"),
            ("a", "line\nbreak"),
            ("a", "cr\r"),
        ] {
            let headers = vec![(name.to_string(), value.to_string())];
            assert!(validate_headers(&headers).is_err(), "{name:?}: {value:?}");
        }
    }

    #[test]
    fn dead_letter_subjects_name_component_and_subject() {
        assert_eq!(
            dead_letter_subject("catalog", "order.created"),
            "dlq.catalog.order.created"
        );
        assert!(validate_subject(&dead_letter_subject("catalog", "order.created")).is_ok());
    }

    #[test]
    fn consumer_names_are_valid_distinct_and_readable() {
        let name = consumer_name("catalog", "order.created");
        assert!(name.starts_with("catalog__order_created__"), "{name}");
        let pairs = [
            ("catalog", "order.created"),
            ("catalog", "order_created"),
            ("catalog_order", "created"),
            ("catalog", "order.*"),
            ("catalog", "order._star_"),
            ("catalog", "order.>"),
            ("catalog", "order._all_"),
            ("other", "order.created"),
        ];
        let names: std::collections::HashSet<String> =
            pairs.iter().map(|(c, s)| consumer_name(c, s)).collect();
        assert_eq!(names.len(), pairs.len(), "distinct pairs, distinct names");
        for (component, pattern) in pairs {
            let name = consumer_name(component, pattern);
            assert!(
                !name.contains(['.', '*', '>', ' ', '/', '\\']),
                "{name} is a valid NATS name"
            );
        }
        let long = consumer_name(&"c".repeat(300), &format!("{}.>", "s".repeat(250)));
        assert!(long.len() <= 255, "{} characters", long.len());
        assert_eq!(
            consumer_name("a", "b.c"),
            consumer_name("a", "b.c"),
            "stable across calls and replicas"
        );
    }
}
