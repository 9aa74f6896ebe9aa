//! Cron expressions evaluated in a time zone: when the next backup cycle is due.
//!
//! The syntax is the classic five fields `minute hour day-of-month month day-of-week` with `*`,
//! lists (`1,15`), ranges (`1-5`), steps (`*/10`, `8-18/2`), month and weekday names (`jan`, `mon`),
//! weekday `0` and `7` both meaning Sunday, and the macros `@hourly`, `@daily` (`@midnight`),
//! `@weekly`, `@monthly` and `@yearly` (`@annually`). As in Vixie cron, when both day-of-month and
//! day-of-week are restricted (neither starts with `*`), a day matches if EITHER matches.
//!
//! # Daylight saving time
//!
//! Times are local times in the schedule's time zone. Twice a year a local time is missing or
//! repeated:
//!
//! - **Repeated (fall back)**: a local time that occurs twice fires once, at its first occurrence.
//! - **Missing (spring forward)**: a schedule with a fixed minute AND a fixed hour (e.g. `30 2 * * *`)
//!   fires once at the first instant after the gap (03:00 in Europe/Berlin), so a daily backup is not
//!   lost. A schedule whose minute or hour field is a wildcard (`5 * * * *`, `*/15 2 * * *`) simply
//!   has no run in the missing hour and continues on the new clock: catching up `02:05` at `03:00`
//!   would start two backups five minutes apart (`03:00` and `03:05`). This is Vixie cron's rule for
//!   "wildcard" entries.
//!
//! This module only computes instants; it does not sleep, persist anything or run cycles.

use std::fmt;
use std::time::Duration;

use jiff::Timestamp;
use jiff::civil::{Date, DateTime, Time};
use jiff::tz::{AmbiguousOffset, TimeZone};

/// A cron expression that cannot be used, with the field and value at fault.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ScheduleError {
    #[error(
        "cron expression {expr:?} has {found} fields; it needs 5 (minute hour day-of-month month day-of-week) or a macro such as @hourly"
    )]
    FieldCount { expr: String, found: usize },
    #[error("{field} field: {message}")]
    Field {
        field: &'static str,
        message: String,
    },
    #[error(
        "unknown cron macro {0:?}; use @hourly, @daily, @midnight, @weekly, @monthly, @yearly or @annually"
    )]
    UnknownMacro(String),
    #[error(
        "cron expression {0:?} never fires (no month has such a day); check the day-of-month and month fields"
    )]
    NeverFires(String),
}

#[derive(Clone, Copy)]
struct FieldSpec {
    name: &'static str,
    min: u32,
    max: u32,
    names: &'static [&'static str],
}

const MINUTE: FieldSpec = FieldSpec {
    name: "minute",
    min: 0,
    max: 59,
    names: &[],
};
const HOUR: FieldSpec = FieldSpec {
    name: "hour",
    min: 0,
    max: 23,
    names: &[],
};
const DAY_OF_MONTH: FieldSpec = FieldSpec {
    name: "day-of-month",
    min: 1,
    max: 31,
    names: &[],
};
const MONTH: FieldSpec = FieldSpec {
    name: "month",
    min: 1,
    max: 12,
    names: &[
        "jan", "feb", "mar", "apr", "may", "jun", "jul", "aug", "sep", "oct", "nov", "dec",
    ],
};
// 7 is accepted as a second Sunday and folded onto 0 after parsing.
const DAY_OF_WEEK: FieldSpec = FieldSpec {
    name: "day-of-week",
    min: 0,
    max: 7,
    names: &["sun", "mon", "tue", "wed", "thu", "fri", "sat"],
};

/// One parsed field: a bit per allowed value, and whether it was written as a wildcard (`*...`),
/// which matters for the day-of-month/day-of-week rule and for DST gaps.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Field {
    bits: u64,
    star: bool,
}

impl Field {
    fn has(&self, v: u32) -> bool {
        v < 64 && self.bits & (1u64 << v) != 0
    }

    fn values(&self) -> impl Iterator<Item = u32> + '_ {
        (0..64u32).filter(|v| self.has(*v))
    }
}

fn field_err(spec: &FieldSpec, message: String) -> ScheduleError {
    ScheduleError::Field {
        field: spec.name,
        message,
    }
}

