/**
 * The `PaliGemma` class: load, forward, generate, stream, dispose.
 *
 * @packageDocumentation
 */

import { abortErrorFor, disposedError, errorFromFailure, errorFromThrown } from './errors.js'
import type { AbortError, PaliGemmaError } from './errors.js'
import { autoFallback, publicInfo } from './info.js'
import { isFailure } from './native.js'
import { disposeNative, loadNative } from './load.js'
import type { NativeBinding, NativeFailure, NativeForwardOutput, NativeModel, NativeModelInfo } from './native.js'
import { argumentError, validateForwardInput, validateGenerateRequest, validateLoadArgs } from './options.js'
import { isImageRequest, startImageRequest } from './image.js'
import { runBatch } from './batch/batch.js'
import type { BatchInput, BatchOptions, BatchResult } from './batch/batch.js'
import { runTask } from './batch/task.js'
import type { TaskResult, TaskRunner, TaskSpec } from './batch/task.js'
import { TokenStream } from './stream.js'
import { runAsk, runCaption, runDetect, runOcr, runSegment } from './tasks.js'
import type { LanguageTaskOptions, SegmentOptions, TaskOptions } from './tasks.js'
import type { ForwardInput, ForwardOutput, GenerateRequest, GenerateResult, LoadOptions, ModelInfo, StreamChunk } from './types.js'
import type { Detection, ImageInput, ImageRequest, Segmentation } from './types.js'

/** Task helpers' rejections: generation errors pass through, a throwing getter becomes `ERR_INVALID_ARGUMENT`. */
function rejectAsArgument(error: unknown): never {
  throw argumentError(error, 'options')
}

/**
 * A loaded PaliGemma or PaliGemma 2 model.
 *
 * **Threading.** Each model owns one native worker thread and a pool of `threads` CPU threads.
 * Inference never runs on the JS thread. Generations (`generate`, `stream`, the task helpers)
 * join the model's continuous batch in arrival order: up to `maxBatch` of them share each decode
 * step, each with its own KV cache, and each gets the tokens it gets alone. `forward` runs
 * between two steps. Any number of concurrent calls on one model is safe; several models may be
 * loaded and run at once.
 *
 * **Lifetime.** Call {@link PaliGemma.dispose} (or use `await using`) to free the weights
 * promptly. A model that is garbage-collected without `dispose()` is freed too: its queued
 * requests finish, then the worker exits and drops the weights.
 *
 * @example
 * ```ts
 * const model = await PaliGemma.load('/models/paligemma2-3b-pt-224')
 * const { tokenIds } = await model.generate({ inputIds, pixelValues, maxNewTokens: 16 })
 * await model.dispose()
 * ```
 */
export class PaliGemma implements AsyncDisposable {
  /** What this model is (sizes, special token ids, device, precision). */
  readonly info: ModelInfo

  #native: NativeModel | undefined
  readonly #binding: NativeBinding
  readonly #nativeInfo: NativeModelInfo
  #disposing: Promise<void> | undefined
  /** `segment()`'s default mask decoder (the `vaePath` load option). */
  readonly #vaePath: string | undefined

  private constructor(binding: NativeBinding, model: NativeModel, vaePath: string | undefined, deviceFallback: string | undefined) {
    this.#binding = binding
    this.#native = model
    this.#vaePath = vaePath
    this.#nativeInfo = model.info
    this.info = publicInfo(this.#nativeInfo, deviceFallback)
  }

  /**
   * Loads a Hugging Face-layout model folder (`config.json`, `model.safetensors` or a sharded
   * index, and optionally `tokenizer.json`), off the JS thread.
   *
   * @param modelDir - path of the model folder, or a Hugging Face hub id such as
   *   `google/paligemma2-3b-mix-224` (downloaded into the Hugging Face cache first, see
   *   {@link resolveModel}; download progress goes to `onProgress` too, with `phase: 'download'`).
   * @param options - device, precision, threads, progress callback and abort signal.
   * @returns the loaded model.
   * @throws A {@link PaliGemmaError} `ERR_MODEL_LOAD` (missing or invalid files, or no native
   *   addon), `ERR_DEVICE_UNAVAILABLE`, `ERR_INVALID_ARGUMENT` (bad options, e.g. `q8_0` on CUDA);
   *   {@link AbortError} when `signal` aborts (loading stops before the next tensor); the
   *   exception `onProgress` threw, if it threw (loading stops too).
   */
  static async load(modelDir: string, options?: LoadOptions): Promise<PaliGemma> {
    // A hub id (`owner/name`) that is not a local folder is downloaded first (see hub.ts).
    // The options are read (and validated) before anything else, so a throwing getter is an
    // argument error, not a failed download; the hub id is then resolved to a folder.
    let args: ReturnType<typeof validateLoadArgs>
    try {
      args = validateLoadArgs(modelDir, options)
    } catch (error) {
      throw argumentError(error, 'options')
    }
    const { binding, model } = await loadNative(args)
    return new PaliGemma(binding, model, args.vaePath, autoFallback(args.native.device, model.info))
  }

  /** Whether {@link PaliGemma.dispose} was called. */
  get disposed(): boolean {
    return this.#native === undefined
  }

  #live(): NativeModel {
    const model = this.#native
    if (!model) throw disposedError()
    return model
  }

