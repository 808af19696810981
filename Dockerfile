# syntax=docker/dockerfile:1
#
# expense-sync in a container: built on the official Rust image, run from a
# slim distroless runtime (glibc, CA certificates, no shell) as a non-root user.
#
#   docker build -t expense-sync .
#   docker run --rm expense-sync demo --out /tmp/out          # no credentials needed
#   docker run --rm --read-only --user 65532:65532 \
#     -v "$PWD/pipelines:/etc/expense-sync:ro" -v expense-sync-data:/data \
#     -v "$PWD/secrets:/run/secrets/expense-sync:ro" \
#     expense-sync run /etc/expense-sync/approved-expenses.toml --output-dir /data
#
# No secret is baked into the image: pipelines read them at run time through
# { env = "…" } or { file = "/run/secrets/…" } (see the README's "Scheduling").

# ---- builder: the official Rust image ---------------------------------------
FROM rust:1-bookworm AS builder
WORKDIR /src
# Dependencies first, so source edits do not rebuild them.
COPY Cargo.toml Cargo.lock ./
RUN mkdir src && echo 'fn main() {}' > src/main.rs && touch src/lib.rs \
    && cargo build --release --locked --bin expense-sync \
    && rm -rf src
COPY src ./src
# pipelines/demo.toml is compiled into the binary for `demo`.
COPY pipelines ./pipelines
RUN touch src/main.rs src/lib.rs \
    && cargo build --release --locked --bin expense-sync \
    && install -D -m 0755 target/release/expense-sync /out/expense-sync

# ---- runtime: distroless glibc + CA certificates, no shell, non-root ---------
FROM gcr.io/distroless/cc-debian12:nonroot
COPY --from=builder /out/expense-sync /usr/local/bin/expense-sync
# State, outputs and the vault go on a volume mounted here.
WORKDIR /data
ENV EXPENSE_SYNC_VAULT=/data/vault/vault.json
# 65532 = "nonroot" in distroless images.
USER 65532:65532
ENTRYPOINT ["/usr/local/bin/expense-sync"]
CMD ["--help"]
