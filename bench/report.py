#!/usr/bin/env python3
"""Turn the raw measurements of bench/run.sh into results.json and a markdown table.

    report.py OUTDIR

Reads OUTDIR/{meta.json,setup.jsonl,noop.jsonl,cold.jsonl,verdicts.jsonl}, writes
OUTDIR/results.json and prints the table (stdout).
"""

import json
import os
import statistics
import sys

MB = 1_000_000  # targets are in MB = 10^6 bytes (the stricter reading); MiB shown alongside
MIB = 1 << 20

TARGET_NOOP_WALL_RATIO = 1.0  # x git ls-remote
TARGET_RSS_BYTES = 15 * MB
TARGET_COLD_RATIO = 1.5  # x git clone
TARGET_BIN_BYTES = 8 * MB


def load_jsonl(path):
    if not os.path.exists(path):
        return []
    with open(path) as f:
        return [json.loads(ln) for ln in f if ln.strip()]


def summarize(runs):
    if not runs:
        return None
    ok = [r for r in runs if r["rc"] == 0]
    walls = [r["wall_s"] for r in runs]
    s = {
        "n": len(runs),
        "n_ok": len(ok),
        "rcs": sorted({r["rc"] for r in runs}),
        "wall_mean_s": statistics.fmean(walls),
        "wall_median_s": statistics.median(walls),
        "wall_min_s": min(walls),
        "wall_max_s": max(walls),
        "wall_stdev_s": statistics.stdev(walls) if len(walls) > 1 else 0.0,
        "cpu_mean_s": statistics.fmean(r["cpu_s"] for r in runs),
        "user_mean_s": statistics.fmean(r["user_s"] for r in runs),
        "sys_mean_s": statistics.fmean(r["sys_s"] for r in runs),
        "maxrss_max_kib": max(r["maxrss_kib"] for r in runs),
        "maxrss_max_bytes": max(r["maxrss_kib"] for r in runs) * 1024,
    }
    if "bytes_up" in runs[0]:
        s["bytes_up_mean"] = statistics.fmean(r["bytes_up"] for r in runs)
        s["bytes_down_mean"] = statistics.fmean(r["bytes_down"] for r in runs)
        s["bytes_mean"] = s["bytes_up_mean"] + s["bytes_down_mean"]
        s["bytes_min"] = min(r["bytes_up"] + r["bytes_down"] for r in runs)
        s["connections_mean"] = statistics.fmean(r["connections"] for r in runs)
    marks = [r["mark_s"] for r in runs if r.get("mark_s") is not None]
    s["n_marked"] = len(marks)
    if marks:
        s["mark_mean_s"] = statistics.fmean(marks)
    s["raw"] = runs
    return s


def by_label(runs, label):
    return summarize([r for r in runs if r["label"] == label])


def ratio(a, b):
    if a is None or b is None or b == 0:
        return None
    return a / b


def fmt_ratio(x):
    return "n/a" if x is None else f"{x:.2f}×"


def ms(x):
    return "n/a" if x is None else f"{x * 1000:.1f} ms"


def sec(x):
    return "n/a" if x is None else f"{x:.3f} s"


def mb(b):
    return "n/a" if b is None else f"{b / MB:.2f} MB ({b / MIB:.2f} MiB)"


def nbytes(b):
    if b is None:
        return "n/a"
    if b >= 100_000:
        return f"{b / MB:.2f} MB"
    return f"{b:,.0f} B"


def get(s, k):
    return None if s is None else s.get(k)


