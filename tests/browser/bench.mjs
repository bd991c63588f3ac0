// Size and speed of the page, for BENCHMARKS.md: bytes on first load (raw and gzip), time
// to the first prediction, and inference time per image on each backend Chromium offers
// here (the CPU in WebAssembly; WebGPU on SwiftShader, a software adapter). With ORT_MODEL
// (an .onnx file) and ORT_DIR (onnxruntime-web's dist/), ONNX Runtime Web runs that model
// in the same run, on its wasm backend (one thread, like ours) and then on its WebGPU
// backend (alternated with ours on WebGPU), in a browser of its own, so
// that each side's peak memory (the resident high-water mark, VmHWM, of the renderer
// process running it, read from /proc: Linux only) is its own. After warm-up runs (the
// page's own warm-up, then WARM_UP runs of each timing; the browser optimises WebAssembly
// only as it keeps running, and the first several runs are slower), the two sides are
// timed in turn, one run each per round, so that the machine's drift reaches both alike;
// the ratio is of the medians, with the rounds' own ratios beside it.
// Ours is timed twice per round: the encoder alone (like for like with ONNX Runtime) and a
// new file scored whole, as the page scores an upload; and the encoder alone once more in
// the page's plain SIMD module (?simd=plain, a browser of its own), which browsers without
// relaxed SIMD run.
//
//   DIST=../../dist node bench.mjs
//   scripts/bench-browser      (exports the page's own model to ONNX, installs onnxruntime-web)

import { readFileSync } from "node:fs";
import { launchChromium, serve } from "./serve.mjs";

const { origin, served, close, ortModel } = await serve();
const launch = () => launchChromium("--enable-unsafe-webgpu");
const browser = await launch();

// The browser's renderer processes.
async function rendererPids(b) {
  const cdp = await b.newBrowserCDPSession();
  const { processInfo } = await cdp.send("SystemInfo.getProcessInfo");
  await cdp.detach();
  return processInfo.filter((p) => p.type === "renderer").map((p) => p.id);
}

// The largest resident high-water mark among `pids`, in MiB: the peak memory of the one
// page their browser runs (null where /proc or the process list is missing). Read after
// each run and the largest reading kept: here VmHWM fell while a page sat idle (399 to
// 274 MiB while the other browser started), most likely as the kernel reclaimed cold
// pages: Linux reports the larger of a mark it updates only at some events and the
// current resident set.
function peakMiB(pids) {
  let peak = null;
  for (const pid of pids) {
    try {
      const kb = Number(readFileSync(`/proc/${pid}/status`, "utf8").match(/VmHWM:\s+(\d+) kB/)[1]);
      peak = Math.max(peak ?? 0, kb / 1024);
    } catch { /* the process ended, or no /proc */ }
  }
  return peak;
}
const mib = (x) => (x === null ? "?" : `${x.toFixed(0)} MiB`);

const median = (xs) => xs.slice().sort((a, b) => a - b)[Math.floor(xs.length / 2)];
const spread = (xs) => `median ${median(xs).toFixed(0)} ms (${Math.min(...xs).toFixed(0)}-${Math.max(...xs).toFixed(0)}) of ${xs.length}`;
// Rounds of the CPU comparison with ONNX Runtime Web.
const ROUNDS = 9;
// Untimed runs of each timing before the rounds.
const WARM_UP = 5;

// First visit: everything from a cold cache to the first result card.
const page = await browser.newPage();
const t0 = Date.now();
await page.goto(`${origin}/index.html?notice=0&backend=cpu&sample=NORMAL2-IM-1438-0001.jpeg`);
await page.waitForSelector("#results .card:not(.error)", { timeout: 300000 });
const firstPrediction = Date.now() - t0;
// The files of the first visit (the later pages and browsers fetch them again).
const firstLoad = served.slice();
const total = firstLoad.reduce((a, f) => ({ raw: a.raw + f.raw, gzip: a.gzip + f.gzip }), { raw: 0, gzip: 0 });

