// The tablet page in headless Chromium against an instance whose STOMP
// endpoint is not /ws (`stomp.path`): the page opens its socket where the
// server's page says, and a call pops up and is acknowledged.
// Usage: node tablet_path.mjs <base-url> <token> <bizcall-binary> <virtual-number> <stomp-path>
import { execFileSync } from "node:child_process";
import { SIZES, step, launch, newPage, checkProblems, signInTyped, unlockSound, text } from "./page_kit.mjs";

const [base, token, bin, vn, stompPath] = process.argv.slice(2);
const browser = await launch();
try {
  const { context, page } = await newPage(browser, SIZES[0]);
  const sockets = [];
  page.on("websocket", (ws) => sockets.push(new URL(ws.url()).pathname));
  await signInTyped(page, base + "/tablet", token);
  await unlockSound(page);
  await page.waitForFunction(() => document.querySelector("#state").dataset.state === "connected", null, { timeout: 30000 });
  if (!sockets.length || sockets.some((p) => p !== stompPath)) throw new Error("sockets opened at " + JSON.stringify(sockets));
  step("connected at " + stompPath);

  const seq = execFileSync(bin, ["call", "simulate", "--server", base, "--to", vn, "--from", "010-2020-3030"],
    { encoding: "utf8" }).trim();
  await page.waitForSelector("#popup:not([hidden])", { timeout: 30000 });
  if ((await text(page, "#popup-number")) !== "010-2020-3030") throw new Error("popup shows " + await text(page, "#popup-number"));
  await page.click("#ack");
  await page.waitForSelector("#popup", { state: "hidden" });
  step("popup acknowledged");
  checkProblems(page);
  await context.close();
  console.log("DONE " + seq);
} finally {
  await browser.close();
}