  /**
   * Runs the whole prompt once and returns the logits of every position (no sampling, no KV
   * cache kept). Queued like any other request.
   *
   * @param input - prompt token ids, pixel values and an optional abort signal.
   * @returns row-major `[seq, vocab]` float32 logits.
   * @throws A {@link PaliGemmaError} `ERR_INVALID_ARGUMENT`, `ERR_DISPOSED`, `ERR_INTERNAL`;
   *   {@link AbortError} as soon as `signal` aborts (a queued pass is removed; one already running
   *   finishes in the background and its result is dropped).
   */
  async forward(input: ForwardInput): Promise<ForwardOutput> {
    const model = this.#live()
    let validated: ReturnType<typeof validateForwardInput>
    try {
      validated = validateForwardInput(input, this.#nativeInfo)
    } catch (error) {
      throw argumentError(error, 'input')
    }
    const { inputIds, pixelValues, positions, signal } = validated
    if (signal?.aborted) throw abortErrorFor(signal)
    const token = new this.#binding.CancelToken()
    const out = await new Promise<NativeForwardOutput | NativeFailure>((resolve, reject) => {
      // Abort rejects at once; a pass that already started finishes on the worker and its
      // result is dropped.
      const onAbort = (): void => {
        token.cancel()
        if (signal) reject(abortErrorFor(signal))
      }
      signal?.addEventListener('abort', onAbort, { once: true })
      const done = (): void => signal?.removeEventListener('abort', onAbort)
      try {
        model.forward(inputIds, pixelValues, token, positions).then(
          (value) => {
            done()
            resolve(value)
          },
          (error: unknown) => {
            done()
            reject(errorFromThrown(error))
          },
        )
      } catch (error) {
        done()
        reject(errorFromThrown(error))
      }
    })
    if (isFailure(out)) throw errorFromFailure(out, signal?.reason)
    const [seq = 0, vocab = 0] = out.dims
    return { logits: out.logits, dims: [seq, vocab] }
  }

  #start(request: GenerateRequest, buffer: boolean): TokenStream {
    // `generate` and `stream` never throw: whatever goes wrong, even reading a hostile request
    // object, comes back through the returned promise or stream.
    try {
      return this.#startChecked(request, buffer)
    } catch (error) {
      return new TokenStream({ error: argumentError(error, 'request'), seed: 0, buffer })
    }
  }

