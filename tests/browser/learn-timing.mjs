// How long learn mode's panels take to follow what a student does, on the CPU (each of the
// page's two WebAssembly modules, with the model engine in its worker and on the page
// itself, `?worker=0`, each in a headless Chromium of its own), for BENCHMARKS.md and the
// README's Learn mode section. Times are measured inside the page, from the action to
// the moment every panel it touches is ready again (a MutationObserver on their
// data-state), over REPEATS runs after one warm-up run of each action; median and range:
//   open        the learn tab of a fresh page: the model loaded, then all six panels
//   new sample  another bundled X-ray: every panel computed again
//   new mask    the masking panel's "new mask" button: one masked pass of the encoder
//   new draw    the views panel's "New draw": the 12 views of a pretraining draw, encoded
//   EHR change  the sex field: the fused embedding and both heads' scores again
//   temperature the prototypes' temperature slider: every assignment from the cached
//               projections, no encoder pass (after the slider's 30 ms debounce)
// and the longest task the page's main thread had over all of that (a long-task observer):
// how long the page could not scroll or answer a key.
// Actions without a debounce are used, so that the figures are the page's work alone
// (the mask-ratio slider, the seed field and the age field wait 150, 400 and 300 ms for
// the student to stop typing or dragging before they compute).
//
//   DIST=../../dist node learn-timing.mjs      (scripts/bench-browser runs it last)

import { launchChromium, serve } from "./serve.mjs";

const REPEATS = Number(process.env.REPEATS || 5);
const { origin, close } = await serve();

const median = (xs) => xs.slice().sort((a, b) => a - b)[Math.floor(xs.length / 2)];

// Runs `action` (a function's source, evaluated in the page) and resolves with the
// milliseconds until every panel of `panels` has been busy and is ready again.
function timed(page, action, panels) {
  return page.evaluate(async ({ action, panels }) => {
    const els = panels.map((n) => document.querySelector(`[data-panel="${n}"]`));
    const settled = () => els.every((e) => e.dataset.state === "ready" || e.dataset.state === "error");
    const done = new Promise((resolve, reject) => {
      let busy = false;
      const observer = new MutationObserver(() => {
        busy ||= els.some((e) => e.dataset.state === "busy");
        if (!busy || !settled()) return;
        observer.disconnect();
        const failed = els.filter((e) => e.dataset.state === "error");
        if (failed.length) reject(new Error(`panel ${failed[0].dataset.panel}: ${failed[0].textContent.trim().slice(0, 200)}`));
        else resolve(performance.now());
      });
      for (const e of els) observer.observe(e, { attributes: true, attributeFilter: ["data-state"] });
    });
    const start = performance.now();
    (0, eval)(action)();
    return (await done) - start;
  }, { action: action.toString(), panels });
}

// The time of the re-assignment a temperature change starts after its 30 ms debounce: from
// a timer of the same delay set just before the input event (timers of equal delay run in
// the order they were set, so it runs just before the page's) to the slider's label showing
// the new value, which the page writes once every panel has its new assignments from the
// engine's worker and has redrawn (when a MutationObserver's callback runs).
function timedTemperature(page, value) {
  return page.evaluate(async (value) => {
    const label = document.getElementById("temperature-value");
    const input = document.getElementById("temperature");
    let start = null;
    const done = new Promise((resolve) => {
      const observer = new MutationObserver(() => { observer.disconnect(); resolve(performance.now()); });
      observer.observe(label, { childList: true, characterData: true, subtree: true });
    });
    setTimeout(() => { start = performance.now(); }, 30);
    input.value = String(value);
    input.dispatchEvent(new Event("input", { bubbles: true }));
    const end = await done;
    if (start === null) throw new Error("the page re-assigned before the 30 ms timer ran");
    return end - start;
  }, value);
}

async function ready(page) {
  await page.waitForFunction(() => {
    const panels = [...document.querySelectorAll("[data-panel]")];
    return panels.length === 6 && panels.every((p) => p.dataset.state === "ready");
  }, null, { timeout: 600000, polling: 50 });
}

const ALL = ["masking", "views", "prototypes", "sinkhorn", "ehr", "map"];
const columns = [];
for (const [simd, engine] of [["relaxed", "worker"], ["relaxed", "page"], ["plain", "worker"], ["plain", "page"]]) {
  const browser = await launchChromium();
  const times = { open: [], sample: [], mask: [], draw: [], ehr: [], temperature: [], longest: [] };
  let backend = "";
  for (let i = 0; i <= REPEATS; i++) {
    const page = await browser.newPage({ viewport: { width: 1100, height: 1400 } });
    await page.addInitScript(() => {
      window.__longest = 0;
      new PerformanceObserver((list) => {
        for (const e of list.getEntries()) window.__longest = Math.max(window.__longest, e.duration);
      }).observe({ type: "longtask", buffered: true });
    });
    const t0 = Date.now();
    await page.goto(`${origin}/index.html?notice=0&backend=cpu&mode=learn&simd=${simd}${engine === "page" ? "&worker=0" : ""}`);
    await ready(page);
    if (i > 0) times.open.push(Date.now() - t0);
    backend = await page.textContent("#model-status");
    const samples = await page.$$eval(".learn-sample", (bs) => bs.length);
    // One of each action per page; the first page is the warm-up.
    const other = samples > 1 ? (i % (samples - 1)) + 1 : 0;
    const sample = await timed(page, `() => document.querySelectorAll(".learn-sample")[${other}].click()`, ALL);
    const mask = await timed(page, () => document.getElementById("new-mask").click(), ["masking"]);
    const draw = await timed(page, () => document.getElementById("new-draw").click(), ["views", "prototypes"]);
    const ehr = await timed(page, () => {
      const sex = document.getElementById("learn-sex");
      sex.value = sex.value === "F" ? "M" : "F";
      sex.dispatchEvent(new Event("change", { bubbles: true }));
    }, ["ehr"]);
    const temperature = await timedTemperature(page, i % 2 ? 0.2 : 0.15);
    const [where, longest] = await page.evaluate(() => [window.cxrMsn.engine(), window.__longest]);
    if (where !== engine) throw new Error(`the engine ran in ${where}, not in ${engine}`);
    if (i > 0) {
      times.longest.push(longest);
      times.sample.push(sample);
      times.mask.push(mask);
      times.draw.push(draw);
      times.ehr.push(ehr);
      times.temperature.push(temperature);
    }
    await page.close();
  }
  await browser.close();
  console.log(`${simd} SIMD module, engine in the ${engine}: ${backend.trim()}`);
  columns.push([`${simd} SIMD, engine in ${engine === "page" ? "the page (worker=0)" : "its worker"}`, times]);
}
const cell = (xs) => `${median(xs).toFixed(0)} (${Math.min(...xs).toFixed(0)}-${Math.max(...xs).toFixed(0)})`;
console.log(`\n| learn mode, CPU, ms, median (range) of ${REPEATS} | ${columns.map(([name]) => name).join(" | ")} |`);
console.log(`|---|${columns.map(() => "---|").join("")}`);
for (const [key, what] of [["open", "open the learn tab: model loaded, all six panels"], ["sample", "another sample: every panel again"],
  ["mask", "new mask (one masked encoder pass)"], ["draw", "new draw (12 views encoded)"],
  ["ehr", "EHR change (fused embedding and both heads)"], ["temperature", "temperature (assignments only, no encoder pass)"],
  ["longest", "the page's longest task over all of these (main thread held)"]]) {
  console.log(`| ${what} | ${columns.map(([, times]) => cell(times[key])).join(" | ")} |`);
}
await close();
