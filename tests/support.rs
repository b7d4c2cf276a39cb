//! Test support: a real `corral` process serving real components on
//! 127.0.0.1:0, found through the address it logs, killed on drop, and a
//! small HTTP client to talk to it.

use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde_json::Value;

/// How long a host may take to compile and start its components.
const START_TIMEOUT: Duration = Duration::from_secs(180);

pub fn workspace() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).parent().unwrap().to_path_buf()
}

/// `program` on the path, or where Debian puts servers.
pub fn find_program(program: &str) -> PathBuf {
    which(program).unwrap_or_else(|| panic!("{program} is not installed (.ci/run installs it)"))
}

/// `program` on the path, or where Debian puts servers, if it is there.
pub fn which(program: &str) -> Option<PathBuf> {
    std::env::var_os("PATH")
        .into_iter()
        .flat_map(|path| std::env::split_paths(&path).collect::<Vec<_>>())
        .chain([PathBuf::from("/usr/sbin"), PathBuf::from("/usr/bin")])
        .map(|dir| dir.join(program))
        .find(|p| p.is_file())
}

/// The built `.wasm` of a component crate.
pub fn wasm(crate_name: &str) -> PathBuf {
    let file = crate_name.replace('-', "_");
    let path = workspace().join(format!("target/wasm32-wasip2/release/{file}.wasm"));
    assert!(path.is_file(), "{} is missing: run `just build` first", path.display());
    path
}

/// Compiled components are cached across test hosts, so each test does not
/// compile them again.
fn cache_dir() -> PathBuf {
    workspace().join("target/corral-test-cache")
}

/// The topics a component crate publishes to, which its config must allow.
fn publishes(crate_name: &str) -> &'static [&'static str] {
    match crate_name {
        "users" => &["users.deleted"],
        "orders" => &["orders.status-changed"],
        "chaos" => &[">"],
        _ => &[],
    }
}

/// A config section serving `crate_name`'s component as `name` on `routes`.
pub fn component_toml(name: &str, crate_name: &str, routes: &[&str]) -> String {
    format!(
        "[components.{name}]\nwasm = {:?}\nroutes = {routes:?}\npublishes = {:?}\n",
        wasm(crate_name).display().to_string(),
        publishes(crate_name)
    )
}

/// Builds the config of a test host.
pub struct HostBuilder {
    toml: String,
    data_dir: Option<PathBuf>,
    args: Vec<String>,
    envs: Vec<(String, String)>,
}

impl HostBuilder {
    /// Adds a component section.
    pub fn component(mut self, name: &str, crate_name: &str, routes: &[&str]) -> Self {
        self.toml.push_str(&component_toml(name, crate_name, routes));
        self
    }

    /// Adds raw TOML to the config, such as a `[server]` section.
    pub fn toml(mut self, toml: &str) -> Self {
        self.toml.push_str(toml);
        self.toml.push('\n');
        self
    }

    /// Keeps the databases in `dir`, which outlives the host.
    pub fn data_dir(mut self, dir: &Path) -> Self {
        self.data_dir = Some(dir.to_path_buf());
        self
    }

    /// Adds a command-line argument before `serve`, such as `--log-format`.
    pub fn arg(mut self, arg: &str) -> Self {
        self.args.push(arg.to_string());
        self
    }

    /// Sets an environment variable of the host's process.
    pub fn env(mut self, key: &str, value: &str) -> Self {
        self.envs.push((key.to_string(), value.to_string()));
        self
    }

    /// Starts the host and waits until it serves.
    pub fn start(self) -> TestHost {
        self.launch(true)
    }

    /// Starts the host and returns once its admin listener is up, while the
    /// components may still be loading.
    pub fn start_loading(self) -> TestHost {
        self.launch(false)
    }