// Switches the page to `backend` ("cpu" or "webgpu"), waits until the model is ready there
// and the page's warm-up is over; returns the warm-up's number of runs.
async function useBackend(backend) {
  await page.selectOption("#backend", backend);
  await page.waitForFunction((b) => new RegExp(`^Ready: .* on ${b}`).test(document.getElementById("model-status").textContent),
    backend === "cpu" ? "CPU" : "WebGPU", { timeout: 300000 });
  await page.waitForFunction(() => window.cxrMsn.model().warmed === true, null, { timeout: 300000 });
  return page.evaluate(() => window.cxrMsn.warmedUp());
}

// Ours, timed two ways on the same file. `embed`: the encoder alone on an image already
// decoded (the page keeps the last file it read, so reading it first, untimed, leaves the
// encoder's forward pass, the [CLS] read back and its JSON): like for like with ONNX
// Runtime, which runs the encoder on a ready tensor. `score`: a file the page has not just
// read, scored as a user's upload is (decoding, the evaluation view, the encoder with its
// attention maps, both heads, the attention map and the unusual-image check).
const pageWarmUp = await useBackend("cpu");
await page.evaluate(async () => {
  const file = async (name) => await (await fetch(`samples/${name}`)).blob();
  const blob = await file("NORMAL2-IM-1438-0001.jpeg");
  const other = new Uint8Array(await (await file("person1954_bacteria_4886.jpeg")).arrayBuffer());
  window.bench = { blob, bytes: new Uint8Array(await blob.arrayBuffer()), other };
});
const encoderOn = (p) => () => p.evaluate(async () => {
  const { bytes } = window.bench;
  const model = window.cxrMsn.model();
  await model.read_image(bytes);
  const t = performance.now();
  const embedding = JSON.parse(await model.embed(bytes));
  const took = performance.now() - t;
  if (!(embedding.length > 0)) throw new Error("no embedding");
  return took;
});
const encoderOnce = encoderOn(page);
// Decoding and the evaluation view alone (`read_image` on a file the page has not just read).
const decodeOnce = () => page.evaluate(async () => {
  const { bytes, other } = window.bench;
  const model = window.cxrMsn.model();
  await model.read_image(other);
  const t = performance.now();
  await model.read_image(bytes);
  return performance.now() - t;
});
const scoreOnce = () => page.evaluate(async () => {
  const { blob, other } = window.bench;
  await window.cxrMsn.model().read_image(other);
  const t = performance.now();
  await window.cxrMsn.score(blob, { sex: "F", age: 4 });
  return performance.now() - t;
});

const ourPids = await rendererPids(browser);
const ourSide = { pids: ourPids, peak: peakMiB(ourPids) };

// The page's plain SIMD module (?simd=plain), which browsers without relaxed SIMD run
// (Safari, for one), in a browser of its own: its encoder alone, as above.
const plainBrowser = await launch();
const plainPage = await plainBrowser.newPage();
await plainPage.goto(`${origin}/index.html?notice=0&backend=cpu&simd=plain`);
await plainPage.waitForFunction(() => window.cxrMsn?.model()?.warmed === true, null, { timeout: 300000 });
await plainPage.evaluate(async () => {
  const blob = await (await fetch("samples/NORMAL2-IM-1438-0001.jpeg")).blob();
  window.bench = { bytes: new Uint8Array(await blob.arrayBuffer()) };
});
const plainOnce = encoderOn(plainPage);
const modules = {
  ours: await page.evaluate(() => `${window.wasmSimd}: ${window.cxrMsn.backend()}`),
  plain: await plainPage.evaluate(() => `${window.wasmSimd}: ${window.cxrMsn.backend()}`),
};

