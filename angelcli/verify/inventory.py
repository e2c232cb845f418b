"""Tensor inventory of a checkpoint against the architecture in its config.json, from safetensors headers.

Only headers are parsed for names, shapes and dtypes (CheckpointReader); the only tensor data read is the
small fp32 vectors whose *values* decide integrity: each MoE layer's expert_bias ([E] floats) and, for FP8
layouts, the quantisation scales ([ceil(N/128), ceil(K/128)] floats per weight; 25 MB for AntAngelMed-FP8).

Checks produced (all of kind "integrity", exit 3 when one fails):
  inventory.shards      every shard's header parses and the file holds every byte it promises
  inventory.tensors     every tensor the architecture needs is present (first missing one named)
  inventory.experts     every routed expert of every MoE layer has its gate/up/down projections
  inventory.unexpected  nothing the architecture does not know (an MTP layer, stray scales)
  inventory.shapes      every tensor has the shape of spec §2 for this config
  inventory.dtypes      BF16/F16/F32 weights, FP8 only where the layout quantises, expert_bias F32
  inventory.expert_bias every MoE layer's expert_bias is F32 [E] and finite
  inventory.params      the header parameter count equals the config's exact count (angelcli.params)
  quant.layout          FP8 exactly where quantization_config says; router and embeddings never
  quant.scales          every FP8 weight has its scale with the right name, dtype and shape, no orphans
  quant.scales_finite   every scale is finite and positive (a NaN scale turns a whole block into NaN)
"""

from __future__ import annotations

import dataclasses
import math
import re
from pathlib import Path

from angelcli.config import ModelConfig
from angelcli.errors import IntegrityError
from angelcli.loader import WEIGHT_DTYPES, CheckpointReader, check_inventory
from angelcli.verify.checks import INTEGRITY, Check, check
from angelcli.verify.quant_layout import INPUT_SCALE, QuantLayout, layout_from_config

_EXPERT = re.compile(r"model\.layers\.(\d+)\.mlp\.experts\.(\d+)\.(gate|up|down)_proj\.weight")


def _first(items: list, fmt=str) -> str:
    return f" (first: {fmt(items[0])})" if items else ""


def _is_scale(name: str, layout: QuantLayout | None, expected: set[str]) -> str | None:
    """The weight a scale tensor belongs to, or None when `name` is not a scale of this layout."""
    if layout is None:
        return None
    if name.endswith(layout.scale_suffix) and name[: -len(layout.scale_suffix)] in expected:
        return name[: -len(layout.scale_suffix)]
    if name.endswith(INPUT_SCALE) and name[: -len(INPUT_SCALE)] + ".weight" in expected:
        return name[: -len(INPUT_SCALE)] + ".weight"
    return None


def inventory_checks(cfg: ModelConfig, model_dir: Path, total_params: int
                     ) -> tuple[list[Check], CheckpointReader | None, dict]:
    """Run the inventory; returns (checks, reader or None when shards are unreadable, summary dict)."""
    from angelcli.model.bailing import expected_checkpoint_names, expected_shape, is_fp32_tensor

    try:
        reader = CheckpointReader(model_dir)
    except IntegrityError as err:
        return [check("inventory.shards", INTEGRITY, False, str(err))], None, {"readable": False}
    have = reader.tensors
    layout = layout_from_config(cfg.quantization_config)
    expected = expected_checkpoint_names(cfg)
    exp_set = set(expected)
    checks = [check("inventory.shards", INTEGRITY, True,
                    f"{len(reader.files)} shard(s), {len(have):,} tensors, every header complete")]

    # The architecture comparison is the loader's (the same report decides whether `generate` loads the
    # checkpoint); verify adds the per-expert view, the layout rules of quantization_config and the values.
    # Seen as unquantised: FP8 weights and their scales are then judged by verify's layout rules below, which
    # also accept schemes the engine does not run (the loader refuses those before comparing anything).
    report = check_inventory(dataclasses.replace(cfg, quantization_config=None), reader)
    missing = [n for n in report.missing if n in exp_set]  # a missing scale is quant.scales' business
    checks.append(check("inventory.tensors", INTEGRITY, not missing,
                        f"{len(missing):,} of {len(expected):,} expected tensors missing{_first(missing)}" if missing
                        else f"all {len(expected):,} tensors of the architecture present"))

    incomplete: dict[tuple[int, int], list[str]] = {}
    for n in missing:
        m = _EXPERT.fullmatch(n)
        if m:
            incomplete.setdefault((int(m[1]), int(m[2])), []).append(m[3] + "_proj")
    if incomplete:
        (li, e), parts = next(iter(incomplete.items()))
        layers = sorted({k[0] for k in incomplete})
        detail = (f"{len(incomplete)} incomplete expert(s) in {len(layers)} layer(s) (first: layer {li} expert {e} "
                  f"lacks {', '.join(parts)})")
    else:
        detail = (f"{cfg.num_moe_layers} MoE layers x {cfg.num_experts} experts x 3 projections present")
    checks.append(check("inventory.experts", INTEGRITY, not incomplete, detail,
                        sorted({k[0] for k in incomplete})))

    scales = {n: w for n in have if n not in exp_set and (w := _is_scale(n, layout, exp_set))}
    unexpected = [n for n in report.unexpected if n not in scales]  # stray scales: quant.scales names them
    checks.append(check("inventory.unexpected", INTEGRITY, not unexpected,
                        f"{len(unexpected):,} tensor(s) the architecture does not have{_first(unexpected)}"
                        if unexpected else "no unknown tensors"))

    wrong_shape = [f"{n} is {list(g)}, expected {list(w)}" for n, g, w in report.wrong_shape if n in exp_set]
    wrong_dtype = [f"{n} is {g}, expected {w}" for n, g, w in report.wrong_dtype
                   if n in exp_set and not (layout is not None and g == layout.weight_dtype)]
    quant_mismatch = []
    for n in expected:
        info = have.get(n)
        if info is None or layout is None or is_fp32_tensor(n):
            continue
        quantised = info.dtype == layout.weight_dtype
        want_q = layout.expects_quantised(n, len(expected_shape(cfg, n)))
        if want_q is True and not quantised and info.dtype in WEIGHT_DTYPES:
            quant_mismatch.append(f"{n} is {info.dtype}, but quantization_config quantises it")
        elif want_q is False and quantised:
            quant_mismatch.append(f"{n} is {info.dtype}, but it must stay high precision")
    checks.append(check("inventory.shapes", INTEGRITY, not wrong_shape,
                        f"{len(wrong_shape)} wrong shape(s){_first(wrong_shape)}" if wrong_shape
                        else "every tensor has the shape spec §2 gives for this config"))
    checks.append(check("inventory.dtypes", INTEGRITY, not wrong_dtype,
                        f"{len(wrong_dtype)} wrong dtype(s){_first(wrong_dtype)}" if wrong_dtype
                        else "weights " + ("BF16/FP8" if layout else "BF16/F16/F32") + ", expert_bias F32"))

    checks.append(_expert_bias_check(cfg, reader))

    counted = sum(math.prod(info.shape) for n, info in have.items() if n not in scales)
    checks.append(check("inventory.params", INTEGRITY, counted == total_params,
                        f"headers hold {counted:,} parameters, the config's architecture has {total_params:,}"))

    summary = {"readable": True, "shards": len(reader.files), "tensors": len(have), "missing": len(missing),
               "unexpected": len(unexpected), "header_params": counted, "quantization": None}
    if layout is not None:
        checks += _quant_checks(layout, reader, scales, quant_mismatch, expected)
        summary["quantization"] = {"method": layout.method, "strategy": layout.strategy,
                                   "block": list(layout.block) if layout.block else None,
                                   "quantised_weights": sum(1 for i in have.values() if i.dtype == layout.weight_dtype),
                                   "scales": len(scales)}
    return checks, reader, summary


