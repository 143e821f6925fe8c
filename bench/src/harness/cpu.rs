//! CPU time by process name, read from Linux's `/proc`: what a phase of a bench cost each of
//! the processes that serve it (the host, PostgreSQL's backends, NATS, Redis, the bench
//! itself), so a figure per order says where the machine's cores went.

use std::collections::BTreeMap;

/// The processes a bench reports, by the name the kernel gives them (`comm`).
pub(crate) const SERVING: [&str; 5] = [
    "agora",
    "postgres",
    "nats-server",
    "redis-server",
    "agora-bench",
];

/// Clock ticks per second of `/proc/*/stat` (`USER_HZ`, 100 on every Linux architecture the
/// project builds for).
const TICKS_PER_SECOND: f64 = 100.0;

/// CPU seconds (user + system) spent so far by the live processes named in [`SERVING`],
/// summed by name. Empty where there is no `/proc`.
#[derive(Clone, Default)]
pub(crate) struct CpuTimes(BTreeMap<&'static str, f64>);

impl CpuTimes {
    pub(crate) fn now() -> Self {
        let mut times = BTreeMap::new();
        let Ok(entries) = std::fs::read_dir("/proc") else {
            return Self(times);
        };
        for entry in entries.flatten() {
            let Some(stat) = std::fs::read_to_string(entry.path().join("stat")).ok() else {
                continue;
            };
            if let Some((name, seconds)) = parse_stat(&stat) {
                *times.entry(name).or_insert(0.0) += seconds;
            }
        }
        Self(times)
    }

    /// CPU seconds each name spent since `earlier`. A process that ended in between is
    /// missed, one that started is counted whole: take both ends while the same processes
    /// serve.
    pub(crate) fn since(&self, earlier: &Self) -> Vec<(&'static str, f64)> {
        SERVING
            .iter()
            .filter_map(|name| {
                let now = self.0.get(name)?;
                Some((*name, (now - earlier.0.get(name).unwrap_or(&0.0)).max(0.0)))
            })
            .collect()
    }
}

/// Whose CPU time a side of a measurement is: a process of its own (a host), or threads of
/// this one (a native baseline served on a runtime of the bench, apart from its load
/// generator's thread).
#[derive(Debug, Clone, Copy)]
pub(crate) enum CpuOf {
    /// The process with this id.
    Process(u32),
    /// This process's threads with this name (at most 15 bytes, the kernel's `comm`).
    OwnThreads(&'static str),
}

impl CpuOf {
    /// CPU seconds (user + system) spent so far; `None` without `/proc`.
    pub(crate) fn seconds(self) -> Option<f64> {
        match self {
            CpuOf::Process(pid) => {
                seconds_of(&std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?)
            }
            CpuOf::OwnThreads(name) => {
                let mut total = 0.0;
                for task in std::fs::read_dir("/proc/self/task").ok()?.flatten() {
                    let Ok(stat) = std::fs::read_to_string(task.path().join("stat")) else {
                        continue; // a thread that ended meanwhile
                    };
                    if comm_of(&stat) == Some(name) {
                        total += seconds_of(&stat)?;
                    }
                }
                Some(total)
            }
        }
    }
}

/// The name (if one of [`SERVING`]) and CPU seconds of one `/proc/PID/stat` line.
fn parse_stat(stat: &str) -> Option<(&'static str, f64)> {
    let comm = comm_of(stat)?;
    let name = SERVING.iter().find(|name| **name == comm)?;
    Some((name, seconds_of(stat)?))
}

/// The command name of a `/proc/PID/stat` line: `PID (comm) state ppid …`, where comm may hold
/// spaces and parentheses, so it ends at the last ')'.
fn comm_of(stat: &str) -> Option<&str> {
    stat.get(stat.find('(')? + 1..stat.rfind(')')?)
}

/// The CPU seconds (user + system) of a `/proc/PID/stat` line.
fn seconds_of(stat: &str) -> Option<f64> {
    let mut fields = stat.get(stat.rfind(')')? + 2..)?.split_ascii_whitespace();
    // After the comm: state is field 3 of the line, utime 14 and stime 15.
    let utime: f64 = fields.nth(11)?.parse().ok()?;
    let stime: f64 = fields.next()?.parse().ok()?;
    Some((utime + stime) / TICKS_PER_SECOND)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_stat_line_gives_its_name_and_cpu_seconds() {
        let line = "4242 (postgres) S 1 4242 4242 0 -1 4194560 812 0 0 0 150 25 0 0 20 0 1 0 \
                    3019 226541568 2840 18446744073709551615";
        assert_eq!(parse_stat(line), Some(("postgres", 1.75)));
        // A name with a space and a parenthesis is read to its last ')'; it is not ours.
        let other = "7 (a (b) c) S 1 7 7 0 -1 0 0 0 0 0 300 40 0 0 20 0 1 0 1 1 1 1";
        assert_eq!(parse_stat(other), None);
        assert_eq!(parse_stat("garbage"), None);
    }

    #[test]
    fn a_busy_thread_of_this_process_is_counted_by_its_name() {
        use std::sync::Arc;
        use std::sync::atomic::{AtomicBool, Ordering};
        use std::time::{Duration, Instant};
        if CpuOf::Process(std::process::id()).seconds().is_none() {
            return; // no /proc
        }
        assert_eq!(CpuOf::OwnThreads("no-such-thread").seconds(), Some(0.0));
        let stop = Arc::new(AtomicBool::new(false));
        let spin = std::thread::Builder::new()
            .name("cpu-of-test".into())
            .spawn({
                let stop = stop.clone();
                move || {
                    let mut x = 0u64;
                    while !stop.load(Ordering::Relaxed) {
                        x = std::hint::black_box(x.wrapping_add(1));
                    }
                    x
                }
            })
            .expect("a thread starts");
        // However busy the machine, the spinning thread's CPU time grows: wait for 50 ms of it
        // (five of `/proc`'s ticks), for at most a minute.
        let waited = Instant::now();
        let mut seen = 0.0;
        while waited.elapsed() < Duration::from_secs(60) {
            seen = CpuOf::OwnThreads("cpu-of-test")
                .seconds()
                .unwrap_or_default();
            if seen >= 0.05 {
                break;
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        stop.store(true, Ordering::Relaxed);
        spin.join().expect("the thread ends");
        assert!(seen >= 0.05, "the spinning thread showed {seen} s of CPU");
        // The whole process spent at least what one of its threads did.
        let process = CpuOf::Process(std::process::id())
            .seconds()
            .unwrap_or_default();
        assert!(process >= seen, "process {process} s < thread {seen} s");
    }

    #[test]
    fn this_process_is_seen_when_named_so() {
        let me = std::fs::read_to_string("/proc/self/stat").unwrap_or_default();
        if me.is_empty() {
            return;
        }
        let renamed = me.replacen(
            &me[me.find('(').unwrap_or(0)..=me.rfind(')').unwrap_or(0)],
            "(agora-bench)",
            1,
        );
        let (name, _) = parse_stat(&renamed).expect("a /proc stat line parses");
        assert_eq!(name, "agora-bench");
    }
}
