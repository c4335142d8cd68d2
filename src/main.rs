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
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match cli.command {
        Command::Run { config } => {
            let cfg = match config {
                Some(path) => match Config::load(&path) {
                    Ok(cfg) => cfg,
                    Err(e) => {
                        eprintln!("ivrd: {e}");
                        return ExitCode::from(2);
                    }
                },
                None => Config::default(),
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
