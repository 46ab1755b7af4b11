#!/usr/bin/env node
// Reference results through a JPEG decoder instead of lossless pixels: the
// package's own demo photo sample1.jpg (1920x1280) decoded by jpeg-js, then
// detectAllFaces(ssd).withFaceLandmarks().withFaceDescriptors() on the tfjs CPU
// backend, as make_fixtures.mjs runs it. idforge's test decodes the same file
// with its own decoder (a few levels per pixel apart) and compares with looser
// bounds than the lossless parity tests.
//
// Usage (from the repository root, after the set-up in README.md):
//
//   node tools/face-api-reference/jpeg_path.mjs [--assets DIR] [--out FILE]
//
// --out defaults to models/tests/fixtures/face-api/jpeg_path.json. About 30 s.

import { createRequire } from 'node:module';
import { execFileSync } from 'node:child_process';
import crypto from 'node:crypto';
import fs from 'node:fs';
import path from 'node:path';
import { fileURLToPath } from 'node:url';

const require = createRequire(import.meta.url);
const TOOL_DIR = path.dirname(fileURLToPath(import.meta.url));
const REPO_ROOT = path.resolve(TOOL_DIR, '..', '..');
const faceapi = require('@vladmandic/face-api/dist/face-api.node-wasm.js');
const tf = faceapi.tf;
const jpeg = require('jpeg-js');

const SOURCE = 'demo/sample1.jpg';

function parseArgs(argv) {
  const args = { assets: null, out: path.join(REPO_ROOT, 'models/tests/fixtures/face-api/jpeg_path.json') };
  for (let i = 0; i < argv.length; i++) {
    if (argv[i] === '--assets') args.assets = argv[++i];
    else if (argv[i] === '--out') args.out = argv[++i];
    else throw new Error(`unknown argument: ${argv[i]}`);
  }
  args.assets ??= execFileSync(path.join(REPO_ROOT, 'tools/fetch-assets'), ['--print-dir'], { encoding: 'utf8' }).trim();
  return args;
}

const r6 = (x) => { const v = Number(x.toFixed(6)); return Object.is(v, -0) ? 0 : v; };

async function main() {
  const args = parseArgs(process.argv.slice(2));
  if (!(await tf.setBackend('cpu'))) throw new Error('tfjs cpu backend failed to initialise');
  await tf.ready();
  for (const net of ['ssdMobilenetv1', 'faceLandmark68Net', 'faceRecognitionNet']) {
    await faceapi.nets[net].loadFromDisk(path.join(args.assets, 'model'));
  }
  const buf = fs.readFileSync(path.join(args.assets, SOURCE));
  const dec = jpeg.decode(buf, { useTArray: true, formatAsRGBA: false });
  const t = tf.tensor3d(Int32Array.from(dec.data), [dec.height, dec.width, 3], 'int32');
  const faces = await faceapi
    .detectAllFaces(t, new faceapi.SsdMobilenetv1Options({ minConfidence: 0.5 }))
    .withFaceLandmarks()
    .withFaceDescriptors();
  t.dispose();
  const out = {
    generator: 'tools/face-api-reference/jpeg_path.mjs',
    source: SOURCE,
    source_sha256: crypto.createHash('sha256').update(buf).digest('hex'),
    decoder: `jpeg-js ${JSON.parse(fs.readFileSync(path.join(TOOL_DIR, 'node_modules/jpeg-js/package.json'), 'utf8')).version} (no EXIF rotation)`,
    backend: tf.getBackend(),
    width: dec.width,
    height: dec.height,
    faces: faces.map((f) => ({
      score: r6(f.detection.score),
      box: { x: r6(f.detection.box.x), y: r6(f.detection.box.y), width: r6(f.detection.box.width), height: r6(f.detection.box.height) },
      landmarks_68: f.landmarks.positions.map((p) => [r6(p.x), r6(p.y)]),
      descriptor: Array.from(f.descriptor, r6),
    })),
  };
  fs.writeFileSync(args.out, `${JSON.stringify(out)}\n`);
  console.error(`${SOURCE}: ${dec.width}x${dec.height}, ${out.faces.length} faces -> ${args.out}`);
}

main().catch((err) => { console.error(err); process.exit(1); });
