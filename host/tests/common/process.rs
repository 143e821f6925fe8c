//! The `agora` binary as a child process: started, read, signalled.

use std::io::{BufRead as _, BufReader, Read as _};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// The `agora` binary of this build, logging at `info`.
pub fn agora() -> Command {
    let mut command = Command::new(env!("CARGO_BIN_EXE_agora"));
    command.env("RUST_LOG", "info");
    command
}

/// A child process that ends with its owner: dropping the guard kills the process if it still
/// runs and reaps it, so a test that fails half-way (a panic unwinds through it) leaves nothing
/// running. Derefs to the [`Child`].
pub struct ChildGuard(Child);

impl ChildGuard {
    /// Spawns `command` under a guard.
    pub fn spawn(command: &mut Command) -> ChildGuard {
        ChildGuard(
            command
                .spawn()
                .unwrap_or_else(|err| panic!("cannot start {command:?}: {err}")),
        )
    }

    /// Waits for the exit and collects the rest of the piped output, as
    /// [`Child::wait_with_output`] does.
    pub fn wait_with_output(mut self) -> std::process::Output {
        let mut stdout = Vec::new();
        let mut stderr = Vec::new();
        if let Some(mut out) = self.0.stdout.take() {
            out.read_to_end(&mut stdout).unwrap();
        }
        if let Some(mut err) = self.0.stderr.take() {
            err.read_to_end(&mut stderr).unwrap();
        }
        let status = self.0.wait().unwrap();
        std::process::Output {
            status,
            stdout,
            stderr,
        }
    }
}

impl std::ops::Deref for ChildGuard {
    type Target = Child;
    fn deref(&self) -> &Child {
        &self.0
    }
}

impl std::ops::DerefMut for ChildGuard {
    fn deref_mut(&mut self) -> &mut Child {
        &mut self.0
    }
}

impl Drop for ChildGuard {
    fn drop(&mut self) {
        if matches!(self.0.try_wait(), Ok(None)) {
            let _ = self.0.kill();
        }
        let _ = self.0.wait();
    }
}

/// Waits for `child` to exit, killing it (and failing) after `limit`.
pub fn wait_with_limit(child: &mut Child, limit: Duration) -> std::process::ExitStatus {
    let deadline = Instant::now() + limit;
    loop {
        if let Some(status) = child.try_wait().unwrap() {
            return status;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            panic!("agora did not exit within {limit:?}");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Sends `signal` to `child`.
pub fn signal(child: &Child, signal: libc::c_int) {
    let pid = libc::pid_t::try_from(child.id()).unwrap();
    // SAFETY: sending a signal to our own child process.
    assert_eq!(unsafe { libc::kill(pid, signal) }, 0);
}

/// A running `agora serve` child, its address and (once it exits) its stderr. Dropped without
/// [`Agora::stop`] (a failed test), the process is killed.
pub struct Agora {
    pub child: ChildGuard,
    pub addr: String,
    pub log: std::thread::JoinHandle<String>,
    /// The lines it prints after the listening line (read on a thread of their own, so its
    /// stdout never closes under it).
    pub lines: std::sync::mpsc::Receiver<String>,
}

impl Agora {
    /// Starts `agora serve --manifest MANIFEST --data-dir DATA ARGS…` on an ephemeral port and
    /// reads its address from the listening line.
    pub fn start(manifest: &Path, data_dir: &Path, env: &[(&str, &str)], args: &[&str]) -> Agora {
        let mut child = ChildGuard::spawn(
            agora()
                .envs(env.iter().copied())
                .args(["serve", "--listen", "127.0.0.1:0", "--drain-timeout", "10"])
                .arg("--manifest")
                .arg(manifest)
                .arg("--data-dir")
                .arg(data_dir)
                .args(args)
                .stdout(Stdio::piped())
                .stderr(Stdio::piped()),
        );
        // Drain stderr continuously: a full pipe would block the server's logging.
        let mut stderr = child.stderr.take().unwrap();
        let log = std::thread::spawn(move || {
            let mut text = String::new();
            let _ = stderr.read_to_string(&mut text);
            text
        });
        let mut line = String::new();
        let mut stdout = BufReader::new(child.stdout.take().unwrap());
        stdout.read_line(&mut line).unwrap();
        let (sender, lines) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            for line in stdout.lines().map_while(Result::ok) {
                if sender.send(line).is_err() {
                    break;
                }
            }
        });
        let Some(addr) = line.trim().strip_prefix("agora listening on http://") else {
            let _ = child.kill();
            panic!(
                "unexpected first line: {line:?}; log: {}",
                log.join().unwrap_or_default()
            );
        };
        let addr = addr.to_owned();
        Agora {
            child,
            addr,
            log,
            lines,
        }
    }

    /// The rest of the first line printed after the listening line that starts with
    /// `prefix` (within 10 s), e.g. the address of `agora metrics on http://`.
    pub fn line_after(&self, prefix: &str) -> String {
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        loop {
            let left = deadline.saturating_duration_since(std::time::Instant::now());
            match self.lines.recv_timeout(left) {
                Ok(line) => {
                    if let Some(rest) = line.strip_prefix(prefix) {
                        return rest.trim().to_owned();
                    }
                }
                Err(_) => panic!("no line starting with {prefix:?} within 10 s"),
            }
        }
    }

    /// Sends `signal_number`, waits for the exit and returns its code and everything logged.
    pub fn stop(self, signal_number: libc::c_int) -> (Option<i32>, String) {
        signal(&self.child, signal_number);
        self.wait()
    }

    /// Waits (20 s at most) for the exit and returns its code and everything logged.
    pub fn wait(mut self) -> (Option<i32>, String) {
        let status = wait_with_limit(&mut self.child, Duration::from_secs(20));
        (status.code(), self.log.join().unwrap())
    }
}
