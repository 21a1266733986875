#!/usr/bin/env bash
# pullnix closure-mode benchmark: the no-op poll of a device that deploys prebuilt, signed
# closures, against `git ls-remote` and `git fetch` of the same repository in the same run; and
# the first sync that substitutes the closure from a signed file:// cache. See bench/README.md.
#
#   bench/closure.sh                     build target/release/pullnix, run, print a markdown table
#   PULLNIX_BIN=/path bench/closure.sh   benchmark an existing binary instead of building
#
# Environment: CLOSURE_N (timed no-op polls per tool, default 20), BENCH_KEEP=1 (keep the
# temporary directory). Needs nix (scripts/setup-debian.sh), git daemon, a C compiler (measure.py).
set -euo pipefail

HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
TOP=$(cd "$HERE/.." && pwd)
N=${CLOSURE_N:-20}

BENCH_NAME=closure-bench
# shellcheck source=bench/lib.sh
. "$HERE/lib.sh"
for tool in nix nix-store git python3 cc; do
    command -v "$tool" >/dev/null 2>&1 || [[ -x $tool ]] || die "$tool is missing"
done

pullnix_bin

W=$(mktemp -d /tmp/pullnix-closure-bench.XXXXXX)
DAEMON=
cleanup() {
    [[ -n $DAEMON ]] && kill "$DAEMON" 2>/dev/null || true
    [[ ${BENCH_KEEP:-0} = 1 ]] && log "kept $W" || rm -rf "$W"
}
trap cleanup EXIT

# CI's side: a trivial toplevel, signed into a file:// cache, pinned in the repository.
log "building and publishing a closure"
mkdir -p "$W/src"
cat >"$W/src/flake.nix" <<'EOF'
{
  outputs = { self }: {
    nixosConfigurations.benchhost.config.system.build.toplevel = derivation {
      name = "nixos-system-benchhost";
      system = "x86_64-linux";
      builder = "/bin/sh";
      PATH = "/usr/bin:/bin";
      stamp = builtins.readFile ./stamp;
      args = [ "-c" "mkdir -p $out/bin; printf '#!/bin/sh\\nexit 0\\n' > $out/bin/switch-to-configuration; chmod +x $out/bin/switch-to-configuration; echo $stamp > $out/stamp" ];
    };
  };
}
EOF
echo "closure-bench $$ $(date +%s%N)" >"$W/src/stamp"
git -C "$W/src" init -q -b main
git -C "$W/src" -c user.name=bench -c user.email=bench@localhost add -A
git -C "$W/src" -c user.name=bench -c user.email=bench@localhost commit -qm base
P0=$(nix build --no-link --json "path:$W/src#nixosConfigurations.benchhost.config.system.build.toplevel" |
    python3 -c 'import json,sys; print(json.load(sys.stdin)[0]["outputs"]["out"])')
echo "closure-bench next $$ $(date +%s%N)" >"$W/src/stamp"
P1=$(nix build --no-link --json "path:$W/src#nixosConfigurations.benchhost.config.system.build.toplevel" |
    python3 -c 'import json,sys; print(json.load(sys.stdin)[0]["outputs"]["out"])')
nix key generate-secret --key-name bench-1 >"$W/secret.key"
PUB=$(nix key convert-secret-to-public <"$W/secret.key")
nix copy --to "file://$W/cache?secret-key=$W/secret.key" "$P1"
nix-store --delete "$P1" >/dev/null 2>&1 || die "could not delete $P1 from the store"
mkdir -p "$W/src/closures"
echo "$P1" >"$W/src/closures/benchhost"
git -C "$W/src" -c user.name=bench -c user.email=bench@localhost add -A
git -C "$W/src" -c user.name=bench -c user.email=bench@localhost commit -qm "pin benchhost"
mkdir -p "$W/srv"
git clone -q --bare "$W/src" "$W/srv/repo.git"

PORT=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
"$(git --exec-path)/git-daemon" --listen=127.0.0.1 --port="$PORT" --base-path="$W/srv" \
    --export-all --reuseaddr "$W/srv" >/dev/null 2>&1 &
