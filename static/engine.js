// The page's side of the model engine (engine-host.js): where it runs, and models that look
// like the wasm module's CxrModel with every computing method returning a promise.
//
// The engine runs in a Web Worker (engine-worker.js), so that decoding an X-ray, an encoder
// pass or learn mode's twelve views never freeze scrolling, typing or the page's own
// redrawing. It runs on the page itself instead where no module worker starts (an embedding
// page's policy forbidding workers, an old browser), under `trunk serve` (whose loader starts
// the module on the page), and with `?worker=0` in the URL (for comparisons and profiling).

import { METHODS, createHost, loadBindings } from "./engine-host.js";

const message = (e) => String((e && e.message) || e);

// A model loaded in the engine. `backend()`, `summary()` and `learn_info()` answer at once
// (they were read at load); the rest are CxrModel's methods (web/src/bindings.rs) as
// promises of what those return.
class Model {
  constructor(request, answer) {
    this.request = request;
    this.handle = answer.handle;
    this.answer = answer;
  }

  backend() {
    return this.answer.backend;
  }

  summary() {
    return this.answer.summary;
  }

  learn_info() {
    if (this.answer.learnInfoError) throw new Error(this.answer.learnInfoError);
    return this.answer.learnInfo;
  }

  free() {
    this.request("free", [this.handle]).catch(() => {});
  }
}
for (const method of METHODS) {
  Model.prototype[method] = function (...args) {
    return this.request("call", [this.handle, method, args]);
  };
}

// An engine over `request(op, args)`; `where` says where it runs ("worker" or "page").
function engine(request, where) {
  return {
    where,
    load: async (bytes, backend) => new Model(request, await request("load", [bytes, backend])),
    // The summary of a model file, or an error saying why the page cannot use it.
    check: (bytes) => request("check", [bytes]),
    // What WebGPU reported wrong in the engine so far, or null (gpu-guard.js).
    trouble: () => request("trouble", []),
  };
}

// The engine in a module worker, once it has started the wasm module `name` (an absolute
// URL without `.js`) from `compiled` (a promise of its WebAssembly.Module, or of null: the
// worker then fetches it); rejects when the worker cannot start or load it. The worker
// loads its scripts while the module compiles.
function inWorker(name, compiled) {
  const worker = new Worker(new URL("engine-worker.js", import.meta.url), { type: "module", name: "cxr-msn engine" });
  const pending = new Map();
  let next = 1;
  let broken = null;
  const failAll = (why) => {
    broken = why;
    for (const { reject } of pending.values()) reject(new Error(why));
    pending.clear();
  };
  worker.onmessage = ({ data: { id, ok, error } }) => {
    const p = pending.get(id);
    if (!p) return;
    pending.delete(id);
    if (error === undefined) p.resolve(ok);
    else p.reject(new Error(error));
  };
  // Before the engine has started: a worker script that cannot load (every request still
  // waiting fails, and the page runs the engine itself). After: an exception nothing in the
  // worker caught (a Rust panic in a WebGPU callback, say, which gpu-guard.js also reports),
  // which does not stop the worker and fails no request: the browser logs it, as it would
  // on the page.
  let started = false;
  worker.onerror = (e) => {
    if (started) return;
    e.preventDefault();
    failAll(`the model engine's worker could not start: ${e.message || "its script did not load"}`);
  };
  worker.onmessageerror = () => failAll("the model engine's worker sent a message the page cannot read");
  const request = (op, args) => new Promise((resolve, reject) => {
    if (broken) return reject(new Error(broken));
    const id = next++;
    pending.set(id, { resolve, reject });
    worker.postMessage({ id, op, args });
  });
  return compiled.then((module) => request("start", [name, module])).then(() => {
    started = true;
    return engine(request, "worker");
  }, (e) => {
    worker.terminate();
    throw e;
  });
}

// The engine for the page: in a worker when one starts, else on the page. `name`: the wasm
// module the page's loader chose, `compiled`: the loader's promise of it compiled (both
// null under trunk serve, whose `bindings` are started).
export async function startEngine({ name, compiled, bindings }) {
  const wanted = new URLSearchParams(location.search).get("worker") !== "0";
  const module = Promise.resolve(compiled).catch(() => null);
  if (name && wanted && typeof Worker === "function") {
    try {
      return await inWorker(new URL(name, location.href).href, module);
    } catch (e) {
      console.warn(`cxr-msn: the model engine runs on the page: no worker (${message(e)})`);
    }
  }
  const host = createHost(bindings || (await loadBindings(name, await module)));
  return engine((op, args) => host(op, args), "page");
}
