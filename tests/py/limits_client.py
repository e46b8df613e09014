"""A flooding WebSocket client on the `websockets` package's asyncio client with its default
options, for tests/message_limits.rs.

    python3 limits_client.py URL [--count N] [--duration S] [--prefix m]
                                 [--max-in-flight N] [--local-address IP] [--timeout S]

Sends numbered text messages (PREFIX0, PREFIX1, ...) as fast as the connection takes them
(`send` waits while its write buffer is full: the balancer's backpressure holds it), while
reading whatever comes back, until the peer closes, `--count` messages are sent, or
`--duration` seconds pass. It then drops the connection (a close frame would wait behind
everything still queued); when the peer closed, it first waits (at most 3 s) for the
connection to end, as the library's own close handshake would.

With `--max-in-flight N` (an echo backend) it never has more than N messages unanswered:
still always over any rate the balancer holds it to, but with a short queue. At the end it
then waits (at most 15 s) for the echoes of all it sent and closes cleanly (1000), since what
a balancer holds back unread is still sent on at the rate after a client left.

It prints one JSON line on stdout:

    {"opened": bool, "open_ms": T, "local": "IP:PORT", "sent": N, "received": N,
     "code": C | null, "reason": R | null,     the close frame received (null: none)
     "close_frame_ms": T | null,               when it arrived
     "closed_ms": T | null,                    when the connection ended, if the peer ended it
     "closed_early": bool,                     the peer closed before the client was done
     "drained": bool,                          with --max-in-flight: every echo came back
     "errors": [...], "elapsed_ms": T, "timed_out": bool}

Times are ms since the script started. It exits after `--timeout` seconds (default 30)
whatever happens.
"""

import argparse
import asyncio
import json
import sys
import time

from websockets.asyncio.client import connect
from websockets.exceptions import ConnectionClosed

START = time.monotonic()


def now_ms():
    return round((time.monotonic() - START) * 1000, 2)


async def run(args, out):
    kwargs = {}
    if args.local_address:
        kwargs["local_addr"] = (args.local_address, 0)
    try:
        ws = await connect(args.url, **kwargs)
    except Exception as e:  # noqa: BLE001 - reported, not raised
        out["errors"].append(f"connect: {e!r}")
        return
    out["opened"] = True
    out["open_ms"] = now_ms()
    host, port = ws.local_address[:2]
    out["local"] = f"{host}:{port}"
    done = asyncio.Event()

    answered = asyncio.Event()

    async def reader():
        try:
            while True:
                await ws.recv()
                out["received"] += 1
                answered.set()
        except ConnectionClosed:
            out["closed_ms"] = now_ms()
            done.set()

    async def close_watch():
        # The close frame's arrival, which comes before the connection ends.
        while ws.protocol.close_rcvd is None:
            await asyncio.sleep(0.01)
        out["close_frame_ms"] = now_ms()
        out["code"] = ws.protocol.close_rcvd.code
        out["reason"] = ws.protocol.close_rcvd.reason
        done.set()

    async def writer():
        deadline = None if args.duration is None else time.monotonic() + args.duration
        i = 0
        try:
            while (args.count is None or i < args.count) and (deadline is None or time.monotonic() < deadline):
                while args.max_in_flight is not None and i - out["received"] >= args.max_in_flight:
                    answered.clear()
                    await answered.wait()
                await ws.send(f"{args.prefix}{i}")
                i += 1
                out["sent"] = i
                # `send` returns without suspending while the socket takes the bytes: let
                # the reader and the close watch run.
                await asyncio.sleep(0)
        except ConnectionClosed:
            pass
        done.set()

    tasks = [asyncio.create_task(t()) for t in (reader, close_watch, writer)]
    await done.wait()
    if ws.protocol.close_rcvd is not None or out["closed_ms"] is not None:
        out["closed_early"] = True
        # As the library would: answer the close (it does that itself) and give the peer a
        # while to end the connection.
        await asyncio.wait([tasks[0], tasks[1]], timeout=3, return_when=asyncio.FIRST_COMPLETED)
        await asyncio.wait([tasks[0]], timeout=3)
    elif args.max_in_flight is not None:
        deadline = time.monotonic() + 15
        while out["received"] < out["sent"] and not tasks[0].done() and time.monotonic() < deadline:
            await asyncio.sleep(0.01)
        out["drained"] = out["received"] >= out["sent"]
        if out["drained"]:
            try:
                await asyncio.wait_for(ws.close(), 5)
            except (asyncio.TimeoutError, ConnectionClosed):
                pass
    rcvd = ws.protocol.close_rcvd
    if rcvd is not None and out["code"] is None:
        # It came with the connection's end, before the watch looked.
        out["close_frame_ms"] = out["closed_ms"] or now_ms()
        out["code"], out["reason"] = rcvd.code, rcvd.reason
    for t in tasks:
        t.cancel()
    ws.transport.abort()


async def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("url")
    ap.add_argument("--count", type=int)
    ap.add_argument("--duration", type=float)
    ap.add_argument("--prefix", default="m")
    ap.add_argument("--max-in-flight", type=int)
    ap.add_argument("--local-address")
    ap.add_argument("--timeout", type=float, default=30)
    args = ap.parse_args()
    if args.count is None and args.duration is None:
        ap.error("give --count or --duration")
    out = {
        "opened": False,
        "open_ms": None,
        "local": None,
        "sent": 0,
        "received": 0,
        "code": None,
        "reason": None,
        "close_frame_ms": None,
        "closed_ms": None,
        "closed_early": False,
        "drained": False,
        "errors": [],
        "elapsed_ms": None,
        "timed_out": False,
    }
    try:
        await asyncio.wait_for(run(args, out), args.timeout)
    except asyncio.TimeoutError:
        out["timed_out"] = True
    out["elapsed_ms"] = now_ms()
    sys.stdout.write(json.dumps(out) + "\n")
    sys.stdout.flush()


if __name__ == "__main__":
    asyncio.run(main())
