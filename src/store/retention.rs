//! Which stored archives to keep, with restic's `forget --keep-*` semantics.
//!
//! Archives are ordered newest first by the time hapull received them (`pulled_at`, not Home
//! Assistant's date, which a wrong clock on the HA host could skew). Each `keep_*` rule walks that
//! list and keeps the newest archive of each hour/day/ISO week/month/year (in the given time zone)
//! until it has kept N; `keep_last` keeps the N newest. If a rule still has room when it reaches the
//! oldest archive, the oldest is kept too, as restic does, so a young store keeps its longest history.
//! An archive kept by any rule is kept. With every rule at 0 everything is kept, and the newest
//! archive is never removed. This module only decides; it deletes nothing.

use jiff::Timestamp;
use jiff::tz::TimeZone;
use serde::{Deserialize, Serialize};

use super::StoredArchive;

/// How many archives of each kind to keep. A rule at 0 is off. Deserializes from the `keep_*` keys
/// of the `[store]` table (no `deny_unknown_fields`, so it can be `#[serde(flatten)]`ed there).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize, Serialize)]
#[serde(default)]
pub struct RetentionPolicy {
    pub keep_last: u32,
    pub keep_hourly: u32,
    pub keep_daily: u32,
    pub keep_weekly: u32,
    pub keep_monthly: u32,
    pub keep_yearly: u32,
}

impl RetentionPolicy {
    /// True when no rule is set, i.e. everything is kept.
    pub fn keeps_everything(&self) -> bool {
        *self == RetentionPolicy::default()
    }
}

/// The verdict for one archive, with the rules that kept it.
#[derive(Debug, Clone)]
pub struct Decision {
    pub archive: StoredArchive,
    pub keep: bool,
    /// E.g. `"daily 2026-11-26"`, `"oldest monthly 2026-10"`, `"newest archive"`; empty when removed.
    pub reasons: Vec<String>,
}

/// Decides, for every archive, whether `policy` keeps it, bucketing `pulled_at` in `tz`. The result is
/// ordered newest first and does not depend on the order of `archives`.
pub fn plan(archives: &[StoredArchive], policy: &RetentionPolicy, tz: &TimeZone) -> Vec<Decision> {
    let mut sorted: Vec<&StoredArchive> = archives.iter().collect();
    sorted.sort_by(|a, b| {
        b.manifest
            .pulled_at
            .cmp(&a.manifest.pulled_at)
            .then_with(|| b.relative_path.cmp(&a.relative_path))
    });
    let times: Vec<Timestamp> = sorted.iter().map(|a| a.manifest.pulled_at).collect();
    let verdicts = plan_sorted(&times, policy, tz);
    sorted
        .into_iter()
        .zip(verdicts)
        .map(|(archive, (keep, reasons))| Decision {
            archive: archive.clone(),
            keep,
            reasons,
        })
        .collect()
}

#[derive(Clone, Copy)]
enum Rule {
    Last,
    Hourly,
    Daily,
    Weekly,
    Monthly,
    Yearly,
}

impl Rule {
    fn label(self) -> &'static str {
        match self {
            Rule::Last => "last",
            Rule::Hourly => "hourly",
            Rule::Daily => "daily",
            Rule::Weekly => "weekly",
            Rule::Monthly => "monthly",
            Rule::Yearly => "yearly",
        }
    }

    /// The bucket an archive falls in, as a printable key; `Last` puts every archive in its own.
    fn bucket(self, t: Timestamp, tz: &TimeZone, index: usize) -> String {
        let z = t.to_zoned(tz.clone());
        match self {
            Rule::Last => format!("#{}", index + 1),
            Rule::Hourly => z.strftime("%Y-%m-%d %H:00").to_string(),
            Rule::Daily => z.strftime("%Y-%m-%d").to_string(),
            Rule::Weekly => {
                let w = z.date().iso_week_date();
                format!("{:04}-W{:02}", w.year(), w.week())
            }
            Rule::Monthly => z.strftime("%Y-%m").to_string(),
            Rule::Yearly => z.strftime("%Y").to_string(),
        }
    }
}

/// The decision for `times`, which must be sorted newest first: `(keep, reasons)` per entry.
pub(crate) fn plan_sorted(
    times: &[Timestamp],
    policy: &RetentionPolicy,
    tz: &TimeZone,
) -> Vec<(bool, Vec<String>)> {
    if policy.keeps_everything() {
        return times
            .iter()
            .map(|_| {
                (
                    true,
                    vec!["no keep_* rule is set: everything is kept".to_owned()],
                )
            })
            .collect();
    }
    let mut rules: Vec<(Rule, u32, Option<String>)> = [
        (Rule::Last, policy.keep_last),
        (Rule::Hourly, policy.keep_hourly),
        (Rule::Daily, policy.keep_daily),
        (Rule::Weekly, policy.keep_weekly),
        (Rule::Monthly, policy.keep_monthly),
        (Rule::Yearly, policy.keep_yearly),
    ]
    .into_iter()
    .filter(|(_, n)| *n > 0)
    .map(|(r, n)| (r, n, None))
    .collect();

    let last_index = times.len().saturating_sub(1);
    let mut out = Vec::with_capacity(times.len());
    for (i, &t) in times.iter().enumerate() {
        let mut reasons = Vec::new();
        for (rule, left, previous) in rules.iter_mut() {
            if *left == 0 {
                continue;
            }
            let bucket = rule.bucket(t, tz, i);
            let new_bucket = previous.as_deref() != Some(bucket.as_str());
            if new_bucket || i == last_index {
                let oldest = if new_bucket { "" } else { "oldest " };
                reasons.push(format!("{oldest}{} {bucket}", rule.label()));
                *left -= 1;
                *previous = Some(bucket);
            }
        }
        if i == 0 && reasons.is_empty() {
            reasons.push("newest archive".to_owned());
        }
        out.push((!reasons.is_empty(), reasons));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn utc(s: &str) -> Timestamp {
        s.parse().unwrap()
    }

    #[test]
    fn day_buckets_follow_the_time_zone() {
        // 23:30 and 00:30 UTC are the same local day in New York, two days in UTC.
        let times = [utc("2026-11-27T00:30:00Z"), utc("2026-11-26T23:30:00Z")];
        let daily = RetentionPolicy {
            keep_daily: 1,
            ..Default::default()
        };
        let utc_plan = plan_sorted(&times, &daily, &TimeZone::UTC);
        assert!(utc_plan[0].0 && !utc_plan[1].0);
        let ny = TimeZone::get("America/New_York").unwrap();
        let ny_plan = plan_sorted(&times, &daily, &ny);
        assert_eq!(ny_plan[0].1, vec!["daily 2026-11-26".to_owned()]);
    }
}
