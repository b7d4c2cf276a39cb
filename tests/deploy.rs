//! The deployment files: the Kubernetes manifests against the API's schemas
//! (kubernetes-validate) and against each other, the config the pods
//! render, the HAProxy config, the Dockerfile and the image it builds
//! (with podman, on a Debian base made by mmdebstrap).

use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::process::Command;

use serde_json::{Value, json};

use crate::support::{check_config, find_program, output_of, wasm, which, workspace};

/// The Kubernetes versions the manifests must be valid for: an old one still
/// in use, and the newest the validator knows.
const KUBERNETES_VERSIONS: [&str; 2] = ["1.30.0", "1.37.0"];

/// Kinds from CRDs, which the validator has no schema for: their fields are
/// checked by the tests below instead.
const CUSTOM_KINDS: [&str; 1] = ["ServiceMonitor"];

/// The addresses deploy/haproxy/haproxy.cfg reads from the environment.
const HAPROXY_ENV: [(&str, &str); 7] = [
    ("CORRAL_LISTEN", "127.0.0.1:8000"),
    ("CORRAL_1", "127.0.0.1:8081"),
    ("CORRAL_1_ADMIN", "9081"),
    ("CORRAL_2", "127.0.0.1:8082"),
    ("CORRAL_2_ADMIN", "9082"),
    ("CORRAL_3", "127.0.0.1:8083"),
    ("CORRAL_3_ADMIN", "9083"),
];

/// A program of the Python environment `just toolchains` installs.
fn toolchain(program: &str) -> PathBuf {
    let path = workspace().join("target/toolchains/python/bin").join(program);
    assert!(
        path.is_file(),
        "{} is missing: run `just toolchains` first",
        path.display()
    );
    path
}

fn k8s_dir() -> PathBuf {
    workspace().join("deploy/k8s")
}

/// deploy/k8s/*.yaml, in name order.
fn manifests() -> Vec<PathBuf> {
    let mut files: Vec<PathBuf> = std::fs::read_dir(k8s_dir())
        .unwrap()
        .map(|entry| entry.unwrap().path())
        .filter(|path| path.extension().is_some_and(|ext| ext == "yaml"))
        .collect();
    files.sort();
    files
}

/// The documents of a YAML file as JSON, read by PyYAML (which
/// kubernetes-validate brings into its environment).
fn yaml_documents(path: &Path) -> Vec<Value> {
    let script = "import json, sys, yaml\n\
                  json.dump([d for d in yaml.safe_load_all(open(sys.argv[1])) if d], sys.stdout)";
    let output = Command::new(toolchain("python"))
        .arg("-c")
        .arg(script)
        .arg(path)
        .output()
        .unwrap();
    assert!(
        output.status.success(),
        "{} is not YAML: {}",
        path.display(),
        String::from_utf8_lossy(&output.stderr)
    );
    serde_json::from_slice(&output.stdout).unwrap()
}

/// The resource of `kind` in deploy/k8s/`file`.
fn resource(file: &str, kind: &str) -> Value {
    yaml_documents(&k8s_dir().join(file))
        .into_iter()
        .find(|doc| doc["kind"] == kind)
        .unwrap_or_else(|| panic!("no {kind} in deploy/k8s/{file}"))
}

/// kubernetes-validate, strict (unknown fields are errors), on `files`:
/// whether it passed, and what it said.
fn validate(files: &[PathBuf]) -> (bool, String) {
    let mut command = Command::new(toolchain("kubernetes-validate"));
    command.arg("--strict");
    for version in KUBERNETES_VERSIONS {
        command.args(["--kubernetes-version", version]);
    }
    output_of(command.args(files))
}

