// Learn mode of the cxr-msn page ("Learn how it works"): what a Masked Siamese Network
// does, one panel per idea, computed live by the model that app.js has loaded, through
// its wasm API (CxrModel.learn_info / masked / views / assign / sinkhorn / explain /
// signature; web/src/bindings.rs), which runs in the engine's worker (engine.js), so every
// call but learn_info is a promise. Interface only: every number shown comes from one of
// those calls, or from arithmetic on what they returned.
//
// Panels, each a [data-panel] element whose data-state is busy, ready or error:
//   masking     the 224 px view cut into 16 px patches, some of them hidden
//   views       the views of one pretraining draw: target, anchor, focal views
//   prototypes  the target view's assignment over every prototype; temperature, sharpening
//   sinkhorn    a small batch's assignments before and after Sinkhorn-Knopp balancing
//   ehr         what age, sex and view change in the fused embedding and the scores
//   map         the embedding map (embedding-map.json) with the samples placed on it
//
// URL parameters: mode=learn (this tab alone, for a lesson), map=URL (another map file on
// the page's origin), sample=FILE (the bundled sample to start with).

import { drawGrey } from "./draw.js";

const $ = (id) => document.getElementById(id);
const params = new URLSearchParams(location.search);
const SVG_NS = "http://www.w3.org/2000/svg";
const STALE = Symbol("stale");
const PANELS = ["masking", "views", "prototypes", "sinkhorn", "ehr", "map"];
const DIMS_SHOWN = 32; // [CLS] dimensions drawn in the strips
const COLUMNS_PER_ROW = 8; // Sinkhorn heatmap: each image's top prototypes become columns
const DEFAULT_MAP = "embedding-map.json";

const sleep = (ms) => new Promise((r) => setTimeout(r, ms));
const yieldToBrowser = () => sleep(0);

const learn = {
  wanted: false, // the learn tab has been opened
  model: null, // the CxrModel these panels were computed with
  generation: 0, // bumped when the model changes: everything computed before is stale
  info: null, // learn_info()
  summary: null, // app.js's model summary
  samples: [], // samples/samples.json
  sampleBytes: new Map(), // file -> Promise<Uint8Array>
  image: null, // the chosen image: { key, name, bytes, sample }
  uploads: 0,
  base: new Map(), // image key -> Promise of masked(bytes, 0, 0): the unmasked embedding
  maskSeed: 1,
  masked: null, // last masked() result
  views: null, // last views() result
  explain: null, // last explain() result
  batch: null, // Sinkhorn batch: [{ name, title, z }]
  mapFile: null, // { source, promise } of the parsed map
  mapData: null, // { map, points: projected samples and chosen image }
  signature: null, // Promise of signature() for this model
  prefilledFor: null, // the image whose DICOM header last filled the EHR controls
};

// ---------------------------------------------------------------------------------------
// Small helpers

const pct = (p) => `${(100 * p).toFixed(100 * p >= 1 ? 1 : 2)}%`;
const fixed3 = (x) => Number(x).toFixed(3);

function el(tag, props = {}, ...children) {
  const node = Object.assign(document.createElement(tag), props);
  node.append(...children);
  return node;
}

function svg(tag, attrs = {}, parent = null) {
  const node = document.createElementNS(SVG_NS, tag);
  for (const [k, v] of Object.entries(attrs)) node.setAttribute(k, v);
  if (parent) parent.append(node);
  return node;
}

function svgText(parent, x, y, text, attrs = {}) {
  const t = svg("text", { x, y, ...attrs }, parent);
  t.textContent = text;
  return t;
}

// The k largest entries of an array, as [index, value] pairs, largest first.
function topK(values, k) {
  return values.map((v, i) => [i, v]).sort((a, b) => b[1] - a[1]).slice(0, k);
}

function cosine(a, b) {
  let dot = 0, na = 0, nb = 0;
  for (let i = 0; i < a.length; i++) { dot += a[i] * b[i]; na += a[i] * a[i]; nb += b[i] * b[i]; }
  return dot / Math.sqrt(na * nb);
}

function message(e) {
  return String((e && e.message) || e);
}

function randomSeed() {
  return crypto.getRandomValues(new Uint32Array(1))[0];
}

function panel(name) {
  return document.querySelector(`[data-panel="${name}"]`);
}

function setState(name, state, text = "") {
  const p = panel(name);
  p.dataset.state = state;
  const status = p.querySelector(".learn-status");
  status.textContent = text;
  status.classList.toggle("error", state === "error");
}

// ---------------------------------------------------------------------------------------
// Running model calls: one at a time (the engine is not re-entrant), the latest request
// of each panel winning. A panel's request that has been superseded before its turn comes
// is skipped, not run.

let queue = Promise.resolve();

// A result WebGPU reported trouble with is dropped: the page then moves to the CPU and
// announces a new model, for which every panel is computed again (app.js, gpu-guard.js).
function modelCall(isStale, fn) {
  const job = queue.then(async () => {
    if (isStale()) throw STALE;
    await yieldToBrowser();
    const out = await fn(learn.model);
    if (!(await window.cxrMsn.trustworthy())) throw STALE;
    if (isStale()) throw STALE;
    return out;
  });
  queue = job.catch(() => {});
  return job;
}

const tokens = Object.fromEntries(PANELS.map((p) => [p, 0]));

// Runs `work(call, stale)` for a panel after `delay` ms, unless a newer request for the
// same panel comes first: `call(fn)` runs fn(model) in the queue and throws STALE once
// superseded; `stale()` says whether it has been. An error is shown in the panel and in
// the panels that depend on it.
async function run(name, work, delay = 0, dependents = []) {
  const token = ++tokens[name];
  const stale = () => tokens[name] !== token;
  setState(name, "busy", "computing…");
  if (delay) await sleep(delay);
  if (stale()) return;
  try {
    await work((fn) => modelCall(stale, fn), stale);
    if (!stale()) setState(name, "ready");
  } catch (e) {
    if (e === STALE || stale()) return;
    const text = `Could not compute this panel: ${message(e)}`;
    for (const p of [name, ...dependents]) setState(p, "error", text);
  }
}

