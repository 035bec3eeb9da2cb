/**
 * Public option and result types.
 *
 * @packageDocumentation
 */

/** Where a model runs. `'auto'` picks a GPU when this build has one and it is usable, else the CPU. */
export type DeviceKind = 'auto' | 'cpu' | 'cuda'

/**
 * Compute precision of the weights and activations.
 *
 * - `'f32'`: the CPU default and the reference precision (logits within 1e-4 of transformers).
 * - `'bf16'`, `'f16'`: half the weight memory; `'bf16'` is the CUDA default. On the CPU, `'bf16'`
 *   holds the vision tower's, decoder's and LM head's matrices in bf16 and multiplies them with
 *   AVX512-BF16 (f32 activations, norms, attention and KV cache): PaliGemma-3B-224 on 2 cores
 *   decodes about 2× faster than f32 (138–141 ms/token), gives the first token in 0.6× the
 *   time, holds half the memory, and a request's outputs do not depend on what shares its batch.
 *   It tracks f32 within a logit cosine of 0.9995 on the test fixtures, with the reference's bf16
 *   greedy ids. CPUs without AVX512-BF16 run `'bf16'` as f32. `'f16'` on the CPU is candle's.
 * - `'q8_0'`, `'q4k'` (CPU only): the text decoder's matrices and LM head are quantized to GGML
 *   Q8_0 (8.5 bits per weight) or Q4_K (4.5 bits) while the model loads (or not at all, from a
 *   folder made once by `paligemma quantize`: docs/prepared.md); the vision tower and embeddings
 *   stay f32 (see {@link LoadOptions.visionDtype}). Decoding reads 4× or 7× fewer bytes per
 *   token. On CPUs with AVX-512 VNNI both run on int8 kernels of our own that also take the
 *   prompt in int8: PaliGemma-3B-224 on 2 cores gives the first token in about half the f32 time
 *   and decodes at 84–89 ms/token in `'q8_0'` (at the memory's bandwidth), 62–64 in `'q4k'`; like
 *   f32 a request's outputs do not depend on what shares its batch (docs/guarantees.md). Q8_0
 *   tracks f32 closely (logit cosine ≥ 0.999 and top-1 agreement ≥ 0.9 on the test fixture);
 *   Q4_K is coarser. On a GPU these reject with `ERR_INVALID_ARGUMENT`.
 */
export type DType = 'f32' | 'f16' | 'bf16' | 'q8_0' | 'q4k'

export type { LoadOptions, LoadPhase, LoadProgress, ModelInfo } from './load-types.js'

/** Input of {@link PaliGemma.forward}. */
export interface ForwardInput {
  /** Token ids of the whole prompt, with exactly `info.imageTokens` image tokens. */
  inputIds: ArrayLike<number>
  /** The image, normalised, channel-major (CHW), `3 × imageSize × imageSize` values. */
  pixelValues: Float32Array
  /**
   * Which positions get logits: `'all'` (the default), `'last'`, or a list of prompt positions
   * (returned in that order). The LM head then runs on those rows only. The logits must fit in
   * 2 GiB (PaliGemma: 2 087 positions); more is refused with `ERR_INVALID_ARGUMENT`.
   */
  positions?: 'all' | 'last' | readonly number[]
  /** Cancels the call; it then rejects with an `AbortError`. */
  signal?: AbortSignal
}

/** Output of {@link PaliGemma.forward}. */
export interface ForwardOutput {
  /** Row-major `[rows, vocab]` logits, float32: one row per requested position. */
  logits: Float32Array
  /** `[rows, vocab]`: `rows` is the prompt length, 1 for `'last'`, or the number of positions asked for. */
  dims: [number, number]
}

/**
 * Sampling and stopping options, accepted by every generation request.
 *
 * Sampling runs natively on the logits, in transformers' order (repetition penalty,
 * temperature, top-k, top-p), and only token ids cross into JS.
 */
