#!/usr/bin/env node
// Golden fixtures for idforge's port of the face-api networks, produced by the
// reference implementation @vladmandic/face-api running in Node on the pure-JS
// tfjs CPU backend. See README.md next to this file for the output format.
//
// Usage (from the repository root):
//
//   tools/fetch-assets
//   (cd tools/face-api-reference && npm ci --ignore-scripts)
//   node tools/face-api-reference/make_fixtures.mjs [--assets DIR] [--out DIR]
//                                                  [--rounds N] [--no-wasm]
//
// --assets  face-api asset dir (default: `tools/fetch-assets --print-dir`)
// --out     output dir (default: models/tests/fixtures/face-api)
// --rounds  timed passes over the 3 images after the warm-up pass (default 3)
// --no-wasm skip the WASM-backend timing/comparison
//
// Everything except reference.json's "timing" (and "timing_wasm") is
// deterministic: re-running rewrites byte-identical PNGs, results.json and
// debug_sample1.json.

import { createRequire } from 'node:module';
import { execFileSync } from 'node:child_process';
import crypto from 'node:crypto';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { fileURLToPath } from 'node:url';

const require = createRequire(import.meta.url);
const TOOL_DIR = path.dirname(fileURLToPath(import.meta.url));
const REPO_ROOT = path.resolve(TOOL_DIR, '..', '..');

// The face-api build for Node that takes an external, pure-JS tfjs:
// it does `require('@tensorflow/tfjs')` + `require('@tensorflow/tfjs-backend-wasm')`
// (src/tfjs/tf-node-wasm.ts). The package's "main" (dist/face-api.node.js)
// requires @tensorflow/tfjs-node (native binary) instead.
const FACEAPI_BUILD = 'dist/face-api.node-wasm.js';
const faceapi = require(`@vladmandic/face-api/${FACEAPI_BUILD}`);
const tf = faceapi.tf; // the very module instance face-api uses (instanceof checks)
const jpeg = require('jpeg-js');
const { PNG } = require('pngjs');

// ---------------------------------------------------------------- parameters
const SAMPLES = ['sample1', 'sample4', 'sample6']; // group photos, 3-4 clear faces
const LONG_SIDE = 640;
const SSD_OPTIONS = { minConfidence: 0.5 }; // maxResults: package default (100)
const TINY_INPUT_SIZES = [416, 608];
const TINY_SCORE_THRESHOLD = 0.5;

// ---------------------------------------------------------------- arguments
function parseArgs(argv) {
  const args = { assets: null, out: path.join(REPO_ROOT, 'models/tests/fixtures/face-api'), rounds: 3, wasm: true };
  for (let i = 0; i < argv.length; i++) {
    const a = argv[i];
    if (a === '--assets') args.assets = argv[++i];
    else if (a === '--out') args.out = argv[++i];
    else if (a === '--rounds') args.rounds = Number(argv[++i]);
    else if (a === '--no-wasm') args.wasm = false;
    else if (a === '-h' || a === '--help') { console.log(fs.readFileSync(fileURLToPath(import.meta.url), 'utf8').split('\n').slice(1, 20).map((l) => l.replace(/^\/\/ ?/, '')).join('\n')); process.exit(0); }
    else throw new Error(`unknown argument: ${a}`);
  }
  if (!args.assets) {
    args.assets = execFileSync(path.join(REPO_ROOT, 'tools/fetch-assets'), ['--print-dir'], { encoding: 'utf8' }).trim();
  }
  if (!(args.rounds >= 1)) throw new Error('--rounds must be >= 1');
  return args;
}

// ---------------------------------------------------------------- helpers
const sha256 = (buf) => crypto.createHash('sha256').update(buf).digest('hex');

function pkgVersion(name) {
  return JSON.parse(fs.readFileSync(path.join(TOOL_DIR, 'node_modules', name, 'package.json'), 'utf8')).version;
}

// 6-decimal rounding (decimal rounding of the double, as Number.prototype.toFixed does).
function r6(x) {
  if (!Number.isFinite(x)) throw new Error(`non-finite value ${x}`);
  const v = Number(x.toFixed(6));
  return Object.is(v, -0) ? 0 : v;
}
const r6a = (arr) => Array.from(arr, r6);

