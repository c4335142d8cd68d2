//! `ivrd audit ...`: the call audit for the admin, without sqlite3.
//!
//! Under systemd (`DynamicUser=`) the database sits in a private state directory, where an
//! admin has neither the file at hand nor, often, sqlite3. `ivrd audit` reads it for them:
//! the calls that match the filters, newest first, as
//! - `table` (the default): aligned columns for a person, the newest 50 unless `--limit`,
//!   times in local time (`--utc` for UTC); control characters in what callers sent (Call-ID,
//!   numbers) are escaped, so a crafted header cannot drive the terminal;
//! - `csv`: a header row and every column of the `audit` table, all matching rows unless
//!   `--limit`, times RFC 3339 in UTC with milliseconds;
//! - `json`: JSON Lines, one object a row with the same fields as the CSV (streams, and `jq`
//!   reads it as it comes), all matching rows unless `--limit`.
//!
//! It opens the database read-only ([`Store::open_read_only`]): nothing is created or changed,
//! and it reads while the daemon writes. The filters are bound parameters of one query that
//! walks an index of the audit table. Phone numbers are shown in full, as `ivrd customers`
//! does: masking is for logs. The audit holds no PINs, so neither does any output.
//!
//! `ivrd audit prune --older-than 90d` deletes old rows once, as `[audit] keep_days` does
//! every hour.
//!
//! Exit codes: 0 success (also when no row matches); 2 an error (a bad time, an unknown
//! outcome, a database failure).

use std::io::{self, Write};
use std::sync::OnceLock;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use crate::store::{AuditFilter, AuditRecord, Store, StoreError, normalize_phone};

/// Rows the table shows without `--limit`: a screenful of the latest calls.
pub const TABLE_LIMIT: usize = 50;

/// The listing's filters and format (`ivrd audit [OPTIONS]`).
#[derive(Debug, Clone, Default, PartialEq, Eq, clap::Args)]
pub struct AuditArgs {
    /// Calls that started at or after this: RFC 3339 (2026-12-05T14:00:00Z, or with an offset),
    /// a local time `YYYY-MM-DD[ HH:MM[:SS]]`, or a duration ago (`2h`, `7d`, `1h 30m`).
    #[arg(long, value_name = "WHEN")]
    pub since: Option<String>,
    /// Calls that started before this, in the same forms (a date alone is its midnight, so
    /// `--until 2026-12-05` ends with the 4th).
    #[arg(long, value_name = "WHEN")]
    pub until: Option<String>,
    /// Only calls with this outcome (e.g. verified, wrong-pin, locked-out); repeat it for any
    /// of several.
    #[arg(long, value_name = "OUTCOME")]
    pub outcome: Vec<String>,
    /// Only calls that identified this customer id.
    #[arg(long, value_name = "ID")]
    pub customer: Option<String>,
    /// Only calls from this number: as recorded, or its E.164 form (a national number is read
    /// in `[store] default_region`).
    #[arg(long, value_name = "NUMBER")]
    pub caller: Option<String>,
    /// At most N rows, the newest (default: 50 for the table, all for csv and json; 0: all).
    #[arg(long, value_name = "N")]
    pub limit: Option<usize>,
    /// table (for a person), csv (header row, every column) or json (JSON Lines: one object
    /// a line).
    #[arg(long, value_enum, default_value_t)]
    pub format: AuditFormat,
    /// Show the table's times in UTC instead of local time (csv and json are always UTC).
    #[arg(long)]
    pub utc: bool,
}

/// How the listing is printed.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, clap::ValueEnum)]
pub enum AuditFormat {
    #[default]
    Table,
    Csv,
    Json,
}

impl std::fmt::Display for AuditFormat {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            AuditFormat::Table => "table",
            AuditFormat::Csv => "csv",
            AuditFormat::Json => "json",
        })
    }
}

/// The `audit` subcommands (without one, `ivrd audit` lists).
#[derive(Debug, Clone, PartialEq, Eq, clap::Subcommand)]
pub enum AuditCommand {
    /// Delete the rows of calls that started before a time, once (what `[audit] keep_days`
    /// does every hour).
    Prune {
        /// A duration ago (`90d`) or a time, in the forms `--since` takes.
        #[arg(long, value_name = "WHEN")]
        older_than: String,
    },
}

