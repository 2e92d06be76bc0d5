// The operator console in real headless Chromium (Debian's), driven by
// playwright-core, at a laptop size and the two iPad sizes: sign in, create
// a store and a token (its QR code shown once), a tablet page signs in with
// it and shows online, a call arrives and its delivery trail fills in up to
// the tablet's ACK, the token is revoked and the tablet drops. axe-core runs
// on every console screen; serious or critical violations fail the test.
// Screenshots go to <artifacts>.
// Usage: node admin_console.mjs <base-url> <admin-token> <bizcall-binary> <artifacts-dir>
import { chromium } from "playwright-core";
import { execFileSync } from "node:child_process";
import { mkdirSync, readFileSync } from "node:fs";
import { createRequire } from "node:module";

const [base, adminToken, bin, artifacts] = process.argv.slice(2);
mkdirSync(artifacts, { recursive: true });
const step = (s) => console.log("STEP " + s);
const axeSource = readFileSync(createRequire(import.meta.url).resolve("axe-core/axe.min.js"), "utf8");

const browser = await chromium.launch({
  executablePath: process.env.CHROMIUM || "/usr/bin/chromium",
  args: ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
         "--disable-background-networking", "--disable-component-update", "--disable-sync"],
});

// axe-core, evaluated through the DevTools protocol (the page's policy
// allows no injected script, rightly). Fails on serious/critical issues.
async function axe(page, screen) {
  await page.evaluate(axeSource);
  const result = await page.evaluate(() => window.axe.run(document, { resultTypes: ["violations"] }));
  const bad = result.violations.filter((v) => v.impact === "serious" || v.impact === "critical");
  for (const v of result.violations) {
    console.log(`AXE ${screen} ${v.impact} ${v.id}: ${v.nodes.map((n) => n.target.join(" ")).join(", ")}`);
  }
  if (bad.length) throw new Error(`axe: ${bad.length} serious/critical violation(s) on ${screen}: ` + bad.map((v) => v.id).join(", "));
  step("axe clean: " + screen);
}

function watch(page, name) {
  page.on("pageerror", (e) => console.log(`PAGEERROR ${name} ${e.message}`));
  page.on("console", (m) => {
    if (/Content Security Policy/i.test(m.text())) console.log(`CSPBLOCKED ${name} ${m.text()}`);
  });
}

const storeRow = (slug) => `#store-table tbody tr[data-slug="${slug}"]`;

