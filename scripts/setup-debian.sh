#!/usr/bin/env bash
# Installs everything pullnix's test suite needs on Debian 12 (bookworm) or a recent Ubuntu, as
# root. Idempotent: about 1 minute on a fresh machine, about a second when all is in place.
#
#   sudo scripts/setup-debian.sh
#
# What and why:
#   nix-bin (Nix 2.8)         real builds, profiles, signed caches; configured single-user and
#                             offline below (no substituters, no global flake registry)
#   git, lighttpd             `git daemon` and smart HTTP (git-http-backend behind lighttpd, TLS)
#   openssh-server            ssh remotes and the fleet tests run a real sshd on 127.0.0.1
#   prometheus-node-exporter  reads pullnix's metrics file back
#   busybox-static            a static shell inside the fixture system `pullnix install` installs
#   mount, e2fsprogs          loop devices and ext4 for the install tests
#   systemd-container,        the unit tests boot a Debian container under a real systemd
#   debootstrap               (tests/systemd/nspawn.sh builds its root file system once)
#   python3-venv + vulnix     the vulnerability scanner, pinned in scripts/vulnix-requirements.txt,
#                             installed into /opt/vulnix (PyPI)
#   qemu-system-x86, ovmf,    the boot-mode tests (tests/vm.rs) boot a real UEFI VM with
#   dosfstools, mtools, fdisk systemd-boot; tests/vm/image.sh builds its disk image once
#   gcc, libc6-dev, openssl   bench/run.sh: its measuring helper bench/reaper.c is compiled with cc,
#                             and its https server gets a private CA made with openssl
# Nothing here needs anything outside this repository; the network is used only for Debian's
# mirror and PyPI.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
[[ $(id -u) == 0 ]] || { echo "setup-debian.sh: run as root (it installs packages)" >&2; exit 1; }
export DEBIAN_FRONTEND=noninteractive

packages=(nix-bin nix-setup-systemd git lighttpd openssh-server prometheus-node-exporter
  busybox-static mount e2fsprogs systemd-container debootstrap ca-certificates gcc libc6-dev openssl
  qemu-system-x86 ovmf dosfstools mtools fdisk)
python3 -c 'import ensurepip, venv' 2>/dev/null || packages+=(python3-venv)
missing=()
for p in "${packages[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q 'ok installed' || missing+=("$p")
done
if ((${#missing[@]})); then
  echo "setup-debian.sh: installing ${missing[*]}"
  apt-get update -qq
  apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi

# Nix: single-user as root, no sandbox (the CI machine has no user namespaces for it), and nothing
# from the network: without `substituters =` every command spends seconds retrying
# cache.nixos.org, and an empty registry keeps flake references from resolving online.
mkdir -p /etc/nix
echo '{"flakes":[],"version":2}' >/etc/nix/registry-empty.json
cat >/etc/nix/nix.conf <<'CONF'
sandbox = false
build-users-group = nixbld
experimental-features = nix-command flakes
substituters =
flake-registry = /etc/nix/registry-empty.json
CONF

want=$(sha256sum "$here/vulnix-requirements.txt" | cut -c1-16)
if [[ $(cat /opt/vulnix/.requirements 2>/dev/null) != "$want" ]]; then
  echo "setup-debian.sh: installing vulnix into /opt/vulnix"
  rm -rf /opt/vulnix
  python3 -m venv /opt/vulnix
  /opt/vulnix/bin/pip install -q --disable-pip-version-check -r "$here/vulnix-requirements.txt"
  echo "$want" >/opt/vulnix/.requirements
fi
ln -sf /opt/vulnix/bin/vulnix /usr/local/bin/vulnix

echo "setup-debian.sh: ready ($(nix --version), $(vulnix --version))"
