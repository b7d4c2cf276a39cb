//! A component of the standard `wasi:http/proxy` world, as any `wasi:http`
//! toolchain builds it, that also imports corral's `sqlite` and `log`.
//! The tests serve it to check that such components get every limit and
//! capability corral's own do; some routes misbehave on purpose.
//!
//! Routes, under any prefix (`/http` below):
//! - `GET /http/hello`: a greeting.
//! - `POST /http/echo`: the body back, streamed through in chunks, with
//!   what the component was told about the request in `seen-*` headers
//!   (`seen-names`: the name of every header it got; `seen-traceparent`,
//!   the trace it is part of).
//! - `GET /http/answer-with?header=H&value=V`: an empty response with that header.
//! - `GET /http/status/<code>`: an empty response with that status.
//! - `GET /http/stream?chunks=N&size=M`: N chunks of M bytes, no length.
//! - `GET /http/trailers`: a body followed by trailers.
//! - `GET /http/spin`, `/http/spin-mid-body`: loops forever, before the
//!   response or after part of its body.
//! - `GET /http/alloc?mib=N`: holds N MiB, then answers.
//! - `GET /http/fetch?url=U[&send=N]`: sends a GET to U (a POST of N bytes
//!   with `send`) and answers with what came back, or with the error code.
//! - `POST /http/visits`: counts a visit in the component's database.

use std::io::{Read as _, Write as _};

use wasip2::http::outgoing_handler;
use wasip2::http::types::{
    ErrorCode, Fields, IncomingRequest, IncomingResponse, Method, OutgoingBody, OutgoingRequest, OutgoingResponse,
    ResponseOutparam, Scheme,
};

#[allow(unsafe_code, clippy::all)]
mod corral {
    wit_bindgen::generate!({
        inline: "package local:http-hello; world host { import corral:service/sqlite@0.2.0; import corral:service/log@0.2.0; }",
        path: "../../wit",
        world: "local:http-hello/host",
        generate_all,
    });
}

use corral::corral::service::log::{Level, log};
use corral::corral::service::sqlite::{Value, execute};

struct HttpHello;

wasip2::http::proxy::export!(HttpHello);

impl wasip2::exports::http::incoming_handler::Guest for HttpHello {
    fn handle(request: IncomingRequest, out: ResponseOutparam) {
        let path_with_query = request.path_with_query().unwrap_or_default();
        let (path, query) = path_with_query.split_once('?').unwrap_or((&path_with_query, ""));
        // Whatever prefix it is routed under: `/http/hello` is `hello`.
        let route = path.splitn(3, '/').nth(2).unwrap_or_default();
        let param = |name: &str| {
            query
                .split('&')
                .filter_map(|pair| pair.split_once('='))
                .find(|(key, _)| *key == name)
                .map(|(_, value)| value.to_string())
        };
        let number = |name: &str| param(name).and_then(|v| v.parse::<usize>().ok()).unwrap_or(0);
        match route {
            "hello" => respond(out, 200, &[("content-type", "text/plain")], b"hello from wasi:http"),
            "echo" => echo(request, out),
            "stream" => stream(out, number("chunks"), number("size")),
            "trailers" => trailers(out),
            "spin" => spin(),
            "spin-mid-body" => {
                let (body, mut stream) = start(out, 200, &[]);
                stream.write_all(b"the first part").unwrap();
                stream.flush().unwrap();
                // The stream goes before its body; the body is left open.
                drop(stream);
                std::mem::forget(body);
                spin()
            }
            "alloc" => {
                let held = vec![1u8; number("mib") << 20];
                let text = format!("held {} bytes", held.iter().map(|b| *b as usize).sum::<usize>());
                respond(out, 200, &[], text.as_bytes())
            }
            "answer-with" => {
                let (name, value) = (param("header").unwrap_or_default(), param("value").unwrap_or_default());
                respond(out, 204, &[(&name, &value)], b"")
            }
            "fetch" => {
                let send = param("send").and_then(|n| n.parse().ok()).unwrap_or(0);
                fetch(out, &param("url").unwrap_or_default(), send)
            }
            "visits" => visits(out),
            _ => match route.strip_prefix("status/").and_then(|code| code.parse().ok()) {
                Some(code) => respond(out, code, &[], b""),
                None => respond(out, 404, &[], b"no such route"),
            },
        }
    }
}

/// Sends the response's head and returns its body to write.
fn start(
    out: ResponseOutparam,
    status: u16,
    headers: &[(&str, &str)],
) -> (OutgoingBody, wasip2::io::streams::OutputStream) {
    let fields = Fields::new();
    for (name, value) in headers {
        fields.append(name, value.as_bytes()).unwrap();
    }
    let response = OutgoingResponse::new(fields);
    response.set_status_code(status).unwrap();
    let body = response.body().unwrap();
    ResponseOutparam::set(out, Ok(response));
    let stream = body.write().unwrap();
    (body, stream)
}