// ONNX Runtime Web on the same model, in a browser of its own (its own renderer peak memory).
let ort = null;
let ortBrowser = null;
let ortPage = null;
let ortOnce = null;
if (ortModel) {
  ortBrowser = await launch();
  ortPage = await ortBrowser.newPage();
  await ortPage.goto(`${origin}/ort.html`);
  const version = await ortPage.evaluate(async () => {
    const o = window.ort;
    o.env.wasm.wasmPaths = "/ort/";
    o.env.wasm.numThreads = 1;
    const session = await o.InferenceSession.create("/ort-model.onnx", { executionProviders: ["wasm"] });
    const input = new o.Tensor("float32", Float32Array.from({ length: 3 * 224 * 224 }, () => Math.random() * 2 - 1), [1, 3, 224, 224]);
    window.bench = { session, input };
    return o.env.versions?.web || "?";
  });
  ortOnce = () => ortPage.evaluate(async () => {
    const t = performance.now();
    await window.bench.session.run({ images: window.bench.input });
    return performance.now() - t;
  });
  ort = { version, times: [], pids: await rendererPids(ortBrowser), peak: null };
}

// One run of `once`, then the peak memory of the page `side` stands for.
async function timed(once, side) {
  const t = await once();
  side.peak = Math.max(side.peak ?? 0, peakMiB(side.pids) ?? 0) || null;
  return t;
}

// Warm-up runs of each timing, then the rounds: ours (encoder, whole score, decoding), ORT
// and the plain module's encoder in turn. Each list holds the warm-up runs first.
const encoder = [];
const plainEncoder = [];
const scored = [];
const decoded = [];
const rounds = ortModel ? ROUNDS : 3;
for (let i = 0; i < WARM_UP + rounds; i++) {
  encoder.push(await timed(encoderOnce, ourSide));
  if (ort) ort.times.push(await timed(ortOnce, ort));
  scored.push(await timed(scoreOnce, ourSide));
  decoded.push(await timed(decodeOnce, ourSide));
  plainEncoder.push(await plainOnce());
}
await plainBrowser.close();

// WebGPU (here Chromium's SwiftShader, a software adapter): ours and ONNX Runtime Web's
// WebGPU execution provider on the same model, in turn, after a warm-up run each (the
// first compiles the shaders).
const GPU_ROUNDS = 3;
await useBackend("webgpu");
let ortGpu = null;
if (ort) {
  const failed = await ortPage.evaluate(async () => {
    try {
      window.bench.gpu = await window.ort.InferenceSession.create("/ort-model.onnx", { executionProviders: ["webgpu"] });
      return null;
    } catch (e) {
      return String(e);
    }
  });
  ortGpu = failed ? { failed } : { times: [] };
}
const ortGpuOnce = () => ortPage.evaluate(async () => {
  const t = performance.now();
  await window.bench.gpu.run({ images: window.bench.input });
  return performance.now() - t;
});
const gpuEncoder = [];
const gpuScored = [];
for (let i = 0; i < 1 + GPU_ROUNDS; i++) {
  gpuEncoder.push(await encoderOnce());
  if (ortGpu?.times) ortGpu.times.push(await ortGpuOnce());
  gpuScored.push(await scoreOnce());
}
if (ort) await ortBrowser.close();
const backendName = await page.evaluate(() => window.cxrMsn.backend());

// A student's first predictions on a fresh page (a browser of its own, nothing cached),
// with and without the page's warm-up: six new files in a row, the first one decoded
// while the optimising compiler has not caught up yet.
async function firstPredictions(warmUp) {
  const b = await launch();
  const p = await b.newPage();
  await p.goto(`${origin}/index.html?notice=0&backend=cpu${warmUp ? "" : "&warmup=0"}`);
  const [runs, ms] = await p.evaluate(async () => {
    await window.cxrMsn.ready;
    const t = performance.now();
    const n = await window.cxrMsn.warmedUp();
    return [n, performance.now() - t];
  });
  const times = await p.evaluate(async () => {
    const file = async (name) => new Uint8Array(await (await fetch(`samples/${name}`)).arrayBuffer());
    const files = [await file("NORMAL2-IM-1438-0001.jpeg"), await file("person1954_bacteria_4886.jpeg")];
    const out = [];
    for (let i = 0; i < 6; i++) {
      const t = performance.now();
      await window.cxrMsn.score(new Blob([files[i % 2]]), { sex: "F", age: 4 });
      out.push(performance.now() - t);
    }
    return out;
  });
  await b.close();
  return { runs, ms, times };
}
const cold = await firstPredictions(false);
const warmed = await firstPredictions(true);

