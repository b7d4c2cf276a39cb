//! A response body whose bytes its connection owes (`limits::responses`)
//! from when hyper takes them until the socket does: charged frame by
//! frame as the body is read, so a streamed body is counted as it flows.
//! Until its first bytes, the request's reservation stands in for them;
//! once it has been sent whole, its size tells the component's expected
//! response size (one cut short, or never sent, as for `HEAD`, tells
//! nothing).

use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use bytes::Bytes;
use hyper::body::{Body, Frame, SizeHint};

use super::{BoxError, ResponseBody};
use crate::limits::responses::{Owed, Reservation, ResponseSize};

/// What a response admitted against the budget holds.
pub struct Held {
    pub reservation: Reservation,
    /// The component's recent response sizes, told this one's.
    pub size: Arc<ResponseSize>,
}

/// A response body on its way to the client, charged to its connection.
pub struct Charged {
    inner: ResponseBody,
    owed: Arc<Owed>,
    reservation: Option<Reservation>,
    size: Option<Arc<ResponseSize>>,
    bytes: usize,
    /// It was read to its end.
    whole: bool,
}

impl Charged {
    pub fn new(inner: ResponseBody, owed: Arc<Owed>, held: Option<Held>) -> Self {
        let (reservation, size) = held.map(|h| (h.reservation, h.size)).unzip();
        Charged {
            inner,
            owed,
            reservation,
            size,
            bytes: 0,
            whole: false,
        }
    }
}

impl Body for Charged {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let frame = std::task::ready!(Pin::new(&mut self.inner).poll_frame(cx));
        if let Some(Ok(frame)) = &frame
            && let Some(data) = frame.data_ref()
        {
            self.owed.charge(data.len());
            self.bytes += data.len();
            self.reservation = None;
        }
        // Ended: nothing more, or a last frame that says so.
        self.whole = match &frame {
            None => true,
            Some(Ok(_)) => self.inner.is_end_stream(),
            Some(Err(_)) => false,
        };
        Poll::Ready(frame)
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

impl Drop for Charged {
    fn drop(&mut self) {
        if let Some(size) = self.size.as_ref().filter(|_| self.whole) {
            size.record(self.bytes);
        }
    }
}
