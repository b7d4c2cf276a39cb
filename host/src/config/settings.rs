//! Every numeric setting, declared once: its key in the file, its unit, its
//! range, its default and the field the host reads. One [`settings!`] table
//! gives the shape the file is read into, the resolved struct and its
//! defaults, the resolution with range checks, and the description that
//! `GET /components` shows, so adding a limit touches one line.

use std::time::Duration;

#[cfg(test)]
use super::problems::Problems;

/// How a number in the file becomes the value the host uses.
pub trait Unit {
    type Value: Clone + PartialEq + std::fmt::Debug;
    fn value(n: u64) -> Self::Value;
    fn number(value: &Self::Value) -> u64;
}

/// A plain count.
pub struct Count;
/// KiB in the file, bytes in the host.
pub struct Kib;
/// MiB in the file, bytes in the host.
pub struct Mib;
/// Milliseconds in the file, a `Duration` in the host.
pub struct Millis;

impl Unit for Count {
    type Value = usize;
    fn value(n: u64) -> usize {
        n as usize
    }
    fn number(value: &usize) -> u64 {
        *value as u64
    }
}

impl Unit for Kib {
    type Value = usize;
    fn value(n: u64) -> usize {
        (n << 10) as usize
    }
    fn number(value: &usize) -> u64 {
        (*value >> 10) as u64
    }
}

impl Unit for Mib {
    type Value = usize;
    fn value(n: u64) -> usize {
        (n << 20) as usize
    }
    fn number(value: &usize) -> u64 {
        (*value >> 20) as u64
    }
}

impl Unit for Millis {
    type Value = Duration;
    fn value(n: u64) -> Duration {
        Duration::from_millis(n)
    }
    fn number(value: &Duration) -> u64 {
        value.as_millis() as u64
    }
}

