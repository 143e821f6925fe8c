//! Value encodings shared by the backends: RFC 3339 timestamps, decimal text, and the
//! PostgreSQL binary formats of `numeric`, `timestamp`, `date` and `time`.

use crate::SqlError;

/// Microseconds from 1970-01-01 to 2000-01-01, PostgreSQL's epoch.
pub(crate) const PG_EPOCH_MICROS: i64 = 946_684_800_000_000;
const MICROS_PER_DAY: i64 = 86_400_000_000;
/// PostgreSQL's lowest timestamp (4714-11-24 BC), in microseconds since its epoch.
const PG_MIN_TIMESTAMP: i64 = -211_813_488_000_000_000;

/// (year, month, day) of a day count since 1970-01-01 (proleptic Gregorian calendar).
fn civil_from_days(days: i64) -> (i64, u32, u32) {
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    // day is 1..=31 and month 1..=12 by construction.
    (year, month as u32, day as u32)
}

/// `HH:MM:SS` of microseconds since midnight, with `.ffffff` when they have a fraction
/// (trailing zeros trimmed, as PostgreSQL prints it).
fn clock(micros_of_day: i64) -> String {
    let secs = micros_of_day / 1_000_000;
    let frac = micros_of_day % 1_000_000;
    let mut out = format!("{:02}:{:02}:{:02}", secs / 3600, secs / 60 % 60, secs % 60);
    if frac != 0 {
        let digits = format!("{frac:06}");
        out.push('.');
        out.push_str(digits.trim_end_matches('0'));
    }
    out
}

/// The RFC 3339 text SQLite stores for a `timestamp` value: always six fractional digits and
/// `Z`, so texts sort as the instants do (`2026-11-25T21:44:36.123456Z`).
pub(crate) fn rfc3339(unix_micros: i64) -> Result<String, SqlError> {
    let days = unix_micros.div_euclid(MICROS_PER_DAY);
    let of_day = unix_micros.rem_euclid(MICROS_PER_DAY);
    let (year, month, day) = civil_from_days(days);
    if !(0..=9999).contains(&year) {
        return Err(SqlError::Unsupported(format!(
            "timestamp {unix_micros} µs is outside years 0000-9999, which RFC 3339 text can hold"
        )));
    }
    let secs = of_day / 1_000_000;
    Ok(format!(
        "{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}.{:06}Z",
        secs / 3600,
        secs / 60 % 60,
        secs % 60,
        of_day % 1_000_000
    ))
}

/// A `timestamp` value as PostgreSQL's binary `timestamptz`: microseconds since 2000-01-01.
pub(crate) fn pg_timestamp(unix_micros: i64) -> Result<i64, SqlError> {
    match unix_micros.checked_sub(PG_EPOCH_MICROS) {
        Some(pg) if pg >= PG_MIN_TIMESTAMP => Ok(pg),
        _ => Err(SqlError::Unsupported(format!(
            "timestamp {unix_micros} µs is before 4714 BC, PostgreSQL's lowest timestamp"
        ))),
    }
}

/// A binary PostgreSQL `timestamp`/`timestamptz` as microseconds since the Unix epoch; None
/// for ±infinity.
pub(crate) fn from_pg_timestamp(pg: i64) -> Option<i64> {
    if pg == i64::MAX || pg == i64::MIN {
        return None;
    }
    pg.checked_add(PG_EPOCH_MICROS)
}

/// A binary PostgreSQL `date` (days since 2000-01-01) as PostgreSQL writes it in ISO style.
pub(crate) fn pg_date_text(pg_days: i32) -> String {
    match pg_days {
        i32::MAX => "infinity".into(),
        i32::MIN => "-infinity".into(),
        _ => {
            let (year, month, day) = civil_from_days(i64::from(pg_days) + 10_957);
            if year > 0 {
                format!("{year:04}-{month:02}-{day:02}")
            } else {
                format!("{:04}-{month:02}-{day:02} BC", 1 - year)
            }
        }
    }
}

/// A binary PostgreSQL `time` (microseconds since midnight) as text.
pub(crate) fn pg_time_text(micros: i64) -> String {
    clock(micros)
}

/// The parts of a decimal text: negative, integer digits, fraction digits.
struct Decimal<'a> {
    negative: bool,
    integer: &'a str,
    fraction: &'a str,
}

