#!/usr/bin/env node
// The reference for the `attributes` captioner's networks: face-api's
//   .withFaceExpressions().withAgeAndGender()
// after detectAllFaces(ssd, minConfidence 0.5).withFaceLandmarks(), per face, on the photographs
// caption_throughput measures (the six demo JPEGs of the face-api package, demo/sample1..6.jpg,
// 1920 px group photos), for the ratio against idforge's FaceAttributeNets::attributes_batch
// (caption/benches/caption_throughput.rs; tools/caption-bench/run runs both).
//
// Two ways to time the attribute part, both per face, on prebuilt int32 [h, w, 3] tensors
// (jpeg-js decode not timed):
//
// * `direct` (the figure the ratio uses): the landmark results of one untimed
//   detectAllFaces().withFaceLandmarks() per photo are handed to face-api's own task class for
//   `.withFaceExpressions().withAgeAndGender()` (taken from a chain's constructor: the package
//   does not export it), so exactly face-api's code runs: extract the aligned faces, the
//   expression net face by face, extract again, the age / gender net face by face. This is what
//   idforge's attributes_batch does from the same inputs (68 landmarks of each face).
// * `chain` (wasm only, as the brief of the bench asks): the whole
//   detectAllFaces().withFaceLandmarks().withFaceExpressions().withAgeAndGender() against the
//   same chain without the last two, both timed on every photo in every pass; the difference,
//   over the faces, is the attribute part. Noisier (a difference of two timings of seconds),
//   and on the cpu backend it would take minutes per pass, so `--method direct` is its default.
//
// One warm-up pass over the six photos, then N timed passes; mean and best pass. Prints one JSON
// line. The face-api install is tools/face-api-reference's (its node_modules; see its README).
//
//   node tools/caption-bench/faceapi_attributes.mjs [--backend wasm|cpu] [--rounds N]
//        [--method direct|chain|both] [--detect-backend wasm|cpu] [--assets DIR]
//
// --backend         tfjs backend of the timed part: wasm (default; SIMD, single-threaded in
//                   Node, see tools/face-api-reference/bench.mjs) or cpu (pure JS, one thread)
// --rounds          timed passes after the warm-up (default 3)
// --method          both (default with wasm), direct (default with cpu), chain
// --detect-backend  backend of the untimed detection + landmarks that feed `direct` (default
//                   wasm: on the cpu backend they take about 30 s per photo); the backend is then
//                   switched to --backend, tfjs moving the tensors, and the warm-up pass absorbs
//                   the move
// --assets          face-api asset dir (default: `tools/fetch-assets --print-dir`)

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
const NETS = ['ssdMobilenetv1', 'faceLandmark68Net', 'faceExpressionNet', 'ageGenderNet'];
const SSD = () => new faceapi.SsdMobilenetv1Options({ minConfidence: 0.5 });

function parseArgs(argv) {
  const args = { backend: 'wasm', rounds: 3, method: null, detectBackend: 'wasm', assets: null };
  for (let i = 0; i < argv.length; i++) {
    const a = argv[i];
    if (a === '--backend') args.backend = argv[++i];
    else if (a === '--rounds') args.rounds = Number(argv[++i]);
    else if (a === '--method') args.method = argv[++i];
    else if (a === '--detect-backend') args.detectBackend = argv[++i];
    else if (a === '--assets') args.assets = argv[++i];
    else if (a === '-h' || a === '--help') {
      console.log(fs.readFileSync(fileURLToPath(import.meta.url), 'utf8').split('\n').slice(1, 36).map((l) => l.replace(/^\/\/ ?/, '')).join('\n'));
      process.exit(0);
    } else throw new Error(`unknown argument: ${a}`);
  }
  for (const b of [args.backend, args.detectBackend]) {
    if (!['wasm', 'cpu'].includes(b)) throw new Error(`backends are wasm or cpu, not ${b}`);
  }
  args.method ??= args.backend === 'wasm' ? 'both' : 'direct';
  if (!['direct', 'chain', 'both'].includes(args.method)) throw new Error(`--method must be direct, chain or both, not ${args.method}`);
  if (args.method !== 'direct' && args.detectBackend !== args.backend) {
    throw new Error('--method chain times detection too: --detect-backend must be --backend');
  }
  if (!(args.rounds >= 1)) throw new Error('--rounds must be >= 1');
  args.assets ??= execFileSync(path.join(REPO_ROOT, 'tools/fetch-assets'), ['--print-dir'], { encoding: 'utf8' }).trim();
  return args;
}

const pkgVersion = (name) => JSON.parse(fs.readFileSync(path.join(REF_DIR, 'node_modules', name, 'package.json'), 'utf8')).version;
const r2 = (x) => Number(x.toFixed(2));
const r3 = (x) => Number(x.toFixed(3));

