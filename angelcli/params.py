"""Exact parameter accounting for BailingMoeV2 configs (shared by `angel show`, `verify --static`, `plan`).

Counts follow the tensor list of shared/spec/bailing-moe-v2.md §2 and reproduce the HF API count of §4
exactly: for the Ling-flash-2.0 / AntAngelMed config, 102,889,697,280 BF16 + 7,936 FP32 (31 x 256
expert_bias), and 6,152,269,824 parameters active per token counting both embedding matrices.

Per-token "active" parameters are those whose weights take part in one token's forward pass: attention and
its norms in every layer, the dense FFN, each MoE layer's router + top-k routed experts + shared experts, the
final norm, the input embedding row and the LM head. The FP32 expert_bias only shifts expert selection and
the MTP layer (if any) only runs for speculative decoding, so neither is counted as active.

Block-FP8 bytes follow the inclusionAI recipe of §6: attention, dense-FFN, shared- and routed-expert weight
matrices become 1-byte e4m3 with one FP32 scale per 128x128 block; embeddings, LM head, routers and norms stay
BF16; expert_bias stays FP32.

Also here: count_from_safetensors(), the exact count per dtype read from safetensors headers (no tensor
data is read), usable for any model, including drafts this module has no formula for.
"""

from __future__ import annotations

import json
import math
import struct
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from angelcli.errors import UsageError

BAILING_MODEL_TYPES = ("bailing_moe", "bailing_moe_v2")


@dataclass(frozen=True)
class ParamCount:
    """Parameter totals of one config. Component dicts map a component name to a parameter count."""

    total: int  # bf16 + fp32
    bf16: int  # parameters stored in the model dtype
    fp32: int  # expert_bias vectors
    active: int  # per token, with embedding row and LM head
    active_non_embedding: int
    components: dict[str, int] = field(default_factory=dict)  # whole model
    active_components: dict[str, int] = field(default_factory=dict)  # per token
    routed_ratio: float = 0.0  # num_experts_per_tok / num_experts
    fp8_quantized: int = 0  # parameters that block-FP8 stores as e4m3
    fp8_scale_blocks: int = 0  # FP32 weight_scale_inv entries under block-FP8
    bytes_bf16: int = 0
    bytes_fp8_block: int = 0

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def is_bailing_moe(config: dict[str, Any]) -> bool:
    return config.get("model_type") in BAILING_MODEL_TYPES or any(
        str(a).startswith("BailingMoe") for a in config.get("architectures") or ()
    )


def _req(config: dict[str, Any], key: str) -> int:
    value = config.get(key)
    if not isinstance(value, int) or isinstance(value, bool) or value < 0:
        raise UsageError(f"config field '{key}' is missing or not a non-negative integer (got {value!r})")
    return value


def _blocks(rows: int, cols: int, block: tuple[int, int]) -> int:
    return math.ceil(rows / block[0]) * math.ceil(cols / block[1])


