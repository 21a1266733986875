#!/bin/bash
# Run on the host at disk creation, inside the guest's root file system (systemd-nspawn, the ESP
# bound at /boot): what nixos-install leaves behind. The fixture repository is copied to
# /srv/git/fleet.git (pullnix's remote), commit c0 is built by the guest's own Nix, becomes
# generation 1 of the system profile, and its switch-to-configuration installs systemd-boot
# and the boot entries. No pullnix state: pullnix takes the running system as its baseline.
set -euo pipefail
git clone -q --bare --mirror /ci/repo.git /srv/git/fleet.git
rev=$(git -C /srv/git/fleet.git rev-parse refs/heads/c0)
git -C /srv/git/fleet.git update-ref refs/heads/main "$rev"
json=$(nix build --no-link --json \
  "git+file:///srv/git/fleet.git?ref=refs/heads/c0&rev=$rev#nixosConfigurations.civm.config.system.build.toplevel")
out=$(printf '%s\n' "$json" | sed -n 's/.*"out":"\([^"]*\)".*/\1/p')
nix-env -p /nix/var/nix/profiles/system --set "$out"
# `bootctl install` (NIXOS_INSTALL_BOOTLOADER=1): systemd-boot as the removable-media loader,
# so the firmware needs no boot variable.
mkdir -p /boot/EFI/BOOT /boot/EFI/systemd /boot/loader/entries
cp /usr/lib/systemd/boot/efi/systemd-bootx64.efi /boot/EFI/BOOT/BOOTX64.EFI
cp /usr/lib/systemd/boot/efi/systemd-bootx64.efi /boot/EFI/systemd/systemd-bootx64.efi
"$out/bin/switch-to-configuration" boot
echo "installed $out as generation 1"
