"""The torch backend's inference forward: the same model and numerics as the modules' forward, with fewer ops.

A decode step of a small model on a CPU thread costs mostly tensor-op dispatches (1-3 us each on this
project's CPU) and the weights it reads, not FLOPs, so this forward reads the parameters through a per-model
plan of direct references (inference_plan.py: no nn.Module lookups per step) and does per step only what the
semantics need (angel-tiny: 294 ops per decode step against the upstream layout's 712, docs/benchmarks.md):
  * rotary tables come precomputed per position (Rotary.full_tables), in a form that rotates q and k of all
    heads with one multiply-add: out = x * cos_full + x[..., swap] * sin_signed (cos_full = 1 and
    sin_signed = 0 on the pass-through dims, sin_signed = -sin on the first rotary half), which is the same
    arithmetic as upstream's x * cos + rotate_half(x) * sin element for element;
  * q and k are RMS-normalised together (one normalisation over Hq + Hkv heads, then each head group's own
    weight), in the activation dtype exactly as RMSNorm does;
  * attention reads the cached K/V without repeat_interleave copies: float32 uses PyTorch's fused SDPA with
    GQA; other dtypes keep the eager formulation (scores rounded to the activation dtype, fp32 softmax) with
    the query heads grouped per KV head, which is the same arithmetic as upstream's repeat_kv + matmul;
  * routed experts run only for the (token, slot) pairs that need them: up to GATHER_MAX_TOKENS tokens in
    float32 gather their K experts and the shared expert from stacked copies and run them as two batched
    products (gathered_experts); otherwise a short loop over the chosen experts when a step routes few tokens, one
    sorted pass beyond; the slot outputs are weighted and summed in fp32 as upstream does;
  * the causal mask and the cache's ragged bookkeeping are built once per forward, not once per layer;
  * on CPU, small projection weights are read from input-major copies (input_major_copy).
BailingMoeForCausalLM.forward takes this path in inference (no autograd, eval mode, one process); the
modules' forward stays the slow twin tests compare against (tests/test_fast_inference.py).
Shapes: B batch, T new tokens, S cached + new, H hidden, Hq / Hkv heads, D head_dim, E experts, K top-k.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from angelcli.model.moe import RouterOutput, route

# Routed (token, slot) pairs at or below which the experts run in a plain loop over the pairs (decode steps,
# speculative verification); above it the pairs are sorted by expert and each expert runs once on its rows.
SMALL_DISPATCH = 16


def rms(x: torch.Tensor, eps: float) -> torch.Tensor:
    """RMSNorm without its weight: fp32 normalisation, cast back (RMSNorm's arithmetic up to the weight).

    In float32 PyTorch's rms_norm computes exactly x * rsqrt(mean(x^2) + eps) (bitwise equal to the
    three-op form; tests/test_fast_inference.py checks it) in one dispatch instead of five."""
    if x.dtype == torch.float32:
        return F.rms_norm(x, (x.shape[-1],), None, eps)
    x32 = x.float()
    return (x32 * torch.rsqrt(x32.pow(2).mean(-1, keepdim=True) + eps)).to(x.dtype)


def norm(x: torch.Tensor, module) -> torch.Tensor:
    """RMSNorm module's forward: weight * rms(x) (weight applied after the cast, as upstream)."""
    if x.dtype == torch.float32 and module.weight.dtype == torch.float32:
        return F.rms_norm(x, (x.shape[-1],), module.weight, module.eps)
    return module.weight * rms(x, module.eps)


def apply(proj, x: torch.Tensor) -> torch.Tensor:
    """A plan's projection entry (inference_plan.projection): a weight tensor, or a module to call."""
    return F.linear(x, proj) if isinstance(proj, torch.Tensor) else proj(x)


def norm_with(x: torch.Tensor, weight: torch.Tensor, eps: float) -> torch.Tensor:
    """norm() from a plan's (weight, eps)."""
    if x.dtype == torch.float32 and weight.dtype == torch.float32:
        return F.rms_norm(x, (x.shape[-1],), weight, eps)
    return weight * rms(x, eps)


def lin(module, x: torch.Tensor, input_major: bool = False) -> torch.Tensor:
    """A projection: plain nn.Linear weights directly, anything else (FP8 linears) through its module.
    input_major: multiply by the weight's input-major copy where one is kept (see input_major)."""
    if type(module) is nn.Linear:
        return F.linear(x, input_major_copy(module, "weight") if input_major else module.weight)
    return module(x)


# Largest weight that gets an input-major copy: small models on CPU, where a decode step is compute- and
# dispatch-bound; a big model's decode is bound by memory, and a copy would double it.
INPUT_MAJOR_MAX_BYTES = 64 << 20


