//! Maintenance windows of `customer_managed` clusters: weekly windows at a fixed UTC offset
//! (no time-zone database: a window's offset never moves with daylight saving), how they print,
//! and which one is open at a given instant or opens next (`Opening::at`, a pure function of
//! the instant it is given). Not how they are read (see `schema`) nor what waits for them (the
//! controller's `rollout start` and `fleet serve`).

use std::fmt;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use serde::{Serialize, Serializer};

/// A day of the week, as windows name it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Weekday {
    Mon,
    Tue,
    Wed,
    Thu,
    Fri,
    Sat,
    Sun,
}

impl Weekday {
    pub const ALL: [Weekday; 7] = [
        Weekday::Mon,
        Weekday::Tue,
        Weekday::Wed,
        Weekday::Thu,
        Weekday::Fri,
        Weekday::Sat,
        Weekday::Sun,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Weekday::Mon => "mon",
            Weekday::Tue => "tue",
            Weekday::Wed => "wed",
            Weekday::Thu => "thu",
            Weekday::Fri => "fri",
            Weekday::Sat => "sat",
            Weekday::Sun => "sun",
        }
    }

    /// The weekday of day `day` counted from 1970-01-01, a Thursday.
    fn of_day(day: i64) -> Weekday {
        Weekday::ALL[usize::try_from((day + 3).rem_euclid(7)).unwrap_or(0)]
    }
}

impl Serialize for Weekday {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_str(self.as_str())
    }
}

/// A weekly maintenance window: on each of `days`, from `start` to `end` (minutes after
/// midnight at `utc_offset`); an `end` not after `start` ends on the next day.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct MaintenanceWindow {
    /// The days it opens on, in week order, without repeats.
    pub days: Vec<Weekday>,
    /// Minutes after midnight, local to `utc_offset` (0..1440).
    pub start: u16,
    /// Minutes after midnight, local to `utc_offset` (1..=1440; 1440 is `24:00`).
    pub end: u16,
    /// Minutes east of UTC (`+01:00` is 60), within ±14 h.
    pub utc_offset: i16,
}

const DAY_SECS: i64 = 86_400;

/// `HH:MM` of minutes after midnight.
pub fn clock(minutes: u16) -> String {
    format!("{:02}:{:02}", minutes / 60, minutes % 60)
}

/// `UTC` or `UTC+01:00` / `UTC-05:30`.
pub fn offset_name(utc_offset: i16) -> String {
    if utc_offset == 0 {
        return "UTC".to_owned();
    }
    let sign = if utc_offset < 0 { '-' } else { '+' };
    let abs = utc_offset.unsigned_abs();
    format!("UTC{sign}{:02}:{:02}", abs / 60, abs % 60)
}

impl MaintenanceWindow {
    /// How long it stays open (minutes).
    fn length(&self) -> i64 {
        let (start, end) = (i64::from(self.start), i64::from(self.end));
        if end > start {
            end - start
        } else {
            end + 1440 - start
        }
    }

    /// The occurrences (opening, closing, in Unix seconds) that may hold `now` or follow it:
    /// from the day before `now`'s local day (a window open past midnight) to a week after.
    fn occurrences(&self, now: i64) -> impl Iterator<Item = (i64, i64)> + '_ {
        let offset = i64::from(self.utc_offset) * 60;
        let today = (now + offset).div_euclid(DAY_SECS);
        (today - 1..=today + 7)
            .filter(|day| self.days.contains(&Weekday::of_day(*day)))
            .map(move |day| {
                let open = day * DAY_SECS + i64::from(self.start) * 60 - offset;
                (open, open + self.length() * 60)
            })
    }
}

impl fmt::Display for MaintenanceWindow {
    /// `sat,sun 02:00-05:00 UTC`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let days: Vec<&str> = self.days.iter().map(|d| d.as_str()).collect();
        write!(
            f,
            "{} {}-{} {}",
            days.join(","),
            clock(self.start),
            clock(self.end),
            offset_name(self.utc_offset)
        )
    }
}

