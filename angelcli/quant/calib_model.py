"""angel's BailingMoeV2 as a transformers PreTrainedModel, shaped for llmcompressor's static calibration.

llmcompressor's `oneshot` needs a `transformers.PreTrainedModel` whose quantisable layers are `nn.Linear`
modules. transformers 5.17 has no BailingMoe class and the upstream one is remote code (unavailable offline),
so this is angel's own, assembled from angel's model blocks (RMSNorm, Attention, MLP, Gate, route()):

  * Module names are the checkpoint names, so every parameter is `<module>.weight` of a checkpoint tensor
    and llmcompressor's module targeting ("Linear", "re:...") and its saved tensor names line up with the
    checkpoint with no renaming (`checkpoint_name`).
  * Routed experts are unstacked: `mlp.experts` is an nn.ModuleList of per-expert MLPs with gate_proj /
    up_proj / down_proj nn.Linear each (angel's engine stacks them instead; calibration needs one observer
    per expert projection).
  * The router (`mlp.gate`: `weight` [E, H] + fp32 `expert_bias`) is angel's Gate, a plain module and not an
    nn.Linear, so no recipe can quantise it.
  * All-experts calibration: when llmcompressor's calibrate-all-experts flag is set (oneshot sets it for the
    whole run with `moe_calibrate_all_experts=True`), every expert runs on every token so that each expert's
    input observers see data, and only the routed rows are combined, so the layer output (and everything
    downstream) is exactly what normal routing gives. The flag is read lazily through sys.modules so this
    file never imports llmcompressor.
  * The top-level forward has no data-dependent branches, so llmcompressor's sequential pipeline can
    fx-trace it; decoder layers (`_no_split_modules`) are its leaf subgraphs and are never traced.

Batches are unpadded (batch size 1 in calibration), so there is no attention mask beyond causality.
"""

from __future__ import annotations

import sys
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn
from transformers import AutoConfig, AutoModelForCausalLM, PreTrainedConfig, PreTrainedModel
from transformers.modeling_outputs import CausalLMOutputWithPast

from angelcli.config import MODEL_TYPES, ModelConfig
from angelcli.model.layers import MLP, Attention, RMSNorm, Rotary
from angelcli.model.moe import Gate, route

_FLAG_MODULE = "llmcompressor.modeling.moe.context"


def calibrate_all_experts() -> bool:
    """llmcompressor's global all-experts flag, without importing llmcompressor."""
    mod = sys.modules.get(_FLAG_MODULE)
    return bool(mod is not None and mod.get_calibrate_all_experts_flag())


class AngelBailingConfig(PreTrainedConfig):
    """config.json of a BailingMoeV2 checkpoint as a transformers config (all upstream fields kept)."""

    model_type = "bailing_moe"

    def __init__(self, **kwargs):
        super().__init__(**kwargs)

    def angel_config(self) -> ModelConfig:
        import dataclasses

        names = {f.name for f in dataclasses.fields(ModelConfig) if f.init and f.name != "extra"}
        data = self.to_dict()
        keep = {k: data[k] for k in names if k in data}
        keep.pop("torch_dtype", None)  # transformers renames it; the calibration dtype is chosen by the caller
        return ModelConfig.from_dict(keep)


