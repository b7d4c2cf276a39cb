//! Traces exported over OTLP: one trace per request, across components and
//! hosts, parented as the request went; trace context believed only from
//! other hosts and trusted proxies; guests see none but their own.

use std::collections::{HashMap, HashSet};
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;
use opentelemetry_proto::tonic::common::v1::any_value::Value as AnyValue;
use opentelemetry_proto::tonic::trace::v1::Span;
use prost::Message;
use serde_json::json;

use crate::cluster::{cluster_host_of, cluster_of, nats};
use crate::support::*;

/// A span as received, with the host that sent it.
#[derive(Clone, Debug)]
struct Received {
    node: String,
    span: Span,
}

impl Received {
    fn attribute(&self, key: &str) -> Option<String> {
        let attribute = self.span.attributes.iter().find(|a| a.key == key)?;
        match attribute.value.as_ref()?.value.as_ref()? {
            AnyValue::StringValue(s) => Some(s.clone()),
            AnyValue::IntValue(i) => Some(i.to_string()),
            other => Some(format!("{other:?}")),
        }
    }
}

/// An OTLP/HTTP receiver on a loopback port of its own: every span sent to
/// `/v1/traces`, decoded with OpenTelemetry's own protobuf types.
struct Receiver {
    addr: SocketAddr,
    spans: Arc<Mutex<Vec<Received>>>,
}

impl Receiver {
    fn start() -> Receiver {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        let spans: Arc<Mutex<Vec<Received>>> = Arc::default();
        let kept = Arc::clone(&spans);
        std::thread::spawn(move || {
            for stream in listener.incoming().flatten() {
                let kept = Arc::clone(&kept);
                std::thread::spawn(move || serve_otlp(stream, &kept));
            }
        });
        Receiver { addr, spans }
    }

    fn endpoint(&self) -> String {
        format!("[telemetry]\notlp_endpoint = \"http://{}\"\n", self.addr)
    }

    /// Every span of `trace_id` received so far.
    fn trace(&self, trace_id: &[u8]) -> Vec<Received> {
        let spans = self.spans.lock().unwrap();
        spans.iter().filter(|r| r.span.trace_id == trace_id).cloned().collect()
    }

    /// The first span received that `matches`, waiting for it.
    fn wait_for(&self, what: &str, matches: impl Fn(&Received) -> bool) -> Received {
        let mut found = None;
        eventually_within(Duration::from_secs(30), what, || {
            found = self.spans.lock().unwrap().iter().find(|r| matches(r)).cloned();
            found.is_some()
        });
        found.unwrap()
    }
}

/// Answers OTLP/HTTP export requests on one connection until it closes.
fn serve_otlp(stream: TcpStream, kept: &Mutex<Vec<Received>>) {
    let mut reader = BufReader::new(stream.try_clone().unwrap());
    let mut stream = stream;
    loop {
        let mut length = 0;
        let mut line = String::new();
        loop {
            line.clear();
            if reader.read_line(&mut line).unwrap_or(0) == 0 {
                return;
            }
            let header = line.trim_end();
            if header.is_empty() {
                break;
            }
            if let Some((name, value)) = header.split_once(':')
                && name.eq_ignore_ascii_case("content-length")
            {
                length = value.trim().parse().unwrap();
            }
        }
        let mut body = vec![0; length];
        reader.read_exact(&mut body).unwrap();
        let request = ExportTraceServiceRequest::decode(&body[..]).expect("an OTLP trace export");
        for resource in request.resource_spans {
            let node = resource
                .resource
                .iter()
                .flat_map(|r| &r.attributes)
                .find(|a| a.key == "service.instance.id")
                .and_then(|a| match a.value.as_ref()?.value.as_ref()? {
                    AnyValue::StringValue(s) => Some(s.clone()),
                    _ => None,
                })
                .unwrap_or_default();
            for scope in resource.scope_spans {
                for span in scope.spans {
                    kept.lock().unwrap().push(Received {
                        node: node.clone(),
                        span,
                    });
                }
            }
        }
        let answer = "HTTP/1.1 200 OK\r\ncontent-type: application/x-protobuf\r\ncontent-length: 0\r\n\r\n";
        if stream.write_all(answer.as_bytes()).is_err() {
            return;
        }
    }
}

