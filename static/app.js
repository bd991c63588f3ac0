// The page of cxr-msn: the interface only. Decoding, preprocessing and inference are the
// wasm module's (web/src, through the cxr-msn model crate), which runs in a worker
// (engine.js).
//
// URL parameters: model=URL (a model file from `cxr-msn export`), sample=FILE (a bundled
// sample to run at once), notice=0 (hide the notice, for a class that has seen it),
// backend=auto|webgpu|cpu, mode=learn (learn.js's tab alone; the sample is then learn
// mode's image, not scored here), warmup=0 (no warm-up after the model loads), simd=plain
// (read by the loader in index.html, web/loader.mjs: the plain SIMD module), worker=0 (the
// model engine on the page itself rather than in a worker, engine.js).
//
// A small JavaScript API for pages that embed this one: `window.cxrMsn` (see README);
// learn.js reaches the loaded model through it too.

import { drawGrey } from "./draw.js";
import { startEngine } from "./engine.js";

const $ = (id) => document.getElementById(id);
const params = new URLSearchParams(location.search);
const MODEL_CACHE = "cxr-msn-models-v1";

const state = {
  engine: null, // engine.js: where the wasm module runs (a worker, else the page)
  starting: null, // the engine, once started (a promise)
  model: null,
  modelBytes: null,
  modelName: "",
  summary: null,
  lastFiles: [],
  // Files picked before the model was ready: scored once it is (the latest pick only).
  waiting: null,
  // The form's values that the last DICOM header filled in ({age: "64", ...}): cleared
  // when the next image without a header comes, unless changed by hand since.
  fromHeader: {},
  // Whether the notice has been acknowledged (or hidden with notice=0).
  acknowledged: false,
  // Counts scorings: the latest one's cards are shown (scoreEach).
  generation: 0,
  // Whether the model is the page's own (made on synthetic X-rays), not one given to it.
  bundled: false,
  rows: [],
  // Scorings running now, the page's or an embedding page's (warm-up gives way to them).
  scoring: 0,
  // The current model's warm-up: a promise of the number of runs it made.
  warming: Promise.resolve(0),
};

// The wasm module the page's loader chose and is compiling (web/loader.mjs:
// `window.wasmModule`, `window.wasmCompiled`; the engine starts it), or under `trunk serve`
// the module trunk's own loader has started on the page (`window.wasmBindings`).
function wasmChosen() {
  return new Promise((resolve) => {
    const chosen = () => ({ name: window.wasmModule || null, compiled: window.wasmCompiled || null, bindings: window.wasmBindings || null });
    if (window.wasmModule || window.wasmBindings) return resolve(chosen());
    for (const event of ["cxr-msn-wasm", "TrunkApplicationStarted"]) addEventListener(event, () => resolve(chosen()), { once: true });
  });
}

// Lets the browser paint before long work.
const yieldToBrowser = () => new Promise((r) => setTimeout(r, 0));

function say(text) {
  $("model-status").textContent = text;
}

function showError(text) {
  const m = $("message");
  m.textContent = text;
  m.hidden = !text;
}

const onCpu = (model) => model.backend().startsWith("CPU");

// Throws when WebGPU reported anything wrong since the engine started (gpu-guard.js, in the
// engine's realm): then the WebGPU result just computed cannot be trusted.
async function trustWebGpu(model) {
  if (onCpu(model)) return;
  const trouble = await state.engine.trouble();
  if (trouble) throw new Error(trouble);
}

// Moves the page to the CPU after a WebGPU failure, reloading the model there (which tells
// learn mode, through the `cxr-msn-model` event, to compute its panels again).
async function fallBackToCpu(error) {
  $("backend").value = "cpu";
  await loadModel(state.modelBytes, state.modelName, String(error.message || error));
}

// True while `model`'s results can be trusted; false once WebGPU reported trouble, after
// moving the page to the CPU if `model` is still the current one.
async function trustOrMove(model) {
  try {
    await trustWebGpu(model);
    return true;
  } catch (e) {
    if (state.model === model) await fallBackToCpu(e);
    return false;
  }
}

