#!/bin/sh
# The fake NixOS's boot loader installer: a shell stand-in for nixpkgs'
# nixos/modules/system/boot/loader/systemd-boot/systemd-boot-builder.py as of the revisions with
# boot.loader.systemd-boot.bootCounting (the guest has no Python). It keeps what pullnix and
# systemd-boot depend on:
#  * one Type #1 entry per generation of the system profile, loader/entries/nixos-generation-N.conf;
#    with boot counting a NEW entry is written as nixos-generation-N+TRIES.conf, while an entry
#    already on the ESP keeps its file name (so its counter, or its blessing) and only has its
#    sort-key rewritten;
#  * kernel and initrd copied once to EFI/nixos/, named after their store paths;
#  * entries of generations that left the profile are deleted, and so are unused kernels;
#  * the default configuration (the argument) gets sort-key "nixor-default", the others "nixos",
#    and loader.conf says `default nixos-generation-*`: systemd-boot boots the first entry of its
#    sort order that matches, and it sorts entries without tries left last;
#  * every file is written to a temporary name, fsynced and renamed; the ESP is synced at the end.
# Left out: specialisations, profiles other than `system`, bootspec (the toplevel's files are
# read, as bootspec's `synthesize` does), machine-id, devicetree, bootctl updates.
set -eu
PATH=/usr/bin:/bin
BOOT=/boot
TRIES=3
default=$1
entries=$BOOT/loader/entries
nixos=$BOOT/EFI/nixos
mkdir -p "$entries" "$nixos"
hold() { if [ -x /usr/local/lib/ci/hold ]; then /usr/local/lib/ci/hold "$1"; fi; }

gens=$(nix-env --list-generations -p /nix/var/nix/profiles/system | awk '{ print $1 }')
is_gen() { echo "$gens" | grep -qx "$1"; }
# The generation number in an entry's file name (nixos-generation-12+2-1.conf -> 12).
gen_of() { echo "$1" | sed -n 's/^nixos.*-generation-\([0-9][0-9]*\).*\.conf$/\1/p'; }
# The ESP path of the copy of a store file, as the builder's copy_from_file names it.
efi_name() {
  p=$(readlink -f "$1"); sub=${p#/nix/store/}; sub=${sub%%/*}; name=${p##*/}
  if [ "$name" = "$sub" ]; then echo "EFI/nixos/$name.efi"; else echo "EFI/nixos/$sub-$name.efi"; fi
}
copy_from_file() {
  rel=$(efi_name "$1")
  if [ ! -e "$BOOT/$rel" ]; then
    cp "$(readlink -f "$1")" "$BOOT/$rel.tmp.$$" && sync "$BOOT/$rel.tmp.$$" && mv "$BOOT/$rel.tmp.$$" "$BOOT/$rel"
  fi
  echo "$rel"
}
# write_file PATH TEXT: temporary file (PATH with its suffix replaced by .tmp), fsync, rename.
write_file() {
  tmp=${1%.*}.tmp
  printf '%s' "$2" > "$tmp" && sync "$tmp" && mv "$tmp" "$1"
}

# Remove what belongs to generations that are gone.
known_files=""
for n in $gens; do
  sys=/nix/var/nix/profiles/system-$n-link
  known_files="$known_files $(efi_name "$sys/kernel") $(efi_name "$sys/initrd")"
done
for f in "$entries"/nixos*-generation-[1-9]*.conf; do
  [ -e "$f" ] || continue
  n=$(gen_of "${f##*/}")
  [ -n "$n" ] && ! is_gen "$n" && rm -f "$f"
done
for f in "$nixos"/*; do
  [ -f "$f" ] || continue
  case " $known_files " in *" EFI/nixos/${f##*/} "*) ;; *) rm -f "$f" ;; esac
done

found_default=no
for n in $gens; do
  sys=$(readlink -f "/nix/var/nix/profiles/system-$n-link")
  if [ "$sys" = "$default" ]; then key=nixor-default; found_default=yes; else key=nixos; fi
  existing=$(ls "$entries" | grep -E "^nixos-generation-$n(\+[0-9]+(-[0-9]+)?)?\.conf\$" | head -n1 || true)
  if [ -n "$existing" ]; then
    # Already on the ESP (maybe counted down, maybe blessed): same name, new sort-key.
    text=$(grep -v '^sort-key ' "$entries/$existing")
    write_file "$entries/$existing" "$text
sort-key $key"
  else
    kernel=$(copy_from_file "$sys/kernel")
    initrd=$(copy_from_file "$sys/initrd")
    date=$(date -d "@$(stat -c %Z "/nix/var/nix/profiles/system-$n-link")" +%F)
    write_file "$entries/nixos-generation-$n+$TRIES.conf" "title NixOS
version Generation $n $(cat "$sys/nixos-version"), built on $date
linux /$kernel
initrd  /$initrd
options init=$sys/init $(cat "$sys/kernel-params")
sort-key $key"
  fi
done
# A power cut here leaves the new entries without the new loader.conf.
hold builder-entries-written
if [ "$found_default" = yes ]; then
  write_file "$BOOT/loader/loader.conf" "timeout 0
default nixos-generation-*
editor 0
console-mode keep
"
fi
sync -f "$BOOT"
