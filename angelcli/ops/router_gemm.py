"""The whole router in one launch: fp32 logits GEMM, then the grouped top-k of angelcli/ops/router.py.

    logits = fp32(x) @ fp32(W_gate)^T        [T, E] fp32   (the reference router's math: bf16 values upcast
                                                            exactly; the weight is read in its stored dtype
                                                            and converted in registers, never copied)
    (w, ids) = route(logits, bias, ...)      as ops.route (semantics and tie rule in router.py)

Grid (token blocks, expert blocks): each program computes a [BLOCK_T, BLOCK_E] logits tile over the full
hidden size (tl.dot in IEEE fp32) and stores it. The last program to finish a token block (an atomic ticket
per token block; acq_rel orders the other programs' logits stores before their ticket) then routes that
block's tokens from the stored logits (read past L1) and resets the ticket to 0, so the next launch (or
graph replay) starts clean without a memset. At decode (T = 1, E = 256) that is 16 programs streaming the
router weight instead of one, and no separate upcast, GEMM and routing kernels.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from angelcli.ops._runtime import cdiv, check_tensor, launch, next_pow2
from angelcli.ops.router import ROUTE_TILE, _route_rows, check_route_args

ROUTE_SUB = 16  # token-block size at decode (tl.dot needs 16 rows)
_tickets: dict[str, torch.Tensor] = {}


@triton.jit
def _route_gemm_kernel(
    # pointers
    x_ptr, w_ptr, bias_ptr, logits_ptr, weights_ptr, ids_ptr, ticket_ptr,
    # sizes
    num_tokens, num_experts, hidden, n_group, experts_per_group,
    # strides (rows; the last dims are contiguous)
    stride_x, stride_w, stride_lt, stride_wt, stride_it,
    # scalars
    routed_scaling_factor,
    # meta-parameters
    BLOCK_T: tl.constexpr, BLOCK_E: tl.constexpr, BLOCK_K: tl.constexpr, G_P2: tl.constexpr,
    S_P2: tl.constexpr, K_P2: tl.constexpr, TOP_K: tl.constexpr, TOPK_GROUP: tl.constexpr,
    GROUPED: tl.constexpr, HAS_BIAS: tl.constexpr, N_SHARED: tl.constexpr, NS_P2: tl.constexpr,
    ROUTE_T: tl.constexpr,
):
    pid_t = tl.program_id(0)
    pid_e = tl.program_id(1)
    tok = pid_t.to(tl.int64) * BLOCK_T + tl.arange(0, BLOCK_T)
    ex = pid_e * BLOCK_E + tl.arange(0, BLOCK_E)
    t_ok = tok < num_tokens
    e_ok = ex < num_experts
    # ---- logits tile [BLOCK_T, BLOCK_E] in fp32 ----------------------------------------------------------
    acc = tl.zeros([BLOCK_T, BLOCK_E], dtype=tl.float32)
    for k0 in range(0, hidden, BLOCK_K):
        kk = k0 + tl.arange(0, BLOCK_K)
        k_ok = kk < hidden
        x = tl.load(x_ptr + tok[:, None] * stride_x + kk[None, :], mask=t_ok[:, None] & k_ok[None, :], other=0.0)
        w = tl.load(w_ptr + ex[None, :].to(tl.int64) * stride_w + kk[:, None], mask=k_ok[:, None] & e_ok[None, :],
                    other=0.0)  # [BK, BE]
        acc = tl.dot(x.to(tl.float32), w.to(tl.float32), acc, input_precision="ieee")
    tl.store(logits_ptr + tok[:, None] * stride_lt + ex[None, :], acc, mask=t_ok[:, None] & e_ok[None, :])
    # ---- the last program of this token block routes it --------------------------------------------------
    ticket = tl.atomic_add(ticket_ptr + pid_t, 1, sem="acq_rel")
    if ticket == tl.num_programs(1) - 1:
        tl.store(ticket_ptr + pid_t, 0)
        for sub in tl.static_range(BLOCK_T // ROUTE_T):  # ROUTE_T rows at a time: router.py's register budget
            rows = pid_t.to(tl.int64) * BLOCK_T + sub * ROUTE_T + tl.arange(0, ROUTE_T)
            _route_rows(logits_ptr, bias_ptr, weights_ptr, ids_ptr, rows, num_tokens, n_group,
                        experts_per_group, stride_lt, stride_wt, stride_it, routed_scaling_factor, ROUTE_T, G_P2,
                        S_P2, K_P2, TOP_K, TOPK_GROUP, GROUPED, HAS_BIAS, True, N_SHARED, NS_P2, num_experts)


def _ticket_buffer(device: torch.device, n: int) -> torch.Tensor:
    """Zeroed int32 counters, one per token block; the kernel leaves them at zero after every launch."""
    key = str(device)
    buf = _tickets.get(key)
    if buf is None or buf.numel() < n:
        buf = torch.zeros(max(n, 1024), dtype=torch.int32, device=device)
        _tickets[key] = buf
    return buf


def route_gemm(x: torch.Tensor, weight: torch.Tensor, expert_bias: torch.Tensor | None, top_k: int,
               n_group: int = 1, topk_group: int = 1, routed_scaling_factor: float = 1.0, n_shared: int = 0
               ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Router GEMM + ops.route in one launch.

    x [T, H] bf16/fp16/fp32 (rows may be strided), weight [E, H] (any float dtype, upcast in registers),
    expert_bias [E] or None -> (topk_weights [T, top_k + n_shared] fp32, topk_ids [T, top_k + n_shared]
    int32, logits [T, E] fp32). Same semantics as reference.route(fp32(x) @ fp32(weight)^T, ...) up to fp32
    summation order; n_shared > 0 appends slots for experts E .. E + n_shared - 1 with weight 1, as
    ops.shared_expert_routing does (the shared expert run inside fused_moe).
    """
    check_tensor("x", x, ndim=2, dtypes=(torch.bfloat16, torch.float16, torch.float32))
    t, hidden = x.shape
    check_tensor("weight", weight, ndim=2, shape=(None, hidden), device=x.device,
                 dtypes=(torch.bfloat16, torch.float16, torch.float32))
    e = weight.shape[0]
    n_group, per, topk_group, grouped = check_route_args(e, expert_bias, top_k, n_group, topk_group, x.device)
    logits = torch.empty(t, e, dtype=torch.float32, device=x.device)
    weights = torch.empty(t, top_k + n_shared, dtype=torch.float32, device=x.device)
    ids = torch.empty(t, top_k + n_shared, dtype=torch.int32, device=x.device)
    if t == 0:
        return weights, ids, logits
    block_t = ROUTE_SUB if t <= ROUTE_SUB else 64
    block_e = 16 if t <= ROUTE_SUB else 64
    grid = (cdiv(t, block_t), cdiv(e, block_e))
    launch(_route_gemm_kernel, grid, x.device,
           args=dict(x_ptr=x, w_ptr=weight, bias_ptr=expert_bias if expert_bias is not None else weight,
                     logits_ptr=logits, weights_ptr=weights, ids_ptr=ids, ticket_ptr=_ticket_buffer(x.device, grid[0]),
                     num_tokens=t, num_experts=e, hidden=hidden, n_group=n_group, experts_per_group=per,
                     stride_x=x.stride(0), stride_w=weight.stride(0), stride_lt=logits.stride(0),
                     stride_wt=weights.stride(0), stride_it=ids.stride(0),
                     routed_scaling_factor=float(routed_scaling_factor)),
           constexprs=dict(BLOCK_T=block_t, BLOCK_E=block_e, BLOCK_K=128 if t <= ROUTE_SUB else 32,
                           G_P2=next_pow2(n_group), S_P2=next_pow2(per), K_P2=next_pow2(top_k), TOP_K=top_k,
                           TOPK_GROUP=topk_group, GROUPED=grouped, HAS_BIAS=expert_bias is not None,
                           N_SHARED=n_shared, NS_P2=next_pow2(max(n_shared, 1)),
                           ROUTE_T=max(1, min(16, ROUTE_TILE // (next_pow2(n_group) * next_pow2(per))))),
           num_warps=4, num_stages=2)
    return weights, ids, logits
