//! Components in OCI registries, in the layout of Wasm OCI artifacts (as
//! `wkg oci` and Spin use it): an image manifest whose config has the type
//! `application/vnd.wasm.config.v0+json` and whose one layer is the
//! component, `application/wasm`. `oci-client` speaks the registry
//! protocol; this module picks credentials, checks what arrives (media
//! types, size, digests) and keeps every component it fetched by digest, so
//! a host whose registry is away starts from what it fetched before.

use std::path::PathBuf;
use std::str::FromStr;
use std::sync::Arc;

use futures::StreamExt;
use oci_client::client::{ClientConfig, ClientProtocol, Config, ImageLayer};
use oci_client::errors::{DigestError, OciDistributionError, OciErrorCode};
use oci_client::manifest::{OCI_IMAGE_MEDIA_TYPE, OciDescriptor, OciImageManifest};
use oci_client::secrets::RegistryAuth;
use oci_client::{Client, Reference};
use serde::{Deserialize, Serialize};

use super::saved::write_atomically;
use super::version::digest;
use crate::config::{OCI_SCHEME, RegistriesConfig};

pub const CONFIG_MEDIA_TYPE: &str = "application/vnd.wasm.config.v0+json";
pub const LAYER_MEDIA_TYPE: &str = "application/wasm";

/// Environment variables holding a registry's credentials; they win over
/// Docker's config file (`$DOCKER_CONFIG/config.json`, else
/// `~/.docker/config.json`).
pub const USERNAME_ENV: &str = "CORRAL_REGISTRY_USERNAME";
pub const PASSWORD_ENV: &str = "CORRAL_REGISTRY_PASSWORD";
pub const TOKEN_ENV: &str = "CORRAL_REGISTRY_TOKEN";

/// Why a component could not be pushed or fetched.
#[derive(Debug, thiserror::Error)]
pub enum OciError {
    #[error("{0}")]
    BadReference(String),
    #[error("{reference}: not found in the registry")]
    NotFound { reference: String },
    #[error("{reference}: the registry refused the credentials{}", hint(.detail))]
    Unauthorized { reference: String, detail: String },
    #[error("{reference}: the registry cannot be reached: {detail}")]
    Unreachable { reference: String, detail: String },
    #[error("{reference}: not a Wasm component artifact: {detail}")]
    WrongMediaType { reference: String, detail: String },
    #[error("{reference}: {size} bytes, more than the {max} bytes registries.max_download_mib allows")]
    TooLarge { reference: String, size: u64, max: u64 },
    #[error("{reference}: what was downloaded has the digest {got}, not {expected}")]
    DigestMismatch {
        reference: String,
        expected: String,
        got: String,
    },
    #[error("{reference}: {detail}")]
    Other { reference: String, detail: String },
}

fn hint(detail: &str) -> String {
    format!(" ({detail}; give them in {USERNAME_ENV} and {PASSWORD_ENV}, {TOKEN_ENV}, or Docker's config file)")
}

/// A component fetched from a registry.
#[derive(Debug)]
pub struct Pulled {
    pub wasm: Vec<u8>,
    /// The reference pinned to the manifest's digest:
    /// `registry/repository@sha256:...`.
    pub pinned: String,
    /// Fetched before and kept, because the registry could not be reached.
    pub from_cache: bool,
}

/// What a transfer reports as it goes.
pub trait Progress: Send + Sync {
    fn start(&self, what: &str, total: u64);
    fn advance(&self, bytes: u64);
    fn finish(&self);
}

/// Reports nothing.
pub struct Quiet;

impl Progress for Quiet {
    fn start(&self, _: &str, _: u64) {}
    fn advance(&self, _: u64) {}
    fn finish(&self) {}
}

/// The registries a host or the CLI talks to.
pub struct Registries {
    config: RegistriesConfig,
    cache: Cache,
}

/// Components fetched before, by digest, and what each reference last
/// resolved to, in a folder.
#[derive(Clone)]
struct Cache {
    dir: PathBuf,
}

/// What the cache knows of a reference: the manifest it last resolved to
/// and the component's digest.
#[derive(Debug, Serialize, Deserialize)]
struct Resolved {
    pinned: String,
    layer: String,
}

impl Registries {
    pub fn new(config: RegistriesConfig) -> Registries {
        let cache = Cache {
            dir: config.cache_dir.clone(),
        };
        Registries { config, cache }
    }

