#!/usr/bin/env bash
# Build a one-layer busybox image as an OCI archive, offline, from Debian's busybox-static:
#   deploy/busybox-image.sh OUT.tar [NAME]      (NAME default docker.io/library/busybox:latest)
# Needs bash, GNU tar, gzip, sha256sum and /bin/busybox (package busybox-static). The result
# imports with `berth images import OUT.tar` (or `ctr images import`) under NAME. Deterministic:
# the same busybox binary gives the same digests. Writes only OUT.tar and a temporary directory.
set -euo pipefail

out=${1:?usage: busybox-image.sh OUT.tar [NAME]}
name=${2:-docker.io/library/busybox:latest}
busybox=${BUSYBOX:-/bin/busybox}
[ -x "$busybox" ] || { echo "busybox-image.sh: $busybox not found (apt-get install busybox-static)" >&2; exit 1; }
"$busybox" --list >/dev/null 2>&1 || { echo "busybox-image.sh: $busybox is not a busybox binary" >&2; exit 1; }

case "$(uname -m)" in
    x86_64) arch=amd64 ;;
    aarch64) arch=arm64 ;;
    armv7l) arch=arm ;;
    i686 | i386) arch=386 ;;
    *) arch=$(uname -m) ;;
esac

work=$(mktemp -d /tmp/busybox-image.XXXXXX)
trap 'rm -rf "$work"' EXIT

# The root filesystem: busybox, one symlink per applet, passwd and group.
root=$work/rootfs
mkdir -p "$root"/{bin,etc,root,proc,sys,dev,run,var,tmp}
chmod 1777 "$root/tmp"
cp "$busybox" "$root/bin/busybox"
for applet in $("$busybox" --list); do
    [ "$applet" = busybox ] || ln -sf busybox "$root/bin/$applet"
done
printf 'root:x:0:0:root:/root:/bin/sh\nnobody:x:65534:65534:nobody:/nonexistent:/bin/false\n' >"$root/etc/passwd"
printf 'root:x:0:\ntty:x:5:\nnogroup:x:65534:\n' >"$root/etc/group"

# sha256 and size of a file.
digest() { sha256sum "$1" | cut -d' ' -f1; }
size() { stat -c %s "$1"; }

layout=$work/layout
mkdir -p "$layout/blobs/sha256"
tar --sort=name --owner=0 --group=0 --numeric-owner --mtime=@1767225600 -C "$root" -cf "$work/layer.tar" .
diff_id=$(digest "$work/layer.tar")
gzip -n -9 <"$work/layer.tar" >"$work/layer.tar.gz"
layer=$(digest "$work/layer.tar.gz")
layer_size=$(size "$work/layer.tar.gz")
mv "$work/layer.tar.gz" "$layout/blobs/sha256/$layer"

# blob FILE: store FILE as a blob, print "digest size".
blob() {
    local d s
    d=$(digest "$1")
    s=$(size "$1")
    mv "$1" "$layout/blobs/sha256/$d"
    echo "$d $s"
}

printf '{"created":"2026-01-01T00:00:00Z","architecture":"%s","os":"linux","config":{"Env":["PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"],"Cmd":["sh"]},"rootfs":{"type":"layers","diff_ids":["sha256:%s"]},"history":[{"created":"2026-01-01T00:00:00Z","created_by":"deploy/busybox-image.sh"}]}' \
    "$arch" "$diff_id" >"$work/config.json"
read -r config config_size < <(blob "$work/config.json")

printf '{"schemaVersion":2,"mediaType":"application/vnd.oci.image.manifest.v1+json","config":{"mediaType":"application/vnd.oci.image.config.v1+json","digest":"sha256:%s","size":%s},"layers":[{"mediaType":"application/vnd.oci.image.layer.v1.tar+gzip","digest":"sha256:%s","size":%s}]}' \
    "$config" "$config_size" "$layer" "$layer_size" >"$work/manifest.json"
read -r manifest manifest_size < <(blob "$work/manifest.json")

tag=${name##*:}
case "$name" in */*:*) ;; *) tag=latest ;; esac
printf '{"schemaVersion":2,"mediaType":"application/vnd.oci.image.index.v1+json","manifests":[{"mediaType":"application/vnd.oci.image.manifest.v1+json","digest":"sha256:%s","size":%s,"platform":{"architecture":"%s","os":"linux"},"annotations":{"io.containerd.image.name":"%s","org.opencontainers.image.ref.name":"%s"}}]}' \
    "$manifest" "$manifest_size" "$arch" "$name" "$tag" >"$layout/index.json"
printf '{"imageLayoutVersion":"1.0.0"}' >"$layout/oci-layout"

tar --sort=name --owner=0 --group=0 --numeric-owner --mtime=@1767225600 -C "$layout" -cf "$out" oci-layout index.json blobs
echo "$out: $name sha256:$manifest ($(size "$out") bytes)"
