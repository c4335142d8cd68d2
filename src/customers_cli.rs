//! `ivrd customers ...`: the admin's commands for the customer table.
//!
//! The output is for a person at a terminal (and `list --json` for scripts). It shows mobile
//! numbers in full: the admin manages them; masking is for logs, which others read.
//!
//! Exit codes (see [`CliExit`] and [`CliError::EXIT_CODE`]): 0 success; 1 an import rejected some
//! rows (the good rows are kept, so a script must notice the rest); 2 an error, with nothing
//! changed (bad arguments, unknown customer, unreadable file or header, database failure).

use std::collections::BTreeMap;
use std::io::{self, Write};
use std::path::PathBuf;
use std::process::ExitCode;

use crate::store::{
    ImportOptions, ImportReport, InvalidCustomer, NewCustomer, Store, StoreError, keypad_typeable,
    normalize_phone, not_mobile,
};

/// The `customers` subcommands.
#[derive(Debug, Clone, PartialEq, Eq, clap::Subcommand)]
pub enum CustomersCommand {
    /// Import customers from CSV (header row: id,name,mobile[,language][,other columns...]).
    /// Existing customers are updated (their enabled flag is kept); bad rows (including
    /// fixed-line and other numbers no SMS reaches) are reported by line and skipped; rows
    /// that import but deserve a look (an id no keypad can type, a mobile two customers
    /// share) are warned about; exits 1 if any row was rejected.
    Import {
        /// The CSV file, or `-` for standard input.
        file: PathBuf,
        /// Country for numbers written without an international prefix (ISO 3166 code);
        /// default: default_region in the config's store section.
        #[arg(long)]
        region: Option<String>,
        /// The field separator, e.g. ';' for a German or French spreadsheet's CSV.
        #[arg(long, default_value = ",", value_parser = parse_delimiter)]
        delimiter: u8,
        /// Check the file and say what would change, without changing anything.
        #[arg(long)]
        dry_run: bool,
        /// The file is the whole customer list: disable enabled customers it does not name
        /// (not done when a row was rejected). A disabled customer the file names stays
        /// disabled: enable it with `ivrd customers enable ID`.
        #[arg(long)]
        sync: bool,
    },
    /// Add one customer (fails if the id exists).
    Add {
        /// The identifier callers type, e.g. 123456.
        id: String,
        name: String,
        /// Mobile number, national (read in --region) or international.
        mobile: String,
        /// Preferred prompt language, e.g. de or en-GB.
        #[arg(long)]
        language: Option<String>,
        /// Country for a number written without an international prefix (ISO 3166 code);
        /// default: default_region in the config's store section.
        #[arg(long)]
        region: Option<String>,
    },
    /// List all customers as a table.
    List {
        /// Print a JSON array instead.
        #[arg(long)]
        json: bool,
    },
    /// Disable a customer: kept, but treated as unknown by calls.
    Disable { id: String },
    /// Enable a disabled customer.
    Enable { id: String },
    /// Remove a customer with its failures, lock-out and SMS history (audit rows are kept).
    Remove { id: String },
    /// End a customer's lock-out now and reset its level.
    Unlock { id: String },
    /// Show a customer with its limits: lock-out, failures, wrong PINs in a row, SMS sent in
    /// the last 10 minutes, the last call and the last verification.
    Show { id: String },
    /// Reset a customer's limits: the lock-out, its level, the failures, the wrong PINs in a
    /// row and the SMS count (e.g. after a support call confirmed who they are).
    ResetLimits { id: String },
}

/// How a command that did its job ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CliExit {
    /// Everything done: exit 0.
    Success,
    /// An import kept its good rows but rejected others: exit 1.
    RowsRejected,
}

impl CliExit {
    pub fn code(self) -> u8 {
        match self {
            CliExit::Success => 0,
            CliExit::RowsRejected => 1,
        }
    }
}

impl From<CliExit> for ExitCode {
    fn from(e: CliExit) -> ExitCode {
        ExitCode::from(e.code())
    }
}

