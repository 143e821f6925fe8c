//! The processes a bench runs besides itself: `agora serve` (the release build) started on a
//! free port with its address read from its stdout, the host stopped by SIGTERM, an OTLP/HTTP
//! sink for traced runs and a `/metrics` scraper for scraped ones.

use crate::target_dir;
use anyhow::{Context as _, bail};
use std::io::{BufRead as _, BufReader};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// `agora serve` of the release build on `manifest`, on a free port, its data in `data_dir`,
/// logging warnings only — or what `AGORA_BENCH_HOST_LOG` says (a `RUST_LOG` filter; the
/// host's log goes to the bench's stderr), to look inside a run.
pub(crate) fn agora_serve(manifest: &Path, data_dir: &Path) -> Command {
    let mut command = Command::new(target_dir().join("release/agora"));
    command
        .args(["serve", "--listen", "127.0.0.1:0", "--manifest"])
        .arg(manifest)
        .arg("--data-dir")
        .arg(data_dir)
        .env(
            "RUST_LOG",
            std::env::var("AGORA_BENCH_HOST_LOG").unwrap_or_else(|_| "warn".into()),
        );
    command
}

/// Starts `command` and reads `... http://ADDR` from the first line of its stdout.
pub(crate) fn spawn_and_read_addr(command: &mut Command) -> anyhow::Result<(Child, String)> {
    let mut child = command
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .with_context(|| format!("cannot start {command:?}"))?;
    let stdout = child.stdout.take().context("no stdout")?;
    let mut line = String::new();
    let mut reader = BufReader::new(stdout);
    reader.read_line(&mut line)?;
    // The rest of its output is read and dropped: a closed pipe must not stop it.
    std::thread::spawn(move || std::io::copy(&mut reader, &mut std::io::sink()));
    let Some(addr) = line
        .trim()
        .rsplit("http://")
        .next()
        .filter(|_| line.contains("http://"))
    else {
        let _ = child.kill();
        bail!("{command:?} did not print its address (got {line:?})");
    };
    Ok((child, addr.trim_end_matches('/').to_owned()))
}

pub(crate) fn free_port() -> anyhow::Result<u16> {
    Ok(std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port())
}

/// The host process; stopped with SIGTERM (so it drains) when dropped or stopped.
pub(crate) struct Host(pub(crate) Option<Child>);

impl Host {
    /// The process id, while it runs.
    pub(crate) fn pid(&self) -> Option<u32> {
        self.0.as_ref().map(Child::id)
    }

    pub(crate) fn stop(&mut self) {
        let Some(mut child) = self.0.take() else {
            return;
        };
        let _ = Command::new("kill")
            .args(["-TERM", &child.id().to_string()])
            .status();
        let deadline = Instant::now() + Duration::from_secs(40);
        while Instant::now() < deadline {
            if let Ok(Some(_)) = child.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        let _ = child.kill();
        let _ = child.wait();
    }
}

impl Drop for Host {
    fn drop(&mut self) {
        self.stop();
    }
}

/// Scrapes `GET /metrics` on `addr` every second until the server stops answering.
pub(crate) fn scrape_every_second(addr: String) {
    std::thread::spawn(move || {
        use std::io::{Read as _, Write as _};
        // The listener comes up with the public one; give it a moment.
        std::thread::sleep(Duration::from_millis(500));
        loop {
            let Ok(mut stream) = std::net::TcpStream::connect(&addr) else {
                return;
            };
            let request =
                format!("GET /metrics HTTP/1.1\r\nhost: {addr}\r\nconnection: close\r\n\r\n");
            if stream.write_all(request.as_bytes()).is_err() {
                return;
            }
            let mut scrape = Vec::new();
            let _ = stream.read_to_end(&mut scrape);
            std::thread::sleep(Duration::from_secs(1));
        }
    });
}

/// An OTLP/HTTP receiver that accepts and drops every export (the bench measures the cost of
/// exporting, not a collector); returns its endpoint.
pub(crate) fn otlp_sink() -> anyhow::Result<String> {
    let listener = std::net::TcpListener::bind("127.0.0.1:0")?;
    let endpoint = format!("http://{}", listener.local_addr()?);
    std::thread::spawn(move || {
        for stream in listener.incoming().map_while(Result::ok) {
            std::thread::spawn(move || drain_exports(stream));
        }
    });
    Ok(endpoint)
}

/// Answers 200 to each request of one keep-alive connection, reading its body.
fn drain_exports(stream: std::net::TcpStream) {
    use std::io::{Read as _, Write as _};
    let Ok(read_half) = stream.try_clone() else {
        return;
    };
    let mut reader = BufReader::new(read_half);
    let mut writer = stream;
    loop {
        let mut length = 0usize;
        let mut line = String::new();
        loop {
            line.clear();
            if reader.read_line(&mut line).unwrap_or(0) == 0 {
                return;
            }
            let header = line.trim_end();
            if header.is_empty() {
                break;
            }
            if let Some((name, value)) = header.split_once(':')
                && name.eq_ignore_ascii_case("content-length")
            {
                length = value.trim().parse().unwrap_or(0);
            }
        }
        let mut body = vec![0; length];
        if reader.read_exact(&mut body).is_err() {
            return;
        }
        let answer = "HTTP/1.1 200 OK\r\ncontent-length: 0\r\n\r\n";
        if writer.write_all(answer.as_bytes()).is_err() {
            return;
        }
    }
}