/// Waits up to `limit` for `probe` to hold.
fn eventually_within(limit: Duration, what: &str, mut probe: impl FnMut() -> bool) {
    let started = std::time::Instant::now();
    while !probe() {
        assert!(started.elapsed() < limit, "{what}: not within {limit:?}");
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// A trace id a client makes up, as a `traceparent` names it.
const CLIENT_TRACE: &str = "0af7651916cd43dd8448eb211c80319c";

fn client_traceparent() -> String {
    format!("00-{CLIENT_TRACE}-b7ad6b7169203331-01")
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

#[test]
fn an_order_through_three_hosts_is_one_trace_parented_as_it_went() {
    let receiver = Receiver::start();
    let nats = nats();
    let components = format!(
        "{}owner = \"n2\"\ndurability = \"local\"\n{}owner = \"n1\"\ndurability = \"local\"\n{}",
        component_toml("users", "users", &["/users"]),
        component_toml("orders", "orders", &["/orders"]),
        receiver.endpoint(),
    );
    let hosts: Vec<TestHost> = ["n1", "n2", "n3"]
        .into_iter()
        .map(|node| cluster_host_of(&nats, node, &components, None))
        .collect();
    for host in &hosts {
        eventually("every host sees the others live", || {
            cluster_of(host)["nodes"].as_array().map(Vec::len) == Some(3)
        });
    }
    let user = hosts[1].post("/users", &json!({ "name": "ada", "email": "ada@example.com" }));
    assert_eq!(user.status, 201, "{}", user.text());
    // Sent to n3, which owns neither: forwarded to n1, where orders asks
    // users on n2. The client's trace context is not believed.
    let order =
        json!({ "user_id": user.json()["id"], "items": [{ "sku": "TEA", "quantity": 1, "unit_price_cents": 300 }] });
    let reply = hosts[2].request(
        http::Request::post("/orders")
            .header("content-type", "application/json")
            .header("traceparent", client_traceparent())
            .body(order.to_string().into_bytes())
            .unwrap(),
    );
    assert_eq!(reply.status, 201, "{}", reply.text());
    let request_id = reply.header("x-request-id").unwrap().to_string();

    let root = receiver.wait_for("n3's span of the request", |r| {
        r.node == "n3" && r.span.name == "request" && r.attribute("request_id").as_deref() == Some(&request_id)
    });
    assert!(
        root.span.parent_span_id.is_empty(),
        "the client's trace is not continued: {root:?}"
    );
    assert_ne!(hex(&root.span.trace_id), CLIENT_TRACE);
    let trace_id = root.span.trace_id.clone();
    // Everything the request did, on every host, in one trace: n2 answers
    // the call to users with a SQL statement of its own.
    eventually_within(Duration::from_secs(30), "spans from every host", || {
        let spans = receiver.trace(&trace_id);
        let has = |node: &str, name: &str| spans.iter().any(|r| r.node == node && r.span.name == name);
        has("n1", "call") && has("n1", "sql") && has("n2", "component") && has("n2", "sql")
    });
    let spans = receiver.trace(&trace_id);
    let by_id: HashMap<&[u8], &Received> = spans.iter().map(|r| (&r.span.span_id[..], r)).collect();
    let parent = |r: &Received| by_id.get(&r.span.parent_span_id[..]).copied();
    for received in &spans {
        if received.span.span_id != root.span.span_id {
            assert!(
                parent(received).is_some(),
                "a span whose parent is not in the trace: {received:?}"
            );
        }
    }
    // n1's request was sent on by n3's; n2's by n1's call of users.
    let request_on = |node: &str| {
        spans
            .iter()
            .find(|r| r.node == node && r.span.name == "request")
            .unwrap_or_else(|| panic!("no request span from {node}: {spans:#?}"))
    };
    assert_eq!(parent(request_on("n1")).map(|p| p.node.as_str()), Some("n3"));
    let call = parent(request_on("n2")).expect("n2's request has a parent");
    assert_eq!((call.node.as_str(), call.span.name.as_str()), ("n1", "call"));
    assert_eq!(call.attribute("caller").as_deref(), Some("orders"));
    assert_eq!(
        request_on("n2").attribute("url.path").as_deref(),
        Some("/.corral/call/users")
    );
    let nodes: HashSet<&str> = spans.iter().map(|r| r.node.as_str()).collect();
    assert_eq!(nodes, HashSet::from(["n1", "n2", "n3"]));
    drop(hosts);
}

#[test]
fn a_trace_is_continued_only_from_a_trusted_proxy_and_guests_see_only_their_own() {
    let receiver = Receiver::start();
    let start = |trusted: &str| {
        host()
            .toml(&component_toml("hello", "http-hello", &["/http"]))
            .toml(&format!(
                "{}[server]\ntrusted_proxies = [{trusted}]\n",
                receiver.endpoint()
            ))
            .start()
    };
    let echo = |host: &TestHost| {
        host.request(
            http::Request::post("/http/echo")
                .header("traceparent", client_traceparent())
                .header("tracestate", "vendor=secret")
                .body(b"hi".to_vec())
                .unwrap(),
        )
    };
    let trace_of = |traceparent: &str| traceparent.split('-').nth(1).unwrap_or_default().to_string();

    // Not trusted: a trace of its own, which is what the guest sees.
    let untrusting = start("");
    let reply = echo(&untrusting);
    assert_eq!(reply.status, 200, "{}", reply.text());
    let seen = reply.header("seen-traceparent").unwrap().to_string();
    assert!(!seen.is_empty() && trace_of(&seen) != CLIENT_TRACE, "{seen}");
    assert!(!reply.header("seen-names").unwrap().contains("tracestate"));
    let id = reply.header("x-request-id").unwrap().to_string();
    let root = receiver.wait_for("the request's span", |r| {
        r.span.name == "request" && r.attribute("request_id").as_deref() == Some(&id)
    });
    assert_eq!(hex(&root.span.trace_id), trace_of(&seen));

    // A trusted proxy's trace goes on, through the guest.
    let trusting = start("\"127.0.0.1/32\"");
    let reply = echo(&trusting);
    assert_eq!(reply.status, 200, "{}", reply.text());
    let seen = reply.header("seen-traceparent").unwrap().to_string();
    assert_eq!(trace_of(&seen), CLIENT_TRACE, "{seen}");
    assert!(!reply.header("seen-names").unwrap().contains("tracestate"));
    let id = reply.header("x-request-id").unwrap().to_string();
    let root = receiver.wait_for("the request's span", |r| {
        r.span.name == "request" && r.attribute("request_id").as_deref() == Some(&id)
    });
    assert_eq!(hex(&root.span.trace_id), CLIENT_TRACE);
    assert_eq!(hex(&root.span.parent_span_id), "b7ad6b7169203331");
}

#[test]
fn without_an_endpoint_nothing_is_exported_and_guests_see_no_trace() {
    let host = host().toml(&component_toml("hello", "http-hello", &["/http"])).start();
    let reply = host.request(
        http::Request::post("/http/echo")
            .header("traceparent", client_traceparent())
            .body(b"hi".to_vec())
            .unwrap(),
    );
    assert_eq!(reply.status, 200, "{}", reply.text());
    assert_eq!(reply.header("seen-traceparent"), Some(""));
    assert!(!reply.header("seen-names").unwrap().contains("traceparent"));
}

#[test]
fn an_event_handler_links_to_the_request_that_published_the_event() {
    let receiver = Receiver::start();
    let host = host()
        .component("users", "users", &["/users"])
        .component("orders", "orders", &["/orders"])
        .toml("[components.orders.subscription]\ntopics = [\"users.deleted\"]\n")
        .toml(&receiver.endpoint())
        .start();
    let user = host.post("/users", &json!({ "name": "ada", "email": "ada@example.com" }));
    assert_eq!(user.status, 201, "{}", user.text());
    let deleted = host.delete(&format!("/users/{}", user.json()["id"]));
    assert_eq!(deleted.status, 204, "{}", deleted.text());
    let id = deleted.header("x-request-id").unwrap().to_string();
    let request = receiver.wait_for("the deletion's span", |r| {
        r.span.name == "request" && r.attribute("request_id").as_deref() == Some(&id)
    });
    let handled = receiver.wait_for("the handler's span", |r| {
        r.span.name == "event" && r.attribute("topic").as_deref() == Some("users.deleted")
    });
    assert_eq!(handled.attribute("subscriber").as_deref(), Some("orders"));
    let link = handled
        .span
        .links
        .first()
        .expect("the handler's span links to the publisher's");
    assert_eq!(link.trace_id, request.span.trace_id);
    let published_in = receiver.trace(&request.span.trace_id);
    assert!(
        published_in
            .iter()
            .any(|r| r.span.span_id == link.span_id && r.span.name == "component"),
        "the link names users' component span: {link:?}"
    );
}
