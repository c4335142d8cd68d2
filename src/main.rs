//! The `ivrd` command line: parsing arguments and turning errors into one clear sentence.
//! Everything else lives in the library (see `src/lib.rs` for the map).

use clap::{Parser, Subcommand};
use ivrd::config::Config;
use std::path::PathBuf;
use std::process::ExitCode;
use tokio_util::sync::CancellationToken;

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
    /// Run the daemon (without --config: the built-in demo on 127.0.0.1:5060).
    Run {
        /// Configuration file (TOML).
        #[arg(long, short)]
        config: Option<PathBuf>,
    },
    /// Manage the customers in the database: import, add, list, disable, enable, remove, unlock.
    Customers {
        /// Configuration file whose [store] path names the database.
        #[arg(long, short)]
        config: Option<PathBuf>,
        /// Database file (overrides the config).
        #[arg(long)]
        db: Option<PathBuf>,
        #[command(subcommand)]
        command: ivrd::customers_cli::CustomersCommand,
    },
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match cli.command {
        Command::Customers {
            config,
            db,
            command,
        } => {
            let cfg = match load_config(config.as_deref()) {
                Ok(cfg) => cfg,
                Err(code) => return code,
            };
            let path = db.unwrap_or(cfg.store.path);
            let store = match ivrd::store::Store::open(&path) {
                Ok(s) => s,
                Err(e) => {
                    eprintln!("error: {}: {e}", path.display());
                    return ExitCode::from(ivrd::customers_cli::CliError::EXIT_CODE);
                }
            };
            match ivrd::customers_cli::run(&store, command, &mut std::io::stdout().lock()) {
                Ok(exit) => exit.into(),
                Err(e) => {
                    eprintln!("error: {e}");
                    ExitCode::from(ivrd::customers_cli::CliError::EXIT_CODE)
                }
            }
        }
        Command::Run { config } => {
            let cfg = match load_config(config.as_deref()) {
                Ok(cfg) => cfg,
                Err(code) => return code,
            };
            init_logging(&cfg.log.level);
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
                tokio::spawn(wait_for_signal(shutdown.clone()));
                ivrd::server::run(cfg, shutdown, None).await
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

/// The config file if one was given, else the built-in defaults; a bad file exits with 2.
fn load_config(path: Option<&std::path::Path>) -> Result<Config, ExitCode> {
    match path {
        Some(path) => Config::load(path).map_err(|e| {
            eprintln!("ivrd: {e}");
            ExitCode::from(2)
        }),
        None => Ok(Config::default()),
    }
}

fn init_logging(level: &str) {
    use tracing_subscriber::EnvFilter;
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new(level));
    let ansi = std::io::IsTerminal::is_terminal(&std::io::stderr());
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(ansi)
        .with_writer(std::io::stderr)
        .init();
}

async fn wait_for_signal(shutdown: CancellationToken) {
    use tokio::signal::unix::{SignalKind, signal};
    let (Ok(mut term), Ok(mut int)) = (
        signal(SignalKind::terminate()),
        signal(SignalKind::interrupt()),
    ) else {
        return;
    };
    tokio::select! {
        _ = term.recv() => {},
        _ = int.recv() => {},
    }
    tracing::info!("signal received; shutting down");
    shutdown.cancel();
}
