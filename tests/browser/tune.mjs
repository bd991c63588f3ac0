// WebGPU's first pass and tuned times for settings of the page's autotune (?tune=), each
// on a fresh page in a browser of its own (BENCHMARKS.md, "The browser demo"): six rounds
// of the encoder alone (embed) and a new file scored whole; the first round pays for the
// tuning. With LEARN=1, the time until learn mode's panels are all computed on WebGPU.
//
//   DIST=../../dist TUNES=minimal:3,balanced:10 node tune.mjs
//   DIST=../../dist TUNES= LEARN=1 node tune.mjs        (the page's default setting)
import { createServer } from "node:http";
import { readFileSync, existsSync, statSync } from "node:fs";
import { extname, join, resolve } from "node:path";
import { chromium } from "playwright-core";
const dist = resolve(process.env.DIST);
const TYPES = { ".html": "text/html", ".js": "text/javascript", ".mjs": "text/javascript", ".css": "text/css", ".wasm": "application/wasm", ".json": "application/json" };
const server = createServer((req, res) => {
  const path = decodeURIComponent(new URL(req.url, "http://x").pathname);
  const file = join(dist, path.endsWith("/") ? path + "index.html" : path);
  if (!file.startsWith(dist) || !existsSync(file) || !statSync(file).isFile()) { res.writeHead(404); return res.end(); }
  res.writeHead(200, { "Content-Type": TYPES[extname(file)] || "application/octet-stream" });
  res.end(readFileSync(file));
});
await new Promise((r) => server.listen(0, "127.0.0.1", r));
const origin = `http://127.0.0.1:${server.address().port}`;
const FLAGS = ["--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--no-first-run", "--enable-unsafe-webgpu"];
const tunes = (process.env.TUNES || "").split(",");
const learn = process.env.LEARN === "1";
for (const tune of tunes) {
  const b = await chromium.launch({ executablePath: "/usr/bin/chromium", args: FLAGS });
  const p = await b.newPage();
  p.on("console", (m) => { if (process.env.VERBOSE) console.log("  console:", m.text().slice(0, 300)); });
  const q = tune ? `&tune=${tune}` : "";
  const t0 = Date.now();
  if (learn) {
    await p.goto(`${origin}/index.html?notice=0&backend=webgpu&mode=learn${q}`);
    await p.waitForFunction(() => {
      const ps = [...document.querySelectorAll("[data-panel]")];
      return ps.length === 6 && ps.every((x) => x.dataset.state === "ready" || x.dataset.state === "error");
    }, null, { timeout: 900000, polling: 500 });
    console.log(`tune=${tune || "(default)"}: learn page on WebGPU ready in ${((Date.now() - t0) / 1000).toFixed(1)} s`);
  } else {
    await p.goto(`${origin}/index.html?notice=0&backend=webgpu&warmup=0${q}`);
    await p.waitForFunction(() => /^Ready: .* on WebGPU/.test(document.getElementById("model-status").textContent), null, { timeout: 300000 });
    const r = await p.evaluate(async () => {
      const file = async (name) => new Uint8Array(await (await fetch(`samples/${name}`)).arrayBuffer());
      const a = await file("NORMAL2-IM-1438-0001.jpeg"), o = await file("person1954_bacteria_4886.jpeg");
      const m = window.cxrMsn.model();
      const emb = [], sc = [];
      for (let i = 0; i < 6; i++) {
        m.read_image(a);
        let t = performance.now(); await m.embed(a); emb.push(performance.now() - t);
        m.read_image(o);
        t = performance.now(); await window.cxrMsn.score(new Blob([a]), { sex: "F", age: 4 }); sc.push(performance.now() - t);
      }
      return { emb, sc };
    });
    const f = (xs) => xs.map((x) => x.toFixed(0)).join(" ");
    console.log(`tune=${tune || "(default)"}: embed ${f(r.emb)} ms; score ${f(r.sc)} ms; total ${((Date.now() - t0) / 1000).toFixed(1)} s`);
  }
  await b.close();
}
server.close();
