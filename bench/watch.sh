#!/usr/bin/env bash
# pullnix fleet-repository benchmark: how many NixOS evaluations a commit that concerns one host
# costs a fleet of 50 hosts that follow the same repository. See bench/README.md ("Watch").
#
# PENDING (issue 14, part 4): `repo.watch` is not implemented yet. The script measures the
# baseline (every host evaluates) and probes the binary: as soon as a config with `repo.watch` is
# accepted, it measures the watched fleet too and judges the target (1 evaluation instead of 50).
# Until then the watched row says "pending".
#
#   bench/watch.sh                     build target/release/pullnix, run, print a markdown table
#   PULLNIX_BIN=/path bench/watch.sh   benchmark an existing binary instead of building
#
# Environment: WATCH_HOSTS (default 50), BENCH_KEEP=1 (keep the temporary directory).
set -euo pipefail

HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
TOP=$(cd "$HERE/.." && pwd)
HOSTS=${WATCH_HOSTS:-50}
TOUCHED=$((HOSTS < 7 ? HOSTS : 7)) # the host whose directory the measured commit changes

BENCH_NAME=watch-bench
# shellcheck source=bench/lib.sh
. "$HERE/lib.sh"
for tool in git python3 nix nix-env; do
    command -v "$tool" >/dev/null 2>&1 || die "$tool is missing: run scripts/setup-debian.sh (as root)"
done
export NIX_CONFIG="extra-experimental-features = nix-command flakes
sandbox = false${NIX_CONFIG:+
$NIX_CONFIG}"
pullnix_bin

W=$(mktemp -d "${TMPDIR:-/tmp}/pullnix-watch-bench.XXXXXX")
cleanup() { [[ ${BENCH_KEEP:-0} = 1 ]] && log "kept $W" || rm -rf "$W"; }
trap cleanup EXIT
: >"$W/gitconfig"
export GIT_CONFIG_GLOBAL=$W/gitconfig GIT_CONFIG_NOSYSTEM=1
export GIT_AUTHOR_NAME=bench GIT_AUTHOR_EMAIL=bench@example.invalid
export GIT_COMMITTER_NAME=bench GIT_COMMITTER_EMAIL=bench@example.invalid

host() { printf 'host-%02d' "$1"; }

# ---------------------------------------------------------------- the fleet repository
# One flake, one nixosConfigurations entry per host. Each host's toplevel reads its own
# hosts/NAME/ files and the shared modules/ file, so a change under hosts/host-07/ changes only
# host-07's system; every other host evaluates to the system it already runs.
log "creating a repository with $HOSTS hosts"
R=$W/src
mkdir -p "$R/modules"
echo "shared module v1" >"$R/modules/common.txt"
for i in $(seq 1 "$HOSTS"); do
    mkdir -p "$R/hosts/$(host "$i")"
    echo "$(host "$i") v1" >"$R/hosts/$(host "$i")/config.txt"
done
cat >"$R/flake.nix" <<'EOF'
{
  description = "pullnix watch benchmark fleet";
  outputs = { self }:
    let
      names = builtins.attrNames (builtins.readDir ./hosts);
      system = name: derivation {
        name = "nixos-system-${name}";
        system = "x86_64-linux";
        builder = "/bin/sh";
        PATH = "/usr/bin:/bin";
        host = builtins.readFile (./hosts + "/${name}/config.txt");
        shared = builtins.readFile ./modules/common.txt;
        # Like NixOS's activation, `test` and `switch` make this system the running one
        # ($BENCH_ROOT/run/current-system), so a later commit that builds to it changes nothing.
        args = [ "-c" ''
          mkdir -p $out/bin
          cat > $out/bin/switch-to-configuration <<EOS
          #!/bin/sh
          case "\$1" in test|switch) ln -sfn $out "\$BENCH_ROOT/run/current-system" ;; esac
          EOS
          chmod +x $out/bin/switch-to-configuration
          echo "$host$shared" > $out/config
        '' ];
      };
    in {
      nixosConfigurations = builtins.listToAttrs (map (name: {
        inherit name;
        value.config.system.build.toplevel = system name;
      }) names);
    };
}
EOF
git -C "$R" init -q -b main
git -C "$R" add -A
git -C "$R" commit -qm "fleet v1"
mkdir -p "$W/srv"
git clone -q --bare "$R" "$W/srv/fleet.git"
URL=file://$W/srv/fleet.git

# A previous generation for every root (any toplevel will do: the first sync replaces it).
PREV=$(nix build --no-link --json "git+file://$W/srv/fleet.git?ref=main#nixosConfigurations.$(host 1).config.system.build.toplevel" |
    python3 -c 'import json,sys; print(json.load(sys.stdin)[0]["outputs"]["out"])')

mkroot() {
    mkdir -p "$1/nix/var/nix/profiles" "$1/run" "$1/boot/loader/entries"
    nix-env -p "$1/nix/var/nix/profiles/system" --set "$PREV" >/dev/null 2>&1
    ln -s "$PREV" "$1/run/current-system"
    ln -s "$PREV" "$1/run/booted-system"
}
# write_config FILE HOST WATCH(0/1)
write_config() {
    {
        echo "host = \"$2\""
        echo "[repo]"
        echo "url = \"$URL\""
        # The ssh and git:// hardening of issue 10 does not concern file:// URLs.
        if [[ $3 = 1 ]]; then
            echo "watch = [\"hosts/$2/**\", \"modules/**\", \"flake.nix\", \"flake.lock\"]"
        fi
        echo "[confirm]"
        echo "timeout = 30"
        echo "interval = 1"
        echo "[health]"
        echo "remote = false"
    } >"$1"
}

