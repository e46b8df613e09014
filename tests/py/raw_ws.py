"""A WebSocket client and a backend written on raw sockets, frame by frame, for
tests/message_limits.rs: what the libraries will not do (a flood of pings or of empty
continuation frames, a reset in the middle of a backlog) or will not show (each ping a
backend receives, each frame).

    python3 raw_ws.py backend [--flood-prefix /flood] [--flood-size 1024] [--progress-ms 50]
                              [--lifetime 120] [--stdin-eof]
    python3 raw_ws.py client MODE URL [--count N] [--size B] [--hold S] [--reset]
                                      [--local-address IP] [--timeout S]

Every time either prints is in ms on CLOCK_MONOTONIC (Python's `time.monotonic()`), the
clock every process of the machine shares: a client's times and the backend's compare.

backend: answers every upgrade (no extension, no subprotocol); echoes each data frame as it
came (same opcode and FIN bit), answers each ping with a pong and a close with a close. A
connection whose path starts with `--flood-prefix` is also sent numbered binary messages
(the number in the first 4 bytes, big-endian; `--flood-size` bytes in all) as fast as the
connection takes them. JSON lines on stdout:

    {"event": "listening", "port": N}
    {"event": "progress", "t_ms": T, "conns": {PATH: {"messages": N, "frames": N,
                                                      "pings": N, "bytes": B}, ...}}
        every --progress-ms, for the connections open now: data messages completed, frames
        of any kind but close, pings, payload bytes of data frames
    {"event": "closed", "path": PATH, "messages", "frames", "pings", "bytes",
     "in_order": bool, "code": C, "reason": R, "opened_ms": T, "closed_ms": T,
     "arrivals_ms": [T, ...], "flood_sent": N}
        when a connection ends; code 1006: no close frame came (an end of stream or a reset);
        `in_order`: the data messages carrying a number (a binary message's first 4 bytes, a
        text message's trailing digits) ran 0, 1, 2, ...; arrivals: when each data message
        was complete

A connection is known by its request path (a second one on a path gets `PATH#2`).

client MODE:
    messages   --count numbered binary messages of --size bytes (default 1024), all at once
    pings      --count pings with --size bytes of payload (default 125), all at once
    fragments  one text message: a frame "a" without FIN, --count empty continuation frames
               without FIN, and an empty one with FIN, all at once
    empties    --count empty text messages, all at once
    read       nothing
Everything is written at once (what the socket does not take waits in the client). It then
reads what comes (answering pings with pongs, counting data messages and checking their
numbers are 0, 1, 2, ...) until a close frame arrives (it answers it and ends) or --hold
seconds (default 5) pass; then, with --reset, it resets the connection (SO_LINGER 0: an RST,
whatever is still queued), else in `read` mode it sends a close frame (1000) and waits at most
1 s for the answer (counting what arrives meanwhile too), and otherwise drops the
connection. One JSON line on stdout:

    {"mode", "opened", "open_ms", "local": "IP:PORT", "written": frames handed over,
     "received": data messages, "in_order": bool, "arrivals_ms": [...], "pings",
     "pings_ms": [when each ping came], "pongs",
     "code": C | null, "reason": R | null, "close_frame_ms": T | null, "reset_ms": T | null,
     "end_ms": T, "errors": [...], "timed_out": bool}

It exits after --timeout seconds (default 30) whatever happens.
"""

import argparse
import asyncio
import base64
import hashlib
import json
import os
import re
import socket
import struct
import sys
import time
from urllib.parse import urlsplit

GUID = b"258EAFA5-E914-47DA-95CA-C5AB0DC85B11"
NUMBER = re.compile(rb"(\d+)$")


def mono_ms():
    return round(time.monotonic() * 1000, 2)


def emit(obj):
    sys.stdout.write(json.dumps(obj, separators=(",", ":")) + "\n")
    sys.stdout.flush()


