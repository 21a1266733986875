#!/bin/bash
# Boot mode, healthy candidate: the sync makes c1 the boot-counted default and reboots; the
# firmware boots it (counter +3 -> +2-1), boot-check counts the try, pullnix-confirm confirms,
# the entry is blessed, and the next poll is a no-op.
. /ci/lib.sh
case $CI_BOOT in
  1)
    wait_for 120 "the installed system's first boot is assessed" boot_assessed
    wait_for 60 "nothing in flight" idle
    snapshot installed
    push c1
    poll
    await_down "the reboot into c1"
    ;;
  2)
    wait_for 240 "c1 confirmed" settled
    wait_for 120 "boot assessed" boot_assessed
    snapshot deployed
    poll_and_wait
    snapshot noop
    ;;
  *) fail "unexpected boot $CI_BOOT" ;;
esac
