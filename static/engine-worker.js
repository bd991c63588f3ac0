// The page's model engine in a Web Worker (a module worker started by engine.js): the
// first message names the wasm module to start (with its compiled WebAssembly.Module when
// the page has it); every later one is a request
// `{ id, op, args }` for engine-host.js, answered with `{ id, ok }` or `{ id, error }`.
// Requests are handled as they arrive, as the page would handle its own calls.

import { createHost, loadBindings } from "./engine-host.js";

let host = null;

self.onmessage = async ({ data: { id, op, args } }) => {
  try {
    let ok;
    if (op === "start") {
      host = loadBindings(args[0], args[1]).then(createHost);
      await host;
      ok = null;
    } else {
      if (!host) throw new Error("the engine has not been started");
      ok = await (await host)(op, args);
    }
    // Pixels go back without a copy when they own their buffer (wasm-bindgen copies them
    // out of the module's memory, whose buffer must never be transferred).
    const own = ok instanceof Uint8Array && ok.byteOffset === 0 && ok.byteLength === ok.buffer.byteLength;
    self.postMessage({ id, ok }, own ? [ok.buffer] : []);
  } catch (e) {
    self.postMessage({ id, error: String((e && e.message) || e) });
  }
};
