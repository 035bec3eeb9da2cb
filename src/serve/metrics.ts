/**
 * `GET /metrics` of `paligemma serve`, in the Prometheus text format (prom-client), one registry
 * per server: requests by route and status, tokens in and out, requests in flight, and the
 * batch size, time to first token and inter-token time of each generation.
 *
 * @packageDocumentation
 * @internal
 */

import { Counter, Gauge, Histogram, Registry } from 'prom-client'

import type { GenerateResult } from '../types.js'

/** The server's metrics. */
export class ServerMetrics {
  readonly registry = new Registry()
  readonly requests = new Counter({ name: 'paligemma_http_requests_total', help: 'HTTP requests by route and status', labelNames: ['route', 'status'], registers: [this.registry] })
  readonly tokens = new Counter({ name: 'paligemma_tokens_total', help: 'Prompt tokens read (in) and tokens generated (out)', labelNames: ['direction'], registers: [this.registry] })
  readonly inFlight = new Gauge({ name: 'paligemma_requests_in_flight', help: 'Generation requests running or waiting for the batch', registers: [this.registry] })
  readonly batchSize = new Histogram({
    name: 'paligemma_batch_size',
    help: 'The most requests that shared one of a generation\'s decode steps',
    buckets: [1, 2, 4, 8, 16, 32],
    registers: [this.registry],
  })
  readonly ttft = new Histogram({
    name: 'paligemma_time_to_first_token_seconds',
    help: 'Queueing plus prefill, until the first token',
    buckets: [0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60],
    registers: [this.registry],
  })
  readonly interToken = new Histogram({
    name: 'paligemma_inter_token_seconds',
    help: 'Mean time between tokens of a generation',
    buckets: [0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5],
    registers: [this.registry],
  })

  /** Records a finished generation. */
  generation(result: GenerateResult): void {
    const t = result.timings
    this.tokens.inc({ direction: 'in' }, t.promptTokens)
    this.tokens.inc({ direction: 'out' }, result.tokenIds.length)
    this.batchSize.observe(t.batchSize)
    this.ttft.observe((t.queuedMs + t.prefillMs) / 1000)
    if (t.decodeSteps > 0) this.interToken.observe(t.decodeMs / t.decodeSteps / 1000)
  }
}
