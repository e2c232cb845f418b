"""Plain-torch twins of every kernel in angelcli/ops: the CPU fallback and the test oracle.

Each function here has exactly the signature and output of the Triton host wrapper of the same name, and
spells out the numerics the kernel must reproduce (docs/kernels.md has the layouts). Rounding points follow
the HF BailingMoeV2 reference (shared/spec/bailing-moe-v2.md §3): wherever the model rounds to bf16, the
twin rounds to bf16 (`.to(dt)`) and so does the kernel. Speed is not a goal; clarity is.

Legend: T tokens, H hidden, E experts, K top-k, I expert intermediate, Hq / Hkv query / KV heads,
D head_dim, B sequences, NB cache blocks, BS block size (tokens per cache block), G = ceil(dim / 128).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

FP8_MAX = 448.0  # largest finite float8_e4m3fn
FP8_GROUP = 128  # activation group and weight block edge (DeepSeek-style "fp8" / FP8_BLOCK)
SCALE_EPS = 1e-10  # floor of a group's amax, so an all-zero group gets a finite scale


def _cdiv(a: int, b: int) -> int:
    return -(-a // b)


# ---------------------------------------------------------------------------------------------- FP8


def quantize_fp8(x: torch.Tensor, group_size: int = FP8_GROUP) -> tuple[torch.Tensor, torch.Tensor]:
    """Dynamic per-token, per-group FP8 e4m3 quantisation.

    x [M, K] (bf16/fp16/fp32) -> (xq [M, K] float8_e4m3fn, scale [M, ceil(K/group)] fp32) with
    x ~= xq * scale (scale broadcast over each group of `group_size` channels; the last group may be short).
    scale = max(amax, 1e-10) / 448 and xq = clamp(x / scale, +-448), both IEEE round-to-nearest.
    """
    m, k = x.shape
    g = _cdiv(k, group_size)
    xf = F.pad(x.float(), (0, g * group_size - k)).view(m, g, group_size)
    # Divide by a tensor, not a Python float: on CUDA torch turns division by a CPU scalar into a multiply by
    # its reciprocal, which is not correctly rounded (seen on the H200: 55 of 330 scales one ulp off, hence
    # FP8 codes one step off), while the kernels and the CPU twin divide with IEEE rounding.
    amax = xf.abs().amax(dim=-1).clamp(min=SCALE_EPS)
    scale = amax / torch.full_like(amax, FP8_MAX)  # [M, G]
    xq = (xf / scale[..., None]).clamp(-FP8_MAX, FP8_MAX).to(torch.float8_e4m3fn)
    return xq.view(m, g * group_size)[:, :k].contiguous(), scale


def quantize_act_fp8(x: torch.Tensor, group: int = FP8_GROUP) -> tuple[torch.Tensor, torch.Tensor]:
    """The per-layer activation quantisation (same as quantize_fp8; `group` named as in the kernel API)."""
    return quantize_fp8(x, group)


def _prequantized(x, x_scale):
    """x, or (xq, scale) / fp8 x with x_scale -> (x or xq, scale or None), as the kernel wrappers take it."""
    if isinstance(x, (tuple, list)):
        return x[0], x[1]
    return x, x_scale


def dequantize_fp8_act(xq: torch.Tensor, scale: torch.Tensor, group_size: int = FP8_GROUP) -> torch.Tensor:
    """xq [M, K] fp8, scale [M, G] -> fp32 [M, K]."""
    k = xq.shape[-1]
    return xq.float() * scale.repeat_interleave(group_size, dim=-1)[..., :k]


def fp8_scale_layout(w_shape, scale_shape, block: int = FP8_GROUP) -> str:
    """"block" or "channel" for an FP8 weight [..., N, K] and its scale; ValueError otherwise.

    block (`weight_scale_inv` semantics, a multiplier despite the name): [..., ceil(N/128), ceil(K/128)],
    one scale per 128x128 tile; per-channel: [..., N] or [..., N, 1], one scale per output row.
    """
    n, k = int(w_shape[-2]), int(w_shape[-1])
    lead = tuple(w_shape[:-2])
    ss = tuple(int(v) for v in scale_shape)
    if ss == lead + (_cdiv(n, block), _cdiv(k, block)):
        return "block"
    if ss == lead + (n,) or ss == lead + (n, 1):
        return "channel"
    raise ValueError(f"FP8 scale shape {ss} fits neither block scales {lead + (_cdiv(n, block), _cdiv(k, block))} "
                     f"nor per-channel scales {lead + (n,)} for weight {tuple(w_shape)}")


def dequantize_fp8_weight(w: torch.Tensor, scale: torch.Tensor, block: int = FP8_GROUP) -> torch.Tensor:
    """FP8 weight [..., N, K] -> fp32 [..., N, K], for either scale layout (see fp8_scale_layout)."""
    n, k = w.shape[-2:]
    s = scale.float()
    if fp8_scale_layout(w.shape, s.shape, block) == "block":
        s = s.repeat_interleave(block, dim=-2)[..., :n, :].repeat_interleave(block, dim=-1)[..., :k]
        return w.float() * s
    s = s.reshape(*w.shape[:-1])
    return w.float() * s[..., None]


def fp8_gemm(x, w: torch.Tensor, w_scale: torch.Tensor, x_scale: torch.Tensor | None = None,
             out_dtype: torch.dtype = torch.bfloat16, config: dict | None = None) -> torch.Tensor:
    """y = x @ W^T with an FP8 weight. x [..., K] bf16 (quantised per token per 128 channels first)
    or fp8 with x_scale [..., ceil(K/128)], or the pair (xq, x_scale); w [N, K] fp8; w_scale block
    [ceil(N/128), ceil(K/128)] or per-channel [N] / [N, 1] fp32. Returns [..., N] in out_dtype. `config`
    (kernel launch) is ignored."""
    x, x_scale = _prequantized(x, x_scale)
    lead, k = x.shape[:-1], x.shape[-1]
    x2 = x.reshape(-1, k)
    if x2.dtype == torch.float8_e4m3fn:
        xq, xs = x2, x_scale.reshape(x2.shape[0], -1).float()
    else:
        xq, xs = quantize_fp8(x2)
    a = dequantize_fp8_act(xq, xs)
    y = a @ dequantize_fp8_weight(w, w_scale).T
    return y.to(out_dtype).reshape(*lead, w.shape[0])


def _linear_fp32(a: torch.Tensor, w: torch.Tensor, scale: torch.Tensor | None,
                 a_scale: torch.Tensor | None = None) -> torch.Tensor:
    """a [n, K] bf16 (or fp8 with a_scale) @ w [N, K]^T accumulated in fp32; FP8 weights quantise a bf16
    `a` like the kernels do."""
    if w.dtype == torch.float8_e4m3fn:
        xq, xs = (a, a_scale) if a_scale is not None else quantize_fp8(a)
        return dequantize_fp8_act(xq, xs) @ dequantize_fp8_weight(w, scale).T
    return a.float() @ w.float().T


# ---------------------------------------------------------------------------------------------- MoE


def route(logits: torch.Tensor, expert_bias: torch.Tensor | None, top_k: int, n_group: int = 1,
          topk_group: int = 1, routed_scaling_factor: float = 1.0) -> tuple[torch.Tensor, torch.Tensor]:
    """BailingMoeV2 router: logits [T, E] fp32 -> (weights [T, K] fp32, ids [T, K] int32).

    s = sigmoid(logits); b = s + expert_bias (selection only). With n_group > 1, a group's score is the sum
    of its two largest b, the best `topk_group` groups stay and the others are masked with -inf. The K
    largest masked b are chosen, in descending order; weights are the *unbiased* s at those ids,
    w / (sum w + 1e-20) when K > 1, times routed_scaling_factor, all fp32.

    Tie rule (both backends): among equal values the lower index wins, for groups and for experts. HF
    calls torch.topk, whose order among ties is unspecified; a stable descending sort pins it here.
    """
    t, e = logits.shape
    s = torch.sigmoid(logits.float())
    b = s + expert_bias.float() if expert_bias is not None else s.clone()
    if n_group > 1:
        per = e // n_group
        top2 = torch.sort(b.view(t, n_group, per), dim=-1, descending=True, stable=True).values[..., :2]
        gscore = top2[..., 0] + top2[..., 1]  # [T, n_group]
        keep = torch.sort(gscore, dim=-1, descending=True, stable=True).indices[:, :topk_group]
        gmask = torch.zeros(t, n_group, dtype=torch.bool, device=logits.device).scatter_(1, keep, True)
        b = b.masked_fill(~gmask.repeat_interleave(per, dim=1), float("-inf"))
    ids = torch.sort(b, dim=-1, descending=True, stable=True).indices[:, :top_k]  # [T, K]
    w = s.gather(1, ids)
    if top_k > 1:
        total = w[:, 0]
        for j in range(1, top_k):  # slot order, as the kernel sums
            total = total + w[:, j]
        w = w / (total[:, None] + 1e-20)
    return w * routed_scaling_factor, ids.to(torch.int32)


def moe_align(topk_ids: torch.Tensor, num_experts: int, block_m: int
              ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Sort (token, slot) pairs by expert and pad every expert's run to a multiple of block_m.

    See angelcli/ops/align.py for the worked example. Pairs are numbered p = t*K + k; within an expert
    they keep ascending p. Padding slots hold the sentinel T*K, unused trailing blocks have expert -1.
    Returns sorted_ids [P] int32, expert_ids [P // block_m] int32, num_post_padded [1] int32, with
    P = roundup(T*K + min(E, T*K)*(block_m - 1), block_m).
    """
    t, k = topk_ids.shape
    n = t * k
    dev = topk_ids.device
    cap = _cdiv(n + min(num_experts, n) * (block_m - 1), block_m) * block_m
    flat = topk_ids.reshape(-1).long()
    counts = torch.bincount(flat, minlength=num_experts)
    padded = (counts + block_m - 1) // block_m * block_m
    ends = padded.cumsum(0)
    starts = ends - padded
    order = torch.sort(flat, stable=True).indices  # pair ids grouped by expert, ascending within
    first = counts.cumsum(0) - counts  # index in `order` where each expert's run starts
    e_sorted = flat[order]
    pos = starts[e_sorted] + torch.arange(n, device=dev) - first[e_sorted]
    sorted_ids = torch.full((cap,), n, dtype=torch.int32, device=dev)
    sorted_ids[pos] = order.to(torch.int32)
    expert_ids = torch.full((cap // block_m,), -1, dtype=torch.int32, device=dev)
    for ex in torch.nonzero(padded).flatten().tolist():
        expert_ids[starts[ex] // block_m: ends[ex] // block_m] = ex
    total = ends[-1:].to(torch.int32) if num_experts else torch.zeros(1, dtype=torch.int32, device=dev)
    return sorted_ids, expert_ids, total


def fused_moe(x, w13: torch.Tensor, w2: torch.Tensor, topk_weights: torch.Tensor,
              topk_ids: torch.Tensor, *, w13_scale: torch.Tensor | None = None,
              w2_scale: torch.Tensor | None = None, config: dict | None = None,
              x_scale: torch.Tensor | None = None) -> torch.Tensor:
    """Routed experts of one MoE layer: x [T, H] bf16 -> [T, H] bf16.

    x may also come pre-quantised for FP8 experts: fp8 x with x_scale [T, H/128], or the pair (xq, x_scale)
    (quantize_act_fp8); the result is identical to passing the bf16 x it was quantised from.
    w13 [E, 2I, H] (gate rows then up rows), w2 [E, H, I]; bf16, or fp8 e4m3 with block scales
    (w13_scale [E, ceil(2I/128), ceil(H/128)], w2_scale [E, ceil(H/128), ceil(I/128)]) or per-channel
    scales ([E, 2I], [E, H]). Per (token, slot): h = bf16(silu(bf16 gate) * bf16 up), y = bf16(h @ w2^T);
    then out = bf16(sum_k fp32(y_k) * w_k) summed in slot order. `config` is accepted for signature
    parity with the kernel and ignored.
    """
    x, x_scale = _prequantized(x, x_scale)
    t, hdim = x.shape
    inter = w13.shape[1] // 2
    k = topk_ids.shape[1]
    dt = torch.bfloat16 if x.dtype == torch.float8_e4m3fn else x.dtype  # float32 models run the twin in fp32
    ys = torch.zeros(t, k, hdim, dtype=dt, device=x.device)
    for ex in torch.unique(topk_ids).tolist():
        rows, slots = torch.nonzero(topk_ids == ex, as_tuple=True)
        gu = _linear_fp32(x[rows], w13[ex], None if w13_scale is None else w13_scale[ex],
                          None if x_scale is None else x_scale[rows].float())
        g, u = gu[:, :inter].to(dt), gu[:, inter:].to(dt)
        h = (F.silu(g.float()).to(dt).float() * u.float()).to(dt)
        ys[rows, slots] = _linear_fp32(h, w2[ex], None if w2_scale is None else w2_scale[ex]).to(dt)
    acc = torch.zeros(t, hdim, dtype=torch.float32, device=x.device)
    for j in range(k):  # fixed slot order: the kernel sums the same way
        acc = acc + ys[:, j].float() * topk_weights[:, j: j + 1].float()
    return acc.to(dt)


# ---------------------------------------------------------------------------------------- norms, RoPE


def rms_norm(x: torch.Tensor, weight: torch.Tensor, eps: float, residual: torch.Tensor | None = None):
    """RMSNorm over the last dim, HF order: normalise in fp32, cast to x.dtype, then multiply by weight.

    x [..., H], weight [H]. With `residual` (same shape as x): s = x + residual (rounded to x.dtype) is
    normalised and (y, s) is returned, s being the new residual stream; otherwise y.
    """
    if residual is not None:
        x = x + residual
    x32 = x.float()
    y = (x32 * torch.rsqrt(x32.pow(2).mean(-1, keepdim=True) + eps)).to(x.dtype) * weight
    return y if residual is None else (y, x)


def rope_cache(max_positions: int, rotary_dim: int, base: float, dtype: torch.dtype = torch.bfloat16,
               inv_freq: torch.Tensor | None = None, attention_scaling: float = 1.0,
               device=None) -> torch.Tensor:
    """NeoX RoPE table [max_positions, rotary_dim]: cos(theta_j) in columns [0, rotary_dim/2), sin in the rest.

    theta_j = pos * inv_freq_j with inv_freq_j = base^(-2j/rotary_dim) (or the given `inv_freq`, e.g. YaRN),
    computed in fp32, times attention_scaling, then cast to the activation dtype, as in the HF reference.
    Shared by both backends (it is a table, not a kernel).
    """
    if inv_freq is None:
        inv_freq = 1.0 / (base ** (torch.arange(0, rotary_dim, 2, dtype=torch.int64, device=device).float()
                                   / rotary_dim))
    freqs = torch.outer(torch.arange(max_positions, device=device).float(), inv_freq.float().to(device))
    return torch.cat([freqs.cos() * attention_scaling, freqs.sin() * attention_scaling], -1).to(dtype)


def qk_norm_rope(qkv: torch.Tensor, positions: torch.Tensor, q_norm_weight: torch.Tensor,
                 k_norm_weight: torch.Tensor, cos_sin_cache: torch.Tensor, num_q_heads: int,
                 num_kv_heads: int, eps: float) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-head RMSNorm of q and k, then NeoX RoPE on each head's first rotary_dim dims.

    qkv [T, (Hq + 2 Hkv) * D] ([Q | K | V] rows of the fused projection), positions [T] int,
    q/k_norm_weight [D], cos_sin_cache [P, rotary_dim] (see rope_cache) -> (q [T, Hq, D], k [T, Hkv, D]).
    The rotation runs in the activation dtype like HF: bf16(bf16(x*cos) + bf16(rotate_half(x)*sin)).
    """
    t = qkv.shape[0]
    d = qkv.shape[1] // (num_q_heads + 2 * num_kv_heads)
    q = rms_norm(qkv[:, : num_q_heads * d].reshape(t, num_q_heads, d), q_norm_weight, eps)
    k = rms_norm(qkv[:, num_q_heads * d: (num_q_heads + num_kv_heads) * d].reshape(t, num_kv_heads, d),
                 k_norm_weight, eps)
    rot = cos_sin_cache.shape[1]
    half = rot // 2
    cs = cos_sin_cache[positions.long()]
    cos = torch.cat([cs[:, :half], cs[:, :half]], -1)[:, None, :]
    sin = torch.cat([cs[:, half:], cs[:, half:]], -1)[:, None, :]

    def rotate(x):
        xr, xp = x[..., :rot], x[..., rot:]
        rot_half = torch.cat([-xr[..., half:], xr[..., :half]], -1)
        return torch.cat([xr * cos + rot_half * sin, xp], -1)

    return rotate(q).contiguous(), rotate(k).contiguous()


# ------------------------------------------------------------------------------------------ attention


def kv_cache_write(k: torch.Tensor, v: torch.Tensor, k_cache: torch.Tensor, v_cache: torch.Tensor,
                   slot_mapping: torch.Tensor) -> None:
    """Store k, v [T, Hkv, D] into the paged caches [NB, BS, Hkv, D] at slot = block * BS + offset.
    A negative slot skips the token (padding)."""
    bs = k_cache.shape[1]
    keep = slot_mapping >= 0
    slots = slot_mapping[keep].long()
    k_cache[slots // bs, slots % bs] = k[keep].to(k_cache.dtype)
    v_cache[slots // bs, slots % bs] = v[keep].to(v_cache.dtype)


def _gather(cache: torch.Tensor, table_row: torch.Tensor, n: int) -> torch.Tensor:
    bs = cache.shape[1]
    pos = torch.arange(n, device=cache.device)
    return cache[table_row[pos // bs].long(), pos % bs]  # [n, Hkv, D]


def attention_prefill(q: torch.Tensor, k_cache: torch.Tensor, v_cache: torch.Tensor, block_table: torch.Tensor,
                      cu_seqlens_q: torch.Tensor, seq_lens: torch.Tensor, scale: float | None = None,
                      max_q_len: int | None = None) -> torch.Tensor:
    """Causal GQA attention of new query tokens against the paged cache (which already holds them).

    q [Tq, Hq, D] packed by sequence (cu_seqlens_q [B+1] int32), caches [NB, BS, Hkv, D], block_table
    [B, max_blocks] int32, seq_lens [B] int32 = context length *including* the new tokens. Query i of
    sequence b sits at position seq_lens[b] - q_len_b + i and sees keys 0..that position. Scores and
    softmax in fp32, probabilities rounded to q.dtype before P @ V (as the kernels do). -> [Tq, Hq, D].
    max_q_len only sizes the kernel's grid.
    """
    hq, d = q.shape[1], q.shape[2]
    hkv = k_cache.shape[2]
    scale = d ** -0.5 if scale is None else scale
    out = torch.empty_like(q)
    for b in range(block_table.shape[0]):
        q0, q1 = int(cu_seqlens_q[b]), int(cu_seqlens_q[b + 1])
        n = int(seq_lens[b])
        if q1 == q0:
            continue
        kb = _gather(k_cache, block_table[b], n).float().repeat_interleave(hq // hkv, dim=1)
        vb = _gather(v_cache, block_table[b], n).float().repeat_interleave(hq // hkv, dim=1)
        s = torch.einsum("qhd,khd->hqk", q[q0:q1].float(), kb) * scale  # [Hq, Lq, n]
        qpos = torch.arange(n - (q1 - q0), n, device=q.device)
        s = s.masked_fill(torch.arange(n, device=q.device)[None, :] > qpos[:, None], float("-inf"))
        p = torch.softmax(s, dim=-1).to(q.dtype).float()
        out[q0:q1] = torch.einsum("hqk,khd->qhd", p, vb).to(q.dtype)
    return out


def attention_decode(q: torch.Tensor, k_cache: torch.Tensor, v_cache: torch.Tensor, block_table: torch.Tensor,
                     seq_lens: torch.Tensor, scale: float | None = None, num_splits: int | None = None
                     ) -> torch.Tensor:
    """One new query per sequence: q [B, Hq, D] -> [B, Hq, D]; the token is already in the cache at
    position seq_lens[b] - 1. `num_splits` only matters to the kernel (split-K)."""
    cu = torch.arange(q.shape[0] + 1, dtype=torch.int32, device=q.device)
    return attention_prefill(q, k_cache, v_cache, block_table, cu, seq_lens, scale)


# ------------------------------------------------------------------------------------------------------
# Twins of the engine's fused kernels (angelcli/engine/triton_backend.py calls these through ops)
# ------------------------------------------------------------------------------------------------------


def route_gemm(x: torch.Tensor, weight: torch.Tensor, expert_bias: torch.Tensor | None, top_k: int,
               n_group: int = 1, topk_group: int = 1, routed_scaling_factor: float = 1.0, n_shared: int = 0
               ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """The router in one op: x [T, H], weight [E, H] -> (weights [T, K + n_shared] fp32, ids [T, K + n_shared]
    int32, logits [T, E] fp32) with logits = fp32(x) @ fp32(weight)^T; the n_shared extra slots are experts
    E .. E + n_shared - 1 with weight 1 (angelcli/ops/router_gemm.py)."""
    logits = F.linear(x.float(), weight.float())
    w, ids = route(logits, expert_bias, top_k, n_group, topk_group, routed_scaling_factor)
    if n_shared:
        t, e = logits.shape
        extra = torch.arange(e, e + n_shared, dtype=ids.dtype, device=ids.device).expand(t, n_shared)
        w = torch.cat([w, torch.ones(t, n_shared, dtype=w.dtype, device=w.device)], 1)
        ids = torch.cat([ids, extra], 1)
    return w, ids, logits


def rms_norm_fp8(x: torch.Tensor, weight: torch.Tensor, eps: float, residual: torch.Tensor | None = None):
    """rms_norm plus the FP8 quantisation of its output: -> (y, s or None, (yq, scale)) (ops/rmsnorm.py)."""
    out = rms_norm(x, weight, eps, residual)
    y, res = (out, None) if residual is None else out
    return y, res, quantize_fp8(y)


def silu_mul(gate_up: torch.Tensor, quant: bool = False):
    """gate_up [N, 2I] = [gate | up] -> (h = silu(gate) * up rounded like the HF MLP, (hq, scale) | None)
    (angelcli/ops/activation.py)."""
    i = gate_up.shape[1] // 2
    dt = gate_up.dtype
    h = (F.silu(gate_up[:, :i].float()).to(dt).float() * gate_up[:, i:].float()).to(dt)
    return h, (quantize_fp8(h) if quant else None)


def qk_norm_rope_cache(qkv: torch.Tensor, positions: torch.Tensor, q_norm_weight: torch.Tensor,
                       k_norm_weight: torch.Tensor, cos_sin_cache: torch.Tensor, num_q_heads: int,
                       num_kv_heads: int, eps: float, k_cache: torch.Tensor, v_cache: torch.Tensor,
                       slot_mapping: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """qk_norm_rope, then kv_cache_write of the rotated k and of v = qkv[:, (Hq + Hkv) D:] (ops/rope.py)."""
    q, k = qk_norm_rope(qkv, positions, q_norm_weight, k_norm_weight, cos_sin_cache, num_q_heads, num_kv_heads,
                        eps)
    d = qkv.shape[1] // (num_q_heads + 2 * num_kv_heads)
    v = qkv[:, (num_q_heads + num_kv_heads) * d:].view(qkv.shape[0], num_kv_heads, d)
    kv_cache_write(k, v, k_cache, v_cache, slot_mapping)
    return q, k


def attention_decode_fp8(q: torch.Tensor, k_cache: torch.Tensor, v_cache: torch.Tensor, block_table: torch.Tensor,
                         seq_lens: torch.Tensor, scale: float | None = None, num_splits: int | None = None):
    """attention_decode plus the FP8 quantisation of its output rows [B, Hq * D] (ops/decode_attention.py)."""
    out = attention_decode(q, k_cache, v_cache, block_table, seq_lens, scale, num_splits)
    return out, quantize_fp8(out.reshape(out.shape[0], -1))
