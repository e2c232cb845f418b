"""Layer-streaming forward pass: one decoder layer's weights in memory at a time.

`angel verify` must run on the real 206 GB checkpoint, so it never builds the whole model. Instead:

  ids (all prompts) -> embeddings (read, index, freed)
  for each decoder layer i:
      read layer i's tensors (CheckpointReader.get, memory-mapped; FP8 weights dequantised on the device),
      run every prompt's hidden state [1, T, H] through it, keep the router decisions, free the layer
  final norm (and, when logits are wanted, the LM head applied in chunks of positions)

Peak memory is one decoder layer (AntAngelMed: 3.2B parameters for a MoE layer, 6.5 GB in BF16) plus the
activations (tokens x hidden). Each prompt runs as its own batch of one, without a KV cache, through the
same DecoderLayer modules as BailingMoeForCausalLM, so the router outputs equal the full model's exactly
for the same dtype and device (tests/test_verify_dynamic.py checks it).

FP8 checkpoints (quant_method "fp8" block scales, or compressed-tensors FP8) are dequantised per tensor
(W = W_fp8 * scale, broadcast over each block / row / the tensor) into the activation dtype: routing
verification compares what the quantised weights *are*, not how a given FP8 GEMM kernel rounds.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import nn

from angelcli.config import ModelConfig
from angelcli.loader import CheckpointReader
from angelcli.model.moe import RouterOutput
from angelcli.verify.quant_layout import QuantLayout, layout_from_config


def dequantize(w: torch.Tensor, scale: torch.Tensor, layout: QuantLayout, dtype: torch.dtype) -> torch.Tensor:
    """FP8 weight [N, K] and its scale -> dense [N, K] in `dtype` (computed in fp32 on w's device)."""
    n, k = w.shape
    s = scale.to(device=w.device, dtype=torch.float32)
    if layout.strategy == "block":
        bn, bk = layout.block
        s = s.repeat_interleave(bn, dim=0).repeat_interleave(bk, dim=1)[:n, :k]
    elif layout.strategy == "channel":
        s = s.reshape(n, 1)
    else:
        s = s.reshape(())
    return (w.float() * s).to(dtype)


class LayerStreamer:
    """Materialises pieces of a checkpoint on `device` in `dtype` (expert_bias stays fp32)."""

    def __init__(self, reader: CheckpointReader, cfg: ModelConfig, dtype: torch.dtype, device: str | torch.device):
        self.reader, self.cfg, self.dtype, self.device = reader, cfg, dtype, torch.device(device)
        self.layout = layout_from_config(cfg.quantization_config)

    def tensor(self, name: str, dtype: torch.dtype | None = None) -> torch.Tensor:
        dtype = dtype or self.dtype
        t = self.reader.get(name).to(self.device)
        if self.layout is not None and t.dtype in (torch.float8_e4m3fn, torch.float8_e5m2):
            return dequantize(t, self.reader.get(self.layout.scale_name(name)), self.layout, dtype)
        return t.to(dtype)

    def _experts(self, prefix: str) -> tuple[torch.Tensor, torch.Tensor]:
        """Stack one layer's per-expert projections: w13 [E, 2I, H] (gate rows, then up), w2 [E, H, I]."""
        cfg = self.cfg
        E, inter, H = cfg.num_experts, cfg.moe_intermediate_size, cfg.hidden_size
        w13 = torch.empty(E, 2 * inter, H, dtype=self.dtype, device=self.device)
        w2 = torch.empty(E, H, inter, dtype=self.dtype, device=self.device)
        for e in range(E):
            p = f"{prefix}mlp.experts.{e}."
            w13[e, :inter] = self.tensor(p + "gate_proj.weight")
            w13[e, inter:] = self.tensor(p + "up_proj.weight")
            w2[e] = self.tensor(p + "down_proj.weight")
        return w13, w2

    def layer(self, i: int) -> nn.Module:
        """Decoder layer i with its weights read from the checkpoint (built on meta, no random init)."""
        from angelcli.model.bailing import DecoderLayer

        with torch.device("meta"):
            layer = DecoderLayer(self.cfg, i)
        prefix = f"model.layers.{i}."
        filled: dict[str, torch.Tensor] = {}
        for pname, _ in layer.named_parameters():
            if pname == "mlp.experts.w13":
                filled["mlp.experts.w13"], filled["mlp.experts.w2"] = self._experts(prefix)
            elif pname != "mlp.experts.w2":
                fp32 = pname.endswith("expert_bias")
                filled[pname] = self.tensor(prefix + pname, torch.float32 if fp32 else None)
        for pname, t in filled.items():
            mod, _, attr = pname.rpartition(".")
            layer.get_submodule(mod)._parameters[attr] = nn.Parameter(t, requires_grad=False)
        return layer.eval()

    def free(self) -> None:
        if self.device.type == "cuda":
            torch.cuda.empty_cache()


@dataclass
class StreamResult:
    router: list[RouterOutput] = field(default_factory=list)  # one per MoE layer, tokens of all prompts concatenated
    tokens: list[int] = field(default_factory=list)  # tokens per prompt
    final_hidden: list[torch.Tensor] = field(default_factory=list)  # per prompt [T, H] after model.norm
    first_nonfinite_layer: int | None = None  # first decoder layer whose output held NaN/inf (corrupt weights)
    nonfinite_weight: str | None = None  # first streamed weight holding NaN/inf (stacked-expert names: w13 / w2)


@torch.no_grad()
def stream_forward(streamer: LayerStreamer, prompts: list[list[int]], *, keep_final: bool = False,
                   on_layer=None) -> StreamResult:
    """Run every prompt through the checkpoint one layer at a time; router outputs per MoE layer (on CPU).

    on_layer(i) is called after each decoder layer (progress). keep_final: also return each prompt's
    hidden state after the final norm, for logits (see `logits_chunks`)."""
    from angelcli.model.layers import RMSNorm, Rotary

    cfg, dev = streamer.cfg, streamer.device
    emb = streamer.tensor("model.word_embeddings.weight")
    hidden = [F.embedding(torch.tensor([p], dtype=torch.long, device=dev), emb) for p in prompts]  # [1, T, H]
    del emb
    rotary = Rotary(cfg).to(dev)
    tables = [rotary(torch.arange(len(p), device=dev)[None], streamer.dtype) for p in prompts]
    out = StreamResult(tokens=[len(p) for p in prompts])
    for i in range(cfg.num_hidden_layers):
        layer = streamer.layer(i)
        if out.nonfinite_weight is None:  # the weights are in memory anyway: a NaN in an expert no prompt
            from angelcli.verify.finite import nonfinite_count  # reaches would otherwise pass unseen

            bad = next((n for n, p in layer.named_parameters() if p.is_floating_point() and nonfinite_count(p)), None)
            if bad is not None:
                out.nonfinite_weight = f"model.layers.{i}.{bad}"
        routed: list[RouterOutput] = []
        for j, (cos, sin) in enumerate(tables):
            hidden[j] = layer(hidden[j], cos, sin, None, routed)
        if routed:
            out.router.append(RouterOutput(
                i, torch.cat([r.logits for r in routed]).cpu(), torch.cat([r.topk_ids for r in routed]).cpu(),
                torch.cat([r.topk_weights for r in routed]).cpu()))
        del layer, routed
        if out.first_nonfinite_layer is None and not all(bool(torch.isfinite(h).all()) for h in hidden):
            out.first_nonfinite_layer = i  # routing statistics past this point describe NaNs, not the model
        streamer.free()
        if on_layer is not None:
            on_layer(i)
    if keep_final:
        norm = RMSNorm(cfg.hidden_size, cfg.rms_norm_eps)
        norm.weight = nn.Parameter(streamer.tensor("model.norm.weight"), requires_grad=False)
        out.final_hidden = [norm(h)[0] for h in hidden]
    return out


def logits_chunks(final_hidden: list[torch.Tensor], head: torch.Tensor, chunk: int = 64):
    """Yield fp32 logits [n, V] for consecutive chunks of positions over all prompts (bounded memory)."""
    flat = torch.cat(final_hidden)
    for s in range(0, flat.shape[0], chunk):
        yield F.linear(flat[s : s + chunk], head).float()
