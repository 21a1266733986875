#!/usr/bin/env bash
# pullnix benchmark: no-op poll cost, cold fetch, binary size. See bench/README.md.
#
#   bench/run.sh                 build target/release/pullnix, run, print a markdown table
#   PULLNIX_BIN=/path bench/run.sh   benchmark an existing binary instead of building
#
# Environment: BENCH_N (no-op polls per tool, default 20), BENCH_COLD_N (cold fetches per
# tool, default 3), BENCH_COMMITS (large repo, default 10000), BENCH_OUT (default bench/out),
# BENCH_KEEP=1 (keep the temporary directory), BENCH_BUILD_MARK (regex of the pullnix log
# line that starts `nix build`).
# Progress goes to stderr, the table to stdout, raw numbers to $BENCH_OUT/results.json.
# Exit status: 0 when the benchmark ran (whatever the PASS/FAIL verdicts), non-zero when the
# benchmark itself could not run.
set -euo pipefail

HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
TOP=$(cd "$HERE/.." && pwd)
N=${BENCH_N:-20}
COLD_N=${BENCH_COLD_N:-3}
COMMITS=${BENCH_COMMITS:-10000}
OUT=${BENCH_OUT:-$HERE/out}
BUILD_MARK=${BENCH_BUILD_MARK:-'\bnix\b.{0,40}\bbuild\b'}
ATTR='nixosConfigurations.benchhost.config.system.build.toplevel'

BENCH_NAME=bench
# shellcheck source=bench/lib.sh
. "$HERE/lib.sh"

# ---------------------------------------------------------------- prerequisites
APT_UPDATED=0
need() { # need COMMAND DEBIAN_PACKAGE
    command -v "$1" >/dev/null 2>&1 && return 0
    [[ -x "$1" ]] && return 0
    log "installing $2 (for $1)"
    command -v apt-get >/dev/null || die "$1 is missing and apt-get is not available"
    if [[ $APT_UPDATED = 0 ]]; then
        DEBIAN_FRONTEND=noninteractive apt-get update -qq >&2 || die "apt-get update failed"
        APT_UPDATED=1
    fi
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "$2" >&2 || die "apt-get install $2 failed"
}
need git git
need python3 python3
need /usr/bin/time time
need nix nix-bin
need nix-env nix-bin
GIT_DAEMON="$(git --exec-path)/git-daemon"
[[ -x $GIT_DAEMON ]] || die "git-daemon not found at $GIT_DAEMON"
# flakes (harmless when nix.conf already enables them) and no sandbox (the fake toplevel
# builds with the host's /bin/sh); pullnix inherits this environment too
export NIX_CONFIG="extra-experimental-features = nix-command flakes
sandbox = false${NIX_CONFIG:+
$NIX_CONFIG}"

# ---------------------------------------------------------------- the binary
pullnix_bin
BIN_SIZE=$(stat -c %s "$BIN")
if VERSION=$("$BIN" --version 2>&1) && [[ $VERSION == *[0-9].[0-9]* ]]; then
    log "binary: $BIN ($VERSION, $BIN_SIZE bytes)"
else
    log "WARNING: '$BIN --version' did not print a version (got: '${VERSION:-}'); pullnix rows will likely FAIL"
    VERSION=""
fi

