// Where the WebGPU time goes, ours against ONNX Runtime Web, kernel by kernel: for
// BENCHMARKS.md's "why" where the page's WebGPU time is behind ORT Web's. Both pages get the
// same small init script (below), which times every compute dispatch on the GPU's own clock
// (WebGPU timestamp queries, `--enable-webgpu-developer-features` for full resolution): it
// puts each dispatch into a compute pass of its own with timestamps at its start and end,
// replaying the pass's pipeline and bind groups, and sums the time per kernel (its entry
// point, shader label or the first function of its WGSL). Splitting the passes adds the
// launches' overhead to the wall time, not to the kernels' own times, so the sums are the
// kernels' and the wall time of a profiled run is beside them for scale.
//
//   DIST=../../dist ORT_MODEL=model.onnx ORT_DIR=node_modules/onnxruntime-web/dist node gpu-profile.mjs
//   (scripts/bench-browser makes model.onnx and installs onnxruntime-web)
//
// ROUNDS (default 3) profiled runs per side after one warm-up run each; TOP (default 25)
// kernels listed per side.

import { launchChromium, serve } from "./serve.mjs";

const ROUNDS = Number(process.env.ROUNDS || 3);
const TOP = Number(process.env.TOP || 25);
const { origin, close, ortModel } = await serve();
if (!ortModel) throw new Error("set ORT_MODEL (an .onnx file) and ORT_DIR (onnxruntime-web's dist/): scripts/bench-browser makes both");

