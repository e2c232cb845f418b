"""`angel bench`: prefill and decode throughput, and decode as a fraction of the memory-bandwidth roofline.

For each (weights format, batch, context): B random prompts of `context` tokens go through
Engine.generate_batch (so the same code runs for every backend and under tensor parallelism) with greedy
decoding of `tokens` new tokens and no stop ids:
    prefill tok/s  = B x context / time to the first token
    decode tok/s   = B x (tokens - 1) / time from the first to the last token
    step time      = that time / (tokens - 1)
    roofline       = bytes one decode step must read on one GPU / step time / peak bandwidth
    bytes per step = all non-expert weights (attention, dense FFN, shared experts, routers, norms, lm_head)
                     + the routed experts a batch of B tokens touches per layer, E (1 - (1 - k/E)^B) of them
                       (expected under uniform routing), each with its scales
                     + B embedding rows + the KV cache read: B x context x KV bytes per token
Peak bandwidth: angelcli/assets/gpus.json for known GPUs; on CPU it is measured with a large tensor copy
(bytes read + written / time), so the CPU fraction says how close the torch backend gets to memcpy.

On CPU the run is scaled down (a small generated model, contexts 1K/32K -> 128/1024, batch 32 -> 8) and
says so in its `note`: the numbers exist to catch regressions, not to describe a GPU.
"""

from __future__ import annotations

import tempfile
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

GPU_DEFAULTS = dict(batches=(1, 32), contexts=(1024, 32768), tokens=32)
CPU_DEFAULTS = dict(batches=(1, 8), contexts=(128, 1024), tokens=8)
CPU_NOTE = ("scaled down on CPU: a generated 4-layer model (hidden 256, 32 experts), contexts 1K/32K -> 128/1024, "
            "batch 32 -> 8, torch backend; for regression tracking only")
BENCH_MODEL = dict(hidden_size=256, num_attention_heads=8, num_key_value_heads=2, head_dim=32, num_hidden_layers=4,
                   num_experts=32, n_group=8, topk_group=4, num_experts_per_tok=4, moe_intermediate_size=128,
                   moe_shared_expert_intermediate_size=128, intermediate_size=512, max_position_embeddings=4096)


@dataclass
class BenchRow:
    weights: str
    batch: int
    context: int
    prefill_tokens_per_s: float
    decode_tokens_per_s: float
    decode_step_ms: float
    bytes_per_step: int
    roofline_fraction: float


@dataclass
class BenchReport:
    device: str
    backend: str
    tp: int
    peak_bandwidth_gbs: float
    bandwidth_source: str
    scaled_down: bool
    note: str
    results: list[BenchRow] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)  # configurations the KV budget cannot hold at once

    def to_dict(self) -> dict:
        return asdict(self)

    def table(self) -> str:
        head = (f"{'weights':<10}{'batch':>6}{'context':>9}{'prefill tok/s':>15}{'decode tok/s':>14}"
                f"{'step ms':>9}{'MB/step':>9}{'roofline':>10}")
        rows = [f"{r.weights:<10}{r.batch:>6}{r.context:>9}{r.prefill_tokens_per_s:>15.1f}"
                f"{r.decode_tokens_per_s:>14.1f}{r.decode_step_ms:>9.2f}{r.bytes_per_step / 1e6:>9.1f}"
                f"{r.roofline_fraction:>10.1%}" for r in self.results]
        top = (f"device {self.device}, backend {self.backend}, TP {self.tp}, peak bandwidth "
               f"{self.peak_bandwidth_gbs:.0f} GB/s ({self.bandwidth_source})")
        skipped = [f"skipped: {x}" for x in self.skipped]
        return "\n".join([top] + ([f"note: {self.note}"] if self.note else []) + [head] + rows + skipped)


# ------------------------------------------------------------------------------------------ bytes


def step_bytes(model, cfg, batch: int, context: int, kv_bytes_per_token: int) -> int:
    """Bytes one decode step of `batch` rows at `context` reads on this rank (see module docstring)."""
    expert_params, dense = [], 0
    for name, p in model.named_parameters():
        nbytes = p.numel() * p.element_size()
        if ".mlp.experts." in name:
            expert_params.append(nbytes)
        elif name != "model.word_embeddings.weight":
            dense += nbytes
    per_expert = sum(expert_params) / max(1, cfg.num_moe_layers * cfg.num_experts)
    E, k = cfg.num_experts, cfg.num_experts_per_tok
    touched = E * (1 - (1 - k / E) ** batch)
    emb = model.model.word_embeddings.weight
    rows = batch * emb.shape[1] * emb.element_size()
    return int(dense + cfg.num_moe_layers * touched * per_expert + rows + batch * context * kv_bytes_per_token)


