//! An inbox, for tests only: it records every event delivered to it and
//! acknowledges it (after sleeping `sleep_ms` if the payload says so), and
//! `GET /<prefix>` lists what it recorded, in the order it handled them.
//! It keeps its own table, so it can replace another component's code.

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
             source TEXT NOT NULL, attempt INTEGER NOT NULL, ordering_key TEXT, payload TEXT NOT NULL)",
            &[],
        )
        .map(drop)
        .map_err(|e| e.to_string())
    }

    fn handle(_req: Request) -> Result<Response, Problem> {
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
        let recorded = db::execute(
            "INSERT INTO inbox (id, topic, source, attempt, ordering_key, payload) VALUES (?, ?, ?, ?, ?, ?)",
            &[
                event.id.as_str().into(),
                event.topic.as_str().into(),
                event.source.as_str().into(),
                i64::from(event.attempt).into(),
                event.ordering_key.clone().into(),
                String::from_utf8_lossy(&event.payload).into_owned().into(),
            ],
        );
        match recorded {
            Ok(_) => Outcome::Ack,
            Err(_) => Outcome::RetryAfter(20),
        }
    }
}
