//! The accept loop: HTTP/1.1 with keep-alive on hyper, one task per
//! connection, connections capped in all and per client, writes that give
//! up on a client that stops reading, and a graceful shutdown that lets
//! requests in flight finish.

use std::collections::HashMap;
use std::future::Future;
use std::net::{IpAddr, SocketAddr};
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Duration;

use http::Request;
use hyper::body::Incoming;
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::server::graceful::GracefulShutdown;
use prometheus_client::metrics::gauge::Gauge;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpListener;
use tokio::sync::Semaphore;
use tokio::time::Sleep;

use super::HttpResponse;
use crate::config::{ServerSettings, TrustedProxies};
use crate::limits::rates::client_key;

/// What serves the requests of one listener.
pub trait Handler: Send + Sync + 'static {
    fn handle(&self, request: Request<Incoming>, peer: SocketAddr) -> impl Future<Output = HttpResponse> + Send;
}

/// Serves `listener` with `handler` until `shutdown` resolves, then stops
/// accepting and waits for open connections to finish their requests.
/// Connections from `proxies` are exempt from the per-client cap.
pub async fn run<H: Handler>(
    listener: TcpListener,
    handler: Arc<H>,
    settings: ServerSettings,
    proxies: TrustedProxies,
    open_connections: Gauge,
    shutdown: impl Future<Output = ()>,
) {
    let per_client = Arc::new(PerClient {
        open: Mutex::new(HashMap::new()),
        max: settings.max_connections_per_client,
    });
    let mut http = http1::Builder::new();
    http.keep_alive(true)
        .timer(TokioTimer::new())
        .header_read_timeout(settings.header_read_timeout)
        .max_header_size(settings.max_header_bytes);
    // hyper keeps up to 100 headers on the stack; another bound costs a heap
    // allocation per request.
    if settings.max_headers != 100 {
        http.max_headers(settings.max_headers);
    }
    let connections = Arc::new(Semaphore::new(settings.max_connections));
    let graceful = GracefulShutdown::new();
    tokio::pin!(shutdown);
    loop {
        let slot = tokio::select! {
            slot = Arc::clone(&connections).acquire_owned() => slot.expect("the semaphore is never closed"),
            () = &mut shutdown => break,
        };
        let (stream, peer) = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok(accepted) => accepted,
                Err(e) => {
                    // Out of file descriptors, most likely: back off rather than spin.
                    tracing::warn!(error = %e, "cannot accept a connection");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
            () = &mut shutdown => break,
        };
        let client = match PerClient::enter(&per_client, peer.ip(), &proxies) {
            Some(client) => client,
            None => {
                // Refused before reading anything, so that the refusal costs
                // the host nothing; the answer is best effort.
                tracing::debug!(%peer, "too many connections from this client");
                let _ = stream.try_write(too_many_connections());
                continue;
            }
        };
        let _ = stream.set_nodelay(true);
        let stream = WriteDeadline::new(stream, settings.write_timeout);
        let handler = Arc::clone(&handler);
        let service = service_fn(move |request| {
            let handler = Arc::clone(&handler);
            async move { Ok::<_, std::convert::Infallible>(handler.handle(request, peer).await) }
        });
        let connection = graceful.watch(http.serve_connection(TokioIo::new(stream), service));
        let open = Open::new(open_connections.clone());
        tokio::spawn(async move {
            if let Err(e) = connection.await {
                tracing::debug!(%peer, error = %e, "connection ended with an error");
            }
            drop((open, client, slot));
        });
    }
    drop(listener);
    tracing::info!("shutting down: waiting for requests in flight");
    tokio::select! {
        () = graceful.shutdown() => tracing::info!("all connections closed"),
        () = tokio::time::sleep(settings.shutdown_grace) => {
            tracing::warn!(grace = ?settings.shutdown_grace, "requests still in flight after the grace period");
        }
    }
}

/// Counts an open connection in the gauge until dropped.
struct Open(Gauge);

impl Open {
    fn new(gauge: Gauge) -> Self {
        gauge.inc();
        Open(gauge)
    }
}

