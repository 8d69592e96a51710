# syntax=docker/dockerfile:1
# The vps-operator image: one static binary (musl) on distroless/static, run as non-root.
# Subcommands: `operator`, `gateway`, `simulator`, `token` (see deploy/ and charts/).
#
#   docker build -t vps-operator:0.1.0 .

FROM rust:1.95-alpine AS build
RUN apk add --no-cache musl-dev
WORKDIR /src
# What the crate embeds besides its sources: the CRDs it installs in test beds and the demo
# catalog (include_str!).
COPY Cargo.toml Cargo.lock ./
COPY src ./src
COPY assets ./assets
COPY benches ./benches
COPY tests/crds ./tests/crds
COPY deploy/samples ./deploy/samples
RUN --mount=type=cache,target=/usr/local/cargo/registry \
    --mount=type=cache,target=/src/target \
    cargo build --release --locked --bin vps-operator \
 && cp target/release/vps-operator /vps-operator \
 # musl targets link statically: the binary must need no loader.
 && ! ldd /vps-operator 2>/dev/null | grep -q '=>'

FROM gcr.io/distroless/static-debian12:nonroot
COPY --from=build /vps-operator /usr/local/bin/vps-operator
USER 65532:65532
EXPOSE 8080 9090
ENTRYPOINT ["/usr/local/bin/vps-operator"]
CMD ["--help"]
