//! What a guest writes, through `corral:service/log` or to its stdout and
//! stderr, goes to the host log tagged with the component and request.
//! A request may write only so much, so a chatty guest cannot flood the log.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use bytes::Bytes;
use wasmtime::component::{HasSelf, Linker};
use wasmtime_wasi::WasiCtxBuilder;
use wasmtime_wasi::cli::{IsTerminal, StdoutStream};
use wasmtime_wasi::p2::{OutputStream, Pollable, StreamError, StreamResult};

use crate::capabilities::bindings::corral::service::log::{self as wit, Host, Level};
use crate::capabilities::{Call, Capability, StoreData};
use crate::config::ComponentConfig;

/// Bytes of log one request may write, across all of its outputs.
const MAX_BYTES_PER_REQUEST: usize = 256 << 10;
/// Longer lines are cut.
const MAX_LINE_BYTES: usize = 8 << 10;
/// The most one write to stdout or stderr may carry, as `check-write` says;
/// a larger write is a broken contract and traps.
const MAX_WRITE_BYTES: usize = 64 << 10;

/// Who is writing: shared by one request's log interface and output streams.
#[derive(Clone)]
pub struct GuestLog {
    inner: Arc<Origin>,
}

struct Origin {
    component: Arc<str>,
    version: Arc<str>,
    request_id: Arc<str>,
    budget: AtomicUsize,
}

impl GuestLog {
    pub fn new(component: Arc<str>, version: Arc<str>, request_id: Arc<str>) -> Self {
        GuestLog {
            inner: Arc::new(Origin {
                component,
                version,
                request_id,
                budget: AtomicUsize::new(MAX_BYTES_PER_REQUEST),
            }),
        }
    }

    /// Whether the request may still write.
    fn has_budget(&self) -> bool {
        self.inner.budget.load(Ordering::Relaxed) > 0
    }

    /// Writes one line, if the request's budget allows.
    fn emit(&self, level: Level, stream: &str, line: &str) {
        let line = truncate(line, MAX_LINE_BYTES);
        let wanted = line.len().max(1);
        let left = self
            .inner
            .budget
            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |left| left.checked_sub(wanted));
        if left.is_err() {
            return;
        }
        let o = &self.inner;
        macro_rules! event {
            ($level:expr) => {
                tracing::event!(
                    target: "guest",
                    $level,
                    component = %o.component,
                    version = %o.version,
                    request_id = %o.request_id,
                    stream,
                    "{line}"
                )
            };
        }
        match level {
            Level::Trace => event!(tracing::Level::TRACE),
            Level::Debug => event!(tracing::Level::DEBUG),
            Level::Info => event!(tracing::Level::INFO),
            Level::Warn => event!(tracing::Level::WARN),
            Level::Error => event!(tracing::Level::ERROR),
        }
    }

    /// A stream for the guest's stdout or stderr.
    pub fn output(&self, stream: &'static str, level: Level) -> GuestOutput {
        GuestOutput {
            log: self.clone(),
            stream,
            level,
        }
    }
}

/// `corral:service/log`, and the guest's stdout and stderr.
pub struct Log;

impl Capability for Log {
    /// Nothing: a log line names its component, version and request, all
    /// known per call.
    type Component = ();
    type Instance = GuestLog;
    type Metrics = ();

    fn add_to_linker<T: StoreData>(linker: &mut Linker<T>) -> wasmtime::Result<()> {
        wit::add_to_linker::<T, HasSelf<GuestLog>>(linker, |data| &mut data.capabilities().0.log)
    }

    async fn configure(
        _: &crate::capabilities::Host,
        _: &(),
        _: &ComponentConfig,
        _: Option<&Arc<()>>,
        _: &mut Vec<std::path::PathBuf>,
    ) -> anyhow::Result<Arc<()>> {
        Ok(Arc::new(()))
    }

    fn prepare(_: &Arc<()>, call: &Call<'_>) -> GuestLog {
        GuestLog::new(
            Arc::clone(call.component),
            Arc::clone(call.version),
            Arc::clone(call.request_id),
        )
    }

