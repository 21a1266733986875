#!/usr/bin/env python3
"""Run one command once and append one JSON line with what it cost, counting every process it
causes, orphans included.

    measure.py --out FILE.jsonl --label NAME [--env K=V ...] [--stats PROXY_STATS]
               [--log FILE] [--mark REGEX] [--cwd DIR] [--timeout S] [--linger S]
               -- COMMAND [ARGS...]

The command runs under bench/reaper.c (compiled with `cc` on first use, cached in the temp
directory by the hash of its source): a small child subreaper that forks the command, times it
and, once it has exited, reaps whatever it left behind. See reaper.c for why it is not Python.

* wall_s: fork to reap of the command itself (what a caller such as systemd waits for).
* cpu_s: user+sys of the command and of every descendant it waited for (wait4 rusage), plus
  the rusage of every orphan (processes re-parented to the subreaper because their parent
  exited first). That is the CPU of every process the command caused.
* maxrss_kib: the largest peak RSS of any single process in the tree (ru_maxrss). Exact.
* self_hwm_kib: the command's own peak RSS without its children: VmHWM of its process,
  sampled from /proc every --sample-ms (VmHWM only grows, so the last sample is its peak up
  to one interval before exit).
* tree_peak_kib: the largest sum of RSS over all live descendants at one sample (what the
  tree held at once; sampled, so a lower bound).
* orphans: what the command left behind: pid, name, argv (if the sampler saw it alive), how
  long after the command's exit it was reaped, its CPU; waited for up to --linger seconds,
  then killed ("killed": true).
* mark_s / cpu_at_mark_s: seconds from start until the first output line matching --mark,
  and the CPU the tree had used by then (the command's utime+stime+cutime+cstime from /proc,
  10 ms resolution, plus its live descendants). Used to cut pullnix's cold sync at the line
  that starts `nix build`, i.e. at the end of its fetch.
* bytes_up / bytes_down: TCP payload through the byte-counting proxy (proxy.py) during
  this run, if --stats is given.
* The command's stdout and stderr go to --log, each line prefixed with its arrival time in
  milliseconds since start.
"""

import argparse
import hashlib
import json
import os
import re
import signal
import subprocess
import sys
import tempfile
import threading
import time

HERE = os.path.dirname(os.path.abspath(__file__))
CLK_TCK = os.sysconf("SC_CLK_TCK")
PAGE_KIB = os.sysconf("SC_PAGE_SIZE") // 1024


def reaper_bin():
    """bench/reaper.c compiled once per source version (atomic rename: parallel runs are safe)."""
    src = os.path.join(HERE, "reaper.c")
    with open(src, "rb") as f:
        digest = hashlib.sha256(f.read()).hexdigest()[:16]
    path = os.path.join(tempfile.gettempdir(), f"pullnix-bench-reaper-{digest}")
    if not os.access(path, os.X_OK):
        tmp = f"{path}.{os.getpid()}"
        subprocess.run([os.environ.get("CC", "cc"), "-O2", "-Wall", "-o", tmp, src], check=True)
        os.replace(tmp, path)
    return path


def read_stats(path):
    for _ in range(5):
        try:
            with open(path) as f:
                return json.load(f)
        except (OSError, ValueError):
            time.sleep(0.002)
    raise RuntimeError(f"cannot read proxy stats {path}")


def quiet_stats(path, timeout=5.0):
    """Wait until every accepted proxy connection is closed; return totals."""
    deadline = time.monotonic() + timeout
    while True:
        s = read_stats(path)
        if s["accepted"] == s["closed"] or time.monotonic() > deadline:
            return s
        time.sleep(0.002)


def children(pid):
    """Direct children of `pid` (all its threads)."""
    out = []
    try:
        for tid in os.listdir(f"/proc/{pid}/task"):
            try:
                with open(f"/proc/{pid}/task/{tid}/children") as f:
                    out.extend(int(c) for c in f.read().split())
            except OSError:
                pass
    except OSError:
        pass
    return out


def descendants(pid):
    seen, todo = [], children(pid)
    while todo:
        c = todo.pop()
        seen.append(c)
        todo.extend(children(c))
    return seen


