#!/usr/bin/env python3
"""Turn the raw measurements of bench/run.sh into results.json and one markdown table per
transport.

    report.py OUTDIR

Reads OUTDIR/{meta.json,setup.jsonl,noop.jsonl,cold.jsonl,verdicts.jsonl}, writes
OUTDIR/results.json and prints the tables (stdout). Labels in the .jsonl files are
"TRANSPORT:TOOL-KIND" (e.g. "ssh:ls-remote-run", "https:pullnix-bytes").

Targets are judged on the median of the timed rounds (the machine is shared; a median is not
moved by one round that another process slowed down); means are shown beside them.
"""

import json
import os
import random
import statistics
import sys

MB = 1_000_000  # targets are in MB = 10^6 bytes (the stricter reading); MiB shown alongside
MIB = 1 << 20

TARGET_NOOP_RATIO = 1.0  # x git ls-remote, wall and CPU
TARGET_COLD_RATIO = 1.0  # x git clone --bare, wall
TARGET_RSS_BYTES = 15 * MB  # pullnix's own peak, no-op and cold
TARGET_BIN_BYTES = 8 * MB

DESCRIBE = {
    "git": "git:// — `git daemon` on 127.0.0.1",
    "https": "https — lighttpd + git-http-backend on 127.0.0.1, TLS with a private CA; "
             "pullnix (`repo.ca_file`) and git (`GIT_SSL_CAINFO` + `GIT_SSL_CAPATH`) trust only that CA",
    "ssh": "ssh — OpenSSH sshd on 127.0.0.1 (`AcceptEnv GIT_PROTOCOL`); pullnix and git "
           "(`GIT_SSH_COMMAND`) run ssh with the same options, deploy key and known_hosts",
}


def load_jsonl(path):
    if not os.path.exists(path):
        return []
    with open(path) as f:
        return [json.loads(ln) for ln in f if ln.strip()]


def summarize(runs):
    if not runs:
        return None
    ok = [r for r in runs if r["rc"] == 0]

    def med(k):
        v = [r[k] for r in runs if r.get(k) is not None]
        return statistics.median(v) if v else None

    def mean(k):
        v = [r[k] for r in runs if r.get(k) is not None]
        return statistics.fmean(v) if v else None

    def mx(k):
        v = [r[k] for r in runs if r.get(k) is not None]
        return max(v) if v else None

    s = {
        "n": len(runs),
        "n_ok": len(ok),
        "rcs": sorted({r["rc"] for r in runs}),
        "wall_median_s": med("wall_s"),
        "wall_mean_s": mean("wall_s"),
        "wall_min_s": min(r["wall_s"] for r in runs),
        "wall_max_s": max(r["wall_s"] for r in runs),
        "cpu_median_s": med("cpu_s"),
        "cpu_mean_s": mean("cpu_s"),
        "maxrss_max_bytes": (mx("maxrss_kib") or 0) * 1024,
        "self_hwm_max_bytes": (mx("self_hwm_kib") or 0) * 1024 or None,
        "tree_peak_max_bytes": (mx("tree_peak_kib") or 0) * 1024 or None,
        "orphans_total": sum(len(r.get("orphans", [])) for r in runs),
        "orphan_names": sorted({o["name"] for r in runs for o in r.get("orphans", [])}),
        "orphans_killed": sum(1 for r in runs for o in r.get("orphans", []) if o.get("killed")),
        "orphan_cpu_s": sum(o.get("cpu_s", 0) for r in runs for o in r.get("orphans", [])),
        "orphan_reaped_after_max_s": max(
            [o.get("reaped_after_s", 0) for r in runs for o in r.get("orphans", [])], default=None),
    }
    marks = [r for r in runs if r.get("mark_s") is not None]
    s["n_marked"] = len(marks)
    if marks:
        s["mark_median_s"] = statistics.median(r["mark_s"] for r in marks)
        s["mark_mean_s"] = statistics.fmean(r["mark_s"] for r in marks)
        cpus = [r["cpu_at_mark_s"] for r in marks if r.get("cpu_at_mark_s") is not None]
        if cpus:
            s["cpu_at_mark_median_s"] = statistics.median(cpus)
            s["cpu_at_mark_mean_s"] = statistics.fmean(cpus)
    if "bytes_up" in runs[0]:
        s["bytes_up_mean"] = statistics.fmean(r["bytes_up"] for r in runs)
        s["bytes_down_mean"] = statistics.fmean(r["bytes_down"] for r in runs)
        s["bytes_mean"] = s["bytes_up_mean"] + s["bytes_down_mean"]
        s["bytes_min"] = min(r["bytes_up"] + r["bytes_down"] for r in runs)
        s["connections_mean"] = statistics.fmean(r["connections"] for r in runs)
    s["raw"] = runs
    return s


