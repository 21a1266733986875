#!/bin/bash
# Every switch pullnix runs, under a switch-to-configuration that does what NixOS's does to the
# units (flake/switch-to-configuration.sh: it starts every active target and waits for those
# jobs), while pullnix-boot-check.service is failed, as it is after a boot in which its revert
# could not run: such a switch starts multi-user.target, which starts pullnix-boot-check.service
# again (and is ordered after it) and pullnix-confirm.service, while the pullnix that runs the
# switch holds STATE/lock. A deployment, the revert of a candidate whose activation fails and a
# rollback must each end, and neither unit may wait for the lock.
. /ci/lib.sh
install_system c0
g1=$(current)
mkdir -p /run/systemd/system/pullnix-boot-check.service.d
printf '[Service]\nExecStart=\nExecStart=/bin/sh -c "exit 8"\n' \
  > /run/systemd/system/pullnix-boot-check.service.d/ci-fail.conf
systemctl daemon-reload
systemctl restart pullnix-boot-check.service && fail "the failing boot-check did not fail"
rm -r /run/systemd/system/pullnix-boot-check.service.d
systemctl daemon-reload
[[ $(systemctl is-failed pullnix-boot-check.service) == failed ]] || fail "pullnix-boot-check.service is not failed"
log "pullnix-boot-check.service is failed, as after a boot whose revert could not run"

push c1
want=$(build c1)
sync_within 60 || fail "the deployment of c1 failed"
wait_for 60 "deployment settled" settled
deployed_is c1 || fail "c1 is not recorded as deployed"
expect_system "$want"
[[ $(systemctl is-active pullnix-boot-check.service) == active ]] \
  || fail "pullnix-boot-check.service did not run again during the switch"
collect deployed

push c2
broken=$(build c2)
sync_within 60 && fail "the deployment of c2, whose switch fails, succeeded"
wait_for 60 "revert settled" settled
last_result_is reverted || fail "the last result is not 'reverted'"
is_bad c2 || fail "c2 is not recorded as bad"
expect_system "$want"
collect reverted

run_within 60 "pullnix rollback" pullnix rollback || fail "pullnix rollback failed"
wait_for 60 "rollback settled" settled
expect_system "$g1"
grep -q '"result": "rolled-back"' "$STATE" || fail "the rollback is not recorded"
collect
