// Two tablets of one store, each on its own bizcall instance (the desk and
// the bay), in headless Chromium: a call pops up on both; the desk takes it
// ("확인"), and the bay's popup closes, saying who took it. Then a missed
// call: counted in both headers until the desk calls back ("다시 걸었음"),
// which the bay then shows.
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

  // A call nobody answers: both tablets count it in the header and list it
  // under the missed calls; the bay narrows the day's list to them; the
  // desk calls back ("다시 걸었음") and the bay sees who did, and its
  // count goes, within seconds.
  const lost = execFileSync(bin, ["call", "simulate", "--server", base1, "--to", vn, "--from", "010-7070-1212"],
    { encoding: "utf8" }).trim();
  execFileSync(bin, ["call", "simulate", "--server", base1, "--to", vn, "--from", "010-7070-1212", "--status", "missed", "--seq", lost]);
  for (const p of [desk.page, bay.page]) {
    await p.waitForSelector("#popup:not([hidden])", { timeout: 30000 });
    await p.waitForFunction(() => document.querySelector("#popup-status").textContent === "부재중", null, { timeout: 30000 });
  }
  await desk.page.click("#ack");
  await bay.page.waitForSelector("#popup", { state: "hidden", timeout: 30000 });
  for (const p of [desk.page, bay.page]) {
    await p.waitForFunction(() => document.querySelector("#followups").textContent === "놓친 전화 1건", null, { timeout: 30000 })
      .catch(async () => { throw new Error("header count: " + await text(p, "#followups")); });
    await p.waitForSelector(`#missed li[data-call-id="${lost}"] button.call-back`, { timeout: 30000 });
  }
  await bay.page.click("#calls-filter");
  const only = await text(bay.page, "#calls");
  if (!only.includes("010-7070-1212") || only.includes("010-8080-9090")) throw new Error("missed only: " + only);
  await axe(bay.page, "missed-followup-" + SIZES[1].name);
  await bay.page.screenshot({ path: artifacts + "/tablet-two-bay-missed-before.png" });
  step("missed call counted and listed on both");
  await desk.page.click(`#missed li[data-call-id="${lost}"] button.call-back`);
  await desk.page.waitForSelector("#followups", { state: "hidden", timeout: 15000 });
  await bay.page.waitForSelector("#followups", { state: "hidden", timeout: 30000 });
  await bay.page.waitForFunction((l) => document.querySelector("#missed-section").hidden
      && document.querySelector("#calls").textContent === "" || document.querySelector("#calls").textContent.includes("다시 걸었음: " + l),
    deskLabel, { timeout: 30000 });
  await bay.page.click("#calls-filter");
  await bay.page.waitForFunction((l) => document.querySelector("#calls").textContent.includes("다시 걸었음: " + l), deskLabel, { timeout: 15000 })
    .catch(async () => { throw new Error("called back: " + await text(bay.page, "#calls")); });
  await axe(bay.page, "called-back-" + SIZES[1].name);
  await bay.page.screenshot({ path: artifacts + "/tablet-two-bay-missed-after.png" });
  step("called back by the desk, seen on the bay");

  checkProblems(desk.page);
  checkProblems(bay.page);
  console.log("DONE " + seq);
} finally {
  await browser.close();
}
