//! The events benchmark: corral with a publisher (the chaos component) and
//! a subscriber (the inbox component), which records when each message was
//! published and handled. First, clients publish `--messages` messages
//! through HTTP as fast as they can: events per second end to end (first
//! publish to last handling). Then they publish for five seconds at half
//! that rate: the publish-to-handle latency p50, p99 and max, without a
//! backlog to wait behind. Appends both to `target/bench/results.md`.
//!
//! `eventbench [--messages N] [--concurrency N]` from the workspace root,
//! after `just build` and `cargo build --release -p corral-bench`.

mod announce;
mod machine;

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};

fn main() -> anyhow::Result<()> {
    let (mut messages, mut concurrency) = (20_000usize, 16usize);
    let mut args = std::env::args().skip(1);
    while let Some(arg) = args.next() {
        let mut value = || -> anyhow::Result<usize> { Ok(args.next().context("a number")?.parse()?) };
        match arg.as_str() {
            "--messages" => messages = value()?,
            "--concurrency" => concurrency = value()?,
            other => bail!("unknown argument {other}; use --messages N, --concurrency N"),
        }
    }
    let root = std::env::current_dir()?;
    let wasm = root.join("target/wasm32-wasip2/release");
    let work = tempfile::tempdir()?;
    let config = work.path().join("events.toml");
    let path = |name: &str| format!("{:?}", wasm.join(format!("{name}.wasm")).display().to_string());
    std::fs::write(
        &config,
        format!(
            "listen = \"127.0.0.1:0\"\ndata_dir = {:?}\ncache_dir = {:?}\n\
             [components.chaos]\nwasm = {}\nroutes = [\"/chaos\"]\npublishes = [\"bench.*\"]\n\
             [components.inbox]\nwasm = {}\nroutes = [\"/inbox\"]\n\
             [components.inbox.limits]\ndb_max_rows = 10000000\ndb_max_result_kib = 1048576\n\
             [components.inbox.subscription]\ntopics = [\"bench.*\"]\nconcurrency = {concurrency}\n",
            work.path().join("data").display().to_string(),
            root.join("target/corral-cache").display().to_string(),
            path("chaos"),
            path("inbox"),
        ),
    )?;
    let mut child = Command::new(root.join("target/release/corral"))
        .args(["serve", "--config"])
        .arg(&config)
        .env("RUST_LOG", "warn,corral=info,corral::access=warn")
        .stderr(Stdio::piped())
        .stdout(Stdio::null())
        .spawn()
        .context("starting corral: run `just build`")?;
    let stderr = child.stderr.take().expect("piped");
    let listening = announce::listeners(stderr, "corral".into(), &[]);
    let (addr, _) = announce::addresses(&listening, Duration::from_secs(120)).context("corral did not start")?;
    let agent: ureq::Agent = ureq::Agent::config_builder().http_status_as_error(false).build().into();
    let publish = |topic: &str, n: usize| -> anyhow::Result<()> {
        let reply = agent
            .post(format!("http://{addr}/chaos/publish?topic={topic}&n={n}"))
            .header("content-type", "application/json")
            .send("{}")?;
        anyhow::ensure!(reply.status() == 200, "publishing got {}", reply.status());
        Ok(())
    };
    let timings = |topic: &str, expected: usize| -> anyhow::Result<(Vec<i64>, i64)> {
        let started = Instant::now();
        loop {
            let text = agent
                .get(format!("http://{addr}/inbox/latencies?topic={topic}"))
                .call()?
                .body_mut()
                .with_config()
                .limit(256 << 20)
                .read_to_string()?;
            let body: serde_json::Value = serde_json::from_str(&text)?;
            let latencies: Vec<i64> = serde_json::from_value(body["latencies_ms"].clone())?;
            if latencies.len() >= expected {
                let span =
                    body["last_received_ms"].as_i64().unwrap_or(0) - body["first_published_ms"].as_i64().unwrap_or(0);
                return Ok((latencies, span));
            }
            anyhow::ensure!(
                started.elapsed() < Duration::from_secs(600),
                "the messages did not all arrive"
            );
            std::thread::sleep(Duration::from_millis(200));
        }
    };

    // Throughput: as fast as the clients can publish.
    let batch = 100;
    let sent = messages / batch * batch;
    std::thread::scope(|scope| -> anyhow::Result<()> {
        let workers: Vec<_> = (0..4)
            .map(|worker| {
                let publish = &publish;
                scope.spawn(move || -> anyhow::Result<()> {
                    for _ in (worker..messages / batch).step_by(4) {
                        publish("bench.throughput", batch)?;
                    }
                    Ok(())
                })
            })
            .collect();
        workers
            .into_iter()
            .try_for_each(|w| w.join().expect("publisher thread"))
    })?;
    let (_, span_ms) = timings("bench.throughput", sent)?;
    let per_second = sent as f64 / (span_ms.max(1) as f64 / 1000.0);

    // Latency: half that rate, in batches of 10 every few milliseconds.
    let rate = (per_second / 2.0).max(10.0);
    let pause = Duration::from_secs_f64(10.0 / rate);
    let started = Instant::now();
    let mut paced = 0;
    while started.elapsed() < Duration::from_secs(5) {
        publish("bench.latency", 10)?;
        paced += 10;
        let due = pause * (paced / 10) as u32;
        if let Some(wait) = due.checked_sub(started.elapsed()) {
            std::thread::sleep(wait);
        }
    }
    let (latencies, _) = timings("bench.latency", paced)?;
    let _ = child.kill();
    let _ = child.wait();
    let at = |q: f64| latencies[((latencies.len() - 1) as f64 * q) as usize];
    let report = format!(
        "\nEvents, one subscriber with concurrency {concurrency}: {sent} messages published through HTTP as fast \
         as 4 clients can, then {paced} at {rate:.0}/s (half the rate measured) for the latency.\n\n\
         | events/s end to end | publish-to-handle p50 | p99 | max |\n|---|---|---|---|\n\
         | {per_second:.0} | {} ms | {} ms | {} ms |\n",
        at(0.5),
        at(0.99),
        latencies.last().copied().unwrap_or(0),
    );
    let report = format!("{}\n\n{report}", machine::describe());
    println!("{report}");
    let out = root.join("target/bench");
    std::fs::create_dir_all(&out)?;
    let results = out.join("results.md");
    let before = std::fs::read_to_string(&results).unwrap_or_default();
    std::fs::write(&results, before + &report)?;
    Ok(())
}
