#!/usr/bin/env bash
# pullnix benchmark over the transports devices use: git:// (git daemon), https (lighttpd +
# git-http-backend, TLS with a private CA) and ssh (a real sshd), all on 127.0.0.1, with the same
# repositories. Per transport: no-op poll cost against `git ls-remote` and `git fetch`, cold fetch
# against `git clone --bare`, all in interleaved rounds of one run; plus the binary size.
# See bench/README.md.
#
#   bench/run.sh                     build target/release/pullnix, run, print one table per transport
#   PULLNIX_BIN=/path bench/run.sh   benchmark an existing binary instead of building
#
# Environment: BENCH_N (no-op polls per tool and transport, default 20), BENCH_COLD_N (cold
# fetches per tool and transport, default 5), BENCH_COMMITS (large repo, default 10000),
# BENCH_TRANSPORTS (default "git https ssh"), BENCH_OUT (default bench/out), BENCH_KEEP=1 (keep
# the temporary directory), BENCH_BUILD_MARK (regex of the pullnix log line that starts `nix
# build`).
# Progress goes to stderr, the tables to stdout, raw numbers to $BENCH_OUT/results.json.
# Exit status: 0 when the benchmark ran (whatever the PASS/FAIL verdicts), non-zero when the
# benchmark itself could not run.
set -euo pipefail

HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
TOP=$(cd "$HERE/.." && pwd)
N=${BENCH_N:-20}
COLD_N=${BENCH_COLD_N:-5}
COMMITS=${BENCH_COMMITS:-10000}
OUT=${BENCH_OUT:-$HERE/out}
read -r -a TRANSPORTS <<<"${BENCH_TRANSPORTS:-git https ssh}"
BUILD_MARK=${BENCH_BUILD_MARK:-'\bnix\b.{0,40}\bbuild\b'}
ATTR='nixosConfigurations.benchhost.config.system.build.toplevel'

BENCH_NAME=bench
# shellcheck source=bench/lib.sh
. "$HERE/lib.sh"

# ---------------------------------------------------------------- prerequisites
# scripts/setup-debian.sh installs all of these (it is what the test suite needs too).
SSHD=/usr/sbin/sshd
for tool in git python3 nix nix-env openssl lighttpd ssh ssh-keygen "$SSHD"; do
    command -v "$tool" >/dev/null 2>&1 || [[ -x $tool ]] \
        || die "$tool is missing: run scripts/setup-debian.sh (as root)"
done
GIT_EXEC=$(git --exec-path)
for prog in git-daemon git-http-backend; do
    [[ -x $GIT_EXEC/$prog ]] || die "$prog not found in $GIT_EXEC"
