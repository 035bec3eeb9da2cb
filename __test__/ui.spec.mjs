// The page at / of `paligemma serve` (issue 23), in a real browser: Debian's chromium driven by
// puppeteer-core. Caption streams the API's text, Stop aborts the server's request, a corrupt
// image shows the server's error in words, detect and segment results are drawn (a known result
// through the page's own drawing code, checked pixel by pixel), and the API key is asked for.
// Screenshots go to target/test-output/ui/.
import { existsSync, mkdirSync, mkdtempSync, writeFileSync } from 'node:fs'
import { tmpdir } from 'node:os'
import { join } from 'node:path'

import test from 'ava'
import puppeteer from 'puppeteer-core'

import { PaliGemma, maskToRle, serve } from '../dist/index.js'
import { longContextFixture, repo, sleep } from './helpers/fixtures.mjs'
import { noisyPng, png } from './helpers/png.mjs'

const CHROMIUM = ['/usr/bin/chromium', '/usr/bin/chromium-browser'].find(existsSync)
const shots = join(repo, 'target', 'test-output', 'ui')
mkdirSync(shots, { recursive: true })
const files = mkdtempSync(join(tmpdir(), 'paligemma-ui-'))
const photo = join(files, 'photo.png')
writeFileSync(photo, noisyPng(32))
const corrupt = join(files, 'corrupt.png')
writeFileSync(corrupt, Buffer.from('\x89PNG\r\n\x1a\nthis is not a picture'))
// A 320 × 240 picture of soft bands, for drawing known results on.
const wide = join(files, 'wide.png')
{
  const rows = Buffer.alloc(240 * (1 + 320 * 3))
  for (let y = 0; y < 240; y++) for (let x = 0; x < 320; x++) rows.set([80 + (x >> 2), 120 + (y >> 2), 160], y * (1 + 960) + 1 + x * 3)
  writeFileSync(wide, png(320, 240, rows))
}

const modelId = 'tiny-paligemma'
const ready = (async () => {
  if (!CHROMIUM) throw new Error('chromium is not installed: apt-get install chromium (.ci/run does this)')
  const model = await PaliGemma.load(longContextFixture('pg1-tiny-a'))
  const running = await serve(model, { modelId, port: 0 })
  const locked = await serve(model, { modelId, port: 0, apiKey: 'sesame' })
  const browser = await puppeteer.launch({ executablePath: CHROMIUM, headless: true, args: ['--no-sandbox', '--disable-dev-shm-usage'] })
  return { model, running, locked, browser }
})()

test.after.always(async () => {
  const { model, running, locked, browser } = await ready
  await browser.close()
  await running.close(0)
  await locked.close(0)
  await model.dispose()
})

/** A page on `url` that records console errors and every request it makes. */
async function open(url) {
  const page = await (await ready).browser.newPage()
  await page.setViewport({ width: 1100, height: 800 })
  const problems = []
  const requests = []
  page.on('console', (m) => m.type() === 'error' && problems.push(m.text()))
  page.on('pageerror', (e) => problems.push(e.message))
  page.on('request', (r) => requests.push(r.url()))
  await page.goto(url, { waitUntil: 'networkidle0' })
  return { page, problems, requests }
}

const text = (page, selector) => page.$eval(selector, (e) => e.textContent)
const finished = (page) => page.waitForFunction(() => !document.getElementById('run').disabled, { timeout: 60_000 })

async function runTask(page, { task = 'caption', image = photo, maxTokens = 12, temperature = '0', seed = '', labels } = {}) {
  await (await page.$('#file')).uploadFile(image)
  await page.waitForFunction((name) => document.getElementById('file').files[0]?.name === name && /pixels|cannot show/.test(document.getElementById('image-size').textContent), {}, image.split('/').at(-1))
  await page.select('#task', task)
  if (labels !== undefined) await page.$eval('#labels', (e, v) => (e.value = v), labels)
  await page.$eval('details', (d) => (d.open = true))
  for (const [id, value] of [['max-tokens', String(maxTokens)], ['temperature', temperature], ['seed', seed]]) await page.$eval(`#${id}`, (e, v) => (e.value = v), value)
  await page.click('#run')
}