// Runs `work(model)` on the current model and returns its result; on WebGPU, a failure or
// anything WebGPU reported meanwhile moves the page to the CPU and runs it again there.
async function computeTrusted(work) {
  const model = state.model;
  try {
    const out = await work(model);
    await trustWebGpu(model);
    return out;
  } catch (e) {
    if (onCpu(model)) throw e;
    if (state.model === model) await fallBackToCpu(e);
    return work(state.model);
  }
}

// Warming up. The browser first runs WebAssembly from a quick baseline compilation and
// optimises each function only once it has run for a while, in the background: measured
// in Chromium (ninth session), a fresh page's first predictions of new files took 400-540,
// 190-310 and 100-160 ms where later ones took 70-80 ms (BENCHMARKS.md). So once the page is idle after a
// model loads, it scores a card it draws itself (no user data) until two runs in a row
// agree within 10 % (at least 5 runs, at most 12 or 4 s), pausing between runs so the page
// stays responsive; a file the user scores meanwhile stops it. On WebGPU one or two runs
// compile the shaders; a software WebGPU adapter (5 s a run) is not warmed up.
const WARM_UP = { minRuns: 5, maxRuns: 12, maxMs: 4000, agree: 0.1, pauseMs: 20 };

// A 256 x 256 grey gradient as PNG bytes: what the warm-up scores.
async function warmUpCard() {
  const canvas = document.createElement("canvas");
  canvas.width = canvas.height = 256;
  const ctx = canvas.getContext("2d");
  const gradient = ctx.createLinearGradient(0, 0, 256, 256);
  gradient.addColorStop(0, "#000");
  gradient.addColorStop(1, "#fff");
  ctx.fillStyle = gradient;
  ctx.fillRect(0, 0, 256, 256);
  const blob = await new Promise((resolve) => canvas.toBlob(resolve, "image/png"));
  return new Uint8Array(await blob.arrayBuffer());
}

async function warmUp(model) {
  const backend = model.backend();
  if (backend.includes("software")) return 0;
  const gpu = backend.startsWith("WebGPU");
  const bytes = await warmUpCard();
  const times = [];
  const started = performance.now();
  while (times.length < (gpu ? 2 : WARM_UP.maxRuns) && performance.now() - started < WARM_UP.maxMs) {
    if (state.model !== model || state.scoring > 0) break;
    const t = performance.now();
    await model.predict(bytes, "{}");
    times.push(performance.now() - t);
    const [a, b] = times.slice(-2);
    if (!gpu && times.length >= WARM_UP.minRuns && Math.abs(a - b) <= WARM_UP.agree * Math.min(a, b)) break;
    await new Promise((r) => setTimeout(r, WARM_UP.pauseMs));
  }
  // A WebGPU fault the warm-up met moves the page to the CPU before the user scores.
  if (gpu) await trustOrMove(model);
  return times.length;
}

// Starts the current model's warm-up unless it has had one; learn mode alone and
// `warmup=0` skip it.
function warmUpWhenIdle() {
  const model = state.model;
  if (!model || model.warmed) return;
  model.warmed = true;
  const skip = params.get("mode") === "learn" || params.get("warmup") === "0";
  state.warming = skip ? Promise.resolve(0) : warmUp(model).catch(() => 0);
}