// Runs in each page before its own scripts. `window.__gpuProfile`: `enabled` switches the
// timing on for passes begun after it; `kernels` maps a kernel's name to its total
// nanoseconds and dispatch count; `pending` counts submissions whose timestamps are not read
// yet; `problem` says why nothing is timed (no timestamp queries on the adapter).
function profiler() {
  const prof = { enabled: false, kernels: {}, dispatches: 0, pending: 0, problem: null };
  window.__gpuProfile = prof;
  const pipelineName = new WeakMap();
  const moduleInfo = new WeakMap();
  const encoderDevice = new WeakMap();
  const encoderQueries = new WeakMap();
  const bufferReads = new WeakMap();
  const PER_SET = 2048;

  const wrap = (proto, name, make) => {
    const original = proto[name];
    proto[name] = make(original);
  };
  wrap(GPUAdapter.prototype, "requestDevice", (original) => async function (desc) {
    if (!this.features.has("timestamp-query")) {
      prof.problem = "the adapter offers no timestamp-query";
      return original.call(this, desc);
    }
    const features = new Set(desc?.requiredFeatures || []);
    features.add("timestamp-query");
    return original.call(this, { ...(desc || {}), requiredFeatures: [...features] });
  });
  wrap(GPUDevice.prototype, "createShaderModule", (original) => function (desc) {
    const module = original.call(this, desc);
    moduleInfo.set(module, { label: desc.label, code: desc.code });
    return module;
  });
  const nameOf = (desc) => {
    const info = moduleInfo.get(desc.compute.module) || {};
    const entry = desc.compute.entryPoint;
    if (entry && entry !== "main") return entry;
    if (desc.label) return desc.label;
    if (info.label) return info.label;
    const fn = /@compute[^]*?fn\s+(\w+)/.exec(info.code || "");
    return fn ? fn[1] : "?";
  };
  wrap(GPUDevice.prototype, "createComputePipeline", (original) => function (desc) {
    const pipeline = original.call(this, desc);
    pipelineName.set(pipeline, nameOf(desc));
    return pipeline;
  });
  wrap(GPUDevice.prototype, "createComputePipelineAsync", (original) => async function (desc) {
    const pipeline = await original.call(this, desc);
    pipelineName.set(pipeline, nameOf(desc));
    return pipeline;
  });
  wrap(GPUDevice.prototype, "createCommandEncoder", (original) => function (desc) {
    const encoder = original.call(this, desc);
    encoderDevice.set(encoder, this);
    return encoder;
  });

  // A timestamp pair for the next dispatch of `encoder`: [query set, first index].
  const slot = (encoder, device) => {
    let q = encoderQueries.get(encoder);
    if (!q) encoderQueries.set(encoder, (q = { sets: [], records: [] }));
    let last = q.sets[q.sets.length - 1];
    if (!last || last.used === PER_SET) {
      last = { set: device.createQuerySet({ type: "timestamp", count: PER_SET }), used: 0 };
      q.sets.push(last);
    }
    last.used += 2;
    return [q, last, last.used - 2];
  };

  wrap(GPUCommandEncoder.prototype, "beginComputePass", (original) => function (desc) {
    const device = encoderDevice.get(this);
    if (!prof.enabled || !device?.features.has("timestamp-query") || desc?.timestampWrites) {
      return original.call(this, desc);
    }
    const encoder = this;
    const state = new Map();
    let pipeline = null;
    const keep = (key, method, args) => state.set(key, [method, args.map((a) => (ArrayBuffer.isView(a) ? a.slice() : a))]);
    const dispatch = (method, args) => {
      const [q, set, index] = slot(encoder, device);
      const pass = original.call(encoder, {
        label: desc?.label,
        timestampWrites: { querySet: set.set, beginningOfPassWriteIndex: index, endOfPassWriteIndex: index + 1 },
      });
      for (const [m, a] of state.values()) pass[m](...a);
      pass[method](...args);
      pass.end();
      q.records.push({ set, index, name: pipelineName.get(pipeline) || "?" });
    };
    return {
      label: desc?.label,
      setPipeline(p) { pipeline = p; keep("pipeline", "setPipeline", [p]); },
      setBindGroup(i, ...rest) { keep(`group${i}`, "setBindGroup", [i, ...rest]); },
      setImmediates(...args) { keep(`immediates${args[0]}`, "setImmediates", args); },
      dispatchWorkgroups(...args) { dispatch("dispatchWorkgroups", args); },
      dispatchWorkgroupsIndirect(...args) { dispatch("dispatchWorkgroupsIndirect", args); },
      pushDebugGroup() {},
      popDebugGroup() {},
      insertDebugMarker() {},
      end() {},
    };
  });
  wrap(GPUCommandEncoder.prototype, "finish", (original) => function (desc) {
    const q = encoderQueries.get(this);
    const device = encoderDevice.get(this);
    const reads = [];
    if (q) {
      for (const set of q.sets) {
        const bytes = set.used * 8;
        const resolved = device.createBuffer({ size: bytes, usage: GPUBufferUsage.QUERY_RESOLVE | GPUBufferUsage.COPY_SRC });
        const read = device.createBuffer({ size: bytes, usage: GPUBufferUsage.MAP_READ | GPUBufferUsage.COPY_DST });
        this.resolveQuerySet(set.set, 0, set.used, resolved, 0);
        this.copyBufferToBuffer(resolved, 0, read, 0, bytes);
        reads.push({ set, read, resolved });
      }
    }
    const buffer = original.call(this, desc);
    if (q) bufferReads.set(buffer, { reads, records: q.records });
    return buffer;
  });
  wrap(GPUQueue.prototype, "submit", (original) => function (buffers) {
    const out = original.call(this, buffers);
    for (const buffer of buffers) {
      const r = bufferReads.get(buffer);
      if (!r) continue;
      prof.pending += 1;
      Promise.all(r.reads.map((x) => x.read.mapAsync(GPUMapMode.READ).then(() => [x.set, new BigInt64Array(x.read.getMappedRange().slice(0))])))
        .then((maps) => {
          const times = new Map(maps);
          for (const rec of r.records) {
            const t = times.get(rec.set);
            const ns = Number(t[rec.index + 1] - t[rec.index]);
            const k = (prof.kernels[rec.name] ||= { ns: 0, count: 0 });
            k.ns += ns;
            k.count += 1;
            prof.dispatches += 1;
          }
          for (const x of r.reads) {
            x.read.unmap();
            x.read.destroy();
            x.resolved.destroy();
            x.set.set.destroy();
          }
        })
        .catch((e) => { prof.problem = String(e); })
        .finally(() => { prof.pending -= 1; });
    }
    return out;
  });
}

