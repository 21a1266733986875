#!/bin/bash
# A switch that treats pullnix's own units as changed the way NixOS's switch-to-configuration
# does (daemon-reload; restart each active changed unit unless X-RestartIfChanged=false) runs in
# its transient unit while pullnix.service waits for it, and the deployment ends confirmed:
# none of pullnix's units is restarted under it.
. /ci/lib.sh
install_system c0
push c1
want=$(build c1)
systemctl start pullnix.service || fail "systemctl start pullnix.service failed"
wait_for 60 "deployment settled" settled
deployed_is c1 || fail "c1 is not recorded as deployed"
expect_system "$want"
grep -q "$want .*restarting\|$want .*not restarting" /var/log/fixture-switch.log || fail "the switch did not look at pullnix's units"
collect
