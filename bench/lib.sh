# Shared by the bench scripts (sourced after they set HERE, TOP and BENCH_NAME): one log format
# and one way to get the binary under test.

log() { printf '[%s %(%H:%M:%S)T] %s\n' "$BENCH_NAME" -1 "$*" >&2; }
die() { log "ERROR: $*"; exit 1; }

# Sets BIN: $PULLNIX_BIN if given, else a release build of this checkout.
pullnix_bin() {
    if [[ -n ${PULLNIX_BIN:-} ]]; then
        BIN=$(realpath "$PULLNIX_BIN")
    else
        command -v cargo >/dev/null || die "cargo not found (set PULLNIX_BIN to skip the build)"
        log "cargo build --release"
        if ! (cd "$TOP" && cargo build --release) 2>&1 | sed 's/^/  cargo: /' >&2; then
            die "cargo build --release failed"
        fi
        BIN=$TOP/target/release/pullnix
    fi
    [[ -x $BIN ]] || die "no pullnix binary at $BIN"
}
