"""`angel bench MODEL --count-launches`: how many kernels one decode step and one prefill chunk launch.

No weights and no GPU: the model is built on the meta device from its config (bundled for aliases), FP8
modules swapped in as the config's quantization_config says, one tensor-parallel rank's slice when --tp N.
Then the triton backend's own code path runs (PagedModel with ops="triton"): Triton host wrappers on meta
tensors do all their checks and config lookups and only record the launch (ops/_runtime.launch), and a
TorchDispatchMode records every aten op that would launch a kernel on the device (views, allocations and
host-side tensors do not). Tensor-parallel collectives are NCCL calls, neither Triton nor aten kernels:
they are reported apart (`collectives_per_step`, `collectives_per_moe_layer`, two per MoE layer under TP)
and not included in the kernel counts.

    decode step      one token for each of `batch` rows at `context` cached tokens, through the decode graph
                     path (the graph's contents plus the few copies into its static buffers)
    prefill chunk    4096 tokens of one sequence (the engine's prefill_chunk)
    per MoE layer    decode-step launches of the model minus those of the same model with one MoE layer less
    config_misses    every GEMM / fused-MoE launch-config lookup that found no shipped file for the device
                     name (they fall back to the default heuristic)
"""

from __future__ import annotations

import contextlib
from collections import Counter

PREFILL_CHUNK = 4096


def _count_aten():
    """A TorchDispatchMode counting aten ops that launch device kernels into a Counter (.counts)."""
    import torch
    from torch.utils._python_dispatch import TorchDispatchMode

    free = {"empty", "empty_strided", "empty_like", "new_empty", "new_empty_strided", "lift_fresh", "detach",
            "alias", "_local_scalar_dense", "resize_", "set_"}

    class Mode(TorchDispatchMode):
        def __init__(self):
            super().__init__()
            self.counts: Counter = Counter()

        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            out = func(*args, **(kwargs or {}))
            name = func.overloadpacket.__name__
            outs = out if isinstance(out, (tuple, list)) else (out,)
            on_device = any(isinstance(t, torch.Tensor) and t.device.type == "meta" for t in outs)
            if on_device and name not in free and not (func.is_view and _aliases(out, args)):
                self.counts[f"aten.{name}"] += 1
            return out

    def _aliases(out, args) -> bool:
        """A view-like op (to, reshape, contiguous may alias or copy) that returned a view: no kernel."""
        src = next((a for a in args if isinstance(a, torch.Tensor)), None)
        return not isinstance(out, torch.Tensor) or src is None or \
            out.untyped_storage()._cdata == src.untyped_storage()._cdata

    return Mode()


@contextlib.contextmanager
def record_config_lookups(device_name: str):
    """Look launch configs up as if on `device_name` and record every lookup (ops.tuning's hooks): yields a
    list of {"kernel", "key", "quant", "m", "device", "hit", "file", "reason"} dicts."""
    from angelcli.ops import tuning

    with tuning.device_override(device_name), tuning.record_lookups() as lookups:
        yield lookups


class _Counting:
    """Rank 0 of a `world`-rank group whose collectives only count themselves (into `.counts`)."""

    def __init__(self, world: int):
        from angelcli.model.parallel import TensorParallel

        self.tp = TensorParallel(0, world)
        self.counts: Counter = Counter()
        self.tp.all_reduce = self.all_reduce  # instance attributes: PagedModel calls tp.all_reduce(x)
        self.tp.all_gather_last = self.all_gather_last

    def all_reduce(self, x):
        self.counts["nccl.all_reduce"] += 1
        return x

    def all_gather_last(self, x):
        import torch

        self.counts["nccl.all_gather"] += 1
        return torch.cat([x] * self.tp.world, dim=-1)


