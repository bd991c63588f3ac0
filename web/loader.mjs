// Gives the built page its second WebAssembly module and a loader that picks one of the two
// for the page's model engine to start in its worker (static/engine.js; scripts/web runs
// this after `trunk build` and the build of web/relaxed):
//
//   node loader.mjs DIST RELAXED_DIR
//
// RELAXED_DIR holds wasm-bindgen's output for web/relaxed (cxr-msn-web-relaxed.js and
// cxr-msn-web-relaxed_bg.wasm, already through wasm-opt). They are copied into DIST under
// names with their content's hash (as trunk names its files, so browsers never mix an old
// file with a new one), and trunk's inline loader in DIST/index.html is replaced by one that
// validates a one-instruction module using relaxed SIMD (`f32x4.relaxed_madd`): where the
// browser accepts it (Chrome and Edge 114+), the relaxed module; elsewhere (Safari, for
// one), trunk's own SIMD module. `?simd=plain` in the page's URL forces the
// plain module. The loader names the module (`window.wasmModule`, with a `cxr-msn-wasm`
// event) and starts its download and compilation at once (`window.wasmCompiled`, a promise
// of the WebAssembly.Module), beside the page's scripts: the engine's worker is handed the
// compiled module (static/engine.js) rather than fetching it only once its own scripts
// have loaded, a chain of requests that each cost a round trip. Trunk's preload links go:
// they would fetch the plain module in every browser.
// The Content-Security-Policy is then recomputed for the new inline script (csp.mjs).

import { createHash } from "node:crypto";
import { copyFileSync, readFileSync, writeFileSync } from "node:fs";
import { join } from "node:path";
import { execFileSync } from "node:child_process";

const [dist, relaxedDir] = process.argv.slice(2);
if (!dist || !relaxedDir) throw new Error("usage: node loader.mjs DIST RELAXED_DIR");
const file = join(dist, "index.html");
let html = readFileSync(file, "utf8");

// Trunk's loader: `import init, * as bindings from './NAME.js'; ... init({ module_or_path:
// './NAME_bg.wasm' }) ...`.
const loader = /<script type="module">\s*import init, \* as bindings from '\.\/([^']+)\.js';[\s\S]*?<\/script>/;
const found = html.match(loader);
if (!found) throw new Error(`${file}: trunk's inline wasm loader not found (has trunk changed?)`);
const plain = found[1];
if (!html.includes(`'./${plain}_bg.wasm'`)) {
  throw new Error(`${file}: trunk's loader does not load ./${plain}_bg.wasm`);
}

const js = readFileSync(join(relaxedDir, "cxr-msn-web-relaxed.js"));
const wasm = readFileSync(join(relaxedDir, "cxr-msn-web-relaxed_bg.wasm"));
const hash = createHash("sha256").update(js).update(wasm).digest("hex").slice(0, 16);
const relaxed = `cxr-msn-web-relaxed-${hash}`;
copyFileSync(join(relaxedDir, "cxr-msn-web-relaxed.js"), join(dist, `${relaxed}.js`));
copyFileSync(join(relaxedDir, "cxr-msn-web-relaxed_bg.wasm"), join(dist, `${relaxed}_bg.wasm`));

// (module (func (param v128 v128 v128) (result v128)
//   local.get 0 local.get 1 local.get 2 f32x4.relaxed_madd))
const probe = [
  0, 97, 115, 109, 1, 0, 0, 0, 1, 8, 1, 96, 3, 123, 123, 123, 1, 123, 3, 2, 1, 0, 10, 13, 1, 11,
  0, 32, 0, 32, 1, 32, 2, 253, 133, 2, 11,
];
const script = `<script type="module">
// The relaxed-SIMD module (fused multiply-adds in the matrix products) where the browser
// validates relaxed SIMD, else the plain SIMD one; ?simd=plain forces the plain one
// (web/loader.mjs). Compiled from here on; the model engine starts it (static/engine.js).
const relaxed = new URLSearchParams(location.search).get("simd") !== "plain"
  && WebAssembly.validate(new Uint8Array([${probe.join(",")}]));
window.wasmModule = relaxed ? "./${relaxed}" : "./${plain}";
window.wasmSimd = relaxed ? "relaxed" : "plain";
window.wasmCompiled = fetch(window.wasmModule + "_bg.wasm").then((r) => {
  if (!r.ok) throw new Error(r.url + ": " + r.status);
  const streaming = (r.headers.get("Content-Type") || "").startsWith("application/wasm");
  return streaming ? WebAssembly.compileStreaming(r) : r.arrayBuffer().then((b) => WebAssembly.compile(b));
});
window.wasmCompiled.catch(() => {}); // the engine then fetches the module itself
dispatchEvent(new CustomEvent("cxr-msn-wasm"));
</script>`;
html = html.replace(loader, script);
// Trunk's preloads of the plain module's files.
const preloads = /<link rel="(?:modulepreload|preload)" href="\.\/[^"]+\.(?:js|wasm)"[^>]*>/g;
html = html.replace(preloads, "");
writeFileSync(file, html);
console.log(`loader.mjs: ${relaxed} beside ${plain} in ${dist}`);

execFileSync("node", [new URL("csp.mjs", import.meta.url).pathname, dist], { stdio: "inherit" });