// JSON with 2-space indent, but arrays of numbers (and arrays of short number
// arrays, e.g. landmark points) kept on one line.
function toJson(value, indent = '') {
  const inner = `${indent}  `;
  if (Array.isArray(value)) {
    if (value.every((v) => typeof v === 'number')) return `[${value.map((v) => JSON.stringify(v)).join(', ')}]`;
    if (value.every((v) => Array.isArray(v) && v.length <= 4 && v.every((w) => typeof w === 'number'))) {
      return `[${value.map((v) => toJson(v)).join(', ')}]`;
    }
    if (value.length === 0) return '[]';
    return `[\n${value.map((v) => inner + toJson(v, inner)).join(',\n')}\n${indent}]`;
  }
  if (value && typeof value === 'object') {
    const keys = Object.keys(value).filter((k) => value[k] !== undefined);
    if (keys.length === 0) return '{}';
    return `{\n${keys.map((k) => `${inner}${JSON.stringify(k)}: ${toJson(value[k], inner)}`).join(',\n')}\n${indent}}`;
  }
  return JSON.stringify(value);
}
const writeJson = (file, value) => fs.writeFileSync(file, `${toJson(value)}\n`);

// ---------------------------------------------------------------- image prep
// Area-averaging (box) downscale, exact integer arithmetic.
// Along one axis with source length S and output length D, output pixel o
// covers source interval [o*S/D, (o+1)*S/D). Scaled by D, source pixel i covers
// [i*D, (i+1)*D) and output o covers [o*S, (o+1)*S), so the overlap
// w(o, i) = max(0, min((i+1)*D, (o+1)*S) - max(i*D, o*S)) is an integer and
// sum_i w(o, i) = S. Per channel:
//   out = floor((2*A + T) / (2*T)),  A = sum_j sum_i wy(oy, j) * wx(ox, i) * src[j][i],
//   T = SW * SH                       (i.e. A/T rounded half up; all integers < 2^53).
function axisWeights(S, D) {
  const res = [];
  for (let o = 0; o < D; o++) {
    const lo = o * S; const hi = (o + 1) * S;
    const first = Math.floor(lo / D); const last = Math.ceil(hi / D) - 1;
    const taps = [];
    for (let i = first; i <= last; i++) {
      const w = Math.min((i + 1) * D, hi) - Math.max(i * D, lo);
      if (w > 0) taps.push([i, w]);
    }
    res.push(taps);
  }
  return res;
}

function areaResizeRgb(src, sw, sh, dw, dh) {
  const wx = axisWeights(sw, dw); const wy = axisWeights(sh, dh);
  const tmp = new Float64Array(sh * dw * 3); // horizontal pass, exact integers
  for (let y = 0; y < sh; y++) {
    for (let ox = 0; ox < dw; ox++) {
      let r = 0; let g = 0; let b = 0;
      for (const [i, w] of wx[ox]) {
        const p = (y * sw + i) * 3;
        r += w * src[p]; g += w * src[p + 1]; b += w * src[p + 2];
      }
      const q = (y * dw + ox) * 3;
      tmp[q] = r; tmp[q + 1] = g; tmp[q + 2] = b;
    }
  }
  const T = sw * sh;
  const out = Buffer.alloc(dw * dh * 3);
  for (let oy = 0; oy < dh; oy++) {
    for (let ox = 0; ox < dw; ox++) {
      for (let c = 0; c < 3; c++) {
        let a = 0;
        for (const [j, w] of wy[oy]) a += w * tmp[(j * dw + ox) * 3 + c];
        out[(oy * dw + ox) * 3 + c] = Math.floor((2 * a + T) / (2 * T));
      }
    }
  }
  return out;
}

function encodePngRgb(rgb, width, height) {
  const png = new PNG({ width, height, colorType: 2, inputColorType: 2, inputHasAlpha: false, bitDepth: 8 });
  png.data = rgb;
  return PNG.sync.write(png, { colorType: 2, inputColorType: 2, inputHasAlpha: false, deflateLevel: 9, filterType: -1 });
}