    fn launch(self, until_public: bool) -> TestHost {
        let dir = tempfile::tempdir().unwrap();
        let data_dir = self.data_dir.unwrap_or_else(|| dir.path().join("data"));
        let config = format!(
            "listen = \"127.0.0.1:0\"\ndata_dir = {:?}\ncache_dir = {:?}\n{}",
            data_dir.display().to_string(),
            cache_dir().display().to_string(),
            self.toml
        );
        let config_path = dir.path().join("corral.toml");
        std::fs::write(&config_path, &config).unwrap();
        TestHost::spawn(dir, &config_path, data_dir, &self.args, &self.envs, until_public)
    }
}

/// A host with no components yet.
pub fn host() -> HostBuilder {
    HostBuilder {
        toml: String::new(),
        data_dir: None,
        args: Vec::new(),
        envs: Vec::new(),
    }
}

/// A host serving users, orders and the chaos component.
pub fn full_host() -> TestHost {
    host()
        .component("users", "users", &["/users"])
        .component("orders", "orders", &["/orders"])
        .component("chaos", "chaos", &["/chaos"])
        .start()
}

/// The admin token test hosts use.
pub const ADMIN_TOKEN: &str = "test-admin-token-0123456789";

/// A running `corral serve`.
pub struct TestHost {
    child: Child,
    pub addr: SocketAddr,
    /// The admin listener, when the config has one.
    pub admin_addr: Option<SocketAddr>,
    pub data_dir: PathBuf,
    pub config_path: PathBuf,
    logs: Arc<Mutex<Vec<String>>>,
    /// The thread that reads the host's stderr into `logs`, until it closes.
    log_reader: std::thread::JoinHandle<()>,
    agent: ureq::Agent,
    announcements: Mutex<mpsc::Receiver<Listening>>,
    _dir: tempfile::TempDir,
}

/// What the host announces in its log.
enum Listening {
    Admin(SocketAddr),
    Public(SocketAddr),
}

/// The address after `marker` in a log line, text or JSON.
fn address_after(line: &str, marker: &str) -> Option<SocketAddr> {
    let rest = line.split(marker).nth(1)?;
    let end = rest
        .find(|c: char| !(c.is_ascii_hexdigit() || ".:[]".contains(c)))
        .unwrap_or(rest.len());
    rest[..end].parse().ok()
}

