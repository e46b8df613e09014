// A stock Socket.IO 4 server for the interop tests: answers `whoami` with its name and
// echoes `echo` through the ack. Prints "listening PORT" once bound on 127.0.0.1:0.
const http = require("http");
const { Server } = require("socket.io");

const name = process.argv[2] || "s";
const pingInterval = Number(process.argv[3] || 25000);
const server = http.createServer((req, res) => {
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
