// `cxr-msn export-onnx`'s graph of a model against PyTorch's export of the same model
// (`torch.onnx.export` of timm's VisionTransformer, trainer/benches/reference.py), both in
// ONNX Runtime Web's WebAssembly backend in Node on one thread: whether they compute the same
// embedding, and how their times compare in alternating rounds (scripts/bench-browser).
//
//   OURS=ours.onnx THEIRS=model.onnx MEAN=0.5,0.5,0.5 STD=0.25,0.25,0.25 node onnx-bench.mjs
// MEAN and STD: the model's normalisation, which our graph applies inside (it takes the grey
// plane) and PyTorch's takes applied (three normalised channels).
import { readFile } from 'node:fs/promises';
import * as ort from 'onnxruntime-web';

const { OURS, THEIRS, MEAN, STD } = process.env;
const ROUNDS = Number(process.env.ROUNDS || 7);
const RUNS = Number(process.env.RUNS || 20);
if (!OURS || !THEIRS || !MEAN || !STD) {
  console.error('usage: OURS=ours.onnx THEIRS=theirs.onnx MEAN=m,m,m STD=s,s,s node onnx-bench.mjs');
  process.exit(2);
}
const mean = MEAN.split(',').map(Number);
const std = STD.split(',').map(Number);
ort.env.wasm.numThreads = 1;
const ours = await ort.InferenceSession.create(await readFile(OURS));
const theirs = await ort.InferenceSession.create(await readFile(THEIRS));

// A fixed grey image, and the same image as the normalised channels PyTorch's graph takes.
const plane = 224 * 224;
const grey = new Float32Array(plane).map((_, i) => ((i * 7919) % 1000) / 1000);
const channels = new Float32Array(mean.length * plane);
mean.forEach((m, c) => {
  for (let i = 0; i < plane; i++) channels[c * plane + i] = (grey[i] - m) / std[c];
});
const oursFeed = { [ours.inputNames[0]]: new ort.Tensor('float32', grey, [1, 1, 224, 224]) };
const theirsFeed = {
  [theirs.inputNames[0]]: new ort.Tensor('float32', channels, [1, mean.length, 224, 224]),
};
const ourEmbedding = (await ours.run(oursFeed)).embedding.data;
const theirEmbedding = (await theirs.run(theirsFeed))[theirs.outputNames[0]].data;
let worst = 0;
let scale = 0;
for (let i = 0; i < theirEmbedding.length; i++) {
  worst = Math.max(worst, Math.abs(ourEmbedding[i] - theirEmbedding[i]));
  scale = Math.max(scale, Math.abs(theirEmbedding[i]));
}

const time = async (session, feed) => {
  const start = performance.now();
  for (let i = 0; i < RUNS; i++) await session.run(feed);
  return (performance.now() - start) / RUNS;
};
await time(ours, oursFeed);
await time(theirs, theirsFeed);
const oursMs = [];
const theirsMs = [];
for (let r = 0; r < ROUNDS; r++) {
  oursMs.push(await time(ours, oursFeed));
  theirsMs.push(await time(theirs, theirsFeed));
}
const median = (v) => [...v].sort((a, b) => a - b)[v.length >> 1];
const ratios = oursMs.map((o, i) => o / theirsMs[i]).sort((a, b) => a - b);
console.log(
  JSON.stringify({
    runtime: `onnxruntime-web ${ort.env.versions.web}, WebAssembly, 1 thread, Node ${process.version}`,
    largest_difference: worst,
    embedding_scale: scale,
    ours_ms: median(oursMs),
    pytorch_export_ms: median(theirsMs),
    ratio: median(ratios),
    ratio_range: [ratios[0], ratios[ratios.length - 1]],
    rounds: ROUNDS,
    runs_per_round: RUNS,
  }),
);
