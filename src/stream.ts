/**
 * The async iterator over a generation's native event channel, with `AbortSignal` wiring.
 *
 * @packageDocumentation
 */

import type { AbortError } from './errors.js'
import { PaliGemmaError, abortErrorFor, errorFromFailure, errorFromThrown } from './errors.js'
import type { NativeCancelToken, NativeEvent, NativeFailure, NativeGenerateOutput } from './native.js'
import type { FinishReason, GenerateResult, StreamChunk, Timings } from './types.js'

/** How a stream starts its native request. @internal */
export interface StreamLaunch {
  /** A validation (or disposed-model) error: the stream fails without running anything. */
  error?: PaliGemmaError
  seed: number
  signal?: AbortSignal
  token?: NativeCancelToken
  /** Queues the native request; every event goes to `onEvent`. May throw. */
  run?: (token: NativeCancelToken, onEvent: (event: NativeEvent) => void) => void
  /** Keep chunks for iteration (false for `generate`, which only needs the result). */
  buffer: boolean
}

function noop(): void {}

function timingsOf(native: NativeGenerateOutput['timings']): Timings {
  const seconds = native.decodeMs / 1000
  return {
    queuedMs: native.queuedMs,
    batchSize: native.batchSize,
    prefillMs: native.prefillMs,
    decodeMs: native.decodeMs,
    decodeSteps: native.decodeSteps,
    tokensPerSecond: seconds > 0 ? native.decodeSteps / seconds : 0,
    promptTokens: native.promptTokens,
    generatedTokens: native.generatedTokens,
    decodeGraph: native.decodeGraph,
  }
}

function finishReasonOf(value: string): FinishReason {
  return value === 'eos' || value === 'length' || value === 'stop' ? value : 'length'
}

/**
 * The tokens of one generation as they are produced: `for await (const chunk of stream)`.
 *
 * - Leaving the loop early (`break`, `return`, an exception) cancels the native work: the request
 *   stops before its next decode step and its KV cache is freed. {@link TokenStream.result} then
 *   resolves with `finishReason: 'abort'` and the tokens produced so far.
 * - Aborting the request's `signal` makes the loop throw an {@link AbortError}, and `result`
 *   rejects with it.
 * - Any other failure (invalid request, disposed model, engine error) is thrown by the loop as a
 *   {@link PaliGemmaError}, and `result` rejects with it.
 *
 * A stream can be iterated once. Its request starts (joins the model's queue) when the stream is
 * created, whether or not it is iterated.
 */
export class TokenStream implements AsyncIterableIterator<StreamChunk> {
  /**
   * The complete result, available whether or not the stream is iterated. Rejections of this
   * promise are never reported as unhandled: the loop already throws them.
   */
  readonly result: Promise<GenerateResult>