/// Checks a `decimal` value: an optional sign, digits, and an optional `.` with digits
/// (`-12.50`, `7`, `.5`). No exponent, no NaN or infinity.
fn parse_decimal(text: &str) -> Result<Decimal<'_>, SqlError> {
    let invalid = || {
        let shown: String = text.chars().take(40).collect();
        SqlError::Unsupported(format!(
            "decimal {shown:?} is not a decimal number (digits with an optional sign and \
             fraction, e.g. \"-12.50\")"
        ))
    };
    let (negative, unsigned) = match text.as_bytes().first() {
        Some(b'-') => (true, &text[1..]),
        Some(b'+') => (false, &text[1..]),
        _ => (false, text),
    };
    let (integer, fraction) = unsigned.split_once('.').unwrap_or((unsigned, ""));
    let digits = |s: &str| s.bytes().all(|b| b.is_ascii_digit());
    if (integer.is_empty() && fraction.is_empty()) || !digits(integer) || !digits(fraction) {
        return Err(invalid());
    }
    Ok(Decimal {
        negative,
        integer,
        fraction,
    })
}

/// Checks a `decimal` value that SQLite binds as text.
pub(crate) fn check_decimal(text: &str) -> Result<(), SqlError> {
    parse_decimal(text).map(|_| ())
}

const NUMERIC_POS: u16 = 0x0000;
const NUMERIC_NEG: u16 = 0x4000;
const NUMERIC_NAN: u16 = 0xC000;

/// A `decimal` text in PostgreSQL's binary `numeric` format, keeping its scale (`12.50` stays
/// two fraction digits).
pub(crate) fn pg_numeric(text: &str) -> Result<Vec<u8>, SqlError> {
    let Decimal {
        negative,
        integer,
        fraction,
    } = parse_decimal(text)?;
    let too_big = || {
        SqlError::Unsupported(format!(
            "decimal of {} digits is beyond PostgreSQL numeric (131072 before the point, 16383 \
             after)",
            text.len()
        ))
    };
    let integer = integer.trim_start_matches('0');
    let dscale = u16::try_from(fraction.len())
        .ok()
        .filter(|scale| *scale <= 0x3FFF)
        .ok_or_else(too_big)?;
    if integer.len() > 131_072 {
        return Err(too_big());
    }
    // Base-10000 groups: the integer part aligned on the point from the left, the fraction
    // from the right.
    let int_pad = (4 - integer.len() % 4) % 4;
    let frac_pad = (4 - fraction.len() % 4) % 4;
    let padded: Vec<u8> = std::iter::repeat_n(b'0', int_pad)
        .chain(integer.bytes())
        .chain(fraction.bytes())
        .chain(std::iter::repeat_n(b'0', frac_pad))
        .collect();
    let mut groups: Vec<i16> = padded
        .chunks(4)
        .map(|chunk| {
            chunk
                .iter()
                .fold(0i16, |acc, d| acc * 10 + i16::from(d - b'0'))
        })
        .collect();
    // Both are at most 32768 + 4096 groups, far within i32.
    let mut weight = ((int_pad + integer.len()) / 4) as i32 - 1;
    let leading = groups.iter().take_while(|g| **g == 0).count();
    groups.drain(..leading);
    weight -= leading as i32;
    while groups.last() == Some(&0) {
        groups.pop();
    }
    let sign = if groups.is_empty() {
        weight = 0;
        NUMERIC_POS
    } else if negative {
        NUMERIC_NEG
    } else {
        NUMERIC_POS
    };
    let ndigits = i16::try_from(groups.len()).map_err(|_| too_big())?;
    let weight = i16::try_from(weight).map_err(|_| too_big())?;
    let mut out = Vec::with_capacity(8 + 2 * groups.len());
    out.extend_from_slice(&ndigits.to_be_bytes());
    out.extend_from_slice(&weight.to_be_bytes());
    out.extend_from_slice(&sign.to_be_bytes());
    out.extend_from_slice(&dscale.to_be_bytes());
    for group in groups {
        out.extend_from_slice(&group.to_be_bytes());
    }
    Ok(out)
}