/// Why an audit command failed.
#[derive(Debug, thiserror::Error)]
pub enum AuditError {
    /// The database could not be read (or, for prune, written).
    #[error(transparent)]
    Store(#[from] StoreError),
    /// A time option's value is not a time.
    #[error("{flag} {value:?}: {reason}")]
    BadTime {
        flag: &'static str,
        value: String,
        reason: String,
    },
    /// `--since` is not before `--until`: nothing could match, which is surely a mistake.
    #[error("--since {since:?} is not before --until {until:?}")]
    EmptyRange { since: String, until: String },
    /// An outcome no audit row can have.
    #[error("unknown outcome {value:?}: {hint}")]
    UnknownOutcome { value: String, hint: String },
    /// Listing options given to `prune`, which would ignore them.
    #[error("prune takes only --older-than; {0} is for listing")]
    FilterWithPrune(&'static str),
    /// Writing the output failed (e.g. a closed pipe).
    #[error("could not write the output: {0}")]
    Output(#[from] io::Error),
}

impl AuditError {
    /// The process exit code for any error.
    pub const EXIT_CODE: u8 = 2;
}

/// The columns of the `audit` table, in its order: the CSV header and the JSON fields.
pub const COLUMNS: [&str; 15] = [
    "id",
    "call_id",
    "caller",
    "dialed",
    "customer_id",
    "outcome",
    "started_at",
    "ended_at",
    "dtmf_methods",
    "detail",
    "transfer_target",
    "transfer_status",
    "transfer_ms",
    "transport",
    "srtp",
];

/// Lists the audit rows `args` selects to `out`. `now` anchors relative times (`2h`);
/// `default_region` reads a national `--caller`.
pub fn list(
    store: &Store,
    args: &AuditArgs,
    now: SystemTime,
    default_region: &str,
    out: &mut impl Write,
) -> Result<(), AuditError> {
    let mut filter = filter(args, now, default_region)?;
    match args.format {
        AuditFormat::Table => {
            // One row more than shown tells whether there were more.
            let shown = filter.limit;
            filter.limit = shown.map(|n| n.saturating_add(1));
            let mut records = Vec::new();
            store.for_each_audit(&filter, |r| {
                records.push(r);
                Ok::<_, AuditError>(())
            })?;
            let more = shown.is_some_and(|n| records.len() > n);
            records.truncate(shown.unwrap_or(usize::MAX));
            let zone = if args.utc { Zone::Utc } else { Zone::Local };
            print_table(&records, more, zone, out)?;
        }
        AuditFormat::Csv => {
            let mut csv = csv::WriterBuilder::new()
                .has_headers(false)
                .from_writer(&mut *out);
            csv.write_record(COLUMNS).map_err(io::Error::from)?;
            store.for_each_audit(&filter, |r| {
                csv.serialize(JsonAudit::from(&r))
                    .map_err(|e| AuditError::Output(e.into()))
            })?;
            csv.flush()?;
        }
        AuditFormat::Json => {
            store.for_each_audit(&filter, |r| {
                serde_json::to_writer(&mut *out, &JsonAudit::from(&r)).map_err(io::Error::from)?;
                writeln!(out)?;
                Ok::<_, AuditError>(())
            })?;
        }
    }
    out.flush()?;
    Ok(())
}

/// Deletes the rows of calls that started before `older_than` (a time or a duration ago) and
/// says how many went.
pub fn prune(
    store: &Store,
    older_than: &str,
    now: SystemTime,
    out: &mut impl Write,
) -> Result<(), AuditError> {
    let cutoff = parse_when(older_than, now).map_err(|reason| AuditError::BadTime {
        flag: "--older-than",
        value: older_than.to_string(),
        reason,
    })?;
    let rows = store.prune_audit(cutoff)?;
    writeln!(
        out,
        "pruned {rows} audit {} of calls that started before {}",
        if rows == 1 { "row" } else { "rows" },
        format_time(cutoff, Zone::Utc, false)
    )?;
    Ok(())
}

/// The first listing option set in `args`, if any (`prune` refuses them).
pub fn listing_option(args: &AuditArgs) -> Option<&'static str> {
    let d = AuditArgs::default();
    [
        (args.since != d.since, "--since"),
        (args.until != d.until, "--until"),
        (args.outcome != d.outcome, "--outcome"),
        (args.customer != d.customer, "--customer"),
        (args.caller != d.caller, "--caller"),
        (args.limit != d.limit, "--limit"),
        (args.format != d.format, "--format"),
        (args.utc != d.utc, "--utc"),
    ]
    .into_iter()
    .find_map(|(set, name)| set.then_some(name))
}

/// The store's filter for `args`, every value checked.
fn filter(args: &AuditArgs, now: SystemTime, region: &str) -> Result<AuditFilter, AuditError> {
    let when = |flag: &'static str, value: &Option<String>| {
        value
            .as_deref()
            .map(|v| {
                parse_when(v, now).map_err(|reason| AuditError::BadTime {
                    flag,
                    value: v.to_string(),
                    reason,
                })
            })
            .transpose()
    };
    let since = when("--since", &args.since)?;
    let until = when("--until", &args.until)?;
    if let (Some(s), Some(u)) = (since, until)
        && s >= u
    {
        return Err(AuditError::EmptyRange {
            since: args.since.clone().unwrap_or_default(),
            until: args.until.clone().unwrap_or_default(),
        });
    }
    let known = crate::audit::outcome_names();
    for o in &args.outcome {
        if !known.contains(&o.as_str()) {
            let hint = crate::dialplan::problem::did_you_mean(o, known.iter().copied())
                .unwrap_or_else(|| format!("the outcomes are {}", known.join(", ")));
            return Err(AuditError::UnknownOutcome {
                value: o.clone(),
                hint,
            });
        }
    }
    // The audit keeps the caller as the PBX sent it; most send E.164, some national numbers.
    // Both forms of what the admin typed are asked for, so either spelling finds the calls.
    let mut callers = Vec::new();
    if let Some(c) = &args.caller {
        callers.push(c.trim().to_string());
        if let Ok(e164) = normalize_phone(c, region)
            && !callers.contains(&e164)
        {
            callers.push(e164);
        }
    }
    let limit = match (args.limit, args.format) {
        (Some(0), _) => None,
        (Some(n), _) => Some(n),
        (None, AuditFormat::Table) => Some(TABLE_LIMIT),
        (None, _) => None,
    };
    Ok(AuditFilter {
        since,
        until,
        outcomes: args.outcome.clone(),
        customer_id: args.customer.as_ref().map(|c| c.trim().to_string()),
        callers,
        limit,
    })
}

/// What a time option takes, for its error messages.
const TIME_FORMS: &str = "use RFC 3339 (2026-12-05T14:00:00Z), a local time \
     YYYY-MM-DD[ HH:MM[:SS]], or a duration ago such as 2h or 7d";

/// A time option's value: an RFC 3339 time (`Z` or an offset; seconds optional), a local
/// `YYYY-MM-DD[ HH:MM[:SS]]` (`T` between them also works), or a duration before `now`
/// (humantime: `2h`, `7d`, `1h 30m`).
pub fn parse_when(value: &str, now: SystemTime) -> Result<SystemTime, String> {
    let v = value.trim();
    if v.is_empty() {
        return Err(format!("no time given; {TIME_FORMS}"));
    }
    static DATE: OnceLock<regex::Regex> = OnceLock::new();
    let date = DATE.get_or_init(|| {
        regex::Regex::new(
            r"^([0-9]{4})-([0-9]{2})-([0-9]{2})(?:[Tt ]([0-9]{2}):([0-9]{2})(?::([0-9]{2})(?:\.([0-9]{1,9}))?)?)?(?:\s*(Z|z|[+-][0-9]{2}:?[0-9]{2}))?$",
        )
        .expect("the date pattern compiles")
    });
    if let Some(c) = date.captures(v) {
        return date_time(&c);
    }
    if v.starts_with(|c: char| c.is_ascii_digit()) && v.len() >= 5 && v.as_bytes()[4] == b'-' {
        // Looks like a date but is not one of ours (e.g. 2026-1-5): say what is.
        return Err(format!("not a time; {TIME_FORMS}"));
    }
    let ago = humantime::parse_duration(v).map_err(|_| format!("not a time; {TIME_FORMS}"))?;
    now.checked_sub(ago)
        .filter(|t| *t >= UNIX_EPOCH)
        .ok_or_else(|| "that is before 1970".to_string())
}

/// The time a match of the date pattern names; without a zone, in local time.
fn date_time(c: &regex::Captures<'_>) -> Result<SystemTime, String> {
    // The pattern admits ASCII digits only, so the numbers parse (and the offset has four);
    // their ranges are checked here.
    let num = |i: usize| {
        c.get(i)
            .map_or(0, |m| m.as_str().parse::<u32>().unwrap_or(u32::MAX))
    };
    let (year, month, day) = (i64::from(num(1)), num(2), num(3));
    let (hour, minute, second) = (num(4), num(5), num(6));
    if !(1..=12).contains(&month) {
        return Err(format!("month {month} is not 1 to 12"));
    }
    let last = days_in_month(year, month);
    if !(1..=last).contains(&day) {
        return Err(format!("day {day} is not 1 to {last}"));
    }
    if hour > 23 || minute > 59 || second > 59 {
        return Err(format!(
            "{hour:02}:{minute:02}:{second:02} is not a time of day"
        ));
    }
    let nanos = c.get(7).map_or(0, |m| {
        // ".5" is 500 ms: pad to nine digits.
        format!("{:0<9}", m.as_str()).parse::<u32>().unwrap_or(0)
    });
    let secs = match c.get(8).map(|m| m.as_str()) {
        Some(zone) => {
            let offset = match zone {
                "Z" | "z" => 0,
                _ => {
                    let digits: String = zone[1..].chars().filter(char::is_ascii_digit).collect();
                    let (h, m) = (
                        digits[..2].parse::<i64>().unwrap_or(99),
                        digits[2..].parse::<i64>().unwrap_or(99),
                    );
                    if h > 23 || m > 59 {
                        return Err(format!("offset {zone} is not a time zone offset"));
                    }
                    let sign = if zone.starts_with('-') { -1 } else { 1 };
                    sign * (h * 3600 + m * 60)
                }
            };
            days_from_civil(year, month, day) * 86_400
                + i64::from(hour * 3600 + minute * 60 + second)
                - offset
        }
        None => local_to_epoch(year, month, day, hour, minute, second)
            .ok_or_else(|| "not a valid local time here".to_string())?,
    };
    let secs = u64::try_from(secs).map_err(|_| "that is before 1970".to_string())?;
    Ok(UNIX_EPOCH + Duration::new(secs, nanos))
}

/// Local time to seconds since the epoch, by the C library (`TZ`, else `/etc/localtime`),
/// which knows the zone's daylight saving rules.
fn local_to_epoch(year: i64, month: u32, day: u32, h: u32, m: u32, s: u32) -> Option<i64> {
    let as_int = |v: i64| libc::c_int::try_from(v).ok();
    // SAFETY: an all-zero `tm` is a valid value (integers, and a null zone name pointer).
    let mut tm: libc::tm = unsafe { std::mem::zeroed() };
    tm.tm_year = as_int(year - 1900)?;
    tm.tm_mon = as_int(i64::from(month) - 1)?;
    tm.tm_mday = as_int(i64::from(day))?;
    tm.tm_hour = as_int(i64::from(h))?;
    tm.tm_min = as_int(i64::from(m))?;
    tm.tm_sec = as_int(i64::from(s))?;
    // Let the library decide whether daylight saving time applies on that date.
    tm.tm_isdst = -1;
    // SAFETY: `tm` is a valid, exclusively borrowed `struct tm`; mktime reads and normalises it.
    let t = unsafe { libc::mktime(&mut tm) };
    // time_t is i64 on 64-bit Linux (a no-op there), narrower elsewhere.
    #[allow(clippy::useless_conversion)]
    (t != -1).then_some(i64::from(t))
}

/// Which clock the table's times are shown on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Zone {
    Local,
    Utc,
}