impl TestHost {
    /// Starts the host and waits until it listens; `until_public` false
    /// returns as soon as the admin listener is up, before the components
    /// are loaded.
    fn spawn(
        dir: tempfile::TempDir,
        config_path: &Path,
        data_dir: PathBuf,
        args: &[String],
        envs: &[(String, String)],
        until_public: bool,
    ) -> TestHost {
        let mut child = Command::new(env!("CARGO_BIN_EXE_corral"))
            .args(args)
            .args(["serve", "--config"])
            .arg(config_path)
            .env("RUST_LOG", "info")
            .envs(envs.iter().map(|(k, v)| (k, v)))
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("starting corral");
        let logs = Arc::new(Mutex::new(Vec::new()));
        let (tx, rx) = mpsc::channel();
        let stderr = child.stderr.take().unwrap();
        let sink = Arc::clone(&logs);
        let log_reader = std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines() {
                let Ok(line) = line else { break };
                if let Some(addr) = address_after(&line, "admin listening on http://") {
                    let _ = tx.send(Listening::Admin(addr));
                } else if let Some(addr) = address_after(&line, "listening on http://") {
                    let _ = tx.send(Listening::Public(addr));
                }
                sink.lock().unwrap().push(line);
            }
        });
        let agent = client();
        let mut host = TestHost {
            child,
            addr: SocketAddr::from(([0, 0, 0, 0], 0)),
            admin_addr: None,
            data_dir,
            config_path: config_path.to_path_buf(),
            logs,
            log_reader,
            agent,
            announcements: Mutex::new(rx),
            _dir: dir,
        };
        if until_public {
            host.wait_until_serving();
        } else {
            while host.admin_addr.is_none() {
                host.next_announcement();
            }
        }
        host
    }

    /// Waits until the public listener serves the components.
    pub fn wait_until_serving(&mut self) {
        while self.addr.port() == 0 {
            self.next_announcement();
        }
    }

    fn next_announcement(&mut self) {
        let started = Instant::now();
        loop {
            let next = self
                .announcements
                .lock()
                .unwrap()
                .recv_timeout(Duration::from_millis(100));
            match next {
                Ok(Listening::Admin(addr)) => return self.admin_addr = Some(addr),
                Ok(Listening::Public(addr)) => return self.addr = addr,
                Err(_) if started.elapsed() > START_TIMEOUT => panic!("corral did not start:\n{}", self.logs()),
                Err(_) => {
                    if let Some(status) = self.child.try_wait().unwrap() {
                        // Its last words: what it wrote before its stderr closed.
                        let exited = Instant::now();
                        while !self.log_reader.is_finished() && exited.elapsed() < Duration::from_secs(5) {
                            std::thread::sleep(Duration::from_millis(10));
                        }
                        panic!("corral exited with {status}:\n{}", self.logs());
                    }
                }
            }
        }
    }

    pub fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.addr)
    }

    /// Sends a request built by the caller.
    pub fn request(&self, request: http::Request<Vec<u8>>) -> Reply {
        let (parts, body) = request.into_parts();
        let mut request = http::Request::from_parts(parts, body);
        if request.uri().host().is_none() {
            *request.uri_mut() = self.url(&request.uri().to_string()).parse().unwrap();
        }
        let response = self.agent.run(request).expect("the request reaches the host");
        let status = response.status().as_u16();
        let headers = response.headers().clone();
        let body = response
            .into_body()
            .with_config()
            .limit(256 << 20)
            .read_to_vec()
            .unwrap();
        Reply { status, headers, body }
    }

    /// Sends a request; `None` if it does not reach the host (it died, say).
    pub fn try_request(&self, request: http::Request<Vec<u8>>) -> Option<Reply> {
        let (parts, body) = request.into_parts();
        let mut request = http::Request::from_parts(parts, body);
        if request.uri().host().is_none() {
            *request.uri_mut() = self.url(&request.uri().to_string()).parse().unwrap();
        }
        let response = self.agent.run(request).ok()?;
        let status = response.status().as_u16();
        let headers = response.headers().clone();
        let body = response.into_body().read_to_vec().ok()?;
        Some(Reply { status, headers, body })
    }

    /// Sends a request to the admin listener with the test token.
    pub fn admin(&self, method: &str, path: &str, body: Vec<u8>) -> Reply {
        self.admin_as(method, path, body, Some(ADMIN_TOKEN))
    }

    /// Sends a request to the admin listener with the given token, or none.
    pub fn admin_as(&self, method: &str, path: &str, body: Vec<u8>, token: Option<&str>) -> Reply {
        let addr = self.admin_addr.expect("the host has an admin listener");
        let mut request = http::Request::builder()
            .method(method)
            .uri(format!("http://{addr}{path}"));
        if let Some(token) = token {
            request = request.header("authorization", format!("Bearer {token}"));
        }
        self.request(request.body(body).unwrap())
    }

    /// The admin API's entry for component `name`: its versions, limits,
    /// and requests in flight and queued now.
    pub fn component_status(&self, name: &str) -> Value {
        let all = self.admin("GET", "/components", Vec::new()).json();
        all["components"]
            .as_array()
            .unwrap_or_else(|| panic!("no components in {all}"))
            .iter()
            .find(|c| c["name"] == name)
            .cloned()
            .unwrap_or_else(|| panic!("no {name} in {all}"))
    }

    /// The admin listener's `/metrics` text.
    pub fn metrics(&self) -> String {
        self.admin("GET", "/metrics", Vec::new()).text()
    }

    /// Runs `statement` in the database of the chaos component (served at
    /// `/chaos`); the reply as it is.
    pub fn sql_reply(&self, statement: &str) -> Reply {
        self.post_raw("/chaos/sql", "text/plain", statement.as_bytes())
    }

    /// Runs `statement` as [`TestHost::sql_reply`] does and returns what
    /// SQLite made of it: `{"rows": ...}` or `{"error": ...}`.
    #[track_caller]
    pub fn sql(&self, statement: &str) -> Value {
        let reply = self.sql_reply(statement);
        assert!(
            reply.status == 200 || reply.status == 422,
            "{statement}: {}",
            reply.text()
        );
        reply.json()
    }

    /// The rows of `statement`, which must succeed.
    #[track_caller]
    pub fn sql_rows(&self, statement: &str) -> Value {
        let reply = self.sql_reply(statement);
        assert_eq!(reply.status, 200, "{statement}: {}", reply.text());
        reply.json()["rows"].clone()
    }

    /// The version (short digest) that serves `path` now, per its header.
    pub fn version_of(&self, path: &str) -> String {
        let reply = self.get(path);
        reply
            .header("corral-version")
            .unwrap_or_else(|| panic!("no corral-version: {}", reply.text()))
            .to_string()
    }

    /// Sends `method path` with an optional JSON body.
    pub fn send(&self, method: &str, path: &str, json: Option<&Value>) -> Reply {
        let mut builder = http::Request::builder().method(method).uri(path);
        let body = match json {
            Some(json) => {
                builder = builder.header("content-type", "application/json");
                serde_json::to_vec(json).unwrap()
            }
            None => Vec::new(),
        };
        self.request(builder.body(body).unwrap())
    }

    pub fn get(&self, path: &str) -> Reply {
        self.send("GET", path, None)
    }

    pub fn post(&self, path: &str, json: &Value) -> Reply {
        self.send("POST", path, Some(json))
    }

    pub fn patch(&self, path: &str, json: &Value) -> Reply {
        self.send("PATCH", path, Some(json))
    }

    pub fn delete(&self, path: &str) -> Reply {
        self.send("DELETE", path, None)
    }

    /// Sends a body as it is, with the given content type.
    pub fn post_raw(&self, path: &str, content_type: &str, body: &[u8]) -> Reply {
        let request = http::Request::post(path)
            .header("content-type", content_type)
            .body(body.to_vec())
            .unwrap();
        self.request(request)
    }

    /// Everything the host has logged so far.
    pub fn logs(&self) -> String {
        self.logs.lock().unwrap().join("\n")
    }

    /// Waits until a log line contains all of `needles`.
    pub fn wait_for_log(&self, needles: &[&str]) -> String {
        let started = Instant::now();
        loop {
            let found = self
                .logs
                .lock()
                .unwrap()
                .iter()
                .find(|line| needles.iter().all(|n| line.contains(n)))
                .cloned();
            if let Some(line) = found {
                return line;
            }
            assert!(
                started.elapsed() < Duration::from_secs(30),
                "no log line with {needles:?} in:\n{}",
                self.logs()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Whether the process is still running.
    pub fn is_alive(&mut self) -> bool {
        self.child.try_wait().unwrap().is_none()
    }

    /// Sends SIGTERM.
    pub fn terminate(&mut self) {
        let status = Command::new("kill")
            .args(["-TERM", &self.child.id().to_string()])
            .status()
            .unwrap();
        assert!(status.success());
    }

    /// Waits for the process to exit.
    pub fn wait(&mut self) -> std::process::ExitStatus {
        self.child.wait().unwrap()
    }

    /// Kills the process, as a crash or `kill -9` would.
    pub fn kill(mut self) {
        self.child.kill().unwrap();
        self.child.wait().unwrap();
    }
}

impl Drop for TestHost {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        // A failing test shows what the host said last, but for requests
        // and the NATS client's reconnecting; all of it goes to
        // $CORRAL_TEST_LOGS/<address>.log if that is set.
        if std::thread::panicking() {
            let logs = self.logs.lock().unwrap_or_else(|e| e.into_inner());
            if let Some(dir) = std::env::var_os("CORRAL_TEST_LOGS") {
                let file = std::path::Path::new(&dir).join(format!("{}.log", self.addr.to_string().replace(':', "_")));
                let _ = std::fs::write(file, logs.iter().map(|l| format!("{l}\n")).collect::<String>());
            }
            let said = |l: &&String| !l.contains("corral::access") && !l.contains("async_nats");
            let last: Vec<&String> = logs.iter().rev().filter(said).take(60).collect();
            eprintln!("--- the last lines the host at {} logged (but requests):", self.addr);
            for line in last.into_iter().rev() {
                eprintln!("{line}");
            }
        }
    }
}

/// A response, read in full.
pub struct Reply {
    pub status: u16,
    pub headers: http::HeaderMap,
    pub body: Vec<u8>,
}

impl Reply {
    pub fn json(&self) -> Value {
        serde_json::from_slice(&self.body)
            .unwrap_or_else(|e| panic!("not JSON ({e}): {}", String::from_utf8_lossy(&self.body)))
    }

    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }

    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).map(|v| v.to_str().unwrap())
    }

    /// Asserts an `application/problem+json` body with this status and
    /// `type` suffix, and returns the problem.
    #[track_caller]
    pub fn assert_problem(&self, status: u16, kind: &str) -> Value {
        assert_eq!(self.status, status, "body: {}", self.text());
        assert_eq!(
            self.header("content-type"),
            Some("application/problem+json"),
            "body: {}",
            self.text()
        );
        let problem = self.json();
        assert_eq!(problem["type"], format!("urn:corral:problem:{kind}"), "{problem}");
        assert_eq!(problem["status"], status, "{problem}");
        assert!(
            problem["title"].is_string() && problem["detail"].is_string(),
            "{problem}"
        );
        problem
    }
}

