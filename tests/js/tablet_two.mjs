// Two tablets of one store, each on its own bizcall instance (the desk and
// the bay), in headless Chromium: a call pops up on both; the desk takes it
// ("확인"), and the bay's popup closes, saying who took it.
// Usage: node tablet_two.mjs <base-1> <base-2> <desk-token> <bay-token> <bizcall-binary> <virtual-number> <artifacts-dir> <desk-label>
import { execFileSync } from "node:child_process";
import { mkdirSync } from "node:fs";
import { SIZES, step, launch, newPage, checkProblems, axe, signInTyped, unlockSound, text } from "./page_kit.mjs";

const [base1, base2, deskToken, bayToken, bin, vn, artifacts, deskLabel] = process.argv.slice(2);
mkdirSync(artifacts, { recursive: true });

const browser = await launch();
try {
  const desk = await newPage(browser, SIZES[0]);
  const bay = await newPage(browser, SIZES[1]);
  await signInTyped(desk.page, base1 + "/tablet", deskToken);
  await unlockSound(desk.page);
  await signInTyped(bay.page, base2 + "/tablet", bayToken);
  await unlockSound(bay.page);
  for (const p of [desk.page, bay.page]) {
    await p.waitForFunction(() => document.querySelector("#state").dataset.state === "connected", null, { timeout: 30000 });
  }
  step("both signed in");

  const seq = execFileSync(bin, ["call", "simulate", "--server", base1, "--to", vn, "--from", "010-8080-9090"],
    { encoding: "utf8" }).trim();
  for (const p of [desk.page, bay.page]) await p.waitForSelector("#popup:not([hidden])", { timeout: 30000 });
  await bay.page.screenshot({ path: artifacts + "/tablet-two-bay-popup.png" });
  step("popup on both");

  await desk.page.click("#ack");
  await desk.page.waitForSelector("#popup", { state: "hidden" });
  await bay.page.waitForSelector("#popup", { state: "hidden", timeout: 30000 });
  await bay.page.waitForSelector("#notice:not([hidden])", { timeout: 15000 });
  const notice = await text(bay.page, "#notice");
  if (!notice.includes(deskLabel + "에서 응대했습니다") || !notice.includes("010-8080-9090")) throw new Error("notice: " + notice);
  await bay.page.waitForFunction((l) => document.querySelector("#calls").textContent.includes(l + "에서 응대 중"), deskLabel, { timeout: 15000 })
    .catch(async () => { throw new Error("call list: " + await text(bay.page, "#calls")); });
  await axe(bay.page, "taken-" + SIZES[1].name);
  await bay.page.screenshot({ path: artifacts + "/tablet-two-bay-taken.png" });
  step("the bay's popup closed");
  // The desk, which took it, is not told so.
  if (!(await desk.page.isHidden("#notice"))) throw new Error("the desk was told: " + await text(desk.page, "#notice"));
  checkProblems(desk.page);
  checkProblems(bay.page);
  console.log("DONE " + seq);
} finally {
  await browser.close();
}
