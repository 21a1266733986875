#!/usr/bin/env bash
# disk.sh ROOTFS PAYLOAD WORK: the disks of one VM scenario (tests/vm.rs), from the cached root
# file system of image.sh and the scenario's payload:
#   WORK/esp.img   GPT disk with one 96 MiB ESP (FAT32): systemd-boot, kernels, loader entries
#   WORK/root.img  ext4 root file system (label "root"), no partition table
#   WORK/vars.fd   the machine's own copy of OVMF's variable store (NVRAM)
# PAYLOAD holds: pullnix (binary), units/ (rendered unit files), enable (units to enable),
# config.toml, repo.git (fixture repository), test.sh and the guest/ files. The fake NixOS is
# installed by the guest's own Nix inside the root file system (guest/install.sh, run in
# systemd-nspawn on the host). Needs root (overlayfs, nspawn).
set -euo pipefail
rootfs=$1 payload=$(realpath "$2") work=$(realpath "$3")
here=$(dirname "$(realpath "$0")")
r=$work/merged
mkdir -p "$work/upper" "$work/ovl" "$r" "$work/esp"
mount -t overlay overlay -o "lowerdir=$rootfs,upperdir=$work/upper,workdir=$work/ovl" "$r"
trap 'umount "$r" 2>/dev/null || true' EXIT

install -m 755 -D "$payload/pullnix" "$r/usr/local/bin/pullnix"
install -m 755 -D -t "$r/usr/local/lib/ci" "$here/guest/runner" "$here/guest/hold"
cp "$payload"/units/* "$here/guest/ci-driver.service" "$here/guest/fixture-app.service" "$r/etc/systemd/system/"
install -m 644 -D -t "$r/etc/systemd/system/systemd-bless-boot.service.d" "$here/guest/systemd-bless-boot-hold.conf"
install -m 644 -D "$payload/config.toml" "$r/etc/pullnix/config.toml"
grep -v '^\s*\(#\|$\)' "$payload/enable" | xargs systemctl --root="$r" enable >/dev/null 2>&1

# nspawn wants /run/systemd/nspawn on a tmpfs (it is not one on every CI host).
if [[ $(stat -fc %T /run) != tmpfs ]] && ! mountpoint -q /run/systemd/nspawn; then
  mkdir -p /run/systemd/nspawn && mount -t tmpfs -o mode=0755 tmpfs /run/systemd/nspawn
fi
systemd-nspawn -q --register=no --keep-unit --private-network -D "$r" \
  --bind="$work/esp:/boot" --bind-ro="$payload:/ci" --bind-ro="$here/guest:/ci-guest" \
  --pipe /bin/bash /ci-guest/install.sh >"$work/install.log" 2>&1 \
  || { cat "$work/install.log" >&2; exit 1; }

esp_mib=96
mkfs.vfat -C -F 32 -n ESP "$work/esp.part" $((esp_mib * 1024)) >/dev/null
mcopy -s -i "$work/esp.part" "$work"/esp/* ::/
truncate -s $((esp_mib + 2))M "$work/esp.img"
sfdisk -q "$work/esp.img" <<SFDISK
label: gpt
start=1MiB, size=${esp_mib}MiB, type=C12A7328-F81F-11D2-BA4B-00A0C93EC93B, name=esp
SFDISK
dd if="$work/esp.part" of="$work/esp.img" bs=1M seek=1 conv=notrunc,sparse status=none
rm -f "$work/esp.part"
mkfs.ext4 -q -L root -E root_owner=0:0 -d "$r" "$work/root.img" 2G
umount "$r"
trap - EXIT
rm -rf "$work/upper" "$work/ovl" "$r" "$work/esp"
cp /usr/share/OVMF/OVMF_VARS_4M.fd "$work/vars.fd"