def main():
    out = sys.argv[1]
    meta = json.load(open(os.path.join(out, "meta.json")))
    setup = load_jsonl(os.path.join(out, "setup.jsonl"))
    noop = load_jsonl(os.path.join(out, "noop.jsonl"))
    cold = load_jsonl(os.path.join(out, "cold.jsonl"))
    verdicts = load_jsonl(os.path.join(out, "verdicts.jsonl"))

    p_noop = by_label(noop, "pullnix-run")
    lsr = by_label(noop, "ls-remote-run")
    fetch = by_label(noop, "fetch-run")
    # byte counts come from separate runs through the proxy; merge them into the summaries
    for s, label in ((p_noop, "pullnix-bytes"), (lsr, "ls-remote-bytes"), (fetch, "fetch-bytes")):
        b = by_label(noop, label)
        if s is not None and b is not None:
            s.update({k: v for k, v in b.items() if k.startswith(("bytes", "connections"))})
            s["bytes_runs_ok"] = b["n_ok"] == b["n"]
            s["bytes_n_marked"] = b["n_marked"]
    p_cold = by_label(cold, "pullnix-cold-sync")
    clone_bare = by_label(cold, "clone-bare")
    clone = by_label(cold, "clone")
    nix_ref = by_label(cold, "nix-build-ref")
    for s, label in ((p_cold, "pullnix-cold-bytes"), (clone_bare, "clone-bare-bytes")):
        b = by_label(cold, label)
        if s is not None and b is not None:
            s.update({k: v for k, v in b.items() if k.startswith(("bytes", "connections"))})
    if p_cold:
        hw = [r.get("self_hwm_kib") for r in p_cold["raw"] if r.get("self_hwm_kib")]
        p_cold["self_hwm_max_bytes"] = max(hw) * 1024 if hw else None

    problems = {"noop": [], "cold": [], "bin": []}
    for v in verdicts:
        if not v["ok"]:
            key = "cold" if v["key"].startswith("cold") else "noop"
            problems[key].append(v["msg"])
    if not meta.get("version"):
        problems["bin"].append("`pullnix --version` printed no version")
    for name, s in (("ls-remote", lsr), ("fetch", fetch), ("clone --bare", clone_bare),
                    ("clone", clone), ("nix build (reference)", nix_ref)):
        if s and s["n_ok"] != s["n"]:
            print(f"warning: git baseline {name} failed in {s['n'] - s['n_ok']} runs",
                  file=sys.stderr)
    if p_noop:
        if p_noop["n_ok"] != p_noop["n"]:
            tails = {json.dumps(r["tail"][-2:]) for r in p_noop["raw"] if r["rc"] != 0}
            problems["noop"].append(
                f"no-op sync exited non-zero in {p_noop['n'] - p_noop['n_ok']}/{p_noop['n']} runs "
                f"(exit codes {p_noop['rcs']}); last lines: {'; '.join(sorted(tails)[:2])}")
        if p_noop.get("bytes_min", 0) == 0:
            problems["noop"].append("a no-op sync sent/received 0 bytes: it did not ask the remote")
        marked = p_noop["n_marked"] + p_noop.get("bytes_n_marked", 0)
        if marked:
            problems["noop"].append(
                f"{marked} no-op syncs ran `nix build` "
                "(README: an up-to-date pass ends before evaluation)")
    if p_cold:
        if p_cold.get("bytes_min", 0) < 0.5 * meta["large_pack_bytes"]:
            problems["cold"].append(
                f"a cold sync moved only {p_cold.get('bytes_min')} bytes "
                f"(pack is {meta['large_pack_bytes']}): it did not fetch the repository")

    noop_ok = not problems["noop"] and p_noop is not None
    cold_ok = not problems["cold"] and p_cold is not None

    # cold-fetch estimates
    fetch_log = get(p_cold, "mark_mean_s") if p_cold and p_cold["n_marked"] == p_cold["n"] else None
    fetch_sub = None
    if p_cold and nix_ref:
        fetch_sub = p_cold["wall_mean_s"] - nix_ref["wall_mean_s"]
    fetch_primary = fetch_log if fetch_log is not None else fetch_sub
    fetch_method = "log" if fetch_log is not None else "subtraction"

    rows = []

    def row(metric, pv, gv, r, target, result):
        rows.append((metric, pv, gv, r, target, result))

    def pf(ok, cond):
        if not ok:
            return "**FAIL** (see notes)"
        return "PASS" if cond else "**FAIL**"

    # no-op polls
    r = ratio(get(p_noop, "wall_mean_s"), get(lsr, "wall_mean_s"))
    row("no-op poll wall time (mean)", ms(get(p_noop, "wall_mean_s")),
        f"{ms(get(lsr, 'wall_mean_s'))} (ls-remote)", fmt_ratio(r),
        f"≤ {TARGET_NOOP_WALL_RATIO:.1f}× ls-remote",
        pf(noop_ok, r is not None and r <= TARGET_NOOP_WALL_RATIO))
    r2 = ratio(get(p_noop, "wall_mean_s"), get(fetch, "wall_mean_s"))
    row("no-op poll wall time (mean)", ms(get(p_noop, "wall_mean_s")),
        f"{ms(get(fetch, 'wall_mean_s'))} (fetch)", fmt_ratio(r2), "—", "info")
    row("no-op poll wall time (median)", ms(get(p_noop, "wall_median_s")),
        f"{ms(get(lsr, 'wall_median_s'))} (ls-remote) / {ms(get(fetch, 'wall_median_s'))} (fetch)",
        f"{fmt_ratio(ratio(get(p_noop, 'wall_median_s'), get(lsr, 'wall_median_s')))} / "
        f"{fmt_ratio(ratio(get(p_noop, 'wall_median_s'), get(fetch, 'wall_median_s')))}", "—", "info")
    row("no-op poll CPU user+sys (mean)", ms(get(p_noop, "cpu_mean_s")),
        f"{ms(get(lsr, 'cpu_mean_s'))} (ls-remote) / {ms(get(fetch, 'cpu_mean_s'))} (fetch)",
        f"{fmt_ratio(ratio(get(p_noop, 'cpu_mean_s'), get(lsr, 'cpu_mean_s')))} / "
        f"{fmt_ratio(ratio(get(p_noop, 'cpu_mean_s'), get(fetch, 'cpu_mean_s')))}", "—", "info")
    rss = get(p_noop, "maxrss_max_bytes")
    row("no-op poll peak RSS (max)", mb(rss),
        f"{mb(get(lsr, 'maxrss_max_bytes'))} (ls-remote) / {mb(get(fetch, 'maxrss_max_bytes'))} (fetch)",
        f"{fmt_ratio(ratio(rss, get(lsr, 'maxrss_max_bytes')))} / "
        f"{fmt_ratio(ratio(rss, get(fetch, 'maxrss_max_bytes')))}",
        "≤ 15 MB", pf(noop_ok, rss is not None and rss <= TARGET_RSS_BYTES))

    def wire(s):
        if s is None or "bytes_mean" not in s:
            return "n/a"
        return f"{s['bytes_mean']:,.0f} B (↑{s['bytes_up_mean']:,.0f} ↓{s['bytes_down_mean']:,.0f})"

    row("no-op poll bytes on the wire (mean, both directions)", wire(p_noop),
        f"{wire(lsr)} (ls-remote) / {wire(fetch)} (fetch)",
        f"{fmt_ratio(ratio(get(p_noop, 'bytes_mean'), get(lsr, 'bytes_mean')))} / "
        f"{fmt_ratio(ratio(get(p_noop, 'bytes_mean'), get(fetch, 'bytes_mean')))}", "—", "info")

    # cold fetch
    rc_ = ratio(fetch_primary, get(clone, "wall_mean_s"))
    row(f"cold fetch, {meta['commits']:,}-commit repo (mean; {fetch_method} method)",
        sec(fetch_primary), f"{sec(get(clone, 'wall_mean_s'))} (git clone)", fmt_ratio(rc_),
        f"≤ {TARGET_COLD_RATIO:.1f}× git clone",
        pf(cold_ok, rc_ is not None and rc_ <= TARGET_COLD_RATIO))
    row("cold fetch vs bare clone", sec(fetch_primary),
        f"{sec(get(clone_bare, 'wall_mean_s'))} (git clone --bare)",
        fmt_ratio(ratio(fetch_primary, get(clone_bare, "wall_mean_s"))), "—", "info")
    if fetch_log is not None:
        row("cold fetch, subtraction method (upper bound)", sec(fetch_sub),
            f"{sec(get(clone, 'wall_mean_s'))} (git clone)",
            fmt_ratio(ratio(fetch_sub, get(clone, "wall_mean_s"))), "—", "info")
    row("cold first sync, whole pass (mean)", sec(get(p_cold, "wall_mean_s")),
        f"{sec(get(nix_ref, 'wall_mean_s'))} (its `nix build` alone)", "—", "—", "info")
    row("cold fetch bytes on the wire (mean)", nbytes(get(p_cold, "bytes_mean")),
        f"{nbytes(get(clone_bare, 'bytes_mean'))} (git clone --bare)",
        fmt_ratio(ratio(get(p_cold, "bytes_mean"), get(clone_bare, "bytes_mean"))), "—", "info")
    own = get(p_cold, "self_hwm_max_bytes")
    row("cold first sync, pullnix's own peak RSS (max, excl. children)", mb(own), "—", "—",
        "≤ 15 MB", pf(cold_ok, own is not None and own <= TARGET_RSS_BYTES))
    row("cold first sync peak RSS (max, incl. nix)", mb(get(p_cold, "maxrss_max_bytes")),
        f"{mb(get(clone_bare, 'maxrss_max_bytes'))} (git clone --bare)",
        fmt_ratio(ratio(get(p_cold, "maxrss_max_bytes"), get(clone_bare, "maxrss_max_bytes"))),
        "—", "info")

    # binary
    size = meta["bin_size"]
    row("release binary size", f"{size:,} B ({size / MIB:.2f} MiB)", "—", "—", "≤ 8 MB",
        pf(not problems["bin"], size <= TARGET_BIN_BYTES))

    lines = []
    lines.append(f"### pullnix benchmark ({meta.get('version') or 'no version'}; "
                 f"{meta['git']}; {meta['nix']})")
    lines.append("")
    lines.append(f"{meta.get('nproc', '?')} CPUs; load average at start {meta.get('loadavg_start', '?')}, "
                 f"at end {meta.get('loadavg_end', '?')} (a busy machine makes every number noisier).")
    lines.append("")
    lines.append("| metric | pullnix | git baseline | ratio | target | result |")
    lines.append("|---|---|---|---|---|---|")
    for rw in rows:
        lines.append("| " + " | ".join(rw) + " |")
    lines.append("")
    n, cn = meta["n"], meta["cold_n"]
    lines.append(
        f"* No-op polls: {n} rounds (after 1 warm-up round) of `pullnix sync` (remote commit "
        "already deployed), `git ls-remote URL` and `git fetch URL +refs/heads/main:refs/heads/main` "
        "in an up-to-date bare clone, interleaved, same repo, straight to `git daemon` on "
        "127.0.0.1 (`git://`). Wall time = spawn to reap (perf_counter), CPU = wait4 rusage "
        "user+sys, peak RSS = `/usr/bin/time -f %M` (both include children the command waited "
        "for); wall includes ~1 ms of /usr/bin/time's own exec. Against `git daemon`, git "
        "writes its request in several small writes and waits ~40 ms for a delayed ACK "
        "(Nagle); pullnix sets TCP_NODELAY on git:// connections, so most of its lead is that "
        "stall. A no-op pullnix poll stops after the ref advertisement, as ls-remote does.")
    lines.append(
        "* Bytes on the wire: TCP payload in both directions, counted by a proxy "
        "(bench/proxy.py) in front of `git daemon`, in 3 extra rounds (1 for cold fetch) that "
        "are not timed.")
    lines.append(
        f"* Cold fetch: {cn} rounds of `git clone --bare`, `git clone` and a first `pullnix sync` "
        f"(fresh root, health.remote = false) of a {meta['commits']:,}-commit repo "
        f"(pack {meta['large_pack_bytes'] / MIB:.1f} MiB) whose flake builds the already-built trivial "
        "toplevel. Log method: time from pullnix's start to its log line that starts `nix build` "
        "(it logs every external command before running it). Subtraction method: whole-sync wall "
        "time minus a `nix build --no-eval-cache` of the same commit from a bare clone, run "
        "afterwards (nix's fetcher cache is warm then, so it is an upper bound on fetch time: it "
        "still contains activation, profile and health-check steps).")
    lines.append(
        "* Own peak RSS: VmHWM of the pullnix process, sampled every 2 ms from /proc; the "
        "\"incl. nix\" row is GNU time's figure, the largest of pullnix and its children.")
    lines.append(
        "* MB = 10^6 bytes. Ratios are pullnix / git. FAIL (see notes) = pullnix did not do "
        "the job, so its numbers mean nothing.")
    notes = [f"no-op: {m}" for m in problems["noop"]] + [f"cold: {m}" for m in problems["cold"]] \
        + [f"binary: {m}" for m in problems["bin"]]
    counts = {}
    for m in notes:
        counts[m] = counts.get(m, 0) + 1
    notes = [m if c == 1 else f"{m} (×{c})" for m, c in counts.items()]
    if notes:
        lines.append("")
        lines.append("**Notes (problems seen):**")
        for m in notes:
            lines.append(f"* {m}")
    table = "\n".join(lines)
    print(table)

    def strip(s):
        if s is None:
            return None
        return {k: v for k, v in s.items() if k != "raw"}

    results = {
        "meta": meta,
        "first_sync": setup,
        "noop": {"pullnix": strip(p_noop), "ls_remote": strip(lsr), "fetch": strip(fetch)},
        "cold": {
            "pullnix_sync": strip(p_cold), "clone_bare": strip(clone_bare), "clone": strip(clone),
            "nix_build_ref": strip(nix_ref),
            "pullnix_fetch_log_s": fetch_log, "pullnix_fetch_subtraction_s": fetch_sub,
            "pullnix_fetch_s": fetch_primary, "method": fetch_method,
        },
        "binary": {"path": meta["bin"], "bytes": size, "mib": size / MIB},
        "ratios": {
            "noop_wall_vs_ls_remote": ratio(get(p_noop, "wall_mean_s"), get(lsr, "wall_mean_s")),
            "noop_wall_vs_fetch": ratio(get(p_noop, "wall_mean_s"), get(fetch, "wall_mean_s")),
            "noop_cpu_vs_ls_remote": ratio(get(p_noop, "cpu_mean_s"), get(lsr, "cpu_mean_s")),
            "noop_cpu_vs_fetch": ratio(get(p_noop, "cpu_mean_s"), get(fetch, "cpu_mean_s")),
            "noop_rss_vs_ls_remote": ratio(rss, get(lsr, "maxrss_max_bytes")),
            "noop_rss_vs_fetch": ratio(rss, get(fetch, "maxrss_max_bytes")),
            "noop_bytes_vs_ls_remote": ratio(get(p_noop, "bytes_mean"), get(lsr, "bytes_mean")),
            "noop_bytes_vs_fetch": ratio(get(p_noop, "bytes_mean"), get(fetch, "bytes_mean")),
            "cold_fetch_vs_clone": rc_,
            "cold_fetch_vs_clone_bare": ratio(fetch_primary, get(clone_bare, "wall_mean_s")),
        },
        "targets": {
            "noop_wall_vs_ls_remote_max": TARGET_NOOP_WALL_RATIO,
            "peak_rss_max_bytes": TARGET_RSS_BYTES,
            "cold_fetch_vs_clone_max": TARGET_COLD_RATIO,
            "binary_max_bytes": TARGET_BIN_BYTES,
        },
        "rows": [dict(zip(["metric", "pullnix", "git", "ratio", "target", "result"], rw))
                 for rw in rows],
        "problems": notes,
        "raw": {"setup": setup, "noop": noop, "cold": cold},
        "table_markdown": table,
    }
    with open(os.path.join(out, "results.json"), "w") as f:
        json.dump(results, f, indent=1)


if __name__ == "__main__":
    main()
