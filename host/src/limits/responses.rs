//! Response bytes the host holds for clients that have not read them yet.
//! A response handed to the connection stays in memory until the socket
//! takes it; a client that reads slowly, or not at all, would keep it there.
//! So the host has a budget for such bytes ([`ResponseBudget`]), each client
//! address a share of it, and each connection counts what it owes
//! ([`Owed`]): charged as its response bodies are handed over, paid as its
//! socket takes them. A request is admitted only if the response it is
//! expected to make ([`ResponseSize`], learned from the component's recent
//! responses) fits, and is otherwise refused before it runs.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// The host's budget for response bytes written to connections but not yet
/// taken by their sockets.
#[derive(Debug)]
pub struct ResponseBudget {
    max: usize,
    per_client: usize,
    used: AtomicUsize,
}

/// What one client address owes, across its connections.
#[derive(Debug, Default)]
pub struct ClientOwed {
    used: AtomicUsize,
}

/// Why a request's response does not fit.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum Full {
    #[error("the host holds {used} bytes of responses its clients have not read, of {max} allowed")]
    Host { used: usize, max: usize },
    #[error("this client has {used} bytes of responses it has not read, of {max} allowed")]
    Client { used: usize, max: usize },
}

impl ResponseBudget {
    pub fn new(max: usize, per_client: usize) -> Arc<Self> {
        Arc::new(ResponseBudget {
            max,
            per_client,
            used: AtomicUsize::new(0),
        })
    }

    /// Bytes held now.
    pub fn used(&self) -> usize {
        self.used.load(Ordering::Relaxed)
    }
}

/// What one connection owes: charged as response bodies are handed to it,
/// paid as its socket takes them. A body's frame is one buffer, freed only
/// once the socket has taken all of it, so it stays owed whole until then.
/// Dropping it (the connection closed) pays everything.
#[derive(Debug)]
pub struct Owed {
    budget: Arc<ResponseBudget>,
    /// `None` for a trusted proxy, which many clients share: it is held to
    /// the host's budget only.
    client: Option<Arc<ClientOwed>>,
    frames: Mutex<Frames>,
}

/// The frames a connection was handed and its socket has not taken whole.
#[derive(Debug, Default)]
struct Frames {
    sizes: VecDeque<usize>,
    /// What the socket took of the first of them.
    taken: usize,
}

/// Bytes set aside for a response that is being made, given back when the
/// response's first bytes are charged or when it is dropped.
#[derive(Debug)]
pub struct Reservation {
    owed: Arc<Owed>,
    bytes: usize,
}

impl Owed {
    pub fn new(budget: Arc<ResponseBudget>, client: Option<Arc<ClientOwed>>) -> Arc<Self> {
        Arc::new(Owed {
            budget,
            client,
            frames: Mutex::default(),
        })
    }

    /// Admits a request whose response is expected to be `expected` bytes,
    /// setting them aside, if they fit; with `shared`, within the client's
    /// share too (a request another host sent on was held to its client's
    /// share there, and shares this connection with other clients). A
    /// response expected to be large (past a sixteenth of the budget) may
    /// fill three quarters of it, so slow readers of large responses leave
    /// room for everyone else's small ones; whatever nothing is held for is
    /// admitted. Checked and set aside at once: requests admitted together
    /// cannot pass the budget together.
    pub fn admit(self: &Arc<Self>, expected: usize, shared: bool) -> Result<Reservation, Full> {
        let budget = &self.budget;
        let client = self.client.as_ref().filter(|_| shared);
        if let Some(client) = client {
            reserve(&client.used, expected, budget.per_client).map_err(|used| Full::Client {
                used,
                max: budget.per_client,
            })?;
        }
        let limit = if expected > budget.max / 16 {
            budget.max / 4 * 3
        } else {
            budget.max
        };
        if let Err(used) = reserve(&budget.used, expected, limit) {
            if let Some(client) = client {
                client.used.fetch_sub(expected, Ordering::Relaxed);
            }
            return Err(Full::Host { used, max: budget.max });
        }
        if let (Some(client), None) = (&self.client, client) {
            client.used.fetch_add(expected, Ordering::Relaxed);
        }
        Ok(Reservation {
            owed: Arc::clone(self),
            bytes: expected,
        })
    }

