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

/// The name (if one of [`SERVING`]) and CPU seconds of one `/proc/PID/stat` line.
fn parse_stat(stat: &str) -> Option<(&'static str, f64)> {
    // `PID (comm) state ppid …`: comm may hold spaces and parentheses, so split at the last ')'.
    let open = stat.find('(')?;
    let close = stat.rfind(')')?;
    let comm = stat.get(open + 1..close)?;
    let name = SERVING.iter().find(|name| **name == comm)?;
    let mut fields = stat.get(close + 2..)?.split_ascii_whitespace();
    // After the comm: state is field 3 of the line, utime 14 and stime 15.
    let utime: f64 = fields.nth(11)?.parse().ok()?;
    let stime: f64 = fields.next()?.parse().ok()?;
    Some((name, (utime + stime) / TICKS_PER_SECOND))
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