def count_params(config: dict[str, Any]) -> ParamCount:
    """Exact counts for a BailingMoeV2 config dict (config.json contents). UsageError names a bad field."""
    from angelcli.config import check_architecture

    check_architecture(config)
    if not is_bailing_moe(config):
        raise UsageError(f"parameter formula covers BailingMoeV2 only; model_type is {config.get('model_type')!r}")
    h = _req(config, "hidden_size")
    vocab = _req(config, "vocab_size")
    layers = _req(config, "num_hidden_layers")
    heads = _req(config, "num_attention_heads")
    kv_heads = config.get("num_key_value_heads") or heads
    head_dim = config.get("head_dim") or h // heads
    ffn = _req(config, "intermediate_size")
    n_exp = _req(config, "num_experts")
    top_k = _req(config, "num_experts_per_tok")
    moe_ffn = _req(config, "moe_intermediate_size")
    # S1 (HF reference) sizes the shared expert as moe_intermediate_size x num_shared_experts.
    shared_ffn = moe_ffn * (config.get("num_shared_experts") or 0)
    first_dense = min(config.get("first_k_dense_replace", 0) or 0, layers)
    moe_layers = layers - first_dense
    mtp_layers = config.get("num_nextn_predict_layers") or 0
    qk_norm = bool(config.get("use_qk_norm"))
    expert_bias = bool(config.get("moe_router_enable_expert_bias", True))
    tied = bool(config.get("tie_word_embeddings"))
    qkv_out = (heads + 2 * kv_heads) * head_dim
    qcfg = config.get("quantization_config") or {}
    block = tuple(qcfg.get("weight_block_size") or (128, 128))

    # One decoder layer's attention block (fused QKV + output projection, optional biases) and its norms.
    attn = h * qkv_out + heads * head_dim * h
    attn += qkv_out if config.get("use_qkv_bias") else 0
    attn += h if config.get("use_bias") else 0
    layer_norms = 2 * h + (2 * head_dim if qk_norm else 0)
    attn_blocks = _blocks(qkv_out, h, block) + _blocks(h, heads * head_dim, block)

    def mlp(inter: int) -> int:
        return 3 * h * inter

    def mlp_blocks(inter: int) -> int:
        return 2 * _blocks(inter, h, block) + _blocks(h, inter, block)

    expert = mlp(moe_ffn)
    router = n_exp * h
    moe_layer = n_exp * expert + mlp(shared_ffn) + router
    moe_layer_quantized = n_exp * expert + mlp(shared_ffn)
    moe_layer_blocks = n_exp * mlp_blocks(moe_ffn) + (mlp_blocks(shared_ffn) if shared_ffn else 0)

    # MTP layer: enorm + hnorm + eh_proj (2h -> h) + a full MoE decoder layer + final_layernorm (§2).
    mtp_one = 2 * h + 2 * h * h + attn + layer_norms + moe_layer + h

    components = {
        "embeddings": vocab * h,
        "lm_head": 0 if tied else vocab * h,
        "attention": layers * attn,
        "norms": layers * layer_norms + h,
        "dense_ffn": first_dense * mlp(ffn),
        "routers": moe_layers * router,
        "routed_experts": moe_layers * n_exp * expert,
        "shared_experts": moe_layers * mlp(shared_ffn),
        "mtp": mtp_layers * mtp_one,
    }
    bf16 = sum(components.values())
    fp32 = (moe_layers + mtp_layers) * n_exp if expert_bias else 0
    components["expert_bias_fp32"] = fp32

    active_components = {
        # Only one embedding row is read per token, but model cards (and spec §4) count the whole matrix as
        # active; follow them so the numbers compare.
        "embeddings": components["embeddings"],
        "lm_head": components["lm_head"],
        "attention": components["attention"],
        "norms": components["norms"],
        "dense_ffn": components["dense_ffn"],
        "routers": components["routers"],
        "routed_experts": moe_layers * top_k * expert,
        "shared_experts": components["shared_experts"],
    }
    active = sum(active_components.values())
    active_non_emb = active - active_components["embeddings"] - active_components["lm_head"]

    quantized = (layers * (h * qkv_out + heads * head_dim * h) + first_dense * mlp(ffn)
                 + moe_layers * moe_layer_quantized)
    blocks = layers * attn_blocks + first_dense * mlp_blocks(ffn) + moe_layers * moe_layer_blocks
    if mtp_layers:  # the MTP decoder is quantized like any layer; eh_proj is not in the FP8 list (§6)
        quantized += mtp_layers * (h * qkv_out + heads * head_dim * h + moe_layer_quantized)
        blocks += mtp_layers * (attn_blocks + moe_layer_blocks)

    return ParamCount(
        total=bf16 + fp32,
        bf16=bf16,
        fp32=fp32,
        active=active,
        active_non_embedding=active_non_emb,
        components=components,
        active_components=active_components,
        routed_ratio=top_k / n_exp if n_exp else 0.0,
        fp8_quantized=quantized,
        fp8_scale_blocks=blocks,
        bytes_bf16=2 * bf16 + 4 * fp32,
        bytes_fp8_block=quantized + 2 * (bf16 - quantized) + 4 * fp32 + 4 * blocks,
    )


# safetensors dtype names -> bytes per element
_ST_DTYPE_BYTES = {
    "F64": 8, "F32": 4, "F16": 2, "BF16": 2, "F8_E4M3": 1, "F8_E5M2": 1, "F8_E8M0": 1,
    "I64": 8, "I32": 4, "I16": 2, "I8": 1, "U8": 1, "U16": 2, "U32": 4, "U64": 8, "BOOL": 1,
}


def read_safetensors_header(path: str | Path) -> dict[str, Any]:
    """The JSON header of one .safetensors file (tensor name -> {dtype, shape, data_offsets})."""
    path = Path(path)
    with open(path, "rb") as fh:
        raw = fh.read(8)
        if len(raw) != 8:
            raise UsageError(f"{path}: not a safetensors file (shorter than 8 bytes)")
        (n,) = struct.unpack("<Q", raw)
        if n > 100 * 1024 * 1024:
            raise UsageError(f"{path}: safetensors header length {n} is implausible")
        header = fh.read(n)
    try:
        return json.loads(header)
    except json.JSONDecodeError as err:
        raise UsageError(f"{path}: safetensors header is not valid JSON ({err})") from None


def count_from_safetensors(model_dir: str | Path) -> dict[str, int]:
    """Parameter count per safetensors dtype over every *.safetensors file in `model_dir` (headers only)."""
    counts: dict[str, int] = {}
    for path in sorted(Path(model_dir).glob("*.safetensors")):
        for name, info in read_safetensors_header(path).items():
            if name == "__metadata__":
                continue
            counts[info["dtype"]] = counts.get(info["dtype"], 0) + math.prod(info["shape"])
    return counts


def human_count(n: int) -> str:
    """102889697280 -> '102.89B'."""
    for unit, size in (("T", 10**12), ("B", 10**9), ("M", 10**6), ("K", 10**3)):
        if abs(n) >= size:
            return f"{n / size:.2f}{unit}"
    return str(n)
