//! [`Rate`]: how many requests per period, and how many at once.

use std::fmt;
use std::str::FromStr;
use std::time::Duration;

/// The largest `N` a rate string may give.
pub const MAX_LIMIT: u32 = 1_000_000;

/// N requests per period, bursts up to `burst` (default N).
///
/// Parsed from `"<N>/<unit>"`, the unit one of `s`, `sec`, `second`, `m`, `min`, `minute`,
/// `h`, `hour`, with `1 <= N <= 1_000_000`. A value built by hand is used as if `limit` and
/// `burst` were at least 1 and `period` at least 1 µs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Rate {
    /// Tokens added to the bucket per `period`.
    pub limit: u32,
    /// The period `limit` is counted over.
    pub period: Duration,
    /// The bucket's capacity: how many requests may come at once.
    pub burst: u32,
}

impl Rate {
    /// The same rate with bursts of up to `burst` requests (0 is taken as 1).
    pub fn with_burst(self, burst: u32) -> Rate {
        Rate {
            burst: burst.max(1),
            ..self
        }
    }

    /// The rate as the backends use it: nothing zero.
    pub(crate) fn normalized(self) -> Rate {
        Rate {
            limit: self.limit.max(1),
            period: self.period.max(Duration::from_micros(1)),
            burst: self.burst.max(1),
        }
    }
}

/// Why a rate string was refused; the message is one line naming the string.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct ParseRateError(String);

impl FromStr for Rate {
    type Err = ParseRateError;

    fn from_str(text: &str) -> Result<Rate, ParseRateError> {
        // Escaped, so the message stays one line whatever the input.
        let shown = text.escape_debug();
        let format = || ParseRateError(format!("rate `{shown}`: expected N/s, N/min or N/h"));
        let (count, unit) = text.trim().split_once('/').ok_or_else(format)?;
        if count.is_empty() || !count.bytes().all(|b| b.is_ascii_digit()) {
            return Err(format());
        }
        let period = match unit {
            "s" | "sec" | "second" => Duration::from_secs(1),
            "m" | "min" | "minute" => Duration::from_secs(60),
            "h" | "hour" => Duration::from_secs(3600),
            _ => return Err(format()),
        };
        let limit = count
            .parse::<u32>()
            .ok()
            .filter(|n| (1..=MAX_LIMIT).contains(n))
            .ok_or_else(|| {
                ParseRateError(format!(
                    "rate `{shown}`: N must be between 1 and {MAX_LIMIT}"
                ))
            })?;
        Ok(Rate {
            limit,
            period,
            burst: limit,
        })
    }
}

/// `10/s`, `100/min`, `5000/h`; another period as `Debug` shows it (`10/1.5s`). The burst is
/// not shown.
impl fmt::Display for Rate {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let limit = self.limit;
        let unit = match self.period.as_nanos() {
            1_000_000_000 => "s",
            60_000_000_000 => "min",
            3_600_000_000_000 => "h",
            _ => return write!(f, "{limit}/{:?}", self.period),
        };
        write!(f, "{limit}/{unit}")
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    fn rate(text: &str) -> Rate {
        text.parse().unwrap()
    }

    fn error(text: &str) -> String {
        text.parse::<Rate>().unwrap_err().to_string()
    }

    #[test]
    fn parses_every_unit() {
        let second = Duration::from_secs(1);
        let minute = Duration::from_secs(60);
        let hour = Duration::from_secs(3600);
        for (text, limit, period) in [
            ("10/s", 10, second),
            ("10/sec", 10, second),
            ("10/second", 10, second),
            ("100/m", 100, minute),
            ("100/min", 100, minute),
            ("100/minute", 100, minute),
            ("5000/h", 5000, hour),
            ("5000/hour", 5000, hour),
            ("1/s", 1, second),
            ("1000000/h", MAX_LIMIT, hour),
            (" 7/min\n", 7, minute),
            ("007/s", 7, second),
        ] {
            assert_eq!(
                rate(text),
                Rate {
                    limit,
                    period,
                    burst: limit
                },
                "{text}"
            );
        }
    }

    #[test]
    fn with_burst() {
        let r = rate("10/s").with_burst(25);
        assert_eq!((r.limit, r.burst), (10, 25));
        assert_eq!(r.period, Duration::from_secs(1));
        assert_eq!(rate("10/s").with_burst(0).burst, 1);
    }

    #[test]
    fn refuses_bad_formats() {
        for text in [
            "",
            "10",
            "10/",
            "/s",
            "s",
            "10/d",
            "10/S",
            "10/ms",
            "10/secs",
            "10 /s",
            "10/ s",
            "+10/s",
            "-1/s",
            "1.5/s",
            "ten/s",
            "10/s/s",
            "10/s burst 20",
            "1e3/s",
        ] {
            assert_eq!(
                error(text),
                format!("rate `{text}`: expected N/s, N/min or N/h"),
                "{text:?}"
            );
        }
    }

    #[test]
    fn refuses_out_of_range() {
        for text in [
            "0/s",
            "000/min",
            "1000001/s",
            "4294967296/h",
            "99999999999999999999/s",
        ] {
            assert_eq!(
                error(text),
                format!("rate `{text}`: N must be between 1 and 1000000"),
                "{text}"
            );
        }
    }

    #[test]
    fn messages_are_one_line() {
        assert_eq!(error("x\ny"), "rate `x\\ny`: expected N/s, N/min or N/h");
        assert!(!error("0/s\n\n").contains('\n'));
    }

    #[test]
    fn displays_as_parsed() {
        for text in ["10/s", "100/min", "5000/h", "1000000/s"] {
            assert_eq!(rate(text).to_string(), text);
        }
        assert_eq!(rate("1/second").to_string(), "1/s");
        assert_eq!(rate("3/hour").with_burst(9).to_string(), "3/h");
        let odd = Rate {
            limit: 10,
            period: Duration::from_millis(1500),
            burst: 10,
        };
        assert_eq!(odd.to_string(), "10/1.5s");
    }

    #[test]
    fn normalized() {
        let zero = Rate {
            limit: 0,
            period: Duration::ZERO,
            burst: 0,
        };
        assert_eq!(
            zero.normalized(),
            Rate {
                limit: 1,
                period: Duration::from_micros(1),
                burst: 1
            }
        );
    }
}
