"""`angel bench --vs-reference`: the torch backend's CPU decode speed against the upstream code's.

Two baselines, both decoding the same prompt greedily in float32 with a KV cache, tokens required identical:
  * upstream: tests/upstream_bailing.py, BailingMoeV2 structured as the HF remote code
    (modeling_bailing_moe_v2.py: module per norm / projection / expert, rotary per call, eager attention with
    repeat_kv, moe_infer's host-side loop over the experts) driven by transformers' own generate() with its
    DynamicCache and causal-mask builder: what an upstream user runs. This is the acceptance baseline.
  * lean: tests/reference_bailing.py CachedReference, the same per-step ops as plain functions in a bare
    Python loop (no module calls, no generate()): a lower bound on what the upstream layout costs.
Each round runs the three decoders one after the other, rotating which goes first, after a short warm-up; the
engine runs real Engine.generate steps (forward, sampling, log-probabilities). Per implementation: decode
tok/s (steps after the first token / their wall time) and CPU time per token (time.process_time); the ratios
are baseline time over engine time per round, reported as the median over the rounds (other processes on the
machine move all three; the CPU-time ratio is the steadier figure). Different tokens fail the check (exit 1).
"""

from __future__ import annotations

import importlib.util
import json
import statistics
import time
from pathlib import Path

TESTS_DIR = Path(__file__).resolve().parent.parent / "tests"


def load_reference(name: str = "reference_bailing"):
    """tests/<name>.py of this source checkout as a module (UsageError when absent)."""
    from angelcli.errors import UsageError

    file = TESTS_DIR / f"{name}.py"
    if not file.exists():
        raise UsageError(f"--vs-reference: {file} not found (it ships with the source checkout, "
                         "not with an installed wheel)")
    spec = importlib.util.spec_from_file_location(f"angel_{name}", file)
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
    """Greedy float32 decode of `tokens` tokens, engine vs upstream vs lean reference, `rounds` times -> report."""
    import torch

    from angelcli.engine import Engine, SamplingParams
    from angelcli.errors import UsageError
    from angelcli.loader import load_model
    from angelcli.resolve import resolve_model

    if tokens < 2 or rounds < 1 or threads < 1:
        raise UsageError("--vs-reference needs --tokens >= 2, --rounds >= 1 and --threads >= 1")
    torch.set_num_threads(threads)
    lean, upstream = load_reference("reference_bailing"), load_reference("upstream_bailing")
    path = resolve_model(model)
    cfg = json.loads((path / "config.json").read_text())
    if cfg.get("quantization_config"):
        raise UsageError("--vs-reference: the reference reads BF16/FP32 checkpoints, not FP8")
    sd = state_dict_fp32(path)
    net, mcfg, _ = load_model(path, dtype=torch.float32, device="cpu")
    engine = Engine(net.eval(), mcfg, device="cpu", max_seq_len=prompt_len + tokens + 8)
    hf = upstream.UpstreamBailing.from_state_dict(cfg, sd)
    prompt = [0] + [(100 + 37 * i) % mcfg.vocab_size for i in range(prompt_len - 1)]  # fixed, reproducible
    runners = {"engine": lambda n: _run_engine(engine, prompt, n, SamplingParams(max_new_tokens=n)),
               "upstream": lambda n: _run_upstream(hf, prompt, n),
               "lean": lambda n: _run_lean(lean, cfg, sd, prompt, n)}
    _one_round(runners, min(tokens, 8), 0)  # warm-up
    per_round = [_one_round(runners, tokens, i) for i in range(rounds)]
    med = lambda key: round(statistics.median(r[key] for r in per_round), 3)  # noqa: E731
    return {
        "model": str(path), "dtype": "float32", "threads": threads, "prompt_tokens": len(prompt),
        "tokens": tokens, "rounds": rounds, "identical": all(r["identical"] for r in per_round),
        **{f"{k}_tokens_per_s": med(f"{k}_tokens_per_s") for k in runners},
        **{f"{k}_cpu_ms_per_token": med(f"{k}_cpu_ms_per_token") for k in runners},
        "ratio": med("ratio"), "cpu_time_ratio": med("cpu_time_ratio"),
        "lean_ratio": med("lean_ratio"), "lean_cpu_time_ratio": med("lean_cpu_time_ratio"),
        "per_round": per_round,
        "upstream": "tests/upstream_bailing.py (HF remote-code structure, transformers generate, DynamicCache, eager)",
        "lean": "tests/reference_bailing.py CachedReference (same ops as plain functions, bare loop)",
    }


