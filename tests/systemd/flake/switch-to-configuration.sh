#!/bin/sh
# Stand-in for NixOS's switch-to-configuration, acting on the container's real root (see
# flake.nix). Every step is appended to /var/log/fixture-switch.log, which the tests read.
# Like the real one it reports its progress on stderr.
#
# For `test` and `switch` it does what nixpkgs' switch-to-configuration-ng does to the units
# of a running system that matter for pullnix (pkgs/by-name/sw/switch-to-configuration-ng/src/
# src/main.rs, do_system_switch; the Perl and Python versions before it did the same):
#   * one switch at a time: an exclusive, non-blocking flock on
#     /run/nixos/switch-to-configuration.lock ("Could not acquire lock", exit 11 = EAGAIN);
#   * `switch`/`boot`: the boot loader first; `boot` ends there;
#   * activation (here: /run/current-system, and the units this generation has or lacks), then
#     `systemctl reset-failed` and a daemon-reload;
#   * the changed units it restarts (here: fixture-app.service, and with the own-units variant
#     pullnix's units unless X-RestartIfChanged=false);
#   * "Start all active targets": every active *.target except suspend/hibernate/hybrid-sleep
#     and those with RefuseManualStart=yes is started (job mode "replace") and the switch
#     waits for those jobs. Every unit such a target wants or requires that is not active (a
#     oneshot without RemainAfterExit that already ran, a unit that failed, a unit new in this
#     generation) is started again, and a target ordered after such a unit waits for it;
#   * exit 4 when a start job failed, or when afterwards a unit is failed or a service is in
#     auto-restart after a failure (ExecMainStatus != 0).
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

mkdir -p /run/nixos
exec 9>>/run/nixos/switch-to-configuration.lock
if ! flock -n 9; then
  say "Could not acquire lock"
  log "could not acquire the switch lock"
  exit 11
fi

replace_link() { ln -sfn "$2" "$1.tmp.$$" && mv -T "$1.tmp.$$" "$1"; }

pullnix_units="pullnix.service pullnix-confirm.service pullnix-boot-check.service pullnix.timer"

if [ "$action" = boot ] || [ "$action" = switch ]; then
  profile=/nix/var/nix/profiles/system
  gen=$(readlink "$profile"); gen=${gen##*/}; gen=${gen#system-}; gen=${gen%-link}
  target=$(readlink -f "$profile")
  mkdir -p /boot/loader/entries
  printf '%s\n' "$target" > /boot/default.tmp.$$ && mv -T /boot/default.tmp.$$ /boot/default
  printf 'title NixOS (Generation %s)\nlinux %s/kernel\noptions init=%s/init\n' "$gen" "$target" "$target" \
    > /boot/loader/entries/nixos-generation-$gen.conf
  log "boot default: generation $gen ($target)"
  [ "$action" = boot ] && exit 0
fi

[ "$action" = dry-activate ] && exit 0

# pullnix's units belong to the generations that enable services.pullnix. A generation whose
# variant text has the word `no-pullnix` has none: its activation takes them (and their
# [Install] links) out of /etc/systemd/system, keeping a copy in /var/lib/fixture/pullnix-units;
# any other generation puts that copy back, as NixOS's /etc would appear with the new
# generation's units (the first deployment that enables pullnix).
stash=/var/lib/fixture/pullnix-units
has_pullnix=yes
case " $(cat "$out/variant") " in *" no-pullnix "*) has_pullnix=no ;; esac
units_change() {
  if [ $has_pullnix = no ] && [ -e /etc/systemd/system/pullnix.service ]; then
    mkdir -p $stash
    for u in $pullnix_units; do
      [ -e /etc/systemd/system/$u ] || continue
      systemctl -q is-enabled $u 2>/dev/null && echo $u >> $stash/enabled
      systemctl -q disable $u 2>/dev/null
      mv /etc/systemd/system/$u $stash/
    done
    log "removed pullnix's units (this generation has none)"
  elif [ $has_pullnix = yes ] && [ -d $stash ] && [ ! -e /etc/systemd/system/pullnix.service ]; then
    for u in $pullnix_units; do
      [ -e $stash/$u ] && mv $stash/$u /etc/systemd/system/
    done
    for u in $(cat $stash/enabled 2>/dev/null); do systemctl -q enable $u 2>/dev/null; done
    rm -rf $stash
    log "added pullnix's units (new in this generation)"
  fi
}

if [ "$variant" = stop-agent ] && [ ! -e /var/lib/fixture/stopped-agent ]; then
  mkdir -p /var/lib/fixture && touch /var/lib/fixture/stopped-agent
  say "stopping the following units: pullnix.service"
  log "stopping pullnix.service"
  systemctl stop pullnix.service
  log "stopped pullnix.service (now $(systemctl is-active pullnix.service))"
fi
say "activating the configuration..."
replace_link /run/current-system "$out"
units_change
log "activated"
rc=0
systemctl reset-failed
systemctl daemon-reload
if [ "$variant" = own-units ]; then
  for unit in $pullnix_units; do
    if grep -qx 'X-RestartIfChanged=false' "/etc/systemd/system/$unit" 2>/dev/null; then
      log "not restarting $unit (X-RestartIfChanged=false)"
    elif systemctl -q is-active "$unit"; then
      say "restarting the following units: $unit"
      log "restarting $unit"
      systemctl restart "$unit" || rc=4
    fi
  done
fi
say "restarting the following units: fixture-app.service"
systemctl restart fixture-app.service || { log "fixture-app.service failed to start"; rc=4; }
if [ "$variant" = stop-agent ]; then
  log "starting pullnix-confirm.service"
  systemctl start --no-block pullnix-confirm.service
fi

targets=
for t in $(systemctl list-units --type=target --state=active --plain --no-legend --no-pager | awk '{print $1}'); do
  case "$t" in suspend.target | hibernate.target | hybrid-sleep.target) continue ;; esac
  [ "$(systemctl show -P RefuseManualStart "$t")" = yes ] && continue
  targets="$targets $t"
done
log "starting the active targets:$targets"
# Like block_on_jobs: `systemctl start` waits for every job it enqueued.
systemctl start $targets || { log "a target's start job failed"; rc=4; }
log "target start jobs done"
# switch-to-configuration-ng lets the bus settle for 250 ms before it looks for failures.
sleep 0.3
failed=$(systemctl list-units --state=failed --plain --no-legend --no-pager | awk '{print $1}')
for u in $(systemctl list-units --all --type=service --plain --no-legend --no-pager | awk '$4 == "auto-restart" {print $1}'); do
  [ "$(systemctl show -P ExecMainStatus "$u")" != 0 ] && failed="$failed $u"
done
if [ -n "$(echo $failed)" ]; then
  say "warning: the following units failed: $(echo $failed)"
  rc=4
fi
log "done (exit $rc; failed units: $(echo $failed))"
exit $rc
