// The model engine's side of the page: the wasm module (web/src/bindings.rs) and the models
// loaded in it, driven by requests `(op, args)`. It runs in a Web Worker (engine-worker.js),
// so that decoding and inference never hold up the page; where no worker can start, on the
// page itself (engine.js decides). The same requests and answers either way:
//
//   load(bytes, backend)      -> { handle, backend, summary, learnInfo | learnInfoError }
//   call(handle, method, args) -> what CxrModel's `method` returns (a string, or bytes)
//   free(handle)
//   check(bytes)              -> the model file's summary (check_model_file), or an error
//   trouble()                 -> what WebGPU reported wrong so far (gpu-guard.js), or null

import { watchWebGpu, webGpuTrouble } from "./gpu-guard.js";

// The CxrModel methods a page may call on a loaded model (besides backend, summary and
// learn_info, which `load` answers with).
export const METHODS = ["read_image", "view", "predict", "embed", "masked", "views", "assign", "sinkhorn", "explain", "signature"];

// Imports and starts the wasm module named `name` (a URL without `.js`: the page's loader
// picks the relaxed- or the plain-SIMD module, web/loader.mjs), from `compiled` (its
// WebAssembly.Module, which the loader compiles as the page opens) when given, else from
// its `_bg.wasm` file.
export async function loadBindings(name, compiled = null) {
  const bindings = await import(`${name}.js`);
  await bindings.default({ module_or_path: compiled || `${name}_bg.wasm` });
  return bindings;
}

const message = (e) => String((e && e.message) || e);

// A request handler over started `bindings`: `(op, args) => Promise<answer>`.
export function createHost(bindings) {
  // Before any WebGPU device exists in this realm: a shader the browser rejects, or a
  // device error, must not leave wrong numbers on the page.
  watchWebGpu();
  const models = new Map();
  let next = 1;
  const model = (handle) => {
    const m = models.get(handle);
    if (!m) throw new Error(`no model ${handle} is loaded (freed already?)`);
    return m;
  };
  const ops = {
    async load(bytes, backend) {
      const m = await bindings.CxrModel.load(bytes, backend);
      const handle = next++;
      models.set(handle, m);
      const answer = { handle, backend: m.backend(), summary: m.summary() };
      try {
        answer.learnInfo = m.learn_info();
      } catch (e) {
        answer.learnInfoError = message(e);
      }
      return answer;
    },
    call(handle, method, args) {
      if (!METHODS.includes(method)) throw new Error(`the model has no method ${method}`);
      return model(handle)[method](...args);
    },
    free(handle) {
      const m = models.get(handle);
      models.delete(handle);
      if (m) m.free();
    },
    check: (bytes) => bindings.check_model_file(bytes),
    trouble: () => webGpuTrouble(),
  };
  return async (op, args) => {
    if (!Object.hasOwn(ops, op)) throw new Error(`unknown engine request ${op}`);
    return ops[op](...args);
  };
}