fn parse_value(spec: &FieldSpec, s: &str) -> Result<u32, ScheduleError> {
    let lower = s.to_ascii_lowercase();
    if let Some(i) = spec.names.iter().position(|n| *n == lower) {
        // Month names count from 1 (jan), weekday names from 0 (sun): both from the field's minimum.
        return Ok(i as u32 + spec.min);
    }
    let v: u32 = s.parse().map_err(|_| {
        let hint = if spec.names.is_empty() {
            String::new()
        } else {
            format!(" or a name ({})", spec.names.join(", "))
        };
        field_err(
            spec,
            format!("{s:?} is not a number in {}-{}{hint}", spec.min, spec.max),
        )
    })?;
    if v < spec.min || v > spec.max {
        return Err(field_err(
            spec,
            format!("{v} is out of range {}-{}", spec.min, spec.max),
        ));
    }
    Ok(v)
}

fn parse_field(spec: &FieldSpec, text: &str) -> Result<Field, ScheduleError> {
    if text.is_empty() {
        return Err(field_err(spec, "is empty".to_string()));
    }
    let mut bits = 0u64;
    for part in text.split(',') {
        if part.is_empty() {
            return Err(field_err(
                spec,
                format!("{text:?} has an empty list element"),
            ));
        }
        let (range, step) = match part.split_once('/') {
            Some((r, s)) => {
                let step: u32 = s.parse().map_err(|_| {
                    field_err(spec, format!("step {s:?} in {part:?} is not a number"))
                })?;
                if step == 0 || step > spec.max {
                    return Err(field_err(
                        spec,
                        format!("step {step} in {part:?} must be 1-{}", spec.max),
                    ));
                }
                (r, Some(step))
            }
            None => (part, None),
        };
        let (lo, hi) = if range == "*" {
            (spec.min, spec.max)
        } else if let Some((a, b)) = range.split_once('-') {
            let (a, b) = (parse_value(spec, a)?, parse_value(spec, b)?);
            if a > b {
                return Err(field_err(
                    spec,
                    format!("range {range:?} runs backwards; write the smaller value first"),
                ));
            }
            (a, b)
        } else {
            let v = parse_value(spec, range)?;
            // "5/15" means "from 5 to the end, every 15", as in cronie.
            (v, if step.is_some() { spec.max } else { v })
        };
        let step = step.unwrap_or(1);
        let mut v = lo;
        while v <= hi {
            bits |= 1u64 << v;
            v += step;
        }
    }
    Ok(Field {
        bits,
        star: text.starts_with('*'),
    })
}

/// The five parsed fields.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Cron {
    minute: Field,
    hour: Field,
    dom: Field,
    month: Field,
    dow: Field,
}

impl Cron {
    fn parse(expr: &str) -> Result<Cron, ScheduleError> {
        let trimmed = expr.trim();
        let expanded = if trimmed.starts_with('@') {
            match trimmed.to_ascii_lowercase().as_str() {
                "@hourly" => "0 * * * *",
                "@daily" | "@midnight" => "0 0 * * *",
                "@weekly" => "0 0 * * 0",
                "@monthly" => "0 0 1 * *",
                "@yearly" | "@annually" => "0 0 1 1 *",
                _ => return Err(ScheduleError::UnknownMacro(trimmed.to_string())),
            }
        } else {
            trimmed
        };
        let fields: Vec<&str> = expanded.split_whitespace().collect();
        if fields.len() != 5 {
            return Err(ScheduleError::FieldCount {
                expr: expr.to_string(),
                found: fields.len(),
            });
        }
        let mut dow = parse_field(&DAY_OF_WEEK, fields[4])?;
        if dow.has(7) {
            dow.bits = (dow.bits & !(1 << 7)) | 1;
        }
        let cron = Cron {
            minute: parse_field(&MINUTE, fields[0])?,
            hour: parse_field(&HOUR, fields[1])?,
            dom: parse_field(&DAY_OF_MONTH, fields[2])?,
            month: parse_field(&MONTH, fields[3])?,
            dow,
        };
        // Only a day-of-month-only schedule can be impossible ("30 2 * feb" style); with a weekday
        // in play some day always matches.
        if !cron.dom.star && cron.dow.star {
            const MAX_DAYS: [u32; 13] = [0, 31, 29, 31, 30, 31, 30, 31, 31, 30, 31, 30, 31];
            let possible = cron
                .month
                .values()
                .any(|m| cron.dom.values().any(|d| d <= MAX_DAYS[m as usize]));
            if !possible {
                return Err(ScheduleError::NeverFires(expr.to_string()));
            }
        }
        Ok(cron)
    }

