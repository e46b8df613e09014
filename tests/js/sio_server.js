// A stock Socket.IO 4 server for the interop tests: answers `whoami` with its name and
// echoes `echo` through the ack. Prints "listening PORT" once bound on 127.0.0.1:0.
const http = require("http");
const { Server } = require("socket.io");

const name = process.argv[2] || "s";
const pingInterval = Number(process.argv[3] || 25000);
// `/page`: a page for the browser test, loading the client this server ships
// (/socket.io/socket.io.js) and connecting with the default options, same origin.
const page = `<!doctype html><meta charset="utf-8"><title>sio</title>
<script src="/socket.io/socket.io.js"></script>
<script>
window.runSio = (millis) => new Promise((resolve) => {
  const socket = io();
  const r = { servers: [], transport: null, upgraded: false, errors: [] };
  socket.io.engine.on("upgrade", () => (r.upgraded = true));
  socket.on("connect_error", (e) => r.errors.push(String(e && e.message)));
  socket.on("disconnect", (why) => { if (why !== "io client disconnect") r.errors.push("disconnect: " + why); });
  const ask = () => new Promise((res) => socket.timeout(3000).emit("whoami", (err, n) => {
    if (err) r.errors.push("ack: " + err.message); else if (!r.servers.includes(n)) r.servers.push(n);
    res();
  }));
  socket.on("connect", async () => {
    const end = Date.now() + millis;
    await ask();
    while (Date.now() < end) { await new Promise((res) => setTimeout(res, 250)); await ask(); }
    r.transport = socket.io.engine.transport.name;
    r.cookie = document.cookie;
    socket.close();
    resolve(r);
  });
  setTimeout(() => { r.errors.push("timeout"); resolve(r); }, millis + 15000);
});
</script>`;
const server = http.createServer((req, res) => {
  if (req.url === "/page") {
    res.writeHead(200, { "content-type": "text/html; charset=utf-8" });
    return res.end(page);
  }
  res.writeHead(200, { "content-type": "text/plain" });
  res.end(name);
});
const io = new Server(server, { pingInterval, pingTimeout: 2000 });
io.on("connection", (socket) => {
  socket.on("whoami", (ack) => ack(name));
  socket.on("echo", (msg, ack) => ack(`${name}:${msg}`));
});
server.listen(0, "127.0.0.1", () => console.log(`listening ${server.address().port}`));
process.on("SIGTERM", () => process.exit(0));
