#!/bin/bash
# Boot mode, a candidate that boots but fails its health checks (fixture-app.service fails): the
# confirmation window runs out, pullnix restores generation 1 as profile and boot default and
# reboots into it; the candidate's entry is never blessed; the next poll skips c1.
. /ci/lib.sh
case $CI_BOOT in
  1)
    wait_for 120 "the installed system's first boot is assessed" boot_assessed
    wait_for 60 "nothing in flight" idle
    push c1
    poll
    await_down "the reboot into c1"
    ;;
  2)
    wait_for 120 "boot-check opened the confirmation window" in_phase activated
    snapshot trying
    await_down "pullnix's reboot back to generation 1"
    ;;
  3)
    wait_for 240 "the revert is closed" settled
    wait_for 120 "boot assessed" boot_assessed
    snapshot reverted
    poll_and_wait
    snapshot noop
    ;;
  *) fail "unexpected boot $CI_BOOT" ;;
esac