def _expert_bias_check(cfg: ModelConfig, reader: CheckpointReader) -> Check:
    import torch

    bad = []
    for i in cfg.moe_layers:
        name = f"model.layers.{i}.mlp.gate.expert_bias"
        info = reader.tensors.get(name)
        if info is None:
            bad.append(f"{name} missing")
        elif info.dtype != "F32" or info.shape != (cfg.num_experts,):
            bad.append(f"{name} is {info.dtype} {list(info.shape)}, expected F32 [{cfg.num_experts}]")
        elif not torch.isfinite(reader.get(name)).all():
            bad.append(f"{name} holds NaN/inf")
    return check("inventory.expert_bias", INTEGRITY, not bad,
                 f"{len(bad)} layer(s) with a bad expert_bias{_first(bad)}" if bad
                 else f"{cfg.num_moe_layers} fp32 expert_bias vectors [{cfg.num_experts}], finite")


def _quant_checks(layout: QuantLayout, reader: CheckpointReader, scales: dict[str, str],
                  quant_mismatch: list[str], expected: list[str]) -> list[Check]:
    import torch

    have = reader.tensors
    out = [check("quant.layout", INTEGRITY, not quant_mismatch,
                 f"{len(quant_mismatch)} tensor(s) against the layout{_first(quant_mismatch)}" if quant_mismatch
                 else f"{layout.method} {layout.strategy}: FP8 exactly where quantization_config says, router, "
                      "embeddings and norms high precision")]
    problems = []
    weight_scales = {w: s for s, w in scales.items() if not s.endswith(INPUT_SCALE)}
    for n in expected:
        info = have.get(n)
        if info is None or info.dtype != layout.weight_dtype:
            continue
        sname = layout.scale_name(n)
        sinfo = have.get(sname)
        if sinfo is None:
            problems.append(f"{n} is {info.dtype} without {sname}")
        elif sinfo.dtype not in layout.scale_dtypes:
            problems.append(f"{sname} is {sinfo.dtype}, expected {'/'.join(sorted(layout.scale_dtypes))}")
        elif not layout.scale_shape_ok(sinfo.shape, info.shape):
            problems.append(f"{sname} is {list(sinfo.shape)}, expected {list(layout.scale_shape(info.shape))} "
                            f"for weight {list(info.shape)}")
    for s, w in scales.items():
        if have[w].dtype != layout.weight_dtype:
            problems.append(f"{s} belongs to {w}, which is {have[w].dtype}, not FP8")
    out.append(check("quant.scales", INTEGRITY, not problems,
                     f"{len(problems)} scale problem(s){_first(problems)}" if problems
                     else f"{len(weight_scales):,} FP8 weights, each with its {layout.scale_suffix.lstrip('_')} "
                          f"{'[ceil(N/%d), ceil(K/%d)]' % layout.block if layout.block else layout.strategy}"))
    nonfinite = []
    for s in scales:
        t = reader.get(s).float()
        if not (torch.isfinite(t).all() and (t > 0).all()):
            nonfinite.append(s)
    out.append(check("quant.scales_finite", INTEGRITY, not nonfinite,
                     f"{len(nonfinite)} scale tensor(s) with NaN, inf or non-positive values{_first(nonfinite)}"
                     if nonfinite else f"all {len(scales):,} scale tensors finite and positive"))
    return out
