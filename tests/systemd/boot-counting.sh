#!/bin/bash
# Boot counting (units rendered with bootCounting = true): pullnix-confirm.service is ordered
# before boot-complete.target and required by it, and pullnix-boot-check.service is ordered
# before it. ci-bless-boot.service stands in for systemd-bless-boot.service, which
# systemd-bless-boot-generator pulls in at a boot from a counted entry: it requires
# boot-complete.target, so that target is active from then on, and every switch starts it again
# (flake/switch-to-configuration.sh). A deployment, an admin's switch in a confirmation window,
# the confirm unit's revert of an unhealthy candidate, the sync's revert of a candidate whose
# activation fails, and a rollback must each end; boot-complete.target stays reached, and the
# bless ran once, at boot.
. /ci/lib.sh
[[ $(systemctl is-active boot-complete.target) == active ]] || fail "boot-complete.target was not reached at boot"
confirmed_at=$(systemctl show -P ActiveEnterTimestampMonotonic pullnix-confirm.service)
[[ $confirmed_at -gt 0 && $(systemctl show -P ActiveEnterTimestampMonotonic boot-complete.target) -ge $confirmed_at ]] \
  || fail "boot-complete.target was reached before pullnix-confirm.service had started (READY=1)"
install_system c0
g1=$(current)

push c1
want=$(build c1)
sync_within 60 || fail "the deployment of c1 failed"
wait_for 60 "deployment settled" settled
deployed_is c1 || fail "c1 is not recorded as deployed"
expect_system "$want"
collect deployed

push c2
sick=$(build c2)
t0=$SECONDS
sync_within 60 || fail "the activation of c2 failed"
is_current "$sick" || fail "the candidate c2 was not activated"
# An admin's switch in the confirmation window starts boot-complete.target too: it must not
# wait for the window (nor the confirm for it).
run_within 5 "an admin's switch-to-configuration test in the confirmation window" \
  "$sick/bin/switch-to-configuration" test
log "the admin's switch ended with exit $?"
wait_for 60 "revert settled" settled
echo $((SECONDS - t0)) > /results/revert-seconds
last_result_is reverted || fail "the last result is not 'reverted'"
is_bad c2 || fail "c2 is not recorded as bad"
expect_system "$want"
collect reverted

push c3
build c3 >/dev/null
sync_within 60 && fail "the deployment of c3, whose switch fails, succeeded"
wait_for 60 "revert settled" settled
is_bad c3 || fail "c3 is not recorded as bad"
expect_system "$want"
collect broken

run_within 60 "pullnix rollback" pullnix rollback || fail "pullnix rollback failed"
wait_for 60 "rollback settled" settled
expect_system "$g1"
[[ $(systemctl is-active boot-complete.target) == active ]] || fail "boot-complete.target is no longer active"
[[ $(grep -c blessed /var/log/ci-bless.log) == 1 ]] || fail "ci-bless-boot ran $(grep -c blessed /var/log/ci-bless.log) times"
collect
