# corral: `just build`, `just run`, `just test`.

set shell := ["bash", "-euo", "pipefail", "-c"]

wasm_target := "wasm32-wasip2"
# Every crate under components/ (a new one from `corral new` included):
# users and orders, the SDK, `chaos`, `failing-init`, `relay` and `relay-store` for tests
# and `empty` for benchmarks.
components := "--workspace --exclude corral --exclude corral-bench"

# Lists the recipes.
default:
    @just --list

# Builds the components (.wasm) and the host, in release mode.
build: build-components host-deps
    cargo build --release -p corral

# The host's SQLite has its session extension, whose Rust bindings are
# made at build time with libclang and its headers: installs libclang-dev.
host-deps:
    #!/usr/bin/env bash
    set -euo pipefail
    if command -v dpkg >/dev/null; then
        dpkg -s libclang-dev >/dev/null 2>&1 || just apt-install libclang-dev
    elif ! ldconfig -p | grep -q 'libclang[-.0-9]*\.so'; then
        echo "building the host needs libclang and its headers (LIBCLANG_PATH if they are not found)" >&2
        exit 1
    fi

# Builds only the components.
build-components:
    cargo build --release --target {{wasm_target}} {{components}}

# Builds everything, then serves config/corral.toml on 127.0.0.1:8080 with data under data/.
run: build
    ./target/release/corral serve --config config/corral.toml

# The Dockerfile's runtime-prebuilt target, from the binary and components
# built here, on a Debian base made by mmdebstrap (kept in target/image/).
# Builds the container image with podman, with no daemon and no Rust inside.
image tag="localhost/corral:dev": build
    #!/usr/bin/env bash
    set -euo pipefail
    for program in podman mmdebstrap; do
        command -v "$program" >/dev/null || { echo "$program is not installed: run 'just servers'" >&2; exit 1; }
    done
    base=localhost/debian-base:bookworm
    if ! podman image exists "$base"; then
        if [ ! -f target/image/base.tar ]; then
            mkdir -p target/image
            mmdebstrap --variant=minbase --include=ca-certificates,curl --format=tar bookworm target/image/base.tar.part
            mv target/image/base.tar.part target/image/base.tar
        fi
        podman import --quiet target/image/base.tar "$base"
    fi
    context=target/image/context
    rm -rf "$context"
    mkdir -p "$context"
    cp target/release/corral target/{{wasm_target}}/release/users.wasm \
        target/{{wasm_target}}/release/orders.wasm deploy/docker/corral.toml "$context/"
    # Docker's format, as only it keeps the HEALTHCHECK.
    podman build --isolation=chroot --format=docker --target=runtime-prebuilt \
        --build-arg=RUNTIME_IMAGE="$base" --tag={{tag}} --file=Dockerfile "$context"

# Runs every test: unit tests and the integration tests against a real host.
test: build-components host-deps toolchains servers
    cargo test --release --workspace

# The tests start real NATS, Redis and HAProxy servers and a real OCI
# registry (with skopeo as a second client, openssl and htpasswd for its TLS
# and passwords), and build the image with podman on a Debian base made by
# mmdebstrap: installs Debian's packages of those missing, with apt-get (as
# root, or with sudo).
servers:
    #!/usr/bin/env bash
    set -euo pipefail
    missing=()
    for needed in nats-server redis-server haproxy podman mmdebstrap docker-registry skopeo openssl htpasswd:apache2-utils; do
        program=${needed%%:*} package=${needed#*:}
        command -v "$program" >/dev/null || [ -x "/usr/sbin/$program" ] || missing+=("$package")
    done
    [ ${#missing[@]} -eq 0 ] && exit 0
    just apt-install "${missing[@]}"

# Installs Debian packages with apt-get, as root or with sudo.
[private]
apt-install +packages:
    #!/usr/bin/env bash
    set -euo pipefail
    packages=({{packages}})
    how="install the Debian packages ${packages[*]} (apt-get install ${packages[*]}), then run this again"
    command -v apt-get >/dev/null || { echo "corral needs ${packages[*]}, and this is no Debian system: $how" >&2; exit 1; }
    if [ "$(id -u)" -eq 0 ]; then
        as_root=()
    elif command -v sudo >/dev/null && sudo -n true 2>/dev/null; then
        as_root=(sudo)
    else
        echo "corral needs ${packages[*]}, and installing them needs root: $how" >&2
        exit 1
    fi
    echo "installing ${packages[*]}"
    "${as_root[@]}" apt-get update -qq
    "${as_root[@]}" env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${packages[@]}"

# Installs the toolchains that build the Python and JavaScript components,
# inside the repository: componentize-py in target/toolchains/python, and
# componentize-js in components/js/node_modules. kubernetes-validate, which
# the tests run on deploy/k8s/, goes into the same Python environment.
toolchains:
    test -x target/toolchains/python/bin/componentize-py || { python3 -m venv target/toolchains/python && target/toolchains/python/bin/pip install --quiet --no-cache-dir --disable-pip-version-check componentize-py==0.25.1; }
    test -x target/toolchains/python/bin/kubernetes-validate || target/toolchains/python/bin/pip install --quiet --no-cache-dir --disable-pip-version-check kubernetes-validate==1.37.0
    test -x components/js/node_modules/.bin/componentize-js || npm ci --prefix components/js --no-audit --no-fund --cache target/toolchains/npm

# Checks formatting and lints, host and components alike.
lint: host-deps
    cargo fmt --all --check
    cargo clippy --release --workspace --all-targets -- -D warnings
    cargo clippy --release --target {{wasm_target}} {{components}} -- -D warnings

# Installs wrk, which the benchmarks drive HTTP with.
wrk:
    command -v wrk >/dev/null || just apt-install wrk

# Measures corral against a native baseline (wrk), and the hot path in process (divan).
bench: build wrk
    cargo build --release -p corral-bench
    cargo bench -p corral --bench invoke
    ./target/release/loadtest
    ./target/release/eventbench

# Measures a cluster (wrk): one host against three behind HAProxy, the cost
# of a rate limit kept in Redis against one kept by the host, replicated
# writes and failover, and calls between hosts against calls in process.
bench-cluster: build wrk servers
    cargo build --release -p corral-bench
    ./target/release/clusterbench

# The fuzz targets under fuzz/ (see host/src/fuzzing.rs).
fuzz_targets := "config sql guest_response http_request"

# New inputs go to target/fuzz-corpus/<target>, crashes to
# fuzz/artifacts/<target>; `cargo test` replays fuzz/corpus, where inputs
# worth keeping (and each fixed crash) belong.
# Fuzzes each target for `seconds` (cargo fuzz on nightly, installed if missing).
# http_request runs a tokio runtime whose idle threads exit while an input
# runs, which LeakSanitizer reports as a leak: its memory is bounded by
# -rss_limit_mb instead.
fuzz seconds="600": build-components
    rustup toolchain list | grep -q '^nightly' || rustup toolchain install nightly --profile minimal
    command -v cargo-fuzz >/dev/null || cargo install --locked cargo-fuzz
    for target in {{fuzz_targets}}; do \
        mkdir -p target/fuzz-corpus/$target; \
        leaks=1; [ $target = http_request ] && leaks=0; \
        (cd fuzz && cargo +nightly fuzz run $target ../target/fuzz-corpus/$target corpus/$target -- \
            -max_total_time={{seconds}} -timeout=10 -rss_limit_mb=4096 -print_final_stats=1 -detect_leaks=$leaks) || exit 1; \
    done

# Validates config/corral.toml and the components it names.
check-config: build
    ./target/release/corral check --config config/corral.toml
