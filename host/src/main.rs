//! The `corral` command: parses arguments, sets up logging, loads the config,
//! binds the listener and hands over to the library.

use std::io::IsTerminal;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context;
use clap::{Parser, Subcommand, ValueEnum};
use corral::Listeners;
use corral::config::{Config, Overrides};
use corral::ops::remote::{
    AdminClient, backup_file_name, backup_summary, change_summary, dead_letters_table, events_table, reload_summary,
    restore_summary, settled_summary, status_table,
};
use corral::ops::transfer::{self, RegistryOptions};

/// A request allocates and frees many small objects across threads (stores,
/// strings, buffers); mimalloc does that with less contention than the system
/// allocator.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

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
        /// Reload every component when its `.wasm` changes on disk.
        #[arg(long)]
        watch: bool,
    },
    /// Validates a config file and its components without serving.
    Check {
        /// The TOML config file.
        #[arg(long, short)]
        config: PathBuf,
    },
    /// Shows the components a running host serves.
    Status(Remote),
    /// Installs a new version of a component in a running host.
    Swap {
        /// The component's name.
        name: String,
        /// The new `.wasm`, or an `oci://` reference the host fetches.
        wasm: String,
        /// Serve the new version to this percentage of requests only.
        #[arg(long, value_parser = clap::value_parser!(u8).range(1..=99))]
        canary: Option<u8>,
        #[command(flatten)]
        remote: Remote,
    },
    /// Goes back to a component's previous version, or drops its canary.
    Rollback {
        name: String,
        #[command(flatten)]
        remote: Remote,
    },
    /// Makes a component's canary its version for every request.
    Promote {
        name: String,
        #[command(flatten)]
        remote: Remote,
    },
    /// Saves a consistent copy of a component's database, taken while it serves.
    Backup {
        name: String,
        /// The file to write (default: `<name>-<time>.sqlite3`); never overwritten.
        #[arg(long, short)]
        out: Option<PathBuf>,
        #[command(flatten)]
        remote: Remote,
    },
    /// Replaces a component's database with a backup, whole or not at all.
    Restore {
        name: String,
        /// The SQLite file, as `corral backup` wrote it.
        file: PathBuf,
        #[command(flatten)]
        remote: Remote,
    },
    /// Makes a running host re-read its config file.
    Reload(Remote),
    /// Shows who publishes what, and each subscription's backlog.
    Events(Remote),
    /// Lists dead letters: messages that will not be delivered again unless redriven.
    DeadLetters {
        #[arg(long)]
        subscriber: Option<String>,
        #[arg(long, default_value_t = 100)]
        limit: usize,
        #[command(flatten)]
        remote: Remote,
    },
    /// Delivers a subscriber's dead letters again (all, or those named with --id).
    Redrive {
        subscriber: String,
        #[arg(long = "id")]
        ids: Vec<String>,
        #[command(flatten)]
        remote: Remote,
    },
    /// Drops a subscriber's dead letters (all, or those named with --id);
    /// with --pending, what still waits for it too.
    Purge {
        subscriber: String,
        #[arg(long = "id")]
        ids: Vec<String>,
        #[arg(long)]
        pending: bool,
        #[command(flatten)]
        remote: Remote,
    },
    /// Pushes a component to an OCI registry, as a Wasm OCI artifact.
    Push {
        /// The component's `.wasm`.
        wasm: PathBuf,
        /// Where to: oci://registry/repository:tag.
        reference: String,
        #[command(flatten)]
        registry: RegistryArgs,
    },
    /// Pulls a component from an OCI registry.
    Pull {
        /// What: oci://registry/repository:tag or oci://registry/repository@sha256:...
        reference: String,
        /// The file to write (default: the repository's last part, with .wasm).
        #[arg(long, short)]
        out: Option<PathBuf>,
        #[command(flatten)]
        registry: RegistryArgs,
    },
    /// Writes a new component crate: a small CRUD service that builds and serves as it is.
    New {
        /// The component's name: lowercase letters, digits, `-` or `_`.
        name: String,
        /// The folder to write it in.
        #[arg(long, default_value = "components")]
        dir: PathBuf,
        /// The corral SDK crate, for a component outside corral's workspace.
        #[arg(long)]
        sdk: Option<PathBuf>,
    },
}