def _run_engine(engine, prompt, n, params):
    gen = engine.generate(prompt, params)
    out = [next(gen).token_id]  # the prefill is not timed: decode speed only
    w0, c0 = time.perf_counter(), time.process_time()
    out += [step.token_id for step in gen]
    return out, time.perf_counter() - w0, time.process_time() - c0


def _run_upstream(hf, prompt, n):
    """model.generate(greedy) with a streamer stamping each token: decode time = first token .. last token."""
    import torch
    from transformers.generation.streamers import BaseStreamer

    class Stamps(BaseStreamer):
        def __init__(self):
            self.t = []

        def put(self, value):  # once with the prompt, then once per new token
            self.t.append((time.perf_counter(), time.process_time()))

        def end(self):
            pass

    st = Stamps()
    with torch.inference_mode():
        out = hf.generate(torch.tensor([prompt]), max_new_tokens=n, do_sample=False, eos_token_id=None,
                          pad_token_id=hf.config.pad_token_id, streamer=st)
    (w0, c0), (w1, c1) = st.t[1], st.t[-1]
    return out[0, len(prompt):].tolist(), w1 - w0, c1 - c0


def _run_lean(lean, cfg, sd, prompt, n):
    import torch

    r = lean.CachedReference(cfg, sd)
    with torch.inference_mode():
        out = [int(r.forward(prompt)[-1].argmax())]
        w0, c0 = time.perf_counter(), time.process_time()
        for _ in range(n - 1):
            out.append(int(r.forward([out[-1]])[-1].argmax()))
    return out, time.perf_counter() - w0, time.process_time() - c0


def _one_round(runners: dict, tokens: int, shift: int) -> dict:
    """Each decoder once, whole decodes one after the other (not step by step: interleaved steps would evict
    each other's weights from the shared L3 cache every step and time cold-cache decoders); the start rotates."""
    names = list(runners)
    names = names[shift % 3:] + names[: shift % 3]
    res = {k: runners[k](tokens) for k in names}
    n = tokens - 1
    rep = {}
    for k, (_, w, c) in res.items():
        rep[f"{k}_tokens_per_s"] = round(n / w, 2)
        rep[f"{k}_cpu_ms_per_token"] = round(1e3 * c / n, 3)
    ew, ec = res["engine"][1], res["engine"][2]
    rep.update(ratio=round(res["upstream"][1] / ew, 3), cpu_time_ratio=round(res["upstream"][2] / ec, 3),
               lean_ratio=round(res["lean"][1] / ew, 3), lean_cpu_time_ratio=round(res["lean"][2] / ec, 3),
               identical=res["engine"][0] == res["upstream"][0] == res["lean"][0], first=names[0])
    return rep


def table(rep: dict) -> str:
    lines = [f"{Path(rep['model']).name}: greedy float32 decode of {rep['tokens']} tokens, {rep['threads']} thread(s), "
             f"prompt {rep['prompt_tokens']} tokens, {rep['rounds']} rounds (median)",
             f"  angel torch backend              {rep['engine_tokens_per_s']:>9.1f} tok/s"
             f"  {rep['engine_cpu_ms_per_token']:7.2f} ms CPU/token",
             f"  upstream structure (HF generate) {rep['upstream_tokens_per_s']:>9.1f} tok/s"
             f"  {rep['upstream_cpu_ms_per_token']:7.2f} ms CPU/token",
             f"  lean reference (bare loop)       {rep['lean_tokens_per_s']:>9.1f} tok/s"
             f"  {rep['lean_cpu_ms_per_token']:7.2f} ms CPU/token",
             f"  vs upstream: {rep['ratio']:.2f}x wall, {rep['cpu_time_ratio']:.2f}x CPU time; "
             f"vs lean: {rep['lean_ratio']:.2f}x wall, {rep['lean_cpu_time_ratio']:.2f}x CPU time",
             f"  identical tokens: {'yes' if rep['identical'] else 'NO'}"]
    return "\n".join(lines)
