//! The `ivrd` command line: parsing arguments and turning errors into one clear sentence.
//! Everything else lives in the library (see `src/lib.rs` for the map).

use clap::{CommandFactory, Parser, Subcommand};
use ivrd::config::Config;
use std::path::PathBuf;
use std::process::ExitCode;
use tokio_util::sync::CancellationToken;

use ivrd::admin;

#[derive(Parser)]
#[command(
    name = "ivrd",
    version,
    about = "SIP IVR daemon that verifies callers by a one-time PIN sent by SMS"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run the daemon (without --config: the shipped `verify` plan on 127.0.0.1:5060, with
    /// SQLite in ./ivrd.db seeded with the example customers and SMS written to
    /// ./ivrd-sms.log).
    Run {
        /// Configuration file (TOML).
        #[arg(long, short)]
        config: Option<PathBuf>,
    },
    /// Check the config, every dialplan and every prompt they name; exit 1 on any problem.
    /// With dialplan files: check just those (against the config's prompts and vars).
    Check {
        /// Dialplan files to check instead of the whole configuration.
        dialplans: Vec<PathBuf>,
        #[arg(long, short)]
        config: Option<PathBuf>,
    },
    /// Run a dialplan without a phone: scripted keys, virtual clock, SMS captured, on a
    /// throw-away copy of the database (--live: on the database itself).
    Simulate {
        /// The dialplan: a name from the dialplans directory, or a path to a .toml file.
        dialplan: String,
        /// The caller's number (From).
        #[arg(long, default_value = "+491701234567")]
        caller: String,
        /// The dialed number (Request-URI user).
        #[arg(long, default_value = "100")]
        dialed: String,
        /// Keys: digits, * # A-D; `w` waits 1 s; `W` waits for the prompt to end; `{pin}` types
        /// the PIN from the captured SMS; `!` hangs up.
        #[arg(long, default_value = "")]
        keys: String,
        /// Make the SMS provider fail (to try the failure branch).
        #[arg(long)]
        sms_fails: bool,
        /// Make transfers to this target fail ("*" for all).
        #[arg(long)]
        fail_transfer: Vec<String>,
        #[arg(long, short)]
        config: Option<PathBuf>,
        /// Database file or postgres:// URL (overrides the config).
        #[arg(long)]
        db: Option<PathBuf>,
        /// Run on the database itself, spending its real limits (default: a throw-away copy).
        #[arg(long)]
        live: bool,
        /// When the call happens, local time in [dialplans] timezone, e.g. "2026-12-24 18:00"
        /// (for hours steps; default: now).
        #[arg(long)]
        at: Option<String>,
        /// Answers for http steps, a TOML table per step (status, body or json, error, delay);
        /// a simulation never calls out, so without it every http step fails.
        #[arg(long, value_name = "FILE")]
        http: Option<PathBuf>,
    },
    /// Print a dialplan as a Graphviz DOT or Mermaid flowchart.
    Graph {
        dialplan: String,
        #[arg(long, value_enum, default_value = "dot")]
        format: GraphFormat,
        #[arg(long, short)]
        config: Option<PathBuf>,
    },
    /// Ask the running daemon (its admin listener) how it is and which calls are up.
    Status {
        #[arg(long, short)]
        config: Option<PathBuf>,
    },
    /// Ask the running daemon to reload its config, prompts and dialplans, and wait for the
    /// verdict: exit 0 when it took them, 1 when it kept the running ones (and why), 2 when it
    /// cannot be reached. What `systemctl reload ivrd` runs.
    Reload {
        #[arg(long, short)]
        config: Option<PathBuf>,
    },
    /// Take the running daemon out of service for maintenance: new calls get 503 (and OPTIONS,
    /// so a dispatcher in front moves them to the other nodes) while the calls up go on. Exit 0
    /// once drained (with --wait: once its calls have ended), 1 otherwise, 2 when unreachable.
    Drain {
        #[arg(long, short)]
        config: Option<PathBuf>,
        /// Wait up to this many seconds for the calls up to end.
        #[arg(long, value_name = "SECS")]
        wait: Option<u64>,
    },
    /// Put a drained daemon back into service: it takes calls again (OPTIONS 200).
    Resume {
        #[arg(long, short)]
        config: Option<PathBuf>,
    },
    /// Bring the database's schema up to this ivrd's version (the daemon does it at start too)
    /// and say from which version; several nodes may run it at once (PostgreSQL: an advisory
    /// lock makes the others wait and find the work done). Run it before starting upgraded
    /// nodes so that none starts on a schema another node is changing.
    Migrate {
        /// Configuration file whose [store] names the database.
        #[arg(long, short)]
        config: Option<PathBuf>,
        /// Database file or postgres:// URL (overrides the config).
        #[arg(long)]
        db: Option<PathBuf>,
    },
    /// Manage the customers in the database: import, add, list, disable, enable, remove, unlock.
    Customers {
        /// Configuration file whose [store] path names the database and default_region.
        #[arg(long, short, global = true)]
        config: Option<PathBuf>,
        /// Database file or postgres:// URL (overrides the config).
        #[arg(long, global = true)]
        db: Option<PathBuf>,
        #[command(subcommand)]
        command: ivrd::customers_cli::CustomersCommand,
    },
    /// The call audit: the calls that match filters, newest first, as a table (the newest 50),
    /// CSV or JSON Lines (all); read-only, beside the running daemon. `ivrd audit prune
    /// --older-than 90d` deletes old rows.
    Audit {
        /// Configuration file whose [store] path names the database.
        #[arg(long, short)]
        config: Option<PathBuf>,
        /// Database file or postgres:// URL (overrides the config).
        #[arg(long)]
        db: Option<PathBuf>,
        #[command(flatten)]
        list: ivrd::audit_cli::AuditArgs,
        #[command(subcommand)]
        command: Option<ivrd::audit_cli::AuditCommand>,
    },
    /// The SMS provider: `ivrd sms test NUMBER` sends one text (no PIN, counted by no limit)
    /// to check the configured credentials and sender.
    Sms {
        /// Configuration file ([sms] and its secrets; [store] default_region for the number).
        #[arg(long, short, global = true)]
        config: Option<PathBuf>,
        #[command(subcommand)]
        command: SmsCommand,
    },
    /// The fraud guard: `ivrd guard status` shows the SMS budgets used and the open breakers.
    Guard {
        /// Configuration file ([guard] and the [store] path).
        #[arg(long, short, global = true)]
        config: Option<PathBuf>,
        /// Database file or postgres:// URL (overrides the config).
        #[arg(long, global = true)]
        db: Option<PathBuf>,
        #[command(subcommand)]
        command: GuardCommand,
    },
    /// API keys for the HTTP API ([api]): create (the key is printed once), list, revoke.
    #[command(name = "api-keys")]
    ApiKeys {
        /// Configuration file (the [store] path).
        #[arg(long, short, global = true)]
        config: Option<PathBuf>,
        /// Database file or postgres:// URL (overrides the config).
        #[arg(long, global = true)]
        db: Option<PathBuf>,
        #[command(subcommand)]
        command: ApiKeysCommand,
    },
    /// Write the man pages into DIR: ivrd.8 and a page per subcommand (generated from this
    /// command line), ivrd.toml.5 and ivrd-dialplan.5. Hidden: for packaging, not for admins.
    #[command(hide = true)]
    Man {
        /// The directory to write to (created if missing).
        #[arg(long)]
        out: PathBuf,
    },
}