/// `t` as `YYYY-MM-DD HH:MM:SS` in `zone` (a `Z` after UTC ones, or `.mmmZ` with `millis`).
/// Never panics, whatever the row holds: a time the local zone cannot show is shown in UTC.
fn format_time(t: SystemTime, zone: Zone, millis: bool) -> String {
    let (secs, ms) = match t.duration_since(UNIX_EPOCH) {
        Ok(d) => (
            i64::try_from(d.as_secs()).unwrap_or(i64::MAX),
            d.subsec_millis(),
        ),
        Err(e) => {
            // Before 1970 (only a row written by hand): round down to whole milliseconds.
            let ms_before = i64::try_from(e.duration().as_millis()).unwrap_or(i64::MAX);
            let total = -ms_before;
            (total.div_euclid(1000), total.rem_euclid(1000) as u32)
        }
    };
    if zone == Zone::Local
        && let Some((y, mo, d, h, mi, s)) = local_parts(secs)
    {
        return format!("{y:04}-{mo:02}-{d:02} {h:02}:{mi:02}:{s:02}");
    }
    let (y, mo, d) = civil_from_days(secs.div_euclid(86_400));
    let rest = secs.rem_euclid(86_400);
    let (h, mi, s) = (rest / 3600, rest % 3600 / 60, rest % 60);
    if millis {
        format!("{y:04}-{mo:02}-{d:02}T{h:02}:{mi:02}:{s:02}.{ms:03}Z")
    } else {
        format!("{y:04}-{mo:02}-{d:02} {h:02}:{mi:02}:{s:02}Z")
    }
}

