//! Rate limits shared by every host of a cluster, in Redis: the same GCRA
//! as the local limiters, run atomically by a Lua script that checks and
//! takes from every bucket a request falls under, in one round trip.
//! Buckets expire in Redis once full again.
//!
//! When Redis cannot answer in time, the request is never refused for
//! that: this host counts it locally, at the configured rate divided by the
//! number of live hosts, and tries Redis again a moment later.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use super::rates::{RateLimits, Verdict, client_key};
use crate::config::{Rate, RateLimit, RateLimitConfig, Scope};

/// How long a check may wait for Redis before the local limiter decides.
const REDIS_TIMEOUT: Duration = Duration::from_millis(100);
/// After Redis failed, requests go straight to the local limiter this long.
const RETRY_AFTER: Duration = Duration::from_secs(1);

/// GCRA over several buckets at once: KEYS are the buckets, ARGV a pair
/// (emission interval in µs, burst) per bucket. Refuses if any bucket is
/// empty, taking from none; else takes from all. Answers
/// {allowed, limit, remaining, reset_us, retry_after_us} for the refusing
/// bucket, or for the one with the fewest requests left. Times are in
/// microseconds (exact in Lua's doubles until 2255) and stored with
/// `%.0f`, since Lua writes numbers with 14 significant digits.
const GCRA: &str = r#"
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000000 + tonumber(t[2])
local tats = {}
local strictest = nil
for i = 1, #KEYS do
  local interval = tonumber(ARGV[2 * i - 1])
  local burst = tonumber(ARGV[2 * i])
  local tolerance = interval * burst
  local tat = tonumber(redis.call('GET', KEYS[i])) or now
  if tat < now then tat = now end
  local ahead = tat + interval - now
  if ahead > tolerance then
    return {0, burst, 0, tat - now, ahead - tolerance}
  end
  tats[i] = tat + interval
  local remaining = math.floor((tolerance - ahead) / interval)
  if strictest == nil or remaining < strictest[3] then
    strictest = {1, burst, remaining, ahead, 0}
  end
end
for i = 1, #KEYS do
  redis.call('SET', KEYS[i], string.format('%.0f', tats[i]), 'PX', math.max(1, math.ceil((tats[i] - now) / 1000)))
end
return strictest
"#;

/// Which limiter decided.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Decided {
    Shared,
    /// Redis did not answer: this host alone, at its share of the rate.
    Local,
}

/// A local limiter, and the limits it was made for.
type Fallback = (RateLimitConfig, Arc<RateLimits>);

/// The rate limits of every component, kept in Redis.
pub struct SharedLimits {
    redis: redis::aio::ConnectionManager,
    script: redis::Script,
    /// Redis answered the last check.
    up: AtomicBool,
    /// When Redis last failed, in ms since `started`.
    failed_at_ms: AtomicU64,
    started: Instant,
    max_clients: usize,
    /// Local limiters at each component's share of its rates, by the
    /// number of hosts sharing them, with the limits they were made for
    /// (a reload that changes them starts afresh, as Redis keys do).
    fallback: Mutex<HashMap<(String, usize), Fallback>>,
}

impl SharedLimits {
    /// Limits kept at `url`. Connects lazily: a Redis down at start is a
    /// Redis down, not a host that fails to start.
    pub fn new(url: &str, max_clients: usize) -> anyhow::Result<SharedLimits> {
        let client = redis::Client::open(url)?;
        let config = redis::aio::ConnectionManagerConfig::new()
            .set_connection_timeout(Some(REDIS_TIMEOUT))
            .set_response_timeout(Some(REDIS_TIMEOUT))
            .set_number_of_retries(1)
            .set_max_delay(Duration::from_millis(500));
        let redis = redis::aio::ConnectionManager::new_lazy_with_config(client, config)?;
        Ok(SharedLimits {
            redis,
            script: redis::Script::new(GCRA),
            up: AtomicBool::new(true),
            failed_at_ms: AtomicU64::new(0),
            started: Instant::now(),
            max_clients,
            fallback: Mutex::default(),
        })
    }

