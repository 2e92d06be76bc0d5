// The tablet page in real headless Chromium (Debian's), driven by
// playwright-core, at two iPad sizes and a laptop's: typed and QR sign-in,
// the sound step, a popup whose caller history fills in (afresh on each
// call from the same number), a reservation
// prefilled from the last visit, a network drop (offline banner, the shell
// from the service worker, missed calls once back), and axe-core on every
// screen. The page is reached through a TCP relay this script can cut.
// Screenshots go to <artifacts>.
// Usage: node tablet_page.mjs <base-url> <token> <bizcall-binary> <virtual-number> <artifacts-dir> <store-name>
import { execFileSync } from "node:child_process";
import { mkdirSync } from "node:fs";
import { SIZES, step, launch, newPage, checkProblems, axe, relay, signInTyped, unlockSound, text } from "./page_kit.mjs";

const [direct, token, bin, vn, artifacts, storeName] = process.argv.slice(2);
mkdirSync(artifacts, { recursive: true });
const shot = (page, name) => page.screenshot({ path: artifacts + "/tablet-" + name + ".png" });
const simulate = (from, extra) => execFileSync(bin, ["call", "simulate", "--server", direct, "--to", vn, "--from", from, ...(extra || [])],
  { encoding: "utf8" }).trim();

const net = await relay(direct);
const base = net.base();
const browser = await launch();
try {
  // ---- landscape iPad: typed sign-in, the regular's popup, a reservation --
  const size = SIZES[0];
  const { context, page } = await newPage(browser, size);
  await page.goto(base + "/tablet");
  if ((await text(page, "#signin h2")) !== "태블릿 로그인") throw new Error("not Korean: " + await text(page, "#signin h2"));
  await axe(page, "signin-" + size.name);
  await shot(page, "signin-" + size.name);
  await signInTyped(page, base + "/tablet", token);
  step("signed in (typed)");
  await axe(page, "sound-" + size.name);
  await shot(page, "sound-" + size.name);
  await unlockSound(page);
  step("sound on");
  await page.waitForFunction((n) => document.querySelector("#store-name").textContent === n, storeName, { timeout: 30000 });
  await page.waitForFunction(() => document.querySelector("#state").dataset.state === "connected");
  if ((await text(page, "#state")) !== "연결됨") throw new Error("state: " + await text(page, "#state"));
  await axe(page, "board-" + size.name);

  // The token survives a reload; the sound step comes again (browsers
  // forget the tap with the page).
  await page.reload();
  await page.waitForSelector("#sound:not([hidden])", { timeout: 30000 });
  await unlockSound(page);
  step("reconnected after reload");

  // A regular calls: the popup shows at once, the history fills in.
  const seq = simulate("010-4321-8765");
  step("simulated " + seq);
  await page.waitForSelector("#popup:not([hidden])", { timeout: 30000 });
  if ((await text(page, "#popup-number")) !== "010-4321-8765") throw new Error("popup shows " + await text(page, "#popup-number"));
  if ((await text(page, "#popup-status")) !== "벨 울림") throw new Error("status: " + await text(page, "#popup-status"));
  await page.waitForSelector('#popup-history[data-state="loaded"]', { timeout: 30000 });
  const history = await text(page, "#popup-history");
  if (!/이전 통화 1회/.test(history) || !/34나5678/.test(history) || !/실내 크리닝/.test(history)) throw new Error("history: " + history);
  await axe(page, "popup-" + size.name);
  await shot(page, "popup-" + size.name);
  step("popup with history");

  // The call is answered: the same popup updates in place.
  simulate("010-4321-8765", ["--status", "answered", "--seq", seq]);
  await page.waitForFunction(() => document.querySelector("#popup-status").textContent === "통화 중", null, { timeout: 30000 });
  step("status updated");

  // "예약": the form, prefilled from the last reservation.
  await page.click("#reserve-open");
  await page.waitForSelector("#popup", { state: "hidden" });
  const form = {};
  for (const f of ["customerNumber", "carNumber", "carModel", "service"]) form[f] = await page.inputValue("#reservation [name=" + f + "]");
  if (form.customerNumber !== "01043218765" || form.carNumber !== "34나5678" || form.carModel !== "쏘나타" || form.service !== "실내 크리닝") {
    throw new Error("form prefilled with " + JSON.stringify(form));
  }
  await page.fill("#reservation [name=carNumber]", "12가3456");
  // A bad number is refused, in Korean, naming the field.
  await page.fill("#reservation [name=customerNumber]", "010-4321-876x");
  await page.click("#reservation button[type=submit]");
  await page.waitForFunction(() => /고객 전화번호 값을 확인해 주세요/.test(document.querySelector("#message").textContent), null, { timeout: 30000 })
    .catch(async () => { throw new Error("error message: " + await text(page, "#message")); });
  await page.fill("#reservation [name=customerNumber]", "01043218765");
  // Booked for tomorrow morning, as a call late in the evening would be:
  // listed at any hour the test runs.
  const tomorrow = new Date(Date.now() + 9 * 3600e3 + 86400e3).toISOString().slice(0, 10);
  await page.fill("#reservation [name=reservedAt]", tomorrow + "T09:30");
  await axe(page, "reservation-form-" + size.name);
  await shot(page, "reservation-form-" + size.name);
  await page.click("#reservation button[type=submit]");
  await page.waitForFunction(() => /예약을 저장했습니다/.test(document.querySelector("#message").textContent), null, { timeout: 30000 })
    .catch(async (e) => { throw new Error("not saved: " + await text(page, "#message") + " (" + e.message + ")"); });
  await page.waitForFunction(() => /내일 오전 9:30/.test(document.querySelector("#reservations").textContent), null, { timeout: 30000 })
    .catch(async () => { throw new Error("reservations list: " + await text(page, "#reservations")); });
  step("reservation saved");

  // ---- the network drops --------------------------------------------------
  await page.evaluate(() => navigator.serviceWorker.ready.then(() => true));
  await net.cut();
  await page.waitForSelector("#offline:not([hidden])", { timeout: 60000 });
  await page.waitForFunction(() => /전부터/.test(document.querySelector("#offline-since").textContent), null, { timeout: 30000 });
  // While it is down the page shell still opens, from the service worker.
  const shell = await context.newPage();
  const res = await shell.goto(base + "/tablet");
  if (!res || !(await shell.$("#signin-form"))) throw new Error("shell not served while offline");
  if (!res.fromServiceWorker()) throw new Error("the shell did not come from the service worker");
  await shell.close();
  step("shell from the service worker");
  // A call comes and goes unanswered meanwhile.
  const lost = simulate("010-5555-1234");
  simulate("010-5555-1234", ["--status", "missed", "--seq", lost]);
  // The time since the drop counts up (at least one second shown).
  await page.waitForFunction(() => /\(([1-9][0-9]*초|[0-9]+분 [0-9]+초) 전부터\)/.test(document.querySelector("#offline-since").textContent), null, { timeout: 30000 });
  await axe(page, "offline-" + size.name);
  await shot(page, "offline-" + size.name);
  step("offline banner");
  await net.restore();
  await page.waitForSelector("#offline", { state: "hidden", timeout: 90000 });
  await page.waitForSelector("#missed-section:not([hidden])", { timeout: 30000 });
  const missed = await text(page, "#missed-section");
  if (!/놓친 전화/.test(missed) || !/010-5555-1234/.test(missed)) throw new Error("missed: " + missed);
  await axe(page, "missed-" + size.name);
  await shot(page, "missed-" + size.name);
  step("missed call shown once back");
  // The service worker kept the shell and nothing else: no API answer, no
  // socket, after all the calls, reservations and lookups above.
  const cached = await page.evaluate(async () => {
    const out = [];
    for (const name of await caches.keys()) {
      for (const req of await (await caches.open(name)).keys()) out.push(new URL(req.url).pathname);
    }
    return out;
  });
  if (!cached.includes("/tablet") || cached.some((p) => p.startsWith("/api") || p.startsWith("/ws"))) {
    throw new Error("service worker cache: " + JSON.stringify(cached));
  }
  // The page holds a Screen Wake Lock after the tap, where the browser has
  // the API (Debian's headless Chromium grants it).
  const wake = await page.evaluate(() => ("wakeLock" in navigator ? document.body.dataset.wakeLock || "not asked" : "no API"));
  console.log("WAKELOCK " + wake);
  if (wake !== "on" && wake !== "no API") throw new Error("wake lock: " + wake);
  step("cache holds the shell only");
  checkProblems(page);
  await context.close();

  // ---- portrait iPad: QR sign-in ------------------------------------------
  {
    const size = SIZES[1];
    const { context, page } = await newPage(browser, size);
    await page.goto(base + "/tablet#token=" + encodeURIComponent(token));
    await page.waitForSelector("#sound:not([hidden])", { timeout: 30000 });
    const where = await page.evaluate(() => location.href);
    if (where.includes("#") || where.includes(token)) throw new Error("token left in the address bar: " + where);
    const kept = await page.evaluate(() => localStorage.getItem("bizcall.token"));
    if (kept !== token) throw new Error("QR token not stored");
    step("signed in (QR)");
    await axe(page, "sound-" + size.name);
    await shot(page, "sound-" + size.name);
    await unlockSound(page);
    await calledOnce(page, size, "010-7000-0001");
    await calledAgain(page, "010-7000-0001");
    await context.close();
  }

  // ---- laptop: typed sign-in; English when asked ---------------------------
  {
    const size = SIZES[2];
    const { context, page } = await newPage(browser, size, "en-US");
    await page.goto(base + "/tablet");
    if ((await text(page, "#signin h2")) !== "Tablet sign-in") throw new Error("not English for an English browser");
    await axe(page, "signin-en-" + size.name);
    await shot(page, "signin-en-" + size.name);
    await signInTyped(page, base + "/tablet?lang=ko", token);
    if ((await text(page, "#sound h2")) !== "소리 켜기") throw new Error("?lang=ko ignored");
    await axe(page, "sound-" + size.name);
    await shot(page, "sound-" + size.name);
    await unlockSound(page);
    await calledOnce(page, size, "010-7000-0002");
    await context.close();
  }
  console.log("DONE " + seq);
} finally {
  await browser.close();
  await net.close();
}

