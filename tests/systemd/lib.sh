# Shared by the scenario scripts (tests/systemd/*.sh), which tests/systemd.rs installs as the
# payload's test.sh of one container each. Sourced as /ci/lib.sh inside the container.
#
# The machine: the container's real / is the NixOS system pullnix manages (no --root): pullnix
# runs from the rendered units as on NixOS, the system profile is /nix/var/nix/profiles/system
# of the container's own Nix store, the fixture's switch-to-configuration re-points
# /run/current-system and writes /boot/default, and ci-stage2.service plays NixOS's stage 2 at
# every boot (/run/booted-system and /run/current-system -> what /boot/default names).
# The fixture repository (/ci/repo.git, branches c0, c1, ...) is served by `git daemon` at
# git://127.0.0.1:9418/fleet.git; "pushing" moves its main branch.
set -u
export PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin
REPO=/srv/git/fleet.git
STATE=/var/lib/pullnix/state.json
# `pullnix status`, `pullnix rollback` from the scenarios read the units' configuration.
export PULLNIX_CONFIG=/ci/config.toml

log() { printf '[test %(%T)T boot %s] %s\n' -1 "${CI_BOOT:-?}" "$*"; }

# Copies what the Rust side asserts on to /results (the journal is collected by the harness).
collect() {
  local tag=${1:-boot$CI_BOOT}
  cp "$STATE" "/results/state-$tag.json" 2>/dev/null || true
  pullnix status --json > "/results/status-$tag.json" 2>/dev/null || true
  cp /var/log/fixture-switch.log "/results/switch-$tag.log" 2>/dev/null || true
  readlink /run/current-system > "/results/current-$tag" 2>/dev/null || true
  systemctl show pullnix.service pullnix-confirm.service pullnix-boot-check.service pullnix.timer \
    -p Id -p ActiveState -p SubState -p Result -p ExecMainStatus -p NRestarts \
    > "/results/units-$tag.txt" 2>&1 || true
}

fail() {
  log "FAIL: $*"
  collect "fail"
  systemctl --no-pager status 'pullnix*' fixture-app.service 2>&1 | tail -60
  exit 1
}

# What systemd is waiting for (a deadlock shows as start jobs waiting on each other).
show_jobs() { systemctl list-jobs --no-pager 2>&1; ps -eo pid,ppid,args | grep -E '[p]ullnix|[s]witch-to-configuration' ; }

# run_within SECONDS DESCRIPTION COMMAND...: COMMAND must end within SECONDS (its exit code is
# returned); a command still running then is a deadlock: the jobs and processes are shown, it
# is killed, and the scenario fails.
run_within() {
  local limit=$1 what=$2; shift 2
  "$@" &
  local pid=$! end=$((SECONDS + limit))
  while kill -0 $pid 2>/dev/null; do
    if ((SECONDS >= end)); then
      log "still waiting after ${limit}s for: $what"
      show_jobs
      show_jobs > /results/jobs-stuck.txt
      kill $pid 2>/dev/null
      fail "deadlock: $what did not end within ${limit}s"
    fi
    sleep 0.2
  done
  wait $pid
}

# sync_within SECONDS: one `systemctl start pullnix.service` that must end within SECONDS.
sync_within() {
  run_within "$1" "systemctl start pullnix.service" systemctl start pullnix.service
}

# wait_for SECONDS DESCRIPTION COMMAND...: polls COMMAND every 0.2 s.
wait_for() {
  local limit=$1 what=$2; shift 2
  local end=$((SECONDS + limit))
  until "$@"; do
    ((SECONDS < end)) || { show_jobs; fail "timed out after ${limit}s waiting for: $what"; }
    sleep 0.2
  done
  log "ok: $what"
}

sha() { git -C "$REPO" rev-parse "refs/heads/$1"; }
push() { git -C "$REPO" update-ref refs/heads/main "$(sha "$1")"; log "pushed $1 ($(sha "$1"))"; }

# The store path commit NAME builds to, built offline by the container's own Nix.
build() {
  local json
  json=$(nix build --no-link --json \
    "git+file://$REPO?ref=refs/heads/$1&rev=$(sha "$1")#nixosConfigurations.ci.config.system.build.toplevel") \
    || fail "nix build of $1 failed"
  printf '%s\n' "$json" | sed -n 's/.*"out":"\([^"]*\)".*/\1/p'
}

start_git_daemon() {
  systemd-run --quiet --unit=ci-git-daemon --service-type=exec \
    git daemon --listen=127.0.0.1 --port=9418 --base-path=/srv/git --export-all --reuseaddr /srv/git \
    || fail "cannot start git daemon"
  wait_for 10 "git daemon answers" git ls-remote -q git://127.0.0.1:9418/fleet.git
}

# The installer: the fixture repository, the config, and commit NAME as generation 1, running
# and booted (what nixos-install would leave behind).
install_system() {
  mkdir -p /srv/git /etc/pullnix
  git clone -q --bare --mirror /ci/repo.git "$REPO" || fail "cannot copy the fixture repository"

  start_git_daemon
  local out; out=$(build "$1")
  nix-env -p /nix/var/nix/profiles/system --set "$out" || fail "nix-env --set failed"
  "$out/bin/switch-to-configuration" switch 2>/dev/null || fail "installing $1 failed"
  ln -sfn "$out" /run/booted-system
  log "installed $1 as generation 1: $out"
}

current() { readlink /run/current-system; }
is_current() { [[ $(current) == "$1" ]]; }
profile_target() { readlink -f /nix/var/nix/profiles/system; }
boot_default() { cat /boot/default; }
# Nothing in flight: no pending record, neither pullnix unit running or about to restart.
settled() {
  grep -q '"pending": null' "$STATE" 2>/dev/null || return 1
  local u s
  for u in pullnix.service pullnix-confirm.service; do
    s=$(systemctl is-active "$u")
    [[ $s == active || $s == activating || $s == deactivating || $s == reloading ]] && return 1
  done
  return 0
}
deployed_is() { grep -A1 '"deployed": {' "$STATE" 2>/dev/null | grep -q "\"commit\": \"$(sha "$1")\""; }
last_result_is() { grep -A1 '"last": {' "$STATE" 2>/dev/null | grep -q "\"result\": \"$1\""; }
# The "bad" list of the (pretty-printed) state file names commit NAME.
is_bad() {
  grep -q '^  "bad": \[\],\?$' "$STATE" && return 1
  sed -n '/^  "bad": \[/,/^  \]/p' "$STATE" 2>/dev/null | grep -q "\"commit\": \"$(sha "$1")\""; }

# The system runs (and boots into) exactly the store path OUT.
expect_system() {
  is_current "$1" || fail "running $(current), expected $1"
  [[ $(profile_target) == "$1" ]] || fail "profile is $(profile_target), expected $1"
  [[ $(boot_default) == "$1" ]] || fail "boot default is $(boot_default), expected $1"
}

# expect_reverted_c1 T0 WAS: the candidate c1 was reverted; records how long that took since
# $SECONDS was T0 (/results/revert-seconds) and checks the system is back on WAS.
expect_reverted_c1() {
  local took=$((SECONDS - $1))
  log "reverted after ${took}s"
  echo "$took" > /results/revert-seconds
  last_result_is reverted || fail "the last result is not 'reverted'"
  is_bad c1 || fail "c1 is not recorded as bad"
  expect_system "$2"
}
