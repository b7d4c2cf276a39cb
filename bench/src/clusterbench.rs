//! The cluster benchmark, in two parts.
//!
//! Scaling: the relay component, which has no database, so that every host
//! serves it itself, answering `GET /relay-a/local` without calling anyone.
//! One host of a cluster directly; the same host through HAProxy with
//! `deploy/haproxy/haproxy.cfg`, its three servers all that one host; and
//! three hosts sharing a NATS server, through the same HAProxy config. Then
//! the one host at a single connection, directly and through HAProxy: what
//! the proxy adds to each request.
//!
//! Rate limits: one host (no cluster) with a limit so high it never
//! refuses, kept in Redis or by the host itself, against the same host
//! without a limit; at full load, and at a single connection, where the
//! difference in mean latency is what each limiter adds to a request.
//!
//! Durability: on a three-server NATS cluster, `POST /users` at the owner of
//! `users` whose commits go to the replicated log (three replicas) against
//! the owner of the same component with `durability = "local"`; then, five
//! times on a fresh cluster, the time from a kill -9 of the owner to the
//! first write acknowledged through another host.
//!
//! Calls: a typed call from one component to another owned by the same
//! host (in process) against one owned by another host (relay-store's
//! `forward`, one hop, `GET /relay-x/0`), at one connection and at full
//! load; and `POST /orders` (which asks users whether its user exists) with
//! users owned by the host that owns orders against users owned by another.
//!
//! The setups of a table take turns, round after round, so that whatever
//! else the machine does weighs on all alike; each figure is the median
//! round, with every round's beside it. CPU per request is read from
//! `/proc` for every server and wrk, over the measured run only. Every
//! server listens on loopback ports of its own with its files in a
//! temporary folder, and is stopped on exit. Prints the tables and writes
//! them to `target/bench/cluster.md`.
//!
//! `clusterbench [--duration SECONDS] [--warmup SECONDS] [--connections N]
//! [--threads N] [--rounds N] [--quick] [--only cluster|rate-limit|durability|calls]` from the
//! workspace root, after `just build` and `cargo build --release -p
//! corral-bench`; nats-server, redis-server, haproxy and wrk installed.

mod announce;
mod machine;

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, bail, ensure};
use serde::Deserialize;

/// What every setup serves: relay-a answering without calling relay-b.
const PATH: &str = "/relay-a/local";
/// A limit so high it never refuses: its burst (the count, by default)
/// outlasts any run, whatever rate the store keeps it at.
const NEVER_REFUSES: &str = "100000000/second";
const TOKEN: &str = "clusterbench-admin-token";

struct Options {
    duration: u64,
    warmup: u64,
    connections: u64,
    threads: u64,
    rounds: usize,
    only: Option<String>,
    root: PathBuf,
    /// Clock ticks per second, as `/proc/*/stat` counts CPU time.
    ticks: f64,
}

fn main() -> anyhow::Result<()> {
    let mut o = Options {
        duration: 10,
        warmup: 2,
        connections: 64,
        threads: 2,
        rounds: 3,
        only: None,
        root: std::env::current_dir()?,
        ticks: 100.0,
    };
    let mut args = std::env::args().skip(1);
    while let Some(arg) = args.next() {
        let mut value = |what: &str| args.next().with_context(|| format!("{arg} takes {what}"));
        match arg.as_str() {
            "--duration" => o.duration = value("seconds")?.parse()?,
            "--warmup" => o.warmup = value("seconds")?.parse()?,
            "--connections" => o.connections = value("a number")?.parse()?,
            "--threads" => o.threads = value("a number")?.parse()?,
            "--rounds" => o.rounds = value("a number")?.parse()?,
            "--quick" => (o.duration, o.warmup, o.rounds) = (3, 1, 1),
            "--only" => match value("cluster, rate-limit, durability or calls")?.as_str() {
                part @ ("cluster" | "rate-limit" | "durability" | "calls") => o.only = Some(part.to_string()),
                other => bail!("unknown part {other}: cluster, rate-limit, durability or calls"),
            },
            other => bail!(
                "unknown argument {other}; use --duration SECONDS, --warmup SECONDS, --connections N, \
                 --threads N, --rounds N, --quick, --only cluster|rate-limit|durability|calls"
            ),
        }
    }
    ensure!(
        o.rounds > 0 && o.duration > 0,
        "at least one round of at least one second"
    );
    ensure!(
        o.connections >= o.threads,
        "wrk needs at least as many connections as threads"
    );
    for needed in [
        "target/release/corral",
        "target/wasm32-wasip2/release/relay.wasm",
        "target/wasm32-wasip2/release/users.wasm",
        "target/wasm32-wasip2/release/orders.wasm",
        "target/wasm32-wasip2/release/relay_store.wasm",
        "bench/wrk/scenario.lua",
        "deploy/haproxy/haproxy.cfg",
        "bench/wrk/summary.lua",
    ] {
        ensure!(
            o.root.join(needed).is_file(),
            "{needed} is missing: run `just bench-cluster` from the workspace root"
        );
    }
    if let Ok(out) = Command::new("getconf").arg("CLK_TCK").output() {
        o.ticks = String::from_utf8_lossy(&out.stdout).trim().parse().unwrap_or(100.0);
    }
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
    let mut report = format!(
        "wrk, {} threads, {} connections (1 thread for the single-connection runs), {} s after a {} s warm-up; \
         {} rounds with the setups taking turns, the median round reported; {cores} cores for everything \
         (servers and wrk alike). `GET {PATH}`: the relay component answering without calling anyone.\n",
        o.threads, o.connections, o.duration, o.warmup, o.rounds
    );
    let part = |name: &str| o.only.as_deref().is_none_or(|only| only == name);
    if part("cluster") {
        report += &scaling(&o, cores)?;
    }
    if part("rate-limit") {
        report += &rate_limits(&o, cores)?;
    }
    if part("durability") {
        report += &durability(&o, cores)?;
    }
    if part("calls") {
        report += &calls(&o, cores)?;
    }
    let report = format!("{}\n\n{report}", machine::describe());
    println!("\n{report}");
    let out = o.root.join("target/bench");
    std::fs::create_dir_all(&out)?;
    std::fs::write(out.join("cluster.md"), &report)?;
    eprintln!("written to {}", out.join("cluster.md").display());
    Ok(())
}

