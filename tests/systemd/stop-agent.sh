#!/bin/bash
# switch.systemd_run = true: the candidate's switch stops pullnix.service (and with it the sync
# that started the switch) in the middle of the switch. The switch runs in its own transient
# unit, so it completes anyway and starts pullnix-confirm.service; the interrupted attempt is
# reverted without blaming the commit, and the next poll deploys it.
. /ci/lib.sh
install_system c0
push c1
want=$(build c1)
systemctl start pullnix.service
log "pullnix.service: $(systemctl show -p Result --value pullnix.service)"
wait_for 30 "the switch finished" grep -q "$want .*done" /var/log/fixture-switch.log
wait_for 60 "first attempt settled" settled
collect first
is_bad c1 && fail "c1 was recorded as bad after an interrupted attempt"
systemctl start pullnix.service || fail "the next poll failed"
wait_for 60 "deployment settled" settled
deployed_is c1 || fail "c1 is not recorded as deployed"
expect_system "$want"
collect
