// The page of `paligemma serve`: an image, a task, the answer streamed from the server's own
// OpenAI-compatible route, and the boxes and masks drawn over the image.
import { drawAnnotations, objectAt, objectsOf } from './draw.js'

const $ = (id) => document.getElementById(id)
const state = { image: undefined, objects: [], highlight: -1, controller: undefined }

// ---------------------------------------------------------------------------------------------
// The server

function headers() {
  const key = $('api-key').value.trim()
  return { 'content-type': 'application/json', ...(key ? { authorization: `Bearer ${key}` } : {}) }
}

/** Plain words for an error response. */
async function describeFailure(response) {
  let message = `HTTP ${response.status}`
  try {
    const body = await response.json()
    message = body.error?.message ?? body.error ?? message
  } catch {}
  if (response.status === 401) return 'The server needs its API key: enter it under Advanced.'
  if (response.status === 413) return `The image is too large for this server. (${message})`
  if (response.status === 429 || response.status === 503) return `The server is busy; try again in a moment. (${message})`
  if (response.status >= 500) return `The server failed: ${message}`
  return `The server refused the request: ${message}`
}

async function loadInfo() {
  try {
    const response = await fetch('/v1/models', { headers: headers() })
    if (!response.ok) {
      $('model-info').textContent = response.status === 401 ? 'This server needs an API key (Advanced → API key).' : await describeFailure(response)
      return
    }
    const { data } = await response.json()
    $('model-info').textContent = `Model: ${data.map((m) => m.id).join(', ')}`
  } catch (error) {
    $('model-info').textContent = `Cannot reach the server: ${error.message}`
  }
}

// ---------------------------------------------------------------------------------------------
// The image