/// Why a customers command failed; nothing was changed.
#[derive(Debug, thiserror::Error)]
pub enum CliError {
    /// The store refused or failed (invalid record, duplicate id, bad CSV header, database error).
    #[error(transparent)]
    Store(#[from] StoreError),
    /// No customer has this id.
    #[error("no customer with id {0:?}")]
    NoSuchCustomer(String),
    /// The import file could not be opened.
    #[error("could not open {}: {source}", path.display())]
    Open { path: PathBuf, source: io::Error },
    /// Writing the output failed (e.g. a closed pipe).
    #[error("could not write the output: {0}")]
    Output(#[from] io::Error),
}

impl CliError {
    /// The process exit code for any error.
    pub const EXIT_CODE: u8 = 2;
}

/// A one-character field separator.
fn parse_delimiter(s: &str) -> Result<u8, String> {
    let s = if s == "\\t" { "\t" } else { s };
    match s.as_bytes() {
        [b] if b.is_ascii() && !b.is_ascii_alphanumeric() && *b != b'"' => Ok(*b),
        _ => Err(format!(
            "expected one punctuation character such as ';' or '\\t', not {s:?}"
        )),
    }
}

/// Runs one command against `store`, writing the result for a person to `out`. National
/// numbers are read in `default_region` (the config's) unless the command names a region.
pub fn run(
    store: &Store,
    cmd: CustomersCommand,
    default_region: &str,
    out: &mut impl Write,
) -> Result<CliExit, CliError> {
    match cmd {
        CustomersCommand::Import {
            file,
            region,
            delimiter,
            dry_run,
            sync,
        } => {
            let opts = ImportOptions {
                region: region.unwrap_or_else(|| default_region.to_owned()),
                delimiter,
                dry_run,
                sync,
            };
            let report = if file.as_os_str() == "-" {
                store.import_csv_with(io::stdin().lock(), &opts)?
            } else {
                let f = std::fs::File::open(&file).map_err(|source| CliError::Open {
                    path: file.clone(),
                    source,
                })?;
                store.import_csv_with(io::BufReader::new(f), &opts)?
            };
            print_import(&report, &opts, out)
        }
        CustomersCommand::Add {
            id,
            name,
            mobile,
            language,
            region,
        } => {
            let region = region.unwrap_or_else(|| default_region.to_owned());
            let e164 = normalize_phone(&mobile, &region).map_err(|reason| match reason {
                crate::store::PhoneError::UnknownRegion(_) => StoreError::Phone(reason),
                reason => StoreError::InvalidCustomer(InvalidCustomer::BadMobile {
                    input: mobile.clone(),
                    reason,
                }),
            })?;
            if let Some(kind) = not_mobile(&e164) {
                return Err(StoreError::InvalidCustomer(InvalidCustomer::NotMobile {
                    input: mobile,
                    kind,
                })
                .into());
            }
            let customer = NewCustomer {
                id: id.trim().to_owned(),
                name,
                mobile: e164,
                language,
                extra: BTreeMap::new(),
            };
            let shared: Vec<String> = store
                .find_by_mobile(&customer.mobile)?
                .into_iter()
                .filter(|c| c.enabled)
                .map(|c| c.id)
                .collect();
            store.add_customer(&customer)?;
            // Read back to show what was stored (trimmed name, normalised language).
            let stored = store
                .find_customer(&customer.id)?
                .ok_or_else(|| CliError::NoSuchCustomer(customer.id.clone()))?;
            writeln!(
                out,
                "added customer {}: {}, {}{}",
                stored.id,
                stored.name,
                stored.mobile,
                stored
                    .language
                    .map(|l| format!(", language {l}"))
                    .unwrap_or_default()
            )?;
            if !keypad_typeable(&stored.id) {
                writeln!(
                    out,
                    "warning: id {:?} cannot be typed on a phone keypad (digits only): callers reach this customer only by caller ID",
                    stored.id
                )?;
            }
            if !shared.is_empty() {
                writeln!(
                    out,
                    "warning: mobile {} is also customer {}'s: a lookup by caller ID finds neither",
                    stored.mobile,
                    shared.join(", ")
                )?;
            }
            Ok(CliExit::Success)
        }
        CustomersCommand::List { json } => {
            let customers = store.list_customers()?;
            if json {
                print_json(&customers, out)?;
            } else {
                print_table(&customers, out)?;
            }
            Ok(CliExit::Success)
        }
        CustomersCommand::Disable { id } => set_enabled(store, &id, false, out),
        CustomersCommand::Enable { id } => set_enabled(store, &id, true, out),
        CustomersCommand::Remove { id } => {
            if !store.remove_customer(&id)? {
                return Err(CliError::NoSuchCustomer(id));
            }
            writeln!(out, "removed customer {id}")?;
            Ok(CliExit::Success)
        }
        CustomersCommand::Show { id } => {
            let Some(c) = store.find_customer(&id)? else {
                return Err(CliError::NoSuchCustomer(id));
            };
            let now = std::time::SystemTime::now();
            let ago = |d: u64| now - std::time::Duration::from_secs(d);
            let when = |t: std::time::SystemTime| humantime::format_rfc3339_seconds(t).to_string();
            writeln!(out, "id:              {}", c.id)?;
            writeln!(out, "name:            {}", c.name)?;
            writeln!(out, "mobile:          {}", c.mobile)?;
            writeln!(
                out,
                "language:        {}",
                c.language.as_deref().unwrap_or("-")
            )?;
            writeln!(
                out,
                "enabled:         {}",
                if c.enabled { "yes" } else { "no" }
            )?;
            let lock = match store.lockout(&id)? {
                Some((_, crate::verify::limits::ADMIN_LOCK_LEVEL)) => {
                    "locked until an admin unlocks (too many wrong PINs in a row)".to_string()
                }
                Some((until, level)) if until > now => {
                    format!("locked until {} (level {level})", when(until))
                }
                Some((_, level)) => format!("not locked (last lock-out level {level})"),
                None => "not locked".to_string(),
            };
            writeln!(out, "lock-out:        {lock}")?;
            writeln!(
                out,
                "failures:        {} in the last 24 h, {} wrong PINs in a row",
                store.failures_since(&id, ago(86_400))?,
                store.failures_in_a_row(&id)?
            )?;
            writeln!(
                out,
                "SMS sent:        {} in the last 10 min",
                store.sms_count_for_customer(&id, ago(600))?
            )?;
            let crate::store::LastCalls { last, verified } = store.last_calls(&id)?;
            match last {
                Some((outcome, at)) => writeln!(out, "last call:       {} ({outcome})", when(at))?,
                None => writeln!(out, "last call:       -")?,
            }
            writeln!(
                out,
                "last verified:   {}",
                verified.map_or("-".to_string(), when)
            )?;
            Ok(CliExit::Success)
        }
        CustomersCommand::ResetLimits { id } => {
            if store.find_customer(&id)?.is_none() {
                return Err(CliError::NoSuchCustomer(id));
            }
            let locked = store.clear_lockout(&id)?;
            store.clear_failures(&id)?;
            // While locked out the customer was a decoy: those wrong PINs go too.
            store.clear_decoy_failures(&id)?;
            store.reset_failures_in_a_row(&id)?;
            let sends = store.clear_sms_sends(&id)?;
            writeln!(
                out,
                "reset the limits of customer {id}: {}, failures cleared, {sends} SMS forgotten",
                if locked {
                    "lock-out ended"
                } else {
                    "was not locked"
                }
            )?;
            Ok(CliExit::Success)
        }
        CustomersCommand::Unlock { id } => {
            if store.find_customer(&id)?.is_none() {
                return Err(CliError::NoSuchCustomer(id));
            }
            // Also the count of wrong PINs in a row (the fraud guard's cap).
            store.reset_failures_in_a_row(&id)?;
            if store.clear_lockout(&id)? {
                store.clear_failures(&id)?;
                writeln!(out, "unlocked customer {id}")?;
            } else {
                store.clear_failures(&id)?;
                writeln!(out, "customer {id} was not locked")?;
            }
            Ok(CliExit::Success)
        }
    }
}

fn set_enabled(
    store: &Store,
    id: &str,
    enabled: bool,
    out: &mut impl Write,
) -> Result<CliExit, CliError> {
    if !store.set_enabled(id, enabled)? {
        return Err(CliError::NoSuchCustomer(id.to_owned()));
    }
    let what = if enabled { "enabled" } else { "disabled" };
    writeln!(out, "{what} customer {id}")?;
    Ok(CliExit::Success)
}

fn plural(n: usize, one: &str, many: &str) -> String {
    format!("{n} {}", if n == 1 { one } else { many })
}

/// An aligned table: ID, NAME, MOBILE, LANGUAGE, ENABLED, EXTRA (`key=value, ...`).
fn print_table(customers: &[crate::store::Customer], out: &mut impl Write) -> io::Result<()> {
    if customers.is_empty() {
        return writeln!(out, "no customers");
    }
    let header = ["ID", "NAME", "MOBILE", "LANGUAGE", "ENABLED", "EXTRA"].map(String::from);
    let rows: Vec<[String; 6]> = customers
        .iter()
        .map(|c| {
            [
                c.id.clone(),
                c.name.clone(),
                c.mobile.clone(),
                c.language.clone().unwrap_or_else(|| "-".into()),
                if c.enabled { "yes" } else { "no" }.into(),
                c.extra
                    .iter()
                    .map(|(k, v)| format!("{k}={v}"))
                    .collect::<Vec<_>>()
                    .join(", "),
            ]
        })
        .collect();
    write_columns(out, &header, &rows)?;
    writeln!(out, "{}", plural(customers.len(), "customer", "customers"))
}

#[derive(serde::Serialize)]
struct JsonCustomer<'a> {
    id: &'a str,
    name: &'a str,
    mobile: &'a str,
    language: Option<&'a str>,
    enabled: bool,
    /// Seconds since the Unix epoch.
    created_at: u64,
    updated_at: u64,
    extra: &'a BTreeMap<String, String>,
}

fn print_json(customers: &[crate::store::Customer], out: &mut impl Write) -> io::Result<()> {
    let secs = |t: std::time::SystemTime| {
        t.duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_secs())
    };
    let list: Vec<JsonCustomer<'_>> = customers
        .iter()
        .map(|c| JsonCustomer {
            id: &c.id,
            name: &c.name,
            mobile: &c.mobile,
            language: c.language.as_deref(),
            enabled: c.enabled,
            created_at: secs(c.created_at),
            updated_at: secs(c.updated_at),
            extra: &c.extra,
        })
        .collect();
    serde_json::to_writer_pretty(&mut *out, &list)?;
    writeln!(out)
}

