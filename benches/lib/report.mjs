// Turning the engines' JSON lines into the report: pooled rounds, ratios, markdown.

import fs from 'node:fs'
import path from 'node:path'
import { HERE, RESULTS_BEGIN, RESULTS_END, log, median, round } from './common.mjs'

/** `list` rotated left by `n`: round r starts with engine r, so no engine always runs first. */
export function rotate(list, n) {
  const k = n % list.length
  return [...list.slice(k), ...list.slice(0, k)]
}

/**
 * One engine's rounds as one row: the medians over every measured run of every round, the
 * median load, the largest peak RSS, and each round's own medians for the record.
 */
export function pooled(results) {
  if (results.length === 1) return results[0]
  // The mean of the two middle values for an even count (the children's helper takes the upper).
  const mid = (values) => {
    const v = [...values].sort((a, b) => a - b)
    return (v[Math.floor((v.length - 1) / 2)] + v[Math.ceil((v.length - 1) / 2)]) / 2
  }
  const all = (key) => results.flatMap((r) => r[key] ?? [])
  const r = { ...results[0] }
  r.ttft_runs_ms = all('ttft_runs_ms')
  r.decode_runs_ms = all('decode_runs_ms')
  r.ttft_ms = round(mid(r.ttft_runs_ms), 1)
  r.decode_ms_per_token = round(mid(r.decode_runs_ms), 2)
  r.tokens_per_s = round(1e3 / r.decode_ms_per_token, 2)
  r.load_ms = round(mid(results.map((x) => x.load_ms)), 1)
  if (r.internal) {
    r.internal = {
      prefill_ms: round(mid(results.map((x) => x.internal.prefill_ms)), 2),
      decode_ms_per_token: round(mid(results.map((x) => x.internal.decode_ms_per_token)), 3),
    }
  }
  r.peak_rss_mb = Math.max(...results.map((x) => x.peak_rss_mb))
  r.other_cores = Math.max(...results.map((x) => x.other_cores ?? 0))
  r.wall_s = round(results.reduce((sum, x) => sum + x.wall_s, 0), 1)
  r.rounds = results.map((x) => ({ ttft_ms: x.ttft_ms, decode_ms_per_token: x.decode_ms_per_token, load_ms: x.load_ms }))
  return r
}

export function ratios(ours, peer) {
  if (!ours || !peer) return null
  const q = (k) => (ours[k] && peer[k] ? round(peer[k] / ours[k], 2) : null)
  return { load: q('load_ms'), ttft: q('ttft_ms'), decode: q('decode_ms_per_token'), peak_rss: q('peak_rss_mb') }
}

/** Three significant digits at most, no exponent: 0.0152, 1.27, 10.4, 312. */
export function fmt(x) {
  if (x === null || x === undefined) return '–'
  const a = Math.abs(x)
  return a >= 100 ? x.toFixed(0) : a >= 10 ? x.toFixed(1) : a >= 1 ? x.toFixed(2) : Number(x.toPrecision(3)).toString()
}