// Fetches a model file with a progress bar; cached by the browser (Cache API) for the next
// visit.
async function fetchModel(url) {
  const bar = $("model-progress");
  let cache = null;
  try {
    cache = await caches.open(MODEL_CACHE);
    const hit = await cache.match(url);
    if (hit) {
      say(`Loading ${url} from this browser's cache…`);
      return new Uint8Array(await hit.arrayBuffer());
    }
  } catch (_) {
    cache = null; // no Cache API (e.g. a non-secure origin): download every time
  }
  const response = await fetch(url);
  if (!response.ok) throw new Error(`${url}: the server answered ${response.status} ${response.statusText}`);
  const total = Number(response.headers.get("Content-Length")) || 0;
  const reader = response.body.getReader();
  const chunks = [];
  let received = 0;
  bar.hidden = false;
  for (;;) {
    const { done, value } = await reader.read();
    if (done) break;
    chunks.push(value);
    received += value.length;
    const mb = (received / 1e6).toFixed(1);
    if (total) {
      bar.max = total;
      bar.value = received;
      say(`Downloading the model: ${mb} of ${(total / 1e6).toFixed(1)} MB (${Math.round((100 * received) / total)}%)`);
    } else {
      bar.removeAttribute("value");
      say(`Downloading the model: ${mb} MB`);
    }
  }
  bar.hidden = true;
  const bytes = new Uint8Array(received);
  let offset = 0;
  for (const c of chunks) {
    bytes.set(c, offset);
    offset += c.length;
  }
  if (cache) {
    try {
      await cache.put(url, new Response(bytes.slice(), { headers: { "Content-Type": "application/octet-stream" } }));
    } catch (_) {
      /* full or refused: fine, it is only a cache */
    }
  }
  return bytes;
}

// Loads model bytes on the chosen backend; on a WebGPU failure, falls back to the CPU.
// `fallbackReason`: why the page is moving to the CPU, for the status line.
async function loadModel(bytes, name, fallbackReason = null) {
  const backend = $("backend").value;
  say(`Preparing ${name} on ${backend === "auto" ? "the best backend" : backend}…`);
  await yieldToBrowser();
  const started = performance.now();
  state.engine = await state.starting; // a model file picked before the engine was ready waits
  let model;
  try {
    model = await state.engine.load(bytes, backend);
    await trustWebGpu(model);
  } catch (e) {
    if (backend === "cpu") throw e;
    // A WebGPU failure must not stop the page: run on the CPU.
    if (model) model.free();
    await state.engine.check(bytes); // a damaged file is reported as such, not as a GPU problem
    model = await state.engine.load(bytes, "cpu");
    model.fallbackReason = String(e.message || e);
  }
  if (fallbackReason) model.fallbackReason = fallbackReason;
  if (state.model) state.model.free();
  state.model = model;
  state.modelBytes = bytes;
  state.modelName = name;
  state.summary = JSON.parse(model.summary());
  const ms = Math.round(performance.now() - started);
  say(`Ready: ${name} (${(bytes.length / 1e6).toFixed(1)} MB) on ${model.backend()}` +
      `${model.fallbackReason ? `, because WebGPU failed: ${model.fallbackReason}` : ""}; set up in ${ms} ms.`);
  $("model-description").textContent = state.summary.description;
  $("model-details").hidden = false;
  for (const row of document.querySelectorAll("#ehr [data-input]")) {
    row.hidden = !state.summary.ehr_inputs.includes(row.dataset.input);
  }
  $("ehr").querySelector("legend").textContent = state.summary.ehr_inputs.length
    ? "About the patient (used by the image + EHR head)"
    : "This model reads the image only";
  document.dispatchEvent(new CustomEvent("cxr-msn-model", { detail: state.summary }));
}

// Loads the model at `url`, from `download` (its bytes, being fetched) when given.
async function loadModelFrom(url, download = fetchModel(url)) {
  try {
    const bytes = await download;
    await loadModel(bytes, url.split("/").pop() || url);
  } catch (e) {
    say(`The model could not be loaded: ${e.message || e}`);
    throw e;
  }
}

