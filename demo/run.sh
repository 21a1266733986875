#!/usr/bin/env bash
# pullnix in one minute, on any Linux with Nix: no NixOS, no network, no root (on a multi-user
# Nix install; on a single-user install as root, run it as that user).
#
#   demo/run.sh [--keep]
#
# It builds pullnix with cargo unless $PULLNIX names a binary, then plays a machine's life in a
# temporary directory: a fleet repository, a fake machine root, real Nix builds, real
# generations of a real Nix profile, and the real pullnix doing its job. It checks every step it
# narrates and exits non-zero if pullnix did not do what it says. --keep leaves the directory
# for you to look around (state file, journal, profile generations).
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
keep=false
[[ ${1:-} == --keep ]] && keep=true

command -v nix >/dev/null || { echo "demo: needs Nix (https://nixos.org/download)" >&2; exit 1; }
command -v git >/dev/null || { echo "demo: needs git" >&2; exit 1; }
if [[ -z ${PULLNIX:-} ]]; then
  command -v cargo >/dev/null || { echo "demo: set PULLNIX=/path/to/pullnix or install cargo" >&2; exit 1; }
  echo "building pullnix with cargo (once)..."
  cargo build --quiet --manifest-path "$here/../Cargo.toml"
  PULLNIX=$here/../target/debug/pullnix
fi

W=$(mktemp -d "${TMPDIR:-/tmp}/pullnix-demo.XXXXXX")
if $keep; then trap 'echo; echo "kept: $W"' EXIT; else trap 'rm -rf "$W"' EXIT; fi
export PULLNIX_DEMO_ROOT=$W/root
root=$PULLNIX_DEMO_ROOT
profile=$root/nix/var/nix/profiles/system
# Nix as the demo needs it, whatever the user's nix.conf says: flakes on, nothing downloaded.
nix_args=(--extra-experimental-features "nix-command flakes" --offline)
export GIT_AUTHOR_NAME=demo GIT_AUTHOR_EMAIL=demo@example.org
export GIT_COMMITTER_NAME=demo GIT_COMMITTER_EMAIL=demo@example.org
export GIT_CONFIG_NOSYSTEM=1 GIT_CONFIG_GLOBAL=/dev/null

step=0
say() {
  step=$((step + 1))
  printf '\n%d. %s\n' "$step" "$*"
}
note() { printf '   %s\n' "$*"; }
fail() {
  printf '\ndemo FAILED: %s\n' "$*" >&2
  exit 1
}

# Runs pullnix and shows what it logged, as journald would show it (priority prefixes turned
# into words). Returns pullnix's exit code.
pullnix() {
  printf '\n   $ pullnix %s\n' "$*"
  local rc=0
  "$PULLNIX" --config "$W/pullnix.toml" --root "$root" "$@" >"$W/out" 2>&1 || rc=$?
  sed -e 's/^<3>/error: /; s/^<4>/warning: /; s/^<[5-7]>//; s/^/   | /' "$W/out"
  [[ $rc == 0 ]] || printf '   (exit %d)\n' "$rc"
  return "$rc"
}

# The fleet repository: the flake of demo/fleet with the app the step wants, one commit each.
commit() {
  echo "$1" >"$W/work/system/app"
  git -C "$W/work" commit -q -am "$2"
  git -C "$W/work" push -q origin HEAD:main
  git -C "$W/work" rev-parse --short=12 HEAD
}

running() { readlink "$root/run/current-system"; }
app() { cat "$root/run/web-app.status"; }
# A field of `pullnix status --json`, read with Nix's own JSON parser (no jq or python needed).
status_field() {
  "$PULLNIX" --config "$W/pullnix.toml" --root "$root" status --json >"$W/status.json"
  nix "${nix_args[@]}" eval --impure --raw --expr \
    "(builtins.fromJSON (builtins.readFile \"$W/status.json\")).$1"
}

