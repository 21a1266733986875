#!/bin/bash
# pullnix.timer (enabled like the module's wantedBy timers.target, rendered with onBoot = 10s,
# interval = 2s, no randomized delay) deploys new commits on its own: nothing here starts
# pullnix.service.
. /ci/lib.sh
install_system c0
push c1
want1=$(build c1); want2=$(build c2)
wait_for 60 "the timer deployed c1" deployed_is c1
wait_for 30 "deployment settled" settled
expect_system "$want1"
collect c1
push c2
wait_for 30 "the timer deployed c2" deployed_is c2
wait_for 30 "deployment settled" settled
expect_system "$want2"
collect