test.serial('caption streams the same text as the API for the same seed, with timings and the model info; all offline', async (t) => {
  const { running, model } = await ready
  const { page, problems, requests } = await open(`${running.url}/`)
  t.regex(await text(page, '#model-info'), new RegExp(modelId))
  await runTask(page, { maxTokens: 12, temperature: '0.7', seed: '5' })
  await finished(page)
  const want = await model.generate({ image: noisyPng(32), prompt: 'caption en', maxNewTokens: 12, temperature: 0.7, seed: 5 })
  t.is(await text(page, '#answer'), want.text)
  t.regex(await text(page, '#timings'), /time to first token [\d.]+ s · [\d.]+ tokens\/s · 12 tokens/)
  t.regex(await text(page, '#image-size'), /32 × 32 pixels/)
  await page.screenshot({ path: join(shots, 'caption.png'), fullPage: true })
  t.deepEqual(problems, [])
  t.true(requests.every((url) => url.startsWith(running.url) || url.startsWith('data:')), `only the server is contacted: ${requests.filter((u) => !u.startsWith(running.url)).join(', ')}`)
  // Every control has a label a screen reader can announce.
  const unlabelled = await page.$$eval('input, select', (els) => els.filter((e) => e.labels.length === 0 && !e.getAttribute('aria-label')).map((e) => e.id))
  t.deepEqual(unlabelled, [])
  await page.close()
})

test.serial('Stop aborts a long generation, and the server drops the request', async (t) => {
  const { running } = await ready
  const { page } = await open(`${running.url}/`)
  await runTask(page, { maxTokens: 6000 })
  await page.waitForFunction(() => document.getElementById('answer').textContent.length > 3)
  await page.click('#stop')
  await finished(page)
  t.is(await text(page, '#timings'), 'Stopped.')
  t.true(await page.$eval('#error', (e) => e.hidden))
  let inFlight
  for (let i = 0; i < 100; i++) {
    const metrics = await (await fetch(`${running.url}/metrics`)).text()
    inFlight = Number(/^paligemma_requests_in_flight (\d+)$/m.exec(metrics)?.[1])
    if (inFlight === 0) break
    await sleep(20)
  }
  t.is(inFlight, 0, 'the server cancelled the request')
  await page.close()
})

test.serial('a corrupt image and a missing prompt show errors in plain words', async (t) => {
  const { running } = await ready
  const { page } = await open(`${running.url}/`)
  await page.click('#run')
  t.regex(await text(page, '#error'), /Choose an image first/)
  await runTask(page, { image: photo, task: 'ask' })
  t.regex(await text(page, '#error'), /Enter a question/)
  // The bytes are named .png, so the page takes them; the server finds they are no image.
  await runTask(page, { image: corrupt })
  await page.waitForFunction(() => !document.getElementById('error').hidden)
  await finished(page)
  t.regex(await text(page, '#error'), /The server refused the request: .*image/i)
  await page.screenshot({ path: join(shots, 'error.png'), fullPage: true })
  await page.close()
})