function decodePngRgb(buf) {
  const png = PNG.sync.read(buf); // pngjs always hands back 8-bit RGBA
  const rgb = Buffer.alloc(png.width * png.height * 3);
  for (let p = 0, q = 0; p < png.data.length; p += 4, q += 3) {
    rgb[q] = png.data[p]; rgb[q + 1] = png.data[p + 1]; rgb[q + 2] = png.data[p + 2];
  }
  return { width: png.width, height: png.height, rgb };
}

function prepareInput(assets, outDir, name) {
  const jpgRel = `demo/${name}.jpg`;
  const jpgBuf = fs.readFileSync(path.join(assets, jpgRel));
  const dec = jpeg.decode(jpgBuf, { useTArray: true, formatAsRGBA: false });
  const longSrc = Math.max(dec.width, dec.height);
  const dw = dec.width >= dec.height ? LONG_SIDE : Math.round((dec.width * LONG_SIDE) / longSrc);
  const dh = dec.height > dec.width ? LONG_SIDE : Math.round((dec.height * LONG_SIDE) / longSrc);
  const rgb = areaResizeRgb(dec.data, dec.width, dec.height, dw, dh);
  const pngName = `${name}_${LONG_SIDE}.png`;
  const pngBuf = encodePngRgb(rgb, dw, dh);
  fs.writeFileSync(path.join(outDir, pngName), pngBuf);
  // The networks see the pixels decoded back from the PNG file just written.
  const back = decodePngRgb(fs.readFileSync(path.join(outDir, pngName)));
  if (back.width !== dw || back.height !== dh || !back.rgb.equals(rgb)) throw new Error(`${pngName}: PNG round trip changed pixels`);
  return {
    meta: {
      png: pngName,
      source: jpgRel,
      source_sha256: sha256(jpgBuf),
      source_size: [dec.width, dec.height],
      width: dw,
      height: dh,
      rgb_sha256: sha256(back.rgb), // of the decoded, row-major, 8-bit RGB bytes
    },
    width: dw,
    height: dh,
    rgb: back.rgb,
  };
}

// int32 [H, W, 3] tensor from RGB bytes: what face-api's own Node demos build
// (demo/node-wasm.js: tf.tensor(..., [h, w, 4], 'int32') then drop alpha).
const imageTensor = (img) => tf.tensor3d(Int32Array.from(img.rgb), [img.height, img.width, 3], 'int32');

// ---------------------------------------------------------------- networks
const NETS = {
  ssd_mobilenetv1: 'ssdMobilenetv1',
  tiny_face_detector: 'tinyFaceDetector',
  face_landmark_68: 'faceLandmark68Net',
  face_recognition: 'faceRecognitionNet',
};

async function loadNets(modelDir) {
  // The package's own disk loader: reads <name>-weights_manifest.json + .bin with
  // node:fs and decodes them with tf.io.weightsLoaderFactory (NeuralNetwork.loadFromDisk).
  for (const key of Object.values(NETS)) {
    const net = faceapi.nets[key];
    if (net.isLoaded) net.dispose();
    await net.loadFromDisk(modelDir);
  }
}

function weightsMeta(modelDir) {
  const out = {};
  for (const file of Object.keys(NETS)) {
    const manifestName = `${file}_model-weights_manifest.json`;
    const manifest = JSON.parse(fs.readFileSync(path.join(modelDir, manifestName), 'utf8'));
    out[file] = {
      manifest: `model/${manifestName}`,
      manifest_sha256: sha256(fs.readFileSync(path.join(modelDir, manifestName))),
      bins: manifest.flatMap((g) => g.paths).map((p) => ({ path: `model/${p}`, sha256: sha256(fs.readFileSync(path.join(modelDir, p))) })),
    };
  }
  return out;
}

const boxJson = (b) => ({ x: r6(b.x), y: r6(b.y), width: r6(b.width), height: r6(b.height) });
const intBoxJson = (b) => ({ x: b.x, y: b.y, width: b.width, height: b.height });

