//! Components of the standard `wasi:http/proxy` world, served as they are:
//! streamed bodies both ways, every limit, hot swap against a version of
//! corral's own world, outgoing HTTP only where it is allowed, and
//! `http://<component>.internal` served in process.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use serde_json::json;

use crate::support::{admin_toml, assert_clean_switch, component_toml, host, metric, under_load, variant, wasm};

fn get(path: &str) -> http::Request<Vec<u8>> {
    http::Request::get(path).body(Vec::new()).unwrap()
}

#[test]
fn a_wasi_http_component_answers_with_its_status_headers_and_streamed_body() {
    let host = host()
        .component("hello", "http-hello", &["/http"])
        .toml("[components.hello.limits]\nrequest_body_kib = 4096")
        .toml(&admin_toml())
        .start();
    let hello = host.get("/http/hello");
    assert_eq!((hello.status, hello.text().as_str()), (200, "hello from wasi:http"));
    assert_eq!(hello.header("content-type"), Some("text/plain"));
    assert!(hello.header("corral-version").is_some() && hello.header("x-request-id").is_some());
    assert_eq!(host.get("/http/status/418").status, 418);
    let no_content = host.get("/http/status/204");
    assert_eq!((no_content.status, no_content.body.len()), (204, 0));
    // Trailers are passed on or dropped, never mistaken for the body.
    assert_eq!(host.get("/http/trailers").text(), "with trailers");

    // A 3 MiB body goes through in chunks, both ways.
    let body: Vec<u8> = (0..3 << 20).map(|i: u32| (i % 251) as u8).collect();
    let echo = host.request(
        http::Request::post("/http/echo")
            .header("content-type", "application/x-test")
            .header("corral-client-addr", "203.0.113.9")
            .body(body.clone())
            .unwrap(),
    );
    assert_eq!(echo.status, 200);
    assert!(echo.body == body, "the echo differs from what was sent");
    assert_eq!(echo.header("content-type"), Some("application/x-test"));
    // The host says who the client is and which request this is; a client
    // cannot pose as another address.
    assert_eq!(echo.header("seen-client"), Some("127.0.0.1"));
    assert_eq!(echo.header("seen-request-id"), echo.header("x-request-id"));
    assert_eq!(echo.header("seen-method"), Some("Method::Post"));

    // Next to wasi:http it imports corral's sqlite, and gets its own database.
    assert_eq!(host.post_raw("/http/visits", "text/plain", b"").text(), "1");
    assert_eq!(host.post_raw("/http/visits", "text/plain", b"").text(), "2");
    assert!(host.data_dir.join("hello.sqlite3").is_file());
    host.wait_for_log(&["visit number 2", "component=hello"]);

    let hello = host.component_status("hello");
    let version = &hello["version"];
    assert_eq!(version["world"], "wasi:http/proxy", "{hello}");
    let imports: Vec<&str> = version["host_imports"]
        .as_array()
        .unwrap()
        .iter()
        .map(|i| i.as_str().unwrap())
        .collect();
    assert!(imports.contains(&"corral:service/sqlite@0.2.0"), "{imports:?}");
    assert!(
        imports.iter().any(|i| i.starts_with("wasi:http/outgoing-handler@")),
        "{imports:?}"
    );
}

#[test]
fn limits_contain_a_wasi_http_component() {
    let mut host = host()
        .component("hello", "http-hello", &["/http"])
        .component("users", "users", &["/users"])
        .toml(
            "[components.hello.limits]\nmemory_mib = 32\ncpu_time_ms = 300\nresponse_body_kib = 1024\nrequest_body_kib = 64",
        )
        .toml(&admin_toml())
        .start();
    host.get("/http/spin").assert_problem(504, "cpu-time");
    host.get("/http/alloc?mib=64").assert_problem(500, "memory");
    assert_eq!(host.get("/http/alloc?mib=4").status, 200);
    host.post_raw("/http/echo", "text/plain", &vec![b'x'; 65 << 10])
        .assert_problem(413, "body-too-large");

    // A body within the limit streams whole; one past it, or one whose
    // instance dies midway, is cut short: the client sees a broken
    // response, never a complete-looking truncated one.
    let within = host.get("/http/stream?chunks=16&size=65536");
    assert_eq!((within.status, within.body.len()), (200, 1 << 20));
    assert!(host.try_request(get("/http/stream?chunks=17&size=65536")).is_none());
    assert!(host.try_request(get("/http/spin-mid-body")).is_none());

    // While it misbehaves, everything else is served.
    std::thread::scope(|scope| {
        let attacks: Vec<_> = (0..3).map(|_| scope.spawn(|| host.get("/http/spin"))).collect();
        for _ in 0..20 {
            assert_eq!(host.get("/users").status, 200);
        }
        for attack in attacks {
            attack.join().unwrap().assert_problem(504, "cpu-time");
        }
    });
    assert!(host.is_alive());
    assert_eq!(host.get("/http/hello").status, 200);

    let metrics = host.metrics();
    for cause in ["cpu-time", "memory", "response-size"] {
        let count = metric(
            &metrics,
            "corral_traps_total",
            &[("component", "hello"), ("cause", cause)],
        );
        assert!(count >= 1.0, "no {cause} trap counted:\n{metrics}");
    }
    host.wait_for_log(&["response body cut short", "cause=\"response-size\""]);
}

