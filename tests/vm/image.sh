#!/usr/bin/env bash
# Builds (once) the base system of the boot-mode VM tests (tests/vm.rs): a Debian 12 root file
# system with a real kernel and initrd, systemd as PID 1, systemd-boot, and real Nix 2.8 (Debian's
# nix-bin) and git, so that pullnix inside the guest builds and switches for real.
#
#   image.sh            (env: PULLNIX_VM_CACHE, default /var/cache/pullnix-vm; MIRROR)
#
# Prints the path of the finished root file system on stdout. The result is cached under
# $PULLNIX_VM_CACHE keyed by the hash of this script, so editing it builds a new image; older
# images are removed. This is the only step that uses the network (Debian's mirror). Needs root
# (debootstrap, chroot).
set -euo pipefail
SUITE=bookworm
MIRROR=${MIRROR:-http://deb.debian.org/debian}
CACHE=${PULLNIX_VM_CACHE:-/var/cache/pullnix-vm}
key=$(sha256sum "$0" | cut -c1-12)
base=$CACHE/image-$key
log() { printf '[vm-image %(%T)T] %s\n' -1 "$*" >&2; }

mkdir -p "$CACHE"
exec 9>"$CACHE/.lock"
flock 9
if [[ -e $base/.complete ]]; then echo "$base/rootfs"; exit 0; fi

tmp=$CACHE/tmp-$key
rm -rf "$tmp"
mkdir -p "$tmp"
r=$tmp/rootfs
log "debootstrap $SUITE (kernel, systemd, systemd-boot) into $r"
# libssl3, zlib1g: what the pullnix binary links (ldd); the guest is the same Debian release as CI.
debootstrap --variant=minbase \
  --include=systemd,systemd-sysv,dbus,udev,kmod,linux-image-amd64,initramfs-tools,zstd,systemd-boot,systemd-boot-efi,libssl3,zlib1g \
  "$SUITE" "$r" "$MIRROR" >"$tmp/debootstrap.log" 2>&1 || { tail -30 "$tmp/debootstrap.log" >&2; exit 1; }

in_root() { chroot "$r" /usr/bin/env -i PATH=/usr/sbin:/usr/bin:/sbin:/bin "$@"; }
mount --bind /proc "$r/proc"
trap 'umount "$r/proc" 2>/dev/null || true' EXIT
# nix-bin through apt, not debootstrap: debootstrap's resolver does not follow virtual packages
# (nix-bin -> libdbd-sqlite3-perl -> perl-dbdabi-94).
log "apt-get install nix-bin git"
cp /etc/resolv.conf "$r/etc/resolv.conf"
in_root sh -ec 'export DEBIAN_FRONTEND=noninteractive
  apt-get update -q
  apt-get install -y -q --no-install-recommends nix-bin git
  apt-get clean' >"$tmp/apt.log" 2>&1 || { tail -30 "$tmp/apt.log" >&2; exit 1; }
rm -f "$r/etc/resolv.conf"
kver=$(basename "$(ls -d "$r"/lib/modules/*)")
log "kernel $kver: keeping only the modules a virtio guest needs"
# The Debian kernel ships ~350 MB of modules for real hardware; a q35 guest with virtio disks and
# 9p shares needs a handful. Fewer files make every per-test disk image faster to write.
mods=$r/lib/modules/$kver/kernel
find "$mods" -name '*.ko*' | grep -Ev "/kernel/(fs|lib|crypto|arch/x86/crypto|net/9p|drivers/(virtio|block|char|firmware|md))/" \
  | xargs rm -f
find "$mods" -type d -empty -delete
in_root depmod "$kver"
# A small initrd: loading it through OVMF and unpacking it is slow under software emulation.
printf 'virtio_pci\nvirtio_blk\next4\n' >>"$r/etc/initramfs-tools/modules"
sed -i 's/^MODULES=.*/MODULES=list/' "$r/etc/initramfs-tools/initramfs.conf"
echo COMPRESS=zstd >>"$r/etc/initramfs-tools/initramfs.conf"
in_root update-initramfs -u -k "$kver" >/dev/null 2>&1
umount "$r/proc"
trap - EXIT
# The kernel and initrd every fixture generation boots (the fixture flake copies them into its
# store paths, as NixOS's kernel and initrd are store paths). /boot itself becomes the ESP.
mkdir -p "$r/usr/lib/pullnix-vm"
cp "$r/boot/vmlinuz-$kver" "$r/usr/lib/pullnix-vm/bzImage"
cp "$r/boot/initrd.img-$kver" "$r/usr/lib/pullnix-vm/initrd"
rm -rf "$r"/boot/*

# Single-user root Nix, offline (the fixture flake has no inputs).
mkdir -p "$r/etc/nix"
echo '{"flakes":[],"version":2}' >"$r/etc/nix/registry-empty.json"
cat >"$r/etc/nix/nix.conf" <<'CONF'
sandbox = false
build-users-group =
experimental-features = nix-command flakes
substituters =
flake-registry = /etc/nix/registry-empty.json
CONF

echo civm >"$r/etc/hostname"
: >"$r/etc/machine-id"   # systemd generates one at first boot
# The ESP is mounted at /boot, as on NixOS (boot.loader.efi.efiSysMountPoint). It must not be
# nofail: systemd-bless-boot.service needs it mounted when boot-complete.target is reached.
cat >"$r/etc/fstab" <<'FSTAB'
LABEL=root / ext4 rw 0 1
LABEL=ESP /boot vfat umask=0077 0 2
ci /ci 9p trans=virtio,version=9p2000.L,ro,nofail,x-systemd.after=systemd-modules-load.service 0 0
results /results 9p trans=virtio,version=9p2000.L,rw,nofail,x-systemd.after=systemd-modules-load.service 0 0
FSTAB
# The 9p shares are mounted as soon as local-fs.target's jobs run, which can be before udev has
# loaded 9pnet_virtio for the devices ("9pnet_virtio: no channels available for device
# results"): load it up front, and mount after that.
echo 9pnet_virtio >"$r/etc/modules-load.d/pullnix-vm-9p.conf"
mkdir -p "$r/ci" "$r/results" "$r/var/log/journal"
# Nothing that runs on a timer or waits for a terminal: each boot costs ~30 s under emulation.
in_root systemctl mask getty.target serial-getty@ttyS0.service apt-daily.timer \
  apt-daily-upgrade.timer dpkg-db-backup.timer e2scrub_all.timer e2scrub_reap.service \
  fstrim.timer systemd-tmpfiles-clean.timer man-db.timer >/dev/null 2>&1 || true
rm -rf "$r"/var/cache/apt/archives/*.deb "$r"/var/lib/apt/lists/* "$r"/usr/share/doc \
  "$r"/usr/share/man "$r"/usr/share/locale "$r"/usr/share/info
touch "$tmp/.complete"
# Older images, and what failed builds left behind.
mv "$tmp" "$CACHE/new-$key"
rm -rf "$CACHE"/image-* "$CACHE"/tmp-*
mv "$CACHE/new-$key" "$base"
log "ready: $base ($(du -sh "$base" | cut -f1))"
echo "$base/rootfs"