done
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
SERVER_PIDS=()
cleanup() {
    local rc=$?
    for pid in "${SERVER_PIDS[@]}"; do
        kill "$pid" 2>/dev/null || true
    done
    for pid in "${SERVER_PIDS[@]}"; do
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
wait_until() { # wait_until WHAT COMMAND...: retry for 10 s
    local what=$1
    shift
    for _ in $(seq 200); do
        "$@" >/dev/null 2>&1 && return 0
        sleep 0.05
    done
    die "$what did not come up (logs in $W/logs)"
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
EXPECT_SMALL=$(nix eval --raw "$(flake_ref "$W/srv/small.git" "$(git -C "$W/src" rev-parse HEAD)").outPath")
EXPECT_LARGE=$(nix eval --raw "$(flake_ref "$W/srv/large.git" "$CL").outPath")
log "previous generation $PREV; candidate $EXPECT_SMALL"

# ---------------------------------------------------------------- credentials
# TLS: a private CA (CA:TRUE) that signs the server's certificate for IP 127.0.0.1. pullnix and
# git both trust this CA and nothing else (repo.ca_file; GIT_SSL_CAINFO plus GIT_SSL_CAPATH
# pointing at a directory holding only it, so git's curl does not also load /etc/ssl/certs).
log "making a private CA, the server certificate and the ssh keys"
T=$W/tls
mkdir -p "$T/capath"
openssl req -x509 -newkey rsa:2048 -nodes -days 2 -subj "/CN=pullnix bench CA" \
    -addext basicConstraints=critical,CA:TRUE -addext keyUsage=critical,keyCertSign,cRLSign \
    -keyout "$T/ca.key" -out "$T/ca.pem" 2>"$W/logs/openssl.log"
openssl req -newkey rsa:2048 -nodes -subj "/CN=127.0.0.1" \
    -keyout "$T/server.key" -out "$T/server.csr" 2>>"$W/logs/openssl.log"
printf 'subjectAltName=IP:127.0.0.1\nbasicConstraints=CA:FALSE\nextendedKeyUsage=serverAuth\n' >"$T/ext"
openssl x509 -req -in "$T/server.csr" -CA "$T/ca.pem" -CAkey "$T/ca.key" -CAcreateserial \
    -days 2 -extfile "$T/ext" -out "$T/server.pem" 2>>"$W/logs/openssl.log"
cp "$T/ca.pem" "$T/capath/$(openssl x509 -hash -noout -in "$T/ca.pem").0"

# ssh: a host key, the deploy key, known_hosts lines for the server and its proxy
S=$W/ssh
mkdir -p "$S"
for key in host_key client_key; do
    ssh-keygen -q -t ed25519 -N "" -C "bench $key" -f "$S/$key"
done
cp "$S/client_key.pub" "$S/authorized_keys"
ME=$(id -un)
mkdir -p /run/sshd 2>/dev/null || true # Debian's sshd wants its privilege separation directory
cat >"$S/sshd_config" <<EOF
ListenAddress 127.0.0.1
HostKey $S/host_key
PidFile none
AuthorizedKeysFile $S/authorized_keys
StrictModes no
UsePAM no
PasswordAuthentication no
KbdInteractiveAuthentication no
PubkeyAuthentication yes
PermitRootLogin prohibit-password
AllowUsers $ME
# protocol v2 over ssh, as forges (GitHub, GitLab) offer it
AcceptEnv GIT_PROTOCOL
EOF
# pullnix's own ssh options (src/git.rs) for git too: same key, same host key checking
SSH_OPTS="-o BatchMode=yes -o LogLevel=ERROR -o IdentitiesOnly=yes -i $S/client_key -o StrictHostKeyChecking=yes -o UserKnownHostsFile=$S/known_hosts"

# ---------------------------------------------------------------- servers
start() { # start NAME LOG COMMAND...: a server in the background, killed on exit
    local name=$1 logf=$2
    shift 2
    "$@" >"$logf" 2>&1 &
    SERVER_PIDS+=($!)
    log "$name: pid $!"
}
start_proxy() { # start_proxy NAME UPSTREAM_PORT: sets PROXY_PORT
    local name=$1
    start "proxy for $name" "$W/logs/proxy-$name.log" python3 "$HERE/proxy.py" \
        --upstream "127.0.0.1:$2" --port-file "$W/proxy-$name.port" --stats "$W/proxy-$name.json"
    wait_until "the $name proxy" test -s "$W/proxy-$name.port"
    PROXY_PORT=$(cat "$W/proxy-$name.port")
}

declare -A URL URL_P GIT_ENV REPO_TOML STATS
for t in "${TRANSPORTS[@]}"; do
    case $t in
    git)
        port=$(free_port)
        start "git daemon" "$W/logs/git-daemon.log" "$GIT_EXEC/git-daemon" --reuseaddr --export-all \
            --base-path="$W/srv" --listen=127.0.0.1 --port="$port" "$W/srv"
        wait_until "git daemon" git ls-remote "git://127.0.0.1:$port/small.git"
        start_proxy git "$port"
        URL[git]=git://127.0.0.1:$port URL_P[git]=git://127.0.0.1:$PROXY_PORT
        # git daemon on loopback: the bench measures the transport, not commit signatures.
        GIT_ENV[git]="" REPO_TOML[git]="insecure_plaintext_without_signatures = true"
        ;;
    https)
        port=$(free_port)
        cat >"$W/lighttpd.conf" <<EOF