say "A fleet repository with one host, \"demo\". Its system runs a web app, version 1."
cp -r "$here/fleet" "$W/work"
uname -m | sed 's/$/-linux/' >"$W/work/platform"
echo "serve version 1" >"$W/work/system/app"
git init -q --bare -b main "$W/fleet.git"
git -C "$W/work" init -q -b main
git -C "$W/work" add -A
git -C "$W/work" commit -q -m "demo host, web app version 1"
git -C "$W/work" remote add origin "$W/fleet.git"
git -C "$W/work" push -q origin main
note "$W/fleet.git: flake.nix defines nixosConfigurations.demo.config.system.build.toplevel"

say "A machine, installed from that commit: generation 1 of its system profile runs."
nix build "${nix_args[@]}" --out-link "$W/installed" \
  "git+file://$W/fleet.git?ref=main#nixosConfigurations.demo.config.system.build.toplevel"
installed=$(readlink "$W/installed")
mkdir -p "$(dirname "$profile")"
nix-env -p "$profile" --set "$installed"
"$installed/bin/switch-to-configuration" switch
ln -sfn "$installed" "$root/run/booted-system"
note "the machine is the directory $root (pullnix --root); it runs $(running)"
note "web app: $(app)"
cat >"$W/pullnix.toml" <<EOF
host = "demo"

[repo]
url = "file://$W/fleet.git"
branch = "main"

[build]
extra_args = ["--extra-experimental-features", "nix-command flakes", "--offline"]

[confirm]
# A real machine gives a candidate minutes; the demo has no time to lose.
timeout = 6
interval = 1

# The candidate stays only if its web app serves.
[[health.command]]
name = "web-app"
argv = ["$here/check-web-app"]
timeout = 5
EOF
note "pullnix's configuration: $W/pullnix.toml (repository, branch, a health check)"

say "The timer's first sync: the branch builds exactly the system that runs, so pullnix only records it."
pullnix sync || fail "the first sync failed"
[[ $(status_field deployed.system) == "$installed" ]] || fail "the running system was not recorded as deployed"

say "Someone pushes version 2. The next sync builds it, activates it without making it the boot default, checks its health, and only then keeps it."
c2=$(commit "serve version 2" "web app version 2")
pullnix sync || fail "version 2 was not deployed"
[[ $(app) == "serving version 2" ]] || fail "version 2 does not run"
[[ $(status_field deployed.commit) == "$c2"* ]] || fail "$c2 is not recorded as deployed"
note "running: $(running); boot default: $(cat "$root/boot/default")"
note "web app: $(app)"

say "Someone pushes version 3, which has a bug: its web app crashes. pullnix activates it, the health check fails until the deadline, and pullnix goes back to version 2."
c3=$(commit "crash: missing setting 'listen_port'" "web app version 3")
if pullnix sync; then fail "the broken version 3 was kept"; fi
[[ $(app) == "serving version 2" ]] || fail "version 2 was not restored"
reason=$(status_field last.message)
note "web app: $(app)"
note "why, as \`pullnix status\` records it: $reason"

say "The next timer run does not try version 3 again: it is recorded as bad until the branch moves."
pullnix sync || fail "the sync after the revert failed"
[[ $(app) == "serving version 2" ]] || fail "version 3 was tried again"

say "What the machine says about itself:"
pullnix status

say "An admin decides version 2 is not wanted either and rolls back to the previous generation."
pullnix rollback || fail "rollback failed"
[[ $(app) == "serving version 1" ]] || fail "rollback did not bring back version 1"
note "web app: $(app); boot default: $(cat "$root/boot/default")"

say "A fix is pushed. pullnix deploys it as usual."
c4=$(commit "serve version 4" "web app version 4, fixes version 3")
pullnix sync || fail "version 4 was not deployed"
[[ $(app) == "serving version 4" ]] || fail "version 4 does not run"
note "web app: $(app)"
note "generations of the system profile:"
nix-env -p "$profile" --list-generations | sed 's/^/   | /'

printf '\nDone: every step above ran real Nix builds, a real Nix profile and the real pullnix.\n'
printf 'Commits: %s (bad, reverted), %s (rolled back), %s (deployed).\n' "$c3" "$c2" "$c4"