#[test]
fn a_route_swaps_between_a_wasi_http_and_a_corral_world_version() {
    let path = "/http/hello";
    let host = host()
        .component("svc", "http-hello", &["/http"])
        .toml(&admin_toml())
        .start();
    let first = host.version_of(path);
    let swap = || host.admin("PUT", "/components/svc", std::fs::read(wasm("empty")).unwrap());
    let (samples, before, after, reply) = under_load(&host, path, swap);
    assert_eq!(reply.status, 200, "{}", reply.text());
    let second = host.version_of(path);
    assert_clean_switch(&samples, before, after, &first, &second);
    assert_eq!(host.get(path).body, b"");
    assert_eq!(
        host.component_status("svc")["version"]["world"],
        "corral:service/service"
    );

    let rollback = || host.admin("POST", "/components/svc/rollback", Vec::new());
    let (samples, before, after, reply) = under_load(&host, path, rollback);
    assert_eq!(reply.status, 200, "{}", reply.text());
    assert_clean_switch(&samples, before, after, &second, &first);
    assert_eq!(host.get(path).text(), "hello from wasi:http");

    // A canary of the other world shares the route with it.
    let canary = host.admin("PUT", "/components/svc?canary=50", variant("empty", "canary"));
    assert_eq!(canary.status, 200, "{}", canary.text());
    let bodies: std::collections::HashSet<String> = (0..60).map(|_| host.get(path).text()).collect();
    assert_eq!(bodies, ["".to_string(), "hello from wasi:http".to_string()].into());
}

/// A loopback HTTP server for outgoing requests: `/ok` answers, `/huge`
/// sends 1 MiB, `/silent` never answers. Counts the connections it takes.
struct Upstream {
    addr: SocketAddr,
    connections: Arc<AtomicUsize>,
}

fn upstream() -> Upstream {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    let connections = Arc::new(AtomicUsize::new(0));
    let counted = Arc::clone(&connections);
    std::thread::spawn(move || {
        for stream in listener.incoming() {
            let Ok(stream) = stream else { return };
            counted.fetch_add(1, Ordering::SeqCst);
            std::thread::spawn(move || answer(stream));
        }
    });
    Upstream { addr, connections }
}

fn answer(mut stream: TcpStream) {
    let mut reader = BufReader::new(stream.try_clone().unwrap());
    let mut line = String::new();
    if reader.read_line(&mut line).is_err() {
        return;
    }
    let path = line.split(' ').nth(1).unwrap_or("/").to_string();
    while reader.read_line(&mut line).is_ok_and(|n| n > 2) {
        line.clear();
    }
    let body = match path.as_str() {
        "/ok" => b"from upstream".to_vec(),
        "/huge" => vec![b'u'; 1 << 20],
        _ => {
            // Holds the connection without answering until the peer leaves.
            let _ = reader.read(&mut [0; 1]);
            return;
        }
    };
    let head = format!(
        "HTTP/1.1 200 OK\r\ncontent-length: {}\r\nconnection: close\r\n\r\n",
        body.len()
    );
    let _ = stream.write_all(head.as_bytes());
    let _ = stream.write_all(&body);
}