/// `POST /users` at a replicated owner against a local one, then failover.
fn durability(o: &Options, cores: usize) -> anyhow::Result<String> {
    let nats = nats_cluster()?;
    // Two sets of three hosts on one NATS cluster: n1-n3 serve users with
    // its commits replicated, m1-m3 users-local, the same code, local.
    let users = |name: &str, owner: &str, durability: &str| {
        format!(
            "[components.{name}]\nwasm = {:?}\nroutes = [\"/users\"]\nowner = \"{owner}\"\ndurability = \"{durability}\"\n",
            o.root
                .join("target/wasm32-wasip2/release/users.wasm")
                .display()
                .to_string()
        )
    };
    let mut hosts = Vec::new();
    for (set, name, durability) in [("n", "users", "replicated"), ("m", "users-local", "local")] {
        for i in 1..=3 {
            let node = format!("{set}{i}");
            let config = format!(
                "{}{}",
                cluster_section(&nats, &node),
                users(name, &format!("{set}1"), durability)
            );
            hosts.push(start_joined(o, &node, &config)?);
        }
    }
    let watch = Watch {
        processes: [("corral", &hosts[0].process), ("corral", &hosts[3].process)]
            .into_iter()
            .chain(nats.iter().map(|n| ("nats", &n.process)))
            .collect(),
        hosts: vec![&hosts[0], &hosts[3]],
    };
    let setups = [
        ("replicated (3 NATS replicas)".to_string(), hosts[0].url("/users")),
        ("local".to_string(), hosts[3].url("/users")),
    ];
    let full = rounds(o, &setups, o.connections, o.threads, &watch)?;
    let medians: Vec<&Run> = full.iter().map(|runs| median(runs, Run::rps)).collect();
    let mut out = String::from(
        "\n## Durability\n\n`POST /users` (a new user each, `bench/wrk/scenario.lua`) sent to the owner of \
         the component, one of three hosts on a three-server NATS cluster; CPU per request as above, nats \
         being the three servers together.\n\n\
         | durability | requests/s | p50 | p99 | requests/s each round | p99 each round | CPU/request corral | nats | busy (others) |\n\
         |---|---|---|---|---|---|---|---|---|\n",
    );
    for ((name, _), (runs, run)) in setups.iter().zip(full.iter().zip(&medians)) {
        out += &format!(
            "| {name} | {:.0} | {} | {} | {} | {} | {:.1} µs | {:.1} µs | {} |\n",
            run.rps(),
            ms(run.summary.p50_us as f64),
            ms(run.summary.p99_us as f64),
            each(runs, |r| format!("{:.0}", r.rps())),
            each(runs, |r| ms(r.summary.p99_us as f64)),
            run.cpu_per_request("corral"),
            run.cpu_per_request("nats"),
            run.busy(cores),
        );
    }
    out += &format!(
        "\nReplicated / local: **{:.2}×** requests/s.\n",
        medians[0].rps() / medians[1].rps()
    );
    out += &socket_errors(&[&full]);
    drop((hosts, nats));

    let mut failovers = Vec::new();
    for run in 1..=5 {
        let took = failover(o)?;
        eprintln!("failover {run}: the first write {took:?} after the kill");
        failovers.push(took);
    }
    let mut sorted = failovers.clone();
    sorted.sort();
    out += &format!(
        "\nFailover, five times on a fresh cluster (`node_ttl_ms = 2000`): clients write through n2 and n3 \
         while n1, the owner, is killed with SIGKILL; the time from the kill to the first write sent after it \
         that is acknowledged: median **{:.2} s** ({}).\n",
        sorted[2].as_secs_f64(),
        failovers
            .iter()
            .map(|d| format!("{:.2} s", d.as_secs_f64()))
            .collect::<Vec<_>>()
            .join(", ")
    );
    Ok(out)
}