#[test]
fn kubernetes_manifests_pass_the_schema_validator() {
    let files = manifests();
    let (ok, output) = validate(&files);
    assert!(ok, "kubernetes-validate refused deploy/k8s:\n{output}");
    // Every resource of a built-in kind was checked against every version,
    // not skipped for want of a schema.
    let mut checked = 0;
    for file in &files {
        for doc in yaml_documents(file) {
            let kind = doc["kind"].as_str().unwrap();
            let name = doc["metadata"]["name"].as_str().unwrap();
            assert!(
                doc["metadata"]["namespace"].is_null(),
                "{kind}/{name} names a namespace"
            );
            if CUSTOM_KINDS.contains(&kind) {
                continue;
            }
            for version in KUBERNETES_VERSIONS {
                let minor = version.rsplit_once('.').unwrap().0;
                let line = format!(
                    "{} passed for resource {}/{name} against version {minor}",
                    file.display(),
                    kind.to_lowercase()
                );
                assert!(output.contains(&line), "missing {line:?} in:\n{output}");
            }
            checked += 1;
        }
    }
    assert!(checked >= 10, "only {checked} resources checked:\n{output}");
    // Its only warnings are about the kinds it has no schema for.
    for line in output.lines().filter(|l| l.starts_with("WARN")) {
        assert!(
            CUSTOM_KINDS.iter().any(|kind| line.contains(&format!("kind {kind} "))),
            "unexpected warning: {line}"
        );
    }

    // It refuses a broken StatefulSet, so the pass above means something.
    let dir = tempfile::tempdir().unwrap();
    let statefulset = std::fs::read_to_string(k8s_dir().join("statefulset.yaml")).unwrap();
    for (file, from, to) in [
        ("wrong-type.yaml", "replicas: 3", "replicas: \"three\""),
        ("unknown-field.yaml", "readinessProbe:", "readynessProbe:"),
    ] {
        assert!(statefulset.contains(from), "no {from:?} in statefulset.yaml");
        let broken = dir.path().join(file);
        std::fs::write(&broken, statefulset.replacen(from, to, 1)).unwrap();
        let (ok, output) = validate(&[broken]);
        assert!(!ok, "kubernetes-validate passed a StatefulSet with {to:?}:\n{output}");
        assert!(output.contains("ERROR"), "{output}");
    }
}

#[test]
fn the_statefulset_probes_the_admin_health_routes() {
    let set = resource("statefulset.yaml", "StatefulSet");
    let spec = &set["spec"];
    assert_eq!(spec["replicas"], 3);
    assert_eq!(spec["serviceName"], "corral-hosts");
    let pod = &spec["template"]["spec"];
    let container = &pod["containers"][0];
    assert_eq!(container["name"], "corral");
    let port = |name: &str| {
        container["ports"]
            .as_array()
            .unwrap()
            .iter()
            .find(|p| p["name"] == name)
            .map(|p| p["containerPort"].clone())
    };
    assert_eq!(port("http"), Some(json!(8080)), "{container}");
    assert_eq!(port("admin"), Some(json!(9090)), "{container}");
    for (probe, path) in [
        ("readinessProbe", "/readyz"),
        ("livenessProbe", "/healthz"),
        ("startupProbe", "/healthz"),
    ] {
        let get = &container[probe]["httpGet"];
        assert_eq!(get["path"], path, "{probe}: {get}");
        assert_eq!(get["port"], "admin", "{probe}: {get}");
    }
    // Each pod has a volume of its own, at the config's data_dir.
    let claims = spec["volumeClaimTemplates"]
        .as_array()
        .expect("no volumeClaimTemplates");
    assert!(claims.iter().any(|c| c["metadata"]["name"] == "data"), "{claims:?}");
    let mounts = container["volumeMounts"].as_array().unwrap();
    assert!(
        mounts.iter().any(|m| m["name"] == "data" && m["mountPath"] == "/data"),
        "{mounts:?}"
    );
    // Not root, and nothing written outside its volumes.
    assert_eq!(pod["securityContext"]["runAsNonRoot"], true, "{pod}");
    assert_eq!(pod["securityContext"]["runAsUser"], 10001, "{pod}");
    assert_eq!(
        container["securityContext"]["readOnlyRootFilesystem"], true,
        "{container}"
    );
    assert_eq!(
        container["securityContext"]["allowPrivilegeEscalation"], false,
        "{container}"
    );
    // The tokens come from keys the Secret has.
    let secret = resource("secret.yaml", "Secret");
    for env in container["env"].as_array().unwrap() {
        let key = &env["valueFrom"]["secretKeyRef"];
        if key.is_null() {
            continue;
        }
        assert_eq!(key["name"], secret["metadata"]["name"], "{env}");
        let name = key["key"].as_str().unwrap();
        assert!(secret["stringData"][name].is_string(), "the Secret has no {name}");
    }
}

/// A container's config with its paths on this machine: the built
/// components, and the data in the check's folder.
fn local(toml: &str) -> String {
    let mut toml = toml.replace("\"/data", "\"data");
    for name in ["users", "orders"] {
        toml = toml.replace(
            &format!("\"/app/components/{name}.wasm\""),
            &format!("{:?}", wasm(name).display().to_string()),
        );
    }
    let mut settings = toml.lines().filter(|l| !l.trim_start().starts_with('#'));
    assert!(
        !settings.any(|l| l.contains("/app/")),
        "a path left to replace:\n{toml}"
    );
    toml
}