test.serial('detect and segment results are drawn over the image by the page\'s own code, pixel-exact at the box edges', async (t) => {
  const { running } = await ready
  const { page, problems } = await open(`${running.url}/`)
  await runTask(page, { task: 'detect', labels: 'cat ; dog', maxTokens: 16, image: wide })
  await finished(page)
  t.truthy(await text(page, '#objects'), 'the real result is listed (often "Nothing found." for random weights)')
  // A known result, drawn through the page's own code path (showObjects → drawAnnotations).
  const known = {
    detections: [
      { label: 'cat', box: { x: 40, y: 60, width: 120, height: 90 }, box1024: [0, 0, 0, 0] },
      { label: 'dog', box: { x: 200, y: 100, width: 100, height: 120 }, box1024: [0, 0, 0, 0] },
    ],
  }
  await page.evaluate(async (result) => (await import('/ui/app.js')).showObjects(result), known)
  const pixel = (x, y) => page.$eval('#overlay', (c, x, y) => Array.from(c.getContext('2d').getImageData(x, y, 1, 1).data), x, y)
  t.deepEqual(await page.$eval('#overlay', (c) => [c.width, c.height]), [320, 240], 'the overlay has the image\'s pixels')
  t.deepEqual(await pixel(41, 120), [0xe6, 0x19, 0x4b, 255], 'the cat box\'s left edge, in the first colour')
  t.deepEqual(await pixel(158, 120), [0xe6, 0x19, 0x4b, 255], 'its right edge')
  t.deepEqual(await pixel(250, 218), [0x3c, 0xb4, 0x4b, 255], 'the dog box\'s bottom edge, in the second colour')
  t.is((await pixel(100, 105))[3], 0, 'inside a box: the image shows through')
  t.is((await pixel(10, 230))[3], 0, 'outside: nothing drawn')
  t.regex(await text(page, '#objects'), /cat: 120 × 90 at \(40, 60\).*dog: 100 × 120 at \(200, 100\)/s)
  // Hovering a box highlights its row.
  const box = await (await page.$('#overlay')).boundingBox()
  await page.mouse.move(box.x + (250 / 320) * box.width, box.y + (160 / 240) * box.height)
  await page.waitForFunction(() => document.querySelectorAll('#objects li')[1].classList.contains('active'))
  t.pass('the dog row lit up')
  await page.screenshot({ path: join(shots, 'detect.png'), fullPage: true })
  // A segmentation: a 60 × 40 rectangle mask inside its box, 45 % opaque.
  const data = new Uint8Array(320 * 240)
  for (let y = 80; y < 120; y++) for (let x = 60; x < 120; x++) data[y * 320 + x] = 255
  const segmented = { segmentations: [{ label: 'cat', box: { x: 50, y: 70, width: 80, height: 60 }, box1024: [0, 0, 0, 0], segIndices: null, mask: maskToRle({ width: 320, height: 240, data }) }] }
  await page.evaluate(async (result) => (await import('/ui/app.js')).showObjects(result), segmented)
  const inMask = await pixel(90, 100)
  // A canvas stores premultiplied alpha, so a translucent colour reads back within a level or two.
  inMask.slice(0, 3).forEach((v, i) => t.true(Math.abs(v - [0xe6, 0x19, 0x4b][i]) <= 2, `mask channel ${i}: ${v}`))
  t.true(inMask[3] > 100 && inMask[3] < 130, `the mask is translucent (alpha ${inMask[3]})`)
  t.is((await pixel(125, 125))[3], 0, 'inside the box but outside the mask')
  await page.screenshot({ path: join(shots, 'segment.png'), fullPage: true })
  // The picture for the README: a photo with a known detection drawn.
  await runTask(page, { task: 'detect', labels: 'eye ; nose', maxTokens: 16, image: join(repo, 'testdata', 'processor', 'chelsea.png') })
  await finished(page)
  const eyes = {
    detections: [
      { label: 'eye', box: { x: 133, y: 84, width: 78, height: 64 }, box1024: [0, 0, 0, 0] },
      { label: 'eye', box: { x: 292, y: 106, width: 54, height: 58 }, box1024: [0, 0, 0, 0] },
      { label: 'nose', box: { x: 234, y: 222, width: 62, height: 46 }, box1024: [0, 0, 0, 0] },
    ],
  }
  await page.evaluate(async (result) => (await import('/ui/app.js')).showObjects(result), eyes)
  await page.screenshot({ path: join(shots, 'readme.png'), fullPage: true })
  t.deepEqual(problems, [])
  await page.close()
})

test.serial('a server with an API key: the page asks for it, and works once it is given', async (t) => {
  const { locked } = await ready
  const { page } = await open(`${locked.url}/`)
  t.regex(await text(page, '#model-info'), /needs an API key/)
  await page.$eval('details', (d) => (d.open = true))
  await page.type('#api-key', 'sesame')
  await page.$eval('#api-key', (e) => e.dispatchEvent(new Event('change')))
  await page.waitForFunction((id) => document.getElementById('model-info').textContent.includes(id), {}, modelId)
  await runTask(page, { maxTokens: 4 })
  await finished(page)
  t.true(await page.$eval('#error', (e) => e.hidden), await text(page, '#error'))
  t.true((await text(page, '#answer')).length > 0)
  await page.close()
})

test.serial('--no-ui leaves / unanswered', async (t) => {
  const { model } = await ready
  const bare = await serve(model, { modelId, port: 0, ui: false })
  try {
    t.is((await fetch(`${bare.url}/`)).status, 404)
    t.is((await fetch(`${bare.url}/ui/app.js`)).status, 404)
  } finally {
    await bare.close(0)
  }
})
