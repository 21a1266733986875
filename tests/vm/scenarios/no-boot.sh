#!/bin/bash
# Boot mode, a candidate that does not boot (its stage 2 fails, the kernel panics, panic=1
# resets): systemd-boot counts it down to +0-3 and falls back to generation 1; boot-check
# restores the profile and the boot default and records c1 bad; the next poll skips it.
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
    wait_for 240 "the failed candidate is reverted" settled
    wait_for 120 "boot assessed" boot_assessed
    snapshot fallback
    poll_and_wait
    snapshot noop
    ;;
  *) fail "unexpected boot $CI_BOOT" ;;
esac