console.log("first load (cold cache):");
for (const f of firstLoad.filter((f) => !f.path.startsWith("/samples"))) {
  console.log(`  ${f.path.padEnd(40)} ${(f.raw / 1e6).toFixed(2)} MB raw, ${(f.gzip / 1e6).toFixed(2)} MB gzip`);
}
console.log(`  total (with the sample)                 ${(total.raw / 1e6).toFixed(2)} MB raw, ${(total.gzip / 1e6).toFixed(2)} MB gzip`);
console.log(`time to the first prediction: ${(firstPrediction / 1000).toFixed(1)} s`);
const list = (xs) => xs.map((t) => t.toFixed(0)).join(", ");
console.log(`a fresh page's first six predictions (new files), CPU: without the warm-up ${list(cold.times)} ms; after the page's warm-up (${warmed.runs} runs, about ${(warmed.ms / 1000).toFixed(1)} s) ${list(warmed.times)} ms`);
// The timed runs after `warm` warm-up runs, and the first of those.
const after = (xs, warm = WARM_UP) => `${spread(xs.slice(warm))} (first ${xs[0].toFixed(0)} ms)`;
console.log(`the page's own warm-up after loading the model: ${pageWarmUp} runs`);
console.log(`the page's module in this browser: ${modules.ours}; with ?simd=plain: ${modules.plain}`);
console.log(`the encoder alone (embed, the file already decoded), CPU (wasm): ${after(encoder)}`);
console.log(`the encoder alone, the plain SIMD module (?simd=plain, as in browsers without relaxed SIMD): ${after(plainEncoder)}`);
console.log(`a new file scored whole (decoding, view, encoder with attention maps, both heads, novelty), CPU (wasm): ${after(scored)}`);
console.log(`of which decoding and the evaluation view (read_image), CPU (wasm): ${after(decoded)}`);
console.log(`renderer peak memory, ours: ${mib(ourSide.peak)} (loading, the first prediction, the page's warm-up and ${encoder.length + scored.length + decoded.length} more runs)`);
console.log(`${backendName}: the encoder alone ${after(gpuEncoder, 1)}; a new file scored whole ${after(gpuScored, 1)}`);
if (ort) {
  const theirs = ort.times.slice(WARM_UP);
  const ratio = (ours) => {
    const each = ours.slice(WARM_UP).map((t, i) => t / theirs[i]);
    return `${(median(ours.slice(WARM_UP)) / median(theirs)).toFixed(2)}, the rounds ${Math.min(...each).toFixed(2)}-${Math.max(...each).toFixed(2)}`;
  };
  console.log(`ONNX Runtime Web ${ort.version} (wasm, 1 thread), the same encoder on a ready tensor: ${after(ort.times)}; renderer peak memory ${mib(ort.peak)} (loading and ${ort.times.length} runs)`);
  console.log(`ours / ONNX Runtime Web, the encoder alone (like for like): ${ratio(encoder)} (${ROUNDS} rounds alternated)`);
  console.log(`ours / ONNX Runtime Web, a new file scored whole against its encoder alone: ${ratio(scored)}`);
  console.log(`ours (the plain SIMD module) / ONNX Runtime Web, the encoder alone: ${ratio(plainEncoder)}`);
  if (ortGpu.failed) {
    console.log(`ONNX Runtime Web on WebGPU: no session (${ortGpu.failed})`);
  } else {
    const theirs = ortGpu.times.slice(1);
    const each = gpuEncoder.slice(1).map((t, i) => t / theirs[i]);
    console.log(`ONNX Runtime Web ${ort.version} (webgpu), the same encoder on a ready tensor: ${after(ortGpu.times, 1)}`);
    console.log(`ours / ONNX Runtime Web on WebGPU, the encoder alone: ${(median(gpuEncoder.slice(1)) / median(theirs)).toFixed(2)}, the rounds ${Math.min(...each).toFixed(2)}-${Math.max(...each).toFixed(2)} (${GPU_ROUNDS} rounds alternated)`);
  }
}
await browser.close();
close();
