//! A fixed-rate load generator: requests are scheduled at a constant rate
//! and each one's latency counts from when it was due, not from when a
//! connection got round to sending it, so the time requests wait behind a
//! slow server is in the figures (closed-loop tools like wrk leave it out).

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::Request;
use hyper_util::rt::TokioIo;

/// Latencies of one run, in microseconds, sorted.
pub struct Latencies {
    pub micros: Vec<u64>,
    pub errors: u64,
    pub seconds: f64,
}

impl Latencies {
    /// The latency at percentile `p` (0 to 100), in milliseconds.
    pub fn percentile_ms(&self, p: f64) -> f64 {
        if self.micros.is_empty() {
            return f64::NAN;
        }
        let rank = ((p / 100.0) * (self.micros.len() - 1) as f64).round() as usize;
        self.micros[rank] as f64 / 1000.0
    }

    pub fn achieved_rate(&self) -> f64 {
        self.micros.len() as f64 / self.seconds
    }
}

/// Sends `rate` requests per second to `addr` for `duration`, over
/// `connections` keep-alive connections; `request(i)` makes the i-th.
pub fn run(
    addr: SocketAddr,
    rate: f64,
    duration: Duration,
    connections: usize,
    request: impl Fn(u64) -> Request<Full<Bytes>> + Send + Sync + 'static,
) -> anyhow::Result<Latencies> {
    let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
    runtime.block_on(async move {
        let request = Arc::new(request);
        let next = Arc::new(AtomicU64::new(0));
        let start = tokio::time::Instant::now() + Duration::from_millis(100);
        let total = (rate * duration.as_secs_f64()) as u64;
        let interval = Duration::from_secs_f64(1.0 / rate);
        let mut tasks = Vec::new();
        for _ in 0..connections {
            let (request, next) = (Arc::clone(&request), Arc::clone(&next));
            let stream = tokio::net::TcpStream::connect(addr).await?;
            stream.set_nodelay(true)?;
            let (mut sender, connection) = hyper::client::conn::http1::handshake(TokioIo::new(stream)).await?;
            tokio::spawn(connection);
            tasks.push(tokio::spawn(async move {
                let (mut micros, mut errors) = (Vec::new(), 0u64);
                loop {
                    let i = next.fetch_add(1, Ordering::Relaxed);
                    if i >= total {
                        break;
                    }
                    let due = start + interval.mul_f64(i as f64);
                    tokio::time::sleep_until(due).await;
                    let ok = match sender.send_request(request(i)).await {
                        Ok(response) => {
                            let status = response.status();
                            response.into_body().collect().await.is_ok() && status.as_u16() < 500
                        }
                        Err(_) => false,
                    };
                    if ok {
                        micros.push(due.elapsed().as_micros() as u64);
                    } else {
                        errors += 1;
                        if sender.ready().await.is_err() {
                            break;
                        }
                    }
                }
                (micros, errors)
            }));
        }
        let began = Instant::now();
        let mut all = Latencies {
            micros: Vec::new(),
            errors: 0,
            seconds: 0.0,
        };
        for task in tasks {
            let (micros, errors) = task.await?;
            all.micros.extend(micros);
            all.errors += errors;
        }
        all.seconds = began.elapsed().as_secs_f64().max(duration.as_secs_f64());
        all.micros.sort_unstable();
        Ok(all)
    })
}
