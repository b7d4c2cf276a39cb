//! One version of a component's code ([`Version`]): checked to be a
//! component, compiled off the async workers, linked to the host and to its
//! peers, pre-instantiated for the world it was built for (corral's, or
//! `wasi:http/proxy`). The [`Compiler`] does that for every version.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::SystemTime;

use anyhow::Context;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use wasmtime::Engine;
use wasmtime::component::{Component, InstancePre, Linker};
use wasmtime_wasi_http::p2::bindings::ProxyPre;

use super::interfaces::{LinkPeers, PeerInterfaces, host_provided};
use crate::capabilities::bindings::subscriber::SubscriberServicePre;
use crate::wasm::invoke::Service;
use crate::wasm::state::RequestState;

/// One version of a component's code, ready to instantiate.
pub struct Version {
    /// The sha256 of the `.wasm`, in hex.
    pub digest: Arc<str>,
    /// The first 12 hex digits of `digest`, for logs and headers.
    pub short: Arc<str>,
    pub loaded_at: SystemTime,
    /// Where the code came from.
    pub origin: Origin,
    pub entrypoint: Entrypoint,
    /// Present when it exports `corral:service/subscriber` and so can
    /// receive events.
    pub subscriber: Option<SubscriberServicePre<RequestState>>,
    /// The interfaces it offers other components and needs from them.
    pub peers: PeerInterfaces,
    /// The interfaces it imports that the host provides.
    pub host_imports: Vec<String>,
}

/// The interface whose import means a component has a database.
const SQLITE_IMPORT: &str = "corral:service/sqlite";

impl Version {
    /// Whether it imports the database, and so needs one owner in a cluster.
    pub fn has_database(&self) -> bool {
        self.host_imports.iter().any(|i| i.starts_with(SQLITE_IMPORT))
    }

    pub fn instance_pre(&self) -> &InstancePre<RequestState> {
        match &self.entrypoint {
            Entrypoint::Service(service) => service.pre.instance_pre(),
            Entrypoint::Http(pre) => pre.instance_pre(),
        }
    }
}

/// Where a version's code came from.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "lowercase")]
pub enum Origin {
    /// The component's file, as the config names it.
    File { path: PathBuf },
    /// An upload through the admin API, at an RFC 3339 time.
    Upload { at: String },
    /// The cluster's object store, where host `node` put it.
    Cluster { node: String },
    /// An OCI registry, as `registry/repository@sha256:<manifest digest>`.
    Registry { reference: String },
}

impl Origin {
    pub fn upload_now() -> Self {
        Origin::Upload {
            at: humantime::format_rfc3339_seconds(SystemTime::now()).to_string(),
        }
    }
}

impl std::fmt::Display for Origin {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Origin::File { path } => write!(f, "file:{}", path.display()),
            Origin::Upload { at } => write!(f, "upload:{at}"),
            Origin::Cluster { node } => write!(f, "cluster:{node}"),
            Origin::Registry { reference } => write!(f, "oci://{reference}"),
        }
    }
}

/// How requests enter a component: the world it was built for.
#[derive(Clone)]
pub enum Entrypoint {
    /// corral's own world: `corral:service/handler` and `lifecycle`.
    Service(Service),
    /// The `wasi:http/proxy` world: `wasi:http/incoming-handler`.
    Http(ProxyPre<RequestState>),
}

impl Entrypoint {
    /// The world's name, for operators.
    pub fn world(&self) -> &'static str {
        match self {
            Entrypoint::Service(_) => "corral:service/service",
            Entrypoint::Http(_) => "wasi:http/proxy",
        }
    }
}

/// What compiling a component gives.
pub struct Compiled {
    pub entrypoint: Entrypoint,
    pub subscriber: Option<SubscriberServicePre<RequestState>>,
    pub peers: PeerInterfaces,
    pub host_imports: Vec<String>,
}

/// Turns `.wasm` bytes into versions.
pub struct Compiler {
    engine: Engine,
    linker: Linker<RequestState>,
    /// How calls to peers find their provider at the time of the call.
    /// Defines each version's peer imports.
    peers: Arc<dyn LinkPeers>,
}

impl Compiler {
    pub fn new(engine: Engine, peers: Arc<dyn LinkPeers>) -> anyhow::Result<Self> {
        let linker = crate::wasm::state::linker(&engine)?;
        Ok(Compiler { engine, linker, peers })
    }

    pub fn engine(&self) -> &Engine {
        &self.engine
    }

    /// Checks that `wasm` is a component, compiles it off the async workers,
    /// and links it: the host's interfaces, its peers' interfaces (resolved
    /// when it is published), and the service exports present.
    pub async fn compile(&self, name: &str, wasm: Vec<u8>) -> anyhow::Result<Compiled> {
        check_header(&wasm)?;
        let engine = self.engine.clone();
        let component = tokio::task::spawn_blocking(move || Component::new(&engine, &wasm))
            .await?
            .map_err(anyhow::Error::from)
            .context("cannot compile it")?;
        let peers = PeerInterfaces::of(&component, &self.engine)?;
        let instance_pre = if peers.imports.is_empty() {
            self.linker.instantiate_pre(&component)
        } else {
            let mut linker = self.linker.clone();
            self.peers.link(&mut linker, name, &peers)?;
            linker.instantiate_pre(&component)
        };
        let instance_pre = instance_pre
            .map_err(anyhow::Error::from)
            .context("cannot link it: it imports something corral does not provide")?;
        let subscriber = SubscriberServicePre::new(instance_pre.clone()).ok();
        let entrypoint = match Service::new(instance_pre.clone()) {
            Ok(service) => Entrypoint::Service(service),
            Err(_) => Entrypoint::Http(ProxyPre::new(instance_pre).map_err(|_| {
                anyhow::anyhow!(
                    "it exports neither corral:service/handler (with lifecycle, as wit/service.wit's world) \
                     nor wasi:http/incoming-handler (the wasi:http/proxy world)"
                )
            })?),
        };
        let host_imports = component
            .component_type()
            .imports(&self.engine)
            .map(|(name, _)| name.to_string())
            .filter(|name| host_provided(name))
            .collect();
        Ok(Compiled {
            entrypoint,
            subscriber,
            peers,
            host_imports,
        })
    }
}

/// The sha256 of `wasm` in hex: a version's identity.
pub fn digest(wasm: &[u8]) -> Arc<str> {
    Sha256::digest(wasm)
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect::<String>()
        .into()
}

/// Tells a component from a core module or from anything else, because
/// wasmtime's own message for those is less direct.
fn check_header(wasm: &[u8]) -> anyhow::Result<()> {
    const MAGIC: &[u8] = b"\0asm";
    const COMPONENT_LAYER: [u8; 2] = [1, 0];
    match wasm.get(..8) {
        Some(header) if header.starts_with(MAGIC) && header[6..8] == COMPONENT_LAYER => Ok(()),
        Some(header) if header.starts_with(MAGIC) => {
            anyhow::bail!("it is a core wasm module, not a component; build it for wasm32-wasip2")
        }
        _ => anyhow::bail!("it is not WebAssembly"),
    }
}
