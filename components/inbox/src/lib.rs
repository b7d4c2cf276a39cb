//! An inbox, for tests and benchmarks only: it records every event
//! delivered to it and acknowledges it (after sleeping `sleep_ms` if the
//! payload says so). `GET /<prefix>` lists what it recorded, in the order
//! it handled them; `GET /<prefix>/latencies[?topic=t]` says how long each
//! message took from its publish to its handling. It keeps its own table, so it can
//! replace another component's code.

use corral_sdk::{Event, Outcome, Problem, Request, Response, Service, db};
use serde::{Deserialize, Serialize};

struct Inbox;

corral_sdk::export_service!(Inbox);

#[derive(Serialize, Deserialize)]
struct Received {
    id: String,
    topic: String,
    source: String,
    attempt: i64,
    ordering_key: Option<String>,
    payload: String,
}

impl Service for Inbox {
    fn init() -> Result<(), String> {
        db::execute(
            "CREATE TABLE IF NOT EXISTS inbox (seq INTEGER PRIMARY KEY, id TEXT NOT NULL, topic TEXT NOT NULL,
             source TEXT NOT NULL, attempt INTEGER NOT NULL, ordering_key TEXT, payload TEXT NOT NULL,
             published_at INTEGER NOT NULL, received_at INTEGER NOT NULL)",
            &[],
        )
        .map(drop)
        .map_err(|e| e.to_string())
    }

    fn handle(req: Request) -> Result<Response, Problem> {
        if req.path().ends_with("/latencies") {
            #[derive(Serialize, Deserialize)]
            struct Timing {
                published_at: i64,
                received_at: i64,
            }
            let topic = req.query("topic");
            let timings: Vec<Timing> = db::query(
                "SELECT published_at, received_at FROM inbox WHERE ?1 IS NULL OR topic = ?1",
                &[topic.into()],
            )?;
            let mut latencies: Vec<i64> = timings.iter().map(|t| t.received_at - t.published_at).collect();
            latencies.sort_unstable();
            let first = timings.iter().map(|t| t.published_at).min();
            let last = timings.iter().map(|t| t.received_at).max();
            let body =
                serde_json::json!({ "first_published_ms": first, "last_received_ms": last, "latencies_ms": latencies });
            return Ok(Response::json(200, &body));
        }
        let received: Vec<Received> = db::query(
            "SELECT id, topic, source, attempt, ordering_key, payload FROM inbox ORDER BY seq",
            &[],
        )?;
        Ok(Response::json(200, &received))
    }

    fn on_event(event: Event) -> Outcome {
        let payload: serde_json::Value = event.json().unwrap_or_default();
        if let Some(ms) = payload["sleep_ms"].as_u64() {
            std::thread::sleep(std::time::Duration::from_millis(ms));
        }
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_millis() as i64);
        let recorded = db::execute(
            "INSERT INTO inbox (id, topic, source, attempt, ordering_key, payload, published_at, received_at)
             VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
            &[
                event.id.as_str().into(),
                event.topic.as_str().into(),
                event.source.as_str().into(),
                i64::from(event.attempt).into(),
                event.ordering_key.clone().into(),
                String::from_utf8_lossy(&event.payload).into_owned().into(),
                (event.published_at as i64).into(),
                now.into(),
            ],
        );
        match recorded {
            Ok(_) => Outcome::Ack,
            Err(_) => Outcome::RetryAfter(20),
        }
    }
}
