//! Hostile clients: slow bodies from many addresses, abandoned waits, too
//! many connections, responses never read, HEAD around GET limits. Each
//! may fail its own requests; none takes a component away from others.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::{Duration, Instant};

use serde_json::json;

use crate::support::{TestHost, admin_toml, connect_from, eventually, host, metric};

/// Client connections the host holds open on its public listener.
fn open_connections(host: &TestHost) -> i64 {
    let metrics = host.metrics();
    let series = "corral_open_connections{listener=\"public\"}";
    assert!(metrics.contains(series), "no {series} in:\n{metrics}");
    metric(&metrics, "corral_open_connections", &[("listener", "public")]) as i64
}

/// Sends the start of a POST whose body never comes; the stream stays open.
fn stall(from: &str, host: &TestHost) -> TcpStream {
    let mut stream = connect_from(from, host.addr);
    stream
        .write_all(b"POST /users HTTP/1.1\r\nhost: x\r\ncontent-type: application/json\r\ncontent-length: 100\r\n\r\n{")
        .unwrap();
    stream
}

#[test]
fn slow_bodies_from_many_addresses_take_nothing_from_others() {
    let host = host()
        .component("users", "users", &["/users"])
        .component("orders", "orders", &["/orders"])
        .toml("[components.users.limits]\nmax_concurrent = 4\nmax_queued = 4\nqueue_timeout_ms = 1000")
        .toml("[server]\nbody_timeout_ms = 4000")
        .toml(&admin_toml())
        .start();
    let user = host
        .post("/users", &json!({ "name": "Ada", "email": "ada@example.com" }))
        .json();
    // 70 clients on 8 addresses, each holding a request whose body stalls
    // after one byte: far more than users' 4 slots and 4 queue places.
    let open = open_connections(&host);
    let stalled: Vec<TcpStream> = (0..70)
        .map(|i| stall(&format!("127.0.0.{}", 2 + i % 8), &host))
        .collect();
    eventually("the host holds every stalled connection", || {
        open_connections(&host) >= open + 70
    });
    let users = host.component_status("users");
    assert_eq!(
        (users["in_flight"].as_u64(), users["queued"].as_u64()),
        (Some(0), Some(0)),
        "{users}"
    );
    for n in 0..10 {
        let started = Instant::now();
        let reply = host.get(&format!("/users/{}", user["id"]));
        assert_eq!(reply.status, 200, "{}", reply.text());
        let order = host.post(
            "/orders",
            &json!({ "user_id": user["id"], "items": [{ "sku": format!("S{n}"), "quantity": 1, "unit_price_cents": 5 }] }),
        );
        assert_eq!(order.status, 201, "orders calls users meanwhile: {}", order.text());
        assert!(started.elapsed() < Duration::from_secs(2), "{:?}", started.elapsed());
    }
    // The stalled bodies fail on their own, with 408, and their
    // connections close.
    for mut stream in stalled {
        stream.set_read_timeout(Some(Duration::from_secs(15))).unwrap();
        let mut response = String::new();
        let _ = stream.read_to_string(&mut response);
        assert!(response.starts_with("HTTP/1.1 408"), "{response}");
        assert!(response.contains("body-timeout"), "{response}");
    }
}

#[test]
fn abandoned_waits_leave_the_queue_empty() {
    let host = host()
        .component("chaos", "chaos", &["/chaos"])
        .toml("[components.chaos.limits]\nmax_concurrent = 1\nmax_queued = 1000\nqueue_timeout_ms = 60000")
        .toml("[server]\nmax_connections_per_client = 1000")
        .toml(&admin_toml())
        .start();
    std::thread::scope(|scope| {
        let sleeper = scope.spawn(|| host.get("/chaos/sleep?ms=4000"));
        host.wait_for_log(&["sleeping for 4000 ms"]);
        let waiting: Vec<TcpStream> = (0..500)
            .map(|_| {
                let mut stream = TcpStream::connect(host.addr).unwrap();
                stream
                    .write_all(b"GET /chaos/sandbox HTTP/1.1\r\nhost: x\r\n\r\n")
                    .unwrap();
                stream
            })
            .collect();
        eventually("500 requests queue", || host.component_status("chaos")["queued"] == 500);
        drop(waiting);
        eventually("the queue empties", || host.component_status("chaos")["queued"] == 0);
        assert_eq!(host.component_status("chaos")["in_flight"], 1);
        assert_eq!(sleeper.join().unwrap().status, 200);
    });
    assert_eq!(host.component_status("chaos")["in_flight"], 0);
    // Nothing is left over to refuse later requests with.
    assert_eq!(host.get("/chaos/sandbox").status, 200);
}

#[test]
fn one_client_cannot_take_every_connection() {
    let host = host()
        .component("users", "users", &["/users"])
        .toml("[server]\nmax_connections_per_client = 4")
        .toml(&admin_toml())
        .start();
    let idle: Vec<TcpStream> = (0..4).map(|_| connect_from("127.0.0.2", host.addr)).collect();
    eventually("the host holds the four", || open_connections(&host) == 4);
    let mut fifth = connect_from("127.0.0.2", host.addr);
    fifth.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    let mut response = String::new();
    let _ = fifth.read_to_string(&mut response);
    assert!(response.starts_with("HTTP/1.1 429"), "{response}");
    assert!(response.contains("too-many-connections"), "{response}");
    // Others are served, and the client gets its place back once it closes one.
    assert_eq!(host.get("/users").status, 200);
    drop(idle);
    eventually("the client is served again", || {
        let mut again = connect_from("127.0.0.2", host.addr);
        again
            .write_all(b"GET /users HTTP/1.1\r\nhost: x\r\nconnection: close\r\n\r\n")
            .unwrap();
        again.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        let mut response = String::new();
        let _ = again.read_to_string(&mut response);
        response.starts_with("HTTP/1.1 200")
    });
}

