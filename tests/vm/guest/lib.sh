# Shared by the scenario scripts (tests/vm/scenarios/*.sh), sourced as /ci/lib.sh in the guest.
#
# The machine: a real UEFI boot (OVMF, systemd-boot, Debian's kernel and initrd) of the fake NixOS
# of tests/vm/flake. The system profile is /nix/var/nix/profiles/system of the guest's own Nix
# store, the ESP is mounted at /boot, pullnix runs from the units nix/render-units.nix renders,
# and its remote is file:///srv/git/fleet.git (branches c0, c1, ...; "pushing" moves main).
# Everything the Rust side asserts on is copied to /results by `snapshot`.
set -u
export PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin
REPO=/srv/git/fleet.git
STATE=/var/lib/pullnix/state.json
PROFILE=/nix/var/nix/profiles/system
EFIVARS=/sys/firmware/efi/efivars
LOADER=4a67b082-0a4c-41cf-b6c7-440b29bb8c4f

log() { printf '[test %(%T)T boot %s] %s\n' -1 "${CI_BOOT:-?}" "$*"; }

efivar() { local f=$EFIVARS/$1-$LOADER; [[ -e $f ]] && cat "$f" | tail -c +5 | tr -d '\000'; }

# snapshot TAG: what the machine looks like now, in /results/TAG/.
snapshot() {
  local d=/results/$1
  mkdir -p "$d"
  cp "$STATE" "$d/state.json" 2>/dev/null || true
  pullnix status --json > "$d/status.json" 2>/dev/null || true
  nix-env -p "$PROFILE" --list-generations > "$d/generations.txt" 2>&1 || true
  readlink "$PROFILE" > "$d/profile-link" 2>/dev/null || true
  readlink -f "$PROFILE" > "$d/profile" 2>/dev/null || true
  ls -1 /boot/loader/entries > "$d/entries.txt" 2>/dev/null || true
  mkdir -p "$d/entries"
  cp /boot/loader/entries/*.conf "$d/entries/" 2>/dev/null || true
  cp /boot/loader/loader.conf "$d/loader.conf" 2>/dev/null || true
  bootctl list --no-pager > "$d/bootctl-list.txt" 2>&1 || true
  cat /proc/cmdline > "$d/cmdline"
  readlink /run/booted-system > "$d/booted" 2>/dev/null || true
  readlink /run/current-system > "$d/current" 2>/dev/null || true
  efivar LoaderEntrySelected > "$d/entry-selected" || true
  efivar LoaderBootCountPath > "$d/boot-count-path" || true
  echo "$CI_BOOT" > "$d/ci-boot"
  systemctl show pullnix.service pullnix-confirm.service pullnix-boot-check.service \
    systemd-bless-boot.service boot-complete.target \
    -p Id -p ActiveState -p SubState -p Result -p ExecMainStatus -p NRestarts \
    > "$d/units.txt" 2>&1 || true
  journalctl -b -o short-monotonic --no-pager > "$d/journal.txt" 2>&1 || true
  journalctl -b -1 -o short-monotonic --no-pager > "$d/journal-previous-boot.txt" 2>&1 || true
  cp /var/log/fixture-switch.log "$d/switch.log" 2>/dev/null || true
}

fail() {
  log "FAIL: $*"
  echo "fail: boot $CI_BOOT: $*" > /results/verdict
  snapshot "fail"
  systemctl --no-pager status 'pullnix*' systemd-bless-boot.service boot-complete.target 2>&1 | tail -60
  exit 1
}

# wait_for SECONDS DESCRIPTION COMMAND...: polls COMMAND every second.
wait_for() {
  local limit=$1 what=$2; shift 2
  local end=$((SECONDS + limit))
  until "$@"; do
    ((SECONDS < end)) || fail "timed out after ${limit}s waiting for: $what"
    sleep 1
  done
  log "ok: $what"
}

sha() { git -C "$REPO" rev-parse "refs/heads/$1"; }
push() { git -C "$REPO" update-ref refs/heads/main "$(sha "$1")"; sync; log "pushed $1 ($(sha "$1"))"; }

# Nothing in flight: no pending record, and neither pullnix unit running or about to.
settled() {
  grep -q '"pending": null' "$STATE" 2>/dev/null || return 1
  local u s
  for u in pullnix.service pullnix-confirm.service; do
    s=$(systemctl is-active "$u")
    [[ $s == activating || $s == deactivating || $s == reloading ]] && return 1
    [[ $u == pullnix-confirm.service && $s == active ]] && return 1
  done
  return 0
}
in_phase() { grep -q "\"phase\": \"$1\"" "$STATE" 2>/dev/null; }
deployed_is() { grep -A1 '"deployed": {' "$STATE" 2>/dev/null | grep -q "\"commit\": \"$(sha "$1")\""; }
is_bad() { sed -n '/^  "bad": \[/,/^  \]/p' "$STATE" 2>/dev/null | grep -q "\"commit\": \"$(sha "$1")\""; }

# The boot that is running came from the boot entry whose file name starts with PREFIX.
booted_entry() { efivar LoaderEntrySelected; }

# A poll, as the timer would start it; returns at once (boot mode reboots from inside it).
poll() { systemctl start --no-block pullnix.service; log "started pullnix.service"; }
# A poll that must end by itself; fails the scenario if pullnix.service failed.
poll_and_wait() {
  systemctl start pullnix.service || fail "pullnix.service failed: $(systemctl show -p ExecMainStatus --value pullnix.service)"
  log "pullnix.service finished"
}

# arm POINT: the next time the machine passes the hold point POINT (guest/hold), the host cuts
# the power there.
arm() { mkdir -p /var/lib/ci/hold; touch "/var/lib/ci/hold/$1"; sync; log "armed a power cut at $1"; }
# Cut the power right here.
cut_now() { arm "$1"; /usr/local/lib/ci/hold "$1"; fail "no power cut at $1"; }

# The machine is about to go down (pullnix reboots it, or a power cut comes): wait for it.
await_down() { log "waiting for $1"; sleep 900; fail "still up: $1 did not happen"; }

# No deployment in flight (a fresh machine has no state file yet).
idle() { [[ ! -e $STATE ]] || settled; }
# This boot came from a boot-counted entry (systemd-boot then sets LoaderBootCountPath, and
# systemd-bless-boot-generator pulls systemd-bless-boot.service and boot-complete.target in).
counted_boot() { [[ -n $(efivar LoaderBootCountPath) ]]; }
# The boot is assessed: an uncounted boot has nothing to assess; a counted one is once
# boot-complete.target is reached and systemd-bless-boot.service has run.
boot_assessed() {
  counted_boot || return 0
  [[ $(systemctl is-active boot-complete.target) == active ]] &&
    [[ $(systemctl is-active systemd-bless-boot.service) == active ]]
}
booted_is() { [[ $(readlink /run/booted-system) == "$1" ]]; }
