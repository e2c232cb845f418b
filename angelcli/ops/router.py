"""BailingMoeV2 router: sigmoid scores, bias-corrected group-limited top-k, fp32 weights.

Semantics (shared/spec/bailing-moe-v2.md §3.5, HF reference; twin: angelcli/ops/reference.py:route):

    s = sigmoid(logits)                         [T, E] fp32   logits = fp32(x) @ fp32(W_gate)^T, by the caller
    b = s + expert_bias                         [T, E]        the bias steers selection only
    group score = sum of the 2 largest b of each of n_group groups; keep the best topk_group groups,
    set the others' b to -inf; ids = the top_k largest b, in descending order
    w = s[ids]; if top_k > 1: w = w / (sum(w) + 1e-20); w = w * routed_scaling_factor      (fp32)

Tie rule: among equal values the lower index wins, both when ranking groups and when ranking experts
(HF's torch.topk leaves the order of ties unspecified; the twin pins the same rule with a stable sort).
Exact ties need equal fp32 sums of sigmoid + bias, which happen with degenerate inputs, not real logits.

The kernel handles BLOCK_T tokens per program (at most ROUTE_TILE scores: 8 tokens at 256 experts; 16 made
ptxas for sm_90a spill under triton 3.6): the scores sit in a [tokens, groups, experts-per-group]
tile, so "top-2 per group" is a reduction over the last axis, and each top-k step is a max, then the
smallest index holding it (this is what makes the tie rule hold), then that entry is marked taken.
Weights are summed in slot order and divided with IEEE division (`div_rn`), like the twin.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from angelcli.ops._runtime import cdiv, check_tensor, launch, next_pow2

# Scores one program holds ([BLOCK_T, G_P2, S_P2] fp32 plus masks): 4096 used 255 registers and spilled
# 268 B on sm_90a with triton 3.6's ptxas at 4 warps; 2048 leaves headroom under both 3.6 and 3.9.
ROUTE_TILE = 2048


@triton.jit
def _route_rows(
    logits_ptr, bias_ptr, weights_ptr, ids_ptr, tok, num_tokens, n_group, experts_per_group,
    stride_lt, stride_wt, stride_it, routed_scaling_factor,
    BLOCK_T: tl.constexpr, G_P2: tl.constexpr, S_P2: tl.constexpr, K_P2: tl.constexpr,
    TOP_K: tl.constexpr, TOPK_GROUP: tl.constexpr, GROUPED: tl.constexpr, HAS_BIAS: tl.constexpr,
    BYPASS_L1: tl.constexpr, N_SHARED: tl.constexpr, NS_P2: tl.constexpr, num_experts,
):
    """Route the BLOCK_T tokens `tok` [BLOCK_T] (int64): read their logits rows, write weights and ids.
    N_SHARED > 0: slots TOP_K .. TOP_K + N_SHARED - 1 get experts num_experts + j with weight 1 (the shared
    expert's slices appended to the fused MoE, ops/shared_expert.py)."""
    # Tile [BLOCK_T tokens, G_P2 groups, S_P2 experts per group]; expert e = g * experts_per_group + s.
    t3 = tok[:, None, None]
    grp = tl.arange(0, G_P2)[None, :]  # [1, G_P2]
    g3 = tl.arange(0, G_P2)[None, :, None]
    s3 = tl.arange(0, S_P2)[None, None, :]
    expert = g3 * experts_per_group + s3  # [1, G_P2, S_P2]
    valid = (t3 < num_tokens) & (g3 < n_group) & (s3 < experts_per_group)
    if BYPASS_L1:  # written by other programs of this launch (route_gemm): read from L2
        x = tl.load(logits_ptr + t3 * stride_lt + expert, mask=valid, other=0.0, cache_modifier=".cg")
    else:
        x = tl.load(logits_ptr + t3 * stride_lt + expert, mask=valid, other=0.0)
    score = tl.sigmoid(x.to(tl.float32))
    biased = score
    if HAS_BIAS:
        biased = score + tl.load(bias_ptr + expert, mask=valid, other=0.0).to(tl.float32)
    neg = float("-inf")
    biased = tl.where(valid, biased, neg)
    eligible = valid
    if GROUPED:
        # ---- group score = sum of the group's top 2; keep TOPK_GROUP groups --------------------------------
        m1 = tl.max(biased, axis=2)  # [BLOCK_T, G_P2]
        i1 = tl.min(tl.where(biased == m1[:, :, None], s3, S_P2), axis=2)
        m2 = tl.max(tl.where(s3 == i1[:, :, None], neg, biased), axis=2)
        gscore = tl.where(grp < n_group, m1 + m2, neg)
        keep = (gscore != gscore) & (grp < 0)  # all False, [BLOCK_T, G_P2]
        for _ in tl.static_range(TOPK_GROUP):
            avail = (grp < n_group) & (keep == 0)
            cand = tl.where(avail, gscore, neg)
            best = tl.max(cand, axis=1)
            gi = tl.min(tl.where(avail & (cand == best[:, None]), grp, G_P2), axis=1)
            keep = keep | (grp == gi[:, None])
        eligible = valid & keep[:, :, None]
    # ---- top-k experts over the masked biased scores, lower index first among ties -----------------------
    kk = tl.arange(0, K_P2)[None, :]
    out_ids = tl.zeros([BLOCK_T, K_P2], dtype=tl.int32)
    out_w = tl.zeros([BLOCK_T, K_P2], dtype=tl.float32)
    taken = eligible & (expert < 0)  # all False
    total = tl.zeros([BLOCK_T], dtype=tl.float32)
    for j in tl.static_range(TOP_K):
        avail = eligible & (taken == 0)
        cand = tl.where(avail, biased, neg)
        best = tl.max(tl.max(cand, axis=2), axis=1)  # [BLOCK_T]
        at_best = avail & (cand == best[:, None, None])
        idx = tl.min(tl.min(tl.where(at_best, expert, 1 << 30), axis=2), axis=1)
        hit = expert == idx[:, None, None]
        w = tl.sum(tl.sum(tl.where(hit, score, 0.0), axis=2), axis=1)  # the unbiased score
        taken = taken | hit
        total = total + w
        out_ids = tl.where(kk == j, idx[:, None], out_ids)
        out_w = tl.where(kk == j, w[:, None], out_w)
    if TOP_K > 1:
        out_w = tl.div_rn(out_w, total[:, None] + 1e-20)
    out_w = out_w * routed_scaling_factor
    mask = (tok[:, None] < num_tokens) & (kk < TOP_K)
    tl.store(weights_ptr + tok[:, None] * stride_wt + kk, out_w, mask=mask)
    tl.store(ids_ptr + tok[:, None] * stride_it + kk, out_ids, mask=mask)
    if N_SHARED > 0:
        js = tl.arange(0, NS_P2)[None, :]
        smask = (tok[:, None] < num_tokens) & (js < N_SHARED)
        tl.store(weights_ptr + tok[:, None] * stride_wt + TOP_K + js, tl.full([BLOCK_T, NS_P2], 1.0, tl.float32),
                 mask=smask)
        tl.store(ids_ptr + tok[:, None] * stride_it + TOP_K + js,
                 (js + num_experts + tl.zeros([BLOCK_T, NS_P2], dtype=tl.int32)).to(tl.int32), mask=smask)


@triton.jit
def _route_kernel(
    # pointers
    logits_ptr, bias_ptr, weights_ptr, ids_ptr,
    # sizes
    num_tokens, n_group, experts_per_group,
    # strides (rows; the expert dimension is contiguous)
    stride_lt, stride_wt, stride_it,
    # scalars
    routed_scaling_factor,
    # meta-parameters
    BLOCK_T: tl.constexpr, G_P2: tl.constexpr, S_P2: tl.constexpr, K_P2: tl.constexpr,
    TOP_K: tl.constexpr, TOPK_GROUP: tl.constexpr, GROUPED: tl.constexpr, HAS_BIAS: tl.constexpr,
):
    tok = tl.program_id(0).to(tl.int64) * BLOCK_T + tl.arange(0, BLOCK_T)
    _route_rows(logits_ptr, bias_ptr, weights_ptr, ids_ptr, tok, num_tokens, n_group, experts_per_group,
                stride_lt, stride_wt, stride_it, routed_scaling_factor, BLOCK_T, G_P2, S_P2, K_P2, TOP_K,
                TOPK_GROUP, GROUPED, HAS_BIAS, False, 0, 1, 0)


def check_route_args(e: int, expert_bias, top_k: int, n_group: int, topk_group: int, device):
    """-> (n_group, experts per group, topk_group, grouped) after the checks route() documents."""
    if expert_bias is not None:
        check_tensor("expert_bias", expert_bias, ndim=1, shape=(e,), device=device,
                     dtypes=(torch.float32, torch.bfloat16, torch.float16))
    grouped = n_group > 1
    if grouped:
        if e % n_group or e // n_group < 2 or not 1 <= topk_group <= n_group:
            raise ValueError(f"route: E={e}, n_group={n_group}, topk_group={topk_group}: need E % n_group == 0, "
                             f"E / n_group >= 2 and 1 <= topk_group <= n_group")
        per, reachable = e // n_group, topk_group * (e // n_group)
    else:
        n_group, per, reachable, topk_group = 1, e, e, 1
    if not 1 <= top_k <= reachable:
        raise ValueError(f"route: top_k={top_k} must be in [1, {reachable}] (experts in the kept groups)")
    return n_group, per, topk_group, grouped


def route(logits: torch.Tensor, expert_bias: torch.Tensor | None, top_k: int, n_group: int = 1,
          topk_group: int = 1, routed_scaling_factor: float = 1.0) -> tuple[torch.Tensor, torch.Tensor]:
    """Select experts for each token (semantics and tie rule in the module docstring).

    logits [T, E] fp32 (bf16/fp16 are upcast), expert_bias [E] fp32 or None ->
    (topk_weights [T, top_k] fp32, topk_ids [T, top_k] int32), ids in descending biased-score order.
    Grouping needs E % n_group == 0, E / n_group >= 2, topk_group <= n_group and
    top_k <= topk_group * E / n_group.
    """
    check_tensor("logits", logits, ndim=2, dtypes=(torch.float32, torch.bfloat16, torch.float16))
    t, e = logits.shape
    n_group, per, topk_group, grouped = check_route_args(e, expert_bias, top_k, n_group, topk_group,
                                                         logits.device)
    weights = torch.empty(t, top_k, dtype=torch.float32, device=logits.device)
    ids = torch.empty(t, top_k, dtype=torch.int32, device=logits.device)
    g_p2, s_p2 = next_pow2(n_group), next_pow2(per)
    block_t = max(1, min(16, ROUTE_TILE // (g_p2 * s_p2), next_pow2(t)))
    launch(_route_kernel, (cdiv(t, block_t),), logits.device,
           args=dict(logits_ptr=logits, bias_ptr=expert_bias if expert_bias is not None else logits,
                     weights_ptr=weights, ids_ptr=ids, num_tokens=t, n_group=n_group, experts_per_group=per,
                     stride_lt=logits.stride(0), stride_wt=weights.stride(0), stride_it=ids.stride(0),
                     routed_scaling_factor=float(routed_scaling_factor)),
           constexprs=dict(BLOCK_T=block_t, G_P2=g_p2, S_P2=s_p2, K_P2=next_pow2(top_k), TOP_K=top_k,
                           TOPK_GROUP=topk_group,
                           GROUPED=grouped, HAS_BIAS=expert_bias is not None),
           num_warps=4, num_stages=1)
    return weights, ids
