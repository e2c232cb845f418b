"""ModelConfig: the checkpoint's config.json as a dataclass, with upstream field names and defaults.

Field names are exactly those of the upstream BailingMoeV2 config (spec bailing-moe-v2.md §1) so a real
config.json loads unchanged and a config written here loads in vLLM, SGLang and the HF remote code. Unknown
keys are kept in `extra` (and written back) rather than rejected: real configs carry bookkeeping fields.
Values angel cannot run are refused with an error that names the field.
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from angelcli.errors import UsageError

MODEL_TYPES = ("bailing_moe", "bailing_moe_v2")
# Later Ling generations (2.5, 2.6, 3.x, including Ling-3.0-flash-Sante) change the layer stack (hybrid linear
# attention, new routing); their configs would load here only to fail later with a shape error.
UNSUPPORTED_ARCHS = {"bailing_hybrid": "bailing_hybrid", "BailingMoeV2_5ForCausalLM": "BailingMoeV2_5ForCausalLM",
                     "BailingMoeV3ForCausalLM": "BailingMoeV3ForCausalLM"}
# Fields that size the network: a default would silently describe some other model, so they must be given.
REQUIRED_FIELDS = ("vocab_size", "hidden_size", "num_hidden_layers", "num_attention_heads", "num_experts",
                   "num_experts_per_tok", "moe_intermediate_size")


def unsupported_architecture(data: dict) -> str | None:
    """The name of a known-but-unsupported Bailing architecture in a config dict, else None."""
    names = [data.get("model_type")] + list(data.get("architectures") or [])
    for n in names:
        if isinstance(n, str) and (n in UNSUPPORTED_ARCHS or n.startswith("BailingMoeV3")
                                   or n.startswith("BailingMoeV2_5") or n.startswith("bailing_hybrid")):
            return n
    return None


def check_architecture(data: dict, source: str = "config.json") -> None:
    """UsageError (exit 2) for a config of a Bailing generation angel's engine does not implement."""
    name = unsupported_architecture(data)
    if name is not None:
        raise UsageError(f"{source}: architecture {name} is not supported by angel's engine; serve it with SGLang")


