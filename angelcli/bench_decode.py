"""Decode throughput of the torch backend at two context lengths on a tiny model (`just bench`).

The KV cache keeps the per-token cost flat apart from attention, so tokens/s at context 1024 should stay
close to context 16; the report gives both and their ratio (measured in the same run, no absolute targets).

    python -m angelcli.bench_decode [--contexts 16,1024] [--tokens 64] [--json]
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time


def bench(model_dir: str, contexts: list[int], tokens: int, dtype: str = "float32") -> dict:
    import torch

    from angelcli.engine import Engine
    from angelcli.loader import load_model

    torch.manual_seed(0)
    model, cfg, _ = load_model(model_dir, dtype=getattr(torch, dtype))
    engine = Engine(model, cfg, max_seq_len=max(contexts) + tokens + 8)
    out = {"model": str(model_dir), "dtype": dtype, "threads": torch.get_num_threads(), "results": []}
    for ctx in contexts:
        prompt = torch.randint(0, cfg.vocab_size, (1, ctx))
        cache = engine.new_cache(1, ctx + tokens + 1)
        logits = engine.prefill(prompt, cache)
        tok = logits.argmax(-1)
        for _ in range(3):  # warm-up steps, then roll them back
            engine.decode_step(tok, cache)
        cache.trim(3)
        t0 = time.perf_counter()
        for _ in range(tokens):
            tok = engine.decode_step(tok, cache).argmax(-1)
        dt = time.perf_counter() - t0
        out["results"].append({"context": ctx, "decode_tokens_per_s": tokens / dt, "ms_per_token": 1000 * dt / tokens})
    base = out["results"][0]["decode_tokens_per_s"]
    for r in out["results"]:
        r["ratio_vs_first"] = r["decode_tokens_per_s"] / base
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("model", nargs="?", help="checkpoint dir (default: a fresh tiny fixture)")
    ap.add_argument("--contexts", default="16,1024")
    ap.add_argument("--tokens", type=int, default=64)
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args(argv)
    contexts = [int(x) for x in args.contexts.split(",")]
    with tempfile.TemporaryDirectory() as tmp:
        model_dir = args.model
        if model_dir is None:
            from angelcli.fixtures import write_tiny_checkpoint

            model_dir = str(write_tiny_checkpoint(f"{tmp}/tiny", hidden_size=256, num_attention_heads=8,
                                                  num_key_value_heads=2, head_dim=32, num_hidden_layers=4,
                                                  num_experts=32, n_group=8, topk_group=4, num_experts_per_tok=4,
                                                  moe_intermediate_size=128, moe_shared_expert_intermediate_size=128,
                                                  intermediate_size=512, max_position_embeddings=4096))
        res = bench(model_dir, contexts, args.tokens)
    if args.json:
        print(json.dumps(res))
    else:
        for r in res["results"]:
            print(f"context {r['context']:>6}: {r['decode_tokens_per_s']:8.1f} tok/s  "
                  f"({r['ms_per_token']:.2f} ms/token, {r['ratio_vs_first']:.2f}x of context {contexts[0]})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
