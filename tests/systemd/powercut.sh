#!/bin/bash
# A power cut in the confirmation window: boot 1 activates c1 and holds its confirmation open
# (the `gate` health check fails while /run/ci-hold exists), then sleeps until the harness
# SIGKILLs the container (BOOT_TIMEOUT). Boot 2 comes up on c0, still the boot default;
# pullnix-boot-check.service closes the record as an interrupted attempt (not bad), and the next
# poll deploys c1 after all.
. /ci/lib.sh
case $CI_BOOT in
  1)
    install_system c0
    echo "$(current)" > /var/lib/ci/previous
    push c1
    touch /run/ci-hold
    systemctl start pullnix.service || fail "systemctl start pullnix.service failed"
    is_current "$(build c1)" || fail "the candidate was not activated"
    wait_for 10 "confirmation window open" \
      sh -c 'grep -q "\"phase\": \"activated\"" /var/lib/pullnix/state.json && case "$(systemctl is-active pullnix-confirm.service)" in active|activating) ;; *) exit 1 ;; esac'
    collect window
    log "waiting for the power cut"
    sync
    sleep 600
    fail "still running: no power cut"
    ;;
  2)
    was=$(cat /var/lib/ci/previous)
    is_current "$was" || fail "boot 2 runs $(current), not the previous generation $was"
    wait_for 30 "deployment settled" settled
    expect_system "$was"
    last_result_is reverted || fail "the last result is not 'reverted'"
    is_bad c1 && fail "c1 was recorded as bad after one power cut"
    collect after-cut
    start_git_daemon
    systemctl start pullnix.service || fail "systemctl start pullnix.service failed"
    wait_for 30 "deployment settled" settled
    deployed_is c1 || fail "c1 was not deployed on the retry"
    expect_system "$(build c1)"
    collect
    ;;
  *) fail "unexpected boot $CI_BOOT" ;;
esac
