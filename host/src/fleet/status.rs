//! What `agora status` and `agora deploy` say of a fleet: each replica's verdict on the desired
//! versions, as text. Reads [`Desired`] and [`ReplicaReport`]s; talks to no one.

use super::{ComponentReport, Desired, ReplicaReport};
use crate::manifest::one_line;
use std::fmt::Write as _;
use std::time::SystemTime;

/// The first 12 hex digits of `digest`, or `-` for none.
fn short(digest: &str) -> &str {
    if digest.is_empty() {
        "-"
    } else {
        &digest[..digest.len().min(12)]
    }
}

fn human_size(size: u64) -> String {
    if size >= 1 << 20 {
        format!("{:.1} MiB", size as f64 / (1u64 << 20) as f64)
    } else if size >= 1 << 10 {
        format!("{:.1} KiB", size as f64 / 1024.0)
    } else {
        format!("{size} B")
    }
}

/// How long before `now` the RFC 3339 time `at` was: `12 s ago`, `3 min ago`, `5 h ago`.
fn age(at: &str, now: SystemTime) -> String {
    let Ok(at_time) =
        time::OffsetDateTime::parse(at, &time::format_description::well_known::Rfc3339)
    else {
        return format!("at {at}");
    };
    let seconds = (time::OffsetDateTime::from(now) - at_time)
        .whole_seconds()
        .max(0);
    if seconds < 120 {
        format!("{seconds} s ago")
    } else if seconds < 120 * 60 {
        format!("{} min ago", seconds / 60)
    } else {
        format!("{} h ago", seconds / 3600)
    }
}

/// Where the live replicas stand on one deployed version, replica ids in report order.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Verdicts {
    /// Replicas that run it.
    pub running: Vec<String>,
    /// Replicas that refused it (they keep their version), with the reason.
    pub refused: Vec<(String, String)>,
    /// Replicas that have not given a verdict yet.
    pub pending: Vec<String>,
}

impl Verdicts {
    /// Sorts every live replica that runs `component` by its verdict on `digest`; replicas
    /// without the component are not asked to run it and are left out. A refusal counts only
    /// when the report names `digest` as the version refused: one of an earlier version is
    /// still pending.
    pub fn of(replicas: &[ReplicaReport], component: &str, digest: &str) -> Verdicts {
        let mut verdicts = Verdicts::default();
        for replica in replicas {
            let Some(report) = replica.components.iter().find(|c| c.name == component) else {
                continue;
            };
            let id = replica.replica.clone();
            if report.digest == digest {
                verdicts.running.push(id);
            } else if let (Some(seen), Some(error)) = (&report.desired, &report.error)
                && seen == digest
            {
                verdicts.refused.push((id, one_line(error)));
            } else {
                verdicts.pending.push(id);
            }
        }
        verdicts
    }

    /// Every replica asked has answered.
    pub fn complete(&self) -> bool {
        self.pending.is_empty()
    }

    /// One line naming each replica by verdict, e.g. `1 of 3 replica(s) refused it and keep
    /// their version: r2 (no export); 2 run it: r1, r3`.
    pub fn summary(&self) -> String {
        let total = self.running.len() + self.refused.len() + self.pending.len();
        let refused: Vec<String> = self
            .refused
            .iter()
            .map(|(id, reason)| format!("{id} ({reason})"))
            .collect();
        let parts = [
            (
                self.refused.len(),
                format!("refused it and keep their version: {}", refused.join("; ")),
            ),
            (
                self.pending.len(),
                format!("did not answer: {}", self.pending.join(", ")),
            ),
            (
                self.running.len(),
                format!("run it: {}", self.running.join(", ")),
            ),
        ];
        let mut line = String::new();
        for (count, text) in parts.iter().filter(|(count, _)| *count > 0) {
            if line.is_empty() {
                let _ = write!(line, "{count} of {total} replica(s) {text}");
            } else {
                let _ = write!(line, "; {count} {text}");
            }
        }
        if line.is_empty() {
            line.push_str("no live replica runs the component");
        }
        line
    }
}

