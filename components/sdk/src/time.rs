//! Points in time as agora carries them: microseconds since the Unix epoch (the sql
//! interface's `timestamp`), written and read as RFC 3339 in UTC.
//!
//! The calendar is the [`time`](::time) crate's proleptic Gregorian one, so a date or a time of
//! day that does not exist (31 February, month 13, 25:00, 29 February of a common year) is
//! refused with a [`TimeError`] saying why, rather than rolled over into another day.
//!
//! What is written is always `YYYY-MM-DDTHH:MM:SS.ffffffZ` (six fraction digits, `Z`); what is
//! read is that, or any RFC 3339 time (`t`/`z` in lower case, fewer or more fraction digits,
//! an offset `±HH:MM`), or SQLite's `YYYY-MM-DD HH:MM:SS` (a space for `T`, no offset: UTC).
//! Every `i64` of microseconds (about ±292 000 years) is written, and read back unchanged.

use ::time::{Date, Month, OffsetDateTime, PlainDateTime, Time, UtcOffset};
use std::fmt;
use std::str::FromStr;

/// A point in time with microsecond precision, as the sql interface carries it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Timestamp(pub i64);

/// Why a text is not a time: the text, and what is wrong with it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TimeError {
    text: String,
    reason: String,
}

impl TimeError {
    fn new(text: &str, reason: impl Into<String>) -> TimeError {
        TimeError {
            text: text.to_owned(),
            reason: reason.into(),
        }
    }

    /// What is wrong with the text, e.g. `February 2026 has 28 days`.
    pub fn reason(&self) -> &str {
        &self.reason
    }
}

impl fmt::Display for TimeError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "`{}` is not an RFC 3339 time: {}",
            self.text, self.reason
        )
    }
}

impl std::error::Error for TimeError {}

const MICROS_PER_SECOND: i64 = 1_000_000;

impl Timestamp {
    /// The current wall-clock time.
    pub fn now() -> Timestamp {
        let since = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap_or_default();
        Timestamp(i64::try_from(since.as_micros()).unwrap_or(i64::MAX))
    }

    /// Microseconds since the Unix epoch.
    pub fn micros(self) -> i64 {
        self.0
    }

    /// RFC 3339 in UTC with microseconds: `2026-11-25T21:44:36.123456Z`.
    pub fn to_rfc3339(self) -> String {
        let at = self.date_time();
        format!(
            "{:04}-{:02}-{:02}T{:02}:{:02}:{:02}.{:06}Z",
            at.year(),
            u8::from(at.month()),
            at.day(),
            at.hour(),
            at.minute(),
            at.second(),
            at.microsecond()
        )
    }

    /// Reads an RFC 3339 time (see the module's documentation for the forms accepted);
    /// `None` when `text` is not one. [`str::parse`] says why.
    pub fn parse_rfc3339(text: &str) -> Option<Timestamp> {
        text.parse().ok()
    }

    /// The instant in the `time` crate's calendar, in UTC.
    fn date_time(self) -> OffsetDateTime {
        // Every i64 of microseconds lies within ±292 278 years, inside the ±999 999 years the
        // `large-dates` feature gives `time`, so the conversion cannot fail; the clamp only
        // spares an `expect`.
        OffsetDateTime::from_unix_timestamp_nanos(i128::from(self.0) * 1_000).unwrap_or_else(|_| {
            if self.0 < 0 {
                PlainDateTime::MIN.assume_utc()
            } else {
                PlainDateTime::MAX.assume_utc()
            }
        })
    }
}

impl fmt::Display for Timestamp {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.to_rfc3339())
    }
}

impl FromStr for Timestamp {
    type Err = TimeError;

