# nixgate container image.
#
#   docker build -t nixgate .
#   docker run -d -p 8080:8080 -p 6881:6881 -v nixgate-cache:/var/cache/nixgate nixgate
#
# Two stages: cargo builds a release binary, then only that binary goes into a slim Debian
# runtime (no shell tools are needed at run time: the HEALTHCHECK is the binary itself).
# Both base images are build arguments so that air-gapped sites (and ci/image-test.sh, which
# has no registry) can point them at locally made images of the same names.
# Building offline: put a `cargo vendor` tree in vendor/ and its source replacement in
# .cargo/config.toml inside the build context; the build then never touches the network.

ARG BUILDER_IMAGE=docker.io/library/rust:1-slim-bookworm
ARG RUNTIME_IMAGE=docker.io/library/debian:bookworm-slim

FROM ${BUILDER_IMAGE} AS build
WORKDIR /src
# Manifests and sources only; target/ never enters the context (.dockerignore).
COPY . .
RUN cargo build --release --locked --bin nixgate \
 && install -D -m 0755 target/release/nixgate /out/nixgate

FROM ${RUNTIME_IMAGE}
# A fixed, unprivileged UID/GID so that volumes and Kubernetes' runAsUser agree.
RUN groupadd --system --gid 10001 nixgate \
 && useradd --system --uid 10001 --gid 10001 --home-dir /var/cache/nixgate \
      --no-create-home --shell /usr/sbin/nologin nixgate \
 && install -d -o 10001 -g 10001 -m 0750 /var/cache/nixgate
COPY --from=build /out/nixgate /usr/local/bin/nixgate

# Defaults for a container; every flag of `nixgate serve --help` has its NIXGATE_* variable.
ENV NIXGATE_LISTEN="[::]:8080" \
    NIXGATE_CACHE_DIR=/var/cache/nixgate \
    NIXGATE_MAX_CACHE_SIZE=10GiB \
    NIXGATE_HEALTH_URL=http://127.0.0.1:8080 \
    RUST_LOG=info

USER 10001:10001
VOLUME ["/var/cache/nixgate"]
# 8080: runners' HTTP. 6881: BitTorrent between appliances (TCP and uTP/UDP).
EXPOSE 8080/tcp 6881/tcp 6881/udp
HEALTHCHECK --interval=30s --timeout=6s --start-period=10s --retries=3 \
  CMD ["nixgate", "health"]
ENTRYPOINT ["nixgate", "serve"]
