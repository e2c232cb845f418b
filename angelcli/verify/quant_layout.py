"""Which tensors an FP8 checkpoint quantises, and the scale tensor each quantised weight must carry.

Two on-disk layouts are understood (spec fp8.md §1.7, §2.1; bailing-moe-v2.md §6):

  quant_method "fp8" (native, DeepSeek/inclusionAI style)
      W.weight            F8_E4M3, same shape [N, K] as the BF16 weight
      W.weight_scale_inv  F32 [ceil(N/bn), ceil(K/bk)] with weight_block_size [bn, bk] (a multiplier despite
                          the name); without weight_block_size: per-tensor `weight_scale` [1] (+ `input_scale`
                          [1] when activation_scheme is "static")
      skipped modules: `ignored_layers` / `modules_to_not_convert` (names, prefixes or "re:" patterns)
  quant_method "compressed-tensors" (llm-compressor, format float-quantized)
      W.weight            F8_E4M3
      W.weight_scale      model dtype (BF16/F16/F32); [1] tensor, [N, 1] channel, [ceil(N/b0), ceil(K/b1)] block
      W.input_scale       [1], only when input activations are static
      skipped modules: `ignore` (names or "re:" patterns, re.match semantics as compressed-tensors)

Whatever the config says, the router (`mlp.gate.weight`, `mlp.gate.expert_bias`), the embeddings and every
norm must stay high precision: a quantised router changes which experts run, and vLLM/SGLang build the
gate unquantised, so such a checkpoint would not even load. The LM head may go either way.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass

from angelcli.errors import UsageError

FP8_DTYPES = {"e4m3": "F8_E4M3", "e5m2": "F8_E5M2"}
SCALE_SUFFIXES = ("_scale_inv", "_scale")  # appended to "<module>.weight" -> weight_scale_inv / weight_scale
INPUT_SCALE = ".input_scale"
# High-precision tensors that are matrices (quantisable in principle) but must never be quantised.
NEVER_QUANTISED = (r".*\.mlp\.gate\.weight", r"model\.word_embeddings\.weight")
OPTIONAL_QUANTISED = (r"lm_head\.weight",)


@dataclass
class QuantLayout:
    method: str  # "fp8" or "compressed-tensors"
    weight_dtype: str  # "F8_E4M3" (or "F8_E5M2")
    scale_suffix: str  # "_scale_inv" or "_scale", appended to the weight's name
    scale_dtypes: frozenset[str]
    strategy: str  # "block", "channel" or "tensor"
    block: tuple[int, int] | None
    static_input: bool  # an input_scale per quantised module
    skip_patterns: tuple[str, ...]  # module names / prefixes / "re:" patterns left unquantised

    def scale_name(self, weight_name: str) -> str:
        return weight_name + self.scale_suffix

    def scale_shape(self, weight_shape: tuple[int, ...]) -> tuple[int, ...]:
        n, k = weight_shape
        if self.strategy == "block":
            return (math.ceil(n / self.block[0]), math.ceil(k / self.block[1]))
        if self.strategy == "channel":
            return (n, 1)
        return (1,)

    def scale_shape_ok(self, got: tuple[int, ...], weight_shape: tuple[int, ...]) -> bool:
        if self.strategy == "tensor":
            return got in ((), (1,))  # exporters write a scalar or a one-element vector
        return got == self.scale_shape(weight_shape)

    def skipped(self, weight_name: str) -> bool:
        module = weight_name.removesuffix(".weight")
        for pat in self.skip_patterns:
            if pat.startswith("re:"):
                if re.match(pat[3:], module):
                    return True
            elif module == pat or module.startswith(pat + "."):
                return True
        return False

    def expects_quantised(self, weight_name: str, ndim: int) -> bool | None:
        """True/False when the config decides; None when either is acceptable (the LM head)."""
        if ndim != 2 or not weight_name.endswith(".weight"):
            return False  # norms, expert_bias
        if any(re.fullmatch(p, weight_name) for p in NEVER_QUANTISED):
            return False
        if any(re.fullmatch(p, weight_name) for p in OPTIONAL_QUANTISED):
            return None
        return not self.skipped(weight_name)


def layout_from_config(qcfg: dict | None) -> QuantLayout | None:
    """The QuantLayout of a config's quantization_config; None for an unquantised checkpoint.

    UsageError for layouts angel does not understand (INT4 pack-quantized, mixed config groups)."""
    if not qcfg:
        return None
    method = qcfg.get("quant_method")
    if method == "fp8":
        fmt = str(qcfg.get("fmt", "e4m3")).lower()
        block = qcfg.get("weight_block_size")
        skips = tuple(qcfg.get("ignored_layers") or qcfg.get("modules_to_not_convert") or ())
        if block:
            if len(block) != 2 or not all(isinstance(b, int) and b > 0 for b in block):
                raise UsageError(f"quantization_config.weight_block_size must be two positive integers, got {block!r}")
            return QuantLayout("fp8", FP8_DTYPES.get(fmt, "F8_E4M3"), "_scale_inv", frozenset({"F32"}), "block",
                               (block[0], block[1]), False, skips)
        return QuantLayout("fp8", FP8_DTYPES.get(fmt, "F8_E4M3"), "_scale", frozenset({"F32"}), "tensor", None,
                           qcfg.get("activation_scheme") == "static", skips)
    if method == "compressed-tensors":
        groups = list((qcfg.get("config_groups") or {}).values())
        weights = [g.get("weights") or {} for g in groups]
        if not weights or any(w != weights[0] for w in weights):
            raise UsageError("quantization_config.config_groups: angel verifies a single FP8 weight scheme only")
        w = weights[0]
        if w.get("type") != "float" or w.get("num_bits") != 8:
            raise UsageError(f"quantization_config: {w.get('num_bits')}-bit {w.get('type')} weights are not an FP8 "
                             "layout; angel verify checks FP8 (compressed-tensors float-quantized) only")
        strategy = w.get("strategy", "tensor")
        block = None
        if strategy == "block":
            bs = w.get("block_structure") or [128, 128]
            block = (int(bs[0]), int(bs[1]))
        elif strategy not in ("channel", "tensor"):
            raise UsageError(f"quantization_config: weight strategy {strategy!r} is not supported")
        inputs = [g.get("input_activations") or {} for g in groups]
        static_input = any(a and not a.get("dynamic", False) for a in inputs)
        return QuantLayout("compressed-tensors", "F8_E4M3", "_scale", frozenset({"BF16", "F16", "F32"}), strategy,
                           block, static_input, tuple(qcfg.get("ignore") or ()))
    raise UsageError(f"quantization_config.quant_method {method!r}: angel verify understands 'fp8' and "
                     "'compressed-tensors' FP8 layouts")