def proc_stat(pid):
    """(name, utime+stime+cutime+cstime in seconds, state) from /proc/PID/stat, or None."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            s = f.read()
    except OSError:
        return None
    name = s[s.index("(") + 1:s.rindex(")")]
    rest = s[s.rindex(")") + 2:].split()
    # fields 3.. after the name: state ppid ... utime(14) stime(15) cutime(16) cstime(17)
    ticks = sum(int(x) for x in rest[11:15])
    return name, ticks / CLK_TCK, rest[0]


def cmdline(pid):
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            return [a.decode("utf-8", "replace") for a in f.read().split(b"\0") if a]
    except OSError:
        return []


def rss_kib(pid):
    try:
        with open(f"/proc/{pid}/statm") as f:
            return int(f.read().split()[1]) * PAGE_KIB
    except (OSError, ValueError, IndexError):
        return 0


def vm_hwm_kib(pid):
    try:
        with open(f"/proc/{pid}/status") as f:
            for ln in f:
                if ln.startswith("VmHWM:"):
                    return int(ln.split()[1])
    except (OSError, ValueError):
        pass
    return None


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", required=True)
    ap.add_argument("--label", required=True)
    ap.add_argument("--env", action="append", default=[], metavar="K=V")
    ap.add_argument("--stats")
    ap.add_argument("--log")
    ap.add_argument("--mark")
    ap.add_argument("--cwd")
    ap.add_argument("--sample-ms", type=float, default=float(os.environ.get("BENCH_SAMPLE_MS", 3)))
    ap.add_argument("--timeout", type=float, default=float(os.environ.get("BENCH_TIMEOUT", 120)),
                    help="kill the command's whole tree after this many seconds (timed_out)")
    ap.add_argument("--linger", type=float, default=10.0,
                    help="seconds to wait for orphans after the command exits before killing them")
    ap.add_argument("cmd", nargs=argparse.REMAINDER)
    a = ap.parse_args()
    cmd = a.cmd[1:] if a.cmd and a.cmd[0] == "--" else a.cmd
    if not cmd:
        ap.error("no command")
    env = dict(os.environ)
    for kv in a.env:
        k, v = kv.split("=", 1)
        env[k] = v
    reaper = reaper_bin()
    fd, result_file = tempfile.mkstemp(prefix="measure-reaper.")
    os.close(fd)

    before = quiet_stats(a.stats) if a.stats else None
    mark_re = re.compile(a.mark) if a.mark else None
    lines = []
    lock = threading.Lock()
    mark = {"t": None, "cpu": None}
    names = {}  # pid -> (name, argv) of every descendant the sampler saw alive
    hwm = [None]
    tree_peak = [0]
    done = threading.Event()

    pid_r, pid_w = os.pipe()
    t0 = time.perf_counter()
    p = subprocess.Popen([reaper, result_file, str(pid_w), str(int(a.linger * 1000)), "--"] + cmd,
                         stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                         cwd=a.cwd, env=env, pass_fds=(pid_w,))
    os.close(pid_w)
    with os.fdopen(pid_r) as f:
        text = f.read().strip()
    main_pid = int(text) if text.isdigit() else None

    def cpu_now():
        """CPU of the tree so far: the command (with its reaped children) + live descendants."""
        return sum(st[1] for st in map(proc_stat, descendants(p.pid)) if st)

    def reader(stream, tag):
        for raw in iter(stream.readline, b""):
            t = time.perf_counter() - t0
            line = raw.decode("utf-8", "replace").rstrip("\n")
            with lock:
                lines.append((t, tag, line))
                if mark_re and mark["t"] is None and mark_re.search(line):
                    mark["t"] = t
                    mark["cpu"] = cpu_now()

    def sampler():
        while not done.is_set():
            if main_pid is not None:
                h = vm_hwm_kib(main_pid)
                if h is not None:
                    hwm[0] = h
            total = 0
            for d in descendants(p.pid):
                total += rss_kib(d)
                if d not in names:
                    st = proc_stat(d)
                    names[d] = (st[0] if st else "?", cmdline(d))
            tree_peak[0] = max(tree_peak[0], total)
            done.wait(a.sample_ms / 1000)

    timed_out = [False]

    def killer():
        timed_out[0] = True
        for d in descendants(p.pid):
            try:
                os.kill(d, signal.SIGKILL)
            except OSError:
                pass

    threads = [
        threading.Thread(target=reader, args=(p.stdout, "out"), daemon=True),
        threading.Thread(target=reader, args=(p.stderr, "err"), daemon=True),
        threading.Thread(target=sampler, daemon=True),
    ]
    for th in threads:
        th.start()
    timer = threading.Timer(a.timeout, killer)
    timer.daemon = True
    timer.start()
    p.wait()
    timer.cancel()
    done.set()
    for th in threads:
        th.join(timeout=5)
    try:
        with open(result_file) as f:
            res = json.load(f)
    except (OSError, ValueError) as e:
        raise SystemExit(f"measure.py: reaper gave no result for {cmd} (exit {p.returncode}): {e}")
    finally:
        os.unlink(result_file)
    for o in res["orphans"]:
        o["argv"] = names.get(o["pid"], ("", []))[1]

    after = quiet_stats(a.stats) if a.stats else None
    rc = res["rc"]
    wall = res["wall_s"]
    if timed_out[0]:
        lines.append((wall, "err", f"[measure.py: killed after {a.timeout:g} s]"))
    rec = {
        "label": a.label,
        "cmd": cmd,
        "env": a.env,
        "rc": rc,
        "wall_s": wall,
        "cpu_s": res["cpu_s"],
        "maxrss_kib": res["maxrss_kib"],
        "self_hwm_kib": hwm[0],
        "tree_peak_kib": tree_peak[0],
        "orphans": res["orphans"],
        "mark_s": mark["t"],
        "cpu_at_mark_s": mark["cpu"],
        "timed_out": timed_out[0],
    }
    if before is not None:
        rec["bytes_up"] = after["up"] - before["up"]
        rec["bytes_down"] = after["down"] - before["down"]
        rec["connections"] = after["accepted"] - before["accepted"]
    if a.log:
        with open(a.log, "w") as f:
            f.write(f"# {json.dumps(cmd)}\n# rc={rc} wall={wall:.4f}s orphans={len(res['orphans'])}\n")
            for t, tag, line in sorted(lines):
                f.write(f"{t * 1000:9.1f} {tag} {line}\n")
        rec["log"] = a.log
    # keep the last output lines in the record for error reporting
    rec["tail"] = [ln for _, _, ln in sorted(lines)][-8:]
    with open(a.out, "a") as f:
        f.write(json.dumps(rec) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
