#!/usr/bin/env node
// The reference face-api chain on the photographs curate_throughput curates: the six demo
// JPEGs of the face-api package (demo/sample1..6.jpg, 1920 px group photos), for the ratio
// against idforge's curate stage (curate/benches/curate_throughput.rs).
//
// Per image: jpeg-js decode (timed on its own), then face-api's
//   detectAllFaces(t, new SsdMobilenetv1Options({minConfidence: 0.5}))
//     .withFaceLandmarks().withFaceDescriptors()
// on an int32 [h, w, 3] tensor, as tools/face-api-reference/bench.mjs runs it on the 640 px
// fixtures. One warm-up pass over the six photos, then N timed passes. Prints one JSON line.
// The face-api install is tools/face-api-reference's (its node_modules; see its README).
//
//   node tools/curate-bench/faceapi_demo.mjs [--backend wasm|cpu] [--rounds N] [--assets DIR]
//
// --backend  tfjs backend: wasm (default; SIMD, single-threaded in Node) or cpu (pure JS)
// --rounds   timed passes over the six photos after the warm-up (default 3)
// --assets   face-api asset dir (default: `tools/fetch-assets --print-dir`)

import { createRequire } from 'node:module';
import { execFileSync } from 'node:child_process';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { fileURLToPath } from 'node:url';

const TOOL_DIR = path.dirname(fileURLToPath(import.meta.url));
const REPO_ROOT = path.resolve(TOOL_DIR, '..', '..');
const REF_DIR = path.join(REPO_ROOT, 'tools/face-api-reference');
const require = createRequire(path.join(REF_DIR, 'package.json'));
const faceapi = require('@vladmandic/face-api/dist/face-api.node-wasm.js');
const tf = faceapi.tf;
const jpeg = require('jpeg-js');

const PHOTOS = [1, 2, 3, 4, 5, 6].map((n) => `demo/sample${n}.jpg`);
const NETS = ['ssdMobilenetv1', 'faceLandmark68Net', 'faceRecognitionNet'];

function parseArgs(argv) {
  const args = { backend: 'wasm', rounds: 3, assets: null };
  for (let i = 0; i < argv.length; i++) {
    const a = argv[i];
    if (a === '--backend') args.backend = argv[++i];
    else if (a === '--rounds') args.rounds = Number(argv[++i]);
    else if (a === '--assets') args.assets = argv[++i];
    else throw new Error(`unknown argument: ${a}`);
  }
  if (!['wasm', 'cpu'].includes(args.backend)) throw new Error(`--backend must be wasm or cpu, not ${args.backend}`);
  if (!(args.rounds >= 1)) throw new Error('--rounds must be >= 1');
  args.assets ??= execFileSync(path.join(REPO_ROOT, 'tools/fetch-assets'), ['--print-dir'], { encoding: 'utf8' }).trim();
  return args;
}

const pkgVersion = (name) => JSON.parse(fs.readFileSync(path.join(REF_DIR, 'node_modules', name, 'package.json'), 'utf8')).version;
const r2 = (x) => Number(x.toFixed(2));

async function main() {
  const args = parseArgs(process.argv.slice(2));
  if (!(await tf.setBackend(args.backend))) throw new Error(`tfjs ${args.backend} backend failed to initialise`);
  await tf.ready();
  for (const net of NETS) await faceapi.nets[net].loadFromDisk(path.join(args.assets, 'model'));
  const files = PHOTOS.map((p) => fs.readFileSync(path.join(args.assets, p)));
  const chain = (t) => faceapi
    .detectAllFaces(t, new faceapi.SsdMobilenetv1Options({ minConfidence: 0.5 }))
    .withFaceLandmarks()
    .withFaceDescriptors();

  const loadBefore = os.loadavg()[0];
  let faces = 0;
  let decodeMs = 0;
  let chainMs = 0;
  let bestPass = Infinity;
  for (let pass = 0; pass <= args.rounds; pass++) {
    let passMs = 0;
    let passFaces = 0;
    for (const buf of files) {
      let s = performance.now();
      const dec = jpeg.decode(buf, { useTArray: true, formatAsRGBA: false });
      const t = tf.tensor3d(Int32Array.from(dec.data), [dec.height, dec.width, 3], 'int32');
      const d = performance.now() - s;
      s = performance.now();
      passFaces += (await chain(t)).length;
      const c = performance.now() - s;
      t.dispose();
      if (pass > 0) { decodeMs += d; chainMs += c; passMs += c; }
    }
    if (pass > 0) bestPass = Math.min(bestPass, passMs);
    faces = passFaces;
  }
  const n = args.rounds * files.length;
  console.log(JSON.stringify({
    impl: 'face-api',
    backend: args.backend,
    what: 'detectAllFaces(ssd, minConfidence 0.5).withFaceLandmarks().withFaceDescriptors() on a prebuilt int32 tensor; decode (jpeg-js + tensor) timed apart',
    images: files.length,
    faces,
    warmup_passes: 1,
    rounds: args.rounds,
    chain_ms_per_image: r2(chainMs / n),
    best_pass_chain_ms_per_image: r2(bestPass / files.length),
    chain_images_per_s: Number((n / (chainMs / 1000)).toFixed(3)),
    decode_ms_per_image: r2(decodeMs / n),
    cpu_model: os.cpus()[0]?.model,
    loadavg_1min_before: r2(loadBefore),
    loadavg_1min_after: r2(os.loadavg()[0]),
    node: process.version,
    versions: {
      '@vladmandic/face-api': faceapi.version,
      '@tensorflow/tfjs-core': pkgVersion('@tensorflow/tfjs-core'),
      [`@tensorflow/tfjs-backend-${args.backend}`]: pkgVersion(`@tensorflow/tfjs-backend-${args.backend}`),
      'jpeg-js': pkgVersion('jpeg-js'),
    },
  }));
}

main().catch((err) => { console.error(err); process.exit(1); });
