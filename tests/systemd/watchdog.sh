#!/bin/bash
# A hung confirm is killed by WatchdogSec (3 s) and still reverts: after the first health round
# (held failing by /run/ci-hold), the git daemon is replaced by a listener that accepts TCP
# connections and never answers, so the `remote` health check hangs inside pullnix and the
# WATCHDOG=1 pings stop. systemd kills the confirm, Restart=on-abnormal starts it again, and the
# confirm that runs after the deadline (10 s) reverts.
. /ci/lib.sh
install_system c0
was=$(current)
push c1
touch /run/ci-hold
t0=$SECONDS
systemctl start pullnix.service || fail "systemctl start pullnix.service failed"
wait_for 20 "first health round failed" \
  sh -c 'journalctl -q -u pullnix-confirm.service | grep -q "health check failed (round 1"'
systemctl stop ci-git-daemon.service
systemd-run --quiet --unit=ci-blackhole --service-type=exec perl -MIO::Socket::INET -e '
  my $s = IO::Socket::INET->new(LocalAddr => "127.0.0.1", LocalPort => 9418, Listen => 16,
    ReuseAddr => 1) or die "listen: $!";
  my @held; while (my $c = $s->accept) { push @held, $c }' || fail "cannot start the black hole"
rm /run/ci-hold
log "git:// now accepts and never answers"
wait_for 90 "deployment settled" settled
expect_reverted_c1 "$t0" "$was"
collect
