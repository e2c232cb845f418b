"""What each FP8 scheme writes: which checkpoint tensors are quantised, their companion scales, the config.

Schemes (see docs/quantization.md):
  block    native FP8 (DeepSeek-V3 / Ling `--force-fp8` layout): `X.weight` F8_E4M3 + `X.weight_scale_inv`
           F32 [ceil(N/128), ceil(K/128)]; quantization_config {quant_method fp8, fmt e4m3,
           activation_scheme dynamic, weight_block_size [128, 128]}.
  dynamic  compressed-tensors FP8_DYNAMIC: `X.weight` F8_E4M3 + `X.weight_scale` [N, 1] in the model dtype;
           activations quantised per token at run time.
  static   compressed-tensors FP8: `X.weight` F8_E4M3 + `X.weight_scale` [1] + `X.input_scale` [1], both in
           the model dtype; input scales calibrated on data (llmcompressor oneshot).

Targets: `experts` = routed experts and shared experts; `all` = also attention (query_key_value, dense) and
the dense FFN of the first layers. Never quantised, whatever the target: everything the model declares
high-precision (`angelcli.model.keeps_high_precision`: router gate and expert_bias, embeddings, lm_head, norms).
"""

from __future__ import annotations

import re
from pathlib import Path

from angelcli.config import ModelConfig

SCHEMES = ("block", "dynamic", "static")
TARGETS = ("experts", "all")
DEFAULT_SCHEME, DEFAULT_TARGETS = "block", "experts"
RECIPES_DIR = Path(__file__).resolve().parents[2] / "recipes"

_EXPERT_WEIGHT = re.compile(r"model\.layers\.\d+\.mlp\.(experts\.\d+|shared_experts)\.(gate|up|down)_proj\.weight")
_OTHER_WEIGHT = re.compile(r"model\.layers\.\d+\.(attention\.(query_key_value|dense)|mlp\.(gate|up|down)_proj)\.weight")

# The llmcompressor preset each scheme corresponds to (recorded in the manifest and the recipes).
PRESET = {"block": "FP8_BLOCK", "dynamic": "FP8_DYNAMIC", "static": "FP8"}
NATIVE_QUANT_CONFIG = {"activation_scheme": "dynamic", "fmt": "e4m3", "quant_method": "fp8",
                       "weight_block_size": [128, 128]}


def check_choice(scheme: str, targets: str) -> None:
    from angelcli.errors import UsageError

    if scheme not in SCHEMES:
        raise UsageError(f"--scheme must be one of {', '.join(SCHEMES)} (got {scheme!r})")
    if targets not in TARGETS:
        raise UsageError(f"--targets must be one of {', '.join(TARGETS)} (got {targets!r})")


def is_target(name: str, targets: str) -> bool:
    """True when checkpoint tensor `name` is quantised under `targets`."""
    from angelcli.model import keeps_high_precision

    if keeps_high_precision(name):
        return False
    if _EXPERT_WEIGHT.fullmatch(name):
        return True
    return targets == "all" and bool(_OTHER_WEIGHT.fullmatch(name))


def weight_layout(scheme: str) -> str:
    return {"block": "block", "dynamic": "channel", "static": "tensor"}[scheme]


def scale_names(scheme: str, weight_name: str) -> dict[str, str]:
    """Companion tensor names of a quantised weight: {'weight': ..., 'input': ...}."""
    base = weight_name[: -len(".weight")]
    if scheme == "block":
        return {"weight": f"{weight_name}_scale_inv"}  # X.weight_scale_inv (native layout)
    names = {"weight": f"{base}.weight_scale"}
    if scheme == "static":
        names["input"] = f"{base}.input_scale"
    return names


def scale_shape(scheme: str, shape: tuple[int, ...]) -> tuple[int, ...]:
    from angelcli.quant.fp8 import block_scale_shape

    if scheme == "block":
        return block_scale_shape(shape)
    return (shape[0], 1) if scheme == "dynamic" else (1,)


def scale_dtype_name(scheme: str, model_dtype: str) -> str:
    """Native block scales are fp32; compressed-tensors stores scales in the model dtype."""
    return "F32" if scheme == "block" else model_dtype


def linear_modules(cfg: ModelConfig) -> list[str]:
    """Every nn.Linear of the model by module name (what vLLM/llmcompressor see), router gates included."""
    mods = []
    for i in range(cfg.num_hidden_layers):
        p = f"model.layers.{i}"
        mods += [f"{p}.attention.query_key_value", f"{p}.attention.dense"]
        if not cfg.is_moe_layer(i):
            mods += [f"{p}.mlp.{n}_proj" for n in ("gate", "up", "down")]
            continue
        mods.append(f"{p}.mlp.gate")
        mods += [f"{p}.mlp.experts.{e}.{n}_proj" for e in range(cfg.num_experts) for n in ("gate", "up", "down")]
        if cfg.num_shared_experts:
            mods += [f"{p}.mlp.shared_experts.{n}_proj" for n in ("gate", "up", "down")]
    return mods + ["lm_head"]


def unquantized_linears(cfg: ModelConfig, targets: str) -> list[str]:
    """Linear modules left in high precision, as concrete names."""
    return [m for m in linear_modules(cfg) if not is_target(m + ".weight", targets)]