def by_label(runs, label):
    return summarize([r for r in runs if r["label"] == label])


def merge_bytes(s, b):
    """Byte counts come from separate runs through the proxy; merge them into the summary."""
    if s is None or b is None:
        return
    s.update({k: v for k, v in b.items() if k.startswith(("bytes", "connections"))})
    s["bytes_runs"] = b


def ratio(a, b):
    if a is None or b is None or b == 0:
        return None
    return a / b


def ratio_interval(a_runs, b_runs, key_a, key_b=None, n=2000):
    """95% percentile-bootstrap interval of median(a)/median(b) over paired rounds: the runs are
    interleaved, so the i-th run of each tool saw the same moment of the machine's load, and
    rounds are resampled as pairs."""
    key_b = key_b or key_a
    pairs = [(x.get(key_a), y.get(key_b)) for x, y in zip(a_runs, b_runs)]
    pairs = [(x, y) for x, y in pairs if x is not None and y is not None]
    if len(pairs) < 3:
        return None
    rng = random.Random(14)
    rs = []
    for _ in range(n):
        sample = [pairs[rng.randrange(len(pairs))] for _ in pairs]
        den = statistics.median(y for _, y in sample)
        if den:
            rs.append(statistics.median(x for x, _ in sample) / den)
    rs.sort()
    return rs[int(0.025 * len(rs))], rs[int(0.975 * len(rs)) - 1]


def judged(r, interval, target):
    """The ratio, its interval, and whether the target is met; a verdict the noise could flip
    says so."""
    if r is None:
        return "n/a", None, ""
    text = fr(r)
    note = ""
    if interval:
        lo, hi = interval
        text += f" [{lo:.2f}–{hi:.2f}]"
        if lo <= target < hi:
            note = " (within noise)"
    return text, r <= target, note


def fr(x):
    return "n/a" if x is None else f"{x:.2f}×"


def ms(x):
    return "n/a" if x is None else f"{x * 1000:.1f} ms"


def sec(x):
    return "n/a" if x is None else f"{x:.3f} s"


def mb(b):
    return "n/a" if not b else f"{b / MB:.1f} MB"


def nbytes(b):
    if b is None:
        return "n/a"
    if b >= 100_000:
        return f"{b / MB:.2f} MB"
    return f"{b:,.0f} B"


def g(s, k):
    return None if s is None else s.get(k)


def med_mean(s, kmed, kmean, fmt=ms):
    if s is None:
        return "n/a"
    return f"{fmt(s.get(kmed))} ({fmt(s.get(kmean))})"


def orphans(s):
    if s is None:
        return "n/a"
    n = s["orphans_total"]
    if not n:
        return f"0 in {s['n']} runs"
    names = ", ".join(s["orphan_names"])
    return f"**{n} in {s['n']} runs** ({names})"


