# hapull in a container: the daemon by default, any other command by argument.
#
#   docker build -t hapull .
#   docker run --rm -v "$PWD/config:/config" -v "$PWD/data:/data" hapull init --dir /config --data-dir /data
#   docker run -d --name hapull -v "$PWD/config:/config:ro" -v "$PWD/data:/data" hapull
#
# The process runs as uid 10001: the host folders behind /config and /data must be writable by it
# (`chown 10001:10001 config data`). See docs/SETUP.md and examples/compose.yaml.
# rclone (Debian 12's, 1.60) is included for [[offsite]] targets: keep its config in the writable /data
# (rclone saves refreshed OAuth tokens in it), e.g. `config = "/data/rclone.conf"`; `docker run --rm -it
# -v "$PWD/data:/data" --entrypoint rclone hapull config --config /data/rclone.conf` makes one.

FROM rust:1-bookworm AS builder
WORKDIR /src
# Dependencies first, so a source change does not rebuild them: build once against stub sources.
COPY Cargo.toml Cargo.lock ./
RUN mkdir -p src \
    && echo 'fn main() {}' > src/main.rs \
    && touch src/lib.rs \
    && cargo build --release --locked --bin hapull \
    && rm -rf src
COPY src ./src
# config/hapull.example.toml is compiled in (`hapull init` writes it).
COPY config ./config
# The stub's build artefacts are older than the real sources; make sure cargo rebuilds the crate.
RUN touch src/main.rs src/lib.rs \
    && cargo build --release --locked --bin hapull \
    && ./target/release/hapull --version

FROM debian:bookworm-slim
RUN apt-get update \
    && apt-get install -y --no-install-recommends ca-certificates tzdata rclone \
    && rm -rf /var/lib/apt/lists/* \
    && groupadd --system --gid 10001 hapull \
    && useradd --system --uid 10001 --gid hapull --home-dir /data --shell /usr/sbin/nologin hapull \
    && install -d -o hapull -g hapull -m 0750 /config /data
COPY --from=builder /src/target/release/hapull /usr/local/bin/hapull
USER 10001:10001
VOLUME ["/config", "/data"]
ENV HAPULL_CONFIG=/config/hapull.toml
# The status endpoint, when [status] listen = "0.0.0.0:9180".
EXPOSE 9180
# Unhealthy when the last verified backup is older than [status] max_age (default 3h).
HEALTHCHECK --interval=5m --timeout=30s --start-period=2h \
    CMD ["hapull", "-c", "/config/hapull.toml", "health"]
# `docker stop` sends SIGTERM; a running transfer may finish within [schedule] shutdown_grace (2m),
# so stop with a longer timeout: `docker stop -t 180 hapull` (compose: stop_grace_period: 3m).
STOPSIGNAL SIGTERM
ENTRYPOINT ["hapull"]
CMD ["-c", "/config/hapull.toml", "run"]
