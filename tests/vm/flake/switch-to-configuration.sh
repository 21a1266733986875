#!/bin/sh
# switch-to-configuration of the fake NixOS (see flake.nix). `test` activates (re-points
# /run/current-system, restarts the fixture's application); `boot` installs the boot loader
# entries with this configuration as the default, by the builder beside it (NixOS runs
# system.build.installBootLoader); `switch` does both. Steps go to /var/log/fixture-switch.log.
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
if [ "$action" = test ] || [ "$action" = switch ]; then
  echo "activating the configuration..." >&2
  ln -sfn "$out" /run/current-system.tmp.$$ && mv -T /run/current-system.tmp.$$ /run/current-system
  systemctl restart fixture-app.service || log "fixture-app.service failed to start"
  log activated
fi
if [ "$action" = boot ] || [ "$action" = switch ]; then
  echo "updating the boot loader..." >&2
  '@builder@' "$out" || { log "boot loader update failed"; exit 1; }
  log "boot loader updated"
fi
log done
exit 0