    fn wasi(log: &GuestLog, wasi: &mut WasiCtxBuilder) {
        wasi.stdout(log.output("stdout", Level::Info))
            .stderr(log.output("stderr", Level::Warn));
    }
}

fn truncate(line: &str, max: usize) -> &str {
    if line.len() <= max {
        return line;
    }
    let mut end = max;
    while !line.is_char_boundary(end) {
        end -= 1;
    }
    &line[..end]
}

impl Host for GuestLog {
    fn log(&mut self, level: Level, message: String) -> wasmtime::Result<()> {
        for line in message.lines() {
            if !self.has_budget() {
                break;
            }
            self.emit(level, "log", line);
        }
        Ok(())
    }
}

/// A guest's stdout or stderr: every stream the guest opens on it writes lines
/// to the host log.
#[derive(Clone)]
pub struct GuestOutput {
    log: GuestLog,
    stream: &'static str,
    level: Level,
}

impl IsTerminal for GuestOutput {
    fn is_terminal(&self) -> bool {
        false
    }
}

impl StdoutStream for GuestOutput {
    fn p2_stream(&self) -> Box<dyn OutputStream> {
        Box::new(LineWriter {
            out: self.clone(),
            pending: Vec::new(),
        })
    }

    fn async_stream(&self) -> Box<dyn tokio::io::AsyncWrite + Send + Sync> {
        Box::new(LineWriter {
            out: self.clone(),
            pending: Vec::new(),
        })
    }
}

/// Splits what is written into lines; a partial line waits for its end or
/// for the stream to close.
struct LineWriter {
    out: GuestOutput,
    pending: Vec<u8>,
}

impl LineWriter {
    /// Splits `bytes` into lines in one pass; at most one line's worth
    /// waits in `pending`.
    fn write_bytes(&mut self, mut bytes: &[u8]) {
        while !bytes.is_empty() && self.out.log.has_budget() {
            let (chunk, newline) = match bytes.iter().position(|b| *b == b'\n') {
                Some(at) => (&bytes[..at], true),
                None => (bytes, false),
            };
            bytes = &bytes[chunk.len() + usize::from(newline)..];
            let room = MAX_LINE_BYTES - self.pending.len();
            self.pending.extend_from_slice(&chunk[..chunk.len().min(room)]);
            if newline || self.pending.len() >= MAX_LINE_BYTES {
                let line = std::mem::take(&mut self.pending);
                self.flush_line(&line);
            }
        }
    }

    fn flush_line(&self, line: &[u8]) {
        let text = String::from_utf8_lossy(line);
        self.out
            .log
            .emit(self.out.level, self.out.stream, text.trim_end_matches('\r'));
    }
}

impl Drop for LineWriter {
    fn drop(&mut self) {
        if !self.pending.is_empty() {
            let line = std::mem::take(&mut self.pending);
            self.flush_line(&line);
        }
    }
}

#[wasmtime_wasi::async_trait]
impl Pollable for LineWriter {
    async fn ready(&mut self) {}
}

impl OutputStream for LineWriter {
    fn write(&mut self, bytes: Bytes) -> StreamResult<()> {
        if bytes.len() > MAX_WRITE_BYTES {
            return Err(StreamError::trap("a write larger than check-write allows"));
        }
        self.write_bytes(&bytes);
        Ok(())
    }

    fn flush(&mut self) -> StreamResult<()> {
        Ok(())
    }

    fn check_write(&mut self) -> StreamResult<usize> {
        Ok(MAX_WRITE_BYTES)
    }
}

impl tokio::io::AsyncWrite for LineWriter {
    fn poll_write(
        mut self: std::pin::Pin<&mut Self>,
        _: &mut std::task::Context<'_>,
        buf: &[u8],
    ) -> std::task::Poll<std::io::Result<usize>> {
        let n = buf.len().min(MAX_WRITE_BYTES);
        self.write_bytes(&buf[..n]);
        std::task::Poll::Ready(Ok(n))
    }

    fn poll_flush(
        self: std::pin::Pin<&mut Self>,
        _: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        std::task::Poll::Ready(Ok(()))
    }

    fn poll_shutdown(
        self: std::pin::Pin<&mut Self>,
        _: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        std::task::Poll::Ready(Ok(()))
    }
}
