//! Events end to end, through HTTP: published with the data or not at all,
//! delivered at least once with retries, in key order where asked,
//! dead-lettered and redriven, across swaps, reloads and `kill -9`.

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;
use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use serde_json::{Value, json};

use crate::support::{
    ADMIN_TOKEN, HostBuilder, TestHost, admin_toml, component_toml, eventually, host, run_corral, wasm,
};

/// Fast retries, so tests do not wait on backoff.
const FAST: &str = "backoff_initial_ms = 20\nbackoff_max_ms = 100\n";

/// Runs `test` on a host alone, whose event log is its own SQLite file,
/// then on the host of a cluster (one NATS server), whose event log is the
/// cluster's on JetStream: the two keep the same promises.
fn on_each_log(test: impl Fn(&dyn Fn() -> HostBuilder)) {
    test(&host);
    let nats = crate::cluster::nats();
    let cluster = format!(
        "[cluster]\nnats = [\"nats://{}\"]\nnode = \"n1\"\nnode_ttl_ms = 2000\nreplicas = 1\n",
        nats.addr
    );
    test(&|| host().toml(&cluster));
}

fn publish(host: &TestHost, query: &str, body: Value) -> Vec<String> {
    let reply = host.post(&format!("/chaos/publish?{query}"), &body);
    assert_eq!(reply.status, 200, "{}", reply.text());
    serde_json::from_value(reply.json()["ids"].clone()).unwrap()
}

/// What the chaos component recorded: (id, attempt) in the order it handled them.
fn chaos_received(host: &TestHost) -> Vec<(String, i64)> {
    host.sql_rows("SELECT id, attempt FROM received ORDER BY seq")
        .as_array()
        .unwrap()
        .iter()
        .map(|row| (row[0].as_str().unwrap().to_string(), row[1].as_i64().unwrap()))
        .collect()
}

/// What an inbox component at `path` recorded.
fn inbox(host: &TestHost, path: &str) -> Vec<Value> {
    let reply = host.get(path);
    assert_eq!(reply.status, 200, "{}", reply.text());
    reply.json().as_array().unwrap().clone()
}

fn events_status(host: &TestHost) -> Value {
    host.admin("GET", "/events", Vec::new()).json()
}

fn subscription<'a>(status: &'a Value, name: &str) -> &'a Value {
    status["subscriptions"]
        .as_array()
        .unwrap()
        .iter()
        .find(|s| s["subscriber"] == name)
        .unwrap_or_else(|| panic!("no subscription of {name} in {status}"))
}

#[test]
fn deleting_a_user_cancels_their_open_orders() {
    on_each_log(|host| {
        let host = host()
            .component("users", "users", &["/users"])
            .component("orders", "orders", &["/orders"])
            .toml("[components.orders.subscription]\ntopics = [\"users.deleted\"]\nexactly_once = true")
            .toml(&admin_toml())
            .start();
        let user = |name: &str| {
            host.post(
                "/users",
                &json!({ "name": name, "email": format!("{name}@example.com") }),
            )
            .json()["id"]
                .as_i64()
                .unwrap()
        };
        let (ada, bob) = (user("ada"), user("bob"));
        let order = |user_id: i64, statuses: &[&str]| {
            let item = json!([{ "sku": "A", "quantity": 1, "unit_price_cents": 5 }]);
            let id = host
                .post("/orders", &json!({ "user_id": user_id, "items": item }))
                .json()["id"]
                .clone();
            for status in statuses {
                let reply = host.patch(&format!("/orders/{id}"), &json!({ "status": status }));
                assert_eq!(reply.status, 200, "{}", reply.text());
            }
            id
        };
        let pending = order(ada, &[]);
        let paid = order(ada, &["paid"]);
        let shipped = order(ada, &["paid", "shipped"]);
        let others = order(bob, &[]);
        assert_eq!(host.delete(&format!("/users/{ada}")).status, 204);

        let status_of = |id: &Value| host.get(&format!("/orders/{id}")).json()["status"].clone();
        eventually("ada's open orders are cancelled", || {
            status_of(&pending) == "cancelled" && status_of(&paid) == "cancelled"
        });
        assert_eq!(status_of(&shipped), "shipped", "a shipped order stays shipped");
        assert_eq!(status_of(&others), "pending", "bob's orders are untouched");
        eventually("the delivery is settled", || {
            subscription(&events_status(&host), "orders")["backlog"] == 0
        });
        let metrics = host.metrics();
        assert!(
            metrics.contains("corral_events_published_total{topic=\"users.deleted\",source=\"users\"} 1"),
            "{metrics}"
        );
        assert!(
            metrics.contains(
                "corral_event_deliveries_total{subscriber=\"orders\",topic=\"users.deleted\",outcome=\"ack\"} 1"
            ),
            "{metrics}"
        );
    });
}

