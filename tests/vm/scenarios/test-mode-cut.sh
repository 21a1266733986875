#!/bin/bash
# Test mode (switch-to-configuration test), power cut in the confirmation window: the boot
# default never moved, so the machine comes back on c0; boot-check records an interrupted
# attempt (not bad, README "How a sync works"), and the next poll deploys c1, whose entry
# pullnix writes and blesses at once; the next boot starts it from the blessed entry.
. /ci/lib.sh
confirm_running() { [[ $(systemctl is-active pullnix-confirm.service) == activ* ]]; }
case $CI_BOOT in
  1)
    wait_for 120 "the installed system's first boot is assessed" boot_assessed
    wait_for 60 "nothing in flight" idle
    mkdir -p /var/lib/ci && touch /var/lib/ci/hold-confirm   # the `gate` health check fails
    push c1
    poll_and_wait
    wait_for 60 "pullnix-confirm is checking" confirm_running
    snapshot window
    cut_now test-mode-window
    ;;
  2)
    wait_for 120 "the interrupted attempt is closed" settled
    snapshot after-cut
    rm -f /var/lib/ci/hold-confirm
    poll_and_wait
    wait_for 120 "c1 confirmed" settled
    snapshot deployed
    systemctl reboot
    await_down "the reboot"
    ;;
  3)
    wait_for 120 "nothing in flight" settled
    snapshot rebooted
    ;;
  *) fail "unexpected boot $CI_BOOT" ;;
esac
