#!/usr/bin/env bash
# Builds (once) the Debian rootfs the systemd tests boot, and adds what pullnix needs inside it:
# real Nix 2.8 (Debian's nix-bin, the same version as on the host) and git (Nix's git fetcher and
# `git daemon` to serve the fixture repository). Idempotent and cached: the harness caches the
# debootstrapped rootfs under $CACHE_DIR keyed by its own hash, and this script marks the rootfs
# with the hash of itself, so editing either script rebuilds what depends on it.
#
#   prepare-rootfs.sh HARNESS      (env: CACHE_DIR, SUITE; prints the rootfs path on stdout)
#
# This is the only step that uses the network (Debian's mirror). The containers themselves run
# with --private-network and build everything offline: the fixture flake has no inputs.
set -euo pipefail
harness=$(realpath "$1")
: "${CACHE_DIR:?}" "${SUITE:?}"
mkdir -p "$CACHE_DIR"
exec 9>"$CACHE_DIR/.pullnix-prepare.lock"
flock 9

bash "$harness" build >&2
rootfs=$CACHE_DIR/rootfs-$SUITE-$(sha256sum "$harness" | cut -c1-12)
[[ -e $rootfs/.complete ]] || { echo "prepare-rootfs: no rootfs at $rootfs" >&2; exit 1; }
marker=$rootfs/.pullnix-prepared-$(sha256sum "$0" | cut -c1-12)
if [[ -e $marker ]]; then echo "$rootfs"; exit 0; fi

echo "prepare-rootfs: installing nix-bin and git into $rootfs" >&2
# As the harness does: /run is no tmpfs on this host, and nspawn refuses to clean its propagation
# directory on a disk file system (harmless, but noisy).
if [[ $(stat -fc %T /run) != tmpfs ]] && ! mountpoint -q /run/systemd/nspawn; then
  mkdir -p /run/systemd/nspawn && mount -t tmpfs -o mode=0755 tmpfs /run/systemd/nspawn
fi
# The host network (no --private-network) only for apt; the harness deleted the apt lists.
systemd-nspawn -q --register=no --keep-unit -D "$rootfs" --resolv-conf=replace-host --pipe \
  /bin/sh -ec '
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -q >/dev/null
    apt-get install -y -q --no-install-recommends nix-bin git >/dev/null
    apt-get clean
    rm -rf /var/lib/apt/lists/*
  ' >&2

# Single-user root Nix, offline, as ../shared/scripts/setup-nix.sh configures the host.
mkdir -p "$rootfs/etc/nix"
echo '{"flakes":[],"version":2}' > "$rootfs/etc/nix/registry-empty.json"
cat > "$rootfs/etc/nix/nix.conf" <<'CONF'
sandbox = false
build-users-group =
experimental-features = nix-command flakes
substituters =
flake-registry = /etc/nix/registry-empty.json
CONF
rm -f "$rootfs"/.pullnix-prepared-*
touch "$marker"
echo "$rootfs"
