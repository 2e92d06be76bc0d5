// A tablet on @stomp/stompjs over the `ws` package, as a third-party client
// would be. Driven by tests/real_clients.rs through stdout lines:
//   READY              subscribed (the server sent the RECEIPT)
//   MESSAGE <json>     a popup arrived (then it is ACKed)
//   ACKED              the ACK was sent and a DISCONNECT receipt came back
// Usage: node stompjs_tablet.mjs <ws-url> <token> <store-slug>
import { Client } from "@stomp/stompjs";
import WebSocket from "ws";

const [url, token, slug] = process.argv.slice(2);
const fail = (why) => { console.log("FAIL " + why); process.exit(1); };
setTimeout(() => fail("timed out"), 60000).unref();

const client = new Client({
  webSocketFactory: () => new WebSocket(url, ["v12.stomp", "v11.stomp", "v10.stomp"]),
  connectHeaders: { passcode: token },
  reconnectDelay: 0,
  onStompError: (frame) => fail("ERROR " + frame.headers.message),
  onWebSocketError: (e) => fail("websocket " + e.message),
});

client.onConnect = (frame) => {
  if (frame.headers["user-name"] !== slug) fail("user-name " + frame.headers["user-name"]);
  client.watchForReceipt("sub-receipt", () => console.log("READY"));
  client.subscribe(`/topic/call-store/${slug}`, async (message) => {
    console.log("MESSAGE " + message.body);
    message.ack();
    await client.deactivate();
    console.log("ACKED");
    process.exit(0);
  }, { ack: "client-individual", receipt: "sub-receipt" });
};
client.activate();
