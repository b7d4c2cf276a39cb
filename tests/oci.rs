//! Components in an OCI registry: a real registry (Debian's
//! `docker-registry`, distribution 2.8) on a loopback port with TLS under a
//! certificate authority made here and htpasswd passwords; `skopeo` as a
//! second client that reads and writes the same artifacts.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Instant;

use serde_json::{Value, json};

use crate::cluster::Daemon;
use crate::support::{
    admin_toml, assert_clean_switch, find_program, host, output_of, run_corral, under_load, variant, wasm,
};

const USER: &str = "shop";
const PASSWORD: &str = "registry-password-1";

/// A registry the test started, and what a client needs to reach it.
struct Registry {
    daemon: Daemon,
    addr: SocketAddr,
}

impl Registry {
    fn start() -> Registry {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().to_path_buf();
        make_certificates(&path);
        let (ok, htpasswd) = output_of(Command::new(find_program("htpasswd")).args(["-Bbn", USER, PASSWORD]));
        assert!(ok, "{htpasswd}");
        std::fs::write(path.join("htpasswd"), htpasswd.trim()).unwrap();
        let daemon = Daemon::start(
            "docker-registry",
            |addr| {
                let config = format!(
                    "version: 0.1\nstorage: {{ filesystem: {{ rootdirectory: {data} }} }}\n\
                     http: {{ addr: {addr}, tls: {{ certificate: {crt}, key: {key} }} }}\n\
                     auth: {{ htpasswd: {{ realm: test, path: {htpasswd} }} }}\n",
                    data = path.join("data").display(),
                    crt = path.join("registry.crt").display(),
                    key = path.join("registry.key").display(),
                    htpasswd = path.join("htpasswd").display(),
                );
                std::fs::write(path.join("config.yml"), config).unwrap();
                vec!["serve".into(), "config.yml".into()]
            },
            dir,
        );
        Registry {
            addr: daemon.addr,
            daemon,
        }
    }

    fn dir(&self) -> &Path {
        self.daemon.dir()
    }

    fn reference(&self, repository_and_tag: &str) -> String {
        format!("oci://{}/{repository_and_tag}", self.addr)
    }

    fn ca_file(&self) -> PathBuf {
        self.dir().join("ca.crt")
    }

    /// Runs `corral` with the registry's password and CA, and a cache of its own.
    fn corral(&self, args: &[&str], password: &str) -> (bool, String) {
        let cache = self.dir().join(format!("cache-{}", rand_suffix()));
        let ca = self.ca_file();
        let mut all: Vec<&std::ffi::OsStr> = args.iter().map(|a| a.as_ref()).collect();
        all.extend(["--ca-file".as_ref(), ca.as_os_str()]);
        run_corral(
            &all,
            &[
                ("CORRAL_REGISTRY_USERNAME", USER),
                ("CORRAL_REGISTRY_PASSWORD", password),
                ("XDG_CACHE_HOME", cache.to_str().unwrap()),
            ],
            self.dir(),
        )
    }

    fn push(&self, file: &Path, repository_and_tag: &str) -> String {
        let (ok, output) = self.corral(
            &["push", file.to_str().unwrap(), &self.reference(repository_and_tag)],
            PASSWORD,
        );
        assert!(ok, "{output}");
        let pinned = output
            .lines()
            .find(|l| l.starts_with("oci://"))
            .expect("the pinned reference");
        assert!(pinned.contains("@sha256:"), "{output}");
        pinned.to_string()
    }

    /// `skopeo`, with the registry's CA in the folder `--cert-dir` takes.
    fn skopeo(&self, args: &[&str]) -> (bool, String) {
        let certs = self.dir().join("certs");
        std::fs::create_dir_all(&certs).unwrap();
        std::fs::copy(self.ca_file(), certs.join("ca.crt")).unwrap();
        output_of(Command::new(find_program("skopeo")).args(args))
    }

    /// The registry's stored copy of the blob with `digest`.
    fn blob_file(&self, digest: &str) -> PathBuf {
        let hex = digest.strip_prefix("sha256:").unwrap();
        self.dir()
            .join(format!("data/docker/registry/v2/blobs/sha256/{}/{hex}/data", &hex[..2]))
    }

    fn stop(&mut self) {
        self.daemon.stop();
    }

