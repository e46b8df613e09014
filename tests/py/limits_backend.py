"""A recording WebSocket echo backend for tests/message_limits.rs, on the `websockets`
package's asyncio server with its default options.

    python3 limits_backend.py [--port 0] [--progress-ms 50] [--lifetime 120] [--stdin-eof]
                              [--compression deflate|none]

Every option of the server is the library's default, except that `--compression none`
declines permessage-deflate (inflating and deflating each small message costs Python about
0.2 ms, which would make the backend, not the balancer, set the pace of a fast flood).

Echoes every data message, and writes JSON lines on stdout:

    {"event": "listening", "port": N}                                  first, once bound
    {"event": "progress", "t_ms": T, "conns": {PATH: {"count": N, "bytes": B}, ...}}
        every --progress-ms while it runs, for the connections open now (T: ms since start,
        on the backend's own monotonic clock)
    {"event": "closed", "path": PATH, "count": N, "bytes": B, "in_order": bool,
     "first_gap": null | [expected, got], "intact": N, "corrupt": N, "unnumbered": N,
     "code": C, "reason": R, "opened_ms": T, "closed_ms": T, "arrivals_ms": [T, ...]}
        when a connection ends (code 1006: it ended without a close frame)

A connection is known by its request path (tests give each client its own). Messages are
numbered: a text message ends in its number (`m0`, `m1`, ...); a binary one is
`sha256(body) + body` with the number in the body's first 4 bytes (big-endian), so the
backend checks it arrived intact. `in_order`: the numbers ran 0, 1, 2, ... with no gap.

Exits after --lifetime seconds, or (with --stdin-eof) as soon as its standard input ends:
the test that started it is gone.
"""

import argparse
import asyncio
import hashlib
import json
import re
import sys
import time

from websockets.asyncio.server import serve
from websockets.exceptions import ConnectionClosed

START = time.monotonic()
NUMBER = re.compile(r"(\d+)$")


def now_ms():
    return round((time.monotonic() - START) * 1000, 2)


def emit(obj):
    sys.stdout.write(json.dumps(obj, separators=(",", ":")) + "\n")
    sys.stdout.flush()


class Conn:
    def __init__(self, path):
        self.path = path
        self.count = 0
        self.bytes = 0
        self.next = 0
        self.first_gap = None
        self.intact = 0
        self.corrupt = 0
        self.unnumbered = 0
        self.opened_ms = now_ms()
        self.arrivals = []

    def record(self, msg):
        self.arrivals.append(now_ms())
        self.count += 1
        if isinstance(msg, str):
            self.bytes += len(msg.encode())
            m = NUMBER.search(msg)
            number = int(m.group(1)) if m else None
        else:
            self.bytes += len(msg)
            if len(msg) >= 36 and hashlib.sha256(msg[32:]).digest() == msg[:32]:
                self.intact += 1
                number = int.from_bytes(msg[32:36], "big")
            else:
                self.corrupt += 1
                number = None
        if number is None:
            self.unnumbered += 1
            return
        if number != self.next and self.first_gap is None:
            self.first_gap = [self.next, number]
        self.next = number + 1


LIVE = {}


def unique(path):
    key, n = path, 1
    while key in LIVE:
        n += 1
        key = f"{path}#{n}"
    return key


async def handler(ws):
    path = unique(ws.request.path)
    conn = Conn(path)
    LIVE[path] = conn
    code, reason = 1006, ""
    try:
        while True:
            msg = await ws.recv()
            conn.record(msg)
            await ws.send(msg)
    except ConnectionClosed as e:
        if e.rcvd is not None:
            code, reason = e.rcvd.code, e.rcvd.reason
    finally:
        del LIVE[path]
        emit(
            {
                "event": "closed",
                "path": path,
                "count": conn.count,
                "bytes": conn.bytes,
                "in_order": conn.first_gap is None and conn.unnumbered == 0,
                "first_gap": conn.first_gap,
                "intact": conn.intact,
                "corrupt": conn.corrupt,
                "unnumbered": conn.unnumbered,
                "code": code,
                "reason": reason,
                "opened_ms": conn.opened_ms,
                "closed_ms": now_ms(),
                "arrivals_ms": conn.arrivals,
            }
        )


async def progress(every_ms):
    while True:
        await asyncio.sleep(every_ms / 1000)
        conns = {p: {"count": c.count, "bytes": c.bytes} for p, c in LIVE.items()}
        emit({"event": "progress", "t_ms": now_ms(), "conns": conns})


async def stdin_closed():
    loop = asyncio.get_running_loop()
    await loop.run_in_executor(None, sys.stdin.buffer.read)


async def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--port", type=int, default=0)
    ap.add_argument("--progress-ms", type=float, default=50)
    ap.add_argument("--lifetime", type=float, default=120)
    ap.add_argument("--stdin-eof", action="store_true")
    ap.add_argument("--compression", choices=["deflate", "none"], default="deflate")
    args = ap.parse_args()
    options = {} if args.compression == "deflate" else {"compression": None}
    async with serve(handler, "127.0.0.1", args.port, **options) as server:
        port = server.sockets[0].getsockname()[1]
        emit({"event": "listening", "port": port})
        ticker = asyncio.create_task(progress(args.progress_ms))
        watch = asyncio.create_task(stdin_closed() if args.stdin_eof else asyncio.sleep(args.lifetime))
        await asyncio.wait([watch], timeout=args.lifetime)
        ticker.cancel()
    # Connections still open were closed by the server above (1001).


if __name__ == "__main__":
    try:
        asyncio.run(main())
    except KeyboardInterrupt:
        pass
    # The stdin reader thread may still block; leave without waiting for it.
    sys.stdout.flush()
    import os

    os._exit(0)
