//! Time conditions: business hours and holidays for the `hours` step.
//!
//! A plan says when it is open as rules like `"mon-fri 08:00-18:00"` (days, then a time range
//! in the site's time zone; a range that ends before it starts runs over midnight, into the
//! next day). The site says which time zone (`[dialplans] timezone`, an IANA name; default:
//! the host's) and which days are holidays (`[dialplans] holidays`, a file of `YYYY-MM-DD`
//! lines). Time zones come from `jiff` with the system's tz database, so summer time is the
//! operating system's, not ours.

use std::collections::BTreeSet;
use std::path::Path;
use std::time::SystemTime;

use jiff::civil::Date;
use jiff::tz::TimeZone;

/// One "open" rule: the days it starts on and the minutes of the day it covers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct HoursRule {
    /// Bit 0 Monday ... bit 6 Sunday: the days the range starts on.
    pub days: u8,
    /// Minutes since midnight, 0..1440.
    pub from: u16,
    /// Minutes since midnight, 1..=1440; at or before `from`: over midnight.
    pub to: u16,
}

const DAY_NAMES: [&str; 7] = ["mon", "tue", "wed", "thu", "fri", "sat", "sun"];

impl HoursRule {
    /// Parses `"mon-fri 08:00-18:00"`, `"sat,sun 10:00-14:00"`, `"* 00:00-24:00"`,
    /// `"fri 22:00-06:00"` (over midnight). The error is a sentence for the admin.
    pub fn parse(spec: &str) -> Result<HoursRule, String> {
        let mut parts = spec.split_whitespace();
        let (Some(days), Some(times), None) = (parts.next(), parts.next(), parts.next()) else {
            return Err(format!(
                "{spec:?} is not \"DAYS HH:MM-HH:MM\" (for example \"mon-fri 08:00-18:00\")"
            ));
        };
        let days = parse_days(days)?;
        let (from, to) = times
            .split_once('-')
            .ok_or_else(|| format!("{times:?} is not a time range like 08:00-18:00"))?;
        let (from, to) = (parse_time(from)?, parse_time(to)?);
        if from == 1440 {
            return Err(format!("{times:?} starts at 24:00; start at 00:00"));
        }
        if from == to {
            return Err(format!(
                "{times:?} is empty; for a whole day write 00:00-24:00"
            ));
        }
        Ok(HoursRule { days, from, to })
    }

    /// Whether the rule covers minute `minute` of a day that is `weekday` (0 = Monday), a
    /// range over midnight counting for the day it started on.
    fn covers(&self, weekday: u8, minute: u16) -> bool {
        let on = |d: u8| self.days & (1 << d) != 0;
        if self.from < self.to {
            on(weekday) && (self.from..self.to).contains(&minute)
        } else {
            (on(weekday) && minute >= self.from) || (on((weekday + 6) % 7) && minute < self.to)
        }
    }
}

fn parse_days(s: &str) -> Result<u8, String> {
    if s == "*" {
        return Ok(0x7f);
    }
    let day = |d: &str| {
        DAY_NAMES
            .iter()
            .position(|n| n.eq_ignore_ascii_case(d))
            .map(|i| i as u8)
            .ok_or_else(|| format!("{d:?} is not a day: use {} or *", DAY_NAMES.join(", ")))
    };
    let mut mask = 0u8;
    for part in s.split(',') {
        match part.split_once('-') {
            Some((a, b)) => {
                let (a, b) = (day(a)?, day(b)?);
                // mon-fri, or fri-mon over the week's end.
                let mut d = a;
                loop {
                    mask |= 1 << d;
                    if d == b {
                        break;
                    }
                    d = (d + 1) % 7;
                }
            }
            None => mask |= 1 << day(part)?,
        }
    }
    Ok(mask)
}

fn parse_time(s: &str) -> Result<u16, String> {
    let bad = || format!("{s:?} is not a time like 08:00");
    let (h, m) = s.split_once(':').ok_or_else(bad)?;
    if h.len() != 2 || m.len() != 2 {
        return Err(bad());
    }
    let (h, m): (u16, u16) = (h.parse().map_err(|_| bad())?, m.parse().map_err(|_| bad())?);
    match (h, m) {
        (24, 0) => Ok(1440),
        (0..=23, 0..=59) => Ok(h * 60 + m),
        _ => Err(bad()),
    }
}

/// What an `hours` step decides.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Hours {
    Open,
    Closed,
    /// A listed holiday (checked before the rules).
    Holiday,
}

/// The site's time zone and holidays.
#[derive(Debug, Clone)]
pub struct Calendar {
    tz: TimeZone,
    /// The zone's name as configured (for transcripts), or "the host's".
    name: String,
    holidays: BTreeSet<Date>,
}