/// Seconds since the epoch as local calendar parts, by the C library.
// time_t is i64 on 64-bit Linux (the conversion cannot fail there), narrower elsewhere.
#[allow(clippy::useless_conversion, clippy::unnecessary_fallible_conversions)]
fn local_parts(secs: i64) -> Option<(i64, i32, i32, i32, i32, i32)> {
    let t = libc::time_t::try_from(secs).ok()?;
    // SAFETY: an all-zero `tm` is a valid value.
    let mut tm: libc::tm = unsafe { std::mem::zeroed() };
    // SAFETY: both pointers are valid for the call; localtime_r is the thread-safe variant.
    let ok = unsafe { !libc::localtime_r(&t, &mut tm).is_null() };
    ok.then(|| {
        (
            i64::from(tm.tm_year) + 1900,
            tm.tm_mon + 1,
            tm.tm_mday,
            tm.tm_hour,
            tm.tm_min,
            tm.tm_sec,
        )
    })
}

/// Days since 1970-01-01 of a proleptic Gregorian date (H. Hinnant's algorithm).
fn days_from_civil(year: i64, month: u32, day: u32) -> i64 {
    let y = if month <= 2 { year - 1 } else { year };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let m = i64::from(month);
    let doy = (153 * (if m > 2 { m - 3 } else { m + 9 }) + 2) / 5 + i64::from(day) - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

/// The date `days` after 1970-01-01 (the inverse of [`days_from_civil`]).
fn civil_from_days(days: i64) -> (i64, u32, u32) {
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let month = (if mp < 10 { mp + 3 } else { mp - 9 }) as u32;
    let year = yoe + era * 400 + i64::from(month <= 2);
    (year, month, day)
}

fn days_in_month(year: i64, month: u32) -> u32 {
    match month {
        2 if year % 4 == 0 && (year % 100 != 0 || year % 400 == 0) => 29,
        2 => 28,
        4 | 6 | 9 | 11 => 30,
        _ => 31,
    }
}

/// One audit row for CSV and JSON: the table's columns ([`COLUMNS`]), times as RFC 3339 UTC.
#[derive(serde::Serialize)]
struct JsonAudit<'a> {
    id: i64,
    call_id: &'a str,
    caller: &'a str,
    dialed: &'a str,
    customer_id: Option<&'a str>,
    outcome: &'a str,
    started_at: String,
    ended_at: String,
    dtmf_methods: &'a str,
    detail: Option<&'a str>,
    transfer_target: Option<&'a str>,
    transfer_status: Option<u16>,
    transfer_ms: Option<u64>,
    transport: Option<&'a str>,
    srtp: Option<&'a str>,
}

impl<'a> From<&'a AuditRecord> for JsonAudit<'a> {
    fn from(r: &'a AuditRecord) -> JsonAudit<'a> {
        let row = &r.row;
        let transfer = row.transfer.as_ref();
        JsonAudit {
            id: r.id,
            call_id: &row.call_id,
            caller: &row.caller,
            dialed: &row.dialed,
            customer_id: row.customer_id.as_deref(),
            outcome: &row.outcome,
            started_at: format_time(row.started_at, Zone::Utc, true),
            ended_at: format_time(row.ended_at, Zone::Utc, true),
            dtmf_methods: &row.dtmf_methods,
            detail: row.detail.as_deref(),
            transfer_target: transfer.map(|t| t.target.as_str()),
            transfer_status: transfer.and_then(|t| t.status),
            transfer_ms: transfer.map(|t| t.ms),
            transport: row.transport.as_deref(),
            srtp: row.srtp.as_deref(),
        }
    }
}

