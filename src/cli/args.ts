/**
 * The command line's vocabulary: usage errors, option tables, help texts and typed readers of
 * parsed option values.
 *
 * @internal
 */

import { readFileSync } from 'node:fs'
import type { ParseArgsConfig } from 'node:util'
import { PaliGemmaError } from '../errors.js'
import type { DType, SamplingOptions } from '../types.js'

/** A mistake in the command line: exit status 2. */
export class UsageError extends Error {
  constructor(
    message: string,
    readonly command?: string,
  ) {
    super(message)
  }
}

/** A failure with an error code that is not a {@link PaliGemmaError}. */
export class CliError extends Error {
  constructor(
    readonly code: string,
    message: string,
    readonly exitCode = 1,
  ) {
    super(message)
  }
}

/** Where results go. */
export const out = process.stdout
/** Where progress, warnings and errors go. */
export const err = process.stderr

// ---------------------------------------------------------------------------------------------
// Options

type OptionSpec = NonNullable<ParseArgsConfig['options']>

/** Options of every command that loads a model. */
export const MODEL_OPTIONS: OptionSpec = {
  model: { type: 'string', short: 'm' },
  revision: { type: 'string' },
  device: { type: 'string' },
  dtype: { type: 'string' },
  'vision-dtype': { type: 'string' },
  threads: { type: 'string' },
}

/** Options of every command that generates text. */
export const SAMPLING_OPTIONS: OptionSpec = {
  'max-new-tokens': { type: 'string', short: 'n' },
  temperature: { type: 'string', short: 't' },
  'top-k': { type: 'string' },
  'top-p': { type: 'string' },
  'repetition-penalty': { type: 'string' },
  seed: { type: 'string' },
}

/** Output options: `--json`, `--quiet` (no progress), `--verbose` (timings on stderr), `--help`. */
export const OUTPUT_OPTIONS: OptionSpec = {
  json: { type: 'boolean' },
  quiet: { type: 'boolean', short: 'q' },
  verbose: { type: 'boolean', short: 'v' },
  help: { type: 'boolean', short: 'h' },
}

/** `--image`, for the commands that read one. */
export const IMAGE_OPTION: OptionSpec = { image: { type: 'string', short: 'i' } }

/** One command: its options, help and what it runs. */
export interface Command {
  /** One line for the command list. */
  summary: string
  /** The usage line(s) after `paligemma `. */
  usage: string
  /** Extra help text. */
  details?: string
  options: OptionSpec
  /** Whether positionals are accepted. */
  positionals: boolean
  run(args: Parsed): Promise<number>
}

/** A command line after parsing: the command, its option values and positionals. */
export interface Parsed {
  command: string
  values: Record<string, string | boolean | undefined>
  positionals: string[]
}

/** Precisions of the model commands: float formats, and the CPU decoder quantized on load. */
export const MODEL_DTYPES: DType[] = ['f32', 'f16', 'bf16', 'q8_0', 'q4k']

/** The help section for {@link MODEL_OPTIONS}. */
export const MODEL_HELP = `Model options:
  -m, --model <dir|id>        a model folder, or a Hugging Face hub id (e.g. google/paligemma2-3b-mix-224),
                              downloaded into the Hugging Face cache (HF_HOME, HF_HUB_CACHE; HF_TOKEN for
                              gated models). Default: $PALIGEMMA_MODEL
      --revision <rev>        hub branch, tag or commit (default main)
      --device <auto|cpu|cuda>
      --dtype <f32|f16|bf16|q8_0|q4k>
                              compute precision (default f32 on the CPU, bf16 on a GPU); q8_0 and q4k
                              quantize the text decoder as the model loads (CPU only, about 4x and 5x
                              faster decoding than f32); bf16 on the CPU runs f32 activations over
                              bf16 matrices on CPUs with AVX512-BF16
      --vision-dtype <f32|bf16>
                              the vision tower's matrices on the CPU (default bf16 with --dtype bf16,
                              else f32); bf16 with q8_0 gives the first token about 10% sooner
      --threads <n>           CPU threads (default: all)
  -i, --image <path>          the image (JPEG, PNG, WebP, GIF, BMP); - reads it from stdin`

/** The help section for {@link SAMPLING_OPTIONS}. */
export const SAMPLING_HELP = `Sampling options:
  -n, --max-new-tokens <n>    most tokens to generate
  -t, --temperature <x>       0 (default) is greedy
      --top-k <n>, --top-p <x>, --repetition-penalty <x>
      --seed <n>              sampler seed (same seed, same output)`