const runPipeline = (t) => faceapi
  .detectAllFaces(t, new faceapi.SsdMobilenetv1Options(SSD_OPTIONS))
  .withFaceLandmarks()
  .withFaceDescriptors();

async function runImage(img) {
  const t = imageTensor(img);
  const full = await runPipeline(t);
  const ssd = full.map((f) => {
    const dlibRect = f.landmarks.align(null, { useDlibAlignment: true });
    return {
      score: r6(f.detection.score),
      box: boxJson(f.detection.box),
      landmark_crop: intBoxJson(f.detection.box.clipAtImageBorders(img.width, img.height)),
      landmarks_68: f.landmarks.positions.map((p) => [r6(p.x), r6(p.y)]),
      descriptor_rect: boxJson(dlibRect),
      descriptor_crop: intBoxJson(dlibRect.clipAtImageBorders(img.width, img.height)),
      descriptor: r6a(f.descriptor),
    };
  });
  const tiny = {};
  for (const inputSize of TINY_INPUT_SIZES) {
    const dets = await faceapi.detectAllFaces(t, new faceapi.TinyFaceDetectorOptions({ inputSize, scoreThreshold: TINY_SCORE_THRESHOLD }));
    tiny[String(inputSize)] = dets.map((d) => ({ score: r6(d.score), box: boxJson(d.box) }));
  }
  t.dispose();
  return { ssd, tiny, raw: full };
}

// ---------------------------------------------------------------- debug aids
function stats(tensor, label) {
  const v = tensor.dataSync();
  let min = Infinity; let max = -Infinity; let sum = 0;
  for (let i = 0; i < v.length; i++) { const x = v[i]; if (x < min) min = x; if (x > max) max = x; sum += x; }
  const res = { what: label, shape: tensor.shape, dtype: tensor.dtype, min: r6(min), max: r6(max), mean: r6(sum / v.length), first16: r6a(v.slice(0, 16)) };
  if (tensor.rank === 4) { // NHWC: 16 values starting at the centre pixel (h/2, w/2), channel 0
    const [, h, w, c] = tensor.shape;
    const off = (Math.floor(h / 2) * w + Math.floor(w / 2)) * c;
    res.center16_offset = off;
    res.center16 = r6a(v.slice(off, off + 16));
  }
  return res;
}

const maxAbsDiff = (a, b) => { let m = 0; for (let i = 0; i < a.length; i++) m = Math.max(m, Math.abs(a[i] - b[i])); return m; };

