"""The shared expert run as extra experts of the fused MoE (one grouped GEMM pair instead of three GEMMs).

BailingMoeV2 adds a shared expert, an ordinary gated MLP of width Is, to the routed experts' output:
    y = sum_k w_k * expert_{id_k}(x) + shared(x)
A shared expert is an expert that every token selects with weight 1, so it can join the routed ones:

    w13c, w2c, w13c_scale, w2c_scale, n = append_shared_expert(w13, w2, gate, up, down, ...)   # at load
    w, ids = shared_expert_routing(topk_weights, topk_ids, num_experts=E, n_slices=n)       # per step
    y = fused_moe(x, w13c, w2c, w, ids, w13_scale=w13c_scale, w2_scale=w2c_scale)

Width mismatch (Is != I, the routed width): the shared expert is split along its intermediate dimension
into n = ceil(Is / I) slices of width I, appended as experts E .. E+n-1. This is exact algebra, because the
MLP is a sum over intermediate channels: down(silu(gate x) * up x) = sum_j down_j(silu(gate_j x) * up_j x)
with gate_j / up_j the rows and down_j the columns of slice j. A short last slice is zero-padded: zero
gate and up rows give silu(0) * 0 = 0 and zero down columns add nothing. (Splitting also keeps every
GEMM of the MoE at one tile shape, and the n slices of one token run in parallel like routed experts.)

FP8: block scales are sliced with their weights (needs I % 128 == 0, which block-FP8 experts need anyway;
padded rows get scale 1 over zero weights); per-channel down scales are per output channel, the same for
every slice. Numerics: the shared output joins the fp32 top-k sum before the one final bf16 rounding,
where the unfused model rounds routed and shared outputs to bf16 separately and adds them: the results
agree to bf16 rounding (tests/test_ops_moe.py compares both).
Memory: the combined tensors are a new copy of all routed experts (about 2 GB per layer set at TP1 FP8):
build them once when loading and let the separate tensors go.
"""

from __future__ import annotations

import torch

from angelcli.ops.reference import FP8_GROUP, fp8_scale_layout


def _pad_rows(t: torch.Tensor, rows: int, dim: int, value: float = 0.0) -> torch.Tensor:
    if t.shape[dim] >= rows:
        return t
    shape = list(t.shape)
    shape[dim] = rows - t.shape[dim]
    fill = torch.full(shape, value, dtype=torch.float32, device=t.device).to(t.dtype)
    return torch.cat([t, fill], dim=dim)


def append_shared_expert(w13: torch.Tensor, w2: torch.Tensor, gate: torch.Tensor, up: torch.Tensor,
                         down: torch.Tensor, *, w13_scale: torch.Tensor | None = None,
                         w2_scale: torch.Tensor | None = None, gate_scale: torch.Tensor | None = None,
                         up_scale: torch.Tensor | None = None, down_scale: torch.Tensor | None = None):
    """Routed experts w13 [E, 2I, H], w2 [E, H, I] plus a shared expert gate / up [Is, H], down [H, Is]
    (same dtype; FP8 with scales in the same layout as the routed ones) ->
    (w13c [E+n, 2I, H], w2c [E+n, H, I], w13c_scale, w2c_scale, n) with n = ceil(Is / I)."""
    e, two_i, h = w13.shape
    inter = two_i // 2
    si = gate.shape[0]
    if gate.shape != (si, h) or up.shape != (si, h) or down.shape != (h, si):
        raise ValueError(f"append_shared_expert: gate {tuple(gate.shape)}, up {tuple(up.shape)}, down "
                         f"{tuple(down.shape)} are not [Is, H={h}], [Is, H], [H, Is]")
    if gate.dtype != w13.dtype or up.dtype != w13.dtype or down.dtype != w2.dtype:
        raise TypeError("append_shared_expert: the shared expert must have the routed experts' dtype")
    fp8 = w13.dtype == torch.float8_e4m3fn
    if fp8 != (w13_scale is not None) or fp8 != (gate_scale is not None):
        raise ValueError("append_shared_expert: FP8 weights need scales for both the routed and the shared expert")
    n = -(-si // inter)
    padded = n * inter
    g, u, d = _pad_rows(gate, padded, 0), _pad_rows(up, padded, 0), _pad_rows(down, padded, 1)
    w13_new = [torch.cat([g[j * inter:(j + 1) * inter], u[j * inter:(j + 1) * inter]]) for j in range(n)]
    w2_new = [d[:, j * inter:(j + 1) * inter] for j in range(n)]
    w13c = torch.cat([w13, torch.stack(w13_new)])
    w2c = torch.cat([w2, torch.stack(w2_new).contiguous()])
    if not fp8:
        return w13c, w2c, None, None, n
    layout = fp8_scale_layout(w13.shape, w13_scale.shape)
    if fp8_scale_layout(gate.shape, gate_scale.shape) != layout:
        raise ValueError("append_shared_expert: shared and routed experts use different FP8 scale layouts")
    gs, us, ds = gate_scale.float(), up_scale.float(), down_scale.float()
    if layout == "block":
        if inter % FP8_GROUP:
            raise ValueError(f"append_shared_expert: block FP8 needs I % 128 == 0 (I={inter})")
        b = inter // FP8_GROUP
        gs, us = _pad_rows(gs, n * b, 0, 1.0), _pad_rows(us, n * b, 0, 1.0)
        ds = _pad_rows(ds, n * b, 1, 1.0)
        s13 = [torch.cat([gs[j * b:(j + 1) * b], us[j * b:(j + 1) * b]]) for j in range(n)]
        s2 = [ds[:, j * b:(j + 1) * b] for j in range(n)]
    else:
        gs, us = _pad_rows(gs.reshape(-1), padded, 0, 1.0), _pad_rows(us.reshape(-1), padded, 0, 1.0)
        s13 = [torch.cat([gs[j * inter:(j + 1) * inter], us[j * inter:(j + 1) * inter]]) for j in range(n)]
        s2 = [ds.reshape(-1)] * n  # per output channel: the same for every slice
        w13_scale, w2_scale = w13_scale.reshape(e, -1), w2_scale.reshape(e, -1)
    return (w13c, w2c, torch.cat([w13_scale.float(), torch.stack(s13)]),
            torch.cat([w2_scale.float(), torch.stack(s2).contiguous()]), n)


def shared_expert_routing(topk_weights: torch.Tensor, topk_ids: torch.Tensor, num_experts: int,
                          n_slices: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(weights [T, K], ids [T, K]) -> ([T, K+n], [T, K+n]): every token also takes experts E .. E+n-1
    with weight 1, after its routed slots (the top-k sum adds them last)."""
    t = topk_ids.shape[0]
    extra = torch.arange(num_experts, num_experts + n_slices, dtype=topk_ids.dtype, device=topk_ids.device)
    ids = torch.cat([topk_ids, extra.expand(t, n_slices)], dim=1)
    ones = torch.ones(t, n_slices, dtype=topk_weights.dtype, device=topk_weights.device)
    return torch.cat([topk_weights, ones], dim=1).contiguous(), ids.contiguous()
