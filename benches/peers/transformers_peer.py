"""Hugging Face transformers on PyTorch: the reference peer for benches/ and scripts/gpu-check.sh.

Loads the same checkpoint folder as the engine, builds the same prompt (image tokens, <bos>,
eight text ids, "\n") and the same synthetic pixels, and prints one JSON line with load time,
time to first token and decode ms/token (medians over --runs, after one warm-up).

By default each run is two generate calls (1 token for TTFT, N tokens for decode). With
--single-pass (batch 1 only; used by the CPU harness benches/run.mjs) one N-token call per run
is timed through a streamer: the first generated token's arrival is TTFT, the rest is decode.

With --compile the peer runs transformers' fastest documented setup, a static KV cache with the
forward pass compiled by torch.compile (mode "reduce-overhead": CUDA graphs on a GPU), reported
as engine "transformers-compiled". Compilation happens in the warm-up runs, so give it two.
"""
import argparse
import json
import os
import resource
import time

import torch
from transformers import PaliGemmaForConditionalGeneration
from transformers.generation.streamers import BaseStreamer

TEXT_IDS = [21209, 659, 4401, 603, 476, 2204, 576, 573, 108]


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--model", required=True)
    p.add_argument("--device", default="cpu")
    p.add_argument("--dtype", default="f32", choices=["f32", "bf16", "f16"])
    p.add_argument("--batch", type=int, default=1)
    p.add_argument("--new-tokens", type=int, default=32)
    p.add_argument("--runs", type=int, default=3)
    p.add_argument("--threads", type=int, default=0)
    p.add_argument("--attn", default="sdpa")
    p.add_argument("--warmup", type=int, default=1)
    p.add_argument("--single-pass", action="store_true")
    p.add_argument("--compile", action="store_true")
    args = p.parse_args()
    if args.single_pass and args.batch != 1:
        p.error("--single-pass needs --batch 1")
    if args.threads:
        torch.set_num_threads(args.threads)
    dtype = {"f32": torch.float32, "bf16": torch.bfloat16, "f16": torch.float16}[args.dtype]
    dev = torch.device(args.device)

    def sync():
        if dev.type == "cuda":
            torch.cuda.synchronize()

    t0 = time.perf_counter()
    model = PaliGemmaForConditionalGeneration.from_pretrained(args.model, dtype=dtype, attn_implementation=args.attn).to(dev).eval()
    if args.compile:
        # transformers compiles the decoding forward itself (CompileConfig, "reduce-overhead")
        # when the cache is static; the prefill with its image merge stays eager.
        model.generation_config.cache_implementation = "static"
    sync()
    load_ms = (time.perf_counter() - t0) * 1e3
    cfg = model.config
    r = cfg.vision_config.image_size
    p_tokens = (r // cfg.vision_config.patch_size) ** 2
    vocab = cfg.text_config.vocab_size
    ids = [cfg.image_token_index] * p_tokens + [cfg.bos_token_id or 2] + [i % vocab for i in TEXT_IDS]
    input_ids = torch.tensor([ids] * args.batch, device=dev)
    idx = torch.arange(3 * r * r, dtype=torch.int64)
    pixels = torch.stack([(((idx * 7 + b * 13) % 255).float() / 127.5 - 1.0).reshape(3, r, r) for b in range(args.batch)]).to(dev, dtype)
    inputs = dict(
        input_ids=input_ids,
        attention_mask=torch.ones_like(input_ids),
        token_type_ids=torch.zeros_like(input_ids),  # the whole prompt is the bidirectional prefix
        pixel_values=pixels,
    )

    def run(n):
        sync()
        t = time.perf_counter()
        with torch.inference_mode():
            model.generate(**inputs, max_new_tokens=n, min_new_tokens=n, do_sample=False)
        sync()
        return (time.perf_counter() - t) * 1e3

    class Clock(BaseStreamer):
        """Timestamps every put(): the first holds the prompt, the next ones one new token each."""

        def __init__(self):
            self.stamps = []

        def put(self, value):
            self.stamps.append(time.perf_counter())

        def end(self):
            pass

    def run_single(n):
        clock = Clock()
        t = time.perf_counter()
        with torch.inference_mode():
            model.generate(**inputs, max_new_tokens=n, min_new_tokens=n, do_sample=False, streamer=clock)
        tokens = clock.stamps[1:]
        return (tokens[0] - t) * 1e3, (tokens[-1] - tokens[0]) * 1e3 / max(len(tokens) - 1, 1)

    # A static cache is sized by the first call and reused by calls that fit it, so compiled
    # warm-ups generate the full length: the graphs are then captured before any timed run.
    for _ in range(args.warmup):
        run(args.new_tokens if args.compile else 2)
    ttft, decode = [], []
    for _ in range(args.runs):
        if args.single_pass:
            first, per_token = run_single(args.new_tokens)
            ttft.append(first)
            decode.append(per_token)
            continue
        first = run(1)
        total = run(args.new_tokens)
        ttft.append(first)
        decode.append((total - first) / max(args.new_tokens - 1, 1))
    med = lambda v: sorted(v)[len(v) // 2]
    d = med(decode)
    print(json.dumps({
        "engine": "transformers-compiled" if args.compile else "transformers", "model": os.path.basename(os.path.normpath(args.model)), "device": args.device,
        "dtype": args.dtype, "batch": args.batch, "attn": args.attn, "load_ms": round(load_ms, 1),
        "ttft_ms": round(med(ttft), 2), "decode_ms_per_token": round(d, 3), "tokens_per_s": round(args.batch * 1e3 / d, 1),
        "peak_rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1),
        "cpu_s": round(sum(resource.getrusage(resource.RUSAGE_SELF)[:2]), 2), "threads": torch.get_num_threads(),
        "new_tokens": args.new_tokens, "runs": args.runs, "warmup": args.warmup,
        "ttft_runs_ms": [round(x, 1) for x in ttft], "decode_runs_ms": [round(x, 2) for x in decode],
        "versions": {"torch": torch.__version__, "transformers": __import__("transformers").__version__},
    }), flush=True)


if __name__ == "__main__":
    main()