  #resolveResult: (result: GenerateResult) => void = noop
  #rejectResult: (error: unknown) => void = noop
  #chunks: StreamChunk[] = []
  #waiter: { resolve: (r: IteratorResult<StreamChunk>) => void; reject: (e: unknown) => void } | undefined
  /** Native side finished (done or failed). */
  #ended = false
  /** The loop left early; later chunks are dropped. */
  #closed = false
  #error: PaliGemmaError | undefined
  #errorDelivered = false
  #tokenIds: number[] = []
  #text = ''
  readonly #seed: number
  readonly #buffer: boolean
  readonly #signal: AbortSignal | undefined
  readonly #token: NativeCancelToken | undefined
  /** Abort ends the stream at once (buffered chunks are dropped); the native request stops
   * before its next decode step and its late events are ignored. */
  readonly #onAbort = (): void => {
    this.#token?.cancel()
    if (!this.#ended && this.#signal) {
      this.#chunks = []
      this.#fail(abortErrorFor(this.#signal))
    }
  }

  /** @internal Streams are created by `PaliGemma.stream`. */
  constructor(launch: StreamLaunch) {
    this.result = new Promise<GenerateResult>((resolve, reject) => {
      this.#resolveResult = resolve
      this.#rejectResult = reject
    })
    this.result.catch(noop)
    this.#seed = launch.seed
    this.#buffer = launch.buffer
    this.#signal = launch.signal
    this.#token = launch.token
    const early = launch.error ?? (launch.signal?.aborted ? abortErrorFor(launch.signal) : undefined)
    const { run, token } = launch
    if (early || !run || !token) {
      this.#fail(early ?? new PaliGemmaError('ERR_INTERNAL', 'internal error: stream has no request'))
      return
    }
    launch.signal?.addEventListener('abort', this.#onAbort, { once: true })
    try {
      run(token, (event) => this.#onEvent(event))
    } catch (error) {
      this.#fail(errorFromThrown(error))
    }
  }

  /** Called on the JS thread by the native event channel; must never throw. */
  #onEvent(event: NativeEvent): void {
    try {
      if (this.#ended) return
      if (event.kind === 'token' && event.tokenId !== undefined) {
        const chunk: StreamChunk = { tokenId: event.tokenId, text: event.text ?? '', index: event.index ?? this.#tokenIds.length }
        this.#tokenIds.push(chunk.tokenId)
        this.#text += chunk.text
        if (this.#closed || !this.#buffer) return
        if (this.#waiter) {
          const waiter = this.#waiter
          this.#waiter = undefined
          waiter.resolve({ value: chunk, done: false })
        } else {
          this.#chunks.push(chunk)
        }
      } else if (event.kind === 'done' && event.output) {
        this.#finish(event.output)
      } else {
        this.#failNative(event.error ?? { code: 'ERR_INTERNAL', message: `internal error: unexpected event ${event.kind}` })
      }
    } catch (error) {
      this.#fail(errorFromThrown(error))
    }
  }

  #cleanup(): void {
    this.#ended = true
    this.#signal?.removeEventListener('abort', this.#onAbort)
  }

  #finish(output: NativeGenerateOutput): void {
    this.#cleanup()
    this.#resolveResult({
      text: output.text,
      tokenIds: output.tokenIds,
      finishReason: finishReasonOf(output.finishReason),
      seed: this.#seed,
      timings: timingsOf(output.timings),
    })
    this.#wake()
  }

  #failNative(failure: NativeFailure): void {
    if (failure.code === 'ABORT_ERR' && this.#closed && !this.#signal?.aborted) {
      // The consumer left the loop: not an error, just an unfinished result.
      this.#cleanup()
      const generated = this.#tokenIds.length
      this.#resolveResult({
        text: this.#text,
        tokenIds: this.#tokenIds,
        finishReason: 'abort',
        seed: this.#seed,
        timings: { queuedMs: 0, batchSize: 1, prefillMs: 0, decodeMs: 0, decodeSteps: 0, tokensPerSecond: 0, promptTokens: 0, generatedTokens: generated, decodeGraph: false },
      })
      return
    }
    this.#fail(errorFromFailure(failure, this.#signal?.reason))
  }

  #fail(error: PaliGemmaError): void {
    this.#cleanup()
    this.#error = error
    this.#rejectResult(error)
    this.#wake()
  }

  /** Settles a pending `next()` after the end. */
  #wake(): void {
    const waiter = this.#waiter
    if (!waiter) return
    this.#waiter = undefined
    if (this.#error && !this.#errorDelivered && !this.#closed) {
      this.#errorDelivered = true
      waiter.reject(this.#error)
    } else {
      waiter.resolve({ value: undefined, done: true })
    }
  }

  /** The next token, or the end of the stream. */
  next(): Promise<IteratorResult<StreamChunk>> {
    const chunk = this.#chunks.shift()
    if (chunk) return Promise.resolve({ value: chunk, done: false })
    if (this.#closed) return Promise.resolve({ value: undefined, done: true })
    if (this.#ended) {
      if (this.#error && !this.#errorDelivered) {
        this.#errorDelivered = true
        return Promise.reject(this.#error)
      }
      return Promise.resolve({ value: undefined, done: true })
    }
    if (this.#waiter) {
      return Promise.reject(new PaliGemmaError('ERR_INVALID_ARGUMENT', 'invalid argument `next`: a previous next() call is still pending'))
    }
    return new Promise((resolve, reject) => {
      this.#waiter = { resolve, reject }
    })
  }

  /** Stops the stream early (what `break` calls): cancels the native request. */
  return(): Promise<IteratorResult<StreamChunk>> {
    if (!this.#closed) {
      this.#closed = true
      this.#chunks = []
      if (!this.#ended) this.#token?.cancel()
      this.#wake()
    }
    return Promise.resolve({ value: undefined, done: true })
  }

  /** Returns the stream itself: it can be iterated once. */
  [Symbol.asyncIterator](): this {
    return this
  }
}