// The form's EHR values for the model ({age, sex, ...}; an empty field is left out), and
// what is wrong with them: an age outside the field's range or not a whole number is left
// out too, and said so, rather than scored (a browser would only outline the field).
function ehrValues() {
  const v = {};
  const problems = [];
  const age = $("age");
  if (age.value !== "" || age.validity.badInput) {
    const n = Number(age.value);
    if (age.validity.valid && Number.isFinite(n)) v.age = n;
    else problems.push(`the age must be a whole number of years from ${age.min} to ${age.max}`);
  }
  for (const k of ["sex", "view", "orientation"]) if ($(k).value) v[k] = $(k).value;
  for (const k of ["icu", "mortality"]) if ($(k).value) v[k] = $(k).value === "true";
  return { values: v, problems };
}

// The form's values for one file: a DICOM's own header fills what the form leaves empty
// (several files at once each keep their own patient).
function ehrFor(info, form) {
  const h = info.from_header || {};
  const values = { ...form };
  if (values.age == null && h.age != null) values.age = Math.round(h.age);
  for (const k of ["sex", "view"]) if (values[k] == null && h[k]) values[k] = h[k];
  return values;
}

// The form follows a single new image: a DICOM header fills age, sex and view; values an
// earlier header filled, and not changed since, are cleared for an image without one.
function prefillFromHeader(info) {
  for (const [k, value] of Object.entries(state.fromHeader)) if ($(k).value === value) $(k).value = "";
  state.fromHeader = {};
  const h = info.from_header || {};
  if (h.age != null) $("age").value = Math.round(h.age);
  if (h.sex) $("sex").value = h.sex;
  if (h.view) $("view").value = h.view;
  for (const k of ["age", "sex", "view"]) {
    const given = k === "age" ? h.age != null : h[k];
    if (given && !$(k).closest(".row").hidden) state.fromHeader[k] = $(k).value;
  }
  headerNote();
}

// Says which of the form's values came from a DICOM header (and are unchanged since).
function headerNote() {
  const filled = Object.keys(state.fromHeader);
  const note = $("header-note");
  note.hidden = !filled.length;
  note.textContent = filled.length ? `Filled from the DICOM header: ${filled.join(", ")}. Change them to see what they do.` : "";
}

// The EHR inputs this model reads, in words ("age and sex").
function inputsInWords(names) {
  return names.length > 1 ? `${names.slice(0, -1).join(", ")} and ${names[names.length - 1]}` : names.join("");
}

// "age 64, female, PA": the values a card was scored with, those the model reads.
function describeEhr(values) {
  const words = { F: "female", M: "male" };
  return (state.summary.ehr_inputs || [])
    .filter((k) => values[k] != null)
    .map((k) => (k === "age" ? `age ${values.age}` : k === "sex" ? words[values.sex] || values.sex : `${k} ${values[k]}`))
    .join(", ");
}

// Draws the 224x224 view and, when asked, the attention map over it.
function drawView(canvas, pixels, attention, grid, show) {
  const ctx = drawGrey(canvas, pixels, 224);
  if (!show || !grid) return;
  // Stretched to the image's own range and squared, so the few patches [CLS] attends to
  // most stand out.
  const lo = Math.min(...attention);
  const span = Math.max(...attention) - lo || 1;
  const cell = 224 / grid;
  for (let r = 0; r < grid; r++) {
    for (let c = 0; c < grid; c++) {
      const a = (attention[r * grid + c] - lo) / span;
      ctx.fillStyle = `rgba(255, 60, 0, ${(0.7 * a * a).toFixed(3)})`;
      ctx.fillRect(c * cell, r * cell, cell, cell);
    }
  }
}

function pct(p) {
  return `${(100 * p).toFixed(1)}%`;
}

