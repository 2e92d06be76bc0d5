// What the tablet shows: formats (Korea time), the header, the screens, the
// offline banner, the popup, the call and reservation lists and the
// reservation form. These functions draw what they are given; the state
// and the server are main.js's.
import { T, LOCALE } from "./strings.js";

export const $ = (id) => document.getElementById(id);

// ---- formats: Korea time ---------------------------------------------------
const TZ = "Asia/Seoul";

export function fmtNumber(n) {
  if (!n) return "";
  if (n.startsWith("02") && n.length === 10) return "02-" + n.slice(2, 6) + "-" + n.slice(6);
  if (n.startsWith("02") && n.length === 9) return "02-" + n.slice(2, 5) + "-" + n.slice(5);
  if (n.length === 11) return n.slice(0, 3) + "-" + n.slice(3, 7) + "-" + n.slice(7);
  if (n.length === 10) return n.slice(0, 3) + "-" + n.slice(3, 6) + "-" + n.slice(6);
  if (n.length === 12 && n.startsWith("050")) return n.slice(0, 4) + "-" + n.slice(4, 8) + "-" + n.slice(8);
  return n;
}
const timeFmt = new Intl.DateTimeFormat(LOCALE, { timeZone: TZ, hour: "numeric", minute: "2-digit" });
const dateFmt = new Intl.DateTimeFormat(LOCALE, { timeZone: TZ, month: "long", day: "numeric", weekday: "short" });
const clockFmt = new Intl.DateTimeFormat(LOCALE, { timeZone: TZ, month: "long", day: "numeric", weekday: "short", hour: "numeric", minute: "2-digit" });
export const fmtTime = (iso) => (iso ? timeFmt.format(new Date(iso)) : "");
export const fmtDate = (iso) => (iso ? dateFmt.format(new Date(iso)) : "");
export const fmtStatus = (s) => T.status[s] || s;
function fmtDuration(ms) {
  const t = Math.max(0, Math.floor(ms / 1000));
  return T.duration(Math.floor(t / 3600), Math.floor((t % 3600) / 60), t % 60);
}
// A Korea-time date, `days` after today.
export function kstDay(days) {
  return new Date(Date.now() + 9 * 3600e3 + (days || 0) * 86400e3).toISOString().slice(0, 10);
}

// ---- header and screens ----------------------------------------------------
export function setState(s) { const el = $("state"); el.dataset.state = s; el.textContent = T.state[s] || s; }

export function tickClock() { $("clock").textContent = clockFmt.format(new Date()); }

// The store's name in the header, and with `inTitle` in the title too.
export function showStoreName(name, inTitle) {
  $("store-name").textContent = name;
  if (inTitle) document.title = name + " · bizcall";
}

// "signin", "sound" or "board".
export function showScreen(name) {
  $("signin").hidden = name !== "signin";
  $("sound").hidden = name !== "sound";
  $("board").hidden = name !== "board";
  $("signout").hidden = name === "signin";
}

export function showSignInError(text) { $("signin-error").textContent = text || ""; }

// ---- offline banner --------------------------------------------------------
export function showOffline(downSince) {
  $("offline").hidden = false;
  document.body.classList.add("is-offline");
  tickOffline(downSince);
}
export function hideOffline() {
  $("offline").hidden = true;
  document.body.classList.remove("is-offline");
}
export function tickOffline(downSince) {
  if (downSince) $("offline-since").textContent = T.offlineFor(fmtDuration(Date.now() - downSince));
}

let noticeTimer = null;
export function notice(text) {
  const el = $("notice");
  el.textContent = text;
  el.hidden = false;
  clearTimeout(noticeTimer);
  noticeTimer = setTimeout(() => { el.hidden = true; }, 8000);
}

// ---- the popup -------------------------------------------------------------
export function showPopup(call) {
  $("popup-number").textContent = fmtNumber(call.callerNumber);
  $("popup-status").textContent = fmtStatus(call.status);
  $("popup-status").className = "status " + call.status;
  $("popup-time").textContent = fmtTime(call.startedAt);
  $("popup").hidden = false;
}

export function closePopup() { $("popup").hidden = true; }

// The caller's history under the number: `h` is undefined while it loads,
// `{ failed: true }` when it could not be had.
export function renderHistory(h) {
  const el = $("popup-history");
  el.dataset.state = !h ? "loading" : h.failed ? "failed" : "loaded";
  if (!h) { el.textContent = T.historyLoading; return; }
  if (h.failed) { el.textContent = T.historyFailed; return; }
  const lines = [];
  if (h.calls > 0) lines.push(T.historyCalls(h.calls) + (h.lastCallAt ? " · " + T.historyLast(fmtDate(h.lastCallAt)) : ""));
  const r = h.lastReservation;
  if (r) lines.push(T.historyReservation(fmtDate(r.reservedAt), [r.carNumber, r.carModel, r.service].filter(Boolean).join(" · ")));
  if (!lines.length) lines.push(T.historyNone);
  el.replaceChildren(...lines.map((t) => { const d = document.createElement("div"); d.textContent = t; return d; }));
}

