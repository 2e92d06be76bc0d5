// The tablet page's script, served as /tablet.js so that the page's
// Content-Security-Policy allows no inline script.
"use strict";
(() => {
  const $ = (id) => document.getElementById(id);
  const TOKEN_KEY = "bizcall.token";
  const state = { token: localStorage.getItem(TOKEN_KEY) || "", store: "", ws: null, attempt: 0,
                  calls: new Map(), popup: null, stopped: true, timer: null, beat: null, lastIn: 0 };

  function setState(s, text) { const el = $("state"); el.dataset.state = s; el.textContent = text || s; }

  function fmtNumber(n) {
    if (!n) return "";
    if (n.length === 11) return n.slice(0, 3) + "-" + n.slice(3, 7) + "-" + n.slice(7);
    if (n.length === 10) return n.slice(0, 3) + "-" + n.slice(3, 6) + "-" + n.slice(6);
    return n;
  }
  function fmtTime(iso) {
    if (!iso) return "";
    return new Date(iso).toLocaleTimeString("ko-KR", { timeZone: "Asia/Seoul", hour: "2-digit", minute: "2-digit", hour12: false });
  }
  const RANK = { ringing: 0, answered: 1, missed: 2, completed: 2 };

  // ---- STOMP 1.2 over WebSocket: just what the tablet needs ----------------
  function frame(command, headers, body) {
    const esc = (s) => String(s).replace(/\\/g, "\\\\").replace(/\n/g, "\\n").replace(/:/g, "\\c").replace(/\r/g, "\\r");
    let out = command + "\n";
    for (const [k, v] of Object.entries(headers || {})) {
      out += (command === "CONNECT" ? k + ":" + v : esc(k) + ":" + esc(v)) + "\n";
    }
    return out + "\n" + (body || "") + "\0";
  }
  function unesc(s) {
    return s.replace(/\\(.)/g, (_, c) => ({ n: "\n", c: ":", r: "\r", "\\": "\\" })[c] ?? c);
  }
  let pending = "";
  function parse(data) {
    pending += data;
    const frames = [];
    for (;;) {
      pending = pending.replace(/^(\r?\n)+/, "");
      const end = pending.indexOf("\0");
      if (end < 0) break;
      const raw = pending.slice(0, end);
      pending = pending.slice(end + 1);
      const gap = raw.match(/\r?\n\r?\n/);
      const head = gap ? raw.slice(0, gap.index) : raw;
      const body = gap ? raw.slice(gap.index + gap[0].length) : "";
      const lines = head.split(/\r?\n/);
      const headers = {};
      for (const line of lines.slice(1)) {
        const i = line.indexOf(":");
        if (i < 0) continue;
        const k = unesc(line.slice(0, i));
        if (!(k in headers)) headers[k] = unesc(line.slice(i + 1));
      }
      frames.push({ command: lines[0], headers, body });
    }
    return frames;
  }

  function connect() {
    if (!state.token) return;
    state.stopped = false;
    clearTimeout(state.timer);
    setState(state.attempt ? "reconnecting" : "connecting");
    const proto = location.protocol === "https:" ? "wss:" : "ws:";
    const ws = new WebSocket(proto + "//" + location.host + "/ws", ["v12.stomp"]);
    state.ws = ws;
    pending = "";
    ws.onopen = () => {
      ws.send(frame("CONNECT", { "accept-version": "1.2", host: location.hostname, passcode: state.token, "heart-beat": "10000,10000" }));
    };
    ws.onmessage = (ev) => {
      state.lastIn = Date.now();
      for (const f of parse(typeof ev.data === "string" ? ev.data : "")) onFrame(ws, f);
    };
    ws.onclose = () => {
      clearInterval(state.beat);
      if (state.ws !== ws || state.stopped) return;
      state.attempt += 1;
      const delay = Math.min(30000, 500 * 2 ** Math.min(state.attempt, 6)) * (0.5 + Math.random() / 2);
      setState("reconnecting", "reconnecting in " + Math.round(delay / 1000) + " s");
      state.timer = setTimeout(connect, delay);
    };
  }

  function onFrame(ws, f) {
    if (f.command === "CONNECTED") {
      state.attempt = 0;
      state.store = f.headers["user-name"];
      $("store-name").textContent = state.store;
      setState("connected");
      $("signin").hidden = true; document.querySelector("main").hidden = false; $("signout").hidden = false;
      ws.send(frame("SUBSCRIBE", { id: "calls", destination: "/topic/call-store/" + state.store, ack: "client-individual" }));
      const [, sy] = (f.headers["heart-beat"] || "0,0").split(",").map(Number);
      clearInterval(state.beat);
      if (sy > 0) state.beat = setInterval(() => { if (ws.readyState === 1) ws.send("\n"); }, sy);
      refresh();
    } else if (f.command === "MESSAGE") {
      let ev;
      try { ev = JSON.parse(f.body); } catch (_) { return; }
      onCall(ev, f.headers.ack);
    } else if (f.command === "ERROR") {
      const msg = f.headers.message || "error";
      if (msg === "unauthorized") {
        state.stopped = true;
        signOut("The token was refused: " + (f.body || msg));
        setState("refused", "token refused");
      }
    }
  }

  // ---- calls and popups ---------------------------------------------------
  function onCall(ev, ackId) {
    const known = state.calls.get(ev.callId);
    if (known && RANK[ev.status] < RANK[known.status]) return;
    const call = Object.assign({}, known || {}, ev);
    if (ackId) call.ackId = ackId;
    state.calls.set(ev.callId, call);
    renderCalls();
    const fresh = new Date(ev.expiresAt).getTime() > Date.now();
    if (state.popup === ev.callId || (!known && fresh && !call.acknowledged)) showPopup(call);
  }

  function showPopup(call) {
    const isNew = state.popup !== call.callId;
    state.popup = call.callId;
    $("popup-number").textContent = fmtNumber(call.callerNumber);
    $("popup-status").textContent = call.status;
    $("popup-status").className = "status " + call.status;
    $("popup-time").textContent = fmtTime(call.startedAt);
    $("popup").hidden = false;
    if (isNew) chime();
  }

  function acknowledge() {
    const call = state.calls.get(state.popup);
    if (call && call.ackId && state.ws && state.ws.readyState === 1) {
      state.ws.send(frame("ACK", { id: call.ackId }));
      call.acknowledged = true;
    }
    $("popup").hidden = true;
    state.popup = null;
    renderCalls();
  }

  let audio = null;
  function chime() {
    try {
      audio = audio || new (window.AudioContext || window.webkitAudioContext)();
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

  function renderCalls() {
    const list = [...state.calls.values()].sort((a, b) => (a.startedAt < b.startedAt ? 1 : -1));
    const ul = $("calls");
    ul.replaceChildren(...list.map((c) => {
      const li = document.createElement("li");
      li.dataset.callId = c.callId;
      const left = document.createElement("span");
      left.innerHTML = '<span class="num"></span> <span class="muted"></span>';
      left.children[0].textContent = fmtNumber(c.callerNumber);
      left.children[1].textContent = fmtTime(c.startedAt) + (c.acknowledged ? " · acknowledged" : "");
      const st = document.createElement("span");
      st.className = "status " + c.status; st.textContent = c.status;
      li.append(left, st);
      li.onclick = () => openReservation(c);
      return li;
    }));
  }

  // ---- HTTP API -----------------------------------------------------------
  async function api(path, opts) {
    const res = await fetch("/api/stores/" + encodeURIComponent(state.store) + path,
      Object.assign({ headers: { Authorization: "Bearer " + state.token, "Content-Type": "application/json" } }, opts || {}));
    const body = await res.json().catch(() => ({}));
    if (!res.ok) throw Object.assign(new Error(body.error || res.statusText), { field: body.field });
    return body;
  }

  // A Korea-time date, `days` after today.
  function kstDay(days) {
    return new Date(Date.now() + 9 * 3600e3 + (days || 0) * 86400e3).toISOString().slice(0, 10);
  }

  async function refresh() {
    try {
      const since = kstDay() + "T00:00:00+09:00";
      const calls = await api("/calls?limit=500&since=" + encodeURIComponent(since));
      for (const c of calls.reverse()) {
        const known = state.calls.get(c.callId);
        state.calls.set(c.callId, Object.assign({}, c, known && known.ackId ? { ackId: known.ackId } : {}));
      }
      renderCalls();
      // Today's and tomorrow's: a booking made late in the evening is
      // usually for the next morning.
      const res = (await api("/reservations?date=" + kstDay(0)))
        .concat(await api("/reservations?date=" + kstDay(1)));
      const ul = $("reservations");
      ul.replaceChildren(...res.map((r) => {
        const li = document.createElement("li");
        const a = document.createElement("span"); a.className = "num"; a.textContent = fmtNumber(r.customerNumber);
        const b = document.createElement("span"); b.className = "muted";
        const day = r.reservedAt.slice(0, 10) === kstDay(0) ? "" : "tomorrow ";
        b.textContent = day + fmtTime(r.reservedAt) + " " + [r.service, r.carModel, r.carNumber].filter(Boolean).join(" · ");
        li.append(a, b);
        return li;
      }));
    } catch (e) { /* shown again on the next refresh */ }
  }

  function openReservation(call) {
    const form = $("reservation");
    form.reset();
    form.callId.value = call ? call.callId : "";
    form.customerNumber.value = call ? call.callerNumber : "";
    const inOneHour = new Date(Date.now() + 9 * 3600e3 + 3600e3).toISOString().slice(0, 16);
    form.reservedAt.value = inOneHour;
    $("message").textContent = "";
    $("reserve").hidden = false;
    form.carNumber.focus();
  }

  async function saveReservation(ev) {
    ev.preventDefault();
    const f = ev.target;
    const body = {
      customerNumber: f.customerNumber.value, reservedAt: f.reservedAt.value + ":00+09:00",
      carNumber: f.carNumber.value, carModel: f.carModel.value, service: f.service.value, memo: f.memo.value,
    };
    if (f.callId.value) body.callId = f.callId.value;
    try {
      const r = await api("/reservations", { method: "POST", body: JSON.stringify(body) });
      $("message").textContent = "Saved reservation #" + r.id;
      $("reserve").hidden = true;
      refresh();
    } catch (e) {
      $("message").textContent = (e.field ? e.field + ": " : "") + e.message;
    }
  }

  function signOut(reason) {
    state.stopped = true;
    if (state.ws) { const ws = state.ws; state.ws = null; ws.close(); }
    localStorage.removeItem(TOKEN_KEY);
    state.token = "";
    $("signin").hidden = false; document.querySelector("main").hidden = true; $("signout").hidden = true;
    $("signin-error").textContent = reason || "";
    setState("signed-out", "signed out");
  }

  $("signin-form").onsubmit = (ev) => {
    ev.preventDefault();
    state.token = $("token").value.trim();
    localStorage.setItem(TOKEN_KEY, state.token);
    state.attempt = 0;
    connect();
  };
  $("signout").onclick = () => signOut("");
  $("ack").onclick = acknowledge;
  $("reserve-open").onclick = () => { const c = state.calls.get(state.popup); acknowledge(); openReservation(c); };
  $("new-reservation").onclick = () => openReservation(null);
  $("reservation").onsubmit = saveReservation;
  setInterval(() => { if (state.ws && state.ws.readyState === 1 && Date.now() - state.lastIn > 25000) state.ws.close(); }, 5000);
  // Calls whose popup expired while the server's broker link was down are
  // only in the call list: look again now and then.
  setInterval(() => { if (state.ws && state.ws.readyState === 1 && state.store) refresh(); }, 60000);
  if (state.token) connect();
})();
