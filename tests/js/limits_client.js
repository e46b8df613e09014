// A WebSocket client on the `ws` package (its default options) for tests/message_limits.rs.
//
//   node limits_client.js flood URL [--count=N] [--duration-ms=D] [--size=B] [--prefix=m]
//                                   [--wait-echo] [--max-in-flight=N] [--max-buffered=65536]
//   node limits_client.js echo URL [--count=N] [--interval-ms=I] [--prefix=e]
//   common: [--local-address=IP] [--timeout-ms=30000]
//
// flood: sends numbered messages as fast as it can: `--count` of them all at once, or for
// `--duration-ms` (then it keeps at most `--max-buffered` bytes waiting in `ws`, so its own
// memory stays small while the other side holds it back). With `--max-in-flight` it never
// has more than N messages unanswered by the echo backend: still always over any rate the
// balancer holds it to, but with a short queue, so that its connection can end cleanly
// (what a balancer holds back unread is still sent on at the rate after the client left).
// Text messages are PREFIX0,
// PREFIX1, ...; with `--size` they are binary, `sha256(body) + body` with the number in the
// body's first 4 bytes (big-endian) and random bytes after it, B bytes in all. With
// `--wait-echo` it then waits for every echo (an echo backend), checking order and content,
// and closes with 1000; otherwise (or at `--duration-ms`'s end) it drops the connection
// without a close handshake, since a close frame would wait behind everything still queued.
//
// echo: `--count` round trips one at a time, `--interval-ms` apart, timing each.
//
// It prints one JSON line on stdout and exits, at the latest after `--timeout-ms`:
//   {"mode", "opened", "open_ms", "local", "sent", "send_done_ms", "received",
//    "last_message_ms", "echo_in_order", "pings", "close": null | {"code", "reason", "at_ms"},
//    "close_frame_ms", "closed_early", "errors", "elapsed_ms",
//    "latency_ms": null | {"n", "p50", "p99", "max"}, "timed_out"}
// `local`: the client's own address and port, as the balancer's access log names it;
// `closed_early`: the connection closed before the client meant to end it;
// `close_frame_ms`: when the peer's close frame arrived (null: none, or the client closed
// first). After a peer's close frame it waits at most 3 s for the connection to end. Times
// are ms since the script started.

'use strict';
const crypto = require('crypto');
const path = require('path');
const WebSocket = require(path.join(__dirname, 'node_modules', 'ws'));

const [mode, url, ...rest] = process.argv.slice(2);
if (!['flood', 'echo'].includes(mode) || !url) {
  process.stderr.write('usage: node limits_client.js flood|echo URL [--key=value ...]\n');
  process.exit(2);
}
const opt = {};
for (const a of rest) {
  const m = /^--([a-z-]+)(?:=(.*))?$/.exec(a);
  if (!m) {
    process.stderr.write(`bad argument ${a}\n`);
    process.exit(2);
  }
  opt[m[1]] = m[2] === undefined ? true : m[2];
}
const num = (k, d) => (opt[k] === undefined ? d : Number(opt[k]));
const count = num('count', mode === 'echo' ? 100 : Infinity);
const durationMs = num('duration-ms', Infinity);
const size = num('size', 0);
const prefix = opt.prefix || (mode === 'echo' ? 'e' : 'm');
const waitEcho = Boolean(opt['wait-echo']);
const maxBuffered = num('max-buffered', 65536);
const maxInFlight = num('max-in-flight', Infinity);
const intervalMs = num('interval-ms', 20);
const timeoutMs = num('timeout-ms', 30000);
if (mode === 'flood' && count === Infinity && durationMs === Infinity) {
  process.stderr.write('flood needs --count or --duration-ms\n');
  process.exit(2);
}
if (size && size < 36) {
  process.stderr.write('--size must be at least 36\n');
  process.exit(2);
}

const t0 = performance.now();
const now = () => Math.round((performance.now() - t0) * 100) / 100;
const out = {
  mode,
  opened: false,
  open_ms: null,
  local: null,
  sent: 0,
  send_done_ms: null,
  received: 0,
  last_message_ms: null,
  echo_in_order: true,
  pings: 0,
  close: null,
  close_frame_ms: null,
  closed_early: false,
  errors: [],
  elapsed_ms: null,
  latency_ms: null,
  timed_out: false,
};
let ending = false;
let done = false;

function message(i) {
  if (!size) return prefix + i;
  const body = crypto.randomBytes(size - 32);
  body.writeUInt32BE(i, 0);
  return Buffer.concat([crypto.createHash('sha256').update(body).digest(), body]);
}