class CalibMoe(nn.Module):
    """Sparse MoE block with per-expert nn.Linear experts (checkpoint layout) and all-experts calibration."""

    def __init__(self, cfg: ModelConfig, layer_idx: int):
        super().__init__()
        self.cfg, self.layer_idx = cfg, layer_idx
        self.gate = Gate(cfg)
        self.experts = nn.ModuleList(MLP(cfg.hidden_size, cfg.moe_intermediate_size) for _ in range(cfg.num_experts))
        self.shared_experts = MLP(cfg.hidden_size, cfg.shared_intermediate_size) if cfg.num_shared_experts else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x [B, T, H] -> [B, T, H]; same routing and fp32 combine as angelcli.model.moe.SparseMoe."""
        cfg = self.cfg
        shape = x.shape
        flat = x.reshape(-1, shape[-1])  # [N, H]
        logits = F.linear(flat.float(), self.gate.weight.float())  # router in fp32
        bias = self.gate.expert_bias if cfg.moe_router_enable_expert_bias else None
        ids, weights = route(logits, bias, cfg.num_experts_per_tok, cfg.n_group, cfg.topk_group,
                             cfg.routed_scaling_factor)
        every = calibrate_all_experts()
        N, K = ids.shape
        slot_out = torch.zeros(N, K, shape[-1], dtype=torch.float32, device=x.device)  # [N, K, H]
        for e, expert in enumerate(self.experts):
            tok, slot = (ids == e).nonzero(as_tuple=True)
            if every:
                y = expert(flat)[tok]  # all N tokens through expert e (observers see them), routed rows kept
            elif tok.numel() == 0:
                continue
            else:
                y = expert(flat[tok])
            slot_out[tok, slot] = y.float() * weights[tok, slot, None]
        y = slot_out.sum(dim=1).to(x.dtype).view(shape)
        if self.shared_experts is not None:
            y = y + self.shared_experts(x)
        return y


class CalibDecoderLayer(nn.Module):
    """One decoder layer; llmcompressor's sequential pipeline onloads and calibrates one of these at a time."""

    def __init__(self, cfg: ModelConfig, i: int):
        super().__init__()
        self.input_layernorm = RMSNorm(cfg.hidden_size, cfg.rms_norm_eps)
        self.attention = Attention(cfg, i)
        self.post_attention_layernorm = RMSNorm(cfg.hidden_size, cfg.rms_norm_eps)
        self.mlp = CalibMoe(cfg, i) if cfg.is_moe_layer(i) else MLP(cfg.hidden_size, cfg.intermediate_size)

    def forward(self, h: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
        h = h + self.attention(self.input_layernorm(h), cos, sin)
        return h + self.mlp(self.post_attention_layernorm(h))


class CalibBailingModel(nn.Module):
    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.word_embeddings = nn.Embedding(cfg.vocab_size, cfg.hidden_size)
        self.layers = nn.ModuleList(CalibDecoderLayer(cfg, i) for i in range(cfg.num_hidden_layers))
        self.norm = RMSNorm(cfg.hidden_size, cfg.rms_norm_eps)
        self.rotary = Rotary(cfg)

    def forward(self, input_ids: torch.Tensor) -> torch.Tensor:
        """input_ids [B, T] -> final-normed hidden states [B, T, H]."""
        B, T = input_ids.shape
        positions = torch.arange(T, device=input_ids.device).unsqueeze(0).expand(B, T)
        h = self.word_embeddings(input_ids)
        cos, sin = self.rotary(positions, h.dtype)
        for layer in self.layers:
            h = layer(h, cos, sin)
        return self.norm(h)


class AngelBailingForCausalLM(PreTrainedModel):
    config_class = AngelBailingConfig
    base_model_prefix = "model"
    _no_split_modules = ["CalibDecoderLayer"]
    _keep_in_fp32_modules_strict = ["expert_bias"]

    def __init__(self, config: AngelBailingConfig):
        super().__init__(config)
        cfg = config.angel_config()
        self.angel_cfg = cfg
        self.model = CalibBailingModel(cfg)
        self.lm_head = nn.Linear(cfg.hidden_size, cfg.vocab_size, bias=False)
        self.post_init()

    def _init_weights(self, module):  # weights always come from the checkpoint
        pass

    def get_input_embeddings(self):
        return self.model.word_embeddings

    def get_output_embeddings(self):
        return self.lm_head

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None, **kwargs):
        """input_ids [B, T] (unpadded) -> CausalLMOutputWithPast(logits [B, T, V] fp32)."""
        return CausalLMOutputWithPast(logits=self.lm_head(self.model(input_ids)).float())


