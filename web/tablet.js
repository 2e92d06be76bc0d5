// The tablet page's script, served as /tablet.js so that the page's
// Content-Security-Policy allows no inline script.
"use strict";
(() => {
  const $ = (id) => document.getElementById(id);

  // ---- words: one table per language --------------------------------------
  const STRINGS = {
    ko: {
      signOut: "로그아웃", signInTitle: "태블릿 로그인", tokenLabel: "태블릿 토큰", connect: "연결",
      qrHint: "관리자 화면의 QR 코드를 카메라로 찍으면 토큰 입력 없이 바로 로그인됩니다.",
      soundTitle: "소리 켜기", soundText: "전화가 오면 알림음이 울리도록 화면을 한 번 눌러 주세요.",
      soundButton: "눌러서 소리 켜기",
      offlineTitle: "연결 끊김", offlineHint: "다시 연결하는 중입니다. 그동안 온 전화는 연결되면 '놓친 전화'에 표시됩니다.",
      offlineFor: (t) => "(" + t + " 전부터)",
      missedTitle: "놓친 전화", missedClear: "모두 확인", callsTitle: "오늘 들어온 전화",
      callsEmpty: "오늘 들어온 전화가 없습니다.", reservationsTitle: "오늘과 내일 예약",
      reservationsEmpty: "예약이 없습니다.", newReservation: "새 예약",
      customerNumber: "고객 전화번호", carNumber: "차량 번호", carNumberHint: "예: 12가3456", carModel: "차종",
      service: "서비스", serviceHint: "예: 손세차", time: "예약 시간", memo: "메모", save: "예약 저장", cancel: "취소",
      incomingCall: "전화가 왔습니다", acknowledge: "확인", reserve: "예약",
      status: { ringing: "벨 울림", answered: "통화 중", missed: "부재중", completed: "통화 종료" },
      state: { "signed-out": "로그아웃됨", connecting: "연결 중", connected: "연결됨", reconnecting: "다시 연결 중", refused: "토큰 거부됨" },
      refused: (why) => "토큰이 거부되었습니다: " + why,
      historyLoading: "고객 정보를 불러오는 중…", historyNone: "처음 전화한 고객입니다.",
      historyCalls: (n) => "이전 통화 " + n + "회", historyLast: (d) => "마지막 통화 " + d,
      historyReservation: (d, what) => "최근 예약 " + d + (what ? " · " + what : ""),
      historyFailed: "고객 정보를 불러오지 못했습니다.",
      takenBy: (by) => (by || "다른 태블릿") + "에서 응대 중",
      takenNotice: (num, by) => num + " 전화는 " + (by || "다른 태블릿") + "에서 응대했습니다.",
      acknowledged: "확인함", tomorrow: "내일", saved: (id) => "예약을 저장했습니다 (#" + id + ")",
      missedBadge: "놓친 전화", unknownError: "오류가 발생했습니다. 잠시 후 다시 시도해 주세요.",
      invalid: (field) => field + " 값을 확인해 주세요.",
      fields: { customerNumber: "고객 전화번호", reservedAt: "예약 시간", carNumber: "차량 번호", carModel: "차종", service: "서비스", memo: "메모", callId: "통화" },
      duration: (h, m, s) => (h ? h + "시간 " : "") + (h || m ? m + "분 " : "") + s + "초",
    },
    en: {
      signOut: "Sign out", signInTitle: "Tablet sign-in", tokenLabel: "Tablet token", connect: "Connect",
      qrHint: "Scan the QR code on the operator console to sign in without typing the token.",
      soundTitle: "Turn on sound", soundText: "Tap once so the chime can sound when a call comes in.",
      soundButton: "Tap to turn on sound",
      offlineTitle: "Connection lost", offlineHint: "Reconnecting. Calls that come in meanwhile show as missed calls once back.",
      offlineFor: (t) => "(for " + t + ")",
      missedTitle: "Missed calls", missedClear: "Mark all seen", callsTitle: "Today's calls",
      callsEmpty: "No calls today yet.", reservationsTitle: "Reservations today and tomorrow",
      reservationsEmpty: "No reservations.", newReservation: "New reservation",
      customerNumber: "Customer number", carNumber: "Car number", carNumberHint: "e.g. 12가3456", carModel: "Car model",
      service: "Service", serviceHint: "e.g. hand wash", time: "Time", memo: "Memo", save: "Save reservation", cancel: "Cancel",
      incomingCall: "Incoming call", acknowledge: "OK", reserve: "Reserve",
      status: { ringing: "ringing", answered: "on the phone", missed: "missed", completed: "ended" },
      state: { "signed-out": "signed out", connecting: "connecting", connected: "connected", reconnecting: "reconnecting", refused: "token refused" },
      refused: (why) => "The token was refused: " + why,
      historyLoading: "Looking up the caller…", historyNone: "First call from this number.",
      historyCalls: (n) => n + (n === 1 ? " earlier call" : " earlier calls"), historyLast: (d) => "last " + d,
      historyReservation: (d, what) => "last reservation " + d + (what ? " · " + what : ""),
      historyFailed: "Could not look up the caller.",
      takenBy: (by) => "taken by " + (by || "another tablet"),
      takenNotice: (num, by) => "The call from " + num + " was taken by " + (by || "another tablet") + ".",
      acknowledged: "seen", tomorrow: "tomorrow", saved: (id) => "Saved reservation #" + id,
      missedBadge: "missed", unknownError: "Something went wrong; please try again.",
      invalid: (field) => "Please check the " + field.toLowerCase() + ".",
      fields: { customerNumber: "Customer number", reservedAt: "Time", carNumber: "Car number", carModel: "Car model", service: "Service", memo: "Memo", callId: "Call" },
      duration: (h, m, s) => (h ? h + " h " : "") + (h || m ? m + " min " : "") + s + " s",
    },
  };

  // Korean unless the browser prefers English (or ?lang=en).
  function pickLanguage() {
    const asked = new URLSearchParams(location.search).get("lang");
    if (asked && STRINGS[asked]) return asked;
    for (const l of navigator.languages || [navigator.language || ""]) {
      const base = String(l).toLowerCase().split("-")[0];
      if (base === "ko" || base === "en") return base;
    }
    return "ko";
  }
  const LANG = pickLanguage();
  const T = STRINGS[LANG];
  const LOCALE = LANG === "ko" ? "ko-KR" : "en-US";
  const TZ = "Asia/Seoul";
  document.documentElement.lang = LANG;
  for (const el of document.querySelectorAll("[data-i18n]")) el.textContent = T[el.dataset.i18n];
  for (const el of document.querySelectorAll("[data-i18n-placeholder]")) el.placeholder = T[el.dataset.i18nPlaceholder];

  // ---- state --------------------------------------------------------------
  const TOKEN_KEY = "bizcall.token";
  const state = { token: "", store: "", storeName: "", ws: null, attempt: 0, calls: new Map(),
                  popup: null, stopped: true, timer: null, beat: null, lastIn: 0, connectedOnce: false,
                  downSince: 0, missed: new Map(), history: new Map(), sound: false, wakeLock: null };

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

  function setState(s) { const el = $("state"); el.dataset.state = s; el.textContent = T.state[s] || s; }

  // ---- formats: Korea time ------------------------------------------------
  function fmtNumber(n) {
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
  const fmtTime = (iso) => (iso ? timeFmt.format(new Date(iso)) : "");
  const fmtDate = (iso) => (iso ? dateFmt.format(new Date(iso)) : "");
  const fmtStatus = (s) => T.status[s] || s;
  function fmtDuration(ms) {
    const t = Math.max(0, Math.floor(ms / 1000));
    return T.duration(Math.floor(t / 3600), Math.floor((t % 3600) / 60), t % 60);
  }
  // A Korea-time date, `days` after today.
  function kstDay(days) {
    return new Date(Date.now() + 9 * 3600e3 + (days || 0) * 86400e3).toISOString().slice(0, 10);
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
    let ws;
    try { ws = new WebSocket(proto + "//" + location.host + "/ws", ["v12.stomp"]); } catch (_) { return retry(); }
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
      retry();
    };
  }

  function retry() {
    if (state.connectedOnce && !state.downSince) { state.downSince = Date.now(); showOffline(); }
    state.attempt += 1;
    const delay = Math.min(15000, 500 * 2 ** Math.min(state.attempt, 5)) * (0.5 + Math.random() / 2);
    setState("reconnecting");
    state.timer = setTimeout(connect, delay);
  }

  function showScreen(name) {
    $("signin").hidden = name !== "signin";
    $("sound").hidden = name !== "sound";
    $("board").hidden = name !== "board";
    $("signout").hidden = name === "signin";
  }

  function onFrame(ws, f) {
    if (f.command === "CONNECTED") {
      state.attempt = 0;
      state.store = f.headers["user-name"];
      setState("connected");
      const wasDown = state.downSince;
      state.downSince = 0;
      state.connectedOnce = true;
      hideOffline();
      showScreen(state.sound ? "board" : "sound");
      ws.send(frame("SUBSCRIBE", { id: "calls", destination: "/topic/call-store/" + state.store, ack: "client-individual" }));
      const [, sy] = (f.headers["heart-beat"] || "0,0").split(",").map(Number);
      clearInterval(state.beat);
      if (sy > 0) state.beat = setInterval(() => { if (ws.readyState === 1) ws.send("\n"); }, sy);
      loadStore();
      refresh(wasDown);
    } else if (f.command === "MESSAGE") {
      let ev;
      try { ev = JSON.parse(f.body); } catch (_) { return; }
      if (ev.type === "handled") onHandled(ev, f.headers.ack);
      else onCall(ev, f.headers.ack);
    } else if (f.command === "ERROR") {
      const msg = f.headers.message || "error";
      if (msg === "unauthorized") {
        state.stopped = true;
        signOut(T.refused(f.body || msg));
        setState("refused");
      }
    }
  }

  // ---- offline banner -----------------------------------------------------
  function showOffline() {
    $("offline").hidden = false;
    document.body.classList.add("is-offline");
    tickOffline();
  }
  function hideOffline() {
    $("offline").hidden = true;
    document.body.classList.remove("is-offline");
  }
  function tickOffline() {
    if (state.downSince) $("offline-since").textContent = T.offlineFor(fmtDuration(Date.now() - state.downSince));
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

  // Another tablet took a call: close its popup here, and say who.
  function onHandled(ev, ackId) {
    const call = state.calls.get(ev.callId) || { callId: ev.callId };
    call.acknowledged = true;
    call.acknowledgedBy = ev.by;
    state.calls.set(ev.callId, call);
    if (ackId && state.ws && state.ws.readyState === 1) state.ws.send(frame("ACK", { id: ackId }));
    if (state.popup === ev.callId) {
      closePopup();
      notice(T.takenNotice(fmtNumber(call.callerNumber || ""), ev.by));
    }
    state.missed.delete(ev.callId);
    renderCalls();
  }

  let noticeTimer = null;
  function notice(text) {
    const el = $("notice");
    el.textContent = text;
    el.hidden = false;
    clearTimeout(noticeTimer);
    noticeTimer = setTimeout(() => { el.hidden = true; }, 8000);
  }

  function showPopup(call) {
    const isNew = state.popup !== call.callId;
    state.popup = call.callId;
    $("popup-number").textContent = fmtNumber(call.callerNumber);
    $("popup-status").textContent = fmtStatus(call.status);
    $("popup-status").className = "status " + call.status;
    $("popup-time").textContent = fmtTime(call.startedAt);
    $("popup").hidden = false;
    if (isNew) {
      renderHistory(call);
      lookUp(call);
      chime();
    }
  }

  function closePopup() {
    $("popup").hidden = true;
    state.popup = null;
  }

  // The caller's history, fetched beside the popup: the popup never waits.
  async function lookUp(call) {
    if (state.history.has(call.callerNumber)) return renderHistory(call);
    try {
      const before = encodeURIComponent(call.startedAt);
      const h = await api("/customers/" + encodeURIComponent(call.callerNumber) + "?before=" + before);
      state.history.set(call.callerNumber, h);
    } catch (_) {
      state.history.set(call.callerNumber, { failed: true });
    }
    if (state.popup === call.callId) renderHistory(call);
  }

  function renderHistory(call) {
    const el = $("popup-history");
    const h = state.history.get(call.callerNumber);
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

  function acknowledge() {
    const call = state.calls.get(state.popup);
    if (call && call.ackId && state.ws && state.ws.readyState === 1) {
      state.ws.send(frame("ACK", { id: call.ackId }));
    }
    if (call) call.acknowledged = true;
    closePopup();
    renderCalls();
  }

  // ---- sound and the screen ------------------------------------------------
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
    showScreen("board");
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

  // ---- lists --------------------------------------------------------------
  function callItem(c, missed) {
    const li = document.createElement("li");
    li.dataset.callId = c.callId;
    const left = document.createElement("span");
    const num = document.createElement("span"); num.className = "num"; num.textContent = fmtNumber(c.callerNumber);
    const info = document.createElement("span"); info.className = "muted";
    const who = c.acknowledged ? " · " + (c.acknowledgedBy ? T.takenBy(c.acknowledgedBy) : T.acknowledged) : "";
    info.textContent = " " + fmtTime(c.startedAt) + who;
    left.append(num, info);
    const st = document.createElement("span");
    st.className = "status " + (missed ? "missed" : c.status);
    st.textContent = missed ? T.missedBadge : fmtStatus(c.status);
    li.append(left, st);
    li.tabIndex = 0;
    li.onclick = () => openReservation(c);
    li.onkeydown = (e) => { if (e.key === "Enter") openReservation(c); };
    return li;
  }

  function renderCalls() {
    const list = [...state.calls.values()].filter((c) => c.callerNumber)
      .sort((a, b) => (a.startedAt < b.startedAt ? 1 : -1));
    $("calls").replaceChildren(...list.map((c) => callItem(c, false)));
    $("calls-empty").hidden = list.length > 0;
    const missed = [...state.missed.values()].sort((a, b) => (a.startedAt < b.startedAt ? 1 : -1));
    $("missed").replaceChildren(...missed.map((c) => callItem(c, true)));
    $("missed-count").textContent = missed.length ? String(missed.length) : "";
    $("missed-section").hidden = missed.length === 0;
  }

  // ---- HTTP API -----------------------------------------------------------
  async function api(path, opts) {
    const res = await fetch("/api/stores/" + encodeURIComponent(state.store) + path,
      Object.assign({ headers: { Authorization: "Bearer " + state.token, "Content-Type": "application/json" } }, opts || {}));
    const body = await res.json().catch(() => ({}));
    if (!res.ok) throw Object.assign(new Error(body.error || res.statusText), { field: body.field });
    return body;
  }

  async function loadStore() {
    try {
      const s = await api("");
      state.storeName = s.name;
      $("store-name").textContent = s.name;
      document.title = s.name + " · bizcall";
    } catch (_) { $("store-name").textContent = state.store; }
  }

  // `downSince`: when the connection dropped, if it did. Calls that came in
  // meanwhile and nobody took are shown as missed calls.
  async function refresh(downSince) {
    try {
      // Today's calls; after a drop, from a minute before it as well, so a
      // call missed just before midnight (Korea time) is still found.
      let since = kstDay() + "T00:00:00+09:00";
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
      const res = (await api("/reservations?date=" + kstDay(0)))
        .concat(await api("/reservations?date=" + kstDay(1)));
      $("reservations").replaceChildren(...res.map((r) => {
        const li = document.createElement("li");
        const a = document.createElement("span"); a.className = "num"; a.textContent = fmtNumber(r.customerNumber);
        const b = document.createElement("span"); b.className = "muted";
        const day = r.reservedAt.slice(0, 10) === kstDay(0) ? "" : T.tomorrow + " ";
        b.textContent = day + fmtTime(r.reservedAt) + " " + [r.service, r.carModel, r.carNumber].filter(Boolean).join(" · ");
        li.append(a, b);
        return li;
      }));
      $("reservations-empty").hidden = res.length > 0;
    } catch (e) { /* shown again on the next refresh */ }
  }

  // The form, prefilled with the caller and, from their last reservation,
  // the car and the service.
  function openReservation(call) {
    const form = $("reservation");
    form.reset();
    form.callId.value = call ? call.callId : "";
    form.customerNumber.value = call ? call.callerNumber : "";
    const h = call && state.history.get(call.callerNumber);
    const last = h && h.lastReservation;
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
      $("message").textContent = T.saved(r.id);
      $("reserve").hidden = true;
      state.history.delete(body.customerNumber.replace(/[^0-9]/g, ""));
      refresh();
    } catch (e) {
      // The server's detail is in English; staff get the field in their words.
      $("message").textContent = e.field ? T.invalid(T.fields[e.field] || e.field) : T.unknownError;
    }
  }

  function signOut(reason) {
    state.stopped = true;
    if (state.ws) { const ws = state.ws; state.ws = null; ws.close(); }
    localStorage.removeItem(TOKEN_KEY);
    state.token = "";
    state.connectedOnce = false; state.downSince = 0;
    hideOffline();
    closePopup();
    showScreen("signin");
    $("store-name").textContent = "bizcall";
    $("signin-error").textContent = reason || "";
    setState("signed-out");
  }

  $("signin-form").onsubmit = (ev) => {
    ev.preventDefault();
    state.token = $("token").value.trim();
    localStorage.setItem(TOKEN_KEY, state.token);
    state.attempt = 0;
    connect();
  };
  $("signout").onclick = () => signOut("");
  $("sound-unlock").onclick = unlockSound;
  $("ack").onclick = acknowledge;
  $("reserve-open").onclick = () => { const c = state.calls.get(state.popup); acknowledge(); openReservation(c); };
  $("new-reservation").onclick = () => openReservation(null);
  $("reserve-cancel").onclick = () => { $("reserve").hidden = true; };
  $("missed-clear").onclick = () => { state.missed.clear(); renderCalls(); };
  $("reservation").onsubmit = saveReservation;
  window.addEventListener("online", () => { if (state.token && !state.stopped && (!state.ws || state.ws.readyState > 1)) connect(); });

  function tickClock() { $("clock").textContent = clockFmt.format(new Date()); }
  tickClock();
  setInterval(() => { tickClock(); tickOffline(); }, 1000);
  setInterval(() => { if (state.ws && state.ws.readyState === 1 && Date.now() - state.lastIn > 25000) state.ws.close(); }, 5000);
  // Calls whose popup expired while the server's broker link was down are
  // only in the call list: look again now and then.
  setInterval(() => { if (state.ws && state.ws.readyState === 1 && state.store) refresh(); }, 60000);

  // The page shell stays available when the network blips (never the API).
  if ("serviceWorker" in navigator) navigator.serviceWorker.register("/sw.js").catch(() => {});

  setState("signed-out");
  showScreen("signin");
  renderCalls();
  if (state.token) connect();
})();
