"""The inference forward's plan: every tensor a step reads, fetched from the modules once per model.

Reading a parameter or submodule through nn.Module's attribute lookup costs about a microsecond of Python,
and angel-tiny's decode step made ~200 such reads plus the freshness checks of the derived copies (stacked
experts, q/k norm weights): ~10% of a one-thread step. The plan keeps direct references instead, per layer,
and is rebuilt whenever any parameter is replaced, re-pointed (.data, .to()) or modified in place: each
forward compares (identity, data_ptr, _version) of every parameter with the values at build time, which is
a few tenths of a microsecond per parameter and catches exactly what the derived copies depend on.

plan_for(model) -> Plan; Plan.layers[i] is an AttPlan + norms + an FFN entry (MlpPlan or MoePlan).
A projection entry is the weight tensor for a plain nn.Linear, else the module itself (FP8 linears).
"""

from __future__ import annotations

from dataclasses import dataclass

from torch import nn


def projection(module):
    """The weight of a plain nn.Linear (applied with F.linear), else the module (called)."""
    return module.weight if type(module) is nn.Linear else module


@dataclass(eq=False)
class AttPlan:
    qkv: object
    dense: object
    qk_weight: object  # [Hq + Hkv, D]
    eps: float
    nh: int
    nkv: int
    D: int
    scale: float
    idx: int


@dataclass(eq=False)
class MlpPlan:
    gate: object
    up: object
    down: object


@dataclass(eq=False)
class MoePlan:
    block: object  # the SparseMoe module, for the general path
    gate_w: object  # router weight [E, H] as stored
    bias: object  # expert_bias [E] or None
    stacked: tuple | None  # inference.stacked_experts(block)
    layer_idx: int


@dataclass(eq=False)
class LayerPlan:
    att: AttPlan
    in_norm: tuple  # (weight, eps)
    post_norm: tuple
    ffn: object  # MlpPlan or MoePlan


@dataclass(eq=False)
class Plan:
    refs: list  # (module._parameters dict, name, tensor) for every parameter
    key: list  # [(data_ptr, _version)] of the same parameters at build time
    layers: list

    def fresh(self) -> bool:
        for (params, name, t), k in zip(self.refs, self.key):
            if params.get(name) is not t or (t.data_ptr(), t._version) != k:
                return False
        return True


def plan_for(model) -> Plan:
    """model's Plan (BailingMoeForCausalLM), rebuilt when stale."""
    plan = model.__dict__.get("_inference_plan")
    if plan is None or not plan.fresh():
        plan = model.__dict__["_inference_plan"] = build(model)
    return plan


def build(model) -> Plan:
    from angelcli.model import inference
    from angelcli.model.moe import SparseMoe

    refs = [(m._parameters, n, t) for m in model.modules() for n, t in m._parameters.items() if t is not None]
    layers = []
    for layer in model.model.layers:
        a = layer.attention
        att = AttPlan(projection(a.query_key_value), projection(a.dense), inference.qk_weight(a),
                      a.query_layernorm.eps, a.num_heads, a.num_kv, a.head_dim, a.scale, a.layer_idx)
        m = layer.mlp
        if isinstance(m, SparseMoe):
            bias = m.gate.expert_bias if m.cfg.moe_router_enable_expert_bias else None
            ffn = MoePlan(m, m.gate.weight, bias, inference.stacked_experts(m), m.layer_idx)
        else:
            ffn = MlpPlan(projection(m.gate_proj), projection(m.up_proj), projection(m.down_proj))
        layers.append(LayerPlan(att, (layer.input_layernorm.weight, layer.input_layernorm.eps),
                                (layer.post_attention_layernorm.weight, layer.post_attention_layernorm.eps), ffn))
    key = [(t.data_ptr(), t._version) for _, _, t in refs]
    return Plan(refs, key, layers)
