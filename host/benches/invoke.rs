//! Micro benchmarks of the host's hot path, in process: one instantiate-and-
//! call of the empty component (pooling allocator, pre-instantiated), the
//! same with one SQLite round trip through the host interface, and a request
//! to a relay that answers itself or calls another component once, and a
//! `wasi:http` hello to read against the empty component. Run with
//! `just bench` (or `cargo bench -p corral --bench invoke`).

use std::path::Path;
use std::sync::{Arc, LazyLock};

use corral::capabilities::bindings::corral::service::types::Request;
use corral::components::registry::Registry;
use corral::components::snapshot::Entry;
use corral::components::stats::ComponentStats;
use corral::components::version::Entrypoint;
use corral::config::{Config, Overrides};
use corral::wasm::invoke;
use corral::wasm::state::OwnedTarget;
use divan::Bencher;
use http_body_util::BodyExt;

/// The host binary's allocator, so that the figures are the host's.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[path = "../../bench/src/machine.rs"]
mod machine;

fn main() {
    println!("{}", machine::describe());
    divan::main();
}

struct Fixture {
    runtime: tokio::runtime::Runtime,
    registry: Registry,
    _data: tempfile::TempDir,
}

static FIXTURE: LazyLock<Fixture> = LazyLock::new(|| {
    let workspace = Path::new(env!("CARGO_MANIFEST_DIR")).parent().unwrap();
    let wasm = |name: &str| {
        let path = workspace.join(format!("target/wasm32-wasip2/release/{name}.wasm"));
        assert!(path.is_file(), "{} is missing: run `just build` first", path.display());
        format!("{:?}", path.display().to_string())
    };
    let data = tempfile::tempdir().unwrap();
    let toml = format!(
        "data_dir = {:?}\ncache_dir = {:?}\n\
         [components.empty]\nwasm = {}\nroutes = [\"/empty\"]\n\
         [components.relay-a]\nwasm = {}\nroutes = [\"/relay-a\"]\n\
         [components.relay-b]\nwasm = {}\nroutes = [\"/relay-b\"]\n\
         [components.hello]\nwasm = {}\nroutes = [\"/http\"]\n",
        data.path().display().to_string(),
        workspace.join("target/corral-test-cache").display().to_string(),
        wasm("empty"),
        wasm("relay"),
        wasm("relay"),
        wasm("http_hello"),
    );
    let config = Config::parse(&toml, &data.path().join("bench.toml"), &Overrides::default()).unwrap();
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let registry = corral::registry(&config, Arc::new(ComponentStats::default()), Arc::default()).unwrap();
    runtime.block_on(registry.load_all(&config)).unwrap();
    Fixture {
        runtime,
        registry,
        _data: data,
    }
});

fn request(path: &str) -> Request {
    Request {
        method: "GET".into(),
        path: path.into(),
        query: String::new(),
        headers: vec![("host".into(), "bench".into())],
        body: Vec::new(),
        client_addr: "127.0.0.1".into(),
        request_id: "bench".into(),
    }
}

fn entry(name: &str) -> Arc<Entry> {
    Arc::clone(FIXTURE.registry.snapshot().get(name).unwrap())
}

/// Handles one request to component `name` at `path`.
fn serve(bencher: Bencher, name: &str, path: &str) {
    let entry = entry(name);
    let version = Arc::clone(entry.current());
    let id: Arc<str> = "bench".into();
    bencher.with_inputs(|| request(path)).bench_local_values(|request| {
        let Entrypoint::Service(service) = &version.entrypoint else {
            panic!("{name} is not of corral's world")
        };
        let response = FIXTURE.runtime.block_on(invoke::handle(
            entry.target(&version),
            service,
            request,
            Arc::clone(&id),
            0,
        ));
        assert_eq!(response.unwrap().status, 200);
    });
}

/// The same request as [`instantiate_and_call_empty`], to a `wasi:http`
/// component that answers a short greeting: a task per request, the
/// request and response as resources, and the body as a stream.
#[divan::bench(sample_count = 200, sample_size = 50)]
fn instantiate_and_call_wasi_http_hello(bencher: Bencher) {
    let entry = entry("hello");
    let version = Arc::clone(entry.current());
    let Entrypoint::Http(pre) = &version.entrypoint else {
        panic!("hello is not a wasi:http component")
    };
    let id: Arc<str> = "bench".into();
    let request = || {
        http::Request::get("http://bench/http/hello")
            .body(http_body_util::Full::new(bytes::Bytes::new()))
            .unwrap()
    };
    bencher.with_inputs(request).bench_local_values(|request| {
        FIXTURE.runtime.block_on(async {
            let owned = OwnedTarget::of(&entry.target(&version));
            let streaming = invoke::handle_http(owned, pre.clone(), request, Arc::clone(&id), 0, ())
                .await
                .unwrap();
            let body = streaming.response.into_body().collect().await.unwrap().to_bytes();
            assert_eq!(&body[..], b"hello from wasi:http");
        })
    });
}

/// A fresh store, an instance from the pool, one call to `handle`, teardown.
#[divan::bench(sample_count = 200, sample_size = 50)]
fn instantiate_and_call_empty(bencher: Bencher) {
    serve(bencher, "empty", "/empty");
}

/// The same with one `SELECT 1` through `corral:service/sqlite`.
#[divan::bench(sample_count = 200, sample_size = 50)]
fn instantiate_and_call_with_one_statement(bencher: Bencher) {
    serve(bencher, "empty", "/empty/sql");
}

/// A relay answering by itself, to read the next one against.
#[divan::bench(sample_count = 200, sample_size = 50)]
fn relay_answering_itself(bencher: Bencher) {
    serve(bencher, "relay-a", "/relay-a/local");
}

/// A relay calling the other relay once: the difference with the one above
/// is one call between components (a fresh instance of the callee included).
#[divan::bench(sample_count = 200, sample_size = 50)]
fn relay_calling_another_component(bencher: Bencher) {
    serve(bencher, "relay-a", "/relay-a/0");
}

/// What `block_on` itself costs, to read the two above against.
#[divan::bench(sample_count = 200, sample_size = 50)]
fn runtime_block_on(bencher: Bencher) {
    bencher.bench_local(|| FIXTURE.runtime.block_on(async { divan::black_box(1) }));
}
