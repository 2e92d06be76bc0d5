// The tablet page in real headless Chromium (Debian's), driven by
// playwright-core: sign in, a simulated call pops up, acknowledge it into
// a reservation, save it, and see it listed. Screenshots go to <artifacts>.
// Usage: node tablet_page.mjs <base-url> <token> <bizcall-binary> <virtual-number> <artifacts-dir>
import { chromium } from "playwright-core";
import { execFileSync } from "node:child_process";
import { mkdirSync } from "node:fs";

const [base, token, bin, vn, artifacts] = process.argv.slice(2);
mkdirSync(artifacts, { recursive: true });
const step = (s) => console.log("STEP " + s);

const browser = await chromium.launch({
  executablePath: process.env.CHROMIUM || "/usr/bin/chromium",
  args: ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
         "--disable-background-networking", "--disable-component-update", "--disable-sync"],
});
try {
  const page = await browser.newPage({ viewport: { width: 1280, height: 800 } });
  page.on("pageerror", (e) => console.log("PAGEERROR " + e.message));
  // Anything the page's Content-Security-Policy blocks fails the test.
  const blocked = [];
  page.on("console", (m) => {
    if (/Content Security Policy/i.test(m.text())) blocked.push(m.text());
  });
  await page.goto(base + "/tablet");
  step("loaded");
  await page.fill("#token", token);
  await page.click("#signin-form button[type=submit]");
  await page.waitForSelector('#state[data-state="connected"]', { timeout: 15000 });
  step("connected");

  // The token survives a reload: the page reconnects by itself.
  await page.reload();
  await page.waitForSelector('#state[data-state="connected"]', { timeout: 15000 });
  step("reconnected after reload");

  const seq = execFileSync(bin, ["call", "simulate", "--server", base, "--to", vn, "--from", "010-4321-8765"],
    { encoding: "utf8" }).trim();
  step("simulated " + seq);
  await page.waitForSelector("#popup:not([hidden])", { timeout: 15000 });
  const number = await page.textContent("#popup-number");
  if (number.trim() !== "010-4321-8765") throw new Error("popup shows " + number);
  if ((await page.textContent("#popup-status")).trim() !== "ringing") throw new Error("status not ringing");
  await page.screenshot({ path: artifacts + "/tablet-popup-landscape.png" });
  step("popup");

  // The call is answered: the same popup updates in place.
  execFileSync(bin, ["call", "simulate", "--server", base, "--to", vn, "--from", "010-4321-8765",
    "--status", "answered", "--seq", seq]);
  await page.waitForFunction(() => document.querySelector("#popup-status").textContent === "answered", null, { timeout: 15000 });
  step("status updated");

  await page.click("#reserve-open");
  await page.waitForSelector("#popup", { state: "hidden" });
  const prefilled = await page.inputValue("#reservation input[name=customerNumber]");
  if (prefilled !== "01043218765") throw new Error("form prefilled with " + prefilled);
  await page.fill("#reservation input[name=carNumber]", "12가3456");
  await page.fill("#reservation input[name=service]", "full wash");
  // Booked for tomorrow morning, as a call late in the evening would be:
  // it must still be listed (at any hour the test runs).
  const tomorrow = new Date(Date.now() + 9 * 3600e3 + 86400e3).toISOString().slice(0, 10);
  await page.fill("#reservation input[name=reservedAt]", tomorrow + "T09:30");
  await page.click("#reservation button[type=submit]");
  await page.waitForFunction(() => /Saved reservation/.test(document.querySelector("#message").textContent), null, { timeout: 15000 })
    .catch(async (e) => { throw new Error("not saved: " + await page.textContent("#message") + " (" + e.message + ")"); });
  await page.waitForFunction(() => document.querySelectorAll("#reservations li").length >= 1, null, { timeout: 15000 });
  const listed = await page.textContent("#reservations");
  if (!/tomorrow 09:30/.test(listed) || !/full wash/.test(listed)) throw new Error("reservations list: " + listed);
  step("reservation saved");

  await page.setViewportSize({ width: 800, height: 1280 });
  await page.screenshot({ path: artifacts + "/tablet-portrait.png", fullPage: true });
  if (blocked.length) throw new Error("blocked by CSP: " + blocked.join(" | "));
  console.log("DONE " + seq);
} finally {
  await browser.close();
}
