// A stock SockJS server (websocket transport disabled) for the interop tests, prefix
// /echo: answers every message with `NAME:message`. Prints "listening PORT".
const http = require("http");
const sockjs = require("sockjs");

const name = process.argv[2] || "s";
const echo = sockjs.createServer({ websocket: false, log: () => {}, heartbeat_delay: 2000 });
echo.on("connection", (conn) => conn.on("data", (m) => conn.write(`${name}:${m}`)));
const server = http.createServer();
echo.installHandlers(server, { prefix: "/echo" });
server.listen(0, "127.0.0.1", () => console.log(`listening ${server.address().port}`));
process.on("SIGTERM", () => process.exit(0));
