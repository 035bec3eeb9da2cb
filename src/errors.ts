/**
 * Errors thrown by the package. Every failure is a {@link PaliGemmaError} with a stable
 * {@link ErrorCode}; cancellations are its subclass {@link AbortError}.
 *
 * @packageDocumentation
 */

/**
 * Stable, machine-readable error categories (`error.code`).
 *
 * - `ERR_MODEL_LOAD`: the model folder, config, weights or tokenizer cannot be used, or the
 *   native addon cannot be loaded.
 * - `ERR_INVALID_ARGUMENT`: an option or input is out of range, of the wrong type, or
 *   inconsistent with the model (the message names it).
 * - `ERR_INVALID_IMAGE`: an image could not be decoded or is outside the accepted limits.
 * - `ERR_DISPOSED`: the model was disposed (before or while the request ran).
 * - `ERR_DEVICE_UNAVAILABLE`: the requested compute device cannot be used by this build or machine.
 * - `ERR_INTERNAL`: a bug or resource exhaustion in the engine, not bad input.
 * - `ABORT_ERR`: the operation was cancelled through its `AbortSignal` (an {@link AbortError}).
 */
export type ErrorCode =
  | 'ERR_MODEL_LOAD'
  | 'ERR_INVALID_ARGUMENT'
  | 'ERR_INVALID_IMAGE'
  | 'ERR_DISPOSED'
  | 'ERR_DEVICE_UNAVAILABLE'
  | 'ERR_INTERNAL'
  | 'ABORT_ERR'

const CODES: ReadonlySet<string> = new Set<ErrorCode>([
  'ERR_MODEL_LOAD',
  'ERR_INVALID_ARGUMENT',
  'ERR_INVALID_IMAGE',
  'ERR_DISPOSED',
  'ERR_DEVICE_UNAVAILABLE',
  'ERR_INTERNAL',
  'ABORT_ERR',
])

/** Whether `code` is one of the package's {@link ErrorCode}s. */
export function isErrorCode(code: unknown): code is ErrorCode {
  return typeof code === 'string' && CODES.has(code)
}

/** Any error raised by this package. Check `code`, not the message, in program logic. */
export class PaliGemmaError extends Error {
  /** The error's category; stable across versions. */
  readonly code: ErrorCode

  /**
   * @param code - the category.
   * @param message - what went wrong and, where possible, how to fix it.
   * @param options - `cause`: the underlying error or abort reason.
   */
  constructor(code: ErrorCode, message: string, options?: { cause?: unknown }) {
    super(message, options)
    this.code = code
    this.name = 'PaliGemmaError'
  }
}

/**
 * The operation was cancelled through its `AbortSignal`. Like the `AbortError` that `fetch` and
 * Node's own APIs throw, it has `name === 'AbortError'` and `code === 'ABORT_ERR'`; it is also a
 * {@link PaliGemmaError}. `cause` holds `signal.reason` when the signal had one.
 */
export class AbortError extends PaliGemmaError {
  /**
   * @param message - defaults to "The operation was aborted".
   * @param options - `cause`: usually the signal's `reason`.
   */
  constructor(message = 'The operation was aborted', options?: { cause?: unknown }) {
    super('ABORT_ERR', message, options)
    this.name = 'AbortError'
  }
}

/** Builds the error for a failure reported by the native engine. @internal */
export function errorFromFailure(failure: { code: string; message: string }, abortReason?: unknown): PaliGemmaError {
  if (failure.code === 'ABORT_ERR') {
    return new AbortError(undefined, abortReason === undefined ? undefined : { cause: abortReason })
  }
  const code: ErrorCode = isErrorCode(failure.code) ? failure.code : 'ERR_INTERNAL'
  return new PaliGemmaError(code, failure.message)
}

/** N-API statuses that mean "an argument had the wrong JS type". */
const ARGUMENT_STATUSES = new Set([
  'InvalidArg',
  'ObjectExpected',
  'StringExpected',
  'NameExpected',
  'FunctionExpected',
  'NumberExpected',
  'BooleanExpected',
  'ArrayExpected',
  'BigintExpected',
])

/**
 * Converts anything a native call threw into a {@link PaliGemmaError}. The addon throws
 * `CODE: message` for its own errors; argument conversions fail with an N-API status code.
 *
 * @internal
 */
export function errorFromThrown(error: unknown): PaliGemmaError {
  if (error instanceof PaliGemmaError) return error
  if (error instanceof Error) {
    const match = /^([A-Z_]+): ([\s\S]*)$/.exec(error.message)
    if (match && isErrorCode(match[1])) {
      return match[1] === 'ABORT_ERR' ? new AbortError() : new PaliGemmaError(match[1], match[2] ?? '', { cause: error })
    }
    const status = (error as { code?: unknown }).code
    if (typeof status === 'string' && ARGUMENT_STATUSES.has(status)) {
      return new PaliGemmaError('ERR_INVALID_ARGUMENT', error.message, { cause: error })
    }
    return new PaliGemmaError('ERR_INTERNAL', `internal error: ${error.message}`, { cause: error })
  }
  return new PaliGemmaError('ERR_INTERNAL', `internal error: ${String(error)}`, { cause: error })
}

/** The error for a signal that is already aborted. @internal */
export function abortErrorFor(signal: AbortSignal): AbortError {
  return new AbortError(undefined, signal.reason === undefined ? undefined : { cause: signal.reason })
}

/** The error for using a disposed model. @internal */
export function disposedError(): PaliGemmaError {
  return new PaliGemmaError('ERR_DISPOSED', 'the model was disposed; load it again to run more requests')
}
