//! Request bodies, from clients or from guests' requests to `.internal`:
//! read whole within a size limit and a deadline (a total time and a
//! minimum pace, so a slow client is cut off), and, for a request answered
//! without its body, drained within bounds so the client can read the
//! answer.

use std::time::{Duration, Instant};

use bytes::Bytes;
use http::StatusCode;
use http::header::{self, HeaderValue};
use http_body_util::BodyExt;
use hyper::body::Body;
use tokio::io::AsyncWriteExt;

use super::{HttpResponse, problem};

/// How much of a refused body is read, so the client can read the refusal,
/// before the connection is closed instead.
const MAX_DRAIN_BYTES: usize = 8 << 20;
const DRAIN_TIMEOUT: Duration = Duration::from_secs(5);

/// How fast a request body must arrive: whole within `timeout`, and after
/// a grace period at no less than `min_bytes_per_sec` on average.
#[derive(Debug, Clone, Copy)]
pub struct BodyPace {
    pub timeout: Duration,
    pub min_bytes_per_sec: u64,
}

/// Time a client gets before its body's pace is held against it.
const BODY_GRACE: Duration = Duration::from_secs(2);

impl BodyPace {
    /// When a body that started at `started` and has `received` bytes so
    /// far must have sent more.
    fn deadline(&self, started: Instant, received: usize) -> Instant {
        let whole = started + self.timeout;
        if self.min_bytes_per_sec == 0 {
            return whole;
        }
        let earned = Duration::from_secs_f64(received as f64 / self.min_bytes_per_sec as f64);
        whole.min(started + BODY_GRACE + earned)
    }
}

/// Why a body was not read.
pub enum BodyRefusal {
    TooLarge(HttpResponse),
    TooSlow(HttpResponse),
    Broken(HttpResponse),
}

impl BodyRefusal {
    /// The rejection reason for metrics.
    pub fn reason(&self) -> Option<&'static str> {
        match self {
            BodyRefusal::TooLarge(_) => Some("body_size"),
            BodyRefusal::TooSlow(_) => Some("body_timeout"),
            BodyRefusal::Broken(_) => None,
        }
    }

    pub fn into_response(self) -> HttpResponse {
        match self {
            BodyRefusal::TooLarge(r) | BodyRefusal::TooSlow(r) | BodyRefusal::Broken(r) => r,
        }
    }
}

/// Reads the whole body within `pace`, refusing with 413 one longer than
/// `limit` and with 408 one that arrives too slowly.
pub async fn read_body<B>(
    body: B,
    headers: &http::HeaderMap,
    limit: usize,
    pace: BodyPace,
) -> Result<Bytes, BodyRefusal>
where
    B: Body<Data = Bytes> + Unpin,
    B::Error: std::fmt::Display,
{
    let mut collected = Vec::new();
    read_body_into(body, headers, limit, pace, &mut collected).await?;
    Ok(Bytes::from(collected))
}

/// [`read_body`], writing each piece to `sink` as it comes (a file, say)
/// instead of holding it; answers the body's length.
pub async fn read_body_into<B>(
    mut body: B,
    headers: &http::HeaderMap,
    limit: usize,
    pace: BodyPace,
    sink: &mut (impl tokio::io::AsyncWrite + Unpin),
) -> Result<usize, BodyRefusal>
where
    B: Body<Data = Bytes> + Unpin,
    B::Error: std::fmt::Display,
{
    let too_large = || {
        problem::response(
            StatusCode::PAYLOAD_TOO_LARGE,
            "body-too-large",
            "Request body too large",
            format!("the request body is larger than this service's limit of {limit} bytes"),
        )
    };
    let declared = headers
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    if declared.is_some_and(|n| n > (limit + MAX_DRAIN_BYTES) as u64) {
        // Too much to read just to refuse it: answer, and close the connection.
        return Err(BodyRefusal::TooLarge(closing(too_large())));
    }
    if declared.is_some_and(|n| n > limit as u64) {
        return Err(BodyRefusal::TooLarge(refuse(body, too_large()).await));
    }
    let started = Instant::now();
    let mut received = 0;
    loop {
        let deadline = pace.deadline(started, received);
        let frame = match tokio::time::timeout_at(deadline.into(), body.frame()).await {
            Ok(Some(frame)) => frame,
            Ok(None) => break,
            Err(_) => {
                let detail = format!(
                    "the request body did not arrive in time: {received} bytes in {} ms",
                    started.elapsed().as_millis()
                );
                let response = problem::response(
                    StatusCode::REQUEST_TIMEOUT,
                    "body-timeout",
                    "Request body too slow",
                    detail,
                );
                return Err(BodyRefusal::TooSlow(closing(response)));
            }
        };
        let frame = frame.map_err(|e| {
            BodyRefusal::Broken(closing(problem::response(
                StatusCode::BAD_REQUEST,
                "bad-body",
                "Cannot read the request body",
                e.to_string(),
            )))
        })?;
        let Some(data) = frame.data_ref() else {
            continue;
        };
        if received + data.len() > limit {
            return Err(BodyRefusal::TooLarge(refuse(body, too_large()).await));
        }
        received += data.len();
        if let Err(e) = sink.write_all(data).await {
            let response = problem::response(
                StatusCode::INSUFFICIENT_STORAGE,
                "cannot-store-body",
                "Cannot keep the request body",
                e.to_string(),
            );
            return Err(BodyRefusal::Broken(closing(response)));
        }
    }
    Ok(received)
}

/// `response`, with the connection closed after it.
pub fn closing(mut response: HttpResponse) -> HttpResponse {
    response
        .headers_mut()
        .insert(header::CONNECTION, HeaderValue::from_static("close"));
    response
}

/// Answers `response` without serving the request. What is left of the
/// body is read and dropped first, up to [`MAX_DRAIN_BYTES`] and
/// [`DRAIN_TIMEOUT`], so that a client still sending it gets to read the
/// answer; past those bounds the connection is closed instead.
pub async fn refuse<B: Body<Data = Bytes> + Unpin>(mut body: B, response: HttpResponse) -> HttpResponse {
    let drained = tokio::time::timeout(DRAIN_TIMEOUT, async {
        let mut seen = 0;
        while let Some(frame) = body.frame().await {
            let Ok(frame) = frame else { return false };
            seen += frame.data_ref().map_or(0, Bytes::len);
            if seen > MAX_DRAIN_BYTES {
                return false;
            }
        }
        true
    })
    .await;
    if !matches!(drained, Ok(true)) {
        return closing(response);
    }
    response
}
