/**
 * The types of loading a model: its options, progress, and what it reports once loaded.
 *
 * @packageDocumentation
 */

import type { DeviceKind, DType } from './types.js'

/**
 * What a load is doing when it reports progress:
 * - `'download'`: fetching a hub model's files (see `DownloadProgress`);
 * - `'mapping'`: using a prepared folder's weights in place from the mapped file (docs/prepared.md);
 * - `'converting'`: copying checkpoint weights into memory, converted to the compute dtype and laid
 *   out for the kernels;
 * - `'quantizing'`: quantizing a matrix (`q8_0`, `q4k`); reported as each one starts, with the
 *   bytes unchanged, since that is where a quantized load spends its time;
 * - `'repacking'`: laying a prepared folder's quantized blocks out for the kernels.
 */
export type LoadPhase = 'download' | 'mapping' | 'converting' | 'quantizing' | 'repacking'

/** Loading progress, in bytes of tensor data materialised so far. */
export interface LoadProgress {
  /** Bytes loaded so far. */
  loadedBytes: number
  /** Bytes of tensor data in the checkpoint; `loadedBytes` reaches it when loading ends. */
  totalBytes: number
  /** What the load is doing now. */
  phase: LoadPhase
}

/** Options of {@link PaliGemma.load}. */
export interface LoadOptions {
  /**
   * Compute device. Default `'auto'`: the first CUDA GPU when the CUDA build
   * (`paligemma-linux-x64-gnu-cuda`) is installed and opens one, else the CPU, with a
   * `PALIGEMMA_CPU_FALLBACK` warning and {@link ModelInfo.deviceFallback} saying why when a CUDA
   * build was there. `'cuda'` on a build without CUDA support or a machine without a usable GPU
   * rejects with `ERR_DEVICE_UNAVAILABLE`.
   */
  device?: DeviceKind
  /** Precision ({@link DType}). Default: `'f32'` on the CPU, `'bf16'` on CUDA. */
  dtype?: DType
  /**
   * The vision tower's matrices on the CPU: `'bf16'` (activations stay f32) or `'f32'`.
   * Default: `'bf16'` with `dtype: 'bf16'`, else `'f32'`. With `'q8_0'` or `'q4k'`, `'bf16'` gives
   * the first token about 10 % sooner on CPUs with AVX512-BF16 (PaliGemma-3B-224 on 2 cores:
   * 3.2 s against 3.5–3.6 s with `'q8_0'`), for a small loss (docs/guarantees.md, "Precision on
   * the CPU"); CPUs without it run the tower in f32 either way. On CUDA,
   * `'bf16'` rejects with `ERR_INVALID_ARGUMENT`: the tower runs in the model's dtype there.
   */
  visionDtype?: 'f32' | 'bf16'
  /**
   * CPU threads that this model's work may use (an integer ≥ 1). Default: the machine's
   * available parallelism. Each model runs its requests inside its own pool of this many threads,
   * which bounds matrix multiplications, normalisations and softmax (measured on a 2-core machine:
   * CPU time / wall time 1.06 with `threads: 1`, 1.67 with `threads: 2`). Two limits come from
   * candle: a matrix multiplication is split into at most `RAYON_NUM_THREADS` (default: physical
   * cores) pieces, so more threads than that do not speed it up; and large element-wise operations
   * use candle's process-wide pool, sized once per process from `CANDLE_NUM_THREADS`
   * (else `RAYON_NUM_THREADS`, else the physical core count).
   */
  threads?: number
  /**
   * Most generations that share one decode step (an integer ≥ 1). Concurrent `generate`,
   * `stream` and task calls on one model form a continuous batch: a waiting request joins at
   * the next step, after its own prefill, and leaves as soon as it ends. Default: 16 on the CPU
   * (where each request's tokens and logits are then bitwise those it gets alone, in f32), 1 on
   * CUDA (every request replays its own captured decode graph). A larger value on CUDA steps the
   * requests in a pool of KV slots with a graph per batch-size bucket, a path not yet run on a
   * GPU. See docs/guarantees.md, "Batching".
   */
  maxBatch?: number
  /**
   * Bytes of KV cache the running generations may hold together (an integer ≥ 1). A request
   * whose cache (`prompt + maxNewTokens` positions) does not fit beside the running ones waits,
   * in order; one larger than the whole budget runs when nothing else does. On CUDA with
   * `maxBatch` above 1 it sizes the slot pool: as many slots as fit at the longest request's
   * length. Default: 4 GiB.
   */
  kvCacheBytes?: number
  /**
   * Interleave a joining request's prefill with the running requests' decode steps (CPU). By
   * default a request that joins is prefilled at once, and the running requests wait for that
   * prefill between two tokens (PaliGemma-3B-224 on 2 cores: 4–8 s): the best throughput,
   * since every request soon decodes in one batch. With `prefillShare` the prefill runs a few
   * layers at a time between their steps, each stage taking this multiple of the waiting
   * requests' fair share of the machine (`(waiting + 1) / running` of a decode step; 0 means
   * one layer per stage): the running requests' inter-token time stays near two steps, and
   * joining requests take longer to start. The outputs are the same bits either way. See
   * docs/guarantees.md, "Batching".
   */
  prefillShare?: number
  /**
   * Called on the JS thread as tensors load (at most every ~50 ms, at every change of
   * {@link LoadProgress.phase}, and always with `loadedBytes === totalBytes` before `load`
   * resolves). If it throws, loading stops and `load` rejects with that exception.
   */
  onProgress?: (progress: LoadProgress) => void
  /** Cancels loading; `load` then rejects with an `AbortError`. */
  signal?: AbortSignal
  /**
   * The mask decoder weights used by `segment()` unless its options name another: big_vision's
   * `vae-oid.npz` converted with `npx paligemma convert-vae vae-oid.npz vae-oid.safetensors`.
   * Not read until the first `segment()`.
   */
  vaePath?: string
}

