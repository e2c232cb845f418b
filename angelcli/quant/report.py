"""Quality report of an FP8 conversion: per-tensor weight error and, when the model runs here, BF16 vs FP8.

Weight error (always): for every quantised tensor the relative Frobenius error ||W - Ŵ|| / ||W|| and the max
absolute error, summarised per tensor group (routed experts, shared experts, attention, dense FFN).

Model comparison (angel-tiny and other small models automatically, any model with `--eval`): the source
checkpoint and the FP8 checkpoint's dequantised view (angelcli.quant.dequant) run the same held-out samples
through angel's torch model in fp32. The FP8 side also quantises activations the way an FP8 engine does, so
the comparison covers the whole scheme, not only the weights:
  block    dynamic per-token, per-128-channel-group activation scales (vLLM/SGLang block FP8)
  dynamic  dynamic per-token scales (compressed-tensors FP8_DYNAMIC)
  static   the calibrated input_scale; gate/up share the max of their two scales (they run fused), and the
           routed experts of a layer share the max over experts, as vLLM's fused MoE does
Reported: perplexity of both, top-1 token agreement, and per MoE layer the routing agreement (share of tokens
whose top-k expert set is unchanged).
"""

from __future__ import annotations

import math
import re

GROUPS = [("routed_experts", r".*\.mlp\.experts\.\d+\..*"), ("shared_experts", r".*\.mlp\.shared_experts\..*"),
          ("attention", r".*\.attention\..*"), ("dense_ffn", r".*\.mlp\.(gate|up|down)_proj\.weight")]


def _group(name: str) -> str:
    return next((g for g, p in GROUPS if re.fullmatch(p, name)), "other")


def summarize_errors(stats: dict[str, dict], worst: int = 5) -> dict:
    """Per-tensor stats {name: {rel_err, max_abs_err, amax}} -> counts, mean / max per group, worst tensors."""
    groups: dict[str, list[float]] = {}
    for name, s in stats.items():
        groups.setdefault(_group(name), []).append(s["rel_err"])
    errs = [s["rel_err"] for s in stats.values()]
    ranked = sorted(stats.items(), key=lambda kv: -kv[1]["rel_err"])[:worst]
    return {
        "quantized_tensors": len(stats),
        "rel_err_mean": sum(errs) / len(errs) if errs else 0.0,
        "rel_err_max": max(errs) if errs else 0.0,
        "groups": {g: {"tensors": len(v), "rel_err_mean": sum(v) / len(v), "rel_err_max": max(v)}
                   for g, v in sorted(groups.items())},
        "worst": [{"tensor": n, **s} for n, s in ranked],
    }


def tensor_errors(src_reader, fp8_reader, names=None) -> dict[str, dict]:
    """Per-tensor error of an FP8 checkpoint against its source, tensor by tensor (any layout)."""
    from angelcli.quant.fp8 import error_stats

    out = {}
    for name in names or fp8_reader.quantized:
        out[name] = error_stats(src_reader.get(name), fp8_reader.get(name))
    return out


def _fq(kind: str, scale=None):
    from angelcli.quant import fp8

    if kind == "block":
        return fp8.fake_quant_token_group
    if kind == "dynamic":
        return fp8.fake_quant_per_token
    return lambda x: fp8.fake_quant_static(x, scale)