#[test]
fn the_pods_config_passes_check_once_rendered() {
    let template = resource("configmap.yaml", "ConfigMap")["data"]["corral.toml"]
        .as_str()
        .expect("no corral.toml in the ConfigMap")
        .to_string();
    assert!(template.contains("node = \"@NODE@\""), "{template}");
    // The pod writes the template with its name where @NODE@ is, and serves that.
    let set = resource("statefulset.yaml", "StatefulSet");
    let args = set["spec"]["template"]["spec"]["containers"][0]["args"].to_string();
    assert!(args.contains("s/@NODE@/${POD_NAME}/g"), "{args}");
    assert!(args.contains("--config /tmp/corral.toml"), "{args}");
    let (ok, output) = check_config(&local(&template.replace("@NODE@", "corral-0")));
    assert!(ok, "the ConfigMap's config, rendered for corral-0:\n{output}");

    // The image's default config too.
    let image = std::fs::read_to_string(workspace().join("deploy/docker/corral.toml")).unwrap();
    let (ok, output) = check_config(&local(&image));
    assert!(ok, "deploy/docker/corral.toml:\n{output}");
}

#[test]
fn the_service_monitor_scrapes_the_admin_port_with_the_admin_token() {
    let monitor = resource("servicemonitor.yaml", "ServiceMonitor");
    assert_eq!(monitor["apiVersion"], "monitoring.coreos.com/v1");
    let endpoints = monitor["spec"]["endpoints"].as_array().expect("no endpoints");
    assert_eq!(endpoints.len(), 1, "{monitor}");
    let endpoint = &endpoints[0];
    assert_eq!(endpoint["port"], "admin", "{endpoint}");
    assert_eq!(endpoint["path"], "/metrics", "{endpoint}");
    assert_eq!(endpoint["authorization"]["type"], "Bearer", "{endpoint}");
    // The credentials are the key the hosts read their admin token from.
    let credentials = &endpoint["authorization"]["credentials"];
    let secret = resource("secret.yaml", "Secret");
    assert_eq!(credentials["name"], secret["metadata"]["name"], "{endpoint}");
    let set = resource("statefulset.yaml", "StatefulSet");
    let env = set["spec"]["template"]["spec"]["containers"][0]["env"]
        .as_array()
        .unwrap()
        .iter()
        .find(|e| e["name"] == "CORRAL_ADMIN_TOKEN")
        .expect("no CORRAL_ADMIN_TOKEN in the StatefulSet")
        .clone();
    assert_eq!(env["valueFrom"]["secretKeyRef"]["key"], credentials["key"], "{env}");
    let config = resource("configmap.yaml", "ConfigMap");
    let template = config["data"]["corral.toml"].as_str().unwrap();
    assert!(template.contains("token_env = \"CORRAL_ADMIN_TOKEN\""), "{template}");
    // It selects one Service, the headless one, which has the admin port.
    let selector = monitor["spec"]["selector"]["matchLabels"]
        .as_object()
        .expect("no matchLabels");
    let services = yaml_documents(&k8s_dir().join("services.yaml"));
    let selected: Vec<&Value> = services
        .iter()
        .filter(|s| selector.iter().all(|(k, v)| &s["metadata"]["labels"][k] == v))
        .collect();
    assert_eq!(selected.len(), 1, "{selected:?}");
    assert_eq!(selected[0]["metadata"]["name"], "corral-hosts");
    let ports = selected[0]["spec"]["ports"].as_array().unwrap();
    assert!(
        ports.iter().any(|p| p["name"] == "admin" && p["targetPort"] == "admin"),
        "{ports:?}"
    );
}

/// `haproxy -c` on deploy/haproxy/haproxy.cfg with `env`, and none of
/// HAPROXY_ENV's variables but those.
fn haproxy_check(env: &[(&str, &str)]) -> (bool, String) {
    let mut command = Command::new(find_program("haproxy"));
    command
        .arg("-c")
        .arg("-f")
        .arg(workspace().join("deploy/haproxy/haproxy.cfg"));
    for (var, _) in HAPROXY_ENV {
        command.env_remove(var);
    }
    output_of(command.envs(env.iter().copied()))
}

