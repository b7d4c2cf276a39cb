//! Host and component capacity: concurrency with a bounded queue, body and
//! header caps, connection limits, slow clients and graceful shutdown.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::{Duration, Instant};

use serde_json::json;

use crate::support::host;

#[test]
fn past_the_concurrency_limit_and_queue_requests_get_503() {
    let host = host()
        .component("chaos", "chaos", &["/chaos"])
        .toml("[components.chaos.limits]\nmax_concurrent = 1\nmax_queued = 1\nqueue_timeout_ms = 60000")
        .start();
    std::thread::scope(|scope| {
        let running = scope.spawn(|| host.get("/chaos/sleep?ms=1500"));
        host.wait_for_log(&["sleeping for 1500 ms"]);
        // One of these two waits in the queue; the other finds it full.
        let later: Vec<_> = (0..2).map(|_| scope.spawn(|| host.get("/chaos/sleep?ms=10"))).collect();
        let mut later: Vec<_> = later.into_iter().map(|r| r.join().unwrap()).collect();
        later.sort_by_key(|r| r.status);
        assert_eq!(
            later[0].status,
            200,
            "the queued request ran when the slot freed: {}",
            later[0].text()
        );
        later[1].assert_problem(503, "overloaded");
        assert_eq!(later[1].header("retry-after"), Some("1"));
        assert_eq!(running.join().unwrap().status, 200);
    });
}

#[test]
fn a_queued_request_gives_up_after_the_queue_timeout() {
    let host = host()
        .component("chaos", "chaos", &["/chaos"])
        .toml("[components.chaos.limits]\nmax_concurrent = 1\nqueue_timeout_ms = 100")
        .start();
    std::thread::scope(|scope| {
        let running = scope.spawn(|| host.get("/chaos/sleep?ms=2000"));
        host.wait_for_log(&["sleeping for 2000 ms"]);
        let problem = host.get("/chaos/sleep?ms=10").assert_problem(503, "overloaded");
        assert!(problem["detail"].as_str().unwrap().contains("100ms"), "{problem}");
        assert_eq!(running.join().unwrap().status, 200);
    });
}

#[test]
fn request_bodies_are_capped_per_component() {
    let host = host()
        .component("users", "users", &["/users"])
        .toml("[components.users.limits]\nrequest_body_kib = 1")
        .start();
    let padding = "x".repeat(2000);
    let reply = host.post(
        "/users",
        &json!({ "name": "Ada", "email": "ada@example.com", "pad": padding }),
    );
    let problem = reply.assert_problem(413, "body-too-large");
    assert!(problem["detail"].as_str().unwrap().contains("1024 bytes"), "{problem}");
    // Without a content-length (chunked), the cap holds too.
    let chunked = http::Request::post("/users")
        .header("content-type", "application/json")
        .header("transfer-encoding", "chunked")
        .body(vec![b' '; 4096])
        .unwrap();
    host.request(chunked).assert_problem(413, "body-too-large");
    assert_eq!(
        host.post("/users", &json!({ "name": "Ada", "email": "ada@example.com" }))
            .status,
        201
    );
}

fn raw_request(addr: std::net::SocketAddr, request: &[u8]) -> String {
    let mut stream = TcpStream::connect(addr).unwrap();
    stream.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    stream.write_all(request).unwrap();
    let mut response = Vec::new();
    let _ = stream.read_to_end(&mut response);
    String::from_utf8_lossy(&response).into_owned()
}

#[test]
fn too_many_or_too_large_headers_are_431() {
    let host = host()
        .component("users", "users", &["/users"])
        .toml("[server]\nmax_headers = 20\nmax_header_kib = 4")
        .start();
    let many: String = (0..30).map(|i| format!("x-h{i}: v\r\n")).collect();
    let response = raw_request(
        host.addr,
        format!("GET /users HTTP/1.1\r\nhost: x\r\n{many}\r\n").as_bytes(),
    );
    assert!(response.starts_with("HTTP/1.1 431"), "{response}");
    let big = format!("GET /users HTTP/1.1\r\nhost: x\r\nx-big: {}\r\n\r\n", "v".repeat(8000));
    let response = raw_request(host.addr, big.as_bytes());
    assert!(response.starts_with("HTTP/1.1 431"), "{response}");
    let fine = raw_request(
        host.addr,
        b"GET /users HTTP/1.1\r\nhost: x\r\nconnection: close\r\n\r\n",
    );
    assert!(fine.starts_with("HTTP/1.1 200"), "{fine}");
}

#[test]
fn a_client_that_never_finishes_its_headers_is_dropped() {
    let host = host()
        .component("users", "users", &["/users"])
        .toml("[server]\nheader_read_timeout_ms = 300")
        .start();
    let mut stream = TcpStream::connect(host.addr).unwrap();
    stream.write_all(b"GET /users HTTP/1.1\r\nhost: x\r\n").unwrap();
    stream.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    let started = Instant::now();
    let mut rest = Vec::new();
    let _ = stream.read_to_end(&mut rest);
    assert!(
        started.elapsed() < Duration::from_secs(9),
        "the host closed the connection"
    );
    assert_eq!(host.get("/users").status, 200, "others are still served");
}

#[test]
fn connections_past_the_limit_wait_for_a_free_one() {
    let host = host()
        .component("users", "users", &["/users"])
        .toml("[server]\nmax_connections = 1")
        .start();
    // One idle keep-alive connection takes the only slot...
    let mut idle = TcpStream::connect(host.addr).unwrap();
    idle.write_all(b"GET /users HTTP/1.1\r\nhost: x\r\n\r\n").unwrap();
    let mut buf = [0u8; 12];
    idle.read_exact(&mut buf).unwrap();
    assert_eq!(&buf, b"HTTP/1.1 200");
    // ... so the next client is not served until it closes.
    std::thread::scope(|scope| {
        let waiting = scope.spawn(|| {
            raw_request(
                host.addr,
                b"GET /users HTTP/1.1\r\nhost: x\r\nconnection: close\r\n\r\n",
            )
        });
        // Nothing happens to wait for: the host must leave the client
        // alone, so give it time in which it would have served it.
        std::thread::sleep(Duration::from_millis(500));
        assert!(!waiting.is_finished(), "served past the connection limit");
        drop(idle);
        assert!(waiting.join().unwrap().starts_with("HTTP/1.1 200"));
    });
}

#[test]
fn sigterm_lets_requests_in_flight_finish_then_exits_0() {
    let mut host = host()
        .component("chaos", "chaos", &["/chaos"])
        .toml("[server]\nshutdown_grace_ms = 10000")
        .start();
    let addr = host.addr;
    let in_flight = std::thread::spawn(move || {
        raw_request(
            addr,
            b"GET /chaos/sleep?ms=1000 HTTP/1.1\r\nhost: x\r\nconnection: close\r\n\r\n",
        )
    });
    host.wait_for_log(&["sleeping for 1000 ms"]);
    host.terminate();
    host.wait_for_log(&["shutting down"]);
    assert!(
        TcpStream::connect(addr).is_err(),
        "no longer accepting while the request finishes"
    );
    let response = in_flight.join().unwrap();
    assert!(
        response.starts_with("HTTP/1.1 200") && response.ends_with("awake"),
        "{response}"
    );
    let status = host.wait();
    assert!(status.success(), "{status}: {}", host.logs());
    host.wait_for_log(&["databases closed"]);
    let wal = host.data_dir.join("chaos.sqlite3-wal");
    assert!(
        !wal.exists() || std::fs::metadata(&wal).unwrap().len() == 0,
        "the WAL was checkpointed"
    );
}
