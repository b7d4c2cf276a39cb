//! Statement deadlines. The progress handler stops a statement between
//! steps of SQLite's virtual machine; one watchdog thread also interrupts,
//! through the connection's interrupt handle, any statement still running
//! past its deadline, whatever it is doing.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock, Weak};
use std::time::{Duration, Instant};

/// How often the watchdog looks at running statements.
const WATCH_EVERY: Duration = Duration::from_millis(5);
/// No deadline: no statement is running.
const NONE: u64 = u64::MAX;

/// The deadline of whatever statement a connection runs now.
pub struct Deadline {
    /// Nanoseconds since [`clock_base`]; read by the progress handler.
    at_ns: AtomicU64,
    /// Held while the watchdog interrupts and while a statement ends, so
    /// an interrupt meant for a late statement never reaches the next one.
    ending: Mutex<()>,
    interrupt: rusqlite::InterruptHandle,
}

impl Deadline {
    /// A deadline for `conn`, watched until the returned `Arc` is dropped.
    pub fn watch(conn: &rusqlite::Connection) -> Arc<Deadline> {
        let deadline = Arc::new(Deadline {
            at_ns: AtomicU64::new(NONE),
            ending: Mutex::new(()),
            interrupt: conn.get_interrupt_handle(),
        });
        watched().lock().expect("watchdog lock").push(Arc::downgrade(&deadline));
        deadline
    }

    /// Runs `statement` with `budget` to finish in.
    pub fn within<R>(&self, budget: Duration, statement: impl FnOnce() -> R) -> R {
        let at = now_ns().saturating_add(u64::try_from(budget.as_nanos()).unwrap_or(NONE));
        self.at_ns.store(at.min(NONE - 1), Ordering::Relaxed);
        let result = statement();
        let _ending = self.ending.lock().expect("deadline lock");
        self.at_ns.store(NONE, Ordering::Relaxed);
        result
    }

    /// Whether the running statement is past its deadline.
    pub fn passed(&self) -> bool {
        now_ns() > self.at_ns.load(Ordering::Relaxed)
    }
}

fn clock_base() -> Instant {
    static BASE: OnceLock<Instant> = OnceLock::new();
    *BASE.get_or_init(Instant::now)
}

fn now_ns() -> u64 {
    u64::try_from(clock_base().elapsed().as_nanos()).unwrap_or(NONE)
}

/// Every live connection's deadline; the watchdog thread starts with the first.
fn watched() -> &'static Mutex<Vec<Weak<Deadline>>> {
    static WATCHED: OnceLock<Mutex<Vec<Weak<Deadline>>>> = OnceLock::new();
    WATCHED.get_or_init(|| {
        std::thread::Builder::new()
            .name("corral-sql-watchdog".into())
            .spawn(watch)
            .expect("spawning the SQL watchdog thread");
        Mutex::new(Vec::new())
    })
}

fn watch() {
    loop {
        std::thread::sleep(WATCH_EVERY);
        let live: Vec<Arc<Deadline>> = {
            let mut watched = watched().lock().expect("watchdog lock");
            watched.retain(|w| w.strong_count() > 0);
            watched.iter().filter_map(Weak::upgrade).collect()
        };
        for deadline in live {
            if deadline.passed() {
                let _ending = deadline.ending.lock().expect("deadline lock");
                if deadline.passed() {
                    deadline.interrupt.interrupt();
                }
            }
        }
    }
}
