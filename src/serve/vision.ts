/**
 * `POST /v1/detect` and `POST /v1/segment`: PaliGemma's structured tasks as plain JSON, for
 * clients that want boxes and masks rather than a chat message.
 *
 * @packageDocumentation
 * @internal
 */

import type { IncomingMessage, ServerResponse } from 'node:http'

import { taskPrompt } from '../tasks.js'

import { optionalNumber, sampling, start, structured } from './generation.js'
import type { Generation, RouteContext } from './generation.js'
import { HttpError } from './http.js'
import { imageField } from './images.js'
import { checkModel, usage } from './openai.js'

async function run(task: 'detect' | 'segment', body: Record<string, unknown>, ctx: RouteContext, req: IncomingMessage, res: ServerResponse) {
  checkModel(body, ctx)
  // The library's prompt builder checks the labels: its ERR_INVALID_ARGUMENT names `labels`,
  // which toHttpError turns into a 400 with that param.
  const prompt = taskPrompt[task](body.labels as string | string[])
  const generation: Generation = {
    image: await imageField(body.image, 'image', ctx.remoteImages),
    prompt,
    sampling: sampling({ maxNewTokens: optionalNumber(body.max_tokens, 'max_tokens'), temperature: optionalNumber(body.temperature, 'temperature'), seed: optionalNumber(body.seed, 'seed') }),
  }
  const result = await start(ctx, generation, req, res).result
  return { result, extra: await structured(prompt, result, ctx) }
}

/**
 * `POST /v1/detect`: `{ image, labels, max_tokens?, temperature?, seed? }` →
 * `{ model, detections, text, usage }`. `image` is a data URL, bare base64 or (when allowed) a
 * remote URL.
 */
export async function detect(body: Record<string, unknown>, ctx: RouteContext, req: IncomingMessage, res: ServerResponse): Promise<unknown> {
  const { result, extra } = await run('detect', body, ctx, req, res)
  return { model: ctx.modelId, detections: extra && 'detections' in extra ? extra.detections : [], text: result.text, usage: usage(result) }
}

/**
 * `POST /v1/segment`: as {@link detect}, → `{ model, segmentations, text, usage }` with each
 * mask as COCO RLE at the image's size. Needs the mask decoder (`--vae`): 501 without it.
 */
export async function segment(body: Record<string, unknown>, ctx: RouteContext, req: IncomingMessage, res: ServerResponse): Promise<unknown> {
  if (ctx.vaePath === undefined) {
    throw new HttpError(501, 'this server has no mask decoder: start it with --vae <vae-oid.safetensors> (or PALIGEMMA_VAE) to serve /v1/segment', { code: 'vae_not_configured' })
  }
  const { result, extra } = await run('segment', body, ctx, req, res)
  return { model: ctx.modelId, segmentations: extra && 'segmentations' in extra ? extra.segmentations : [], text: result.text, usage: usage(result) }
}