def xor(payload, key):
    n = len(payload)
    if not n:
        return b""
    k = (key * (n // 4 + 1))[:n]
    return (int.from_bytes(payload, "little") ^ int.from_bytes(k, "little")).to_bytes(n, "little")


def frame(op, payload=b"", fin=True, mask=False):
    b0 = (0x80 if fin else 0) | op
    n = len(payload)
    m = 0x80 if mask else 0
    if n < 126:
        head = struct.pack("!BB", b0, m | n)
    elif n < 65536:
        head = struct.pack("!BBH", b0, m | 126, n)
    else:
        head = struct.pack("!BBQ", b0, m | 127, n)
    if not mask:
        return head + payload
    key = os.urandom(4)
    return head + key + xor(payload, key)


async def read_frame(r):
    """(opcode, fin, payload), unmasked."""
    h = await r.readexactly(2)
    fin, op, masked, n = bool(h[0] & 0x80), h[0] & 0x0F, h[1] & 0x80, h[1] & 0x7F
    if n == 126:
        n = struct.unpack("!H", await r.readexactly(2))[0]
    elif n == 127:
        n = struct.unpack("!Q", await r.readexactly(8))[0]
    key = await r.readexactly(4) if masked else None
    payload = await r.readexactly(n) if n else b""
    if key:
        payload = xor(payload, key)
    return op, fin, payload


def close_fields(payload):
    if len(payload) >= 2:
        return struct.unpack("!H", payload[:2])[0], payload[2:].decode("utf-8", "replace")
    return 1005, ""


class Numbers:
    """Data messages as they complete: count, arrival times, whether their numbers run 0, 1, ..."""

    def __init__(self):
        self.count = 0
        self.next = 0
        self.in_order = True
        self.arrivals = []
        self.op = None
        self.parts = []

    def frame(self, op, fin, payload):
        """Feeds a data frame; True when it completed a message."""
        if op != 0:
            self.op, self.parts = op, []
        # Only what a number needs is kept of a message.
        if sum(len(p) for p in self.parts) < 64:
            self.parts.append(payload[:64])
        if not fin:
            return False
        body = b"".join(self.parts)
        self.parts = []
        self.count += 1
        self.arrivals.append(mono_ms())
        number = None
        if self.op == 2 and len(body) >= 4:
            number = int.from_bytes(body[:4], "big")
        elif self.op == 1:
            m = NUMBER.search(body)
            number = int(m.group(1)) if m else None
        if number is not None:
            if number != self.next:
                self.in_order = False
            self.next = number + 1
        return True


# --- backend ---

LIVE = {}


class Conn:
    def __init__(self, path):
        self.path = path
        self.frames = 0
        self.pings = 0
        self.bytes = 0
        self.numbers = Numbers()
        self.opened_ms = mono_ms()
        self.flood_sent = 0


def unique(path):
    key, n = path, 1
    while key in LIVE:
        n += 1
        key = f"{path}#{n}"
    return key


async def flood(w, conn, size):
    filler = b"y" * max(0, size - 4)
    try:
        while True:
            w.write(frame(2, struct.pack("!I", conn.flood_sent) + filler))
            conn.flood_sent += 1
            await w.drain()
    except (ConnectionError, asyncio.CancelledError):
        pass


async def backend_conn(r, w, args):
    try:
        head = await r.readuntil(b"\r\n\r\n")
    except (asyncio.IncompleteReadError, asyncio.LimitOverrunError, ConnectionError):
        w.close()
        return
    m = re.search(rb"(?im)^sec-websocket-key:[ \t]*(\S+)", head)
    if not m:
        w.write(b"HTTP/1.1 400 Bad Request\r\nContent-Length: 0\r\nConnection: close\r\n\r\n")
        w.close()
        return
    accept = base64.b64encode(hashlib.sha1(m.group(1) + GUID).digest())
    w.write(
        b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
        b"Sec-WebSocket-Accept: " + accept + b"\r\n\r\n"
    )
    path = unique(head.split(b" ")[1].decode("latin-1"))
    conn = Conn(path)
    LIVE[path] = conn
    code, reason = 1006, ""
    flooder = None
    if args.flood_prefix and path.startswith(args.flood_prefix):
        flooder = asyncio.create_task(flood(w, conn, args.flood_size))
    try:
        while True:
            op, fin, payload = await read_frame(r)
            if op == 8:
                code, reason = close_fields(payload)
                if flooder:
                    flooder.cancel()
                w.write(frame(8, payload[:2]))
                await w.drain()
                break
            conn.frames += 1
            if op == 9:
                conn.pings += 1
                w.write(frame(10, payload))
            elif op in (0, 1, 2):
                conn.bytes += len(payload)
                conn.numbers.frame(op, fin, payload)
                if not flooder:
                    w.write(frame(op, payload, fin=fin))
            if not flooder and w.transport.get_write_buffer_size() > 1 << 20:
                await w.drain()
    except (asyncio.IncompleteReadError, ConnectionError):
        pass
    finally:
        if flooder:
            flooder.cancel()
        del LIVE[path]
        w.transport.abort()
        emit(
            {
                "event": "closed",
                "path": path,
                "messages": conn.numbers.count,
                "frames": conn.frames,
                "pings": conn.pings,
                "bytes": conn.bytes,
                "in_order": conn.numbers.in_order,
                "code": code,
                "reason": reason,
                "opened_ms": conn.opened_ms,
                "closed_ms": mono_ms(),
                "arrivals_ms": conn.numbers.arrivals,
                "flood_sent": conn.flood_sent,
            }
        )


async def progress(every_ms):
    while True:
        await asyncio.sleep(every_ms / 1000)
        conns = {
            p: {"messages": c.numbers.count, "frames": c.frames, "pings": c.pings, "bytes": c.bytes}
            for p, c in LIVE.items()
        }
        emit({"event": "progress", "t_ms": mono_ms(), "conns": conns})


async def stdin_closed():
    loop = asyncio.get_running_loop()
    await loop.run_in_executor(None, sys.stdin.buffer.read)


async def backend(args):
    server = await asyncio.start_server(lambda r, w: backend_conn(r, w, args), "127.0.0.1", 0)
    emit({"event": "listening", "port": server.sockets[0].getsockname()[1]})
    ticker = asyncio.create_task(progress(args.progress_ms))
    watch = asyncio.create_task(stdin_closed() if args.stdin_eof else asyncio.sleep(args.lifetime))
    await asyncio.wait([watch], timeout=args.lifetime)
    ticker.cancel()
    server.close()


# --- client ---


async def client(args, out):
    u = urlsplit(args.url)
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setblocking(False)
    if args.local_address:
        sock.bind((args.local_address, 0))
    loop = asyncio.get_running_loop()
    try:
        await loop.sock_connect(sock, (u.hostname, u.port or 80))
        r, w = await asyncio.open_connection(sock=sock, limit=1 << 20)
        key = base64.b64encode(os.urandom(16))
        w.write(
            f"GET {u.path or '/'} HTTP/1.1\r\nHost: {u.netloc}\r\nUpgrade: websocket\r\n"
            "Connection: Upgrade\r\nSec-WebSocket-Version: 13\r\n".encode()
            + b"Sec-WebSocket-Key: " + key + b"\r\n\r\n"
        )
        head = await r.readuntil(b"\r\n\r\n")
    except (OSError, asyncio.IncompleteReadError) as e:
        out["errors"].append(f"connect: {e!r}")
        sock.close()
        return
    if not head.startswith(b"HTTP/1.1 101"):
        out["errors"].append(f"no upgrade: {head[:80]!r}")
        w.transport.abort()
        return
    out["opened"] = True
    out["open_ms"] = mono_ms()
    host, port = sock.getsockname()[:2]
    out["local"] = f"{host}:{port}"

    mode, n = args.mode, args.count
    if mode == "messages":
        filler = os.urandom(max(0, args.size - 4))
        for i in range(n):
            w.write(frame(2, struct.pack("!I", i) + filler, mask=True))
    elif mode == "pings":
        body = b"p" * args.size
        for _ in range(n):
            w.write(frame(9, body, mask=True))
    elif mode == "fragments":
        w.write(frame(1, b"a", fin=False, mask=True))
        empty = frame(0, b"", fin=False, mask=True)
        for _ in range(n):
            w.write(empty)
        w.write(frame(0, b"", fin=True, mask=True))
        n += 2
    elif mode == "empties":
        empty = frame(1, b"", mask=True)
        for _ in range(n):
            w.write(empty)
    else:
        n = 0
    out["written"] = n

    numbers = Numbers()
    closed = asyncio.Event()

    async def reader():
        try:
            while True:
                op, fin, payload = await read_frame(r)
                if op == 9:
                    out["pings"] += 1
                    out["pings_ms"].append(mono_ms())
                    w.write(frame(10, payload, mask=True))
                elif op == 10:
                    out["pongs"] += 1
                elif op in (0, 1, 2):
                    numbers.frame(op, fin, payload)
                elif op == 8:
                    if out["code"] is None:
                        out["close_frame_ms"] = mono_ms()
                        out["code"], out["reason"] = close_fields(payload)
                    break
        except (asyncio.IncompleteReadError, ConnectionError):
            pass
        closed.set()

    task = asyncio.create_task(reader())
    try:
        await asyncio.wait_for(closed.wait(), args.hold)
    except asyncio.TimeoutError:
        pass
    if out["code"] is not None:
        # Answer the close, as a library would, and give the peer a moment to end.
        w.write(frame(8, struct.pack("!H", out["code"]), mask=True))
        await asyncio.sleep(0.2)
    elif args.reset:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        out["reset_ms"] = mono_ms()
    elif mode == "read":
        w.write(frame(8, struct.pack("!H", 1000) + b"done", mask=True))
        try:
            await asyncio.wait_for(task, 1)
        except asyncio.TimeoutError:
            pass
    task.cancel()
    w.transport.abort()
    out["received"] = numbers.count
    out["in_order"] = numbers.in_order
    out["arrivals_ms"] = numbers.arrivals


async def client_main(args):
    out = {
        "mode": args.mode,
        "opened": False,
        "open_ms": None,
        "local": None,
        "written": 0,
        "received": 0,
        "in_order": True,
        "arrivals_ms": [],
        "pings": 0,
        "pings_ms": [],
        "pongs": 0,
        "code": None,
        "reason": None,
        "close_frame_ms": None,
        "reset_ms": None,
        "end_ms": None,
        "errors": [],
        "timed_out": False,
    }
    try:
        await asyncio.wait_for(client(args, out), args.timeout)
    except asyncio.TimeoutError:
        out["timed_out"] = True
    out["end_ms"] = mono_ms()
    emit(out)


def main():
    ap = argparse.ArgumentParser()
    sub = ap.add_subparsers(dest="role", required=True)
    b = sub.add_parser("backend")
    b.add_argument("--flood-prefix")
    b.add_argument("--flood-size", type=int, default=1024)
    b.add_argument("--progress-ms", type=float, default=50)
    b.add_argument("--lifetime", type=float, default=120)
    b.add_argument("--stdin-eof", action="store_true")
    c = sub.add_parser("client")
    c.add_argument("mode", choices=["messages", "pings", "fragments", "empties", "read"])
    c.add_argument("url")
    c.add_argument("--count", type=int, default=0)
    c.add_argument("--size", type=int)
    c.add_argument("--hold", type=float, default=5)
    c.add_argument("--reset", action="store_true")
    c.add_argument("--local-address")
    c.add_argument("--timeout", type=float, default=30)
    args = ap.parse_args()
    if args.role == "backend":
        asyncio.run(backend(args))
        # The stdin reader thread may still block; leave without waiting for it.
        sys.stdout.flush()
        os._exit(0)
    if args.size is None:
        args.size = 125 if args.mode == "pings" else 1024
    asyncio.run(client_main(args))


if __name__ == "__main__":
    main()
