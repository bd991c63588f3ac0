// Runs an ONNX model in ONNX Runtime (onnxruntime-web's WebAssembly backend, in Node) on the
// float inputs of a JSON file and prints the outputs as JSON: an independent runtime for
// the graphs `cxr-msn export-onnx` writes (tests/tests/onnx.rs).
//
//   node onnx-run.mjs MODEL.onnx INPUTS.json
//   INPUTS.json: {"image": {"dims": [2, 1, 224, 224], "data": [...]}, ...}
//   prints:      {"outputs": {"embedding": {"dims": [...], "data": [...]}, ...},
//                 "inputNames": [...], "outputNames": [...]}
import { readFile } from 'node:fs/promises';
import * as ort from 'onnxruntime-web';

const [modelPath, inputsPath] = process.argv.slice(2);
if (!modelPath || !inputsPath) {
  console.error('usage: node onnx-run.mjs MODEL.onnx INPUTS.json');
  process.exit(2);
}
ort.env.wasm.numThreads = 1;
const session = await ort.InferenceSession.create(await readFile(modelPath));
const inputs = JSON.parse(await readFile(inputsPath, 'utf8'));
const feeds = {};
for (const [name, { dims, data }] of Object.entries(inputs)) {
  feeds[name] = new ort.Tensor('float32', Float32Array.from(data), dims);
}
const results = await session.run(feeds);
const outputs = {};
for (const name of session.outputNames) {
  outputs[name] = { dims: results[name].dims, data: Array.from(results[name].data) };
}
process.stdout.write(
  JSON.stringify({ outputs, inputNames: session.inputNames, outputNames: session.outputNames }),
);
