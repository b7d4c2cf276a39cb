//! Request rate limits as configured (`config::rates`), enforced per client
//! address (or for everyone at once) with governor's GCRA, with what the
//! `RateLimit-*` headers tell a client about where it stands.
//!
//! Memory stays bounded whatever the number of clients: idle clients are
//! evicted periodically, and past `max_clients` tracked addresses every
//! further request shares one overflow bucket until eviction makes room.

use std::net::{IpAddr, Ipv6Addr};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use governor::clock::{Clock, DefaultClock};
use governor::middleware::StateInformationMiddleware;
use governor::state::keyed::DefaultKeyedStateStore;
use governor::{Quota, RateLimiter};

use crate::config::{RateLimit, RateLimitConfig, RoutePattern, Scope};

/// The key one client is counted under: its IPv4 address, or its IPv6 /64,
/// since a single host owns a whole /64.
pub fn client_key(addr: IpAddr) -> IpAddr {
    match addr {
        IpAddr::V4(_) => addr,
        IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
            Some(v4) => IpAddr::V4(v4),
            None => IpAddr::V6(Ipv6Addr::from(v6.to_bits() & (u128::MAX << 64))),
        },
    }
}

/// The live limiters of one component.
pub struct RateLimits {
    component: Option<Limiter>,
    routes: Vec<(RoutePattern, Limiter)>,
}

impl RateLimits {
    pub fn new(config: &RateLimitConfig, max_clients: usize) -> Self {
        RateLimits {
            component: config.component.map(|limit| Limiter::new(limit, max_clients)),
            routes: config
                .routes
                .iter()
                .map(|(pattern, limit)| (pattern.clone(), Limiter::new(*limit, max_clients)))
                .collect(),
        }
    }

    /// Takes the request from every bucket that applies, the most specific
    /// first, and stops at the first that refuses. The verdict reported is
    /// the refusal, or the allowance with the fewest requests left; `None`
    /// when no limit applies.
    pub fn check(&self, method: &str, path: &str, client: IpAddr) -> Option<Verdict> {
        let applicable = self
            .routes
            .iter()
            .filter(|(pattern, _)| pattern.matches(method, path))
            .map(|(_, limiter)| limiter)
            .chain(&self.component);
        let mut strictest: Option<Verdict> = None;
        for limiter in applicable {
            let verdict = limiter.check(client);
            if !verdict.allowed {
                return Some(verdict);
            }
            if strictest.is_none_or(|s| verdict.remaining < s.remaining) {
                strictest = Some(verdict);
            }
        }
        strictest
    }

    /// Forgets idle clients in every limiter.
    pub fn evict_idle(&self) {
        for limiter in self.component.iter().chain(self.routes.iter().map(|(_, l)| l)) {
            limiter.evict_idle();
        }
    }
}

type Keyed = RateLimiter<IpAddr, DefaultKeyedStateStore<IpAddr>, DefaultClock, StateInformationMiddleware>;

/// The key every request uses under [`Scope::Global`], and the key of the
/// overflow bucket when too many clients are tracked.
const SHARED_KEY: IpAddr = IpAddr::V6(Ipv6Addr::UNSPECIFIED);
/// Emergency eviction when the table is full runs at most this often.
const EVICT_AT_MOST_EVERY: Duration = Duration::from_secs(1);

/// The state of one limit.
pub struct Limiter {
    limit: RateLimit,
    buckets: Keyed,
    max_clients: usize,
    last_eviction: Mutex<Instant>,
}

/// The verdict on one request, with what the `RateLimit-*` headers report.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Verdict {
    pub allowed: bool,
    pub limit: u32,
    pub remaining: u32,
    /// Seconds until the bucket is full again.
    pub reset_secs: u64,
    /// Seconds until a refused client may try again.
    pub retry_after_secs: u64,
}

impl Limiter {
    pub fn new(limit: RateLimit, max_clients: usize) -> Self {
        let quota = Quota::with_period(limit.rate.period / limit.rate.count.get())
            .expect("a rate's period is positive")
            .allow_burst(limit.burst);
        Limiter {
            limit,
            buckets: RateLimiter::keyed(quota).with_middleware(),
            max_clients,
            last_eviction: Mutex::new(Instant::now()),
        }
    }

    pub fn limit(&self) -> &RateLimit {
        &self.limit
    }