/// What a caller sent, fit for a terminal: control characters (an escape sequence in a
/// crafted Call-ID or From) are shown escaped instead of acted on.
fn printable(s: &str) -> String {
    if !s.chars().any(char::is_control) {
        return s.to_string();
    }
    s.chars()
        .map(|c| {
            if c.is_control() {
                c.escape_default().to_string()
            } else {
                c.to_string()
            }
        })
        .collect()
}

/// `h:mm:ss` or `m:ss`.
fn duration_text(d: Duration) -> String {
    let s = d.as_secs();
    if s >= 3600 {
        format!("{}:{:02}:{:02}", s / 3600, s % 3600 / 60, s % 60)
    } else {
        format!("{}:{:02}", s / 60, s % 60)
    }
}

/// The aligned table: STARTED, LENGTH, CALLER, DIALED, CUSTOMER, OUTCOME, VIA, SRTP,
/// TRANSFER (target, final status, seconds), CALL-ID; then a line that counts the rows and
/// says whether there were more.
fn print_table(
    records: &[AuditRecord],
    more: bool,
    zone: Zone,
    out: &mut impl Write,
) -> io::Result<()> {
    if records.is_empty() {
        return writeln!(out, "no audit rows match");
    }
    let header = [
        "STARTED", "LENGTH", "CALLER", "DIALED", "CUSTOMER", "OUTCOME", "VIA", "SRTP", "TRANSFER",
        "CALL-ID",
    ]
    .map(String::from);
    let dash = || "-".to_string();
    let rows: Vec<[String; 10]> = records
        .iter()
        .map(|r| {
            let row = &r.row;
            [
                format_time(row.started_at, zone, false),
                duration_text(
                    row.ended_at
                        .duration_since(row.started_at)
                        .unwrap_or_default(),
                ),
                printable(&row.caller),
                printable(&row.dialed),
                row.customer_id.as_deref().map_or_else(dash, printable),
                printable(&row.outcome),
                row.transport.as_deref().map_or_else(dash, printable),
                if row.srtp.is_some() { "yes" } else { "-" }.to_string(),
                row.transfer.as_ref().map_or_else(dash, |t| {
                    format!(
                        "{} {} {:.1}s",
                        printable(&t.target),
                        t.status.map_or_else(dash, |s| s.to_string()),
                        t.ms as f64 / 1000.0
                    )
                }),
                printable(&row.call_id),
            ]
        })
        .collect();
    crate::customers_cli::write_columns(out, &header, &rows)?;
    let n = records.len();
    writeln!(
        out,
        "{n} {}, newest first, times in {}{}",
        if n == 1 { "call" } else { "calls" },
        match zone {
            Zone::Local => "local time",
            Zone::Utc => "UTC",
        },
        if more {
            "; there are more: --limit N (0: all) or narrow the filters"
        } else {
            ""
        }
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::{AuditRow, AuditTransfer};
    use clap::Parser;

    /// The options as `ivrd audit` would mount them.
    #[derive(Parser)]
    struct Cli {
        #[command(flatten)]
        args: AuditArgs,
    }

    fn parse(args: &[&str]) -> AuditArgs {
        Cli::try_parse_from(std::iter::once("audit").chain(args.iter().copied()))
            .unwrap()
            .args
    }

    /// 2026-12-05T12:00:00Z plus `secs`.
    fn t(secs: u64) -> SystemTime {
        UNIX_EPOCH + Duration::from_secs(1_796_472_000 + secs)
    }

    fn row(n: u64, outcome: &str, customer: Option<&str>, caller: &str) -> AuditRow {
        AuditRow {
            call_id: format!("call-{n}@pbx"),
            caller: caller.into(),
            dialed: "100".into(),
            customer_id: customer.map(str::to_string),
            outcome: outcome.into(),
            started_at: t(n * 3600),
            ended_at: t(n * 3600 + 75) + Duration::from_millis(250),
            dtmf_methods: "rfc4733".into(),
            detail: Some("end=completed".into()),
            transfer: None,
            transport: Some("UDP".into()),
            srtp: None,
        }
    }

    /// Six calls an hour apart (n = 0..=5, call-5 the newest).
    fn setup() -> (tempfile::TempDir, Store) {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path().join("ivrd.db")).unwrap();
        let rows = [
            row(0, "verified", Some("111111"), "+491701111111"),
            row(1, "wrong-pin", Some("111111"), "+491701111111"),
            row(2, "unknown-customer", None, "+491702222222"),
            row(3, "verified", Some("222222"), "+491702222222"),
            row(4, "locked-out", Some("111111"), "01701111111"),
            row(5, "caller-hangup", None, "+491703333333"),
        ];
        store.write_audit_batch(&rows).unwrap();
        (dir, store)
    }

    fn exec(store: &Store, args: &[&str]) -> (Result<(), AuditError>, String) {
        let mut out = Vec::new();
        let result = list(store, &parse(args), t(6 * 3600), "DE", &mut out);
        (result, String::from_utf8(out).unwrap())
    }

    /// The call ids a CSV or JSON listing printed, in order.
    fn csv_ids(out: &str) -> Vec<String> {
        let mut r = csv::Reader::from_reader(out.as_bytes());
        r.records().map(|rec| rec.unwrap()[1].to_string()).collect()
    }

    fn ids(store: &Store, args: &[&str]) -> Vec<String> {
        let mut all = vec!["--format", "csv"];
        all.extend_from_slice(args);
        let (r, out) = exec(store, &all);
        r.unwrap();
        csv_ids(&out)
    }

    #[test]
    fn filters_combine_newest_first() {
        let (_dir, store) = setup();
        let c =
            |ns: &[u64]| -> Vec<String> { ns.iter().map(|n| format!("call-{n}@pbx")).collect() };
        assert_eq!(ids(&store, &[]), c(&[5, 4, 3, 2, 1, 0]));
        assert_eq!(ids(&store, &["--outcome", "verified"]), c(&[3, 0]));
        assert_eq!(
            ids(&store, &["--outcome", "verified", "--outcome", "wrong-pin"]),
            c(&[3, 1, 0])
        );
        assert_eq!(ids(&store, &["--customer", "111111"]), c(&[4, 1, 0]));
        assert_eq!(
            ids(&store, &["--customer", "111111", "--outcome", "verified"]),
            c(&[0])
        );
        // Since is inclusive, until exclusive: [1 h, 4 h) holds calls 1, 2 and 3.
        assert_eq!(
            ids(
                &store,
                &[
                    "--since",
                    "2026-12-05T13:00:00Z",
                    "--until",
                    "2026-12-05T16:00:00Z"
                ]
            ),
            c(&[3, 2, 1])
        );
        // Relative to now (6 h after call 0): the last 2.5 hours.
        assert_eq!(ids(&store, &["--since", "2h 30m"]), c(&[5, 4]));
        assert_eq!(
            ids(&store, &["--since", "5h", "--outcome", "verified"]),
            c(&[3])
        );
        // A caller as typed finds its national and its E.164 spelling.
        assert_eq!(ids(&store, &["--caller", "01701111111"]), c(&[4, 1, 0]));
        assert_eq!(ids(&store, &["--caller", "+491702222222"]), c(&[3, 2]));
        assert_eq!(
            ids(
                &store,
                &[
                    "--caller",
                    "+491702222222",
                    "--until",
                    "2026-12-05T15:00:00+00:30"
                ]
            ),
            c(&[2])
        );
        assert!(ids(&store, &["--customer", "999999"]).is_empty());
    }

    #[test]
    fn limit_keeps_the_newest_and_the_table_says_when_there_are_more() {
        let (_dir, store) = setup();
        assert_eq!(
            ids(&store, &["--limit", "2"]),
            vec!["call-5@pbx", "call-4@pbx"]
        );
        assert_eq!(ids(&store, &["--limit", "0"]).len(), 6);
        let (r, out) = exec(&store, &["--limit", "2", "--utc"]);
        r.unwrap();
        assert_eq!(out.lines().count(), 4, "{out}");
        assert!(out.ends_with("2 calls, newest first, times in UTC; there are more: --limit N (0: all) or narrow the filters\n"), "{out}");
        let (_, out) = exec(&store, &["--limit", "6", "--utc"]);
        assert!(
            out.ends_with("6 calls, newest first, times in UTC\n"),
            "{out}"
        );
        // Without --limit the table stops at 50, exports do not.
        let more: Vec<AuditRow> = (10..70)
            .map(|n| row(n, "verified", None, "+491709999999"))
            .collect();
        store.write_audit_batch(&more).unwrap();
        let (_, out) = exec(&store, &[]);
        assert_eq!(out.lines().count(), 52, "{out}");
        assert!(out.contains("50 calls") && out.contains("there are more"));
        assert_eq!(ids(&store, &[]).len(), 66);
        let (_, out) = exec(&store, &["--format", "json"]);
        assert_eq!(out.lines().count(), 66);
    }

    #[test]
    fn the_table_is_aligned_and_shows_utc_or_local_times() {
        let (dir, store) = setup();
        let mut r = row(7, "transfer-failed", Some("111111"), "+491701111111");
        r.transfer = Some(AuditTransfer {
            target: "sip:queue@pbx".into(),
            status: Some(486),
            ms: 1234,
        });
        r.srtp = Some("AES_CM_128_HMAC_SHA1_80".into());
        r.call_id = "evil\u{1b}[2J@pbx".into();
        store.write_audit(&r).unwrap();
        let (res, out) = exec(&store, &["--limit", "2", "--utc"]);
        res.unwrap();
        assert_eq!(
            out,
            "STARTED               LENGTH  CALLER         DIALED  CUSTOMER  OUTCOME          VIA  SRTP  TRANSFER                CALL-ID\n\
             2026-12-05 19:00:00Z  1:15    +491701111111  100     111111    transfer-failed  UDP  yes   sip:queue@pbx 486 1.2s  evil\\u{1b}[2J@pbx\n\
             2026-12-05 17:00:00Z  1:15    +491703333333  100     -         caller-hangup    UDP  -     -                       call-5@pbx\n\
             2 calls, newest first, times in UTC; there are more: --limit N (0: all) or narrow the filters\n"
        );
        // Local time: the same instants in the C library's zone, whatever it is here.
        let (_, out) = exec(&store, &["--limit", "1"]);
        let (y, mo, d, h, mi, s) = local_parts(1_796_472_000 + 7 * 3600).unwrap();
        let local = format!("{y:04}-{mo:02}-{d:02} {h:02}:{mi:02}:{s:02}");
        assert!(
            out.lines()
                .nth(1)
                .unwrap()
                .starts_with(&format!("{local}  1:15")),
            "{out}"
        );
        assert!(out.ends_with(
            "times in local time; there are more: --limit N (0: all) or narrow the filters\n"
        ));
        let empty = Store::open(dir.path().join("empty.db")).unwrap();
        assert_eq!(exec(&empty, &[]).1, "no audit rows match\n");
    }

    #[test]
    fn csv_has_a_header_every_column_and_escapes() {
        let (dir, store) = setup();
        // The header is the audit table's own column list, so a column added later must be
        // added here too.
        let conn = rusqlite::Connection::open(dir.path().join("ivrd.db")).unwrap();
        let mut stmt = conn
            .prepare("SELECT name FROM pragma_table_info('audit')")
            .unwrap();
        let columns: Vec<String> = stmt
            .query_map([], |r| r.get(0))
            .unwrap()
            .collect::<Result<_, _>>()
            .unwrap();
        assert_eq!(columns, COLUMNS);

        let mut r = row(9, "transfer-failed", Some("111111"), "+491701111111");
        r.detail = Some("end=completed, \"quoted\"\nand a new line".into());
        r.transfer = Some(AuditTransfer {
            target: "sip:queue@pbx".into(),
            status: None,
            ms: 30_000,
        });
        r.transport = None;
        store.write_audit(&r).unwrap();
        let (res, out) = exec(&store, &["--format", "csv", "--limit", "1"]);
        res.unwrap();
        let mut lines = out.lines();
        assert_eq!(lines.next().unwrap(), COLUMNS.join(","));
        assert!(
            out.contains(
                "7,call-9@pbx,+491701111111,100,111111,transfer-failed,2026-12-05T21:00:00.000Z,\
                 2026-12-05T21:01:15.250Z,rfc4733,\"end=completed, \"\"quoted\"\"\nand a new line\",\
                 sip:queue@pbx,,30000,,\n"
            ),
            "{out}"
        );
        let mut reader = csv::Reader::from_reader(out.as_bytes());
        let rec = reader.records().next().unwrap().unwrap();
        assert_eq!(rec.len(), COLUMNS.len());
        assert_eq!(&rec[9], "end=completed, \"quoted\"\nand a new line");
        // No rows: still the header, so a script sees the columns.
        let (_, out) = exec(&store, &["--format", "csv", "--customer", "none"]);
        assert_eq!(out, format!("{}\n", COLUMNS.join(",")));
    }

    #[test]
    fn json_lines_parse_back() {
        let (_dir, store) = setup();
        let mut r = row(8, "verified", Some("222222"), "+491702222222");
        r.transfer = Some(AuditTransfer {
            target: "sip:queue@pbx".into(),
            status: Some(200),
            ms: 812,
        });
        r.srtp = Some("AES_CM_128_HMAC_SHA1_80".into());
        store.write_audit(&r).unwrap();
        let (res, out) = exec(&store, &["--format", "json", "--outcome", "verified"]);
        res.unwrap();
        let rows: Vec<serde_json::Value> = out
            .lines()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect();
        assert_eq!(rows.len(), 3);
        let first = &rows[0];
        let keys: Vec<&str> = first
            .as_object()
            .unwrap()
            .keys()
            .map(String::as_str)
            .collect();
        let mut want = COLUMNS.to_vec();
        want.sort_unstable();
        let mut keys = keys;
        keys.sort_unstable();
        assert_eq!(keys, want);
        assert_eq!(first["call_id"], "call-8@pbx");
        assert_eq!(first["customer_id"], "222222");
        assert_eq!(first["started_at"], "2026-12-05T20:00:00.000Z");
        assert_eq!(first["transfer_status"], 200);
        assert_eq!(first["transfer_ms"], 812);
        assert_eq!(first["srtp"], "AES_CM_128_HMAC_SHA1_80");
        assert_eq!(rows[1]["call_id"], "call-3@pbx");
        assert_eq!(rows[1]["transfer_target"], serde_json::Value::Null);
        assert_eq!(rows[2]["customer_id"], "111111");
    }

    #[test]
    fn an_unknown_outcome_is_an_error_with_a_suggestion() {
        let (_dir, store) = setup();
        let (r, out) = exec(&store, &["--outcome", "verifed"]);
        assert_eq!(
            r.unwrap_err().to_string(),
            "unknown outcome \"verifed\": did you mean \"verified\"?"
        );
        assert!(out.is_empty());
        let err = exec(&store, &["--outcome", "banana"])
            .0
            .unwrap_err()
            .to_string();
        assert!(
            err.starts_with("unknown outcome \"banana\": the outcomes are ")
                && err.contains("locked-out")
                && err.contains("rtp-timeout"),
            "{err}"
        );
    }

    #[test]
    fn bad_times_are_errors_naming_the_value() {
        let (_dir, store) = setup();
        for (args, want) in [
            (
                ["--since", "yesterday"],
                "--since \"yesterday\": not a time; use RFC 3339",
            ),
            (
                ["--until", "2026-13-01"],
                "--until \"2026-13-01\": month 13 is not 1 to 12",
            ),
            (
                ["--since", "2026-02-30"],
                "--since \"2026-02-30\": day 30 is not 1 to 28",
            ),
            (["--since", "2026-1-5"], "--since \"2026-1-5\": not a time"),
            (
                ["--since", "2026-12-05 24:00"],
                "--since \"2026-12-05 24:00\": 24:00:00 is not a time of day",
            ),
            (
                ["--since", "1000y"],
                "--since \"1000y\": that is before 1970",
            ),
            (["--since", ""], "--since \"\": no time given"),
        ] {
            let (r, out) = exec(&store, &args);
            let err = r.unwrap_err().to_string();
            assert!(err.starts_with(want), "{err}");
            assert!(out.is_empty());
        }
        let err = exec(&store, &["--since", "1h", "--until", "2h"])
            .0
            .unwrap_err();
        assert_eq!(
            err.to_string(),
            "--since \"1h\" is not before --until \"2h\""
        );
    }

    #[test]
    fn times_parse_in_every_form() {
        let now = t(0);
        let at = |s: &str| parse_when(s, now).unwrap();
        assert_eq!(at("2026-12-05T12:00:00Z"), t(0));
        assert_eq!(at("2026-12-05t12:00:00z"), t(0));
        assert_eq!(at("2026-12-05T13:30:00+01:30"), t(0));
        assert_eq!(at("2026-12-05T07:00-0500"), t(0));
        assert_eq!(
            at("2026-12-05T12:00:01.5Z"),
            t(1) + Duration::from_millis(500)
        );
        assert_eq!(at("2h"), t(0) - Duration::from_secs(7200));
        assert_eq!(at(" 7d "), t(0) - Duration::from_secs(7 * 86_400));
        assert_eq!(
            at("2024-02-29T00:00:00Z"),
            UNIX_EPOCH + Duration::from_secs(1_709_164_800)
        );
        // Local forms: whatever the zone here, they show again as typed.
        for (typed, shown) in [
            ("2026-12-05 14:30", "2026-12-05 14:30:00"),
            ("2026-07-01T08:15:09", "2026-07-01 08:15:09"),
            ("2026-12-05", "2026-12-05 00:00:00"),
        ] {
            assert_eq!(format_time(at(typed), Zone::Local, false), shown);
        }
        for days in [-800_000, -1, 0, 1, 19_000, 20_792, 2_932_896] {
            let (y, m, d) = civil_from_days(days);
            assert_eq!(days_from_civil(y, m, d), days);
        }
        assert_eq!(
            format_time(t(0), Zone::Utc, true),
            "2026-12-05T12:00:00.000Z"
        );
        // A time before 1970 (a row written by hand) still prints.
        let before = UNIX_EPOCH - Duration::from_millis(1500);
        assert_eq!(
            format_time(before, Zone::Utc, true),
            "1969-12-31T23:59:58.500Z"
        );
    }

    #[test]
    fn arguments_parse_with_defaults() {
        let a = parse(&[]);
        assert_eq!(a, AuditArgs::default());
        assert_eq!(a.format, AuditFormat::Table);
        let a = parse(&[
            "--outcome",
            "verified",
            "--outcome",
            "wrong-pin",
            "--format",
            "json",
        ]);
        assert_eq!(a.outcome, ["verified", "wrong-pin"]);
        assert_eq!(a.format, AuditFormat::Json);
        assert!(Cli::try_parse_from(["audit", "--format", "xml"]).is_err());
        assert!(Cli::try_parse_from(["audit", "--limit", "-1"]).is_err());
        assert_eq!(listing_option(&parse(&[])), None);
        assert_eq!(listing_option(&parse(&["--utc"])), Some("--utc"));
    }

    #[test]
    fn prune_deletes_the_old_rows_and_says_how_many() {
        let (_dir, store) = setup();
        let mut out = Vec::new();
        // Now is 6 h after call 0: older than 4 h are calls 0 and 1.
        prune(&store, "4h", t(6 * 3600), &mut out).unwrap();
        assert_eq!(
            String::from_utf8(out).unwrap(),
            "pruned 2 audit rows of calls that started before 2026-12-05 14:00:00Z\n"
        );
        assert_eq!(ids(&store, &[]).len(), 4);
        let err = prune(&store, "soon", t(0), &mut Vec::new()).unwrap_err();
        assert!(
            err.to_string()
                .starts_with("--older-than \"soon\": not a time"),
            "{err}"
        );
    }

    #[test]
    fn a_read_only_store_reads_while_another_connection_writes() {
        let (dir, store) = setup();
        let reader = Store::open_read_only(dir.path().join("ivrd.db")).unwrap();
        store
            .write_audit(&row(6, "verified", None, "+491700000000"))
            .unwrap();
        assert_eq!(ids(&reader, &[]).len(), 7);
        // Read-only means it: a prune through it fails and deletes nothing.
        assert!(reader.prune_audit(t(100 * 3600)).is_err());
        assert_eq!(ids(&store, &[]).len(), 7);
        let err = Store::open_read_only(dir.path().join("missing.db")).unwrap_err();
        assert!(err.to_string().starts_with("no database at "), "{err}");
        assert!(!dir.path().join("missing.db").exists());
    }
}