impl Default for Calendar {
    /// The host's time zone (UTC if it cannot be told), no holidays.
    fn default() -> Calendar {
        Calendar {
            tz: TimeZone::try_system().unwrap_or(TimeZone::UTC),
            name: "the host's time zone".into(),
            holidays: BTreeSet::new(),
        }
    }
}

impl Calendar {
    /// The calendar of `[dialplans] timezone` and `holidays`; errors name the setting.
    pub fn load(timezone: Option<&str>, holidays: Option<&Path>) -> Result<Calendar, String> {
        let mut cal = Calendar::default();
        if let Some(name) = timezone {
            cal.tz = TimeZone::get(name).map_err(|e| {
                format!("[dialplans] timezone = {name:?}: not a time zone this host knows ({e}); use an IANA name such as \"Europe/Berlin\"")
            })?;
            cal.name = name.to_string();
        }
        if let Some(path) = holidays {
            let text = std::fs::read_to_string(path)
                .map_err(|e| format!("[dialplans] holidays = {}: {e}", path.display()))?;
            cal.holidays = parse_holidays(&text).map_err(|e| format!("{}:{e}", path.display()))?;
        }
        Ok(cal)
    }

    /// The zone's name, as configured.
    pub fn zone_name(&self) -> &str {
        &self.name
    }

    /// Open, closed or a holiday at `at` under `rules`.
    pub fn decide(&self, rules: &[HoursRule], at: SystemTime) -> Hours {
        let Ok(ts) = jiff::Timestamp::try_from(at) else {
            return Hours::Closed;
        };
        let local = ts.to_zoned(self.tz.clone());
        if self.holidays.contains(&local.date()) {
            return Hours::Holiday;
        }
        let weekday = local.weekday().to_monday_zero_offset() as u8;
        let minute = local.hour() as u16 * 60 + local.minute() as u16;
        if rules.iter().any(|r| r.covers(weekday, minute)) {
            Hours::Open
        } else {
            Hours::Closed
        }
    }

    /// A local date and time (`2026-12-24 18:00`, or with `T`) in this calendar's zone, as a
    /// point in time: what `ivrd simulate --at` takes.
    pub fn local_time(&self, s: &str) -> Result<SystemTime, String> {
        let text = s.trim().replacen(' ', "T", 1);
        let dt: jiff::civil::DateTime = text.parse().map_err(|e| {
            format!("{s:?} is not a local date and time like \"2026-12-24 18:00\" ({e})")
        })?;
        let zoned = dt
            .to_zoned(self.tz.clone())
            .map_err(|e| format!("{s:?}: {e}"))?;
        Ok(SystemTime::from(zoned.timestamp()))
    }
}

