// The tablet page's wiring: the token, the STOMP connection to the store's
// calls, popups and lists from its events, the HTTP API, the sound and the
// screen. Loaded as a module by /tablet (and by /tablet.js, for pages
// from before the modules); a module, so no inline script is needed.
import { T, translate } from "./strings.js";
import { StompClient } from "./stomp.js";
import * as view from "./views.js";

const { $ } = view;
translate(document);

// The STOMP endpoint: the server writes its `stomp.path` into the page. A
// page without it (one kept from an older version) uses the default.
function stompPath() {
  const meta = document.querySelector('meta[name="bizcall-stomp-path"]');
  const path = meta ? meta.content : "";
  return path.startsWith("/") ? path : "/ws";
}
const STOMP_PATH = stompPath();

// ---- state -----------------------------------------------------------------
const TOKEN_KEY = "bizcall.token";
const RANK = { ringing: 0, answered: 1, missed: 2, completed: 2 };
const state = { token: "", store: "", calls: new Map(), popup: null, connectedOnce: false, downSince: 0,
                missed: new Map(), history: new Map(), sound: false, wakeLock: null,
                clockOffset: 0 };

// The server's clock minus this tablet's, in ms, from the Date header of API
// answers (to the second): popups expire by the server's clock, and an
// iPad's may be minutes off. Under 2 s it is noise and left at zero.
function learnClock(res) {
  const date = Date.parse(res.headers.get("Date") || "");
  if (isNaN(date)) return;
  const offset = date + 500 - Date.now();
  state.clockOffset = Math.abs(offset) < 2000 ? 0 : offset;
}
function serverNow() { return Date.now() + state.clockOffset; }

