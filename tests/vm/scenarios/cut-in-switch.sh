#!/bin/bash
# Boot mode, power cut in the middle of the sync's `switch-to-configuration boot` (the new entry
# is written, the ESP not yet synced): the machine comes back on c0 (the entry did not reach the
# disk; boot-check closes the attempt and the next poll retries) or on the counted candidate c1
# (boot-check counts the try and pullnix-confirm confirms it). Either way c1 ends deployed.
. /ci/lib.sh
case $CI_BOOT in
  1)
    wait_for 120 "the installed system's first boot is assessed" boot_assessed
    wait_for 60 "nothing in flight" idle
    push c1
    arm builder-entries-written
    poll
    await_down "the power cut in switch-to-configuration boot"
    ;;
  *)
    wait_for 240 "nothing in flight" settled
    wait_for 120 "boot assessed" boot_assessed
    snapshot "boot$CI_BOOT"
    if deployed_is c1; then
      snapshot deployed
      exit 0
    fi
    ((CI_BOOT < 4)) || fail "c1 is still not deployed in boot $CI_BOOT"
    poll
    await_down "the reboot into c1 (retry)"
    ;;
esac