/** What a loaded model is. */
export interface ModelInfo {
  /** `'paligemma'` (Gemma decoder) or `'paligemma2'` (Gemma 2 decoder). */
  architecture: 'paligemma' | 'paligemma2'
  /** Side of the square input image, in pixels (224, 448 or 896 for released checkpoints). */
  imageSize: number
  /** Image tokens per prompt: one per image patch, `(imageSize / patchSize)²`. */
  imageTokens: number
  /** Id of the `<image>` placeholder token; a prompt holds exactly `imageTokens` of them. */
  imageTokenId: number
  /** Id of the `<bos>` token. */
  bosTokenId: number
  /** Ids that end generation (`finishReason: 'eos'`). */
  eosTokenIds: readonly number[]
  /** Rows of the token embedding. */
  vocabSize: number
  /** Width of the language model. */
  hiddenSize: number
  /** Most positions (prompt + generated tokens) one request may use. */
  contextLength: number
  /** Where the model runs. */
  device: 'cpu' | 'cuda'
  /** Precision the model runs in. */
  dtype: DType
  /** CPU threads of the model's pool. */
  threads: number
  /** Most generations that share one decode step (the `maxBatch` load option or its default). */
  maxBatch: number
  /** Bytes of KV cache the running generations may hold together (`kvCacheBytes`). */
  kvCacheBytes: number
  /** Whether `tokenizer.json` was loaded, enabling `text` output and `stop` strings. */
  hasTokenizer: boolean
  /**
   * Why a model loaded with `device: 'auto'` runs on the CPU although a CUDA build is
   * installed: the CUDA addon could not load (no NVIDIA driver, say), or it found no usable GPU.
   * The same text goes to a `PALIGEMMA_CPU_FALLBACK` process warning, once per process. Absent
   * when the model runs where it was asked to, and on a CPU-only install.
   */
  deviceFallback?: string
}