async function debugAids(img, full) {
  const t = imageTensor(img);
  const out = { image: img.meta.png, note: 'face 0 = first ssd_mobilenetv1 detection in results.json' };
  const netInput = await faceapi.toNetInput(t);

  // ssd_mobilenetv1 (SsdMobilenetv1.forwardInput)
  out.ssd_mobilenetv1 = {
    preprocess: 'toBatchTensor(512, isCenterInputs=false): zero-pad bottom/right to square, resizeBilinear(alignCorners=false, halfPixelCenters=false) to 512x512, float32; then x/127.5 - 1',
    input: tf.tidy(() => stats(tf.sub(tf.div(netInput.toBatchTensor(512, false), 127.5), 1), 'network input [1,512,512,3]')),
  };
  const { boxes, scores } = await faceapi.nets.ssdMobilenetv1.forward(t);
  const sc = scores[0].dataSync(); const bx = boxes[0].arraySync();
  const order = Array.from(sc.keys()).sort((a, b) => sc[b] - sc[a] || a - b).slice(0, 8);
  out.ssd_mobilenetv1.decoded_boxes = { ...stats(boxes[0], 'outputLayer boxes before NMS: [ymin, xmin, ymax, xmax] relative to the padded 512 square'), };
  out.ssd_mobilenetv1.scores = stats(scores[0], 'outputLayer scores before NMS: sigmoid(class logit 1)');
  out.ssd_mobilenetv1.top8 = order.map((i) => ({ anchor: i, score: r6(sc[i]), box: r6a(bx[i]) }));
  tf.dispose([...boxes, ...scores]);

  // tiny_face_detector (TinyYolov2Base.forwardInput)
  out.tiny_face_detector = { preprocess: 'toBatchTensor(inputSize, isCenterInputs=false) as above; then (x - [117.001, 114.697, 97.404]) / 255' };
  for (const size of TINY_INPUT_SIZES) {
    out.tiny_face_detector[String(size)] = {
      input: tf.tidy(() => stats(faceapi.normalize(netInput.toBatchTensor(size, false), [117.001, 114.697, 97.404]).div(255), `network input [1,${size},${size},3]`)),
      output: await (async () => { const o = await faceapi.nets.tinyFaceDetector.forward(t, size); const s = stats(o, 'raw conv8 output: 5 anchors x [tx, ty, tw, th, objectness logit]'); o.dispose(); return s; })(),
    };
  }

  if (full.length > 0) {
    const f0 = full[0];
    const mean = [122.782, 117.001, 104.298];
    // face_landmark_68 on face 0 (DetectAllFaceLandmarksTask -> extractFaceTensors -> detectLandmarks)
    const [lmCrop] = await faceapi.extractFaceTensors(t, [f0.detection]);
    const lmInput = await faceapi.toNetInput(lmCrop);
    const lmRaw = faceapi.nets.faceLandmark68Net.runNet(lmInput);
    const feat = faceapi.nets.faceLandmark68Net.faceFeatureExtractor.forwardInput(lmInput);
    const lm = await faceapi.nets.faceLandmark68Net.detectLandmarks(lmCrop);
    const lmShift = lm.shiftBy(f0.detection.box.x, f0.detection.box.y).positions.flatMap((p) => [p.x, p.y]);
    if (maxAbsDiff(lmShift, f0.landmarks.positions.flatMap((p) => [p.x, p.y])) !== 0) throw new Error('debug landmark path differs from pipeline');
    out.face_landmark_68 = {
      crop_shape: lmCrop.shape,
      preprocess: 'crop = slice of the image tensor at detection.box.clipAtImageBorders() (floored); toBatchTensor(112, isCenterInputs=true): zero-pad both sides to square (extra pixel after), resizeBilinear to 112; then (x - [122.782, 117.001, 104.298]) / 255',
      input: tf.tidy(() => stats(faceapi.normalize(lmInput.toBatchTensor(112, true), mean).div(255), 'network input [1,112,112,3]')),
      features: stats(feat, 'FaceFeatureExtractor output (4 dense blocks + avgPool 7x7/2)'),
      raw_output: { ...stats(lmRaw, 'fc output before postProcess, interleaved x,y in [0,1] of the padded 112 square'), values: r6a(lmRaw.dataSync()) },
      postprocess: 'p = (raw * 112 - pad) / scaled_dim per axis (pad = half the square padding of the 112-scaled crop), times crop width/height, plus detection.box.x/y (unfloored)',
    };
    tf.dispose([lmCrop, lmRaw, feat]);

    // face_recognition on face 0 (ComputeAllFaceDescriptorsTask)
    const rect = f0.landmarks.align(null, { useDlibAlignment: true });
    const [recCrop] = await faceapi.extractFaceTensors(t, [rect]);
    const recInput = await faceapi.toNetInput(recCrop);
    const desc = await faceapi.nets.faceRecognitionNet.computeFaceDescriptor(recCrop);
    if (maxAbsDiff(desc, f0.descriptor) !== 0) throw new Error('debug descriptor path differs from pipeline');
    out.face_recognition = {
      crop_shape: recCrop.shape,
      preprocess: 'crop = slice at landmarks.align(useDlibAlignment).clipAtImageBorders() (floored); toBatchTensor(150, isCenterInputs=true); then (x - [122.782, 117.001, 104.298]) / 255',
      input: tf.tidy(() => stats(faceapi.normalize(recInput.toBatchTensor(150, true), mean).div(255), 'network input [1,150,150,3]')),
    };
    recCrop.dispose();
  }
  t.dispose();
  return out;
}

