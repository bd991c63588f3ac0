//! Calendar dates as MIMIC writes them: `YYYYMMDD` (MIMIC-CXR StudyDate) and
//! `YYYY-MM-DD HH:MM:SS` (MIMIC-IV timestamps, whose time of day the linkage ignores).
//! MIMIC shifts years into the 22nd century; any four-digit year is accepted.

use std::fmt;

/// A valid calendar date (proleptic Gregorian). Orders chronologically.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Date {
    /// Four-digit year.
    pub year: i32,
    /// 1 to 12.
    pub month: u8,
    /// 1 to the length of the month.
    pub day: u8,
}

impl Date {
    /// The date, if it exists.
    pub fn new(year: i32, month: u8, day: u8) -> Option<Self> {
        let leap = (year % 4 == 0 && year % 100 != 0) || year % 400 == 0;
        let days = match month {
            1 | 3 | 5 | 7 | 8 | 10 | 12 => 31,
            4 | 6 | 9 | 11 => 30,
            2 if leap => 29,
            2 => 28,
            _ => return None,
        };
        (1..=days)
            .contains(&day)
            .then_some(Self { year, month, day })
    }

    /// Parses `YYYYMMDD`, `YYYY-MM-DD`, or `YYYY-MM-DD` followed by a time of day
    /// (` HH:MM`, ` HH:MM:SS`, optionally with fractional seconds; `T` may stand for the
    /// space). The time is checked and dropped. `None` for anything else.
    pub fn parse(text: &str) -> Option<Self> {
        let text = text.trim();
        if !text.is_ascii() {
            return None; // also keeps the byte slicing below on character boundaries
        }
        let bytes = text.as_bytes();
        let (date, time) = if bytes.len() == 8 {
            ([&text[0..4], &text[4..6], &text[6..8]], "")
        } else if bytes.len() >= 10 && bytes[4] == b'-' && bytes[7] == b'-' {
            ([&text[0..4], &text[5..7], &text[8..10]], &text[10..])
        } else {
            return None;
        };
        if !date
            .iter()
            .all(|part| part.bytes().all(|b| b.is_ascii_digit()))
        {
            return None;
        }
        if !time.is_empty() && !valid_time(time) {
            return None;
        }
        Self::new(
            date[0].parse().ok()?,
            date[1].parse().ok()?,
            date[2].parse().ok()?,
        )
    }
}

impl fmt::Display for Date {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:04}-{:02}-{:02}", self.year, self.month, self.day)
    }
}

/// ` HH:MM`, ` HH:MM:SS` or ` HH:MM:SS.fff` (or with `T` for the space).
fn valid_time(time: &str) -> bool {
    let Some(rest) = time.strip_prefix(' ').or_else(|| time.strip_prefix('T')) else {
        return false;
    };
    let (clock, fraction) = rest.split_once('.').unwrap_or((rest, "0"));
    let parts: Vec<&str> = clock.split(':').collect();
    let limits = [23, 59, 60];
    (2..=3).contains(&parts.len())
        && parts.iter().zip(limits).all(|(part, max)| {
            part.len() == 2
                && part.bytes().all(|b| b.is_ascii_digit())
                && part.parse::<u8>().is_ok_and(|v| v <= max)
        })
        && !fraction.is_empty()
        && fraction.bytes().all(|b| b.is_ascii_digit())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn both_mimic_spellings_parse_to_the_same_date() {
        let d = Date::new(2180, 7, 25).unwrap();
        assert_eq!(Date::parse("21800725"), Some(d));
        assert_eq!(Date::parse("2180-07-25"), Some(d));
        assert_eq!(Date::parse("2180-07-25 23:59:59"), Some(d));
        assert_eq!(Date::parse("2180-07-25T08:00"), Some(d));
        assert_eq!(Date::parse(" 2180-07-25 08:00:00.123 "), Some(d));
        assert_eq!(d.to_string(), "2180-07-25");
    }

    #[test]
    fn impossible_or_garbled_dates_are_rejected() {
        for bad in [
            "",
            "2180-02-30",
            "21801301",
            "2180-07-25 25:00:00",
            "2180-07-25 08:00:xx",
            "2180-07-25 garbage",
            "2180/07/25",
            "218007251",
            "-2180725",
            "not a date",
            "2180-7-25",
            "2180-07-2é",
            "é1800725",
        ] {
            assert_eq!(Date::parse(bad), None, "{bad:?}");
        }
        assert!(Date::new(2100, 2, 29).is_none(), "2100 is not a leap year");
        assert!(Date::new(2000, 2, 29).is_some());
        assert!(Date::new(2180, 7, 25) < Date::new(2180, 7, 26));
        assert!(Date::new(2180, 12, 31) < Date::new(2181, 1, 1));
    }
}
