// The Spring-era tablet page in Debian's headless Chromium (playwright-core):
// served from its own origin by this script, with the published
// sockjs-client browser bundle and @stomp/stompjs from node_modules, talking
// cross-origin and without a token to bizcall (compat.anonymous).
// Prints "ORIGIN <url>" once the page server listens, then reads one line
// on stdin ("GO <bizcall-url> <slug>"), loads the page, prints "CONNECTED
// <transport>", waits for the popup, prints "POPUP <from> <start>", and
// saves a screenshot to <artifacts>/sockjs-spring-page.png.
// Usage: node spring_page.mjs <artifacts-dir>
import { chromium } from "playwright-core";
import { createServer } from "node:http";
import { readFileSync, mkdirSync } from "node:fs";
import { createInterface } from "node:readline";

const [artifacts] = process.argv.slice(2);
mkdirSync(artifacts, { recursive: true });
const files = {
  "/": ["spring_page.html", "text/html; charset=utf-8"],
  "/sockjs.min.js": ["node_modules/sockjs-client/dist/sockjs.min.js", "application/javascript"],
  "/stomp.umd.min.js": ["node_modules/@stomp/stompjs/bundles/stomp.umd.min.js", "application/javascript"],
};
const server = createServer((req, res) => {
  const f = files[new URL(req.url, "http://x").pathname];
  if (!f) { res.writeHead(404); res.end(); return; }
  res.writeHead(200, { "content-type": f[1] });
  res.end(readFileSync(f[0]));
});
await new Promise((ok) => server.listen(0, "127.0.0.1", ok));
const origin = `http://127.0.0.1:${server.address().port}`;
console.log("ORIGIN " + origin);

const rl = createInterface({ input: process.stdin });
const [, api, slug] = (await rl[Symbol.asyncIterator]().next()).value.split(" ");
const browser = await chromium.launch({
  executablePath: process.env.CHROMIUM || "/usr/bin/chromium",
  args: ["--headless", "--no-sandbox", "--disable-gpu", "--no-first-run",
         "--disable-background-networking", "--disable-component-update", "--disable-sync"],
});
try {
  const page = await browser.newPage({ viewport: { width: 1024, height: 700 } });
  page.on("pageerror", (e) => console.log("PAGEERROR " + e.message));
  await page.goto(`${origin}/?api=${encodeURIComponent(api)}&slug=${slug}`);
  await page.waitForSelector('#state[data-state="connected"]', { timeout: 20000 });
  console.log("CONNECTED " + (await page.textContent("#state")));
  await page.waitForSelector("#modal.open", { timeout: 30000 });
  console.log(`POPUP ${await page.textContent("#from")} ${await page.textContent("#start")}`);
  await page.screenshot({ path: artifacts + "/sockjs-spring-page.png" });
  console.log("DONE");
} finally {
  await browser.close();
  server.close();
  process.exit(0);
}
