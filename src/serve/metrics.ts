/**
 * `GET /metrics` of `paligemma serve`, in the Prometheus text exposition format (version
 * 0.0.4): requests by route and status, tokens in and out, requests in flight, and the batch
 * size, time to first token and inter-token time of each generation.
 *
 * Written here rather than with prom-client: the package installs with no dependencies from a
 * registry (scripts/test-pack-install.sh checks it), and the four metric kinds it needs are a
 * few lines of text.
 *
 * @packageDocumentation
 * @internal
 */

import type { GenerateResult } from '../types.js'

/** `text/plain; version=0.0.4`, what Prometheus scrapes. */
export const METRICS_CONTENT_TYPE = 'text/plain; version=0.0.4; charset=utf-8'

const escape = (value: string): string => value.replace(/\\/g, '\\\\').replace(/"/g, '\\"').replace(/\n/g, '\\n')

/** A counter with labels. */
class Counter {
  private readonly values = new Map<string, number>()
  constructor(private readonly name: string, private readonly help: string) {}

  inc(labels: Record<string, string>, by = 1): void {
    const key = Object.entries(labels).map(([k, v]) => `${k}="${escape(v)}"`).join(',')
    this.values.set(key, (this.values.get(key) ?? 0) + by)
  }

  text(): string {
    const lines = [...this.values].map(([key, value]) => `${this.name}{${key}} ${value}`)
    return `# HELP ${this.name} ${this.help}\n# TYPE ${this.name} counter\n${lines.join('\n')}${lines.length ? '\n' : ''}`
  }
}

/** A histogram with fixed buckets. */
class Histogram {
  private readonly counts: number[]
  private sum = 0
  private count = 0
  constructor(private readonly name: string, private readonly help: string, private readonly buckets: number[]) {
    this.counts = buckets.map(() => 0)
  }

  observe(value: number): void {
    this.buckets.forEach((bound, i) => {
      if (value <= bound) this.counts[i]! += 1
    })
    this.sum += value
    this.count += 1
  }

  text(): string {
    const lines = this.buckets.map((bound, i) => `${this.name}_bucket{le="${bound}"} ${this.counts[i]}`)
    lines.push(`${this.name}_bucket{le="+Inf"} ${this.count}`, `${this.name}_sum ${this.sum}`, `${this.name}_count ${this.count}`)
    return `# HELP ${this.name} ${this.help}\n# TYPE ${this.name} histogram\n${lines.join('\n')}\n`
  }
}

/** The server's metrics. */
export class ServerMetrics {
  readonly requests = new Counter('paligemma_http_requests_total', 'HTTP requests by route and status')
  readonly tokens = new Counter('paligemma_tokens_total', 'Prompt tokens read (in) and tokens generated (out)')
  /** Generation requests running or waiting for the batch. */
  inFlight = 0
  readonly batchSize = new Histogram('paligemma_batch_size', "The most requests that shared one of a generation's decode steps", [1, 2, 4, 8, 16, 32])
  readonly ttft = new Histogram('paligemma_time_to_first_token_seconds', 'Queueing plus prefill, until the first token', [0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60])
  readonly interToken = new Histogram('paligemma_inter_token_seconds', 'Mean time between tokens of a generation', [0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5])

  /** Records a finished generation. */
  generation(result: GenerateResult): void {
    const t = result.timings
    this.tokens.inc({ direction: 'in' }, t.promptTokens)
    this.tokens.inc({ direction: 'out' }, result.tokenIds.length)
    this.batchSize.observe(t.batchSize)
    this.ttft.observe((t.queuedMs + t.prefillMs) / 1000)
    if (t.decodeSteps > 0) this.interToken.observe(t.decodeMs / t.decodeSteps / 1000)
  }

  /** Everything, in the exposition format. */
  text(): string {
    const gauge = `# HELP paligemma_requests_in_flight Generation requests running or waiting for the batch\n# TYPE paligemma_requests_in_flight gauge\npaligemma_requests_in_flight ${this.inFlight}\n`
    return [this.requests.text(), this.tokens.text(), gauge, this.batchSize.text(), this.ttft.text(), this.interToken.text()].join('')
  }
}