#[test]
fn a_publish_in_a_rolled_back_transaction_is_never_delivered() {
    let host = host()
        .component("chaos", "chaos", &["/chaos"])
        .component("inbox", "inbox", &["/inbox"])
        .toml("[components.inbox.subscription]\ntopics = [\"txn.*\"]\nconcurrency = 1")
        .start();
    let rolled_back = publish(&host, "topic=txn.a&txn=rollback", json!({}));
    let committed = publish(&host, "topic=txn.b&txn=commit", json!({}));
    eventually("the committed message arrives", || inbox(&host, "/inbox").len() == 1);
    let received = inbox(&host, "/inbox");
    assert_eq!(received[0]["id"], committed[0].as_str());
    assert_eq!(received[0]["source"], "chaos");
    assert_ne!(received[0]["id"], rolled_back[0].as_str());
    // The rolled-back transaction's row is gone too.
    assert_eq!(host.sql_rows("SELECT count(*) FROM junk"), json!([[1]]));
}

#[test]
fn a_failing_handler_is_retried_then_dead_lettered_then_redriven_after_a_fix() {
    on_each_log(|host| {
        let host = host()
            .component("chaos", "chaos", &["/chaos"])
            .toml(&format!(
                "[components.chaos.subscription]\ntopics = [\"work.*\"]\nmax_attempts = 3\n{FAST}"
            ))
            .toml(&admin_toml())
            .start();
        // Fails twice, then succeeds: attempts 1, 2 and 3.
        let twice = publish(&host, "topic=work.twice", json!({ "fail": 2 }))[0].clone();
        eventually("the third attempt is handled", || {
            chaos_received(&host).iter().filter(|(id, _)| *id == twice).count() == 3
        });
        let attempts: Vec<i64> = chaos_received(&host)
            .into_iter()
            .filter(|(id, _)| *id == twice)
            .map(|(_, a)| a)
            .collect();
        assert_eq!(attempts, [1, 2, 3]);

        // Always fails: a dead letter after its three attempts.
        let doomed = publish(&host, "topic=work.doomed", json!({ "fail": "always" }))[0].clone();
        let dead_letters = || {
            host.admin("GET", "/events/dead-letters?subscriber=chaos", Vec::new())
                .json()
        };
        eventually("it becomes a dead letter", || {
            !dead_letters()["dead_letters"].as_array().unwrap().is_empty()
        });
        let dead = dead_letters()["dead_letters"][0].clone();
        assert_eq!(
            (dead["id"].as_str(), dead["attempts"].as_i64()),
            (Some(doomed.as_str()), Some(3))
        );
        assert!(dead["reason"].as_str().unwrap().contains("3 attempts failed"), "{dead}");
        assert_eq!(subscription(&events_status(&host), "chaos")["dead"], 1);

        // The operator swaps in code that handles it (an inbox, here), then
        // redrives it with the CLI: it is delivered again, as a first attempt.
        let swapped = host.admin("PUT", "/components/chaos", std::fs::read(wasm("inbox")).unwrap());
        assert_eq!(swapped.status, 200, "{}", swapped.text());
        let admin = format!("http://{}", host.admin_addr.unwrap());
        let corral = |args: &[&str]| {
            let admin_args = ["--admin", admin.as_str()];
            let args: Vec<&std::ffi::OsStr> = args.iter().chain(&admin_args).map(|a| a.as_ref()).collect();
            run_corral(&args, &[("CORRAL_ADMIN_TOKEN", ADMIN_TOKEN)], Path::new("."))
        };
        let (ok, out) = corral(&["dead-letters", "--subscriber", "chaos"]);
        assert!(ok && out.starts_with("ID") && out.contains(&doomed), "{out}");
        let (ok, out) = corral(&["dead-letters", "--subscriber", "chaos", "--json"]);
        let listed: Value = serde_json::from_str(&out).unwrap_or_else(|e| panic!("{e}: {out}"));
        assert!(ok && listed["dead_letters"][0]["id"] == doomed.as_str(), "{out}");
        let (ok, out) = corral(&["redrive", "chaos"]);
        assert!(ok && out.contains("chaos: 1 dead letters delivered again"), "{out}");
        eventually("the new version handles it", || {
            inbox(&host, "/chaos")
                .iter()
                .any(|r| r["id"] == doomed.as_str() && r["attempt"] == 1)
        });
        assert!(dead_letters()["dead_letters"].as_array().unwrap().is_empty());
        let (ok, out) = corral(&["events"]);
        let row = out
            .lines()
            .skip_while(|l| !l.starts_with("SUBSCRIBER"))
            .find(|l| l.starts_with("chaos "))
            .unwrap_or_else(|| panic!("{out}"));
        assert!(
            ok && row.split_whitespace().nth(5) == Some("0"),
            "no dead letter is left: {out}"
        );
        let (ok, out) = corral(&["events", "--json"]);
        let events: Value = serde_json::from_str(&out).unwrap_or_else(|e| panic!("{e}: {out}"));
        assert!(ok && subscription(&events, "chaos")["dead"] == 0, "{out}");
    });
}

