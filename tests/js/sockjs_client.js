// Stock sockjs-client through the balancer with one transport. Usage:
//   node sockjs_client.js URL TRANSPORT SESSIONS MESSAGES
// Prints one JSON line: per session, the transport it used, the servers that answered
// and how many answers came back.
const SockJS = require("sockjs-client");

const [url, transport, sessions, messages] = [process.argv[2], process.argv[3], Number(process.argv[4]), Number(process.argv[5])];

function one() {
  return new Promise((resolve) => {
    const sock = new SockJS(url, null, { transports: [transport], timeout: 5000 });
    const r = { transport: null, servers: [], answers: 0, errors: [] };
    let sent = 0;
    const next = () => {
      if (sent < messages) sock.send(`m${sent++}`);
      else {
        sock.close();
        resolve(r);
      }
    };
    sock.onopen = () => {
      r.transport = sock.transport;
      next();
    };
    sock.onmessage = (e) => {
      const [server] = String(e.data).split(":");
      if (!r.servers.includes(server)) r.servers.push(server);
      r.answers += 1;
      next();
    };
    sock.onclose = (e) => {
      if (sent < messages) {
        r.errors.push(`closed ${e.code} ${e.reason}`);
        resolve(r);
      }
    };
    setTimeout(() => {
      r.errors.push("timeout");
      resolve(r);
    }, 20000);
  });
}

Promise.all(Array.from({ length: sessions }, one)).then((all) => {
  console.log(JSON.stringify(all));
  process.exit(0);
});