  #startChecked(request: GenerateRequest, buffer: boolean): TokenStream {
    if (isImageRequest(request)) {
      return startImageRequest(() => this.#live(), () => new this.#binding.CancelToken(), this.#nativeInfo, request, buffer)
    }
    let validated: ReturnType<typeof validateGenerateRequest>
    let model: NativeModel
    try {
      model = this.#live()
      validated = validateGenerateRequest(request, this.#nativeInfo)
    } catch (error) {
      return new TokenStream({ error: argumentError(error, 'request'), seed: 0, buffer })
    }
    const { native: nativeRequest, signal } = validated
    return new TokenStream({
      seed: nativeRequest.seed,
      signal,
      buffer,
      token: new this.#binding.CancelToken(),
      run: (token, onEvent) => model.generate(nativeRequest, token, onEvent),
    })
  }

  /**
   * Generates up to `maxNewTokens` tokens and resolves with all of them. Runs the same native
   * request as {@link PaliGemma.stream}, so both give the same tokens for the same request.
   *
   * @param request - prompt ids and pixel values, or an image and a text prompt; sampling options.
   * @returns the text, token ids, finish reason, seed and timings (plus the prompt ids and the
   *   image size for `{ image, prompt }` requests).
   * @throws A {@link PaliGemmaError} `ERR_INVALID_ARGUMENT`, `ERR_INVALID_IMAGE`, `ERR_DISPOSED`
   *   (also when the model is disposed while the request waits or runs), `ERR_INTERNAL`;
   *   {@link AbortError} when `signal` aborts.
   */
  generate(request: GenerateRequest): Promise<GenerateResult> {
    return this.#start(request, false).result
  }

  /**
   * Streams generated tokens as they are produced: `for await (const chunk of model.stream(req))`.
   * Breaking out of the loop cancels the request. Errors (including invalid requests) are thrown
   * by the loop; see {@link TokenStream}.
   *
   * @param request - prompt ids and pixel values, or an image and a text prompt; sampling options.
   * @returns an async iterable of {@link StreamChunk}s, with the final `result` as a promise.
   */
  stream(request: GenerateRequest): TokenStream {
    return this.#start(request, true)
  }

  /** `generate` for the task helpers. */
  readonly #run = (request: ImageRequest): Promise<GenerateResult> => this.generate(request)

  /**
   * Captions an image (prompt `caption <lang>`). Greedy by default; all sampling options apply.
   * For token ids and timings, use `generate({ image, prompt: taskPrompt.caption(lang) })`.
   *
   * @param image - a path, encoded bytes or raw pixels.
   * @param options - `lang` (default `'en'`), sampling, image decoding and `signal`.
   * @returns the caption.
   * @throws Like {@link PaliGemma.generate}; `ERR_INVALID_ARGUMENT` also when the model folder has
   *   no `tokenizer.json`.
   */
  caption(image: ImageInput, options?: LanguageTaskOptions): Promise<string> {
    return runCaption(this.#run, image, options).catch(rejectAsArgument)
  }

  /**
   * Answers a question about an image (prompt `answer <lang> <question>`).
   *
   * @param image - a path, encoded bytes or raw pixels.
   * @param question - the question, e.g. `'what is the cat sitting on?'`.
   * @param options - `lang` (default `'en'`), sampling, image decoding and `signal`.
   * @returns the answer.
   * @throws Like {@link PaliGemma.caption}.
   */
  ask(image: ImageInput, question: string, options?: LanguageTaskOptions): Promise<string> {
    return runAsk(this.#run, image, question, options).catch(rejectAsArgument)
  }

  /**
   * Reads the text in an image (prompt `ocr`).
   *
   * @param image - a path, encoded bytes or raw pixels.
   * @param options - sampling, image decoding and `signal`.
   * @returns the text.
   * @throws Like {@link PaliGemma.caption}.
   */
  ocr(image: ImageInput, options?: TaskOptions): Promise<string> {
    return runOcr(this.#run, image, options).catch(rejectAsArgument)
  }

  /**
   * Finds objects (prompt `detect a ; b`) and returns their boxes in pixels of the original image
   * (see {@link parseDetections}). Malformed model output never throws: what cannot be parsed is
   * skipped, so the result may be empty. Draw them with {@link drawDetections}.
   *
   * @param image - a path, encoded bytes or raw pixels.
   * @param labels - what to look for: `'cat'`, `['cat', 'dog']` or `'cat ; dog'`.
   * @param options - sampling (raise `maxNewTokens` for many objects: 5–8 tokens each), image
   *   decoding and `signal`.
   * @returns the detections, in the order the model wrote them.
   * @throws Like {@link PaliGemma.caption}; `ERR_INVALID_ARGUMENT` for empty labels or labels
   *   containing `;`.
   */
  detect(image: ImageInput, labels: string | readonly string[], options?: TaskOptions): Promise<Detection[]> {
    return runDetect(this.#run, image, labels, options).catch(rejectAsArgument)
  }

  /**
   * Segments objects (prompt `segment a ; b`): boxes as {@link PaliGemma.detect} returns them,
   * plus a binary mask at the original image's size, decoded natively by the VQ-VAE mask decoder
   * (`vaePath`) and pasted into the box as the official demo does. Objects whose mask tokens are
   * missing or malformed get `mask: null`. Draw them with {@link drawMasks}.
   *
   * @param image - a path, encoded bytes or raw pixels.
   * @param labels - what to segment: `'cat'`, `['cat', 'dog']` or `'cat ; dog'`.
   * @param options - `vaePath` (default: the `vaePath` load option), sampling (about 21 tokens per
   *   object), image decoding and `signal`.
   * @returns the segmentations, in the order the model wrote them.
   * @throws Like {@link PaliGemma.detect}; `ERR_INVALID_ARGUMENT` when no `vaePath` is given or
   *   no file is there (checked before generating), `ERR_MODEL_LOAD` when the file is not a mask
   *   decoder.
   */
  segment(image: ImageInput, labels: string | readonly string[], options?: SegmentOptions): Promise<Segmentation[]> {
    return runSegment(this.#run, image, labels, options, this.#vaePath).catch(rejectAsArgument)
  }

  /** The model as the batch and task runners reach it. */
  readonly #runner: TaskRunner = ((model: PaliGemma): TaskRunner => ({
    stream: (request: ImageRequest): TokenStream => model.stream(request),
    get defaultVaePath(): string | undefined {
      return model.#vaePath
    },
  }))(this)

  /**
   * Runs a task described as data (`{ task: 'detect', labels: ['cat'] }`) on one image: the
   * generation's full result plus the parsed `detections` or `segmentations`. This is what
   * {@link PaliGemma.batch} and queue workers run for each image.
   *
   * @param image - a path, encoded bytes or raw pixels.
   * @param spec - the task (default `caption`) and its words: `prompt` (generate), `question`
   *   (ask), `labels` (detect, segment), `lang` (caption, ask).
   * @param options - sampling, image decoding, `vaePath` (segment), `signal`, and `onToken`,
   *   called with the number of tokens generated so far as each arrives.
   * @returns the result.
   * @throws Like {@link PaliGemma.generate}; `ERR_INVALID_ARGUMENT` for a task without the words
   *   it needs, or with words it does not take.
   */
  runTask(image: ImageInput, spec: TaskSpec, options?: SegmentOptions & { onToken?: (tokens: number) => void }): Promise<TaskResult> {
    const { onToken, ...rest } = options ?? {}
    return runTask(this.#runner, image, spec, rest, onToken).catch(rejectAsArgument)
  }

  /**
   * Runs a task over many images, `concurrency` at a time (they share decode steps), and yields
   * each result as it finishes, in completion order, with its input's `index`. A failed image
   * yields its `error` and the batch goes on; aborting `signal`, or disposing the model, ends
   * the loop with that error. Inputs are read only as slots free up, so an async iterable of
   * any length runs in flat memory. Leaving the loop early cancels what is in flight.
   *
   * @example
   * ```ts
   * for await (const { index, result, error } of model.batch(paths, { task: 'detect', labels: 'cat', concurrency: 8 })) {
   *   if (error) console.error(paths[index], error.code)
   *   else console.log(paths[index], result.detections)
   * }
   * ```
   *
   * @param inputs - images (paths, bytes, raw pixels), or `{ image, task?, … }` items with a task
   *   of their own; an array, or any iterable or async iterable.
   * @param options - the task for every image (as {@link PaliGemma.runTask}), its sampling and
   *   image options, `concurrency` (default `info.maxBatch`) and `signal`.
   * @returns an async iterator of {@link BatchResult}s.
   */
  batch(inputs: Iterable<BatchInput> | AsyncIterable<BatchInput>, options?: BatchOptions): AsyncGenerator<BatchResult, void, undefined> {
    return runBatch(this.#runner, this.info.maxBatch, inputs, options)
  }

  /**
   * Frees the model. Queued and running requests are cancelled and reject with `ERR_DISPOSED`
   * (a running one stops before its next decode step); the promise resolves once the worker has
   * released the weights. Later calls on the model reject with `ERR_DISPOSED`. Calling `dispose`
   * again returns the same promise.
   */
  dispose(): Promise<void> {
    if (!this.#disposing) {
      const model = this.#native
      this.#native = undefined
      this.#disposing = model ? disposeNative(model) : Promise.resolve()
    }
    return this.#disposing
  }

  /** Same as {@link PaliGemma.dispose}, for `await using model = await PaliGemma.load(...)`. */
  [Symbol.asyncDispose](): Promise<void> {
    return this.dispose()
  }
}