// The unmasked evaluation view's [CLS] and projection of an image, once per model. Not
// tied to a panel: the Sinkhorn batch and the map both use it, and an image's embedding
// stays useful when a panel moves on.
function baseOf(image) {
  let promise = learn.base.get(image.key);
  if (!promise) {
    const generation = learn.generation;
    promise = modelCall(() => generation !== learn.generation, (m) => m.masked(image.bytes, 0, 0)).then(JSON.parse);
    const cache = learn.base;
    promise.catch(() => cache.get(image.key) === promise && cache.delete(image.key)); // try again next time
    cache.set(image.key, promise);
  }
  return promise;
}

// ---------------------------------------------------------------------------------------
// Drawing

// Darkens the patches not in `kept` (null: all kept) and draws the patch grid.
function drawPatches(ctx, size, grid, kept, lines = true) {
  const cell = size / grid;
  if (kept) {
    const keep = new Set(kept);
    ctx.fillStyle = "rgba(25, 25, 25, 0.88)";
    for (let p = 0; p < grid * grid; p++) {
      if (!keep.has(p)) ctx.fillRect((p % grid) * cell, Math.floor(p / grid) * cell, cell, cell);
    }
  }
  if (!lines) return;
  ctx.strokeStyle = "rgba(250, 204, 21, 0.6)";
  ctx.lineWidth = 1;
  ctx.beginPath();
  for (let i = 1; i < grid; i++) {
    const at = Math.round(i * cell) + 0.5;
    ctx.moveTo(at, 0); ctx.lineTo(at, size);
    ctx.moveTo(0, at); ctx.lineTo(size, at);
  }
  ctx.stroke();
}

// Paired bars of the first dimensions of two embeddings, from a zero line.
function dimStrip(a, b, nameA, nameB, caption) {
  const n = Math.min(DIMS_SHOWN, a.length);
  const W = 640, H = 150, mid = 80, step = W / n;
  const scale = Math.max(...a.slice(0, n).map(Math.abs), ...b.slice(0, n).map(Math.abs)) || 1;
  const root = svg("svg", { viewBox: `0 0 ${W} ${H}`, class: "strip", role: "img", "aria-label": caption });
  svgText(root, 0, 14, `■ ${nameA}`, { class: "series-a" });
  svgText(root, 150, 14, `■ ${nameB}`, { class: "series-b" });
  svgText(root, W, 14, `dimensions 1-${n}; the tallest bar is ${scale.toFixed(3)}`, { "text-anchor": "end", class: "axis" });
  svg("line", { x1: 0, x2: W, y1: mid, y2: mid, class: "zero" }, root);
  for (const [values, cls, offset, series] of [[a, "series-a", 0.1, "a"], [b, "series-b", 0.5, "b"]]) {
    const g = svg("g", { class: cls, "data-series": series, "data-values": JSON.stringify(values.slice(0, n)) }, root);
    for (let i = 0; i < n; i++) {
      const h = (55 * values[i]) / scale;
      svg("rect", { x: (i + offset) * step, width: step * 0.4, y: h >= 0 ? mid - h : mid, height: Math.abs(h) }, g);
    }
  }
  svgText(root, W / 2, H - 4, caption, { "text-anchor": "middle", class: "axis" });
  return root;
}

// A list of prototypes with their probabilities ("#412 38.2%").
function prototypeList(pairs, label) {
  const list = el("ol", { className: "protos" });
  list.dataset.top = JSON.stringify(pairs);
  list.setAttribute("aria-label", label);
  for (const [k, p] of pairs) list.append(el("li", {}, el("b", { textContent: `#${k}` }), ` ${pct(p)}`));
  return list;
}

function settings() {
  return { temperature: Number($("temperature").value), sharpen: Number($("sharpen").value) };
}

// Prototype assignments of projection rows at the sliders' settings (the engine computes
// them, in its worker: engine.js).
async function assign(rows) {
  const { temperature, sharpen } = settings();
  return JSON.parse(await learn.model.assign(JSON.stringify(rows), temperature, sharpen));
}

// Latest wins among the renders that wait for assignments: `latest(key)` starts one and
// returns whether it is still the newest of `key` (a slider dragged on, new views, a new
// model since).
const renders = {};
function latest(key) {
  const n = (renders[key] = (renders[key] || 0) + 1);
  return () => renders[key] === n;
}

function unavailable() {
  return el("p", { className: "unavailable", textContent: `No prototypes here: ${learn.info.reason || "this model file has none"}.` });
}

// ---------------------------------------------------------------------------------------
// Panel 1: patches and masking

function scheduleMasking(delay = 0) {
  if (!ready()) return;
  run("masking", computeMasking, delay);
}

async function computeMasking(call) {
  const { bytes } = learn.image;
  const ratio = Number($("mask-ratio").value);
  const pixels = await call((m) => m.view(bytes));
  const r = JSON.parse(await call((m) => m.masked(bytes, ratio, learn.maskSeed)));
  learn.masked = r;
  const canvas = $("mask-canvas");
  const size = learn.info.image_size;
  drawPatches(drawGrey(canvas, pixels, size), size, r.grid, r.kept);
  $("kept-count").textContent = r.kept.length;
  $("mask-total").textContent = r.total;
  $("mask-seed").textContent = r.seed;
  canvas.setAttribute("aria-label", `The X-ray as the model sees it, ${r.grid} by ${r.grid} patches, ${r.kept.length} of ${r.total} kept`);
  const out = $("mask-result");
  out.dataset.cosine = r.cosine;
  out.replaceChildren(
    el("p", {}, "Cosine similarity of the masked view's [CLS] embedding to the full view's: ",
      el("strong", { id: "mask-cosine", textContent: fixed3(r.cosine) }), "."),
    dimStrip(r.cls_full, r.cls_masked, "full view", "masked view", "[CLS] embedding, first dimensions"),
    el("div", { id: "mask-assignment" }),
  );
  await renderMaskAssignment();
}

async function renderMaskAssignment() {
  const box = $("mask-assignment");
  const r = learn.masked;
  if (!box || !r) return;
  if (!learn.info.available || !r.z) return box.replaceChildren(unavailable());
  const current = latest("mask");
  const a = await assign(r.z);
  if (!current() || learn.masked !== r) return;
  const masked = a.top[1];
  box.dataset.ce = a.ce[1];
  box.replaceChildren(
    el("div", { className: "pair" },
      el("div", {}, el("h4", { textContent: "Masked view: its assignment" }), prototypeList(masked, "Top prototypes of the masked view")),
      el("div", {}, el("h4", { textContent: "Full view, sharpened: the target" }), prototypeList(topK(a.target, 5), "Top prototypes of the sharpened full view"))),
    el("p", {}, "Cross-entropy from the masked view's assignment to the sharpened target: ",
      el("strong", { textContent: fixed3(a.ce[1]) }),
      ` (0 would be perfect agreement; the full view itself scores ${fixed3(a.ce[0])}, its own entropy after sharpening).`),
  );
}

