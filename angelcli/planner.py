"""GPU memory planner: from a config alone, how a model spreads over N GPUs and how much KV cache is left.

    plan = make_plan(cfg, gpus=2, gpu_mem_gb=96)          # AntAngelMed-FP8 on two H20
    plan.fits, plan.tp, plan.weights_gb_per_gpu, plan.kv_tokens, plan.reasons

Per GPU (decimal GB, 10^9 bytes, as GPUs are sold):
  weights   exact bytes of this rank's slice, tensor by tensor, with the split of model/parallel.py
            (embeddings replicated, lm_head split by vocabulary, experts split over their width); FP8
            weights 1 byte plus fp32 scales (block: one per 128x128 tile; channel/tensor: one per row),
            everything else bf16, expert_bias fp32. TP 1 reproduces bailing-moe-v2.md §4: AntAngelMed BF16
            205,779,426,304 B, block FP8 104,234,957,824 B.
  reserve   RUNTIME_OVERHEAD_GB (CUDA context, cuBLAS/NCCL workspaces, CUDA graphs) + the activations of one
            prefill chunk (fused-MoE intermediates dominate) + decode logits, times 1.5 for allocator slack
  usable    gpu_mem x GPU_UTILIZATION (fragmentation headroom, like vLLM's gpu_memory_utilization)
  KV        usable - weights - reserve, in tokens: 2 (K, V) x layers x KV heads held x head_dim x 2 B
            (AntAngelMed: 64 KiB per token on one GPU; each rank holds its KV heads of every token, so the
            token budget is the same on every rank)
It fits when the KV budget holds at least one sequence of `context` tokens. The TP degree is the largest
one that the config allows (check_tp) and the GPUs provide; the engine uses the same plan at start.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from importlib import resources

from angelcli.config import ModelConfig
from angelcli.errors import UsageError

GPU_UTILIZATION = 0.92
RUNTIME_OVERHEAD_GB = 1.5
PREFILL_CHUNK = 4096
GRAPH_MAX_BATCH = 64
BLOCK = 128


def gpu_table() -> dict[str, dict]:
    """angelcli/assets/gpus.json: memory, HBM bandwidth and peak TFLOPS of known GPUs."""
    text = resources.files("angelcli").joinpath("assets", "gpus.json").read_text("utf-8")
    return json.loads(text)["gpus"]


def find_gpu(name: str) -> dict | None:
    """A gpus.json entry by key ('h20') or by a device name ('NVIDIA H20', torch.cuda.get_device_name())."""
    table = gpu_table()
    key = name.strip().lower()
    if key in table:
        return {"key": key, **table[key]}
    best = None
    for k, g in table.items():
        for m in g["match"]:
            if m.lower() in key and (best is None or len(m) > best[0]):
                best = (len(m), k)
    return {"key": best[1], **table[best[1]]} if best else None


def _cdiv(a: int, b: int) -> int:
    return -(-a // b)


@dataclass
class Plan:
    model: str
    weights_format: str  # "bf16" | "fp8 block" | "fp8 channel" ...
    gpus: int
    gpu_mem_gb: float
    tp: int
    context: int
    fits: bool
    weights_gb_total: float
    weights_gb_per_gpu: float
    reserve_gb_per_gpu: float
    usable_gb_per_gpu: float
    kv_gb_per_gpu: float
    kv_bytes_per_token_per_gpu: int
    kv_tokens: int
    sequences_at_context: int  # full-context sequences the KV budget holds at once
    reasons: list[str] = field(default_factory=list)  # why it does not fit (empty when it fits)
    notes: list[str] = field(default_factory=list)

    def to_dict(self) -> dict:
        return asdict(self)

    def summary(self) -> str:
        if self.fits:
            return (f"{self.model} fits on {self.tp} x {self.gpu_mem_gb:g} GB (TP {self.tp}): "
                    f"{self.weights_gb_per_gpu:.1f} GB weights per GPU, KV cache for {self.kv_tokens:,} tokens")
        return f"{self.model} does not fit: {self.reasons[0]}"


# --------------------------------------------------------------------------------------- accounting


def _quant(cfg: ModelConfig) -> str | None:
    """None (bf16), "block" or "channel" (channel and per-tensor scales are both kept per row)."""
    from angelcli.model.fp8 import parse_quant_config

    scheme = parse_quant_config(cfg.quantization_config)
    if scheme is None:
        return None
    return "block" if scheme.weight_strategy == "block" else "channel"


def weights_bytes(cfg: ModelConfig, tp: int = 1) -> int:
    """Bytes of one tensor-parallel rank's weights in GPU memory (rank 0; ranks differ by at most the
    replicated KV-head choice, which has the same size)."""
    from angelcli.model.parallel import kv_slice, lm_head_split

    q = _quant(cfg)
    H, D, V = cfg.hidden_size, cfg.head_dim, cfg.vocab_size

    def linear(n: int, k: int) -> int:  # an [n, k] projection as stored on this rank
        if q is None:
            return 2 * n * k
        scales = _cdiv(n, BLOCK) * _cdiv(k, BLOCK) if q == "block" else n
        return n * k + 4 * scales

    def mlp(inter: int) -> int:  # gate + up [I/tp, H], down [H, I/tp]
        i = inter // tp
        return 2 * linear(i, H) + linear(H, i)

    hq = cfg.num_attention_heads // tp
    hkv = kv_slice(cfg, 0, tp)[1]
    attn = linear((hq + 2 * hkv) * D, H) + linear(H, hq * D)
    norms = 2 * 2 * H + 2 * 2 * D
    total = 2 * V * H  # embeddings, replicated
    total += 2 * (V // tp if lm_head_split(cfg, tp) else V) * H
    total += 2 * H  # final norm
    for i in range(cfg.num_hidden_layers):
        total += attn + norms
        if not cfg.is_moe_layer(i):
            total += mlp(cfg.intermediate_size)
            continue
        total += 2 * cfg.num_experts * H + 4 * cfg.num_experts  # router (bf16) + expert_bias (fp32)
        total += cfg.num_experts * mlp(cfg.moe_intermediate_size)
        if cfg.num_shared_experts:
            total += mlp(cfg.shared_intermediate_size)
    return total


def kv_bytes_per_token(cfg: ModelConfig, tp: int = 1, elem_bytes: int = 2) -> int:
    """K and V of every layer for one token, as one rank stores them (its KV heads)."""
    from angelcli.model.parallel import kv_slice

    return 2 * cfg.num_hidden_layers * kv_slice(cfg, 0, tp)[1] * cfg.head_dim * elem_bytes


def reserve_bytes(cfg: ModelConfig, tp: int = 1, chunk: int = PREFILL_CHUNK) -> int:
    """Runtime overhead + peak activations of one prefill chunk + decode logits (see module docstring)."""
    from angelcli.model.parallel import kv_slice

    H, K = cfg.hidden_size, cfg.num_experts_per_tok
    qkv = (cfg.num_attention_heads // tp + 2 * kv_slice(cfg, 0, tp)[1]) * cfg.head_dim
    dense = 2 * (cfg.intermediate_size // tp) if cfg.first_k_dense_replace else 0
    per_token = 3 * H + qkv + K * (cfg.moe_intermediate_size // tp + H) + dense
    acts = chunk * per_token * 2 + chunk * cfg.num_experts * 4  # + fp32 router logits
    logits = GRAPH_MAX_BATCH * cfg.vocab_size * 4 * 2
    return int(RUNTIME_OVERHEAD_GB * 1e9 + 1.5 * (acts + logits))


# ------------------------------------------------------------------------------------------- the plan


def valid_tp(cfg: ModelConfig, max_tp: int) -> list[int]:
    """TP degrees from 1 to max_tp this config can be split into (block-FP8 alignment included)."""
    from angelcli.model.parallel import check_tp

    block = _quant(cfg) == "block"
    return [t for t in range(1, max_tp + 1) if not check_tp(cfg, t, block_fp8=block)]


def make_plan(cfg: ModelConfig, *, gpus: int, gpu_mem_gb: float, context: int | None = None,
              tp: int | None = None, model: str = "model", utilization: float = GPU_UTILIZATION) -> Plan:
    """Plan `model` on `gpus` GPUs of `gpu_mem_gb` each. tp: force a degree (the engine does), else the
    largest valid one <= gpus."""
    from angelcli.model.parallel import check_tp

    if gpus < 1:
        raise UsageError("--gpus must be >= 1")
    if gpu_mem_gb <= 0:
        raise UsageError("--gpu-mem must be > 0 (GB per GPU)")
    context = context or cfg.max_position_embeddings
    if context < 1:
        raise UsageError("--context must be >= 1")
    q = _quant(cfg)
    fmt = "bf16" if q is None else f"fp8 {q} scales"
    notes = []
    if tp is None:
        degrees = valid_tp(cfg, gpus)
        tp = degrees[-1]
        if tp < gpus:
            why = check_tp(cfg, gpus, block_fp8=q == "block")
            notes.append(f"{gpus} GPUs cannot form TP {gpus} ({why[0]}); using TP {tp}, "
                         f"{gpus - tp} GPU(s) stay idle")
    else:
        why = check_tp(cfg, tp, block_fp8=q == "block")
        if why:
            raise UsageError(f"--tp {tp}: {why[0]}")
    w = weights_bytes(cfg, tp)
    reserve = reserve_bytes(cfg, tp)
    usable = gpu_mem_gb * 1e9 * utilization
    kv_tok = kv_bytes_per_token(cfg, tp)
    kv_budget = usable - w - reserve
    kv_tokens = max(0, int(kv_budget // kv_tok))
    reasons = []
    gb = 1e9
    if w + reserve > usable:
        reasons.append(f"weights need {w / gb:.1f} GB per GPU at TP {tp} (+{reserve / gb:.1f} GB runtime reserve); "
                       f"a {gpu_mem_gb:g} GB GPU has {usable / gb:.1f} GB usable")
    elif kv_tokens < context:
        reasons.append(f"after {w / gb:.1f} GB of weights and {reserve / gb:.1f} GB reserve per GPU, the KV cache "
                       f"holds {kv_tokens:,} tokens, fewer than the {context:,}-token context "
                       f"({kv_tok * context / gb:.2f} GB per GPU needed)")
    fits = not reasons
    if not fits:
        need = _smallest_fit(cfg, gpu_mem_gb, context, utilization)
        if need:
            reasons.append(f"it fits on {need} x {gpu_mem_gb:g} GB GPUs (TP {need})")
        else:
            reasons.append(f"no tensor-parallel degree up to 16 fits on {gpu_mem_gb:g} GB GPUs")
    return Plan(model=model, weights_format=fmt, gpus=gpus, gpu_mem_gb=gpu_mem_gb, tp=tp, context=context,
                fits=fits, weights_gb_total=round(weights_bytes(cfg, 1) / gb, 2),
                weights_gb_per_gpu=round(w / gb, 2), reserve_gb_per_gpu=round(reserve / gb, 2),
                usable_gb_per_gpu=round(usable / gb, 2), kv_gb_per_gpu=round(max(0.0, kv_budget) / gb, 2),
                kv_bytes_per_token_per_gpu=kv_tok, kv_tokens=kv_tokens,
                sequences_at_context=kv_tokens // context, reasons=reasons, notes=notes)


def _smallest_fit(cfg: ModelConfig, gpu_mem_gb: float, context: int, utilization: float) -> int | None:
    usable = gpu_mem_gb * 1e9 * utilization
    for t in valid_tp(cfg, 16):
        budget = usable - weights_bytes(cfg, t) - reserve_bytes(cfg, t)
        if budget >= context * kv_bytes_per_token(cfg, t):
            return t
    return None


def plan_config(spec: str | None) -> tuple[ModelConfig, str]:
    """MODEL -> (config, where it came from): a path or store entry (its config.json), else the config
    bundled for an alias (works before the download)."""
    from angelcli.resolve import resolve_model

    try:
        path = resolve_model(spec)
        return ModelConfig.from_file(path), str(path / "config.json")
    except UsageError:
        from angelcli.aliases import bundled_config, find_alias

        data = bundled_config(str(spec)) if spec else None
        if data is None:
            alias = find_alias(str(spec)) if spec else None
            if alias is not None:
                raise UsageError(f"model '{spec}': no config is bundled for this alias; `angel pull {spec}` "
                                 "first (only config.json is needed)") from None
            raise
        return ModelConfig.from_dict(data, source=f"bundled config of {spec}"), f"bundled config of {spec}"


def describe(plan: Plan, source: str) -> str:
    """Human-readable plan (what `angel plan` prints without --json)."""
    lines = [f"model       {plan.model}  ({source})",
             f"weights     {plan.weights_format}, {plan.weights_gb_total:.1f} GB in total",
             f"GPUs        {plan.gpus} x {plan.gpu_mem_gb:g} GB -> tensor parallel {plan.tp}",
             f"per GPU     {plan.weights_gb_per_gpu:.1f} GB weights + {plan.reserve_gb_per_gpu:.1f} GB reserve "
             f"of {plan.usable_gb_per_gpu:.1f} GB usable ({GPU_UTILIZATION:.0%})",
             f"KV cache    {plan.kv_gb_per_gpu:.1f} GB per GPU = {plan.kv_tokens:,} tokens "
             f"({plan.kv_bytes_per_token_per_gpu // 1024} KiB per token per GPU); "
             f"{plan.sequences_at_context} sequence(s) of {plan.context:,} tokens",
             f"fits        {'yes' if plan.fits else 'NO'}"]
    lines += [f"  - {r}" for r in plan.reasons]
    lines += [f"note        {n}" for n in plan.notes]
    return "\n".join(lines)


def device_plan(cfg: ModelConfig, tp: int, context: int, device_index: int = 0, model: str = "model") -> Plan:
    """The plan for the local CUDA devices (the engine's start check): real memory of cuda:device_index."""
    import torch

    total = torch.cuda.get_device_properties(device_index).total_memory
    return make_plan(cfg, gpus=tp, gpu_mem_gb=total / 1e9, context=context, tp=tp, model=model)