def input_major_copy(owner, name: str) -> torch.Tensor:
    """owner.<name> ([..., out, in]) as stored, or on CPU a copy with the same shape and values whose input
    dimension is outermost in memory. A decode step multiplies one row by each weight; with that layout the
    CPU GEMM streams whole output rows per input element instead of reducing one dot product per output,
    which makes angel-tiny's vocabulary projection ~2.5x faster on one thread (and gate/up ~2x). The
    parameters themselves keep their layout (the triton kernels and the checkpoint writers need it)."""
    w = getattr(owner, name)
    if w.device.type != "cpu" or not w.dtype.is_floating_point or w.element_size() < 2 or \
            w.numel() * w.element_size() > INPUT_MAJOR_MAX_BYTES:
        return w
    return _derived(owner, "_input_major_" + name, (w,), lambda: w.transpose(-1, -2).contiguous().transpose(-1, -2))


def _derived(owner, name: str, sources: tuple, build):
    """A tensor derived from parameters (e.g. concatenated norm weights), rebuilt when any source changes."""
    key = tuple((t.data_ptr(), t._version) for t in sources)  # a reload or an optimizer step changes these
    cached = owner.__dict__.get(name)
    if cached is None or cached[0] != key:
        with torch.no_grad():
            cached = (key, build())
        owner.__dict__[name] = cached
    return cached[1]


def qk_weight(att) -> torch.Tensor:
    """[Hq + Hkv, D]: the query norm weight for each query head, then the key norm weight for each KV head."""
    qw, kw = att.query_layernorm.weight, att.key_layernorm.weight
    return _derived(att, "_qk_weight", (qw, kw), lambda: torch.cat(
        [qw.expand(att.num_heads, -1), kw.expand(att.num_kv, -1)]).contiguous())


def attention(att, x, cos, sin, swap, cache, mask) -> torch.Tensor:
    """x [B, T, H] (already input-normed) -> attention output [B, T, H] after the dense projection. att: AttPlan.

    cos / sin [B or 1, T, 1, D] full tables; swap [D] the rotate-half permutation; mask: None (nothing to
    mask: one new token per row at equal lengths), [T, S] or [B, 1, T, S] bool (True = visible)."""
    B, T, _ = x.shape  # (narrow, not [:, :, a:b]: one op instead of three; a step is dispatch-bound)
    nh, nkv, D = att.nh, att.nkv, att.D
    qkv = apply(att.qkv, x).view(B, T, nh + 2 * nkv, D)
    qk = rms(qkv.narrow(2, 0, nh + nkv), att.eps) * att.qk_weight  # q and k heads in one pass
    rot = qk * cos + qk.index_select(-1, swap) * sin  # [B, T, Hq + Hkv, D]
    q = rot.narrow(2, 0, nh).transpose(1, 2)  # [B, Hq, T, D]
    k = rot.narrow(2, nh, nkv).transpose(1, 2)  # [B, Hkv, T, D]
    v = qkv.narrow(2, nh + nkv, nkv).transpose(1, 2)
    if cache is not None:
        k, v = cache.update(att.idx, k, v)  # [B, Hkv, S, D]
    rep = nh // nkv
    if x.dtype == torch.float32:
        out = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, scale=att.scale, enable_gqa=rep > 1)
    else:
        S = k.shape[2]
        qg = q.reshape(B, nkv, rep * T, D)  # query head h = kv * rep + r reads KV head kv
        scores = torch.matmul(qg, k.transpose(2, 3)) * att.scale  # [B, Hkv, rep*T, S] in the activation dtype
        if mask is not None:
            m = mask if mask.dim() == 4 else mask[None, None]  # [B or 1, 1, T, S]
            scores = scores.view(B, nkv, rep, T, S).masked_fill(~m[:, :, None], float("-inf")).view(B, nkv, -1, S)
        probs = F.softmax(scores, dim=-1, dtype=torch.float32).to(q.dtype)
        out = torch.matmul(probs, v).view(B, nh, T, D)
    return apply(att.dense, out.transpose(1, 2).reshape(B, T, nh * D))


def mlp(m, x: torch.Tensor) -> torch.Tensor:
    """The dense FFN / shared expert: down(silu(gate x) * up x)."""
    return lin(m.down_proj, F.silu(lin(m.gate_proj, x)) * lin(m.up_proj, x))


def mlp_plan(m, x: torch.Tensor) -> torch.Tensor:
    """mlp() from an MlpPlan."""
    return apply(m.down, F.silu(apply(m.gate, x)) * apply(m.up, x))


