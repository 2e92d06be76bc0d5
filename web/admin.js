// The operator console: everything it shows comes from the admin API
// (docs/http-api.md, "Admin endpoints") with the admin token as a bearer.
// The token is kept in sessionStorage (gone with the tab). Nothing is put
// in the page as HTML: text only, so a store name cannot inject markup.
// Numbers are shown as the tablet page shows them (010-1234-5678).
import { fmtNumber } from "/tablet/views.js";
import { T, translatePage } from "/admin-strings.js";

const $ = (sel) => document.querySelector(sel);
const state = { token: sessionStorage.getItem("bizcall-admin") || "", stores: [], store: null, call: null, abort: null };

function el(tag, text, attrs) {
  const e = document.createElement(tag);
  if (text !== undefined && text !== null) e.textContent = String(text);
  for (const [k, v] of Object.entries(attrs || {})) e.setAttribute(k, v);
  return e;
}

const kst = new Intl.DateTimeFormat("ko-KR", {
  timeZone: "Asia/Seoul", year: "numeric", month: "2-digit", day: "2-digit",
  hour: "2-digit", minute: "2-digit", second: "2-digit", hour12: false,
});
const when = (iso) => (iso ? kst.format(new Date(iso)) : "—");

class ApiError extends Error {
  constructor(status, body) {
    super((body && body.error) || "HTTP " + status);
    this.status = status;
  }
}

async function api(method, path, body) {
  const init = { method, headers: { Authorization: "Bearer " + state.token } };
  if (body !== undefined) {
    init.headers["Content-Type"] = "application/json";
    init.body = JSON.stringify(body);
  }
  const r = await fetch(path, init);
  const json = await r.json().catch(() => null);
  if (r.status === 401) signOut(T.tokenRefused);
  if (!r.ok) throw new ApiError(r.status, json);
  return json;
}

// ---- sign-in ---------------------------------------------------------

function signOut(why) {
  state.token = "";
  sessionStorage.removeItem("bizcall-admin");
  if (state.abort) state.abort.abort();
  $("#console").hidden = true;
  $("#signin").hidden = false;
  $("#signout").hidden = true;
  $("#signin-error").textContent = why || "";
  setLive("off", T.signedOut);
}

async function signIn(token) {
  state.token = token;
  try {
    await loadStores();
  } catch (e) {
    if (state.token) signOut(e.status === 404 ? T.adminOff : e.message);
    return;
  }
  sessionStorage.setItem("bizcall-admin", token);
  $("#signin").hidden = true;
  $("#console").hidden = false;
  $("#signout").hidden = false;
  listen();
}

// ---- stores ----------------------------------------------------------

async function loadStores() {
  state.stores = await api("GET", "/api/admin/stores");
  const body = $("#store-table tbody");
  body.replaceChildren();
  for (const s of state.stores) {
    const tr = el("tr", null, { "data-slug": s.slug, class: "pick" });
    if (state.store === s.slug) tr.setAttribute("aria-current", "true");
    const name = el("td");
    const open = el("button", s.name, { type: "button", class: "row-link" });
    open.append(el("span", " (" + s.slug + ")", { class: "muted" }));
    open.addEventListener("click", () => openStore(s.slug));
    name.append(open);
    tr.append(name, el("td", s.numbers.map(fmtNumber).join(", ") || "—"));
    const n = s.tabletsOnline + s.anonymousTabletsOnline;
    tr.append(el("td", n, { class: n > 0 ? "online tablets" : "offline tablets" }));
    tr.append(el("td", when(s.lastCallAt)));
    body.append(tr);
  }
  $("#stores-empty").hidden = state.stores.length > 0;
  const pick = $("#f-store");
  const chosen = pick.value;
  pick.replaceChildren(el("option", T.allStores, { value: "" }));
  for (const s of state.stores) pick.append(el("option", s.name + " (" + s.slug + ")", { value: s.slug }));
  pick.value = chosen;
}

async function openStore(slug) {
  state.store = slug;
  $("#issued").hidden = true;
  $("#detail-error").textContent = "";
  for (const tr of document.querySelectorAll("#store-table tbody tr")) {
    tr.toggleAttribute("aria-current", tr.dataset.slug === slug);
  }
  await showStore();
  $("#store-detail").hidden = false;
}