async function useBackend(name) {
  if (!(await tf.setBackend(name))) throw new Error(`tfjs ${name} backend failed to initialise`);
  await tf.ready();
}

async function main() {
  const args = parseArgs(process.argv.slice(2));
  await useBackend(args.detectBackend);
  for (const net of NETS) await faceapi.nets[net].loadFromDisk(path.join(args.assets, 'model'));
  const tensors = PHOTOS.map((p) => {
    const dec = jpeg.decode(fs.readFileSync(path.join(args.assets, p)), { useTArray: true, formatAsRGBA: false });
    return tf.tensor3d(Int32Array.from(dec.data), [dec.height, dec.width, 3], 'int32');
  });
  const landmarksOnly = (t) => faceapi.detectAllFaces(t, SSD()).withFaceLandmarks();
  const full = (t) => landmarksOnly(t).withFaceExpressions().withAgeAndGender();
  // face-api's PredictAllFaceExpressionsWithFaceAlignmentTask (not exported): its constructor
  // takes the parent results and the input, as the chain builds it.
  const ExpressionsTask = landmarksOnly(tensors[0]).withFaceExpressions().constructor;

  // The faces: detection + landmarks once per photo, untimed.
  let s = performance.now();
  const parents = [];
  for (const t of tensors) parents.push(await landmarksOnly(t));
  const detectS = (performance.now() - s) / 1000;
  const facesPerPass = parents.reduce((n, p) => n + p.length, 0);
  if (args.detectBackend !== args.backend) await useBackend(args.backend);

  const loadBefore = os.loadavg()[0];
  const out = {
    impl: 'face-api',
    what: 'withFaceExpressions().withAgeAndGender() per face, after detectAllFaces(ssd, minConfidence 0.5).withFaceLandmarks()',
    backend: args.backend,
    detect_backend: args.detectBackend,
    images: tensors.length,
    faces: facesPerPass,
    untimed_detect_landmarks_s: r2(detectS),
    warmup_passes: 1,
    rounds: args.rounds,
  };

  if (args.method !== 'chain') {
    let total = 0;
    let best = Infinity;
    let sample = null;
    for (let pass = 0; pass <= args.rounds; pass++) {
      let passMs = 0;
      for (let i = 0; i < tensors.length; i++) {
        s = performance.now();
        const res = await new ExpressionsTask(Promise.resolve(parents[i]), tensors[i]).withAgeAndGender();
        passMs += performance.now() - s;
        if (res.length !== parents[i].length) throw new Error('a face lost its attributes');
        if (i === 0) sample = res[0];
      }
      if (pass > 0) { total += passMs; best = Math.min(best, passMs); }
    }
    const msPerFace = total / args.rounds / facesPerPass;
    out.direct = {
      ms_per_face: r3(msPerFace),
      best_pass_ms_per_face: r3(best / facesPerPass),
      faces_per_s: r3(1000 / msPerFace),
      best_faces_per_s: r3(1000 * facesPerPass / best),
      first_face: sample && {
        age: r3(sample.age),
        gender: sample.gender,
        gender_probability: r3(sample.genderProbability),
        expression: Object.entries(sample.expressions).sort((a, b) => b[1] - a[1])[0][0],
      },
    };
  }

  if (args.method !== 'direct') {
    let landmarksMs = 0;
    let fullMs = 0;
    let bestDiff = Infinity;
    let faces = 0;
    for (let pass = 0; pass <= args.rounds; pass++) {
      let a = 0;
      let b = 0;
      let passFaces = 0;
      for (const t of tensors) {
        s = performance.now();
        const lm = await landmarksOnly(t);
        a += performance.now() - s;
        s = performance.now();
        const res = await full(t);
        b += performance.now() - s;
        if (res.length !== lm.length) throw new Error('the two chains found different faces');
        passFaces += res.length;
      }
      faces = passFaces;
      if (pass > 0) { landmarksMs += a; fullMs += b; bestDiff = Math.min(bestDiff, b - a); }
    }
    const n = args.rounds;
    const msPerFace = (fullMs - landmarksMs) / n / faces;
    out.chain = {
      faces,
      detect_landmarks_ms_per_image: r2(landmarksMs / n / tensors.length),
      with_attributes_ms_per_image: r2(fullMs / n / tensors.length),
      ms_per_face: r3(msPerFace),
      best_pass_ms_per_face: r3(bestDiff / faces),
      faces_per_s: r3(1000 / msPerFace),
    };
  }

  Object.assign(out, {
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
  });
  console.log(JSON.stringify(out));
}

main().catch((err) => { console.error(err); process.exit(1); });