// ---------------------------------------------------------------------------------------
// Panel 2: views (and panel 3, which shows their target's assignment)

function viewsSeed() {
  const v = Math.floor(Number($("views-seed").value));
  return Number.isFinite(v) && v >= 0 && v <= 0xffffffff ? v : null;
}

function scheduleViews(delay = 0) {
  if (!ready()) return;
  if (viewsSeed() === null) {
    setState("views", "error", "The seed must be a whole number from 0 to 4294967295.");
    // Views of an earlier image must not stay under the new one's name, nor panel 3 wait.
    if (learn.views && learn.views.key !== learn.image.key) {
      learn.views = null;
      $("views").replaceChildren();
    }
    ++tokens.views;
    setState("prototypes", "error", "These come from the views of panel 2: give it a valid seed.");
    return;
  }
  setState("prototypes", "busy", "waiting for the views…");
  run("views", computeViews, delay, ["prototypes"]);
}

async function computeViews(call) {
  const seed = viewsSeed();
  const { bytes } = learn.image;
  const r = JSON.parse(await call((m) => m.views(bytes, seed, learn.info.mask_ratio)));
  r.key = learn.image.key;
  learn.views = r;
  if (document.activeElement !== $("views-seed")) $("views-seed").value = r.seed;
  await Promise.all([renderViews(), renderPrototypes()]);
}

async function renderViews() {
  const r = learn.views;
  if (!r) return;
  const box = $("views");
  box.replaceChildren();
  r.views.forEach((view, i) => {
    const figure = el("figure", { className: `view ${i < 2 ? "large" : "focal"}` });
    figure.dataset.name = view.name;
    const canvas = el("canvas");
    drawPatches(drawGrey(canvas, view.pixels, view.size), view.size, view.grid, view.kept, false);
    canvas.setAttribute("role", "img");
    canvas.setAttribute("aria-label", `${view.name} view, ${view.size} pixels`);
    figure.append(canvas, el("figcaption"));
    box.append(figure);
  });
  await captionViews();
}

// The views' captions (top prototype, cross-entropy to the target) and their mean, at the
// sliders' settings: what a temperature or sharpening change redraws in this panel; the
// views' pictures stay (redrawing them was a third of such a change's time).
async function captionViews() {
  const r = learn.views;
  if (!r) return;
  const current = latest("views");
  const a = learn.info.available && r.z ? await assign(r.z) : null;
  if (!current() || learn.views !== r) return;
  const figures = $("views").querySelectorAll("figure.view");
  r.views.forEach((view, i) => {
    const figure = figures[i];
    if (!figure) return;
    const patches = view.grid * view.grid;
    const lines = [
      el("strong", { textContent: view.name }),
      el("span", { textContent: `${view.size} px, ${view.kept ? `${view.kept.length} of ${patches}` : `all ${patches}`} patches` }),
    ];
    delete figure.dataset.top;
    delete figure.dataset.ce;
    if (a) {
      const [[k, p]] = a.top[i];
      figure.dataset.top = JSON.stringify(a.top[i]);
      lines.push(el("span", { textContent: `top prototype #${k} (${pct(p)})` }));
      if (i === 0) {
        lines.push(el("span", { className: "ce", textContent: "CE —" }));
      } else {
        figure.dataset.ce = a.ce[i];
        lines.push(el("span", { className: "ce", textContent: `CE ${fixed3(a.ce[i])}` }));
      }
    }
    figure.querySelector("figcaption").replaceChildren(...lines);
  });
  const note = $("views-note");
  note.replaceChildren();
  if (!a) note.append(unavailable());
  else {
    const mean = a.ce.slice(1).reduce((s, x) => s + x, 0) / (a.ce.length - 1);
    note.append(`Mean cross-entropy of the ${a.ce.length - 1} anchor and focal views to the sharpened target: `,
      el("strong", { textContent: fixed3(mean) }), ". Training lowers it.");
  }
}

// Panel 3: the target view's assignment over every prototype, at the sliders' settings.
async function renderPrototypes() {
  if (!learn.info) return;
  const box = $("prototype-chart");
  if (!learn.info.available) {
    box.replaceChildren(unavailable());
    setState("prototypes", "ready");
    return;
  }
  const r = learn.views;
  if (!r || !r.z) return;
  const current = latest("prototypes");
  const a = await assign([r.z[0]]);
  if (!current() || learn.views !== r) return;
  const { temperature, sharpen } = settings();
  box.replaceChildren(prototypeChart([
    [a.probs[0], `target view at temperature ${temperature.toFixed(2)}`, "series-a"],
    [a.target, `sharpened (temperature ${temperature.toFixed(2)} × ${sharpen.toFixed(2)} = ${(temperature * sharpen).toFixed(3)})`, "series-b"],
  ]));
  const sharpTop = topK(a.target, 1)[0];
  $("prototype-summary").replaceChildren(
    `The target's most likely prototype is #${a.top[0][0][0]} with ${pct(a.top[0][0][1])}; after sharpening, #${sharpTop[0]} takes ${pct(sharpTop[1])}. `,
    `Entropy of the assignment: ${fixed3(a.entropy[0])} nats (spreading evenly over all ${a.probs[0].length} prototypes would give ${fixed3(Math.log(a.probs[0].length))}).`,
  );
  setState("prototypes", "ready");
}