server.document-root = "$W/srv"
server.bind = "127.0.0.1"
server.port = $port
server.errorlog = "$W/logs/lighttpd-error.log"
server.modules = ( "mod_alias", "mod_cgi", "mod_setenv", "mod_openssl" )
alias.url = ( "/" => "$GIT_EXEC/git-http-backend/" )
cgi.assign = ( "" => "" )
setenv.set-environment = (
  "GIT_PROJECT_ROOT" => "$W/srv",
  "GIT_HTTP_EXPORT_ALL" => "1",
  "GIT_CONFIG_NOSYSTEM" => "1",
  "GIT_CONFIG_GLOBAL" => "/dev/null",
)
ssl.engine = "enable"
ssl.pemfile = "$T/server.pem"
ssl.privkey = "$T/server.key"
EOF
        start lighttpd "$W/logs/lighttpd.log" lighttpd -D -f "$W/lighttpd.conf"
        GIT_ENV[https]="GIT_SSL_CAINFO=$T/ca.pem GIT_SSL_CAPATH=$T/capath"
        wait_until lighttpd env ${GIT_ENV[https]} git ls-remote "https://127.0.0.1:$port/small.git"
        start_proxy https "$port"
        URL[https]=https://127.0.0.1:$port URL_P[https]=https://127.0.0.1:$PROXY_PORT
        REPO_TOML[https]="ca_file = \"$T/ca.pem\""
        ;;
    ssh)
        port=$(free_port)
        start sshd "$W/logs/sshd.log" "$SSHD" -D -e -f "$S/sshd_config" -p "$port"
        start_proxy ssh "$port"
        host_key=$(cat "$S/host_key.pub")
        printf '[127.0.0.1]:%s %s\n[127.0.0.1]:%s %s\n' "$port" "$host_key" "$PROXY_PORT" "$host_key" \
            >"$S/known_hosts"
        GIT_ENV[ssh]="GIT_SSH_COMMAND=ssh $SSH_OPTS"
        wait_until sshd env "${GIT_ENV[ssh]}" git ls-remote "ssh://$ME@127.0.0.1:$port$W/srv/small.git"
        URL[ssh]=ssh://$ME@127.0.0.1:$port$W/srv URL_P[ssh]=ssh://$ME@127.0.0.1:$PROXY_PORT$W/srv
        REPO_TOML[ssh]="deploy_key = \"$S/client_key\"
known_hosts = \"$S/known_hosts\""
        ;;
    *) die "unknown transport '$t' in BENCH_TRANSPORTS (git, https, ssh)" ;;
    esac
    STATS[$t]=$W/proxy-$t.json
done
# --env arguments for measure.py: the transport's git settings (one variable a line)
git_env_args() {
    local t=$1
    case $t in
    https) printf -- '--env\nGIT_SSL_CAINFO=%s\n--env\nGIT_SSL_CAPATH=%s\n' "$T/ca.pem" "$T/capath" ;;
    ssh) printf -- '--env\nGIT_SSH_COMMAND=ssh %s\n' "$SSH_OPTS" ;;
    esac
}
log "serving over: ${TRANSPORTS[*]}"

