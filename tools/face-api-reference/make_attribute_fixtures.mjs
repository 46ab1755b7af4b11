#!/usr/bin/env node
// Golden fixtures for idforge's port of face-api's two attribute networks
// (face_expression_model, age_gender_model), from @vladmandic/face-api on the
// pure-JS tfjs CPU backend, as make_fixtures.mjs runs the other nets.
//
// Usage (after the set-up in README.md and make_fixtures.mjs, whose PNGs it reads):
//
//   cd tools/face-api-reference && node make_attribute_fixtures.mjs [--assets DIR] [--out FILE]
//
// --assets  face-api asset dir (default: `tools/fetch-assets --print-dir`)
// --out     default: models/tests/fixtures/face-api/attributes.json
//
// Writes, deterministically (about 3 min on 2 busy cores):
// * `synthetic`: each net alone on a fixed 112x112 RGB pattern (no padding, no
//   resize), its normalised input, backbone features, raw head outputs and
//   probabilities;
// * `images[].faces[]`: the chain
//   detectAllFaces(ssd).withFaceLandmarks().withFaceExpressions().withAgeAndGender()
//   on sampleN_640.png: box, the 68 landmarks and the aligned rect (full double
//   precision, written as decimal strings so that every JSON reader keeps every
//   bit, and the crop can be recomputed exactly), the integer crop cut for
//   both nets, the expression probabilities, age, gender, genderProbability, and
//   the raw head outputs on that crop.

import { createRequire } from 'node:module';
import { execFileSync } from 'node:child_process';
import fs from 'node:fs';
import path from 'node:path';
import { fileURLToPath } from 'node:url';

const require = createRequire(import.meta.url);
const TOOL_DIR = path.dirname(fileURLToPath(import.meta.url));
const REPO_ROOT = path.resolve(TOOL_DIR, '..', '..');
const FACEAPI_BUILD = 'dist/face-api.node-wasm.js'; // as make_fixtures.mjs: external pure-JS tfjs
const faceapi = require(`@vladmandic/face-api/${FACEAPI_BUILD}`);
const tf = faceapi.tf;
const { PNG } = require('pngjs');

const PNGS = ['sample1_640.png', 'sample4_640.png', 'sample6_640.png'];
const SSD_OPTIONS = { minConfidence: 0.5 };
const MEAN_RGB = [122.782, 117.001, 104.298];
const SIDE = 112;

function parseArgs(argv) {
  const args = { assets: null, out: path.join(REPO_ROOT, 'models/tests/fixtures/face-api/attributes.json') };
  for (let i = 0; i < argv.length; i++) {
    if (argv[i] === '--assets') args.assets = argv[++i];
    else if (argv[i] === '--out') args.out = argv[++i];
    else throw new Error(`unknown argument: ${argv[i]}`);
  }
  args.assets ??= execFileSync(path.join(REPO_ROOT, 'tools/fetch-assets'), ['--print-dir'], { encoding: 'utf8' }).trim();
  return args;
}

const r6 = (x) => {
  if (!Number.isFinite(x)) throw new Error(`non-finite value ${x}`);
  const v = Number(x.toFixed(6));
  return Object.is(v, -0) ? 0 : v;
};
const r6a = (arr) => Array.from(arr, r6);
// A double as the shortest decimal string that reads back to it (Number#toString):
// serde_json's default float parser can miss by an ulp, str::parse::<f64> cannot.
const exact = (x) => String(x);
const maxAbsDiff = (a, b) => { let m = 0; for (let i = 0; i < a.length; i++) m = Math.max(m, Math.abs(a[i] - b[i])); return m; };

// Shape, min, max, mean, the first 16 values and (rank 4, NHWC) 16 values from
// the centre pixel, as make_fixtures.mjs's debug stats.
function stats(tensor) {
  const v = tensor.dataSync();
  let min = Infinity; let max = -Infinity; let sum = 0;
  for (let i = 0; i < v.length; i++) { const x = v[i]; if (x < min) min = x; if (x > max) max = x; sum += x; }
  const res = { shape: tensor.shape, min: r6(min), max: r6(max), mean: r6(sum / v.length), first16: r6a(v.slice(0, 16)) };
  if (tensor.rank === 4) {
    const [, h, w, c] = tensor.shape;
    const off = (Math.floor(h / 2) * w + Math.floor(w / 2)) * c;
    res.center16_offset = off;
    res.center16 = r6a(v.slice(off, off + 16));
  }
  return res;
}

