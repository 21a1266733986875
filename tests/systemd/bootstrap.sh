#!/bin/bash
# The first deployment that enables pullnix. Boot 1 installs c0, which has no pullnix units (its
# variant says no-pullnix), and reboots, so that boot 2 starts without them. There `pullnix
# bootstrap` deploys c1, whose switch brings the units: after the daemon-reload,
# multi-user.target wants pullnix-boot-check.service and pullnix-confirm.service, neither has
# run, and the switch starts multi-user.target, which waits for the boot-check, while the
# bootstrap's sync holds STATE/lock. The bootstrap must end deployed, and the units then deploy
# the next commit on their own.
. /ci/lib.sh
case $CI_BOOT in
  1)
    install_system c0
    exit 100
    ;;
  2)
    start_git_daemon
    systemctl cat pullnix-boot-check.service >/dev/null 2>&1 && fail "c0 still has pullnix's units"
    push c1
    want=$(build c1)
    run_within 90 "pullnix bootstrap" pullnix bootstrap --url git://127.0.0.1:9418/fleet.git \
      --host ci --insecure-plaintext-without-signatures || fail "pullnix bootstrap failed"
    deployed_is c1 || fail "c1 is not recorded as deployed"
    expect_system "$want"
    systemctl cat pullnix-boot-check.service >/dev/null || fail "c1 did not bring pullnix's units"
    [[ $(systemctl is-active pullnix-boot-check.service) == active ]] \
      || fail "the switch did not start the new pullnix-boot-check.service"
    collect bootstrapped

    push c2
    want=$(build c2)
    sync_within 60 || fail "the deployment of c2 failed"
    wait_for 60 "deployment settled" settled
    deployed_is c2 || fail "c2 is not recorded as deployed"
    expect_system "$want"
    collect
    ;;
  *) fail "unexpected boot $CI_BOOT" ;;
esac