/** The help section for {@link OUTPUT_OPTIONS}. */
export const OUTPUT_HELP = `Output options:
      --json                  print one JSON object instead of text; no progress bars
  -q, --quiet                 no progress bars (they are drawn on stderr when it is a terminal)
  -v, --verbose               timings on stderr
  -h, --help`

let cachedVersion: string | undefined

/** This package's version, from its package.json (read once). */
export function packageVersion(): string {
  if (cachedVersion === undefined) {
    try {
      const pkg = JSON.parse(readFileSync(new URL('../../../package.json', import.meta.url), 'utf8')) as { version?: string }
      cachedVersion = pkg.version ?? 'unknown'
    } catch {
      cachedVersion = 'unknown'
    }
  }
  return cachedVersion
}

/** A string option's value, if given. */
export function str(values: Parsed['values'], name: string): string | undefined {
  const value = values[name]
  return typeof value === 'string' ? value : undefined
}

/** Whether a boolean option was given. */
export function flag(values: Parsed['values'], name: string): boolean {
  return values[name] === true
}

/** A numeric option's value, if given; a usage error if it is not a (whole) number. */
export function numberOption(values: Parsed['values'], name: string, integer: boolean): number | undefined {
  const text = str(values, name)
  if (text === undefined) return undefined
  const value = Number(text)
  if (text.trim() === '' || !Number.isFinite(value) || (integer && !Number.isInteger(value))) {
    throw new UsageError(`--${name} must be ${integer ? 'an integer' : 'a number'}, got '${text}'`)
  }
  return value
}

/** An integer option of at least `min`, if given; a usage error naming the bound otherwise. */
export function integerAtLeast(values: Parsed['values'], name: string, min: number): number | undefined {
  const value = numberOption(values, name, true)
  if (value !== undefined && (value < min || !Number.isSafeInteger(value))) throw new UsageError(`--${name} must be at least ${min}, got ${value}`)
  return value
}

/** An option whose value must be one of `allowed`; a usage error otherwise. */
export function choice<T extends string>(values: Parsed['values'], name: string, allowed: readonly T[]): T | undefined {
  const text = str(values, name)
  if (text === undefined) return undefined
  if (!(allowed as readonly string[]).includes(text)) {
    throw new UsageError(`--${name} must be one of ${allowed.join(', ')}, got '${text}'`)
  }
  return text as T
}

/** The sampling options of a generating command, as the API takes them. */
export function samplingOptions(values: Parsed['values']): SamplingOptions {
  const options: SamplingOptions = {}
  const maxNewTokens = integerAtLeast(values, 'max-new-tokens', 1)
  const temperature = numberOption(values, 'temperature', false)
  const topK = numberOption(values, 'top-k', true)
  const topP = numberOption(values, 'top-p', false)
  const repetitionPenalty = numberOption(values, 'repetition-penalty', false)
  const seed = numberOption(values, 'seed', true)
  // Checked here, before any model loads, so that a malformed value is a usage error (exit 2).
  if (temperature !== undefined && temperature < 0) throw new UsageError(`--temperature must be 0 (greedy) or more, got ${temperature}`)
  if (topK !== undefined && topK < 0) throw new UsageError(`--top-k must be 0 (off) or more, got ${topK}`)
  if (topP !== undefined && !(topP > 0 && topP <= 1)) throw new UsageError(`--top-p must be in (0, 1], got ${topP}`)
  if (repetitionPenalty !== undefined && !(repetitionPenalty > 0)) throw new UsageError(`--repetition-penalty must be more than 0, got ${repetitionPenalty}`)
  if (seed !== undefined && (seed < 0 || !Number.isSafeInteger(seed))) throw new UsageError(`--seed must be an integer from 0 to 2^53 - 1, got ${seed}`)
  if (maxNewTokens !== undefined) options.maxNewTokens = maxNewTokens
  if (temperature !== undefined) options.temperature = temperature
  if (topK !== undefined) options.topK = topK
  if (topP !== undefined) options.topP = topP
  if (repetitionPenalty !== undefined) options.repetitionPenalty = repetitionPenalty
  if (seed !== undefined) options.seed = seed
  return options
}

/** `value`, or a usage error naming `what` is missing. */
export function required(value: string | undefined, what: string): string {
  if (value === undefined || value === '') throw new UsageError(`missing required ${what}`)
  return value
}