def install_activation_quant(model, reader, kind: str | None = None) -> int:
    """Quantise the inputs of every FP8 linear of `model` as the FP8 engine would; returns how many.

    kind: override the activation scheme ('block' = per token x 128 channels, 'dynamic' = per token, 'static');
    default: the checkpoint's own (reader.scheme)."""
    import torch
    import torch.nn.functional as F

    quantized = set(reader.quantized)
    scheme = kind or reader.scheme
    n = 0

    def static_scale(weight_names: list[str]):
        return torch.stack([reader.input_scale(w).reshape(()) for w in weight_names]).max()

    for name, module in model.named_modules():
        if isinstance(module, torch.nn.Linear) and f"{name}.weight" in quantized:
            scale = None
            if scheme == "static":
                fused = [f"{name.rsplit('.', 1)[0]}.{p}.weight" for p in ("gate_proj", "up_proj")]
                scale = static_scale(fused if name.endswith(("gate_proj", "up_proj")) else [f"{name}.weight"])
            fq = _fq(scheme, scale)
            module.register_forward_pre_hook(lambda mod, args, _fq=fq: (_fq(args[0]),) + tuple(args[1:]))
            n += 1
    for i, layer in enumerate(model.model.layers):
        experts = getattr(layer.mlp, "experts", None)
        base = f"model.layers.{i}.mlp.experts"
        if experts is None or f"{base}.0.gate_proj.weight" not in quantized:
            continue
        E = experts.w13.shape[0]
        if scheme == "static":
            w13 = [f"{base}.{e}.{p}_proj.weight" for e in range(E) for p in ("gate", "up")]
            fq_in = _fq("static", static_scale(w13))
            fq_mid = _fq("static", static_scale([f"{base}.{e}.down_proj.weight" for e in range(E)]))
        else:
            fq_in = fq_mid = _fq(scheme)

        def expert(e, x, _ex=experts, _in=fq_in, _mid=fq_mid):
            w13 = _ex.w13[e]
            xi = _in(x)
            h = F.silu(F.linear(xi, w13[: _ex.inter])) * F.linear(xi, w13[_ex.inter :])
            return F.linear(_mid(h), _ex.w2[e])

        experts.expert = expert  # instance attribute shadows Experts.expert for this model only
        n += E * 3
    return n


def evaluate(src_dir, out_dir, token_ids: list[list[int]], device: str = "cpu") -> dict:
    """Run both checkpoints on `token_ids` (list of id lists) and compare; see the module docstring."""
    import torch

    from angelcli.loader import load_model
    from angelcli.quant.dequant import load_dequantized_model

    dtype = torch.float32 if device == "cpu" else torch.bfloat16
    ref, cfg, _ = load_model(src_dir, dtype=dtype, device=device)
    q, _, reader = load_dequantized_model(out_dir, dtype=dtype, device=device)
    install_activation_quant(q, reader)
    nll_ref = nll_q = 0.0
    n_pred = agree = 0
    route_same: dict[int, int] = {}
    route_total: dict[int, int] = {}
    with torch.inference_mode():
        for ids in token_ids:
            x = torch.tensor([ids], device=device)
            a, b = ref(x, return_router=True), q(x, return_router=True)
            tgt = x[0, 1:]
            la = torch.log_softmax(a.logits[0, :-1].float(), -1)
            lb = torch.log_softmax(b.logits[0, :-1].float(), -1)
            nll_ref += float(-la.gather(1, tgt[:, None]).sum())
            nll_q += float(-lb.gather(1, tgt[:, None]).sum())
            n_pred += tgt.numel()
            agree += int((a.logits[0].argmax(-1) == b.logits[0].argmax(-1)).sum())
            for ra, rb in zip(a.router, b.router):
                same = (ra.topk_ids.sort(-1).values == rb.topk_ids.sort(-1).values).all(-1)
                route_same[ra.layer] = route_same.get(ra.layer, 0) + int(same.sum())
                route_total[ra.layer] = route_total.get(ra.layer, 0) + same.numel()
    n_tok = sum(len(i) for i in token_ids)
    routing = {str(k): route_same[k] / route_total[k] for k in sorted(route_same)}
    ppl_ref, ppl_q = math.exp(nll_ref / n_pred), math.exp(nll_q / n_pred)
    return {
        "samples": len(token_ids), "tokens": n_tok, "activation_quant": reader.scheme,
        "perplexity_bf16": ppl_ref, "perplexity_fp8": ppl_q, "perplexity_delta_pct": 100 * (ppl_q / ppl_ref - 1),
        "top1_agreement": agree / n_tok,
        "routing_agreement": routing,
        "routing_agreement_min": min(routing.values()) if routing else None,
    }
