//! A relay, for tests only: it exports `corral:test/relay` and imports it
//! too, so that two copies configured as each other's provider form a chain,
//! or a cycle. `GET /<prefix>/<hops>?behavior=answer|panic|spin|sleep` starts
//! a chain through the imported relay; `GET /<prefix>/local` answers without
//! calling anyone.
//!
//! Built as `relay-store` (feature `store`), it reads its database on every
//! call, so that in a cluster each copy has an owner and a call between two
//! copies owned by different hosts crosses from one host to the other.

use std::hint::black_box;

use corral_sdk::{Problem, Request, Response, Service};
use serde_json::json;

struct Relay;

corral_sdk::export_service!(Relay);

corral_sdk::interfaces!(bindings, "corral:test/relay-node@0.1.0");

use bindings::corral::test::relay::{self as next, Behavior, Error};
use bindings::exports::corral::test::relay as api;

impl Service for Relay {
    fn handle(request: Request) -> Result<Response, Problem> {
        let last = request.segments().last().copied().unwrap_or_default().to_string();
        if last == "local" {
            return Ok(Response::json(200, &json!({ "answered": 1 })));
        }
        if last == "echo" {
            let bytes = |name| request.query(name).and_then(|n| n.parse::<u32>().ok()).unwrap_or(0);
            return match next::echo(&vec![7; bytes("send") as usize], bytes("answer")) {
                Ok(answer) => Ok(Response::json(200, &json!({ "received": answer.len() }))),
                Err(Error::Unavailable(reason)) => Err(Problem::new(
                    503,
                    "dependency-unavailable",
                    "A service this one needs is unavailable",
                    format!("the next relay did not answer: {reason}"),
                )),
            };
        }
        let hops: u32 = last
            .parse()
            .map_err(|_| Problem::not_found(format!("{last} is not a number of hops")))?;
        let behavior = match request.query("behavior").as_deref() {
            None | Some("answer") => Behavior::Answer,
            Some("panic") => Behavior::Panic,
            Some("spin") => Behavior::Spin,
            Some("sleep") => Behavior::Sleep,
            Some(other) => {
                return Err(Problem::bad_request(
                    "bad-behavior",
                    format!("unknown behavior {other}"),
                ));
            }
        };
        match next::forward(hops, behavior) {
            Ok(answered) => Ok(Response::json(200, &json!({ "answered": answered + 1 }))),
            Err(Error::Unavailable(reason)) => Err(Problem::new(
                503,
                "dependency-unavailable",
                "A service this one needs is unavailable",
                format!("the next relay did not answer: {reason}"),
            )),
        }
    }
}

impl api::Guest for Relay {
    fn echo(data: Vec<u8>, answer_bytes: u32) -> Result<Vec<u8>, api::Error> {
        corral_sdk::log::info(&format!("echo: took {} bytes", data.len()));
        Ok(vec![1; answer_bytes as usize])
    }

    fn forward(hops: u32, behavior: api::Behavior) -> Result<u32, api::Error> {
        corral_sdk::log::info(&format!("forwarding, {hops} hops to go"));
        #[cfg(feature = "store")]
        corral_sdk::db::execute("SELECT 1", &[])
            .map_err(|e| api::Error::Unavailable(format!("its database failed: {e}")))?;
        if hops > 0 {
            let behavior = match behavior {
                api::Behavior::Answer => Behavior::Answer,
                api::Behavior::Panic => Behavior::Panic,
                api::Behavior::Spin => Behavior::Spin,
                api::Behavior::Sleep => Behavior::Sleep,
            };
            return match next::forward(hops - 1, behavior) {
                Ok(answered) => Ok(answered + 1),
                Err(Error::Unavailable(reason)) => Err(api::Error::Unavailable(reason)),
            };
        }
        match behavior {
            api::Behavior::Answer => Ok(1),
            api::Behavior::Panic => panic!("relay: a deliberate panic"),
            api::Behavior::Spin => {
                let mut n: u64 = 0;
                loop {
                    n = black_box(n.wrapping_add(1));
                }
            }
            api::Behavior::Sleep => {
                std::thread::sleep(std::time::Duration::from_secs(60));
                Ok(1)
            }
        }
    }
}

bindings::export!(Relay with_types_in bindings);