DAEMON=$!
URL=git://127.0.0.1:$PORT/repo.git
for _ in $(seq 50); do git ls-remote "$URL" >/dev/null 2>&1 && break; sleep 0.1; done

# The device: generation 1 runs P0; closure mode with the cache and its key.
ROOT=$W/root
mkdir -p "$ROOT/run" "$ROOT/nix/var/nix/profiles"
nix-env -p "$ROOT/nix/var/nix/profiles/system" --set "$P0" >/dev/null
ln -s "$P0" "$ROOT/run/current-system"
cat >"$W/config.toml" <<EOF
host = "benchhost"
[repo]
url = "$URL"
# git daemon on loopback, measured as devices would poll it; the closure is signature-checked.
insecure_plaintext_without_signatures = true
[closure]
enable = true
substituters = ["file://$W/cache"]
trusted_public_keys = ["$PUB"]
[confirm]
timeout = 30
interval = 1
[health]
remote = false
EOF

# measure LABEL CMD...: one run through bench/measure.py (wall, CPU and peak RSS of every process
# the command causes, orphans included), appended to $W/runs.jsonl; its output to stderr.log
measure() {
    local label=$1; shift
    python3 "$HERE/measure.py" --out "$W/runs.jsonl" --label "$label" --log "$W/last.log" -- "$@"
    cat "$W/last.log" >>"$W/stderr.log"
}
: >"$W/runs.jsonl"

log "first sync: substitute the signed closure and deploy it"
measure first "$BIN" --config "$W/config.toml" --root "$ROOT" sync
[[ $(readlink -f "$ROOT/nix/var/nix/profiles/system") = "$P1" ]] || die "first sync did not deploy $P1 (see $W/stderr.log)"
grep -q 'nix-store --realise' "$W/stderr.log" || die "first sync did not substitute"

git clone -q --bare "$URL" "$W/clone.git"
log "$N interleaved rounds of no-op pullnix sync (closure mode) / git ls-remote / git fetch"
for i in $(seq 0 "$N"); do
    tag=run; [[ $i = 0 ]] && tag=warmup
    measure "pullnix-$tag" "$BIN" --config "$W/config.toml" --root "$ROOT" sync
    measure "ls-remote-$tag" git ls-remote "$URL"
    measure "fetch-$tag" git -C "$W/clone.git" fetch -q "$URL" +refs/heads/main:refs/heads/main
done

python3 - "$W/runs.jsonl" "$N" <<'EOF'
import json, statistics, sys
rows = [json.loads(l) for l in open(sys.argv[1])]
n = int(sys.argv[2])
def stats(label):
    r = [x for x in rows if x["label"] == label]
    assert r and all(x["rc"] == 0 for x in r), f"{label}: a run failed"
    return (statistics.mean(x["wall_s"] for x in r) * 1000,
            statistics.mean(x["cpu_s"] for x in r) * 1000,
            max(x["maxrss_kib"] for x in r) * 1024 / 1e6)
p, l, f = stats("pullnix-run"), stats("ls-remote-run"), stats("fetch-run")
first = stats("first")
print(f"### pullnix closure mode ({n} no-op polls per tool, git daemon on 127.0.0.1)\n")
print("| metric | pullnix | git ls-remote | git fetch | ratio (ls-remote / fetch) |")
print("|---|---|---|---|---|")
print(f"| no-op poll wall (mean) | {p[0]:.1f} ms | {l[0]:.1f} ms | {f[0]:.1f} ms | {p[0]/l[0]:.2f}x / {p[0]/f[0]:.2f}x |")
print(f"| no-op poll CPU user+sys (mean) | {p[1]:.1f} ms | {l[1]:.1f} ms | {f[1]:.1f} ms | {p[1]/l[1]:.2f}x / {p[1]/f[1]:.2f}x |")
print(f"| no-op poll peak RSS | {p[2]:.2f} MB | {l[2]:.2f} MB | {f[2]:.2f} MB | {p[2]/l[2]:.2f}x / {p[2]/f[2]:.2f}x |")
print(f"| first sync: substitute the signed closure, activate, confirm | {first[0]:.0f} ms | | | |")
print("\nThe no-op poll ends after the ref advertisement, before any closure work: closure mode")
print("costs nothing extra while the branch does not move.")
EOF
