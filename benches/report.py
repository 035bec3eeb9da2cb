"""Prints a side-by-side table (with ratios) from JSON lines of engine_bench / the peers."""
import json
import sys

rows = [json.loads(l) for l in open(sys.argv[1]) if l.strip().startswith("{")]
bench = [r for r in rows if "engine" in r]
checks = [r for r in rows if r.get("check") == "parity"]
for k in (r for r in rows if r.get("check") == "kernel-tests"):
    print(f"fused-kernel tests (src/cuda/tests.rs): {'ok' if k['ok'] else 'FAILED'}")
for c in checks:
    steps = f" steps max|Δ|={c['steps_maxdiff']:.2e} (graph: {c['graph']})" if c.get("dtype") == "f32" and "steps_maxdiff" in c else ""
    unfused = {"0": "unfused", "off": "unfused", "no-rope": "no-rope"}.get(c.get("fused", ""), "")
    print(f"parity {c['fixture']:<12} {c['device']:<5} {c['dtype']:<5} {c.get('step_mode', ''):<6} {unfused:<7} prefill max|Δ|={c['prefill_maxdiff']:.2e}{steps} ids={c['ids']}")
for n in (r for r in rows if r.get("check") == "node"):
    timing = f" TTFT {n['ttftMs']:.1f} ms, decode {n['decodeMsPerToken']:.2f} ms/token, graph {n['decodeGraph']}" if "ttftMs" in n else ""
    print(f"node addon {n['name']:<26} {'ok' if n['ok'] else 'FAILED ' + str(n.get('error', ''))}{timing}")
pools = [r.get("mempool") for r in bench if r["engine"] == "paligemma" and "mempool" in r]
usual_pool = max(set(pools), key=pools.count) if pools else None


def label(r):
    """Our rows carry the decode step mode (eager kernel by kernel, or a replayed CUDA graph)."""
    if r["engine"] != "paligemma" or "step_mode" not in r:
        return r["engine"]
    sampled = "+sampled" if r.get("temperature", 0) else ""
    # The memory pool's A/B row is the one whose mode differs from the run's usual one (until
    # 2026-11-28 the pool was kept by default and "release" was the A/B row; now the reverse).
    released = f"+{r['mempool']}" if r.get("mempool", usual_pool) != usual_pool else ""
    unfused = {"0": "-unfused", "off": "-unfused", "no-rope": "-no-rope"}.get(r.get("fused", ""), "")
    return f"paligemma/{r['step_mode'].lower()}{sampled}{released}{unfused}" + ("" if r.get("graph", True) or r["step_mode"] != "Graph" else "(no capture)")


keys = sorted({(r["model"], r["device"], r["dtype"], r["batch"]) for r in bench})
print(f"\n{'model':<12} {'dtype':<5} {'batch':>5} | {'engine':<30} {'load ms':>9} {'TTFT ms':>9} {'decode ms/tok':>13} {'tok/s':>8} | steps: 1st, 2nd, steady ms")
for key in keys:
    group = {label(r): r for r in bench if (r["model"], r["device"], r["dtype"], r["batch"]) == key}
    for name, r in group.items():
        steps = f"{r['first_step_ms']:.2f}, {r['second_step_ms']:.2f}, {r['steady_step_ms']:.3f}" if "steady_step_ms" in r else ""
        print(f"{key[0]:<12} {key[2]:<5} {key[3]:>5} | {name:<30} {r['load_ms']:>9.0f} {r['ttft_ms']:>9.2f} {r['decode_ms_per_token']:>13.3f} {r['tokens_per_s']:>8.1f} | {steps}")
    for peer_name in ("transformers", "transformers-compiled"):
        peer = group.get(peer_name)
        for name, ours in group.items():
            if name.startswith("paligemma") and peer:
                print(f"{'':<25} | {name}: {peer_name} / ours: TTFT {peer['ttft_ms'] / ours['ttft_ms']:.2f}x, decode {peer['decode_ms_per_token'] / ours['decode_ms_per_token']:.2f}x, throughput {ours['tokens_per_s'] / peer['tokens_per_s']:.2f}x")
