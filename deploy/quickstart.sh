#!/usr/bin/env bash
# Berth quickstart: on a fresh Debian 12, as root, with only the Rust toolchain installed:
#
#   deploy/quickstart.sh
#
# installs the few Debian packages the build needs, builds Berth, starts berthd with its built-in
# defaults on a temporary root and state dir, imports a busybox image made here from Debian's
# busybox-static (no internet needed), runs a container that prints a greeting, shows the events
# that produced, stops berthd and removes everything it made: no process, mount, cgroup or file
# is left behind.
#
# Knobs: BERTH_QUICKSTART_SKIP_APT=1 (packages already there), BERTH_BIN_DIR=DIR (use binaries
# built there instead of building), BERTH_QUICKSTART_PROFILE=release|debug (what to build).
set -euo pipefail

repo=$(cd "$(dirname "$0")/.." && pwd)
cd "$repo"
say() { printf '\n\033[1m==> %s\033[0m\n' "$*"; }

[ "$(id -u)" -eq 0 ] || { echo "quickstart: run as root (berthd creates namespaces, mounts and cgroups)" >&2; exit 1; }

# 1. Debian packages: protoc for the containerd API crate, busybox-static for the image.
if [ "${BERTH_QUICKSTART_SKIP_APT:-}" != 1 ]; then
    missing=()
    for p in protobuf-compiler busybox-static gcc libc6-dev; do
        dpkg -s "$p" >/dev/null 2>&1 || missing+=("$p")
    done
    if [ ${#missing[@]} -gt 0 ]; then
        say "installing ${missing[*]}"
        DEBIAN_FRONTEND=noninteractive apt-get update -q
        DEBIAN_FRONTEND=noninteractive apt-get install -y -q "${missing[@]}"
    fi
fi

# 2. Build (or use prebuilt binaries).
if [ -n "${BERTH_BIN_DIR:-}" ]; then
    bin=$BERTH_BIN_DIR
else
    profile=${BERTH_QUICKSTART_PROFILE:-release}
    say "building Berth ($profile)"
    if [ "$profile" = release ]; then
        cargo build --release --bins -p berth-daemon -p berth-shim -p berth-oci -p berth-cli
    else
        cargo build --bins -p berth-daemon -p berth-shim -p berth-oci -p berth-cli
    fi
    bin=$repo/target/$profile
fi
for b in berthd berth-shim berth-runc berth; do
    [ -x "$bin/$b" ] || { echo "quickstart: $bin/$b is missing" >&2; exit 1; }
done

# 3. berthd on a temporary root and state; everything below $tmp goes at the end.
tmp=$(mktemp -d /tmp/berth-quickstart.XXXXXX)
export BERTH_ADDRESS=$tmp/state/berth.sock BERTH_NAMESPACE=quickstart BERTH_FIFO_DIR=$tmp/fifo
berthd_pid=
events_pid=
cleanup() {
    set +e
    [ -n "$events_pid" ] && kill "$events_pid" 2>/dev/null && wait "$events_pid" 2>/dev/null
    if [ -n "$berthd_pid" ] && kill -0 "$berthd_pid" 2>/dev/null; then
        # Anything still running in our namespace goes first (a failed step may leave it).
        for id in $("$bin/berth" containers ls -q 2>/dev/null); do "$bin/berth" rm -f "$id" >/dev/null 2>&1; done
        kill -TERM "$berthd_pid"
        wait "$berthd_pid" 2>/dev/null
    fi
    # A shim exits on its own shortly after its task is deleted: give any still running from $tmp a moment.
    for _ in $(seq 1 50); do
        pgrep -f -- "--state $tmp/state" >/dev/null 2>&1 || break
        sleep 0.1
    done
    # Mounts below $tmp (snapshots, if a step failed midway), deepest first.
    grep -o " $tmp[^ ]*" /proc/self/mounts 2>/dev/null | sort -r | while read -r m; do umount -l "$m"; done
    rm -rf "$tmp"
}
trap cleanup EXIT
: >"$tmp/empty-config.toml" # built-in defaults, never the host's /etc/berth/config.toml

say "starting berthd (root $tmp/root, state $tmp/state)"
"$bin/berthd" --config "$tmp/empty-config.toml" --root "$tmp/root" --state "$tmp/state" \
    --address "$BERTH_ADDRESS" >"$tmp/berthd.log" 2>&1 &
berthd_pid=$!
for _ in $(seq 1 100); do
    "$bin/berth" version >/dev/null 2>&1 && break
    kill -0 "$berthd_pid" 2>/dev/null || { cat "$tmp/berthd.log" >&2; exit 1; }
    sleep 0.1
done
"$bin/berth" version

# 4. A busybox image from Debian's busybox-static, imported through berthd.
say "making a busybox image and importing it"
deploy/busybox-image.sh "$tmp/busybox.tar"
"$bin/berth" images import "$tmp/busybox.tar"
"$bin/berth" images ls

# 5. Run a container; record the events from berthd's journal meanwhile.
"$bin/berth" events --from 1 >"$tmp/events.txt" 2>/dev/null &
events_pid=$!
say "berth run --rm --net none docker.io/library/busybox:latest hello echo ..."
"$bin/berth" run --rm --net none docker.io/library/busybox:latest hello \
    echo "Hello from a Berth container!"

say "the events it produced (berth events)"
for _ in $(seq 1 50); do
    grep -q ' /containers/delete ' "$tmp/events.txt" 2>/dev/null && break
    sleep 0.1
done
kill "$events_pid" 2>/dev/null
wait "$events_pid" 2>/dev/null || true
events_pid=
cut -c1-160 "$tmp/events.txt"

# 6. Stop berthd and remove everything.
say "stopping berthd and removing $tmp"
kill -TERM "$berthd_pid"
wait "$berthd_pid" || true
berthd_pid=
trap - EXIT
cleanup
if grep -q "$tmp" /proc/self/mounts || [ -e "$tmp" ]; then
    echo "quickstart: something was left behind under $tmp" >&2
    exit 1
fi
echo "Done: berthd stopped, nothing left behind."
