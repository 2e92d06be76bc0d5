// Feeds and measures the Socket.IO peer the way bizcall-load measures
// bizcall: N clients on instance B (rooms = stores), events posted at a
// steady rate to instance A, latency from post to receipt, memory of B per
// idle connected client from /proc. Writes socketio.json and socketio.hist
// in bizcall-load's formats.
// Usage: node driver.mjs <b-url> <a-url> <clients> <stores> <rate> <seconds> <pid-b> <out-dir>
import { io } from "socket.io-client";
import { readFileSync, writeFileSync, mkdirSync } from "node:fs";

const [bUrl, aUrl, nClients, nStores, rate, seconds, pidB, out] = process.argv.slice(2);
const clients = Number(nClients), stores = Number(nStores);
const rss = () => Number(/VmRSS:\s+(\d+)/.exec(readFileSync(`/proc/${pidB}/status`, "utf8"))[1]);

const sent = new Map();
const seen = new Set();
const lat = [];
let duplicates = 0;
const before = rss();
const t0 = performance.now();
const sockets = [];
for (let i = 0; i < clients; i += 1) {
  const store = `store-${i % stores}`;
  const s = io(bUrl, { transports: ["websocket"], query: { store }, reconnection: false, forceNew: true });
  s.on("call", (ev) => {
    const at = performance.now();
    const key = i + ":" + ev.callId;
    if (seen.has(key)) { duplicates += 1; return; }
    seen.add(key);
    const s0 = sent.get(ev.callId);
    if (s0 !== undefined) lat.push((at - s0) * 1000);
  });
  sockets.push(new Promise((resolve) => { s.on("connect", resolve); s.on("connect_error", resolve); }));
  if (i % 200 === 199) await Promise.all(sockets.slice(-200));
}
await Promise.all(sockets);
const connectSecs = (performance.now() - t0) / 1000;
await new Promise((r) => setTimeout(r, 2000));
const after = rss();

const total = Number(rate) * Number(seconds);
let errors = 0;
const start = performance.now();
const started = Date.now();
for (let n = 0; n < total; n += 1) {
  const due = start + (n * 1000) / Number(rate);
  const wait = due - performance.now();
  if (wait > 0) await new Promise((r) => setTimeout(r, wait));
  const callId = "sio" + n;
  const now = new Date();
  const event = { type: "call", callId, store: `store-${n % stores}`, status: "ringing",
    callerNumber: "01012345678", virtualNumber: "05012345678", startedAt: now.toISOString(),
    answeredAt: null, endedAt: null, publishedAt: now.toISOString(), expiresAt: new Date(+now + 30000).toISOString() };
  sent.set(callId, performance.now());
  fetch(aUrl + "/publish", { method: "POST", body: JSON.stringify(event) }).then((r) => { if (!r.ok) errors += 1; }, () => { errors += 1; });
}
const sendingSecs = (performance.now() - start) / 1000;
const perStore = Math.ceil(clients / stores);
const expected = total * perStore;
const drainUntil = Date.now() + 5000;
while (seen.size < expected && Date.now() < drainUntil) await new Promise((r) => setTimeout(r, 100));

lat.sort((a, b) => a - b);
const q = (p) => (lat.length ? lat[Math.min(lat.length - 1, Math.floor((lat.length - 1) * p))] : 0);
const result = {
  name: "Socket.IO + Redis adapter", count: lat.length, seconds: sendingSecs,
  throughput_per_s: lat.length / sendingSecs, p50_ms: q(0.5) / 1000, p90_ms: q(0.9) / 1000, p99_ms: q(0.99) / 1000,
  p999_ms: q(0.999) / 1000, max_ms: q(1) / 1000, tablets: clients, rate: Number(rate), errors,
  expected_deliveries: expected, lost: Math.max(0, expected - seen.size), duplicates,
  connect_per_s: clients / connectSecs, rss_per_idle_tablet_kib: (after - before) / clients,
};
mkdirSync(out, { recursive: true });
writeFileSync(`${out}/socketio.json`, JSON.stringify(result, null, 2));
let hist = "";
for (let i = 0; i <= 400; i += 1) {
  const p = 1 - 10 ** (-i / 100);
  hist += `${p} ${Math.round(q(p))}\n`;
}
writeFileSync(`${out}/socketio.hist`, hist);
console.log(JSON.stringify(result));
process.exit(0);