# ---------------------------------------------------------------- pullnix roots
mkroot() { # mkroot DIR: a fake system whose current generation is $PREV
    mkdir -p "$1/nix/var/nix/profiles" "$1/run" "$1/boot/loader/entries"
    nix-env -p "$1/nix/var/nix/profiles/system" --set "$PREV" >/dev/null 2>&1
    ln -s "$PREV" "$1/run/current-system"
    ln -s "$PREV" "$1/run/booted-system"
}
write_config() { # write_config FILE TRANSPORT URL HEALTH_REMOTE
    cat >"$1" <<EOF
host = "benchhost"

[repo]
url = "$3"
branch = "main"
${REPO_TOML[$2]}

[confirm]
timeout = 30
interval = 1

[health]
remote = $4
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
# git_run JSONL LABEL TRANSPORT [measure options] -- GIT ARGS...: one measured git command
git_run() {
    local out=$1 label=$2 t=$3
    shift 3
    local envs=()
    mapfile -t envs < <(git_env_args "$t")
    measure --out "$out" --label "$label" "${envs[@]}" "$@"
}

# ---------------------------------------------------------------- no-op polls
NOOP=$W/noop
mkdir -p "$NOOP"
for t in "${TRANSPORTS[@]}"; do
    for v in direct proxied; do
        url=${URL[$t]}/small.git
        [[ $v = proxied ]] && url=${URL_P[$t]}/small.git
        log "no-op [$t]: first pullnix sync ($v)"
        mkroot "$NOOP/root-$t-$v"
        write_config "$NOOP/config-$t-$v.toml" "$t" "$url" true
        pullnix_sync "$OUT/setup.jsonl" "$t:pullnix-first-sync-$v" "$t:first_sync" "$NOOP/root-$t-$v" \
            "$NOOP/config-$t-$v.toml" "$EXPECT_SMALL" "$OUT/logs/first-sync-$t-$v.log"
    done
    git clone -q --bare "$W/srv/small.git" "$NOOP/clone-$t.git"
done

noop_tool() { # noop_tool TRANSPORT TOOL TAG I [proxied]
    local t=$1 tool=$2 tag=$3 i=$4 v=${5:-direct} stats=()
    local url=${URL[$t]}/small.git
    if [[ $v = proxied ]]; then
        url=${URL_P[$t]}/small.git
        stats=(--stats "${STATS[$t]}")
    fi
    case $tool in
    pullnix)
        pullnix_sync "$OUT/noop.jsonl" "$t:pullnix-$tag" "$t:noop_sync" "$NOOP/root-$t-$v" \
            "$NOOP/config-$t-$v.toml" "$EXPECT_SMALL" "$W/logs/noop-$t-$tag-$i.log" "${stats[@]}"
        ;;
    ls-remote)
        git_run "$OUT/noop.jsonl" "$t:ls-remote-$tag" "$t" "${stats[@]}" -- git ls-remote "$url"
        ;;
    fetch)
        git_run "$OUT/noop.jsonl" "$t:fetch-$tag" "$t" "${stats[@]}" -- \
            git -C "$NOOP/clone-$t.git" fetch -q "$url" +refs/heads/main:refs/heads/main
        ;;
    esac
}
TOOLS=(pullnix ls-remote fetch)
log "no-op: $N timed rounds (+1 warm-up) of pullnix sync / git ls-remote / git fetch on ${TRANSPORTS[*]}, interleaved"
for i in $(seq 0 "$N"); do
    tag=run
    [[ $i = 0 ]] && tag=warmup
    for t in "${TRANSPORTS[@]}"; do
        # rotate the order of the tools every round: no tool always runs right after another
        for k in 0 1 2; do
            noop_tool "$t" "${TOOLS[$(((i + k) % 3))]}" "$tag" "$i"
        done
    done
    ((i % 5 == 0)) && log "no-op: round $i/$N"
done
for t in "${TRANSPORTS[@]}"; do
    cp "$W/logs/noop-$t-run-$N.log" "$OUT/logs/noop-sync-$t.log" 2>/dev/null || true
done
log "no-op: 3 rounds through the byte-counting proxies"
for i in 1 2 3; do
    for t in "${TRANSPORTS[@]}"; do
        for tool in "${TOOLS[@]}"; do
            noop_tool "$t" "$tool" bytes "$i" proxied
        done
    done
done