    /// Reads `[-]YYYY-MM-DD(T|t| )HH:MM:SS[.fraction][Z|z|±HH:MM]`: no offset means UTC,
    /// fraction digits beyond the sixth are dropped, and a leap second (`:60`) is read as the
    /// first second of the next minute.
    fn from_str(text: &str) -> Result<Timestamp, TimeError> {
        let fail = |reason: &str| TimeError::new(text, reason);
        let layout = "expected YYYY-MM-DDTHH:MM:SS with an optional fraction and offset";
        // The year: an optional minus, then digits up to the `-` before the month (four at
        // least, counting the minus, as `to_rfc3339` writes them).
        let unsigned = text.strip_prefix('-').unwrap_or(text);
        let year_digits = unsigned.bytes().take_while(u8::is_ascii_digit).count();
        let year_len = text.len() - unsigned.len() + year_digits;
        if year_digits == 0 || year_len < 4 {
            return Err(fail(layout));
        }
        let year: i32 = text[..year_len]
            .parse()
            .ok()
            .filter(|year| (Date::MIN.year()..=Date::MAX.year()).contains(year))
            .ok_or_else(|| fail("the year is out of range"))?;
        let rest = &text.as_bytes()[year_len..];
        let two = |at: usize| -> Option<u8> {
            match rest.get(at..at + 2)? {
                [a @ b'0'..=b'9', b @ b'0'..=b'9'] => Some((a - b'0') * 10 + (b - b'0')),
                _ => None,
            }
        };
        let separated = rest.len() >= 15
            && rest[0] == b'-'
            && rest[3] == b'-'
            && matches!(rest[6], b'T' | b't' | b' ')
            && rest[9] == b':'
            && rest[12] == b':';
        let (Some(month), Some(day), Some(hour), Some(minute), Some(second), true) =
            (two(1), two(4), two(7), two(10), two(13), separated)
        else {
            return Err(fail(layout));
        };
        let month =
            Month::try_from(month).map_err(|_| fail(&format!("there is no month {month:02}")))?;
        let date = Date::from_calendar_date(year, month, day).map_err(|_| {
            fail(&format!(
                "{month} {year} has {} days, there is no day {day:02}",
                month.length(year)
            ))
        })?;
        // A leap second (23:59:60 in UTC) is kept as the second after :59.
        let leap = second == 60;
        let time = Time::from_hms(hour, minute, if leap { 59 } else { second }).map_err(|_| {
            fail(&format!(
                "{hour:02}:{minute:02}:{second:02} is not a time of day"
            ))
        })?;
        // `rest` is ASCII up to here (checked above), so index 15 is a char boundary.
        let mut tail = &text[year_len + 15..];
        let mut micros = 0i64;
        if let Some(fraction) = tail.strip_prefix('.') {
            let digits = fraction.bytes().take_while(u8::is_ascii_digit).count();
            if digits == 0 {
                return Err(fail("a `.` must be followed by digits"));
            }
            for (i, digit) in fraction.bytes().take(6).take(digits).enumerate() {
                micros += i64::from(digit - b'0') * 10i64.pow(5 - i as u32);
            }
            tail = &fraction[digits..];
        }
        let offset = match tail.as_bytes() {
            [] | [b'Z' | b'z'] => UtcOffset::UTC,
            [sign @ (b'+' | b'-'), h1, h2, b':', m1, m2]
                if [h1, h2, m1, m2].iter().all(|b| b.is_ascii_digit()) =>
            {
                let hours = (h1 - b'0') * 10 + (h2 - b'0');
                let minutes = (m1 - b'0') * 10 + (m2 - b'0');
                if hours > 23 || minutes > 59 {
                    return Err(fail(&format!("the offset {tail} is out of range")));
                }
                let sign: i8 = if *sign == b'-' { -1 } else { 1 };
                // Both below 60, so the casts to i8 are exact.
                UtcOffset::from_hms(sign * hours as i8, sign * minutes as i8, 0)
                    .map_err(|_| fail(&format!("the offset {tail} is out of range")))?
            }
            _ => return Err(fail("expected Z or an offset ±HH:MM after the time")),
        };
        let at = PlainDateTime::new(date, time).assume_offset(offset);
        let seconds = i128::from(at.unix_timestamp()) + i128::from(leap);
        i64::try_from(seconds * i128::from(MICROS_PER_SECOND) + i128::from(micros))
            .map(Timestamp)
            .map_err(|_| fail("beyond the range of microseconds in 64 bits"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(text: &str) -> Result<Timestamp, TimeError> {
        text.parse()
    }

    #[test]
    fn the_written_form_is_fixed() {
        assert_eq!(Timestamp(0).to_rfc3339(), "1970-01-01T00:00:00.000000Z");
        assert_eq!(
            Timestamp(1_764_107_076_123_456).to_rfc3339(),
            "2025-11-25T21:44:36.123456Z"
        );
        assert_eq!(Timestamp(-1).to_rfc3339(), "1969-12-31T23:59:59.999999Z");
        assert_eq!(
            Timestamp(-62_135_596_800_000_000).to_rfc3339(),
            "0001-01-01T00:00:00.000000Z"
        );
        assert_eq!(Timestamp(7).to_string(), "1970-01-01T00:00:00.000007Z");
    }

    #[test]
    fn timestamps_round_trip_through_rfc3339() {
        for micros in [
            0,
            1,
            -1,
            1_764_107_076_123_456,
            951_782_400_000_000,
            -62_135_596_800_000_000,
            -86_400_000_001,
            i64::MAX,
            i64::MIN,
        ] {
            let text = Timestamp(micros).to_rfc3339();
            assert_eq!(parse(&text), Ok(Timestamp(micros)), "{text}");
        }
        // text → Timestamp → text gives the same bytes for the form the SDK writes.
        for text in [
            "2026-11-25T21:44:36.123456Z",
            "1969-07-20T20:17:40.000000Z",
            "1900-01-01T00:00:00.000001Z",
            "2024-02-29T23:59:59.999999Z",
            "0000-03-01T00:00:00.000000Z",
            "-001-12-31T00:00:00.000000Z",
        ] {
            let read = parse(text).unwrap_or_else(|err| panic!("{err}"));
            assert_eq!(read.to_rfc3339(), text);
        }
    }

    #[test]
    fn other_rfc3339_forms_are_read() {
        let utc = parse("2026-11-25T21:44:36Z");
        assert_eq!(parse("2026-11-25 23:44:36+02:00"), utc);
        assert_eq!(parse("2026-11-25t21:44:36z"), utc);
        assert_eq!(parse("2026-11-25 21:44:36"), utc);
        assert_eq!(parse("2026-11-25T16:14:36-05:30"), utc);
        assert_eq!(
            parse("2026-11-25T21:44:36.5Z").map(|t| t.0 % 1_000_000),
            Ok(500_000)
        );
        assert_eq!(
            parse("2026-11-25T21:44:36.1234569Z").map(|t| t.0 % 1_000_000),
            Ok(123_456)
        );
        assert_eq!(
            parse("2016-12-31T23:59:60Z"),
            parse("2017-01-01T00:00:00Z"),
            "a leap second is the next minute's first"
        );
        assert_eq!(
            Timestamp::parse_rfc3339("1970-01-01T00:00:00Z"),
            Some(Timestamp(0))
        );
    }

    #[test]
    fn pre_1970_instants_are_negative() {
        assert_eq!(parse("1969-12-31T23:59:59Z"), Ok(Timestamp(-1_000_000)));
        assert_eq!(
            parse("1900-01-01T00:00:00Z"),
            Ok(Timestamp(-2_208_988_800_000_000))
        );
        assert_eq!(
            parse("0001-01-01T00:00:00Z"),
            Ok(Timestamp(-62_135_596_800_000_000))
        );
    }

    #[test]
    fn leap_years_follow_the_gregorian_rules() {
        for valid in ["2024-02-29", "2000-02-29", "1600-02-29", "1968-02-29"] {
            let text = format!("{valid}T12:00:00Z");
            assert!(parse(&text).is_ok(), "{text}");
        }
        for invalid in ["2026-02-29", "1900-02-29", "2100-02-29", "1969-02-29"] {
            let text = format!("{invalid}T12:00:00Z");
            let error = parse(&text).expect_err(&text);
            assert!(error.reason().contains("has 28 days"), "{error}");
        }
        assert_eq!(
            parse("2024-03-01T00:00:00Z").map(|t| t.0 - 86_400_000_000),
            parse("2024-02-29T00:00:00Z").map(|t| t.0)
        );
    }

    #[test]
    fn dates_and_times_that_do_not_exist_are_refused() {
        for (text, reason) in [
            (
                "2026-02-31T00:00:00Z",
                "February 2026 has 28 days, there is no day 31",
            ),
            (
                "2026-04-31T00:00:00Z",
                "April 2026 has 30 days, there is no day 31",
            ),
            ("2026-01-00T00:00:00Z", "there is no day 00"),
            ("2026-13-01T00:00:00Z", "there is no month 13"),
            ("2026-00-10T00:00:00Z", "there is no month 00"),
            ("2026-01-01T25:00:00Z", "25:00:00 is not a time of day"),
            ("2026-01-01T24:00:00Z", "24:00:00 is not a time of day"),
            ("2026-01-01T12:60:00Z", "12:60:00 is not a time of day"),
            ("2026-01-01T12:00:61Z", "12:00:61 is not a time of day"),
            (
                "2026-01-01T12:00:00+24:00",
                "the offset +24:00 is out of range",
            ),
            (
                "2026-01-01T12:00:00+02:60",
                "the offset +02:60 is out of range",
            ),
        ] {
            let error = parse(text).expect_err(text);
            assert!(error.reason().contains(reason), "{text}: {error}");
            assert!(error.to_string().starts_with(&format!("`{text}` is not")));
        }
    }

    #[test]
    fn malformed_text_is_refused() {
        for text in [
            "",
            "yesterday",
            "2026-11-25",
            "26-11-25T21:44:36Z",
            "2026/11/25T21:44:36Z",
            "2026-11-25X21:44:36Z",
            "2026-11-25T21-44-36Z",
            "2026-1-25T21:44:36Z",
            "2026-11-25T21:44:36.Z",
            "2026-11-25T21:44:36+0200",
            "2026-11-25T21:44:36+02:00 and more",
            "2026-11-25T21:44:36ZZ",
            "+2026-11-25T21:44:36Z",
            "2026-11-25T21:44:3é",
            "99999999999-01-01T00:00:00Z",
            "1000000-01-01T00:00:00Z",
            "300000-01-01T00:00:00Z",
        ] {
            assert!(parse(text).is_err(), "{text}");
            assert_eq!(Timestamp::parse_rfc3339(text), None, "{text}");
        }
    }
}
