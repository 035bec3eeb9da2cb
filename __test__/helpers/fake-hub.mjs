// A local stand-in for the Hugging Face hub, on 127.0.0.1, answering the way the real one does:
//
// - `HEAD|GET /<owner>/<name>/resolve/<rev>/<file>` with `X-Repo-Commit` and `ETag` (the git blob
//   sha1) for small files; for LFS files a 302 to a separate storage server (another origin, like
//   the hub's CDN) with `X-Linked-Etag` (the sha256) and `X-Linked-Size`.
// - 401 (no token) / 403 (token without access) with `X-Error-Code: GatedRepo` for gated repos,
//   401 `RepoNotFound` for unknown repos, 404 `EntryNotFound` / `RevisionNotFound`.
// - The storage server honours `Range` (206 + Content-Range), and can drop the connection half-way
//   through a file once, or serve corrupted bytes.
//
// Every request is logged as `{ server, method, path, range, authorization }`.
import { createHash } from 'node:crypto'
import { createServer } from 'node:http'

export const sha256 = (bytes) => createHash('sha256').update(bytes).digest('hex')
export const gitSha1 = (bytes) => createHash('sha1').update(`blob ${bytes.length}\0`).update(bytes).digest('hex')

/**
 * @typedef {object} RepoSpec
 * @property {Record<string, Buffer>} files   path → bytes
 * @property {string[]} [lfs]                 paths served through LFS (default: *.safetensors)
 * @property {string} [token]                 a gated repo: only this token gets in
 * @property {string[]} [dropOnce]            LFS paths whose first full GET breaks half-way
 * @property {string[]} [corrupt]             LFS paths served with one byte flipped
 */

function listen(server) {
  return new Promise((resolve, reject) => {
    server.once('error', reject)
    server.listen(0, '127.0.0.1', () => resolve(`http://127.0.0.1:${server.address().port}`))
  })
}

/** Starts the hub and its storage server. `repos`: id → RepoSpec. */
export async function startFakeHub(repos) {
  const log = []
  const blobs = new Map() // `<repo>/<sha256>` → { bytes, path, repo }
  const dropped = new Set()
  const state = new Map()
  for (const [id, spec] of Object.entries(repos)) {
    const commit = createHash('sha1').update(`commit:${id}`).digest('hex')
    const lfs = new Set(spec.lfs ?? Object.keys(spec.files).filter((f) => f.endsWith('.safetensors')))
    state.set(id, { ...spec, commit, lfs })
    for (const [path, bytes] of Object.entries(spec.files)) {
      if (lfs.has(path)) blobs.set(`${encodeURIComponent(id)}/${sha256(bytes)}`, { bytes, path, repo: id })
    }
  }
  const sockets = new Set()
  const track = (server) => server.on('connection', (socket) => {
    sockets.add(socket)
    socket.on('close', () => sockets.delete(socket))
  })

  const storage = createServer((req, res) => {
    const url = new URL(req.url, 'http://x')
    log.push({ server: 'storage', method: req.method, path: url.pathname, range: req.headers.range, authorization: req.headers.authorization })
    const blob = blobs.get(url.pathname.replace(/^\/lfs\//, ''))
    if (!blob) {
      res.writeHead(404).end()
      return
    }
    const spec = state.get(blob.repo)
    let bytes = blob.bytes
    if (spec.corrupt?.includes(blob.path)) {
      bytes = Buffer.from(bytes)
      bytes[bytes.length >> 1] ^= 0xff
    }
    const range = /^bytes=(\d+)-$/.exec(req.headers.range ?? '')
    if (range) {
      const start = Number(range[1])
      if (start >= bytes.length) {
        res.writeHead(416, { 'content-range': `bytes */${bytes.length}` }).end()
        return
      }
      res.writeHead(206, {
        'content-length': bytes.length - start,
        'content-range': `bytes ${start}-${bytes.length - 1}/${bytes.length}`,
        'accept-ranges': 'bytes',
      })
      res.end(req.method === 'HEAD' ? undefined : bytes.subarray(start))
      return
    }
    res.writeHead(200, { 'content-length': bytes.length, 'accept-ranges': 'bytes' })
    if (req.method === 'HEAD') {
      res.end()
      return
    }
    const key = `${blob.repo}/${blob.path}`
    if (spec.dropOnce?.includes(blob.path) && !dropped.has(key)) {
      dropped.add(key)
      // Half the file, then the connection breaks.
      res.write(bytes.subarray(0, bytes.length >> 1), () => setTimeout(() => res.socket?.destroy(), 20))
      return
    }
    res.end(bytes)
  })
  track(storage)
  const storageUrl = await listen(storage)

  const hub = createServer((req, res) => {
    const url = new URL(req.url, 'http://x')
    log.push({ server: 'hub', method: req.method, path: url.pathname, range: req.headers.range, authorization: req.headers.authorization })
    const match = /^\/([^/]+\/[^/]+)\/resolve\/([^/]+)\/(.+)$/.exec(url.pathname)
    if (!match) {
      res.writeHead(404).end()
      return
    }
    const [, id, rev, rawPath] = match
    const path = decodeURIComponent(rawPath)
    const spec = state.get(id)
    const error = (status, code, message) => {
      res.writeHead(status, { 'x-error-code': code, 'x-error-message': message, 'content-type': 'text/plain' })
      res.end(req.method === 'HEAD' ? undefined : message)
    }
    if (!spec) return error(401, 'RepoNotFound', 'Repository Not Found for url: ' + url.pathname + '.')
    if (spec.token !== undefined) {
      const auth = req.headers.authorization
      if (!auth) return error(401, 'GatedRepo', `Access to model ${id} is restricted. You must have access to it and be authenticated to access it. Please log in.`)
      if (auth !== `Bearer ${spec.token}`) return error(403, 'GatedRepo', `Access to model ${id} is restricted and you are not in the authorized list. Visit https://huggingface.co/${id} to ask for access.`)
    }
    if (rev !== 'main' && rev !== spec.commit) return error(404, 'RevisionNotFound', `Invalid rev id: ${rev}`)
    const bytes = spec.files[path]
    if (!bytes) return error(404, 'EntryNotFound', `${path} does not exist on "${rev}"`)
    if (spec.lfs.has(path)) {
      const oid = sha256(bytes)
      const pointer = Buffer.from(`version https://git-lfs.github.com/spec/v1\noid sha256:${oid}\nsize ${bytes.length}\n`)
      res.writeHead(302, {
        location: `${storageUrl}/lfs/${encodeURIComponent(id)}/${oid}?X-Amz-Signature=fake`,
        'x-repo-commit': spec.commit,
        etag: `"${gitSha1(pointer)}"`,
        'x-linked-etag': `"${oid}"`,
        'x-linked-size': String(bytes.length),
        'content-length': '0',
      })
      res.end()
      return
    }
    res.writeHead(200, {
      'content-length': bytes.length,
      'x-repo-commit': spec.commit,
      etag: `"${gitSha1(bytes)}"`,
      'content-type': 'application/octet-stream',
    })
    res.end(req.method === 'HEAD' ? undefined : bytes)
  })
  track(hub)
  const url = await listen(hub)

  return {
    url,
    storageUrl,
    log,
    commitOf: (id) => state.get(id)?.commit,
    /** Requests that fetched bytes from storage (GETs). */
    downloads: () => log.filter((r) => r.server === 'storage' && r.method === 'GET'),
    async close() {
      for (const socket of sockets) socket.destroy()
      await Promise.all([new Promise((r) => hub.close(r)), new Promise((r) => storage.close(r))])
    },
  }
}
