#!/bin/bash
# An unhealthy candidate (no `healthy` marker, so fixture-app.service fails, the system is
# degraded, and the marker check fails) is reverted by pullnix-confirm.service when
# confirm.timeout (8 s) expires; the commit is recorded as bad and the next poll skips it.
. /ci/lib.sh
install_system c0
was=$(current)
push c1
bad=$(build c1)
t0=$SECONDS
systemctl start pullnix.service || fail "systemctl start pullnix.service failed"
is_current "$bad" || fail "the candidate was not activated"
wait_for 40 "deployment settled" settled
expect_reverted_c1 "$t0" "$was"
systemctl -q is-active fixture-app.service || fail "fixture-app.service did not come back"
collect reverted
systemctl start pullnix.service || fail "the second poll failed"
expect_system "$was"
collect