#[derive(Clone, clap::Subcommand)]
enum SmsCommand {
    /// Send one test text to NUMBER through the configured provider; exit 1 with the
    /// provider's reason if it refused.
    Test {
        /// The number, national (read in [store] default_region) or international.
        number: String,
        /// The text (default: a line saying it is a test, with the time).
        #[arg(long)]
        text: Option<String>,
    },
}

#[derive(Clone, Copy, clap::Subcommand)]
enum GuardCommand {
    /// Budgets used and left, regions allowed, open breakers.
    Status,
}

#[derive(Subcommand)]
enum ApiKeysCommand {
    /// Make a key named NAME and print it (the only time it is shown; the database keeps
    /// its hash). The name shows in the audit as api:NAME.
    Create { name: String },
    /// Every key's name, creation and revocation (never the keys).
    List,
    /// Revoke the key named NAME: requests with it get 401 from now on.
    Revoke { name: String },
}

#[derive(Clone, Copy, clap::ValueEnum)]
enum GraphFormat {
    Dot,
    Mermaid,
    /// A standalone SVG picture drawn by ivrd (the live page's, without counts).
    Svg,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match cli.command {
        Command::Man { out } => match write_man_pages(&out) {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => {
                eprintln!("ivrd: {}: {e}", out.display());
                ExitCode::FAILURE
            }
        },
        Command::Status { config } => {
            // As for reload: a daemon runs on the config it loaded, whatever the file now says.
            let listen = match &config {
                Some(path) => Config::admin_listen_in(path),
                None => Config::embedded().admin.listen,
            };
            match ivrd::admin_http::status_command(&listen) {
                Ok(text) => {
                    print!("{text}");
                    ExitCode::SUCCESS
                }
                Err(e) => {
                    eprintln!("ivrd: {e}");
                    ExitCode::FAILURE
                }
            }
        }
        Command::Drain { config, wait } => drain_or_resume(config, true, wait),
        Command::Migrate { config, db } => {
            let (_, database) = match config_and_db(config.as_deref(), db) {
                Ok(both) => both,
                Err(code) => return code,
            };
            match database.open() {
                Ok(store) if store.migrated_from() == ivrd::store::SCHEMA_VERSION => {
                    println!(
                        "{}: schema version {}, nothing to do",
                        database.describe(),
                        ivrd::store::SCHEMA_VERSION
                    );
                    ExitCode::SUCCESS
                }
                Ok(store) => {
                    println!(
                        "{}: schema version {} -> {}",
                        database.describe(),
                        store.migrated_from(),
                        ivrd::store::SCHEMA_VERSION
                    );
                    ExitCode::SUCCESS
                }
                Err(e) => {
                    eprintln!("error: {}: {e}", database.describe());
                    ExitCode::from(2)
                }
            }
        }
        Command::Resume { config } => drain_or_resume(config, false, None),
        Command::Reload { config } => {
            // Only the admin address is read here: a config the daemon will refuse must still
            // reach the daemon, whose verdict (and reason) is the answer.
            let listen = match &config {
                Some(path) => Config::admin_listen_in(path),
                None => Config::embedded().admin.listen,
            };
            if listen.is_empty() {
                eprintln!(
                    "ivrd: [admin] listen is off, so the daemon cannot say how a reload went: \
                     send SIGHUP (kill -HUP) and read its log"
                );
                return ExitCode::from(2);
            }
            match ivrd::admin_http::reload_command(&listen) {
                Ok(message) => {
                    println!("{message}");
                    ExitCode::SUCCESS
                }
                Err(e @ ivrd::admin_http::ReloadError::Unreachable(_)) => {
                    eprintln!("ivrd: {e}");
                    ExitCode::from(2)
                }
                Err(e) => {
                    eprintln!("ivrd: {e}");
                    ExitCode::FAILURE
                }
            }
        }
        Command::Check { config, dialplans } => {
            // Any problem, the config's own included, is exit 1 (as the README says).
            let Ok(cfg) = load_config(config.as_deref(), Secrets::Read) else {
                return ExitCode::FAILURE;
            };
            if dialplans.is_empty() {
                admin::check(&cfg)
            } else {
                admin::check_files(&cfg, &dialplans)
            }
        }
        Command::Simulate {
            dialplan,
            caller,
            dialed,
            keys,
            sms_fails,
            fail_transfer,
            config,
            db,
            live,
            at,
            http,
        } => {
            let mut cfg = match load_config(config.as_deref(), Secrets::Skip) {
                Ok(cfg) => cfg,
                Err(code) => return code,
            };
            if let Err(code) = store_secret(&mut cfg, config.as_deref()) {
                return code;
            }
            if let Some(db) = db {
                let db = db.to_string_lossy().into_owned();
                if ivrd::store::Database::is_url(&db) {
                    cfg.store.url = Some(db);
                } else {
                    cfg.store.path = PathBuf::from(db);
                    cfg.store.url = None;
                }
            }
            let opts = admin::SimOptions {
                dialplan,
                caller,
                dialed,
                keys,
                sms_fails,
                fail_transfer,
                live,
                at,
                http,
            };
            admin::simulate(&cfg, opts)
        }
        Command::Graph {
            dialplan,
            format,
            config,
        } => {
            let cfg = match load_config(config.as_deref(), Secrets::Skip) {
                Ok(cfg) => cfg,
                Err(code) => return code,
            };
            let format = match format {
                GraphFormat::Dot => admin::GraphKind::Dot,
                GraphFormat::Mermaid => admin::GraphKind::Mermaid,
                GraphFormat::Svg => admin::GraphKind::Svg,
            };
            admin::graph(&cfg, &dialplan, format)
        }
        Command::Sms {
            config,
            command: SmsCommand::Test { number, text },
        } => {
            let Ok(cfg) = load_config(config.as_deref(), Secrets::Read) else {
                return ExitCode::FAILURE;
            };
            admin::sms_test(&cfg, &number, text)
        }
        Command::ApiKeys {
            config,
            db,
            command,
        } => {
            let (_, database) = match config_and_db(config.as_deref(), db) {
                Ok(both) => both,
                Err(code) => return code,
            };
            let store = match database.open() {
                Ok(s) => s,
                Err(e) => {
                    eprintln!("ivrd: {e}");
                    return ExitCode::FAILURE;
                }
            };
            match command {
                ApiKeysCommand::Create { name } => ivrd::api::keys::create(&store, &name),
                ApiKeysCommand::List => ivrd::api::keys::list(&store),
                ApiKeysCommand::Revoke { name } => ivrd::api::keys::revoke(&store, &name),
            }
        }
        Command::Guard {
            config,
            db,
            command: GuardCommand::Status,
        } => {
            let (cfg, database) = match config_and_db(config.as_deref(), db) {
                Ok(both) => both,
                Err(code) => return code,
            };
            let status = database.open().and_then(|store| {
                ivrd::verify::guard::status(&cfg.guard, &store, std::time::SystemTime::now())
            });
            match status {
                Ok(text) => {
                    print!("{text}");
                    ExitCode::SUCCESS
                }
                Err(e) => {
                    eprintln!("error: {}: {e}", database.describe());
                    ExitCode::from(2)
                }
            }
        }
        Command::Audit {
            config,
            db,
            list,
            command,
        } => {
            use ivrd::audit_cli::{self, AuditCommand, AuditError};
            use ivrd::store::StoreError;
            let (cfg, database) = match config_and_db(config.as_deref(), db) {
                Ok(both) => both,
                Err(code) => return code,
            };
            let now = std::time::SystemTime::now();
            let out = &mut std::io::stdout().lock();
            // Opening errors name the file once: some say it themselves, others need it.
            let opening = |e: StoreError| match e {
                StoreError::Open { .. } | StoreError::Create { .. } | StoreError::NotFound(_) => {
                    e.to_string()
                }
                e => format!("{}: {e}", database.describe()),
            };
            let result = match command {
                // Listing opens read-only: it never creates, upgrades or locks the file.
                None => database
                    .open_read_only()
                    .map_err(opening)
                    .and_then(|store| {
                        audit_cli::list(&store, &list, now, &cfg.store.default_region, out)
                            .map_err(|e| e.to_string())
                    }),
                Some(AuditCommand::Prune { older_than }) => {
                    match audit_cli::listing_option(&list) {
                        Some(option) => Err(AuditError::FilterWithPrune(option).to_string()),
                        None => database.open().map_err(opening).and_then(|store| {
                            audit_cli::prune(&store, &older_than, now, out)
                                .map_err(|e| e.to_string())
                        }),
                    }
                }
            };
            match result {
                Ok(()) => ExitCode::SUCCESS,
                Err(e) => {
                    eprintln!("error: {e}");
                    ExitCode::from(AuditError::EXIT_CODE)
                }
            }
        }
        Command::Customers {
            config,
            db,
            command,
        } => {
            let (cfg, database) = match config_and_db(config.as_deref(), db) {
                Ok(both) => both,
                Err(code) => return code,
            };
            let store = match database.open() {
                Ok(s) => s,
                Err(e) => {
                    eprintln!("error: {}: {e}", database.describe());
                    return ExitCode::from(ivrd::customers_cli::CliError::EXIT_CODE);
                }
            };
            match ivrd::customers_cli::run(
                &store,
                command,
                &cfg.store.default_region,
                &mut std::io::stdout().lock(),
            ) {
                Ok(exit) => exit.into(),
                Err(e) => {
                    eprintln!("error: {e}");
                    ExitCode::from(ivrd::customers_cli::CliError::EXIT_CODE)
                }
            }
        }
        Command::Run { config } => {
            let cfg = match load_config(config.as_deref(), Secrets::Read) {
                Ok(cfg) => cfg,
                Err(code) => return code,
            };
            init_logging(&cfg.log.level);
            for warning in &cfg.warnings {
                tracing::warn!("{warning}");
            }
            // A relative config path must survive the daemon changing nothing but still be
            // found on reload: make it absolute now.
            let config = config.map(|p| std::path::absolute(&p).unwrap_or(p));
            let rt = match tokio::runtime::Builder::new_multi_thread()
                .enable_all()
                .thread_name("ivrd")
                .build()
            {
                Ok(rt) => rt,
                Err(e) => {
                    eprintln!("ivrd: cannot start the runtime: {e}");
                    return ExitCode::FAILURE;
                }
            };
            let result = rt.block_on(async {
                let shutdown = CancellationToken::new();
                let (reload_tx, reload_rx) = tokio::sync::mpsc::channel(1);
                tokio::spawn(wait_for_signals(shutdown.clone(), reload_tx));
                // On a worker, not on this thread: `block_on` polls its future on the main
                // thread, so every call accepted there would cost a wake-up and two context
                // switches between threads (measured: one per call, 5,500 in a 6,000-call step).
                let server =
                    tokio::spawn(ivrd::server::run(cfg, config, shutdown, reload_rx, None));
                server
                    .await
                    .unwrap_or_else(|e| Err(anyhow::anyhow!("server task failed: {e}")))
            });
            match result {
                Ok(()) => ExitCode::SUCCESS,
                Err(e) => {
                    // `{:#}` prints the whole context chain on one line: "binding SIP listeners:
                    // Address already in use".
                    eprintln!("ivrd: {e:#}");
                    ExitCode::FAILURE
                }
            }
        }
    }
}

