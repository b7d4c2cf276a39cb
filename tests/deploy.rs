//! The deployment files: the Kubernetes manifests against the API's schemas
//! (kubernetes-validate) and against each other, the config the pods
//! render, the HAProxy config and the Dockerfile.

use std::path::{Path, PathBuf};
use std::process::Command;

use serde_json::{Value, json};

use crate::support::{check_config, find_program, output_of, wasm, workspace};

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

/// The arguments of the last `keyword` in `instructions`.
fn last<'a>(instructions: &'a [(String, String)], keyword: &str) -> Option<&'a str> {
    instructions
        .iter()
        .rev()
        .find(|(k, _)| k == keyword)
        .map(|(_, args)| args.as_str())
}

#[test]
fn the_dockerfile_runs_as_non_root_with_a_data_volume_and_health_check() {
    let text = std::fs::read_to_string(workspace().join("Dockerfile")).unwrap();
    let instructions = dockerfile_instructions(&text);
    // Stages by name (or number), and where the last one starts.
    let mut stages: Vec<String> = Vec::new();
    let mut runtime_start = 0;
    for (i, (keyword, args)) in instructions.iter().enumerate() {
        let words: Vec<&str> = args.split_whitespace().filter(|w| !w.starts_with("--")).collect();
        match keyword.as_str() {
            "FROM" => {
                let name = match words.as_slice() {
                    [_, as_, name] if as_.eq_ignore_ascii_case("as") => name.to_string(),
                    _ => stages.len().to_string(),
                };
                stages.push(name);
                runtime_start = i;
            }
            "COPY" => match args.split_whitespace().find_map(|w| w.strip_prefix("--from=")) {
                Some(from) => {
                    let by_number = from.parse::<usize>().is_ok_and(|n| n < stages.len());
                    assert!(
                        by_number || stages.iter().any(|s| s == from),
                        "COPY --from={from} names no stage before it (stages: {stages:?})"
                    );
                }
                // Copied from the repository: the sources exist.
                None => {
                    let (_, sources) = words.split_last().expect("COPY without arguments");
                    for source in sources {
                        assert!(workspace().join(source).exists(), "COPY {source}: no such file");
                    }
                }
            },
            _ => {}
        }
    }
    assert!(stages.len() >= 2, "not a multi-stage build: {stages:?}");
    let runtime = &instructions[runtime_start..];
    let user = last(runtime, "USER").expect("the final stage sets no USER, so it runs as root");
    let uid = user.split(':').next().unwrap();
    assert!(uid != "root" && uid != "0", "USER {user}");
    let volume = last(runtime, "VOLUME").expect("no VOLUME");
    assert!(
        volume
            .split(|c: char| c.is_whitespace() || "[]\",".contains(c))
            .any(|v| v == "/data"),
        "VOLUME {volume}"
    );
    let health = last(runtime, "HEALTHCHECK").expect("no HEALTHCHECK");
    assert!(
        !health.eq_ignore_ascii_case("none") && health.contains("/healthz"),
        "HEALTHCHECK {health}"
    );
    assert_eq!(last(runtime, "ENTRYPOINT"), Some(r#"["corral"]"#));
}