function setImage(blob) {
  if (!blob || !/^image\//.test(blob.type || 'image/')) return showError('That is not an image file.')
  $('image-size').textContent = 'Reading the image…'
  const reader = new FileReader()
  reader.onload = () => {
    state.image = reader.result
    const preview = $('preview')
    preview.src = state.image
    preview.hidden = false
    preview.onload = () => ($('image-size').textContent = `${preview.naturalWidth} × ${preview.naturalHeight} pixels`)
    preview.onerror = () => {
      preview.hidden = true
      $('image-size').textContent = 'This browser cannot show that file; the server will say whether it can read it.'
    }
    clearResult()
  }
  reader.onerror = () => showError('The image could not be read.')
  reader.readAsDataURL(blob)
}

function wireImageInputs() {
  const drop = $('drop')
  $('file').addEventListener('change', (e) => e.target.files[0] && setImage(e.target.files[0]))
  drop.addEventListener('dragover', (e) => {
    e.preventDefault()
    drop.classList.add('over')
  })
  drop.addEventListener('dragleave', () => drop.classList.remove('over'))
  drop.addEventListener('drop', (e) => {
    e.preventDefault()
    drop.classList.remove('over')
    const file = [...e.dataTransfer.files].find((f) => f.type.startsWith('image/'))
    file ? setImage(file) : showError('Drop an image file (PNG, JPEG, WebP, GIF or BMP).')
  })
  drop.addEventListener('keydown', (e) => (e.key === 'Enter' || e.key === ' ') && (e.preventDefault(), $('file').click()))
  document.addEventListener('paste', (e) => {
    const item = [...e.clipboardData.items].find((i) => i.type.startsWith('image/'))
    if (item) setImage(item.getAsFile())
  })
  if (navigator.mediaDevices?.getUserMedia) {
    $('camera').hidden = false
    $('camera').addEventListener('click', async () => {
      try {
        const stream = await navigator.mediaDevices.getUserMedia({ video: true })
        $('video').srcObject = stream
        $('camera-panel').hidden = false
      } catch (error) {
        showError(`The camera is not available: ${error.message}`)
      }
    })
    $('snap').addEventListener('click', () => {
      const video = $('video')
      const canvas = document.createElement('canvas')
      canvas.width = video.videoWidth
      canvas.height = video.videoHeight
      canvas.getContext('2d').drawImage(video, 0, 0)
      canvas.toBlob((blob) => setImage(blob), 'image/png')
      video.srcObject?.getTracks().forEach((t) => t.stop())
      $('camera-panel').hidden = true
    })
  }
}

// ---------------------------------------------------------------------------------------------
// The task

function showTaskFields() {
  const task = $('task').value
  for (const row of document.querySelectorAll('[data-for]')) row.hidden = !row.dataset.for.split(' ').includes(task)
}

/** PaliGemma's prompt for the chosen task, or an error message. */
export function taskPrompt() {
  const task = $('task').value
  const lang = $('lang').value.trim() || 'en'
  const need = (id, what) => {
    const value = $(id).value.trim()
    if (!value) throw new Error(`Enter ${what}.`)
    return value
  }
  switch (task) {
    case 'caption':
      return `caption ${lang}`
    case 'ask':
      return `answer ${lang} ${need('question', 'a question')}`
    case 'ocr':
      return 'ocr'
    case 'detect':
    case 'segment':
      return `${task} ${need('labels', 'the labels to look for, e.g. cat ; dog')}`
    default:
      return need('prompt', 'a prompt')
  }
}

// ---------------------------------------------------------------------------------------------
// Running

function showError(message) {
  $('error').textContent = message
  $('error').hidden = false
}

function clearResult() {
  $('error').hidden = true
  $('answer').textContent = ''
  $('timings').textContent = ''
  showObjects(undefined)
}

function running(on) {
  $('run').disabled = on
  $('stop').disabled = !on
}

async function run(event) {
  event.preventDefault()
  clearResult()
  if (!state.image) return showError('Choose an image first.')
  let prompt
  try {
    prompt = taskPrompt()
  } catch (error) {
    return showError(error.message)
  }
  const number = (id) => ($(id).value === '' ? undefined : Number($(id).value))
  const body = {
    stream: true,
    stream_options: { include_usage: true },
    max_tokens: number('max-tokens'),
    temperature: number('temperature'),
    seed: number('seed'),
    messages: [{ role: 'user', content: [{ type: 'text', text: prompt }, { type: 'image_url', image_url: { url: state.image } }] }],
  }
  state.controller = new AbortController()
  running(true)
  $('picture').src = state.image
  const started = performance.now()
  let firstToken
  try {
    const response = await fetch('/v1/chat/completions', { method: 'POST', headers: headers(), body: JSON.stringify(body), signal: state.controller.signal })
    if (!response.ok) return showError(await describeFailure(response))
    const reader = response.body.pipeThrough(new TextDecoderStream()).getReader()
    let buffered = ''
    for (;;) {
      const { value, done } = await reader.read()
      if (done) break
      buffered += value
      let cut
      while ((cut = buffered.indexOf('\n\n')) >= 0) {
        const event = buffered.slice(0, cut)
        buffered = buffered.slice(cut + 2)
        const data = event.split('\n').filter((l) => l.startsWith('data: ')).map((l) => l.slice(6)).join('')
        if (!data || data === '[DONE]') continue
        const chunk = JSON.parse(data)
        if (chunk.error) return showError(`The generation failed: ${chunk.error.message}`)
        const delta = chunk.choices?.[0]?.delta
        if (delta?.content) {
          firstToken ??= performance.now()
          $('answer').textContent += delta.content
        }
        if (delta?.paligemma) showObjects(delta.paligemma)
        if (chunk.timings) showTimings(chunk.timings, firstToken ? firstToken - started : undefined)
      }
    }
  } catch (error) {
    if (error.name === 'AbortError') $('timings').textContent = 'Stopped.'
    else showError(`Cannot reach the server: ${error.message}`)
  } finally {
    running(false)
    state.controller = undefined
  }
}

function showTimings(t, clientTtftMs) {
  const ttft = t.queuedMs + t.prefillMs
  const parts = [`time to first token ${(ttft / 1000).toFixed(2)} s`, `${t.tokensPerSecond.toFixed(1)} tokens/s`, `${t.generatedTokens} tokens`]
  if (t.batchSize > 1) parts.push(`shared the decode with up to ${t.batchSize - 1} other requests`)
  if (clientTtftMs !== undefined) parts.push(`first token here after ${(clientTtftMs / 1000).toFixed(2)} s`)
  $('timings').textContent = parts.join(' · ')
}

// ---------------------------------------------------------------------------------------------
// Boxes and masks

/** Draws detections or segmentations (`message.paligemma`) over the picture and lists them. */
export function showObjects(structured) {
  state.objects = objectsOf(structured)
  state.highlight = -1
  const list = $('objects')
  list.replaceChildren()
  const picture = $('picture')
  const canvas = $('overlay')
  if (state.objects.length === 0) {
    canvas.width = 0
    if (structured) list.append(Object.assign(document.createElement('li'), { textContent: 'Nothing found.' }))
    picture.hidden = !structured
    return Promise.resolve()
  }
  state.objects.forEach((o, i) => {
    const item = document.createElement('li')
    item.tabIndex = 0
    item.style.setProperty('--swatch', o.colour)
    const { x, y, width, height } = o.box
    item.textContent = `${o.label || '?'}: ${width} × ${height} at (${x}, ${y})${o.mask === null && structured.segmentations ? ', no mask' : ''}`
    for (const type of ['mouseenter', 'focus']) item.addEventListener(type, () => highlight(i))
    for (const type of ['mouseleave', 'blur']) item.addEventListener(type, () => highlight(-1))
    list.append(item)
  })
  picture.hidden = false
  const draw = () => {
    canvas.width = picture.naturalWidth
    canvas.height = picture.naturalHeight
    drawAnnotations(canvas, state.objects, state.highlight)
  }
  return picture.complete && picture.naturalWidth ? Promise.resolve(draw()) : new Promise((resolve) => picture.addEventListener('load', () => resolve(draw()), { once: true }))
}

function highlight(index) {
  if (index === state.highlight) return
  state.highlight = index
  drawAnnotations($('overlay'), state.objects, index)
  ;[...$('objects').children].forEach((li, i) => li.classList.toggle('active', i === index))
}

function wireOverlay() {
  const canvas = $('overlay')
  canvas.addEventListener('mousemove', (e) => {
    const rect = canvas.getBoundingClientRect()
    const x = ((e.clientX - rect.left) / rect.width) * canvas.width
    const y = ((e.clientY - rect.top) / rect.height) * canvas.height
    highlight(objectAt(state.objects, x, y))
  })
  canvas.addEventListener('mouseleave', () => highlight(-1))
}

// ---------------------------------------------------------------------------------------------

$('task').addEventListener('change', showTaskFields)
$('form').addEventListener('submit', run)
$('stop').addEventListener('click', () => state.controller?.abort())
$('api-key').addEventListener('change', loadInfo)
wireImageInputs()
wireOverlay()
showTaskFields()
loadInfo()
