//! The load benchmark: corral and the native baseline, one after the other on
//! this machine, each seeded with the same data and driven by wrk through the
//! same scenarios; then the empty component, taking turns with a `wasi:http`
//! hello, for the host's own cost per world.
//! Prints a table of requests/s, latency, errors and peak memory, with the
//! ratio corral / native, and writes it to `target/bench/results.md`.
//!
//! Then, for the mixed load, a fixed-rate run at half of each server's peak.
//!
//! `loadtest [--duration SECONDS] [--connections N] [--compare CORRAL]` from
//! the workspace root, after `just build` and `cargo build --release -p
//! corral-bench`; `--compare` runs another corral binary (the one before a
//! change) as a third server in the same rounds.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use bytes::Bytes;
use http_body_util::Full;
use openloop::Latencies;
use serde::Deserialize;
use serde_json::json;

mod announce;
mod machine;
mod openloop;

const USERS: usize = 10_000;
const ORDERS: usize = 1_000;

/// What wrk's `done()` in `bench/wrk/scenario.lua` prints.
#[derive(Debug, Deserialize)]
struct WrkSummary {
    requests: u64,
    duration_us: u64,
    socket_errors: u64,
    http_errors: u64,
    p50_us: u64,
    p99_us: u64,
    max_us: u64,
    /// The server's CPU time (all its threads, user and system) during
    /// the run, per request: what the throughput ratio comes from, read
    /// without the share of the machine wrk took.
    #[serde(skip)]
    cpu_us_per_request: f64,
}

struct Measured {
    scenario: &'static str,
    server: &'static str,
    summary: WrkSummary,
}

impl Measured {
    fn requests_per_second(&self) -> f64 {
        self.summary.requests_per_second()
    }
}

impl WrkSummary {
    fn requests_per_second(&self) -> f64 {
        self.requests as f64 / (self.duration_us as f64 / 1e6)
    }
}

/// A server process, killed on drop.
struct Server {
    child: Child,
    addr: SocketAddr,
}

impl Server {
    fn start(mut command: Command) -> anyhow::Result<Server> {
        let mut child = command
            .stderr(Stdio::piped())
            .stdout(Stdio::null())
            .spawn()
            .context("starting a server")?;
        let stderr = child.stderr.take().expect("piped");
        let listening = announce::listeners(stderr, "server".into(), &["ERROR", "error"]);
        match announce::addresses(&listening, Duration::from_secs(120)) {
            Some((addr, _)) => Ok(Server {
                child,
                addr: addr.parse()?,
            }),
            None => {
                let _ = child.kill();
                let _ = child.wait();
                bail!("the server did not start")
            }
        }
    }

    /// The CPU time the process has used, user and system, all threads
    /// (those gone included), in µs. `/proc` counts it in ticks of 10 ms.
    fn cpu_us(&self) -> anyhow::Result<f64> {
        let stat = std::fs::read_to_string(format!("/proc/{}/stat", self.child.id()))?;
        // The fields after the command name, which may hold spaces, in brackets.
        let fields: Vec<&str> = stat
            .rsplit_once(')')
            .context("no command name in /proc/<pid>/stat")?
            .1
            .split_whitespace()
            .collect();
        let ticks =
            |i: usize| -> anyhow::Result<f64> { Ok(fields.get(i).context("a short /proc/<pid>/stat")?.parse()?) };
        // utime and stime, the 14th and 15th fields of the line.
        Ok((ticks(11)? + ticks(12)?) * 10_000.0)
    }

    /// The largest resident memory the process has had, in MiB.
    fn peak_rss_mib(&self) -> f64 {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.child.id())).unwrap_or_default();
        let kib: f64 = status
            .lines()
            .find_map(|l| l.strip_prefix("VmHWM:"))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
            .unwrap_or(0.0);
        kib / 1024.0
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

struct Options {
    duration: u64,
    rounds: usize,
    connections: u64,
    /// Connections for the mixed scenario, as a busier service sees.
    mixed_connections: u64,
    /// Seconds of each fixed-rate run.
    rate_duration: u64,
    /// Another corral binary to measure in the same run, as "before".
    compare: Option<PathBuf>,
    /// The scenarios to run, all by default.
    scenarios: Vec<String>,
    root: PathBuf,
}

