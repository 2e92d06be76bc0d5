// One Socket.IO instance with the Redis adapter. POST /publish emits the
// JSON body to the room named by its `store`, on every instance.
// Usage: node server.mjs <port>
import { createServer } from "node:http";
import { Server } from "socket.io";
import { createAdapter } from "@socket.io/redis-adapter";
import { createClient } from "redis";

const port = Number(process.argv[2]);
const pub = createClient({ url: "redis://127.0.0.1:6379" });
const sub = pub.duplicate();
await Promise.all([pub.connect(), sub.connect()]);

const http = createServer((req, res) => {
  if (req.method === "POST" && req.url === "/publish") {
    let body = "";
    req.on("data", (c) => { body += c; });
    req.on("end", () => {
      try {
        const event = JSON.parse(body);
        io.to(event.store).emit("call", event);
        res.end("OK");
      } catch {
        res.writeHead(400).end();
      }
    });
    return;
  }
  res.writeHead(404).end();
});
const io = new Server(http, { adapter: createAdapter(pub, sub), transports: ["websocket"] });
io.on("connection", (socket) => socket.join(String(socket.handshake.query.store)));
http.listen(port, "127.0.0.1", () => console.log("READY " + process.pid));
