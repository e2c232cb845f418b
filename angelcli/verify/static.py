"""Static stage of `angel verify`: what config.json alone says about sparsity, plus the header inventory.

From config.json (a local checkpoint's, or the bundled one of an alias that is not pulled yet) it reports
the exact parameter accounting of angelcli.params: total parameters (model dtype + FP32 expert_bias),
active parameters per token by component (attention, norms, dense FFN, routers, the top-k routed experts,
the shared experts, embeddings and LM head), and the routed activation ratio top_k / num_experts. For
AntAngelMed: 102,889,697,280 BF16 + 7,936 FP32 parameters; 6,152,269,824 active per token counting both
embedding matrices (4,864,618,496 without); 8 of 256 routed experts = 1/32.

When weights are present it adds the tensor inventory (angelcli.verify.inventory), from headers only.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from angelcli.config import ModelConfig
from angelcli.errors import UsageError
from angelcli.verify.checks import Check


@dataclass
class ModelSource:
    """Where the config (and weights, when there are any) of a MODEL argument come from."""

    spec: str
    config: dict[str, Any]
    model_dir: Path | None  # None: an alias known only by its bundled config
    config_source: str  # "local" or "bundled"

    @property
    def has_weights(self) -> bool:
        return self.model_dir is not None and any(self.model_dir.glob("*.safetensors"))


def open_source(spec: str | None) -> ModelSource:
    """Resolve MODEL: a directory, a store name, angel-tiny, or an alias (bundled config, not pulled)."""
    from angelcli import aliases
    from angelcli.resolve import TINY_NAME, resolve_model

    try:
        model_dir = resolve_model(spec)
    except UsageError:
        bundled = aliases.bundled_config(spec) if spec else None
        if bundled is None:
            raise
        return ModelSource(str(spec), bundled, None, "bundled")
    path = model_dir / "config.json"
    try:
        config = json.loads(path.read_text("utf-8"))
    except (OSError, ValueError) as err:
        raise UsageError(f"{path}: unreadable config ({err})") from None
    if not isinstance(config, dict):
        raise UsageError(f"{path}: expected a JSON object")
    return ModelSource(str(spec or TINY_NAME), config, model_dir, "local")


def static_facts(config: dict[str, Any]) -> dict[str, Any]:
    """config.json dict -> the static numbers (keys as in the --json report). UsageError names a bad field."""
    from angelcli.params import count_params

    cfg = ModelConfig.from_dict(config)  # validates the fields the forward pass depends on
    pc = count_params(config)
    return {
        "total_params": pc.total,
        "total_params_model_dtype": pc.bf16,
        "total_params_fp32": pc.fp32,
        "active_params": pc.active,
        "active_params_non_embedding": pc.active_non_embedding,
        "activation_ratio": pc.routed_ratio,
        "active_share": pc.active / pc.total if pc.total else 0.0,
        "components": dict(pc.components),
        "active_components": dict(pc.active_components),
        "experts": {
            "routed": cfg.num_experts, "per_token": cfg.num_experts_per_tok, "shared": cfg.num_shared_experts,
            "n_group": cfg.n_group, "topk_group": cfg.topk_group, "moe_layers": cfg.num_moe_layers,
            "dense_layers": cfg.first_k_dense_replace, "routed_scaling_factor": cfg.routed_scaling_factor,
            "expert_bias": cfg.moe_router_enable_expert_bias,
        },
        "quantization": (cfg.quantization_config or {}).get("quant_method"),
    }


def static_stage(source: ModelSource) -> tuple[dict[str, Any], list[Check], Any]:
    """Static numbers, inventory checks and the CheckpointReader (None without weights or when unreadable)."""
    facts = static_facts(source.config)
    if not source.has_weights:
        facts["inventory"] = None
        return facts, [], None
    from angelcli.verify.inventory import inventory_checks

    cfg = ModelConfig.from_dict(source.config)
    checks, reader, summary = inventory_checks(cfg, source.model_dir, facts["total_params"])
    facts["inventory"] = summary
    return facts, checks, reader
