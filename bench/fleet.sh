#!/usr/bin/env bash
# pullnix fleet benchmark: `pullnix fleet status --all --json` over simulated hosts, against a
# sequential shell loop of the same ssh calls. See bench/README.md ("Fleet").
#
#   bench/fleet.sh                       build target/release/pullnix, run, print a markdown table
#   PULLNIX_BIN=/path bench/fleet.sh     benchmark an existing binary instead of building
#
# Environment: FLEET_HOSTS (inventory entries, default 50), FLEET_SSHD (real sshd instances
# they point at, round robin, default 4), FLEET_N (timed runs per row, default 3),
# FLEET_PARALLEL (space-separated `parallel` settings to measure, default "16 1"),
# BENCH_KEEP=1 (keep the temporary directory).
# Progress goes to stderr, the table to stdout. Needs sshd (openssh-server), ssh-keygen,
# python3 and GNU time; everything runs on 127.0.0.1.
set -euo pipefail

HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
TOP=$(cd "$HERE/.." && pwd)
HOSTS=${FLEET_HOSTS:-50}
SSHDS=${FLEET_SSHD:-4}
N=${FLEET_N:-3}
PARALLEL=${FLEET_PARALLEL:-"16 1"}
SSHD=/usr/sbin/sshd

BENCH_NAME=fleet-bench
# shellcheck source=bench/lib.sh
. "$HERE/lib.sh"

for tool in "$SSHD" ssh ssh-keygen python3 /usr/bin/time; do
    command -v "$tool" >/dev/null 2>&1 || [[ -x $tool ]] || die "$tool is missing (apt-get install openssh-server openssh-client python3 time)"
done
mkdir -p /run/sshd 2>/dev/null || true

pullnix_bin