// Whether the k-th echo is what the k-th message was.
function echoed(data, isBinary, k) {
  if (!size) return !isBinary && data.toString() === prefix + k;
  if (!isBinary || data.length !== size) return false;
  const ok = crypto.createHash('sha256').update(data.subarray(32)).digest().equals(data.subarray(0, 32));
  return ok && data.readUInt32BE(32) === k;
}

const opts = {};
if (opt['local-address']) opts.localAddress = opt['local-address'];
const ws = new WebSocket(url, opts);

function finish() {
  if (done) return;
  done = true;
  clearInterval(watch);
  out.elapsed_ms = now();
  process.stdout.write(JSON.stringify(out) + '\n', () => {
    ws.terminate();
    process.exit(0);
  });
}

// End the run: a close handshake when nothing is queued, else drop the connection.
function end() {
  if (ending) return;
  ending = true;
  if (ws.readyState !== WebSocket.OPEN) return finish();
  if (ws.bufferedAmount > 0 || !(waitEcho || mode === 'echo')) {
    ws.terminate();
    return finish();
  }
  ws.close(1000, 'done');
  setTimeout(finish, 2000);
}

setTimeout(() => {
  out.timed_out = true;
  finish();
}, timeoutMs);

// The close frame's arrival: `ws` turns CLOSING when it gets one, but only says 'close' once
// the TCP connection is gone, which a peer that does not read may hold up.
const watch = setInterval(() => {
  if (ws.readyState === WebSocket.CLOSING && !ending && out.close_frame_ms === null) {
    out.close_frame_ms = now();
    setTimeout(() => {
      // Still no end: report the frame's code (kept by `ws` in a private field) and go.
      if (!out.close) out.close = { code: ws._closeCode, reason: String(ws._closeMessage || ''), at_ms: null };
      out.closed_early = true;
      finish();
    }, 3000);
  }
}, 10);
ws.on('error', (e) => out.errors.push(String(e.message || e)));
ws.on('ping', () => out.pings++);
ws.on('upgrade', (res) => {
  out.local = `${res.socket.localAddress}:${res.socket.localPort}`;
});
ws.on('message', () => {
  out.last_message_ms = now();
});
ws.on('close', (code, reason) => {
  out.close = { code, reason: reason.toString(), at_ms: now() };
  if (!ending) {
    out.closed_early = true;
    if (out.close_frame_ms === null && code !== 1006) out.close_frame_ms = out.close.at_ms;
  }
  ending = true;
  finish();
});

ws.on('open', () => {
  out.opened = true;
  out.open_ms = now();
  if (mode === 'echo') return echoLoop();
  flood();
});

function flood() {
  const stopAt = performance.now() + durationMs;
  let expected = 0;
  ws.on('message', (data, isBinary) => {
    if (!echoed(data, isBinary, expected)) out.echo_in_order = false;
    expected++;
    out.received++;
    if (waitEcho && out.send_done_ms !== null && out.received >= out.sent) end();
  });
  const sendDone = () => {
    out.send_done_ms = now();
    if (!waitEcho) return end();
    if (out.received >= out.sent) end();
  };
  if (durationMs === Infinity && maxInFlight === Infinity) {
    // All at once: everything the socket does not take waits in `ws`.
    for (let i = 0; i < count; i++) {
      ws.send(message(i));
      out.sent++;
    }
    return sendDone();
  }
  const room = () => ws.bufferedAmount < maxBuffered && out.sent - out.received < maxInFlight;
  const pump = () => {
    if (ending) return;
    // At most 256 at a time: a socket that takes everything would otherwise keep this loop
    // going, and nothing (the echoes, a close) would be read meanwhile.
    for (let n = 0; n < 256 && out.sent < count && room() && performance.now() < stopAt; n++) {
      ws.send(message(out.sent));
      out.sent++;
    }
    if (out.sent >= count || performance.now() >= stopAt) return sendDone();
    if (room()) setImmediate(pump);
    else setTimeout(pump, 1);
  };
  pump();
}

function echoLoop() {
  const lat = [];
  let k = 0;
  let sentAt = 0;
  const next = () => {
    if (ending) return;
    if (k >= count) {
      out.send_done_ms = now();
      return end();
    }
    sentAt = performance.now();
    ws.send(message(k));
    out.sent++;
  };
  ws.on('message', (data, isBinary) => {
    lat.push(performance.now() - sentAt);
    if (!echoed(data, isBinary, k)) out.echo_in_order = false;
    out.received++;
    k++;
    const sorted = [...lat].sort((a, b) => a - b);
    const q = (p) => Math.round(sorted[Math.min(sorted.length - 1, Math.floor(p * sorted.length))] * 100) / 100;
    out.latency_ms = { n: sorted.length, p50: q(0.5), p99: q(0.99), max: q(1) };
    setTimeout(next, intervalMs);
  });
  next();
}
