#!/bin/sh
# switch-to-configuration of the fake NixOS (see flake.nix). `test` activates (re-points
# /run/current-system, restarts the fixture's application); `boot` installs the boot loader
# entries with this configuration as the default, by the builder beside it (NixOS runs
# system.build.installBootLoader); `switch` does both. Steps go to /var/log/fixture-switch.log.
#
# Like nixpkgs' switch-to-configuration-ng (pkgs/by-name/sw/switch-to-configuration-ng/src/src/
# main.rs) it runs one at a time (a non-blocking flock on /run/nixos/switch-to-configuration.lock,
# exit 11), installs the boot loader before it activates, and for `test` and `switch` then
# forgets failed units, reloads systemd, starts every active target (but suspend, hibernate,
# hybrid-sleep and those with RefuseManualStart=yes) and waits for those jobs, which starts
# again every unit they want that is not active (pullnix-confirm.service, and with boot
# counting boot-complete.target waits for it); it exits 4 when a job failed or a unit is
# failed (or auto-restarting after a failure) afterwards. tests/systemd/flake has the same.
set -u
PATH=/usr/local/bin:/usr/bin:/bin
out='@out@'
action="${1:-}"
log() { echo "$(date +%T) $action $out [$$] $*" >> /var/log/fixture-switch.log; }
log start
case "$action" in
  switch | boot | test | dry-activate) ;;
  *) echo "usage: $0 [switch|boot|test|dry-activate]" >&2; exit 1 ;;
esac
mkdir -p /run/nixos
exec 9>>/run/nixos/switch-to-configuration.lock
if ! flock -n 9; then
  echo "Could not acquire lock" >&2
  log "could not acquire the switch lock"
  exit 11
fi
if [ "$action" = boot ] || [ "$action" = switch ]; then
  echo "updating the boot loader..." >&2
  '@builder@' "$out" || { log "boot loader update failed"; exit 1; }
  log "boot loader updated"
fi
rc=0
if [ "$action" = test ] || [ "$action" = switch ]; then
  echo "activating the configuration..." >&2
  ln -sfn "$out" /run/current-system.tmp.$$ && mv -T /run/current-system.tmp.$$ /run/current-system
  log activated
  systemctl reset-failed
  systemctl daemon-reload
  systemctl restart fixture-app.service || { log "fixture-app.service failed to start"; rc=4; }
  targets=
  for t in $(systemctl list-units --type=target --state=active --plain --no-legend --no-pager | awk '{print $1}'); do
    case "$t" in suspend.target | hibernate.target | hybrid-sleep.target) continue ;; esac
    [ "$(systemctl show -P RefuseManualStart "$t")" = yes ] && continue
    targets="$targets $t"
  done
  log "starting the active targets:$targets"
  systemctl start $targets || { log "a target's start job failed"; rc=4; }
  log "target start jobs done"
  sleep 0.3
  failed=$(systemctl list-units --state=failed --plain --no-legend --no-pager | awk '{print $1}')
  for u in $(systemctl list-units --all --type=service --plain --no-legend --no-pager | awk '$4 == "auto-restart" {print $1}'); do
    [ "$(systemctl show -P ExecMainStatus "$u")" != 0 ] && failed="$failed $u"
  done
  if [ -n "$(echo $failed)" ]; then
    echo "warning: the following units failed: $(echo $failed)" >&2
    rc=4
  fi
fi
log "done (exit $rc)"
exit $rc