/// The hand-written pages, compiled in so that `ivrd man` of an installed binary writes the
/// set that matches it.
const HAND_WRITTEN_PAGES: &[(&str, &str)] = &[
    ("ivrd.toml.5", include_str!("../man/ivrd.toml.5")),
    ("ivrd-dialplan.5", include_str!("../man/ivrd-dialplan.5")),
];

/// What every generated page points to: the pages that document the files the commands read.
const SEE_ALSO: &str = ".SH \"SEE ALSO\"\n.BR ivrd.toml (5),\n.BR ivrd\\-dialplan (5)\n";

/// Writes `ivrd.8`, one page per visible subcommand at any depth (`ivrd-customers-import.8`),
/// and the hand-written pages into `dir`.
fn write_man_pages(dir: &std::path::Path) -> std::io::Result<()> {
    // clap adds a `help` subcommand to every command that has subcommands; it would get pages
    // of its own (`ivrd-help.8`, `ivrd-customers-help.8`) that say nothing.
    fn without_help(cmd: clap::Command) -> clap::Command {
        cmd.disable_help_subcommand(true)
            .mut_subcommands(without_help)
    }
    fn write(cmd: &clap::Command, dir: &std::path::Path) -> std::io::Result<()> {
        // Section 8: a daemon and its admin commands.
        let man = clap_mangen::Man::new(cmd.clone()).section("8");
        let mut rendered = Vec::new();
        man.render(&mut rendered)?;
        let rendered = String::from_utf8(rendered).map_err(std::io::Error::other)?;
        // clap_mangen leaves an empty date out of .TH, which moves the source into the date's
        // place. No date at all: a page must not change unless the command line does (a test
        // compares the committed copies); the VERSION section has the version.
        let name = cmd.get_display_name().unwrap_or_else(|| cmd.get_name());
        let title = format!(".TH {name} 8 \"\" \"ivrd\" \"System Administration\"");
        let mut page: String = rendered
            .lines()
            .map(|l| {
                if l.starts_with(".TH ") {
                    title.as_str()
                } else {
                    l
                }
            })
            .flat_map(|l| [l, "\n"])
            .collect();
        page.push_str(SEE_ALSO);
        std::fs::write(dir.join(man.get_filename()), page)?;
        for sub in cmd.get_subcommands().filter(|s| !s.is_hide_set()) {
            write(sub, dir)?;
        }
        Ok(())
    }
    std::fs::create_dir_all(dir)?;
    let mut cmd = without_help(Cli::command());
    // Names the subcommands `ivrd-customers` and their synopses `ivrd customers`.
    cmd.build();
    write(&cmd, dir)?;
    for (name, text) in HAND_WRITTEN_PAGES {
        std::fs::write(dir.join(name), text)?;
    }
    Ok(())
}

