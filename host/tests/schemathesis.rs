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
    let session: Value = http
        .post(format!("{base}/api/accounts/login"))
        .json(&json!({ "email": account["email"], "password": account["password"] }))
        .send()
        .unwrap()
        .json()
        .unwrap();
    let token = session["access_token"].as_str().unwrap().to_owned();

    let examples = std::env::var("SCHEMATHESIS_MAX_EXAMPLES").unwrap_or_else(|_| "15".into());
    let report = tempfile::tempdir().unwrap();
    let output = Command::new(&schemathesis)
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
        // These end the session whose token every other operation uses (deleting the
        // account, logging out, changing the password revoke it): fuzzed with it, they would
        // leave the rest of the run answering 401.
        .args([
            "--exclude-operation-id-regex",
            "^(deleteMe|logout|changePassword)$",
        ])
        .args(["--max-examples", &examples])
        .args(["--seed", "20261204"])
        .args(["--phases", "examples,coverage,fuzzing"])
        .args(["--workers", "2"])
        .args(["--request-timeout", "30"])
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&output.stdout);
    let stderr = String::from_utf8_lossy(&output.stderr);
    let (code, log) = agora.stop(libc::SIGTERM);
    assert!(
        output.status.success(),
        "schemathesis found problems:\n{stdout}\n{stderr}\n--- host log (tail) ---\n{}",
        log.lines()
            .rev()
            .take(40)
            .collect::<Vec<_>>()
            .into_iter()
            .rev()
            .collect::<Vec<_>>()
            .join("\n")
    );
    assert_eq!(code, Some(0), "{log}");
}
