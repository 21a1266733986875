#!/usr/bin/env bash
# nspawn.sh: boots a Debian container under a REAL systemd (PID 1 of systemd-nspawn) for the unit
# tests in tests/systemd.rs, on a host whose own PID 1 need not be systemd.
#
#   nspawn.sh rootfs                   build the cached root file system (once), print its path
#   nspawn.sh run PAYLOAD RESULTS      boot it with PAYLOAD until the scenario ends; exit 0 = pass
#   nspawn.sh verify PAYLOAD           `systemd-analyze verify` PAYLOAD/units/* inside it; any
#                                      output at all is a failure (it warns with exit 0)
#
# The root file system: Debian bookworm (systemd 252) from debootstrap, plus Nix 2.8 (Debian's
# nix-bin, configured single-user and offline like the host) and git, plus a scenario runner
# unit. It is built once into $PULLNIX_NSPAWN_CACHE (default /var/cache/pullnix-nspawn) under a
# name keyed by this script's hash, so editing the script rebuilds it; building needs Debian's
# mirror (about 2 minutes), everything after that is offline.
#
# PAYLOAD (mounted read-only at /ci in the container):
#   test.sh    the scenario, run once per boot by ci-scenario.service with CI_BOOT=1,2,...;
#              exit 0 = pass (the container powers off), 100 = reboot me, anything else = fail.
#              It, or pullnix, may also reboot or power off on its own.
#   bin/*      installed into /usr/local/bin before the first boot
#   units/*    installed into /etc/systemd/system before the first boot
#   enable     unit names (one per line) enabled before the first boot
# RESULTS (read-write at /results): test-boot-N.log, console-boot-N.log, boots.log, journal.txt.
#
# Each run boots a copy-on-write overlay of the cached root, so a scenario's reboots keep their
# state and runs never see each other's. A "reboot" is systemd-nspawn exiting 133 and being
# started again on the same overlay; a power cut is the container killed outright when a boot
# exceeds BOOT_TIMEOUT (then RESET_ON_TIMEOUT=1 starts it again, like a hardware watchdog).
# Env: BOOT_TIMEOUT (s, default 300), MAX_BOOTS (10), RESET_ON_TIMEOUT (0), NSPAWN_ARGS (extra
# systemd-nspawn arguments, split on spaces).
set -euo pipefail

CACHE=${PULLNIX_NSPAWN_CACHE:-/var/cache/pullnix-nspawn}
ROOTFS=$CACHE/bookworm-$(sha256sum "$0" | cut -c1-12)
MIRROR=${DEBIAN_MIRROR:-http://deb.debian.org/debian}

say() { printf 'nspawn.sh: %s\n' "$*" >&2; }

# systemd-nspawn wants a tmpfs at /run/systemd/nspawn to clean its propagation directory; on
# hosts where /run is a disk file system it refuses ("Attempted to remove disk file system").
nspawn_run_dir() {
  [[ $(stat -fc %T /run) == tmpfs ]] && return
  (
    flock 8
    mountpoint -q /run/systemd/nspawn ||
      { mkdir -p /run/systemd/nspawn && mount -t tmpfs -o mode=0755 tmpfs /run/systemd/nspawn; }
  ) 8>/run/pullnix-nspawn.lock
}

host_tools() {
  command -v systemd-nspawn >/dev/null && command -v debootstrap >/dev/null && return
  say "systemd-nspawn or debootstrap missing: run scripts/setup-debian.sh"
  exit 2
}

build_rootfs() {
  host_tools
  mkdir -p "$CACHE"
  exec 9>"$CACHE/.build.lock"
  flock 9
  [[ -e $ROOTFS/.ready ]] && return
  local tmp=$ROOTFS.partial
  rm -rf "$tmp"
  say "debootstrap bookworm into $tmp (once; cached)"
  debootstrap --variant=minbase --include=systemd,systemd-sysv,dbus \
    bookworm "$tmp" "$MIRROR" >"$CACHE/debootstrap.log" 2>&1 ||
    { tail -n 20 "$CACHE/debootstrap.log" >&2; exit 1; }
  # Nix and git with apt inside the new root (debootstrap's own resolver fails to configure
  # git's perl dependencies in a minbase root). The host's network is used only here.
  nspawn_run_dir
  systemd-nspawn -q --register=no --keep-unit -D "$tmp" --resolv-conf=replace-host --pipe \
    /bin/sh -ec 'export DEBIAN_FRONTEND=noninteractive
      apt-get update -q
      apt-get install -y -q --no-install-recommends nix-bin git
      apt-get clean' >>"$CACHE/debootstrap.log" 2>&1 ||
    { tail -n 20 "$CACHE/debootstrap.log" >&2; exit 1; }
  echo ci >"$tmp/etc/hostname"
  mkdir -p "$tmp/etc/nix" "$tmp/var/lib/ci" "$tmp/ci" "$tmp/results"
  # As scripts/setup-debian.sh configures the host, but without build users: root builds.
  echo '{"flakes":[],"version":2}' >"$tmp/etc/nix/registry-empty.json"
  cat >"$tmp/etc/nix/nix.conf" <<'CONF'
sandbox = false
build-users-group =
experimental-features = nix-command flakes
substituters =
flake-registry = /etc/nix/registry-empty.json
CONF
  # The scenario runner: one run of /ci/test.sh per boot, its exit code turned into the verdict
  # and into poweroff or reboot.
  cat >"$tmp/usr/local/sbin/ci-scenario" <<'RUNNER'
#!/bin/bash
export CI_BOOT=$(cat /var/lib/ci/boot)
/ci/test.sh >>"/results/test-boot-$CI_BOOT.log" 2>&1
rc=$?
# pullnix (or the scenario) may already be taking the machine down.
[[ $(systemctl is-system-running 2>/dev/null) == stopping ]] && exit 0
case $rc in
  0) echo pass >/results/.verdict; systemctl poweroff --no-block ;;
  100) systemctl reboot --no-block ;;
  *) echo "fail: test.sh exited $rc on boot $CI_BOOT" >/results/.verdict; systemctl poweroff --no-block ;;