impl Drop for Open {
    fn drop(&mut self) {
        self.0.dec();
    }
}

/// Connections open per client address, so that one client cannot take
/// every connection the host allows.
struct PerClient {
    /// Only clients with a connection open have an entry, so the map is
    /// bounded by the connection limit.
    open: Mutex<HashMap<IpAddr, usize>>,
    max: usize,
}

/// One client's open connection, counted until dropped; `None` for a
/// trusted proxy, which many clients share.
struct ClientConnection(Option<(Arc<PerClient>, IpAddr)>);

impl PerClient {
    fn enter(this: &Arc<PerClient>, peer: IpAddr, proxies: &TrustedProxies) -> Option<ClientConnection> {
        if proxies.trusts(peer) {
            return Some(ClientConnection(None));
        }
        let key = client_key(peer);
        let mut open = this.open.lock().expect("per-client lock");
        let count = open.entry(key).or_insert(0);
        if *count >= this.max {
            return None;
        }
        *count += 1;
        Some(ClientConnection(Some((Arc::clone(this), key))))
    }
}

impl Drop for ClientConnection {
    fn drop(&mut self) {
        let Some((per_client, key)) = self.0.take() else {
            return;
        };
        let mut open = per_client.open.lock().expect("per-client lock");
        if let Some(count) = open.get_mut(&key) {
            *count -= 1;
            if *count == 0 {
                open.remove(&key);
            }
        }
    }
}

/// The answer to a connection past the per-client cap.
fn too_many_connections() -> &'static [u8] {
    static RESPONSE: std::sync::OnceLock<Vec<u8>> = std::sync::OnceLock::new();
    RESPONSE.get_or_init(|| {
        let body = serde_json::json!({
            "type": format!("{}too-many-connections", super::problem::TYPE_PREFIX),
            "title": "Too many connections",
            "status": 429,
            "detail": "this client has too many connections open; reuse one",
        })
        .to_string();
        format!(
            "HTTP/1.1 429 Too Many Requests\r\ncontent-type: application/problem+json\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
            body.len()
        )
        .into_bytes()
    })
}

/// A stream whose writes fail once they have been stuck for `timeout`: a
/// client that stops reading its response cannot hold the connection, and
/// the request's memory, forever.
struct WriteDeadline<S> {
    inner: S,
    timeout: Duration,
    /// Armed while a write is stuck.
    stuck: Option<Pin<Box<Sleep>>>,
}

impl<S> WriteDeadline<S> {
    fn new(inner: S, timeout: Duration) -> Self {
        WriteDeadline {
            inner,
            timeout,
            stuck: None,
        }
    }

    /// After the inner stream answered `poll`: clears the deadline on
    /// progress, or arms it and fails once it passes.
    fn check<T>(&mut self, cx: &mut Context<'_>, poll: Poll<std::io::Result<T>>) -> Poll<std::io::Result<T>> {
        if poll.is_ready() {
            self.stuck = None;
            return poll;
        }
        let timeout = self.timeout;
        let stuck = self.stuck.get_or_insert_with(|| Box::pin(tokio::time::sleep(timeout)));
        match stuck.as_mut().poll(cx) {
            Poll::Ready(()) => Poll::Ready(Err(std::io::Error::new(
                std::io::ErrorKind::TimedOut,
                "the client did not read its response in time",
            ))),
            Poll::Pending => Poll::Pending,
        }
    }
}

impl<S: AsyncRead + Unpin> AsyncRead for WriteDeadline<S> {
    fn poll_read(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_read(cx, buf)
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for WriteDeadline<S> {
    fn poll_write(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<std::io::Result<usize>> {
        let poll = Pin::new(&mut self.inner).poll_write(cx, buf);
        self.check(cx, poll)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[std::io::IoSlice<'_>],
    ) -> Poll<std::io::Result<usize>> {
        let poll = Pin::new(&mut self.inner).poll_write_vectored(cx, bufs);
        self.check(cx, poll)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        let poll = Pin::new(&mut self.inner).poll_flush(cx);
        self.check(cx, poll)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}