async function showStore() {
  const slug = state.store;
  if (!slug) return;
  let s;
  try {
    s = await api("GET", "/api/admin/stores/" + encodeURIComponent(slug));
  } catch (e) {
    if (e.status === 404) { $("#store-detail").hidden = true; state.store = null; return; }
    throw e;
  }
  $("#detail-title").textContent = s.name + " (" + s.slug + ")";
  if (document.activeElement !== $("#rename")) $("#rename").value = s.name;
  $("#anonymous-tablets").checked = !!s.anonymousTablets;
  const list = $("#numbers");
  list.replaceChildren();
  for (const n of s.numbers) {
    const li = el("li", fmtNumber(n));
    const rm = el("button", T.remove, { type: "button", "aria-label": T.removeNumber(fmtNumber(n)) });
    rm.addEventListener("click", () => act(() => api("DELETE", "/api/admin/stores/" + encodeURIComponent(slug) + "/numbers/" + encodeURIComponent(n))));
    li.append(rm);
    list.append(li);
  }
  if (!s.numbers.length) list.append(el("li", T.noNumbers, { class: "muted" }));
  await showTokens();
}

async function showTokens() {
  const slug = state.store;
  const tokens = await api("GET", "/api/admin/stores/" + encodeURIComponent(slug) + "/tokens");
  const body = $("#token-table tbody");
  body.replaceChildren();
  for (const t of tokens) {
    const tr = el("tr", null, { "data-token": t.id });
    tr.append(el("td", t.label || T.noLabel), el("td", when(t.createdAt)), el("td", when(t.lastSeenAt)));
    if (t.revokedAt) {
      tr.append(el("td", T.revoked(when(t.revokedAt)), { class: "offline online-now" }), el("td"));
    } else {
      const where = t.instances.map((i) => i.name).join(", ");
      tr.append(el("td", t.online > 0 ? t.online + " (" + where + ")" : "0", { class: (t.online > 0 ? "online" : "offline") + " online-now" }));
      const cell = el("td");
      const rv = el("button", T.revoke, { type: "button", "aria-label": T.revokeToken(t.label || t.id) });
      rv.addEventListener("click", () => {
        if (confirm(T.confirmRevoke(t.label || t.id))) {
          act(() => api("DELETE", "/api/admin/tokens/" + encodeURIComponent(t.id)));
        }
      });
      cell.append(rv);
      tr.append(cell);
    }
    body.append(tr);
  }
}

// Runs a change, shows its error, and refreshes what it touched.
async function act(change, errorBox) {
  const box = errorBox || $("#detail-error");
  box.textContent = "";
  try {
    const out = await change();
    await loadStores();
    await showStore();
    return out;
  } catch (e) {
    box.textContent = e.message;
    return null;
  }
}

// ---- calls and trails --------------------------------------------------

async function loadCalls() {
  const f = new FormData($("#call-filter"));
  const q = new URLSearchParams();
  for (const [k, v] of f) if (v) q.set(k, v);
  const calls = await api("GET", "/api/admin/calls?" + q);
  const names = Object.fromEntries(state.stores.map((s) => [s.slug, s.name]));
  const body = $("#call-table tbody");
  body.replaceChildren();
  for (const c of calls) {
    const tr = el("tr", null, { "data-call": c.callId, class: "pick" });
    if (state.call === c.callId) tr.setAttribute("aria-current", "true");
    const open = el("button", when(c.startedAt), { type: "button", class: "row-link" });
    open.addEventListener("click", () => openCall(c.callId));
    const first = el("td");
    first.append(open);
    tr.append(first, el("td", names[c.store] || c.store), el("td", fmtNumber(c.callerNumber)), el("td", T.status[c.status] || c.status, { class: "status" }), el("td", c.acknowledged ? when(c.acknowledgedAt) : "—"),
      el("td", c.calledBackAt ? (c.calledBackBy || "") + " " + when(c.calledBackAt) : c.status === "missed" ? T.notCalledBack : "—"));
    body.append(tr);
  }
  $("#calls-empty").hidden = calls.length > 0;
}