function resultCard(name, info, prediction, pixels, ms, ehr) {
  const card = document.createElement("article");
  card.className = "card";
  const title = document.createElement("h3");
  title.textContent = name;
  card.append(title);

  const figure = document.createElement("figure");
  const canvas = document.createElement("canvas");
  canvas.width = 224; canvas.height = 224;
  canvas.setAttribute("role", "img");
  canvas.setAttribute("aria-label", `The X-ray as the model sees it (224 by 224 pixels)`);
  const toggle = document.createElement("label");
  const box = document.createElement("input");
  box.type = "checkbox";
  box.checked = false;
  toggle.append(box, " attention map");
  box.addEventListener("change", () => drawView(canvas, pixels, prediction.attention, prediction.grid, box.checked));
  drawView(canvas, pixels, prediction.attention, prediction.grid, false);
  const caption = document.createElement("figcaption");
  caption.textContent = `${info.format}, ${info.width}×${info.height}, ${info.bit_depth}-bit. Scored in ${ms} ms on ${state.model.backend().split(";")[0]}.`;
  figure.append(canvas, toggle, caption);
  card.append(figure);

  const scores = document.createElement("div");
  scores.className = "scores";
  card.append(scores);
  if (prediction.novelty && prediction.novelty.unusual) {
    const warn = document.createElement("p");
    warn.className = "unusual";
    warn.textContent = `This image looks unlike the images the model was checked on: its embedding lies ` +
      `${prediction.novelty.distance.toFixed(1)} from them, beyond ${prediction.novelty.percentile}% of those images ` +
      `(${prediction.novelty.threshold.toFixed(1)}). ` + (state.bundled
      ? "This demo's bundled model saw synthetic X-rays only, so a real film looks unusual to it: its scores here " +
        "show how the page works, not what the film shows."
      : "It may not be a frontal chest X-ray, or it differs from the training data; read the scores with extra caution.");
    scores.append(warn);
  }
  const table = document.createElement("table");
  table.className = "findings";
  const fused = prediction.image_ehr;
  table.innerHTML = `<thead><tr><th scope="col">Finding</th><th scope="col">Image only</th>${fused ? '<th scope="col">Image + EHR</th>' : ""}</tr></thead>`;
  const body = document.createElement("tbody");
  prediction.labels.forEach((label, i) => {
    const tr = document.createElement("tr");
    const th = document.createElement("th");
    th.scope = "row";
    th.textContent = label;
    tr.append(th);
    const threshold = prediction.operating_points[i];
    for (const probs of fused ? [prediction.image, fused] : [prediction.image]) {
      const td = document.createElement("td");
      const p = probs[i];
      const above = threshold != null && p >= threshold;
      td.className = above ? "bar above" : "bar";
      // Widths are set through the style object: the page's Content-Security-Policy
      // refuses inline style attributes.
      const span = (cls, text = "") => Object.assign(document.createElement("span"), { className: cls, textContent: text });
      const fill = span("fill");
      fill.style.width = `${(100 * p).toFixed(1)}%`;
      td.append(fill);
      if (threshold != null) {
        const mark = span("mark");
        mark.style.left = `${(100 * threshold).toFixed(1)}%`;
        mark.title = `operating point ${pct(threshold)}`;
        td.append(mark);
      }
      td.append(span("value", `${pct(p)}${above ? " ▲" : ""}`));
      td.setAttribute("aria-label", `${label}: ${pct(p)}${threshold != null ? `, operating point ${pct(threshold)}${above ? ", above it" : ""}` : ""}`);
      tr.append(td);
    }
    body.append(tr);
  });
  table.append(body);
  scores.append(table);
  const legend = document.createElement("p");
  legend.className = "hint";
  const inputs = state.summary.ehr_inputs || [];
  const missing = inputs.filter((k) => ehr.values[k] == null);
  legend.textContent = (prediction.operating_points.length ? "▲ marks a score at or above the label's operating point (the dark tick, chosen on validation data at export). " : "") +
    (fused ? `Scored with ${describeEhr(ehr.values)}: the two columns differ only in what these patient data add.` :
      !inputs.length ? "" :
      ehr.problems.length ? `No image + EHR column: ${ehr.problems.join("; ")}.` :
      missing.length ? `No image + EHR column: enter the patient's ${inputsInWords(missing)} above to see what they add.` :
      prediction.image_ehr_missing ? `No image + EHR score: ${prediction.image_ehr_missing}.` : "");
  scores.append(legend);
  return card;
}