/// One server in a scenario: its name in the report, the server, and the
/// requests wrk sends it.
type Contender<'a> = (&'static str, &'a Server, &'static str);

fn main() -> anyhow::Result<()> {
    let mut options = Options {
        duration: 5,
        rounds: 3,
        connections: 32,
        mixed_connections: 64,
        rate_duration: 10,
        compare: None,
        scenarios: SCENARIOS.iter().map(|s| s.to_string()).collect(),
        root: std::env::current_dir()?,
    };
    let mut args = std::env::args().skip(1);
    while let Some(arg) = args.next() {
        let mut value = |what: &str| args.next().with_context(|| format!("{arg} takes {what}"));
        match arg.as_str() {
            "--duration" => options.duration = value("seconds")?.parse()?,
            "--rounds" => options.rounds = value("a number")?.parse()?,
            "--connections" => options.connections = value("a number")?.parse()?,
            "--rate-duration" => options.rate_duration = value("seconds")?.parse()?,
            "--compare" => options.compare = Some(value("a corral binary")?.into()),
            "--scenarios" => {
                options.scenarios = value("a list of scenarios")?.split(',').map(str::to_string).collect();
                if let Some(unknown) = options.scenarios.iter().find(|s| !SCENARIOS.contains(&s.as_str())) {
                    bail!("unknown scenario {unknown}; the scenarios are {}", SCENARIOS.join(", "));
                }
            }
            other => bail!(
                "unknown argument {other}; use --duration SECONDS, --rounds N, --connections N, \
                 --rate-duration SECONDS, --compare CORRAL_BINARY, --scenarios A,B"
            ),
        }
    }
    let release = options.root.join("target/release");
    let wasm = options.root.join("target/wasm32-wasip2/release");
    for needed in [
        release.join("corral"),
        release.join("native-baseline"),
        wasm.join("users.wasm"),
        wasm.join("empty.wasm"),
        wasm.join("http_hello.wasm"),
    ] {
        if !needed.is_file() {
            bail!("{} is missing: run `just bench`", needed.display());
        }
    }
    let work = tempfile::tempdir()?;
    let run_id = std::process::id().to_string();

    let start_corral = |binary: &Path, name: &str| -> anyhow::Result<Server> {
        let config = work.path().join(format!("{name}.toml"));
        std::fs::write(
            &config,
            corral_config(&wasm, &work.path().join(format!("{name}-data")), &options.root),
        )?;
        let mut command = Command::new(binary);
        // Logs as usual but for the request lines, which the baseline does not write either.
        command
            .args(["serve", "--config"])
            .arg(&config)
            .env("RUST_LOG", "info,corral::access=warn");
        Server::start(command)
    };
    let corral = start_corral(&release.join("corral"), "corral")?;
    let before = match &options.compare {
        Some(binary) => Some(start_corral(binary, "before")?),
        None => None,
    };
    let mut command = Command::new(release.join("native-baseline"));
    command.arg("127.0.0.1:0").arg(work.path().join("native-data"));
    let native = Server::start(command)?;
    let servers: Vec<(&str, &Server)> = [
        ("corral", Some(&corral)),
        (BEFORE, before.as_ref()),
        ("native", Some(&native)),
    ]
    .into_iter()
    .filter_map(|(name, server)| Some((name, server?)))
    .collect();
    for (name, server) in &servers {
        eprintln!(
            "seeding {name} with {USERS} users and {ORDERS} orders at {}",
            server.addr
        );
        seed(server.addr)?;
    }

    // The servers take turns, round after round, so that whatever else the
    // machine does weighs on all alike; each figure is the median round.
    let mut results = Vec::new();
    for scenario in SCENARIOS
        .iter()
        .copied()
        .filter(|s| options.scenarios.iter().any(|o| o == s))
    {
        // The empty component has no native twin; it takes turns with a
        // `wasi:http` hello instead, the smallest component of that world.
        let contenders: Vec<Contender<'_>> = match scenario {
            "empty" => {
                let mut them = vec![("corral", &corral, "empty"), (WASI_HTTP, &corral, "wasi_http")];
                them.extend(before.as_ref().map(|b| (BEFORE, b, "empty")));
                them
            }
            _ => servers
                .iter()
                .map(|(name, server)| (*name, *server, scenario))
                .collect(),
        };
        let connections = if scenario == "mixed" {
            options.mixed_connections
        } else {
            options.connections
        };
        // What earlier scenarios wrote reaches the disk before this one.
        Command::new("sync").status().context("running sync")?;
        let mut rounds: Vec<Vec<WrkSummary>> = contenders.iter().map(|_| Vec::new()).collect();
        for round in 0..options.rounds {
            for (contender, summaries) in contenders.iter().zip(&mut rounds) {
                let run = format!("{run_id}r{round}");
                summaries.push(measure(&options, connections, contender, &run)?);
            }
        }
        for ((name, _, _), mut summaries) in contenders.into_iter().zip(rounds) {
            summaries.sort_by(|a, b| a.requests_per_second().total_cmp(&b.requests_per_second()));
            let median = summaries.swap_remove(summaries.len() / 2);
            results.push(Measured {
                scenario,
                server: name,
                summary: median,
            });
        }
    }

    // At half of each server's own peak on the mixed load: latency without
    // the queueing a saturated server adds.
    let mut fixed = Vec::new();
    let mixed = if options.scenarios.iter().any(|s| s == "mixed") {
        servers.as_slice()
    } else {
        &[]
    };
    for (name, server) in mixed {
        let peak = results
            .iter()
            .find(|m| m.scenario == "mixed" && m.server == *name)
            .map_or(0.0, Measured::requests_per_second);
        let rate = (peak / 2.0).max(100.0);
        // Each server starts with what the rounds before wrote on the disk,
        // not flushing behind its back (the first to run would pay for all).
        let flushed = Instant::now();
        Command::new("sync").status().context("running sync")?;
        eprintln!(
            "{name:>6} fixed rate: the disk took {:.1} s to flush first",
            flushed.elapsed().as_secs_f64()
        );
        let latencies = openloop::run(
            server.addr,
            rate,
            Duration::from_secs(options.rate_duration),
            options.mixed_connections as usize,
            mixed_request(format!("{run_id}-fixed-{name}")),
        )?;
        eprintln!(
            "{name:>6} fixed rate {rate:.0}/s: p50 {:.2} ms, p99 {:.2} ms, p99.9 {:.2} ms, errors {}",
            latencies.percentile_ms(50.0),
            latencies.percentile_ms(99.0),
            latencies.percentile_ms(99.9),
            latencies.errors
        );
        fixed.push((*name, rate, latencies));
    }

    let memory: Vec<(&str, f64)> = servers
        .iter()
        .map(|(name, server)| (*name, server.peak_rss_mib()))
        .collect();
    let report = report(&options, &results, &fixed, &memory);
    println!("{report}");
    let out = options.root.join("target/bench");
    std::fs::create_dir_all(&out)?;
    std::fs::write(out.join("results.md"), &report)?;
    eprintln!("written to {}", out.join("results.md").display());
    Ok(())
}

