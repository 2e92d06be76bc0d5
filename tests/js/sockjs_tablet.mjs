// The Spring service's tablet page, in Node: sockjs-client 1.x and
// @stomp/stompjs exactly as that page uses them (see the marked block),
// with the one-line token change, for a chosen list of SockJS transports.
// Driven by tests/sockjs_clients.rs through stdout lines:
//   CONNECTED <n>                   the n-th STOMP connection is up
//   READY                           subscribed (a receipt proves the order)
//   POPUP <fromNumber> <stardDate> <status> <transport>
//   ERROR <message>                 an ERROR frame from the server
// Usage: node sockjs_tablet.mjs <sockjs-url> <token> <slug> <transports|default>
import SockJS from "sockjs-client";
import { Client } from "@stomp/stompjs";

const [API_URL, token, slug, list] = process.argv.slice(2);
const options = list === "default" ? {} : { transports: list.split(",") };
const openReservationModal = (fromNumber, stardDate, event, transport) =>
  console.log(`POPUP ${fromNumber} ${stardDate} ${event.status} ${transport}`);
let connections = 0;
let socket;

// ---- the page's code (the SockJS is made in the factory so that stompjs
// can reconnect; `passcode` is the one-line token change) ----
const client = new Client({
  webSocketFactory: () => (socket = new SockJS(API_URL, null, options)),
  connectHeaders: { passcode: token },
  onConnect: () => {
    client.subscribe(`/ws/v1/topic/call-store/${slug}`, (m) => {
      const { fromNumber, stardDate } = JSON.parse(m.body);
      openReservationModal(fromNumber, stardDate, JSON.parse(m.body), socket.transport);
    });
    // ---- test harness: a receipt after the SUBSCRIBE proves it arrived ----
    connections += 1;
    console.log(`CONNECTED ${connections}`);
    client.watchForReceipt(`ready-${connections}`, () => console.log("READY"));
    client.ack("none", "none", { receipt: `ready-${connections}` });
  },
});
client.reconnectDelay = 500;
client.onStompError = (frame) => console.log("ERROR " + frame.headers.message);
client.activate();
setTimeout(() => { console.log("FAIL timed out"); process.exit(1); }, 120000).unref();