#[test]
fn outgoing_http_goes_only_where_it_is_allowed() {
    let allowed = upstream();
    let forbidden = upstream();
    let host = host()
        .toml(&component_toml("hello", "http-hello", &["/http"]))
        .toml(&format!(
            "allowed_outbound_hosts = [\"http://{}\"]\n[components.hello.limits]\noutbound_response_kib = 64\noutbound_timeout_ms = 500",
            allowed.addr
        ))
        .component("plain", "http-hello", &["/plain"])
        .toml(&admin_toml())
        .start();
    let fetch = |component: &str, url: &str| host.get(&format!("/{component}/fetch?url={url}"));

    let ok = fetch("http", &format!("http://{}/ok", allowed.addr));
    assert_eq!((ok.status, ok.text().as_str()), (200, "from upstream"));
    assert_eq!(ok.header("fetched-status"), Some("200"));

    // Another port, the same port under another name, and a component that
    // lists nothing: all denied, and nothing reaches the network.
    for (component, url) in [
        ("http", format!("http://{}/ok", forbidden.addr)),
        ("http", format!("http://localhost:{}/ok", allowed.addr.port())),
        ("http", format!("https://{}/ok", allowed.addr)),
        ("plain", format!("http://{}/ok", allowed.addr)),
    ] {
        let denied = fetch(component, &url);
        assert_eq!(denied.status, 502, "{url}: {}", denied.text());
        assert!(denied.text().contains("HttpRequestDenied"), "{url}: {}", denied.text());
    }
    assert_eq!(forbidden.connections.load(Ordering::SeqCst), 0);

    // Past the response cap, and past the timeout.
    let huge = fetch("http", &format!("http://{}/huge", allowed.addr));
    assert_eq!(huge.status, 502);
    assert!(huge.text().contains("HttpResponseBodySize"), "{}", huge.text());
    let silent = fetch("http", &format!("http://{}/silent", allowed.addr));
    assert_eq!(silent.status, 502);
    assert!(silent.text().contains("Timeout"), "{}", silent.text());

    host.wait_for_log(&["was denied: not in allowed_outbound_hosts", "component=plain"]);
    let metrics = host.metrics();
    let count = |component, outcome| {
        metric(
            &metrics,
            "corral_outbound_requests_total",
            &[("component", component), ("outcome", outcome)],
        )
    };
    assert_eq!(count("hello", "denied"), 3.0, "{metrics}");
    assert_eq!(count("plain", "denied"), 1.0, "{metrics}");
    assert_eq!(count("hello", "timeout"), 1.0, "{metrics}");
    assert_eq!(count("hello", "ok"), 2.0, "{metrics}");
}

#[test]
fn internal_urls_are_served_in_process_by_the_named_component() {
    let host = host()
        .toml(&component_toml("hello", "http-hello", &["/http"]))
        .toml("allowed_outbound_hosts = [\"http://*.internal\"]")
        .component("users", "users", &["/users"])
        .component("plain", "http-hello", &["/plain"])
        .start();
    let ada = host
        .post("/users", &json!({ "name": "Ada", "email": "ada@example.com" }))
        .json();
    let fetched = host.get(&format!("/http/fetch?url=http://users.internal/users/{}", ada["id"]));
    assert_eq!(fetched.header("fetched-status"), Some("200"), "{}", fetched.text());
    assert_eq!(fetched.json(), ada);
    let logs = host.wait_for_log(&["client=hello.internal", "component=\"users\""]);
    assert!(logs.contains("route=") || logs.contains("path=\"/users/"), "{logs}");

    let nobody = host.get("/http/fetch?url=http://nobody.internal/");
    assert_eq!(nobody.header("fetched-status"), Some("404"));
    assert!(
        host.get("/plain/fetch?url=http://users.internal/users")
            .text()
            .contains("HttpRequestDenied")
    );

    // A component that calls itself ends, at the depth limit.
    let url = (0..12).fold("http://hello.internal/http/hello".to_string(), |inner, _| {
        format!("http://hello.internal/http/fetch?url={inner}")
    });
    let looped = host.get(&format!("/http/fetch?url={url}"));
    assert!(looped.text().contains("LoopDetected"), "{}", looped.text());
}

#[test]
fn an_internal_request_body_is_held_to_the_callees_limit() {
    let host = host()
        .toml(&component_toml("hello", "http-hello", &["/http"]))
        .toml("allowed_outbound_hosts = [\"http://*.internal\"]")
        .component("users", "users", &["/users"])
        .toml("[components.users.limits]\nrequest_body_kib = 1")
        .toml(&admin_toml())
        .start();
    // Within the limit, the callee reads it (and refuses it: it is no JSON).
    let small = host.get("/http/fetch?url=http://users.internal/users&send=512");
    let status: u16 = small.header("fetched-status").unwrap().parse().unwrap();
    assert!((400..500).contains(&status) && status != 413, "{}", small.text());
    let large = host.get("/http/fetch?url=http://users.internal/users&send=100000");
    assert_eq!(large.header("fetched-status"), Some("413"), "{}", large.text());
    let problem: serde_json::Value = serde_json::from_slice(&large.body).unwrap();
    assert_eq!(problem["type"], "urn:corral:problem:body-too-large");
    // The refused body never reached the callee, and the host serves on.
    assert_eq!(host.get("/users").status, 200);
    let rejected = metric(
        &host.metrics(),
        "corral_requests_rejected_total",
        &[("component", "users"), ("reason", "body_size")],
    );
    assert_eq!(rejected, 1.0);
}