#[test]
fn a_response_the_client_never_reads_is_abandoned() {
    let host = host()
        .component("chaos", "chaos", &["/chaos"])
        .toml("[components.chaos.limits]\nresponse_body_kib = 65536\nmemory_mib = 256")
        .toml("[server]\nwrite_timeout_ms = 500")
        .toml(&admin_toml())
        .start();
    let connections = || open_connections(&host);
    let socket = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None).unwrap();
    socket.set_recv_buffer_size(4096).unwrap();
    socket.connect(&host.addr.into()).unwrap();
    let mut stream: TcpStream = socket.into();
    stream
        .write_all(b"GET /chaos/big-body?mib=32 HTTP/1.1\r\nhost: x\r\n\r\n")
        .unwrap();
    eventually("the connection is open", || connections() == 1);
    // Never read: the host gives up on the write and closes the connection.
    eventually("the connection is closed", || connections() == 0);
    drop(stream);
    assert_eq!(host.get("/chaos/sandbox").status, 200);
}

#[test]
fn a_response_read_too_slowly_is_abandoned_although_bytes_keep_moving() {
    // The write timeout alone restarts with every byte; the pace does not.
    let host = host()
        .component("chaos", "chaos", &["/chaos"])
        .toml("[components.chaos.limits]\nresponse_body_kib = 65536\nmemory_mib = 256")
        .toml("[server]\nwrite_timeout_ms = 60000\nwrite_min_bytes_per_sec = 65536")
        .start();
    let socket = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None).unwrap();
    socket.set_recv_buffer_size(4096).unwrap();
    socket.connect(&host.addr.into()).unwrap();
    let mut stream: TcpStream = socket.into();
    stream
        .write_all(b"GET /chaos/big-body?mib=32 HTTP/1.1\r\nhost: x\r\n\r\n")
        .unwrap();
    // About 10 KiB a second, well under the 64 KiB required.
    let started = Instant::now();
    let mut buf = [0u8; 1024];
    let mut read = 0usize;
    loop {
        match stream.read(&mut buf) {
            Ok(0) | Err(_) => break,
            Ok(n) => read += n,
        }
        assert!(
            started.elapsed() < Duration::from_secs(15),
            "still sending after {read} bytes"
        );
        // A slow reader on purpose: the pace it keeps is what is tested.
        std::thread::sleep(Duration::from_millis(100));
    }
    assert!(read < 32 << 20, "the whole body was read");
    eprintln!("cut off after {:?} and {read} bytes", started.elapsed());
    assert_eq!(host.get("/chaos/sandbox").status, 200);
}

#[test]
fn head_counts_against_get_limits() {
    let host = host()
        .component("users", "users", &["/users"])
        .toml("[components.users.rate_limit]\nroutes = [{ route = \"GET /users/{id}\", rate = \"1/minute\" }]")
        .start();
    assert_eq!(host.get("/users/1").status, 404);
    let head = host.send("HEAD", "/users/1", None);
    assert_eq!(head.status, 429, "HEAD is limited as GET");
    host.get("/users/1").assert_problem(429, "rate-limited");
    // Other routes of the component are not limited by the pattern.
    assert_eq!(host.send("HEAD", "/users", None).status, 200);
}

#[test]
fn clients_that_do_not_read_cannot_hold_the_hosts_memory() {
    // chaos answers 8 MiB; at most 2 of its instances run at once, so what
    // is being made at any moment is bounded by the concurrency limit, and
    // what waits for clients by the response budget.
    let host = host()
        .component("users", "users", &["/users"])
        .component("chaos", "chaos", &["/chaos"])
        .toml("[components.chaos.limits]\nmax_concurrent = 2\nmax_queued = 200\nmemory_mib = 32")
        .toml("[server]\nresponse_buffer_mib = 64\nresponse_buffer_per_client_mib = 8\nwrite_timeout_ms = 60000")
        .start();
    let user = host
        .post("/users", &json!({ "name": "Ada", "email": "ada@example.com" }))
        .json();
    let before = crate::support::proc_status_kib(host.pid(), "VmRSS");
    // 100 connections from 50 addresses ask for 8 MiB each and read nothing.
    let mut held: Vec<TcpStream> = (0..100)
        .map(|i| {
            let mut stream = connect_from(&format!("127.0.0.{}", 2 + i % 50), host.addr);
            stream
                .write_all(b"GET /chaos/big-body?mib=8 HTTP/1.1\r\nhost: x\r\n\r\n")
                .unwrap();
            stream
        })
        .collect();
    eventually("every request was answered or refused", || {
        host.logs().matches("path=\"/chaos/big-body\"").count() >= 100
    });
    // Other components answer as usual.
    for _ in 0..20 {
        assert_eq!(host.get(&format!("/users/{}", user["id"])).status, 200);
    }
    let peak = crate::support::proc_status_kib(host.pid(), "VmHWM");
    let grown_mib = peak.saturating_sub(before) >> 10;
    let refused = host.logs().matches("status=503").count();
    eprintln!(
        "resident memory: {} MiB before, peak {} MiB; {refused} of 100 refused",
        before >> 10,
        peak >> 10
    );
    // The budget (64 MiB), what 2 running instances hold (their 32 MiB of
    // memory and the 8 MiB copied out of it), and the allocators' slack.
    assert!(
        grown_mib < 64 + 2 * (32 + 8) + 64,
        "resident memory grew by {grown_mib} MiB"
    );
    assert!(refused >= 50, "{refused} refused");
    // The unread responses go once their clients do.
    held.clear();
    eventually("the budget is free again", || {
        host.get("/chaos/big-body?mib=1").status == 200
    });
}
