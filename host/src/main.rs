//! The `corral` command: parses arguments, sets up logging, loads the config,
//! binds the listener and hands over to the library.

use std::io::IsTerminal;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context;
use clap::{Parser, Subcommand, ValueEnum};
use corral::config::{Config, Overrides};

#[derive(Parser)]
#[command(
    name = "corral",
    version,
    about = "Serves HTTP microservices as sandboxed WebAssembly components"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
    /// How log lines are written to stderr.
    #[arg(long, global = true, value_enum, default_value_t = LogFormat::Text)]
    log_format: LogFormat,
}

#[derive(Subcommand)]
enum Command {
    /// Serves the components of a config file over HTTP.
    Serve {
        /// The TOML config file.
        #[arg(long, short)]
        config: PathBuf,
        /// Listen on this address instead of the config's.
        #[arg(long)]
        listen: Option<SocketAddr>,
        /// Keep databases in this folder instead of the config's.
        #[arg(long)]
        data_dir: Option<PathBuf>,
    },
    /// Validates a config file and its components without serving.
    Check {
        /// The TOML config file.
        #[arg(long, short)]
        config: PathBuf,
    },
}

#[derive(Clone, Copy, ValueEnum)]
enum LogFormat {
    Text,
    Json,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    init_logging(cli.log_format);
    let runtime = match tokio::runtime::Builder::new_multi_thread().enable_all().build() {
        Ok(runtime) => runtime,
        Err(e) => return fail(e.into()),
    };
    let result = runtime.block_on(async {
        match cli.command {
            Command::Serve {
                config,
                listen,
                data_dir,
            } => {
                let config = Config::load(&config, &Overrides { listen, data_dir })?;
                let listener = tokio::net::TcpListener::bind(config.listen)
                    .await
                    .with_context(|| format!("cannot listen on {}", config.listen))?;
                corral::run(config, listener, shutdown_signal()).await
            }
            Command::Check { config } => {
                let config = Config::load(&config, &Overrides::default())?;
                corral::check(&config).await?;
                println!("{}: ok", config.source.display());
                Ok(())
            }
        }
    });
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => fail(e),
    }
}

fn fail(error: anyhow::Error) -> ExitCode {
    eprintln!("error: {error:#}");
    ExitCode::FAILURE
}

fn init_logging(format: LogFormat) {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    match format {
        LogFormat::Text => builder.with_ansi(std::io::stderr().is_terminal()).init(),
        LogFormat::Json => builder.json().init(),
    }
}

/// Resolves on SIGTERM or SIGINT.
async fn shutdown_signal() {
    use tokio::signal::unix::{SignalKind, signal};
    let (Ok(mut term), Ok(mut int)) = (signal(SignalKind::terminate()), signal(SignalKind::interrupt())) else {
        tracing::error!("cannot listen for shutdown signals");
        return std::future::pending().await;
    };
    tokio::select! {
        _ = term.recv() => tracing::info!("SIGTERM received"),
        _ = int.recv() => tracing::info!("SIGINT received"),
    }
}