// `work()`, with the warm-up giving way while it runs.
async function busy(work) {
  state.scoring++;
  try {
    return await work();
  } finally {
    state.scoring--;
  }
}

// Scores files one after another, yielding between them so the page stays responsive.
async function scoreFiles(files, fromForm = false) {
  if (!files.length) return;
  if (!state.model) {
    // Picked before the model is ready: scored as soon as it is.
    state.waiting = { files, fromForm };
    const names = files.length === 1 ? files[0].name : `${files.length} files`;
    say(`${names} will be scored once the model is ready` +
      `${state.acknowledged ? "" : ": first read the notice above and choose \u201cI understand\u201d"}.`);
    return;
  }
  await busy(() => scoreEach(files, fromForm));
}

// Scores what was picked before the model was ready; whether there was anything.
async function scoreWaiting() {
  const waiting = state.waiting;
  state.waiting = null;
  if (waiting) await scoreFiles(waiting.files, waiting.fromForm);
  return !!waiting;
}

// The latest scoring wins: one that a newer one has replaced stops at its next step, so
// that two never write cards at once (a sample clicked while the form's change scores the
// shown files again).
async function scoreEach(files, fromForm) {
  const generation = ++state.generation;
  const current = () => generation === state.generation;
  showError("");
  const results = $("results");
  // New files replace the cards at once; the same files scored again with new patient
  // data replace theirs one by one, so that the page does not jump under the pointer.
  if (!fromForm) results.innerHTML = "";
  const place = (n, card) => {
    const old = fromForm ? results.children[n] : null;
    if (old) old.replaceWith(card);
    else results.append(card);
  };
  const rows = [];
  // Said once at the end (the status line is a live region), not by every card.
  let failed = 0;
  let unusual = 0;
  state.lastFiles = files;
  $("rescore").disabled = false;
  for (const [n, file] of files.entries()) {
    say(`Scoring ${file.name} (${n + 1} of ${files.length})…`);
    await yieldToBrowser();
    if (!current()) return;
    try {
      const bytes = new Uint8Array(await file.arrayBuffer());
      const info = JSON.parse(await state.model.read_image(bytes));
      if (!current()) return;
      if (!fromForm && files.length === 1) prefillFromHeader(info);
      const form = ehrValues();
      const ehr = { values: ehrFor(info, form.values), problems: form.problems };
      const pixels = await state.model.view(bytes);
      const started = performance.now();
      // A failing WebGPU call, or one WebGPU reported trouble with: the CPU's answer.
      const prediction = JSON.parse(await computeTrusted((m) => m.predict(bytes, JSON.stringify(ehr.values))));
      const ms = Math.round(performance.now() - started);
      if (!current()) return;
      place(n, resultCard(file.name, info, prediction, pixels, ms, ehr));
      if (prediction.novelty && prediction.novelty.unusual) unusual += 1;
      const used = (state.summary.ehr_inputs || []).map((k) => ehr.values[k] ?? "");
      for (const [head, probs] of [["image", prediction.image], ["image+ehr", prediction.image_ehr]]) {
        if (probs) rows.push([file.name, head, ...probs, ...used]);
      }
      state.labels = prediction.labels;
      document.dispatchEvent(new CustomEvent("cxr-msn-result", { detail: { file: file.name, prediction, ms } }));
    } catch (e) {
      if (!current()) return;
      const card = document.createElement("article");
      card.className = "card error";
      card.textContent = `${file.name}: ${e.message || e}`;
      place(n, card);
      failed += 1;
    }
  }
  while (results.children.length > files.length) results.lastElementChild.remove();
  state.rows = rows;
  const reason = state.model.fallbackReason;
  const outcome = [
    failed ? `${failed} of ${files.length} file${files.length === 1 ? "" : "s"} could not be scored (see ${failed === 1 ? "its card" : "their cards"})` : "",
    unusual ? `${unusual} scored image${unusual === 1 ? " looks" : "s look"} unusual to the model` : "",
  ].filter(Boolean).join("; ");
  say(`Ready: ${state.modelName} on ${state.model.backend()}${reason ? `, because WebGPU failed: ${reason}` : ""}.` +
    (outcome ? ` ${outcome}.` : ""));
  $("csv").hidden = state.rows.length === 0;
}

