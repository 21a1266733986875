#!/bin/sh
# Stand-in for NixOS's switch-to-configuration, acting on the container's real root (see
# flake.nix). Every step is appended to /var/log/fixture-switch.log, which the tests read.
# Like the real one it reports its progress on stderr.
set -u
PATH=/usr/local/bin:/usr/bin:/bin
out='@out@'
variant='@variant@'
action="${1:-}"
log() { echo "$action $out [$$] $*" >> /var/log/fixture-switch.log; }
say() { echo "$*" >&2 || log "could not write to stderr: $*"; }
log "start (variant $variant, unit $(sed -n "s|^0::.*/||p" /proc/self/cgroup))"

case "$action" in
  switch | boot | test | dry-activate) ;;
  *) echo "usage: $0 [switch|boot|test|dry-activate]" >&2; exit 1 ;;
esac

replace_link() { ln -sfn "$2" "$1.tmp.$$" && mv -T "$1.tmp.$$" "$1"; }

pullnix_units="pullnix.service pullnix-confirm.service pullnix-boot-check.service pullnix.timer"

if [ "$action" = test ] || [ "$action" = switch ]; then
  if [ "$variant" = stop-agent ] && [ ! -e /var/lib/fixture/stopped-agent ]; then
    mkdir -p /var/lib/fixture && touch /var/lib/fixture/stopped-agent
    say "stopping the following units: pullnix.service"
    log "stopping pullnix.service"
    systemctl stop pullnix.service
    log "stopped pullnix.service (now $(systemctl is-active pullnix.service))"
  fi
  say "activating the configuration..."
  replace_link /run/current-system "$out"
  log "activated"
  systemctl daemon-reload
  if [ "$variant" = own-units ]; then
    for unit in $pullnix_units; do
      if grep -qx 'X-RestartIfChanged=false' "/etc/systemd/system/$unit" 2>/dev/null; then
        log "not restarting $unit (X-RestartIfChanged=false)"
      elif systemctl -q is-active "$unit"; then
        say "restarting the following units: $unit"
        log "restarting $unit"
        systemctl restart "$unit"
      fi
    done
  fi
  say "starting the following units: fixture-app.service"
  systemctl restart fixture-app.service || log "fixture-app.service failed to start"
  if [ "$variant" = stop-agent ]; then
    log "starting pullnix-confirm.service"
    systemctl start --no-block pullnix-confirm.service
  fi
  log "done"
fi

if [ "$action" = boot ] || [ "$action" = switch ]; then
  profile=/nix/var/nix/profiles/system
  gen=$(readlink "$profile"); gen=${gen##*/}; gen=${gen#system-}; gen=${gen%-link}
  target=$(readlink -f "$profile")
  mkdir -p /boot/loader/entries
  printf '%s\n' "$target" > /boot/default.tmp.$$ && mv -T /boot/default.tmp.$$ /boot/default
  printf 'title NixOS (Generation %s)\nlinux %s/kernel\noptions init=%s/init\n' "$gen" "$target" "$target" \
    > /boot/loader/entries/nixos-generation-$gen.conf
  log "boot default: generation $gen ($target)"
fi
exit 0