# ---------------------------------------------------------------- cold fetch
COLD=$W/cold
mkdir -p "$COLD"
for t in "${TRANSPORTS[@]}"; do
    write_config "$COLD/config-$t-direct.toml" "$t" "${URL[$t]}/large.git" false
    write_config "$COLD/config-$t-proxied.toml" "$t" "${URL_P[$t]}/large.git" false
    log "cold [$t]: warm-up clone of the large repo (server page cache)"
    git_run "$COLD/warmup.jsonl" warmup "$t" -- git clone -q --bare "${URL[$t]}/large.git" "$COLD/warmup-$t.git"
    [[ $(last_rc "$COLD/warmup.jsonl") = 0 ]] || die "git clone --bare over $t failed"
    rm -rf "$COLD/warmup-$t.git"
done
cold_tool() { # cold_tool TRANSPORT TOOL K [proxied]
    local t=$1 tool=$2 k=$3 v=${4:-direct} stats=() tag=run
    local url=${URL[$t]}/large.git
    if [[ $v = proxied ]]; then
        url=${URL_P[$t]}/large.git
        stats=(--stats "${STATS[$t]}")
        tag=bytes
    fi
    case $tool in
    clone-bare)
        git_run "$OUT/cold.jsonl" "$t:clone-bare-$tag" "$t" "${stats[@]}" -- \
            git clone -q --bare "$url" "$COLD/bare-$t-$tag-$k.git"
        rm -rf "$COLD/bare-$t-$tag-$k.git"
        ;;
    pullnix)
        mkroot "$COLD/root-$t-$tag-$k"
        pullnix_sync "$OUT/cold.jsonl" "$t:pullnix-$tag" "$t:cold_sync" "$COLD/root-$t-$tag-$k" \
            "$COLD/config-$t-$v.toml" "$EXPECT_LARGE" "$W/logs/cold-$t-$tag-$k.log" "${stats[@]}"
        if [[ $k = 1 && $tag = run ]]; then
            cp "$W/logs/cold-$t-$tag-$k.log" "$OUT/logs/cold-sync-$t.log"
        fi
        rm -rf "$COLD/root-$t-$tag-$k"
        ;;
    esac
}
for k in $(seq 1 "$COLD_N"); do
    log "cold: round $k/$COLD_N: git clone --bare and a first pullnix sync on ${TRANSPORTS[*]}"
    for t in "${TRANSPORTS[@]}"; do
        if ((k % 2)); then
            cold_tool "$t" clone-bare "$k"
            cold_tool "$t" pullnix "$k"
        else
            cold_tool "$t" pullnix "$k"
            cold_tool "$t" clone-bare "$k"
        fi
    done
done
log "cold: 1 round through the byte-counting proxies"
for t in "${TRANSPORTS[@]}"; do
    cold_tool "$t" clone-bare 1 proxied
    cold_tool "$t" pullnix 1 proxied
done

# ---------------------------------------------------------------- report
python3 - "$OUT/meta.json" <<EOF
import json, sys
json.dump({
    "bin": "$BIN", "version": "$VERSION", "bin_size": $BIN_SIZE,
    "n": $N, "cold_n": $COLD_N, "commits": $COMMITS, "large_pack_bytes": $LARGE_PACK,
    "transports": "${TRANSPORTS[*]}".split(),
    "git": "$(git --version)", "nix": "$(nix --version)", "ssh": "$(ssh -V 2>&1)",
    "lighttpd": "$(lighttpd -v 2>&1 | head -1)",
    "build_mark": r'''$BUILD_MARK''',
    "loadavg_start": "$LOAD_START", "loadavg_end": "$(cut -d' ' -f1-3 /proc/loadavg)",
    "nproc": $(nproc),
}, open(sys.argv[1], "w"), indent=1)
EOF
cp "$VERDICTS" "$OUT/verdicts.jsonl"
python3 "$HERE/report.py" "$OUT"
log "raw numbers: $OUT/results.json; pullnix logs: $OUT/logs/"
