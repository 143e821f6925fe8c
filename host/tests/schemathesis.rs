//! The shop against a tool nobody here wrote: schemathesis (PyPI) generates requests from
//! openapi.yaml — valid and invalid — and sends them to the real `agora` binary serving
//! agora.toml, with a customer's token on the authenticated routes. No answer may be a 5xx,
//! and every answer must conform to the spec: its status code, content type, headers and body
//! schema.
//!
//! The suite runs a short pass (`SCHEMATHESIS_MAX_EXAMPLES`, default 15 examples per
//! operation); a longer one is the command README.md gives. Without the `schemathesis`
//! command the test says SKIPPED — except under `CI=true`, where it fails (`.ci/run` installs
//! it with pip).

#![allow(clippy::unwrap_used)]

mod common;

use common::process::Agora;
use serde_json::{Value, json};
use std::path::Path;
use std::process::Command;

fn schemathesis() -> Option<String> {
    let command =
        std::env::var("AGORA_TEST_SCHEMATHESIS").unwrap_or_else(|_| "schemathesis".into());
    match Command::new(&command).arg("--version").output() {
        Ok(output) if output.status.success() => Some(command),
        _ if std::env::var("CI").as_deref() == Ok("true") => {
            panic!("schemathesis is required under CI=true: pip install schemathesis")
        }
        _ => {
            eprintln!("SKIPPED: no `schemathesis` command (pip install schemathesis)");
            None
        }
    }
}

#[test]
fn schemathesis_finds_no_server_error_and_no_answer_outside_the_spec() {
    let Some(schemathesis) = schemathesis() else {
        return;
    };
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    let data = tempfile::tempdir().unwrap();
    let agora = Agora::start(
        &root.join("agora.toml"),
        data.path(),
        &[
            ("AGORA_ADMIN_EMAIL", "admin@schemathesis.test"),
            ("AGORA_ADMIN_PASSWORD", "schemathesis-admin-password"),
        ],
        &[],
    );
    let base = format!("http://{}", agora.addr);
    let http = reqwest::blocking::Client::new();
    let account = json!({
        "email": "fuzz@schemathesis.test",
        "password": "correct horse battery",
        "name": "Fuzz"
    });
    let registered = http
        .post(format!("{base}/api/accounts/register"))
        .json(&account)
        .send()
        .unwrap();
    assert_eq!(registered.status(), 201);
    let login = |account: &Value| -> String {
        let session: Value = http
            .post(format!("{base}/api/accounts/login"))
            .json(&json!({ "email": account["email"], "password": account["password"] }))
            .send()
            .unwrap()
            .json()
            .unwrap();
        session["access_token"].as_str().unwrap().to_owned()
    };

    let examples = std::env::var("SCHEMATHESIS_MAX_EXAMPLES").unwrap_or_else(|_| "15".into());
    let report = tempfile::tempdir().unwrap();
    let run = |token: &str, operations: [&str; 2]| {
        Command::new(&schemathesis)
            .current_dir(report.path())
            .env("NO_COLOR", "1")
            .arg("run")
            .arg(root.join("openapi.yaml"))
            .args(["--url", &base])
            .args(["--header", &format!("Authorization: Bearer {token}")])
            .args([
                "--checks",
                "not_a_server_error,status_code_conformance,content_type_conformance,\
                 response_headers_conformance,response_schema_conformance",
            ])
            .args(operations)
            .args(["--max-examples", &examples])
            .args(["--seed", "20261204"])
            .args(["--phases", "examples,coverage,fuzzing"])
            .args(["--workers", "2"])
            .args(["--request-timeout", "30"])
            .output()
            .unwrap()
    };
    // These end the session whose token they carry (deleting the account, logging out,
    // changing the password revoke it): fuzzed with the first pass's token, they would leave
    // the rest of that pass answering 401. So the first pass leaves them out and a second
    // pass fuzzes them alone, with a session of their own.
    // Both sessions are opened first: the first pass fuzzes register and login too, and
    // their per-IP rate limits would refuse the second account afterwards.
    let own = json!({
        "email": "fuzz-ending@schemathesis.test",
        "password": "correct horse battery",
        "name": "Fuzz"
    });
    let registered = http
        .post(format!("{base}/api/accounts/register"))
        .json(&own)
        .send()
        .unwrap();
    assert_eq!(registered.status(), 201);
    let (token, own_token) = (login(&account), login(&own));
    let ending = "^(deleteMe|logout|changePassword)$";
    let first = run(&token, ["--exclude-operation-id-regex", ending]);
    let second = run(&own_token, ["--include-operation-id-regex", ending]);
    let (code, log) = agora.stop(libc::SIGTERM);
    let tail: Vec<&str> = log.lines().rev().take(40).collect();
    let tail: Vec<&str> = tail.into_iter().rev().collect();
    for (name, pass) in [("first", &first), ("second", &second)] {
        let stdout = String::from_utf8_lossy(&pass.stdout);
        let summary: Vec<&str> = stdout.lines().rev().take(12).collect();
        let summary: Vec<&str> = summary.into_iter().rev().collect();
        eprintln!("schemathesis, {name} pass:\n{}", summary.join("\n"));
        assert!(
            pass.status.success(),
            "schemathesis found problems in its {name} pass:\n{}\n{}\n--- host log (tail) ---\n{}",
            String::from_utf8_lossy(&pass.stdout),
            String::from_utf8_lossy(&pass.stderr),
            tail.join("\n")
        );
    }
    assert_eq!(code, Some(0), "{log}");
}
