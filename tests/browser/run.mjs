// The page in a real browser: headless Chromium (Debian's) driven by playwright-core.
//
//   DIST=../../dist CXR_MSN_BIN=.../cxr-msn node run.mjs
//
// Serves DIST on 127.0.0.1 and checks: the notice, the model's progress and summary, a
// bundled sample scored into 14 findings, every real sample uploaded at once (DICOM header
// prefilling the form), a non-image and a corrupt image refused with a message, a damaged
// model file refused, the CPU path forced, WebGPU on Chromium's software adapter (chosen
// only when asked for; `auto` keeps the CPU), the custom element in another page, the
// browser's scores equal to `cxr-msn predict` on the same files, and that no request
// leaves the page's origin. Learn mode: every panel computed for a bundled sample, the
// mask slider, a new draw of views and its seed, the record's effect, the learn tab
// embedded with <cxr-msn-demo mode="learn"> (and at phone width). Then the hardening checks: the bad-input corpus
// (../bad-inputs), no image data in URLs, storage, cookies or the console, a strict
// Content-Security-Policy that nothing on any page violated, and no request for anything but
// the site's own files. Learn mode: every panel for a bundled sample, the mask slider, a
// new draw of views and the same seed again, the EHR moving only the fused side, WebGPU
// agreeing with the CPU (and the browser accepting every WebGPU shader the page made), and
// the custom element with mode="learn". A WebGPU shader the browser rejects (one spoiled on
// purpose) moves the page, and learn mode, to the CPU with its numbers and says why
// (static/gpu-guard.js). The model engine runs in a worker: learn mode computing leaves the
// page's main thread free, and the engine on the page (?worker=0) gives the same numbers.
// Screenshots go to
// SCREENSHOTS (default ./screenshots).

