//! The accept loop: HTTP/1.1 with keep-alive on hyper, one task per
//! connection, connections capped in all and per client, response bytes
//! counted until the socket takes them (`limits::responses`), writes that
//! give up on a client that stops reading or reads too slowly, and a
//! graceful shutdown that lets requests in flight finish.

use std::collections::HashMap;
use std::future::Future;
use std::net::{IpAddr, SocketAddr};
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use http::Request;
use hyper::body::Incoming;
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::server::graceful::GracefulShutdown;
use prometheus_client::metrics::gauge::Gauge;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::Semaphore;
use tokio::time::Sleep;

use super::HttpResponse;
use crate::config::{ServerSettings, TrustedProxies};
use crate::limits::rates::client_key;
use crate::limits::responses::{ClientOwed, Owed, ResponseBudget};

/// What serves the requests of one listener.
pub trait Handler: Send + Sync + 'static {
    fn handle(&self, request: Request<Incoming>, connection: &Connection) -> impl Future<Output = HttpResponse> + Send;
}

/// The connection a request came on.
pub struct Connection {
    pub peer: SocketAddr,
    /// The response bytes it holds for its client.
    pub owed: Arc<Owed>,
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
    let budget = ResponseBudget::new(
        settings.response_buffer_bytes,
        settings.response_buffer_per_client_bytes,
    );
    let http = http1(&settings);
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
        let connection = Arc::new(Connection {
            peer,
            owed: Owed::new(Arc::clone(&budget), client.owed()),
        });
        let stream = Paced::new(
            stream,
            settings.write_timeout,
            settings.write_min_bytes_per_sec as u64,
            Arc::clone(&connection.owed),
        );
        let handler = Arc::clone(&handler);
        let service = service_fn(move |request| {
            let (handler, connection) = (Arc::clone(&handler), Arc::clone(&connection));
            async move { Ok::<_, std::convert::Infallible>(handler.handle(request, &connection).await) }
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

/// HTTP/1.1 as the listener serves it: keep-alive, and the header caps and
/// timeout of `settings`.
pub(crate) fn http1(settings: &ServerSettings) -> http1::Builder {
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
    http
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
/// every connection the host allows, and the response bytes each address
/// holds across its connections.
struct PerClient {
    /// Only clients with a connection open have an entry, so the map is
    /// bounded by the connection limit.
    open: Mutex<HashMap<IpAddr, Client>>,
    max: usize,
}

/// One client address with connections open.
struct Client {
    connections: usize,
    owed: Arc<ClientOwed>,
}

/// One client's open connection, counted until dropped; `None` for a
/// trusted proxy, which many clients share.
struct ClientConnection(Option<(Arc<PerClient>, IpAddr, Arc<ClientOwed>)>);

impl PerClient {
    fn enter(this: &Arc<PerClient>, peer: IpAddr, proxies: &TrustedProxies) -> Option<ClientConnection> {
        if proxies.trusts(peer) {
            return Some(ClientConnection(None));
        }
        let key = client_key(peer);
        let mut open = this.open.lock().expect("per-client lock");
        let client = open.entry(key).or_insert_with(|| Client {
            connections: 0,
            owed: Arc::default(),
        });
        if client.connections >= this.max {
            return None;
        }
        client.connections += 1;
        let owed = Arc::clone(&client.owed);
        Some(ClientConnection(Some((Arc::clone(this), key, owed))))
    }
}

impl ClientConnection {
    /// What the client owes across its connections; `None` for a proxy.
    fn owed(&self) -> Option<Arc<ClientOwed>> {
        self.0.as_ref().map(|(_, _, owed)| Arc::clone(owed))
    }
}

impl Drop for ClientConnection {
    fn drop(&mut self) {
        let Some((per_client, key, _)) = self.0.take() else {
            return;
        };
        let mut open = per_client.open.lock().expect("per-client lock");
        if let Some(client) = open.get_mut(&key) {
            client.connections -= 1;
            if client.connections == 0 {
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

/// How long a client owing response bytes has to take each share of them:
/// `min_bytes_per_sec` times this, or it is cut off. Counted in windows, so
/// what its socket buffers took in a burst is no credit for later.
const PACE_WINDOW: Duration = Duration::from_secs(2);

/// A connection's socket that pays its [`Owed`] for what it takes, and
/// whose writes fail once they have been stuck for `timeout`, or once the
/// client, owing bytes, takes fewer than `min_bytes_per_sec` in a
/// [`PACE_WINDOW`]: a client that stops reading, or trickles, cannot hold
/// the connection, and the response's memory, for long. A connection given
/// up on is reset, so what the kernel still buffers for it goes too.
struct Paced {
    inner: TcpStream,
    timeout: Duration,
    min_bytes_per_sec: u64,
    owed: Arc<Owed>,
    /// While the client owes bytes: when the current window began, and how
    /// many bytes it has taken in it.
    window: Option<(Instant, usize)>,
    /// When a write stuck since then fails for being stuck.
    stuck_until: Option<Instant>,
    /// Fires at the earlier of the two deadlines while a write is stuck.
    alarm: Option<Pin<Box<Sleep>>>,
    gave_up: bool,
}

impl Paced {
    fn new(inner: TcpStream, timeout: Duration, min_bytes_per_sec: u64, owed: Arc<Owed>) -> Self {
        Paced {
            inner,
            timeout,
            min_bytes_per_sec,
            owed,
            window: None,
            stuck_until: None,
            alarm: None,
            gave_up: false,
        }
    }

    /// When the current pace window ends, a new one begun if the last was
    /// met; `Err` if the client took too little in it.
    fn pace(&mut self, now: Instant) -> Result<Option<Instant>, &'static str> {
        if self.min_bytes_per_sec == 0 || !self.owed.owes() {
            self.window = None;
            return Ok(None);
        }
        let (start, taken) = *self.window.get_or_insert((now, 0));
        let end = start + PACE_WINDOW;
        if now < end {
            return Ok(Some(end));
        }
        let required = self.min_bytes_per_sec.saturating_mul(PACE_WINDOW.as_secs()) as usize;
        if taken < required {
            return Err("the client reads its response too slowly");
        }
        self.window = Some((now, 0));
        Ok(Some(now + PACE_WINDOW))
    }

    /// After the inner stream answered a write or flush that moved `moved`
    /// bytes (if ready): pays for them and clears the stuck deadline on
    /// progress; when still pending, arms the alarm and fails once the
    /// write has been stuck too long or the client is too slow.
    fn check<T>(
        &mut self,
        cx: &mut Context<'_>,
        poll: Poll<std::io::Result<T>>,
        moved: impl Fn(&T) -> usize,
    ) -> Poll<std::io::Result<T>> {
        match &poll {
            Poll::Ready(Ok(done)) => {
                let n = moved(done);
                self.owed.pay(n);
                if let Some((_, taken)) = &mut self.window {
                    *taken += n;
                }
                self.stuck_until = None;
                self.alarm = None;
                return poll;
            }
            Poll::Ready(Err(_)) => return poll,
            Poll::Pending => {}
        }
        let now = Instant::now();
        let stuck_until = *self.stuck_until.get_or_insert(now + self.timeout);
        let fail = match self.pace(now) {
            Err(why) => Some(why),
            Ok(_) if now >= stuck_until => Some("the client did not read its response in time"),
            Ok(window_end) => {
                let wake_at = window_end.map_or(stuck_until, |end| end.min(stuck_until));
                let alarm = self
                    .alarm
                    .get_or_insert_with(|| Box::pin(tokio::time::sleep_until(wake_at.into())));
                if alarm.deadline() != wake_at.into() {
                    alarm.as_mut().reset(wake_at.into());
                }
                match alarm.as_mut().poll(cx) {
                    // A deadline passed: look again at once.
                    Poll::Ready(()) => {
                        cx.waker().wake_by_ref();
                        None
                    }
                    Poll::Pending => None,
                }
            }
        };
        match fail {
            Some(why) => {
                self.gave_up = true;
                let _ = self.inner.set_zero_linger();
                Poll::Ready(Err(std::io::Error::new(std::io::ErrorKind::TimedOut, why)))
            }
            None => Poll::Pending,
        }
    }
}

impl AsyncRead for Paced {
    fn poll_read(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_read(cx, buf)
    }
}

impl AsyncWrite for Paced {
    fn poll_write(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<std::io::Result<usize>> {
        let poll = Pin::new(&mut self.inner).poll_write(cx, buf);
        self.check(cx, poll, |n| *n)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[std::io::IoSlice<'_>],
    ) -> Poll<std::io::Result<usize>> {
        let poll = Pin::new(&mut self.inner).poll_write_vectored(cx, bufs);
        self.check(cx, poll, |n| *n)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        let poll = Pin::new(&mut self.inner).poll_flush(cx);
        self.check(cx, poll, |()| 0)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        // A connection given up on is reset when dropped, not closed in turn
        // behind what it still buffers.
        if self.gave_up {
            return Poll::Ready(Ok(()));
        }
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}
