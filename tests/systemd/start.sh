#!/bin/bash
# `systemctl start pullnix.service` deploys at once; confirmation is handed to
# pullnix-confirm.service (confirm.unit), which checks the real systemd (health.units,
# health.system_running) and makes the candidate the boot default.
. /ci/lib.sh
install_system c0
push c1
want=$(build c1)
t0=$SECONDS
systemctl start pullnix.service || fail "systemctl start pullnix.service failed"
log "pullnix.service finished after $((SECONDS - t0))s"
wait_for 60 "deployment settled" settled
deployed_is c1 || fail "c1 is not recorded as deployed"
expect_system "$want"
systemctl -q is-active fixture-app.service || fail "fixture-app.service is not active"
[[ $(systemctl is-system-running) == running ]] || fail "system is $(systemctl is-system-running)"
collect