    /// Whether a response expected to be `expected` bytes fits now (see
    /// [`Owed::admit`]), setting nothing aside.
    pub fn fits(&self, expected: usize, shared: bool) -> Result<(), Full> {
        let budget = &self.budget;
        let used = budget.used();
        let limit = if expected > budget.max / 16 {
            budget.max / 4 * 3
        } else {
            budget.max
        };
        if used > 0 && used.saturating_add(expected) > limit {
            return Err(Full::Host { used, max: budget.max });
        }
        if let Some(client) = self.client.as_ref().filter(|_| shared) {
            let used = client.used.load(Ordering::Relaxed);
            if used > 0 && used.saturating_add(expected) > budget.per_client {
                return Err(Full::Client {
                    used,
                    max: budget.per_client,
                });
            }
        }
        Ok(())
    }

    /// A response body handed the connection a frame of `bytes`.
    pub fn charge(&self, bytes: usize) {
        if bytes == 0 {
            return;
        }
        self.frames.lock().expect("frames lock").sizes.push_back(bytes);
        self.add(bytes);
    }

    /// The socket took `bytes` (head and framing included, which were never
    /// charged: they count toward the frame being written).
    pub fn pay(&self, bytes: usize) {
        let mut paid = 0;
        {
            let mut frames = self.frames.lock().expect("frames lock");
            frames.taken += bytes;
            while let Some(&first) = frames.sizes.front() {
                if frames.taken < first {
                    break;
                }
                frames.taken -= first;
                frames.sizes.pop_front();
                paid += first;
            }
            if frames.sizes.is_empty() {
                frames.taken = 0;
            }
        }
        self.remove(paid);
    }

    /// Whether this connection holds response bytes its client has not taken.
    pub fn owes(&self) -> bool {
        !self.frames.lock().expect("frames lock").sizes.is_empty()
    }

    fn add(&self, bytes: usize) {
        self.budget.used.fetch_add(bytes, Ordering::Relaxed);
        if let Some(client) = &self.client {
            client.used.fetch_add(bytes, Ordering::Relaxed);
        }
    }

    fn remove(&self, bytes: usize) {
        if bytes == 0 {
            return;
        }
        self.budget.used.fetch_sub(bytes, Ordering::Relaxed);
        if let Some(client) = &self.client {
            client.used.fetch_sub(bytes, Ordering::Relaxed);
        }
    }
}

/// Adds `bytes` to `used` if nothing is used yet or it stays within `max`;
/// else says how much is used.
fn reserve(used: &AtomicUsize, bytes: usize, max: usize) -> Result<(), usize> {
    used.fetch_update(Ordering::Relaxed, Ordering::Relaxed, |now| {
        (now == 0 || now.saturating_add(bytes) <= max).then(|| now.saturating_add(bytes))
    })
    .map(drop)
}

impl Drop for Owed {
    fn drop(&mut self) {
        let frames = std::mem::take(&mut *self.frames.lock().expect("frames lock"));
        self.remove(frames.sizes.iter().sum());
    }
}

impl Drop for Reservation {
    fn drop(&mut self) {
        self.owed.remove(self.bytes);
    }
}

/// How large a component's responses have been lately: the largest one
/// that was sent whole in the last one or two [`SIZE_WINDOW`]s. Small
/// responses do not lower it, only time does, so clients cannot talk it
/// down with cheap requests before asking for large ones.
#[derive(Debug, Default)]
pub struct ResponseSize {
    /// When the current window began, in ms since the process's first one.
    window_ms: AtomicU64,
    current: AtomicUsize,
    previous: AtomicUsize,
}

/// How long a response's size counts for.
pub const SIZE_WINDOW: Duration = Duration::from_secs(30);

impl ResponseSize {
    /// What the next response is expected to be.
    pub fn expected(&self) -> usize {
        self.turn(uptime_ms());
        self.current
            .load(Ordering::Relaxed)
            .max(self.previous.load(Ordering::Relaxed))
    }

    /// A response of `bytes` was sent whole.
    pub fn record(&self, bytes: usize) {
        self.turn(uptime_ms());
        self.current.fetch_max(bytes, Ordering::Relaxed);
    }