/// Declares a table of settings: `field: Unit = "key", min..=max, default d;`
/// with the default in the file's unit. `with { ... }` adds fields of other
/// kinds to the file's shape.
macro_rules! settings {
    (
        $(#[$doc:meta])*
        pub struct $name:ident, read as $raw:ident $(with { $($extra:tt)* })? {
            $(
                $(#[$field_doc:meta])*
                $field:ident: $unit:ty = $key:literal, $min:literal..=$max:literal, default $default:literal;
            )*
        }
    ) => {
        $(#[$doc])*
        #[derive(Debug, Clone, PartialEq)]
        pub struct $name {
            $( $(#[$field_doc])* pub $field: <$unit as $crate::config::settings::Unit>::Value, )*
        }

        impl Default for $name {
            fn default() -> Self {
                $name { $( $field: <$unit as $crate::config::settings::Unit>::value($default), )* }
            }
        }

        /// As written in the file.
        #[derive(Debug, Default, Clone, serde::Deserialize)]
        pub struct $raw {
            $( #[serde(rename = $key)] $field: Option<u64>, )*
            $( $($extra)* )?
        }

        impl $name {
            /// What `raw` sets, over `defaults`; a value out of range is a
            /// problem at `<key>.<setting>`.
            pub fn resolve(raw: &$raw, defaults: &Self, key: &str, problems: &mut $crate::config::Problems) -> Self {
                let mut resolved = defaults.clone();
                $(
                    if let Some(n) = problems.ranged(format!("{key}.{}", $key), raw.$field, $min, $max) {
                        resolved.$field = <$unit as $crate::config::settings::Unit>::value(n);
                    }
                )*
                resolved
            }

            /// The settings under the names and in the units of the file.
            pub fn describe(&self) -> serde_json::Value {
                let mut described = serde_json::Map::new();
                $( described.insert($key.into(), <$unit as $crate::config::settings::Unit>::number(&self.$field).into()); )*
                serde_json::Value::Object(described)
            }
        }
    };
}

settings! {
    /// What one component may use, from `[limits]` and
    /// `[components.<name>.limits]`.
    pub struct ComponentLimits, read as RawLimits {
        /// Linear memory one instance may grow to, all its memories together.
        memory_bytes: Mib = "memory_mib", 1..=4096, default 128;
        /// Elements one table may grow to.
        table_elements: Count = "table_elements", 1..=10_000_000, default 100_000;
        /// Core instances, memories and tables one store may create.
        instances: Count = "instances", 1..=10_000, default 64;
        /// Time a request may compute, counted in epoch ticks while the guest runs.
        cpu_time: Millis = "cpu_time_ms", 1..=3_600_000, default 5000;
        /// Time a request may take in the component, host calls included.
        timeout: Millis = "timeout_ms", 1..=3_600_000, default 30_000;
        /// Instances of the component alive at once.
        max_concurrent: Count = "max_concurrent", 1..=100_000, default 64;
        /// Requests that may wait for an instance; more are refused with 503.
        max_queued: Count = "max_queued", 0..=1_000_000, default 256;
        /// How long a request may wait for an instance before it is refused.
        queue_timeout: Millis = "queue_timeout_ms", 0..=3_600_000, default 10_000;
        /// The largest request body the component accepts.
        max_request_body_bytes: Kib = "request_body_kib", 0..=1_048_576, default 1024;
        /// The largest response body the component may return.
        max_response_body_bytes: Kib = "response_body_kib", 1..=1_048_576, default 16_384;
        /// The most headers its response may carry.
        max_response_headers: Count = "response_headers", 1..=10_000, default 100;
        /// The most data a call from another component may pass it, and the
        /// most its answer may carry.
        max_call_bytes: Kib = "call_payload_kib", 1..=1_048_576, default 1024;
        /// The largest event payload (and headers) it may publish.
        max_event_bytes: Kib = "event_payload_kib", 1..=65_536, default 256;
        /// Messages it has published that subscribers have not settled yet
        /// (dead letters included); past it, `publish` answers `unavailable`.
        max_event_backlog: Count = "event_backlog", 1..=100_000_000, default 100_000;
        /// An outgoing HTTP request must connect within this time ...
        outbound_connect_timeout: Millis = "outbound_connect_timeout_ms", 1..=600_000, default 5000;
        /// ... and be answered in full within this one.
        outbound_timeout: Millis = "outbound_timeout_ms", 1..=3_600_000, default 30_000;
        /// The largest response body an outgoing request may bring back.
        max_outbound_response_bytes: Kib = "outbound_response_kib", 1..=1_048_576, default 16_384;
        /// The database file may not grow past this; writes beyond fail with `database-full`.
        db_max_size_bytes: Mib = "db_size_mib", 1..=1_048_576, default 1024;
        /// One statement may run this long before it is interrupted.
        db_statement_timeout: Millis = "db_statement_timeout_ms", 1..=3_600_000, default 1000;
        /// One query may return at most this many rows ...
        db_max_result_rows: Count = "db_max_rows", 1..=100_000_000, default 10_000;
        /// ... and this many bytes of values.
        db_max_result_bytes: Kib = "db_max_result_kib", 1..=1_048_576, default 16_384;
        /// The largest string or blob SQLite makes for the component, in a
        /// table, a parameter or along the way of a statement.
        db_max_value_bytes: Kib = "db_max_value_kib", 1..=262_144, default 1024;
    }
}

settings! {
    /// Host-wide settings, from `[server]`.
    pub struct ServerSettings, read as RawServer with {
        /// Addresses or networks whose `X-Forwarded-For` is believed.
        #[serde(default)]
        pub trusted_proxies: Vec<String>,
        /// A Redis URL: rate limits shared by every host.
        pub rate_limit_store: Option<String>,
    } {
        /// Connections open at once; past it, the listener stops accepting
        /// until one closes.
        max_connections: Count = "max_connections", 1..=1_000_000, default 10_000;
        /// Connections one client address may hold open; trusted proxies
        /// are exempt, since many clients share them.
        max_connections_per_client: Count = "max_connections_per_client", 1..=1_000_000, default 256;
        /// A client must send a request's headers within this time.
        header_read_timeout: Millis = "header_read_timeout_ms", 1..=3_600_000, default 10_000;
        /// Headers one request may carry (431 beyond).
        max_headers: Count = "max_headers", 1..=10_000, default 100;
        /// Bytes of headers one request may carry (431 beyond).
        max_header_bytes: Kib = "max_header_kib", 1..=1024, default 16;
        /// A request body must arrive whole within this time ...
        body_timeout: Millis = "body_timeout_ms", 1..=3_600_000, default 30_000;
        /// ... and, after a short grace, at least this fast, or the request
        /// fails with 408 and the connection closes.
        body_min_bytes_per_sec: Count = "body_min_bytes_per_sec", 0..=1_073_741_824, default 1024;
        /// A response the client does not read within this time is
        /// abandoned, and its connection closed ...
        write_timeout: Millis = "write_timeout_ms", 1..=3_600_000, default 30_000;
        /// ... and, after a short grace, one it reads slower than this.
        write_min_bytes_per_sec: Count = "write_min_bytes_per_sec", 0..=1_073_741_824, default 1024;
        /// Response bytes the host may hold for clients that have not read
        /// them yet; past it, requests are refused with 503 before they run.
        response_buffer_bytes: Mib = "response_buffer_mib", 1..=1_048_576, default 128;
        /// The share of that one client address may hold; trusted proxies
        /// are held to the host's budget only.
        response_buffer_per_client_bytes: Mib = "response_buffer_per_client_mib", 1..=1_048_576, default 16;
        /// How long requests in flight may take to finish once shutdown begins.
        shutdown_grace: Millis = "shutdown_grace_ms", 0..=3_600_000, default 30_000;
        /// Component instances alive at once across the host: the pooling
        /// allocator's slots.
        max_instances: Count = "max_instances", 1..=100_000, default 1000;
        /// Client addresses one rate limit tracks before they share a bucket.
        max_rate_limit_clients: Count = "max_rate_limit_clients", 1..=100_000_000, default 1_000_000;
        /// Threads that run SQL for every component together.
        sql_threads: Count = "sql_threads", 1..=1024, default 8;
        /// The most memory SQLite may allocate, for every database together.
        sqlite_heap_bytes: Mib = "sqlite_heap_mib", 16..=1_048_576, default 256;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn values_are_read_in_the_files_units_and_described_back_in_them() {
        let raw: RawLimits = toml::from_str("memory_mib = 64\ntimeout_ms = 250\nrequest_body_kib = 2").unwrap();
        let mut problems = Problems::default();
        let limits = ComponentLimits::resolve(&raw, &ComponentLimits::default(), "limits", &mut problems);
        assert!(problems.is_empty());
        assert_eq!(limits.memory_bytes, 64 << 20);
        assert_eq!(limits.timeout, Duration::from_millis(250));
        assert_eq!(limits.max_request_body_bytes, 2048);
        assert_eq!(limits.max_concurrent, 64, "defaults fill the rest");
        let described = limits.describe();
        assert_eq!(described["memory_mib"], 64);
        assert_eq!(described["timeout_ms"], 250);
        assert_eq!(described["db_max_value_kib"], 1024);
    }

    #[test]
    fn values_out_of_range_are_problems_at_their_key() {
        let raw: RawLimits = toml::from_str("memory_mib = 0\nmax_queued = 0\ndb_size_mib = 99999999").unwrap();
        let mut problems = Problems::default();
        ComponentLimits::resolve(&raw, &ComponentLimits::default(), "components.x.limits", &mut problems);
        let keys: Vec<String> = problems.into_vec().into_iter().map(|p| p.key).collect();
        assert_eq!(
            keys,
            ["components.x.limits.memory_mib", "components.x.limits.db_size_mib"]
        );
    }

    /// README's tables of `[server]` and `[limits]` list every setting with
    /// its default, and nothing else under a numeric default.
    #[test]
    fn readme_lists_every_setting_with_its_default() {
        let readme = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/../README.md")).unwrap();
        for (heading, defaults, others) in [
            (
                "### `[server]`",
                ServerSettings::default().describe(),
                &["trusted_proxies", "rate_limit_store"][..],
            ),
            ("### `[limits]`", ComponentLimits::default().describe(), &[][..]),
        ] {
            let table = readme_table(&readme, heading);
            let defaults = defaults.as_object().unwrap();
            for (key, default) in defaults {
                let listed = table.iter().find(|(k, _)| k == key);
                assert_eq!(
                    listed.map(|(_, d)| d.as_str()),
                    Some(default.to_string().as_str()),
                    "README's {heading} table and the setting {key}"
                );
            }
            for (key, _) in table {
                assert!(
                    defaults.contains_key(&key) || others.contains(&key.as_str()),
                    "README's {heading} table lists {key}, which is no setting"
                );
            }
        }
    }

    /// The `key` and `default` columns of the table under `heading`.
    fn readme_table(readme: &str, heading: &str) -> Vec<(String, String)> {
        let start = readme.find(heading).unwrap_or_else(|| panic!("no {heading} in README"));
        readme[start..]
            .lines()
            .skip(1)
            .skip_while(|line| !line.starts_with('|'))
            .take_while(|line| line.starts_with('|'))
            .filter_map(|line| {
                let cells: Vec<&str> = line.trim_matches('|').split(" | ").map(str::trim).collect();
                let key = cells.first()?.strip_prefix('`')?.strip_suffix('`')?;
                Some((key.to_string(), cells.last()?.to_string()))
            })
            .collect()
    }
}
