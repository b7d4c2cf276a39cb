//! What guests import. Each capability is one module behind [`Capability`]:
//! its host functions (their WIT is in `wit/service.wit`, bound once in
//! [`bindings`]), what it keeps for a component across versions, what one
//! store holds of it for one call, and its metrics. The list at the end of
//! this file is the only place that names them all: the runtime (`wasm`,
//! `components`) holds the [`Components`] and [`Instances`] it builds and
//! knows none of them by name.
//!
//! In the list: the component's own database ([`sqlite`]), its [`log`]
//! (stdout and stderr too), the [`events`] it publishes, and outgoing
//! requests through `wasi:http` ([`http`]).

pub mod bindings;
pub mod events;
pub mod http;
pub mod log;
pub mod sqlite;

use std::future::Future;
use std::path::PathBuf;
use std::sync::{Arc, OnceLock};

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::registry::Registry as Prometheus;
use tokio::sync::Notify;
use wasmtime::component::{Linker, ResourceTable};
use wasmtime_wasi::WasiCtxBuilder;

use crate::config::ComponentConfig;

/// One thing guests may import, in three steps: its host functions join
/// the linker once; it is configured for each component (again when the
/// component's config changes, reusing what it had where the settings it
/// reads did not change); it prepares its part of every fresh store.
pub trait Capability {
    /// What it keeps for one component, shared by the component's versions
    /// and by every call into them.
    type Component: Send + Sync + 'static;
    /// What one store holds of it, for one call.
    type Instance: Send + 'static;
    /// Host-wide counters, registered once.
    type Metrics: Default + Clone + Send + Sync + 'static;

    /// Adds its host functions to `linker`, whose store data reaches every
    /// capability's [`Instances`] through [`StoreData`].
    fn add_to_linker<T: StoreData>(linker: &mut Linker<T>) -> wasmtime::Result<()>;

    /// Its part for the component `config` describes; `previous` is the part
    /// the component had, if it was configured before. Files it creates go
    /// in `created`, removed if the change is abandoned.
    fn configure(
        host: &Host,
        metrics: &Self::Metrics,
        config: &ComponentConfig,
        previous: Option<&Arc<Self::Component>>,
        created: &mut Vec<PathBuf>,
    ) -> impl Future<Output = anyhow::Result<Arc<Self::Component>>> + Send;

    /// Its part of a fresh store for `call`.
    fn prepare(component: &Arc<Self::Component>, call: &Call<'_>) -> Self::Instance;

    /// Lets it give the store's WASI context something, such as where
    /// stdout goes. Nothing of the machine: see `wasm::state::new_store`.
    fn wasi(_instance: &Self::Instance, _wasi: &mut WasiCtxBuilder) {}

    fn register(_metrics: &Self::Metrics, _prometheus: &mut Prometheus) {}
}

/// What a store's data gives the host functions of capabilities: what it
/// holds of each, and the store's resource table.
pub trait StoreData: Send + 'static {
    fn capabilities(&mut self) -> (&mut Instances, &mut ResourceTable);
}

/// The labels of a metric kept per component.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ComponentLabels {
    pub component: Arc<str>,
}

/// One call a store is made for.
pub struct Call<'a> {
    pub component: &'a Arc<str>,
    /// The version's short digest.
    pub version: &'a Arc<str>,
    pub request_id: &'a Arc<str>,
    /// How many calls between components led here; 0 for an HTTP request.
    pub depth: u32,
}

/// What capabilities share host-wide, made once when the host starts.
pub struct Host {
    /// Where each component's database file is.
    pub data_dir: PathBuf,
    /// Where every database's statements run.
    pub sql_threads: Arc<sqlite::SqlThreads>,
    /// Woken when an outbox has messages to send.
    pub relay: Arc<Notify>,
    /// Serves requests to `<component>.internal`, once the serving layer is up.
    pub internal: Arc<OnceLock<Arc<dyn http::InternalHttp>>>,
}

/// Builds, from the list of capabilities, what the runtime holds of them:
/// per component, per store, their metrics, and their linker.
macro_rules! capabilities {
    ($($name:ident: $capability:ty),* $(,)?) => {
        /// What each capability keeps for one component.
        #[derive(Clone)]
        pub struct Components {
            $(pub $name: Arc<<$capability as Capability>::Component>,)*
        }

        /// What one store holds of each capability.
        pub struct Instances {
            $(pub $name: <$capability as Capability>::Instance,)*
        }

        /// Every capability's metrics.
        #[derive(Clone, Default)]
        pub struct Metrics {
            $(pub $name: <$capability as Capability>::Metrics,)*
        }

        impl Metrics {
            pub fn register(&self, prometheus: &mut Prometheus) {
                $(<$capability as Capability>::register(&self.$name, prometheus);)*
            }
        }

        /// Adds every capability's host functions to `linker`.
        pub fn add_to_linker<T: StoreData>(linker: &mut Linker<T>) -> wasmtime::Result<()> {
            $(<$capability as Capability>::add_to_linker(linker)?;)*
            Ok(())
        }

        impl Components {
            /// Every capability configured for the component `config`
            /// describes (see [`Capability::configure`]).
            pub async fn configure(
                host: &Host,
                metrics: &Metrics,
                config: &ComponentConfig,
                previous: Option<&Components>,
                created: &mut Vec<PathBuf>,
            ) -> anyhow::Result<Components> {
                Ok(Components {
                    $($name: <$capability as Capability>::configure(
                        host,
                        &metrics.$name,
                        config,
                        previous.map(|p| &p.$name),
                        created,
                    )
                    .await?,)*
                })
            }

            /// Every capability's part of a fresh store for `call`.
            pub fn prepare(&self, call: &Call<'_>, wasi: &mut WasiCtxBuilder) -> Instances {
                let instances = Instances {
                    $($name: <$capability as Capability>::prepare(&self.$name, call),)*
                };
                $(<$capability as Capability>::wasi(&instances.$name, wasi);)*
                instances
            }
        }
    };
}

capabilities! {
    sqlite: sqlite::Sqlite,
    log: log::Log,
    events: events::Events,
    http: http::Http,
}