def register() -> None:
    """Make AutoConfig / AutoModelForCausalLM resolve the checkpoint's model_type to these classes
    (llmcompressor re-reads the source config through AutoConfig)."""
    for mt in MODEL_TYPES:
        cls = AngelBailingConfig if mt == AngelBailingConfig.model_type else type(
            "AngelBailingConfigV2", (AngelBailingConfig,), {"model_type": mt})
        try:
            AutoConfig.register(mt, cls)
        except ValueError:
            pass  # already registered in this process
        try:
            AutoModelForCausalLM.register(cls, AngelBailingForCausalLM)
        except ValueError:
            pass


def checkpoint_name(module_name: str, attr: str = "weight") -> str:
    """Module name in this class -> checkpoint tensor name (identity by construction)."""
    return f"{module_name}.{attr}"


def build_calib_model(model_dir: Path, raw_config: dict, dtype: torch.dtype = torch.bfloat16,
                      offload_dir: Path | None = None):
    """Build the calibration model from a checkpoint directory through CheckpointReader.

    Built on the meta device with every parameter in `dtype` (expert_bias fp32), then either
      * materialised in CPU memory, tensor by tensor from the memory-mapped shards (offload_dir None), or
      * left on disk (offload_dir given): each parameter becomes a compressed-tensors DiskCache entry that
        points at the source shard itself (a symlink in offload_dir, nothing copied), so only the decoder
        layer that llmcompressor's sequential pipeline is running is ever in memory. Tensors llmcompressor
        updates are written as new files in offload_dir; the source checkpoint is never written to.
    Returns the model in eval mode.
    """
    from angelcli.errors import IntegrityError
    from angelcli.loader import CheckpointReader

    register()
    config = AutoConfig.for_model(raw_config.get("model_type", "bailing_moe"),
                                  **{k: v for k, v in raw_config.items() if k != "model_type"})
    config.name_or_path = str(model_dir)
    with torch.device("meta"):
        model = AngelBailingForCausalLM(config)
    reader = CheckpointReader(model_dir)
    params = dict(model.named_parameters())
    extra = [n for n in reader.tensors if n not in params]
    if extra:
        raise IntegrityError(f"{model_dir}: unexpected tensor {extra[0]} (no such parameter in BailingMoeV2)")
    missing = [n for n in params if n not in reader.tensors]
    if missing:
        raise IntegrityError(f"{model_dir}: checkpoint is missing {missing[0]} (and {len(missing) - 1} more)")
    for name, p in params.items():
        if tuple(reader.tensors[name].shape) != tuple(p.shape):
            got = list(reader.tensors[name].shape)
            raise IntegrityError(f"{model_dir}: {name} has shape {got}, expected {list(p.shape)}")
    for name, p in params.items():
        want = torch.float32 if name.endswith("expert_bias") else dtype
        mod_name, _, attr = name.rpartition(".")
        module = model.get_submodule(mod_name)
        if offload_dir is None:
            t = reader.get(name).to(want).contiguous()
        else:
            t = torch.empty(p.shape, dtype=want, device="meta")
        module._parameters[attr] = nn.Parameter(t, requires_grad=False)
    if offload_dir is not None:
        _offload_to_checkpoint(model, reader, Path(offload_dir))
    model.model.rotary = Rotary(model.angel_cfg)  # non-persistent buffer: rebuilt off the meta device
    model.eval()
    return model


def _offload_to_checkpoint(model, reader, offload_dir: Path) -> None:
    from compressed_tensors.offload import offload_module
    from compressed_tensors.offload.cache.disk import DiskCache

    offload_dir.mkdir(parents=True, exist_ok=True)
    for mod_name, module in model.named_modules():
        direct = dict(module.named_parameters(recurse=False))
        if not direct:
            continue
        for attr, p in direct.items():
            name = f"{mod_name}.{attr}"
            DiskCache.create_checkpoint_symlink(p, {"safetensors_file": str(reader.tensors[name].file),
                                                    "weight_name": name,
                                                    "dtype": str(p.dtype).removeprefix("torch.")}, str(offload_dir))
        offload_module(module, "cpu", "disk", offload_dir=str(offload_dir))
