// Trunk post-build hook: gives the built index.html a Content-Security-Policy that allows
// only what the page needs. Trunk writes the wasm loader as an inline module script, so the
// policy lists the SHA-256 of each inline script (computed here, after the build) rather
// than allowing inline scripts in general.
//
// What the page needs, and nothing else:
//   script-src 'self' + the loader's hash, 'wasm-unsafe-eval' (compiling WebAssembly);
//   style-src 'self' (the stylesheet; widths are set through the CSSOM, not attributes);
//   img-src 'self' data: blob: (bundled samples, the favicon, drawn previews);
//   connect-src 'self' (the wasm module, the model file and the samples);
//   worker-src 'self' (the model engine's worker, static/engine-worker.js);
//   everything else 'none': no plugins, frames, forms, fonts or base URL changes.
// frame-ancestors cannot be set from a <meta> tag; the page is meant to be embedded.

import { createHash } from "node:crypto";
import { readFileSync, writeFileSync } from "node:fs";
import { join } from "node:path";

const dir = process.env.TRUNK_STAGING_DIR || process.argv[2];
if (!dir) throw new Error("usage: node csp.mjs DIST (or run as a trunk post_build hook)");
const file = join(dir, "index.html");
let html = readFileSync(file, "utf8");
const hashes = [...html.matchAll(/<script(?![^>]*\bsrc=)[^>]*>([\s\S]*?)<\/script>/g)].map(
  (m) => `'sha256-${createHash("sha256").update(m[1], "utf8").digest("base64")}'`,
);
const policy = [
  "default-src 'none'",
  `script-src 'self' 'wasm-unsafe-eval' ${hashes.join(" ")}`.trim(),
  "style-src 'self'",
  "img-src 'self' data: blob:",
  "connect-src 'self'",
  "worker-src 'self'",
  "base-uri 'none'",
  "form-action 'none'",
  "object-src 'none'",
].join("; ");
html = html.replace(/<meta http-equiv="Content-Security-Policy"[^>]*>\s*/g, "");
html = html.replace(/<head>/, `<head>\n  <meta http-equiv="Content-Security-Policy" content="${policy}">`);
writeFileSync(file, html);
console.log(`csp.mjs: ${hashes.length} inline script(s) hashed into the policy of ${file}`);