/// How to reach OCI registries. Credentials come from
/// $CORRAL_REGISTRY_USERNAME and $CORRAL_REGISTRY_PASSWORD, or
/// $CORRAL_REGISTRY_TOKEN, else from Docker's config file.
#[derive(clap::Args)]
struct RegistryArgs {
    /// Reach this registry (host:port) over plain HTTP; may be repeated.
    #[arg(long)]
    insecure: Vec<String>,
    /// Trust the certificate authorities in this PEM file too.
    #[arg(long)]
    ca_file: Option<PathBuf>,
}

impl RegistryArgs {
    fn options(self) -> RegistryOptions {
        RegistryOptions {
            insecure: self.insecure,
            ca_file: self.ca_file,
        }
    }
}

/// How to reach a running host's admin API.
#[derive(clap::Args)]
struct Remote {
    /// The host's config file: where its admin API listens, and its token.
    #[arg(long, short)]
    config: Option<PathBuf>,
    /// The admin API's URL, such as http://127.0.0.1:9090.
    #[arg(long)]
    admin: Option<String>,
    /// The admin token (default: $CORRAL_ADMIN_TOKEN, then the config's).
    #[arg(long)]
    token: Option<String>,
    /// The data folder the host was started with, if not the config's:
    /// where it keeps its admin token.
    #[arg(long)]
    data_dir: Option<PathBuf>,
    /// Print the admin API's JSON, for scripts, instead of text for people.
    #[arg(long)]
    json: bool,
}

impl Remote {
    fn client(&self) -> anyhow::Result<AdminClient> {
        AdminClient::new(
            self.config.as_deref(),
            self.data_dir.clone(),
            self.admin.clone(),
            self.token.clone(),
        )
    }

    /// Prints `reply` for people with `human`, or as JSON with `--json`.
    fn show<T: serde::Serialize>(&self, reply: anyhow::Result<T>, human: fn(&T) -> String) -> anyhow::Result<()> {
        let reply = reply?;
        let text = match self.json {
            true => serde_json::to_string_pretty(&reply)?,
            false => human(&reply),
        };
        println!("{text}");
        Ok(())
    }
}

#[derive(Clone, Copy, ValueEnum)]
enum LogFormat {
    Text,
    Json,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    // `serve` reads its config first: whether spans are exported is part of
    // how the log is set up.
    let mut serving = None;
    if let Command::Serve {
        config,
        listen,
        data_dir,
        watch,
    } = &cli.command
    {
        let overrides = Overrides {
            listen: *listen,
            data_dir: data_dir.clone(),
            watch: *watch,
        };
        match Config::load(config, &overrides) {
            Ok(config) => serving = Some((config, overrides)),
            Err(e) => return fail(e.into()),
        }
    }
    let traces = match &serving {
        Some((config, _)) => {
            let node = config.cluster.as_ref().map_or("corral", |c| c.node.as_str());
            match corral::telemetry::layer(&config.telemetry, node) {
                Ok(traces) => traces,
                Err(e) => return fail(e),
            }
        }
        None => None,
    };
    let (traces, _exporting) = traces.unzip();
    init_logging(cli.log_format, traces);
    let runtime = match tokio::runtime::Builder::new_multi_thread().enable_all().build() {
        Ok(runtime) => runtime,
        Err(e) => return fail(e.into()),
    };
    let result = runtime.block_on(async {
        match cli.command {
            Command::Serve { .. } => {
                let (config, overrides) = serving.expect("read before the log was set up");
                let public = bind(config.listen).await?;
                let admin = match &config.admin {
                    Some(admin) => Some(bind(admin.listen).await?),
                    None => None,
                };
                corral::run(config, overrides, Listeners { public, admin }, shutdown_signal()).await
            }
            Command::Check { config } => {
                let config = Config::load(&config, &Overrides::default())?;
                corral::check(&config).await?;
                println!("{}: ok", config.source.display());
                Ok(())
            }
            Command::Status(remote) => remote.show(remote.client()?.status(), status_table),
            Command::Swap {
                name,
                wasm,
                canary,
                remote,
            } => remote.show(remote.client()?.swap(&name, &wasm, canary), change_summary),
            Command::Rollback { name, remote } => remote.show(remote.client()?.rollback(&name), change_summary),
            Command::Promote { name, remote } => remote.show(remote.client()?.promote(&name), change_summary),
            Command::Backup { name, out, remote } => {
                let out = out.unwrap_or_else(|| backup_file_name(&name));
                remote.show(remote.client()?.backup(&name, &out), backup_summary)
            }
            Command::Restore { name, file, remote } => {
                remote.show(remote.client()?.restore(&name, &file), restore_summary)
            }
            Command::Reload(remote) => remote.show(remote.client()?.reload(), reload_summary),
            Command::Events(remote) => remote.show(remote.client()?.events(), events_table),
            Command::DeadLetters {
                subscriber,
                limit,
                remote,
            } => remote.show(
                remote.client()?.dead_letters(subscriber.as_deref(), limit),
                dead_letters_table,
            ),
            Command::Redrive { subscriber, ids, remote } => remote.show(
                remote.client()?.settle_dead("redrive", &subscriber, &ids, false),
                settled_summary,
            ),
            Command::Purge {
                subscriber,
                ids,
                pending,
                remote,
            } => remote.show(
                remote.client()?.settle_dead("purge", &subscriber, &ids, pending),
                settled_summary,
            ),
            Command::Push {
                wasm,
                reference,
                registry,
            } => print(transfer::push(&wasm, &reference, registry.options()).await.map(|r| format!("oci://{r}"))),
            Command::Pull { reference, out, registry } => {
                print(transfer::pull(&reference, out, registry.options()).await)
            }
            Command::New { name, dir, sdk } => {
                let sdk = sdk.unwrap_or_else(corral::ops::scaffold::default_sdk);
                let made = corral::ops::scaffold::new_component(&name, &dir, &sdk)?;
                println!(
                    "wrote {0}: build it with `just build` (or `cargo build --release --target wasm32-wasip2` in {0}), then serve it with:\n\n{1}",
                    made.dir.display(),
                    made.config
                );
                Ok(())
            }
        }
    });
    // Whatever still runs on blocking threads (a compilation, say) does not
    // hold up the exit; SQL runs on threads of its own, never waited for.
    runtime.shutdown_timeout(std::time::Duration::from_secs(1));
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => fail(e),
    }
}