// A token in the URL fragment (the console's QR code): kept, and taken
// out of the address bar at once. Fragments never reach a server.
(function tokenFromFragment() {
  const m = /(?:^#|&)token=([^&]+)/.exec(location.hash);
  if (m) {
    try { localStorage.setItem(TOKEN_KEY, decodeURIComponent(m[1]).trim()); } catch (_) { /* private mode */ }
    history.replaceState(null, "", location.pathname + location.search);
  }
})();
state.token = localStorage.getItem(TOKEN_KEY) || "";

// ---- the connection ----------------------------------------------------------
const stomp = new StompClient({
  url: () => (location.protocol === "https:" ? "wss:" : "ws:") + "//" + location.host + STOMP_PATH,
  connectHeaders: () => ({ passcode: state.token }),
  onStatus: view.setState,
  onDrop() {
    if (state.connectedOnce && !state.downSince) { state.downSince = Date.now(); view.showOffline(state.downSince); }
  },
  onConnected(f) {
    state.store = f.headers["user-name"];
    view.setState("connected");
    const wasDown = state.downSince;
    state.downSince = 0;
    state.connectedOnce = true;
    view.hideOffline();
    view.showScreen(state.sound ? "board" : "sound");
    stomp.send("SUBSCRIBE", { id: "calls", destination: "/topic/call-store/" + state.store, ack: "client-individual" });
    loadStore();
    refresh(wasDown);
  },
  onMessage(f) {
    let ev;
    try { ev = JSON.parse(f.body); } catch (_) { return; }
    if (ev.type === "handled") onHandled(ev, f.headers.ack);
    else onCall(ev, f.headers.ack);
  },
  onError(f) {
    const msg = f.headers.message || "error";
    if (msg === "unauthorized") {
      signOut(T.refused(f.body || msg));
      view.setState("refused");
    }
  },
});

function connect(fresh) {
  if (state.token) stomp.start(fresh);
}

// ---- calls and popups --------------------------------------------------------
function onCall(ev, ackId) {
  const known = state.calls.get(ev.callId);
  if (known && RANK[ev.status] < RANK[known.status]) return;
  const call = Object.assign({}, known || {}, ev);
  if (ackId) call.ackId = ackId;
  state.calls.set(ev.callId, call);
  renderCalls();
  const fresh = new Date(ev.expiresAt).getTime() > serverNow();
  if (state.popup === ev.callId || (!known && fresh && !call.acknowledged)) showPopup(call);
}

// Another tablet took a call: close its popup here, and say who.
function onHandled(ev, ackId) {
  const call = state.calls.get(ev.callId) || { callId: ev.callId };
  call.acknowledged = true;
  call.acknowledgedBy = ev.by;
  state.calls.set(ev.callId, call);
  if (ackId) stomp.send("ACK", { id: ackId });
  if (state.popup === ev.callId) {
    closePopup();
    view.notice(T.takenNotice(view.fmtNumber(call.callerNumber || ""), ev.by));
  }
  state.missed.delete(ev.callId);
  renderCalls();
}

function renderCalls() {
  view.renderCalls(state.calls.values(), state.missed.values(), openReservation, callBack, state.onlyMissed);
}

// "다시 걸었음": this tablet called the customer back. Every tablet of the
// store sees it at its next look at the list (within seconds while there
// are missed calls to call back).
async function callBack(c) {
  try {
    const updated = await api("/calls/" + encodeURIComponent(c.callId) + "/callback", { method: "POST" });
    state.calls.set(c.callId, Object.assign({}, state.calls.get(c.callId) || {}, updated));
    state.missed.delete(c.callId);
  } catch (e) {
    view.notice(e.message || T.unknownError);
  }
  renderCalls();
}

function showPopup(call) {
  const isNew = state.popup !== call.callId;
  state.popup = call.callId;
  view.showPopup(call);
  if (isNew) {
    const known = state.history.get(call.callerNumber);
    view.renderHistory(known && known.callId === call.callId ? known : undefined);
    lookUp(call);
    chime();
  }
}

function closePopup() {
  view.closePopup();
  state.popup = null;
}

// The caller's history, fetched beside the popup: the popup never waits.
// Fetched again for every call (each counts the calls before it), so a
// regular who calls three times is not a first-time caller all day.
async function lookUp(call) {
  const known = state.history.get(call.callerNumber);
  if (!known || known.callId !== call.callId) {
    let h;
    try {
      const before = encodeURIComponent(call.startedAt);
      h = await api("/customers/" + encodeURIComponent(call.callerNumber) + "?before=" + before);
    } catch (_) {
      h = { failed: true };
    }
    state.history.set(call.callerNumber, Object.assign({ callId: call.callId }, h));
    if (state.popup !== call.callId) return;
  }
  view.renderHistory(state.history.get(call.callerNumber));
}

function acknowledge() {
  const call = state.calls.get(state.popup);
  if (call && call.ackId) stomp.send("ACK", { id: call.ackId });
  if (call) call.acknowledged = true;
  closePopup();
  renderCalls();
}

// The form, prefilled with the caller and, from their last reservation,
// the car and the service.
function openReservation(call) {
  const h = call && state.history.get(call.callerNumber);
  view.openReservation(call, h && h.lastReservation);
}

// ---- sound and the screen ----------------------------------------------------
let audio = null;
function chime() {
  if (!audio) return;
  try {
    const t = audio.currentTime;
    [880, 660].forEach((hz, i) => {
      const o = audio.createOscillator(), g = audio.createGain();
      o.frequency.value = hz; o.connect(g); g.connect(audio.destination);
      g.gain.setValueAtTime(0.0001, t + i * 0.25);
      g.gain.exponentialRampToValueAtTime(0.3, t + i * 0.25 + 0.02);
      g.gain.exponentialRampToValueAtTime(0.0001, t + i * 0.25 + 0.24);
      o.start(t + i * 0.25); o.stop(t + i * 0.25 + 0.25);
    });
  } catch (_) { /* no audio: the popup still shows */ }
}

// Browsers play sound only after a tap: one tap at sign-in unlocks it.
async function unlockSound() {
  try {
    audio = audio || new (window.AudioContext || window.webkitAudioContext)();
    if (audio.state === "suspended") await audio.resume();
    chime();
  } catch (_) { audio = null; }
  state.sound = true;
  document.body.dataset.sound = audio && audio.state === "running" ? "on" : "unavailable";
  keepAwake();
  view.showScreen("board");
}

// The screen stays on while the page shows (Screen Wake Lock, where the
// browser has it); taken again when the page comes back to the front.
async function keepAwake() {
  if (!("wakeLock" in navigator) || document.visibilityState !== "visible") return;
  try {
    state.wakeLock = await navigator.wakeLock.request("screen");
    document.body.dataset.wakeLock = "on";
    state.wakeLock.addEventListener("release", () => { document.body.dataset.wakeLock = "off"; });
  } catch (_) { document.body.dataset.wakeLock = "refused"; }
}
document.addEventListener("visibilitychange", () => {
  if (document.visibilityState === "visible" && state.sound) keepAwake();
});

// ---- HTTP API ----------------------------------------------------------------
async function api(path, opts) {
  const res = await fetch("/api/stores/" + encodeURIComponent(state.store) + path,
    Object.assign({ headers: { Authorization: "Bearer " + state.token, "Content-Type": "application/json" } }, opts || {}));
  learnClock(res);
  const body = await res.json().catch(() => ({}));
  if (!res.ok) throw Object.assign(new Error(body.error || res.statusText), { field: body.field });
  return body;
}

async function loadStore() {
  try {
    const s = await api("");
    view.showStoreName(s.name, true);
  } catch (_) { view.showStoreName(state.store); }
}

// `downSince`: when the connection dropped, if it did. Calls that came in
// meanwhile and nobody took are shown as missed calls.
async function refresh(downSince) {
  if (downSince) downSince += state.clockOffset; // on the server's clock
  try {
    // Today's calls; after a drop, from a minute before it as well, so a
    // call missed just before midnight (Korea time) is still found.
    let since = view.kstDay() + "T00:00:00+09:00";
    if (downSince && downSince - 60e3 < new Date(since).getTime()) since = new Date(downSince - 60e3).toISOString();
    const calls = await api("/calls?limit=500&since=" + encodeURIComponent(since));
    for (const c of calls.reverse()) {
      const known = state.calls.get(c.callId);
      state.calls.set(c.callId, Object.assign({}, c, known && known.ackId ? { ackId: known.ackId } : {}));
      const startedMs = new Date(c.startedAt).getTime();
      if (downSince && !known && !c.acknowledged && startedMs >= downSince - 60e3) state.missed.set(c.callId, c);
      if (c.acknowledged) state.missed.delete(c.callId);
    }
    renderCalls();
    // Today's and tomorrow's: a booking made late in the evening is
    // usually for the next morning.
    const res = (await api("/reservations?date=" + view.kstDay(0)))
      .concat(await api("/reservations?date=" + view.kstDay(1)));
    view.renderReservations(res);
  } catch (e) { /* shown again on the next refresh */ }
}

async function saveReservation(ev) {
  ev.preventDefault();
  const body = view.reservationBody(ev.target);
  try {
    const r = await api("/reservations", { method: "POST", body: JSON.stringify(body) });
    view.reservationMessage(T.saved(r.id));
    view.closeReservation();
    state.history.delete(body.customerNumber.replace(/[^0-9]/g, ""));
    refresh();
  } catch (e) {
    // The server's detail is in English; staff get the field in their words.
    view.reservationMessage(e.field ? T.invalid(T.fields[e.field] || e.field) : T.unknownError);
  }
}

function signOut(reason) {
  stomp.stop();
  localStorage.removeItem(TOKEN_KEY);
  state.token = "";
  state.connectedOnce = false; state.downSince = 0;
  view.hideOffline();
  closePopup();
  view.showScreen("signin");
  view.showStoreName("bizcall");
  view.showSignInError(reason);
  view.setState("signed-out");
}

// ---- controls ----------------------------------------------------------------
$("signin-form").onsubmit = (ev) => {
  ev.preventDefault();
  state.token = $("token").value.trim();
  localStorage.setItem(TOKEN_KEY, state.token);
  connect(true);
};
$("signout").onclick = () => signOut("");
$("sound-unlock").onclick = unlockSound;
$("ack").onclick = acknowledge;
$("reserve-open").onclick = () => { const c = state.calls.get(state.popup); acknowledge(); openReservation(c); };
$("new-reservation").onclick = () => openReservation(null);
$("reserve-cancel").onclick = view.closeReservation;
$("missed-clear").onclick = () => { state.missed.clear(); renderCalls(); };
$("calls-filter").onclick = () => { state.onlyMissed = !state.onlyMissed; renderCalls(); };
$("followups").onclick = () => { state.onlyMissed = true; renderCalls(); $("missed-section").scrollIntoView(); };
$("reservation").onsubmit = saveReservation;
window.addEventListener("online", () => { if (state.token) stomp.nudge(); });

view.tickClock();
setInterval(() => { view.tickClock(); view.tickOffline(state.downSince); }, 1000);
// Calls whose popup expired while the server's broker link was down are
// only in the call list: look again now and then.
// While missed calls wait to be called back, every 10 s: another tablet's
// "다시 걸었음" shows here within seconds.
let lastLook = 0;
setInterval(() => {
  const waiting = [...state.calls.values()].some(view.needsCallBack);
  if (!stomp.open || !state.store || Date.now() - lastLook < (waiting ? 10e3 : 60e3)) return;
  lastLook = Date.now();
  refresh();
}, 1000);

// The page shell stays available when the network blips (never the API).
if ("serviceWorker" in navigator) navigator.serviceWorker.register("/sw.js").catch(() => {});

view.setState("signed-out");
view.showScreen("signin");
renderCalls();
connect();