@dataclass
class ModelConfig:
    # Defaults follow the upstream configuration class (S2); real checkpoints set every one explicitly.
    vocab_size: int = 157184
    hidden_size: int = 2048
    intermediate_size: int | None = None
    num_hidden_layers: int = 24
    num_attention_heads: int = 16
    num_key_value_heads: int = 4
    head_dim: int | None = None
    hidden_act: str = "silu"
    use_qkv_bias: bool = False
    use_bias: bool = False
    rms_norm_eps: float = 1e-6
    tie_word_embeddings: bool = False
    max_position_embeddings: int = 32768
    rope_theta: float = 600000.0
    rope_scaling: dict | None = None
    partial_rotary_factor: float = 0.5
    use_qk_norm: bool = True
    use_rmsnorm: bool = True
    num_experts: int = 256
    num_shared_experts: int = 1
    num_experts_per_tok: int = 8
    n_group: int = 8
    topk_group: int = 4
    moe_intermediate_size: int = 1024
    moe_shared_expert_intermediate_size: int | None = None
    first_k_dense_replace: int = 1
    routed_scaling_factor: float = 1.0
    norm_topk_prob: bool = True
    score_function: str = "sigmoid"
    router_dtype: str = "fp32"
    moe_router_enable_expert_bias: bool = True
    num_nextn_predict_layers: int = 0
    bos_token_id: int | None = None
    eos_token_id: int | list[int] | None = None
    pad_token_id: int | None = None
    torch_dtype: str = "bfloat16"
    model_type: str = "bailing_moe"
    architectures: list[str] = field(default_factory=lambda: ["BailingMoeV2ForCausalLM"])
    quantization_config: dict | None = None
    extra: dict = field(default_factory=dict, repr=False)

    # ---- derived fields, computed once in __post_init__ (not serialised) ----
    rotary_dim: int = field(init=False, repr=False, default=0)
    shared_intermediate_size: int = field(init=False, repr=False, default=0)
    moe_layers: tuple[int, ...] = field(init=False, repr=False, default=())

    def __post_init__(self) -> None:
        if self.head_dim is None:
            self.head_dim = self.hidden_size // self.num_attention_heads
        if self.intermediate_size is None:
            self.intermediate_size = 4 * self.hidden_size
        self._validate()
        self.rotary_dim = int(self.head_dim * self.partial_rotary_factor)
        # The HF reference sizes the shared expert as moe_intermediate_size x num_shared_experts and ignores
        # moe_shared_expert_intermediate_size; vLLM/SGLang prefer the latter. They agree for every released
        # checkpoint; when they differ we follow the reference and refuse the ambiguity in _validate.
        self.shared_intermediate_size = self.moe_intermediate_size * self.num_shared_experts
        self.moe_layers = tuple(range(self.first_k_dense_replace, self.num_hidden_layers))

    def _validate(self) -> None:
        def bad(name: str, why: str) -> UsageError:
            return UsageError(f"config.json: field '{name}' {why}")

        check_architecture({"model_type": self.model_type, "architectures": self.architectures})
        if self.model_type not in MODEL_TYPES:
            raise bad("model_type", f"is {self.model_type!r}; angel runs {' / '.join(MODEL_TYPES)} (BailingMoeV2)")
        if self.score_function != "sigmoid":
            raise bad("score_function", f"is {self.score_function!r}; BailingMoeV2 routing is sigmoid only")
        if self.hidden_act != "silu":
            raise bad("hidden_act", f"is {self.hidden_act!r}; only 'silu' is supported")
        if self.use_qkv_bias or self.use_bias:
            raise bad("use_qkv_bias" if self.use_qkv_bias else "use_bias", "is true; biased projections are not supported")
        if not self.use_qk_norm:
            raise bad("use_qk_norm", "is false; BailingMoeV2 checkpoints use QK-norm")
        if self.router_dtype not in ("fp32", "float32", None):
            raise bad("router_dtype", f"is {self.router_dtype!r}; the router runs in fp32")
        if self.num_attention_heads % self.num_key_value_heads:
            raise bad("num_key_value_heads", "must divide num_attention_heads")
        if not 0.0 < self.partial_rotary_factor <= 1.0:
            raise bad("partial_rotary_factor", "must be in (0, 1]")
        rot = int(self.head_dim * self.partial_rotary_factor)
        if rot % 2:
            raise bad("partial_rotary_factor", f"gives an odd rotary dim {rot}")
        if self.num_experts_per_tok > self.num_experts or self.num_experts_per_tok < 1:
            raise bad("num_experts_per_tok", "must be between 1 and num_experts")
        if self.n_group < 1 or self.num_experts % self.n_group:
            raise bad("n_group", f"({self.n_group}) must divide num_experts ({self.num_experts})")
        if self.num_experts // self.n_group < 2 and self.n_group > 1:
            raise bad("n_group", "leaves fewer than 2 experts per group (group score is a top-2 sum)")
        if not 1 <= self.topk_group <= self.n_group:
            raise bad("topk_group", f"({self.topk_group}) must be between 1 and n_group ({self.n_group})")
        if self.topk_group * (self.num_experts // self.n_group) < self.num_experts_per_tok:
            raise bad("topk_group", "keeps fewer experts than num_experts_per_tok")
        if not 0 <= self.first_k_dense_replace <= self.num_hidden_layers:
            raise bad("first_k_dense_replace", "must be between 0 and num_hidden_layers")
        if self.num_shared_experts not in (0, 1) and self.num_shared_experts < 0:
            raise bad("num_shared_experts", "must be >= 0")
        shared = self.moe_shared_expert_intermediate_size
        if shared is not None and self.num_shared_experts and shared != self.moe_intermediate_size:
            raise bad("moe_shared_expert_intermediate_size",
                      f"({shared}) differs from moe_intermediate_size ({self.moe_intermediate_size}); "
                      "upstream implementations disagree on which one sizes the shared expert")
        if self.num_nextn_predict_layers:
            raise bad("num_nextn_predict_layers", "is non-zero; MTP layers are not supported (chat checkpoints have none)")
        if self.rope_scaling is not None:
            kind = self.rope_scaling.get("rope_type", self.rope_scaling.get("type"))
            if kind not in ("yarn", "default", None):
                raise bad("rope_scaling", f"type {kind!r} is not supported (only 'yarn')")
            if kind == "yarn" and float(self.rope_scaling.get("factor", 0)) <= 0:
                raise bad("rope_scaling", "yarn needs a positive 'factor'")

    # ---- conveniences used across the package ----
    @property
    def num_moe_layers(self) -> int:
        return len(self.moe_layers)

    def is_moe_layer(self, i: int) -> bool:
        return i >= self.first_k_dense_replace

    @property
    def yarn(self) -> dict | None:
        rs = self.rope_scaling
        if rs and rs.get("rope_type", rs.get("type")) == "yarn":
            return rs
        return None

    @property
    def routed_ratio(self) -> float:
        return self.num_experts_per_tok / self.num_experts

    def eos_ids(self) -> list[int]:
        eos = self.eos_token_id
        if eos is None:
            return []
        return [eos] if isinstance(eos, int) else list(eos)

    @classmethod
    def from_dict(cls, data: dict[str, Any], source: str = "config.json") -> "ModelConfig":
        names = {f.name for f in dataclasses.fields(cls) if f.init and f.name != "extra"}
        known = {k: v for k, v in data.items() if k in names}
        extra = {k: v for k, v in data.items() if k not in names}
        try:
            return cls(**known, extra=extra)
        except TypeError as err:
            raise UsageError(f"{source}: {err}") from None

    @classmethod
    def from_file(cls, path: str | Path) -> "ModelConfig":
        path = Path(path)
        if path.is_dir():
            path = path / "config.json"
        if not path.exists():
            raise UsageError(f"{path}: no config.json here (is this a model directory?)")
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
        except (json.JSONDecodeError, UnicodeDecodeError) as err:
            raise UsageError(f"{path}: not valid JSON ({err})") from None
        if not isinstance(data, dict):
            raise UsageError(f"{path}: expected a JSON object")
        check_architecture(data, str(path))
        for key in REQUIRED_FIELDS:
            if key not in data:
                raise UsageError(f"{path}: field '{key}' is missing (it sizes the network; no default is assumed)")
            if not isinstance(data[key], int) or isinstance(data[key], bool) or data[key] < 1:
                raise UsageError(f"{path}: field '{key}' must be a positive integer, got {data[key]!r}")
        return cls.from_dict(data, source=str(path))

    def to_dict(self) -> dict[str, Any]:
        out = {f.name: getattr(self, f.name) for f in dataclasses.fields(self) if f.init and f.name != "extra"}
        if out["quantization_config"] is None:
            out.pop("quantization_config")
        out.update(self.extra)
        return out


def load_generation_eos(model_dir: str | Path, cfg: ModelConfig) -> list[int]:
    """Every id that ends generation: generation_config.json's eos_token_id(s), else config.json's.

    The AntAngelMed chat model stops on two ids (<|endoftext|> 156892 and <|role_end|> 156895); stopping on
    only one of them makes chat run on past the end of a turn.
    """
    ids: list[int] = []
    gen = Path(model_dir) / "generation_config.json"
    if gen.exists():
        try:
            eos = json.loads(gen.read_text()).get("eos_token_id")
        except json.JSONDecodeError as err:
            raise UsageError(f"{gen}: not valid JSON ({err})") from None
        if isinstance(eos, int):
            ids.append(eos)
        elif isinstance(eos, list):
            ids.extend(int(x) for x in eos)
    for i in cfg.eos_ids():
        if i not in ids:
            ids.append(i)
    return ids


def ceil_div(a: int, b: int) -> int:
    return -(-a // b)