/// An `[admin]` section for test hosts, on a free port.
pub fn admin_toml() -> String {
    format!("[admin]\nlisten = \"127.0.0.1:0\"\ntoken = \"{ADMIN_TOKEN}\"\n")
}

/// A component's `.wasm` with a custom section appended: the same code
/// under another digest, so tests can tell two versions apart.
pub fn variant(crate_name: &str, tag: &str) -> Vec<u8> {
    let mut wasm = std::fs::read(wasm(crate_name)).unwrap();
    let name = b"corral-test";
    let size = 1 + name.len() + tag.len();
    assert!(size < 128, "one-byte section sizes only");
    wasm.extend([0, size as u8, name.len() as u8]);
    wasm.extend(name);
    wasm.extend(tag.as_bytes());
    wasm
}

/// One request made by [`load`].
#[derive(Debug, Clone)]
pub struct Sample {
    pub sent: Instant,
    pub received: Instant,
    pub status: u16,
    pub version: Option<String>,
}

/// Sends GET `url` from `clients` threads, each with its own connection,
/// until `stop` is set; returns every request made.
pub fn load_url(url: &str, clients: usize, stop: &std::sync::atomic::AtomicBool) -> Vec<Sample> {
    use std::sync::atomic::Ordering;
    std::thread::scope(|scope| {
        let workers: Vec<_> = (0..clients)
            .map(|_| {
                scope.spawn(|| {
                    let agent = client();
                    let mut samples = Vec::new();
                    while !stop.load(Ordering::Relaxed) {
                        let sent = Instant::now();
                        let (status, version) = match agent.get(url).call() {
                            Ok(mut response) => {
                                let _ = response.body_mut().read_to_vec();
                                let version = response.headers().get("corral-version");
                                (
                                    response.status().as_u16(),
                                    version.map(|v| v.to_str().unwrap().to_string()),
                                )
                            }
                            Err(_) => (0, None),
                        };
                        samples.push(Sample {
                            sent,
                            received: Instant::now(),
                            status,
                            version,
                        });
                    }
                    samples
                })
            })
            .collect();
        workers.into_iter().flat_map(|w| w.join().unwrap()).collect()
    })
}