/// PostgreSQL's binary `numeric` as exact decimal text with its scale; Err names what it is
/// when it is not a number (NaN, ±Infinity) or is malformed.
pub(crate) fn pg_numeric_text(bytes: &[u8]) -> Result<String, &'static str> {
    let word = |i: usize| -> Result<u16, &'static str> {
        bytes
            .get(i * 2..i * 2 + 2)
            .map(|b| u16::from_be_bytes([b[0], b[1]]))
            .ok_or("a truncated numeric")
    };
    let ndigits = usize::from(word(0)?);
    let weight = i32::from(word(1)? as i16);
    let sign = word(2)?;
    let dscale = usize::from(word(3)?);
    match sign {
        NUMERIC_POS | NUMERIC_NEG => {}
        NUMERIC_NAN => return Err("NaN"),
        _ => return Err("an infinite numeric"),
    }
    let digits = (0..ndigits)
        .map(|i| word(4 + i))
        .collect::<Result<Vec<u16>, _>>()?;
    let group = |i: i32| -> u16 {
        usize::try_from(i)
            .ok()
            .and_then(|i| digits.get(i).copied())
            .unwrap_or(0)
    };
    let mut out = String::new();
    if sign == NUMERIC_NEG && !digits.is_empty() {
        out.push('-');
    }
    if weight < 0 {
        out.push('0');
    } else {
        for i in 0..=weight {
            if i == 0 {
                out.push_str(&group(i).to_string());
            } else {
                out.push_str(&format!("{:04}", group(i)));
            }
        }
    }
    if dscale > 0 {
        let mut fraction = String::with_capacity(dscale + 4);
        let mut i = weight + 1;
        while fraction.len() < dscale {
            fraction.push_str(&format!("{:04}", group(i)));
            i += 1;
        }
        fraction.truncate(dscale);
        out.push('.');
        out.push_str(&fraction);
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    #[test]
    fn rfc3339_texts() {
        assert_eq!(rfc3339(0).unwrap(), "1970-01-01T00:00:00.000000Z");
        assert_eq!(
            rfc3339(1_795_643_076_123_456).unwrap(),
            "2026-11-25T21:44:36.123456Z"
        );
        assert_eq!(rfc3339(-1).unwrap(), "1969-12-31T23:59:59.999999Z");
        assert_eq!(
            rfc3339(951_782_400_000_000).unwrap(),
            "2000-02-29T00:00:00.000000Z"
        );
        assert!(rfc3339(i64::MAX).is_err());
        assert!(rfc3339(i64::MIN).is_err());
    }

    #[test]
    fn pg_dates_and_times() {
        assert_eq!(pg_date_text(0), "2000-01-01");
        assert_eq!(pg_date_text(-1), "1999-12-31");
        assert_eq!(pg_date_text(-730_119), "0001-01-01");
        assert_eq!(pg_date_text(-730_120), "0001-12-31 BC");
        assert_eq!(pg_time_text(0), "00:00:00");
        assert_eq!(pg_time_text(45_296_500_000), "12:34:56.5");
        assert!(pg_timestamp(i64::MIN).is_err());
        assert_eq!(from_pg_timestamp(pg_timestamp(123).unwrap()), Some(123));
        assert_eq!(from_pg_timestamp(i64::MAX), None);
    }

    #[test]
    fn decimals_round_trip_through_numeric() {
        for (text, back) in [
            ("0", "0"),
            ("-0", "0"),
            ("0.00", "0.00"),
            ("12.50", "12.50"),
            ("-12.50", "-12.50"),
            ("+7", "7"),
            (".5", "0.5"),
            ("5.", "5"),
            ("0.0001", "0.0001"),
            ("0.00000001", "0.00000001"),
            ("10000", "10000"),
            ("100000000.000000001", "100000000.000000001"),
            (
                "-12345678901234567890123456789.123456789012345678901234567890",
                "-12345678901234567890123456789.123456789012345678901234567890",
            ),
            ("000123.4500", "123.4500"),
        ] {
            let bytes = pg_numeric(text).unwrap();
            assert_eq!(pg_numeric_text(&bytes).unwrap(), back, "{text}");
        }
        for bad in ["", "-", ".", "1e5", "NaN", "1.2.3", "12a", " 1", "--1"] {
            assert!(
                matches!(pg_numeric(bad), Err(SqlError::Unsupported(_))),
                "{bad:?}"
            );
            assert!(check_decimal(bad).is_err(), "{bad:?}");
        }
        assert_eq!(pg_numeric_text(&[0, 0, 0, 0, 0xC0, 0, 0, 0]), Err("NaN"));
    }
}

/// Property tests of the codecs: the calendar against the `time` crate, decimals through
/// PostgreSQL's binary `numeric` and back, and no input that panics a decoder.
#[cfg(test)]
mod properties {
    #![allow(clippy::unwrap_used)]

    use super::*;
    use proptest::prelude::*;

    /// Microseconds of 0000-01-01T00:00:00Z and of the last one of 9999.
    const YEAR_0: i64 = -62_167_219_200_000_000;
    const YEAR_10000: i64 = 253_402_300_800_000_000;

