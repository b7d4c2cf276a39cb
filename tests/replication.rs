//! Replicated databases: three real `corral` hosts on a real three-server
//! NATS cluster (JetStream, streams on three replicas), the owner of
//! `users` killed with SIGKILL while clients write.

use std::net::SocketAddr;
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde_json::{Value, json};

use crate::cluster::{Daemon, cluster_of};
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

/// Three NATS servers with JetStream, routed to one another as one cluster.
fn nats_cluster() -> Vec<Daemon> {
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
                .map(String::from)
                .to_vec()
            };
            Daemon::start("nats-server", args, dir)
        })
        .collect()
}

/// Host `node` of the cluster on `nats`, serving `users` (owned by n1),
/// its data in `data`.
fn users_host(nats: &[Daemon], node: &str, data: &Path) -> TestHost {
    let servers: Vec<String> = nats.iter().map(|n| format!("\"nats://{}\"", n.addr)).collect();
    let toml = format!(
        "{}\n[cluster]\nnats = [{}]\nnode = \"{node}\"\nnode_ttl_ms = 2000\n\n\
         [components.users]\nwasm = {:?}\nroutes = [\"/users\"]\nowner = \"n1\"\n",
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

#[test]
fn the_owner_killed_under_writes_loses_no_acknowledged_write_and_another_host_takes_over() {
    let nats = nats_cluster();
    let data: Vec<tempfile::TempDir> = (0..3).map(|_| tempfile::tempdir().unwrap()).collect();
    let n1 = users_host(&nats, "n1", data[0].path());
    // The owner joins first (the new NATS cluster elects its leaders
    // meanwhile): a host that finds it gone for long would take over.
    eventually_within(Duration::from_secs(60), "n1 joins", || !places(&n1).is_empty());
    let n2 = users_host(&nats, "n2", data[1].path());
    let n3 = users_host(&nats, "n3", data[2].path());
    eventually_within(Duration::from_secs(60), "every host follows the log of users", || {
        let places = places(&n1);
        places.len() == 3 && places.iter().all(|(_, p)| p.is_some())
    });
    assert_eq!(cluster_of(&n2)["desired"]["users"]["owner"], json!("n1"));

    // Eight clients write through every host; the owner dies under them.
    let urls: Vec<String> = [&n1, &n2, &n3].iter().map(|h| h.url("/users")).collect();
    let stop = Arc::new(AtomicBool::new(false));
    let acknowledged = Arc::new(Mutex::new(Vec::<(Instant, i64, String)>::new()));
    let writers: Vec<_> = (0..8)
        .map(|w| {
            let (urls, stop, acknowledged) = (urls.clone(), Arc::clone(&stop), Arc::clone(&acknowledged));
            std::thread::spawn(move || {
                let agent = client();
                let mut i = 0usize;
                while !stop.load(Ordering::Relaxed) {
                    i += 1;
                    let email = format!("w{w}-{i}@example.com");
                    let sent_at = Instant::now();
                    let body = json!({"name": format!("user {w} {i}"), "email": email});
                    let url = &urls[(w + i) % urls.len()];
                    let sent = agent
                        .post(url)
                        .header("content-type", "application/json")
                        .send(serde_json::to_vec(&body).unwrap());
                    match sent {
                        Ok(mut reply) if reply.status() == 201 => {
                            let user: Value =
                                serde_json::from_str(&reply.body_mut().read_to_string().unwrap()).unwrap();
                            let id = user["id"].as_i64().unwrap();
                            acknowledged.lock().unwrap().push((sent_at, id, email));
                        }
                        _ => std::thread::sleep(Duration::from_millis(20)),
                    }
                }
            })
        })
        .collect();
    std::thread::sleep(Duration::from_secs(2));
    let before_kill = acknowledged.lock().unwrap().len();
    assert!(before_kill > 50, "only {before_kill} writes before the kill");
    n1.kill();
    let killed = Instant::now();
    // Writes succeed again through the other hosts, without an operator.
    let recovered = loop {
        let after = acknowledged
            .lock()
            .unwrap()
            .iter()
            .find(|(at, _, _)| *at > killed)
            .map(|(at, _, _)| *at);
        if let Some(at) = after {
            break at - killed;
        }
        assert!(
            killed.elapsed() < Duration::from_secs(10),
            "no write succeeded within 10 s of the kill"
        );
        std::thread::sleep(Duration::from_millis(20));
    };
    std::thread::sleep(Duration::from_secs(1));
    stop.store(true, Ordering::Relaxed);
    for writer in writers {
        writer.join().unwrap();
    }
    eprintln!("writes succeeded again {recovered:?} after the owner was killed");
    let owner = cluster_of(&n2)["desired"]["users"]["owner"]
        .as_str()
        .unwrap()
        .to_string();
    assert_ne!(owner, "n1", "another host owns users now");

    // Every write acknowledged, before the kill or after, is there.
    let acknowledged = acknowledged.lock().unwrap().clone();
    for (_, id, email) in &acknowledged {
        let reply = n3.get(&format!("/users/{id}"));
        assert_eq!(reply.status, 200, "user {id}: {}", reply.text());
        assert_eq!(reply.json()["email"], json!(email), "user {id}");
    }

    // The killed host, started again on its file, follows the log as a
    // replica and catches up.
    let n1 = users_host(&nats, "n1", data[0].path());
    let caught_up = || {
        let places = places(&n2);
        let of = |node: &str| places.iter().find(|(n, _)| n == node).and_then(|(_, p)| *p);
        of("n1").is_some() && of("n1") == of(&owner)
    };
    let started = Instant::now();
    while !caught_up() {
        let logs = || format!("{:?}\n{}\n{}", places(&n2), n1.logs(), n2.logs());
        assert!(
            started.elapsed() < Duration::from_secs(30),
            "the restarted host never caught up: {}",
            logs()
        );
        std::thread::sleep(Duration::from_millis(100));
    }
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