// ---- lists -----------------------------------------------------------------
// A missed call nobody has called back yet.
export const needsCallBack = (c) => c.status === "missed" && !c.calledBackAt;

function callItem(c, missed, onPick, onCallBack) {
  const li = document.createElement("li");
  li.dataset.callId = c.callId;
  const left = document.createElement("span");
  const num = document.createElement("span"); num.className = "num"; num.textContent = fmtNumber(c.callerNumber);
  const info = document.createElement("span"); info.className = "muted";
  const who = c.acknowledged ? " · " + (c.acknowledgedBy ? T.takenBy(c.acknowledgedBy) : T.acknowledged) : "";
  const back = c.calledBackAt ? " · " + T.calledBack(c.calledBackBy, fmtTime(c.calledBackAt)) : "";
  info.textContent = " " + fmtTime(c.startedAt) + who + back;
  left.append(num, info);
  const st = document.createElement("span");
  st.className = "status " + (missed ? "missed" : c.status);
  st.textContent = missed ? T.missedBadge : fmtStatus(c.status);
  li.append(left, st);
  if (missed && onCallBack && !c.calledBackAt) {
    const b = document.createElement("button");
    b.className = "small call-back";
    b.textContent = T.callBack;
    b.onclick = (e) => { e.stopPropagation(); onCallBack(c); };
    b.onkeydown = (e) => e.stopPropagation();
    li.append(b);
  }
  li.tabIndex = 0;
  li.onclick = () => onPick(c);
  li.onkeydown = (e) => { if (e.key === "Enter") onPick(c); };
  return li;
}

const newestFirst = (a, b) => (a.startedAt < b.startedAt ? 1 : -1);

// Today's calls and the missed ones, newest first; `onPick(call)` when one
// is tapped.
// The missed list holds the calls missed while this tablet was away and
// every missed call nobody has called back; the header counts the latter
// until each is called back. `onlyMissed` narrows the day's list to them.
export function renderCalls(calls, missedCalls, onPick, onCallBack, onlyMissed) {
  const all = [...calls].filter((c) => c.callerNumber);
  const list = all.filter((c) => !onlyMissed || needsCallBack(c)).sort(newestFirst);
  $("calls").replaceChildren(...list.map((c) => callItem(c, false, onPick)));
  $("calls-empty").hidden = list.length > 0;
  const byId = new Map([...missedCalls].map((c) => [c.callId, c]));
  for (const c of all) if (needsCallBack(c)) byId.set(c.callId, c);
  const missed = [...byId.values()].sort(newestFirst);
  $("missed").replaceChildren(...missed.map((c) => callItem(c, true, onPick, onCallBack)));
  $("missed-count").textContent = missed.length ? String(missed.length) : "";
  $("missed-section").hidden = missed.length === 0;
  const open = all.filter(needsCallBack).length;
  $("followups").hidden = open === 0;
  $("followups").textContent = T.followups(open);
  $("calls-filter").setAttribute("aria-pressed", String(!!onlyMissed));
  $("calls-filter").textContent = onlyMissed ? T.filterAll : T.filterMissed;
}

export function renderReservations(list) {
  $("reservations").replaceChildren(...list.map((r) => {
    const li = document.createElement("li");
    const a = document.createElement("span"); a.className = "num"; a.textContent = fmtNumber(r.customerNumber);
    const b = document.createElement("span"); b.className = "muted";
    const day = r.reservedAt.slice(0, 10) === kstDay(0) ? "" : T.tomorrow + " ";
    b.textContent = day + fmtTime(r.reservedAt) + " " + [r.service, r.carModel, r.carNumber].filter(Boolean).join(" · ");
    li.append(a, b);
    return li;
  }));
  $("reservations-empty").hidden = list.length > 0;
}

// ---- the reservation form --------------------------------------------------
// Opens the form, prefilled with the caller and, from `last` (their last
// reservation), the car and the service; the time an hour from now.
export function openReservation(call, last) {
  const form = $("reservation");
  form.reset();
  form.callId.value = call ? call.callId : "";
  form.customerNumber.value = call ? call.callerNumber : "";
  if (last) {
    form.carNumber.value = last.carNumber || "";
    form.carModel.value = last.carModel || "";
    form.service.value = last.service || "";
  }
  const inOneHour = new Date(Date.now() + 9 * 3600e3 + 3600e3).toISOString().slice(0, 16);
  form.reservedAt.value = inOneHour;
  $("message").textContent = "";
  $("reserve").hidden = false;
  form.carNumber.focus();
}

export function closeReservation() { $("reserve").hidden = true; }

// The form's fields as the API takes them (the time is Korea time).
export function reservationBody(f) {
  const body = {
    customerNumber: f.customerNumber.value, reservedAt: f.reservedAt.value + ":00+09:00",
    carNumber: f.carNumber.value, carModel: f.carModel.value, service: f.service.value, memo: f.memo.value,
  };
  if (f.callId.value) body.callId = f.callId.value;
  return body;
}

export function reservationMessage(text) { $("message").textContent = text; }