W=$(mktemp -d "${TMPDIR:-/tmp}/pullnix-fleet-bench.XXXXXX")
SSHD_PIDS=()
cleanup() {
    local rc=$?
    for pid in "${SSHD_PIDS[@]}"; do kill "$pid" 2>/dev/null || true; done
    for pid in "${SSHD_PIDS[@]}"; do wait "$pid" 2>/dev/null || true; done
    if [[ ${BENCH_KEEP:-0} = 1 ]]; then log "kept $W"; else rm -rf "$W"; fi
    exit "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

free_port() {
    python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'
}

# ---------------------------------------------------------------- sshd instances
USER_NAME=$(id -un)
ssh-keygen -q -t ed25519 -N '' -C host -f "$W/host_key"
ssh-keygen -q -t ed25519 -N '' -C client -f "$W/client_key"
cp "$W/client_key.pub" "$W/authorized_keys"
: >"$W/known_hosts"
# MaxStartups: many parallel logins on one server would otherwise be refused at random.
cat >"$W/sshd_config" <<EOF
ListenAddress 127.0.0.1
HostKey $W/host_key
PidFile none
AuthorizedKeysFile $W/authorized_keys
StrictModes no
UsePAM no
PasswordAuthentication no
KbdInteractiveAuthentication no
PubkeyAuthentication yes
PermitRootLogin prohibit-password
AllowUsers $USER_NAME
MaxStartups 200
LogLevel ERROR
EOF
SSH_OPTS=(-T -a -x -o BatchMode=yes -o LogLevel=ERROR -o ConnectTimeout=10 -i "$W/client_key"
    -o IdentitiesOnly=yes -o StrictHostKeyChecking=yes -o "UserKnownHostsFile=$W/known_hosts"
    -l "$USER_NAME")
PORTS=()
for ((i = 0; i < SSHDS; i++)); do
    port=$(free_port)
    echo "[127.0.0.1]:$port $(cat "$W/host_key.pub")" >>"$W/known_hosts"
    "$SSHD" -D -e -f "$W/sshd_config" -p "$port" </dev/null >/dev/null 2>"$W/sshd-$port.log" &
    SSHD_PIDS+=($!)
    for _ in $(seq 100); do
        ssh "${SSH_OPTS[@]}" -p "$port" 127.0.0.1 true 2>/dev/null && break
        sleep 0.1
    done
    ssh "${SSH_OPTS[@]}" -p "$port" 127.0.0.1 true || die "sshd on port $port does not serve (see $W/sshd-$port.log)"
    PORTS+=("$port")
done
log "$SSHDS sshd instances on 127.0.0.1: ${PORTS[*]}"

# ---------------------------------------------------------------- simulated hosts
# Each host is a root with its own config and state directory; the remote command is the real
# binary reading it, exactly what `pullnix status --json` does on a machine.
toml_str() { python3 -c 'import json,sys; print(json.dumps(sys.argv[1]))' "$1"; }
write_inventory() { # write_inventory PARALLEL
    {
        echo "[defaults]"
        echo "user = $(toml_str "$USER_NAME")"
        echo "identity = $(toml_str "$W/client_key")"
        echo "known_hosts = $(toml_str "$W/known_hosts")"
        echo "timeout = 30"
        echo "parallel = $1"
        for ((i = 0; i < HOSTS; i++)); do
            local root=$W/hosts/h$i
            printf '\n[hosts.host-%03d]\naddress = "127.0.0.1"\nport = %s\n' "$i" "${PORTS[i % SSHDS]}"
            echo "pullnix = [$(toml_str "$BIN"), \"--config\", $(toml_str "$root/etc/pullnix/config.toml"), \"--root\", $(toml_str "$root")]"
        done
    } >"$W/hosts-$1.toml"
}
for ((i = 0; i < HOSTS; i++)); do
    root=$W/hosts/h$i
    mkdir -p "$root/etc/pullnix" "$root/var/lib/pullnix"
    printf 'host = "host-%03d"\n[repo]\nurl = "file:///srv/fleet.git"\n' "$i" >"$root/etc/pullnix/config.toml"
    touch "$root/var/lib/pullnix/last-check"
done

# ---------------------------------------------------------------- measurements
# one_run OUTFILE CMD...: prints "WALL_S MAXRSS_KIB EXIT" for one run of CMD.
one_run() {
    local out=$1; shift
    local t0 t1
    t0=$(date +%s.%N)
    set +e
    /usr/bin/time -f %M -o "$W/rss" "$@" >"$out" 2>"$W/stderr"
    local rc=$?
    set -e
    t1=$(date +%s.%N)
    echo "$(python3 -c "print($t1 - $t0)") $(tail -n1 "$W/rss") $rc"
}
# The baseline: the same ssh calls, one after the other, from a shell script.
{
    echo "set -e"
    for ((i = 0; i < HOSTS; i++)); do
        root=$W/hosts/h$i
        printf '%q ' ssh "${SSH_OPTS[@]}" -p "${PORTS[i % SSHDS]}" -- 127.0.0.1 \
            "'$BIN' --config '$root/etc/pullnix/config.toml' --root '$root' status --json"
        echo
    done
} >"$W/loop.sh"
check_fleet_json() { # every host answered with a status object
    python3 -c '
import json, sys
j = json.load(open(sys.argv[1]))
ok = sum(1 for v in j.values() if "ok" in v and isinstance(v["ok"], dict) and "host" in v["ok"])
sys.exit(0 if ok == int(sys.argv[2]) == len(j) else 1)' "$1" "$HOSTS"
}

declare -A WALLS RSS
measure_rows() { # measure_rows LABEL CHECK CMD...
    local label=$1 check=$2; shift 2
    local walls=() rss=() line
    for ((r = 0; r <= N; r++)); do # run 0 is the warm-up
        line=$(one_run "$W/out.json" "$@")
        read -r wall kib rc <<<"$line"
        if [[ $check == fleet ]]; then
            [[ $rc == 0 ]] && check_fleet_json "$W/out.json" || die "$label: exit $rc or not every host answered: $(tail -n3 "$W/stderr")"
        else
            [[ $rc == 0 ]] || die "$label: exit $rc: $(tail -n3 "$W/stderr")"
        fi
        ((r == 0)) && continue
        walls+=("$wall"); rss+=("$kib")
    done
    WALLS[$label]=$(printf '%s\n' "${walls[@]}" | sort -g | awk '{a[NR]=$1} END {print a[int((NR+1)/2)]}')
    RSS[$label]=$(printf '%s\n' "${rss[@]}" | sort -n | tail -n1)
    log "$label: median wall ${WALLS[$label]} s, peak RSS ${RSS[$label]} KiB"
}

LABELS=()
for p in $PARALLEL; do
    write_inventory "$p"
    label="pullnix fleet status --all --json, parallel = $p"
    measure_rows "$label" fleet "$BIN" fleet status --all --json --inventory "$W/hosts-$p.toml"
    LABELS+=("$label")
done
BASE="sequential \`for\` loop of ssh calls (bash)"
measure_rows "$BASE" plain bash "$W/loop.sh"

# ---------------------------------------------------------------- report
echo
echo "$HOSTS hosts on $SSHDS sshd instances (127.0.0.1), median of $N runs after a warm-up, $(nproc) CPUs"
echo
echo "| run | wall | per host | peak RSS | vs loop |"
echo "|---|---|---|---|---|"
for label in "${LABELS[@]}" "$BASE"; do
    python3 - "$label" "${WALLS[$label]}" "${RSS[$label]}" "${WALLS[$BASE]}" "$HOSTS" <<'EOF'
import sys
label, wall, rss, base, hosts = sys.argv[1], float(sys.argv[2]), int(sys.argv[3]), float(sys.argv[4]), int(sys.argv[5])
print(f"| {label} | {wall:.2f} s | {wall / hosts * 1000:.1f} ms | {rss / 1000:.1f} MB | {wall / base:.2f}x |")
EOF
done
