// parseDetections / parseSegmentations on canned model output: exact results, and malformed
// output skipped without throwing.
import test from 'ava'

import { parseDetections, parseSegmentations } from '../dist/index.js'

const square = { width: 1024, height: 1024 }
const segs = (values) => values.map((v) => `<seg${String(v).padStart(3, '0')}>`).join('')
const range = (n, from = 0) => Array.from({ length: n }, (_, i) => from + i)

test('a single object', (t) => {
  t.deepEqual(parseDetections('<loc0256><loc0128><loc0768><loc0896> cat', { width: 1000, height: 500 }), [
    { label: 'cat', box: { x: 125, y: 125, width: 750, height: 250 }, box1024: [256, 128, 768, 896] },
  ])
})

test('several objects separated by " ; "', (t) => {
  t.deepEqual(parseDetections('<loc0000><loc0000><loc0512><loc0512> cat ; <loc0512><loc0512><loc1023><loc1023> dog', square), [
    { label: 'cat', box: { x: 0, y: 0, width: 512, height: 512 }, box1024: [0, 0, 512, 512] },
    { label: 'dog', box: { x: 512, y: 512, width: 511, height: 511 }, box1024: [512, 512, 1023, 1023] },
  ])
})

test('labels with spaces are kept whole and trimmed', (t) => {
  const text = '<loc0100><loc0200><loc0300><loc0400> red sports car  ; <loc0100><loc0200><loc0300><loc0400>  traffic light\n'
  t.deepEqual(
    parseDetections(text, square).map((d) => d.label),
    ['red sports car', 'traffic light'],
  )
})

test('objects without labels get an empty label', (t) => {
  t.deepEqual(parseDetections('<loc0010><loc0020><loc0030><loc0040><loc0050><loc0060><loc0070><loc0080>', square), [
    { label: '', box: { x: 20, y: 10, width: 20, height: 20 }, box1024: [10, 20, 30, 40] },
    { label: '', box: { x: 60, y: 50, width: 20, height: 20 }, box1024: [50, 60, 70, 80] },
  ])
})

test('malformed location tokens are skipped, later objects still parse', (t) => {
  t.deepEqual(parseDetections('<loc12><loc0012><loc0034><loc0056> cat', square), [])
  t.deepEqual(parseDetections('<loc0012><loc0034> dog', square), [])
  t.deepEqual(parseDetections('<loc0100><loc0100><loc0200>', square), [])
  t.deepEqual(parseDetections('<loc0012><loc0034> dog ; <loc0100><loc0100><loc0200><loc0200> cat', square), [
    { label: 'cat', box: { x: 100, y: 100, width: 100, height: 100 }, box1024: [100, 100, 200, 200] },
  ])
})

test('inverted, empty and out-of-range boxes are dropped', (t) => {
  const text =
    '<loc0500><loc0500><loc0100><loc0100> inverted ; <loc0100><loc0100><loc0100><loc0500> flat ; ' +
    '<loc1024><loc0000><loc1100><loc0500> past the grid ; <loc0100><loc0100><loc0500><loc0500> good'
  t.deepEqual(parseDetections(text, square), [
    { label: 'good', box: { x: 100, y: 100, width: 400, height: 400 }, box1024: [100, 100, 500, 500] },
  ])
})

test('garbage gives no objects and never throws', (t) => {
  for (const text of ['', 'a cat on a mat', '<<<;;;>>>', '<seg001><seg002> ; ;', '<loc><loc><loc><loc>', '💥 <loc0001>'.repeat(100)]) {
    t.deepEqual(parseDetections(text, square), [], JSON.stringify(text.slice(0, 40)))
    t.deepEqual(parseSegmentations(text, square), [])
  }
})

test('stray text, line breaks included, is skipped', (t) => {
  t.deepEqual(parseDetections('sure! here:\n<loc0100><loc0100><loc0200><loc0200> cat\n', square).map((d) => d.label), ['cat'])
})

test('pixel boxes use round(bin / 1024 · side) with ties to even, like the demo', (t) => {
  // 512/1024 · 5 = 2.5 → 2, · 3 = 1.5 → 2, · 7 = 3.5 → 4, · 1 = 0.5 → 0.
  t.deepEqual(parseDetections('<loc0000><loc0000><loc0512><loc0512> a', { width: 5, height: 3 })[0].box, { x: 0, y: 0, width: 2, height: 2 })
  t.deepEqual(parseDetections('<loc0000><loc0000><loc0512><loc0512> a', { width: 7, height: 1 })[0].box, { x: 0, y: 0, width: 4, height: 0 })
})

test('segmentation output: 16 seg indices per object', (t) => {
  const text = `<loc0000><loc0000><loc0512><loc0512>${segs(range(16, 1))} cat ; <loc0512><loc0512><loc1023><loc1023> ${segs(range(16, 112))} dog`
  t.deepEqual(parseSegmentations(text, square), [
    { label: 'cat', box: { x: 0, y: 0, width: 512, height: 512 }, box1024: [0, 0, 512, 512], segIndices: range(16, 1) },
    { label: 'dog', box: { x: 512, y: 512, width: 511, height: 511 }, box1024: [512, 512, 1023, 1023], segIndices: range(16, 112) },
  ])
  t.deepEqual(parseDetections(text, square), [
    { label: 'cat', box: { x: 0, y: 0, width: 512, height: 512 }, box1024: [0, 0, 512, 512] },
    { label: 'dog', box: { x: 512, y: 512, width: 511, height: 511 }, box1024: [512, 512, 1023, 1023] },
  ])
})

test('seg sequences of the wrong length or out of range give no mask; parsing goes on', (t) => {
  const text =
    `<loc0000><loc0000><loc0100><loc0100>${segs(range(15))} short ; ` +
    `<loc0100><loc0100><loc0200><loc0200>${segs([...range(15), 200])} bird ; ` +
    `<loc0200><loc0200><loc0300><loc0300>${segs(range(17))} long`
  t.deepEqual(parseSegmentations(text, square), [
    // 15 seg tokens do not form a mask; the label cannot follow them, so it is lost too.
    { label: '', box: { x: 0, y: 0, width: 100, height: 100 }, box1024: [0, 0, 100, 100], segIndices: null },
    { label: 'bird', box: { x: 100, y: 100, width: 100, height: 100 }, box1024: [100, 100, 200, 200], segIndices: null },
    // The first 16 of 17 are taken; the 17th ends parsing (no location tokens follow).
    { label: '', box: { x: 200, y: 200, width: 100, height: 100 }, box1024: [200, 200, 300, 300], segIndices: range(16) },
  ])
})

test('detection output parsed as segmentation has no seg indices', (t) => {
  t.deepEqual(parseSegmentations('<loc0256><loc0128><loc0768><loc0896> cat', { width: 1000, height: 500 }), [
    { label: 'cat', box: { x: 125, y: 125, width: 750, height: 250 }, box1024: [256, 128, 768, 896], segIndices: null },
  ])
})

test('bad arguments (not model output) are ERR_INVALID_ARGUMENT', (t) => {
  for (const args of [[42, square], [undefined, square], ['', undefined], ['', { width: 0, height: 10 }], ['', { width: 10.5, height: 10 }]]) {
    t.throws(() => parseDetections(...args), { code: 'ERR_INVALID_ARGUMENT' })
    t.throws(() => parseSegmentations(...args), { code: 'ERR_INVALID_ARGUMENT' })
  }
})
