//! Rate limits as the config writes them: `10/minute`, a burst, and who
//! shares a bucket. The limiters that enforce them are in `limits::rates`.

use std::fmt;
use std::num::NonZeroU32;
use std::str::FromStr;
use std::time::Duration;

use super::routes::RoutePattern;

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

/// The rate limits of one component, as configured.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct RateLimitConfig {
    /// Applies to every request to the component.
    pub component: Option<RateLimit>,
    /// Apply, in addition, to requests that match the pattern.
    pub routes: Vec<(RoutePattern, RateLimit)>,
}

#[cfg(test)]
mod tests {
    use super::*;

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
}