// ---------------------------------------------------------------- timing
async function timePipeline(tensors, rounds) {
  for (const t of tensors) await runPipeline(t); // warm-up pass
  const perImage = tensors.map(() => []);
  for (let r = 0; r < rounds; r++) {
    for (let i = 0; i < tensors.length; i++) {
      const t0 = performance.now();
      await runPipeline(tensors[i]);
      perImage[i].push(performance.now() - t0);
    }
  }
  const all = perImage.flat();
  return {
    mean_ms_per_image: Number((all.reduce((a, b) => a + b, 0) / all.length).toFixed(1)),
    per_image_mean_ms: perImage.map((v) => Number((v.reduce((a, b) => a + b, 0) / v.length).toFixed(1))),
    warmup_passes: 1,
    timed_passes: rounds,
  };
}

function compareRuns(a, b) {
  const d = { same_face_counts: a.length === b.length && a.every((x, i) => x.length === b[i].length), score: 0, box: 0, landmarks: 0, descriptor: 0 };
  if (!d.same_face_counts) return d;
  for (let i = 0; i < a.length; i++) {
    for (let k = 0; k < a[i].length; k++) {
      const x = a[i][k]; const y = b[i][k];
      d.score = Math.max(d.score, Math.abs(x.detection.score - y.detection.score));
      const bb = (f) => [f.detection.box.x, f.detection.box.y, f.detection.box.width, f.detection.box.height];
      d.box = Math.max(d.box, maxAbsDiff(bb(x), bb(y)));
      d.landmarks = Math.max(d.landmarks, maxAbsDiff(x.landmarks.positions.flatMap((p) => [p.x, p.y]), y.landmarks.positions.flatMap((p) => [p.x, p.y])));
      d.descriptor = Math.max(d.descriptor, maxAbsDiff(x.descriptor, y.descriptor));
    }
  }
  for (const k of ['score', 'box', 'landmarks', 'descriptor']) d[k] = Number(d[k].toPrecision(3));
  return d;
}