def cpu_copy_bandwidth(mb: int = 256, repeats: int = 5) -> float:
    """Measured CPU memory bandwidth in GB/s: best of `repeats` copies of an mb-MB tensor (read + write)."""
    import torch

    src = torch.empty(mb * 1024 * 1024 // 4, dtype=torch.float32).fill_(1.0)
    dst = torch.empty_like(src)
    best = float("inf")
    for _ in range(repeats):
        t0 = time.perf_counter()
        dst.copy_(src)
        best = min(best, time.perf_counter() - t0)
    return 2 * src.numel() * 4 / best / 1e9


def peak_bandwidth(device: str) -> tuple[float, str]:
    """(GB/s, where the figure comes from) for the device the benchmark runs on."""
    if device.startswith("cuda"):
        import torch

        from angelcli.planner import find_gpu

        name = torch.cuda.get_device_name(torch.device(device))
        gpu = find_gpu(name)
        if gpu is not None:
            return float(gpu["bandwidth_gbs"]), f"gpus.json: {gpu['name']}"
        return float("nan"), f"{name} is not in angelcli/assets/gpus.json (add it for a roofline)"
    return cpu_copy_bandwidth(), "measured tensor copy"


# ------------------------------------------------------------------------------------------- runs


def measure(rt, batch: int, context: int, tokens: int, seed: int = 0) -> tuple[float, float, float]:
    """-> (prefill tok/s, decode tok/s, decode step seconds) for one configuration."""
    import torch

    from angelcli.engine.sampling import SamplingParams

    g = torch.Generator().manual_seed(seed)
    prompts = [torch.randint(0, rt.cfg.vocab_size, (context,), generator=g).tolist() for _ in range(batch)]
    params = SamplingParams(max_new_tokens=tokens)  # greedy, no stop ids: every row runs `tokens` steps
    t0 = time.perf_counter()
    first = last = None
    for _, _step in rt.engine.generate_batch(prompts, params):
        now = time.perf_counter()
        first = first or now
        last = now
    if rt.device.startswith("cuda"):
        torch.cuda.synchronize()
    prefill = batch * context / (first - t0)
    steps = max(1, tokens - 1)
    step_s = (last - first) / steps
    return prefill, batch / step_s, step_s


def run_bench(model: str | None, *, device: str = "auto", backend: str = "auto", tp: int = 1,
              batches=None, contexts=None, tokens: int | None = None, formats=("bf16", "fp8")) -> BenchReport:
    """Benchmark MODEL (default: generated bench models in each of `formats`, the CPU regression setup)."""
    import torch

    from angelcli.runtime import open_runtime, pick_device

    dev = pick_device(device)
    cpu = not dev.startswith("cuda")
    defaults = CPU_DEFAULTS if cpu else GPU_DEFAULTS
    batches, contexts = tuple(batches or defaults["batches"]), tuple(contexts or defaults["contexts"])
    tokens = tokens or defaults["tokens"]
    peak, source = peak_bandwidth(dev)
    with tempfile.TemporaryDirectory() as tmp:
        targets = _targets(model, formats, Path(tmp))
        report = None
        for fmt, path in targets:
            rt = open_runtime(str(path), device=device, dtype="bfloat16" if not cpu else "auto", backend=backend,
                              max_seq_len=max(contexts) + tokens + 8, tp=tp)
            try:
                if report is None:
                    report = BenchReport(rt.device, rt.backend, tp, peak, source, scaled_down=cpu and model is None,
                                         note=CPU_NOTE if cpu and model is None else "")
                measure(rt, 1, min(contexts), 4)  # warm-up: kernels compile, graphs get captured
                kv_tok = 2 * rt.cfg.num_hidden_layers * rt.model.model.layers[0].attention.num_kv \
                    * rt.cfg.head_dim * torch.empty((), dtype=rt.engine.dtype).element_size()
                budget = getattr(rt.engine.net, "kv_tokens", None)
                for b in batches:
                    for ctx in contexts:
                        if budget and b * (ctx + tokens) > budget:
                            report.skipped.append(f"{fmt} batch {b} context {ctx}: needs {b * (ctx + tokens):,} "
                                                  f"KV tokens, the budget is {budget:,}")
                            continue
                        prefill, decode, step_s = measure(rt, b, ctx, tokens)
                        nbytes = step_bytes(rt.model, rt.cfg, b, ctx, kv_tok)
                        report.results.append(BenchRow(fmt, b, ctx, round(prefill, 1), round(decode, 1),
                                                       round(step_s * 1e3, 3), nbytes,
                                                       round(nbytes / step_s / (peak * 1e9), 4)))
            finally:
                rt.close()
    return report


def _targets(model: str | None, formats, tmp: Path) -> list[tuple[str, Path]]:
    """(label, checkpoint dir) pairs: the given model as it is, or generated bench models per format."""
    if model is not None:
        from angelcli.config import ModelConfig
        from angelcli.resolve import resolve_model

        path = resolve_model(model)
        cfg = ModelConfig.from_file(path)
        return [("fp8" if cfg.quantization_config else "bf16", path)]
    from angelcli.fixtures import write_fp8_checkpoint, write_tiny_checkpoint

    out = []
    for fmt in formats:
        if fmt == "bf16":
            out.append((fmt, write_tiny_checkpoint(tmp / fmt, tokenizer=False, **BENCH_MODEL)))
        elif fmt == "fp8":
            out.append((fmt, write_fp8_checkpoint(tmp / fmt, "fp8-block", **BENCH_MODEL)))
        else:
            from angelcli.errors import UsageError

            raise UsageError(f"--formats: unknown weights format {fmt!r} (bf16, fp8)")
    return out