// The fixed input: integer RGB from a formula the Rust test repeats.
function syntheticPixels() {
  const px = new Int32Array(SIDE * SIDE * 3);
  for (let y = 0; y < SIDE; y++) {
    for (let x = 0; x < SIDE; x++) {
      for (let c = 0; c < 3; c++) px[(y * SIDE + x) * 3 + c] = (x * x + 3 * y * y + 7 * x * y + 50 * c) % 256;
    }
  }
  return px;
}

function decodePngRgb(file) {
  const png = PNG.sync.read(fs.readFileSync(file)); // 8-bit RGBA
  const rgb = new Int32Array(png.width * png.height * 3);
  for (let p = 0, q = 0; p < png.data.length; p += 4, q += 3) {
    rgb[q] = png.data[p]; rgb[q + 1] = png.data[p + 1]; rgb[q + 2] = png.data[p + 2];
  }
  return { width: png.width, height: png.height, rgb };
}

// Both nets alone on one face tensor [h, w, 3]: the net input, raw heads and
// what the package's predict* methods return.
async function runNets(face) {
  const input = await faceapi.toNetInput(face);
  const netInput = tf.tidy(() => faceapi.normalize(input.toBatchTensor(SIDE, true), MEAN_RGB).div(255));
  const exprFeatures = faceapi.nets.faceExpressionNet.faceFeatureExtractor.forwardInput(input);
  const exprLogits = faceapi.nets.faceExpressionNet.runNet(input);
  const exprProbs = faceapi.nets.faceExpressionNet.forwardInput(input);
  const xcFeatures = faceapi.nets.ageGenderNet.faceFeatureExtractor.forwardInput(input);
  const { age, gender: genderLogits } = faceapi.nets.ageGenderNet.runNet(input);
  const { gender: genderProbs } = faceapi.nets.ageGenderNet.forwardInput(input);
  const expressions = await faceapi.nets.faceExpressionNet.predictExpressions(face);
  const ageGender = await faceapi.nets.ageGenderNet.predictAgeAndGender(face);
  const out = {
    input: stats(netInput),
    expression_features: stats(exprFeatures),
    expression_logits: r6a(exprLogits.dataSync()),
    expression_probabilities: r6a(exprProbs.dataSync()),
    expressions: faceapi.FACE_EXPRESSION_LABELS.map((l) => r6(expressions[l])),
    xception_features: stats(xcFeatures),
    age_raw: r6(age.dataSync()[0]),
    gender_logits: r6a(genderLogits.dataSync()),
    gender_probabilities: r6a(genderProbs.dataSync()),
    age: r6(ageGender.age),
    gender: ageGender.gender,
    genderProbability: r6(ageGender.genderProbability),
    exact: { expressions: faceapi.FACE_EXPRESSION_LABELS.map((l) => expressions[l]), age: ageGender.age, genderProbability: ageGender.genderProbability },
  };
  tf.dispose([netInput, exprFeatures, exprLogits, exprProbs, xcFeatures, age, genderLogits, genderProbs]);
  return out;
}