import { createServer } from "node:http";
import { execFileSync } from "node:child_process";
import { existsSync, mkdirSync, mkdtempSync, readFileSync, readdirSync, rmSync, statSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { extname, join, resolve } from "node:path";
import { chromium } from "playwright-core";

const here = new URL(".", import.meta.url).pathname;
const dist = resolve(process.env.DIST || join(here, "../../dist"));
const bin = process.env.CXR_MSN_BIN;
const shots = resolve(process.env.SCREENSHOTS || join(here, "screenshots"));
const realSamples = resolve(here, "../../../shared/data/cxr-samples");
mkdirSync(shots, { recursive: true });

const TYPES = {
  ".html": "text/html", ".js": "text/javascript", ".mjs": "text/javascript", ".css": "text/css",
  ".wasm": "application/wasm", ".json": "application/json", ".png": "image/png",
  ".jpeg": "image/jpeg", ".jpg": "image/jpeg",
};

// A page that embeds the demo with the custom element, served beside the site.
const EMBED_PAGE = `<!DOCTYPE html><html lang="en"><head><meta charset="utf-8"><title>Course page</title>
<script src="embed.js"></script></head><body><h1>Week 3: chest X-rays</h1>
<cxr-msn-demo sample="rg1-adult-pa.dcm" hide-notice backend="cpu"></cxr-msn-demo></body></html>`;

// The same, with the learn tab alone for a lesson.
const EMBED_LEARN_PAGE = `<!DOCTYPE html><html lang="en"><head><meta charset="utf-8"><title>Course page</title>
<script src="embed.js"></script></head><body><h1>Week 4: how the model learns</h1>
<cxr-msn-demo mode="learn" sample="rg1-adult-pa.dcm" hide-notice backend="cpu" height="3000px"></cxr-msn-demo></body></html>`;
const COURSE_PAGES = { "/course.html": EMBED_PAGE, "/course-learn.html": EMBED_LEARN_PAGE };

const requests = [];
const server = createServer((req, res) => {
  requests.push(req.url);
  const path = decodeURIComponent(new URL(req.url, "http://x").pathname);
  if (COURSE_PAGES[path]) {
    res.writeHead(200, { "Content-Type": "text/html" });
    return res.end(COURSE_PAGES[path]);
  }
  const file = join(dist, path.endsWith("/") ? path + "index.html" : path);
  if (!file.startsWith(dist) || !existsSync(file) || !statSync(file).isFile()) {
    res.writeHead(404);
    return res.end("not found");
  }
  const body = readFileSync(file);
  res.writeHead(200, { "Content-Type": TYPES[extname(file)] || "application/octet-stream", "Content-Length": body.length });
  res.end(body);
});
await new Promise((r) => server.listen(0, "127.0.0.1", r));
const origin = `http://127.0.0.1:${server.address().port}`;

const FLAGS = ["--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--disable-background-networking",
  "--disable-component-update", "--disable-sync", "--no-first-run", "--disable-quic"];

let failures = 0;
const results = [];
async function check(name, fn) {
  const started = Date.now();
  try {
    await fn();
    results.push(`ok   ${name} (${((Date.now() - started) / 1000).toFixed(1)} s)`);
  } catch (e) {
    failures++;
    results.push(`FAIL ${name}: ${e.stack || e}`);
  }
  console.log(results.at(-1));
}
function assert(cond, message) {
  if (!cond) throw new Error(message);
}

// Every request of a page must stay on the origin (data: and blob: are local). Every
// watched page also reports Content-Security-Policy violations and keeps its console.
// Await it before the page's first navigation: its init scripts are registered
// asynchronously, and a navigation that wins the race runs without them (a CI run once
// counted no WebGPU shader on a page that had computed on WebGPU).
const violations = [];
const consoleLines = [];
async function watchRequests(page, sink) {
  page.on("request", (r) => sink.push(r.url()));
  if (page.__watched) return;
  page.__watched = true;
  page.__console = [];
  page.on("console", (m) => {
    const text = m.text();
    if (text.startsWith("csp-violation ")) violations.push(text);
    else consoleLines.push(text), page.__console.push(text);
  });
  await page.addInitScript(() => document.addEventListener("securitypolicyviolation", (e) =>
    console.log(`csp-violation ${e.violatedDirective} ${e.blockedURI} ${e.sourceFile}:${e.lineNumber}`)));
  // The page's long tasks (50 ms and more on its main thread), for the worker check.
  await page.addInitScript(() => {
    window.__longTasks = [];
    new PerformanceObserver((list) => window.__longTasks.push(...list.getEntries().map((e) => Math.round(e.duration))))
      .observe({ type: "longtask", buffered: true });
  });
  // Every WebGPU shader the page creates is checked against the browser's own compiler
  // (`getCompilationInfo`): in a browser a rejected shader shows only later, through the
  // device's error callback, while its launch still succeeds (BENCHMARKS.md, "The browser
  // demo": a rejected matrix-product shader once computed zeros). See `shaderReport`.
  await inEngineRealms(page, () => {
    if (typeof GPUDevice === "undefined") return;
    const create = GPUDevice.prototype.createShaderModule;
    const checks = (globalThis.__shaderChecks = []);
    GPUDevice.prototype.createShaderModule = function (descriptor) {
      const module = create.call(this, descriptor);
      checks.push(module.getCompilationInfo().then((info) => info.messages
        .filter((m) => m.type === "error")
        .map((m) => `${descriptor.label}, line ${m.lineNum}:${m.linePos}: ${m.message}`)));
      return module;
    };
  });
}

// Runs `fn(arg)` first thing wherever the page may create WebGPU devices: the page itself
// (an init script) and the model engine's worker (static/engine-worker.js), which init
// scripts do not reach: its script is served with the code in front.
async function inEngineRealms(page, fn, arg) {
  await page.addInitScript(fn, arg);
  if (!page.__prelude) {
    page.__prelude = [];
    await page.route(/\/engine-worker\.js$/, async (route) => {
      const response = await route.fetch();
      const body = `${page.__prelude.join("\n")}\n${await response.text()}`;
      await route.fulfill({ status: response.status(), contentType: "text/javascript", body });
    });
  }
  page.__prelude.push(`(${fn})(${JSON.stringify(arg)});`);
}

// How many WebGPU shaders the page and its engine's worker have created and which the
// browser rejected, with the WebGPU errors reported on the console (cubecl-wgpu's error
// callback panics there).
async function shaderReport(page) {
  const realms = [page, ...page.workers()];
  const found = await Promise.all(realms.map((realm) =>
    realm.evaluate(async () => globalThis.__shaderChecks && (await Promise.all(globalThis.__shaderChecks)))));
  const checked = found.some((c) => c !== undefined) ? found.filter(Boolean).flat(1) : undefined;
  return {
    instrumented: checked !== undefined,
    created: checked ? checked.length : 0,
    rejected: checked ? checked.flat() : [],
    errors: page.__console.filter((l) => /wgpu error|WebGPU error|Invalid ShaderModule/i.test(l)),
  };
}
function assertShadersValid(report) {
  assert(report.instrumented, "the shader check was not installed in the page (no WebGPU interfaces when it ran?)");
  assert(report.created > 0, "the page created no WebGPU shader");
  assert(report.rejected.length === 0,
    `the browser rejected ${report.rejected.length} WebGPU shader(s): ${report.rejected.slice(0, 3).join(" | ")}`);
  assert(report.errors.length === 0, `WebGPU errors on the console: ${report.errors.slice(0, 3).join(" | ")}`);
  console.log(`     WebGPU shaders created: ${report.created}, none rejected, no WebGPU error`);
}
function offOrigin(urls) {
  return urls.filter((u) => !u.startsWith(origin) && !u.startsWith("data:") && !u.startsWith("blob:"));
}

async function ready(page, timeout = 180000) {
  await page.waitForFunction(() => /^Ready/.test(document.getElementById("model-status").textContent), null, { timeout });
}
async function cards(page, n, timeout = 180000) {
  await page.waitForFunction((n) => document.querySelectorAll("#results .card").length >= n &&
    /^Ready/.test(document.getElementById("model-status").textContent), n, { timeout });
  return page.$$eval("#results .card", (cs) => cs.map((c) => ({
    error: c.classList.contains("error"),
    text: c.textContent,
    rows: c.querySelectorAll("tbody tr").length,
  })));
}
const browser = await chromium.launch({ executablePath: "/usr/bin/chromium", args: FLAGS });
const gpuBrowser = await chromium.launch({ executablePath: "/usr/bin/chromium", args: [...FLAGS, "--enable-unsafe-webgpu"] });
const allUrls = [];
const tmp = mkdtempSync(join(tmpdir(), "cxr-msn-browser-"));

await check("notice, model download, a bundled sample gives 14 findings, the model cached for the next visit", async () => {
  const page = await browser.newPage({ viewport: { width: 1100, height: 1400 } });
  await watchRequests(page, allUrls);
  await page.goto(`${origin}/index.html`);
  await page.waitForSelector("#notice-ok");
  await page.screenshot({ path: join(shots, "1-notice.png") });
  await page.click("#notice-ok");
  await ready(page);
  await page.fill("#age", "4");
  await page.selectOption("#sex", "F");
  const status = await page.textContent("#model-status");
  assert(/CPU/.test(status), `no WebGPU in this browser: the CPU runs it (${status})`);
  await page.click('button.sample[data-file="person1954_bacteria_4886.jpeg"]');
  const [card] = await cards(page, 1);
  assert(!card.error && card.rows === 14, `one result with 14 findings: ${JSON.stringify(card)}`);
  assert(/Image \+ EHR/.test(card.text), "the default model has the image + EHR head");
  await page.check("#results .card input[type=checkbox]");
  await page.screenshot({ path: join(shots, "2-result-attention.png"), fullPage: true });
  // The next visit takes the model from the browser's cache, not the network.
  const mine = [];
  await watchRequests(page, mine);
  await page.reload();
  await page.click("#notice-ok");
  await ready(page);
  const fetched = mine.filter((u) => u.endsWith("/model.safetensors")).length;
  assert(fetched === 0, `the model was downloaded again (${fetched} requests)`);
  await page.close();
});

// Files to upload: the real samples beside the repository when present, else the bundled ones.
const uploads = existsSync(realSamples)
  ? readdirSync(realSamples).flatMap((d) => readdirSync(join(realSamples, d)).map((f) => join(realSamples, d, f)))
  : readdirSync(join(dist, "samples")).filter((f) => !f.endsWith(".json")).map((f) => join(dist, "samples", f));

await check(`every real sample uploaded at once (${uploads.length} files) and a CSV of all scores`, async () => {
  const page = await browser.newPage({ viewport: { width: 1100, height: 1400 }, acceptDownloads: true });
  await watchRequests(page, allUrls);
  await page.goto(`${origin}/index.html?notice=0&backend=cpu`);
  await ready(page);
  await page.fill("#age", "60");
  await page.selectOption("#sex", "M");
  await page.setInputFiles("#image-file", uploads);
  const all = await cards(page, uploads.length, 600000);
  const bad = all.filter((c) => c.error || c.rows !== 14);
  assert(bad.length === 0, `every file scored: ${JSON.stringify(bad.map((c) => c.text.slice(0, 200)))}`);
  const [download] = await Promise.all([page.waitForEvent("download"), page.click("#csv")]);
  const csv = readFileSync(await download.path(), "utf8").trim().split("\n");
  assert(csv.length === 1 + 2 * uploads.length, `a header and two heads per file: ${csv.length} lines`);
  assert(csv[0].startsWith("file,head,Atelectasis,"), csv[0]);
  await page.screenshot({ path: join(shots, "3-several-files.png") });
  await page.close();
});

await check("a DICOM header fills age, sex and view", async () => {
  const page = await browser.newPage();
  await watchRequests(page, allUrls);
  await page.goto(`${origin}/index.html?notice=0&backend=cpu&sample=rg1-adult-pa.dcm`);
  await cards(page, 1);
  const [age, sex, view] = await Promise.all(["#age", "#sex", "#view"].map((s) => page.inputValue(s)));
  assert(age === "64" && sex === "F" && view === "PA", `prefilled ${age} ${sex} ${view}`);
  await page.close();
});

await check("the patient data: a DICOM header's values leave with the next image, a bad age is said and not scored, a change scores again, the CSV says what was used", async () => {
  const page = await browser.newPage({ acceptDownloads: true });
  await watchRequests(page, allUrls);
  await page.goto(`${origin}/index.html?notice=0&backend=cpu&sample=rg1-adult-pa.dcm`);
  await cards(page, 1);
  const legend = () => page.textContent("#results .card .hint");
  assert(/Scored with female, age 64/.test(await legend()), await legend());
  // A JPEG without a header: the DICOM's values do not stay on the form for it.
  await page.click('button.sample[data-file="person1954_bacteria_4886.jpeg"]');
  await page.waitForFunction(() => document.querySelector("#results .card h3")?.textContent.startsWith("person1954"));
  await cards(page, 1);
  const [age, sex] = await Promise.all(["#age", "#sex"].map((s) => page.inputValue(s)));
  assert(age === "" && sex === "", `the header's values were cleared: age '${age}', sex '${sex}'`);
  assert(await page.isHidden("#header-note"), "no header note for a JPEG");
  let [card] = await cards(page, 1);
  assert(!/Image \+ EHR/.test(card.text) && /enter the patient's (sex and age|age and sex) above/.test(card.text), card.text);
  // An age out of range is not scored, and the card says why; a change of the form scores
  // again without a click.
  await page.fill("#age", "200");
  await page.selectOption("#sex", "F");
  await page.waitForFunction(() => /age must be a whole number/.test(document.querySelector("#results .card .hint")?.textContent));
  [card] = await cards(page, 1);
  assert(!/Image \+ EHR/.test(card.text), `no image + EHR column with age 200: ${card.text}`);
  await page.fill("#age", "70");
  await page.press("#age", "Tab");
  await page.waitForFunction(() => /Scored with female, age 70/.test(document.querySelector("#results .card .hint")?.textContent));
  [card] = await cards(page, 1);
  assert(/Image \+ EHR/.test(card.text), card.text);
  const [download] = await Promise.all([page.waitForEvent("download"), page.click("#csv")]);
  const csv = readFileSync(await download.path(), "utf8").trim().split("\n");
  assert(/,Support Devices,sex,age$/.test(csv[0]) && csv.slice(1).every((l) => l.endsWith(",F,70")), csv.join("\n").slice(0, 400));
  await page.close();
});

await check("a file picked before the notice is acknowledged is scored once the model is ready", async () => {
  const page = await browser.newPage();
  await watchRequests(page, allUrls);
  await page.goto(`${origin}/index.html?backend=cpu`);
  await page.waitForSelector("#notice-ok");
  await page.setInputFiles("#image-file", join(dist, "samples/person1954_bacteria_4886.jpeg"));
  const status = await page.textContent("#model-status");
  assert(/will be scored once the model is ready: first read the notice/.test(status), status);
  await page.click("#notice-ok");
  const [card] = await cards(page, 1);
  assert(!card.error && card.rows === 14 && card.text.startsWith("person1954"), card.text.slice(0, 200));
  await page.close();
});

await check("a non-image, a corrupt image and a damaged model get clear messages", async () => {
  const text = join(tmp, "notes.txt");
  writeFileSync(text, "these are my notes, not an X-ray\n");
  const jpeg = readFileSync(join(dist, "samples/person1954_bacteria_4886.jpeg"));
  const corrupt = join(tmp, "cut.jpeg");
  writeFileSync(corrupt, jpeg.subarray(0, 2000));
  const page = await browser.newPage();
  await watchRequests(page, allUrls);
  await page.goto(`${origin}/index.html?notice=0&backend=cpu`);
  await ready(page);
  await page.setInputFiles("#image-file", [text, corrupt]);
  const shown = await cards(page, 2);
  assert(shown.every((c) => c.error), `both refused: ${JSON.stringify(shown)}`);
  assert(/notes\.txt: .*(not|unknown|recogni)/i.test(shown[0].text), shown[0].text);
  assert(/cut\.jpeg: .*(JPEG|truncat|end|corrupt)/i.test(shown[1].text), shown[1].text);
  // The failures are announced once, in the status line (a live region), not by each card.
  await page.waitForFunction(() => /^Ready: /.test(document.getElementById("model-status").textContent));
  const summary = await page.textContent("#model-status");
  assert(/2 of 2 files could not be scored \(see their cards\)/.test(summary), summary);
  assert(await page.$$eval("#results [role=alert]", (a) => a.length) === 0, "no card is an alert of its own");
  await page.screenshot({ path: join(shots, "4-errors.png") });
  const damaged = join(tmp, "damaged.safetensors");
  writeFileSync(damaged, readFileSync(join(dist, "model.safetensors")).subarray(0, 100000));
  await page.setInputFiles("#model-file", damaged);
  await page.waitForFunction(() => /cannot be used/.test(document.getElementById("model-status").textContent));
  const status = await page.textContent("#model-status");
  assert(/damaged\.safetensors cannot be used: .+/.test(status), status);
  await page.close();
});

let cpuScores = null;
await check("the browser's scores and embedding equal `cxr-msn predict` on the same file and model (1e-4), from both modules (relaxed SIMD, plain SIMD)", async () => {
  const page = await browser.newPage();
  await watchRequests(page, allUrls);
  await page.goto(`${origin}/index.html?notice=0&backend=cpu`);
  await ready(page);
  const sample = join(dist, "samples/NORMAL2-IM-1438-0001.jpeg");
  // The page warms up on a card it draws once the model is loaded (the first check
  // interrupts a warm-up with a click; here it runs to its end before the scoring).
  const warmUpRuns = await page.evaluate(async () => { await window.cxrMsn.ready; return window.cxrMsn.warmedUp(); });
  assert(warmUpRuns >= 1 && warmUpRuns <= 12, `the warm-up made ${warmUpRuns} runs`);
  console.log(`     the page's warm-up: ${warmUpRuns} runs`);
  const [prediction, embedding, simd, backend] = await page.evaluate(async () => {
    const blob = await (await fetch("samples/NORMAL2-IM-1438-0001.jpeg")).blob();
    return [await window.cxrMsn.score(blob, { sex: "F", age: 4, view: "AP" }), await window.cxrMsn.embed(blob),
      window.wasmSimd, window.cxrMsn.backend()];
  });
  cpuScores = prediction;
  assert(prediction.image.length === 14 && prediction.image_ehr.length === 14, "both heads");
  if (!bin) throw new Error("set CXR_MSN_BIN to the native cxr-msn binary");
  const out = join(tmp, "native.csv");
  const embOut = join(tmp, "native-embeddings.csv");
  execFileSync(bin, ["predict", "--device", "cpu", "--model", join(dist, "model.safetensors"), "--input", sample,
    "--out", out, "--sex", "F", "--age", "4", "--view", "AP", "--embeddings", embOut]);
  const [, row] = readFileSync(out, "utf8").trim().split("\n");
  const native = row.split(",").slice(1).map(Number);
  const browserScores = [...prediction.image, ...prediction.image_ehr];
  const worst = Math.max(...native.map((v, i) => Math.abs(v - browserScores[i])));
  assert(native.length === 28 && worst < 1e-4, `largest difference ${worst}`);
  console.log(`     largest difference, browser (wasm CPU) vs native: ${worst.toExponential(2)}`);
  const [, embRow] = readFileSync(embOut, "utf8").trim().split("\n");
  const nativeEmbedding = embRow.split(",").slice(1).map(Number);
  assert(embedding.length === nativeEmbedding.length && embedding.length > 0, `embedding width ${embedding.length} vs ${nativeEmbedding.length}`);
  const worstEmb = Math.max(...nativeEmbedding.map((v, i) => Math.abs(v - embedding[i])));
  assert(worstEmb < 1e-4, `embedding largest difference ${worstEmb}`);
  console.log(`     largest difference of the ${embedding.length}-wide embedding, browser vs native: ${worstEmb.toExponential(2)}`);
  await page.close();

  // Chromium validates relaxed SIMD, so the page above ran the relaxed module (fused
  // multiply-adds); ?simd=plain runs the plain SIMD one, as browsers without relaxed SIMD do. Each
  // page fetches one module, and both agree with native.
  const modules = [];
  const plainPage = await browser.newPage();
  await watchRequests(plainPage, allUrls);
  plainPage.on("request", (r) => r.url().endsWith("_bg.wasm") && modules.push(r.url()));
  await plainPage.goto(`${origin}/index.html?notice=0&backend=cpu&simd=plain&warmup=0`);
  await ready(plainPage);
  const plain = await plainPage.evaluate(async () => {
    await window.cxrMsn.ready;
    const blob = await (await fetch("samples/NORMAL2-IM-1438-0001.jpeg")).blob();
    const p = await window.cxrMsn.score(blob, { sex: "F", age: 4, view: "AP" });
    return { scores: [...p.image, ...p.image_ehr], simd: window.wasmSimd, backend: window.cxrMsn.backend() };
  });
  assert(backend.includes("relaxed SIMD") && simd === "relaxed", `the default page ran ${simd}: ${backend}`);
  assert(plain.simd === "plain" && !plain.backend.includes("relaxed"), `?simd=plain ran ${plain.simd}: ${plain.backend}`);
  assert(modules.length === 1 && /cxr-msn-web-[0-9a-f]{1,16}_bg\.wasm$/.test(modules[0]) && !modules[0].includes("relaxed"),
    `the plain page fetched ${modules.join(", ")}`);
  const worstPlain = Math.max(...native.map((v, i) => Math.abs(v - plain.scores[i])));
  assert(worstPlain < 1e-4, `plain module: largest difference ${worstPlain}`);
  console.log(`     plain SIMD module (?simd=plain): largest difference vs native ${worstPlain.toExponential(2)}`);
  await plainPage.close();
});

await check("WebGPU: `auto` refuses the software adapter; `webgpu` uses it, agrees with the CPU (1e-3), and the browser accepts every shader", async () => {
  const page = await gpuBrowser.newPage();
  await watchRequests(page, allUrls);
  await page.goto(`${origin}/index.html?notice=0`);
  await ready(page);
  const auto = await page.textContent("#model-status");
  assert(/CPU .*software/.test(auto), `auto keeps the CPU and says why: ${auto}`);
  await page.selectOption("#backend", "webgpu");
  await page.waitForFunction(() => /^Ready: .* on WebGPU/.test(document.getElementById("model-status").textContent), null, { timeout: 180000 });
  const prediction = await page.evaluate(async () => {
    const blob = await (await fetch("samples/NORMAL2-IM-1438-0001.jpeg")).blob();
    return window.cxrMsn.score(blob, { sex: "F", age: 4, view: "AP" });
  });
  const worst = Math.max(...prediction.image.map((v, i) => Math.abs(v - cpuScores.image[i])));
  assert(worst < 1e-3, `WebGPU vs CPU largest difference ${worst}`);
  console.log(`     largest difference, WebGPU (SwiftShader) vs CPU: ${worst.toExponential(2)}`);
  assertShadersValid(await shaderReport(page));
  await page.screenshot({ path: join(shots, "5-webgpu.png") });
  await page.close();
});

// Makes the page's first matrix-product shader (Burn's `matmul_*` or the model crate's own
// `linear_kernel_*`, `batched_kernel_*`) declare the subgroup extension the device lacks:
// the browser rejects it on the side, as it did autotune's kernel (BENCHMARKS.md), while the
// call that uses it still returns.
const PRODUCT_SHADER = "(?:matmul|linear_kernel|batched_kernel)";
async function spoilFirstMatmulShader(page) {
  await inEngineRealms(page, (product) => {
    const create = GPUDevice.prototype.createShaderModule;
    let spoiled = 0;
    GPUDevice.prototype.createShaderModule = function (descriptor) {
      if (!spoiled && new RegExp(`^${product}`).test(descriptor.label || "")) {
        spoiled++;
        descriptor = { ...descriptor, code: `enable subgroups;\n${descriptor.code}` };
      }
      return create.call(this, descriptor);
    };
  }, PRODUCT_SHADER);
}
const FELL_BACK = new RegExp(`on CPU .*because WebGPU failed: the browser rejected the GPU shader ${PRODUCT_SHADER}.*subgroups`);

await check("WebGPU: a shader the browser rejects moves the page to the CPU, which says why, and the scores are the CPU's", async () => {
  const page = await gpuBrowser.newPage();
  await watchRequests(page, allUrls);
  await spoilFirstMatmulShader(page);
  await page.goto(`${origin}/index.html?notice=0&backend=webgpu&warmup=0`);
  await page.waitForFunction(() => /^Ready: .* on WebGPU/.test(document.getElementById("model-status").textContent), null, { timeout: 180000 });
  const prediction = await page.evaluate(async () => {
    const blob = await (await fetch("samples/NORMAL2-IM-1438-0001.jpeg")).blob();
    return window.cxrMsn.score(blob, { sex: "F", age: 4, view: "AP" });
  });
  const status = await page.textContent("#model-status");
  assert(FELL_BACK.test(status), `the page moved to the CPU and says why: ${status}`);
  assert(await page.evaluate(() => window.cxrMsn.backend().startsWith("CPU")), "the model now runs on the CPU");
  const worst = Math.max(...prediction.image.map((v, i) => Math.abs(v - cpuScores.image[i])));
  assert(worst < 1e-5, `the scores returned are the CPU's: largest difference ${worst}`);
  console.log(`     ${status.slice(0, 160)}…`);
  await page.close();
});

await check("embedded in another page with <cxr-msn-demo>", async () => {
  const page = await browser.newPage({ viewport: { width: 900, height: 1200 } });
  await watchRequests(page, allUrls);
  await page.goto(`${origin}/course.html`);
  const frame = await (await page.waitForSelector("cxr-msn-demo iframe")).contentFrame();
  await frame.waitForFunction(() => document.querySelectorAll("#results .card:not(.error)").length === 1, null, { timeout: 180000 });
  assert(await frame.isHidden("#notice"), "hide-notice hides the notice");
  // The frame takes the height of its content (the page says it), so the result shows
  // without scrolling inside the frame.
  const content = () => frame.evaluate(() => document.documentElement.getBoundingClientRect().height);
  let sized = false;
  for (let i = 0; i < 50 && !sized; i++) {
    const outer = await page.$eval("cxr-msn-demo iframe", (f) => f.getBoundingClientRect().height);
    sized = Math.abs(outer - (await content())) <= 2;
    if (!sized) await new Promise((r) => setTimeout(r, 100));
  }
  const inner = await frame.evaluate(() => document.documentElement.scrollHeight - window.innerHeight);
  assert(sized && inner <= 2, `the frame fits its content (${await content()} px; ${inner} px scroll inside)`);
  await page.screenshot({ path: join(shots, "6-embedded.png") });
  await page.close();
});

await check("phone width: no horizontal scrolling", async () => {
  const page = await browser.newPage({ viewport: { width: 375, height: 800 } });
  await page.goto(`${origin}/index.html?notice=0&backend=cpu&sample=person1954_bacteria_4886.jpeg`);
  await cards(page, 1);
  const wide = await page.evaluate(() => document.documentElement.scrollWidth - window.innerWidth);
  assert(wide <= 1, `the page is ${wide} px wider than a phone`);
  await page.screenshot({ path: join(shots, "7-phone.png"), fullPage: true });
  await page.close();
});

await check("the bad-input corpus: every broken image and model file gets its message, the good ones are scored", async () => {
  const corpus = resolve(here, "../bad-inputs");
  const cases = JSON.parse(readFileSync(join(corpus, "cases.json"), "utf8"));
  const images = cases.filter((c) => c.kind === "image");
  const page = await browser.newPage({ viewport: { width: 1100, height: 1400 } });
  await watchRequests(page, allUrls);
  await page.goto(`${origin}/index.html?notice=0&backend=cpu`);
  await ready(page);
  await page.setInputFiles("#image-file", images.map((c) => join(corpus, c.file)));
  const shown = await cards(page, images.length);
  const wrong = [];
  images.forEach((c, i) => {
    const card = shown[i];
    const name = c.file.split("/").pop();
    if (c.expect === "ok") {
      if (card.error || !card.text.includes(name)) wrong.push(`${c.file}: expected a result, got ${card.text}`);
    } else if (!card.error || !card.text.startsWith(`${name}: `) || !card.text.includes(c.expect)) {
      wrong.push(`${c.file} (${c.note}): expected '${c.expect}', got ${card.text.slice(0, 300)}`);
    }
  });
  assert(wrong.length === 0, wrong.join("\n"));
  await page.screenshot({ path: join(shots, "8-bad-inputs.png"), fullPage: true });
  for (const c of cases.filter((c) => c.kind === "model")) {
    const name = c.file.split("/").pop();
    await page.setInputFiles("#model-file", join(corpus, c.file));
    await page.waitForFunction((n) => document.getElementById("model-status").textContent.includes(`${n} cannot be used`), name);
    const status = await page.textContent("#model-status");
    assert(status.includes(c.expect), `${c.file} (${c.note}): expected '${c.expect}', got ${status}`);
  }
  await page.close();
});

await check("privacy: no image data in URLs, storage, cookies or the console; only the model is cached", async () => {
  const page = await browser.newPage();
  await watchRequests(page, allUrls);
  await page.goto(`${origin}/index.html?notice=0&backend=cpu`);
  await ready(page);
  const dicom = join(dist, "samples/rg1-adult-pa.dcm");
  await page.setInputFiles("#image-file", dicom);
  await cards(page, 1);
  const kept = await page.evaluate(async () => {
    const cached = [];
    for (const name of await caches.keys()) {
      for (const req of await (await caches.open(name)).keys()) cached.push(`${name} ${req.url}`);
    }
    return {
      href: location.href,
      local: Object.entries(localStorage),
      session: Object.entries(sessionStorage),
      cookie: document.cookie,
      databases: (await indexedDB.databases()).map((d) => d.name),
      cached,
    };
  });
  assert(!/data|base64|blob/i.test(kept.href), `the address holds data: ${kept.href}`);
  assert(kept.local.length === 0 && kept.session.length === 0 && kept.cookie === "" && kept.databases.length === 0,
    `stored: ${JSON.stringify(kept)}`);
  assert(kept.cached.length >= 1 && kept.cached.every((c) => /\/model\.safetensors$/.test(c)),
    `cached beyond the model: ${kept.cached.join(", ")}`);
  const leaks = consoleLines.filter((l) => l.length > 2000 || /data:image|base64|DICM|rg1-adult/.test(l));
  assert(leaks.length === 0, `console lines with image data: ${leaks.map((l) => l.slice(0, 120)).join(" | ")}`);
  await page.close();
});

// Learn mode: waits until every panel has been computed (data-state="ready" on each
// [data-panel]); a panel in error fails at once, with its message.
async function learnReady(target, timeout = 300000) {
  await target.waitForFunction(() => {
    const panels = [...document.querySelectorAll("[data-panel]")];
    return panels.length === 6 && panels.every((p) => p.dataset.state === "ready" || p.dataset.state === "error");
  }, null, { timeout });
  const errors = await target.$$eval("[data-panel][data-state=error]", (ps) => ps.map((p) => `${p.dataset.panel}: ${p.querySelector(".learn-status").textContent}`));
  assert(errors.length === 0, `panels in error: ${errors.join(" | ")}`);
}
// A range input set as a person would drag it: its value, then input and change events.
async function setRange(page, selector, value) {
  await page.$eval(selector, (el, v) => {
    el.value = String(v);
    el.dispatchEvent(new Event("input", { bubbles: true }));
    el.dispatchEvent(new Event("change", { bubbles: true }));
  }, value);
}
const same = (a, b) => JSON.stringify(a) === JSON.stringify(b);

let learnPage = null; // shared by the learn checks: computing every panel takes a while on the CPU
let learnInfo = null;
let cpuLearn = null; // the first learn page's numbers, for the WebGPU check
let learnMainThread = null; // where its engine ran and its main thread's longest task
// Where the page's model engine runs and the longest task its main thread has had so far.
const mainThread = (page) => page.evaluate(() => ({ engine: window.cxrMsn.engine(), longest: Math.max(0, ...window.__longTasks) }));
// Numbers every learn panel computes at its defaults: the masked view's cosine and
// cross-entropy, each view's cross-entropy, and the Sinkhorn masses after balancing.
const learnNumbers = (page) => page.evaluate(() => ({
  kept: Number(document.getElementById("kept-count").textContent),
  cosine: Number(document.getElementById("mask-result").dataset.cosine),
  maskCe: Number(document.getElementById("mask-assignment").dataset.ce),
  viewsCe: [...document.querySelectorAll("#views [data-ce]")].map((f) => Number(f.dataset.ce)),
  massAfter: [Number(document.getElementById("sinkhorn").dataset.massAfterMin),
    Number(document.getElementById("sinkhorn").dataset.massAfterMax)],
}));
await check("learn mode: every panel renders for a bundled sample", async () => {
  const page = await browser.newPage({ viewport: { width: 1100, height: 1400 } });
  await watchRequests(page, allUrls);
  await page.goto(`${origin}/index.html?notice=0&backend=cpu&mode=learn`);
  await learnReady(page);
  learnPage = page;
  learnMainThread = await mainThread(page);
  learnInfo = await page.evaluate(() => JSON.parse(window.cxrMsn.model().learn_info()));
  cpuLearn = await learnNumbers(page);
  assert(await page.isHidden("#findings") && await page.isHidden("#tabs"), "mode=learn shows the learn tab alone");
  assert(await page.isVisible("#learn") && await page.isVisible("#mask-canvas"), "the learn tab and the mask canvas are shown");
  const chosen = await page.$$eval(".learn-sample[aria-pressed=true]", (bs) => bs.map((b) => b.dataset.file));
  assert(chosen.length === 1, `the first sample is chosen: ${chosen}`);
  const views = await page.$$eval("#views canvas", (cs) => cs.length);
  assert(views === 2 + learnInfo.focal_views, `${views} view canvases for ${learnInfo.focal_views} focal views`);
  const bars = await page.$$eval("#prototype-chart path.bar", (ps) => ps.reduce((n, p) => n + Number(p.dataset.bars), 0));
  assert(learnInfo.available && bars > 0, `the prototype chart has bars (${bars}; prototypes available: ${learnInfo.available})`);
  // Sinkhorn-Knopp stopped after a few iterations ends on the images' side: each image's
  // row sums to 1 exactly, and the prototypes' masses are near B/K, far nearer than before.
  const sinkhorn = await page.$eval("#sinkhorn", (el) => ({
    rows: Number(el.dataset.rows), k: Number(el.dataset.prototypes),
    before: [Number(el.dataset.massBeforeMin), Number(el.dataset.massBeforeMax)],
    after: [Number(el.dataset.massAfterMin), Number(el.dataset.massAfterMax)],
    shown: [...el.querySelectorAll("[data-mass-after]")].map((r) => Number(r.dataset.massAfter)),
    rowSums: JSON.parse(el.dataset.rowSumsAfter || "[]"),
  }));
  const fair = sinkhorn.rows / sinkhorn.k;
  const off = (masses) => Math.max(...masses.map((m) => Math.abs(m - fair) / fair));
  const [before, after] = [off(sinkhorn.before), off([...sinkhorn.after, ...sinkhorn.shown])];
  assert(sinkhorn.rows >= 4 && sinkhorn.shown.length > 0 && sinkhorn.rowSums.length === sinkhorn.rows,
    `a batch of the samples in the Sinkhorn panel: ${JSON.stringify(sinkhorn).slice(0, 300)}`);
  assert(sinkhorn.rowSums.every((s) => Math.abs(s - 1) < 1e-4), `each image's row sums to 1: ${sinkhorn.rowSums}`);
  assert(after < 0.5 && after < before / 4, `after Sinkhorn the prototypes' masses are near B/K = ${fair}: ` +
    `largest relative difference ${after.toFixed(4)} after, ${before.toFixed(4)} before`);
  console.log(`     Sinkhorn: largest relative difference from B/K ${before.toFixed(3)} before, ${after.toFixed(4)} after`);
  const map = await page.$eval("#embedding-map", (el) => ({
    points: el.querySelectorAll(".map-point").length,
    markers: [...el.querySelectorAll(".map-marker")].map((m) => m.dataset.name),
  }));
  const samples = JSON.parse(readFileSync(join(dist, "samples/samples.json"), "utf8"));
  assert(map.points > 0 && map.markers.length === samples.length, `the map has points and the samples: ${JSON.stringify(map)}`);
  await page.screenshot({ path: join(shots, "9-learn.png"), fullPage: true });
  await page.setViewportSize({ width: 375, height: 800 });
  const wide = await page.evaluate(() => document.documentElement.scrollWidth - window.innerWidth);
  assert(wide <= 1, `learn mode is ${wide} px wider than a phone`);
  await page.setViewportSize({ width: 1100, height: 1400 });
});

// The page's main thread, while learn mode computed every panel for a fresh page: with the
// engine in its worker (static/engine.js) the longest task is the browser laying out and
// drawing the panels (60-200 ms here); with ?worker=0 (the engine on the page, where no
// worker can start) each encoder call is a task of its own, the first draw of views 0.9-2 s,
// during which the page cannot scroll or answer a key. Both give the same numbers.
const LONGEST_TASK_MS = 500;
await check(`the model engine runs in a worker: while learn mode computes, no task holds the page over ${LONGEST_TASK_MS} ms (with ?worker=0 far longer ones), same numbers`, async () => {
  const inWorker = learnMainThread;
  assert(inWorker, "the learn page did not open");
  const page = await browser.newPage({ viewport: { width: 1100, height: 1400 } });
  await watchRequests(page, allUrls);
  await page.goto(`${origin}/index.html?notice=0&backend=cpu&mode=learn&worker=0`);
  await learnReady(page);
  const onPage = await mainThread(page);
  const numbers = await learnNumbers(page);
  await page.close();
  console.log(`     longest task on the page's main thread: ${inWorker.longest} ms with the worker, ${onPage.longest} ms without`);
  assert(inWorker.engine === "worker" && onPage.engine === "page", `engines: ${inWorker.engine}, ${onPage.engine} (?worker=0)`);
  assert(inWorker.longest < LONGEST_TASK_MS, `with the worker a task held the page ${inWorker.longest} ms`);
  assert(onPage.longest > 2 * inWorker.longest,
    `without the worker the longest task was ${onPage.longest} ms, not much longer than with it: the check cannot tell`);
  assert(same(numbers, cpuLearn), `the page's own engine computed other numbers: ${JSON.stringify({ numbers, cpuLearn })}`);
});

await check("where the engine's worker cannot start (its script refused), the engine runs on the page and scores the same", async () => {
  const page = await browser.newPage();
  await watchRequests(page, allUrls);
  await page.route(/\/engine-worker\.js$/, (route) => route.fulfill({ status: 404, body: "" }));
  await page.goto(`${origin}/index.html?notice=0&backend=cpu&warmup=0`);
  await ready(page);
  const [engine, prediction] = await page.evaluate(async () => {
    const blob = await (await fetch("samples/NORMAL2-IM-1438-0001.jpeg")).blob();
    return [window.cxrMsn.engine(), await window.cxrMsn.score(blob, { sex: "F", age: 4, view: "AP" })];
  });
  await page.close();
  assert(engine === "page", `the engine runs in ${engine}`);
  assert(same(prediction.image_ehr, cpuScores.image_ehr), "the page's own engine scored otherwise than the worker");
});

await check("learn mode: the mask slider changes the kept patches and the assignment", async () => {
  const page = learnPage;
  assert(page, "the learn page did not open");
  const read = () => page.evaluate(() => ({
    kept: Number(document.getElementById("kept-count").textContent),
    top: document.querySelector("#mask-assignment ol.protos").dataset.top,
    ce: document.getElementById("mask-assignment").dataset.ce,
    cosine: document.getElementById("mask-result").dataset.cosine,
  }));
  const first = await read();
  assert(first.kept > 0 && first.kept < 196, `some patches are hidden at ratio ${learnInfo.mask_ratio}: ${first.kept} kept`);
  await setRange(page, "#mask-ratio", 0.5);
  await learnReady(page);
  const half = await read();
  assert(half.kept === 196 - Math.round(0.5 * 196), `half hidden: ${half.kept} kept`);
  assert(half.top !== first.top && half.ce !== first.ce, `the masked view's assignment moved: ${first.top} -> ${half.top}`);
  await page.screenshot({ path: join(shots, "10-learn-mask.png") });
  await setRange(page, "#mask-ratio", 0);
  await learnReady(page);
  const none = await read();
  assert(none.kept === 196 && Math.abs(Number(none.cosine) - 1) < 1e-4, `nothing hidden: ${none.kept} kept, cosine ${none.cosine}`);
});

await check("learn mode: a new draw gives new views with the seed shown; the same seed gives the same views", async () => {
  const page = learnPage;
  assert(page, "the learn page did not open");
  const read = () => page.evaluate(() => ({
    seed: document.getElementById("views-seed").value,
    ce: [...document.querySelectorAll("#views [data-ce]")].map((f) => f.dataset.ce),
  }));
  const first = await read();
  assert(first.ce.length === 1 + learnInfo.focal_views, `a CE for the anchor and each focal view: ${first.ce.length}`);
  await page.click("#new-draw");
  await learnReady(page);
  const second = await read();
  assert(second.seed !== first.seed, `a new seed: ${first.seed} -> ${second.seed}`);
  assert(!same(second.ce, first.ce), "new views, new cross-entropies");
  await page.fill("#views-seed", first.seed);
  await learnReady(page);
  const again = await read();
  assert(again.seed === first.seed && same(again.ce, first.ce), `seed ${first.seed} again gives ${again.ce}, not ${first.ce}`);
});

await check("learn mode: changing age moves the image + EHR scores and the fused embedding, not the image-only ones", async () => {
  const page = learnPage;
  assert(page, "the learn page did not open");
  assert(await page.isVisible("#learn-age") && await page.isVisible("#learn-sex"), "the default model takes age and sex");
  await page.selectOption("#learn-sex", "F"); // its image + EHR head needs both
  await learnReady(page);
  const read = () => page.$eval("#learn-ehr", (el) => ({
    image: [...el.querySelectorAll("[data-head=image]")].map((c) => c.dataset.score),
    fused: [...el.querySelectorAll("[data-head=image-ehr]")].map((c) => c.dataset.score),
    cosine: el.dataset.cosine,
    embedding: (el.querySelector("[data-series=b]") || { dataset: {} }).dataset.values,
  }));
  await page.fill("#learn-age", "30");
  await learnReady(page);
  const young = await read();
  await page.fill("#learn-age", "85");
  await learnReady(page);
  const old = await read();
  assert(young.image.length === 14 && same(young.image, old.image), "the image-only scores stay");
  assert(young.fused.length === 14 && !same(young.fused, old.fused), "the image + EHR scores move");
  assert(young.cosine && young.embedding && young.cosine !== old.cosine && young.embedding !== old.embedding,
    `the fused embedding moves: cosine ${young.cosine} -> ${old.cosine}`);
  await page.close();
  learnPage = null;
});

await check("learn mode on WebGPU (Chromium's software adapter): every panel, the CPU's numbers (1e-3), every shader accepted", async () => {
  assert(cpuLearn, "the CPU learn page gave no numbers");
  const page = await gpuBrowser.newPage({ viewport: { width: 1100, height: 1400 } });
  await watchRequests(page, allUrls);
  await page.goto(`${origin}/index.html?notice=0&backend=webgpu&mode=learn`);
  await learnReady(page);
  const status = await page.textContent("#model-status");
  assert(/on WebGPU/.test(status), `learn mode runs on WebGPU: ${status}`);
  const gpu = await learnNumbers(page);
  assert(gpu.kept === cpuLearn.kept && gpu.viewsCe.length === cpuLearn.viewsCe.length, `same masks and views: ${JSON.stringify(gpu)}`);
  const pairs = [[gpu.cosine, cpuLearn.cosine], [gpu.maskCe, cpuLearn.maskCe], ...gpu.viewsCe.map((v, i) => [v, cpuLearn.viewsCe[i]]),
    ...gpu.massAfter.map((v, i) => [v, cpuLearn.massAfter[i]])];
  const worst = Math.max(...pairs.map(([a, b]) => Math.abs(a - b) / Math.max(1, Math.abs(b))));
  assert(worst < 1e-3, `WebGPU vs CPU largest relative difference ${worst}: ${JSON.stringify({ gpu, cpu: cpuLearn })}`);
  console.log(`     learn mode, WebGPU (SwiftShader) vs CPU: largest relative difference ${worst.toExponential(2)}`);
  assertShadersValid(await shaderReport(page));
  await page.screenshot({ path: join(shots, "11-learn-webgpu.png") });
  await page.close();
});

await check("learn mode on WebGPU with a shader the browser rejects: every panel computed again on the CPU, with its numbers", async () => {
  assert(cpuLearn, "the CPU learn page gave no numbers");
  const page = await gpuBrowser.newPage({ viewport: { width: 1100, height: 1400 } });
  await watchRequests(page, allUrls);
  await spoilFirstMatmulShader(page);
  await page.goto(`${origin}/index.html?notice=0&backend=webgpu&mode=learn`);
  await learnReady(page);
  const status = await page.textContent("#model-status");
  assert(FELL_BACK.test(status), `learn mode moved to the CPU and says why: ${status}`);
  const moved = await learnNumbers(page);
  const pairs = [[moved.cosine, cpuLearn.cosine], [moved.maskCe, cpuLearn.maskCe], ...moved.viewsCe.map((v, i) => [v, cpuLearn.viewsCe[i]]),
    ...moved.massAfter.map((v, i) => [v, cpuLearn.massAfter[i]])];
  const worst = Math.max(...pairs.map(([a, b]) => Math.abs(a - b) / Math.max(1, Math.abs(b))));
  assert(moved.viewsCe.length === cpuLearn.viewsCe.length && worst < 1e-5,
    `the CPU's numbers: largest relative difference ${worst}: ${JSON.stringify({ moved, cpu: cpuLearn })}`);
  await page.close();
});

await check("learn mode embedded with <cxr-msn-demo mode=learn>: the sample's DICOM header fills the record", async () => {
  const page = await browser.newPage({ viewport: { width: 900, height: 1200 } });
  await watchRequests(page, allUrls);
  await page.goto(`${origin}/course-learn.html`);
  const frame = await (await page.waitForSelector("cxr-msn-demo iframe")).contentFrame();
  await learnReady(frame);
  assert(await frame.isHidden("#notice") && await frame.isHidden("#findings"), "hide-notice and mode=learn");
  const chosen = await frame.$$eval(".learn-sample[aria-pressed=true]", (bs) => bs.map((b) => b.dataset.file));
  assert(same(chosen, ["rg1-adult-pa.dcm"]), `the sample attribute picks learn mode's image: ${chosen}`);
  assert(await frame.inputValue("#learn-age") === "64", "the DICOM header filled the age");
  await page.close();
});

await check("Content-Security-Policy: strict, and nothing on any page broke it", async () => {
  const html = readFileSync(join(dist, "index.html"), "utf8");
  const policy = (html.match(/<meta http-equiv="Content-Security-Policy" content="([^"]+)"/) || [])[1];
  assert(policy, "index.html has a Content-Security-Policy");
  assert(/default-src 'none'/.test(policy) && !/unsafe-inline|unsafe-eval'|\*/.test(policy.replace("'wasm-unsafe-eval'", "")),
    `not strict: ${policy}`);
  assert(violations.length === 0, `violations: ${violations.join(" | ")}`);
});

await check("no request left the page's origin, and each was one of the site's own files", async () => {
  const away = offOrigin(allUrls);
  assert(allUrls.length > 10 && away.length === 0, `requests elsewhere: ${away.join(", ")}`);
  const local = allUrls.filter((u) => u.startsWith(origin)).map((u) => new URL(u));
  const unknown = local.filter((u) => !COURSE_PAGES[u.pathname] &&
    !existsSync(join(dist, decodeURIComponent(u.pathname.endsWith("/") ? u.pathname + "index.html" : u.pathname))));
  assert(unknown.length === 0, `requests for files the site does not have: ${unknown.map((u) => u.pathname).join(", ")}`);
  const long = local.filter((u) => u.href.length > 300);
  assert(long.length === 0, `a URL long enough to carry data: ${long.map((u) => u.href.slice(0, 100)).join(", ")}`);
});

await browser.close();
await gpuBrowser.close();
server.close();
rmSync(tmp, { recursive: true, force: true });
console.log(`\n${results.length - failures} passed, ${failures} failed; screenshots in ${shots}`);
process.exit(failures ? 1 : 0);