    /// Runs `job` on the cache off the async workers: it reads and writes files.
    async fn on_cache<T: Send + 'static>(&self, job: impl FnOnce(&Cache) -> T + Send + 'static) -> T {
        let cache = self.cache.clone();
        match tokio::task::spawn_blocking(move || job(&cache)).await {
            Ok(done) => done,
            Err(e) => std::panic::resume_unwind(e.into_panic()),
        }
    }

    /// Fetches the component `reference` names (without `oci://`), checked
    /// against the digest it pins if any, and keeps it. When the registry
    /// cannot be reached, the copy kept from an earlier fetch is used.
    pub async fn pull(&self, reference: &str, progress: &dyn Progress) -> Result<Pulled, OciError> {
        let parsed = parse(reference)?;
        match self.fetch(&parsed, progress).await {
            Ok(pulled) => Ok(pulled),
            Err(e @ OciError::Unreachable { .. }) => match self.on_cache(move |cache| cache.cached(&parsed)).await {
                Some(pulled) => {
                    tracing::warn!("{e}; using the copy fetched before, {}", pulled.pinned);
                    Ok(pulled)
                }
                None => Err(e),
            },
            Err(e) => Err(e),
        }
    }

    async fn fetch(&self, reference: &Reference, progress: &dyn Progress) -> Result<Pulled, OciError> {
        let name = reference.whole();
        let client = self.client(&name)?;
        let auth = credentials(reference);
        let (raw, manifest_digest) = client
            .pull_manifest_raw(reference, &auth, &[OCI_IMAGE_MEDIA_TYPE])
            .await
            .map_err(|e| classify(&name, e))?;
        let layer = wasm_layer(&name, &raw)?;
        let max = self.config.max_download_bytes;
        if layer.size < 0 || layer.size as u64 > max {
            return Err(OciError::TooLarge {
                reference: name,
                size: layer.size.max(0) as u64,
                max,
            });
        }
        let pinned = format!("{}@{manifest_digest}", repository_of(reference));
        let layer_digest = layer.digest.clone();
        let kept = {
            let (reference, pinned, layer_digest) = (reference.clone(), pinned.clone(), layer_digest.clone());
            self.on_cache(move |cache| {
                let wasm = cache.read_blob(&layer_digest)?;
                cache.remember(&reference, &pinned, &layer_digest);
                Some(wasm)
            })
            .await
        };
        if let Some(wasm) = kept {
            return Ok(Pulled {
                wasm,
                pinned,
                from_cache: false,
            });
        }
        let mut stream = client
            .pull_blob_stream(reference, &layer)
            .await
            .map_err(|e| classify(&name, e))?;
        progress.start(&name, layer.size as u64);
        let mut wasm = Vec::with_capacity(layer.size as usize);
        while let Some(chunk) = stream.next().await {
            let chunk = chunk.map_err(|e| match e.get_ref().and_then(|e| e.downcast_ref::<DigestError>()) {
                Some(wrong) => OciError::DigestMismatch {
                    reference: name.clone(),
                    expected: layer_digest.clone(),
                    got: wrong.to_string(),
                },
                None => OciError::Unreachable {
                    reference: name.clone(),
                    detail: e.to_string(),
                },
            })?;
            if (wasm.len() + chunk.len()) as u64 > max {
                return Err(OciError::TooLarge {
                    reference: name,
                    size: (wasm.len() + chunk.len()) as u64,
                    max,
                });
            }
            wasm.extend_from_slice(&chunk);
            progress.advance(chunk.len() as u64);
        }
        progress.finish();
        let got = sha256(&wasm);
        if got != layer_digest {
            return Err(OciError::DigestMismatch {
                reference: name,
                expected: layer_digest,
                got,
            });
        }
        let wasm = {
            let (reference, pinned) = (reference.clone(), pinned.clone());
            self.on_cache(move |cache| {
                cache.keep(&layer_digest, &wasm);
                cache.remember(&reference, &pinned, &layer_digest);
                wasm
            })
            .await
        };
        Ok(Pulled {
            wasm,
            pinned,
            from_cache: false,
        })
    }

    /// Pushes `wasm` as a Wasm component artifact under `reference`;
    /// answers the reference pinned to the manifest's digest.
    pub async fn push(&self, wasm: Vec<u8>, reference: &str, progress: Arc<dyn Progress>) -> Result<String, OciError> {
        let parsed = parse(reference)?;
        let name = parsed.whole();
        let client = self.client(&name)?;
        let auth = credentials(&parsed);
        let layer = ImageLayer::new(wasm, LAYER_MEDIA_TYPE.to_string(), None);
        let layer_digest = layer.sha256_digest();
        let config = Config::new(wasm_config(&layer_digest), CONFIG_MEDIA_TYPE.to_string(), None);
        let mut manifest = OciImageManifest::build(std::slice::from_ref(&layer), &config, None);
        manifest.media_type = Some(OCI_IMAGE_MEDIA_TYPE.to_string());
        client.store_auth_if_needed(parsed.resolve_registry(), &auth).await;
        let size = layer.data.len() as u64;
        progress.start(&name, size);
        let chunks: Vec<bytes::Bytes> = layer
            .data
            .chunks(256 << 10)
            .map(bytes::Bytes::copy_from_slice)
            .collect();
        let counting = Arc::clone(&progress);
        let stream = futures::stream::iter(chunks)
            .inspect(move |chunk| counting.advance(chunk.len() as u64))
            .map(Ok::<_, OciDistributionError>);
        client
            .push_blob_stream(&parsed, stream, &layer_digest, Some(size))
            .await
            .map_err(|e| classify(&name, e))?;
        progress.finish();
        client
            .push_blob(&parsed, config.data, &manifest.config.digest)
            .await
            .map_err(|e| classify(&name, e))?;
        let manifest_bytes = serde_json::to_vec(&manifest).map_err(|e| OciError::Other {
            reference: name.clone(),
            detail: e.to_string(),
        })?;
        let manifest_digest = sha256(&manifest_bytes);
        client
            .push_manifest_raw(
                &parsed,
                manifest_bytes,
                OCI_IMAGE_MEDIA_TYPE.parse().expect("a media type"),
            )
            .await
            .map_err(|e| classify(&name, e))?;
        Ok(format!("{}@{manifest_digest}", repository_of(&parsed)))
    }

    fn client(&self, reference: &str) -> Result<Client, OciError> {
        // The process's TLS uses ring, as NATS does; only the first call installs it.
        let _ = rustls::crypto::ring::default_provider().install_default();
        let mut extra_root_certificates = Vec::new();
        if let Some(file) = &self.config.ca_file {
            let data = std::fs::read(file).map_err(|e| OciError::Other {
                reference: reference.to_string(),
                detail: format!("cannot read registries.ca_file {}: {e}", file.display()),
            })?;
            extra_root_certificates.push(oci_client::client::Certificate {
                encoding: oci_client::client::CertificateEncoding::Pem,
                data,
            });
        }
        Ok(Client::new(ClientConfig {
            protocol: ClientProtocol::HttpsExcept(self.config.insecure.clone()),
            extra_root_certificates,
            connect_timeout: Some(std::time::Duration::from_secs(10)),
            read_timeout: Some(std::time::Duration::from_secs(60)),
            ..ClientConfig::default()
        }))
    }
}

