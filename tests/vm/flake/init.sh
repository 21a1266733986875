#!/bin/sh
# Stage 2 of the fake NixOS (NixOS: nixos/modules/system/boot/stage-2-init.sh), started by the
# initrd as `init=` of the boot entry. Like NixOS's, it records the booted configuration in
# /run/booted-system and /run/current-system (the initrd has moved its /run, /proc, /sys and /dev
# into the new root) and execs systemd. It also reports on the console which configuration and
# which boot entry systemd-boot started (the LoaderEntrySelected EFI variable), so the test can
# list every boot, including the ones that never reach userspace.
PATH=/usr/bin:/bin
systemConfig='@out@'
vars=/sys/firmware/efi/efivars
entry=unknown
if mount -t efivarfs efivarfs "$vars" 2>/dev/null; then
  f=$vars/LoaderEntrySelected-4a67b082-0a4c-41cf-b6c7-440b29bb8c4f
  [ -e "$f" ] && entry=$(cat "$f" | tail -c +5 | tr -d '\000')
  umount "$vars"
fi
echo "pullnix-vm: stage 2 of $systemConfig (entry $entry, variant @variant@)" >/dev/console
if [ '@variant@' = no-boot ]; then
  echo "pullnix-vm: this generation does not boot (fixture variant no-boot)" >/dev/console
  exit 1
fi
ln -sfn "$systemConfig" /run/booted-system
ln -sfn "$systemConfig" /run/current-system
exec /lib/systemd/systemd "$@"