    /// Pushes the OCI image layout `layout` to `repository_and_tag` with skopeo.
    fn push_layout(&self, layout: &Path, repository_and_tag: &str) {
        let (ok, output) = self.skopeo(&[
            "copy",
            &format!("oci:{}:v1", layout.display()),
            &format!("docker://{}/{repository_and_tag}", self.addr),
            "--dest-creds",
            &format!("{USER}:{PASSWORD}"),
            "--dest-cert-dir",
            self.dir().join("certs").to_str().unwrap(),
        ]);
        assert!(ok, "{output}");
    }
}

fn rand_suffix() -> u64 {
    use std::hash::{BuildHasher, RandomState};
    RandomState::new().hash_one(Instant::now())
}

/// A certificate authority and a certificate for 127.0.0.1 signed by it.
fn make_certificates(dir: &Path) {
    let openssl = |args: &[&str]| {
        let (ok, output) = output_of(Command::new(find_program("openssl")).args(args).current_dir(dir));
        assert!(ok, "openssl {args:?}: {output}");
    };
    openssl(&[
        "req",
        "-x509",
        "-newkey",
        "rsa:2048",
        "-nodes",
        "-keyout",
        "ca.key",
        "-out",
        "ca.crt",
        "-days",
        "2",
        "-subj",
        "/CN=corral test CA",
    ]);
    openssl(&[
        "req",
        "-newkey",
        "rsa:2048",
        "-nodes",
        "-keyout",
        "registry.key",
        "-out",
        "registry.csr",
        "-subj",
        "/CN=127.0.0.1",
    ]);
    std::fs::write(dir.join("san.ext"), "subjectAltName=IP:127.0.0.1,DNS:localhost\n").unwrap();
    openssl(&[
        "x509",
        "-req",
        "-in",
        "registry.csr",
        "-CA",
        "ca.crt",
        "-CAkey",
        "ca.key",
        "-CAcreateserial",
        "-out",
        "registry.crt",
        "-days",
        "2",
        "-extfile",
        "san.ext",
    ]);
}