    /// Starts a new window if the current one is over.
    fn turn(&self, now_ms: u64) {
        let window = SIZE_WINDOW.as_millis() as u64;
        let start = self.window_ms.load(Ordering::Relaxed);
        if now_ms.saturating_sub(start) < window
            || self
                .window_ms
                .compare_exchange(start, now_ms, Ordering::Relaxed, Ordering::Relaxed)
                .is_err()
        {
            return;
        }
        let last = self.current.swap(0, Ordering::Relaxed);
        let recent = if now_ms.saturating_sub(start) < 2 * window {
            last
        } else {
            0
        };
        self.previous.store(recent, Ordering::Relaxed);
    }
}

/// Milliseconds since the first time this was asked: a monotonic clock,
/// unlike `clock::now_ms`.
fn uptime_ms() -> u64 {
    static START: std::sync::OnceLock<Instant> = std::sync::OnceLock::new();
    START.get_or_init(Instant::now).elapsed().as_millis() as u64
}

#[cfg(test)]
mod tests {
    use super::*;

    const MIB: usize = 1 << 20;

    #[test]
    fn a_connection_owes_what_it_was_handed_until_its_socket_takes_it() {
        let budget = ResponseBudget::new(64 * MIB, 8 * MIB);
        let client = Arc::new(ClientOwed::default());
        let owed = Owed::new(Arc::clone(&budget), Some(Arc::clone(&client)));
        owed.charge(1000);
        owed.charge(500);
        assert!(owed.owes());
        // A frame is one buffer: owed whole until the socket took all of it.
        owed.pay(300);
        assert_eq!(budget.used(), 1500);
        owed.pay(800);
        assert_eq!(budget.used(), 500);
        // Head bytes were never charged: paying more than owed pays it all.
        owed.pay(10_000);
        assert_eq!((budget.used(), owed.owes()), (0, false));
        owed.charge(5000);
        drop(owed);
        assert_eq!(budget.used(), 0, "a closed connection owes nothing");
        assert_eq!(client.used.load(Ordering::Relaxed), 0);
    }

    #[test]
    fn requests_are_refused_past_the_budget_and_past_a_clients_share() {
        let budget = ResponseBudget::new(64 * MIB, 8 * MIB);
        let (a, b) = (Arc::new(ClientOwed::default()), Arc::new(ClientOwed::default()));
        let one = Owed::new(Arc::clone(&budget), Some(Arc::clone(&a)));
        // Nothing held: even a response larger than a share is admitted.
        let reserved = one.admit(10 * MIB, true).unwrap();
        assert_eq!(budget.used(), 10 * MIB);
        assert!(matches!(one.admit(1, true), Err(Full::Client { .. })));
        // Sent on by another host: held to the host's budget only.
        assert!(one.admit(1, false).is_ok());
        drop(reserved);
        assert_eq!(budget.used(), 0);
        one.charge(4 * MIB);
        assert!(one.admit(4 * MIB, true).is_ok());
        assert!(matches!(one.admit(4 * MIB + 1, true), Err(Full::Client { .. })));
        // A proxy's clients fill the host: large responses stop at three
        // quarters, small ones go on to the end.
        let two = Owed::new(Arc::clone(&budget), None);
        two.charge(43 * MIB);
        let three = Owed::new(Arc::clone(&budget), Some(Arc::clone(&b)));
        assert!(matches!(three.admit(5 * MIB, true), Err(Full::Host { .. })));
        assert_eq!(b.used.load(Ordering::Relaxed), 0, "a refusal keeps nothing");
        let small = Owed::new(Arc::clone(&budget), None);
        assert!(small.admit(64 * 1024, true).is_ok());
        two.charge(17 * MIB);
        assert!(matches!(small.admit(64 * 1024, true), Err(Full::Host { .. })));
    }

    #[test]
    fn the_expected_size_is_the_largest_recent_one_and_only_time_lowers_it() {
        let size = ResponseSize::default();
        assert_eq!(size.expected(), 0);
        size.record(8 * MIB);
        for _ in 0..1000 {
            size.record(100);
        }
        assert_eq!(size.expected(), 8 * MIB, "small responses do not talk it down");
        let window = SIZE_WINDOW.as_millis() as u64;
        size.turn(window + 1);
        assert_eq!(size.current.load(Ordering::Relaxed), 0);
        assert_eq!(
            size.previous.load(Ordering::Relaxed),
            8 * MIB,
            "one window on, still counted"
        );
        size.turn(3 * window + 2);
        assert_eq!(size.previous.load(Ordering::Relaxed), 0, "two windows on, forgotten");
    }
}
