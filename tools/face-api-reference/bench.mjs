#!/usr/bin/env node
// Per-image time of the reference face-api chain, for the side-by-side with idforge's burn port
// (models/benches/face_api_chain.rs; tools/face-bench/run runs both on the same cores).
//
// The chain is face-api's
//   detectAllFaces(t, new SsdMobilenetv1Options({minConfidence: 0.5}))
//     .withFaceLandmarks().withFaceDescriptors()
// on a prebuilt int32 [h, w, 3] tensor of each PNG (as make_fixtures.mjs builds it), over
// models/tests/fixtures/face-api/sample{1,4,6}_640.png (3 + 4 + 4 faces): one warm-up pass, then
// N timed passes. Prints one JSON line on stdout.
//
// Usage (from the repository root):
//
//   node tools/face-api-reference/bench.mjs [--backend wasm|cpu] [--rounds N] [--stages]
//                                           [--threads N] [--assets DIR] [--images DIR]
//
// --backend  tfjs backend: wasm (default; tfjs-backend-wasm, SIMD build) or cpu (pure JS)
// --rounds   timed passes over the 3 images after the warm-up pass (default 5 wasm, 1 cpu)
// --stages   also time the chain cut after detection and after landmarks; the differences
//            give each stage's share (same passes, warm-up and rounds)
// --threads  ask tfjs-backend-wasm for N threads (setThreadsCount); only has an effect when
//            WASM_HAS_MULTITHREAD_SUPPORT is true, which tfjs 4.22 hard-codes to false in Node
// --assets   face-api asset dir (default: `tools/fetch-assets --print-dir`)
// --images   folder with the sample PNGs (default: models/tests/fixtures/face-api)
//
// Threads: tfjs-backend-wasm 4.22 answers WASM_HAS_MULTITHREAD_SUPPORT with `false` whenever
// IS_NODE (flags_wasm.ts, tfjs issue 3830), so in Node it loads tfjs-backend-wasm-simd.wasm, the
// single-threaded SIMD build: the JS reference uses one core whatever the machine has. Forcing
// the flag to true (tf.env().set before setBackend) does not help either: the threaded build then
// fails to start, Node's Worker refusing the emscripten pthread script's blob: URL
// (ERR_WORKER_PATH), and the backend does not initialise. The cpu backend is plain JavaScript,
// also one thread. The JSON says what the flags and getThreadsCount() report.

import { createRequire } from 'node:module';
import { execFileSync } from 'node:child_process';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { fileURLToPath } from 'node:url';

const require = createRequire(import.meta.url);
const TOOL_DIR = path.dirname(fileURLToPath(import.meta.url));
const REPO_ROOT = path.resolve(TOOL_DIR, '..', '..');

// The same build as make_fixtures.mjs: external pure-JS tfjs + tfjs-backend-wasm.
const FACEAPI_BUILD = 'dist/face-api.node-wasm.js';
const faceapi = require(`@vladmandic/face-api/${FACEAPI_BUILD}`);
const tf = faceapi.tf;
const { PNG } = require('pngjs');

const PNGS = ['sample1_640.png', 'sample4_640.png', 'sample6_640.png'];
const SSD_OPTIONS = { minConfidence: 0.5 };
const NETS = ['ssdMobilenetv1', 'faceLandmark68Net', 'faceRecognitionNet'];

function parseArgs(argv) {
  const args = { backend: 'wasm', rounds: null, stages: false, threads: null, assets: null, images: path.join(REPO_ROOT, 'models/tests/fixtures/face-api') };
  for (let i = 0; i < argv.length; i++) {
    const a = argv[i];
    if (a === '--backend') args.backend = argv[++i];
    else if (a === '--rounds') args.rounds = Number(argv[++i]);
    else if (a === '--stages') args.stages = true;
    else if (a === '--threads') args.threads = Number(argv[++i]);
    else if (a === '--assets') args.assets = argv[++i];
    else if (a === '--images') args.images = argv[++i];
    else if (a === '-h' || a === '--help') {
      console.log(fs.readFileSync(fileURLToPath(import.meta.url), 'utf8').split('\n').slice(1, 30).map((l) => l.replace(/^\/\/ ?/, '')).join('\n'));
      process.exit(0);
    } else throw new Error(`unknown argument: ${a}`);
  }
  if (!['wasm', 'cpu'].includes(args.backend)) throw new Error(`--backend must be wasm or cpu, not ${args.backend}`);
  if (args.rounds === null) args.rounds = args.backend === 'cpu' ? 1 : 5;
  if (!(args.rounds >= 1)) throw new Error('--rounds must be >= 1');
  if (!args.assets) {
    args.assets = execFileSync(path.join(REPO_ROOT, 'tools/fetch-assets'), ['--print-dir'], { encoding: 'utf8' }).trim();
  }
  return args;
}

function pkgVersion(name) {
  return JSON.parse(fs.readFileSync(path.join(TOOL_DIR, 'node_modules', name, 'package.json'), 'utf8')).version;
}

function decodePngRgb(file) {
  const png = PNG.sync.read(fs.readFileSync(file)); // 8-bit RGBA
  const rgb = new Int32Array(png.width * png.height * 3);
  for (let p = 0, q = 0; p < png.data.length; p += 4, q += 3) {
    rgb[q] = png.data[p]; rgb[q + 1] = png.data[p + 1]; rgb[q + 2] = png.data[p + 2];
  }
  return { width: png.width, height: png.height, rgb };
}