async function main() {
  const args = parseArgs(process.argv.slice(2));
  if (!fs.existsSync(path.join(args.assets, '.complete'))) throw new Error(`${args.assets}: not a complete face-api asset dir (run tools/fetch-assets)`);
  if (!(await tf.setBackend('cpu'))) throw new Error('tfjs cpu backend failed to initialise');
  await tf.ready();
  const modelDir = path.join(args.assets, 'model');
  for (const net of ['ssdMobilenetv1', 'faceLandmark68Net', 'faceExpressionNet', 'ageGenderNet']) {
    await faceapi.nets[net].loadFromDisk(modelDir);
  }
  if (faceapi.FACE_EXPRESSION_LABELS.join() !== 'neutral,happy,sad,angry,fearful,disgusted,surprised') throw new Error('unexpected label order');

  const synthTensor = tf.tensor3d(syntheticPixels(), [SIDE, SIDE, 3], 'int32');
  const synthetic = { pixels: '(x*x + 3*y*y + 7*x*y + 50*c) % 256 at row y, column x, channel c of a 112x112 RGB image', ...(await runNets(synthTensor)) };
  delete synthetic.exact;
  synthTensor.dispose();

  const fixtureDir = path.join(REPO_ROOT, 'models/tests/fixtures/face-api');
  const images = [];
  for (const png of PNGS) {
    const img = decodePngRgb(path.join(fixtureDir, png));
    const t = tf.tensor3d(img.rgb, [img.height, img.width, 3], 'int32');
    const results = await faceapi
      .detectAllFaces(t, new faceapi.SsdMobilenetv1Options(SSD_OPTIONS))
      .withFaceLandmarks()
      .withFaceExpressions()
      .withAgeAndGender();
    const faces = [];
    for (const f of results) {
      // extractAllFacesAndComputeResults: the face's alignedRect (landmarks.align(),
      // the padded min bbox), cut by extractFaceTensors (forSize, clipAtImageBorders).
      const [crop] = await faceapi.extractFaceTensors(t, [f.alignedRect]);
      const nets = await runNets(crop);
      const clip = f.alignedRect.forSize(img.width, img.height).box.clipAtImageBorders(img.width, img.height);
      if (crop.shape[0] !== clip.height || crop.shape[1] !== clip.width) throw new Error('crop shape');
      crop.dispose();
      // The re-run on the crop must be the chain's result, bit for bit.
      const chainExpr = faceapi.FACE_EXPRESSION_LABELS.map((l) => f.expressions[l]);
      if (maxAbsDiff(chainExpr, nets.exact.expressions) !== 0 || f.age !== nets.exact.age || f.genderProbability !== nets.exact.genderProbability) {
        throw new Error(`${png}: re-run on the aligned crop differs from the chain`);
      }
      delete nets.exact;
      const b = f.detection.box;
      const a = f.alignedRect.box;
      faces.push({
        score: r6(f.detection.score),
        box: { x: exact(b.x), y: exact(b.y), width: exact(b.width), height: exact(b.height) },
        landmarks_68: f.landmarks.positions.map((p) => [exact(p.x), exact(p.y)]),
        aligned_rect: { x: exact(a.x), y: exact(a.y), width: exact(a.width), height: exact(a.height) },
        aligned_crop: { x: clip.x, y: clip.y, width: clip.width, height: clip.height },
        ...nets,
      });
    }
    t.dispose();
    images.push({ png, width: img.width, height: img.height, faces });
    console.error(`${png}: ${faces.length} faces`);
  }

  const pkg = (name) => JSON.parse(fs.readFileSync(path.join(TOOL_DIR, 'node_modules', name, 'package.json'), 'utf8')).version;
  const out = {
    generator: 'tools/face-api-reference/make_attribute_fixtures.mjs',
    versions: { '@vladmandic/face-api': faceapi.version, face_api_build: FACEAPI_BUILD, '@tensorflow/tfjs': pkg('@tensorflow/tfjs'), node: process.version },
    backend: tf.getBackend(),
    chain: 'detectAllFaces(t, SsdMobilenetv1Options({minConfidence: 0.5})).withFaceLandmarks().withFaceExpressions().withAgeAndGender(), t = int32 [h, w, 3] tensor of the PNG',
    expression_labels: faceapi.FACE_EXPRESSION_LABELS,
    precision: 'box, landmarks_68 and aligned_rect are full doubles as decimal strings (Number#toString); everything else is rounded to 6 decimals',
    synthetic,
    images,
  };
  fs.writeFileSync(args.out, `${JSON.stringify(out)}\n`);
  console.error(`wrote ${args.out} (${fs.statSync(args.out).size} bytes)`);
}

main().catch((err) => { console.error(err); process.exit(1); });