    fn matches_day(&self, d: Date) -> bool {
        if !self.month.has(d.month() as u32) {
            return false;
        }
        let dom = self.dom.has(d.day() as u32);
        let dow = self.dow.has(d.weekday().to_sunday_zero_offset() as u32);
        if self.dom.star || self.dow.star {
            dom && dow
        } else {
            dom || dow
        }
    }
}

/// A cron expression in a time zone.
#[derive(Clone)]
pub struct Schedule {
    expr: String,
    cron: Cron,
    tz: TimeZone,
}

impl fmt::Debug for Schedule {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Schedule")
            .field("cron", &self.expr)
            .field("timezone", &self.tz.iana_name().unwrap_or("(unnamed)"))
            .finish()
    }
}

impl Schedule {
    /// Parses `expr` (five fields or a macro), evaluated in `tz`.
    pub fn parse(expr: &str, tz: TimeZone) -> Result<Schedule, ScheduleError> {
        Ok(Schedule {
            expr: expr.trim().to_string(),
            cron: Cron::parse(expr)?,
            tz,
        })
    }

    /// The expression as written.
    pub fn expr(&self) -> &str {
        &self.expr
    }

    /// The time zone the expression is evaluated in.
    pub fn time_zone(&self) -> &TimeZone {
        &self.tz
    }

    /// The first instant strictly after `t` at which the schedule fires, or `None` if there is none
    /// within the next 50 years (only possible for something like `0 0 29 2 *` near the end of
    /// jiff's range).
    pub fn next_after(&self, t: Timestamp) -> Option<Timestamp> {
        let start = self.tz.to_datetime(t).date();
        let fixed_time = !self.cron.minute.star && !self.cron.hour.star;
        let mut day = start;
        // Candidates in civil order map to non-decreasing instants (the first occurrence of a
        // repeated time, the end of a gap for a missing one), so the first candidate after `t` is
        // the earliest one.
        for _ in 0..(366 * 50) {
            if self.cron.matches_day(day) {
                for h in self.cron.hour.values() {
                    for m in self.cron.minute.values() {
                        let time = Time::new(h as i8, m as i8, 0, 0).ok()?;
                        let Some(at) = self.instant_of(day.to_datetime(time), fixed_time) else {
                            continue;
                        };
                        if at > t {
                            return Some(at);
                        }
                    }
                }
            }
            day = day.tomorrow().ok()?;
        }
        None
    }

    /// The instant of a local time, following the DST rules in the module docs; `None` when the
    /// time is missing and the schedule is a wildcard one.
    fn instant_of(&self, dt: DateTime, fixed_time: bool) -> Option<Timestamp> {
        let amb = self.tz.to_ambiguous_timestamp(dt);
        match amb.offset() {
            AmbiguousOffset::Unambiguous { offset } => offset.to_timestamp(dt).ok(),
            AmbiguousOffset::Fold { before, .. } => before.to_timestamp(dt).ok(),
            AmbiguousOffset::Gap { after, .. } if fixed_time => {
                // Read with the later offset, a missing time lands before the transition; the
                // transition that follows is the first instant after the gap.
                let before_gap = after.to_timestamp(dt).ok()?;
                self.tz
                    .following(before_gap)
                    .next()
                    .map(|tr| tr.timestamp())
            }
            AmbiguousOffset::Gap { .. } => None,
        }
    }

    /// The instant a run scheduled for `scheduled` should start: `scheduled` plus a random delay in
    /// `[0, jitter]`, capped so that it stays strictly before the following run.
    pub fn jittered(
        &self,
        scheduled: Timestamp,
        jitter: Duration,
        rng: &mut fastrand::Rng,
    ) -> Timestamp {
        if jitter.is_zero() {
            return scheduled;
        }
        let mut max_ms = u64::try_from(jitter.as_millis()).unwrap_or(u64::MAX);
        if let Some(next) = self.next_after(scheduled) {
            let gap_ms = next
                .as_millisecond()
                .saturating_sub(scheduled.as_millisecond());
            let gap_ms = u64::try_from(gap_ms).unwrap_or(0);
            max_ms = max_ms.min(gap_ms.saturating_sub(1));
        }
        let delay = Duration::from_millis(rng.u64(0..=max_ms));
        scheduled.checked_add(delay).unwrap_or(scheduled)
    }
}
