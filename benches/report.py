"""Prints a side-by-side table (with ratios) from JSON lines of engine_bench / the peers."""
import json
import sys

rows = [json.loads(l) for l in open(sys.argv[1]) if l.strip().startswith("{")]
bench = [r for r in rows if "engine" in r]
checks = [r for r in rows if r.get("check") == "parity"]
for c in checks:
    print(f"parity {c['fixture']:<12} {c['device']:<5} {c['dtype']:<5} prefill max|Δ|={c['prefill_maxdiff']:.2e} ids={c['ids']}")
keys = sorted({(r["model"], r["device"], r["dtype"], r["batch"]) for r in bench})
print(f"\n{'model':<12} {'dtype':<5} {'batch':>5} | {'engine':<13} {'load ms':>9} {'TTFT ms':>9} {'decode ms/tok':>13} {'tok/s':>8}")
for key in keys:
    group = {r["engine"]: r for r in bench if (r["model"], r["device"], r["dtype"], r["batch"]) == key}
    for name, r in group.items():
        print(f"{key[0]:<12} {key[2]:<5} {key[3]:>5} | {name:<13} {r['load_ms']:>9.0f} {r['ttft_ms']:>9.2f} {r['decode_ms_per_token']:>13.3f} {r['tokens_per_s']:>8.1f}")
    ours, peer = group.get("paligemma"), group.get("transformers")
    if ours and peer:
        print(f"{'':<25} | ratio (transformers / ours): TTFT {peer['ttft_ms'] / ours['ttft_ms']:.2f}x, decode {peer['decode_ms_per_token'] / ours['decode_ms_per_token']:.2f}x")