impl Serialize for MaintenanceWindow {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        #[derive(Serialize)]
        struct Written<'a> {
            days: &'a [Weekday],
            start: String,
            end: String,
            utc_offset: String,
            text: String,
        }
        let offset = match self.utc_offset {
            0 => "+00:00".to_owned(),
            minutes => offset_name(minutes).replacen("UTC", "", 1),
        };
        Written {
            days: &self.days,
            start: clock(self.start),
            end: clock(self.end),
            utc_offset: offset,
            text: self.to_string(),
        }
        .serialize(serializer)
    }
}

/// Where an instant stands against a cluster's windows.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Opening<'w> {
    /// The cluster has no windows: any time will do.
    Always,
    /// `window` is open until `closes`.
    Open {
        window: &'w MaintenanceWindow,
        closes: SystemTime,
    },
    /// Every window is closed; `window` opens next, at `opens`.
    Closed {
        window: &'w MaintenanceWindow,
        opens: SystemTime,
    },
}

fn unix_secs(t: SystemTime) -> i64 {
    match t.duration_since(UNIX_EPOCH) {
        Ok(d) => i64::try_from(d.as_secs()).unwrap_or(i64::MAX / 2),
        Err(e) => -i64::try_from(e.duration().as_secs()).unwrap_or(i64::MAX / 2),
    }
}

fn from_unix(secs: i64) -> SystemTime {
    match u64::try_from(secs) {
        Ok(s) => UNIX_EPOCH + Duration::from_secs(s),
        Err(_) => UNIX_EPOCH - Duration::from_secs(secs.unsigned_abs()),
    }
}