impl Cache {
    /// The copy kept of what `reference` last resolved to.
    fn cached(&self, reference: &Reference) -> Option<Pulled> {
        let text = std::fs::read(self.ref_path(reference)).ok()?;
        let resolved: Resolved = serde_json::from_slice(&text).ok()?;
        let wasm = self.read_blob(&resolved.layer)?;
        Some(Pulled {
            wasm,
            pinned: resolved.pinned,
            from_cache: true,
        })
    }

    /// The component kept under `digest`, if its bytes still have it.
    fn read_blob(&self, digest: &str) -> Option<Vec<u8>> {
        let wasm = std::fs::read(self.blob_path(digest)?).ok()?;
        (sha256(&wasm) == digest).then_some(wasm)
    }

    fn keep(&self, digest: &str, wasm: &[u8]) {
        if let Some(path) = self.blob_path(digest)
            && let Err(e) = write_atomically(&path, wasm)
        {
            tracing::warn!("cannot keep {digest} in {}: {e:#}", path.display());
        }
    }

    fn remember(&self, reference: &Reference, pinned: &str, layer: &str) {
        let resolved = Resolved {
            pinned: pinned.to_string(),
            layer: layer.to_string(),
        };
        let path = self.ref_path(reference);
        let text = serde_json::to_vec(&resolved).expect("plain data serializes");
        if let Err(e) = write_atomically(&path, &text) {
            tracing::warn!("cannot record {} in {}: {e:#}", reference.whole(), path.display());
        }
    }

    fn blob_path(&self, digest: &str) -> Option<PathBuf> {
        let hex = digest.strip_prefix("sha256:")?;
        hex.bytes()
            .all(|b| b.is_ascii_hexdigit())
            .then(|| self.dir.join("blobs").join(format!("{hex}.wasm")))
    }

    fn ref_path(&self, reference: &Reference) -> PathBuf {
        let key = digest(reference.whole().as_bytes());
        self.dir.join("refs").join(format!("{key}.json"))
    }
}

/// A reference, with or without `oci://`.
pub fn parse(reference: &str) -> Result<Reference, OciError> {
    let bare = reference.strip_prefix(OCI_SCHEME).unwrap_or(reference);
    Reference::from_str(bare).map_err(|e| {
        OciError::BadReference(format!(
            "{reference:?} is not a reference such as oci://registry.example.com/shop/users:1.4.0: {e}"
        ))
    })
}

fn repository_of(reference: &Reference) -> String {
    format!("{}/{}", reference.registry(), reference.repository())
}