// The caller of `calledOnce` calls twice more: each popup counts the calls
// before it (the page asks per call; a history kept for the page's life
// would say "first call" all day).
async function calledAgain(page, from) {
  for (const n of [1, 2]) {
    // A CDR's start time has whole seconds: the next call starts in a later one.
    await new Promise((r) => setTimeout(r, 1100));
    simulate(from);
    await page.waitForSelector("#popup:not([hidden])", { timeout: 30000 });
    await page.waitForFunction((n) => new RegExp("이전 통화 " + n + "회").test(document.querySelector("#popup-history").textContent),
      n, { timeout: 30000 }).catch(async () => { throw new Error("call " + (n + 1) + " from " + from + ": " + await text(page, "#popup-history")); });
    await page.click("#ack");
    await page.waitForSelector("#popup", { state: "hidden" });
  }
  step("history counted afresh on every call");
}

// A first-time caller at this size: popup, "처음 전화한 고객", axe, screenshot, "확인".
async function calledOnce(page, size, from) {
  await page.waitForFunction((n) => document.querySelector("#store-name").textContent === n, storeName, { timeout: 30000 });
  await axe(page, "board-" + size.name);
  await shot(page, "board-" + size.name);
  simulate(from);
  await page.waitForSelector("#popup:not([hidden])", { timeout: 30000 });
  await page.waitForSelector('#popup-history[data-state="loaded"]', { timeout: 30000 });
  if (!/처음 전화한 고객/.test(await text(page, "#popup-history"))) throw new Error("history: " + await text(page, "#popup-history"));
  await axe(page, "popup-" + size.name);
  await shot(page, "popup-" + size.name);
  await page.click("#ack");
  await page.waitForSelector("#popup", { state: "hidden" });
  step("popup at " + size.name);
  checkProblems(page);
}