/// How a replica's component compares with the fleet's desired version of it.
fn verdict(component: &ComponentReport, desired: Option<&Desired>) -> String {
    let Some(desired) = desired else {
        return match &component.error {
            Some(error) => format!("refused: {}", one_line(error)),
            None => "not deployed through the fleet".to_string(),
        };
    };
    if component.digest == desired.digest {
        return "in sync".to_string();
    }
    match &component.error {
        // A refusal of this desired version (or of one the report does not name).
        Some(error)
            if component
                .desired
                .as_deref()
                .is_none_or(|seen| seen == desired.digest) =>
        {
            format!("refused: {}", one_line(error))
        }
        _ => format!("differs (desired {})", short(&desired.digest)),
    }
}

/// The text `agora status` prints: the desired versions, then one block per replica with each
/// component's running digest (first 12 hex digits), how it compares with the desired version
/// (`in sync`, `differs (desired …)`, `refused: <error>`, `missing (desired …)` for a desired
/// component the replica does not run) and the age of the report at `now`.
pub fn format_status(desired: &[Desired], replicas: &[ReplicaReport], now: SystemTime) -> String {
    let width = desired
        .iter()
        .map(|d| d.component.len())
        .chain(
            replicas
                .iter()
                .flat_map(|r| r.components.iter().map(|c| c.name.len())),
        )
        .max()
        .unwrap_or(0);
    let mut out = String::new();
    if desired.is_empty() {
        out.push_str("desired versions: none\n");
    } else {
        let _ = writeln!(out, "desired versions ({}):", desired.len());
        for d in desired {
            let _ = writeln!(
                out,
                "  {:width$}  {:12}  {:>9}  deployed {}  revision {}",
                d.component,
                short(&d.digest),
                human_size(d.size),
                d.deployed_at,
                d.revision,
            );
        }
    }
    if replicas.is_empty() {
        out.push_str("replicas: none reporting\n");
        return out;
    }
    let _ = writeln!(out, "replicas ({}):", replicas.len());
    for replica in replicas {
        let _ = writeln!(
            out,
            "  {} on {}, reported {}",
            replica.replica,
            replica.hostname,
            age(&replica.reported_at, now)
        );
        for component in &replica.components {
            let wanted = desired.iter().find(|d| d.component == component.name);
            let _ = writeln!(
                out,
                "    {:width$}  {:12}  {}",
                component.name,
                short(&component.digest),
                verdict(component, wanted)
            );
        }
        for d in desired {
            if !replica.components.iter().any(|c| c.name == d.component) {
                let _ = writeln!(
                    out,
                    "    {:width$}  {:12}  missing (desired {})",
                    d.component,
                    "-",
                    short(&d.digest)
                );
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::fleet::timestamp;
    use std::time::Duration;

    const A: &str = "aaaaaaaaaaaa0000000000000000000000000000000000000000000000000000";
    const B: &str = "bbbbbbbbbbbb0000000000000000000000000000000000000000000000000000";

    fn at(seconds: u64) -> SystemTime {
        SystemTime::UNIX_EPOCH + Duration::from_secs(1_800_000_000 + seconds)
    }

    fn desired(component: &str, digest: &str) -> Desired {
        Desired {
            component: component.into(),
            digest: digest.into(),
            size: 2048,
            deployed_at: timestamp(at(0)),
            revision: 7,
        }
    }

    fn running(
        name: &str,
        digest: &str,
        seen: Option<&str>,
        error: Option<&str>,
    ) -> ComponentReport {
        ComponentReport {
            name: name.into(),
            digest: digest.into(),
            loaded_at: timestamp(at(1)),
            desired: seen.map(Into::into),
            error: error.map(Into::into),
        }
    }

    fn replica(id: &str, components: Vec<ComponentReport>) -> ReplicaReport {
        ReplicaReport {
            replica: id.into(),
            hostname: "web-1".into(),
            started_at: timestamp(at(0)),
            reported_at: timestamp(at(10)),
            components,
        }
    }

    #[test]
    fn in_sync() {
        let text = format_status(
            &[desired("api", A)],
            &[replica("r1", vec![running("api", A, Some(A), None)])],
            at(13),
        );
        assert_eq!(
            text,
            "desired versions (1):\n\
             \x20 api  aaaaaaaaaaaa    2.0 KiB  deployed 2027-01-15T08:00:00Z  revision 7\n\
             replicas (1):\n\
             \x20 r1 on web-1, reported 3 s ago\n\
             \x20   api  aaaaaaaaaaaa  in sync\n"
        );
    }

    #[test]
    fn differs() {
        let text = format_status(
            &[desired("api", B)],
            &[replica("r1", vec![running("api", A, Some(A), None)])],
            at(10 + 300),
        );
        assert!(
            text.contains("    api  aaaaaaaaaaaa  differs (desired bbbbbbbbbbbb)\n"),
            "{text}"
        );
        assert!(text.contains("reported 5 min ago"), "{text}");
    }

    #[test]
    fn refused() {
        let text = format_status(
            &[desired("api", B)],
            &[replica(
                "r1",
                vec![running(
                    "api",
                    A,
                    Some(B),
                    Some("does not export\nwasi:http"),
                )],
            )],
            at(10),
        );
        assert!(
            text.contains("    api  aaaaaaaaaaaa  refused: does not export wasi:http\n"),
            "{text}"
        );
    }

    #[test]
    fn an_earlier_refusal_is_not_one_of_the_new_version() {
        // The replica refused A's predecessor and has not seen B yet.
        let text = format_status(
            &[desired("api", B)],
            &[replica(
                "r1",
                vec![running("api", A, Some(A), Some("refused earlier"))],
            )],
            at(10),
        );
        assert!(text.contains("differs (desired bbbbbbbbbbbb)"), "{text}");
    }

    #[test]
    fn no_replicas() {
        let text = format_status(&[desired("api", A)], &[], at(0));
        assert!(text.ends_with("replicas: none reporting\n"), "{text}");
        assert!(text.starts_with("desired versions (1):\n"), "{text}");
    }

    #[test]
    fn nothing_at_all() {
        assert_eq!(
            format_status(&[], &[], at(0)),
            "desired versions: none\nreplicas: none reporting\n"
        );
    }

    #[test]
    fn missing_and_unmanaged_components() {
        let text = format_status(
            &[desired("api", A), desired("worker", B)],
            &[replica(
                "r1",
                vec![
                    running("api", A, None, None),
                    running("shop", B, None, None),
                ],
            )],
            at(10),
        );
        assert!(
            text.contains("    shop    bbbbbbbbbbbb  not deployed through the fleet\n"),
            "{text}"
        );
        assert!(
            text.contains("    worker  -             missing (desired bbbbbbbbbbbb)\n"),
            "{text}"
        );
        assert!(
            text.contains("    api     aaaaaaaaaaaa  in sync\n"),
            "{text}"
        );
    }

    #[test]
    fn verdicts_name_each_replica_and_wait_for_all_of_them() {
        let replicas = [
            replica("r1", vec![running("api", B, Some(B), None)]),
            replica("r2", vec![running("api", A, Some(B), Some("no\nexport"))]),
            // Has not seen B yet: its refusal is of an earlier version.
            replica("r3", vec![running("api", A, Some(A), Some("earlier"))]),
            // Does not run the component: not asked.
            replica("r4", vec![running("shop", A, None, None)]),
        ];
        let verdicts = Verdicts::of(&replicas, "api", B);
        assert_eq!(verdicts.running, ["r1"]);
        assert_eq!(
            verdicts.refused,
            [("r2".to_string(), "no export".to_string())]
        );
        assert_eq!(verdicts.pending, ["r3"]);
        assert!(!verdicts.complete());
        assert_eq!(
            verdicts.summary(),
            "1 of 3 replica(s) refused it and keep their version: r2 (no export); \
             1 did not answer: r3; 1 run it: r1"
        );

        let all_refused = Verdicts::of(&replicas[1..2], "api", B);
        assert!(all_refused.complete());
        assert_eq!(
            all_refused.summary(),
            "1 of 1 replica(s) refused it and keep their version: r2 (no export)"
        );
        let none = Verdicts::of(&replicas[3..], "api", B);
        assert!(none.complete());
        assert_eq!(none.summary(), "no live replica runs the component");
        assert_eq!(
            Verdicts::of(&replicas[..1], "api", B).summary(),
            "1 of 1 replica(s) run it: r1"
        );
    }

    #[test]
    fn ages() {
        assert_eq!(age(&timestamp(at(0)), at(59)), "59 s ago");
        assert_eq!(age(&timestamp(at(0)), at(3 * 3600)), "3 h ago");
        assert_eq!(age(&timestamp(at(10)), at(0)), "0 s ago");
        assert_eq!(age("yesterday", at(0)), "at yesterday");
    }
}