/// An HTTP client that returns every status as a response.
pub fn client() -> ureq::Agent {
    ureq::Agent::config_builder()
        .http_status_as_error(false)
        .allow_non_standard_methods(true)
        .timeout_global(Some(Duration::from_secs(60)))
        .build()
        .into()
}

/// The field names of a validation problem's errors.
pub fn error_fields(problem: &Value) -> Vec<String> {
    problem["errors"]
        .as_array()
        .unwrap_or_else(|| panic!("no errors in {problem}"))
        .iter()
        .map(|e| e["field"].as_str().unwrap().to_string())
        .collect()
}

/// Runs the `corral` binary to its end; returns whether it succeeded and
/// everything it printed.
pub fn run_corral(args: &[&std::ffi::OsStr], envs: &[(&str, &str)], dir: &Path) -> (bool, String) {
    let mut command = Command::new(env!("CARGO_BIN_EXE_corral"));
    command.args(args).envs(envs.iter().copied()).current_dir(dir);
    output_of(&mut command)
}

/// Runs `command` to its end; returns whether it succeeded and everything
/// it printed.
pub fn output_of(command: &mut Command) -> (bool, String) {
    let output = command.output().unwrap();
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    (output.status.success(), text)
}

/// Runs `corral <command> --config` on config text written next to a
/// temporary data folder.
pub fn with_config(command: &str, toml: &str) -> (bool, String) {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("corral.toml");
    std::fs::write(&path, toml).unwrap();
    run_corral(
        &[command.as_ref(), "--config".as_ref(), path.as_os_str()],
        &[],
        dir.path(),
    )
}

