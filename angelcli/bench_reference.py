"""`angel bench --vs-reference`: the torch backend's CPU decode speed against the upstream-shaped reference.

The reference is tests/reference_bailing.py's CachedReference: the exactness tests' oracle laid out the way
the upstream HF remote code decodes (eager attention with repeat_kv, DynamicCache-style concatenation,
moe_infer's host-side loop over the experts), without HF's module-call and output overhead, so the ratio is
if anything conservative against the upstream code itself. Both decode the same prompt greedily in float32
with a KV cache, one after the other in each round (alternating which goes first) after a short warm-up;
the engine runs real Engine.generate steps (forward, sampling, log-probabilities). Reported per
implementation: decode tok/s (steps after the first token / their wall time) and CPU time per token; the
ratios are engine over reference per round, and their median over the rounds (other processes on the
machine move both; the median of several rounds and the CPU-time ratio are the steadier figures). Tokens
must be identical, else the check fails (exit 1).
"""

from __future__ import annotations

import importlib.util
import json
import statistics
import time
from pathlib import Path

REFERENCE_FILE = Path(__file__).resolve().parent.parent / "tests" / "reference_bailing.py"


def load_reference():
    """The tests/reference_bailing.py module of this source checkout (UsageError when absent)."""
    from angelcli.errors import UsageError

    if not REFERENCE_FILE.exists():
        raise UsageError(f"--vs-reference: {REFERENCE_FILE} not found (it ships with the source checkout, "
                         "not with an installed wheel)")
    spec = importlib.util.spec_from_file_location("angel_reference_bailing", REFERENCE_FILE)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def state_dict_fp32(path: Path) -> dict:
    """Every tensor of a (bf16 or fp32) safetensors checkpoint as float32, by checkpoint name."""
    from safetensors.torch import load_file

    sd = {}
    for f in sorted(path.glob("*.safetensors")):
        sd.update({k: v.float() for k, v in load_file(f).items()})
    return sd


def run_vs_reference(model: str | None = None, *, tokens: int = 128, threads: int = 1, rounds: int = 3,
                     prompt_len: int = 41) -> dict:
    """Greedy float32 decode of `tokens` tokens, engine vs reference, `rounds` times -> report dict."""
    import torch

    from angelcli.engine import Engine, SamplingParams
    from angelcli.errors import UsageError
    from angelcli.loader import load_model
    from angelcli.resolve import resolve_model

    if tokens < 2 or rounds < 1 or threads < 1:
        raise UsageError("--vs-reference needs --tokens >= 2, rounds >= 1 and --threads >= 1")
    torch.set_num_threads(threads)
    ref = load_reference()
    path = resolve_model(model)
    cfg = json.loads((path / "config.json").read_text())
    if cfg.get("quantization_config"):
        raise UsageError("--vs-reference: the reference reads BF16/FP32 checkpoints, not FP8")
    sd = state_dict_fp32(path)
    net, mcfg, _ = load_model(path, dtype=torch.float32, device="cpu")
    engine = Engine(net.eval(), mcfg, device="cpu", max_seq_len=prompt_len + tokens + 8)
    prompt = [0] + [(100 + 37 * i) % mcfg.vocab_size for i in range(prompt_len - 1)]  # fixed, reproducible
    per_round = []
    params = SamplingParams(max_new_tokens=tokens)
    _one_round(ref, cfg, sd, engine, prompt, min(tokens, 8), SamplingParams(max_new_tokens=min(tokens, 8)), True)  # warm-up
    for i in range(rounds):
        per_round.append(_one_round(ref, cfg, sd, engine, prompt, tokens, params, engine_first=i % 2 == 0))
    identical = all(r["identical"] for r in per_round)
    med = lambda key: statistics.median(r[key] for r in per_round)  # noqa: E731
    return {
        "model": str(path), "dtype": "float32", "threads": threads, "prompt_tokens": len(prompt),
        "tokens": tokens, "rounds": rounds, "identical": identical,
        "engine_tokens_per_s": round(med("engine_tokens_per_s"), 2),
        "reference_tokens_per_s": round(med("reference_tokens_per_s"), 2),
        "ratio": round(med("ratio"), 3), "cpu_time_ratio": round(med("cpu_time_ratio"), 3),
        "per_round": per_round,
        "reference": "tests/reference_bailing.py CachedReference (upstream modeling_bailing_moe_v2.py layout, eager)",
    }


def _one_round(ref, cfg, sd, engine, prompt, tokens, params, engine_first: bool) -> dict:
    """One greedy decode by each implementation, one after the other (not step by step: interleaved steps
    would evict each other's weights from the shared L3 cache every step and time two cold-cache decoders)."""
    import torch

    wall, cpu = time.perf_counter, time.thread_time

    def run_engine():
        gen = engine.generate(prompt, params)
        out = [next(gen).token_id]  # the prefill is not timed: decode speed only
        w0, c0 = wall(), cpu()
        out += [step.token_id for step in gen]
        return out, wall() - w0, cpu() - c0

    def run_reference():
        r = ref.CachedReference(cfg, sd)
        with torch.inference_mode():
            out = [int(r.forward(prompt)[-1].argmax())]
            w0, c0 = wall(), cpu()
            for _ in range(tokens - 1):
                out.append(int(r.forward([out[-1]])[-1].argmax()))
        return out, wall() - w0, cpu() - c0

    if engine_first:
        (ours, ew, ec), (theirs, rw, rc) = run_engine(), run_reference()
    else:
        (theirs, rw, rc), (ours, ew, ec) = run_reference(), run_engine()
    n = tokens - 1
    return {"engine_tokens_per_s": round(n / ew, 2), "reference_tokens_per_s": round(n / rw, 2),
            "engine_cpu_ms_per_token": round(1e3 * ec / n, 3), "reference_cpu_ms_per_token": round(1e3 * rc / n, 3),
            "ratio": round(rw / ew, 3), "cpu_time_ratio": round(rc / ec, 3) if ec else None,
            "identical": ours == theirs}


def table(rep: dict) -> str:
    lines = [f"{Path(rep['model']).name}: greedy float32 decode of {rep['tokens']} tokens, {rep['threads']} thread(s), "
             f"prompt {rep['prompt_tokens']} tokens, {rep['rounds']} rounds (median)",
             f"  angel torch backend  {rep['engine_tokens_per_s']:>9.1f} tok/s",
             f"  reference (upstream) {rep['reference_tokens_per_s']:>9.1f} tok/s",
             f"  ratio {rep['ratio']:.2f}x wall time, {rep['cpu_time_ratio']:.2f}x CPU time; identical tokens: "
             f"{'yes' if rep['identical'] else 'NO'}"]
    return "\n".join(lines)
