#!/bin/bash
# Boot mode, three power cuts in one deployment of c1:
#   boot 2: in the confirmation window (a health check held failing);
#   boot 3: the next try, checks passing, in the confirm's `switch-to-configuration boot`, just
#           before pullnix blesses the entry;
#   boot 4: pullnix finishes the confirmation it had recorded, blesses, and boot-complete.target
#           starts systemd-bless-boot: cut there.
# The machine keeps coming back on the counted candidate (its counter running down) until it is
# confirmed, then on its blessed entry.
. /ci/lib.sh
confirm_running() { [[ $(systemctl is-active pullnix-confirm.service) == activating ]]; }
case $CI_BOOT in
  1)
    wait_for 120 "the installed system's first boot is assessed" boot_assessed
    wait_for 60 "nothing in flight" idle
    mkdir -p /var/lib/ci && touch /var/lib/ci/hold-confirm   # the `gate` health check fails
    push c1
    poll
    await_down "the reboot into c1"
    ;;
  2)
    wait_for 120 "boot-check opened the confirmation window" in_phase activated
    wait_for 60 "pullnix-confirm is checking" confirm_running
    snapshot window
    cut_now confirmation-window
    ;;
  3)
    wait_for 120 "boot-check opened the confirmation window again" in_phase activated
    wait_for 60 "pullnix-confirm is checking" confirm_running
    snapshot window-again
    arm builder-entries-written
    arm systemd-bless-boot
    rm -f /var/lib/ci/hold-confirm
    sync /var/lib/ci
    await_down "the power cut in the confirm's switch-to-configuration boot"
    ;;
  4)
    await_down "the power cut in systemd-bless-boot"
    ;;
  5)
    wait_for 240 "nothing in flight" settled
    wait_for 120 "boot assessed" boot_assessed
    snapshot deployed
    ;;
  *) fail "unexpected boot $CI_BOOT" ;;
esac
