// Stock socket.io-client 4 through the balancer. Usage:
//   node sio_client.js URL CLIENTS MODE MILLIS
// MODE `default`: default options (polling first, then the upgrade), withCredentials so
// Node keeps the balancer's cookie like a browser. MODE `polling`: transports ['polling'],
// held for MILLIS. Prints one JSON line: per client, the servers that answered its acks,
// its final transport, whether it upgraded, disconnects and errors.
const { io } = require("socket.io-client");

const [url, count, mode, millis] = [process.argv[2], Number(process.argv[3]), process.argv[4], Number(process.argv[5])];

function one() {
  return new Promise((resolve) => {
    const opts = { withCredentials: true, reconnection: false, timeout: 5000 };
    if (mode === "polling") opts.transports = ["polling"];
    const socket = io(url, opts);
    const r = { servers: [], transport: null, upgraded: false, disconnects: 0, errors: [] };
    socket.io.engine.on("upgrade", () => (r.upgraded = true));
    socket.on("connect_error", (e) => r.errors.push(String(e && e.message)));
    socket.on("disconnect", (why) => {
      if (why === "io client disconnect") return; // our own close at the end
      r.disconnects += 1;
      r.errors.push(`disconnect: ${why}`);
    });
    const ask = () =>
      new Promise((res) => socket.timeout(3000).emit("whoami", (err, name) => {
        if (err) r.errors.push(`ack: ${err.message}`);
        else if (!r.servers.includes(name)) r.servers.push(name);
        res();
      }));
    socket.on("connect", async () => {
      const end = Date.now() + millis;
      await ask();
      while (Date.now() < end) {
        await new Promise((res) => setTimeout(res, 250));
        await ask();
      }
      r.transport = socket.io.engine.transport.name;
      socket.close();
      resolve(r);
    });
    setTimeout(() => {
      r.errors.push("timeout");
      r.transport = socket.io.engine && socket.io.engine.transport && socket.io.engine.transport.name;
      socket.close();
      resolve(r);
    }, millis + 15000);
  });
}

Promise.all(Array.from({ length: count }, one)).then((all) => {
  console.log(JSON.stringify(all));
  process.exit(0);
});
