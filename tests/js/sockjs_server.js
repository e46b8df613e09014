// A stock SockJS server (websocket transport disabled) for the interop tests, prefix
// /echo: answers every message with `NAME:message`. Prints "listening PORT".
const http = require("http");
const sockjs = require("sockjs");

const name = process.argv[2] || "s";
const echo = sockjs.createServer({ websocket: false, log: () => {}, heartbeat_delay: 2000 });
echo.on("connection", (conn) => conn.on("data", (m) => conn.write(`${name}:${m}`)));
// `/page` and `/sockjs.min.js`: the browser test's page, running sockjs-client with one
// transport at a time.
const fs = require("fs");
const path = require("path");
const bundle = fs.readFileSync(path.join(__dirname, "node_modules/sockjs-client/dist/sockjs.min.js"));
const page = `<!doctype html><meta charset="utf-8"><title>sockjs</title>
<script src="/sockjs.min.js"></script>
<script>
// Sessions one after another: a browser keeps at most 6 connections per host, and each
// streaming session holds one open while it sends on another.
const one = (transport, messages) => new Promise((resolve) => {
  const sock = new SockJS("/echo", null, { transports: [transport], timeout: 5000 });
  const r = { transport: null, servers: [], answers: 0, errors: [] };
  let sent = 0;
  const next = () => { if (sent < messages) sock.send("m" + sent++); else { sock.close(); resolve(r); } };
  sock.onopen = () => { r.transport = sock.transport; next(); };
  sock.onmessage = (e) => { const s = String(e.data).split(":")[0]; if (!r.servers.includes(s)) r.servers.push(s); r.answers += 1; next(); };
  sock.onclose = (e) => { if (sent < messages) { r.errors.push("closed " + e.code + " " + e.reason); resolve(r); } };
  setTimeout(() => { r.errors.push("timeout"); resolve(r); }, 8000);
});
window.runSockjs = async (transport, sessions, messages) => {
  const all = [];
  for (let i = 0; i < sessions; i++) all.push(await one(transport, messages));
  return all;
};
</script>`;
const server = http.createServer((req, res) => {
  if (req.url === "/page") {
    res.writeHead(200, { "content-type": "text/html; charset=utf-8" });
    res.end(page);
  } else if (req.url === "/sockjs.min.js") {
    res.writeHead(200, { "content-type": "application/javascript" });
    res.end(bundle);
  }
});
echo.installHandlers(server, { prefix: "/echo" });
server.listen(0, "127.0.0.1", () => console.log(`listening ${server.address().port}`));
process.on("SIGTERM", () => process.exit(0));
