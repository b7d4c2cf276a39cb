//! Replicated databases and events between hosts: three real `corral`
//! hosts on a real three-server NATS cluster (JetStream, streams on three
//! replicas), the owner of `users` killed with SIGKILL while clients
//! write, and a publisher and its subscriber on two hosts, either killed.

use std::net::SocketAddr;
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde_json::{Value, json};

use crate::cluster::{Daemon, cluster_of, haproxy};
use crate::support::{TestHost, admin_toml, client, eventually, free_addr, host, wasm};

/// `eventually`, with a longer wait: a new NATS cluster elects its
/// JetStream leader before the hosts can join.
fn eventually_within(limit: Duration, what: &str, mut probe: impl FnMut() -> bool) {
    let started = Instant::now();
    while !probe() {
        assert!(started.elapsed() < limit, "never: {what}");
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// How many entries of the log go between snapshots here: a few seconds of
/// writes make several, and trim the log.
const SNAPSHOT_EVERY: u64 = 300;

/// Held by each test here while it runs: three NATS servers, three hosts and
/// eight clients each are as much as two cores take at once, and NATS's
/// elections after a kill slow down past the tests' bounds when two such
/// clusters share them.
static ONE_AT_A_TIME: Mutex<()> = Mutex::new(());

/// Three NATS servers with JetStream, routed to one another as one
/// cluster, with the further arguments `extra`.
fn nats_cluster(extra: &[&str]) -> Vec<Daemon> {
    let routes: Vec<SocketAddr> = (0..3).map(|_| free_addr()).collect();
    (0..3)
        .map(|i| {
            let dir = tempfile::tempdir().unwrap();
            let store = dir.path().join("jetstream").display().to_string();
            let others: Vec<String> = (0..3)
                .filter(|j| *j != i)
                .map(|j| format!("nats://{}", routes[j]))
                .collect();
            let route = routes[i];
            let args = move |addr: SocketAddr| {
                [
                    "-js",
                    "-sd",
                    &store,
                    "-a",
                    "127.0.0.1",
                    "-p",
                    &addr.port().to_string(),
                    "-n",
                    &format!("s{i}"),
                    "--cluster_name",
                    "corral",
                    "--cluster",
                    &format!("nats://{route}"),
                    "--routes",
                    &others.join(","),
                ]
                .into_iter()
                .chain(extra.iter().copied())
                .map(String::from)
                .collect()
            };
            Daemon::start("nats-server", args, dir)
        })
        .collect()
}

/// Host `node` of the cluster on the NATS servers `nats`, serving `users`
/// (owned by n1), its data in `data`, with `SNAPSHOT_EVERY`.
fn users_host(nats: &[&Daemon], node: &str, data: &Path) -> TestHost {
    users_host_with(nats, node, data, "")
}

/// `users_host`, with more settings `extra` for users.
fn users_host_with(nats: &[&Daemon], node: &str, data: &Path, extra: &str) -> TestHost {
    let servers: Vec<String> = nats.iter().map(|n| format!("\"nats://{}\"", n.addr)).collect();
    let toml = format!(
        "{}\n[cluster]\nnats = [{}]\nnode = \"{node}\"\nnode_ttl_ms = 2000\nsnapshot_every = {SNAPSHOT_EVERY}\n\n\
         [components.users]\nwasm = {:?}\nroutes = [\"/users\"]\nowner = \"n1\"\n{extra}",
        admin_toml(),
        servers.join(", "),
        wasm("users").display().to_string(),
    );
    host().toml(&toml).data_dir(data).start()
}

/// How far into the log of `users` each host's copy is, by host.
fn places(host: &TestHost) -> Vec<(String, Option<u64>)> {
    let reply = host.admin("GET", "/cluster", Vec::new());
    if reply.status != 200 {
        return Vec::new(); // not joined yet
    }
    let cluster = reply.json();
    let nodes = cluster["nodes"].as_array().cloned().unwrap_or_default();
    nodes
        .iter()
        .map(|n| {
            let place = n["components"]["users"]["place"].as_u64();
            (n["node"].as_str().unwrap_or_default().to_string(), place)
        })
        .collect()
}

/// The emails in the `users` table of the database file in `data`, read
/// once no host holds it.
fn emails_in(data: &Path) -> Vec<String> {
    let output = std::process::Command::new("python3")
        .arg("-c")
        .arg("import sqlite3,sys; [print(r[0]) for r in sqlite3.connect(sys.argv[1]).execute('select email from users')]")
        .arg(data.join("users.sqlite3"))
        .output()
        .unwrap();
    assert!(output.status.success(), "{}", String::from_utf8_lossy(&output.stderr));
    String::from_utf8(output.stdout)
        .unwrap()
        .lines()
        .map(String::from)
        .collect()
}

/// Empties a stopped host's data folder `data`, as a lost volume would be.
fn wipe(data: &Path) {
    for entry in std::fs::read_dir(data).unwrap() {
        let path = entry.unwrap().path();
        if path.is_dir() {
            std::fs::remove_dir_all(&path).unwrap();
        } else {
            std::fs::remove_file(&path).unwrap();
        }
    }
}

/// Three hosts of `users`, n1 its owner, each on the NATS servers its
/// entry of `servers` names, every one following the log.
fn three_hosts(servers: [Vec<&Daemon>; 3], data: &[tempfile::TempDir]) -> Vec<TestHost> {
    let n1 = users_host(&servers[0], "n1", data[0].path());
    // The owner joins first (the new NATS cluster elects its leaders
    // meanwhile): a host that finds it gone for long would take over.
    eventually_within(Duration::from_secs(60), "n1 joins", || !places(&n1).is_empty());
    let n2 = users_host(&servers[1], "n2", data[1].path());
    let n3 = users_host(&servers[2], "n3", data[2].path());
    eventually_within(Duration::from_secs(60), "every host follows the log of users", || {
        let places = places(&n1);
        places.len() == 3 && places.iter().all(|(_, p)| p.is_some())
    });
    assert_eq!(cluster_of(&n2)["desired"]["users"]["owner"], json!("n1"));
    vec![n1, n2, n3]
}

/// A user the service acknowledged: when its request was sent, its id, its email.
type Acknowledged = (Instant, i64, String);

/// Eight clients creating users through `urls` in turn until stopped.
struct Writers {
    stop: Arc<AtomicBool>,
    acknowledged: Arc<Mutex<Vec<Acknowledged>>>,
    threads: Vec<std::thread::JoinHandle<()>>,
}

impl Writers {
    fn start(urls: Vec<String>) -> Writers {
        let stop = Arc::new(AtomicBool::new(false));
        let acknowledged = Arc::new(Mutex::new(Vec::new()));
        let threads = (0..8)
            .map(|w| {
                let (urls, stop, acknowledged) = (urls.clone(), Arc::clone(&stop), Arc::clone(&acknowledged));
                std::thread::spawn(move || write_until(w, &urls, &stop, &acknowledged))
            })
            .collect();
        Writers {
            stop,
            acknowledged,
            threads,
        }
    }

    fn count(&self) -> usize {
        self.acknowledged.lock().unwrap().len()
    }

    /// How long after `since` a request sent then was first acknowledged,
    /// waiting for it up to `limit`.
    fn first_after(&self, since: Instant, limit: Duration) -> Duration {
        loop {
            let acknowledged = self.acknowledged.lock().unwrap();
            if let Some((at, _, _)) = acknowledged.iter().find(|(at, _, _)| *at > since) {
                return *at - since;
            }
            drop(acknowledged);
            assert!(since.elapsed() < limit, "no write succeeded within {limit:?}");
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    fn stop(self) -> Vec<Acknowledged> {
        self.stop.store(true, Ordering::Relaxed);
        for thread in self.threads {
            thread.join().unwrap();
        }
        self.acknowledged.lock().unwrap().clone()
    }
}

fn write_until(w: usize, urls: &[String], stop: &AtomicBool, acknowledged: &Mutex<Vec<Acknowledged>>) {
    let agent = client();
    let mut i = 0usize;
    while !stop.load(Ordering::Relaxed) {
        i += 1;
        let email = format!("w{w}-{i}@example.com");
        let sent_at = Instant::now();
        let body = json!({"name": format!("user {w} {i}"), "email": email});
        let sent = (agent.post(&urls[(w + i) % urls.len()]))
            .header("content-type", "application/json")
            .send(serde_json::to_vec(&body).unwrap());
        match sent {
            Ok(mut reply) if reply.status() == 201 => {
                let user: Value = serde_json::from_str(&reply.body_mut().read_to_string().unwrap()).unwrap();
                let id = user["id"].as_i64().unwrap();
                acknowledged.lock().unwrap().push((sent_at, id, email));
            }
            _ => std::thread::sleep(Duration::from_millis(20)),
        }
    }
}

/// Every one of `acknowledged` reads back through `host` as it was written.
/// A 503 is tried again for a while: the owner may be moving (after a NATS
/// server dies, until the others have elected new leaders) and cannot be
/// read from meanwhile, which loses nothing.
fn assert_readable(host: &TestHost, acknowledged: &[Acknowledged]) {
    let settled = Instant::now() + Duration::from_secs(30);
    for (_, id, email) in acknowledged {
        let mut reply = host.get(&format!("/users/{id}"));
        while reply.status == 503 && Instant::now() < settled {
            std::thread::sleep(Duration::from_millis(200));
            reply = host.get(&format!("/users/{id}"));
        }
        assert_eq!(reply.status, 200, "user {id}: {}", reply.text());
        assert_eq!(reply.json()["email"], json!(email), "user {id}");
    }
}

#[test]
fn the_owner_killed_under_writes_loses_no_acknowledged_write_and_another_host_takes_over() {
    let _turn = ONE_AT_A_TIME.lock().unwrap_or_else(|e| e.into_inner());
    let nats = nats_cluster(&[]);
    let all: Vec<&Daemon> = nats.iter().collect();
    let data: Vec<tempfile::TempDir> = (0..3).map(|_| tempfile::tempdir().unwrap()).collect();
    let [n1, n2, n3]: [TestHost; 3] = three_hosts([all.clone(), all.clone(), all.clone()], &data)
        .try_into()
        .ok()
        .unwrap();

    // Eight clients write through HAProxy in front of the three hosts
    // (`deploy/haproxy/haproxy.cfg`); the owner dies under them.
    let proxy = haproxy(&[&n1, &n2, &n3]);
    let writers = Writers::start(vec![format!("http://{}/users", proxy.addr)]);
    std::thread::sleep(Duration::from_secs(2));
    assert!(writers.count() > 50, "only {} writes before the kill", writers.count());
    n1.kill();
    let killed = Instant::now();
    // Writes succeed again through the other hosts, without an operator.
    let recovered = writers.first_after(killed, Duration::from_secs(10));
    std::thread::sleep(Duration::from_secs(1));
    let acknowledged = writers.stop();
    eprintln!("writes succeeded again {recovered:?} after the owner was killed");
    let owner = owner_of(&n2, "users");
    assert_ne!(owner, "n1", "another host owns users now");
    // Every write acknowledged, before the kill or after, is there.
    assert_readable(&n3, &acknowledged);

    // The killed host, started again on its file, follows the log as a
    // replica and catches up.
    let n1 = users_host(&all, "n1", data[0].path());
    let caught_up = || {
        let places = places(&n2);
        let of = |node: &str| places.iter().find(|(n, _)| n == node).and_then(|(_, p)| *p);
        of("n1").is_some() && of("n1") == of(&owner)
    };
    eventually("the restarted host catches up", caught_up);
    // Ownership goes back to it, a replica that holds the whole log: the
    // next write lands there, and so does everything before it.
    let reply = n3.admin("POST", "/cluster/components/users/owner/n1", Vec::new());
    assert_eq!(reply.status, 200, "{}", reply.text());
    let reply = n3.post("/users", &json!({ "name": "back", "email": "back@example.com" }));
    assert_eq!(reply.status, 201, "{}", reply.text());
    assert_eq!(reply.header("corral-node"), Some("n1"));
    let back = reply.json()["id"].clone();
    assert_eq!(
        n2.get(&format!("/users/{back}")).json()["email"],
        json!("back@example.com")
    );
    eventually("every host holds the last write", || {
        let places = places(&n1);
        places.len() == 3 && places.windows(2).all(|w| w[0].1 == w[1].1)
    });
    drop((n1, n2, n3));
    for dir in &data {
        let held = emails_in(dir.path());
        for (_, _, email) in &acknowledged {
            assert!(held.contains(email), "{email} is not in {}", dir.path().display());
        }
        assert!(held.contains(&"back@example.com".to_string()));
    }
}

#[test]
fn a_nats_server_killed_under_writes_loses_no_acknowledged_write() {
    let _turn = ONE_AT_A_TIME.lock().unwrap_or_else(|e| e.into_inner());
    let mut nats = nats_cluster(&[]);
    let all: Vec<&Daemon> = nats.iter().collect();
    let data: Vec<tempfile::TempDir> = (0..3).map(|_| tempfile::tempdir().unwrap()).collect();
    let hosts = three_hosts([all.clone(), all.clone(), all.clone()], &data);
    let writers = Writers::start(hosts.iter().map(|h| h.url("/users")).collect());
    std::thread::sleep(Duration::from_secs(2));
    let before = writers.count();
    assert!(before > 50, "only {before} writes before the kill");
    nats[0].stop();
    let killed = Instant::now();
    // Writes go on: the log keeps a quorum of two (which may first elect
    // new leaders for what the killed server led).
    let resumed = writers.first_after(killed + Duration::from_secs(1), Duration::from_secs(60));
    eprintln!("writes succeeded {resumed:?} after a second past the kill of a NATS server");
    std::thread::sleep(Duration::from_secs(1));
    // (The owner may have changed: while the servers left elect leaders,
    // reports may not be renewed for longer than this test's node_ttl_ms.)
    let acknowledged = writers.stop();
    assert_readable(&hosts[2], &acknowledged);
}

#[test]
fn an_owner_cut_off_from_nats_stops_writing_and_another_host_takes_over() {
    // The servers do not tell clients of one another, so that a client
    // given one server stays with it.
    let _turn = ONE_AT_A_TIME.lock().unwrap_or_else(|e| e.into_inner());
    let mut nats = nats_cluster(&["--no_advertise"]);
    let data: Vec<tempfile::TempDir> = (0..3).map(|_| tempfile::tempdir().unwrap()).collect();
    // n1 reaches NATS through one server only; the others through the other two.
    let others = vec![&nats[1], &nats[2]];
    let hosts = three_hosts([vec![&nats[0]], others.clone(), others], &data);
    let writers = Writers::start(hosts.iter().map(|h| h.url("/users")).collect());
    std::thread::sleep(Duration::from_secs(2));
    assert!(writers.count() > 50, "only {} writes before the cut", writers.count());
    nats[0].stop();
    let cut = Instant::now();

    // The servers left elect new leaders for what the cut one led (up to
    // ten seconds or so on NATS 2.9), then the owner's lease lapses.
    let recovered = writers.first_after(cut, Duration::from_secs(60));
    eprintln!("writes succeeded again {recovered:?} after the owner was cut off");
    std::thread::sleep(Duration::from_secs(2));
    // Within the lease's time the cut-off owner takes no write: one sent
    // to it now is refused, never acknowledged.
    let reply = hosts[0].post("/users", &json!({ "name": "cut", "email": "cut@example.com" }));
    assert!([502, 503].contains(&reply.status), "{}: {}", reply.status, reply.text());
    let acknowledged = writers.stop();
    let owner = owner_of(&hosts[1], "users");
    assert_ne!(owner, "n1");
    assert_readable(&hosts[2], &acknowledged);
    // Nothing is in the old owner's file that the new owner lacks.
    let new_owner = if owner == "n2" { 1 } else { 2 };
    drop(hosts);
    let (old, new) = (emails_in(data[0].path()), emails_in(data[new_owner].path()));
    let only_old: Vec<&String> = old.iter().filter(|e| !new.contains(e)).collect();
    assert!(only_old.is_empty(), "only in the old owner's file: {only_old:?}");
}

#[test]
fn a_host_down_during_10000_writes_catches_up_and_a_wiped_one_starts_from_a_snapshot() {
    let _turn = ONE_AT_A_TIME.lock().unwrap_or_else(|e| e.into_inner());
    let nats = nats_cluster(&[]);
    let all: Vec<&Daemon> = nats.iter().collect();
    let data: Vec<tempfile::TempDir> = (0..3).map(|_| tempfile::tempdir().unwrap()).collect();
    let mut hosts = three_hosts([all.clone(), all.clone(), all.clone()], &data);
    hosts.pop().unwrap().kill();
    // 10,000 users while n3 is down; the owner snapshots and trims the log.
    let writers = Writers::start(vec![hosts[0].url("/users"), hosts[1].url("/users")]);
    let started = Instant::now();
    while writers.count() < 10_000 {
        assert!(
            started.elapsed() < Duration::from_secs(120),
            "only {} writes",
            writers.count()
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    let acknowledged = writers.stop();
    eventually_within(Duration::from_secs(30), "the owner trims its log", || {
        hosts[0].logs().matches("took a snapshot").count() >= 3
    });
    // n3, back on its volume, is behind what the log still holds: it
    // starts again from the newest snapshot, then follows.
    let n3 = users_host(&all, "n3", data[2].path());
    // n2's volume is wiped: it starts from the newest snapshot.
    hosts.pop().unwrap().kill();
    wipe(data[1].path());
    let n2 = users_host(&all, "n2", data[1].path());
    let n1 = hosts.pop().unwrap();
    let caught_up = || {
        let places = places(&n1);
        let of = |node: &str| places.iter().find(|(n, _)| n == node).and_then(|(_, p)| *p);
        of("n1").is_some() && of("n2") == of("n1") && of("n3") == of("n1")
    };
    let started = Instant::now();
    while !caught_up() {
        let quiet = |h: &TestHost| {
            h.logs()
                .lines()
                .filter(|l| !l.contains("corral::access"))
                .collect::<Vec<_>>()
                .join("\n")
        };
        assert!(
            started.elapsed() < Duration::from_secs(60),
            "never caught up: {:?}\nn2:\n{}\nn3:\n{}",
            places(&n1),
            quiet(&n2),
            quiet(&n3)
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    for host in [&n2, &n3] {
        let logs = host.logs();
        let started: Vec<&str> = logs
            .lines()
            .filter(|l| l.contains("started from the newest snapshot"))
            .collect();
        assert!(
            started.iter().any(|l| !l.contains("place=0")),
            "not started from a later snapshot: {started:?}"
        );
    }
    drop((n1, n2, n3));
    for dir in &data {
        let held = emails_in(dir.path());
        assert!(
            held.len() >= acknowledged.len(),
            "{} of {}",
            held.len(),
            acknowledged.len()
        );
        for (_, _, email) in &acknowledged {
            assert!(held.contains(email), "{email} is not in {}", dir.path().display());
        }
    }
}

/// Host `node` of the cluster on `nats` serving users and orders, whose
/// deliveries of `users.deleted` cancel a deleted user's orders; users
/// owned by n1 and orders by `orders_owner` at first.
fn shop_host(nats: &[&Daemon], node: &str, orders_owner: &str, data: &Path) -> TestHost {
    let servers: Vec<String> = nats.iter().map(|n| format!("\"nats://{}\"", n.addr)).collect();
    let toml = format!(
        "{}\n[cluster]\nnats = [{}]\nnode = \"{node}\"\nnode_ttl_ms = 2000\n\n\
         {}owner = \"n1\"\n{}owner = \"{orders_owner}\"\n\
         [components.orders.subscription]\ntopics = [\"users.deleted\"]\nexactly_once = true\nlease_ms = 2000\n",
        admin_toml(),
        servers.join(", "),
        crate::support::component_toml("users", "users", &["/users"]),
        crate::support::component_toml("orders", "orders", &["/orders"]),
    );
    host().toml(&toml).data_dir(data).start()
}

/// Deliveries of `users.deleted` that `host` handled and acknowledged.
fn cancellations_on(host: &TestHost) -> f64 {
    crate::support::metric(
        &host.metrics(),
        "corral_event_deliveries_total",
        &[("subscriber", "orders"), ("outcome", "ack")],
    )
}

#[test]
fn a_deleted_users_orders_are_cancelled_by_another_host_across_a_kill_9_of_either() {
    let _turn = ONE_AT_A_TIME.lock().unwrap_or_else(|e| e.into_inner());
    let nats = nats_cluster(&[]);
    let all: Vec<&Daemon> = nats.iter().collect();
    let data: Vec<tempfile::TempDir> = (0..3).map(|_| tempfile::tempdir().unwrap()).collect();
    let n1 = shop_host(&all, "n1", "n1", data[0].path());
    eventually_within(Duration::from_secs(60), "n1 joins", || {
        n1.admin("GET", "/cluster", Vec::new()).status == 200
    });
    let n2 = shop_host(&all, "n2", "n1", data[1].path());
    let n3 = shop_host(&all, "n3", "n1", data[2].path());

    // Users with an open order each, made while one host owns both
    // services (an order asks users whether its user exists).
    let mut orders = Vec::new();
    for name in ["ada", "bob", "cyd"] {
        let user = n1.post(
            "/users",
            &json!({ "name": name, "email": format!("{name}@example.com") }),
        );
        assert_eq!(user.status, 201, "{}", user.text());
        let item = json!([{ "sku": "A", "quantity": 1, "unit_price_cents": 5 }]);
        let order = n1.post("/orders", &json!({ "user_id": user.json()["id"], "items": item }));
        assert_eq!(order.status, 201, "{}", order.text());
        orders.push((user.json()["id"].clone(), order.json()["id"].clone()));
    }
    // Then orders moves to n2: the publisher and the subscriber are
    // served by two hosts.
    eventually("n2 holds the whole log of orders", || {
        n3.admin("POST", "/cluster/components/orders/owner/n2", Vec::new())
            .status
            == 200
    });
    let status_of = |host: &TestHost, order: &Value| {
        let reply = host.get(&format!("/orders/{order}"));
        (reply.status == 200).then(|| reply.json()["status"].clone())
    };
    let deleted = |host: &TestHost, user: &Value| {
        let reply = host.delete(&format!("/users/{user}"));
        assert_eq!(reply.status, 204, "{}", reply.text());
    };

    let (ada, ada_order) = &orders[0];
    deleted(&n3, ada);
    eventually("n2 cancels ada's order", || {
        status_of(&n3, ada_order) == Some(json!("cancelled"))
    });
    assert!(cancellations_on(&n2) >= 1.0, "n2 handled it");
    assert_eq!(cancellations_on(&n1), 0.0, "not the publisher's host");

    // The subscriber's host dies just after the publish was acknowledged:
    // another host takes orders over and the delivery reaches it.
    let (bob, bob_order) = &orders[1];
    deleted(&n1, bob);
    n2.kill();
    eventually_within(Duration::from_secs(30), "bob's order is cancelled", || {
        status_of(&n3, bob_order) == Some(json!("cancelled"))
    });
    let n2 = shop_host(&all, "n2", "n1", data[1].path());

    // The publisher's host dies just after the publish was acknowledged:
    // the message is in its outbox, replicated with the user's deletion,
    // and the host that takes users over sends it.
    let (cyd, cyd_order) = &orders[2];
    deleted(&n1, cyd);
    n1.kill();
    eventually_within(Duration::from_secs(30), "cyd's order is cancelled", || {
        status_of(&n3, cyd_order) == Some(json!("cancelled"))
    });
    assert_ne!(owner_of(&n3, "users"), "n1");
    for (user, _) in &orders {
        assert_eq!(n2.get(&format!("/users/{user}")).status, 404, "user {user} is deleted");
    }
}

/// The host `host` sees owning `component`.
fn owner_of(host: &TestHost, component: &str) -> String {
    cluster_of(host)["desired"][component]["owner"]
        .as_str()
        .unwrap_or_default()
        .to_string()
}

#[test]
fn a_replica_serves_reads_while_it_holds_the_log_and_never_once_it_cannot_tell() {
    let _turn = ONE_AT_A_TIME.lock().unwrap_or_else(|e| e.into_inner());
    // Servers that do not tell clients of one another: a host given one
    // server stays with it.
    let mut nats = nats_cluster(&["--no_advertise"]);
    let data: Vec<tempfile::TempDir> = (0..3).map(|_| tempfile::tempdir().unwrap()).collect();
    let reads = "read_from = \"replica\"\nmax_replica_lag_ms = 500\n";
    let all: Vec<&Daemon> = nats.iter().collect();
    let n1 = users_host_with(&all, "n1", data[0].path(), reads);
    eventually_within(Duration::from_secs(60), "n1 joins", || !places(&n1).is_empty());
    // n2 reaches NATS through one server only.
    let n2 = users_host_with(&[&nats[2]], "n2", data[1].path(), reads);
    let n3 = users_host_with(&[&nats[0], &nats[1]], "n3", data[2].path(), reads);
    eventually_within(Duration::from_secs(60), "every host follows the log of users", || {
        let places = places(&n1);
        places.len() == 3 && places.iter().all(|(_, p)| p.is_some())
    });

    // A write through a replica goes to the owner; a read through it is
    // served by the replica once its copy holds the write.
    let made = n2.post("/users", &json!({ "name": "ada", "email": "ada@example.com" }));
    assert_eq!(
        (made.status, made.header("corral-node")),
        (201, Some("n1")),
        "{}",
        made.text()
    );
    let ada = made.json()["id"].clone();
    for replica in [&n2, &n3] {
        eventually("the replica serves the read", || {
            let read = replica.get(&format!("/users/{ada}"));
            read.status == 200 && read.header("corral-node") != Some("n1") && read.json()["email"] == "ada@example.com"
        });
    }
    let read = n1.get(&format!("/users/{ada}"));
    assert_eq!(read.header("corral-node"), Some("n1"));

    // n2 is cut off: it can no longer tell its copy holds the log, and
    // within the lag its reads go elsewhere.
    nats[2].stop();
    eventually_within(Duration::from_secs(5), "n2 stops serving reads itself", || {
        let read = n2.get(&format!("/users/{ada}"));
        read.header("corral-node") != Some("n2")
    });
    // A user made now is never missing from a read through n2: n2 answers
    // with the owner's copy, or not at all, never from its own. (The
    // servers left may first elect leaders for what the stopped one led.)
    let mut later = None;
    eventually_within(Duration::from_secs(30), "a host takes the write", || {
        let made = n3.post("/users", &json!({ "name": "bob", "email": "bob@example.com" }));
        later = (made.status == 201).then_some(made);
        later.is_some()
    });
    let bob = later.expect("made").json()["id"].clone();
    for _ in 0..20 {
        let read = n2.get(&format!("/users/{bob}"));
        assert_ne!(
            read.header("corral-node"),
            Some("n2"),
            "{}: {}",
            read.status,
            read.text()
        );
        assert!(
            [200, 502, 503].contains(&read.status),
            "{}: {}",
            read.status,
            read.text()
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[test]
fn a_restore_goes_through_the_owner_to_every_copy_and_to_a_host_that_starts_later() {
    let _turn = ONE_AT_A_TIME.lock().unwrap_or_else(|e| e.into_inner());
    let nats = nats_cluster(&[]);
    let all: Vec<&Daemon> = nats.iter().collect();
    let data: Vec<tempfile::TempDir> = (0..3).map(|_| tempfile::tempdir().unwrap()).collect();
    let mut hosts = three_hosts([all.clone(), all.clone(), all.clone()], &data);
    let make = |host: &TestHost, name: &str| {
        let made = host.post(
            "/users",
            &json!({ "name": name, "email": format!("{name}@example.com") }),
        );
        assert_eq!(made.status, 201, "{}", made.text());
    };
    make(&hosts[1], "kept");
    let backup = hosts[0].admin("GET", "/components/users/backup", Vec::new());
    assert_eq!(backup.status, 200, "{}", backup.text());
    make(&hosts[2], "lost");

    // A replica refuses it, naming the owner, which restores.
    let refused = hosts[1]
        .admin("PUT", "/components/users/backup", backup.body.clone())
        .assert_problem(409, "owned-elsewhere");
    assert!(refused["detail"].as_str().unwrap().contains("n1"), "{refused}");
    let restored = hosts[0].admin("PUT", "/components/users/backup", backup.body.clone());
    assert_eq!(restored.status, 200, "{}", restored.text());
    make(&hosts[2], "after");

    // n3 is down while the log moves on past the restore; a wiped host
    // starts from a snapshot taken before it.
    hosts.pop().unwrap().kill();
    make(&hosts[0], "later");
    wipe(data[2].path());
    hosts.push(users_host(&all, "n3", data[2].path()));
    eventually_within(Duration::from_secs(30), "every copy holds the log", || {
        let places = places(&hosts[0]);
        places.len() == 3 && places.iter().all(|(_, p)| p.is_some() && *p == places[0].1)
    });
    // The wiped host started before the restore, and reached it in the log.
    for replica in &hosts[1..] {
        assert!(replica.logs().contains("put an operator's restore in place"));
    }
    drop(hosts);
    for dir in &data {
        let mut emails = emails_in(dir.path());
        emails.sort();
        assert_eq!(
            emails,
            ["after@example.com", "kept@example.com", "later@example.com"],
            "{}",
            dir.path().display()
        );
    }
}