def transport_table(t, meta, setup, noop, cold, verdicts):
    L = lambda tool: f"{t}:{tool}"  # noqa: E731
    p = by_label(noop, L("pullnix-run"))
    lsr = by_label(noop, L("ls-remote-run"))
    fetch = by_label(noop, L("fetch-run"))
    for s, tool in ((p, "pullnix"), (lsr, "ls-remote"), (fetch, "fetch")):
        merge_bytes(s, by_label(noop, L(f"{tool}-bytes")))
    pc = by_label(cold, L("pullnix-run"))
    cb = by_label(cold, L("clone-bare-run"))
    merge_bytes(pc, by_label(cold, L("pullnix-bytes")))
    merge_bytes(cb, by_label(cold, L("clone-bare-bytes")))

    problems = {"noop": [], "cold": []}
    for v in verdicts:
        if v["ok"] or not v["key"].startswith(f"{t}:"):
            continue
        problems["cold" if v["key"].endswith("cold_sync") else "noop"].append(v["msg"])
    warnings = []
    for name, s in (("ls-remote", lsr), ("fetch", fetch), ("clone --bare", cb)):
        if s and s["n_ok"] != s["n"]:
            tails = {json.dumps(r["tail"][-2:]) for r in s["raw"] if r["rc"] != 0}
            warnings.append(f"git baseline {name} failed in {s['n'] - s['n_ok']}/{s['n']} runs: "
                            f"{'; '.join(sorted(tails)[:2])}")
    if p:
        if p["n_ok"] != p["n"]:
            tails = {json.dumps(r["tail"][-2:]) for r in p["raw"] if r["rc"] != 0}
            problems["noop"].append(
                f"no-op sync exited non-zero in {p['n'] - p['n_ok']}/{p['n']} runs "
                f"(exit codes {p['rcs']}); last lines: {'; '.join(sorted(tails)[:2])}")
        if p.get("bytes_min", 0) == 0:
            problems["noop"].append("a no-op sync sent/received 0 bytes: it did not ask the remote")
        marked = p["n_marked"] + g(p.get("bytes_runs"), "n_marked") if p.get("bytes_runs") else p["n_marked"]
        if marked:
            problems["noop"].append(
                f"{marked} no-op syncs ran `nix build` (an up-to-date pass ends before evaluation)")
    if pc:
        if pc.get("bytes_min", 0) < 0.5 * meta["large_pack_bytes"]:
            problems["cold"].append(
                f"a cold sync moved only {pc.get('bytes_min')} bytes "
                f"(pack is {meta['large_pack_bytes']}): it did not fetch the repository")
        if pc["n_marked"] != pc["n"]:
            problems["cold"].append(
                f"{pc['n'] - pc['n_marked']} cold syncs never logged `nix build` "
                f"(mark {meta['build_mark']!r}): no fetch time for them")
    noop_ok = not problems["noop"] and p is not None
    cold_ok = not problems["cold"] and pc is not None

    rows = []

    def row(metric, pv, gv, r, target="", result="info"):
        rows.append((metric, pv, gv, r, target, result))

    def pf(ok, cond):
        if not ok:
            return "**FAIL** (see notes)"
        return "PASS" if cond else "**FAIL**"

    def raw(s):
        return [] if s is None else s["raw"]

    # ---- no-op
    rw = ratio(g(p, "wall_median_s"), g(lsr, "wall_median_s"))
    rw_text, rw_ok, rw_note = judged(rw, ratio_interval(raw(p), raw(lsr), "wall_s"), TARGET_NOOP_RATIO)
    row("no-op poll, wall: median (mean)", med_mean(p, "wall_median_s", "wall_mean_s"),
        f"ls-remote {med_mean(lsr, 'wall_median_s', 'wall_mean_s')}<br>"
        f"fetch {med_mean(fetch, 'wall_median_s', 'wall_mean_s')}",
        f"{rw_text} / {fr(ratio(g(p, 'wall_median_s'), g(fetch, 'wall_median_s')))}",
        f"≤ {TARGET_NOOP_RATIO:.1f}× ls-remote", pf(noop_ok, bool(rw_ok)) + rw_note)
    rc = ratio(g(p, "cpu_median_s"), g(lsr, "cpu_median_s"))
    rc_text, rc_ok, rc_note = judged(rc, ratio_interval(raw(p), raw(lsr), "cpu_s"), TARGET_NOOP_RATIO)
    row("no-op poll, CPU user+sys of all processes: median (mean)",
        med_mean(p, "cpu_median_s", "cpu_mean_s"),
        f"ls-remote {med_mean(lsr, 'cpu_median_s', 'cpu_mean_s')}<br>"
        f"fetch {med_mean(fetch, 'cpu_median_s', 'cpu_mean_s')}",
        f"{rc_text} / {fr(ratio(g(p, 'cpu_median_s'), g(fetch, 'cpu_median_s')))}",
        f"≤ {TARGET_NOOP_RATIO:.1f}× ls-remote", pf(noop_ok, bool(rc_ok)) + rc_note)
    own = g(p, "self_hwm_max_bytes")
    big = g(p, "maxrss_max_bytes")
    row("no-op poll, peak RSS: pullnix's own / largest process (max)",
        f"{mb(own)} / {mb(big)}",
        f"ls-remote {mb(g(lsr, 'maxrss_max_bytes'))}<br>fetch {mb(g(fetch, 'maxrss_max_bytes'))}",
        f"{fr(ratio(big, g(lsr, 'maxrss_max_bytes')))} / {fr(ratio(big, g(fetch, 'maxrss_max_bytes')))}",
        "own ≤ 15 MB", pf(noop_ok, own is not None and own <= TARGET_RSS_BYTES))
    row("no-op poll, RSS of all processes at once (sampled peak)", mb(g(p, "tree_peak_max_bytes")),
        f"ls-remote {mb(g(lsr, 'tree_peak_max_bytes'))}<br>fetch {mb(g(fetch, 'tree_peak_max_bytes'))}",
        f"{fr(ratio(g(p, 'tree_peak_max_bytes'), g(lsr, 'tree_peak_max_bytes')))} / "
        f"{fr(ratio(g(p, 'tree_peak_max_bytes'), g(fetch, 'tree_peak_max_bytes')))}")

    def wire(s):
        if s is None or "bytes_mean" not in s:
            return "n/a"
        return f"{s['bytes_mean']:,.0f} B"

    row("no-op poll, bytes on the wire (both directions)", wire(p),
        f"ls-remote {wire(lsr)}<br>fetch {wire(fetch)}",
        f"{fr(ratio(g(p, 'bytes_mean'), g(lsr, 'bytes_mean')))} / "
        f"{fr(ratio(g(p, 'bytes_mean'), g(fetch, 'bytes_mean')))}")
    all_p = [s for s in (p, (p or {}).get("bytes_runs")) if s]
    n_orph = sum(s["orphans_total"] for s in all_p)
    row("no-op poll, processes left behind (orphans)", orphans(p),
        f"ls-remote {orphans(lsr)}<br>fetch {orphans(fetch)}", "", "0",
        pf(p is not None, n_orph == 0))

    # ---- cold
    fetch_t = g(pc, "mark_median_s")
    rcw = ratio(fetch_t, g(cb, "wall_median_s"))
    rcw_text, rcw_ok, rcw_note = judged(
        rcw, ratio_interval(raw(pc), raw(cb), "mark_s", "wall_s"), TARGET_COLD_RATIO)
    row(f"cold fetch of {meta['commits']:,} commits, wall until `nix build` starts: median (mean)",
        med_mean(pc, "mark_median_s", "mark_mean_s", sec),
        f"clone --bare {med_mean(cb, 'wall_median_s', 'wall_mean_s', sec)}", rcw_text,
        f"≤ {TARGET_COLD_RATIO:.1f}× clone --bare", pf(cold_ok, bool(rcw_ok)) + rcw_note)
    row("cold fetch, CPU of all processes until then: median (mean)",
        med_mean(pc, "cpu_at_mark_median_s", "cpu_at_mark_mean_s", sec),
        f"clone --bare {med_mean(cb, 'cpu_median_s', 'cpu_mean_s', sec)}",
        fr(ratio(g(pc, "cpu_at_mark_median_s"), g(cb, "cpu_median_s"))))
    own_c = g(pc, "self_hwm_max_bytes")
    row("cold fetch, pullnix's own peak RSS (max)", mb(own_c),
        f"clone --bare, largest process {mb(g(cb, 'maxrss_max_bytes'))}",
        fr(ratio(own_c, g(cb, "maxrss_max_bytes"))), "≤ 15 MB",
        pf(cold_ok, own_c is not None and own_c <= TARGET_RSS_BYTES))
    row("cold sync, RSS of all processes at once (sampled peak, incl. nix)",
        mb(g(pc, "tree_peak_max_bytes")),
        f"clone --bare {mb(g(cb, 'tree_peak_max_bytes'))}",
        fr(ratio(g(pc, "tree_peak_max_bytes"), g(cb, "tree_peak_max_bytes"))))
    row("cold fetch, bytes on the wire", nbytes(g(pc, "bytes_mean")),
        f"clone --bare {nbytes(g(cb, 'bytes_mean'))}",
        fr(ratio(g(pc, "bytes_mean"), g(cb, "bytes_mean"))))
    all_c = [s for s in (pc, (pc or {}).get("bytes_runs")) if s]
    n_orph_c = sum(s["orphans_total"] for s in all_c)
    row("cold sync, processes left behind (orphans)", orphans(pc), f"clone --bare {orphans(cb)}",
        "", "0", pf(pc is not None, n_orph_c == 0))
    row("cold first sync, whole pass incl. `nix build` and activation: median", sec(g(pc, "wall_median_s")),
        "", "")

    lines = [f"#### {DESCRIBE.get(t, t)}", "",
             "| metric | pullnix | git | ratio | target | result |",
             "|---|---|---|---|---|---|"]
    lines += ["| " + " | ".join(r) + " |" for r in rows]
    notes = [f"no-op: {m}" for m in problems["noop"]] + [f"cold: {m}" for m in problems["cold"]] \
        + [f"warning: {m}" for m in warnings]
    counts = {}
    for m in notes:
        counts[m] = counts.get(m, 0) + 1
    notes = [m if c == 1 else f"{m} (×{c})" for m, c in counts.items()]
    if notes:
        lines += ["", f"**Notes ({t}):**"] + [f"* {m}" for m in notes]

    def strip(s):
        if s is None:
            return None
        return {k: v for k, v in s.items() if k not in ("raw", "bytes_runs")}

    results = {
        "noop": {"pullnix": strip(p), "ls_remote": strip(lsr), "fetch": strip(fetch)},
        "cold": {"pullnix": strip(pc), "clone_bare": strip(cb)},
        "ratios": {
            "noop_wall_vs_ls_remote": rw,
            "noop_cpu_vs_ls_remote": rc,
            "noop_wall_vs_fetch": ratio(g(p, "wall_median_s"), g(fetch, "wall_median_s")),
            "cold_fetch_vs_clone_bare": rcw,
            "cold_cpu_vs_clone_bare": ratio(g(pc, "cpu_at_mark_median_s"), g(cb, "cpu_median_s")),
        },
        "rows": [dict(zip(["metric", "pullnix", "git", "ratio", "target", "result"], r)) for r in rows],
        "problems": notes,
    }
    return "\n".join(lines), results


