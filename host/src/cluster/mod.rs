//! Many hosts as one, on NATS JetStream. The versions each component
//! should serve live in a key-value bucket and their code in an object
//! store (see [`state`]); every host watches the bucket and converges by
//! swapping locally, with every check of a local swap, and reports what it
//! serves, so that any host can tell the state of all. A change made
//! through any host's admin API is checked there first, then written to
//! the bucket, and answered once every live host serves it; if one cannot,
//! the change is undone everywhere.
//!
//! A component with a database has one owner host (see [`Cluster::owner`]);
//! the serving layer forwards its requests there.

pub mod events;
pub mod replication;
pub mod state;
pub mod trust;

use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, Instant};

use anyhow::Context;
use arc_swap::ArcSwap;
use async_nats::jetstream::{self, kv, object_store};
use bytes::Bytes;
use futures::{StreamExt, TryStreamExt};
use tokio::io::AsyncReadExt;
use tokio::sync::Notify;

use crate::clock::now_ms;
use crate::components::random;
use crate::components::registry::{ChangeError, Registry};
use crate::components::version::Origin;
use crate::components::versions::Versions;
use crate::config::cluster::{Balance, ClusterConfig, Durability, NatsAuth};
use crate::config::tokens::{TokenFile, resolve_token};
use crate::config::{ComponentConfig, Config};
pub use state::{Changed, ComponentReport, ConvergeError, Desired, KeyIds, NodeReport, Status};
use trust::{Claim, KeyRing, Nonces, Refused};

/// How far behind the end of a replicated database's log a host may be and
/// still be handed its ownership.
const HANDOVER_LAG: u64 = 100;
/// How long a change waits for every host to take it.
const CONVERGE_TIMEOUT: Duration = Duration::from_secs(60);
/// How long reading the hosts' reports may take.
const NATS_TIMEOUT: Duration = Duration::from_secs(5);
/// How often a host compares what it serves with the bucket, besides the watch.
const RESYNC_EVERY: Duration = Duration::from_secs(10);
/// How often requests for an owner this host does not know may make it
/// read the hosts' reports.
const REFRESH_EVERY: Duration = Duration::from_millis(200);
/// The key, in the desired bucket, of the keys that sign requests sent on
/// between hosts ([`trust`]). No component name starts with `_`.
const KEY_RING: &str = "_forward_keys";
/// Where the single, never rotated key of earlier versions was kept; it is
/// removed once a ring exists.
const OLD_FORWARD_KEY: &str = "_forward_key";

/// The cluster refuses this host (its credentials, or its name, which a
/// live host has): trying again would not help.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct JoinRefused(pub String);

/// This process's instance id, the same for every attempt to join.
fn instance() -> &'static str {
    static INSTANCE: std::sync::OnceLock<String> = std::sync::OnceLock::new();
    INSTANCE.get_or_init(|| format!("{:016x}", random::u64()))
}

/// Why a change to the cluster failed.
#[derive(Debug, thiserror::Error)]
pub enum ClusterError {
    #[error(transparent)]
    Local(#[from] ChangeError),
    #[error("{0}")]
    NotFound(String),
    #[error("{0}")]
    Conflict(String),
    #[error("host {node} refused it: {message}; the change was undone on every host")]
    Refused { node: String, message: String },
    #[error("hosts {0:?} did not take the change within the time allowed")]
    Timeout(Vec<String>),
    #[error("the cluster's store is unreachable: {0:#}")]
    Unavailable(anyhow::Error),
}

/// This host's view of the cluster, refreshed as it changes.
#[derive(Default)]
struct View {
    desired: BTreeMap<String, Desired>,
    nodes: BTreeMap<String, NodeReport>,
}

/// This host's membership of the cluster.
pub struct Cluster {
    node: String,
    /// The revision of this host's last report: the next is written only
    /// over it, so two processes cannot both report as one host.
    /// Set once it left the cluster: it reports no more.
    left: AtomicBool,
    /// Held while a report is written, so reports go one at a time.
    reported: tokio::sync::Mutex<Option<u64>>,
    public_url: Option<String>,
    /// The keys that sign and verify requests sent on between hosts.
    ring: ArcSwap<KeyRing>,
    /// Nonces of the signed requests this host has accepted.
    nonces: Nonces,
    /// How old the newest key may get before a host rotates it.
    key_rotation: Duration,
    /// When this host last read the ring because of a key it did not know.
    ring_refreshed: Mutex<Option<Instant>>,
    ttl: Duration,
    balance: Balance,
    weight: u32,
    /// The next turn, for round-robin.
    turn: AtomicUsize,
    desired: kv::Store,
    nodes: kv::Store,
    versions: object_store::ObjectStore,
    registry: Arc<Registry>,
    /// The components this host's config serves.
    components: Vec<ComponentConfig>,
    view: RwLock<View>,
    /// Why this host does not serve what the cluster wants, per component.
    errors: Mutex<BTreeMap<String, ConvergeError>>,
    /// Converged at least once: ready to serve.
    converged: AtomicBool,
    /// Something changed in the bucket.
    changed: Notify,
    /// When a request last made this host read the hosts' reports.
    refreshed: Mutex<Option<Instant>>,
    /// The logs of the replicated databases.
    replication: Arc<replication::Replication>,
    /// Since when each owner this host saw gone has been missing from the
    /// hosts' reports.
    owners_missing: tokio::sync::Mutex<HashMap<String, Instant>>,
}

impl Cluster {
    /// Joins the cluster: connects, makes the buckets if this is the first
    /// host, publishes the components no host has published yet, and
    /// converges to the cluster's state. The returned tasks keep it
    /// converging and reporting until they are stopped.
    pub async fn join(
        config: &Config,
        cluster: &ClusterConfig,
        public: std::net::SocketAddr,
        registry: Arc<Registry>,
        events: &events::StreamEvents,
    ) -> anyhow::Result<(Arc<Cluster>, Vec<tokio::task::JoinHandle<()>>)> {
        let client = connect(cluster).await?;
        let js = jetstream::new(client);
        let replicas = cluster.replicas;
        events.join(&js, replicas).await?;
        let desired = key_value(&js, state::DESIRED_BUCKET, 10, Duration::ZERO, replicas).await?;
        let nodes = key_value(&js, state::NODES_BUCKET, 1, cluster.node_ttl, replicas).await?;
        let versions = object_store_of(&js, state::VERSIONS_BUCKET, replicas).await?;
        let replication = Arc::new(
            replication::Replication::new(js.clone(), cluster.node.clone(), replicas, cluster.snapshot_every).await?,
        );
        let public_url = cluster
            .advertise
            .clone()
            .or_else(|| (!public.ip().is_unspecified()).then(|| format!("http://{public}")));
        let ring = key_ring(&desired).await?;
        let this = Arc::new(Cluster {
            node: cluster.node.clone(),
            left: AtomicBool::new(false),
            reported: tokio::sync::Mutex::default(),
            public_url,
            ring: ArcSwap::from_pointee(ring),
            nonces: Nonces::default(),
            key_rotation: cluster.key_rotation,
            ring_refreshed: Mutex::default(),
            ttl: cluster.node_ttl,
            balance: cluster.balance,
            weight: cluster.weight,
            turn: AtomicUsize::new(0),
            desired,
            nodes,
            versions,
            registry,
            components: config.components.clone(),
            view: RwLock::default(),
            errors: Mutex::default(),
            converged: AtomicBool::new(false),
            changed: Notify::new(),
            refreshed: Mutex::default(),
            replication,
            owners_missing: tokio::sync::Mutex::default(),
        });
        this.claim_node().await?;
        this.publish_unknown().await?;
        this.converge_all().await?;
        this.converged.store(true, Ordering::Release);
        this.report().await;
        let tasks = vec![
            tokio::spawn(Arc::clone(&this).watch()),
            tokio::spawn(Arc::clone(&this).keep_reporting()),
            tokio::spawn(Arc::clone(&this).keep_rotating()),
        ];
        tracing::info!(node = %this.node, "joined the cluster");
        Ok((this, tasks))
    }