/// Runs `corral check` on config text.
pub fn check_config(toml: &str) -> (bool, String) {
    with_config("check", toml)
}

/// A field of the host process's `/proc/<pid>/status`, in KiB, such as
/// `VmHWM` (peak resident memory) or `VmRSS`.
pub fn proc_status_kib(pid: u32, field: &str) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    status
        .lines()
        .find_map(|line| line.strip_prefix(field)?.strip_prefix(':'))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap_or_else(|| panic!("no {field} in {status}"))
}

/// A TCP connection to `addr` from the local address `from`, such as
/// 127.0.0.7: each loopback address is another client to the host.
pub fn connect_from(from: &str, addr: SocketAddr) -> std::net::TcpStream {
    let socket = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None).unwrap();
    let local: SocketAddr = format!("{from}:0").parse().unwrap();
    socket.bind(&local.into()).unwrap();
    socket.connect(&addr.into()).unwrap();
    socket.into()
}

/// How many fresh ports [`spawn_listening`] tries.
const LISTEN_ATTEMPTS: usize = 5;

/// A loopback address whose port was free a moment ago.
pub fn free_addr() -> SocketAddr {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
}

/// Starts the server `command(addr)` makes for a free loopback `addr` and
/// waits until it listens there. Another process may take a free port
/// before the server binds it: a server that exits is started again on a
/// fresh port, and only a socket the server itself holds counts.
pub fn spawn_listening(program: &str, mut command: impl FnMut(SocketAddr) -> Command) -> (Child, SocketAddr) {
    let mut exits = Vec::new();
    for _ in 0..LISTEN_ATTEMPTS {
        let addr = free_addr();
        let mut child = command(addr)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start {program}: {e}"));
        let started = Instant::now();
        loop {
            if listens_on(child.id(), addr.port()) {
                return (child, addr);
            }
            if let Some(status) = child.try_wait().unwrap() {
                exits.push(format!("{addr}: {status}"));
                break;
            }
            if started.elapsed() > Duration::from_secs(20) {
                let _ = child.kill();
                let _ = child.wait();
                panic!("{program} does not listen on {addr}");
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }
    panic!("{program} exited on every port it was given: {exits:?}")
}

/// Whether process `pid` holds a socket listening on TCP `port`, per
/// `/proc`.
fn listens_on(pid: u32, port: u16) -> bool {
    let listening: Vec<String> = ["/proc/net/tcp", "/proc/net/tcp6"]
        .into_iter()
        .filter_map(|table| std::fs::read_to_string(table).ok())
        .flat_map(|table| {
            table
                .lines()
                .skip(1)
                .filter_map(|line| {
                    // sl local_address rem_address st ... inode
                    let fields: Vec<&str> = line.split_whitespace().collect();
                    let local_port = u16::from_str_radix(fields.get(1)?.rsplit_once(':')?.1, 16).ok()?;
                    let listen = *fields.get(3)? == "0A";
                    (local_port == port && listen).then_some(())?;
                    Some(format!("socket:[{}]", fields.get(9)?))
                })
                .collect::<Vec<_>>()
        })
        .collect();
    let Ok(fds) = std::fs::read_dir(format!("/proc/{pid}/fd")) else {
        return false;
    };
    fds.filter_map(|fd| std::fs::read_link(fd.ok()?.path()).ok())
        .any(|target| listening.iter().any(|socket| target.as_os_str() == socket.as_str()))
}

/// Polls `probe` until it returns true, for up to 30 s.
#[track_caller]
pub fn eventually(what: &str, mut probe: impl FnMut() -> bool) {
    let started = Instant::now();
    while !probe() {
        assert!(started.elapsed() < Duration::from_secs(30), "never: {what}");
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// The value of a sample of `name` whose labels include all of `labels`;
/// zero when there is no such sample yet.
pub fn metric(text: &str, name: &str, labels: &[(&str, &str)]) -> f64 {
    text.lines()
        .filter(|line| !line.starts_with('#'))
        .filter_map(|line| {
            let (series, value) = line.rsplit_once(' ')?;
            let (metric_name, rest) = series.split_once('{').unwrap_or((series, "}"));
            let wanted = metric_name == name && labels.iter().all(|(k, v)| rest.contains(&format!("{k}=\"{v}\"")));
            wanted.then(|| value.parse::<f64>().unwrap())
        })
        .sum()
}

/// Sends GET `path` from four clients while `change` runs; returns
/// what they got, and the instants just before `change` began and just after
/// it returned.
pub fn under_load(
    host: &TestHost,
    path: &str,
    change: impl FnOnce() -> Reply,
) -> (Vec<Sample>, Instant, Instant, Reply) {
    under_load_url(&host.url(path), 4, change)
}

/// Sends GET `url` from `clients` clients while `change` runs, as
/// [`under_load`] does.
pub fn under_load_url(
    url: &str,
    clients: usize,
    change: impl FnOnce() -> Reply,
) -> (Vec<Sample>, Instant, Instant, Reply) {
    let stop = std::sync::atomic::AtomicBool::new(false);
    std::thread::scope(|scope| {
        let clients = scope.spawn(|| load_url(url, clients, &stop));
        // Load for a while on both sides of the change, not until some event:
        // before it, so that the change lands under load; after it, so that
        // a late response from the old version would be seen.
        std::thread::sleep(Duration::from_millis(300));
        let before = Instant::now();
        let reply = change();
        let after = Instant::now();
        std::thread::sleep(Duration::from_millis(300));
        stop.store(true, std::sync::atomic::Ordering::Relaxed);
        (clients.join().unwrap(), before, after, reply)
    })
}

/// No request failed; each response came from `old` or `new`; none from
/// `new` before the change began, none from `old` sent after it returned.
pub fn assert_clean_switch(samples: &[Sample], before: Instant, after: Instant, old: &str, new: &str) {
    let failed: Vec<_> = samples.iter().filter(|s| s.status != 200).collect();
    assert!(
        failed.is_empty(),
        "{} of {} requests failed: {failed:?}",
        failed.len(),
        samples.len()
    );
    for sample in samples {
        let version = sample.version.as_deref().expect("every response names its version");
        assert!(version == old || version == new, "unknown version {version}");
        if sample.received < before {
            assert_eq!(version, old, "served by the new version before the change began");
        }
        if sample.sent > after {
            assert_eq!(version, new, "served by the old version after the change returned");
        }
    }
    let count = |v: &str| samples.iter().filter(|s| s.version.as_deref() == Some(v)).count();
    assert!(
        count(old) > 0 && count(new) > 0,
        "{} old, {} new",
        count(old),
        count(new)
    );
}
