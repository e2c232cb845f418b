"""Checkpoint variants for the verify tests: FP8 layouts, broken inventories, a collapsed router.

All start from angelcli.fixtures' tiny random state dict (checkpoint names, bf16, fp32 expert_bias).
"""

from __future__ import annotations

import math
from pathlib import Path

import torch

from angelcli.fixtures import random_state_dict, tiny_config, write_checkpoint
from angelcli.model.bailing import keeps_high_precision


def base(seed: int = 0, **over) -> tuple[dict, dict]:
    cfg = tiny_config(**over)
    return cfg, random_state_dict(cfg, seed)


def quantisable(name: str, t: torch.Tensor) -> bool:
    return t.ndim == 2 and not keeps_high_precision(name)


def quant_block(w: torch.Tensor, bn: int, bk: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Block FP8 (spec §6): scale = amax / 448 per bn x bk block; returns (e4m3 weight, fp32 scale_inv)."""
    n, k = w.shape
    nb, kb = math.ceil(n / bn), math.ceil(k / bk)
    pad = torch.zeros(nb * bn, kb * bk)
    pad[:n, :k] = w.float()
    blocks = pad.view(nb, bn, kb, bk)
    scale = (blocks.abs().amax(dim=(1, 3)) / 448.0).clamp(min=1e-4 / 448.0)
    q = (blocks / scale[:, None, :, None]).view(nb * bn, kb * bk)[:n, :k]
    return q.to(torch.float8_e4m3fn).contiguous(), scale.float().contiguous()


def write_fp8_block(out: Path, cfg: dict, sd: dict, block=(16, 16)) -> Path:
    """Native "fp8" layout: weight F8_E4M3 + weight_scale_inv F32 [ceil(N/bn), ceil(K/bk)]."""
    q_sd = {}
    for name, t in sd.items():
        if quantisable(name, t):
            q_sd[name], q_sd[name + "_scale_inv"] = quant_block(t, *block)
        else:
            q_sd[name] = t
    cfg = dict(cfg, quantization_config={"activation_scheme": "dynamic", "fmt": "e4m3", "quant_method": "fp8",
                                         "weight_block_size": list(block)})
    return write_checkpoint(out, cfg, q_sd, shards=2)


def write_ct_channel(out: Path, cfg: dict, sd: dict) -> Path:
    """compressed-tensors FP8_DYNAMIC: weight F8_E4M3 + weight_scale BF16 [N, 1]."""
    q_sd = {}
    for name, t in sd.items():
        if quantisable(name, t):
            scale = (t.float().abs().amax(dim=1, keepdim=True) / 448.0).clamp(min=1e-8)
            q_sd[name] = (t.float() / scale).to(torch.float8_e4m3fn).contiguous()
            q_sd[name[: -len(".weight")] + ".weight_scale"] = scale.to(torch.bfloat16).contiguous()
        else:
            q_sd[name] = t
    qcfg = {"quant_method": "compressed-tensors", "format": "float-quantized", "quantization_status": "compressed",
            "config_groups": {"group_0": {"targets": ["Linear"],
                                          "weights": {"num_bits": 8, "type": "float", "symmetric": True,
                                                      "strategy": "channel", "dynamic": False},
                                          "input_activations": {"num_bits": 8, "type": "float",
                                                                "strategy": "token", "dynamic": True}}},
            "ignore": ["lm_head", "re:.*mlp.gate$"]}
    return write_checkpoint(out, dict(cfg, quantization_config=qcfg), q_sd, shards=1)


def collapse_router(cfg: dict, sd: dict, experts=(0, 1)) -> dict:
    """A router that always picks the same experts: zero gate weights, a large bias on `experts`."""
    sd = dict(sd)
    for i in range(cfg["first_k_dense_replace"], cfg["num_hidden_layers"]):
        sd[f"model.layers.{i}.mlp.gate.weight"] = torch.zeros_like(sd[f"model.layers.{i}.mlp.gate.weight"])
        bias = torch.zeros(cfg["num_experts"], dtype=torch.float32)
        bias[list(experts)] = 1.0
        sd[f"model.layers.{i}.mlp.gate.expert_bias"] = bias
    return sd


def perturb_router(cfg: dict, sd: dict, scale: float = 0.5, seed: int = 1) -> dict:
    """Noise on every router weight: routing must drift, but not collapse."""
    g = torch.Generator().manual_seed(seed)
    sd = dict(sd)
    for i in range(cfg["first_k_dense_replace"], cfg["num_hidden_layers"]):
        w = sd[f"model.layers.{i}.mlp.gate.weight"]
        sd[f"model.layers.{i}.mlp.gate.weight"] = (w.float() + scale * w.float().std() *
                                                   torch.randn(w.shape, generator=g)).to(w.dtype)
    return sd