#[test]
fn ordering_keys_keep_per_key_order_under_concurrency() {
    on_each_log(|host| {
        let host = host()
            .component("chaos", "chaos", &["/chaos"])
            .component("inbox", "inbox", &["/inbox"])
            .toml("[components.inbox.subscription]\ntopics = [\"ordered.*\"]\nordering = \"key\"\nconcurrency = 8")
            .start();
        for round in 0..5 {
            for key in ["a", "b", "c"] {
                // Later messages are quicker to handle: out of order unless held back.
                let sleep = 30 - round * 6;
                publish(
                    &host,
                    &format!("topic=ordered.x&key={key}&n=2"),
                    json!({ "round": round, "sleep_ms": sleep }),
                );
            }
        }
        eventually("all 30 arrive", || inbox(&host, "/inbox").len() == 30);
        let mut by_key: BTreeMap<String, Vec<(i64, i64)>> = BTreeMap::new();
        for record in inbox(&host, "/inbox") {
            let payload: Value = serde_json::from_str(record["payload"].as_str().unwrap()).unwrap();
            by_key
                .entry(record["ordering_key"].as_str().unwrap().to_string())
                .or_default()
                .push((payload["round"].as_i64().unwrap(), payload["i"].as_i64().unwrap()));
        }
        for (key, seen) in by_key {
            let mut sorted = seen.clone();
            sorted.sort();
            assert_eq!(seen, sorted, "key {key} out of order");
        }
    });
}

#[test]
fn a_removed_subscriber_keeps_its_messages_until_purged() {
    on_each_log(|host| {
        let host = host()
            .component("chaos", "chaos", &["/chaos"])
            .toml(&format!(
                "[components.chaos.subscription]\ntopics = [\"later.*\"]\n{FAST}"
            ))
            .toml(&admin_toml())
            .start();
        // The first attempt asks to be retried in a minute: the message waits.
        publish(&host, "topic=later.x", json!({ "retry_ms": 60000 }));
        eventually("it is attempted once", || chaos_received(&host).len() == 1);
        let config = std::fs::read_to_string(&host.config_path).unwrap();
        let unsubscribed = config
            .replace("[components.chaos.subscription]\ntopics = [\"later.*\"]", "")
            .replace(FAST, "");
        std::fs::write(&host.config_path, unsubscribed).unwrap();
        assert_eq!(host.admin("POST", "/reload", Vec::new()).status, 200);
        publish(&host, "topic=later.y", json!({}));
        let removed = subscription(&events_status(&host), "chaos").clone();
        assert_eq!(
            (removed["removed"].clone(), removed["backlog"].clone()),
            (json!(true), json!(1)),
            "{removed}"
        );
        let purged = host.admin("POST", "/events/pending/purge?subscriber=chaos", Vec::new());
        assert_eq!(purged.json()["purge"], 1, "{}", purged.text());
        assert!(events_status(&host)["subscriptions"].as_array().unwrap().is_empty());
        assert_eq!(chaos_received(&host).len(), 1, "nothing more was delivered");
    });
}

