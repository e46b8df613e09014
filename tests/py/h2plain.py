"""Plain requests over HTTP/2 with httpx (`http2=True`), as an application would make them.

Used by tests/h2.rs: `python3 h2plain.py HOST PORT`; prints `key value` facts.
"""
import asyncio
import sys
import time

import httpx


def say(key, value):
    print(f"{key} {value}", flush=True)


async def main():
    host, port = sys.argv[1], sys.argv[2]
    base = f"https://localhost:{port}"
    transport = httpx.AsyncHTTPTransport(http2=True, verify=False, local_address="127.0.0.1")
    async with httpx.AsyncClient(transport=transport, base_url=base, timeout=20) as client:
        # The name resolves through the test's own mapping: localhost is 127.0.0.1 here.
        r = await client.get("/hello")
        say("version", r.http_version)

        async def chunks():
            for _ in range(64):
                yield b"x" * 16384
                await asyncio.sleep(0)

        r = await client.post("/upload", content=chunks())
        say("upload", f"{r.status_code} {r.text}")

        times = []
        async with client.stream("GET", "/sse") as r:
            buf = b""
            async for piece in r.aiter_raw():
                buf += piece
                while b"\n\n" in buf:
                    _, buf = buf.split(b"\n\n", 1)
                    times.append(time.monotonic())
        say("sse_events", len(times))
        say("sse_spread_ms", round((times[-1] - times[0]) * 1000) if times else 0)

        rs = await asyncio.gather(*[client.get(f"/c{i}") for i in range(50)])
        ok = sum(1 for r in rs if r.status_code == 200 and r.http_version == "HTTP/2")
        say("concurrent", f"{ok} ok")


asyncio.run(main())