/// Whether a command reads the secret files the config names (`*_file`).
#[derive(Clone, Copy)]
enum Secrets {
    /// `run` and `check`: they use the secrets, or check that they can be read.
    Read,
    /// Commands that send no SMS and answer no challenge, so that an admin who may not read
    /// the credentials can still run them.
    Skip,
}

/// The config file if one was given, else the built-in defaults; a bad file exits with 2.
/// The config (without secrets) and the database a command works on: `--db`, else the
/// config's `[store] path` (the customers, guard and audit commands).
/// A PostgreSQL password comes from `[store] password_file` (or its systemd credential):
/// the one secret these commands read.
fn config_and_db(
    config: Option<&std::path::Path>,
    db: Option<PathBuf>,
) -> Result<(Config, ivrd::store::Database), ExitCode> {
    let mut cfg = load_config(config, Secrets::Skip)?;
    store_secret(&mut cfg, config)?;
    let db = db.map(|p| p.to_string_lossy().into_owned());
    let database = cfg.store.database_or(db.as_deref());
    Ok((cfg, database))
}

/// Reads the database password (`[store] password_file`) for a command that loaded its
/// config without secrets: the one secret every database command needs.
fn store_secret(cfg: &mut Config, config: Option<&std::path::Path>) -> Result<(), ExitCode> {
    let Some(path) = config else {
        return Ok(());
    };
    let base = path.parent().unwrap_or(std::path::Path::new("."));
    let files = ivrd::secrets::SecretFiles::from_env(base);
    cfg.store
        .resolve_secret(&files, &mut Vec::new())
        .map_err(|e| {
            eprintln!("ivrd: {}: {e}", path.display());
            ExitCode::from(2)
        })
}