#[test]
fn kill_9_loses_no_acknowledged_publish() {
    on_each_log(|host| {
        let data = tempfile::tempdir().unwrap();
        let start = || {
            host()
                .component("chaos", "chaos", &["/chaos"])
                .component("inbox", "inbox", &["/inbox"])
                .toml("[components.inbox.subscription]\ntopics = [\"burst.*\"]\nconcurrency = 4")
                .toml("[components.inbox.limits]\ndb_max_rows = 1000000")
                .toml("[server]\nmax_connections_per_client = 1000")
                .data_dir(data.path())
                .start()
        };
        let first = start();
        let acknowledged = Mutex::new(BTreeSet::new());
        let stop = AtomicBool::new(false);
        std::thread::scope(|scope| {
            for _ in 0..4 {
                scope.spawn(|| {
                    while !stop.load(Ordering::Relaxed) {
                        let request = http::Request::post("/chaos/publish?topic=burst.x&n=10")
                            .header("content-type", "application/json")
                            .body(br#"{"sleep_ms": 2}"#.to_vec())
                            .unwrap();
                        let Some(reply) = first.try_request(request) else { break };
                        if reply.status == 200 {
                            let ids: Vec<String> = serde_json::from_value(reply.json()["ids"].clone()).unwrap();
                            acknowledged.lock().unwrap().extend(ids);
                        }
                        // Paced: a steady stream of publishes, not a flood.
                        std::thread::sleep(Duration::from_millis(10));
                    }
                });
            }
            // The burst's length, not a wait for some event: the kill comes
            // mid-burst, with publishes and deliveries in flight.
            std::thread::sleep(Duration::from_millis(1500));
            std::process::Command::new("kill")
                .args(["-9", &first.pid().to_string()])
                .status()
                .unwrap();
            stop.store(true, Ordering::Relaxed);
        });
        drop(first);
        let acknowledged = acknowledged.into_inner().unwrap();
        assert!(
            acknowledged.len() >= 40,
            "only {} publishes before the kill",
            acknowledged.len()
        );
        let second = start();
        eventually("every acknowledged publish is delivered", || {
            let received: BTreeSet<String> = inbox(&second, "/inbox")
                .iter()
                .map(|r| r["id"].as_str().unwrap().to_string())
                .collect();
            acknowledged.is_subset(&received)
        });
    });
}

#[test]
fn subscriptions_are_checked_with_the_config() {
    let users = component_toml("users", "users", &["/users"]);
    let (ok, out) = crate::support::check_config(&format!(
        "data_dir = \"d\"\n{users}[components.users.subscription]\ntopics = [\"nobody.*\"]\n"
    ));
    assert!(ok, "{out}");
    assert!(
        out.contains("warning:") && out.contains("no component publishes to nobody.*"),
        "{out}"
    );
    let (ok, out) = crate::support::check_config(&format!(
        "data_dir = \"d\"\n{users}[components.users.subscription]\ntopics = [\"Bad Topic\"]\nmax_attempts = 0\n"
    ));
    assert!(!ok, "{out}");
    assert!(
        out.contains("subscription.topics[0]") && out.contains("subscription.max_attempts"),
        "{out}"
    );
}

#[test]
fn a_publisher_cannot_outrun_its_subscribers_or_grow_the_metrics() {
    on_each_log(|host| {
        let host = host()
            .component("chaos", "chaos", &["/chaos"])
            .toml("[components.chaos.limits]\nevent_backlog = 20")
            .toml(&format!(
                "[components.chaos.subscription]\ntopics = [\"slow.*\"]\n{FAST}"
            ))
            .toml(&admin_toml())
            .start();
        // Each delivery asks to be retried in a minute: nothing is settled.
        let reply = host.post("/chaos/publish?topic=slow.x&n=50", &json!({ "retry_ms": 60000 }));
        reply.assert_problem(422, "publish-failed");
        let detail = reply.json()["detail"].as_str().unwrap().to_string();
        assert!(
            detail.contains("Unavailable") && detail.contains("event_backlog"),
            "{detail}"
        );
        // Held back at the bound. The relay recounts what is unsettled
        // as it moves messages, never below the truth: a publish that lands
        // while it counts may be counted twice for a moment, so the bound
        // may stop one publish early.
        let published = || {
            let received = chaos_received(&host).len() as u64;
            let backlog = subscription(&events_status(&host), "chaos")["backlog"].as_u64();
            ((19..=20).contains(&received) && backlog == Some(received)).then_some(received)
        };
        eventually("what was published is delivered once, and waits", || {
            published().is_some()
        });
        let published = published().unwrap();
        // Once the subscriber's backlog is gone, the publisher may go on.
        let purged = host.admin("POST", "/events/pending/purge?subscriber=chaos", Vec::new());
        assert_eq!(purged.json()["purge"], published, "{}", purged.text());
        eventually("publishing works again", || {
            host.post("/chaos/publish?topic=other.x", &json!({})).status == 200
        });

        // Topics the guest makes up are counted under the pattern that allows
        // them: 100 new topics add no series.
        for i in 0..100 {
            publish(&host, &format!("topic=made.up{i}"), json!({}));
        }
        eventually("every message is relayed", || {
            let metrics = host.metrics();
            crate::support::metric(&metrics, "corral_events_published_total", &[("source", "chaos")])
                >= (published + 101) as f64
        });
        let metrics = host.metrics();
        let series: Vec<&str> = metrics
            .lines()
            .filter(|l| l.starts_with("corral_events_published_total{"))
            .collect();
        let all = published + 101;
        assert_eq!(
            series,
            [format!(
                "corral_events_published_total{{topic=\">\",source=\"chaos\"}} {all}"
            )]
        );
    });
}