/// The one `application/wasm` layer of a Wasm component artifact.
fn wasm_layer(reference: &str, raw: &[u8]) -> Result<OciDescriptor, OciError> {
    let wrong = |detail: String| OciError::WrongMediaType {
        reference: reference.to_string(),
        detail,
    };
    let manifest: OciImageManifest =
        serde_json::from_slice(raw).map_err(|e| wrong(format!("its manifest does not parse: {e}")))?;
    if manifest.config.media_type != CONFIG_MEDIA_TYPE {
        return Err(wrong(format!(
            "its config is {}, not {CONFIG_MEDIA_TYPE}",
            manifest.config.media_type
        )));
    }
    match manifest.layers.as_slice() {
        [layer] if layer.media_type == LAYER_MEDIA_TYPE => Ok(layer.clone()),
        [layer] => Err(wrong(format!(
            "its layer is {}, not {LAYER_MEDIA_TYPE}",
            layer.media_type
        ))),
        layers => Err(wrong(format!("it has {} layers, not one", layers.len()))),
    }
}

/// The config of a Wasm OCI artifact for a component.
fn wasm_config(layer_digest: &str) -> Vec<u8> {
    let created = humantime::format_rfc3339_seconds(std::time::SystemTime::now()).to_string();
    let config = serde_json::json!({
        "created": created,
        "architecture": "wasm",
        "os": "wasip2",
        "layerDigests": [layer_digest],
    });
    serde_json::to_vec(&config).expect("plain data serializes")
}

/// The credentials for `reference`'s registry: from the environment, else
/// from Docker's config file, else none.
fn credentials(reference: &Reference) -> RegistryAuth {
    let env = |name| std::env::var(name).ok().filter(|v: &String| !v.is_empty());
    if let Some(token) = env(TOKEN_ENV) {
        return RegistryAuth::Bearer(token);
    }
    if let (Some(user), Some(password)) = (env(USERNAME_ENV), env(PASSWORD_ENV)) {
        return RegistryAuth::Basic(user, password);
    }
    match docker_credential::get_credential(reference.resolve_registry()) {
        Ok(docker_credential::DockerCredential::UsernamePassword(user, password)) => {
            RegistryAuth::Basic(user, password)
        }
        Ok(docker_credential::DockerCredential::IdentityToken(token)) => RegistryAuth::Bearer(token),
        Err(_) => RegistryAuth::Anonymous,
    }
}

/// An error from the client, in the terms an operator acts on.
fn classify(reference: &str, error: OciDistributionError) -> OciError {
    let reference = reference.to_string();
    let detail = error.to_string();
    match &error {
        OciDistributionError::ImageManifestNotFoundError(_) => OciError::NotFound { reference },
        OciDistributionError::AuthenticationFailure(_) | OciDistributionError::UnauthorizedError { .. } => {
            OciError::Unauthorized { reference, detail }
        }
        OciDistributionError::RegistryError { envelope, .. } => {
            let codes: Vec<&OciErrorCode> = envelope.errors.iter().map(|e| &e.code).collect();
            if codes
                .iter()
                .any(|c| matches!(c, OciErrorCode::Unauthorized | OciErrorCode::Denied))
            {
                OciError::Unauthorized { reference, detail }
            } else if codes.iter().any(|c| {
                matches!(
                    c,
                    OciErrorCode::ManifestUnknown | OciErrorCode::NameUnknown | OciErrorCode::BlobUnknown
                )
            }) {
                OciError::NotFound { reference }
            } else {
                OciError::Other { reference, detail }
            }
        }
        OciDistributionError::ServerError { code: 401 | 403, .. } => OciError::Unauthorized { reference, detail },
        OciDistributionError::ServerError { code: 404, .. } => OciError::NotFound { reference },
        OciDistributionError::ServerError { code: 500.., .. } => OciError::Unreachable { reference, detail },
        OciDistributionError::DigestError(_) => OciError::DigestMismatch {
            reference,
            expected: "the digest the reference pins".into(),
            got: detail,
        },
        OciDistributionError::RequestError(e) if e.is_connect() || e.is_timeout() => OciError::Unreachable {
            reference,
            detail: source_chain(e),
        },
        OciDistributionError::RequestError(e) => OciError::Other {
            reference,
            detail: source_chain(e),
        },
        _ => OciError::Other { reference, detail },
    }
}

/// An error with its causes, which for TLS and connections say what failed.
fn source_chain(error: &dyn std::error::Error) -> String {
    let mut text = error.to_string();
    let mut cause = error.source();
    while let Some(e) = cause {
        text.push_str(": ");
        text.push_str(&e.to_string());
        cause = e.source();
    }
    text
}

/// `sha256:<hex>`, as OCI names content.
pub fn sha256(bytes: &[u8]) -> String {
    format!("sha256:{}", digest(bytes))
}
