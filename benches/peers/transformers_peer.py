"""Hugging Face transformers on PyTorch: the reference peer for benches/ and scripts/gpu-check.sh.

Loads the same checkpoint folder as the engine, builds the same prompt (image tokens, <bos>,
eight text ids, "\n") and the same synthetic pixels, and prints one JSON line with load time,
time to first token and decode ms/token (medians over --runs, after one warm-up).
"""
import argparse
import json
import os
import resource
import time

import torch
from transformers import PaliGemmaForConditionalGeneration

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
    args = p.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    dtype = {"f32": torch.float32, "bf16": torch.bfloat16, "f16": torch.float16}[args.dtype]
    dev = torch.device(args.device)

    def sync():
        if dev.type == "cuda":
            torch.cuda.synchronize()

    t0 = time.perf_counter()
    model = PaliGemmaForConditionalGeneration.from_pretrained(args.model, dtype=dtype, attn_implementation=args.attn).to(dev).eval()
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

    run(2)
    ttft, decode = [], []
    for _ in range(args.runs):
        first = run(1)
        total = run(args.new_tokens)
        ttft.append(first)
        decode.append((total - first) / max(args.new_tokens - 1, 1))
    med = lambda v: sorted(v)[len(v) // 2]
    d = med(decode)
    print(json.dumps({
        "engine": "transformers", "model": os.path.basename(os.path.normpath(args.model)), "device": args.device,
        "dtype": args.dtype, "batch": args.batch, "attn": args.attn, "load_ms": round(load_ms, 1),
        "ttft_ms": round(med(ttft), 2), "decode_ms_per_token": round(d, 3), "tokens_per_s": round(args.batch * 1e3 / d, 1),
        "peak_rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1),
        "versions": {"torch": torch.__version__, "transformers": __import__("transformers").__version__},
    }), flush=True)


if __name__ == "__main__":
    main()