function downloadCsv() {
  const quote = (s) => (/[",\n]/.test(s) ? `"${String(s).replace(/"/g, '""')}"` : String(s));
  // The scores, then the patient data each file was scored with (what the model reads).
  const inputs = state.summary.ehr_inputs || [];
  const lines = [["file", "head", ...state.labels, ...inputs].map(quote).join(",")];
  const numbers = 2 + state.labels.length;
  for (const row of state.rows) lines.push(row.map((v, i) => (i < 2 || i >= numbers ? quote(v) : v)).join(","));
  const blob = new Blob([lines.join("\n") + "\n"], { type: "text/csv" });
  const a = document.createElement("a");
  a.href = URL.createObjectURL(blob);
  a.download = "cxr-msn-scores.csv";
  a.click();
  URL.revokeObjectURL(a.href);
}

async function sampleFile(sample) {
  const response = await fetch(`samples/${sample.file}`);
  if (!response.ok) throw new Error(`samples/${sample.file}: ${response.status}`);
  return new File([await response.blob()], sample.file);
}

async function showSamples() {
  const list = await (await fetch("samples/samples.json")).json();
  const box = $("samples");
  const heading = document.createElement("p");
  heading.textContent = "Or try a real X-ray:";
  box.append(heading);
  for (const sample of list) {
    const button = document.createElement("button");
    button.type = "button";
    button.className = "sample";
    button.dataset.file = sample.file;
    button.textContent = sample.title;
    button.title = sample.attribution;
    button.addEventListener("click", async () => scoreFiles([await sampleFile(sample)]));
    const credit = document.createElement("small");
    credit.textContent = sample.attribution;
    const item = document.createElement("div");
    item.append(button, credit);
    box.append(item);
  }
  return list;
}

function wireInputs() {
  const drop = $("drop");
  drop.addEventListener("dragover", (e) => { e.preventDefault(); drop.classList.add("over"); });
  drop.addEventListener("dragleave", () => drop.classList.remove("over"));
  drop.addEventListener("drop", (e) => {
    e.preventDefault();
    drop.classList.remove("over");
    scoreFiles([...e.dataTransfer.files]);
  });
  drop.addEventListener("keydown", (e) => {
    if (e.key === "Enter" || e.key === " ") { e.preventDefault(); $("image-file").click(); }
  });
  $("image-file").addEventListener("change", (e) => {
    const files = [...e.target.files];
    // Emptied, so that picking the same file again scores it again.
    e.target.value = "";
    scoreFiles(files);
  });
  $("rescore").addEventListener("click", () => scoreFiles(state.lastFiles, true));
  // New patient data score the shown files again (the image-only column stays as it was).
  for (const id of ["age", "sex", "view", "orientation", "icu", "mortality"]) {
    $(id)?.addEventListener("change", () => {
      if (id in state.fromHeader) {
        delete state.fromHeader[id];
        headerNote();
      }
      if (state.model && state.lastFiles.length) scoreFiles(state.lastFiles, true);
    });
  }
  $("csv").addEventListener("click", downloadCsv);
  $("model-file").addEventListener("change", async (e) => {
    const file = e.target.files[0];
    if (!file) return;
    try {
      await loadModel(new Uint8Array(await file.arrayBuffer()), file.name);
      state.bundled = false;
      if (state.lastFiles.length) await scoreFiles(state.lastFiles, true);
      warmUpWhenIdle();
    } catch (err) {
      say(`${file.name} cannot be used: ${err.message || err}`);
    }
  });
  $("backend").addEventListener("change", async () => {
    if (!state.modelBytes) return;
    await loadModel(state.modelBytes, state.modelName);
    if (state.lastFiles.length) await scoreFiles(state.lastFiles, true);
    warmUpWhenIdle();
  });
}

// In a frame (embed.js's <cxr-msn-demo>, or an iframe): tells the embedding page the
// content's height whenever it changes, so that it can size the frame to it. Only the
// height: no file name, image or score leaves the page this way.
function reportHeight() {
  if (window.parent === window || typeof ResizeObserver !== "function") return;
  let last = 0;
  const post = () => {
    const height = Math.ceil(document.documentElement.getBoundingClientRect().height);
    if (height === last) return;
    last = height;
    window.parent.postMessage({ type: "cxr-msn-height", height }, "*");
  };
  new ResizeObserver(post).observe(document.documentElement);
  post();
}

async function start() {
  if (["auto", "webgpu", "cpu"].includes(params.get("backend"))) $("backend").value = params.get("backend");
  reportHeight();
  wireInputs();
  // The engine starts (its worker loads while the module compiles) while the notice is read.
  state.starting = wasmChosen().then(startEngine);
  state.starting.catch((e) => say(`The page's model engine could not start: ${e.message || e}`));
  const acknowledged = new Promise((resolve) => {
    if (params.get("notice") === "0") {
      $("notice").hidden = true;
      state.acknowledged = true;
      return resolve();
    }
    $("notice-ok").addEventListener("click", () => {
      $("notice").classList.add("seen");
      $("notice-ok").hidden = true;
      state.acknowledged = true;
      resolve();
    }, { once: true });
  });
  const samples = await showSamples();
  await acknowledged;
  // The model downloads while the engine starts.
  const url = params.get("model") || "model.safetensors";
  state.bundled = !params.get("model");
  const download = fetchModel(url);
  download.catch(() => {}); // reported by loadModelFrom
  await loadModelFrom(url, download);
  const wanted = params.get("sample");
  const sample = samples.find((s) => s.file === wanted);
  // A file the user picked while the model loaded comes before the page's own sample.
  if (!(await scoreWaiting()) && sample && params.get("mode") !== "learn") await scoreFiles([await sampleFile(sample)]);
  warmUpWhenIdle();
}

// The JavaScript API for embedding pages (same origin, or through the iframe's window).
window.cxrMsn = {
  ready: start().then(() => state.summary),
  // Scores a File or Blob with optional EHR ({age, sex, view, ...}); resolves to the
  // prediction (labels, image, image_ehr, operating_points, attention, grid).
  async score(blob, ehr = {}) {
    const bytes = new Uint8Array(await blob.arrayBuffer());
    return busy(async () => JSON.parse(await computeTrusted((m) => m.predict(bytes, JSON.stringify(ehr)))));
  },
  // The encoder's [CLS] embedding of a File or Blob (an array of the model's width): the
  // view `score` sees, without the heads.
  async embed(blob) {
    const bytes = new Uint8Array(await blob.arrayBuffer());
    return busy(async () => JSON.parse(await computeTrusted((m) => m.embed(bytes))));
  },
  backend: () => state.model && state.model.backend(),
  // Where the model engine runs: "worker", or "page" where no worker could start
  // (engine.js); null before it has started.
  engine: () => state.engine && state.engine.where,
  // The current model's warm-up (see WARM_UP): resolves to the number of runs it made.
  warmedUp: () => state.warming,
  // The loaded model (engine.js: CxrModel's methods, as promises) and its summary (for
  // learn.js); a `cxr-msn-model` event fires on the document each time a model is loaded.
  model: () => state.model,
  summary: () => state.summary,
  // For learn.js after each of its model calls: true while the current model's results can
  // be trusted; false once WebGPU reported trouble, after moving the page to the CPU (a new
  // model, announced by the `cxr-msn-model` event).
  trustworthy: () => trustOrMove(state.model),
};
