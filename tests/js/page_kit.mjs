// What the tablet page tests share: Chromium, axe-core run inside the page,
// a TCP relay that can be cut (a network drop between tablet and server),
// and the page's steps.
import { chromium } from "playwright-core";
import { readFileSync } from "node:fs";
import { createRequire } from "node:module";
import net from "node:net";

const require = createRequire(import.meta.url);
const AXE = readFileSync(require.resolve("axe-core/axe.min.js"), "utf8");

export const SIZES = [
  { name: "landscape", width: 1024, height: 768 },
  { name: "portrait", width: 820, height: 1180 },
  { name: "laptop", width: 1366, height: 768 },
];

export const step = (s) => console.log("STEP " + s);

export async function launch() {
  return chromium.launch({
    executablePath: process.env.CHROMIUM || "/usr/bin/chromium",
    args: ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
           "--disable-background-networking", "--disable-component-update", "--disable-sync",
           "--autoplay-policy=user-gesture-required"],
  });
}

// A page that fails the test on a script error or anything the page's
// Content-Security-Policy blocks.
export async function newPage(browser, size, locale) {
  const context = await browser.newContext({ viewport: { width: size.width, height: size.height }, locale: locale || "ko-KR",
                                              timezoneId: "UTC" });
  const page = await context.newPage();
  page.problems = [];
  page.on("pageerror", (e) => page.problems.push("PAGEERROR " + e.message));
  page.on("console", (m) => {
    if (/Content Security Policy/i.test(m.text())) page.problems.push("CSP " + m.text());
  });
  return { context, page };
}

export function checkProblems(page) {
  if (page.problems.length) throw new Error(page.problems.join(" | "));
}

// axe-core inside the page (evaluated over the DevTools protocol, which the
// page's CSP does not govern): no violation of serious or critical impact.
export async function axe(page, label) {
  const has = await page.evaluate(() => typeof window.axe !== "undefined");
  if (!has) await page.evaluate(AXE);
  const result = await page.evaluate(async () => {
    const r = await window.axe.run(document, { resultTypes: ["violations"] });
    return r.violations.map((v) => ({ id: v.id, impact: v.impact, help: v.help,
      nodes: v.nodes.slice(0, 3).map((n) => n.target.join(" ")) }));
  });
  const bad = result.filter((v) => v.impact === "serious" || v.impact === "critical");
  console.log("AXE " + label + " violations=" + result.length + " serious_or_critical=" + bad.length);
  if (bad.length) throw new Error("axe on " + label + ": " + JSON.stringify(bad));
}

// A TCP relay in front of the server: `cut()` drops every connection and
// refuses new ones until `restore()`, on the same port.
export async function relay(target) {
  const url = new URL(target);
  const sockets = new Set();
  let server = null;
  let port = 0;
  const listen = () => new Promise((resolve, reject) => {
    server = net.createServer((client) => {
      const up = net.connect(Number(url.port), url.hostname);
      sockets.add(client); sockets.add(up);
      client.pipe(up); up.pipe(client);
      const end = () => { client.destroy(); up.destroy(); sockets.delete(client); sockets.delete(up); };
      client.on("error", end); up.on("error", end); client.on("close", end); up.on("close", end);
    });
    server.once("error", reject);
    server.listen(port, "127.0.0.1", () => { port = server.address().port; resolve(); });
  });
  await listen();
  return {
    base: () => "http://127.0.0.1:" + port,
    cut: () => new Promise((resolve) => { for (const s of sockets) s.destroy(); sockets.clear(); server.close(() => resolve()); }),
    restore: listen,
    close: () => new Promise((resolve) => { for (const s of sockets) s.destroy(); server.close(() => resolve()); }),
  };
}

// Signs in (typed token) and turns the sound on; ends on the call board.
export async function signInTyped(page, url, token) {
  await page.goto(url);
  await page.fill("#token", token);
  await page.click("#signin-form button[type=submit]");
  await page.waitForSelector("#sound:not([hidden])", { timeout: 30000 });
}

export async function unlockSound(page) {
  await page.click("#sound-unlock");
  await page.waitForSelector("#board:not([hidden])", { timeout: 30000 });
  const sound = await page.evaluate(() => document.body.dataset.sound);
  if (sound !== "on") throw new Error("sound after the tap: " + sound);
}

export async function text(page, selector) {
  return ((await page.textContent(selector)) || "").trim();
}