export function markdown(report) {
  const L = []
  const m = report.machine
  L.push(`Run ${report.date} on ${m.cpu} (${m.cores} cores, ${m.threads_per_core} thread/core, ${m.memory_gb} GB${m.hypervisor ? `, ${m.hypervisor} VM` : ''}), ` +
    `${report.threads} threads on every side, f32, batch 1.`)
  L.push('')
  L.push(`Command: \`${report.command}\``)
  L.push('')
  const v = report.versions
  L.push(`Versions: ${v.rustc}; candle ${v.candle}; torch ${v.torch ?? '?'}; transformers ${v.transformers ?? '?'}; node ${v.node}; engine at ${v.git ?? '?'}, addon built ${report.package.addon_built}.`)
  L.push('')
  const bw = report.bandwidth
  if (bw) L.push(`Memory read bandwidth (streaming sum over ${bw.buffer_mib} MiB, best of ${bw.passes}): ` + bw.results.map((r) => `${r.threads} thread${r.threads > 1 ? 's' : ''} ${r.best_gb_s} GB/s (median ${r.median_gb_s})`).join(', ') + '.')
  const fl = report.compute
  const perThreads = (rs) => rs.map((r) => `${r.threads} thread${r.threads > 1 ? 's' : ''} ${r.gflop_s}`).join(', ')
  if (fl) L.push(`f32 multiply-add peak (${fl.isa} FMA chains in registers, best of 3): ` + perThreads(fl.results) + ' GFLOP/s.')
  if (fl?.int8) L.push(`int8 peak (AVX-512 VNNI \`vpdpbusd\` chains): ${perThreads(fl.int8)} GOP/s; bf16 peak (\`vdpbf16ps\`): ${fl.bf16 ? perThreads(fl.bf16) : '–'} GFLOP/s.`)
  L.push('')
  L.push(`Machine load: ${report.wait.quiet ? 'quiet' : 'NOT quiet'} at start (1-min load average ${report.wait.loadavg} after waiting ${report.wait.waitedS} s); per engine below ("other cores" = CPU used by other processes while the engine ran).`)
  L.push('')
  L.push('TTFT = time from the request to the first generated token (vision tower + prefill + first sampling); image preprocessing is not included, since every side is given the same pixel tensor. Decode = ms per token after the first. Each figure is the median of the runs; load = checkpoint folder to a ready model.')
  for (const mr of report.models) {
    L.push('')
    const rounds = mr.rounds > 1 ? ` per round, ${mr.rounds} rounds in rotated order (figures pool every round's runs)` : ''
    L.push(`### ${mr.title} (\`${mr.name}\`), ${mr.new_tokens} new tokens, ${mr.warmup} warm-up + ${mr.runs} runs${rounds}`)
    L.push('')
    L.push(`Decode reads ${fmt(mr.decode_bytes / 1e9)} GB per token (decoder + LM head in f32): a ${fmt(mr.floor_ms)} ms/token floor at ${mr.bandwidth_gb_s} GB/s ("decode % of bandwidth" = floor ÷ measured decode time). ` +
      `The time to first token needs ${fmt(mr.ttft_flops / 1e12)} TFLOP of matmuls: a ${fmt(mr.ttft_floor_ms / 1e3)} s floor at ${mr.peak_gflop_s} GFLOP/s ("TTFT % of peak" = floor ÷ measured TTFT).`)
    L.push('')
    L.push('| engine | load s | TTFT s | decode ms/token | tokens/s | peak RSS GB | decode % of bandwidth | TTFT % of peak | TTFT runs s | decode runs ms | other cores | load avg |')
    L.push('|---|---:|---:|---:|---:|---:|---:|---:|---|---|---:|---:|')
    for (const e of mr.engines) {
      if (e.error) {
        L.push(`| ${e.engine} | failed: ${e.error.replace(/\|/g, '/')} ||||||||||| `)
        continue
      }
      L.push(`| ${e.engine} | ${fmt(e.load_ms / 1e3)} | ${fmt(e.ttft_ms / 1e3)} | ${fmt(e.decode_ms_per_token)} | ${fmt(e.tokens_per_s)} | ` +
        `${fmt(e.peak_rss_mb / 1024)} | ${e.bandwidth_share !== null ? fmt(e.bandwidth_share * 100) + ' %' : '–'} | ${e.compute_share != null ? fmt(e.compute_share * 100) + ' %' : '–'} | ` +
        `${e.ttft_runs_ms.map((x) => fmt(x / 1e3)).join(', ')} | ${e.decode_runs_ms.map((x) => fmt(x)).join(', ')} | ${e.other_cores ?? '–'} | ${e.loadavg_before} |`)
    }
    const rs = Object.entries(mr.ratios).filter(([, r]) => r)
    if (rs.length) {
      L.push('')
      L.push('Ratios, peer ÷ paligemma f32 (above 1: paligemma is faster / smaller); for paligemma-<dtype> rows, paligemma f32 ÷ that row:')
      L.push('')
      L.push('| peer | load | TTFT | decode | peak RSS |')
      L.push('|---|---:|---:|---:|---:|')
      for (const [peer, r] of rs) L.push(`| ${peer} | ${r.load}× | ${r.ttft}× | ${r.decode}× | ${r.peak_rss}× |`)
    }
    const ours = mr.engines.find((e) => e.engine === 'paligemma' && !e.error)
    if (ours?.internal) L.push('', `paligemma's own timings (medians): prefill ${fmt(ours.internal.prefill_ms / 1e3)} s, decode ${fmt(ours.internal.decode_ms_per_token)} ms/token; RSS after load ${fmt(ours.rss_after_load_mb / 1024)} GB.`)
  }
  return L.join('\n')
}

export function writeResults(md) {
  const file = path.join(HERE, 'RESULTS.md')
  const text = fs.existsSync(file) ? fs.readFileSync(file, 'utf8') : `# CPU benchmark results\n\n${RESULTS_BEGIN}\n${RESULTS_END}\n`
  const a = text.indexOf(RESULTS_BEGIN)
  const b = text.indexOf(RESULTS_END)
  if (a < 0 || b < a) throw new Error(`benches/RESULTS.md has no ${RESULTS_BEGIN} … ${RESULTS_END} block`)
  fs.writeFileSync(file, `${text.slice(0, a + RESULTS_BEGIN.length)}\n${md}\n${text.slice(b)}`)
  log('updated benches/RESULTS.md')
}
