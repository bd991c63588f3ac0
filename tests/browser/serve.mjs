// The static server the browser benchmarks share: the page's `dist/` (DIST, default
// ../../dist) and, where ORT_MODEL (an .onnx file) and ORT_DIR (onnxruntime-web's dist/)
// are set, a bare page for ONNX Runtime Web at /ort.html with the model at
// /ort-model.onnx and the runtime's files under /ort/. `served` lists each file served
// from `dist/` (path, raw and gzip-compressed bytes, the latter computed when first read,
// so that compressing the 20 MB module does not hold up the answers), for the page's size. LATENCY_MS
// (default 0) holds every answer back that long, as a network's round trip would.

import { createServer } from "node:http";
import { chromium } from "playwright-core";
import { readFileSync, existsSync, statSync } from "node:fs";
import { gzipSync } from "node:zlib";
import { extname, join, resolve } from "node:path";

const here = new URL(".", import.meta.url).pathname;
const TYPES = { ".html": "text/html", ".js": "text/javascript", ".mjs": "text/javascript", ".css": "text/css", ".wasm": "application/wasm", ".json": "application/json" };
const ORT_PAGE = `<!DOCTYPE html><html><head><meta charset="utf-8"><script src="/ort/ort.min.js"></script></head><body></body></html>`;

/** Starts the server on a free local port: `{ origin, served, close, ortModel }`. */
export async function serve() {
  const dist = resolve(process.env.DIST || join(here, "../../dist"));
  const ortModel = process.env.ORT_MODEL;
  const ortDir = process.env.ORT_DIR && resolve(process.env.ORT_DIR);
  const served = [];
  const gzipped = new Map();
  const gzipSize = (file) => {
    if (!gzipped.has(file)) gzipped.set(file, gzipSync(readFileSync(file), { level: 9 }).length);
    return gzipped.get(file);
  };
  const latency = Number(process.env.LATENCY_MS || 0);
  const server = createServer((req, res) => (latency ? setTimeout(answer, latency, req, res) : answer(req, res)));
  function answer(req, res) {
    const path = decodeURIComponent(new URL(req.url, "http://x").pathname);
    if (ortModel && path === "/ort.html") {
      res.writeHead(200, { "Content-Type": "text/html" });
      return res.end(ORT_PAGE);
    }
    if (ortModel && (path === "/ort-model.onnx" || path.startsWith("/ort/"))) {
      const file = path === "/ort-model.onnx" ? ortModel : join(ortDir, path.slice(5));
      if (!existsSync(file)) { res.writeHead(404); return res.end(); }
      res.writeHead(200, { "Content-Type": TYPES[extname(file)] || "application/octet-stream" });
      return res.end(readFileSync(file));
    }
    const file = join(dist, path.endsWith("/") ? path + "index.html" : path);
    if (!file.startsWith(dist) || !existsSync(file) || !statSync(file).isFile()) {
      res.writeHead(404);
      return res.end();
    }
    const body = readFileSync(file);
    served.push({ path, raw: body.length, get gzip() { return gzipSize(file); } });
    res.writeHead(200, { "Content-Type": TYPES[extname(file)] || "application/octet-stream", "Content-Length": body.length });
    res.end(body);
  }
  await new Promise((r) => server.listen(0, "127.0.0.1", r));
  return { origin: `http://127.0.0.1:${server.address().port}`, served, close: () => server.close(), ortModel };
}

// Debian's headless Chromium as the benchmarks run it, with `extra` flags (WebGPU's).
const FLAGS = ["--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--disable-background-networking",
  "--disable-component-update", "--disable-sync", "--no-first-run"];
export function launchChromium(...extra) {
  return chromium.launch({ executablePath: "/usr/bin/chromium", args: [...FLAGS, ...extra] });
}
