#!/bin/bash
# Health check rounds further apart than the confirm unit's WatchdogSec (confirm.interval 6 s,
# WatchdogSec 3 s): confirm keeps sending WATCHDOG=1 while it waits for the next round, so the
# watchdog leaves a healthy confirm alone. The `gate` check fails for the first rounds (while
# /run/ci-hold exists), then passes, and the candidate is confirmed by the first confirm.
. /ci/lib.sh
install_system c0
push c1
want=$(build c1)
touch /run/ci-hold
sync_within 60 || fail "systemctl start pullnix.service failed"
wait_for 30 "second health round failed" \
  sh -c 'journalctl -q -u pullnix-confirm.service | grep -q "health check failed (round 2"'
rm /run/ci-hold
wait_for 60 "deployment settled" settled
deployed_is c1 || fail "c1 is not recorded as deployed"
expect_system "$want"
journalctl -q -u pullnix-confirm.service | grep -q "Watchdog timeout" && fail "the watchdog killed a healthy confirm"
[[ $(systemctl show -P NRestarts pullnix-confirm.service) == 0 ]] || fail "pullnix-confirm.service was restarted"
collect
