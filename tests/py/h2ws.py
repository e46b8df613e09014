"""RFC 8441 (WebSockets over HTTP/2) driven frame by frame with the `h2` package (PyPI).

Used by tests/h2.rs: `python3 h2ws.py SCENARIO HOST PORT [ARGS...]`. Each scenario prints
one line per fact, `key value`, that the Rust test asserts. The TLS connection offers only
`h2` by ALPN and does not verify the certificate (the test's own).
"""
import json
import os
import socket
import ssl
import struct
import sys
import time

import h2.config
import h2.connection
import h2.errors
import h2.events
import h2.settings


def say(key, value):
    print(f"{key} {value}", flush=True)


class Conn:
    def __init__(self, host, port, ack_data=True):
        ctx = ssl.create_default_context()
        ctx.check_hostname = False
        ctx.verify_mode = ssl.CERT_NONE
        ctx.set_alpn_protocols(["h2"])
        raw = socket.create_connection((host, port), timeout=10)
        self.sock = ctx.wrap_socket(raw, server_hostname="localhost")
        self.alpn = self.sock.selected_alpn_protocol()
        self.conn = h2.connection.H2Connection(h2.config.H2Configuration(client_side=True, header_encoding="utf-8"))
        self.conn.initiate_connection()
        self.flush()
        # RFC 9113 §6.8: after a GOAWAY, the streams it lets finish go on. The h2 package
        # closes the whole connection on receiving one: keep it open for those streams.
        machine = self.conn.state_machine
        process = machine.process_input
        seen = {"goaway": False}

        def tolerant(input_):
            if input_ == h2.connection.ConnectionInputs.RECV_GOAWAY:
                seen["goaway"] = True
            elif seen["goaway"] and machine.state == h2.connection.ConnectionState.CLOSED:
                machine.state = h2.connection.ConnectionState.CLIENT_OPEN
            return process(input_)

        machine.process_input = tolerant
        self.ack_data = ack_data
        self.stalled = {}
        self.streams = {}
        self.remote_settings = {}
        self.goaway = None
        self.closed = False

    def flush(self):
        data = self.conn.data_to_send()
        if data:
            self.sock.sendall(data)

    def stream(self, sid):
        return self.streams.setdefault(sid, {"status": None, "headers": {}, "buf": bytearray(), "ended": False, "reset": None})

    def pump(self, timeout):
        self.sock.settimeout(timeout)
        try:
            data = self.sock.recv(65536)
        except (socket.timeout, TimeoutError):
            return
        except (ConnectionError, ssl.SSLError, OSError):
            self.closed = True
            return
        if not data:
            self.closed = True
            return
        for ev in self.conn.receive_data(data):
            if isinstance(ev, h2.events.RemoteSettingsChanged):
                for k, v in ev.changed_settings.items():
                    self.remote_settings[k] = v.new_value
            elif isinstance(ev, h2.events.ResponseReceived):
                st = self.stream(ev.stream_id)
                st["headers"] = dict(ev.headers)
                st["status"] = int(st["headers"].get(":status", "0"))
            elif isinstance(ev, h2.events.DataReceived):
                st = self.stream(ev.stream_id)
                st["buf"] += ev.data
                st["received"] = st.get("received", 0) + len(ev.data)
                if ev.stream_id in self.stalled:
                    # A reader that stopped: the connection's window is given back (so other
                    # streams go on), the stream's is not.
                    self.stalled[ev.stream_id] += ev.flow_controlled_length
                    if ev.flow_controlled_length:
                        self.conn.increment_flow_control_window(ev.flow_controlled_length)
                elif self.ack_data and ev.flow_controlled_length:
                    self.conn.acknowledge_received_data(ev.flow_controlled_length, ev.stream_id)
            elif isinstance(ev, h2.events.StreamEnded):
                self.stream(ev.stream_id)["ended"] = True
            elif isinstance(ev, h2.events.StreamReset):
                self.stream(ev.stream_id)["reset"] = int(ev.error_code)
            elif isinstance(ev, h2.events.ConnectionTerminated):
                self.goaway = int(ev.error_code)
        self.flush()

    def until(self, cond, timeout=10.0):
        end = time.monotonic() + timeout
        while not cond():
            left = end - time.monotonic()
            if left <= 0 or self.closed:
                return cond()
            self.pump(min(left, 0.2))
        return True

    def open_ws(self, path="/", extra=(), protocol="websocket"):
        ok = self.until(lambda: h2.settings.SettingCodes.ENABLE_CONNECT_PROTOCOL in self.remote_settings)
        if not ok or self.remote_settings[h2.settings.SettingCodes.ENABLE_CONNECT_PROTOCOL] != 1:
            raise SystemExit("server did not enable extended CONNECT")
        sid = self.conn.get_next_available_stream_id()
        headers = [
            (":method", "CONNECT"),
            (":protocol", protocol),
            (":scheme", "https"),
            (":path", path),
            (":authority", "localhost"),
        ]
        if not any(k == "sec-websocket-version" for k, _ in extra):
            headers.append(("sec-websocket-version", "13"))
        headers += list(extra)
        self.conn.send_headers(sid, headers)
        self.flush()
        self.stream(sid)
        self.until(lambda: self.streams[sid]["status"] is not None or self.streams[sid]["reset"] is not None)
        return sid

    def request(self, method, path, body=b""):
        sid = self.conn.get_next_available_stream_id()
        headers = [(":method", method), (":scheme", "https"), (":path", path), (":authority", "localhost")]
        self.conn.send_headers(sid, headers, end_stream=not body)
        if body:
            self.conn.send_data(sid, body, end_stream=True)
        self.flush()
        self.stream(sid)
        return sid

    def send_frame(self, sid, opcode, payload):
        mask = os.urandom(4)
        n = len(payload)
        head = bytes([0x80 | opcode])
        if n < 126:
            head += bytes([0x80 | n])
        elif n < 65536:
            head += bytes([0x80 | 126]) + struct.pack(">H", n)
        else:
            head += bytes([0x80 | 127]) + struct.pack(">Q", n)
        masked = bytes(b ^ mask[i % 4] for i, b in enumerate(payload))
        self.conn.send_data(sid, head + mask + masked)
        self.flush()

    def send_close(self, sid, code, reason=b""):
        self.send_frame(sid, 8, struct.pack(">H", code) + reason)

    def read_frame(self, sid, timeout=10.0):
        st = self.streams[sid]

        def parse():
            b = st["buf"]
            if len(b) < 2:
                return None
            op, n, off = b[0] & 0x0F, b[1] & 0x7F, 2
            if n == 126:
                if len(b) < 4:
                    return None
                n, off = struct.unpack(">H", b[2:4])[0], 4
            elif n == 127:
                if len(b) < 10:
                    return None
                n, off = struct.unpack(">Q", b[2:10])[0], 10
            if len(b) < off + n:
                return None
            payload = bytes(b[off : off + n])
            del b[: off + n]
            return op, payload

        got = [None]

        def ready():
            got[0] = got[0] or parse()
            return got[0] is not None or st["ended"] or st["reset"] is not None

        self.until(ready, timeout)
        return got[0]

    def read_close(self, sid, timeout=10.0):
        """The code of the next close frame on the stream (answering pings), or what ended it."""
        end = time.monotonic() + timeout
        while time.monotonic() < end:
            f = self.read_frame(sid, end - time.monotonic())
            if f is None:
                st = self.streams[sid]
                return f"none ended={st['ended']} reset={st['reset']}"
            op, payload = f
            if op == 8:
                return struct.unpack(">H", payload[:2])[0] if len(payload) >= 2 else 1005
            if op == 9:
                self.send_frame(sid, 10, payload)
        return "timeout"