# Decode steps of up to this many tokens (a served batch of rows) take the gathered-experts path: every row
# then runs the same arithmetic alone or batched (a served request's greedy tokens do not depend on its
# neighbours) and a batch costs a few batched products instead of a Python loop over its (token, slot) pairs.
GATHER_MAX_TOKENS = 16


def moe_plan(mp, x: torch.Tensor, router: list | None) -> torch.Tensor:
    """moe() from a MoePlan: a few tokens in float32 with stacked experts take the gathered path, the rest moe()."""
    n = x.shape[0] * x.shape[1]
    if mp.stacked is None or x.dtype != torch.float32 or n > GATHER_MAX_TOKENS or \
            mp.gate_w.dtype != torch.float32:
        return moe(mp.block, x, router)
    cfg = mp.block.cfg
    flat = x.view(n, x.shape[-1])
    logits = F.linear(flat, mp.gate_w)
    ids, weights = route(logits, mp.bias, cfg.num_experts_per_tok, cfg.n_group, cfg.topk_group,
                         cfg.routed_scaling_factor)
    if router is not None:
        router.append(RouterOutput(mp.layer_idx, logits, ids, weights))
    return gathered_experts(mp.stacked, flat, ids, weights).view(x.shape)


def expert(experts, e: int, x: torch.Tensor) -> torch.Tensor:
    """Expert e on x [n, H] -> [n, H] in x's dtype. One projection for gate and up rows together (each output
    element is the same dot product either way); FP8 experts keep their own dequantising path."""
    if experts.w13_scale is not None:
        return experts.expert(e, x)
    gate, up = F.linear(x, input_major_copy(experts, "w13")[e]).split(experts.inter, dim=-1)
    return F.linear(F.silu(gate) * up, experts.w2[e])


def moe(block, x: torch.Tensor, router: list | None) -> torch.Tensor:
    """SparseMoe's forward: x [B, T, H] -> [B, T, H]."""
    cfg = block.cfg
    shape = x.shape
    flat = x.reshape(-1, shape[-1])  # [N, H]
    fp32 = x.dtype == torch.float32
    gate_w = block.gate.weight
    logits = F.linear(flat if fp32 else flat.float(), gate_w if gate_w.dtype == torch.float32 else gate_w.float())
    bias = block.gate.expert_bias if cfg.moe_router_enable_expert_bias else None
    ids, weights = route(logits, bias, cfg.num_experts_per_tok, cfg.n_group, cfg.topk_group, cfg.routed_scaling_factor)
    if router is not None:
        router.append(RouterOutput(block.layer_idx, logits, ids, weights))
    N, K = ids.shape
    if N * K <= SMALL_DISPATCH:
        rows = []
        w = weights.view(N, K, 1)
        for n, chosen in enumerate(ids.tolist()):
            x_n = flat if N == 1 else flat[n : n + 1]
            outs = torch.cat([expert(block.experts, e, x_n) for e in chosen])  # [K, H]
            rows.append((outs if fp32 else outs.float()) * (w[0] if N == 1 else w[n]))  # fp32, weighted per slot
        routed = (rows[0] if N == 1 else torch.stack(rows)).sum(dim=-2)  # sum over the slots in fp32: [N, H] or [H]
    else:
        routed = sorted_dispatch(block.experts, flat, ids, weights, cfg.num_experts)
    y = (routed if fp32 else routed.to(x.dtype)).view(shape)
    if block.shared_experts is not None:
        y = y + mlp(block.shared_experts, x)
    return y


# Largest stacked expert weights (both tensors of one layer) kept for the one-token MoE path: small models on
# CPU, where a decode step is dispatch-bound; a big model's expert weights are not duplicated.
STACKED_MAX_BYTES = 64 << 20


def stacked_experts(block):
    """(w13t [E+1, H, 2I], w2t [E+1, I, H], shared index E) for the one-token path, or None where it does not
    apply (FP8 experts, a shared expert of another width or kind, no shared expert, not on CPU, too large).

    Row E is the shared expert (gate rows then up rows, as the routed w13), so one batched product runs the
    K chosen experts and the shared expert together; every row is stored input-major (the [1, H] x [H, 2I]
    products stream whole rows, see input_major_copy)."""
    ex, sh = block.experts, block.shared_experts
    if ex.w13_scale is not None or sh is None or ex.w13.device.type != "cpu" or ex.w13.dtype != torch.float32:
        return None
    parts = (sh.gate_proj, sh.up_proj, sh.down_proj)
    if any(type(m) is not nn.Linear for m in parts) or sh.gate_proj.weight.shape[0] != ex.inter:
        return None
    if 2 * ex.w13.numel() * ex.w13.element_size() > STACKED_MAX_BYTES:
        return None
    g, u, d = (m.weight for m in parts)

    def build():
        w13 = torch.cat([ex.w13, torch.cat([g, u])[None]]).transpose(1, 2).contiguous()
        w2 = torch.cat([ex.w2, d[None]]).transpose(1, 2).contiguous()
        return w13, w2, ex.w13.shape[0]

    return _derived(block, "_stacked_experts", (ex.w13, ex.w2, g, u, d), build)