/// What an import did (or, in a dry run, would do), for a person.
fn print_import(
    report: &ImportReport,
    opts: &ImportOptions,
    out: &mut impl Write,
) -> Result<CliExit, CliError> {
    let (prefix, verb) = if opts.dry_run {
        ("dry run, nothing changed: ", "would import")
    } else {
        ("", "imported")
    };
    write!(
        out,
        "{prefix}{verb} {} ({} new, {} updated)",
        plural(report.imported(), "customer", "customers"),
        report.created,
        report.updated
    )?;
    if opts.sync && !report.sync_skipped {
        write!(
            out,
            ", {} {}",
            if opts.dry_run {
                "would disable"
            } else {
                "disabled"
            },
            plural(report.disabled.len(), "customer", "customers")
        )?;
        if !report.disabled.is_empty() {
            write!(out, " not in the file ({})", report.disabled.join(", "))?;
        }
    }
    if report.rejected.is_empty() {
        writeln!(out)?;
    } else {
        writeln!(
            out,
            "; {} rejected:",
            plural(report.rejected.len(), "row", "rows")
        )?;
        for row in &report.rejected {
            writeln!(out, "line {}: {}", row.line, row.reason)?;
        }
    }
    for w in &report.warnings {
        writeln!(out, "warning: line {}: {}", w.line, w.message)?;
    }
    if report.sync_skipped {
        writeln!(
            out,
            "sync: nobody disabled, because rejected rows may name customers still on the list; fix them and import again"
        )?;
    }
    Ok(if report.rejected.is_empty() {
        CliExit::Success
    } else {
        CliExit::RowsRejected
    })
}