export interface SamplingOptions {
  /** Most tokens to generate (an integer ≥ 1). Default: 256, or what fits in the context. */
  maxNewTokens?: number
  /** 0 (the default) is greedy decoding; larger values flatten the distribution. */
  temperature?: number
  /** Keep only the `topK` most likely tokens (an integer ≥ 0); 0 (the default) disables. */
  topK?: number
  /** Keep the smallest set of tokens whose probability reaches `topP`, in (0, 1]; 1 (the default) disables. */
  topP?: number
  /** > 1 discourages tokens already in the sequence, prompt included; 1 (the default) disables. */
  repetitionPenalty?: number
  /**
   * Seed of the sampler, an integer in [0, 2^53 − 1]. The same seed, request and model give the
   * same tokens. Default: a fresh random seed per request (from `crypto.getRandomValues`),
   * reported back as `result.seed`. Irrelevant for greedy decoding.
   */
  seed?: number
  /**
   * Generation stops when the text contains one of these strings; the stop string is not part of
   * the output text (its tokens are part of `tokenIds`). Needs the model's tokenizer
   * (`info.hasTokenizer`); without one, a non-empty `stop` is `ERR_INVALID_ARGUMENT`.
   */
  stop?: readonly string[]
  /**
   * PaliGemma 2 only: apply Gemma 2's sliding window (4096 positions on its even layers) as
   * transformers 5.x does. Default `false`: full attention, as big_vision does. The two differ
   * only beyond 4096 tokens (the 896 px checkpoints); see the README's fidelity notes.
   */
  slidingWindow?: boolean
  /**
   * Cancels the request: a queued request is removed without running, a running one stops
   * before its next decode step. The call then rejects (or the stream throws) with an `AbortError`.
   */
  signal?: AbortSignal
}

/**
 * A pre-tokenized request: prompt token ids plus the preprocessed image. Build `inputIds` as
 * `[<image>] × info.imageTokens + <bos> + tokens(prompt + "\n")`.
 */
export interface TokenizedRequest extends SamplingOptions {
  /** Token ids of the whole prompt, with exactly `info.imageTokens` image tokens. */
  inputIds: ArrayLike<number>
  /** The image, normalised, channel-major (CHW), `3 × imageSize × imageSize` values. */
  pixelValues: Float32Array
}

/**
 * A generation request from an image and a prompt; the model's `tokenizer.json` is required.
 * The image is decoded and resized to `info.imageSize` natively, on the model's worker (in queue
 * order, off the JS thread), and the prompt ids are built as
 * `[<image>] × info.imageTokens + <bos> + tokens(prompt + "\n")`. Special-token literals in
 * `prompt` (`<image>`, `<bos>`) are plain text; `<loc####>`/`<seg###>` are recognised.
 */
export interface ImageRequest extends SamplingOptions, ImageOptions {
  /** The image: a path, encoded bytes or raw pixels. */
  image: ImageInput
  /** The text prompt without the trailing newline, e.g. `'caption en'` (see `taskPrompt`). */
  prompt: string
}

/** A generation request: pre-tokenized ({@link TokenizedRequest}) or from an image and a prompt ({@link ImageRequest}). */
export type GenerateRequest = TokenizedRequest | ImageRequest

/**
 * Why generation ended: an EOS token (not included in the output), `maxNewTokens` reached, a
 * stop string, or — only in a stream's `result` after the consumer stopped iterating early —
 * abandoned.
 */
export type FinishReason = 'eos' | 'length' | 'stop' | 'abort'

/** Durations (milliseconds) and counts of one generation. */
export interface Timings {
  /** Time spent waiting in the model's queue until the request was admitted to the batch. */
  queuedMs: number
  /**
   * The most requests that shared one of this request's decode steps (1 when it ran alone or
   * needed no decode step).
   */
  batchSize: number
  /**
   * Vision tower and prompt prefill, from admission up to choosing the first token (with
   * `queuedMs`, the time to first token). When other requests are running, the prefill runs in
   * stages between their decode steps, and those steps are included.
   */
  prefillMs: number
  /** All decode steps after the first token. */
  decodeMs: number
  /** Decoder steps run after prefill: `generatedTokens − 1`, or `generatedTokens` when EOS ended the run. */
  decodeSteps: number
  /** Decode speed: `decodeSteps / (decodeMs / 1000)`, i.e. tokens per second after the first; 0 when nothing was decoded. */
  tokensPerSecond: number
  /** Prompt length in tokens (image tokens included). */
  promptTokens: number
  /** Tokens generated (EOS excluded). */
  generatedTokens: number
  /**
   * Whether decode steps were replayed from a captured CUDA graph (one launch per token), the
   * CUDA default: a request's first decode step warms up and its second captures the graph,
   * unless an earlier request of the same batch size and length bucket left one behind.
   * `false` on the CPU, for requests too short to capture, and where capture failed (decoding
   * then runs kernel by kernel, with the same results). `PALIGEMMA_STEP_MODE=eager` turns graphs
   * off.
   */
  decodeGraph: boolean
}

