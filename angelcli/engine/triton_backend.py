"""The triton backend: BailingMoeV2 over a paged KV cache, every hot op from angelcli.ops.

PagedModel runs the weights of an already loaded BailingMoeForCausalLM (same tensors, nothing copied,
BF16 or FP8, whole or one tensor-parallel slice) with the same call as the model itself:

    net = PagedModel(model, cfg)                      # ops="triton": kernels (CUDA, or the interpreter on CPU)
    cache = net.new_cache(batch, max_len)             # PagedKVCache over the engine's BlockPool
    out = net(input_ids [B, T], cache, capture_layers=(...), return_router=..., last_only=...)  # ForwardOutput

so the Engine, speculative decoding and tests treat both backends alike. Per layer (N = B*T tokens):

    x, r   = rms_norm(h, w, residual=r)          fused residual add (the add is rounded like HF's h + attn)
    qkv    = x @ Wqkv^T                           torch GEMM (cuBLAS) for BF16, ops.fp8_gemm for FP8
    q, k   = qk_norm_rope(qkv, positions)         per-head RMSNorm + partial NeoX RoPE
    kv_cache_write(k, v, slot_mapping)            into the paged pool
    o      = attention_prefill | attention_decode (T == 1)
    a      = o @ Wdense^T  (+ all_reduce)
    x, r   = rms_norm(a, w, residual=r)
    MoE:   logits = fp32 x @ fp32 Wgate^T; (w, ids) = route(...); y = fused_moe(x, w13, w2, w, ids) + shared(x)
           (+ one all_reduce of y under tensor parallelism)

ops="torch" runs the plain-torch twins (angelcli/ops/reference.py) through the same code: a fast CPU check
of the paged bookkeeping, and the oracle the kernels are compared with.

CUDA graphs (engine/graphs.py): decode steps of up to `graph_max_batch` rows and EAGLE3 verify steps
replay one graph per (padded batch size, tokens per row, captured layers), whatever the cache width.

RoPE: the cos/sin table has one row per position the engine can reach (max(max_seq_len,
max_position_embeddings); YaRN frequencies when configured), so the kernel never reads past it and agrees
with the torch backend, which rotates any position.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from angelcli.config import ModelConfig
from angelcli.engine.graphs import StepGraphs
from angelcli.engine.paged_cache import DEFAULT_BLOCK_SIZE, BlockPool, PagedKVCache, StepInput
from angelcli.model.bailing import ForwardOutput
from angelcli.model.fp8 import Fp8Linear
from angelcli.model.moe import RouterOutput, SparseMoe
from angelcli.planner import GRAPH_MAX_BATCH

OP_NAMES = ("rms_norm", "rms_norm_fp8", "silu_mul", "qk_norm_rope_cache", "attention_prefill", "attention_decode",
            "attention_decode_fp8", "route_gemm",
            "fused_moe", "fp8_gemm", "quantize_act_fp8")

class _Ops:
    """The op set a PagedModel calls: Triton wrappers or their torch twins, same signatures."""

    def __init__(self, which: str):
        from angelcli import ops
        from angelcli.ops import reference

        if which not in ("triton", "torch"):
            raise ValueError(f"ops must be 'triton' or 'torch', not {which!r}")
        self.which = which
        for name in OP_NAMES:
            setattr(self, name, ops.kernel_impl(name) if which == "triton" else getattr(reference, name))


class PagedModel:
    def __init__(self, model, cfg: ModelConfig, *, ops: str = "triton", block_size: int = DEFAULT_BLOCK_SIZE,
                 kv_tokens: int | None = None, cuda_graphs: bool | None = None,
                 graph_max_batch: int = GRAPH_MAX_BATCH, max_seq_len: int | None = None):
        """max_seq_len: the longest sequence this runner serves (sizes the RoPE table and the graphs' block
        table; default max_position_embeddings). cuda_graphs: default on CUDA only; "replay" (tests) runs
        the graph bookkeeping without CUDA (_EagerReplay)."""
        self.model, self.cfg = model, cfg
        self.ops = _Ops(ops)
        self.tp = model.tp
        self.device = model.lm_head.weight.device
        self.dtype = model.model.word_embeddings.weight.dtype
        if ops == "triton" and self.dtype not in (torch.bfloat16, torch.float16):
            from angelcli.errors import UsageError

            raise UsageError("--backend triton runs bfloat16 (or float16) activations; use --dtype bfloat16")
        self.block_size = block_size
        self.kv_tokens = kv_tokens
        self.pool: BlockPool | None = None
        self.max_seq_len = max(max_seq_len or 0, cfg.max_position_embeddings)
        self.cos_sin = self._rope_table(self.max_seq_len)
        for layer in model.model.layers:
            ex = getattr(layer.mlp, "experts", None)
            if ops == "triton" and ex is not None and ex.w13_scale is not None and ex.w13_scale.dim() == 3 \
                    and ex.inter % 128:
                from angelcli.errors import UsageError

                raise UsageError(f"--backend triton: block-FP8 experts need an expert width that is a multiple of "
                                 f"128 per GPU (moe_intermediate_size / tp = {ex.inter}); use --backend torch")
        # per layer: does (input norm, post-attention norm) feed FP8 GEMMs that take its quantised output?
        # quantise activations once per consumer group (kernels: bf16 in); float32 runs of the twins (exactness
        # tests) keep their dtype end to end and let each FP8 op quantise its own input
        self._prequant = self.dtype in (torch.bfloat16, torch.float16)
        fp8_ok = self._prequant and cfg.hidden_size % 128 == 0  # the fused norm quantises whole 128-groups
        self._fp8_in = [(fp8_ok and isinstance(layer.attention.query_key_value, Fp8Linear),
                         fp8_ok and (getattr(getattr(layer.mlp, "experts", None), "w13_scale", None) is not None
                                     or isinstance(getattr(layer.mlp, "gate_proj", None), Fp8Linear)))
                        for layer in model.model.layers]
        # the shared expert joins the routed ones as extra experts of fused_moe (ops/shared_expert.py);
        # other dense MLPs run gate|up as one GEMM
        self._joined: dict[int, tuple] = {}  # id(SparseMoe) -> (w13, w2, w13_scale, w2_scale, n slices)
        self._gate_up: dict[int, tuple] = {}  # id(MLP) -> (weight [2I, H], scale | None)
        for layer in model.model.layers:
            if isinstance(layer.mlp, SparseMoe) and layer.mlp.shared_experts is not None:
                self._join_shared(layer.mlp)
            for mlp in (layer.mlp, getattr(layer.mlp, "shared_experts", None)):
                if mlp is not None and hasattr(mlp, "gate_proj") and id(layer.mlp) not in self._joined:
                    self._fuse_gate_up(mlp)
        a0 = model.model.layers[0].attention
        self.hq, self.hkv, self.head_dim = a0.num_heads, a0.num_kv, a0.head_dim
        self.cuda_graphs = (self.device.type == "cuda") if cuda_graphs is None else cuda_graphs
        self.graph_max_batch = graph_max_batch
        # decode / verify graphs (engine/graphs.py): one per padded batch size, whatever the cache width
        self.graphs = StepGraphs(self, graph_max_batch, self.cuda_graphs) if self.cuda_graphs else None

    def _rope_table(self, positions: int) -> torch.Tensor:
        """cos/sin [positions, rotary_dim] from the model's own frequencies (YaRN included)."""
        from angelcli.ops.reference import rope_cache

        rot = self.model.rotary
        return rope_cache(positions, self.cfg.rotary_dim, self.cfg.rope_theta, self.dtype, inv_freq=rot.inv_freq,
                          attention_scaling=rot.scale, device=self.device)

    # ---- cache ----
    def ensure_pool(self, tokens: int) -> BlockPool:
        """The engine-wide block pool with the KV budget `kv_tokens`, created on first use. Without a fixed
        budget it starts at the first request's size and grows when it runs out (BlockPool.grow)."""
        if self.pool is None:
            need = -(-(self.kv_tokens or tokens) // self.block_size)
            self.pool = BlockPool(self.cfg, need, self.block_size, self.dtype, self.device, self.hkv,
                                  growable=self.kv_tokens is None)
        return self.pool

    def new_cache(self, batch: int, max_len: int) -> PagedKVCache:
        if max_len > self.max_seq_len:  # a longer run than planned: widen the RoPE table (graphs hold the old one)
            self.max_seq_len = max_len
            self.cos_sin = self._rope_table(max_len)
            if self.graphs is not None:
                self.graphs.clear()
        return PagedKVCache(self.ensure_pool(batch * max_len), batch, max_len)

    # ---- forward ----
    def __call__(self, input_ids: torch.Tensor, cache: PagedKVCache, *, capture_layers: tuple[int, ...] = (),
                 return_router: bool = False, last_only: bool = False, sampling=None) -> ForwardOutput:
        """input_ids [B, T] -> ForwardOutput (logits [B, T or 1, V] fp32); the cache advances by T.
        sampling: ("greedy", None) | ("sample", engine.sampling.sampling_tensors(...)); on the graph path the
        sampled ids and their logprobs are computed inside the graph and set as out.sampled (else None)."""
        B, T = input_ids.shape
        n_new = T
        cache.reserve(T)
        if self.graphs is not None and self.graphs.usable(B, T, cache, capture_layers, return_router, last_only):
            out = self.graphs.run(input_ids, cache, tuple(capture_layers), last_only, sampling if T == 1 else None)
            cache.advance(T)
            return out
        step = cache.step_input(T)
        out = ForwardOutput(logits=None)  # type: ignore[arg-type]
        h = self.forward_tokens(input_ids.reshape(-1), step, cache.pool, capture_layers, out, return_router)
        if last_only:
            h = h[step.cu_seqlens_q[1:].long() - 1]  # [B, H]
            T = 1
        out.logits = self._logits(h).view(B, T, -1)
        out.hidden = {i: x.view(B, -1, x.shape[-1]) for i, x in out.hidden.items()}
        out.sampled = None
        cache.advance(n_new)
        return out

    def forward_tokens(self, ids: torch.Tensor, step: StepInput, pool: BlockPool, capture_layers=(),
                       out: ForwardOutput | None = None, return_router: bool = False) -> torch.Tensor:
        """ids [N] -> final-norm hidden states [N, H] (graph-capturable when out is None)."""
        m, cfg, ops = self.model.model, self.cfg, self.ops
        h = m.word_embeddings(ids)  # [N, H]
        residual = None
        for i, layer in enumerate(m.layers):
            x, r, xq = self._norm(h, layer.input_layernorm.weight, residual, self._fp8_in[i][0])
            residual = h if residual is None else r
            a = self._attention(layer.attention, x, step, pool.k[i], pool.v[i], xq)
            if self.tp is not None:
                a = self.tp.all_reduce(a)
            x, residual, xq = self._norm(a, layer.post_attention_layernorm.weight, residual, self._fp8_in[i][1])
            if isinstance(layer.mlp, SparseMoe):
                h = self._moe(layer.mlp, x, out.router if (out is not None and return_router) else None, xq)
            else:
                h = self._mlp(layer.mlp, x, xq)
            if self.tp is not None:
                h = self.tp.all_reduce(h)
            if out is not None and i in capture_layers:
                out.hidden[i] = residual + h  # the residual stream after layer i, as HF rounds it
        x, _ = ops.rms_norm(h, m.norm.weight, cfg.rms_norm_eps, residual=residual)
        return x

    def _norm(self, x, weight, residual, quant: bool):
        """(y, new residual or None, (yq, scale) or None): RMSNorm with the residual add fused, and the FP8
        quantisation its FP8 readers need done in the same pass."""
        eps = self.cfg.rms_norm_eps
        if quant:
            return self.ops.rms_norm_fp8(x, weight, eps, residual)
        if residual is None:
            return self.ops.rms_norm(x, weight, eps), None, None
        return (*self.ops.rms_norm(x, weight, eps, residual=residual), None)

    def _linear(self, x: torch.Tensor, mod, xq=None) -> torch.Tensor:
        """x [N, K] -> [N, N_out]; FP8 weights take xq = (fp8 x, scales) when the caller has it."""
        if isinstance(mod, Fp8Linear):
            return self.ops.fp8_gemm(x if xq is None else xq, mod.weight, mod.weight_scale, out_dtype=x.dtype)
        return F.linear(x, mod.weight)

    def _attention(self, attn, x, step: StepInput, k_cache, v_cache, xq=None) -> torch.Tensor:
        N, ops, d = x.shape[0], self.ops, self.head_dim
        qkv = self._linear(x, attn.query_key_value, xq)  # [N, (Hq + 2 Hkv) D]
        # q [N, Hq, D]; the rotated k and v go straight into the paged cache in the same launch
        q, _ = ops.qk_norm_rope_cache(qkv, step.positions, attn.query_layernorm.weight, attn.key_layernorm.weight,
                                      self.cos_sin, self.hq, self.hkv, self.cfg.rms_norm_eps, k_cache, v_cache,
                                      step.slot_mapping)
        oq = None
        if step.is_decode and d == 128 and self._prequant and isinstance(attn.dense, Fp8Linear):
            # the merge pass also quantises o for the FP8 output projection (one head = one 128-group)
            o, oq = ops.attention_decode_fp8(q, k_cache, v_cache, step.block_table, step.seq_lens)
        elif step.is_decode:
            o = ops.attention_decode(q, k_cache, v_cache, step.block_table, step.seq_lens)  # [B, Hq, D]
        else:
            o = ops.attention_prefill(q, k_cache, v_cache, step.block_table, step.cu_seqlens_q, step.seq_lens)
        return self._linear(o.reshape(N, self.hq * d), attn.dense, oq)  # partial sum under TP

    def _join_shared(self, moe: SparseMoe) -> None:
        """Append the shared expert to the routed experts' stacked weights, once (a new copy of the experts;
        the model's own w13 / w2 become views of it, so the old tensors are freed). Skipped when the formats
        differ (e.g. FP8 experts with a bf16 shared expert): the shared MLP then runs on its own."""
        from angelcli.ops.shared_expert import append_shared_expert

        ex, sh = moe.experts, moe.shared_experts
        fp8 = ex.w13_scale is not None
        if fp8 != isinstance(sh.gate_proj, Fp8Linear) or fp8 != isinstance(sh.down_proj, Fp8Linear):
            return
        kw = dict(w13_scale=ex.w13_scale, w2_scale=ex.w2_scale, gate_scale=sh.gate_proj.weight_scale,
                  up_scale=sh.up_proj.weight_scale, down_scale=sh.down_proj.weight_scale) if fp8 else {}
        try:
            with torch.no_grad():
                w13, w2, s13, s2, n = append_shared_expert(ex.w13, ex.w2, sh.gate_proj.weight, sh.up_proj.weight,
                                                           sh.down_proj.weight, **kw)
        except (ValueError, TypeError):
            return
        e = ex.w13.shape[0]
        with torch.no_grad():
            ex.w13.data, ex.w2.data = w13[:e], w2[:e]
            if fp8:
                ex.w13_scale.data = s13[:e].view(ex.w13_scale.shape)
                ex.w2_scale.data = s2[:e].view(ex.w2_scale.shape)
        self._joined[id(moe)] = (w13, w2, s13, s2, n)

    def _fuse_gate_up(self, mlp) -> None:
        """Concatenate gate and up (weights and scales) into one [2I, H] operand, once, and make the module's
        own parameters views of it (no extra memory; the torch backend sees the same values)."""
        g, u = mlp.gate_proj, mlp.up_proj
        fp8 = isinstance(g, Fp8Linear)
        if fp8 != isinstance(u, Fp8Linear) or g.weight.shape != u.weight.shape:
            return
        inter = g.weight.shape[0]
        if fp8 and (g.weight_scale.shape != u.weight_scale.shape or (g.weight_scale.dim() == 2 and inter % 128)):
            return  # a 128-row scale block would straddle gate and up
        with torch.no_grad():
            w = torch.cat([g.weight, u.weight])
            g.weight.data, u.weight.data = w[:inter], w[inter:]
            scale = None
            if fp8:
                scale = torch.cat([g.weight_scale, u.weight_scale])
                rows = g.weight_scale.shape[0]
                g.weight_scale.data, u.weight_scale.data = scale[:rows], scale[rows:]
        self._gate_up[id(mlp)] = (w, scale)

    def _mlp(self, mlp, x: torch.Tensor, xq=None) -> torch.Tensor:
        """down(silu(gate x) * up x): x [N, H] (xq: its FP8 pair) -> [N, H]; gate|up as one GEMM, then one
        kernel for silu * up and the down projection's FP8 quantisation."""
        fp8 = isinstance(mlp.gate_proj, Fp8Linear)
        if xq is None and fp8 and self._prequant:
            xq = self.ops.quantize_act_fp8(x)  # gate and up read the same quantised x
        fused = self._gate_up.get(id(mlp))
        if fused is None:
            h = F.silu(self._linear(x, mlp.gate_proj, xq)) * self._linear(x, mlp.up_proj, xq)
            return self._linear(h, mlp.down_proj)
        w, scale = fused
        if fp8:
            gu = self.ops.fp8_gemm(x if xq is None else xq, w, scale, out_dtype=x.dtype)  # [N, 2I]
        else:
            gu = F.linear(x, w)
        h, hq = self.ops.silu_mul(gu, quant=isinstance(mlp.down_proj, Fp8Linear) and self._prequant)
        return self._linear(h, mlp.down_proj, hq)

    def _moe(self, moe: SparseMoe, x: torch.Tensor, router: list | None, xq=None) -> torch.Tensor:
        """x [N, H] (xq: its (fp8, scale) pair when the norm already quantised it) -> [N, H] partial sum."""
        cfg = self.cfg
        bias = moe.gate.expert_bias if cfg.moe_router_enable_expert_bias else None
        joined = self._joined.get(id(moe))
        k = cfg.num_experts_per_tok
        # one launch: fp32 logits [N, E] (router weight upcast in registers, never copied) + grouped top-k,
        # plus the slots of the shared expert's slices when it runs inside fused_moe
        w, ids, logits = self.ops.route_gemm(x, moe.gate.weight, bias, k, cfg.n_group, cfg.topk_group,
                                             cfg.routed_scaling_factor, joined[4] if joined else 0)
        if router is not None:
            router.append(RouterOutput(moe.layer_idx, logits, ids[:, :k].long(), w[:, :k]))
        ex = moe.experts
        if ex.w13_scale is not None and xq is None and self._prequant:
            xq = self.ops.quantize_act_fp8(x)  # one quantisation feeds every FP8 GEMM of the layer
        w13, w2, s13, s2 = joined[:4] if joined else (ex.w13, ex.w2, ex.w13_scale, ex.w2_scale)
        y = self.ops.fused_moe(x if xq is None else xq, w13, w2, w, ids, w13_scale=s13, w2_scale=s2)
        if moe.shared_experts is not None and joined is None:
            y = y + self._mlp(moe.shared_experts, x, xq)
        return y

    def _logits(self, h: torch.Tensor, cast: bool = True) -> torch.Tensor:
        """h [N, H] -> logits [N, V]: fp32, or in the activation dtype when cast=False (the caller copies)."""
        logits = F.linear(h, self.model.lm_head.weight)
        if self.model.vocab_split:
            logits = self.tp.all_gather_last(logits)
        return logits.float() if cast else logits