def echo(c, sid, text):
    c.send_frame(sid, 1, text.encode())
    f = c.read_frame(sid)
    return f[1].decode() if f and f[0] == 1 else repr(f)


def scenario_two(c, args):
    """Two WebSockets on one connection, each echoing, closed with its own code."""
    a = c.open_ws("/a")
    b = c.open_ws("/b")
    say("status", f"{c.streams[a]['status']},{c.streams[b]['status']}")
    say("echo", f"{echo(c, a, 'on a')},{echo(c, b, 'on b')}")
    c.send_close(a, 4001)
    say("close_a", c.read_close(a))
    say("b_still", echo(c, b, "b after a closed"))
    c.send_close(b, 4002)
    say("close_b", c.read_close(b))
    c.until(lambda: c.streams[a]["ended"] and c.streams[b]["ended"], 5)
    say("ended", f"{c.streams[a]['ended']},{c.streams[b]['ended']}")


def scenario_shed(c, args):
    """A stream the balancer sheds: 200, then a close frame."""
    sid = c.open_ws("/", [("sec-websocket-protocol", "chat, superchat")])
    st = c.streams[sid]
    say("status", st["status"])
    say("protocol", st["headers"].get("sec-websocket-protocol"))
    say("close", c.read_close(sid))
    c.until(lambda: c.streams[sid]["ended"], 5)
    get = c.request("GET", "/")
    c.until(lambda: c.streams[get]["status"] is not None, 10)
    say("after", c.streams[get]["status"])


def scenario_get(c, args):
    """One plain GET."""
    sid = c.request("GET", "/")
    c.until(lambda: c.streams[sid]["status"] is not None or c.streams[sid]["reset"] is not None, 10)
    say("status", c.streams[sid]["status"])


