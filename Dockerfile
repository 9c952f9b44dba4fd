# The `vera` binary with every backend (S3, SQS, Kafka, RabbitMQ, Vault), for the
# manifests in k8s/ and compose/. Build: docker build -t vera:0.1.0 .
FROM rust:1.95-bookworm AS build
# librdkafka is built from source by the rdkafka crate (bundled): it needs cmake.
RUN apt-get update \
 && apt-get install -y --no-install-recommends cmake \
 && rm -rf /var/lib/apt/lists/*
WORKDIR /src
COPY . .
RUN cargo build --release --locked -p vera --features all-backends \
 && install -m 0755 target/release/vera /usr/local/bin/vera

FROM debian:bookworm-slim
RUN apt-get update \
 && apt-get install -y --no-install-recommends ca-certificates \
 && rm -rf /var/lib/apt/lists/*
COPY --from=build /usr/local/bin/vera /usr/local/bin/vera
USER 10001:10001
ENTRYPOINT ["/usr/local/bin/vera"]
