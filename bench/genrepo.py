#!/usr/bin/env python3
"""Emit a `git fast-import` stream for the benchmark's "large" repository.

    genrepo.py --commits 10000 --add flake.nix=PATH [--add flake.lock=PATH] \
        [--files 64] [--bytes 512] | git -C large.git fast-import --quiet --done

The first commit adds every --add NAME=PATH file and --files data files;
every further commit rewrites one data file with fresh pseudo-random text of
--bytes bytes, so history does not delta away and the pack is a few MB. The
output is deterministic (fixed seed, fixed dates). Branch: refs/heads/main.
"""

import argparse
import random
import sys


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--commits", type=int, default=10000)
    ap.add_argument("--add", action="append", default=[], metavar="NAME=PATH")
    ap.add_argument("--files", type=int, default=64)
    ap.add_argument("--bytes", type=int, default=512)
    ap.add_argument("--seed", type=int, default=20240601)
    a = ap.parse_args()

    rng = random.Random(a.seed)
    extra = []
    for spec in a.add:
        name, path = spec.split("=", 1)
        with open(path, "rb") as f:
            extra.append((name.encode(), f.read()))
    out = sys.stdout.buffer
    w = out.write
    t = 1_700_000_000
    ident = b"bench <bench@example.invalid>"

    def content():
        # hex text in 64-char lines: 4 bits of entropy per byte, compressible
        # about 2:1 like real text, never deltas against its predecessor
        raw = rng.randbytes(a.bytes // 2).hex()
        return ("\n".join(raw[i:i + 64] for i in range(0, len(raw), 64)) + "\n").encode()

    def data(b):
        w(b"data %d\n" % len(b))
        w(b)
        w(b"\n")

    for i in range(a.commits):
        t += 60
        w(b"commit refs/heads/main\n")
        w(b"mark :%d\n" % (i + 1))
        w(b"committer %s %d +0000\n" % (ident, t))
        data(b"commit %d\n" % i)
        if i == 0:
            for name, body in extra:
                w(b"M 100644 inline %s\n" % name)
                data(body)
            for j in range(a.files):
                w(b"M 100644 inline data/file%03d.txt\n" % j)
                data(content())
        else:
            w(b"from :%d\n" % i)
            w(b"M 100644 inline data/file%03d.txt\n" % (i % a.files))
            data(content())
        w(b"\n")
    w(b"done\n")
    out.flush()


if __name__ == "__main__":
    main()