/// Typed calls in process and between hosts, and `POST /orders` with
/// users on the same host and on another.
fn calls(o: &Options, cores: usize) -> anyhow::Result<String> {
    let wasm = |name: &str| {
        let path = o.root.join(format!("target/wasm32-wasip2/release/{name}.wasm"));
        format!("{:?}", path.display().to_string())
    };
    let component = |name: &str, wasm: &str, route: &str, owner: &str| {
        format!(
            "[components.{name}]\nwasm = {wasm}\nroutes = [\"{route}\"]\nowner = \"{owner}\"\ndurability = \"local\"\n"
        )
    };
    let imports = |importer: &str, interface: &str, provider: &str| {
        format!("[components.{importer}.imports]\n\"{interface}\" = \"{provider}\"\n")
    };
    let relay = wasm("relay_store");
    let shop = |users_owner: &str, orders_owner: &str| {
        format!(
            "{}{}",
            component("users", &wasm("users"), "/users", users_owner),
            component("orders", &wasm("orders"), "/orders", orders_owner)
        )
    };
    // Cluster a: relay-a -> relay-b on n1, relay-c on n1 -> relay-d on n2,
    // orders on n1 asking users on n2. Cluster b: both on m1.
    let relays = [
        component("relay-a", &relay, "/relay-a", "n1"),
        imports("relay-a", "corral:test/relay@0.1.0", "relay-b"),
        component("relay-b", &relay, "/relay-b", "n1"),
        imports("relay-b", "corral:test/relay@0.1.0", "relay-a"),
        component("relay-c", &relay, "/relay-c", "n1"),
        imports("relay-c", "corral:test/relay@0.1.0", "relay-d"),
        component("relay-d", &relay, "/relay-d", "n2"),
        imports("relay-d", "corral:test/relay@0.1.0", "relay-c"),
    ]
    .concat();
    let (a, b) = (nats()?, nats()?);
    let section = |nats: &Daemon, node: &str| {
        cluster_section(std::slice::from_ref(nats), node)
            .replace("node_ttl_ms = 2000\n", "node_ttl_ms = 2000\nreplicas = 1\n")
    };
    let mut hosts = Vec::new();
    for node in ["n1", "n2"] {
        let config = format!("{}{relays}{}", section(&a, node), shop("n2", "n1"));
        hosts.push(start_joined(o, node, &config)?);
    }
    for node in ["m1", "m2"] {
        let config = format!("{}{}", section(&b, node), shop("m1", "m1"));
        hosts.push(start_joined(o, node, &config)?);
    }
    for host in [&hosts[0], &hosts[2]] {
        let created = agent()
            .post(host.url("/users"))
            .header("content-type", "application/json")
            .send(r#"{"name":"Bench","email":"bench@example.com"}"#)?;
        ensure!(
            created.status() == 201,
            "{} did not create the user: {}",
            host.name,
            created.status()
        );
    }
    for path in ["/relay-a/0", "/relay-c/0"] {
        let (status, _) = get(&hosts[0].url(path))?;
        ensure!(status == 200, "n1 answers {path} with {status}");
    }
    let watch = Watch {
        processes: hosts
            .iter()
            .map(|h| ("corral", &h.process))
            .chain([("nats", &a.process), ("nats", &b.process)])
            .collect(),
        hosts: hosts.iter().collect(),
    };
    let relay_setups = [
        ("in process (n1 -> n1)".to_string(), hosts[0].url("/relay-a/0")),
        ("between hosts (n1 -> n2)".to_string(), hosts[0].url("/relay-c/0")),
    ];
    let order_setups = [
        ("users on the same host".to_string(), hosts[2].url("/orders")),
        ("users on another host".to_string(), hosts[0].url("/orders")),
    ];
    let single = rounds(o, &relay_setups, 1, 1, &watch)?;
    let full = rounds(o, &relay_setups, o.connections, o.threads, &watch)?;
    let orders_single = rounds(o, &order_setups, 1, 1, &watch)?;
    let orders_full = rounds(o, &order_setups, o.connections, o.threads, &watch)?;

    let mut out = String::from(
        "\n## Calls between hosts\n\nTwo hosts of a cluster on one NATS server. `GET /relay-x/0`: relay-store's \
         `forward`, one typed call from a component on n1 to its peer, owned by n1 itself or by n2 (every \
         component with a database of its own, `durability = \"local\"`). `POST /orders` (`bench/wrk/scenario.lua`'s \
         post_order) asks users whether its user exists: users owned by the host that owns orders, on a cluster \
         of its own, against users owned by the other host. CPU per request is both hosts' together.\n",
    );
    for (title, setups, single, full) in [
        ("A typed call", &relay_setups, &single, &full),
        ("`POST /orders`", &order_setups, &orders_single, &orders_full),
    ] {
        out += &format!(
            "\n{title}:\n\n\
             | setup | p50 at 1 connection | p99 at 1 connection | mean each round | requests/s at {} | p99 | requests/s each round | CPU/request corral | busy (others) |\n\
             |---|---|---|---|---|---|---|---|---|\n",
            o.connections
        );
        for (i, (name, _)) in setups.iter().enumerate() {
            let one = median(&single[i], Run::mean);
            let many = median(&full[i], Run::rps);
            out += &format!(
                "| {name} | {} µs | {} µs | {} | {:.0} | {} | {} | {:.1} µs | {} |\n",
                one.summary.p50_us,
                one.summary.p99_us,
                each(&single[i], |r| format!("{:.1}", r.mean())),
                many.rps(),
                ms(many.summary.p99_us as f64),
                each(&full[i], |r| format!("{:.0}", r.rps())),
                many.cpu_per_request("corral"),
                many.busy(cores),
            );
        }
        let (near, far) = (median(&single[0], Run::mean), median(&single[1], Run::mean));
        out += &format!(
            "\nBetween hosts / in process: **{:.2}×** the latency at one connection (+{} µs at the median), \
             **{:.2}×** the requests/s at {}.\n",
            far.mean() / near.mean(),
            p50_difference(far, near),
            median(&full[1], Run::rps).rps() / median(&full[0], Run::rps).rps(),
            o.connections,
        );
    }
    out += &socket_errors(&[&single, &full, &orders_single, &orders_full]);
    Ok(out)
}

/// One failover on a fresh cluster: how long after a kill -9 of the owner
/// of users a write sent through another host is acknowledged again.
fn failover(o: &Options) -> anyhow::Result<Duration> {
    let nats = nats_cluster()?;
    let users = format!(
        "[components.users]\nwasm = {:?}\nroutes = [\"/users\"]\nowner = \"n1\"\n",
        o.root
            .join("target/wasm32-wasip2/release/users.wasm")
            .display()
            .to_string()
    );
    let mut hosts = Vec::new();
    for node in ["n1", "n2", "n3"] {
        hosts.push(start_joined(
            o,
            node,
            &format!("{}{users}", cluster_section(&nats, node)),
        )?);
    }
    let urls = [hosts[1].url("/users"), hosts[2].url("/users")];
    let write = |i: usize| -> bool {
        let body = format!(
            r#"{{"name":"f{i}","email":"failover-{}-{i}@example.com"}}"#,
            random_run()
        );
        let sent = agent()
            .post(&urls[i % 2])
            .header("content-type", "application/json")
            .send(body);
        sent.is_ok_and(|r| r.status() == 201)
    };
    let mut i = 0;
    let warm = Instant::now();
    while warm.elapsed() < Duration::from_secs(2) {
        i += 1;
        write(i);
    }
    let owner = hosts.remove(0);
    drop(owner);
    let killed = Instant::now();
    loop {
        i += 1;
        if write(i) {
            return Ok(killed.elapsed());
        }
        ensure!(
            killed.elapsed() < Duration::from_secs(60),
            "no write succeeded within a minute of the kill"
        );
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// A `[cluster]` section for host `node` on the NATS servers `nats`.
fn cluster_section(nats: &[Daemon], node: &str) -> String {
    let servers: Vec<String> = nats.iter().map(|n| format!("\"nats://{}\"", n.addr)).collect();
    format!(
        "[cluster]\nnats = [{}]\nnode = \"{node}\"\nnode_ttl_ms = 2000\n\n",
        servers.join(", ")
    )
}

/// Starts host `name` and waits until it has joined its cluster.
fn start_joined(o: &Options, name: &str, config: &str) -> anyhow::Result<Host> {
    let host = Host::start(o, name, config)?;
    let started = Instant::now();
    loop {
        let status = agent()
            .get(format!("http://{}/cluster", host.admin))
            .header("authorization", format!("Bearer {TOKEN}"))
            .call()?
            .status();
        if status == 200 {
            return Ok(host);
        }
        ensure!(
            started.elapsed() < Duration::from_secs(60),
            "{name} did not join its cluster"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// A number telling one run's writes from another's.
fn random_run() -> u128 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos())
}

/// One host directly, one host through HAProxy, three hosts through HAProxy.
fn scaling(o: &Options, cores: usize) -> anyhow::Result<String> {
    let nats = nats()?;
    let cluster = |node: &str| {
        format!(
            "[cluster]\nnats = [\"nats://{}\"]\nnode = \"{node}\"\nnode_ttl_ms = 2000\nreplicas = 1\n\n{}",
            nats.addr,
            relays(o)
        )
    };
    // One after the other: the first publishes the cluster's state.
    let hosts = ["n1", "n2", "n3"]
        .into_iter()
        .map(|node| Host::start(o, node, &cluster(node)))
        .collect::<anyhow::Result<Vec<_>>>()?;
    for host in &hosts {
        let (status, _) = get(&host.url(PATH))?;
        ensure!(status == 200, "{} answers {PATH} with {status}", host.name);
    }
    let one = haproxy(o, [&hosts[0], &hosts[0], &hosts[0]])?;
    let three = haproxy(o, [&hosts[0], &hosts[1], &hosts[2]])?;
    let watch = Watch {
        processes: hosts
            .iter()
            .map(|h| ("corral", &h.process))
            .chain([("haproxy", &one.process), ("haproxy", &three.process)])
            .chain([("nats", &nats.process)])
            .collect(),
        hosts: hosts.iter().collect(),
    };
    let setups = [
        ("one host, directly".to_string(), hosts[0].url(PATH)),
        (
            "one host, through HAProxy".to_string(),
            format!("http://{}{PATH}", one.addr),
        ),
        (
            "three hosts, through HAProxy".to_string(),
            format!("http://{}{PATH}", three.addr),
        ),
    ];
    let full = rounds(o, &setups, o.connections, o.threads, &watch)?;
    let single = rounds(o, &setups[..2], 1, 1, &watch)?;

    let mut out = format!(
        "\n## Scaling\n\nThree hosts of one cluster (NATS JetStream), each serving the relays; HAProxy with \
         `deploy/haproxy/haproxy.cfg`, its three servers all n1 for \"one host\". CPU per request is the CPU time \
         each kind of process used during the run over the requests served; busy is all of it over {cores} \
         cores, and in brackets what other processes of the machine used meanwhile.\n\n\
         | setup | requests/s | p50 | p99 | requests/s each round | CPU/request corral | haproxy | wrk | busy (others) | served by n1/n2/n3 | forwarded |\n\
         |---|---|---|---|---|---|---|---|---|---|---|\n"
    );
    let medians: Vec<&Run> = full.iter().map(|runs| median(runs, Run::rps)).collect();
    for ((name, _), (runs, run)) in setups.iter().zip(full.iter().zip(&medians)) {
        let served: f64 = run.served.iter().sum::<f64>().max(1.0);
        let shares: Vec<String> = run
            .served
            .iter()
            .map(|s| format!("{:.0}%", 100.0 * s / served))
            .collect();
        out += &format!(
            "| {name} | {:.0} | {} | {} | {} | {:.1} µs | {:.1} µs | {:.1} µs | {} | {} | {:.0} |\n",
            run.rps(),
            ms(run.summary.p50_us as f64),
            ms(run.summary.p99_us as f64),
            each(runs, |r| format!("{:.0}", r.rps())),
            run.cpu_per_request("corral"),
            run.cpu_per_request("haproxy"),
            run.cpu_per_request("wrk"),
            run.busy(cores),
            shares.join(" / "),
            run.forwarded,
        );
    }
    out += &format!(
        "\nThree hosts / one host, through HAProxy: **{:.2}×** requests/s. \
         One host through HAProxy / directly: **{:.2}×**.\n",
        medians[2].rps() / medians[1].rps(),
        medians[1].rps() / medians[0].rps(),
    );
    out += "\nAt a single connection (no queueing):\n\n\
            | setup | mean | p50 | p99 | mean each round | CPU/request corral | haproxy | wrk | busy (others) |\n\
            |---|---|---|---|---|---|---|---|---|\n";
    let means: Vec<&Run> = single.iter().map(|runs| median(runs, Run::mean)).collect();
    for ((name, _), (runs, run)) in setups.iter().zip(single.iter().zip(&means)) {
        out += &format!(
            "| {name} | {:.1} µs | {:.0} µs | {:.0} µs | {} | {:.1} µs | {:.1} µs | {:.1} µs | {} |\n",
            run.mean(),
            run.summary.p50_us,
            run.summary.p99_us,
            each(runs, |r| format!("{:.1}", r.mean())),
            run.cpu_per_request("corral"),
            run.cpu_per_request("haproxy"),
            run.cpu_per_request("wrk"),
            run.busy(cores),
        );
    }
    out += &format!(
        "\nHAProxy adds **{:.1} µs** to each request at one connection ({} µs at the median).\n",
        means[1].mean() - means[0].mean(),
        p50_difference(means[1], means[0]),
    );
    out += &socket_errors(&[&full, &single]);
    Ok(out)
}

/// No limit, a local limit and a limit in Redis, on one host each.
fn rate_limits(o: &Options, cores: usize) -> anyhow::Result<String> {
    let redis = redis()?;
    let limit = format!("[components.relay-a.rate_limit]\nrate = \"{NEVER_REFUSES}\"\n");
    let store = format!("[server]\nrate_limit_store = \"redis://{}\"\n\n", redis.addr);
    let none = Host::start(o, "none", &relays(o))?;
    let local = Host::start(o, "local", &format!("{}{limit}", relays(o)))?;
    let shared = Host::start(o, "redis", &format!("{store}{}{limit}", relays(o)))?;
    for (host, limited) in [(&none, false), (&local, true), (&shared, true)] {
        let (status, headers) = get(&host.url(PATH))?;
        ensure!(status == 200, "{} answers {PATH} with {status}", host.name);
        ensure!(
            headers.contains_key("ratelimit-limit") == limited,
            "{}: a rate limit header where none was expected, or none where one was",
            host.name
        );
    }
    let watch = Watch {
        processes: [&none, &local, &shared]
            .into_iter()
            .map(|h| ("corral", &h.process))
            .chain([("redis", &redis.process)])
            .collect(),
        hosts: vec![&none, &local, &shared],
    };
    let setups = [
        ("no limit".to_string(), none.url(PATH)),
        ("local limiter".to_string(), local.url(PATH)),
        ("Redis".to_string(), shared.url(PATH)),
    ];
    let calls_before = redis_script_calls(redis.addr)?.0;
    let full = rounds(o, &setups, o.connections, o.threads, &watch)?;
    let single = rounds(o, &setups, 1, 1, &watch)?;

    // Every request the Redis host served was checked in Redis, not by the
    // fallback it uses when Redis does not answer.
    let fallbacks = shared.metric("corral_rate_limit_fallbacks_total")?;
    ensure!(
        fallbacks == 0.0,
        "{fallbacks} requests were limited by the host alone: Redis did not answer in time"
    );
    let (calls_after, usec_per_call) = redis_script_calls(redis.addr)?;
    let served = shared.metric("corral_requests_total")?;
    ensure!(
        calls_after - calls_before >= served - 10.0,
        "Redis ran {} scripts for {served} requests",
        calls_after - calls_before
    );

    let mut out = format!(
        "\n## Rate limits\n\nOne host each, no cluster; relay-a limited to {NEVER_REFUSES} per client (never \
         refused: every response was checked to be 2xx), kept by the host (governor) or in Redis \
         (`server.rate_limit_store`, one Lua script per request). Redis ran {:.0} scripts for the {served:.0} \
         requests of the Redis host, none decided by the fallback; Redis itself reports {usec_per_call:.2} µs \
         per script call.\n\n\
         | limiter | requests/s | p50 | p99 | requests/s each round | CPU/request corral | redis | wrk | busy (others) |\n\
         |---|---|---|---|---|---|---|---|---|\n",
        calls_after - calls_before,
    );
    let medians: Vec<&Run> = full.iter().map(|runs| median(runs, Run::rps)).collect();
    for ((name, _), (runs, run)) in setups.iter().zip(full.iter().zip(&medians)) {
        out += &format!(
            "| {name} | {:.0} | {} | {} | {} | {:.1} µs | {:.1} µs | {:.1} µs | {} |\n",
            run.rps(),
            ms(run.summary.p50_us as f64),
            ms(run.summary.p99_us as f64),
            each(runs, |r| format!("{:.0}", r.rps())),
            run.cpu_per_request("corral"),
            run.cpu_per_request("redis"),
            run.cpu_per_request("wrk"),
            run.busy(cores),
        );
    }
    out += "\nAt a single connection (no queueing):\n\n\
            | limiter | mean | p50 | p99 | mean each round | CPU/request corral | redis | busy (others) |\n\
            |---|---|---|---|---|---|---|---|\n";
    let means: Vec<&Run> = single.iter().map(|runs| median(runs, Run::mean)).collect();
    for ((name, _), (runs, run)) in setups.iter().zip(single.iter().zip(&means)) {
        out += &format!(
            "| {name} | {:.1} µs | {:.0} µs | {:.0} µs | {} | {:.1} µs | {:.1} µs | {} |\n",
            run.mean(),
            run.summary.p50_us,
            run.summary.p99_us,
            each(runs, |r| format!("{:.1}", r.mean())),
            run.cpu_per_request("corral"),
            run.cpu_per_request("redis"),
            run.busy(cores),
        );
    }
    out += &format!(
        "\nAdded to each request, from the mean latency at one connection (from the p50 in brackets): \
         the local limiter **{:.1} µs** ({} µs) over no limit; Redis **{:.1} µs** ({} µs) over the local \
         limiter, which is its round trip, and {:.1} µs ({} µs) over no limit. At {} connections, requests/s \
         with Redis / with the local limiter: **{:.2}×**; local limiter / no limit: {:.2}×.\n",
        means[1].mean() - means[0].mean(),
        p50_difference(means[1], means[0]),
        means[2].mean() - means[1].mean(),
        p50_difference(means[2], means[1]),
        means[2].mean() - means[0].mean(),
        p50_difference(means[2], means[0]),
        o.connections,
        medians[2].rps() / medians[1].rps(),
        medians[1].rps() / medians[0].rps(),
    );
    out += &socket_errors(&[&full, &single]);
    Ok(out)
}

/// relay-a, calling relay-b: neither has a database.
fn relays(o: &Options) -> String {
    let relay = o.root.join("target/wasm32-wasip2/release/relay.wasm");
    let relay = format!("{:?}", relay.display().to_string());
    format!(
        "[components.relay-a]\nwasm = {relay}\nroutes = [\"/relay-a\"]\n\
         [components.relay-a.imports]\n\"corral:test/relay@0.1.0\" = \"relay-b\"\n\
         [components.relay-b]\nwasm = {relay}\nroutes = [\"/relay-b\"]\n"
    )
}

/// A process of the benchmark, killed on drop, with the folder it works in.
struct Process {
    child: Child,
    _dir: tempfile::TempDir,
}

impl Process {
    /// CPU time used so far, user and system, in clock ticks.
    fn cpu_ticks(&self) -> u64 {
        stat_ticks(&format!("/proc/{}/stat", self.child.id()), 11)
    }
}

impl Drop for Process {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Two consecutive fields of `/proc/*/stat` added up, counted from the one
/// after the command name: utime and stime at 11, cutime and cstime at 13.
fn stat_ticks(path: &str, first: usize) -> u64 {
    let stat = std::fs::read_to_string(path).unwrap_or_default();
    let fields: Vec<u64> = stat
        .rsplit_once(')')
        .map(|(_, rest)| rest.split_whitespace().map(|f| f.parse().unwrap_or(0)).collect())
        .unwrap_or_default();
    fields.get(first).copied().unwrap_or(0) + fields.get(first + 1).copied().unwrap_or(0)
}

/// NATS, Redis or HAProxy, listening at `addr`.
struct Daemon {
    process: Process,
    addr: SocketAddr,
}

impl Daemon {
    /// Starts `command` in `dir`, its output in a log there, and waits until
    /// `addr` takes connections.
    fn start(name: &str, mut command: Command, addr: SocketAddr, dir: tempfile::TempDir) -> anyhow::Result<Daemon> {
        let log = dir.path().join(format!("{name}.log"));
        let file = std::fs::File::create(&log)?;
        let child = command
            .current_dir(dir.path())
            .stdout(file.try_clone()?)
            .stderr(file)
            .spawn()
            .with_context(|| format!("starting {name}"))?;
        let mut process = Process { child, _dir: dir };
        let started = Instant::now();
        while TcpStream::connect(addr).is_err() {
            let exited = process.child.try_wait()?.is_some();
            if exited || started.elapsed() > Duration::from_secs(20) {
                let log = std::fs::read_to_string(&log).unwrap_or_default();
                bail!("{name} did not start listening on {addr}:\n{log}");
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        Ok(Daemon { process, addr })
    }
}

fn free_addr() -> anyhow::Result<SocketAddr> {
    Ok(TcpListener::bind("127.0.0.1:0")?.local_addr()?)
}

/// `program` on the PATH, or in the folders daemons are installed in.
fn program(name: &str) -> anyhow::Result<PathBuf> {
    std::env::var_os("PATH")
        .map(|path| std::env::split_paths(&path).collect::<Vec<_>>())
        .unwrap_or_default()
        .into_iter()
        .chain(["/usr/sbin", "/usr/local/sbin", "/sbin"].map(PathBuf::from))
        .map(|dir| dir.join(name))
        .find(|p| p.is_file())
        .with_context(|| format!("{name} is not installed"))
}

/// A NATS server with JetStream, its store in a temporary folder.
fn nats() -> anyhow::Result<Daemon> {
    let dir = tempfile::tempdir()?;
    let addr = free_addr()?;
    let mut command = Command::new(program("nats-server")?);
    command.args(["-js", "-sd"]).arg(dir.path().join("jetstream")).args([
        "-a",
        "127.0.0.1",
        "-p",
        &addr.port().to_string(),
    ]);
    Daemon::start("nats-server", command, addr, dir)
}

/// Three NATS servers with JetStream, routed to one another as one cluster.
fn nats_cluster() -> anyhow::Result<Vec<Daemon>> {
    let routes: Vec<SocketAddr> = (0..3).map(|_| free_addr()).collect::<anyhow::Result<_>>()?;
    (0..3)
        .map(|i| {
            let dir = tempfile::tempdir()?;
            let addr = free_addr()?;
            let others: Vec<String> = (0..3)
                .filter(|j| *j != i)
                .map(|j| format!("nats://{}", routes[j]))
                .collect();
            let mut command = Command::new(program("nats-server")?);
            command
                .args(["-js", "-sd"])
                .arg(dir.path().join("jetstream"))
                .args([
                    "-a",
                    "127.0.0.1",
                    "-p",
                    &addr.port().to_string(),
                    "-n",
                    &format!("s{i}"),
                ])
                .args([
                    "--cluster_name",
                    "corral",
                    "--cluster",
                    &format!("nats://{}", routes[i]),
                ])
                .args(["--routes", &others.join(",")]);
            Daemon::start("nats-server", command, addr, dir)
        })
        .collect()
}

/// A Redis server that keeps nothing on disk.
fn redis() -> anyhow::Result<Daemon> {
    let dir = tempfile::tempdir()?;
    let addr = free_addr()?;
    let mut command = Command::new(program("redis-server")?);
    command.args(["--port", &addr.port().to_string()]).args([
        "--bind",
        "127.0.0.1",
        "--save",
        "",
        "--appendonly",
        "no",
    ]);
    Daemon::start("redis-server", command, addr, dir)
}

/// HAProxy with `deploy/haproxy/haproxy.cfg`, its three servers `hosts`;
/// once every one of them answers through it.
fn haproxy(o: &Options, hosts: [&Host; 3]) -> anyhow::Result<Daemon> {
    let dir = tempfile::tempdir()?;
    let addr = free_addr()?;
    let mut command = Command::new(program("haproxy")?);
    command.env("CORRAL_LISTEN", addr.to_string());
    for (i, host) in hosts.iter().enumerate() {
        command.env(format!("CORRAL_{}", i + 1), host.addr.to_string());
        command.env(format!("CORRAL_{}_ADMIN", i + 1), host.admin.port().to_string());
    }
    command
        .args(["-db", "-f"])
        .arg(o.root.join("deploy/haproxy/haproxy.cfg"));
    let daemon = Daemon::start("haproxy", command, addr, dir)?;
    let mut expected: Vec<&str> = hosts.iter().map(|h| h.name.as_str()).collect();
    expected.sort();
    expected.dedup();
    let started = Instant::now();
    loop {
        let mut nodes = Vec::new();
        for _ in 0..6 {
            match get(&format!("http://{addr}{PATH}")) {
                Ok((200, headers)) => {
                    let node = headers.get("corral-node").and_then(|n| n.to_str().ok());
                    nodes.push(node.unwrap_or("?").to_string());
                }
                Ok((status, _)) => nodes.push(status.to_string()),
                Err(e) => nodes.push(e.to_string()),
            }
        }
        nodes.sort();
        nodes.dedup();
        if nodes == expected {
            return Ok(daemon);
        }
        ensure!(
            started.elapsed() < Duration::from_secs(20),
            "HAProxy answers from {nodes:?}, not {expected:?}"
        );
        std::thread::sleep(Duration::from_millis(200));
    }
}

/// A corral host, with an admin listener.
struct Host {
    name: String,
    process: Process,
    addr: SocketAddr,
    admin: SocketAddr,
}

impl Host {
    /// Serves `config` (the components, and any `[server]` or `[cluster]`).
    fn start(o: &Options, name: &str, config: &str) -> anyhow::Result<Host> {
        let dir = tempfile::tempdir()?;
        let file = dir.path().join("corral.toml");
        std::fs::write(
            &file,
            format!(
                "listen = \"127.0.0.1:0\"\ndata_dir = {:?}\ncache_dir = {:?}\n\n\
                 [admin]\nlisten = \"127.0.0.1:0\"\ntoken = \"{TOKEN}\"\n\n{config}",
                dir.path().join("data").display().to_string(),
                o.root.join("target/corral-cache").display().to_string(),
            ),
        )?;
        let mut child = Command::new(o.root.join("target/release/corral"))
            .args(["serve", "--config"])
            .arg(&file)
            .env("RUST_LOG", "info,corral::access=warn")
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .context("starting corral")?;
        let stderr = child.stderr.take().expect("piped");
        let process = Process { child, _dir: dir };
        let listening = announce::listeners(stderr, name.to_string(), &["ERROR", "WARN"]);
        let (addr, admin) = announce::addresses(&listening, Duration::from_secs(120))
            .with_context(|| format!("corral {name} did not start"))?;
        Ok(Host {
            name: name.to_string(),
            process,
            addr: addr.parse()?,
            admin: admin
                .context("the public listener started before the admin listener")?
                .parse()?,
        })
    }

    fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.addr)
    }

    /// A metric from the admin API, its series added up.
    fn metric(&self, name: &str) -> anyhow::Result<f64> {
        let text = agent()
            .get(format!("http://{}/metrics", self.admin))
            .header("authorization", format!("Bearer {TOKEN}"))
            .call()?
            .body_mut()
            .read_to_string()?;
        Ok(text
            .lines()
            .filter_map(|line| {
                let (series, value) = line.rsplit_once(' ')?;
                let metric = series.split_once('{').map_or(series, |(m, _)| m);
                (metric == name).then(|| value.parse::<f64>().ok())?
            })
            .sum())
    }
}

fn agent() -> ureq::Agent {
    ureq::Agent::config_builder().http_status_as_error(false).build().into()
}

/// One GET on a connection of its own: the status and headers.
fn get(url: &str) -> anyhow::Result<(u16, http::HeaderMap)> {
    let mut response = agent().get(url).call()?;
    response.body_mut().read_to_string()?;
    Ok((response.status().as_u16(), response.headers().clone()))
}

/// The Lua scripts Redis has run (EVAL and EVALSHA), and its µs per call.
fn redis_script_calls(addr: SocketAddr) -> anyhow::Result<(f64, f64)> {
    let mut stream = TcpStream::connect(addr)?;
    stream.write_all(b"INFO commandstats\r\nQUIT\r\n")?;
    let mut text = String::new();
    stream.read_to_string(&mut text)?;
    let (mut calls, mut usec) = (0.0, 0.0);
    for line in text.lines() {
        let Some(stats) = ["cmdstat_evalsha:", "cmdstat_eval:"]
            .iter()
            .find_map(|p| line.strip_prefix(p))
        else {
            continue;
        };
        let field = |name: &str| -> f64 {
            stats
                .split(',')
                .find_map(|kv| kv.strip_prefix(name)?.strip_prefix('='))
                .and_then(|v| v.parse().ok())
                .unwrap_or(0.0)
        };
        calls += field("calls");
        usec += field("usec");
    }
    Ok((calls, usec / calls.max(1.0)))
}

/// What `bench/wrk/summary.lua` prints when wrk is done.
#[derive(Debug, Deserialize)]
struct Summary {
    requests: u64,
    duration_us: u64,
    socket_errors: u64,
    http_errors: u64,
    mean_us: f64,
    p50_us: u64,
    p99_us: u64,
}

fn wrk(o: &Options, url: &str, connections: u64, threads: u64, seconds: u64) -> anyhow::Result<Summary> {
    let mut command = Command::new("wrk");
    command.args([
        format!("-t{threads}"),
        format!("-c{connections}"),
        format!("-d{seconds}s"),
        "--timeout".into(),
        "5s".into(),
        "-s".into(),
    ]);
    // A URL ending in /users is written to: new users, each with an email
    // of its own (`bench/wrk/scenario.lua`'s post_user); one ending in
    // /orders, orders for user 1 (post_order).
    let written = [("/users", "post_user"), ("/orders", "post_order")]
        .into_iter()
        .find_map(|(path, scenario)| Some((url.strip_suffix(path)?, scenario)));
    match written {
        Some((base, scenario)) => command
            .arg(o.root.join("bench/wrk/scenario.lua"))
            .arg(base)
            .args(["--", scenario, "1", "1"])
            .arg(format!("{}", random_run())),
        None => command.arg(o.root.join("bench/wrk/summary.lua")).arg(url),
    };
    let output = command
        .output()
        .context("running wrk (install it: apt-get install wrk)")?;
    let stdout = String::from_utf8_lossy(&output.stdout);
    let line = stdout.lines().rev().find(|l| l.starts_with('{')).with_context(|| {
        format!(
            "no summary from wrk: {stdout}{}",
            String::from_utf8_lossy(&output.stderr)
        )
    })?;
    let summary: Summary = serde_json::from_str(line)?;
    // A refusal (429) or any failure would make the run measure something else.
    ensure!(
        summary.http_errors == 0,
        "{url}: {} of {} responses were not 2xx or 3xx",
        summary.http_errors,
        summary.requests
    );
    ensure!(summary.requests > 0, "{url}: no responses");
    Ok(summary)
}

/// The processes whose CPU time is counted, by kind, and the hosts whose
/// requests are counted.
struct Watch<'a> {
    processes: Vec<(&'static str, &'a Process)>,
    hosts: Vec<&'a Host>,
}

/// One measured run.
struct Run {
    summary: Summary,
    /// CPU seconds used during the run, by kind of process ("wrk" included).
    cpu: Vec<(&'static str, f64)>,
    /// Requests each watched host served during the run.
    served: Vec<f64>,
    /// Requests the hosts sent on to another host.
    forwarded: f64,
    /// CPU seconds the whole machine used during the run.
    machine: f64,
}

impl Run {
    fn rps(&self) -> f64 {
        self.summary.requests as f64 / (self.summary.duration_us as f64 / 1e6)
    }

    fn mean(&self) -> f64 {
        self.summary.mean_us
    }

    /// CPU µs the processes of `kind` used per request.
    fn cpu_per_request(&self, kind: &str) -> f64 {
        let seconds: f64 = self.cpu.iter().filter(|(k, _)| *k == kind).map(|(_, s)| s).sum();
        seconds * 1e6 / self.summary.requests as f64
    }

    /// How busy the cores were, by this benchmark's processes and by
    /// everything else on the machine.
    fn busy(&self, cores: usize) -> String {
        let ours: f64 = self.cpu.iter().map(|(_, s)| s).sum();
        let capacity = self.summary.duration_us as f64 / 1e6 * cores as f64;
        format!(
            "{:.0}% ({:.0}%)",
            100.0 * ours / capacity,
            100.0 * (self.machine - ours).max(0.0) / capacity
        )
    }
}

/// CPU time the whole machine has used, in clock ticks: every state of the
/// first line of `/proc/stat` but idle and iowait.
fn machine_ticks() -> u64 {
    let stat = std::fs::read_to_string("/proc/stat").unwrap_or_default();
    let fields: Vec<u64> = stat
        .lines()
        .next()
        .unwrap_or_default()
        .split_whitespace()
        .skip(1)
        .map(|f| f.parse().unwrap_or(0))
        .collect();
    fields
        .iter()
        .enumerate()
        .filter(|(i, _)| !matches!(i, 3 | 4) && *i < 8)
        .map(|(_, t)| t)
        .sum()
}

/// A warm-up, then one measured run of wrk against `url`.
fn measure(o: &Options, url: &str, connections: u64, threads: u64, watch: &Watch<'_>) -> anyhow::Result<Run> {
    wrk(o, url, connections, threads, o.warmup.max(1))?;
    let counts = || -> anyhow::Result<(Vec<f64>, f64)> {
        let served = watch
            .hosts
            .iter()
            .map(|h| h.metric("corral_requests_total"))
            .collect::<anyhow::Result<Vec<_>>>()?;
        let forwarded = watch
            .hosts
            .iter()
            .map(|h| h.metric("corral_requests_forwarded_total"))
            .sum::<anyhow::Result<f64>>()?;
        Ok((served, forwarded))
    };
    let (served_before, forwarded_before) = counts()?;
    let ticks_before: Vec<u64> = watch.processes.iter().map(|(_, p)| p.cpu_ticks()).collect();
    let children_before = stat_ticks("/proc/self/stat", 13);
    let machine_before = machine_ticks();
    let summary = wrk(o, url, connections, threads, o.duration)?;
    let machine_after = machine_ticks();
    let children_after = stat_ticks("/proc/self/stat", 13);
    let ticks_after: Vec<u64> = watch.processes.iter().map(|(_, p)| p.cpu_ticks()).collect();
    let (served_after, forwarded_after) = counts()?;
    let seconds = |before: u64, after: u64| after.saturating_sub(before) as f64 / o.ticks;
    let mut cpu: Vec<(&'static str, f64)> = watch
        .processes
        .iter()
        .zip(ticks_before.into_iter().zip(ticks_after))
        .map(|((kind, _), (before, after))| (*kind, seconds(before, after)))
        .collect();
    cpu.push(("wrk", seconds(children_before, children_after)));
    Ok(Run {
        summary,
        cpu,
        served: served_after.iter().zip(&served_before).map(|(a, b)| a - b).collect(),
        forwarded: forwarded_after - forwarded_before,
        machine: seconds(machine_before, machine_after),
    })
}

/// `o.rounds` rounds in which every setup is measured in turn: the runs of
/// each setup.
fn rounds(
    o: &Options,
    setups: &[(String, String)],
    connections: u64,
    threads: u64,
    watch: &Watch<'_>,
) -> anyhow::Result<Vec<Vec<Run>>> {
    let mut runs: Vec<Vec<Run>> = setups.iter().map(|_| Vec::new()).collect();
    for round in 1..=o.rounds {
        for ((name, url), runs) in setups.iter().zip(&mut runs) {
            let run = measure(o, url, connections, threads, watch)?;
            eprintln!(
                "round {round} c{connections:<3} {name:<30} {:>8.0} req/s  mean {:>8.1} µs  p50 {:>6} µs  p99 {:>6} µs  \
                 socket errors {}",
                run.rps(),
                run.mean(),
                run.summary.p50_us,
                run.summary.p99_us,
                run.summary.socket_errors
            );
            runs.push(run);
        }
    }
    Ok(runs)
}

/// The median run by `key`.
fn median(runs: &[Run], key: impl Fn(&Run) -> f64) -> &Run {
    let mut sorted: Vec<&Run> = runs.iter().collect();
    sorted.sort_by(|a, b| key(a).total_cmp(&key(b)));
    sorted[sorted.len() / 2]
}

/// Every run's figure, in the order they ran.
fn each(runs: &[Run], figure: impl Fn(&Run) -> String) -> String {
    runs.iter().map(figure).collect::<Vec<_>>().join(" / ")
}

/// A line on the connection errors wrk counted, if it counted any.
fn socket_errors(tables: &[&Vec<Vec<Run>>]) -> String {
    let errors: u64 = tables
        .iter()
        .flat_map(|t| t.iter().flatten())
        .map(|r| r.summary.socket_errors)
        .sum();
    match errors {
        0 => String::new(),
        n => format!("\nwrk counted {n} connection errors (connect, read, write or timeout) over these runs.\n"),
    }
}

/// The difference in median latency between two runs, in µs.
fn p50_difference(a: &Run, b: &Run) -> i64 {
    a.summary.p50_us as i64 - b.summary.p50_us as i64
}

fn ms(us: f64) -> String {
    format!("{:.2} ms", us / 1000.0)
}
