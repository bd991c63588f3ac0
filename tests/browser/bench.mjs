// Size and speed of the page, for BENCHMARKS.md: bytes on first load (raw and gzip), time
// to the first prediction, and inference time per image on each backend Chromium offers
// here (the CPU in WebAssembly; WebGPU on SwiftShader, a software adapter).
//
//   DIST=../../dist node bench.mjs

import { createServer } from "node:http";
import { readFileSync, existsSync, statSync } from "node:fs";
import { gzipSync } from "node:zlib";
import { extname, join, resolve } from "node:path";
import { chromium } from "playwright-core";

const here = new URL(".", import.meta.url).pathname;
const dist = resolve(process.env.DIST || join(here, "../../dist"));
const TYPES = { ".html": "text/html", ".js": "text/javascript", ".css": "text/css", ".wasm": "application/wasm", ".json": "application/json" };
const served = [];
const server = createServer((req, res) => {
  const path = decodeURIComponent(new URL(req.url, "http://x").pathname);
  const file = join(dist, path.endsWith("/") ? path + "index.html" : path);
  if (!file.startsWith(dist) || !existsSync(file) || !statSync(file).isFile()) {
    res.writeHead(404);
    return res.end();
  }
  const body = readFileSync(file);
  served.push({ path, raw: body.length, gzip: gzipSync(body, { level: 9 }).length });
  res.writeHead(200, { "Content-Type": TYPES[extname(file)] || "application/octet-stream", "Content-Length": body.length });
  res.end(body);
});
await new Promise((r) => server.listen(0, "127.0.0.1", r));
const origin = `http://127.0.0.1:${server.address().port}`;
const FLAGS = ["--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--disable-background-networking",
  "--disable-component-update", "--disable-sync", "--no-first-run", "--enable-unsafe-webgpu"];
const browser = await chromium.launch({ executablePath: "/usr/bin/chromium", args: FLAGS });

const median = (xs) => xs.slice().sort((a, b) => a - b)[Math.floor(xs.length / 2)];

// First visit: everything from a cold cache to the first result card.
const page = await browser.newPage();
const t0 = Date.now();
await page.goto(`${origin}/index.html?notice=0&backend=cpu&sample=NORMAL2-IM-1438-0001.jpeg`);
await page.waitForSelector("#results .card:not(.error)", { timeout: 300000 });
const firstPrediction = Date.now() - t0;
const total = served.reduce((a, f) => ({ raw: a.raw + f.raw, gzip: a.gzip + f.gzip }), { raw: 0, gzip: 0 });

async function timing(backend, runs) {
  await page.selectOption("#backend", backend);
  await page.waitForFunction((b) => new RegExp(`^Ready: .* on ${b}`).test(document.getElementById("model-status").textContent),
    backend === "cpu" ? "CPU" : "WebGPU", { timeout: 300000 });
  return page.evaluate(async (runs) => {
    const blob = await (await fetch("samples/NORMAL2-IM-1438-0001.jpeg")).blob();
    const times = [];
    for (let i = 0; i < runs; i++) {
      const t = performance.now();
      await window.cxrMsn.score(blob, { sex: "F", age: 4 });
      times.push(performance.now() - t);
    }
    return times;
  }, runs);
}
const cpu = await timing("cpu", 6);
const gpu = await timing("webgpu", 3);
const backendName = await page.evaluate(() => window.cxrMsn.backend());

console.log("first load (cold cache):");
for (const f of served.filter((f) => !f.path.startsWith("/samples"))) {
  console.log(`  ${f.path.padEnd(40)} ${(f.raw / 1e6).toFixed(2)} MB raw, ${(f.gzip / 1e6).toFixed(2)} MB gzip`);
}
console.log(`  total (with the sample)                 ${(total.raw / 1e6).toFixed(2)} MB raw, ${(total.gzip / 1e6).toFixed(2)} MB gzip`);
console.log(`time to the first prediction: ${(firstPrediction / 1000).toFixed(1)} s`);
console.log(`inference per image, CPU (wasm): median ${median(cpu.slice(1)).toFixed(0)} ms of ${cpu.length - 1} (first ${cpu[0].toFixed(0)} ms)`);
console.log(`inference per image, ${backendName}: median ${median(gpu.slice(1)).toFixed(0)} ms of ${gpu.length - 1} (first ${gpu[0].toFixed(0)} ms)`);
await browser.close();
server.close();
