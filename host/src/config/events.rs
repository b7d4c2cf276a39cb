//! Events as the config writes them: the topics a component may publish,
//! and its subscription (topic patterns, concurrency, attempts, backoff,
//! lease, ordering, exactly-once effects). Topics are dotted names
//! (`orders.status-changed`); a pattern's `*` stands for one segment and a
//! final `>` for one or more.

use std::fmt;
use std::str::FromStr;

use super::settings::{Count, Millis};

/// The longest topic name.
pub const MAX_TOPIC_LEN: usize = 200;

/// A topic name or pattern, checked.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct TopicPattern(String);

impl TopicPattern {
    /// Whether `topic` (a name, not a pattern) matches.
    pub fn matches(&self, topic: &str) -> bool {
        let mut names = topic.split('.');
        for segment in self.0.split('.') {
            match (segment, names.next()) {
                (">", Some(_)) => return true,
                ("*", Some(_)) => {}
                (literal, Some(name)) if literal == name => {}
                _ => return false,
            }
        }
        names.next().is_none()
    }

    /// Whether this is a plain topic name, without wildcards.
    pub fn is_name(&self) -> bool {
        !self.0.split('.').any(|s| s == "*" || s == ">")
    }

    /// Whether some topic matches both.
    pub fn overlaps(&self, other: &TopicPattern) -> bool {
        let (mut a, mut b) = (self.0.split('.'), other.0.split('.'));
        loop {
            match (a.next(), b.next()) {
                (None, None) => return true,
                (Some(">"), Some(_)) | (Some(_), Some(">")) => return true,
                (Some(x), Some(y)) if x == "*" || y == "*" || x == y => {}
                _ => return false,
            }
        }
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl FromStr for TopicPattern {
    type Err = String;

    fn from_str(text: &str) -> Result<Self, Self::Err> {
        let invalid = |why: &str| format!("{text:?} is not a topic such as \"orders.created\" or \"orders.*\": {why}");
        if text.is_empty() || text.len() > MAX_TOPIC_LEN {
            return Err(invalid(&format!("use 1 to {MAX_TOPIC_LEN} characters")));
        }
        let segments: Vec<&str> = text.split('.').collect();
        for (i, segment) in segments.iter().enumerate() {
            let plain = !segment.is_empty()
                && segment
                    .chars()
                    .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-' || c == '_');
            let wildcard = *segment == "*" || (*segment == ">" && i == segments.len() - 1);
            if !plain && !wildcard {
                return Err(invalid(
                    "segments are lowercase letters, digits, `-` or `_`, or `*`, or a final `>`",
                ));
            }
        }
        Ok(TopicPattern(text.to_string()))
    }
}

impl fmt::Display for TopicPattern {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// Checks a topic a guest publishes to: a name, not a pattern.
pub fn check_topic(topic: &str) -> Result<(), String> {
    let pattern: TopicPattern = topic.parse()?;
    match pattern.is_name() {
        true => Ok(()),
        false => Err(format!("{topic:?} is a pattern; publish to a topic name")),
    }
}

/// How a subscriber sees messages with the same ordering key.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Ordering {
    /// In any order, several at once.
    None,
    /// One at a time per ordering key, in publish order.
    Key,
}

settings! {
    /// How a component receives the topics it subscribes to, from
    /// `[components.<name>.subscription]`.
    pub struct SubscriptionSettings, read as RawSubscription with {
        #[serde(default)]
        pub topics: Vec<String>,
        pub ordering: Option<String>,
        pub exactly_once: Option<bool>,
    } {
        /// Deliveries handled at once.
        concurrency: Count = "concurrency", 1..=1000, default 4;
        /// Attempts before a message becomes a dead letter.
        max_attempts: Count = "max_attempts", 1..=1000, default 5;
        /// The first retry waits about this long; each next one twice as
        /// long, up to `backoff_max_ms`, with jitter.
        backoff_initial: Millis = "backoff_initial_ms", 1..=3_600_000, default 500;
        backoff_max: Millis = "backoff_max_ms", 1..=86_400_000, default 60_000;
        /// A delivery taken but not settled within this time (its host
        /// died, say) is delivered again.
        lease: Millis = "lease_ms", 100..=3_600_000, default 30_000;
    }
}

/// A component's subscription.
#[derive(Debug, Clone, PartialEq)]
pub struct Subscription {
    pub topics: Vec<TopicPattern>,
    pub settings: SubscriptionSettings,
    pub ordering: Ordering,
    /// The host records each delivery in the subscriber's database in the
    /// handler's transaction, and skips one it has seen.
    pub exactly_once: bool,
}

impl Subscription {
    pub fn matches(&self, topic: &str) -> bool {
        self.pattern_of(topic).is_some()
    }

    /// The first of its patterns that `topic` matches.
    pub fn pattern_of(&self, topic: &str) -> Option<&TopicPattern> {
        self.topics.iter().find(|p| p.matches(topic))
    }
}

/// What a component does with events.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct EventsConfig {
    /// Topics (or patterns) it may publish to; nothing else.
    pub publishes: Vec<TopicPattern>,
    pub subscription: Option<Subscription>,
}

impl EventsConfig {
    pub fn may_publish(&self, topic: &str) -> bool {
        self.published_pattern(topic).is_some()
    }

    /// The first of the patterns it may publish to that `topic` matches:
    /// what metrics name a topic by, so that topics a guest makes up do
    /// not grow them.
    pub fn published_pattern(&self, topic: &str) -> Option<&TopicPattern> {
        self.publishes.iter().find(|p| p.matches(topic))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pattern(text: &str) -> TopicPattern {
        text.parse().unwrap()
    }

    #[test]
    fn patterns_match_by_segment() {
        assert!(pattern("orders.created").matches("orders.created"));
        assert!(!pattern("orders.created").matches("orders.created.late"));
        assert!(pattern("orders.*").matches("orders.created"));
        assert!(!pattern("orders.*").matches("orders"));
        assert!(!pattern("orders.*").matches("orders.a.b"));
        assert!(pattern("orders.>").matches("orders.a.b"));
        assert!(!pattern("orders.>").matches("orders"));
        assert!(pattern("*.deleted").matches("users.deleted"));
    }

    #[test]
    fn names_are_plain_and_checked() {
        for bad in ["", "Orders", "orders..x", "orders.", ".x", "a b", "orders.>.x", "é"] {
            assert!(bad.parse::<TopicPattern>().is_err(), "{bad}");
        }
        assert!(check_topic("users.deleted").is_ok());
        assert!(check_topic("users.*").is_err());
        assert!(pattern("users.*").overlaps(&pattern("*.deleted")));
        assert!(!pattern("users.*").overlaps(&pattern("orders.>")));
        assert!(pattern("a.>").overlaps(&pattern("a.b.c")));
    }
}