// The chain cut after each stage; results are consumed (their tensors are already disposed by
// face-api, which hands back plain arrays).
const CHAINS = {
  detect: (t) => faceapi.detectAllFaces(t, new faceapi.SsdMobilenetv1Options(SSD_OPTIONS)),
  landmarks: (t) => faceapi.detectAllFaces(t, new faceapi.SsdMobilenetv1Options(SSD_OPTIONS)).withFaceLandmarks(),
  full: (t) => faceapi.detectAllFaces(t, new faceapi.SsdMobilenetv1Options(SSD_OPTIONS)).withFaceLandmarks().withFaceDescriptors(),
};

async function timeChain(run, tensors, rounds) {
  const faces = [];
  for (const t of tensors) faces.push((await run(t)).length); // warm-up pass
  const perImage = tensors.map(() => []);
  const t0 = performance.now();
  for (let r = 0; r < rounds; r++) {
    for (let i = 0; i < tensors.length; i++) {
      const s = performance.now();
      await run(tensors[i]);
      perImage[i].push(performance.now() - s);
    }
  }
  const wall = performance.now() - t0;
  const n = rounds * tensors.length;
  const mean = (v) => v.reduce((a, b) => a + b, 0) / v.length;
  return {
    faces,
    ms_per_image: Number((wall / n).toFixed(2)),
    images_per_s: Number((n / (wall / 1000)).toFixed(3)),
    per_image_ms: perImage.map((v) => Number(mean(v).toFixed(2))),
    best_pass_ms_per_image: Number((Math.min(...Array.from({ length: rounds }, (_, r) => perImage.reduce((a, v) => a + v[r], 0))) / tensors.length).toFixed(2)),
  };
}

async function main() {
  const args = parseArgs(process.argv.slice(2));
  const modelDir = path.join(args.assets, 'model');
  if (!fs.existsSync(path.join(args.assets, '.complete'))) throw new Error(`${args.assets}: not a complete face-api asset dir (run tools/fetch-assets)`);

  if (!(await tf.setBackend(args.backend))) throw new Error(`tfjs ${args.backend} backend failed to initialise`);
  await tf.ready();
  if (tf.getBackend() !== args.backend) throw new Error(`expected ${args.backend} backend, got ${tf.getBackend()}`);
  let wasmInfo = {};
  if (args.backend === 'wasm') {
    const wasm = require('@tensorflow/tfjs-backend-wasm');
    if (args.threads !== null) wasm.setThreadsCount(args.threads); // no-op without multithread support
    wasmInfo = {
      simd: await tf.env().getAsync('WASM_HAS_SIMD_SUPPORT'),
      multithread: await tf.env().getAsync('WASM_HAS_MULTITHREAD_SUPPORT'),
      threads: wasm.getThreadsCount(),
    };
  }
  for (const key of NETS) await faceapi.nets[key].loadFromDisk(modelDir);

  const images = PNGS.map((f) => decodePngRgb(path.join(args.images, f)));
  const tensors = images.map((img) => tf.tensor3d(img.rgb, [img.height, img.width, 3], 'int32'));
  const loadBefore = os.loadavg()[0];

  const full = await timeChain(CHAINS.full, tensors, args.rounds);
  let stages;
  if (args.stages) {
    const det = await timeChain(CHAINS.detect, tensors, args.rounds);
    const lm = await timeChain(CHAINS.landmarks, tensors, args.rounds);
    const r2 = (x) => Number(x.toFixed(2));
    // Best passes: the differences of means go wrong (even negative) when other load comes
    // and goes on a shared machine.
    stages = {
      what: 'ms per image, of the best pass of each chain: landmarks = (detect+landmarks chain) - (detect chain), descriptors = full - (detect+landmarks); same run',
      detect: det.best_pass_ms_per_image,
      landmarks: r2(lm.best_pass_ms_per_image - det.best_pass_ms_per_image),
      descriptors: r2(full.best_pass_ms_per_image - lm.best_pass_ms_per_image),
    };
  }
  tf.dispose(tensors);

  const faces = full.faces.reduce((a, b) => a + b, 0);
  const out = {
    impl: 'face-api',
    backend: args.backend,
    threads: args.backend === 'wasm' ? wasmInfo.threads : 1,
    ...wasmInfo,
    images: PNGS.length,
    faces,
    warmup_passes: 1,
    rounds: args.rounds,
    ms_per_image: full.ms_per_image,
    images_per_s: full.images_per_s,
    best_pass_ms_per_image: full.best_pass_ms_per_image,
    per_image_ms: full.per_image_ms,
    stages,
    available_parallelism: os.availableParallelism ? os.availableParallelism() : undefined,
    cpu_count: os.cpus().length,
    cpu_model: os.cpus()[0]?.model,
    loadavg_1min_before: Number(loadBefore.toFixed(2)),
    loadavg_1min_after: Number(os.loadavg()[0].toFixed(2)),
    node: process.version,
    versions: {
      '@vladmandic/face-api': faceapi.version,
      '@tensorflow/tfjs-core': pkgVersion('@tensorflow/tfjs-core'),
      [`@tensorflow/tfjs-backend-${args.backend}`]: pkgVersion(`@tensorflow/tfjs-backend-${args.backend}`),
    },
  };
  if (faces !== 11) throw new Error(`expected 11 faces over the 3 images, found ${faces} (${full.faces})`);
  console.log(JSON.stringify(out));
}

main().catch((err) => { console.error(err); process.exit(1); });