/** The result of a generation. */
export interface GenerateResult {
  /** Decoded text of the generated tokens, stop string excluded; `''` without a tokenizer. */
  text: string
  /** Generated token ids (EOS excluded). */
  tokenIds: number[]
  /** Why generation ended. */
  finishReason: FinishReason
  /** The seed the sampler used (the given one, or the random default). */
  seed: number
  /** Durations and counts. */
  timings: Timings
  /**
   * {@link ImageRequest}s only (absent when a stream ended with `'abort'`): the prompt ids the
   * model saw, image tokens included.
   */
  promptIds?: number[]
  /** {@link ImageRequest}s only: the size of the decoded image before resizing. */
  image?: ImageSize
}

/** One generated token, as yielded by {@link PaliGemma.stream}. */
export interface StreamChunk {
  /** The token id. */
  tokenId: number
  /**
   * Text this token completes: may be empty (part of a multi-byte character, a special token,
   * text that may become a stop string, or no tokenizer). The chunks' texts concatenate to the
   * result's `text`, except for text held back at the very end (an unfinished character or a
   * partial stop-string match), which only `result.text` has.
   */
  text: string
  /** Position of the token among the generated ones, from 0. */
  index: number
}

/** Width and height in pixels. */
export interface ImageSize {
  /** Width in pixels. */
  width: number
  /** Height in pixels. */
  height: number
}

/**
 * Raw 8-bit pixels, interleaved, rows top to bottom (e.g. from `sharp(...).raw()` or a canvas's
 * `ImageData`).
 */
export interface RawImage {
  /** `width × height × channels` bytes. */
  data: Uint8Array | Uint8ClampedArray
  /** Width in pixels. */
  width: number
  /** Height in pixels. */
  height: number
  /** 1 = grey, 3 = RGB, 4 = RGBA (the alpha channel is dropped, not composited onto a background). */
  channels: 1 | 3 | 4
}

/**
 * An image: a file path, the bytes of an encoded file (a `Buffer` is a `Uint8Array`), or raw
 * pixels. Encoded files may be JPEG, PNG, WebP, GIF (first frame) or BMP, recognised by content.
 * Colour handling is Pillow's `convert('RGB')`, like the reference processor: grey is replicated,
 * palettes are expanded and **alpha is dropped without compositing** (transparent pixels show
 * their stored colour, often black); 16-bit samples keep their high byte.
 */
export type ImageInput = string | Uint8Array | RawImage

/** How images are decoded. */
export interface ImageOptions {
  /**
   * Rotate/flip images that carry an EXIF orientation tag as it says. Default `false`, like
   * the reference processor (which ignores EXIF, so the released checkpoints saw images as stored).
   */
  applyExifOrientation?: boolean
  /**
   * Largest accepted `width × height`, checked against the file header before any pixel is
   * decoded. Default 100 000 000 (100 megapixels); larger images are `ERR_INVALID_IMAGE`.
   */
  maxPixels?: number
}

/** What the vision tower consumes, plus the original size. */
export interface PreprocessedImage {
  /** `3 × size × size` float32 values in [−1, 1], channel-major (CHW), RGB. */
  pixelValues: Float32Array
  /** Width of the decoded image before resizing. */
  width: number
  /** Height of the decoded image before resizing. */
  height: number
}

/** An axis-aligned box in pixels of the original image. */
export interface BoundingBox {
  /** Left edge. */
  x: number
  /** Top edge. */
  y: number
  /** Width (right edge = `x + width`, exclusive). */
  width: number
  /** Height (bottom edge = `y + height`, exclusive). */
  height: number
}

/** One detected object. */
export interface Detection {
  /** The label the model wrote after the box (trimmed); `''` when it wrote none. */
  label: string
  /** The box in pixels of the original image. */
  box: BoundingBox
  /** The raw location bins `[ymin, xmin, ymax, xmax]`, each in 0…1023 (`<loc####>` tokens). */
  box1024: [number, number, number, number]
}

/** A detection parsed from segmentation output, with its mask tokens. */
export interface ParsedSegmentation extends Detection {
  /**
   * The 16 `<seg###>` codebook indices (0…127) that followed the box, or `null` when the model
   * wrote no complete, valid sequence of 16 (the object then has no mask).
   */
  segIndices: number[] | null
}

/** A binary mask at the original image's size. */
export interface Mask {
  /** Width in pixels (the image's). */
  width: number
  /** Height in pixels (the image's). */
  height: number
  /** `width × height` bytes, row-major: 255 inside the object, 0 outside. */
  data: Uint8Array
}

/** One segmented object. */
export interface Segmentation extends ParsedSegmentation {
  /** The decoded mask, or `null` when the model wrote no valid mask tokens for this object. */
  mask: Mask | null
}