#[test]
fn the_haproxy_config_is_valid() {
    let text = std::fs::read_to_string(workspace().join("deploy/haproxy/haproxy.cfg")).unwrap();
    assert!(text.lines().any(|l| l.trim() == "balance roundrobin"), "{text}");
    let (ok, output) = haproxy_check(&HAPROXY_ENV);
    assert!(ok, "haproxy -c refused deploy/haproxy/haproxy.cfg:\n{output}");
    // Without the addresses it is refused: the check did read them.
    let (ok, output) = haproxy_check(&[]);
    assert!(!ok, "haproxy -c passed without the addresses:\n{output}");
}

/// The files the context of the Dockerfile's runtime-prebuilt target holds:
/// the binary, the components and the config (`just image` copies them).
const PREBUILT_FILES: [&str; 4] = ["corral", "users.wasm", "orders.wasm", "corral.toml"];

/// The base image `just image` builds on: Debian's minbase with the
/// certificates and curl.
const BASE_IMAGE: &str = "localhost/debian-base:bookworm";

/// A Dockerfile's instructions, as (keyword in capitals, arguments), with
/// continued lines joined and comments left out.
fn dockerfile_instructions(text: &str) -> Vec<(String, String)> {
    let mut instructions = Vec::new();
    let mut current = String::new();
    for line in text.lines().map(str::trim) {
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        match line.strip_suffix('\\') {
            Some(part) => {
                current.push_str(part);
                current.push(' ');
            }
            None => {
                current.push_str(line);
                let (keyword, args) = current
                    .split_once(char::is_whitespace)
                    .unwrap_or((current.as_str(), ""));
                instructions.push((keyword.to_ascii_uppercase(), args.trim().to_string()));
                current.clear();
            }
        }
    }
    instructions
}

/// One stage of a Dockerfile: its name (or number), the image or stage it
/// starts from, and its instructions.
struct Stage {
    name: String,
    from: String,
    instructions: Vec<(String, String)>,
}

/// The instructions before a Dockerfile's first FROM (its global ARGs), and
/// its stages in order.
fn dockerfile_stages(text: &str) -> (Vec<(String, String)>, Vec<Stage>) {
    let mut globals = Vec::new();
    let mut stages: Vec<Stage> = Vec::new();
    for (keyword, args) in dockerfile_instructions(text) {
        if keyword != "FROM" {
            match stages.last_mut() {
                Some(stage) => stage.instructions.push((keyword, args)),
                None => globals.push((keyword, args)),
            }
            continue;
        }
        let words: Vec<&str> = args.split_whitespace().filter(|w| !w.starts_with("--")).collect();
        let name = match words.as_slice() {
            [_, as_, name] if as_.eq_ignore_ascii_case("as") => name.to_string(),
            _ => stages.len().to_string(),
        };
        let from = words.first().expect("FROM without an image").to_string();
        stages.push(Stage {
            name,
            from,
            instructions: Vec::new(),
        });
    }
    (globals, stages)
}

/// The instructions an image built to the stage `target` gets: those of the
/// stages it starts from, then its own.
fn image_instructions(stages: &[Stage], target: &str) -> Vec<(String, String)> {
    let mut index = stages
        .iter()
        .position(|s| s.name == target)
        .unwrap_or_else(|| panic!("no stage {target}"));
    let mut chain = vec![&stages[index]];
    while let Some(parent) = stages[..index].iter().position(|s| s.name == stages[index].from) {
        index = parent;
        chain.push(&stages[index]);
    }
    chain
        .into_iter()
        .rev()
        .flat_map(|s| s.instructions.iter().cloned())
        .collect()
}

/// The arguments of the last `keyword` in `instructions`.
fn last<'a>(instructions: &'a [(String, String)], keyword: &str) -> Option<&'a str> {
    instructions
        .iter()
        .rev()
        .find(|(k, _)| k == keyword)
        .map(|(_, args)| args.as_str())
}