/// The mixed load's requests, as `bench/wrk/scenario.lua` makes them.
fn mixed_request(run: String) -> impl Fn(u64) -> hyper::Request<Full<Bytes>> + Send + Sync + 'static {
    move |i| {
        // A multiplicative hash of the request number: random enough, and
        // the same for every server.
        let roll = i.wrapping_mul(0x9E37_79B9_7F4A_7C15) >> 32;
        let user = 1 + roll % USERS as u64;
        let (method, path, body) = match roll % 100 {
            0..80 => ("GET", format!("/users/{user}"), String::new()),
            80..90 => (
                "POST",
                "/users".to_string(),
                json!({ "name": format!("Fixed {i}"), "email": format!("fixed-{run}-{i}@example.com") }).to_string(),
            ),
            _ => (
                "POST",
                "/orders".to_string(),
                json!({ "user_id": user, "items": [
                    { "sku": format!("SKU-{i}"), "quantity": 1 + i % 3, "unit_price_cents": 250 },
                    { "sku": "GIFT-WRAP", "quantity": 1, "unit_price_cents": 99 },
                ]})
                .to_string(),
            ),
        };
        hyper::Request::builder()
            .method(method)
            .uri(path)
            .header("host", "bench")
            .header("content-type", "application/json")
            .body(Full::new(Bytes::from(body)))
            .expect("a valid request")
    }
}