esac
RUNNER
  chmod 755 "$tmp/usr/local/sbin/ci-scenario"
  cat >"$tmp/etc/systemd/system/ci-scenario.service" <<'UNIT'
[Unit]
Description=pullnix test scenario (/ci/test.sh)
After=multi-user.target
ConditionPathExists=/ci/test.sh

[Service]
Type=exec
ExecStart=/usr/local/sbin/ci-scenario
StandardOutput=journal+console
StandardError=journal+console
TimeoutStopSec=10

[Install]
WantedBy=multi-user.target
UNIT
  systemctl --root="$tmp" enable ci-scenario.service >/dev/null 2>&1
  # Quiet, repeatable boots: no login prompts, no maintenance timers firing mid-scenario.
  systemctl --root="$tmp" mask console-getty.service getty.target apt-daily.timer \
    apt-daily-upgrade.timer dpkg-db-backup.timer e2scrub_all.timer fstrim.timer \
    systemd-tmpfiles-clean.timer >/dev/null 2>&1
  rm -rf "$tmp"/var/cache/apt/archives/*.deb "$tmp"/var/lib/apt/lists/*
  touch "$tmp/.ready"
  mv "$tmp" "$ROOTFS"
  say "root file system ready: $ROOTFS ($(du -sh "$ROOTFS" | cut -f1))"
}

# A cgroup of this run's own. With --register=no --keep-unit the container lives below the
# caller's cgroup; callers that all sit in the same cgroup would share ".../payload/system.slice"
# and one container's units would see (and stop) another's processes.
own_cgroup() {
  local cg2 mine
  cg2=$(awk '$3 == "cgroup2" { print $2; exit }' /proc/self/mounts)
  [[ -n $cg2 && -w $cg2 ]] || return 0
  mine=$(sed -n 's|^0::||p' /proc/self/cgroup)
  parent=$cg2${mine%/}
  cgroup=$parent/pullnix-nspawn-$$
  mkdir -p "$cgroup"
  echo $$ >"$cgroup/cgroup.procs"
}

# Sets $work and $root: an overlay of the cached root with the payload's units installed.
boot_dir() {
  local payload=$1
  [[ -e $ROOTFS/.ready ]] || build_rootfs
  nspawn_run_dir
  work=$(mktemp -d /tmp/pullnix-nspawn.XXXXXX)
  root=$work/root
  mkdir -p "$work/upper" "$work/work" "$root"
  mount -t overlay overlay -o "lowerdir=$ROOTFS,upperdir=$work/upper,workdir=$work/work" "$root"
  trap cleanup EXIT
  [[ -d $payload/bin ]] && install -m 755 -t "$root/usr/local/bin" "$payload"/bin/*
  [[ -d $payload/units ]] && cp -a "$payload/units/." "$root/etc/systemd/system/"
  if [[ -f $payload/enable ]]; then
    grep -v '^[[:space:]]*\(#\|$\)' "$payload/enable" | xargs -r systemctl --root="$root" enable >/dev/null 2>&1
  fi
  return 0
}

cleanup() {
  if [[ -n ${root:-} ]]; then mountpoint -q "$root" && umount "$root"; fi
  [[ -n ${work:-} ]] && rm -rf "$work"
  if [[ -n ${cgroup:-} ]]; then
    echo $$ >"$parent/cgroup.procs" 2>/dev/null || true
    find "$cgroup" -depth -type d -exec rmdir {} + 2>/dev/null || true
  fi
}

verify() {
  local payload out rc=0 units=()
  payload=$(realpath "$1")
  own_cgroup
  boot_dir "$payload"
  for u in "$payload"/units/*; do units+=("/etc/systemd/system/${u##*/}"); done
  ((${#units[@]})) || { say "no units in $payload/units"; exit 2; }
  out=$(systemd-nspawn -q --register=no --keep-unit -D "$root" --bind-ro="$payload:/ci" \
    env SYSTEMD_COLORS=0 systemd-analyze verify --man=no "${units[@]}" 2>&1) || rc=$?
  if [[ $rc == 0 && -z $out ]]; then
    say "verify: ${#units[@]} units, no findings"
    return 0
  fi
  printf '%s\n' "$out" >&2
  say "verify: findings (exit $rc)"
  return 1
}

run() {
  local payload results boot=0 rc start tenths what
  payload=$(realpath "$1")
  results=$(realpath -m "$2")
  [[ -x $payload/test.sh ]] || { say "$payload/test.sh is missing or not executable"; exit 2; }
  mkdir -p "$results"
  rm -f "$results/.verdict"
  own_cgroup
  boot_dir "$payload"
  while :; do
    boot=$((boot + 1))
    echo "$boot" >"$root/var/lib/ci/boot"
    start=${EPOCHREALTIME/./}
    # No host systemd or machined to register with (--register=no --keep-unit); SIGKILL as the
    # kill signal makes a timeout a power cut, not a clean shutdown.
    rc=0
    # shellcheck disable=SC2086 # NSPAWN_ARGS is a list of arguments
    SYSTEMD_NSPAWN_UNIFIED_HIERARCHY=1 timeout -k 20 "${BOOT_TIMEOUT:-300}" \
      systemd-nspawn --quiet --register=no --keep-unit --machine="ci-$$" -D "$root" \
      --private-network --kill-signal=SIGKILL --console=read-only \
      --bind-ro="$payload:/ci" --bind="$results:/results" ${NSPAWN_ARGS:-} \
      --boot >"$results/console-boot-$boot.log" 2>&1 || rc=$?
    tenths=$(((${EPOCHREALTIME/./} - start) / 100000))
    case $rc in
      0) what=poweroff ;; 133) what=reboot ;; 124 | 137) what="power cut (boot timeout)" ;; *) what=error ;;
    esac
    printf 'boot %d: %s (nspawn exit %d) after %d.%ds\n' "$boot" "$what" "$rc" \
      $((tenths / 10)) $((tenths % 10)) | tee -a "$results/boots.log" >&2
    if ((boot >= ${MAX_BOOTS:-10})) && [[ $rc == 133 || $rc == 124 ]]; then
      say "stopping after MAX_BOOTS=${MAX_BOOTS:-10} boots"
      break
    fi
    [[ $rc == 133 ]] && continue
    [[ $rc == 124 && ${RESET_ON_TIMEOUT:-0} == 1 ]] && continue
    break
  done
  journalctl -D "$root/var/log/journal" --no-pager -o short-monotonic >"$results/journal.txt" 2>&1 || true
  local verdict
  verdict=$(cat "$results/.verdict" 2>/dev/null || echo "fail: no verdict (last nspawn exit $rc)")
  say "verdict: $verdict"
  [[ $verdict == pass ]]
}

case ${1:-} in
  rootfs) build_rootfs && echo "$ROOTFS" ;;
  run) [[ $# == 3 ]] || { say "usage: nspawn.sh run PAYLOAD RESULTS"; exit 2; }; run "$2" "$3" ;;
  verify) [[ $# == 2 ]] || { say "usage: nspawn.sh verify PAYLOAD"; exit 2; }; verify "$2" ;;
  *) sed -n '2,30p' "$0" >&2; exit 2 ;;
esac