async fn bind(addr: SocketAddr) -> anyhow::Result<tokio::net::TcpListener> {
    tokio::net::TcpListener::bind(addr)
        .await
        .with_context(|| format!("cannot listen on {addr}"))
}

fn print(output: anyhow::Result<String>) -> anyhow::Result<()> {
    println!("{}", output?);
    Ok(())
}

fn fail(error: anyhow::Error) -> ExitCode {
    eprintln!("error: {error:#}");
    ExitCode::FAILURE
}

/// The log to stderr, filtered by `RUST_LOG`, and beside it the host's
/// spans exported, if `traces` (see `corral::telemetry`). Without traces
/// every filter is global, which costs a request less than filters per layer.
fn init_logging(format: LogFormat, traces: Option<corral::telemetry::Layer>) {
    use tracing_subscriber::Layer as _;
    use tracing_subscriber::filter::{FilterExt as _, filter_fn};
    use tracing_subscriber::fmt::layer as log;
    use tracing_subscriber::layer::SubscriberExt as _;
    use tracing_subscriber::util::SubscriberInitExt as _;
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    // The log's lines carry what they need as fields of their own: the
    // host's spans are for traces only.
    let no_spans = filter_fn(|metadata| !corral::telemetry::is_hosts_span(metadata));
    // The log's layer (`log()`) is made in each arm: its type names the
    // layers beneath it.
    let ansi = std::io::stderr().is_terminal();
    let registry = tracing_subscriber::registry();
    match (traces, format) {
        (None, LogFormat::Text) => registry
            .with(filter)
            .with(no_spans)
            .with(log().with_writer(std::io::stderr).with_ansi(ansi))
            .init(),
        (None, LogFormat::Json) => registry
            .with(filter)
            .with(no_spans)
            .with(log().with_writer(std::io::stderr).json())
            .init(),
        (Some(traces), LogFormat::Text) => registry
            .with(traces)
            .with(
                log()
                    .with_writer(std::io::stderr)
                    .with_ansi(ansi)
                    .with_filter(filter.and(no_spans)),
            )
            .init(),
        (Some(traces), LogFormat::Json) => registry
            .with(traces)
            .with(
                log()
                    .with_writer(std::io::stderr)
                    .json()
                    .with_filter(filter.and(no_spans)),
            )
            .init(),
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