# Does this binary know `repo.watch`? (Unknown keys are refused: exit 2 naming the key.)
mkdir -p "$W/probe"
mkroot "$W/probe/root"
write_config "$W/probe/config.toml" "$(host 1)" 1
WATCH_SUPPORTED=0
if "$BIN" --config "$W/probe/config.toml" --root "$W/probe/root" status >"$W/probe/out" 2>&1; then
    WATCH_SUPPORTED=1
elif ! grep -q 'watch' "$W/probe/out"; then
    die "probing repo.watch failed for another reason: $(tail -3 "$W/probe/out")"
fi
log "repo.watch supported by $BIN: $([[ $WATCH_SUPPORTED = 1 ]] && echo yes || echo 'no (pending)')"

: >"$W/runs.jsonl"
# fleet_sync KIND: one `pullnix sync` per host, each measured; appends to runs.jsonl
fleet_sync() {
    local kind=$1 i
    for i in $(seq 1 "$HOSTS"); do
        python3 "$HERE/measure.py" --out "$W/runs.jsonl" --label "$kind" --log "$W/logs/$kind-$i.log" \
            --env "BENCH_ROOT=$W/$2/root-$i" \
            -- "$BIN" --config "$W/$2/config-$i.toml" --root "$W/$2/root-$i" sync
    done
}
mkdir -p "$W/logs"
fleets=(plain)
[[ $WATCH_SUPPORTED = 1 ]] && fleets+=(watched)
for f in "${fleets[@]}"; do
    mkdir -p "$W/$f"
    for i in $(seq 1 "$HOSTS"); do
        mkroot "$W/$f/root-$i"
        write_config "$W/$f/config-$i.toml" "$(host "$i")" "$([[ $f = watched ]] && echo 1 || echo 0)"
    done
    log "$f fleet: first sync of $HOSTS hosts (deploys v1 everywhere)"
    fleet_sync "$f-first" "$f"
done

log "committing a change to hosts/$(host $TOUCHED)/ only"
echo "$(host $TOUCHED) v2" >"$R/hosts/$(host $TOUCHED)/config.txt"
git -C "$R" commit -qam "$(host $TOUCHED): v2"
git -C "$R" push -q "$W/srv/fleet.git" main
for f in "${fleets[@]}"; do
    log "$f fleet: every host syncs the new commit"
    fleet_sync "$f-change" "$f"
done

python3 - "$W/runs.jsonl" "$HOSTS" "$TOUCHED" "$WATCH_SUPPORTED" <<'EOF'
import json, re, sys
runs = [json.loads(l) for l in open(sys.argv[1])]
hosts, touched, supported = int(sys.argv[2]), int(sys.argv[3]), sys.argv[4] == "1"
build = re.compile(r"running: (\S+=\S+ )*\S*nix build ")

def stats(label):
    rs = [r for r in runs if r["label"] == label]
    evals = switched = 0
    for r in rs:
        with open(r["log"]) as f:
            text = f.read()
        evals += sum(1 for ln in text.splitlines() if build.search(ln))
        switched += "switch-to-configuration test" in text
    return {
        "n": len(rs), "failed": sum(r["rc"] != 0 for r in rs), "evals": evals,
        "switched": switched,
        "wall": sum(r["wall_s"] for r in rs), "cpu": sum(r["cpu_s"] for r in rs),
        "rss": max((r["tree_peak_kib"] for r in rs), default=0) * 1024 / 1e6,
    }

print(f"### pullnix watch benchmark: a commit that changes hosts/host-{touched:02d}/ only, "
      f"{hosts} hosts following one repository\n")
print("| fleet | evaluations (`nix build`) | hosts switched | failed syncs | wall, all hosts | CPU, all hosts | largest tree RSS | target | result |")
print("|---|---|---|---|---|---|---|---|---|")
p = stats("plain-change")
print(f"| no `repo.watch` (today's default) | {p['evals']} | {p['switched']} | {p['failed']} | {p['wall']:.1f} s | "
      f"{p['cpu']:.1f} s | {p['rss']:.0f} MB | — | info |")
if supported:
    w = stats("watched-change")
    ok = w["evals"] == 1 and w["failed"] == 0 and w["switched"] == 1
    print(f"| `repo.watch = [\"hosts/NAME/**\", \"modules/**\", \"flake.nix\", \"flake.lock\"]` | "
          f"{w['evals']} | {w['switched']} | {w['failed']} | {w['wall']:.1f} s | {w['cpu']:.1f} s | {w['rss']:.0f} MB | "
          f"1 | {'PASS' if ok else '**FAIL**'} |")
else:
    print("| `repo.watch = [\"hosts/NAME/**\", \"modules/**\", \"flake.nix\", \"flake.lock\"]` | "
          "pending | | | | | | 1 | **pending** (issue 14 part 4: this binary refuses `repo.watch`) |")
for f in ("plain", "watched"):
    first = stats(f"{f}-first")
    if first["n"] and first["failed"]:
        print(f"\n**{f} fleet: {first['failed']} of {first['n']} first syncs failed**; see the logs "
              "(BENCH_KEEP=1 keeps them).")
print("\nEvaluations are counted from each sync's log (pullnix logs every command before it runs). "
      "The toplevels are trivial derivations, so the wall and CPU columns understate what an "
      "evaluation of a real NixOS system costs a device (tens of seconds, a gigabyte or more).")
EOF