# compressed-tensors' model-free tools (its convert entrypoint, llmcompressor's model_free_ptq) match modules
# by tensor name only and would take the embedding for a Linear; listing it keeps them right. Engines that
# build the model (vLLM, SGLang, transformers) never consider an embedding for quantisation anyway.
NAME_ONLY_IGNORE = ["model.word_embeddings"]


def fused_ignore(cfg: ModelConfig, targets: str) -> list[str]:
    """The fused module names serving engines build for unquantised projections (`ignore` entries).

    SGLang's Bailing model fuses the dense FFN's gate_proj + up_proj into `mlp.gate_up_proj` (and q/k/v into
    `attention.query_key_value`, already a checkpoint name). Its compressed-tensors `should_ignore_layer`
    unfuses a name only through the model's `packed_modules_mapping`, which Bailing leaves empty, so without
    the fused name in `ignore` a BF16 dense FFN gets an FP8 scheme and silently loads as garbage (layer 0 of
    an `--targets experts` output). compressed-tensors 0.17-0.19 and vLLM match only names they meet, so
    the extra entries change nothing for them."""
    out = []
    for i in range(cfg.num_hidden_layers):
        if cfg.is_moe_layer(i):
            continue
        p = f"model.layers.{i}.mlp"
        if not any(is_target(f"{p}.{n}_proj.weight", targets) for n in ("gate", "up")):
            out.append(f"{p}.gate_up_proj")
    return out


def ct_ignore(cfg: ModelConfig, targets: str) -> list[str]:
    """`ignore` of a compressed-tensors config: every unquantised Linear, the fused names engines build
    from them (fused_ignore), plus the embedding."""
    return unquantized_linears(cfg, targets) + fused_ignore(cfg, targets) + NAME_ONLY_IGNORE


def native_quant_config(cfg: ModelConfig, targets: str) -> dict:
    """quantization_config of the native layout. With --targets all it is exactly the published key set;
    with --targets experts the attention and dense-FFN projections stay BF16, so they are listed in
    `ignored_layers` (vLLM and SGLang Fp8Config skip those modules)."""
    qc = dict(NATIVE_QUANT_CONFIG)
    if targets != "all":
        qc["ignored_layers"] = [m for m in unquantized_linears(cfg, targets)
                                if m != "lm_head" and not m.endswith(".mlp.gate")]
    return qc


def compressed_tensors_config(scheme: str, ignore: list[str]) -> dict:
    """quantization_config of a compressed-tensors checkpoint, built with compressed-tensors' own classes so
    that it is exactly what its loader (and vLLM's) expects: one group targeting Linear, `ignore` concrete."""
    from compressed_tensors import __version__ as ct_version
    from compressed_tensors.quantization import QuantizationConfig, QuantizationStatus, preset_name_to_scheme

    group = preset_name_to_scheme(PRESET[scheme], ["Linear"])
    group.format = "float-quantized"  # per-group format, as llmcompressor's own saves write it
    qc = QuantizationConfig(config_groups={"group_0": group},
                            ignore=list(ignore), format="float-quantized",
                            quantization_status=QuantizationStatus.COMPRESSED)
    return {"version": ct_version, "quant_method": "compressed-tensors", "transform_config": {}, **qc.model_dump()}


def recipe_file(scheme: str, targets: str) -> Path:
    return RECIPES_DIR / f"fp8-{scheme}-{targets}.yaml"


def output_suffix(scheme: str) -> str:
    return "FP8" if scheme == "block" else f"FP8-{scheme}"


# Ignore patterns of the llmcompressor recipes. The router gate is not an nn.Linear in angel's calibration model,
# but it is listed anyway so that the recipes are also safe on model classes where it is one.
_IGNORE_ALWAYS = ["lm_head", r"re:.*mlp\.gate$"]
_IGNORE_NON_EXPERT = [r"re:.*attention\.(query_key_value|dense)$", r"re:model\.layers\.\d+\.mlp\.(gate|up|down)_proj$"]
_SCHEME_NOTE = {
    "block": "FP8_BLOCK: 128x128 weight blocks, dynamic per-token-group activations (data-free)",
    "dynamic": "FP8_DYNAMIC: per-channel weights, dynamic per-token activations (data-free)",
    "static": "FP8: per-tensor weights, static per-tensor input scales (needs calibration data)",
}


def recipe_ignore(targets: str) -> list[str]:
    return _IGNORE_ALWAYS + (_IGNORE_NON_EXPERT if targets == "experts" else [])


def recipe_yaml(scheme: str, targets: str) -> str:
    """The llmcompressor recipe (its own YAML format) equivalent to an angel scheme + targets."""
    what = "routed + shared experts only" if targets == "experts" else "experts, attention and dense FFN"
    ignore = ", ".join(f"'{p}'" if p.startswith("re:") else p for p in recipe_ignore(targets))
    return (
        f"# angel `quantize --fp8 --scheme {scheme} --targets {targets}`: {_SCHEME_NOTE[scheme]}; {what}.\n"
        "# Router gate, expert_bias, embeddings, lm_head and norms stay in high precision.\n"
        "# Usable unchanged with llmcompressor: oneshot(model=..., recipe=<this file>, ...)\n"
        "quant_stage:\n"
        "  quant_modifiers:\n"
        "    QuantizationModifier:\n"
        "      targets: [Linear]\n"
        f"      scheme: {PRESET[scheme]}\n"
        f"      ignore: [{ignore}]\n"
    )
