//! The one clock of the program. Tests pin it through the environment so that ledgers and
//! reports built by them are reproducible.
//!
//! `CODEFORMER_LEDGER_NOW=2026-03-31T10:00:00Z` fixes the wall-clock time every record carries.
//! Durations (timeouts, poll schedules) use [`std::time::Instant`] and are never pinned.

use chrono::{DateTime, SecondsFormat, Utc};
use std::cell::Cell;

/// Environment variable that pins the clock (RFC 3339).
pub const PIN_ENV: &str = "CODEFORMER_LEDGER_NOW";

thread_local! {
    static THREAD_PIN: Cell<Option<DateTime<Utc>>> = const { Cell::new(None) };
}

/// The current time, or the pinned one (this thread's pin first, then the environment's).
pub fn now() -> DateTime<Utc> {
    THREAD_PIN
        .with(Cell::get)
        .or_else(pinned)
        .unwrap_or_else(Utc::now)
}

/// Pins the clock of the calling thread only (`None` unpins it), for tests that build a
/// ledger through the library at chosen times without touching the process environment,
/// which other threads and child processes share.
pub fn pin_thread(t: Option<DateTime<Utc>>) {
    THREAD_PIN.with(|pin| pin.set(t));
}

fn pinned() -> Option<DateTime<Utc>> {
    let text = std::env::var(PIN_ENV).ok()?;
    DateTime::parse_from_rfc3339(text.trim())
        .ok()
        .map(|t| t.with_timezone(&Utc))
}

/// The format every timestamp in the ledger uses: RFC 3339, UTC, milliseconds.
pub fn stamp(t: DateTime<Utc>) -> String {
    t.to_rfc3339_opts(SecondsFormat::Millis, true)
}

/// A ledger timestamp as unix milliseconds, the form `events.at` stores (`None` for text that
/// is not RFC 3339).
pub fn stamp_millis(stamp: &str) -> Option<i64> {
    DateTime::parse_from_rfc3339(stamp.trim())
        .ok()
        .map(|t| t.timestamp_millis())
}

/// Unix milliseconds as a ledger timestamp (RFC 3339, UTC, milliseconds). Every job read
/// formats its times, so the years 1970-9999 are written directly rather than through
/// chrono's general formatter; the result is the same.
pub fn stamp_of_millis(millis: i64) -> String {
    const DAY_MS: i64 = 86_400_000;
    if !(0..253_402_300_800_000).contains(&millis) {
        return DateTime::from_timestamp_millis(millis)
            .map(stamp)
            .unwrap_or_else(|| millis.to_string());
    }
    // Days to a civil date (Howard Hinnant's algorithm), for days since 1970-01-01.
    let days = millis / DAY_MS;
    let ms_of_day = millis % DAY_MS;
    let z = days + 719_468;
    let era = z / 146_097;
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1_460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    let (hour, minute) = (ms_of_day / 3_600_000, ms_of_day / 60_000 % 60);
    let (second, milli) = (ms_of_day / 1_000 % 60, ms_of_day % 1_000);
    let mut out = [0u8; 24];
    let mut put = |at: usize, value: i64, width: usize| {
        let mut v = value;
        for i in (0..width).rev() {
            out[at + i] = b'0' + (v % 10) as u8;
            v /= 10;
        }
    };
    put(0, year, 4);
    put(5, month, 2);
    put(8, day, 2);
    put(11, hour, 2);
    put(14, minute, 2);
    put(17, second, 2);
    put(20, milli, 3);
    for (at, sep) in [
        (4, b'-'),
        (7, b'-'),
        (10, b'T'),
        (13, b':'),
        (16, b':'),
        (19, b'.'),
        (23, b'Z'),
    ] {
        out[at] = sep;
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// [`now`] as a ledger timestamp.
pub fn now_stamp() -> String {
    stamp(now())
}

/// A moment as the ledger records it, in both its forms: unix milliseconds, which the times
/// of `jobs`, `attempts` and `events` hold, and RFC 3339 text, which the other tables' times
/// hold. Bound as an SQL parameter it is the text.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Stamp {
    millis: i64,
    text: String,
}

impl Stamp {
    pub fn at(t: DateTime<Utc>) -> Stamp {
        let millis = t.timestamp_millis();
        Stamp {
            millis,
            text: stamp_of_millis(millis),
        }
    }

    /// [`now`], in both forms.
    pub fn now() -> Stamp {
        Stamp::at(now())
    }

    pub fn millis(&self) -> i64 {
        self.millis
    }

    pub fn text(&self) -> &str {
        &self.text
    }
}

impl rusqlite::ToSql for Stamp {
    fn to_sql(&self) -> rusqlite::Result<rusqlite::types::ToSqlOutput<'_>> {
        self.text.to_sql()
    }
}