def meta_model(cfg, tp=None):
    """BailingMoeForCausalLM on the meta device, bf16, with the FP8 modules the quantization_config implies
    (native fp8: 128x128 block scales; compressed-tensors: per-channel)."""
    import torch

    from angelcli.model.bailing import BailingMoeForCausalLM, keeps_high_precision
    from angelcli.model.fp8 import Fp8Linear, parse_quant_config
    from angelcli.model.layers import Rotary

    scheme = parse_quant_config(cfg.quantization_config)
    block = scheme is not None and scheme.weight_strategy in ("block", "mixed")
    old = torch.get_default_dtype()
    torch.set_default_dtype(torch.bfloat16)
    try:
        with torch.device("meta"):
            model = BailingMoeForCausalLM(cfg, tp)
            if scheme is not None:
                for name, mod in list(model.named_modules()):
                    if isinstance(mod, torch.nn.Linear) and not keeps_high_precision(name + ".weight") \
                            and name != "lm_head":
                        n, k = mod.out_features, mod.in_features
                        shape = (-(-n // 128), -(-k // 128)) if block else (n,)
                        parent, _, attr = name.rpartition(".")
                        setattr(model.get_submodule(parent), attr, Fp8Linear(k, n, shape))
                for layer in model.model.layers:
                    ex = getattr(layer.mlp, "experts", None)
                    if ex is not None:
                        i2, h = ex.w13.shape[1], ex.w13.shape[2]
                        if block:
                            ex.to_fp8((-(-i2 // 128), -(-h // 128)), (-(-h // 128), -(-ex.inter // 128)), False)
                        else:
                            ex.to_fp8((i2,), (h,), False)
            for layer in model.model.layers:
                gate = getattr(layer.mlp, "gate", None)
                if gate is not None and getattr(gate, "expert_bias", None) is not None:
                    gate.expert_bias.data = gate.expert_bias.data.float()
    finally:
        torch.set_default_dtype(old)
    model.rotary = Rotary(cfg).to("meta")
    return model.eval()


def _count(cfg, tp: int, batch: int, context: int, prefill: bool) -> tuple[Counter, Counter]:
    """(decode-step launches, prefill-chunk launches) of one rank of `cfg` by kernel name."""
    import torch

    from angelcli.engine.triton_backend import PagedModel
    from angelcli.ops._runtime import record_launches
    from angelcli.planner import GRAPH_MAX_BATCH

    group = _Counting(tp) if tp > 1 else None
    model = meta_model(cfg, group.tp if group else None)
    blocks = batch * (-(-(context + 8) // 16) + 1) + -(-(PREFILL_CHUNK + 8) // 16) + 1
    kv = 16 * blocks  # a fixed pool holding both caches, as on CUDA (no growth copies)
    net = PagedModel(model, cfg, ops="triton", cuda_graphs="replay", max_seq_len=context + PREFILL_CHUNK + 8,
                     graph_max_batch=max(batch, GRAPH_MAX_BATCH), kv_tokens=kv)

    def counted(run) -> Counter:
        mode = _count_aten()
        if group:
            group.counts = Counter()
        with record_launches() as launches, mode:
            run()
        return Counter(launch.name for launch in launches) + mode.counts + (group.counts if group else Counter())

    with torch.inference_mode():
        cache = net.new_cache(batch, context + 8)
        cache.reserve(context)  # a context already in the cache (nothing to compute on meta)
        cache.advance(context)
        ids = torch.zeros(batch, 1, dtype=torch.long, device="meta")
        net(ids, cache)  # the first call captures the (stand-in) graph; the counted one is a plain replay
        step = counted(lambda: net(ids, cache))
        chunk = Counter()
        if prefill:
            one = net.new_cache(1, PREFILL_CHUNK + 8)
            chunk = counted(lambda: net(torch.zeros(1, PREFILL_CHUNK, dtype=torch.long, device="meta"), one,
                                        last_only=True))
    return step, chunk


def count_launches(model: str, *, tp: int = 1, batch: int = 1, device_name: str = "NVIDIA H20",
                   context: int = 1024) -> dict:
    """The report `angel bench MODEL --count-launches --json` prints (see the module docstring)."""
    from dataclasses import replace

    from angelcli.errors import UsageError
    from angelcli.model.parallel import check_tp
    from angelcli.planner import plan_config

    cfg, source = plan_config(model)
    if tp < 1 or batch < 1:
        raise UsageError("--tp and --batch must be >= 1")
    problems = check_tp(cfg, tp, block_fp8=cfg.quantization_config is not None)
    if tp > 1 and problems:
        raise UsageError(f"--tp {tp}: {problems[0]}")
    with record_config_lookups(device_name) as lookups:
        step, chunk = _count(cfg, tp, batch, context, prefill=True)
    moe_layers = cfg.num_moe_layers
    fewer = replace(cfg, num_hidden_layers=cfg.num_hidden_layers - 1) if moe_layers > 1 else None
    less = None
    if fewer is not None:
        with record_config_lookups(device_name):
            less, _ = _count(fewer, tp, batch, context, prefill=False)
    kernels, colls = _split(step)
    chunk_kernels, chunk_colls = _split(chunk)
    per_layer = per_layer_colls = None
    if less is not None:
        less_kernels, less_colls = _split(less)
        per_layer = sum(kernels.values()) - sum(less_kernels.values())
        per_layer_colls = sum(colls.values()) - sum(less_colls.values())
    misses = sorted({f"{rec['file']} ({rec['reason']})" if rec.get("reason") not in (None, "missing") else rec["file"]
                     for rec in lookups if not rec["hit"]})
    return {"model": model, "config_source": source, "tp": tp, "batch": batch, "context": context,
            "device_name": device_name, "kernels_per_step": sum(kernels.values()),
            "kernels_per_moe_layer": per_layer, "kernels_per_prefill_chunk": sum(chunk_kernels.values()),
            "collectives_per_step": sum(colls.values()), "collectives_per_moe_layer": per_layer_colls,
            "by_kernel": dict(kernels.most_common()), "prefill_by_kernel": dict(chunk_kernels.most_common()),
            "collectives": dict(colls.most_common()), "prefill_collectives": dict(chunk_colls.most_common()),
            "config_misses": misses}


def _split(counts: Counter) -> tuple[Counter, Counter]:
    """(device kernels, collectives) of a launch count."""
    colls = Counter({k: v for k, v in counts.items() if k.startswith("nccl.")})
    return counts - colls, colls