async function openCall(id) {
  state.call = id;
  for (const tr of document.querySelectorAll("#call-table tbody tr")) {
    tr.toggleAttribute("aria-current", tr.dataset.call === id);
  }
  await showTrail();
  $("#trail").hidden = false;
}

async function showTrail() {
  if (!state.call) return;
  const t = await api("GET", "/api/admin/calls/" + encodeURIComponent(state.call));
  const tr = t.trail;
  $("#trail-title").textContent = T.trailTitle(fmtNumber(t.call.callerNumber), t.call.store, t.call.callId);
  const v = $("#trail-verdict");
  v.dataset.verdict = tr.verdict;
  v.textContent = T.verdict[tr.verdict] || tr.verdict;
  const steps = $("#trail-steps");
  steps.replaceChildren();
  const step = (text, cls) => steps.append(el("li", text, { class: cls || "" }));
  for (const i of tr.instances.filter((i) => i.receivedAt)) {
    step(T.receivedBy(i.name || i.instance, when(i.receivedAt)), "received");
  }
  step(T.storedAt(when(tr.stored)));
  const pub = tr.instances.find((i) => i.publishedAt);
  const at = pub ? T.at(when(pub.publishedAt)) : "";
  if (tr.bus === "local") {
    step(tr.published ? T.localPublished(at) : T.localPending, "published");
  } else {
    step(tr.published ? T.amqpPublished(at) : T.amqpPending, "published");
  }
  for (const i of tr.instances.filter((i) => i.outcome !== "received")) {
    let text = (i.name || i.instance) + ": " + (T.outcome[i.outcome] || i.outcome);
    if (i.outcome === "delivered") {
      const labels = i.shownOn.map((s) => s.label || s.tokenId).join(", ");
      text += " " + T.reached(i.tablets, when(i.reachedAt), labels);
    } else {
      text += T.at(when(i.reachedAt));
    }
    if (!i.alive) text += T.gone;
    step(text, "instance " + i.outcome);
  }
  if (tr.firstAck) step(T.firstAck(tr.firstAck.label || tr.firstAck.tokenId, when(tr.firstAck.at)), "ack");
  else step(T.notAcked, "ack muted");
}

// ---- live updates -----------------------------------------------------

function setLive(s, text) {
  const l = $("#live");
  l.dataset.state = s;
  l.textContent = text;
}

let refresh = null;
function soon(what) {
  // Many events in a burst become one refresh.
  refresh = refresh || new Set();
  refresh.add(what);
  setTimeout(async () => {
    const todo = refresh;
    refresh = null;
    if (!todo) return;
    try {
      if (todo.has("stores")) { await loadStores(); await showStore(); }
      if (todo.has("calls") && !$("#calls").hidden) { await loadCalls(); await showTrail(); }
    } catch (e) { /* shown on the next user action */ }
  }, 300);
}

// Server-sent events read with fetch, which can send the Authorization
// header (EventSource cannot). Reconnects with backoff.
async function listen() {
  let backoff = 1000;
  const ctl = new AbortController();
  state.abort = ctl;
  while (!ctl.signal.aborted && state.token) {
    try {
      const r = await fetch("/api/admin/events", { headers: { Authorization: "Bearer " + state.token }, signal: ctl.signal });
      if (r.status === 401) { signOut(T.tokenRefused); return; }
      if (!r.ok) throw new Error("HTTP " + r.status);
      setLive("live", T.live);
      backoff = 1000;
      const reader = r.body.pipeThrough(new TextDecoderStream()).getReader();
      let buf = "";
      for (;;) {
        const { value, done } = await reader.read();
        if (done) break;
        buf += value;
        let cut;
        while ((cut = buf.indexOf("\n\n")) >= 0) {
          const block = buf.slice(0, cut);
          buf = buf.slice(cut + 2);
          const ev = /^event: (.*)$/m.exec(block);
          if (!ev) continue;
          if (ev[1] === "call") { soon("calls"); soon("stores"); }
          if (ev[1] === "presence") soon("stores");
        }
      }
    } catch (e) {
      if (ctl.signal.aborted) return;
    }
    setLive("reconnecting", T.reconnecting);
    await new Promise((ok) => setTimeout(ok, backoff + Math.random() * 500));
    backoff = Math.min(backoff * 2, 30000);
  }
}