const browser = await launchChromium("--enable-unsafe-webgpu", "--enable-webgpu-developer-features");

// `run` once untimed, then ROUNDS times with the profiler on; per-kernel means per run.
async function profile(page, run) {
  await page.evaluate(run);
  const walls = [];
  await page.evaluate(() => Object.assign(window.__gpuProfile, { enabled: true, kernels: {}, dispatches: 0 }));
  for (let i = 0; i < ROUNDS; i++) walls.push(await page.evaluate(run));
  await page.waitForFunction(() => window.__gpuProfile.pending === 0, null, { timeout: 120000 });
  const p = await page.evaluate(() => window.__gpuProfile);
  if (p.problem) throw new Error(`no kernel times: ${p.problem}`);
  const kernels = Object.entries(p.kernels).map(([name, k]) => ({ name, ms: k.ns / 1e6 / ROUNDS, count: k.count / ROUNDS }));
  kernels.sort((a, b) => b.ms - a.ms);
  return { walls, kernels, dispatches: p.dispatches / ROUNDS };
}

// Ours: the encoder alone on a decoded image (`embed`, as bench.mjs times it), on WebGPU.
const ours = await browser.newPage();
await ours.addInitScript(profiler);
// worker=0: the engine on the page, where the profiler's init script wraps WebGPU.
await ours.goto(`${origin}/index.html?notice=0&backend=webgpu&warmup=0&worker=0`);
await ours.waitForFunction(() => /^Ready: .* on WebGPU/.test(document.getElementById("model-status").textContent), null, { timeout: 300000 });
await ours.evaluate(async () => {
  const bytes = new Uint8Array(await (await fetch("samples/NORMAL2-IM-1438-0001.jpeg")).arrayBuffer());
  await window.cxrMsn.model().read_image(bytes);
  window.bench = { bytes };
});
const oursProfile = await profile(ours, async () => {
  const t = performance.now();
  await window.cxrMsn.model().embed(window.bench.bytes);
  return performance.now() - t;
});

// ONNX Runtime Web's WebGPU execution provider on the same encoder.
const theirs = await browser.newPage();
await theirs.addInitScript(profiler);
await theirs.goto(`${origin}/ort.html`);
await theirs.evaluate(async () => {
  const o = window.ort;
  o.env.wasm.wasmPaths = "/ort/";
  o.env.wasm.numThreads = 1;
  const session = await o.InferenceSession.create("/ort-model.onnx", { executionProviders: ["webgpu"] });
  const input = new o.Tensor("float32", Float32Array.from({ length: 3 * 224 * 224 }, () => Math.random() * 2 - 1), [1, 3, 224, 224]);
  window.bench = { session, input };
});
const theirProfile = await profile(theirs, async () => {
  const t = performance.now();
  await window.bench.session.run({ images: window.bench.input });
  return performance.now() - t;
});
await browser.close();
close();

const sum = (ks) => ks.reduce((a, k) => a + k.ms, 0);
for (const [who, p] of [["ours (cxr-msn, Burn on WebGPU)", oursProfile], ["ONNX Runtime Web (webgpu)", theirProfile]]) {
  const total = sum(p.kernels);
  console.log(`\n${who}: ${p.dispatches.toFixed(0)} dispatches per run, kernels ${total.toFixed(0)} ms per run; profiled wall times ${p.walls.map((w) => w.toFixed(0)).join(", ")} ms`);
  for (const k of p.kernels.slice(0, TOP)) {
    console.log(`  ${k.ms.toFixed(1).padStart(8)} ms ${(100 * k.ms / total).toFixed(1).padStart(5)} %  x${String(Math.round(k.count)).padEnd(4)} ${k.name.slice(0, 110)}`);
  }
  const rest = p.kernels.slice(TOP);
  if (rest.length) console.log(`  ${sum(rest).toFixed(1).padStart(8)} ms in ${rest.length} more kernels`);
}