    /// Takes the request from every bucket of `component` it falls under,
    /// in Redis; or, while Redis cannot answer, from local buckets at this
    /// host's share of the rates. `None` when no limit applies.
    pub async fn check(
        &self,
        component: &str,
        config: &RateLimitConfig,
        method: &str,
        path: &str,
        client: IpAddr,
        hosts: usize,
    ) -> (Option<Verdict>, Decided) {
        let applicable: Vec<(String, &RateLimit)> = config
            .routes
            .iter()
            .filter(|(pattern, _)| pattern.matches(method, path))
            .map(|(pattern, limit)| (pattern.to_string(), limit))
            .chain(config.component.iter().map(|limit| ("*".to_string(), limit)))
            .collect();
        if applicable.is_empty() {
            return (None, Decided::Shared);
        }
        if self.resting() {
            return (
                self.local(component, config, method, path, client, hosts),
                Decided::Local,
            );
        }
        let mut invocation = self.script.prepare_invoke();
        for (pattern, limit) in &applicable {
            let who = match limit.scope {
                Scope::Client => client_key(client).to_string(),
                Scope::Global => "*".to_string(),
            };
            // The limit itself is in the key: a changed limit starts afresh.
            invocation.key(format!("corral:rl:{component}:{pattern}:{limit}:{who}"));
            let interval = limit.rate.period.as_micros() as u64 / u64::from(limit.rate.count.get());
            invocation.arg(interval.max(1)).arg(limit.burst.get());
        }
        let mut redis = self.redis.clone();
        let answer = tokio::time::timeout(REDIS_TIMEOUT, invocation.invoke_async::<Vec<i64>>(&mut redis)).await;
        match answer {
            Ok(Ok(values)) if values.len() == 5 => {
                if !self.up.swap(true, Ordering::AcqRel) {
                    tracing::info!("the rate limit store answers again: limits are shared");
                }
                (Some(verdict(&values)), Decided::Shared)
            }
            failure => {
                let why = match failure {
                    Ok(Ok(values)) => format!("an unexpected answer {values:?}"),
                    Ok(Err(e)) => e.to_string(),
                    Err(_) => format!("no answer within {REDIS_TIMEOUT:?}"),
                };
                self.failed_at_ms
                    .store(self.started.elapsed().as_millis() as u64, Ordering::Release);
                if self.up.swap(false, Ordering::AcqRel) {
                    tracing::warn!(
                        "the rate limit store failed ({why}): each host limits on its own, at its share of the rates"
                    );
                }
                (
                    self.local(component, config, method, path, client, hosts),
                    Decided::Local,
                )
            }
        }
    }

    /// Whether Redis failed a moment ago, and is left alone for now.
    fn resting(&self) -> bool {
        if self.up.load(Ordering::Acquire) {
            return false;
        }
        let since = self.started.elapsed().as_millis() as u64 - self.failed_at_ms.load(Ordering::Acquire);
        since < RETRY_AFTER.as_millis() as u64
    }

    fn local(
        &self,
        component: &str,
        config: &RateLimitConfig,
        method: &str,
        path: &str,
        client: IpAddr,
        hosts: usize,
    ) -> Option<Verdict> {
        let limits = {
            let mut fallback = self.fallback.lock().expect("fallback lock");
            let key = (component.to_string(), hosts.max(1));
            let made = fallback.get(&key).filter(|(made_for, _)| made_for == config);
            match made {
                Some((_, limits)) => Arc::clone(limits),
                None => {
                    let limits = Arc::new(RateLimits::new(&share(config, hosts), self.max_clients));
                    fallback.insert(key, (config.clone(), Arc::clone(&limits)));
                    limits
                }
            }
        };
        limits.check(method, path, client)
    }

    /// Forgets idle clients of the local limiters.
    pub fn evict_idle(&self) {
        for (_, limits) in self.fallback.lock().expect("fallback lock").values() {
            limits.evict_idle();
        }
    }
}

/// `config` with each rate divided among `hosts`: each request takes
/// `hosts` times as long to earn back, and the burst is split.
fn share(config: &RateLimitConfig, hosts: usize) -> RateLimitConfig {
    let hosts = u32::try_from(hosts.max(1)).unwrap_or(u32::MAX);
    let split = |limit: &RateLimit| RateLimit {
        rate: Rate {
            count: limit.rate.count,
            period: limit.rate.period * hosts,
        },
        burst: std::num::NonZeroU32::new((limit.burst.get() / hosts).max(1)).expect("at least one"),
        scope: limit.scope,
    };
    RateLimitConfig {
        component: config.component.as_ref().map(split),
        routes: config.routes.iter().map(|(p, l)| (p.clone(), split(l))).collect(),
    }
}

fn verdict(values: &[i64]) -> Verdict {
    let secs = |us: i64| (us.max(0) as u64).div_ceil(1_000_000);
    Verdict {
        allowed: values[0] == 1,
        limit: values[1].clamp(0, i64::from(u32::MAX)) as u32,
        remaining: values[2].clamp(0, i64::from(u32::MAX)) as u32,
        reset_secs: secs(values[3]),
        retry_after_secs: if values[0] == 1 { 0 } else { secs(values[4]).max(1) },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_host_s_share_splits_the_rate_and_the_burst() {
        let limit = RateLimit {
            rate: "10/minute".parse().unwrap(),
            burst: std::num::NonZeroU32::new(10).unwrap(),
            scope: Scope::Client,
        };
        let config = RateLimitConfig {
            component: Some(limit),
            routes: Vec::new(),
        };
        let shared = share(&config, 3).component.unwrap();
        assert_eq!(shared.rate.period, Duration::from_secs(180));
        assert_eq!(shared.burst.get(), 3);
        assert_eq!(share(&config, 1).component.unwrap(), limit);
    }
}