/// Checks the COPY instructions of `stages[index]`: a `--from` names an
/// earlier stage, and other sources are in the stage's build context.
fn check_copies(stages: &[Stage], index: usize) {
    let stage = &stages[index];
    let earlier = &stages[..index];
    for (_, args) in stage.instructions.iter().filter(|(k, _)| k == "COPY") {
        if let Some(from) = args.split_whitespace().find_map(|w| w.strip_prefix("--from=")) {
            let by_number = from.parse::<usize>().is_ok_and(|n| n < index);
            assert!(
                by_number || earlier.iter().any(|s| s.name == from),
                "COPY --from={from} names no stage before it"
            );
            continue;
        }
        let words: Vec<&str> = args.split_whitespace().filter(|w| !w.starts_with("--")).collect();
        let (_, sources) = words.split_last().expect("COPY without arguments");
        for source in sources {
            if stage.name == "runtime-prebuilt" {
                assert!(
                    PREBUILT_FILES.contains(source),
                    "COPY {source} in runtime-prebuilt, whose context holds only {PREBUILT_FILES:?}"
                );
            } else {
                assert!(workspace().join(source).exists(), "COPY {source}: no such file");
            }
        }
    }
}

#[test]
fn the_dockerfile_runs_as_non_root_with_a_data_volume_and_health_check() {
    let text = std::fs::read_to_string(workspace().join("Dockerfile")).unwrap();
    let (globals, stages) = dockerfile_stages(&text);
    let names: Vec<&str> = stages.iter().map(|s| s.name.as_str()).collect();
    // The base images are build arguments with defaults.
    for stage in &stages {
        let Some(arg) = stage.from.strip_prefix("${").and_then(|a| a.strip_suffix('}')) else {
            continue;
        };
        let declared = globals
            .iter()
            .any(|(k, a)| k == "ARG" && a.strip_prefix(arg).is_some_and(|d| d.len() > 1 && d.starts_with('=')));
        assert!(
            declared,
            "FROM {}: no ARG {arg}=<default> before the first FROM",
            stage.from
        );
    }
    for index in 0..stages.len() {
        check_copies(&stages, index);
    }
    // The default target builds everything; the prebuilt one comes before the
    // builder, so building it never needs a Rust toolchain.
    assert_eq!(names.last(), Some(&"runtime"), "{names:?}");
    let position = |name: &str| {
        names
            .iter()
            .position(|n| *n == name)
            .unwrap_or_else(|| panic!("no stage {name}: {names:?}"))
    };
    assert!(position("runtime-prebuilt") < position("builder"), "{names:?}");
    for target in ["runtime", "runtime-prebuilt"] {
        let runtime = image_instructions(&stages, target);
        let user = last(&runtime, "USER").unwrap_or_else(|| panic!("{target} sets no USER, so it runs as root"));
        let uid = user.split(':').next().unwrap();
        assert!(uid != "root" && uid != "0", "{target}: USER {user}");
        let volume = last(&runtime, "VOLUME").unwrap_or_else(|| panic!("{target}: no VOLUME"));
        assert!(
            volume
                .split(|c: char| c.is_whitespace() || "[]\",".contains(c))
                .any(|v| v == "/data"),
            "{target}: VOLUME {volume}"
        );
        let health = last(&runtime, "HEALTHCHECK").unwrap_or_else(|| panic!("{target}: no HEALTHCHECK"));
        assert!(
            !health.eq_ignore_ascii_case("none") && health.contains("/healthz"),
            "{target}: HEALTHCHECK {health}"
        );
        assert_eq!(last(&runtime, "ENTRYPOINT"), Some(r#"["corral"]"#), "{target}");
    }
}

/// A program of a Debian package, which `just servers` installs.
fn debian_program(program: &str, package: &str) -> PathBuf {
    which(program).unwrap_or_else(|| {
        panic!("{program} is not installed: run `just servers`, which installs the Debian package {package}")
    })
}

/// The Debian base as a tarball: made by mmdebstrap the first time (it
/// takes about a minute), then kept in target/image/, as `just image` does.
fn debian_base_tar() -> PathBuf {
    let tar = workspace().join("target/image/base.tar");
    if tar.is_file() {
        return tar;
    }
    let mmdebstrap = debian_program("mmdebstrap", "mmdebstrap");
    std::fs::create_dir_all(tar.parent().unwrap()).unwrap();
    let partial = tar.with_extension(format!("{}.part", std::process::id()));
    let (ok, output) = output_of(
        Command::new(mmdebstrap)
            .args([
                "--variant=minbase",
                "--include=ca-certificates,curl",
                "--format=tar",
                "bookworm",
            ])
            .arg(&partial),
    );
    assert!(ok, "mmdebstrap could not make the Debian base:\n{output}");
    std::fs::rename(&partial, &tar).unwrap();
    tar
}

/// podman with its images, containers and state in a temporary folder, so
/// a test leaves no image on the machine.
struct Podman {
    program: PathBuf,
    dir: tempfile::TempDir,
}

impl Podman {
    fn new() -> Podman {
        Podman {
            program: debian_program("podman", "podman"),
            dir: tempfile::tempdir().unwrap(),
        }
    }

    fn command(&self) -> Command {
        let mut command = Command::new(&self.program);
        for (option, folder) in [("--root", "root"), ("--runroot", "run"), ("--tmpdir", "tmp")] {
            command.arg(option).arg(self.dir.path().join(folder));
        }
        command
    }

    /// Runs `podman args` to its end; returns what it printed on stdout.
    fn run(&self, args: &[&str]) -> String {
        let output = self.command().args(args).output().unwrap();
        assert!(
            output.status.success(),
            "podman {}:\n{}",
            args.join(" "),
            String::from_utf8_lossy(&output.stderr)
        );
        String::from_utf8(output.stdout).unwrap()
    }
}

impl Drop for Podman {
    /// Unmounts what a failed test left mounted, so the folder can go.
    fn drop(&mut self) {
        let _ = self.command().args(["unmount", "--all"]).output();
    }
}

#[test]
fn the_image_builds_from_prebuilt_files_and_runs_corral_as_uid_10001() {
    let podman = Podman::new();
    let base = debian_base_tar();
    podman.run(&["import", "--quiet", base.to_str().unwrap(), BASE_IMAGE]);
    // The context `just image` makes, from what `cargo test --release` built.
    let context = podman.dir.path().join("context");
    std::fs::create_dir(&context).unwrap();
    let built = [
        PathBuf::from(env!("CARGO_BIN_EXE_corral")),
        wasm("users"),
        wasm("orders"),
        workspace().join("deploy/docker/corral.toml"),
    ];
    for (source, name) in built.iter().zip(PREBUILT_FILES) {
        std::fs::copy(source, context.join(name)).unwrap();
    }
    let tag = "localhost/corral:test";
    // Docker's format, as only it keeps the HEALTHCHECK.
    podman.run(&[
        "build",
        "--isolation=chroot",
        "--format=docker",
        "--target=runtime-prebuilt",
        &format!("--build-arg=RUNTIME_IMAGE={BASE_IMAGE}"),
        &format!("--tag={tag}"),
        &format!("--file={}", workspace().join("Dockerfile").display()),
        context.to_str().unwrap(),
    ]);

    let inspected: Value = serde_json::from_str(&podman.run(&["image", "inspect", tag])).unwrap();
    let config = &inspected[0]["Config"];
    assert_eq!(config["User"], "10001", "{config}");
    assert!(config["Volumes"]["/data"].is_object(), "{config}");
    for port in ["8080/tcp", "9090/tcp"] {
        assert!(config["ExposedPorts"][port].is_object(), "{config}");
    }
    assert_eq!(config["Entrypoint"], json!(["corral"]), "{config}");
    assert_eq!(
        config["Cmd"],
        json!(["serve", "--config", "/app/corral.toml"]),
        "{config}"
    );
    let health = &inspected[0]["Healthcheck"];
    assert!(
        health["Test"].to_string().contains("http://127.0.0.1:9090/healthz"),
        "{health}"
    );

    // Its files, through a container made (never started) from it, run as
    // its user with chroot.
    let container = podman.run(&["create", "--no-healthcheck", tag]).trim().to_string();
    let root = PathBuf::from(podman.run(&["mount", &container]).trim());
    let as_corral = |args: &[&str]| {
        output_of(
            Command::new(find_program("chroot"))
                .arg("--userspec=10001:10001")
                .arg(&root)
                .args(args),
        )
    };
    let (ok, version) = as_corral(&["/usr/local/bin/corral", "--version"]);
    assert!(ok, "{version}");
    assert_eq!(version.trim(), format!("corral {}", env!("CARGO_PKG_VERSION")));
    assert_eq!(std::fs::metadata(root.join("data")).unwrap().uid(), 10001);
    // The config names the components the image has, and the cache it
    // writes under /data is corral's to write.
    let (ok, output) = as_corral(&["/usr/local/bin/corral", "check", "--config", "/app/corral.toml"]);
    assert!(ok && output.contains("/app/corral.toml: ok"), "{output}");
    // The health check's curl is there.
    let (ok, output) = as_corral(&["/usr/bin/curl", "--version"]);
    assert!(ok, "{output}");
    podman.run(&["unmount", &container]);
}