/// Every scenario, in the order they run: reads first, so that the writes
/// of one server (which writes more the faster it is) do not leave the
/// disk busy while the other's reads are measured.
const SCENARIOS: [&str; 5] = ["get_user", "get_order", "empty", "post_user", "mixed"];

/// The other corral binary, as the report names it.
const BEFORE: &str = "before";

/// The `wasi:http` hello, as the report names it.
const WASI_HTTP: &str = "corral, wasi:http hello";

/// users, orders, empty and a `wasi:http` hello, with no rate limits.
fn corral_config(wasm: &Path, data: &Path, root: &Path) -> String {
    let path = |name: &str| format!("{:?}", wasm.join(format!("{name}.wasm")).display().to_string());
    format!(
        "listen = \"127.0.0.1:0\"\ndata_dir = {:?}\ncache_dir = {:?}\n\n\
         [components.users]\nwasm = {}\nroutes = [\"/users\"]\n\n\
         [components.orders]\nwasm = {}\nroutes = [\"/orders\"]\n\n\
         [components.empty]\nwasm = {}\nroutes = [\"/empty\"]\n\n\
         [components.hello]\nwasm = {}\nroutes = [\"/http\"]\n",
        data.display().to_string(),
        root.join("target/corral-cache").display().to_string(),
        path("users"),
        path("orders"),
        path("empty"),
        path("http_hello"),
    )
}

/// The same users and orders in either server, through its HTTP API.
fn seed(addr: SocketAddr) -> anyhow::Result<()> {
    let agent: ureq::Agent = ureq::Agent::config_builder().http_status_as_error(false).build().into();
    let post = |path: &str, body: serde_json::Value| -> anyhow::Result<()> {
        let response = agent
            .post(format!("http://{addr}{path}"))
            .header("content-type", "application/json")
            .send(serde_json::to_vec(&body)?)?;
        anyhow::ensure!(response.status() == 201, "seeding {path} got {}", response.status());
        Ok(())
    };
    std::thread::scope(|scope| {
        let workers: Vec<_> = (0..4)
            .map(|worker| {
                let post = &post;
                scope.spawn(move || -> anyhow::Result<()> {
                    for i in (worker..USERS).step_by(4) {
                        post(
                            "/users",
                            json!({ "name": format!("User {i}"), "email": format!("user{i}@example.com") }),
                        )?;
                    }
                    Ok(())
                })
            })
            .collect();
        workers.into_iter().try_for_each(|w| w.join().expect("seeding thread"))
    })?;
    for i in 0..ORDERS {
        let items = json!([
            { "sku": format!("SKU-{i}"), "quantity": 1 + i % 3, "unit_price_cents": 250 },
            { "sku": "GIFT-WRAP", "quantity": 1, "unit_price_cents": 99 },
        ]);
        post("/orders", json!({ "user_id": 1 + i % USERS, "items": items }))?;
    }
    Ok(())
}