try {
  const ctx = await browser.newContext({ viewport: { width: 1366, height: 768 }, locale: "ko-KR" });
  const page = await ctx.newPage();
  watch(page, "console");
  page.on("dialog", (d) => d.accept());
  // English when asked (?lang=en); Korean for this ko-KR browser.
  await page.goto(base + "/admin?lang=en");
  if ((await page.textContent("h1")) !== "bizcall console") throw new Error("?lang=en: " + await page.textContent("h1"));
  await page.goto(base + "/admin");
  if ((await page.textContent("h1")) !== "bizcall 콘솔" || (await page.getAttribute("html", "lang")) !== "ko") {
    throw new Error("not Korean first: " + await page.textContent("h1"));
  }
  await axe(page, "sign-in");
  await page.fill("#admin-token", "wrong-token");
  await page.click("#signin-form button[type=submit]");
  await page.waitForFunction(() => document.querySelector("#signin-error").textContent.length > 0);
  step("wrong token refused");
  await page.fill("#admin-token", adminToken);
  await page.click("#signin-form button[type=submit]");
  await page.waitForSelector("#console:not([hidden])");
  await page.waitForSelector('#live[data-state="live"]', { timeout: 30000 });
  step("signed in");

  // Create a store; a bad number first shows the CLI's error.
  await page.click("#add-store summary");
  await page.fill("#new-slug", "gangnam");
  await page.fill("#new-name", "강남 손세차");
  await page.fill("#new-numbers", "050-7777-88x8");
  await page.click("#store-form button[type=submit]");
  await page.waitForFunction(() => /expected 1 to 20 digits/.test(document.querySelector("#store-error").textContent));
  step("bad number refused with the CLI's message");
  await page.fill("#new-numbers", "050-7777-8888");
  await page.click("#store-form button[type=submit]");
  await page.waitForSelector(storeRow("gangnam"));
  await page.waitForSelector("#store-detail:not([hidden])");
  step("store created");

  // Issue a token: shown once, with its QR code.
  await page.fill("#token-label", "프런트 태블릿");
  await page.click("#token-form button[type=submit]");
  await page.waitForSelector("#issued:not([hidden])");
  const token = (await page.textContent("#issued-token")).trim();
  if (!token.startsWith("bzc_")) throw new Error("issued token " + token);
  await page.waitForFunction(() => document.querySelector("#issued-qr").naturalWidth > 0);
  await page.screenshot({ path: artifacts + "/admin-token-issued.png", fullPage: true });
  await axe(page, "token issued");
  await page.click("#issued-done");
  await page.waitForSelector("#issued", { state: "hidden" });
  if ((await page.textContent("#issued-token")) !== "") throw new Error("token still in the page");
  step("token issued with QR");

  // A tablet signs in with it by the QR code's address (the page, in its
  // own browser context), taps for sound, and connects.
  const tabletCtx = await browser.newContext({ viewport: { width: 1024, height: 768 }, locale: "ko-KR" });
  const tablet = await tabletCtx.newPage();
  watch(tablet, "tablet");
  await tablet.goto(base + "/tablet#token=" + encodeURIComponent(token));
  await tablet.waitForSelector("#sound:not([hidden])", { timeout: 30000 });
  await tablet.click("#sound-unlock");
  await tablet.waitForSelector('#state[data-state="connected"]', { timeout: 30000 });
  step("tablet connected");
  await page.waitForFunction((sel) => document.querySelector(sel + " td.tablets")?.textContent === "1",
    storeRow("gangnam"), { timeout: 30000 });
  await page.waitForFunction(() => /^1 \(/.test(document.querySelector("#token-table td.online-now")?.textContent || ""),
    null, { timeout: 30000 });
  await page.screenshot({ path: artifacts + "/admin-stores-laptop.png", fullPage: true });
  await axe(page, "stores with a tablet online");
  step("tablet online in the console");

  // A call arrives; its trail fills in.
  await page.click('.tab[data-tab="calls"]');
  const seq = execFileSync(bin, ["call", "simulate", "--server", base, "--to", "050-7777-8888", "--from", "010-2222-3333"],
    { encoding: "utf8" }).trim();
  step("simulated " + seq);
  await page.waitForSelector(`#call-table tbody tr[data-call="${seq}"]`, { timeout: 30000 });
  // Numbers as the tablet shows them; the day filter takes yyyy-mm-dd
  // (Korea time) whatever the browser's locale.
  const row = await page.textContent(`#call-table tbody tr[data-call="${seq}"]`);
  if (!row.includes("010-2222-3333")) throw new Error("number not formatted: " + row);
  const today = new Date(Date.now() + 9 * 3600e3).toISOString().slice(0, 10);
  await page.fill("#f-date", today);
  await page.click('#call-filter button[type="submit"]');
  await page.waitForSelector(`#call-table tbody tr[data-call="${seq}"]`, { timeout: 30000 });
  await page.fill("#f-date", "12/05/2026");
  if (await page.evaluate(() => document.querySelector("#f-date").checkValidity())) throw new Error("mm/dd/yyyy accepted");
  await page.fill("#f-date", "");
  step("numbers formatted; day filter in yyyy-mm-dd");
  await page.click(`#call-table tbody tr[data-call="${seq}"] button`);
  await page.waitForSelector("#trail:not([hidden])");
  await page.waitForSelector('#trail-verdict[data-verdict="shown-not-acknowledged"]', { timeout: 30000 });
  step("trail: shown");
  await tablet.waitForSelector("#popup:not([hidden])", { timeout: 30000 });
  await tablet.click("#ack");
  await page.waitForSelector('#trail-verdict[data-verdict="acknowledged"]', { timeout: 30000 });
  const trail = await page.textContent("#trail-steps");
  for (const want of ["수신: ", "프로세스 내부 버스에 전달됨 (인스턴스 하나, 브로커 없음)", "표시: 프런트 태블릿", "처음 확인: 프런트 태블릿"]) {
    if (!trail.includes(want)) throw new Error(`trail lacks ${want}: ${trail}`);
  }
  await page.screenshot({ path: artifacts + "/admin-call-trail-laptop.png", fullPage: true });
  await axe(page, "calls and trail");
  step("trail: acknowledged");

  // Revoke: the tablet drops, and the console shows it offline.
  await page.click('.tab[data-tab="stores"]');
  await page.click(`#token-table button[aria-label$="폐기"]`);
  await tablet.waitForFunction(() => document.querySelector("#state").dataset.state !== "connected", null, { timeout: 30000 });
  await page.waitForFunction((sel) => document.querySelector(sel + " td.tablets")?.textContent === "0",
    storeRow("gangnam"), { timeout: 30000 });
  await page.waitForFunction(() => /폐기됨/.test(document.querySelector("#token-table td.online-now")?.textContent || ""));
  step("revoked tablet dropped");

  // iPad sizes: every screen, screenshots and axe.
  for (const [name, w, h] of [["ipad-landscape", 1024, 768], ["ipad-portrait", 820, 1180]]) {
    await page.setViewportSize({ width: w, height: h });
    await page.click('.tab[data-tab="stores"]');
    await page.screenshot({ path: `${artifacts}/admin-stores-${name}.png`, fullPage: true });
    await axe(page, "stores " + name);
    await page.click('.tab[data-tab="calls"]');
    await page.waitForSelector('#trail-verdict[data-verdict="acknowledged"]');
    await page.screenshot({ path: `${artifacts}/admin-call-trail-${name}.png`, fullPage: true });
    await axe(page, "calls " + name);
  }
  // Narrow screens must not scroll sideways.
  const overflow = await page.evaluate(() => document.documentElement.scrollWidth - document.documentElement.clientWidth);
  if (overflow > 0) throw new Error("portrait page scrolls sideways by " + overflow + "px");
  await tabletCtx.close();
  await ctx.close();
  console.log("DONE " + seq);
} finally {
  await browser.close();
}