impl<'w> Opening<'w> {
    /// Where `now` stands against `windows`: open (the window closing last, when several are),
    /// or closed with the window that opens first after `now`.
    pub fn at(windows: &'w [MaintenanceWindow], now: SystemTime) -> Opening<'w> {
        let now = unix_secs(now);
        let mut open: Option<(&MaintenanceWindow, i64)> = None;
        let mut next: Option<(&MaintenanceWindow, i64)> = None;
        for w in windows {
            for (opens, closes) in w.occurrences(now) {
                if opens <= now && now < closes {
                    if open.is_none_or(|(_, c)| closes > c) {
                        open = Some((w, closes));
                    }
                } else if opens > now && next.is_none_or(|(_, o)| opens < o) {
                    next = Some((w, opens));
                }
            }
        }
        match (open, next) {
            (Some((window, closes)), _) => Opening::Open {
                window,
                closes: from_unix(closes),
            },
            (None, Some((window, opens))) => Opening::Closed {
                window,
                opens: from_unix(opens),
            },
            // No window (a window names at least one day, so one always opens within a week).
            (None, None) => Opening::Always,
        }
    }

    /// Whether work may start at that instant.
    pub fn is_open(&self) -> bool {
        !matches!(self, Opening::Closed { .. })
    }
}

/// Every window in one line: `sat,sun 02:00-05:00 UTC; wed 22:00-01:00 UTC+01:00`.
pub fn describe(windows: &[MaintenanceWindow]) -> String {
    windows
        .iter()
        .map(ToString::to_string)
        .collect::<Vec<_>>()
        .join("; ")
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Unix seconds of `2026-11-30` (a Monday) plus `hh:mm` UTC, plus `days`.
    fn at(days: i64, hh: i64, mm: i64) -> SystemTime {
        // 2026-11-30T00:00:00Z
        const MONDAY: i64 = 1_795_996_800;
        from_unix(MONDAY + days * DAY_SECS + hh * 3600 + mm * 60)
    }

    fn window(days: &[Weekday], start: &str, end: &str, offset: i16) -> MaintenanceWindow {
        let minutes = |t: &str| {
            let (h, m) = t.split_once(':').expect("HH:MM");
            h.parse::<u16>().expect("hours") * 60 + m.parse::<u16>().expect("minutes")
        };
        MaintenanceWindow {
            days: days.to_vec(),
            start: minutes(start),
            end: minutes(end),
            utc_offset: offset,
        }
    }

    #[test]
    fn the_reference_monday_is_a_monday() {
        let monday = unix_secs(at(0, 0, 0)).div_euclid(DAY_SECS);
        assert_eq!(Weekday::of_day(monday), Weekday::Mon);
        assert_eq!(Weekday::of_day(0), Weekday::Thu);
        assert_eq!(Weekday::of_day(-1), Weekday::Wed);
    }

    #[test]
    fn no_windows_is_always_open() {
        assert_eq!(Opening::at(&[], at(0, 12, 0)), Opening::Always);
        assert!(Opening::Always.is_open());
    }

    #[test]
    fn a_weekend_window_opens_next_saturday_from_a_monday() {
        let w = [window(&[Weekday::Sat, Weekday::Sun], "02:00", "05:00", 0)];
        assert_eq!(
            Opening::at(&w, at(0, 12, 0)),
            Opening::Closed {
                window: &w[0],
                opens: at(5, 2, 0)
            }
        );
        // Open on Saturday at 02:00 exactly, closed at 05:00 exactly.
        assert_eq!(
            Opening::at(&w, at(5, 2, 0)),
            Opening::Open {
                window: &w[0],
                closes: at(5, 5, 0)
            }
        );
        assert_eq!(
            Opening::at(&w, at(5, 5, 0)),
            Opening::Closed {
                window: &w[0],
                opens: at(6, 2, 0)
            }
        );
        // Sunday after it closed: next Saturday, across the week's end.
        assert_eq!(
            Opening::at(&w, at(6, 5, 30)),
            Opening::Closed {
                window: &w[0],
                opens: at(12, 2, 0)
            }
        );
        assert_eq!(w[0].to_string(), "sat,sun 02:00-05:00 UTC");
    }

    #[test]
    fn a_window_past_midnight_holds_the_next_morning() {
        // Sunday 22:00 to Monday 01:00.
        let w = [window(&[Weekday::Sun], "22:00", "01:00", 0)];
        assert_eq!(
            Opening::at(&w, at(7, 0, 30)),
            Opening::Open {
                window: &w[0],
                closes: at(7, 1, 0)
            }
        );
        assert_eq!(
            Opening::at(&w, at(7, 1, 0)),
            Opening::Closed {
                window: &w[0],
                opens: at(13, 22, 0)
            }
        );
        // A window to 24:00 ends at midnight.
        let d = [window(&[Weekday::Mon], "23:00", "24:00", 0)];
        assert_eq!(
            Opening::at(&d, at(0, 23, 59)),
            Opening::Open {
                window: &d[0],
                closes: at(1, 0, 0)
            }
        );
    }

    #[test]
    fn offsets_move_the_window_and_its_day() {
        // Saturday 01:00 at UTC+02:00 is Friday 23:00 UTC.
        let east = [window(&[Weekday::Sat], "01:00", "03:00", 120)];
        assert_eq!(
            Opening::at(&east, at(0, 12, 0)),
            Opening::Closed {
                window: &east[0],
                opens: at(4, 23, 0)
            }
        );
        assert_eq!(east[0].to_string(), "sat 01:00-03:00 UTC+02:00");
        // Monday 20:00 at UTC-05:30 is Tuesday 01:30 UTC; on Monday 23:00 UTC it is not yet.
        let west = [window(&[Weekday::Mon], "20:00", "21:00", -330)];
        assert_eq!(
            Opening::at(&west, at(0, 23, 0)),
            Opening::Closed {
                window: &west[0],
                opens: at(1, 1, 30)
            }
        );
        assert_eq!(
            Opening::at(&west, at(1, 2, 0)),
            Opening::Open {
                window: &west[0],
                closes: at(1, 2, 30)
            }
        );
        assert_eq!(west[0].to_string(), "mon 20:00-21:00 UTC-05:30");
    }

    #[test]
    fn the_earliest_of_several_windows_opens_next() {
        let w = [
            window(&[Weekday::Sat], "02:00", "05:00", 0),
            window(&[Weekday::Wed], "22:00", "23:00", 0),
        ];
        assert_eq!(
            Opening::at(&w, at(0, 12, 0)),
            Opening::Closed {
                window: &w[1],
                opens: at(2, 22, 0)
            }
        );
        assert_eq!(describe(&w), "sat 02:00-05:00 UTC; wed 22:00-23:00 UTC");
    }
}