/// `YYYY-MM-DD [what]` lines; blank lines and `#` comments are skipped. Errors are
/// `line: reason`.
fn parse_holidays(text: &str) -> Result<BTreeSet<Date>, String> {
    let mut out = BTreeSet::new();
    for (i, line) in text.lines().enumerate() {
        let line = line.split('#').next().unwrap_or_default().trim();
        if line.is_empty() {
            continue;
        }
        let first = line.split_whitespace().next().unwrap_or_default();
        let date: Date = first
            .parse()
            .map_err(|_| format!("{}: {first:?} is not a date like 2026-12-24", i + 1))?;
        out.insert(date);
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn berlin(holidays: &str) -> Calendar {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("holidays.txt");
        std::fs::write(&path, holidays).unwrap();
        Calendar::load(Some("Europe/Berlin"), Some(&path)).unwrap()
    }

    #[test]
    fn rules_parse_with_clear_errors() {
        let r = HoursRule::parse("mon-fri 08:00-18:00").unwrap();
        assert_eq!((r.days, r.from, r.to), (0b0011111, 480, 1080));
        assert_eq!(
            HoursRule::parse("fri-mon 22:00-06:00").unwrap().days,
            0b1110001
        );
        assert_eq!(HoursRule::parse("sat,sun 00:00-24:00").unwrap().to, 1440);
        assert_eq!(HoursRule::parse("* 09:00-10:00").unwrap().days, 0x7f);
        for (bad, says) in [
            ("mon-fri", "is not \"DAYS HH:MM-HH:MM\""),
            ("mnd 08:00-18:00", "\"mnd\" is not a day"),
            ("mon 8:00-18:00", "\"8:00\" is not a time"),
            ("mon 08:00-25:00", "\"25:00\" is not a time"),
            ("mon 08:00-08:00", "is empty"),
            ("mon 24:00-01:00", "starts at 24:00"),
        ] {
            let e = HoursRule::parse(bad).unwrap_err();
            assert!(e.contains(says), "{bad}: {e}");
        }
    }

    /// Weekdays, the end of a range (exclusive), over midnight into the next day, holidays
    /// before rules, and summer time from the tz database (Berlin is UTC+1 in winter, +2 in
    /// summer).
    #[test]
    fn decisions_follow_the_local_clock() {
        let cal = berlin("# public holidays\n2026-12-24 Heiligabend\n2026-12-25\n");
        let rules = [
            HoursRule::parse("mon-fri 08:00-18:00").unwrap(),
            HoursRule::parse("sat 22:00-02:00").unwrap(),
        ];
        let at = |s: &str| cal.local_time(s).unwrap();
        assert_eq!(cal.decide(&rules, at("2026-12-07 08:00")), Hours::Open); // Monday
        assert_eq!(cal.decide(&rules, at("2026-12-07 07:59")), Hours::Closed);
        assert_eq!(cal.decide(&rules, at("2026-12-07 18:00")), Hours::Closed);
        assert_eq!(cal.decide(&rules, at("2026-12-12 23:30")), Hours::Open); // Saturday
        assert_eq!(cal.decide(&rules, at("2026-12-13 01:59")), Hours::Open); // ... into Sunday
        assert_eq!(cal.decide(&rules, at("2026-12-13 02:00")), Hours::Closed);
        assert_eq!(cal.decide(&rules, at("2026-12-24 10:00")), Hours::Holiday); // Thursday
        // 06:30 UTC is 08:30 in Berlin in July (summer time), 07:30 in January.
        let utc = |s: &str| SystemTime::from(s.parse::<jiff::Timestamp>().unwrap());
        assert_eq!(cal.decide(&rules, utc("2026-07-06T06:30:00Z")), Hours::Open);
        assert_eq!(
            cal.decide(&rules, utc("2026-01-05T06:30:00Z")),
            Hours::Closed
        );
    }

    /// An `hours` step in a plan, run by the simulator at chosen local times: open, closed,
    /// and a holiday with and without `on_holiday`; the virtual clock moves the time on.
    #[test]
    fn an_hours_step_branches_on_the_simulated_clock() {
        use crate::dialplan::sim::{SimCall, sim_facts, simulate};
        use crate::dialplan::testing::{FakeServices, block_on, plan};
        let src = r#"
[dialplan]
name = "hours"
start = "when"

[steps.when]
hours = ["mon-fri 08:00-18:00"]
on_open = "open"
on_closed = "closed"
on_holiday = "holiday"

[steps.open]
hangup = ["welcome"]

[steps.closed]
hangup = ["goodbye"]

[steps.holiday]
hangup = []
"#;
        let mut p = plan(src);
        p.calendar = std::sync::Arc::new(berlin("2026-12-24\n"));
        let run = |p: &crate::dialplan::Dialplan, at: &str| {
            let mut facts = sim_facts("+4930111", "100");
            facts.started = p.calendar.local_time(at).unwrap();
            let call = SimCall::new(facts, "").unwrap();
            let sim = block_on(simulate(p, call, &FakeServices::new()));
            sim.format()
        };
        assert!(run(&p, "2026-12-07 09:00").contains("open -> open"));
        assert!(run(&p, "2026-12-06 09:00").contains("closed -> closed")); // Sunday
        assert!(run(&p, "2026-12-24 09:00").contains("holiday -> holiday"));
        let src = src.replace("on_holiday = \"holiday\"\n", "");
        let mut p = plan(&src.replace("[steps.holiday]\nhangup = []\n", ""));
        p.calendar = std::sync::Arc::new(berlin("2026-12-24\n"));
        assert!(run(&p, "2026-12-24 09:00").contains("closed -> closed"));
        // A bad rule is a problem at its line, like any other.
        let bad = crate::dialplan::testing::check_with(
            &src.replace("mon-fri 08:00-18:00", "mon-fry 08:00-18:00"),
            &["en"],
            &|_, _| true,
        )
        .unwrap_err();
        assert!(
            bad.iter()
                .any(|p| p.message.contains("\"fry\" is not a day")),
            "{bad:#?}"
        );
    }

    #[test]
    fn bad_settings_name_themselves() {
        let e = Calendar::load(Some("Europe/Berlln"), None).unwrap_err();
        assert!(
            e.starts_with("[dialplans] timezone = \"Europe/Berlln\""),
            "{e}"
        );
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("h.txt");
        std::fs::write(&path, "2026-12-24\n24.12.2026\n").unwrap();
        let e = Calendar::load(None, Some(&path)).unwrap_err();
        assert!(
            e.ends_with("h.txt:2: \"24.12.2026\" is not a date like 2026-12-24"),
            "{e}"
        );
        assert!(Calendar::default().local_time("tomorrow").is_err());
    }
}
