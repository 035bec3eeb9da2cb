/**
 * The page at `/`: static files (`src/serve/ui/`, copied to `dist/src/serve/ui/` by the build and
 * shipped there) that talk to the server's own public routes. Read once when the server starts;
 * served without the API key (the page asks for it), under a content security policy that
 * allows this origin only.
 *
 * @packageDocumentation
 * @internal
 */

import { readFileSync } from 'node:fs'
import type { ServerResponse } from 'node:http'
import { fileURLToPath } from 'node:url'

import { PaliGemmaError } from '../errors.js'

/** URL path → file in `src/serve/ui/`, and its media type. */
const FILES: Record<string, [string, string]> = {
  '/': ['index.html', 'text/html; charset=utf-8'],
  '/ui/app.js': ['app.js', 'text/javascript; charset=utf-8'],
  '/ui/draw.js': ['draw.js', 'text/javascript; charset=utf-8'],
  '/ui/style.css': ['style.css', 'text/css; charset=utf-8'],
}

const HEADERS = {
  'content-security-policy': "default-src 'self'; img-src 'self' data: blob:; media-src 'self' blob:; style-src 'self'; script-src 'self'; connect-src 'self'; frame-ancestors 'none'",
  'x-content-type-options': 'nosniff',
  'referrer-policy': 'no-referrer',
  'cache-control': 'no-cache',
}

/** The page's files by URL path, each a handler that sends it. */
export function uiFiles(): Record<string, (res: ServerResponse) => void> {
  // Beside this module: dist/src/serve/ui/ (npm run build:ts copies them there).
  const folder = new URL('./ui/', import.meta.url)
  return Object.fromEntries(
    Object.entries(FILES).map(([path, [file, type]]) => {
      let body: Buffer
      try {
        body = readFileSync(new URL(file, folder))
      } catch (error) {
        // Only a broken install or a build without `npm run build:ts` lacks them.
        throw new PaliGemmaError('ERR_INTERNAL', `the page's file ${file} is missing from ${fileURLToPath(folder)} (${(error as Error).message}); rebuild with \`npm run build:ts\`, or serve with --no-ui`)
      }
      return [path, (res: ServerResponse) => void res.writeHead(200, { 'content-type': type, 'content-length': body.length, ...HEADERS }).end(body)]
    }),
  )
}
