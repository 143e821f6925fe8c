//! The edge against slow and abusive clients, on the real `agora` binary: one address opens
//! two thousand connections — half of them send half a request head and stop, half send a
//! body a byte at a time — while a client at another address keeps calling the same
//! component. The connection caps refuse the excess with 503, the header timeout closes the
//! half-sent heads, the body pace cuts the slow bodies with 408, the other client is answered
//! throughout, and the host's file descriptors stay bounded.

#![allow(clippy::unwrap_used)]

mod common;

use common::component_table;
use common::process::Agora;
use std::net::IpAddr;
use std::time::{Duration, Instant};
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tokio::net::TcpStream;

const PER_IP: usize = 64;

/// Open file descriptors of process `pid`.
fn open_fds(pid: u32) -> usize {
    std::fs::read_dir(format!("/proc/{pid}/fd"))
        .unwrap()
        .count()
}

/// How an attacker's connection ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
enum End {
    /// Answered with this status, then closed.
    Status(u16),
    /// Closed without an answer.
    Closed,
}

/// Reads what the server sends until it closes the connection (at most `limit`).
async fn read_end(stream: &mut TcpStream, limit: Duration) -> Option<End> {
    let mut answer = Vec::new();
    let read = tokio::time::timeout(limit, async {
        let mut buf = [0u8; 4096];
        loop {
            match stream.read(&mut buf).await {
                Ok(0) | Err(_) => break,
                Ok(n) => answer.extend_from_slice(&buf[..n]),
            }
        }
    })
    .await;
    read.ok()?;
    let text = String::from_utf8_lossy(&answer);
    Some(
        match text
            .strip_prefix("HTTP/1.1 ")
            .and_then(|rest| rest.get(..3))
            .and_then(|code| code.parse().ok())
        {
            Some(status) => End::Status(status),
            None => End::Closed,
        },
    )
}

/// One abusive connection: half a request head, or a body trickled a byte at a time. Returns
/// how it ended, or `None` if the server held it past `limit`.
async fn abuse(addr: String, slow_body: bool, limit: Duration) -> Option<End> {
    let Ok(mut stream) = TcpStream::connect(&addr).await else {
        return Some(End::Closed);
    };
    if slow_body {
        let head = "POST /echo HTTP/1.1\r\nhost: shop\r\ncontent-type: text/plain\r\ncontent-length: 100000\r\n\r\nab";
        if stream.write_all(head.as_bytes()).await.is_err() {
            return read_end(&mut stream, limit).await;
        }
        let started = Instant::now();
        // Two bytes a second, far below the pace the host asks for; stop when the server
        // answers or closes.
        loop {
            let mut buf = [0u8; 4096];
            tokio::select! {
                read = stream.read(&mut buf) => {
                    return match read {
                        Ok(n) if n > 0 => {
                            let mut rest = buf[..n].to_vec();
                            let _ = tokio::time::timeout(Duration::from_secs(2), stream.read_to_end(&mut rest)).await;
                            let text = String::from_utf8_lossy(&rest);
                            Some(text.strip_prefix("HTTP/1.1 ").and_then(|r| r.get(..3)).and_then(|c| c.parse().ok()).map_or(End::Closed, End::Status))
                        }
                        _ => Some(End::Closed),
                    };
                }
                () = tokio::time::sleep(Duration::from_millis(500)) => {
                    if started.elapsed() > limit {
                        return None;
                    }
                    if stream.write_all(b"x").await.is_err() {
                        return read_end(&mut stream, limit).await;
                    }
                }
            }
        }
    } else {
        let _ = stream
            .write_all(b"GET /echo HTTP/1.1\r\nhost: shop\r\nx-half: ")
            .await;
        read_end(&mut stream, limit).await
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_address_cannot_starve_another_of_a_component() {
    let dir = tempfile::tempdir().unwrap();
    let manifest = dir.path().join("agora.toml");
    std::fs::write(
        &manifest,
        component_table("echo", "fixture-echo", &["/echo", "/echo/..."], ""),
    )
    .unwrap();
    let agora = Agora::start(
        &manifest,
        &dir.path().join("data"),
        &[],
        &[
            "--max-connections-per-ip",
            &PER_IP.to_string(),
            "--max-connections",
            "1000",
            "--header-timeout-ms",
            "1500",
            "--body-min-rate",
            "1000",
            "--body-grace-ms",
            "1000",
        ],
    );
    let pid = agora.child.id();
    let addr = agora.addr.clone();
    let good = reqwest::Client::builder()
        .local_address("127.0.0.2".parse::<IpAddr>().unwrap())
        .build()
        .unwrap();
    let url = format!("http://{addr}/echo");
    assert_eq!(good.get(&url).send().await.unwrap().status(), 200);
    let baseline = open_fds(pid);

    // The attack: 2000 connections from 127.0.0.1 over about four seconds.
    let limit = Duration::from_secs(30);
    let attack = {
        let addr = addr.clone();
        tokio::spawn(async move {
            let mut tasks = Vec::new();
            for i in 0..2000 {
                tasks.push(tokio::spawn(abuse(addr.clone(), i % 2 == 1, limit)));
                tokio::time::sleep(Duration::from_millis(2)).await;
            }
            let mut ends = Vec::new();
            for task in tasks {
                ends.push(task.await.unwrap());
            }
            ends
        })
    };

    // Meanwhile the other client is answered, and the host's descriptors stay bounded.
    let mut most_fds = 0;
    let mut answered = 0;
    while !attack.is_finished() {
        let response = good
            .post(&url)
            .body("a small body, sent at once")
            .send()
            .await
            .unwrap();
        assert_eq!(
            response.status(),
            200,
            "the other client was refused: {:?}",
            response.text().await
        );
        answered += 1;
        most_fds = most_fds.max(open_fds(pid));
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let ends = attack.await.unwrap();
    assert!(
        answered >= 10,
        "only {answered} requests of the other client"
    );

    let held: Vec<_> = ends.iter().filter(|end| end.is_none()).collect();
    assert!(
        held.is_empty(),
        "{} connections were held open past {limit:?}",
        held.len()
    );
    let count = |wanted: End| ends.iter().filter(|end| **end == Some(wanted)).count();
    let refused = count(End::Status(503));
    let too_slow = count(End::Status(408));
    assert!(refused > 0, "no connection was refused: {ends:?}");
    assert!(too_slow > 0, "no slow body was cut with 408: {ends:?}");
    assert!(
        most_fds <= baseline + PER_IP + 40,
        "the host held {most_fds} descriptors under attack (baseline {baseline}, cap {PER_IP} per address)"
    );

    // Everything the attack opened is closed again.
    let deadline = Instant::now() + Duration::from_secs(20);
    while open_fds(pid) > baseline + 4 && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(
        open_fds(pid) <= baseline + 4,
        "descriptors left open: {} (baseline {baseline})",
        open_fds(pid)
    );
    let (code, log) = agora.stop(libc::SIGTERM);
    assert_eq!(code, Some(0), "{log}");
}