// ---------------------------------------------------------------- main
async function main() {
  const args = parseArgs(process.argv.slice(2));
  if (!fs.existsSync(path.join(args.assets, '.complete'))) throw new Error(`${args.assets}: not a complete face-api asset dir (run tools/fetch-assets)`);
  const modelDir = path.join(args.assets, 'model');
  fs.mkdirSync(args.out, { recursive: true });

  if (!(await tf.setBackend('cpu'))) throw new Error('tfjs cpu backend failed to initialise');
  await tf.ready();
  const backend = tf.getBackend();
  if (backend !== 'cpu') throw new Error(`expected cpu backend, got ${backend}`);
  await loadNets(modelDir);

  const images = SAMPLES.map((s) => prepareInput(args.assets, args.out, s));
  const results = { images: [] };
  const rawCpu = [];
  for (const img of images) {
    const r = await runImage(img);
    rawCpu.push(r.raw);
    results.images.push({ png: img.meta.png, width: img.width, height: img.height, ssd_mobilenetv1: r.ssd, tiny_face_detector: r.tiny });
    console.error(`${img.meta.png}: ${img.width}x${img.height}, ssd ${r.ssd.length} faces, tiny416 ${r.tiny['416'].length}, tiny608 ${r.tiny['608'].length}`);
  }
  const debug = await debugAids(images[0], rawCpu[0]);

  const cpuCount = os.cpus().length;
  const loadBefore = os.loadavg()[0];
  const tensors = images.map(imageTensor);
  const timing = { backend: 'cpu', threads: 1, ...(await timePipeline(tensors, args.rounds)), what: 'detectAllFaces(SsdMobilenetv1Options({minConfidence: 0.5})).withFaceLandmarks().withFaceDescriptors() on a prebuilt int32 image tensor, wall clock', cpu_count: cpuCount, cpu_model: os.cpus()[0]?.model, loadavg_1min_before: Number(loadBefore.toFixed(2)), loadavg_1min_after: Number(os.loadavg()[0].toFixed(2)) };
  tf.dispose(tensors);
  console.error(`cpu: ${timing.mean_ms_per_image} ms/image`);

  let timingWasm = null;
  if (args.wasm) {
    try {
      if (!(await tf.setBackend('wasm'))) throw new Error('setBackend(wasm) returned false');
      await tf.ready();
      const wasm = require('@tensorflow/tfjs-backend-wasm');
      await loadNets(modelDir); // weights re-created on the wasm backend
      const wt = images.map(imageTensor);
      const rawWasm = [];
      for (const t of wt) rawWasm.push(await runPipeline(t));
      timingWasm = {
        backend: tf.getBackend(),
        simd: await tf.env().getAsync('WASM_HAS_SIMD_SUPPORT'),
        multithread: await tf.env().getAsync('WASM_HAS_MULTITHREAD_SUPPORT'),
        threads: wasm.getThreadsCount(),
        ...(await timePipeline(wt, args.rounds)),
        cpu_count: cpuCount,
        loadavg_1min_after: Number(os.loadavg()[0].toFixed(2)),
        max_abs_diff_vs_cpu: compareRuns(rawCpu, rawWasm),
      };
      tf.dispose(wt);
      console.error(`wasm: ${timingWasm.mean_ms_per_image} ms/image, diff vs cpu ${JSON.stringify(timingWasm.max_abs_diff_vs_cpu)}`);
    } catch (err) {
      timingWasm = { error: String(err && err.message ? err.message : err) };
      console.error(`wasm backend unavailable: ${timingWasm.error}`);
    }
  }

  const reference = {
    generator: 'tools/face-api-reference/make_fixtures.mjs',
    versions: {
      '@vladmandic/face-api': faceapi.version,
      face_api_build: FACEAPI_BUILD,
      '@tensorflow/tfjs': pkgVersion('@tensorflow/tfjs'),
      '@tensorflow/tfjs-core': pkgVersion('@tensorflow/tfjs-core'),
      '@tensorflow/tfjs-backend-cpu': pkgVersion('@tensorflow/tfjs-backend-cpu'),
      '@tensorflow/tfjs-backend-wasm': pkgVersion('@tensorflow/tfjs-backend-wasm'),
      'jpeg-js': pkgVersion('jpeg-js'),
      pngjs: pkgVersion('pngjs'),
      node: process.version,
    },
    backend,
    options: {
      ssd_mobilenetv1: { minConfidence: SSD_OPTIONS.minConfidence, maxResults: new faceapi.SsdMobilenetv1Options(SSD_OPTIONS).maxResults, iouThreshold: 0.5 },
      tiny_face_detector: { inputSizes: TINY_INPUT_SIZES, scoreThreshold: TINY_SCORE_THRESHOLD, iouThreshold: 0.4 },
      face_landmark_68: 'detectAllFaces(ssd).withFaceLandmarks() (full 68-point net, not tiny)',
      face_recognition: '.withFaceDescriptors() (crop from landmarks.align(null, {useDlibAlignment: true}))',
      input_tensor: 'tf.tensor3d(RGB bytes of the PNG, [height, width, 3], "int32")',
    },
    inputs: {
      decoder: 'jpeg-js decode(jpg, {useTArray: true, formatAsRGBA: false}); no EXIF orientation, no ICC; chroma upsampled by pixel replication',
      resize: `area average (box filter) to ${LONG_SIDE} px on the long side, short side = round(short * ${LONG_SIDE} / long); exact integer overlap weights, each channel rounded half up (see areaResizeRgb in the script)`,
      png: 'pngjs: 8-bit RGB (colour type 2), no ancillary chunks, deflate level 9, adaptive filters',
      images: images.map((i) => i.meta),
    },
    weights: weightsMeta(modelDir),
    files: { results: 'results.json', debug: 'debug_sample1.json' },
    timing,
    timing_wasm: timingWasm,
  };

  writeJson(path.join(args.out, 'results.json'), results);
  writeJson(path.join(args.out, 'debug_sample1.json'), debug);
  writeJson(path.join(args.out, 'reference.json'), reference);
  console.error(`wrote ${args.out}`);
}

main().catch((err) => { console.error(err); process.exit(1); });
