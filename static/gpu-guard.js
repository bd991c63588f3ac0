// Watches the page's WebGPU device for the failures a browser reports only on the side.
//
// In a browser, WebGPU checks a shader on the GPU process and reports a rejection later,
// through the device's error event; the call that used the shader has already "succeeded",
// and what it wrote is whatever was in the buffer (zeros, usually). BENCHMARKS.md ("The
// browser demo") describes one such case: a matrix-product kernel a browser rejected made
// learn mode's projections all zero. So the page does not trust a WebGPU result until this
// guard has heard nothing wrong: every shader module created by the engine is checked with
// the browser's own compiler (`getCompilationInfo`), and every device's uncaptured errors
// and loss are recorded. Once anything was, WebGPU stays distrusted for the page's
// lifetime (its compiled kernels may be among the broken ones) and the page moves to the
// CPU, saying why.
//
// Install with `watchWebGpu()` in the realm that creates the model's WebGPU device, before
// it does (engine-host.js does, in the engine's worker or on the page); ask
// `webGpuTrouble()` there after each WebGPU computation (app.js, through engine.js).

const troubles = [];
const pending = new Set();
const devices = [];

function note(text) {
  troubles.push(text);
}

// Wraps the WebGPU entry points (a no-op where the browser has no WebGPU, or a second time).
export function watchWebGpu() {
  if (typeof GPUAdapter === "undefined" || typeof GPUDevice === "undefined") return;
  if (GPUDevice.prototype.createShaderModule.__cxrMsnWatched) return;

  const createShaderModule = GPUDevice.prototype.createShaderModule;
  const watchedCreate = function (descriptor) {
    const module = createShaderModule.call(this, descriptor);
    const label = (descriptor && descriptor.label) || "unlabelled";
    const check = module.getCompilationInfo().then(
      (info) => {
        const error = info.messages.find((m) => m.type === "error");
        if (error) note(`the browser rejected the GPU shader ${label} (line ${error.lineNum}: ${error.message})`);
      },
      () => {} // no compilation info (an older browser): the error event still reports it
    );
    pending.add(check);
    check.finally(() => pending.delete(check));
    return module;
  };
  watchedCreate.__cxrMsnWatched = true;
  GPUDevice.prototype.createShaderModule = watchedCreate;

  const requestDevice = GPUAdapter.prototype.requestDevice;
  GPUAdapter.prototype.requestDevice = async function (...args) {
    const device = await requestDevice.apply(this, args);
    devices.push(device);
    device.addEventListener("uncapturederror", (event) => {
      note(`WebGPU reported an error: ${(event.error && event.error.message) || event.error}`);
    });
    device.lost.then((info) => {
      // Destroying the device on purpose (a page that frees it) is not a fault.
      if (info.reason !== "destroyed") note(`the GPU device was lost: ${info.message || info.reason}`);
    });
    return device;
  };
}

// What went wrong with WebGPU on this page so far, as one sentence, or null. Waits until
// the GPU has finished the work submitted before the call (errors about it come first) and
// for the browser's verdict on every shader created before it.
export async function webGpuTrouble() {
  const settled = (p) => Promise.race([p.catch(() => {}), new Promise((r) => setTimeout(r, 2000))]);
  await Promise.all(devices.map((d) => settled(d.queue.onSubmittedWorkDone())));
  while (pending.size) await Promise.all([...pending]);
  return troubles.length ? troubles[0] + (troubles.length > 1 ? ` (and ${troubles.length - 1} more WebGPU errors)` : "") : null;
}