# ---------------------------------------------------------------- workspace + cleanup
W=$(mktemp -d "${TMPDIR:-/tmp}/pullnix-bench.XXXXXX")
DAEMON_PID="" PROXY_PID=""
cleanup() {
    local rc=$?
    for pid in $PROXY_PID $DAEMON_PID; do
        kill "$pid" 2>/dev/null || true
    done
    for pid in $PROXY_PID $DAEMON_PID; do
        wait "$pid" 2>/dev/null || true
    done
    if [[ ${BENCH_KEEP:-0} = 1 ]]; then
        log "kept $W"
    else
        rm -rf "$W"
    fi
    exit "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM
mkdir -p "$OUT" "$W/srv" "$W/logs"
LOAD_START=$(cut -d' ' -f1-3 /proc/loadavg)
rm -f "$OUT"/{noop,cold,setup,verdicts}.jsonl "$OUT"/{meta,results}.json
rm -rf "$OUT/logs"
mkdir -p "$OUT/logs"

# the benchmark must not depend on this machine's git configuration
: >"$W/gitconfig"
export GIT_CONFIG_GLOBAL=$W/gitconfig GIT_CONFIG_NOSYSTEM=1
export GIT_AUTHOR_NAME=bench GIT_AUTHOR_EMAIL=bench@example.invalid
export GIT_COMMITTER_NAME=bench GIT_COMMITTER_EMAIL=bench@example.invalid
export GIT_TERMINAL_PROMPT=0

measure() { python3 "$HERE/measure.py" "$@"; }
free_port() {
    python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'
}
json_get() { # json_get FILE EXPR  (EXPR in python, j = the parsed JSON)
    python3 -c 'import json,sys; j=json.load(open(sys.argv[1])); print(eval(sys.argv[2]))' "$1" "$2"
}

# ---------------------------------------------------------------- test repositories
write_flake() { # write_flake FILE EXTRA_SHELL
    cat >"$1" <<EOF
{
  description = "pullnix benchmark host";
  outputs = { self }: {
    nixosConfigurations.benchhost.config.system.build.toplevel = derivation {
      name = "pullnix-bench-system";
      system = "x86_64-linux";
      builder = "/bin/sh";
      PATH = "/usr/bin:/bin";
      args = [ "-c" "mkdir -p \$out/bin; printf '#!/bin/sh\\\\nexit 0\\\\n' > \$out/bin/switch-to-configuration; chmod +x \$out/bin/switch-to-configuration; touch \$out/healthy$2" ];
    };
  };
}
EOF
}

log "creating the small repo (2 commits: previous generation, deployed generation)"
git init -q -b main "$W/src"
write_flake "$W/src/flake.nix" "; touch \$out/previous-generation"
git -C "$W/src" add flake.nix
git -C "$W/src" commit -qm "previous generation"
C0=$(git -C "$W/src" rev-parse HEAD)
write_flake "$W/src/flake.nix" ""
git -C "$W/src" commit -qam "deployed generation"
C1=$(git -C "$W/src" rev-parse HEAD)
git clone -q --bare "$W/src" "$W/srv/small.git"
git -C "$W/srv/small.git" remote remove origin

log "creating the large repo ($COMMITS commits with git fast-import)"
git init -q --bare -b main "$W/srv/large.git"
python3 "$HERE/genrepo.py" --commits "$COMMITS" --add "flake.nix=$W/src/flake.nix" \
    | git -C "$W/srv/large.git" fast-import --quiet --done
git -C "$W/srv/large.git" repack -adq
CL=$(git -C "$W/srv/large.git" rev-parse main)
LARGE_PACK=$(du -cb "$W"/srv/large.git/objects/pack/*.pack | tail -1 | cut -f1)
log "large repo: $(git -C "$W/srv/large.git" rev-list --count main) commits, pack $LARGE_PACK bytes"

log "building the previous generation and the expected candidate with nix"
flake_ref() { echo "git+file://$1?ref=main&rev=$2#$ATTR"; }
PREV=$(nix build --no-link --json "$(flake_ref "$W/srv/small.git" "$C0")" \
    | python3 -c 'import json,sys; print(json.load(sys.stdin)[0]["outputs"]["out"])')
EXPECT_SMALL=$(nix eval --raw "$(flake_ref "$W/srv/small.git" "$C1").outPath")
EXPECT_LARGE=$(nix eval --raw "$(flake_ref "$W/srv/large.git" "$CL").outPath")
log "previous generation $PREV; candidate $EXPECT_SMALL"

# ---------------------------------------------------------------- servers
DPORT=$(free_port)
"$GIT_DAEMON" --reuseaddr --export-all --base-path="$W/srv" --listen=127.0.0.1 \
    --port="$DPORT" "$W/srv" 2>"$W/logs/git-daemon.log" &
DAEMON_PID=$!
python3 "$HERE/proxy.py" --upstream "127.0.0.1:$DPORT" --port-file "$W/proxy.port" \
    --stats "$W/proxy.json" 2>"$W/logs/proxy.log" &
PROXY_PID=$!
for _ in $(seq 100); do
    [[ -s $W/proxy.port ]] && git ls-remote "git://127.0.0.1:$DPORT/small.git" >/dev/null 2>&1 && break
    sleep 0.05
done
[[ -s $W/proxy.port ]] || die "proxy did not start: $(cat "$W/logs/proxy.log")"
PPORT=$(cat "$W/proxy.port")
# timed runs talk to git daemon directly; byte counts come from extra runs through the proxy
SMALL=git://127.0.0.1:$DPORT/small.git SMALL_P=git://127.0.0.1:$PPORT/small.git
LARGE=git://127.0.0.1:$DPORT/large.git LARGE_P=git://127.0.0.1:$PPORT/large.git
for u in "$SMALL" "$SMALL_P"; do
    [[ $(git ls-remote "$u" refs/heads/main | cut -f1) = "$C1" ]] \
        || die "not serving $u: $(cat "$W/logs/git-daemon.log" "$W/logs/proxy.log")"
done
log "git daemon on 127.0.0.1:$DPORT, byte-counting proxy on 127.0.0.1:$PPORT"

# ---------------------------------------------------------------- pullnix roots
mkroot() { # mkroot DIR: a fake system whose current generation is $PREV
    mkdir -p "$1/nix/var/nix/profiles" "$1/run" "$1/boot/loader/entries"
    nix-env -p "$1/nix/var/nix/profiles/system" --set "$PREV" >/dev/null 2>&1
    ln -s "$PREV" "$1/run/current-system"
    ln -s "$PREV" "$1/run/booted-system"
}
write_config() { # write_config FILE URL HEALTH_REMOTE
    cat >"$1" <<EOF
host = "benchhost"

[repo]
url = "$2"
branch = "main"
# git daemon on loopback: the benchmark measures the transport, not commit signatures.
insecure_plaintext_without_signatures = true

[confirm]
timeout = 30
interval = 1

[health]
remote = $3
EOF
}
profile_target() { readlink -f "$1/nix/var/nix/profiles/system" 2>/dev/null || true; }
last_rc() { tail -1 "$1" | python3 -c 'import json,sys; print(json.load(sys.stdin)["rc"])'; }
log_tail() { grep -v '^#' "$1" 2>/dev/null | tail -3 | sed 's/^ *[0-9.]* \(err\|out\) //' | paste -sd'|'; }

VERDICTS=$W/verdicts.jsonl
: >"$VERDICTS"
verdict() { # verdict KEY OK MESSAGE
    python3 -c 'import json,sys; print(json.dumps({"key":sys.argv[1],"ok":sys.argv[2]=="1","msg":sys.argv[3]}))' \
        "$1" "$2" "$3" >>"$VERDICTS"
    [[ $2 = 1 ]] || log "PROBLEM [$1]: $3"
}
# pullnix_sync JSONL LABEL KEY ROOT CONFIG EXPECTED LOG [measure options]: one measured sync,
# then check that it exited 0 and that the system profile points at EXPECTED
pullnix_sync() {
    local out=$1 label=$2 key=$3 root=$4 config=$5 expect=$6 logf=$7
    shift 7
    measure --out "$out" --label "$label" --log "$logf" --mark "$BUILD_MARK" "$@" \
        -- "$BIN" --config "$config" --root "$root" sync
    local rc got
    rc=$(last_rc "$out")
    got=$(profile_target "$root")
    if [[ $rc != 0 || $got != "$expect" ]]; then
        verdict "$key" 0 "$label: exit $rc, system profile -> '${got:-none}' (expected $expect); log: $(log_tail "$logf")"
    fi
}

# ---------------------------------------------------------------- no-op polls
NOOP=$W/noop
mkdir -p "$NOOP"
for v in direct proxied; do
    url=$SMALL
    [[ $v = proxied ]] && url=$SMALL_P
    log "no-op: first pullnix sync ($v), deploys $C1"
    mkroot "$NOOP/root-$v"
    write_config "$NOOP/config-$v.toml" "$url" true
    pullnix_sync "$OUT/setup.jsonl" "pullnix-first-sync-$v" first_sync "$NOOP/root-$v" \
        "$NOOP/config-$v.toml" "$EXPECT_SMALL" "$OUT/logs/first-sync-$v.log"
done
"$BIN" --config "$NOOP/config-direct.toml" --root "$NOOP/root-direct" status --json \
    >"$OUT/logs/status-after-first-sync.json" 2>&1 || true

git clone -q --bare "$SMALL" "$NOOP/clone.git"
FETCH=(git -C "$NOOP/clone.git" fetch -q)
log "no-op: $N timed rounds of pullnix sync / git ls-remote / git fetch (interleaved, +1 warm-up)"
for i in $(seq 0 "$N"); do
    tag=run
    [[ $i = 0 ]] && tag=warmup
    pullnix_sync "$OUT/noop.jsonl" "pullnix-$tag" noop_sync "$NOOP/root-direct" \
        "$NOOP/config-direct.toml" "$EXPECT_SMALL" "$W/logs/noop-$i.log"
    measure --out "$OUT/noop.jsonl" --label "ls-remote-$tag" -- git ls-remote "$SMALL"
    measure --out "$OUT/noop.jsonl" --label "fetch-$tag" \
        -- "${FETCH[@]}" "$SMALL" +refs/heads/main:refs/heads/main
done
cp "$W/logs/noop-$N.log" "$OUT/logs/noop-sync.log"
log "no-op: 3 rounds through the byte-counting proxy"
for i in 1 2 3; do
    pullnix_sync "$OUT/noop.jsonl" pullnix-bytes noop_sync "$NOOP/root-proxied" \
        "$NOOP/config-proxied.toml" "$EXPECT_SMALL" "$W/logs/noop-bytes-$i.log" --stats "$W/proxy.json"
    measure --out "$OUT/noop.jsonl" --label ls-remote-bytes --stats "$W/proxy.json" \
        -- git ls-remote "$SMALL_P"
    measure --out "$OUT/noop.jsonl" --label fetch-bytes --stats "$W/proxy.json" \
        -- "${FETCH[@]}" "$SMALL_P" +refs/heads/main:refs/heads/main
done

# ---------------------------------------------------------------- cold fetch
COLD=$W/cold
mkdir -p "$COLD"
write_config "$COLD/config-direct.toml" "$LARGE" false
write_config "$COLD/config-proxied.toml" "$LARGE_P" false
log "cold: warm-up clone of the large repo (server page cache)"
git clone -q --bare "$LARGE" "$COLD/warmup.git"
rm -rf "$COLD/warmup.git"
for k in $(seq 1 "$COLD_N"); do
    log "cold: round $k/$COLD_N: git clone --bare, git clone, pullnix sync"
    measure --out "$OUT/cold.jsonl" --label clone-bare -- git clone -q --bare "$LARGE" "$COLD/bare-$k.git"
    measure --out "$OUT/cold.jsonl" --label clone -- git clone -q "$LARGE" "$COLD/wt-$k"
    mkroot "$COLD/root-$k"
    pullnix_sync "$OUT/cold.jsonl" pullnix-cold-sync cold_sync "$COLD/root-$k" \
        "$COLD/config-direct.toml" "$EXPECT_LARGE" "$W/logs/cold-sync-$k.log" --self-hwm
    if [[ $k = 1 ]]; then
        cp "$W/logs/cold-sync-1.log" "$OUT/logs/cold-sync.log"
    else
        rm -rf "$COLD/bare-$k.git"
    fi
    rm -rf "$COLD/wt-$k" "$COLD/root-$k"
done
log "cold: 1 round through the byte-counting proxy"
measure --out "$OUT/cold.jsonl" --label clone-bare-bytes --stats "$W/proxy.json" \
    -- git clone -q --bare "$LARGE_P" "$COLD/bare-bytes.git"
mkroot "$COLD/root-bytes"
pullnix_sync "$OUT/cold.jsonl" pullnix-cold-bytes cold_sync "$COLD/root-bytes" \
    "$COLD/config-proxied.toml" "$EXPECT_LARGE" "$W/logs/cold-bytes.log" --stats "$W/proxy.json"
log "cold: $COLD_N x reference nix build of the same commit (for the subtraction estimate)"
for k in $(seq 1 "$COLD_N"); do
    measure --out "$OUT/cold.jsonl" --label nix-build-ref -- \
        nix build --no-link --json --no-eval-cache "$(flake_ref "$COLD/bare-1.git" "$CL")"
done

# ---------------------------------------------------------------- report
python3 - "$OUT/meta.json" <<EOF
import json, sys
json.dump({
    "bin": "$BIN", "version": "$VERSION", "bin_size": $BIN_SIZE,
    "n": $N, "cold_n": $COLD_N, "commits": $COMMITS, "large_pack_bytes": $LARGE_PACK,
    "url_small": "$SMALL", "url_large": "$LARGE", "proxy_port": $PPORT,
    "git": "$(git --version)", "nix": "$(nix --version)",
    "build_mark": r'''$BUILD_MARK''',
    "loadavg_start": "$LOAD_START", "loadavg_end": "$(cut -d' ' -f1-3 /proc/loadavg)",
    "nproc": $(nproc),
}, open(sys.argv[1], "w"), indent=1)
EOF
cp "$VERDICTS" "$OUT/verdicts.jsonl"
python3 "$HERE/report.py" "$OUT"
log "raw numbers: $OUT/results.json; pullnix logs: $OUT/logs/"
