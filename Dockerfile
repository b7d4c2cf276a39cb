# The corral image: the host binary, the users and orders components, and a
# default config (deploy/docker/corral.toml) that serves them on 0.0.0.0.
#
#   docker build -t corral .
#   docker run -p 8080:8080 -p 9090:9090 -v corral-data:/data corral
#
# Databases live in the /data volume. deploy/k8s/ runs this image as a cluster.
#
# The base images are build arguments. The target runtime-prebuilt takes a
# binary and components built outside the image instead of compiling them:
# its context is a folder holding corral, users.wasm, orders.wasm and
# corral.toml (`just image` makes one and builds with podman).
ARG BUILDER_IMAGE=rust:1.95-bookworm
ARG RUNTIME_IMAGE=debian:bookworm-slim

# What every runtime shares: the user, the volume, the ports and the checks.
FROM ${RUNTIME_IMAGE} AS runtime-base
# ca-certificates for outgoing HTTPS and TLS to NATS; curl for HEALTHCHECK.
# Installed unless the base has them already.
RUN if ! command -v curl >/dev/null || [ ! -e /etc/ssl/certs/ca-certificates.crt ]; then \
        apt-get update \
     && apt-get install -y --no-install-recommends ca-certificates curl \
     && rm -rf /var/lib/apt/lists/*; \
    fi
RUN groupadd --gid 10001 corral \
 && useradd --uid 10001 --gid 10001 --home-dir /data --no-create-home --shell /usr/sbin/nologin corral \
 && mkdir /data \
 && chown 10001:10001 /data
# Declared after the chown, so a new volume starts out owned by corral.
VOLUME /data
# 8080: the public listener; 9090: the admin API (/healthz, /readyz, /metrics).
EXPOSE 8080 9090
USER 10001
HEALTHCHECK --interval=10s --timeout=3s --start-period=60s --retries=3 \
    CMD curl -fsS -o /dev/null http://127.0.0.1:9090/healthz || exit 1
ENTRYPOINT ["corral"]
CMD ["serve", "--config", "/app/corral.toml"]

# Runtime from files built outside: `--target runtime-prebuilt`. Placed
# before the builder, so building it never starts a Rust toolchain.
FROM runtime-base AS runtime-prebuilt
COPY corral /usr/local/bin/corral
COPY users.wasm orders.wasm /app/components/
COPY corral.toml /app/corral.toml

# Builder: the host for the machine, the components for wasm32-wasip2.
FROM ${BUILDER_IMAGE} AS builder
RUN rustup target add wasm32-wasip2
WORKDIR /src
COPY . .
RUN cargo build --release --locked -p corral \
 && cargo build --release --locked --target wasm32-wasip2 -p users -p orders

# Runtime, the default target: the builder's binary and components, run as
# uid 10001.
FROM runtime-base AS runtime
COPY --from=builder /src/target/release/corral /usr/local/bin/corral
COPY --from=builder /src/target/wasm32-wasip2/release/users.wasm /src/target/wasm32-wasip2/release/orders.wasm /app/components/
COPY deploy/docker/corral.toml /app/corral.toml