/// A time column of `jobs` or `attempts` as a ledger timestamp, from unix milliseconds; text
/// (a ledger read as it is from before integer times, or text that the migration to them
/// kept because it was not a time) is returned as it is.
pub fn stamp_of_column(value: rusqlite::types::ValueRef<'_>) -> Option<String> {
    match value {
        rusqlite::types::ValueRef::Integer(ms) => Some(stamp_of_millis(ms)),
        rusqlite::types::ValueRef::Text(t) => Some(String::from_utf8_lossy(t).into_owned()),
        _ => None,
    }
}

/// Parses a timestamp as the gateway writes it: RFC 3339 (`2026-05-22T13:17:32.110Z`) or
/// the plain form (`2026-05-22 13:19:23`, taken as UTC).
pub fn parse_remote(text: &str) -> Option<DateTime<Utc>> {
    let text = text.trim();
    if let Ok(t) = DateTime::parse_from_rfc3339(text) {
        return Some(t.with_timezone(&Utc));
    }
    for format in ["%Y-%m-%d %H:%M:%S%.f", "%Y-%m-%dT%H:%M:%S%.f"] {
        if let Ok(t) = chrono::NaiveDateTime::parse_from_str(text, format) {
            return Some(t.and_utc());
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn both_remote_formats_parse() {
        let a = parse_remote("2026-05-22T13:17:32.110Z").unwrap();
        let b = parse_remote("2026-05-22 13:19:23").unwrap();
        assert_eq!(stamp(a), "2026-05-22T13:17:32.110Z");
        assert_eq!(stamp(b), "2026-05-22T13:19:23.000Z");
        assert!(parse_remote("yesterday").is_none());
    }

    #[test]
    fn a_thread_pin_wins_and_stays_on_its_thread() {
        let t = parse_remote("2026-03-31T10:00:00Z").unwrap();
        pin_thread(Some(t));
        assert_eq!(now_stamp(), "2026-03-31T10:00:00.000Z");
        let other = std::thread::spawn(now).join().unwrap();
        assert_ne!(other, t);
        pin_thread(None);
        assert_ne!(now(), t);
    }

    #[test]
    fn milliseconds_format_as_chrono_formats_them() {
        let chrono_stamp = |ms: i64| stamp(DateTime::from_timestamp_millis(ms).unwrap());
        let mut samples = vec![
            0,
            1,
            999,
            86_399_999,
            86_400_000,
            951_782_400_000,     // 2000-02-29
            1_709_164_800_000,   // 2024-02-29
            4_107_542_399_999,   // 2100-02-28T23:59:59.999
            253_402_300_799_999, // 9999-12-31T23:59:59.999
        ];
        let mut x: u64 = 0x9E37_79B9_7F4A_7C15;
        for _ in 0..20_000 {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            samples.push((x % 253_402_300_800_000) as i64);
        }
        for ms in samples {
            assert_eq!(stamp_of_millis(ms), chrono_stamp(ms), "{ms}");
        }
        assert_eq!(stamp_of_millis(-1), chrono_stamp(-1));
        assert_eq!(
            stamp_of_millis(253_402_300_800_000),
            chrono_stamp(253_402_300_800_000)
        );
    }

    #[test]
    fn a_stamp_holds_the_same_moment_in_both_forms() {
        let t = parse_remote("2026-03-31T10:00:00.250Z").unwrap();
        let s = Stamp::at(t);
        assert_eq!(s.text(), "2026-03-31T10:00:00.250Z");
        assert_eq!(stamp_millis(s.text()), Some(s.millis()));
        assert_eq!(stamp_of_millis(s.millis()), s.text());
    }
}
