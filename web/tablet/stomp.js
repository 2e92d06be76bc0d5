// STOMP 1.2 over a WebSocket: just what the tablet needs. Framing, the
// heart-beats both ways, and reconnecting with exponential backoff and
// jitter. Nothing here touches the page; the client reports through the
// callbacks it is given.

// One frame as text. CONNECT's headers are not escaped (STOMP 1.2).
export function frame(command, headers, body) {
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

// Splits what a connection receives into frames: `push` returns the frames
// completed so far and keeps the rest for the next call. Heart-beats (bare
// line ends) are skipped; of a repeated header the first counts.
export class FrameReader {
  constructor() { this.pending = ""; }

  push(data) {
    this.pending += data;
    const frames = [];
    for (;;) {
      this.pending = this.pending.replace(/^(\r?\n)+/, "");
      const end = this.pending.indexOf("\0");
      if (end < 0) break;
      const raw = this.pending.slice(0, end);
      this.pending = this.pending.slice(end + 1);
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
}

// What we offer: a beat every 10 s each way. A connection silent for
// SILENCE_MS (no frame, no beat) is taken for dead and closed.
const HEART_BEAT = "10000,10000";
const SILENCE_MS = 25000;

// A connection that comes back by itself until `stop()`.
//
// options:
//   url()            the WebSocket address, asked on every attempt
//   connectHeaders() headers for CONNECT besides the version, host and
//                    heart-beat (the passcode), asked on every attempt
//   onStatus(s)      "connecting" (first attempt) or "reconnecting"
//   onDrop()         a connection ended or could not be opened; another
//                    attempt follows
//   onConnected(f)   the CONNECTED frame
//   onMessage(f)     a MESSAGE frame
//   onError(f)       an ERROR frame (the server closes the socket after it)
export class StompClient {
  constructor(options) {
    this.o = options;
    this.ws = null;
    this.stopped = true;
    this.attempt = 0;
    this.timer = null;
    this.beat = null;
    this.watchdog = null;
    this.lastIn = 0;
  }

  // True while a connection is open.
  get open() { return !!this.ws && this.ws.readyState === 1; }

  // Connects now (a retry pending is dropped). `fresh` starts the backoff
  // over, as a new sign-in does.
  start(fresh) {
    if (fresh) this.attempt = 0;
    this.stopped = false;
    clearTimeout(this.timer);
    this.o.onStatus(this.attempt ? "reconnecting" : "connecting");
    if (!this.watchdog) {
      this.watchdog = setInterval(() => {
        if (this.open && Date.now() - this.lastIn > SILENCE_MS) this.ws.close();
      }, 5000);
    }
    let ws;
    try { ws = new WebSocket(this.o.url(), ["v12.stomp"]); } catch (_) { return this.retry(); }
    this.ws = ws;
    const reader = new FrameReader();
    ws.onopen = () => {
      ws.send(frame("CONNECT", Object.assign({ "accept-version": "1.2", host: location.hostname },
        this.o.connectHeaders(), { "heart-beat": HEART_BEAT })));
    };
    ws.onmessage = (ev) => {
      if (this.ws !== ws) return;
      this.lastIn = Date.now();
      for (const f of reader.push(typeof ev.data === "string" ? ev.data : "")) this.onFrame(f);
    };
    ws.onclose = () => {
      if (this.ws !== ws) return;
      clearInterval(this.beat);
      if (this.stopped) return;
      this.retry();
    };
  }

  // Connects again if it should be connected and is not (the browser says
  // the network is back).
  nudge() {
    if (!this.stopped && (!this.ws || this.ws.readyState > 1)) this.start();
  }

  // Closes the connection and makes no further attempt.
  stop() {
    this.stopped = true;
    clearTimeout(this.timer);
    clearInterval(this.beat);
    if (this.ws) { const ws = this.ws; this.ws = null; ws.close(); }
  }

  // Sends a frame if a connection is open; says whether it did.
  send(command, headers, body) {
    if (!this.open) return false;
    this.ws.send(frame(command, headers, body));
    return true;
  }

  retry() {
    this.o.onDrop();
    this.attempt += 1;
    const delay = Math.min(15000, 500 * 2 ** Math.min(this.attempt, 5)) * (0.5 + Math.random() / 2);
    this.o.onStatus("reconnecting");
    this.timer = setTimeout(() => this.start(), delay);
  }

  onFrame(f) {
    if (f.command === "CONNECTED") {
      this.attempt = 0;
      // The server's "sx,sy": it wants a beat from us every sy ms.
      const [, sy] = (f.headers["heart-beat"] || "0,0").split(",").map(Number);
      clearInterval(this.beat);
      const ws = this.ws;
      if (sy > 0) this.beat = setInterval(() => { if (ws.readyState === 1) ws.send("\n"); }, sy);
      this.o.onConnected(f);
    } else if (f.command === "MESSAGE") {
      this.o.onMessage(f);
    } else if (f.command === "ERROR") {
      this.o.onError(f);
    }
  }
}