def gathered_experts(stacked, flat, ids, weights) -> torch.Tensor:
    """fp32 MoE output for a few tokens: flat [N, H], ids / weights [N, K] -> routed + shared [N, H].

    Each token's K chosen experts and the shared expert (row E) are gathered with one index and run as two
    batched products ([N(K+1), 1, H] x [N(K+1), H, 2I], then x [N(K+1), I, H]); each token's weighted slot sum
    and shared add are one [1, K+1] x [K+1, H] product with the shared expert's weight 1 (fp32 throughout, as
    upstream). Every product is per token, so a row's result does not depend on the other rows."""
    w13t, w2t, shared = stacked
    (N, K), H = ids.shape, flat.shape[-1]
    sel = F.pad(ids, (0, 1), value=shared).view(-1)  # [N(K+1)]: each token's experts, then the shared one
    xs = flat[:, None, None, :].expand(N, K + 1, 1, H).reshape(N * (K + 1), 1, H)
    gate, up = torch.bmm(xs, w13t.index_select(0, sel)).chunk(2, dim=-1)
    outs = torch.bmm(F.silu(gate) * up, w2t.index_select(0, sel))  # [N(K+1), 1, H]
    return torch.bmm(F.pad(weights, (0, 1), value=1.0).view(N, 1, K + 1), outs.view(N, K + 1, H)).view(N, H)


def sorted_dispatch(experts, flat, ids, weights, E: int) -> torch.Tensor:
    """Pairs sorted by expert, each expert once on its rows. flat [N, H], ids / weights [N, K] -> [N, H] fp32.

    The slot outputs are summed in slot order (k = 0, 1, ...) like the loop above and upstream's sum(dim=1)."""
    N, K = ids.shape
    pair_expert = ids.reshape(-1)  # [N*K], pair p = token p // K, slot p % K
    order = pair_expert.argsort(stable=True)
    counts = torch.bincount(pair_expert, minlength=E).tolist()
    chunks = torch.split(flat[order // K], counts)
    outs = [expert(experts, e, chunk) for e, chunk in enumerate(chunks) if counts[e]]
    pair_out = torch.empty(N * K, flat.shape[-1], dtype=flat.dtype, device=flat.device)
    pair_out[order] = torch.cat(outs)
    return (pair_out.view(N, K, -1).float() * weights[:, :, None]).sum(dim=1)


def forward(model, input_ids, cache, positions, capture_layers, router) -> tuple[torch.Tensor, dict]:
    """Every decoder layer of `model` (a BailingMoeForCausalLM) on input_ids [B, T] -> (h [B, T, H] before the
    final norm, {layer: residual stream} for capture_layers). Advances the cache by T."""
    from angelcli.model.inference_plan import MoePlan, plan_for

    B, T = input_ids.shape
    ragged = cache is not None and getattr(cache, "is_ragged", False)
    past = 0 if cache is None or ragged else cache.seq_len
    h = F.embedding(input_ids, model.model.word_embeddings.weight)
    if positions is None and not ragged:  # positions past .. past + T: a slice of the tables, no gather
        cos, sin, swap = model.rotary.full_tables(None, h.dtype, model.config.head_dim, span=(past, past + T))
    else:
        cos, sin, swap = model.rotary.full_tables(cache.positions(T) if positions is None else positions,
                                                  h.dtype, model.config.head_dim)
    cos, sin = cos.unsqueeze(-2), sin.unsqueeze(-2)  # [B or 1, T, 1, D]: broadcast over the heads
    if ragged:
        mask = cache.ragged_mask(T)  # [B, 1, T, S]
    elif T > 1:
        mask = torch.ones(T, past + T, dtype=torch.bool, device=h.device).tril(diagonal=past)
    else:
        mask = None
    hidden = {}
    for i, lp in enumerate(plan_for(model).layers):
        h = h + attention(lp.att, norm_with(h, *lp.in_norm), cos, sin, swap, cache, mask)
        x = norm_with(h, *lp.post_norm)
        h = h + (moe_plan(lp.ffn, x, router) if isinstance(lp.ffn, MoePlan) else mlp_plan(lp.ffn, x))
        if i in capture_layers:
            hidden[i] = h
    if cache is not None:
        cache.advance(T)
    return h, hidden