fn respond(out: ResponseOutparam, status: u16, headers: &[(&str, &str)], body: &[u8]) {
    let (outgoing, mut stream) = start(out, status, headers);
    stream.write_all(body).unwrap();
    stream.flush().unwrap();
    drop(stream);
    OutgoingBody::finish(outgoing, None).unwrap();
}

fn echo(request: IncomingRequest, out: ResponseOutparam) {
    let header = |name: &str| {
        let values = request.headers().get(name);
        String::from_utf8_lossy(values.first().map_or(&[][..], |v| v.as_slice())).into_owned()
    };
    let names: Vec<String> = request.headers().entries().into_iter().map(|(name, _)| name).collect();
    let seen = [
        ("seen-names", names.join(",")),
        ("seen-client", header("corral-client-addr")),
        ("seen-request-id", header("x-request-id")),
        ("seen-traceparent", header("traceparent")),
        ("seen-method", format!("{:?}", request.method())),
        ("content-type", header("content-type")),
    ];
    let incoming = request.consume().unwrap();
    let input = incoming.stream().unwrap();
    let headers: Vec<(&str, &str)> = seen.iter().map(|(n, v)| (*n, v.as_str())).collect();
    let (outgoing, mut output) = start(out, 200, &headers);
    // Each chunk goes out as it comes in: neither body is held whole.
    while let Ok(chunk) = input.blocking_read(16 * 1024) {
        output.write_all(&chunk).unwrap();
    }
    output.flush().unwrap();
    drop(output);
    OutgoingBody::finish(outgoing, None).unwrap();
}

fn stream(out: ResponseOutparam, chunks: usize, size: usize) {
    let (outgoing, mut output) = start(out, 200, &[("content-type", "application/octet-stream")]);
    let chunk = vec![b'x'; size];
    for _ in 0..chunks {
        if output.write_all(&chunk).is_err() {
            return;
        }
    }
    output.flush().unwrap();
    drop(output);
    OutgoingBody::finish(outgoing, None).unwrap();
}

fn trailers(out: ResponseOutparam) {
    let (outgoing, mut output) = start(out, 200, &[]);
    output.write_all(b"with trailers").unwrap();
    output.flush().unwrap();
    drop(output);
    let trailers = Fields::new();
    trailers.append("checksum", b"abc").unwrap();
    OutgoingBody::finish(outgoing, Some(trailers)).unwrap();
}

fn spin() -> ! {
    let mut n: u64 = 0;
    loop {
        n = std::hint::black_box(n.wrapping_add(1));
    }
}

fn fetch(out: ResponseOutparam, url: &str, send: usize) {
    match get(url, send) {
        Ok((status, body)) => respond(out, 200, &[("fetched-status", &status.to_string())], &body),
        Err(code) => respond(out, 502, &[], format!("{code:?}").as_bytes()),
    }
}

/// GET `url` from here (or POST `send` bytes to it), with the whole body
/// of the answer.
fn get(url: &str, send: usize) -> Result<(u16, Vec<u8>), ErrorCode> {
    let (scheme, rest) = url.split_once("://").unwrap_or(("http", url));
    let (authority, path) = rest.find('/').map_or((rest, "/"), |i| rest.split_at(i));
    let request = OutgoingRequest::new(Fields::new());
    request
        .set_method(if send > 0 { &Method::Post } else { &Method::Get })
        .unwrap();
    let scheme = if scheme == "https" { Scheme::Https } else { Scheme::Http };
    request.set_scheme(Some(&scheme)).unwrap();
    request.set_authority(Some(authority)).unwrap();
    request.set_path_with_query(Some(path)).unwrap();
    let body = request.body().unwrap();
    let stream = body.write().unwrap();
    let pending = outgoing_handler::handle(request, None)?;
    let chunk = [b'x'; 4096];
    let mut left = send;
    while left > 0 {
        let n = left.min(chunk.len());
        if stream.blocking_write_and_flush(&chunk[..n]).is_err() {
            break;
        }
        left -= n;
    }
    drop(stream);
    let _ = OutgoingBody::finish(body, None);
    pending.subscribe().block();
    let response: IncomingResponse = pending.get().unwrap().unwrap()?;
    let status = response.status();
    let incoming = response.consume().unwrap();
    let mut bytes = Vec::new();
    let read = incoming.stream().unwrap().read_to_end(&mut bytes);
    if let Err(e) = read {
        return Err(ErrorCode::InternalError(Some(e.to_string())));
    }
    Ok((status, bytes))
}

fn visits(out: ResponseOutparam) {
    let counted = execute("CREATE TABLE IF NOT EXISTS visits (n INTEGER NOT NULL)", &[])
        .and_then(|_| execute("INSERT INTO visits (n) VALUES (1)", &[]))
        .and_then(|_| execute("SELECT count(*) FROM visits", &[]));
    match counted {
        Ok(result) => {
            let count = match result.rows.first().and_then(|r| r.values.first()) {
                Some(Value::Integer(n)) => *n,
                _ => -1,
            };
            log(Level::Info, &format!("visit number {count}"));
            respond(out, 200, &[], count.to_string().as_bytes())
        }
        Err(e) => respond(out, 500, &[], format!("{e:?}").as_bytes()),
    }
}
