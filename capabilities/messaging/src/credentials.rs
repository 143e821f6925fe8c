//! How the host authenticates to NATS: what an operator needs so that strangers on the
//! network cannot publish `payment.succeeded` (docs/security.md).
//!
//! - User and password in the URL: `nats://user:password@host:4222` (percent-encoded where
//!   needed).
//! - A token in the URL: `nats://token@host:4222`.
//! - A credentials file (a user JWT and its NKey seed, as `nsc` writes it), named by
//!   [`CREDS_VAR`]: decentralised auth, with each host's subjects limited by its JWT.
//!
//! async-nats reads none of these from the URL by itself: [`connect_options`] turns them into
//! its options and hands back the URL without them, so secrets never reach a log line.

use std::path::PathBuf;

/// Environment variable naming a NATS credentials file, for every NATS connection the
/// process makes (`agora serve`, `deploy`, `status`).
pub const CREDS_VAR: &str = "AGORA_NATS_CREDS";

/// Connect options carrying the credentials of `url` (or of the file in [`CREDS_VAR`]), and
/// the URL without its user info. The error names the problem, never the secret.
pub async fn connect_options(url: &str) -> Result<(async_nats::ConnectOptions, String), String> {
    let creds = std::env::var_os(CREDS_VAR)
        .filter(|value| !value.is_empty())
        .map(PathBuf::from);
    connect_options_with(url, creds).await
}

/// [`connect_options`] with the credentials file given rather than read from [`CREDS_VAR`].
pub async fn connect_options_with(
    url: &str,
    creds: Option<PathBuf>,
) -> Result<(async_nats::ConnectOptions, String), String> {
    let (stripped, user_info) = split_user_info(url);
    let options = match (user_info, creds) {
        (Some(_), Some(_)) => {
            return Err(format!(
                "NATS credentials given twice: in the URL and in {CREDS_VAR}; keep one"
            ));
        }
        (None, Some(path)) => async_nats::ConnectOptions::with_credentials_file(&path)
            .await
            .map_err(|err| {
                format!(
                    "cannot use the NATS credentials file {} ({CREDS_VAR}): {err}",
                    path.display()
                )
            })?,
        (Some((user, Some(password))), None) => async_nats::ConnectOptions::with_user_and_password(
            percent_decode(&user)?,
            percent_decode(&password)?,
        ),
        (Some((token, None)), None) => {
            async_nats::ConnectOptions::with_token(percent_decode(&token)?)
        }
        (None, None) => async_nats::ConnectOptions::new(),
    };
    Ok((options, stripped))
}

/// `url` without user info, and the user info as `(user, password)`. Several comma-separated
/// URLs share the first one's user info (as NATS clusters share accounts).
fn split_user_info(url: &str) -> (String, Option<(String, Option<String>)>) {
    let mut found = None;
    let parts: Vec<String> = url
        .split(',')
        .map(|part| {
            let Some((scheme, rest)) = part.split_once("://") else {
                return part.to_owned();
            };
            let end = rest.find(['/', '?']).unwrap_or(rest.len());
            let (authority, tail) = rest.split_at(end);
            match authority.rfind('@') {
                Some(at) => {
                    let info = &authority[..at];
                    if found.is_none() {
                        found = Some(match info.split_once(':') {
                            Some((user, password)) => (user.to_owned(), Some(password.to_owned())),
                            None => (info.to_owned(), None),
                        });
                    }
                    format!("{scheme}://{}{tail}", &authority[at + 1..])
                }
                None => part.to_owned(),
            }
        })
        .collect();
    (parts.join(","), found)
}

fn percent_decode(text: &str) -> Result<String, String> {
    let bytes = text.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%' {
            let hex = text
                .get(i + 1..i + 3)
                .and_then(|h| u8::from_str_radix(h, 16).ok())
                .ok_or("a `%` in the NATS URL's credentials is not followed by two hex digits")?;
            out.push(hex);
            i += 3;
        } else {
            out.push(bytes[i]);
            i += 1;
        }
    }
    String::from_utf8(out).map_err(|_| "the NATS URL's credentials are not UTF-8".to_owned())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn user_info_is_taken_out_of_the_url() {
        for (url, stripped, info) in [
            ("nats://127.0.0.1:4222", "nats://127.0.0.1:4222", None),
            (
                "nats://ann:s%40cret@h:4222",
                "nats://h:4222",
                Some(("ann", Some("s%40cret"))),
            ),
            ("nats://tok@h", "nats://h", Some(("tok", None))),
            (
                "nats://u:p@a:1,nats://u:p@b:2/x",
                "nats://a:1,nats://b:2/x",
                Some(("u", Some("p"))),
            ),
        ] {
            let (got, found) = split_user_info(url);
            assert_eq!(got, stripped, "{url}");
            let found = found.as_ref().map(|(u, p)| (u.as_str(), p.as_deref()));
            assert_eq!(found, info, "{url}");
        }
        assert_eq!(percent_decode("s%40cret").as_deref(), Ok("s@cret"));
        assert!(percent_decode("bad%4").is_err());
    }
}
