//! `corral push` and `corral pull`: a component to or from an OCI registry,
//! with progress shown as a bar on a terminal and as plain lines otherwise.

use std::io::IsTerminal;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::Context;
use indicatif::{ProgressBar, ProgressStyle};

use crate::components::oci::{self, Progress, Registries};
use crate::config::RegistriesConfig;

/// The largest component `corral pull` downloads.
const MAX_PULL_BYTES: u64 = 1 << 30;

/// How the command line reaches registries.
pub struct RegistryOptions {
    pub insecure: Vec<String>,
    pub ca_file: Option<PathBuf>,
}

impl RegistryOptions {
    fn registries(self) -> Registries {
        Registries::new(RegistriesConfig {
            insecure: self.insecure,
            ca_file: self.ca_file,
            max_download_bytes: MAX_PULL_BYTES,
            cache_dir: cache_dir(),
        })
    }
}

/// Pushes the component in `file` to `reference`; answers the reference
/// pinned to what was pushed.
pub async fn push(file: &Path, reference: &str, options: RegistryOptions) -> anyhow::Result<String> {
    let wasm = std::fs::read(file).with_context(|| format!("cannot read {}", file.display()))?;
    anyhow::ensure!(
        wasm.starts_with(b"\0asm"),
        "{} is not a WebAssembly file",
        file.display()
    );
    let pinned = options
        .registries()
        .push(wasm, reference, Arc::new(Shown::new("pushing")))
        .await?;
    Ok(pinned)
}

/// Pulls `reference` into `out` (by default `<repository's last part>.wasm`
/// here); answers the file and the reference pinned to what was pulled.
pub async fn pull(reference: &str, out: Option<PathBuf>, options: RegistryOptions) -> anyhow::Result<String> {
    let parsed = oci::parse(reference)?;
    let out = out.unwrap_or_else(|| {
        let last = parsed.repository().rsplit('/').next().unwrap_or("component");
        PathBuf::from(format!("{last}.wasm"))
    });
    let pulled = options.registries().pull(reference, &Shown::new("pulling")).await?;
    std::fs::write(&out, &pulled.wasm).with_context(|| format!("cannot write {}", out.display()))?;
    let cached = if pulled.from_cache {
        " (the registry is unreachable: this is the copy fetched before)"
    } else {
        ""
    };
    Ok(format!("{}: oci://{}{cached}", out.display(), pulled.pinned))
}

/// `$XDG_CACHE_HOME/corral/oci`, else `~/.cache/corral/oci`.
fn cache_dir() -> PathBuf {
    let base = std::env::var_os("XDG_CACHE_HOME")
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|home| PathBuf::from(home).join(".cache")))
        .unwrap_or_else(std::env::temp_dir);
    base.join("corral").join("oci")
}

/// Progress on stderr: a bar on a terminal; otherwise a line at the start,
/// one every few seconds, and one at the end.
struct Shown {
    verb: &'static str,
    state: Mutex<ShownState>,
}

#[derive(Default)]
struct ShownState {
    bar: Option<ProgressBar>,
    what: String,
    total: u64,
    done: u64,
    last_line: Option<Instant>,
}

/// How often a plain line reports progress.
const LINE_EVERY: Duration = Duration::from_secs(2);

impl Shown {
    fn new(verb: &'static str) -> Self {
        Shown {
            verb,
            state: Mutex::default(),
        }
    }
}

impl Progress for Shown {
    fn start(&self, what: &str, total: u64) {
        let mut state = self.state.lock().expect("progress lock");
        state.what = what.to_string();
        state.total = total;
        if std::io::stderr().is_terminal() {
            let bar = ProgressBar::new(total);
            let style = ProgressStyle::with_template("{msg} [{bar:30}] {bytes}/{total_bytes} {bytes_per_sec}")
                .expect("a valid template")
                .progress_chars("=> ");
            bar.set_style(style);
            bar.set_message(format!("{} {what}", self.verb));
            state.bar = Some(bar);
        } else {
            eprintln!("{} {what}: {total} bytes", self.verb);
            state.last_line = Some(Instant::now());
        }
    }

    fn advance(&self, bytes: u64) {
        let mut state = self.state.lock().expect("progress lock");
        state.done += bytes;
        if let Some(bar) = &state.bar {
            bar.inc(bytes);
        } else if state.last_line.is_some_and(|at| at.elapsed() >= LINE_EVERY) {
            eprintln!("{} {}: {} of {} bytes", self.verb, state.what, state.done, state.total);
            state.last_line = Some(Instant::now());
        }
    }

    fn finish(&self) {
        let state = self.state.lock().expect("progress lock");
        match &state.bar {
            Some(bar) => bar.finish_and_clear(),
            None => eprintln!("{} {}: done, {} bytes", self.verb, state.what, state.done),
        }
    }
}