def scenario_die(c, args):
    """Echo once, then ask the backend to die: the stream gets a close code and ends."""
    sid = c.open_ws("/")
    say("echo", echo(c, sid, "hello"))
    c.send_frame(sid, 1, b"die")
    say("close", c.read_close(sid))
    c.until(lambda: c.streams[sid]["ended"] or c.streams[sid]["reset"] is not None, 5)
    say("ended", c.streams[sid]["ended"])


def scenario_stall(c, args):
    """Two WebSockets; the client stops reading one while its backend streams megabytes: the
    other goes on, and once the client reads again every message arrives, in order."""
    n = int(args[0])
    a = c.open_ws("/")
    b = c.open_ws("/")
    c.stalled[a] = 0
    c.send_frame(a, 1, f"stream:{n}".encode())
    c.until(lambda: False, 2.0)
    say("b_echo", echo(c, b, "b goes on"))
    say("a_received_stalled", c.streams[a].get("received", 0))
    sys.stdin.readline()
    owed = c.stalled.pop(a)
    if owed:
        c.conn.increment_flow_control_window(owed, stream_id=a)
        c.flush()
    got, in_order = 0, True
    while got < n:
        f = c.read_frame(a, 20)
        if f is None:
            break
        op, payload = f
        if op == 2:
            in_order &= len(payload) == 1024 and payload[0] == got % 251
            got += 1
    say("a_frames", f"{got} in_order={in_order}")


def scenario_reload(c, args):
    """A WebSocket that lives through a reload, then a plain stream routed by the new config."""
    sid = c.open_ws("/ws")
    say("echo", echo(c, sid, "before"))
    sys.stdin.readline()
    say("echo_after", echo(c, sid, "after"))
    get = c.request("GET", "/new")
    c.until(lambda: c.streams[get]["ended"], 10)
    say("new", f"{c.streams[get]['status']} {bytes(c.streams[get]['buf']).decode()}")
    # The listener is removed next: the WebSocket is closed and the connection told to go.
    sys.stdin.readline()
    say("close", c.read_close(sid))
    c.until(lambda: c.goaway is not None or c.closed, 10)
    say("goaway", c.goaway)


def scenario_nowindow(c, args):
    """GET a large answer and never open the stream's window (the connection's is given back,
    pings are answered): the balancer must not hold the stream for ever."""
    t0 = time.monotonic()
    sid = c.request("GET", "/big")
    c.stalled[sid] = 0
    c.until(lambda: c.goaway is not None or c.closed, float(args[0]))
    say("received", c.streams[sid].get("received", 0))
    say("cut_after_ms", round((time.monotonic() - t0) * 1000) if (c.goaway is not None or c.closed) else "never")


def scenario_cookies(c, args):
    """Cookies split over three fields (as browsers send them over HTTP/2)."""
    sid = c.conn.get_next_available_stream_id()
    c.conn.send_headers(
        sid,
        [(":method", "GET"), (":scheme", "https"), (":path", "/headers"), (":authority", "localhost"),
         ("cookie", "a=1"), ("cookie", "b=2"), ("cookie", "c=3")],
        end_stream=True,
    )
    c.flush()
    c.stream(sid)
    c.until(lambda: c.streams[sid]["ended"], 10)
    seen = bytes(c.streams[sid]["buf"]).decode()
    say("cookie_lines", json.dumps([l for l in seen.splitlines() if l.startswith("cookie:")]))


def scenario_reset(c, args):
    """Echo once, then reset the stream (the client is gone); the connection stays usable."""
    sid = c.open_ws("/")
    say("echo", echo(c, sid, "before reset"))
    c.conn.reset_stream(sid, h2.errors.ErrorCodes.CANCEL)
    c.flush()
    say("reset", "sent")
    other = c.open_ws("/")
    say("other", echo(c, other, "after reset"))
    # Held until the test is done looking at the backend.
    sys.stdin.readline()


def scenario_hold(c, args):
    """Echo once, say so, then wait for the close frame the balancer or backend sends."""
    sid = c.open_ws("/")
    say("status", c.streams[sid]["status"])
    say("echo", echo(c, sid, "hello"))
    say("close", c.read_close(sid, float(args[0]) if args else 20.0))
    c.until(lambda: c.goaway is not None or c.closed, 3)
    say("goaway", c.goaway)


def scenario_status(c, args):
    """One extended CONNECT; prints the answer's status (or the reset)."""
    pairs = [tuple(a.split("=", 1)) for a in args]
    protocol = next((v for k, v in pairs if k == "protocol"), "websocket")
    extra = [(k, v) for k, v in pairs if k != "protocol"]
    sid = c.open_ws("/", extra, protocol)
    st = c.streams[sid]
    say("status", st["status"])
    say("reset", st["reset"])
    say("extensions", st["headers"].get("sec-websocket-extensions"))


def main():
    scenario, host, port, *args = sys.argv[1:]
    c = Conn(host, int(port))
    say("alpn", c.alpn)
    globals()["scenario_" + scenario](c, args)


if __name__ == "__main__":
    main()