/// A short warm-up, then one measured wrk run.
fn measure(options: &Options, connections: u64, contender: &Contender<'_>, run: &str) -> anyhow::Result<WrkSummary> {
    let (name, server, scenario) = *contender;
    let script = options.root.join("bench/wrk/scenario.lua");
    let wrk = |seconds: u64, tag: &str| -> anyhow::Result<WrkSummary> {
        let output = Command::new("wrk")
            .args([
                "-t1",
                &format!("-c{connections}"),
                &format!("-d{seconds}s"),
                "--latency",
                "-s",
            ])
            .arg(&script)
            .arg(format!("http://{}", server.addr))
            .args([
                "--",
                scenario,
                &USERS.to_string(),
                &ORDERS.to_string(),
                &format!("{run}{tag}"),
            ])
            .output()
            .context("running wrk (install it: apt-get install wrk)")?;
        let stdout = String::from_utf8_lossy(&output.stdout);
        let line = stdout
            .lines()
            .rev()
            .find(|l| l.starts_with('{'))
            .with_context(|| format!("no summary from wrk: {stdout}"))?;
        Ok(serde_json::from_str(line)?)
    };
    wrk(1, "warm")?;
    let cpu = server.cpu_us()?;
    let mut summary = wrk(options.duration, "")?;
    summary.cpu_us_per_request = (server.cpu_us()? - cpu) / summary.requests.max(1) as f64;
    eprintln!(
        "{name:>6} {scenario:<9} {:>9.0} req/s  CPU {:>5.1} µs/req  p50 {:>6} µs  p99 {:>6} µs  max {:>7} µs  errors {}",
        summary.requests_per_second(),
        summary.cpu_us_per_request,
        summary.p50_us,
        summary.p99_us,
        summary.max_us,
        summary.socket_errors + summary.http_errors
    );
    Ok(summary)
}

fn report(options: &Options, results: &[Measured], fixed: &[(&str, f64, Latencies)], memory: &[(&str, f64)]) -> String {
    let mut out = format!(
        "{}\n\nwrk, 1 thread, {} connections ({} for `mixed`: 80% `GET /users/{{id}}`, 10% `POST /users`, 10% \
         `POST /orders`); per scenario, {} rounds of {} s (each after a 1 s warm-up) with the servers taking turns, \
         and the median round reported; {USERS} users, {ORDERS} orders.\n\n\
         The ratio is against native, and for the wasi:http hello, against the empty component. CPU is the \
         server's own CPU time per request in that round (all threads, user and system).\n\n\
         | scenario | server | requests/s | CPU per request | p50 | p99 | max | errors | ratio |\n\
         |---|---|---|---|---|---|---|---|---|\n",
        machine::describe(),
        options.connections,
        options.mixed_connections,
        options.rounds,
        options.duration
    );
    for m in results {
        let against = match m.server {
            WASI_HTTP => "corral",
            "native" => "",
            _ => "native",
        };
        let baseline = results.iter().find(|n| n.server == against && n.scenario == m.scenario);
        let ratio = match baseline {
            Some(baseline) => format!("{:.2}", m.requests_per_second() / baseline.requests_per_second()),
            None => "-".into(),
        };
        out += &format!(
            "| {} | {} | {:.0} | {:.1} µs | {:.2} ms | {:.2} ms | {:.0} ms | {} | {ratio} |\n",
            m.scenario,
            m.server,
            m.requests_per_second(),
            m.summary.cpu_us_per_request,
            m.summary.p50_us as f64 / 1000.0,
            m.summary.p99_us as f64 / 1000.0,
            m.summary.max_us as f64 / 1000.0,
            m.summary.socket_errors + m.summary.http_errors,
        );
    }
    out += &format!(
        "\nFixed rate, `mixed`, {} connections, {} s at half of each server's own peak above; latency from when each \
         request was due:\n\n| server | rate (achieved) | p50 | p99 | p99.9 | max | errors |\n|---|---|---|---|---|---|---|\n",
        options.mixed_connections, options.rate_duration
    );
    for (server, rate, latencies) in fixed {
        out += &format!(
            "| {server} | {rate:.0}/s ({:.0}) | {:.2} ms | {:.2} ms | {:.2} ms | {:.1} ms | {} |\n",
            latencies.achieved_rate(),
            latencies.percentile_ms(50.0),
            latencies.percentile_ms(99.0),
            latencies.percentile_ms(99.9),
            latencies.percentile_ms(100.0),
            latencies.errors
        );
    }
    out += "\n| server | peak RSS |\n|---|---|\n";
    for (server, mib) in memory {
        out += &format!("| {server} | {mib:.0} MiB |\n");
    }
    out
}