// ---- wiring -----------------------------------------------------------

function tab(name) {
  for (const b of document.querySelectorAll(".tab")) b.setAttribute("aria-pressed", String(b.dataset.tab === name));
  $("#stores").hidden = name !== "stores";
  $("#calls").hidden = name !== "calls";
  if (name === "calls") loadCalls().catch(() => {});
}

document.addEventListener("DOMContentLoaded", () => {
  translatePage();
  $("#signin-form").addEventListener("submit", (e) => {
    e.preventDefault();
    signIn($("#admin-token").value.trim());
  });
  $("#signout").addEventListener("click", () => signOut());
  for (const b of document.querySelectorAll(".tab")) b.addEventListener("click", () => tab(b.dataset.tab));

  $("#store-form").addEventListener("submit", async (e) => {
    e.preventDefault();
    const f = new FormData(e.target);
    const numbers = String(f.get("numbers") || "").split(",").map((s) => s.trim()).filter(Boolean);
    const box = $("#store-error");
    box.textContent = "";
    try {
      const s = await api("POST", "/api/admin/stores", { slug: f.get("slug"), name: f.get("name"), numbers });
      e.target.reset();
      await loadStores();
      await openStore(s.slug);
    } catch (err) {
      box.textContent = err.message;
    }
  });
  $("#rename-form").addEventListener("submit", (e) => {
    e.preventDefault();
    const name = $("#rename").value;
    act(() => api("PATCH", "/api/admin/stores/" + encodeURIComponent(state.store), { name }));
  });
  $("#anonymous-tablets").addEventListener("change", (e) => {
    const anonymousTablets = e.target.checked;
    act(() => api("PATCH", "/api/admin/stores/" + encodeURIComponent(state.store), { anonymousTablets }));
  });
  $("#number-form").addEventListener("submit", async (e) => {
    e.preventDefault();
    const number = $("#new-number").value;
    if (await act(() => api("POST", "/api/admin/stores/" + encodeURIComponent(state.store) + "/numbers", { number }))) {
      $("#new-number").value = "";
    }
  });
  $("#token-form").addEventListener("submit", async (e) => {
    e.preventDefault();
    const label = $("#token-label").value;
    const t = await act(() => api("POST", "/api/admin/stores/" + encodeURIComponent(state.store) + "/tokens", { label, base: location.origin }));
    if (!t) return;
    $("#token-label").value = "";
    $("#issued-token").textContent = t.token;
    $("#issued-qr").src = "data:image/svg+xml;base64," + btoa(t.qrSvg);
    $("#issued").hidden = false;
    $("#issued-done").focus();
  });
  $("#issued-done").addEventListener("click", () => {
    $("#issued-token").textContent = "";
    $("#issued-qr").removeAttribute("src");
    $("#issued").hidden = true;
  });
  $("#remove-store").addEventListener("click", async () => {
    const slug = state.store;
    try {
      const s = await api("GET", "/api/admin/stores/" + encodeURIComponent(slug));
      const r = s.removal;
      const online = s.tabletsOnline + s.anonymousTabletsOnline;
      const text = T.confirmRemove(s.name, slug, r, online);
      if (!confirm(text)) return;
      await api("DELETE", "/api/admin/stores/" + encodeURIComponent(slug));
      state.store = null;
      $("#store-detail").hidden = true;
      await loadStores();
    } catch (e) {
      $("#detail-error").textContent = e.message;
    }
  });
  $("#call-filter").addEventListener("submit", (e) => {
    e.preventDefault();
    loadCalls().catch(() => {});
  });
  // An ACK is not a call event: an open trail still waiting for one is
  // looked at again every few seconds.
  setInterval(() => {
    const v = $("#trail-verdict").dataset.verdict;
    if (state.token && state.call && !$("#calls").hidden && v !== "acknowledged") soon("calls");
  }, 3000);
  if (state.token) signIn(state.token);
});
