//! Request rate limits: `10/minute` style rates, enforced per client address
//! (or for everyone at once) with governor's GCRA, and the `RateLimit-*`
//! headers that tell a client where it stands.
//!
//! Memory stays bounded whatever the number of clients: idle clients are
//! evicted periodically, and past `max_clients` tracked addresses every
//! further request shares one overflow bucket until eviction makes room.

use std::fmt;
use std::net::{IpAddr, Ipv6Addr};
use std::num::NonZeroU32;
use std::str::FromStr;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use governor::clock::{Clock, DefaultClock};
use governor::middleware::StateInformationMiddleware;
use governor::state::keyed::DefaultKeyedStateStore;
use governor::{Quota, RateLimiter};

use crate::router::RoutePattern;

/// A rate as people write it: `10/minute`, `5/second`, `1000/hour`, `20/day`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Rate {
    pub count: NonZeroU32,
    pub period: Duration,
}

impl FromStr for Rate {
    type Err = String;

    fn from_str(text: &str) -> Result<Self, Self::Err> {
        let invalid = || format!("{text:?} is not a rate such as \"10/minute\" (per second, minute, hour or day)");
        let (count, unit) = text.split_once('/').ok_or_else(invalid)?;
        let count = count.trim().parse::<NonZeroU32>().map_err(|_| invalid())?;
        let seconds = match unit.trim() {
            "s" | "sec" | "second" => 1,
            "m" | "min" | "minute" => 60,
            "h" | "hour" => 3600,
            "d" | "day" => 86_400,
            _ => return Err(invalid()),
        };
        Ok(Rate {
            count,
            period: Duration::from_secs(seconds),
        })
    }
}

impl fmt::Display for Rate {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let unit = match self.period.as_secs() {
            1 => "second",
            60 => "minute",
            3600 => "hour",
            _ => "day",
        };
        write!(f, "{}/{unit}", self.count)
    }
}

/// Who shares a bucket.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Scope {
    /// One bucket per client address (IPv6 clients per /64 network).
    Client,
    /// One bucket for all clients together.
    Global,
}

/// A configured limit.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RateLimit {
    pub rate: Rate,
    /// Requests allowed at once before the rate applies; defaults to the count.
    pub burst: NonZeroU32,
    pub scope: Scope,
}

/// The rate limits of one component, as configured.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct RateLimitConfig {
    /// Applies to every request to the component.
    pub component: Option<RateLimit>,
    /// Apply, in addition, to requests that match the pattern.
    pub routes: Vec<(RoutePattern, RateLimit)>,
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

/// As the config would say it: `10/minute, burst 20, per client`.
impl fmt::Display for RateLimit {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let per = match self.scope {
            Scope::Client => "client",
            Scope::Global => "global",
        };
        write!(f, "{}, burst {}, per {per}", self.rate, self.burst)
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
        let key = crate::client::client_key(client);
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
    use super::*;

    fn limit(rate: &str, burst: u32, scope: Scope) -> RateLimit {
        RateLimit {
            rate: rate.parse().unwrap(),
            burst: NonZeroU32::new(burst).unwrap(),
            scope,
        }
    }

    #[test]
    fn rates_parse_as_people_write_them() {
        let rate: Rate = "10/minute".parse().unwrap();
        assert_eq!((rate.count.get(), rate.period), (10, Duration::from_secs(60)));
        assert_eq!("5/second".parse::<Rate>().unwrap().period, Duration::from_secs(1));
        assert_eq!("1000/hour".parse::<Rate>().unwrap().to_string(), "1000/hour");
        assert_eq!("3 / day".parse::<Rate>().unwrap().period, Duration::from_secs(86_400));
        for bad in ["", "10", "0/minute", "-1/minute", "10/fortnight", "ten/minute", "10/"] {
            assert!(bad.parse::<Rate>().is_err(), "{bad}");
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
