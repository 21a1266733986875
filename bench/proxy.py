#!/usr/bin/env python3
"""Byte-counting TCP proxy for the pullnix benchmark.

    proxy.py --upstream 127.0.0.1:PORT --port-file FILE --stats FILE

Listens on 127.0.0.1 (an ephemeral port, written to --port-file once it is
listening) and forwards every connection to --upstream. It counts the TCP
payload bytes in both directions (client->server = "up", server->client =
"down") and, whenever a connection has finished, atomically rewrites the
--stats file with the running totals:

    {"accepted": N, "closed": N, "up": BYTES, "down": BYTES}

A reader that waits until accepted == closed sees totals that include every
connection made so far (see measure.py). Only stdlib; only 127.0.0.1.
"""

import argparse
import asyncio
import json
import os
import signal

STATS = {"accepted": 0, "closed": 0, "up": 0, "down": 0}
STATS_FILE = ""


def write_stats():
    tmp = STATS_FILE + ".tmp"
    with open(tmp, "w") as f:
        json.dump(STATS, f)
    os.replace(tmp, STATS_FILE)


async def pump(reader, writer, key):
    try:
        while True:
            data = await reader.read(65536)
            if not data:
                break
            STATS[key] += len(data)
            writer.write(data)
            await writer.drain()
    except (ConnectionError, OSError):
        pass
    finally:
        # propagate the half-close so the other side sees EOF
        try:
            if writer.can_write_eof():
                writer.write_eof()
        except (ConnectionError, OSError, RuntimeError):
            pass


async def handle(creader, cwriter, upstream):
    STATS["accepted"] += 1
    write_stats()
    host, port = upstream
    swriter = None
    try:
        sreader, swriter = await asyncio.open_connection(host, port)
        await asyncio.gather(
            pump(creader, swriter, "up"),
            pump(sreader, cwriter, "down"),
        )
    except (ConnectionError, OSError):
        pass
    finally:
        for w in (cwriter, swriter):
            if w is None:
                continue
            try:
                w.close()
                await w.wait_closed()
            except (ConnectionError, OSError):
                pass
        STATS["closed"] += 1
        write_stats()


async def main():
    global STATS_FILE
    ap = argparse.ArgumentParser()
    ap.add_argument("--upstream", required=True, help="HOST:PORT")
    ap.add_argument("--port-file", required=True)
    ap.add_argument("--stats", required=True)
    args = ap.parse_args()
    STATS_FILE = args.stats
    h, p = args.upstream.rsplit(":", 1)
    upstream = (h, int(p))
    write_stats()
    server = await asyncio.start_server(
        lambda r, w: handle(r, w, upstream), "127.0.0.1", 0
    )
    port = server.sockets[0].getsockname()[1]
    tmp = args.port_file + ".tmp"
    with open(tmp, "w") as f:
        f.write(f"{port}\n")
    os.replace(tmp, args.port_file)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    async with server:
        await stop.wait()


if __name__ == "__main__":
    asyncio.run(main())