    /// Takes one request from the client's bucket, if it has one left.
    pub fn check(&self, client: IpAddr) -> Verdict {
        let key = match self.limit.scope {
            Scope::Global => SHARED_KEY,
            Scope::Client => self.client_key(client),
        };
        let burst = self.limit.burst.get();
        let interval = self.buckets_interval();
        match self.buckets.check_key(&key) {
            Ok(state) => {
                let remaining = state.remaining_burst_capacity();
                Verdict {
                    allowed: true,
                    limit: burst,
                    remaining,
                    reset_secs: ceil_secs(interval * (burst - remaining)),
                    retry_after_secs: 0,
                }
            }
            Err(not_until) => {
                let wait = not_until.wait_time_from(DefaultClock::default().now());
                Verdict {
                    allowed: false,
                    limit: burst,
                    remaining: 0,
                    reset_secs: ceil_secs(interval * burst),
                    retry_after_secs: ceil_secs(wait).max(1),
                }
            }
        }
    }

    fn buckets_interval(&self) -> Duration {
        self.limit.rate.period / self.limit.rate.count.get()
    }

    /// The key of a client, or the overflow key when the table is full.
    fn client_key(&self, client: IpAddr) -> IpAddr {
        let key = client_key(client);
        if self.buckets.len() < self.max_clients {
            return key;
        }
        let mut last = self.last_eviction.lock().expect("eviction lock");
        if last.elapsed() >= EVICT_AT_MOST_EVERY {
            *last = Instant::now();
            self.evict_idle();
        }
        if self.buckets.len() < self.max_clients {
            key
        } else {
            SHARED_KEY
        }
    }

    /// Forgets clients whose buckets are full again, as if never seen.
    pub fn evict_idle(&self) {
        self.buckets.retain_recent();
        self.buckets.shrink_to_fit();
    }

    /// How many clients are tracked.
    pub fn tracked_clients(&self) -> usize {
        self.buckets.len()
    }
}

fn ceil_secs(duration: Duration) -> u64 {
    duration.as_secs() + u64::from(duration.subsec_nanos() > 0)
}

#[cfg(test)]
mod tests {
    use std::num::NonZeroU32;

    use super::*;

    fn limit(rate: &str, burst: u32, scope: Scope) -> RateLimit {
        RateLimit {
            rate: rate.parse().unwrap(),
            burst: NonZeroU32::new(burst).unwrap(),
            scope,
        }
    }

    #[test]
    fn the_eleventh_request_in_a_minute_is_refused() {
        let limiter = Limiter::new(limit("10/minute", 10, Scope::Client), 1000);
        let client: IpAddr = "192.0.2.1".parse().unwrap();
        for n in 1..=10 {
            let verdict = limiter.check(client);
            assert!(verdict.allowed, "request {n}");
            assert_eq!(verdict.remaining, 10 - n);
        }
        let refused = limiter.check(client);
        assert!(!refused.allowed);
        assert_eq!((refused.limit, refused.remaining), (10, 0));
        assert!((5..=6).contains(&refused.retry_after_secs), "{refused:?}");
        assert!(
            limiter.check("192.0.2.2".parse().unwrap()).allowed,
            "other clients have their own bucket"
        );
    }

    #[test]
    fn global_limits_share_one_bucket() {
        let limiter = Limiter::new(limit("2/minute", 2, Scope::Global), 1000);
        assert!(limiter.check("192.0.2.1".parse().unwrap()).allowed);
        assert!(limiter.check("192.0.2.2".parse().unwrap()).allowed);
        assert!(!limiter.check("192.0.2.3".parse().unwrap()).allowed);
    }

    #[test]
    fn ipv6_clients_are_keyed_per_64() {
        let limiter = Limiter::new(limit("1/minute", 1, Scope::Client), 1000);
        assert!(limiter.check("2001:db8::1".parse().unwrap()).allowed);
        assert!(!limiter.check("2001:db8::2".parse().unwrap()).allowed, "same /64");
        assert!(limiter.check("2001:db8:0:1::1".parse().unwrap()).allowed, "another /64");
        assert!(limiter.check("::ffff:192.0.2.1".parse().unwrap()).allowed);
        assert!(
            !limiter.check("192.0.2.1".parse().unwrap()).allowed,
            "mapped IPv4 is the IPv4 client"
        );
    }

    /// A million distinct clients: the table never holds more than its
    /// bound, and idle clients are evicted.
    #[test]
    fn memory_stays_bounded_under_a_flood_of_addresses() {
        let max_clients = 50_000;
        let limiter = Limiter::new(limit("1000/second", 1, Scope::Client), max_clients);
        for n in 0..1_000_000u32 {
            let verdict = limiter.check(IpAddr::V4(n.into()));
            assert!(verdict.allowed || n >= max_clients as u32);
            assert!(limiter.tracked_clients() <= max_clients + 1);
        }
        assert!(limiter.tracked_clients() <= max_clients + 1);
        // Each bucket refills within a millisecond; then every client is idle.
        std::thread::sleep(Duration::from_millis(20));
        limiter.evict_idle();
        assert_eq!(limiter.tracked_clients(), 0);
    }
}
