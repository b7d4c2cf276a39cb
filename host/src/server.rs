//! The accept loop: HTTP/1.1 with keep-alive on hyper, one task per
//! connection, and a graceful shutdown that lets requests in flight finish.

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::{Request, Response};
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::server::graceful::GracefulShutdown;
use prometheus_client::metrics::gauge::Gauge;
use tokio::net::TcpListener;
use tokio::sync::Semaphore;

/// What serves the requests of one listener.
pub trait Handler: Send + Sync + 'static {
    fn handle(
        &self,
        request: Request<Incoming>,
        peer: SocketAddr,
    ) -> impl Future<Output = Response<Full<Bytes>>> + Send;
}

/// Settings of a listener.
#[derive(Debug, Clone, PartialEq)]
pub struct ServerSettings {
    /// Connections open at once; past it, the listener stops accepting
    /// until one closes.
    pub max_connections: usize,
    /// A client must send a request's headers within this time, so slow
    /// clients cannot hold connections forever.
    pub header_read_timeout: Duration,
    /// Headers one request may carry (431 beyond).
    pub max_headers: usize,
    /// Bytes of headers one request may carry (431 beyond).
    pub max_header_bytes: usize,
    /// How long requests in flight may take to finish once shutdown begins.
    pub shutdown_grace: Duration,
}

impl Default for ServerSettings {
    fn default() -> Self {
        ServerSettings {
            max_connections: 10_000,
            header_read_timeout: Duration::from_secs(10),
            max_headers: 100,
            max_header_bytes: 16 << 10,
            shutdown_grace: Duration::from_secs(30),
        }
    }
}

/// Serves `listener` with `handler` until `shutdown` resolves, then stops
/// accepting and waits for open connections to finish their requests.
pub async fn run<H: Handler>(
    listener: TcpListener,
    handler: Arc<H>,
    settings: ServerSettings,
    open_connections: Gauge,
    shutdown: impl Future<Output = ()>,
) {
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
        let _ = stream.set_nodelay(true);
        let handler = Arc::clone(&handler);
        let service = service_fn(move |request| {
            let handler = Arc::clone(&handler);
            async move { Ok::<_, std::convert::Infallible>(handler.handle(request, peer).await) }
        });
        let connection = graceful.watch(http.serve_connection(TokioIo::new(stream), service));
        let open_connections = open_connections.clone();
        open_connections.inc();
        tokio::spawn(async move {
            if let Err(e) = connection.await {
                tracing::debug!(%peer, error = %e, "connection ended with an error");
            }
            open_connections.dec();
            drop(slot);
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