/// An OCI image layout holding one artifact: `layer` under
/// `layer_media_type`, with a Wasm config. Written by hand, pushed by
/// skopeo: an artifact corral did not make.
fn oci_layout(dir: &Path, layer: &[u8], layer_media_type: &str) -> PathBuf {
    let root = dir.join(format!("layout-{}", rand_suffix()));
    let blobs = root.join("blobs/sha256");
    std::fs::create_dir_all(&blobs).unwrap();
    let put = |bytes: &[u8]| {
        let hex = sha256_hex(bytes);
        std::fs::write(blobs.join(&hex), bytes).unwrap();
        (format!("sha256:{hex}"), bytes.len())
    };
    let (layer_digest, layer_size) = put(layer);
    let config = json!({ "architecture": "wasm", "os": "wasip2", "layerDigests": [layer_digest] });
    let (config_digest, config_size) = put(&serde_json::to_vec(&config).unwrap());
    let manifest = json!({
        "schemaVersion": 2,
        "mediaType": "application/vnd.oci.image.manifest.v1+json",
        "config": { "mediaType": "application/vnd.wasm.config.v0+json", "digest": config_digest, "size": config_size },
        "layers": [{ "mediaType": layer_media_type, "digest": layer_digest, "size": layer_size }],
    });
    let (manifest_digest, manifest_size) = put(&serde_json::to_vec(&manifest).unwrap());
    let index = json!({
        "schemaVersion": 2,
        "manifests": [{
            "mediaType": "application/vnd.oci.image.manifest.v1+json",
            "digest": manifest_digest,
            "size": manifest_size,
            "annotations": { "org.opencontainers.image.ref.name": "v1" },
        }],
    });
    std::fs::write(root.join("index.json"), serde_json::to_vec(&index).unwrap()).unwrap();
    std::fs::write(root.join("oci-layout"), r#"{"imageLayoutVersion":"1.0.0"}"#).unwrap();
    root
}

fn sha256_hex(bytes: &[u8]) -> String {
    use sha2::Digest;
    sha2::Sha256::digest(bytes).iter().map(|b| format!("{b:02x}")).collect()
}

#[test]
fn a_component_goes_to_a_registry_and_comes_back_checked() {
    let registry = Registry::start();
    let users = wasm("users");
    let pinned = registry.push(&users, "shop/users:1.0");

    // Back by tag and by digest, the same bytes.
    let out = registry.dir().join("pulled.wasm");
    for reference in [registry.reference("shop/users:1.0"), pinned.clone()] {
        let (ok, output) = registry.corral(&["pull", &reference, "--out", out.to_str().unwrap()], PASSWORD);
        assert!(ok, "{output}");
        assert!(output.contains(&pinned), "{output}");
        assert_eq!(std::fs::read(&out).unwrap(), std::fs::read(&users).unwrap());
    }

    // Another client sees the Wasm OCI artifact layout.
    let (ok, raw) = registry.skopeo(&[
        "inspect",
        "--raw",
        "--creds",
        &format!("{USER}:{PASSWORD}"),
        "--cert-dir",
        registry.dir().join("certs").to_str().unwrap(),
        &format!("docker://{}/shop/users:1.0", registry.addr),
    ]);
    assert!(ok, "{raw}");
    let manifest: Value = serde_json::from_str(&raw).unwrap();
    assert_eq!(manifest["config"]["mediaType"], "application/vnd.wasm.config.v0+json");
    let layers = manifest["layers"].as_array().unwrap();
    assert_eq!(layers.len(), 1, "{manifest}");
    assert_eq!(layers[0]["mediaType"], "application/wasm");
    assert_eq!(layers[0]["size"], std::fs::metadata(&users).unwrap().len());

    // An artifact another client pushed loads, one of another kind does not.
    let hello = wasm("http-hello");
    let layout = oci_layout(registry.dir(), &std::fs::read(&hello).unwrap(), "application/wasm");
    registry.push_layout(&layout, "other/hello:v1");
    let (ok, output) = registry.corral(
        &[
            "pull",
            &registry.reference("other/hello:v1"),
            "--out",
            out.to_str().unwrap(),
        ],
        PASSWORD,
    );
    assert!(ok, "{output}");
    assert_eq!(std::fs::read(&out).unwrap(), std::fs::read(&hello).unwrap());
    let tarball = oci_layout(
        registry.dir(),
        b"not a component",
        "application/vnd.oci.image.layer.v1.tar",
    );
    registry.push_layout(&tarball, "other/image:v1");
    let (ok, output) = registry.corral(&["pull", &registry.reference("other/image:v1")], PASSWORD);
    assert!(!ok && output.contains("not a Wasm component artifact"), "{output}");
    assert!(output.contains("application/vnd.oci.image.layer.v1.tar"), "{output}");

    // Clear errors: a wrong password, a missing tag, an unknown authority.
    let (ok, output) = registry.corral(
        &["push", users.to_str().unwrap(), &registry.reference("shop/users:2.0")],
        "wrong-password",
    );
    assert!(!ok && output.contains("refused the credentials"), "{output}");
    let (ok, output) = registry.corral(&["pull", &registry.reference("shop/users:9.9")], PASSWORD);
    assert!(!ok && output.contains("not found"), "{output}");
    let (ok, output) = run_corral(
        &["pull".as_ref(), registry.reference("shop/users:1.0").as_ref()],
        &[
            ("CORRAL_REGISTRY_USERNAME", USER),
            ("CORRAL_REGISTRY_PASSWORD", PASSWORD),
        ],
        registry.dir(),
    );
    assert!(!ok && output.to_lowercase().contains("certificate"), "{output}");

    // What was downloaded is checked against the digest the manifest names:
    // the registry's stored copy altered, the pull fails and writes nothing.
    let stored = registry.blob_file(layers[0]["digest"].as_str().unwrap());
    let mut bytes = std::fs::read(&stored).unwrap();
    let last = bytes.len() - 1;
    bytes[last] ^= 0xff;
    std::fs::write(&stored, &bytes).unwrap();
    let fresh = registry.dir().join("fresh.wasm");
    let (ok, output) = registry.corral(
        &[
            "pull",
            &registry.reference("shop/users:1.0"),
            "--out",
            fresh.to_str().unwrap(),
        ],
        PASSWORD,
    );
    assert!(!ok && output.contains("digest"), "{output}");
    assert!(!fresh.exists());
}

#[test]
fn a_host_serves_and_swaps_components_from_a_registry_and_restarts_without_it() {
    let mut registry = Registry::start();
    let dir = tempfile::tempdir().unwrap();
    let (v1, v2) = (dir.path().join("v1.wasm"), dir.path().join("v2.wasm"));
    std::fs::write(&v1, variant("users", "oci-v1")).unwrap();
    std::fs::write(&v2, variant("users", "oci-v2")).unwrap();
    registry.push(&v1, "shop/users:1");
    let pinned_v2 = registry.push(&v2, "shop/users:2");
    let registries = format!(
        "[registries]\nca_file = {:?}\n",
        registry.ca_file().display().to_string()
    );
    let config = format!(
        "{registries}[components.users]\nwasm = {:?}\nroutes = [\"/users\"]\npublishes = [\"users.deleted\"]\n",
        registry.reference("shop/users:1")
    );
    let data_dir = dir.path().join("data");
    let start = || {
        host()
            .toml(&config)
            .toml(&admin_toml())
            .data_dir(&data_dir)
            .env("CORRAL_REGISTRY_USERNAME", USER)
            .env("CORRAL_REGISTRY_PASSWORD", PASSWORD)
            .start()
    };
    let serving = start();
    assert_eq!(
        serving
            .post("/users", &json!({ "name": "Ada", "email": "ada@example.com" }))
            .status,
        201
    );
    let old = serving.version_of("/users/1");
    let users = serving.component_status("users");
    assert!(users.to_string().contains("oci://"), "{users}");

    // A swap by reference, under load: the host fetches it, no request fails.
    let (samples, before, after, reply) = under_load(&serving, "/users/1", || {
        serving.admin("PUT", "/components/users", pinned_v2.clone().into_bytes())
    });
    assert_eq!(reply.status, 200, "{}", reply.text());
    let new = reply.json()["version"].as_str().unwrap()[..12].to_string();
    assert_ne!(old, new);
    assert_clean_switch(&samples, before, after, &old, &new);
    // A reference the registry does not have changes nothing.
    let reply = serving.admin(
        "PUT",
        "/components/users",
        registry.reference("shop/users:missing").into_bytes(),
    );
    reply.assert_problem(404, "not-found");
    assert_eq!(serving.version_of("/users/1"), new);
    drop(serving);

    // The registry gone, the host starts from the copies it fetched.
    registry.stop();
    let serving = start();
    assert_eq!(serving.version_of("/users/1"), new);
    assert_eq!(serving.get("/users/1").json()["name"], "Ada");
    assert!(
        serving.logs().contains("cannot be reached"),
        "the host says it used its copy"
    );
    drop(serving);

    // A host that never fetched it cannot start, and says why.
    let fresh = tempfile::tempdir().unwrap();
    let toml = format!("data_dir = \"data\"\n{config}");
    std::fs::write(fresh.path().join("corral.toml"), toml).unwrap();
    let (ok, output) = run_corral(
        &[
            "check".as_ref(),
            "--config".as_ref(),
            fresh.path().join("corral.toml").as_os_str(),
        ],
        &[],
        fresh.path(),
    );
    assert!(!ok && output.contains("cannot be reached"), "{output}");
}

#[test]
fn in_a_cluster_a_reference_is_fetched_once_and_every_host_gets_its_bytes() {
    let registry = Registry::start();
    let nats = crate::cluster::nats();
    let dir = tempfile::tempdir().unwrap();
    let (v1, v2) = (dir.path().join("v1.wasm"), dir.path().join("v2.wasm"));
    std::fs::write(&v1, variant("http-hello", "oci-cluster-v1")).unwrap();
    std::fs::write(&v2, variant("http-hello", "oci-cluster-v2")).unwrap();
    let pinned = registry.push(&v2, "shop/hello:2");
    // Both hosts start from a file; only n2 can reach the registry.
    let start = |node: &str, credentials: bool| {
        let toml = format!(
            "{}\n[cluster]\nnats = \"nats://{}\"\nnode = \"{node}\"\nnode_ttl_ms = 2000\nreplicas = 1\n\
             [components.hello]\nwasm = {:?}\nroutes = [\"/http\"]\n",
            admin_toml(),
            nats.addr,
            v1.display().to_string(),
        );
        let mut builder = host().toml(&toml);
        if credentials {
            let registries = format!(
                "[registries]\nca_file = {:?}\n",
                registry.ca_file().display().to_string()
            );
            builder = builder
                .toml(&registries)
                .env("CORRAL_REGISTRY_USERNAME", USER)
                .env("CORRAL_REGISTRY_PASSWORD", PASSWORD);
        }
        builder.start()
    };
    let n1 = start("n1", false);
    let n2 = start("n2", true);
    let old = n1.version_of("/http/hello");
    assert_eq!(n2.version_of("/http/hello"), old);

    let reply = n2.admin("PUT", "/components/hello", pinned.into_bytes());
    assert_eq!(reply.status, 200, "{}", reply.text());
    assert_eq!(reply.json()["nodes"].as_array().unwrap().len(), 2, "{}", reply.text());
    let new = n2.version_of("/http/hello");
    assert_ne!(new, old);
    assert_eq!(
        n1.version_of("/http/hello"),
        new,
        "n1 got the bytes through the cluster"
    );
    assert!(new.starts_with(&sha256_hex(&std::fs::read(&v2).unwrap())[..12]));
}
