#!/usr/bin/env bash
# pullnix's test command: formatting, lints, and every test, against real Nix, real git servers,
# real sshd, real vulnix and a real systemd (see README, "Testing").
#
#   scripts/test.sh              run everything (as root: the systemd, install and wake tests
#                                need namespaces, loop devices and mounts)
#   scripts/test.sh --install    first install what the tests need (scripts/setup-debian.sh)
#
# Extra arguments go to `cargo test` after `--`, e.g. `scripts/test.sh crash::` to run a subset.
set -euo pipefail
cd "$(dirname "$0")/.."
export CARGO_TERM_COLOR=never

if [[ ${1:-} == --install ]]; then
  shift
  scripts/setup-debian.sh
fi

step() { printf '\n==> %s\n' "$*"; }

step "formatting and lints"
cargo fmt --check
cargo clippy --locked --all-targets --features fault-injection -- -D warnings

step "parsing every .nix file"
find . -name '*.nix' -not -path './target/*' -print0 | xargs -0 -r -n1 nix-instantiate --parse >/dev/null

step "tests"
# Most tests spend their time waiting for child processes (nix, git servers, containers), so
# three test threads per core keep the cores busy without oversubscribing them.
threads=$(($(nproc) * 3))
cargo test --locked --features fault-injection -- --test-threads="$threads" "$@"
