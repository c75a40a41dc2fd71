#!/usr/bin/env bash
# Install Berth: berthd, berth-shim, berth-runc and berth into PREFIX/bin (default /usr/local),
# the systemd unit, the default config (/etc/berth/config.toml) and network (/etc/berth/net.d).
# Safe to run twice; `--uninstall` removes what it installed (a config or network file you
# changed is kept, and said so). Data in /var/lib/berth and /run/berth is never touched.
#
#   deploy/install.sh [--build] [--bin-dir DIR] [--prefix DIR] [--destdir DIR] [--no-start]
#   deploy/install.sh --uninstall [--prefix DIR] [--destdir DIR]
#
#   --build       deploy/build-release.sh first (default: use target/release as it is)
#   --bin-dir     where the built binaries are (default: target/release)
#   --prefix      install prefix (default: /usr/local)
#   --destdir     stage everything below DIR instead of / (packaging, tests); no systemctl
#   --no-start    install the unit but do not enable or start berthd
set -euo pipefail

repo=$(cd "$(dirname "$0")/.." && pwd)
prefix=/usr/local
destdir=
bin_dir=$repo/target/release
build=0
uninstall=0
start=1
while [ $# -gt 0 ]; do
    case "$1" in
        --build) build=1 ;;
        --bin-dir) bin_dir=$2; shift ;;
        --prefix) prefix=$2; shift ;;
        --destdir) destdir=$2; shift ;;
        --no-start) start=0 ;;
        --uninstall) uninstall=1 ;;
        -h | --help) sed -n '2,16p' "$0"; exit 0 ;;
        *) echo "install.sh: unknown option $1 (see --help)" >&2; exit 2 ;;
    esac
    shift
done

bins=(berthd berth-shim berth-runc berth)
bindir=$destdir$prefix/bin
unit=$destdir/etc/systemd/system/berthd.service
etc=$destdir/etc/berth
# systemctl only for a real install on a host that runs systemd.
use_systemd=0
if [ -z "$destdir" ] && [ -d /run/systemd/system ] && command -v systemctl >/dev/null; then
    use_systemd=1
fi

# install_file SRC DST MODE: copy when missing or different; say what happened.
install_file() {
    if [ -f "$2" ] && cmp -s "$1" "$2"; then
        echo "  unchanged $2"
    else
        install -D -m "$3" "$1" "$2"
        echo "  installed $2"
    fi
}

# keep_file SRC DST: a config file is installed once; later runs never overwrite local edits.
keep_file() {
    if [ -e "$2" ]; then
        cmp -s "$1" "$2" && echo "  unchanged $2" || echo "  kept $2 (locally changed)"
    else
        install -D -m 0644 "$1" "$2"
        echo "  installed $2"
    fi
}

# remove_if_ours SRC DST: remove DST when it is still the shipped file.
remove_if_ours() {
    [ -e "$2" ] || return 0
    if cmp -s "$1" "$2"; then
        rm -f "$2"
        echo "  removed $2"
    else
        echo "  kept $2 (locally changed; remove it yourself)"
    fi
}

if [ "$uninstall" = 1 ]; then
    echo "Uninstalling Berth from ${destdir:-/}"
    if [ "$use_systemd" = 1 ] && [ -f "$unit" ]; then
        systemctl disable --now berthd.service 2>/dev/null || true
    fi
    [ -e "$unit" ] && rm -f "$unit" && echo "  removed $unit"
    [ "$use_systemd" = 1 ] && systemctl daemon-reload
    for b in "${bins[@]}"; do
        [ -e "$bindir/$b" ] && rm -f "$bindir/$b" && echo "  removed $bindir/$b"
    done
    remove_if_ours "$repo/deploy/config.toml" "$etc/config.toml"
    remove_if_ours "$repo/deploy/net.d/10-berth.conflist" "$etc/net.d/10-berth.conflist"
    rmdir "$etc/net.d" "$etc" 2>/dev/null || true
    echo "Data in /var/lib/berth and /run/berth was left as it is."
    exit 0
fi

if [ "$build" = 1 ]; then
    "$repo/deploy/build-release.sh"
fi
for b in "${bins[@]}"; do
    [ -x "$bin_dir/$b" ] || { echo "install.sh: $bin_dir/$b is missing (build with --build, or give --bin-dir)" >&2; exit 1; }
done

echo "Installing Berth into ${destdir:-/}"
for b in "${bins[@]}"; do
    install_file "$bin_dir/$b" "$bindir/$b" 0755
done
# The unit names /usr/local/bin/berthd; another prefix gets its path rewritten.
tmp_unit=$(mktemp)
trap 'rm -f "$tmp_unit"' EXIT
sed "s#/usr/local/bin/berthd#$prefix/bin/berthd#" "$repo/deploy/berthd.service" >"$tmp_unit"
install_file "$tmp_unit" "$unit" 0644
keep_file "$repo/deploy/config.toml" "$etc/config.toml"
keep_file "$repo/deploy/net.d/10-berth.conflist" "$etc/net.d/10-berth.conflist"

if [ "$use_systemd" = 1 ]; then
    systemctl daemon-reload
    if [ "$start" = 1 ]; then
        systemctl enable berthd.service >/dev/null
        systemctl restart berthd.service
        echo "berthd is running: berth version"
    fi
elif [ -z "$destdir" ]; then
    echo "systemd is not running here: start berthd yourself (berthd &), then: berth version"
fi