    /// `text` as PostgreSQL prints a `numeric` of it: no leading zeros (but one before the
    /// point), the fraction's digits as given, no sign on zero.
    fn canonical(text: &str) -> String {
        let (negative, unsigned) = match text.as_bytes().first() {
            Some(b'-') => (true, &text[1..]),
            Some(b'+') => (false, &text[1..]),
            _ => (false, text),
        };
        let (integer, fraction) = unsigned.split_once('.').unwrap_or((unsigned, ""));
        let integer = integer.trim_start_matches('0');
        let zero = integer.is_empty() && fraction.bytes().all(|b| b == b'0');
        let mut out = String::new();
        if negative && !zero {
            out.push('-');
        }
        out.push_str(if integer.is_empty() { "0" } else { integer });
        if !fraction.is_empty() {
            out.push('.');
            out.push_str(fraction);
        }
        out
    }

    proptest! {
        #![proptest_config(ProptestConfig::default())]

        #[test]
        fn rfc3339_agrees_with_the_time_crate(micros in YEAR_0..YEAR_10000) {
            let at = time::OffsetDateTime::from_unix_timestamp_nanos(i128::from(micros) * 1000)
                .unwrap();
            let expected = format!(
                "{:04}-{:02}-{:02}T{:02}:{:02}:{:02}.{:06}Z",
                at.year(),
                u8::from(at.month()),
                at.day(),
                at.hour(),
                at.minute(),
                at.second(),
                at.microsecond()
            );
            prop_assert_eq!(rfc3339(micros).unwrap(), expected);
        }

        #[test]
        fn rfc3339_texts_sort_as_their_instants(
            a in YEAR_0..YEAR_10000,
            b in YEAR_0..YEAR_10000,
        ) {
            prop_assert_eq!(a.cmp(&b), rfc3339(a).unwrap().cmp(&rfc3339(b).unwrap()));
        }

        #[test]
        fn rfc3339_refuses_what_it_cannot_write(micros in any::<i64>()) {
            prop_assert_eq!(rfc3339(micros).is_ok(), (YEAR_0..YEAR_10000).contains(&micros));
        }

        #[test]
        fn pg_dates_agree_with_the_time_crate(days in -2_000_000i32..2_000_000) {
            // 2000-01-01 is Julian day 2451545.
            let date = time::Date::from_julian_day(days + 2_451_545).unwrap();
            let (year, month, day) = (date.year(), u8::from(date.month()), date.day());
            let expected = if year > 0 {
                format!("{year:04}-{month:02}-{day:02}")
            } else {
                format!("{:04}-{month:02}-{day:02} BC", 1 - year)
            };
            prop_assert_eq!(pg_date_text(days), expected);
        }

        #[test]
        fn pg_times_agree_with_the_time_crate(micros in 0i64..86_400_000_000) {
            let at = time::Time::MIDNIGHT + time::Duration::microseconds(micros);
            let mut expected = format!("{:02}:{:02}:{:02}", at.hour(), at.minute(), at.second());
            if at.microsecond() != 0 {
                expected.push_str(format!(".{:06}", at.microsecond()).trim_end_matches('0'));
            }
            prop_assert_eq!(pg_time_text(micros), expected);
        }

        #[test]
        fn pg_timestamps_round_trip(micros in (PG_MIN_TIMESTAMP + PG_EPOCH_MICROS)..i64::MAX) {
            let pg = pg_timestamp(micros).unwrap();
            prop_assert_eq!(from_pg_timestamp(pg), Some(micros));
        }

        #[test]
        fn decimals_round_trip_through_pg_numeric(
            text in "[+-]?([0-9]{1,40}(\\.[0-9]{0,30})?|\\.[0-9]{1,30})",
        ) {
            let binary = pg_numeric(&text).unwrap();
            prop_assert_eq!(pg_numeric_text(&binary).unwrap(), canonical(&text));
        }

        #[test]
        fn only_decimal_text_is_a_decimal(text in "[+-]?[0-9.a-z+ -]{0,12}") {
            let digits = |s: &str| s.bytes().all(|b| b.is_ascii_digit());
            let unsigned = text.strip_prefix(['+', '-']).unwrap_or(&text);
            let (integer, fraction) = unsigned.split_once('.').unwrap_or((unsigned, ""));
            let valid = !(integer.is_empty() && fraction.is_empty())
                && digits(integer)
                && digits(fraction);
            prop_assert_eq!(check_decimal(&text).is_ok(), valid);
            prop_assert_eq!(pg_numeric(&text).is_ok(), valid);
        }

        #[test]
        fn any_numeric_bytes_decode_or_fail_cleanly(bytes in proptest::collection::vec(any::<u8>(), 0..64)) {
            let _ = pg_numeric_text(&bytes);
        }
    }
}