    /// Takes this host's name in the hosts' bucket. While another process
    /// reports under it, this one does not start: one that crashed is
    /// waited out (its report expires within `node_ttl`), one that keeps
    /// reporting is live, and two hosts of one name would both own what
    /// it owns.
    async fn claim_node(&self) -> anyhow::Result<()> {
        let deadline = Instant::now() + self.ttl + Duration::from_secs(1);
        loop {
            let report = self.current_report();
            match self.nodes.create(&self.node, to_bytes(&report)).await {
                Ok(revision) => {
                    *self.reported.lock().await = Some(revision);
                    return Ok(());
                }
                Err(e) if e.kind() == kv::CreateErrorKind::AlreadyExists => {}
                Err(e) => anyhow::bail!("cannot report to the cluster: {e}"),
            }
            // This process's own, from an attempt to join that failed later.
            if let Some((revision, last)) = self.last_report().await?
                && last.instance == instance()
            {
                let revision = self.nodes.update(&self.node, to_bytes(&report), revision).await?;
                *self.reported.lock().await = Some(revision);
                return Ok(());
            }
            if Instant::now() >= deadline {
                return Err(JoinRefused(format!(
                    "another host is live as node {:?}: it kept reporting for {:?}; give this one another `node`",
                    self.node, self.ttl
                ))
                .into());
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }

    /// Takes this host out of the other hosts' view, so changes made while
    /// it is stopped do not wait for it.
    pub async fn leave(&self) {
        self.left.store(true, Ordering::Release);
        // Waits for a report being written, so none comes after.
        let _reporting = self.reported.lock().await;
        match self.nodes.delete(&self.node).await {
            Ok(()) => tracing::info!(node = %self.node, "left the cluster"),
            Err(e) => tracing::warn!("cannot leave the cluster: {e}"),
        }
    }

    pub fn node(&self) -> &str {
        &self.node
    }

    /// The signature header for a request this host sends on to another.
    pub fn sign(&self, target: &trust::Target<'_>, client: std::net::IpAddr, body: &[u8]) -> anyhow::Result<String> {
        let claim = Claim {
            by: self.node.clone(),
            client,
            body_sha256: trust::body_sha256(body),
        };
        trust::sign(&self.ring.load(), target, &claim, now_ms())
    }

    /// What a request signed by another host claims, if its signature holds
    /// (see [`trust::verify`]). A key this host does not know makes it read
    /// the ring again first, at most once per [`REFRESH_EVERY`]: another
    /// host may have rotated it a moment ago.
    pub async fn verify(&self, header: &str, target: &trust::Target<'_>) -> Result<Claim, Refused> {
        let verified = trust::verify(&self.ring.load(), &self.nonces, header, target, now_ms());
        if !matches!(verified, Err(Refused::UnknownKey(_))) {
            return verified;
        }
        {
            let mut refreshed = self.ring_refreshed.lock().expect("ring refresh lock");
            if refreshed.is_some_and(|at| at.elapsed() < REFRESH_EVERY) {
                return verified;
            }
            *refreshed = Some(Instant::now());
        }
        self.read_ring().await;
        trust::verify(&self.ring.load(), &self.nonces, header, target, now_ms())
    }

    /// Makes a new signing key now, for every host (see
    /// [`KeyRing::rotated`] for the keys that stay valid). With `due_after`,
    /// only if the ring's newest key, read afresh, is older than that: hosts
    /// that all find the key due rotate it once.
    pub async fn rotate_key(&self, due_after: Option<Duration>) -> Result<KeyIds, ClusterError> {
        let unavailable = |e: &dyn std::fmt::Display| ClusterError::Unavailable(anyhow::anyhow!("{e}"));
        let entry = self
            .desired
            .entry(KEY_RING)
            .await
            .map_err(|e| unavailable(&e))?
            .filter(|e| e.operation == kv::Operation::Put)
            .ok_or_else(|| ClusterError::NotFound("the cluster has no key ring".into()))?;
        let old: KeyRing = serde_json::from_slice(&entry.value).map_err(|e| unavailable(&e))?;
        let ids = |ring: &KeyRing| KeyIds {
            keys: ring.keys.iter().map(|k| k.id.clone()).collect(),
        };
        if let Some(due_after) = due_after
            && now_ms().saturating_sub(old.newest_ms().unwrap_or(0)) < due_after.as_millis() as u64
        {
            return Ok(ids(&old));
        }
        let next = old.rotated(now_ms()).map_err(ClusterError::Unavailable)?;
        self.desired
            .update(KEY_RING, to_bytes(&next), entry.revision)
            .await
            .map_err(|e| match e.kind() {
                kv::UpdateErrorKind::WrongLastRevision => {
                    ClusterError::Conflict("another host rotated the key meanwhile; try again".into())
                }
                _ => unavailable(&e),
            })?;
        tracing::info!(key = %next.keys[0].id, "rotated the cluster's forwarding key");
        let answer = ids(&next);
        self.ring.store(Arc::new(next));
        Ok(answer)
    }

    /// Reads the ring from the bucket.
    async fn read_ring(&self) {
        match self.desired.get(KEY_RING).await {
            Ok(Some(value)) => match serde_json::from_slice::<KeyRing>(&value) {
                Ok(ring) if !ring.keys.is_empty() => self.ring.store(Arc::new(ring)),
                Ok(_) => tracing::warn!("the cluster's key ring is empty; keeping the keys this host has"),
                Err(e) => tracing::warn!("the cluster's key ring does not parse: {e}"),
            },
            Ok(None) => tracing::warn!("the cluster's key ring is gone; keeping the keys this host has"),
            Err(e) => tracing::warn!("cannot read the cluster's key ring: {e}"),
        }
    }

    /// Rotates the signing key once it is older than `key_rotation`. Every
    /// host tries; the bucket's compare-and-set lets one win.
    async fn keep_rotating(self: Arc<Self>) {
        let every = (self.key_rotation / 10).clamp(Duration::from_secs(1), Duration::from_secs(60));
        loop {
            tokio::time::sleep(every).await;
            self.read_ring().await;
            let newest = self.ring.load().newest_ms().unwrap_or(0);
            if now_ms().saturating_sub(newest) < self.key_rotation.as_millis() as u64 {
                continue;
            }
            match self.rotate_key(Some(self.key_rotation)).await {
                Ok(_) | Err(ClusterError::Conflict(_)) => {}
                Err(e) => tracing::warn!("cannot rotate the cluster's forwarding key: {e}"),
            }
        }
    }

    /// Whether this host has converged to the cluster's state.
    pub fn is_converged(&self) -> bool {
        self.converged.load(Ordering::Acquire)
    }

    /// The public URL of `owner`, reading the hosts' reports again if this
    /// host has not seen it yet (it joined a moment ago, say), at most once
    /// per [`REFRESH_EVERY`].
    /// Whether this host's copy of `component`'s database may serve reads
    /// that miss at most the last `max_lag` of writes.
    pub fn reads_here(&self, component: &str, max_lag: Duration) -> bool {
        self.replication.fresh_within(component, max_lag)
    }

    pub async fn url_of(&self, owner: &str) -> Option<String> {
        let known = |view: &View| view.nodes.get(owner).and_then(|n| n.public_url.clone());
        if let Some(url) = known(&self.view.read().expect("view lock")) {
            return Some(url);
        }
        {
            let mut refreshed = self.refreshed.lock().expect("refresh lock");
            if refreshed.is_some_and(|at| at.elapsed() < REFRESH_EVERY) {
                return None;
            }
            *refreshed = Some(Instant::now());
        }
        self.refresh_nodes().await;
        known(&self.view.read().expect("view lock"))
    }

    /// Reads every host's report again.
    async fn refresh_nodes(&self) {
        match self.read_nodes().await {
            Ok(nodes) => {
                self.view.write().expect("view lock").nodes = nodes.into_iter().map(|n| (n.node.clone(), n)).collect();
            }
            Err(e) => tracing::warn!("cannot read the cluster's hosts: {e:#}"),
        }
    }

    /// Another ready host that serves `component` as this one does, picked
    /// by the configured balance, with its public URL: where a request goes
    /// when every slot here is busy.
    pub fn pick_peer(&self, component: &str) -> Option<(String, String)> {
        let view = self.view.read().expect("view lock");
        let desired = view.desired.get(component)?;
        let peers: Vec<(&NodeReport, &String)> = view
            .nodes
            .values()
            .filter(|n| n.node != self.node && n.ready)
            .filter(|n| n.components.get(component).is_some_and(|c| c.serves(desired)))
            .filter_map(|n| Some((n, n.public_url.as_ref()?)))
            .collect();
        if peers.is_empty() {
            return None;
        }
        let weights: Vec<u32> = peers.iter().map(|(n, _)| n.weight).collect();
        let index = choose(self.balance, &weights, &self.turn, random::u64());
        let (node, url) = peers[index];
        Some((node.node.clone(), url.clone()))
    }

    /// How many hosts are live, this one included.
    pub fn live_hosts(&self) -> usize {
        let view = self.view.read().expect("view lock");
        view.nodes.len().max(1)
    }

    /// The cluster's state as this host sees it, for the admin API.
    pub async fn describe(&self) -> Status {
        self.refresh_nodes().await;
        let view = self.view.read().expect("view lock");
        Status {
            node: self.node.clone(),
            converged: self.is_converged(),
            desired: view.desired.clone(),
            nodes: view.nodes.values().cloned().collect(),
        }
    }

    /// Installs new code for `name` on every host, for every request or
    /// for `canary` percent of them.
    pub async fn swap(&self, name: &str, wasm: Vec<u8>, canary: Option<u8>) -> Result<Changed, ClusterError> {
        let version = self.registry.validate(name, wasm.clone()).await?;
        let digest = version.digest.to_string();
        // A version that brings a database brings an owner: without one,
        // every host would write a database of its own.
        let owner = version.has_database().then(|| self.first_owner(name));
        self.versions
            .put(digest.as_str(), &mut wasm.as_slice())
            .await
            .map_err(|e| ClusterError::Unavailable(anyhow::Error::from(e)))?;
        let change = if canary.is_some() { "canary" } else { "swap" };
        self.change(name, change, |old| {
            Ok(Desired {
                versions: old.versions.swap(digest.clone(), canary),
                owner: old.owner.clone().or(owner),
                ..old.clone()
            })
        })
        .await
    }

    /// Back to the previous version on every host, or drops the canary.
    pub async fn rollback(&self, name: &str) -> Result<Changed, ClusterError> {
        self.change(name, "rollback", |old| {
            let versions = (old.versions.rollback()).map_err(|e| ClusterError::Conflict(format!("{name}: {e}")))?;
            Ok(Desired {
                versions,
                ..old.clone()
            })
        })
        .await
    }

    /// Makes the canary the current version on every host.
    pub async fn promote(&self, name: &str) -> Result<Changed, ClusterError> {
        self.change(name, "promote", |old| {
            let versions = (old.versions.promote()).map_err(|e| ClusterError::Conflict(format!("{name}: {e}")))?;
            Ok(Desired {
                versions,
                ..old.clone()
            })
        })
        .await
    }

    /// Moves the ownership of `name` (a component with a database) to host
    /// `owner`. The database does not move: see the README on failover.
    /// Only a live host that has converged and serves the component's
    /// versions may take it.
    pub async fn set_owner(&self, name: &str, owner: &str) -> Result<Changed, ClusterError> {
        crate::config::check_name(owner).map_err(ClusterError::Conflict)?;
        let nodes = self.read_nodes().await.map_err(ClusterError::Unavailable)?;
        let refuse = |why: String| ClusterError::Conflict(format!("{name} stays where it is: {why}"));
        let Some(host) = nodes.into_iter().find(|n| n.node == owner) else {
            return Err(refuse(format!("host {owner} is not live")));
        };
        if !host.ready {
            return Err(refuse(format!(
                "host {owner} has not converged to the cluster's state yet"
            )));
        }
        let Some(serving) = host.components.get(name).cloned() else {
            return Err(refuse(format!("host {owner} does not serve {name}")));
        };
        // A replicated database goes to a host that follows its log closely:
        // it applies what is left before its first write is taken.
        if let Some(place) = serving.place {
            let last = self
                .replication
                .last_entry(name)
                .await
                .map_err(ClusterError::Unavailable)?;
            if place + HANDOVER_LAG < last {
                return Err(refuse(format!(
                    "host {owner} holds {place} of the {last} entries of {name}'s log; try again once it has caught up"
                )));
            }
        }
        self.change(name, "owner", |old| {
            if old.owner.is_none() {
                return Err(ClusterError::Conflict(format!(
                    "{name} has no database, so no owner: every host serves it"
                )));
            }
            if serving.current != old.versions.current
                || serving.canary != old.versions.canary
                || serving.error.is_some()
            {
                return Err(refuse(format!("host {owner} does not serve {name}'s versions")));
            }
            let mut next = old.clone();
            next.owner = Some(owner.to_string());
            Ok(next)
        })
        .await
    }

    /// Writes `make(old)` for `name`, as this host's `change`, if nobody
    /// changed it meanwhile, waits until every live host serves it, and
    /// undoes it if one refuses.
    async fn change(
        &self,
        name: &str,
        change: &str,
        make: impl FnOnce(&Desired) -> Result<Desired, ClusterError>,
    ) -> Result<Changed, ClusterError> {
        let unavailable = |e: &dyn std::fmt::Display| ClusterError::Unavailable(anyhow::anyhow!("{e}"));
        let entry = self
            .desired
            .entry(name)
            .await
            .map_err(|e| unavailable(&e))?
            .filter(|e| e.operation == kv::Operation::Put)
            .ok_or_else(|| ClusterError::NotFound(format!("no component named {name} in the cluster")))?;
        let old: Desired = serde_json::from_slice(&entry.value).map_err(|e| unavailable(&e))?;
        let next = Desired {
            changed_by: self.node.clone(),
            change: change.into(),
            ..make(&old)?
        };
        let revision = self
            .desired
            .update(name, to_bytes(&next), entry.revision)
            .await
            .map_err(|e| match e.kind() {
                kv::UpdateErrorKind::WrongLastRevision => {
                    ClusterError::Conflict(format!("{name} changed meanwhile; try again"))
                }
                _ => unavailable(&e),
            })?;
        self.changed.notify_one();
        match self.wait_for(name, &next).await {
            Ok(nodes) => Ok(Changed {
                component: name.to_string(),
                desired: next,
                nodes,
            }),
            Err(ClusterError::Refused { node, message }) => {
                tracing::warn!(component = %name, %node, "a host refused a change; undoing it: {message}");
                if self.desired.update(name, to_bytes(&old), revision).await.is_ok() {
                    self.changed.notify_one();
                    let _ = self.wait_for(name, &old).await;
                }
                Err(ClusterError::Refused { node, message })
            }
            Err(e) => Err(e),
        }
    }

    /// Waits until every live host serves `desired` for `name`, or one says
    /// it cannot.
    async fn wait_for(&self, name: &str, desired: &Desired) -> Result<Vec<NodeReport>, ClusterError> {
        let deadline = Instant::now() + CONVERGE_TIMEOUT;
        loop {
            let nodes = self.read_nodes().await.map_err(ClusterError::Unavailable)?;
            let mut pending = Vec::new();
            for report in &nodes {
                match report.components.get(name) {
                    Some(c) if c.serves(desired) => {}
                    Some(c) => match c.refused(desired) {
                        Some(message) => {
                            return Err(ClusterError::Refused {
                                node: report.node.clone(),
                                message: message.to_string(),
                            });
                        }
                        None => pending.push(report.node.clone()),
                    },
                    // A host that does not serve the component has nothing to take.
                    None => {}
                }
            }
            if pending.is_empty() {
                return Ok(nodes);
            }
            if Instant::now() >= deadline {
                return Err(ClusterError::Timeout(pending));
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Publishes this host's version of each component no host has
    /// published yet: the first host to start sets the cluster's state.
    async fn publish_unknown(&self) -> anyhow::Result<()> {
        for config in &self.components {
            if self.desired.get(&config.name).await?.is_none() {
                self.publish(&config.name, None).await?;
            }
        }
        Ok(())
    }

    /// The host that owns a database component when it is first published:
    /// the config's `owner`, else this one.
    fn first_owner(&self, name: &str) -> String {
        let config = self.components.iter().find(|c| c.name == name);
        config
            .and_then(|c| c.owner.clone())
            .unwrap_or_else(|| self.node.clone())
    }

    /// Publishes `name` if no host has (or its entry was deleted): as
    /// `known`, the last state this host saw of it, so that its owner
    /// stays, else as this host serves it.
    async fn publish(&self, name: &str, known: Option<&Desired>) -> anyhow::Result<()> {
        let desired = match known {
            Some(known) => Desired {
                changed_by: self.node.clone(),
                change: "republished".into(),
                ..known.clone()
            },
            None => {
                let snapshot = self.registry.snapshot();
                let Some(entry) = snapshot.get(name) else {
                    return Ok(());
                };
                let version = entry.current();
                let wasm = self.registry.wasm_of(name, &version.digest)?;
                self.versions
                    .put(&*version.digest, &mut wasm.as_slice())
                    .await
                    .map_err(|e| anyhow::anyhow!("cannot store {name} in the cluster: {e}"))?;
                Desired {
                    versions: Versions::new(version.digest.to_string()),
                    owner: version.has_database().then(|| self.first_owner(name)),
                    changed_by: self.node.clone(),
                    change: "start".into(),
                }
            }
        };
        match self.desired.create(name, to_bytes(&desired)).await {
            Ok(_) if known.is_some() => {
                tracing::warn!(component = %name, owner = ?desired.owner, "the cluster's entry was deleted; published it again as it was")
            }
            Ok(_) => tracing::info!(component = %name, version = %desired.versions.current, "published to the cluster"),
            // Another host published it first: converge to theirs.
            Err(e) if e.kind() == kv::CreateErrorKind::AlreadyExists => {}
            Err(e) => return Err(anyhow::anyhow!("cannot publish {name}: {e}")),
        }
        Ok(())
    }

    /// Makes every component serve what the cluster wants; records why not
    /// where it cannot.
    async fn converge_all(&self) -> anyhow::Result<()> {
        let known = self.view.read().expect("view lock").desired.clone();
        let mut desired = BTreeMap::new();
        for config in &self.components {
            let mut value = self.desired.get(&config.name).await?;
            if value.is_none()
                && let Some(known) = known.get(&config.name)
            {
                // Deleted: without an entry every host would serve it alone.
                self.publish(&config.name, Some(known)).await?;
                value = self.desired.get(&config.name).await?;
            }
            if let Some(value) = value {
                desired.insert(config.name.clone(), serde_json::from_slice::<Desired>(&value)?);
            }
        }
        // Owners first: a version that brings a database is never served
        // here, by a host that does not own it, while the others load.
        let elsewhere = desired
            .iter()
            .filter_map(|(name, want)| Some((name.clone(), want.owner.clone()?)))
            .filter(|(_, owner)| *owner != self.node)
            .collect();
        self.registry.placement.set(elsewhere);
        for (name, want) in &desired {
            self.converge(name, want).await;
            self.replicate(name, want).await;
        }
        self.view.write().expect("view lock").desired = desired;
        self.refresh_nodes().await;
        Ok(())
    }

    /// Follows the log of `name`'s database, if it has one that is
    /// replicated, and appends to it if this host owns it.
    async fn replicate(&self, name: &str, want: &Desired) {
        let Some(owner) = &want.owner else { return };
        let config = self.components.iter().find(|c| c.name == name);
        let replicated = config.is_some_and(|c| c.durability == Durability::Replicated);
        let serves_reads = config.is_some_and(|c| c.read_from == crate::config::ReadFrom::Replica);
        let snapshot = self.registry.snapshot();
        let Some(entry) = snapshot.get(name).filter(|e| replicated && e.has_database()) else {
            return;
        };
        let owns = *owner == self.node;
        let db = Arc::clone(&entry.shared.capabilities.sqlite.db);
        match self.replication.start(name, db, owns, serves_reads).await {
            Ok(()) => self.replication.set_owner(name, owns),
            Err(e) => {
                tracing::warn!(component = %name, "cannot replicate its database: {e:#}");
                self.errors.lock().expect("errors lock").insert(
                    name.to_string(),
                    ConvergeError {
                        wanted: want.versions.current.clone(),
                        wanted_canary: want.versions.canary.as_ref().map(|c| c.version.clone()),
                        message: format!("{e:#}"),
                    },
                );
            }
        }
    }

    async fn converge(&self, name: &str, want: &Desired) {
        let origin = Origin::Cluster {
            node: want.changed_by.clone(),
        };
        let versions = self.versions.clone();
        let fetch = move |digest: String| {
            let versions = versions.clone();
            Box::pin(async move { fetch(&versions, &digest).await }) as futures::future::BoxFuture<'static, _>
        };
        let outcome = self.registry.converge(name, &want.versions, &origin, fetch).await;
        let mut errors = self.errors.lock().expect("errors lock");
        match outcome {
            Ok(changed) => {
                if changed.is_some() {
                    tracing::info!(component = %name, change = %want.change, by = %want.changed_by, "converged");
                }
                errors.remove(name);
            }
            Err(e) => {
                tracing::warn!(component = %name, "cannot serve what the cluster wants: {e}");
                errors.insert(
                    name.to_string(),
                    ConvergeError {
                        wanted: want.versions.current.clone(),
                        wanted_canary: want.versions.canary.as_ref().map(|c| c.version.clone()),
                        message: e.to_string(),
                    },
                );
            }
        }
    }

    /// Every live host's last report.
    ///
    /// The keys come from the stream's subjects, one request, not from
    /// `keys()`: its consumer waits for every entry it counted at the
    /// start, and one that expires meanwhile never comes.
    async fn read_nodes(&self) -> anyhow::Result<Vec<NodeReport>> {
        let read = async {
            let prefix = format!("$KV.{}.", state::NODES_BUCKET);
            let subjects: Vec<(String, usize)> = self
                .nodes
                .stream
                .info_with_subjects(format!("{prefix}>"))
                .await?
                .try_collect()
                .await?;
            let mut reports = Vec::new();
            for (subject, _) in subjects {
                let Some(key) = subject.strip_prefix(&prefix) else {
                    continue;
                };
                if let Some(value) = self.nodes.get(key).await? {
                    reports.push(serde_json::from_slice(&value)?);
                }
            }
            anyhow::Ok(reports)
        };
        tokio::time::timeout(NATS_TIMEOUT, read)
            .await
            .map_err(|_| anyhow::anyhow!("the cluster's hosts were not read within {NATS_TIMEOUT:?}"))?
    }

    /// What this host serves, as it reports it.
    fn current_report(&self) -> NodeReport {
        let snapshot = self.registry.snapshot();
        let errors = self.errors.lock().expect("errors lock").clone();
        let owners: BTreeMap<String, Option<String>> = {
            let view = self.view.read().expect("view lock");
            view.desired
                .iter()
                .map(|(name, d)| (name.clone(), d.owner.clone()))
                .collect()
        };
        let components = self
            .components
            .iter()
            .filter_map(|config| {
                let entry = snapshot.get(&config.name)?;
                let served = entry.versions.map(|v| v.digest.to_string());
                let report = ComponentReport {
                    current: served.current,
                    canary: served.canary,
                    owner: owners.get(&config.name).cloned().flatten(),
                    error: errors.get(&config.name).cloned(),
                    place: self.replication.place(&config.name),
                };
                Some((config.name.clone(), report))
            })
            .collect();
        NodeReport {
            node: self.node.clone(),
            instance: instance().to_string(),
            public_url: self.public_url.clone(),
            ready: self.is_converged(),
            weight: self.weight,
            updated_ms: now_ms(),
            components,
        }
    }

    /// Tells the cluster what this host serves, over its last report. If
    /// that is gone (this host was cut off for longer than `node_ttl`), it
    /// reports afresh; if another process reports under its name, this
    /// one stops at once: two hosts of one name would both own what it owns.
    async fn report(&self) {
        let mut reported = self.reported.lock().await;
        if self.left.load(Ordering::Acquire) {
            return;
        }
        let report = self.current_report();
        let written = match *reported {
            Some(revision) => {
                (self.nodes.update(&self.node, to_bytes(&report), revision).await).map_err(|e| e.to_string())
            }
            None => (self.nodes.create(&self.node, to_bytes(&report)).await).map_err(|e| e.to_string()),
        };
        match written {
            Ok(revision) => *reported = Some(revision),
            Err(e) => {
                tracing::warn!("cannot report to the cluster: {e}");
                if let Ok(last) = self.last_report().await {
                    *reported = match last {
                        Some((_, other)) if other.instance != instance() => self.deposed(&other),
                        // This host's own, written by a report whose answer was lost.
                        Some((revision, _)) => Some(revision),
                        // Expired or removed: the next report creates it again.
                        None => None,
                    };
                }
            }
        }
        drop(reported);
        self.view
            .write()
            .expect("view lock")
            .nodes
            .insert(self.node.clone(), report);
    }

    /// The report under this host's name in the bucket, with its revision.
    async fn last_report(&self) -> anyhow::Result<Option<(u64, NodeReport)>> {
        let entry = self.nodes.entry(&self.node).await?;
        Ok(entry.filter(|e| e.operation == kv::Operation::Put).and_then(|e| {
            let report = serde_json::from_slice::<NodeReport>(&e.value).ok()?;
            Some((e.revision, report))
        }))
    }

    /// Another process took this host's name: this one stops serving.
    fn deposed(&self, other: &NodeReport) -> ! {
        tracing::error!(
            node = %self.node,
            other = ?other.public_url,
            "another host reports as this node; stopping, so that one host owns what this one owned"
        );
        std::process::exit(3);
    }

    /// Converges on every change to the bucket, and every few seconds in
    /// case a change was missed.
    async fn watch(self: Arc<Self>) {
        loop {
            let watch = self.desired.watch_all().await;
            let mut watch = match watch {
                Ok(watch) => watch,
                Err(e) => {
                    tracing::warn!("cannot watch the cluster's state: {e}");
                    tokio::time::sleep(Duration::from_secs(1)).await;
                    continue;
                }
            };
            loop {
                tokio::select! {
                    entry = watch.next() => match entry {
                        Some(Ok(_)) => {}
                        Some(Err(e)) => {
                            tracing::warn!("the cluster's watch failed: {e}");
                            break;
                        }
                        None => break,
                    },
                    () = self.changed.notified() => {}
                    () = tokio::time::sleep(RESYNC_EVERY) => {}
                }
                if let Err(e) = self.converge_all().await {
                    tracing::warn!("cannot read the cluster's state: {e:#}");
                }
                self.read_ring().await;
                self.report().await;
            }
        }
    }

    /// Reports this host, and refreshes its view of the others, well
    /// within the time after which a silent host counts as gone; takes
    /// over what a gone host owned, where this host is the one to.
    async fn keep_reporting(self: Arc<Self>) {
        loop {
            tokio::time::sleep(self.ttl / 3).await;
            self.report().await;
            self.refresh_nodes().await;
            self.take_over().await;
        }
    }

    /// Takes the ownership of each replicated database whose owner is no
    /// longer live, if this host is the live one furthest into its log
    /// (the first by name among equals), once it holds the whole log: by
    /// compare-and-set on the entry it read, so only one host takes it. The
    /// log's fence stands behind it: a host that takes over while another
    /// still appends cannot append until it holds what the other wrote.
    async fn take_over(&self) {
        let (desired, nodes) = {
            let view = self.view.read().expect("view lock");
            (view.desired.clone(), view.nodes.clone())
        };
        let mut missing = self.owners_missing.lock().await;
        missing.retain(|owner, _| !nodes.contains_key(owner));
        for (name, want) in desired {
            let Some(owner) = want.owner.as_ref() else { continue };
            if *owner == self.node || nodes.contains_key(owner) {
                continue;
            }
            // Another host may have taken it already: read the state again
            // rather than wait for a watch that may have missed it.
            self.changed.notify_one();
            if self.replication.place(&name).is_none() {
                continue;
            }
            // Gone at two reads a third of `node_ttl` apart, and still
            // gone from the bucket now: not a report this host missed.
            let since = *missing.entry(owner.clone()).or_insert_with(Instant::now);
            if since.elapsed() < self.ttl / 3 || !matches!(self.nodes.get(owner).await, Ok(None)) {
                continue;
            }
            let heir = nodes
                .values()
                .filter(|n| n.ready)
                .filter_map(|n| Some((n.components.get(&name)?.place?, &n.node)))
                .max_by(|(a, a_node), (b, b_node)| a.cmp(b).then(b_node.cmp(a_node)));
            if heir.is_none_or(|(_, node)| *node != self.node) {
                continue;
            }
            let snapshot = self.registry.snapshot();
            let Some(entry) = snapshot.get(&name) else { continue };
            let db = Arc::clone(&entry.shared.capabilities.sqlite.db);
            if let Err(e) = self.replication.catch_up(&name, &db).await {
                tracing::warn!(component = %name, "cannot take over before holding the whole log: {e:#}");
                continue;
            }
            if let Err(e) = self.take(&name, owner).await {
                tracing::warn!(component = %name, "cannot take over from host {owner}: {e:#}");
            }
        }
    }

    /// Makes this host the owner of `name`, if `gone` still owns it.
    async fn take(&self, name: &str, gone: &str) -> anyhow::Result<()> {
        let Some(entry) = self.desired.entry(name).await? else {
            return Ok(());
        };
        let mut next: Desired = serde_json::from_slice(&entry.value)?;
        if next.owner.as_deref() != Some(gone) {
            return Ok(());
        }
        next.owner = Some(self.node.clone());
        next.changed_by = self.node.clone();
        next.change = "failover".into();
        self.desired.update(name, to_bytes(&next), entry.revision).await?;
        tracing::warn!(component = %name, from = %gone, "host {gone} is gone; this host owns the component now");
        self.changed.notify_one();
        Ok(())
    }
}

/// The index of the host `balance` picks among hosts of `weights`, with
/// `turn` the round-robin counter and `dice` a random number.
fn choose(balance: Balance, weights: &[u32], turn: &AtomicUsize, dice: u64) -> usize {
    match balance {
        Balance::RoundRobin => turn.fetch_add(1, Ordering::Relaxed) % weights.len(),
        Balance::Random => (dice % weights.len() as u64) as usize,
        Balance::WeightedRandom => {
            let total: u64 = weights.iter().map(|w| u64::from(*w)).sum();
            let mut ticket = dice % total.max(1);
            weights
                .iter()
                .position(|w| match ticket.checked_sub(u64::from(*w)) {
                    Some(rest) => {
                        ticket = rest;
                        false
                    }
                    None => true,
                })
                .unwrap_or(weights.len() - 1)
        }
    }
}

/// Connects to NATS with the configured credentials, waiting for it to
/// come up as long as it takes (the host serves what needs no owner
/// meanwhile); credentials it refuses fail at once.
async fn connect(cluster: &ClusterConfig) -> anyhow::Result<async_nats::Client> {
    let options = match &cluster.auth {
        NatsAuth::None => async_nats::ConnectOptions::new(),
        NatsAuth::CredentialsFile(path) => async_nats::ConnectOptions::with_credentials_file(path)
            .await
            .with_context(|| format!("cannot read the NATS credentials in {}", path.display()))?,
        NatsAuth::Token(source) => async_nats::ConnectOptions::new().token(resolve_token(source, TokenFile::ReadOnly)?),
    };
    // The last error NATS reported, for a start that fails to say why.
    let last_error: Arc<Mutex<Option<String>>> = Arc::default();
    let record = Arc::clone(&last_error);
    let options = options
        .name(format!("corral-{}", cluster.node))
        .connection_timeout(Duration::from_secs(5))
        .retry_on_initial_connect()
        .event_callback(move |event| {
            let record = Arc::clone(&record);
            async move {
                match &event {
                    async_nats::Event::ClientError(_) | async_nats::Event::ServerError(_) => {
                        tracing::warn!("NATS: {event}");
                        *record.lock().expect("error lock") = Some(event.to_string());
                    }
                    _ => tracing::info!("NATS: {event}"),
                }
            }
        });
    let servers: Vec<async_nats::ServerAddr> = cluster
        .nats
        .iter()
        .map(|s| s.parse())
        .collect::<Result<_, _>>()
        .context("a NATS server address does not parse")?;
    let client = options.connect(servers).await.context("cannot connect to NATS")?;
    // With retry on, connect returns before the first connection is up.
    let mut said = Instant::now();
    while client.connection_state() != async_nats::connection::State::Connected {
        let error = last_error.lock().expect("error lock").clone();
        if let Some(error) = &error
            && error.contains("authorization violation")
        {
            let why = format!("NATS at {:?} refused this host's credentials ({error})", cluster.nats);
            return Err(JoinRefused(why).into());
        }
        if said.elapsed() >= Duration::from_secs(30) {
            let why = error.map(|e| format!(": {e}")).unwrap_or_default();
            tracing::warn!("still cannot reach NATS at {:?}{why}", cluster.nats);
            said = Instant::now();
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    Ok(client)
}

/// The code of version `digest`, checked against its digest.
async fn fetch(versions: &object_store::ObjectStore, digest: &str) -> anyhow::Result<Vec<u8>> {
    let mut object = versions
        .get(digest)
        .await
        .with_context(|| format!("version {digest} is not in the cluster's store"))?;
    let mut wasm = Vec::new();
    object.read_to_end(&mut wasm).await?;
    let got = crate::components::version::digest(&wasm);
    anyhow::ensure!(
        *got == *digest,
        "version {digest} in the cluster's store has the digest {got}"
    );
    Ok(wasm)
}

/// The cluster's key ring, made by the first host to look; the single key
/// of earlier versions, if any, is removed.
async fn key_ring(desired: &kv::Store) -> anyhow::Result<KeyRing> {
    let parse =
        |value: &[u8]| serde_json::from_slice::<KeyRing>(value).context("the cluster's key ring does not parse");
    let ring = match desired.get(KEY_RING).await? {
        Some(ring) => parse(&ring)?,
        None => {
            let ring = KeyRing::first(now_ms())?;
            match desired.create(KEY_RING, to_bytes(&ring)).await {
                Ok(_) => ring,
                // Another host made it first.
                Err(_) => parse(
                    &desired
                        .get(KEY_RING)
                        .await?
                        .context("the cluster's key ring vanished")?,
                )?,
            }
        }
    };
    if desired.get(OLD_FORWARD_KEY).await?.is_some() {
        desired.purge(OLD_FORWARD_KEY).await?;
    }
    Ok(ring)
}

/// The object store `bucket` (versions, snapshots), made if it does not
/// exist yet.
async fn object_store_of(
    js: &jetstream::Context,
    bucket: &str,
    replicas: usize,
) -> anyhow::Result<object_store::ObjectStore> {
    if let Ok(store) = js.get_object_store(bucket).await {
        return Ok(store);
    }
    let config = object_store::Config {
        bucket: bucket.into(),
        num_replicas: replicas,
        ..Default::default()
    };
    match js.create_object_store(config).await {
        Ok(store) => Ok(store),
        // Another host made it first.
        Err(e) => js
            .get_object_store(bucket)
            .await
            .map_err(|_| anyhow::anyhow!("cannot make the cluster's {bucket} store: {e}")),
    }
}

/// The key-value bucket `bucket`, made if it does not exist yet. The
/// bucket's stream is made here as the key-value convention lays it out,
/// not through `create_key_value`, which first asks for account details
/// that JetStream servers before 2.10 do not give.
async fn key_value(
    js: &jetstream::Context,
    bucket: &str,
    history: i64,
    max_age: Duration,
    replicas: usize,
) -> anyhow::Result<kv::Store> {
    if let Ok(store) = js.get_key_value(bucket).await {
        return Ok(store);
    }
    let created = js
        .create_stream(jetstream::stream::Config {
            name: format!("KV_{bucket}"),
            subjects: vec![format!("$KV.{bucket}.>")],
            max_messages_per_subject: history,
            max_age,
            allow_rollup: true,
            deny_delete: true,
            allow_direct: true,
            discard: jetstream::stream::DiscardPolicy::New,
            num_replicas: replicas,
            ..Default::default()
        })
        .await;
    match created {
        Ok(_) => Ok(js.get_key_value(bucket).await?),
        // Another host made it first.
        Err(e) => js
            .get_key_value(bucket)
            .await
            .map_err(|_| anyhow::anyhow!("cannot make the cluster's {bucket} bucket: {e}")),
    }
}

fn to_bytes(value: &impl serde::Serialize) -> Bytes {
    Bytes::from(serde_json::to_vec(value).expect("cluster state serializes"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_robin_takes_turns() {
        let turn = AtomicUsize::new(0);
        let picks: Vec<usize> = (0..6)
            .map(|_| choose(Balance::RoundRobin, &[1, 1, 1], &turn, 0))
            .collect();
        assert_eq!(picks, [0, 1, 2, 0, 1, 2]);
    }

    #[test]
    fn weighted_random_follows_the_weights() {
        let turn = AtomicUsize::new(0);
        let mut counts = [0u32; 3];
        // Every ticket once: each host gets exactly its weight.
        for dice in 0..400 {
            counts[choose(Balance::WeightedRandom, &[100, 300, 0], &turn, dice)] += 1;
        }
        assert_eq!(counts, [100, 300, 0]);
    }

    #[test]
    fn random_stays_in_range() {
        let turn = AtomicUsize::new(0);
        for dice in [0, 1, 2, u64::MAX] {
            assert!(choose(Balance::Random, &[1, 1, 1], &turn, dice) < 3);
        }
    }
}