/// A header and rows as aligned columns, two spaces apart, no trailing blanks (the `list`
/// tables of `ivrd customers` and `ivrd audit`).
pub(crate) fn write_columns<const N: usize>(
    out: &mut impl Write,
    header: &[String; N],
    rows: &[[String; N]],
) -> io::Result<()> {
    let mut widths = [0usize; N];
    for row in std::iter::once(header).chain(rows) {
        for (w, cell) in widths.iter_mut().zip(row) {
            *w = (*w).max(cell.chars().count());
        }
    }
    for row in std::iter::once(header).chain(rows) {
        let mut line = String::new();
        for (i, (cell, w)) in row.iter().zip(widths).enumerate() {
            if i > 0 {
                line.push_str("  ");
            }
            line.push_str(cell);
            line.extend(std::iter::repeat_n(' ', w - cell.chars().count()));
        }
        writeln!(out, "{}", line.trim_end())?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;
    use std::time::{Duration, SystemTime};

    /// The subcommand as `ivrd customers` would mount it.
    #[derive(Parser)]
    struct Cli {
        #[command(subcommand)]
        cmd: CustomersCommand,
    }

    fn parse(args: &[&str]) -> CustomersCommand {
        Cli::try_parse_from(std::iter::once("customers").chain(args.iter().copied()))
            .unwrap()
            .cmd
    }

    fn setup() -> (tempfile::TempDir, Store) {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path().join("customers.sqlite")).unwrap();
        (dir, store)
    }

    fn exec(store: &Store, args: &[&str]) -> (Result<CliExit, CliError>, String) {
        let mut out = Vec::new();
        let result = run(store, parse(args), "DE", &mut out);
        (result, String::from_utf8(out).unwrap())
    }

    #[test]
    fn arguments_parse_with_defaults() {
        assert_eq!(
            parse(&["import", "c.csv"]),
            CustomersCommand::Import {
                file: "c.csv".into(),
                region: None,
                delimiter: b',',
                dry_run: false,
                sync: false,
            }
        );
        assert_eq!(
            parse(&[
                "add",
                "42",
                "Max Muster",
                "0170 1234567",
                "--language",
                "en",
                "--region",
                "AT"
            ]),
            CustomersCommand::Add {
                id: "42".into(),
                name: "Max Muster".into(),
                mobile: "0170 1234567".into(),
                language: Some("en".into()),
                region: Some("AT".into())
            }
        );
        assert_eq!(
            parse(&["list", "--json"]),
            CustomersCommand::List { json: true }
        );
        assert!(Cli::try_parse_from(["customers", "disable"]).is_err());
    }

    /// National numbers are read in the region the caller passes (the config's) unless
    /// `--region` says otherwise: a British file must not become German numbers.
    #[test]
    fn numbers_are_read_in_the_configured_region() {
        let (dir, store) = setup();
        let csv = dir.path().join("gb.csv");
        std::fs::write(&csv, "id,name,mobile\n1,Ann,07911 123456\n").unwrap();
        let mut out = Vec::new();
        let r = run(
            &store,
            parse(&["import", csv.to_str().unwrap()]),
            "GB",
            &mut out,
        );
        assert_eq!(r.unwrap(), CliExit::Success);
        assert_eq!(
            store.find_customer("1").unwrap().unwrap().mobile,
            "+447911123456"
        );
        let r = run(
            &store,
            parse(&["add", "2", "Bo", "07400 654321"]),
            "GB",
            &mut out,
        );
        assert_eq!(r.unwrap(), CliExit::Success);
        assert_eq!(
            store.find_customer("2").unwrap().unwrap().mobile,
            "+447400654321"
        );
        // --region still wins.
        let r = run(
            &store,
            parse(&["add", "3", "Cy", "0170 1234567", "--region", "de"]),
            "GB",
            &mut out,
        );
        assert_eq!(r.unwrap(), CliExit::Success);
        assert_eq!(
            store.find_customer("3").unwrap().unwrap().mobile,
            "+491701234567"
        );
    }

    /// Rows that would break calls: a fixed line is refused; an id no keypad can type and a
    /// mobile two customers share are imported with a warning; a semicolon file is told how
    /// to import.
    #[test]
    fn import_refuses_landlines_and_warns_about_untypeable_ids_and_shared_mobiles() {
        let (dir, store) = setup();
        exec(&store, &["add", "9", "Old", "0170 7777777"])
            .0
            .unwrap();
        let csv = dir.path().join("in.csv");
        std::fs::write(
            &csv,
            "id,name,mobile\n\
             1,Anna,030 12345678\n\
             ABC-1,Ben,0170 1234568\n\
             3,Cleo,0170 1234569\n\
             4,Dan,+49 170 1234569\n\
             5,Eve,0170 7777777\n",
        )
        .unwrap();
        let (result, out) = exec(&store, &["import", csv.to_str().unwrap()]);
        assert_eq!(result.unwrap(), CliExit::RowsRejected, "{out}");
        assert_eq!(
            out,
            "imported 4 customers (4 new, 0 updated); 1 row rejected:\n\
             line 2: mobile number \"030 12345678\" is a fixed line: an SMS would never arrive\n\
             warning: line 3: id \"ABC-1\" cannot be typed on a phone keypad (digits only): callers reach this customer only by caller ID\n\
             warning: line 5: mobile +491701234569 is also customer 3's (line 4): a lookup by caller ID finds neither\n\
             warning: line 6: mobile +491707777777 is also customer 9's: a lookup by caller ID finds neither\n"
        );
        assert!(store.find_customer("1").unwrap().is_none());
        // `add` refuses a fixed line too.
        let (r, _) = exec(&store, &["add", "7", "Fay", "+49 30 12345678"]);
        let err = r.unwrap_err().to_string();
        assert!(err.contains("is a fixed line"), "{err}");
        // A German spreadsheet's CSV: the hint, then the import with --delimiter.
        std::fs::write(&csv, "id;name;mobile\n8;Gus;0170 1234500\n").unwrap();
        let (r, _) = exec(&store, &["import", csv.to_str().unwrap()]);
        let err = r.unwrap_err().to_string();
        assert!(
            err.contains("separates fields with ';'") && err.contains("--delimiter ';'"),
            "{err}"
        );
        let (r, out) = exec(
            &store,
            &["import", csv.to_str().unwrap(), "--delimiter", ";"],
        );
        assert_eq!(r.unwrap(), CliExit::Success, "{out}");
        assert!(store.find_customer("8").unwrap().is_some());
    }

    /// `--dry-run` reports what would change and changes nothing; `--sync` disables the
    /// customers the file no longer names, but not when a row was rejected.
    #[test]
    fn dry_run_changes_nothing_and_sync_disables_the_missing() {
        let (dir, store) = setup();
        for (id, m) in [
            ("1", "0170 1000001"),
            ("2", "0170 1000002"),
            ("3", "0170 1000003"),
        ] {
            exec(&store, &["add", id, "X", m]).0.unwrap();
        }
        let csv = dir.path().join("in.csv");
        std::fs::write(
            &csv,
            "id,name,mobile\n1,One,0170 1000001\n4,Four,0170 1000004\n",
        )
        .unwrap();
        let path = csv.to_str().unwrap();
        let (r, out) = exec(&store, &["import", path, "--sync", "--dry-run"]);
        assert_eq!(r.unwrap(), CliExit::Success);
        assert_eq!(
            out,
            "dry run, nothing changed: would import 2 customers (1 new, 1 updated), would disable 2 customers not in the file (2, 3)\n"
        );
        assert!(store.find_customer("4").unwrap().is_none());
        assert!(store.find_customer("2").unwrap().unwrap().enabled);
        assert_eq!(store.find_customer("1").unwrap().unwrap().name, "X");
        // With a rejected row, sync disables nobody.
        std::fs::write(&csv, "id,name,mobile\n1,One,0170 1000001\n2,Two,0123\n").unwrap();
        let (r, out) = exec(&store, &["import", path, "--sync"]);
        assert_eq!(r.unwrap(), CliExit::RowsRejected);
        assert!(out.contains("sync: nobody disabled"), "{out}");
        assert!(store.find_customer("3").unwrap().unwrap().enabled);
        std::fs::write(
            &csv,
            "id,name,mobile\n1,One,0170 1000001\n4,Four,0170 1000004\n",
        )
        .unwrap();
        let (r, out) = exec(&store, &["import", path, "--sync"]);
        assert_eq!(r.unwrap(), CliExit::Success);
        assert!(
            out.ends_with("disabled 2 customers not in the file (2, 3)\n"),
            "{out}"
        );
        let enabled: Vec<String> = store
            .list_customers()
            .unwrap()
            .into_iter()
            .filter(|c| c.enabled)
            .map(|c| c.id)
            .collect();
        assert_eq!(enabled, ["1", "4"]);
    }

    #[test]
    fn import_reports_rejected_rows_by_line_and_exits_1() {
        let (dir, store) = setup();
        let csv = dir.path().join("in.csv");
        std::fs::write(
            &csv,
            "id,name,mobile,language\n\
             1,Anna,0170 1234567,de\n\
             2,Ben,0170 1234568,\n\
             3,Cleo,0123,\n\
             ,Dora,0170 1234569,\n\
             1,Anna again,0170 1234560,\n",
        )
        .unwrap();
        let (result, out) = exec(&store, &["import", csv.to_str().unwrap()]);
        assert_eq!(result.unwrap(), CliExit::RowsRejected);
        assert_eq!(CliExit::RowsRejected.code(), 1);
        assert_eq!(
            out,
            "imported 2 customers (2 new, 0 updated); 3 rows rejected:\n\
             line 4: bad mobile number \"0123\": not a valid number for region DE\n\
             line 5: missing id\n\
             line 6: duplicate id \"1\" (first seen on line 2)\n"
        );
        assert_eq!(store.list_customers().unwrap().len(), 2);
    }

    #[test]
    fn clean_import_exits_0_and_reimport_counts_updates() {
        let (dir, store) = setup();
        let csv = dir.path().join("in.csv");
        std::fs::write(&csv, "id,name,mobile\n1,Anna,+43 664 1234567\n").unwrap();
        let args = ["import", csv.to_str().unwrap(), "--region", "AT"];
        let (result, out) = exec(&store, &args);
        assert_eq!(result.unwrap(), CliExit::Success);
        assert_eq!(out, "imported 1 customer (1 new, 0 updated)\n");
        let (_, out) = exec(&store, &args);
        assert_eq!(out, "imported 1 customer (0 new, 1 updated)\n");
    }

    #[test]
    fn import_of_a_missing_file_or_bad_header_is_an_error() {
        let (dir, store) = setup();
        let (result, out) = exec(&store, &["import", "/nonexistent/x.csv"]);
        let err = result.unwrap_err();
        assert!(matches!(err, CliError::Open { .. }));
        assert!(
            err.to_string()
                .starts_with("could not open /nonexistent/x.csv")
        );
        assert!(out.is_empty());
        let csv = dir.path().join("bad.csv");
        std::fs::write(&csv, "name,mobile\nAnna,01701234567\n").unwrap();
        let (result, _) = exec(&store, &["import", csv.to_str().unwrap()]);
        assert!(matches!(
            result,
            Err(CliError::Store(StoreError::CsvHeader(_)))
        ));
        assert!(store.list_customers().unwrap().is_empty());
    }

    #[test]
    fn add_normalises_and_refuses_duplicates_and_bad_numbers() {
        let (_dir, store) = setup();
        let (result, out) = exec(
            &store,
            &[
                "add",
                "42",
                "Max Muster",
                "0170 1234567",
                "--language",
                "EN_gb",
            ],
        );
        assert_eq!(result.unwrap(), CliExit::Success);
        assert_eq!(
            out,
            "added customer 42: Max Muster, +491701234567, language en-GB\n"
        );
        let (result, out) = exec(&store, &["add", "42", "Other", "0170 1234568"]);
        assert_eq!(
            result.unwrap_err().to_string(),
            "a customer with id \"42\" already exists"
        );
        assert!(out.is_empty());
        let (result, _) = exec(&store, &["add", "43", "Bad", "0123"]);
        assert_eq!(
            result.unwrap_err().to_string(),
            "invalid customer: bad mobile number \"0123\": not a valid number for region DE"
        );
        let (result, _) = exec(
            &store,
            &["add", "44", "X", "0170 1234567", "--region", "ZZ"],
        );
        assert!(matches!(result, Err(CliError::Store(StoreError::Phone(_)))));
        assert_eq!(store.list_customers().unwrap().len(), 1);
    }

    #[test]
    fn list_prints_an_aligned_table_with_full_numbers() {
        let (dir, store) = setup();
        let csv = dir.path().join("in.csv");
        std::fs::write(
            &csv,
            "id,name,mobile,language,branch\n\
             123456,Erika Mustermann,0170 1234567,de,Köln\n\
             7,Jö,+44 7911 123456,,\n",
        )
        .unwrap();
        exec(&store, &["import", csv.to_str().unwrap()]).0.unwrap();
        exec(&store, &["disable", "7"]).0.unwrap();
        let (result, out) = exec(&store, &["list"]);
        assert_eq!(result.unwrap(), CliExit::Success);
        assert_eq!(
            out,
            "ID      NAME              MOBILE         LANGUAGE  ENABLED  EXTRA\n\
             123456  Erika Mustermann  +491701234567  de        yes      branch=Köln\n\
             7       Jö                +447911123456  -         no       branch=\n\
             2 customers\n"
        );
        let (_, out) = exec(&setup().1, &["list"]);
        assert_eq!(out, "no customers\n");
    }

    #[test]
    fn list_json_is_parseable() {
        let (_dir, store) = setup();
        exec(&store, &["add", "42", "Max", "0170 1234567"])
            .0
            .unwrap();
        let before = SystemTime::now() - Duration::from_secs(5);
        let (_, out) = exec(&store, &["list", "--json"]);
        let v: serde_json::Value = serde_json::from_str(&out).unwrap();
        let arr = v.as_array().unwrap();
        assert_eq!(arr.len(), 1);
        assert_eq!(arr[0]["id"], "42");
        assert_eq!(arr[0]["mobile"], "+491701234567");
        assert_eq!(arr[0]["language"], serde_json::Value::Null);
        assert_eq!(arr[0]["enabled"], true);
        let created = arr[0]["created_at"].as_u64().unwrap();
        let before = before
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_secs();
        assert!(created >= before && created <= before + 60);
    }

    #[test]
    fn disable_enable_remove_and_unknown_ids() {
        let (_dir, store) = setup();
        exec(&store, &["add", "42", "Max", "0170 1234567"])
            .0
            .unwrap();
        let (r, out) = exec(&store, &["disable", "42"]);
        assert_eq!(
            (r.unwrap(), out.as_str()),
            (CliExit::Success, "disabled customer 42\n")
        );
        assert!(!store.find_customer("42").unwrap().unwrap().enabled);
        let (r, out) = exec(&store, &["enable", "42"]);
        assert_eq!(
            (r.unwrap(), out.as_str()),
            (CliExit::Success, "enabled customer 42\n")
        );
        assert!(store.find_customer("42").unwrap().unwrap().enabled);
        for cmd in [
            "disable",
            "enable",
            "remove",
            "unlock",
            "show",
            "reset-limits",
        ] {
            let (r, out) = exec(&store, &[cmd, "99"]);
            assert_eq!(r.unwrap_err().to_string(), "no customer with id \"99\"");
            assert!(out.is_empty());
        }
        let (r, out) = exec(&store, &["remove", "42"]);
        assert_eq!(
            (r.unwrap(), out.as_str()),
            (CliExit::Success, "removed customer 42\n")
        );
        assert!(store.find_customer("42").unwrap().is_none());
    }

    #[test]
    fn show_prints_the_limits_and_reset_limits_clears_them() {
        let (_dir, store) = setup();
        exec(&store, &["add", "42", "Max", "0170 1234567"])
            .0
            .unwrap();
        let now = SystemTime::now();
        store.record_failure("42", now).unwrap();
        store.bump_failures_in_a_row("42").unwrap();
        store.bump_failures_in_a_row("42").unwrap();
        store.record_sms("42", "+4930123", now).unwrap();
        store
            .lock(
                "42",
                crate::verify::limits::admin_lock_until(),
                crate::verify::limits::ADMIN_LOCK_LEVEL,
            )
            .unwrap();
        let (r, out) = exec(&store, &["show", "42"]);
        r.unwrap();
        assert!(out.contains("mobile:          +491701234567\n"), "{out}");
        assert!(
            out.contains("lock-out:        locked until an admin unlocks"),
            "{out}"
        );
        assert!(
            out.contains("failures:        1 in the last 24 h, 2 wrong PINs in a row"),
            "{out}"
        );
        assert!(
            out.contains("SMS sent:        1 in the last 10 min"),
            "{out}"
        );
        assert!(out.contains("last verified:   -"), "{out}");

        let (r, out) = exec(&store, &["reset-limits", "42"]);
        r.unwrap();
        assert_eq!(
            out,
            "reset the limits of customer 42: lock-out ended, failures cleared, 1 SMS forgotten\n"
        );
        let (_, out) = exec(&store, &["show", "42"]);
        assert!(out.contains("lock-out:        not locked\n"), "{out}");
        assert!(
            out.contains("failures:        0 in the last 24 h, 0 wrong PINs in a row"),
            "{out}"
        );
        assert!(
            out.contains("SMS sent:        0 in the last 10 min"),
            "{out}"
        );
    }

    #[test]
    fn unlock_ends_a_lockout_and_clears_failures() {
        let (_dir, store) = setup();
        exec(&store, &["add", "42", "Max", "0170 1234567"])
            .0
            .unwrap();
        let now = SystemTime::now();
        store.record_failure("42", now).unwrap();
        store
            .lock("42", now + Duration::from_secs(3600), 2)
            .unwrap();
        let (r, out) = exec(&store, &["unlock", "42"]);
        assert_eq!(
            (r.unwrap(), out.as_str()),
            (CliExit::Success, "unlocked customer 42\n")
        );
        assert_eq!(store.lockout("42").unwrap(), None);
        assert_eq!(
            store
                .failures_since("42", now - Duration::from_secs(1))
                .unwrap(),
            0
        );
        let (_, out) = exec(&store, &["unlock", "42"]);
        assert_eq!(out, "customer 42 was not locked\n");
    }

    #[test]
    fn changes_persist_in_the_file() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("c.sqlite");
        {
            let store = Store::open(&path).unwrap();
            exec(&store, &["add", "42", "Max", "0170 1234567"])
                .0
                .unwrap();
            exec(&store, &["disable", "42"]).0.unwrap();
        }
        let store = Store::open(&path).unwrap();
        let c = store.find_customer("42").unwrap().unwrap();
        assert!(!c.enabled);
        assert_eq!(c.mobile, "+491701234567");
    }
}