// Bar charts over all K prototypes, one per series, each scaled to its own maximum; the
// largest bars are labelled with their index (those not crowding a larger one).
function prototypeChart(series) {
  const K = series[0][0].length;
  const W = 800, left = 8, ph = 100, block = ph + 56, bw = (W - 2 * left) / K;
  const H = series.length * block;
  const root = svg("svg", { viewBox: `0 0 ${W} ${H}`, class: "protochart", role: "img" });
  root.setAttribute("aria-label", series.map(([v, name]) => `${name}: ${topK(v, 5).map(([k, p]) => `#${k} ${pct(p)}`).join(", ")}`).join("; "));
  let bars = 0;
  series.forEach(([values, name, cls], s) => {
    const y0 = s * block + 30 + ph;
    const max = Math.max(...values) || 1;
    svgText(root, left, s * block + 14, `${name}; tallest bar ${pct(max)}`, { class: "axis" });
    svg("line", { x1: left, x2: W - left, y1: y0, y2: y0, class: "zero" }, root);
    // All of a series' bars as one path: a thousand rectangles of their own made a
    // temperature change spend half its time building elements (BENCHMARKS.md).
    const outline = [];
    values.forEach((v, k) => {
      const h = (ph * v) / max;
      if (h < 0.3) return; // invisible at this scale
      outline.push(`M${(left + k * bw).toFixed(2)} ${y0}v${(-h).toFixed(2)}h${Math.max(bw, 1).toFixed(2)}v${h.toFixed(2)}z`);
    });
    const g = svg("g", { class: cls }, root);
    if (outline.length) svg("path", { class: "bar", d: outline.join(""), "data-bars": outline.length }, g);
    bars += outline.length;
    const labelled = [];
    for (const [k, v] of topK(values, 5)) {
      const x = left + (k + 0.5) * bw;
      if ((ph * v) / max < 4 || labelled.some((at) => Math.abs(at - x) < 36)) continue;
      labelled.push(x);
      svgText(root, x, y0 - (ph * v) / max - 3, `#${k}`, { "text-anchor": "middle", class: "label" });
    }
    svgText(root, left, y0 + 14, "prototype 0", { class: "axis" });
    svgText(root, W - left, y0 + 14, `prototype ${K - 1}`, { class: "axis", "text-anchor": "end" });
  });
  root.dataset.bars = bars;
  return root;
}

// ---------------------------------------------------------------------------------------
// Panel 4: Sinkhorn-Knopp on a small batch (the bundled samples and the chosen image)

function batchImages() {
  const list = learn.samples.map((s, i) => ({ key: `sample:${s.file}`, name: `S${i + 1}`, title: s.title, sample: s }));
  if (learn.image && !learn.image.sample) list.push({ key: learn.image.key, name: "yours", title: learn.image.name, bytes: learn.image.bytes });
  return list;
}

async function withBytes(image) {
  if (!image.bytes) image.bytes = await sampleBytes(image.sample);
  return image;
}

function scheduleSinkhorn() {
  if (!ready()) return;
  run("sinkhorn", computeSinkhorn);
}

async function computeSinkhorn(_call, stale) {
  if (!learn.info.available) {
    $("sinkhorn").replaceChildren(unavailable());
    return;
  }
  const batch = [];
  for (const image of batchImages()) {
    await withBytes(image);
    const base = await baseOf(image);
    batch.push({ ...image, z: base.z[0] });
  }
  if (stale()) throw STALE;
  learn.batch = batch;
  await renderSinkhorn();
}

async function renderSinkhorn() {
  const batch = learn.batch;
  const box = $("sinkhorn");
  if (!batch || !learn.info.available) return;
  const { temperature, sharpen } = settings();
  const iterations = learn.info.sinkhorn_iterations;
  const current = latest("sinkhorn");
  const s = JSON.parse(await learn.model.sinkhorn(JSON.stringify(batch.map((b) => b.z)), temperature, sharpen, iterations));
  if (!current() || learn.batch !== batch) return;
  const K = s.mass_after.length;
  const fair = s.rows / K;
  // The columns worth showing: each image's largest prototypes, before and after.
  const columns = [...new Set([...s.before, ...s.after].flatMap((row) => topK(row, COLUMNS_PER_ROW).map(([k]) => k)))].sort((a, b) => a - b);
  box.dataset.rows = s.rows;
  box.dataset.prototypes = K;
  // For tests and the curious: the extremes of the column masses, and each image's total.
  box.dataset.massBeforeMin = Math.min(...s.mass_before);
  box.dataset.massBeforeMax = Math.max(...s.mass_before);
  box.dataset.massAfterMin = Math.min(...s.mass_after);
  box.dataset.massAfterMax = Math.max(...s.mass_after);
  box.dataset.rowSumsAfter = JSON.stringify(s.after.map((row) => row.reduce((a, b) => a + b, 0)));
  const range = (m) => `${Math.min(...m).toExponential(2)} to ${Math.max(...m).toExponential(2)}`;
  const idle = s.mass_before.filter((m) => m < 0.01 * fair).length;
  box.replaceChildren(
    heatmap(s.before, columns, batch, "Before: each image's sharpened assignment"),
    heatmap(s.after, columns, batch, `After ${iterations} Sinkhorn-Knopp iterations`),
    massChart(s.mass_before, s.mass_after, columns, fair),
    el("p", {},
      `Column mass is a prototype's share of the batch (the sum of its column; all ${K} columns add up to B = ${s.rows}). `,
      `Before balancing it ranges from ${range(s.mass_before)}, and ${idle} of the ${K} prototypes get less than 1% of a fair share; `,
      `after, it ranges from ${range(s.mass_after)}, against a fair share B/K = ${fair.toExponential(2)}.`),
    el("p", { className: "hint" }, batch.map((b) => `${b.name}: ${b.title}`).join("; ")),
  );
}

// Rows = images, columns = the chosen prototypes; each cell's darkness is its value
// relative to the largest in the table.
function heatmap(rows, columns, batch, title) {
  const cw = 14, ch = 18, left = 50, top = 46;
  const W = left + columns.length * cw + 4, H = top + rows.length * ch + 4;
  const max = Math.max(...rows.flatMap((r) => columns.map((k) => r[k]))) || 1;
  const root = svg("svg", { viewBox: `0 0 ${W} ${H}`, class: "heatmap", role: "img", "aria-label": title });
  root.style.maxWidth = `${Math.max(W, 320)}px`;
  svgText(root, 0, 12, `${title} (darkest = ${pct(max)})`, { class: "axis" });
  columns.forEach((k, c) => {
    svgText(root, left + c * cw + cw / 2, top - 4, k, { class: "colhead", transform: `rotate(-90 ${left + c * cw + cw / 2} ${top - 4})` });
  });
  rows.forEach((row, r) => {
    svgText(root, 0, top + r * ch + 13, batch[r].name, { class: "label" });
    columns.forEach((k, c) => {
      const cell = svg("rect", { x: left + c * cw, y: top + r * ch, width: cw - 1, height: ch - 1, class: "cell", "fill-opacity": (0.04 + 0.96 * row[k] / max).toFixed(3) }, root);
      svg("title", {}, cell).textContent = `${batch[r].name}, prototype #${k}: ${pct(row[k])}`;
    });
  });
  return root;
}

// Column mass before and after over the shown prototypes, with the fair share B/K.
function massChart(before, after, columns, fair) {
  const cw = 14, left = 50, ph = 70, top = 30;
  const W = left + columns.length * cw + 4, H = top + 2 * (ph + 16);
  const root = svg("svg", { viewBox: `0 0 ${W} ${H}`, class: "heatmap mass", role: "img", "aria-label": "Column mass of the shown prototypes, before and after balancing" });
  root.style.maxWidth = `${Math.max(W, 320)}px`;
  svgText(root, 0, 12, "Column mass (bars) and the fair share B/K (dashed line)", { class: "axis" });
  [[before, "before", "series-a"], [after, "after", "series-b"]].forEach(([mass, which, cls], s) => {
    const y0 = top + s * (ph + 16) + ph;
    const max = Math.max(fair, ...columns.map((k) => mass[k]));
    svgText(root, 0, y0 - ph / 2, which, { class: "label" });
    const g = svg("g", { class: cls, "data-which": which }, root);
    columns.forEach((k, c) => {
      const h = (ph * mass[k]) / max;
      const bar = svg("rect", { x: left + c * cw, width: cw - 2, y: y0 - h, height: h }, g);
      bar.dataset[which === "after" ? "massAfter" : "massBefore"] = mass[k];
      svg("title", {}, bar).textContent = `prototype #${k}, ${which}: ${mass[k].toExponential(3)}`;
    });
    const fy = y0 - (ph * fair) / max;
    svg("line", { x1: left, x2: W, y1: fy, y2: fy, class: "fair" }, root);
    svg("line", { x1: left, x2: W, y1: y0, y2: y0, class: "zero" }, root);
  });
  return root;
}

// ---------------------------------------------------------------------------------------
// Panel 5: EHR

function ehrValues() {
  const v = {};
  if ($("learn-age").value !== "" && !$("learn-age").closest(".row").hidden) v.age = Number($("learn-age").value);
  for (const k of ["sex", "view"]) {
    const input = $(`learn-${k}`);
    if (input.value && !input.closest(".row").hidden) v[k] = input.value;
  }
  return v;
}

function scheduleEhr(delay = 0) {
  if (!ready()) return;
  run("ehr", computeEhr, delay);
}

async function computeEhr(call) {
  const image = learn.image;
  if (learn.prefilledFor !== image.key) {
    // The record follows the image: a DICOM header fills the fields, other files clear them.
    const info = JSON.parse(await call((m) => m.read_image(image.bytes)));
    // A file without a header gets example values, said to be examples, so that the
    // image + EHR side has something to show from the start.
    const h = info.from_header || {};
    const example = h.age == null && h.sex == null && h.view == null;
    const values = example ? { age: 60, sex: "F", view: "PA" } : h;
    $("learn-age").value = values.age != null ? Math.round(values.age) : "";
    $("learn-sex").value = values.sex || "";
    $("learn-view").value = values.view || "";
    learn.prefilledFor = image.key;
    const filled = ["age", "sex", "view"].filter((k) => values[k] != null && !$(`learn-${k}`).closest(".row").hidden);
    $("learn-ehr-note").textContent = !filled.length ? "" : example
      ? `This image comes without a record: ${filled.join(", ")} are example values. Change them.`
      : `Filled from the DICOM header: ${filled.join(", ")}.`;
  }
  const ehr = JSON.stringify(ehrValues());
  learn.explain = JSON.parse(await call((m) => m.explain(image.bytes, ehr)));
  await renderEhr();
}

function scoreCell(p, head, label) {
  const td = el("td", { className: "bar" });
  td.dataset.head = head;
  td.dataset.score = p;
  const fill = el("span", { className: "fill" });
  fill.style.width = `${(100 * p).toFixed(1)}%`;
  td.append(fill, el("span", { className: "value", textContent: pct(p) }));
  td.setAttribute("aria-label", `${label}, ${head === "image" ? "image only" : "image + EHR"}: ${pct(p)}`);
  return td;
}

async function renderEhr() {
  const r = learn.explain;
  if (!r) return;
  const box = $("learn-ehr");
  const fused = r.image_ehr;
  const table = el("table", { className: "findings" });
  const head = el("tr", {}, el("th", { scope: "col", textContent: "Finding" }), el("th", { scope: "col", textContent: "Image only" }));
  if (fused) head.append(el("th", { scope: "col", textContent: "Image + EHR" }));
  const body = el("tbody");
  r.labels.forEach((label, i) => {
    const tr = el("tr", {}, el("th", { scope: "row", textContent: label }), scoreCell(r.image[i], "image", label));
    if (fused) tr.append(scoreCell(fused[i], "image-ehr", label));
    body.append(tr);
  });
  table.append(el("thead", {}, head), body);
  const parts = [table];
  if (!fused) parts.push(el("p", { className: "unavailable", textContent: `No image + EHR scores: ${r.image_ehr_missing}.` }));
  if (r.fused) {
    box.dataset.cosine = r.cosine;
    parts.push(
      el("p", {}, "Cosine similarity of the image-only [CLS] embedding to the fused embedding: ",
        el("strong", { textContent: fixed3(r.cosine) }), "."),
      dimStrip(r.cls, r.fused, "image only", "image + EHR (fused)", "embedding, first dimensions"),
    );
  } else {
    delete box.dataset.cosine;
  }
  parts.push(el("div", { id: "ehr-prototypes" }));
  box.replaceChildren(...parts);
  await renderEhrPrototypes();
}

async function renderEhrPrototypes() {
  const box = $("ehr-prototypes");
  const r = learn.explain;
  if (!box || !r || !r.z_fused || !r.z_image) return;
  if (!learn.info.available) return box.replaceChildren(unavailable());
  const current = latest("ehr");
  const a = await assign([r.z_image, r.z_fused]);
  if (!current() || learn.explain !== r) return;
  box.replaceChildren(el("div", { className: "pair" },
    el("div", {}, el("h4", { textContent: "Image only: top prototypes" }), prototypeList(a.top[0], "Top prototypes of the image-only projection")),
    el("div", {}, el("h4", { textContent: "Image + EHR: top prototypes" }), prototypeList(a.top[1], "Top prototypes of the fused projection"))));
}

// ---------------------------------------------------------------------------------------
// Panel 6: the embedding map

function scheduleMap() {
  if (!ready()) return;
  run("map", computeMap);
}

function mapSource() {
  return learn.mapFile ? learn.mapFile.source : params.get("map") || DEFAULT_MAP;
}

async function readMap() {
  if (!learn.mapFile) {
    const url = params.get("map") || DEFAULT_MAP;
    learn.mapFile = {
      source: url,
      promise: fetch(url).then(async (response) => {
        if (!response.ok) throw new Error(`${url}: the server answered ${response.status} ${response.statusText}`);
        return response.json();
      }),
    };
  }
  return learn.mapFile.promise;
}

async function computeMap(_call, stale) {
  const box = $("embedding-map");
  let map;
  try {
    map = await readMap();
    checkMap(map);
  } catch (e) {
    learn.mapData = null;
    box.replaceChildren(el("p", { className: "unavailable", textContent: `No embedding map to draw: ${message(e)}` }));
    $("map-about").textContent = "";
    return;
  }
  if (!learn.signature) {
    const generation = learn.generation;
    const promise = modelCall(() => generation !== learn.generation, (m) => m.signature()).then(JSON.parse);
    promise.catch(() => { if (learn.signature === promise) learn.signature = null; });
    learn.signature = promise;
  }
  const signature = await learn.signature;
  const match = signature.length === map.signature.length ? cosine(signature, map.signature) : 0;
  box.dataset.signature = match;
  if (!(match > 0.99)) {
    learn.mapData = null;
    box.replaceChildren(el("p", { className: "unavailable", textContent:
      `This map (${mapSource()}) was made with another model: its reference embedding and this model's agree only to a cosine of ${fixed3(match)} (the same model gives more than 0.99). Make a map for this model with cxr-msn embed and open it below.` }));
    $("map-about").textContent = "";
    return;
  }
  const placed = [];
  for (const image of batchImages()) {
    await withBytes(image);
    const base = await baseOf(image);
    const chosen = image.key === learn.image.key;
    placed.push({ name: chosen && !image.sample ? "your image" : image.name, title: image.title, chosen, ...project(base.cls_full, map) });
  }
  if (stale()) throw STALE;
  learn.mapData = { map, placed };
  fillColourChoices(map);
  renderMap();
}

function checkMap(map) {
  const ok = map && Array.isArray(map.points) && Array.isArray(map.signature) && Array.isArray(map.mean) &&
    Array.isArray(map.components) && map.components.length === 2 && map.mean.length === map.signature.length;
  if (!ok) throw new Error(`${mapSource()} is not an embedding map from cxr-msn embed`);
}

// x = (cls - mean) . components[0], y = (cls - mean) . components[1], as cxr-msn embed does.
function project(cls, map) {
  const [c0, c1] = map.components;
  let x = 0, y = 0;
  for (let i = 0; i < cls.length; i++) {
    const d = cls[i] - map.mean[i];
    x += d * c0[i];
    y += d * c1[i];
  }
  return { x, y };
}

const PALETTE = ["#1c7ed6", "#e8590c", "#2f9e44", "#ae3ec9", "#0c8599", "#f08c00"];
const YES_NO = ["#e8590c", "#1c7ed6"]; // positive / over 60: warm; the rest: blue
const UNKNOWN = "#c3c8ce";

// What to colour the points by: each field gives a point's category, the categories in
// legend order and, for yes/no fields, their colours.
function colourFields(map) {
  const fields = {
    view: { title: "view", of: (p) => p.view, order: ["PA", "AP", "LATERAL", "LL"] },
    sex: { title: "sex", of: (p) => p.sex, order: ["F", "M"] },
    age60: { title: "age over 60", of: (p) => (p.age == null ? null : p.age > 60 ? "over 60" : "60 or under"), order: ["over 60", "60 or under"], palette: YES_NO },
  };
  (map.label_names || []).forEach((name, i) => {
    fields[`label:${i}`] = {
      title: name,
      of: (p) => (p.labels && p.labels[i] != null ? (p.labels[i] ? `${name}` : `no ${name}`) : null),
      order: [`${name}`, `no ${name}`],
      palette: YES_NO,
    };
  });
  return fields;
}

function fillColourChoices(map) {
  const select = $("map-colour");
  const keep = select.value;
  const fields = colourFields(map);
  select.replaceChildren(...Object.entries(fields).map(([key, f]) => el("option", { value: key, textContent: f.title })));
  select.value = fields[keep] ? keep : "view";
}

function renderMap() {
  const data = learn.mapData;
  if (!data) return;
  const { map, placed } = data;
  const field = colourFields(map)[$("map-colour").value] || colourFields(map).view;
  const palette = field.palette || PALETTE;
  const colours = new Map(field.order.map((c, i) => [c, palette[i % palette.length]]));
  const W = 640, H = 440, m = { left: 40, right: 12, top: 12, bottom: 40 };
  const all = [...map.points, ...placed];
  const xs = all.map((p) => p.x), ys = all.map((p) => p.y);
  // The range of every point and marker, padded so that markers at its edges stay inside.
  const pad = (lo, hi) => [lo - 0.06 * (hi - lo || 1), hi + 0.06 * (hi - lo || 1)];
  const [x0, x1] = pad(Math.min(...xs), Math.max(...xs));
  const [y0, y1] = pad(Math.min(...ys), Math.max(...ys));
  const sx = (x) => m.left + ((x - x0) / (x1 - x0 || 1)) * (W - m.left - m.right);
  const sy = (y) => H - m.bottom - ((y - y0) / (y1 - y0 || 1)) * (H - m.top - m.bottom);
  const root = svg("svg", { viewBox: `0 0 ${W} ${H}`, class: "scatter", role: "img" });
  root.setAttribute("aria-label", `Embedding map of ${map.points.length} images coloured by ${field.title}, with ${placed.map((p) => p.name).join(", ")}`);
  svg("rect", { x: m.left, y: m.top, width: W - m.left - m.right, height: H - m.top - m.bottom, class: "frame" }, root);
  const [e0, e1] = map.explained || [];
  svgText(root, (W + m.left) / 2, H - 10, `first principal component${e0 != null ? ` (${pct(e0)} of the variance)` : ""}`, { class: "axis", "text-anchor": "middle" });
  svgText(root, 14, (H - m.bottom) / 2, `second principal component${e1 != null ? ` (${pct(e1)})` : ""}`, { class: "axis", "text-anchor": "middle", transform: `rotate(-90 14 ${(H - m.bottom) / 2})` });
  // Unknown values first, so the known ones are drawn on top.
  const counts = new Map();
  const points = map.points.map((p) => [p, field.of(p)]).sort((a, b) => (b[1] == null) - (a[1] == null));
  const g = svg("g", { class: "points" }, root);
  for (const [p, category] of points) {
    counts.set(category, (counts.get(category) || 0) + 1);
    svg("circle", { cx: sx(p.x), cy: sy(p.y), r: 3, class: "map-point", fill: colours.get(category) || UNKNOWN }, g);
  }
  const labelsAt = []; // label positions so far: a label that would overlap one moves down
  for (const p of placed) {
    const x = sx(p.x), y = sy(p.y), r = p.chosen ? 9 : 7;
    const marker = svg("g", { class: `map-marker${p.chosen ? " chosen" : ""}`, "data-name": p.name }, root);
    svg("path", { d: `M${x} ${y - r}L${x + r} ${y}L${x} ${y + r}L${x - r} ${y}Z` }, marker);
    let ly = y + 4;
    while (labelsAt.some(([ax, ay]) => Math.abs(ax - x) < 40 && Math.abs(ay - ly) < 13)) ly += 13;
    labelsAt.push([x, ly]);
    svgText(marker, x + r + 3, ly, p.name, { class: "label" });
    svg("title", {}, marker).textContent = `${p.name}: ${p.title}`;
  }
  const legend = el("ul", { className: "legend" });
  for (const category of [...field.order, null]) {
    if (!counts.get(category)) continue;
    const swatch = el("span", { className: "swatch" });
    swatch.style.background = colours.get(category) || UNKNOWN;
    legend.append(el("li", {}, swatch, `${category ?? "unknown"} (${counts.get(category)})`));
  }
  legend.append(el("li", {}, el("span", { className: "swatch marker" }), "bundled samples (S1…) and the chosen image (larger, red)"));
  $("embedding-map").replaceChildren(root, legend);
  // Markers beyond the cloud of mapped images: the model finds them unlike those images.
  const inside = (v, vs) => v >= Math.min(...vs) && v <= Math.max(...vs);
  const mx = map.points.map((p) => p.x), my = map.points.map((p) => p.y);
  const outside = placed.filter((p) => !inside(p.x, mx) || !inside(p.y, my)).map((p) => p.name);
  $("map-about").textContent = `${map.source || `${map.points.length} images`}; ` +
    `the axes are the first two principal components of their [CLS] embeddings` +
    `${e0 != null && e1 != null ? `, which explain ${pct(e0)} and ${pct(e1)} of the variance` : ""}. ` +
    (outside.length ? `${outside.join(", ")} ${outside.length === 1 ? "lies" : "lie"} outside the cloud of mapped images: ` +
      `the model places ${outside.length === 1 ? "it" : "them"} unlike anything it was shown there. ` : "") +
    `Map file: ${mapSource()}.`;
}

// ---------------------------------------------------------------------------------------
// The chosen image

async function sampleBytes(sample) {
  let promise = learn.sampleBytes.get(sample.file);
  if (!promise) {
    promise = fetch(`samples/${sample.file}`).then(async (response) => {
      if (!response.ok) throw new Error(`samples/${sample.file}: the server answered ${response.status}`);
      return new Uint8Array(await response.arrayBuffer());
    });
    promise.catch(() => learn.sampleBytes.delete(sample.file));
    learn.sampleBytes.set(sample.file, promise);
  }
  return promise;
}

// Shows at once that the panels will change (the image's bytes come asynchronously).
function announceImage() {
  if (ready()) for (const p of PANELS) setState(p, "busy", "loading the image…");
}

async function chooseSample(sample) {
  announceImage();
  try {
    const bytes = await sampleBytes(sample);
    setImage({ key: `sample:${sample.file}`, name: sample.title, bytes, sample });
  } catch (e) {
    $("learn-image").textContent = `Could not load the sample: ${message(e)}`;
    if (ready()) for (const p of PANELS) setState(p, "error", `Could not load the sample: ${message(e)}`);
  }
}

async function chooseFile(file) {
  const bytes = new Uint8Array(await file.arrayBuffer());
  if (learn.model) {
    // A file the model cannot read is refused once, here, and the image shown stays.
    try {
      await modelCall(() => false, (m) => m.read_image(bytes));
    } catch (e) {
      if (e === STALE) return;
      const still = learn.image ? ` Still shown: ${learn.image.name}.` : "";
      $("learn-image").textContent = `${file.name} cannot be shown: ${message(e)}.${still}`;
      return;
    }
  }
  announceImage();
  setImage({ key: `upload:${++learn.uploads}`, name: file.name, bytes, sample: null });
}

function setImage(image) {
  learn.image = image;
  for (const b of document.querySelectorAll(".learn-sample")) {
    b.setAttribute("aria-pressed", String(!!image.sample && b.dataset.file === image.sample.file));
  }
  $("learn-image").textContent = `Shown below: ${image.name}`;
  refreshAll();
}

async function showSamples() {
  learn.samples = await (await fetch("samples/samples.json")).json();
  const box = $("learn-samples");
  for (const sample of learn.samples) {
    const button = el("button", { type: "button", className: "sample learn-sample", textContent: sample.title, title: sample.attribution });
    button.dataset.file = sample.file;
    button.setAttribute("aria-pressed", "false");
    button.addEventListener("click", () => chooseSample(sample));
    box.append(button);
  }
}

// ---------------------------------------------------------------------------------------
// Setting up, for each model

function ready() {
  return learn.wanted && learn.model && learn.info && learn.image;
}

function refreshAll() {
  if (!ready()) return;
  scheduleMasking();
  scheduleViews();
  scheduleEhr();
  scheduleSinkhorn();
  scheduleMap();
}

// Recomputes every assignment from the cached projections after a temperature or
// sharpening change: no encoder run. The sliders' values are shown once every panel has
// followed them.
async function reassign() {
  if (!learn.info || !learn.info.available) return;
  const model = learn.model;
  try {
    await Promise.all([renderMaskAssignment(), captionViews(), renderPrototypes(), renderSinkhorn(), renderEhrPrototypes()]);
  } catch (e) {
    if (learn.model === model) setState("prototypes", "error", `Could not compute the assignment: ${message(e)}`);
  }
  for (const [key, input] of [["temperature", $("temperature")], ["sharpen", $("sharpen")]]) {
    $(`${key}-value`).textContent = Number(input.value).toFixed(2);
  }
}

function applyInfo() {
  const info = learn.info;
  const format = { mask_ratio: (v) => `${Math.round(100 * v)}%` };
  for (const span of document.querySelectorAll("#learn [data-info]")) {
    const v = info[span.dataset.info];
    span.textContent = v == null ? "?" : (format[span.dataset.info] || String)(v);
  }
  $("mask-ratio").value = info.mask_ratio;
  $("mask-ratio-value").textContent = `${Math.round(100 * Number($("mask-ratio").value))}%`;
  $("temperature").value = info.temperature;
  $("sharpen").value = info.sharpen_temperature;
  $("temperature-value").textContent = Number(info.temperature).toFixed(2);
  $("sharpen-value").textContent = Number(info.sharpen_temperature).toFixed(2);
  for (const id of ["temperature", "sharpen"]) $(id).disabled = !info.available;
  $("focal-scope").textContent = info.mask_scope === "all-anchors"
    ? "masked like the anchor"
    : "kept whole (this model masks the large anchor only)";
  const inputs = (learn.summary && learn.summary.ehr_inputs) || [];
  for (const k of ["age", "sex", "view"]) $(`learn-${k}`).closest(".row").hidden = !inputs.includes(k);
  $("learn-ehr-inputs").textContent = inputs.length
    ? `This model's record inputs: ${inputs.join(", ")}.`
    : "This model reads the image only: it has no record inputs.";
}

// A (new) model: everything computed before is stale.
function onModel() {
  const model = window.cxrMsn && window.cxrMsn.model();
  if (!learn.wanted || !model || model === learn.model) return;
  learn.model = model;
  learn.generation++;
  for (const p of PANELS) tokens[p]++;
  learn.base = new Map();
  learn.signature = null;
  learn.masked = learn.views = learn.explain = learn.batch = learn.mapData = null;
  learn.prefilledFor = null;
  $("learn-message").textContent = "";
  if (typeof model.learn_info !== "function") {
    learn.info = null;
    $("learn-message").textContent = "This build of the page has no learn mode: its model engine lacks learn_info.";
    for (const p of PANELS) setState(p, "error", "Learn mode is not available in this build.");
    return;
  }
  try {
    learn.info = JSON.parse(model.learn_info());
  } catch (e) {
    learn.info = null;
    $("learn-message").textContent = `Learn mode cannot use this model: ${message(e)}`;
    for (const p of PANELS) setState(p, "error", message(e));
    return;
  }
  learn.summary = window.cxrMsn.summary();
  applyInfo();
  refreshAll();
}

function startLearn() {
  if (learn.wanted) return;
  learn.wanted = true;
  for (const p of PANELS) setState(p, "busy", "waiting for the model…");
  onModel();
}

// ---------------------------------------------------------------------------------------
// Tabs

function selectTab(which, focus = false) {
  for (const [tab, body] of [[$("findings-tab"), $("findings")], [$("learn-tab"), $("learn")]]) {
    const on = tab.id === `${which}-tab`;
    tab.setAttribute("aria-selected", String(on));
    tab.tabIndex = on ? 0 : -1;
    body.hidden = !on;
    if (on && focus) tab.focus();
  }
  if (which === "learn") startLearn();
}

function wireTabs() {
  const tabs = [$("findings-tab"), $("learn-tab")];
  tabs.forEach((tab, i) => {
    tab.addEventListener("click", () => selectTab(tab.id.replace(/-tab$/, "")));
    tab.addEventListener("keydown", (e) => {
      const to = { ArrowRight: i + 1, ArrowLeft: i - 1, Home: 0, End: tabs.length - 1 }[e.key];
      if (to === undefined) return;
      e.preventDefault();
      selectTab(tabs[(to + tabs.length) % tabs.length].id.replace(/-tab$/, ""), true);
    });
  });
  if (params.get("mode") === "learn") {
    // A lesson's page: the learn tab alone.
    $("tabs").hidden = true;
    $("learn").removeAttribute("role");
    $("learn").removeAttribute("aria-labelledby");
    $("learn").setAttribute("aria-label", "Learn how it works");
    selectTab("learn");
  }
}

function wireControls() {
  $("mask-ratio").addEventListener("input", () => {
    $("mask-ratio-value").textContent = `${Math.round(100 * Number($("mask-ratio").value))}%`;
    scheduleMasking(150);
  });
  $("new-mask").addEventListener("click", () => {
    learn.maskSeed = randomSeed();
    scheduleMasking();
  });
  $("new-draw").addEventListener("click", () => {
    $("views-seed").value = randomSeed();
    scheduleViews();
  });
  $("views-seed").addEventListener("input", () => scheduleViews(400));
  let pending = 0;
  for (const id of ["temperature", "sharpen"]) {
    $(id).addEventListener("input", () => {
      clearTimeout(pending);
      pending = setTimeout(reassign, 30);
    });
  }
  $("learn-age").addEventListener("input", () => scheduleEhr(300));
  for (const id of ["learn-sex", "learn-view"]) $(id).addEventListener("change", () => scheduleEhr());
  $("learn-file").addEventListener("change", (e) => {
    const file = e.target.files[0];
    e.target.value = ""; // so that the same file can be picked again
    if (file) chooseFile(file);
  });
  $("map-colour").addEventListener("change", renderMap);
  $("map-file").addEventListener("change", (e) => {
    const file = e.target.files[0];
    if (!file) return;
    learn.mapFile = { source: file.name, promise: file.text().then(JSON.parse) };
    scheduleMap();
  });
}

async function main() {
  wireTabs();
  wireControls();
  document.addEventListener("cxr-msn-model", onModel);
  await showSamples();
  const wanted = learn.samples.find((s) => s.file === params.get("sample")) || learn.samples[0];
  if (wanted) await chooseSample(wanted);
  onModel(); // the model may have loaded before the samples did
}

main().catch((e) => {
  $("learn-message").textContent = `Learn mode could not start: ${message(e)}`;
});
