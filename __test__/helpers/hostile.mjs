// Shared by the hostile-input specs (issue 9): the fixture they all use, its known-good
// request, and the check that a model still serves it after a bad input.
import { fixture } from './fixtures.mjs'

/** pg1-tiny-a: image_token_index 500, vocab 512, 512 positions, 16 image tokens. */
export const f = fixture('pg1-tiny-a')
/** The fixture's prompt and pixels, without generation options. */
export const base = { inputIds: f.inputIds, pixelValues: f.pixelValues }
/** A request whose greedy ids are the recorded ones (`f.generatedIds`). */
export const good = { ...base, maxNewTokens: 12 }
/** The image token id of pg1-tiny-a. */
export const IMAGE = 500

/** The model still gives the recorded greedy tokens. */
export async function stillServes(t, model) {
  const result = await model.generate(good)
  t.deepEqual(result.tokenIds, f.generatedIds, 'the model still serves a good request')
}