fn load_config(path: Option<&std::path::Path>, secrets: Secrets) -> Result<Config, ExitCode> {
    let load = match secrets {
        Secrets::Read => Config::load,
        Secrets::Skip => Config::load_without_secrets,
    };
    match path {
        Some(path) => load(path).map_err(|e| {
            eprintln!("ivrd: {e}");
            ExitCode::from(2)
        }),
        None => Ok(Config::embedded()),
    }
}

fn init_logging(level: &str) {
    use tracing_subscriber::EnvFilter;
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new(level));
    // Under systemd, stderr goes to the journal (JOURNAL_STREAM is set), which stamps every
    // line itself: our own timestamps would be duplicates, and colours are noise there.
    let journal = std::env::var_os("JOURNAL_STREAM").is_some();
    let ansi = !journal && std::io::IsTerminal::is_terminal(&std::io::stderr());
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(ansi)
        .with_writer(std::io::stderr);
    if journal {
        builder.without_time().init();
    } else {
        builder.init();
    }
}

/// SIGTERM/SIGINT start a graceful shutdown; SIGHUP asks for a reload.
async fn wait_for_signals(shutdown: CancellationToken, reload: tokio::sync::mpsc::Sender<()>) {
    use tokio::signal::unix::{SignalKind, signal};
    let (Ok(mut term), Ok(mut int), Ok(mut hup)) = (
        signal(SignalKind::terminate()),
        signal(SignalKind::interrupt()),
        signal(SignalKind::hangup()),
    ) else {
        return;
    };
    loop {
        tokio::select! {
            _ = term.recv() => break,
            _ = int.recv() => break,
            _ = hup.recv() => {
                tracing::info!("SIGHUP: reloading");
                // A reload already queued covers this one too.
                let _ = reload.try_send(());
            }
        }
    }
    tracing::info!("signal received; shutting down");
    shutdown.cancel();
}

/// `ivrd drain` and `ivrd resume`, over the admin listener of the config given (or the
/// embedded default's).
fn drain_or_resume(config: Option<PathBuf>, on: bool, wait: Option<u64>) -> ExitCode {
    let listen = match &config {
        Some(path) => Config::admin_listen_in(path),
        None => Config::embedded().admin.listen,
    };
    if listen.is_empty() {
        eprintln!("ivrd: [admin] listen is off: the daemon cannot be asked");
        return ExitCode::from(2);
    }
    match ivrd::admin_http::drain_command(&listen, on, wait.map(std::time::Duration::from_secs)) {
        Ok(message) => {
            println!("{message}");
            ExitCode::SUCCESS
        }
        Err(e) if e.starts_with("cannot reach") || e.contains("is not an address") => {
            eprintln!("ivrd: {e}");
            ExitCode::from(2)
        }
        Err(e) => {
            eprintln!("ivrd: {e}");
            ExitCode::FAILURE
        }
    }
}