def main():
    out = sys.argv[1]
    meta = json.load(open(os.path.join(out, "meta.json")))
    setup = load_jsonl(os.path.join(out, "setup.jsonl"))
    noop = load_jsonl(os.path.join(out, "noop.jsonl"))
    cold = load_jsonl(os.path.join(out, "cold.jsonl"))
    verdicts = load_jsonl(os.path.join(out, "verdicts.jsonl"))

    size = meta["bin_size"]
    lines = [f"### pullnix benchmark ({meta.get('version') or 'no version'}; {meta['git']}; "
             f"{meta['nix']}; {meta.get('ssh', '')}; {meta.get('lighttpd', '')})", "",
             f"{meta.get('nproc', '?')} CPUs; load average at start {meta.get('loadavg_start', '?')}, "
             f"at end {meta.get('loadavg_end', '?')} (a busy machine makes every number noisier). "
             f"{meta['n']} no-op rounds and {meta['cold_n']} cold rounds per transport, interleaved. "
             f"Release binary: {size:,} B ({size / MIB:.2f} MiB; target ≤ 8 MB: "
             f"{'PASS' if size <= TARGET_BIN_BYTES and meta.get('version') else '**FAIL**'}).", ""]
    per = {}
    for t in meta["transports"]:
        table, res = transport_table(t, meta, setup, noop, cold, verdicts)
        per[t] = res
        lines += [table, ""]
    lines.append(
        "Ratios are pullnix / git (two ratios: against the first / second git command); "
        "[lo–hi] is a 95% bootstrap interval over the paired rounds, and \"within noise\" marks "
        "a verdict that interval could flip. Wall = "
        "spawn to reap of the command itself. CPU = user+sys of the command, of every descendant it "
        "waited for, and of every orphan (bench/measure.py is a child subreaper and reaps them). "
        "Own peak RSS = VmHWM of the pullnix process (sampled); largest process = the highest "
        "ru_maxrss in the tree. Cold fetch = pullnix's first sync of the large repo into a fresh "
        "root until it logs the `nix build` command (it logs every command before running it); "
        "its CPU is read from /proc at that line. Bytes: TCP payload through a counting proxy, "
        "in 3 extra no-op rounds and 1 cold round that are not timed. MB = 10^6 bytes.")
    table = "\n".join(lines)
    print(table)
    results = {
        "meta": meta,
        "binary": {"path": meta["bin"], "bytes": size, "mib": size / MIB},
        "transports": per,
        "first_sync": setup,
        "targets": {
            "noop_wall_and_cpu_vs_ls_remote_max": TARGET_NOOP_RATIO,
            "cold_fetch_vs_clone_bare_max": TARGET_COLD_RATIO,
            "own_peak_rss_max_bytes": TARGET_RSS_BYTES,
            "binary_max_bytes": TARGET_BIN_BYTES,
        },
        "raw": {"setup": setup, "noop": noop, "cold": cold},
        "table_markdown": table,
    }
    with open(os.path.join(out, "results.json"), "w") as f:
        json.dump(results, f, indent=1)


if __name__ == "__main__":
    main()
