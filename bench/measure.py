#!/usr/bin/env python3
"""Run one command once and append one JSON line with what it cost.

    measure.py --out FILE.jsonl --label NAME [--stats PROXY_STATS] [--log FILE]
               [--mark REGEX] [--cwd DIR] -- COMMAND [ARGS...]

* wall_s: time.perf_counter() around the whole run (spawn to reaped).
* user_s, sys_s: os.wait4() rusage of the reaped process (microsecond
  resolution; includes every descendant the command waited for).
* maxrss_kib: peak RSS as reported by GNU time (`/usr/bin/time -f %M`), which
  wraps the command; like rusage it is the maximum over the command and the
  descendants it waited for.
* bytes_up / bytes_down: TCP payload through the byte-counting proxy
  (proxy.py) during this run, if --stats is given.
* self_hwm_kib (with --self-hwm): the command's own peak RSS without its
  children: VmHWM of the command's process, sampled every 2 ms from /proc
  (VmHWM only grows, so the last sample is its peak up to 2 ms before exit).
* mark_s: seconds from start until the first output line matching --mark
  (used to find when pullnix starts `nix build`, i.e. the end of its fetch).
* The command's stdout and stderr go to --log, each line prefixed with its
  arrival time in milliseconds since start.
"""

import argparse
import json
import os
import re
import subprocess
import sys
import tempfile
import threading
import time


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


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", required=True)
    ap.add_argument("--label", required=True)
    ap.add_argument("--stats")
    ap.add_argument("--log")
    ap.add_argument("--mark")
    ap.add_argument("--cwd")
    ap.add_argument("--self-hwm", action="store_true")
    ap.add_argument("--timeout", type=float, default=float(os.environ.get("BENCH_TIMEOUT", 120)),
                    help="kill the command after this many seconds (rc -9, timed_out)")
    ap.add_argument("--time-bin", default="/usr/bin/time")
    ap.add_argument("cmd", nargs=argparse.REMAINDER)
    a = ap.parse_args()
    cmd = a.cmd[1:] if a.cmd and a.cmd[0] == "--" else a.cmd
    if not cmd:
        ap.error("no command")

    before = quiet_stats(a.stats) if a.stats else None
    fd, timefile = tempfile.mkstemp(prefix="measure-time.")
    os.close(fd)
    mark_re = re.compile(a.mark) if a.mark else None
    lines = []
    lock = threading.Lock()
    mark = [None]

    t0 = time.perf_counter()
    p = subprocess.Popen(
        [a.time_bin, "-f", "%M", "-o", timefile, "--"] + cmd,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        cwd=a.cwd,
    )

    def reader(stream, tag):
        for raw in iter(stream.readline, b""):
            t = time.perf_counter() - t0
            line = raw.decode("utf-8", "replace").rstrip("\n")
            with lock:
                lines.append((t, tag, line))
                if mark_re and mark[0] is None and mark_re.search(line):
                    mark[0] = t

    threads = [
        threading.Thread(target=reader, args=(p.stdout, "out"), daemon=True),
        threading.Thread(target=reader, args=(p.stderr, "err"), daemon=True),
    ]
    hwm = [None]
    done = threading.Event()

    def sampler():
        # the command is the only child of /usr/bin/time
        child = None
        while not done.is_set():
            try:
                if child is None:
                    with open(f"/proc/{p.pid}/task/{p.pid}/children") as f:
                        kids = f.read().split()
                    child = kids[0] if kids else None
                if child is not None:
                    with open(f"/proc/{child}/status") as f:
                        for ln in f:
                            if ln.startswith("VmHWM:"):
                                hwm[0] = int(ln.split()[1])
            except (OSError, ValueError, IndexError):
                pass
            done.wait(0.002)

    timed_out = [False]

    def killer():
        # kill the command (child of /usr/bin/time); time then reports and exits
        timed_out[0] = True
        try:
            with open(f"/proc/{p.pid}/task/{p.pid}/children") as f:
                for kid in f.read().split():
                    os.kill(int(kid), 9)
        except (OSError, ValueError):
            pass

    if a.self_hwm:
        threads.append(threading.Thread(target=sampler, daemon=True))
    for th in threads:
        th.start()
    timer = threading.Timer(a.timeout, killer)
    timer.daemon = True
    timer.start()
    _, status, ru = os.wait4(p.pid, 0)
    timer.cancel()
    done.set()
    wall = time.perf_counter() - t0
    p.returncode = os.waitstatus_to_exitcode(status)
    for th in threads:
        th.join(timeout=5)

    maxrss = None
    try:
        with open(timefile) as f:
            for ln in f.read().split("\n"):
                ln = ln.strip()
                if ln.isdigit():
                    maxrss = int(ln)
    finally:
        os.unlink(timefile)

    after = quiet_stats(a.stats) if a.stats else None
    rc = p.returncode
    if timed_out[0]:
        lines.append((wall, "err", f"[measure.py: killed after {a.timeout:g} s]"))
    rec = {
        "label": a.label,
        "cmd": cmd,
        "rc": rc,
        "wall_s": wall,
        "user_s": ru.ru_utime,
        "sys_s": ru.ru_stime,
        "cpu_s": ru.ru_utime + ru.ru_stime,
        "maxrss_kib": maxrss if maxrss is not None else ru.ru_maxrss,
        "maxrss_kib_rusage": ru.ru_maxrss,
        "mark_s": mark[0],
        "timed_out": timed_out[0],
    }
    if a.self_hwm:
        rec["self_hwm_kib"] = hwm[0]
    if before is not None:
        rec["bytes_up"] = after["up"] - before["up"]
        rec["bytes_down"] = after["down"] - before["down"]
        rec["connections"] = after["accepted"] - before["accepted"]
    if a.log:
        with open(a.log, "w") as f:
            f.write(f"# {json.dumps(cmd)}\n# rc={rc} wall={wall:.4f}s\n")
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
