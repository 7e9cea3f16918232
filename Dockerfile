# Multi-stage build: a small, non-root runtime image with a health check that needs
# no shell tools (the binary probes its own admin port).
FROM rust:1-slim-bookworm AS build
# make: the jemalloc allocator is built from source.
RUN apt-get update \
 && apt-get install -y --no-install-recommends make \
 && rm -rf /var/lib/apt/lists/*
WORKDIR /src
COPY Cargo.toml Cargo.lock ./
COPY src ./src
COPY benches ./benches
RUN cargo build --release --locked --bin switchyard \
 && strip target/release/switchyard

FROM debian:bookworm-slim
RUN apt-get update \
 && apt-get install -y --no-install-recommends ca-certificates \
 && rm -rf /var/lib/apt/lists/* \
 && useradd --system --uid 10001 --no-create-home switchyard
COPY --from=build /src/target/release/switchyard /usr/local/bin/switchyard
COPY config/ /etc/switchyard/
USER 10001
EXPOSE 8080 9090
HEALTHCHECK --interval=10s --timeout=4s --retries=3 \
  CMD ["/usr/local/bin/switchyard", "probe", "http://127.0.0.1:9090/healthz"]
ENTRYPOINT ["/usr/local/bin/switchyard"]
CMD ["serve", "--config", "/etc/switchyard/switchyard.toml"]
