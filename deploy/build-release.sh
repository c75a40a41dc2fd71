#!/usr/bin/env bash
# Build the release binaries that deploy/install.sh installs and tools/bench/run measures, into
# target/release: berthd, berth-shim, berth and the bench binaries as cargo builds them, and
# berth-runc linked statically (glibc static-pie).
#
# Why static: berth-runc starts once per create/start/exec/delete and, for every verb that
# enters a container, twice (the sealed re-exec). Dynamically linked, ld.so and its relocations
# were 13% of its samples in a profile; static, `run` of /bin/true costs 12% less CPU, create
# and delete ~20% less, and peak RSS 0.5 MiB less (berth-runc-bench, 2026-12-07). berth-runc
# uses no NSS (it reads /etc/passwd itself), so static glibc loses nothing; runc ships static too.
#
# crt-static must be given with an explicit --target, or it would reach build scripts and
# proc-macros, which cannot be static; the second build therefore has its own directory
# (target/<triple>/release) and only berth-oci's few dependencies are built twice.
set -euo pipefail
repo=$(cd "$(dirname "$0")/.." && pwd)
cd "$repo"
cargo build --release --bins -p berth-daemon -p berth-shim -p berth-oci -p berth-cli
host=$(rustc -vV | sed -n 's/^host: //p')
RUSTFLAGS="-C target-feature=+crt-static" \
    cargo build --release -p berth-oci --bin berth-runc --target "$host"
# Replace cargo's dynamic berth-runc by the static one (atomically: a running bench or shim may
# exec it right now).
install -m 0755 "target/$host/release/berth-runc" target/release/.berth-runc.static
mv -f target/release/.berth-runc.static target/release/berth-runc
! readelf -d target/release/berth-runc | grep -q NEEDED ||
    { echo "build-release.sh: target/release/berth-runc is not static" >&2; exit 1; }
