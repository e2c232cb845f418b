"""The EAGLE3 draft head: one Llama-style decoder layer over three of the target's residual-stream states.

Shapes: B batch, T positions, H draft hidden, Ht target hidden, V target vocab, Vd draft vocab,
Hq / Hkv heads, D head_dim.

One draft step at position t (spec eagle3.md §1.2):
    g_t   = fc([a_low,t | a_mid,t | a_high,t])               fc: Linear 3Ht -> H, no bias (step 0 only)
    u     = [input_layernorm(emb(x_{t+1})) | hidden_norm(g_t)]  2H; embedding first, hidden second
    h     = g_t + attn(u)                                      q/k/v read 2H, o writes H, RoPE at position t
    h     = h + mlp(post_attention_layernorm(h))               SwiGLU
    logits over the draft vocab = lm_head(norm(h)); h (pre-norm) is the recurrent state of the next step.
The embedding is the target's own matrix, frozen and never saved with the draft.

Layer ids (the #1 export pitfall, spec §1.1). `DraftConfig.aux_layers` uses the foundation's convention:
id i = `hidden[i]` of the target forward = the residual stream *after* decoder layer i (0-based). That is
SGLang's `eagle_config.eagle_aux_hidden_state_layer_ids` convention ("output of layer i"; SGLang adds 1 to
capture before layer i+1) and is one less than vLLM / speculators ids ("capture before layer i+1", HF
hidden_states index). The default (1, N/2-1, N-4) names the same tensors as every upstream default:
SGLang [1, N/2-1, N-4] == vLLM [2, N/2, N-3].

Draft vocabulary (spec §1.3): the kept target ids sorted ascending; `d2t[i] = kept[i] - i` (an offset, so
target id = i + d2t[i]); `t2d[v]` is True iff target id v is kept, so `target_logits[..., t2d]` lists the
columns in draft-id order.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field

import torch
import torch.nn.functional as F
from torch import nn

from angelcli.errors import UsageError
from angelcli.model.layers import MLP, RMSNorm, apply_partial_rope

DEFAULT_DRAFT_VOCAB = 32000


def default_aux_layers(num_layers: int) -> tuple[int, int, int]:
    """Outputs of layers (1, N/2-1, N-4), 0-based, the upstream default.

    Shallow targets (fewer than 7 layers) cannot give three distinct ids that way; there angel spreads
    three ids over the layers it can capture, preferring ids that every engine can express: SGLang
    captures at the start of layer id+1, so the last layer's output (id N-1) is out of its reach, and
    some SGLang releases read a list whose first id is not 1 differently (vLLM 0.34 takes any id).
    """
    n = num_layers
    ids = (1, n // 2 - 1, n - 4)
    if n >= 7:
        return ids
    if n >= 5:  # three distinct ids in [1, N-2]
        return (1, (n - 1) // 2, n - 2) if (n - 1) // 2 not in (1, n - 2) else (1, 2, n - 2)
    if n >= 3:  # (0, 1, 2): avoids the last layer's output where the target allows it (N = 4)
        return (0, 1, 2)
    raise UsageError(f"target has {n} layers; an EAGLE3 draft needs a target with at least 3")


@dataclass
class DraftConfig:
    hidden_size: int
    intermediate_size: int
    num_attention_heads: int
    num_key_value_heads: int
    head_dim: int
    vocab_size: int  # target vocabulary V
    draft_vocab_size: int  # Vd <= V
    target_hidden_size: int
    target_num_layers: int
    aux_layers: tuple[int, ...]  # foundation convention (output of layer i), ascending
    rms_norm_eps: float = 1e-6
    rope_theta: float = 10000.0
    max_position_embeddings: int = 4096
    extra: dict = field(default_factory=dict)  # anything else worth carrying (never interpreted)

    def __post_init__(self) -> None:
        self.aux_layers = tuple(int(i) for i in self.aux_layers)
        if len(self.aux_layers) != 3:
            raise UsageError(f"draft config: aux_layers must name 3 target layers, got {list(self.aux_layers)}")
        if list(self.aux_layers) != sorted(self.aux_layers):
            raise UsageError(f"draft config: aux_layers must be ascending (low, mid, high), got {list(self.aux_layers)}")
        bad = [i for i in self.aux_layers if not 0 <= i < self.target_num_layers]
        if bad:
            raise UsageError(f"draft config: aux layer {bad[0]} is outside the target's layers 0..{self.target_num_layers - 1}")
        if not 0 < self.draft_vocab_size <= self.vocab_size:
            raise UsageError(f"draft config: draft_vocab_size {self.draft_vocab_size} must be in 1..vocab_size {self.vocab_size}")
        if self.num_attention_heads % self.num_key_value_heads:
            raise UsageError("draft config: num_key_value_heads must divide num_attention_heads")
        if self.head_dim % 2:
            raise UsageError("draft config: head_dim must be even (RoPE)")

    @classmethod
    def for_target(cls, tcfg, *, draft_vocab_size: int | None = None, aux_layers=None,
                   intermediate_size: int | None = None) -> "DraftConfig":
        """A draft shaped like the target's attention (ModelConfig tcfg), as the published heads are."""
        V = tcfg.vocab_size
        return cls(
            hidden_size=tcfg.hidden_size, intermediate_size=intermediate_size or tcfg.intermediate_size,
            num_attention_heads=tcfg.num_attention_heads, num_key_value_heads=tcfg.num_key_value_heads,
            head_dim=tcfg.head_dim, vocab_size=V, draft_vocab_size=min(draft_vocab_size or DEFAULT_DRAFT_VOCAB, V),
            target_hidden_size=tcfg.hidden_size, target_num_layers=tcfg.num_hidden_layers,
            aux_layers=tuple(aux_layers) if aux_layers else default_aux_layers(tcfg.num_hidden_layers),
            rms_norm_eps=tcfg.rms_norm_eps, rope_theta=float(tcfg.rope_theta),
            max_position_embeddings=tcfg.max_position_embeddings)

    def to_dict(self) -> dict:
        d = asdict(self)
        d["aux_layers"] = list(self.aux_layers)
        return d

    @classmethod
    def from_dict(cls, d: dict) -> "DraftConfig":
        names = set(cls.__dataclass_fields__)
        return cls(**{k: v for k, v in d.items() if k in names})


# ---- draft vocabulary ------------------------------------------------------------------------------

def build_vocab_map(counts: torch.Tensor, draft_vocab_size: int, force_ids=()) -> tuple[torch.Tensor, torch.Tensor]:
    """Token counts [V] (assistant tokens of the training data) -> (d2t int64 [Vd], t2d bool [V]).

    Keeps the Vd most frequent ids (ties by lower id), always including `force_ids` (the stop ids: a draft
    vocabulary without <|role_end|> can never propose the end of a turn). Fewer distinct tokens than Vd are
    padded with unseen ids, lowest first (SpecForge PR #76).
    """
    V = counts.numel()
    Vd = min(draft_vocab_size, V)
    score = counts.double().clone()
    forced = [int(i) for i in force_ids if 0 <= int(i) < V]
    if forced:
        score[forced] = float("inf")
    # Stable descending sort: equal counts keep ascending id order.
    order = torch.sort(-score, stable=True).indices
    kept = torch.sort(order[:Vd]).values
    d2t = kept - torch.arange(Vd)
    t2d = torch.zeros(V, dtype=torch.bool)
    t2d[kept] = True
    return d2t.to(torch.int64), t2d


def check_vocab_map(d2t: torch.Tensor, t2d: torch.Tensor) -> None:
    """Raise UsageError unless d2t/t2d are a consistent offset map (spec §5.4 invariants)."""
    if d2t.dtype != torch.int64 or d2t.dim() != 1:
        raise UsageError(f"d2t must be a 1-D int64 tensor, got {d2t.dtype} {tuple(d2t.shape)}")
    if t2d.dtype != torch.bool or t2d.dim() != 1:
        raise UsageError(f"t2d must be a 1-D bool tensor, got {t2d.dtype} {tuple(t2d.shape)}")
    Vd, V = d2t.numel(), t2d.numel()
    target = torch.arange(Vd) + d2t
    if int(t2d.sum()) != Vd:
        raise UsageError(f"t2d marks {int(t2d.sum())} target ids but d2t has {Vd} entries")
    if Vd and (int(target.min()) < 0 or int(target.max()) >= V):
        raise UsageError(f"d2t maps outside the target vocabulary 0..{V - 1}")
    if Vd > 1 and not bool((target[1:] > target[:-1]).all()):
        raise UsageError("d2t is not an offset map onto ascending target ids (an absolute-id d2t, or unsorted)")
    if not bool(t2d[target].all()):
        raise UsageError("d2t and t2d disagree: a mapped target id is not marked in t2d")


# ---- the draft network ------------------------------------------------------------------------------

def rope_tables(positions: torch.Tensor, head_dim: int, theta: float, dtype: torch.dtype):
    """positions [B, T] -> cos, sin [B, T, D] (Llama full-width NeoX rotation, fp32 then cast)."""
    inv = 1.0 / (theta ** (torch.arange(0, head_dim, 2, dtype=torch.int64, device=positions.device).float() / head_dim))
    freqs = positions.float()[..., None] * inv
    emb = torch.cat((freqs, freqs), dim=-1)
    return emb.cos().to(dtype), emb.sin().to(dtype)


class RopeCache:
    """cos/sin rows of rope_tables for positions 0..n-1, grown by doubling: one gather per draft step."""

    def __init__(self, head_dim: int, theta: float):
        self.head_dim, self.theta = head_dim, theta
        self.cos = self.sin = None

    def __call__(self, positions: torch.Tensor, dtype: torch.dtype):
        need = int(positions.max()) + 1
        if self.cos is None or self.cos.shape[0] < need or self.cos.dtype != dtype or self.cos.device != positions.device:
            n = max(need, 2 * (self.cos.shape[0] if self.cos is not None else 256))
            self.cos, self.sin = rope_tables(torch.arange(n, device=positions.device)[None], self.head_dim,
                                             self.theta, dtype)
            self.cos, self.sin = self.cos[0], self.sin[0]
        return self.cos[positions], self.sin[positions]


class DraftAttention(nn.Module):
    def __init__(self, cfg: DraftConfig):
        super().__init__()
        self.nh, self.nkv, self.hd = cfg.num_attention_heads, cfg.num_key_value_heads, cfg.head_dim
        self.q_proj = nn.Linear(2 * cfg.hidden_size, self.nh * self.hd, bias=False)
        self.k_proj = nn.Linear(2 * cfg.hidden_size, self.nkv * self.hd, bias=False)
        self.v_proj = nn.Linear(2 * cfg.hidden_size, self.nkv * self.hd, bias=False)
        self.o_proj = nn.Linear(self.nh * self.hd, cfg.hidden_size, bias=False)
        self.scale = self.hd**-0.5

    def forward(self, u, cos, sin, cache=None, ttt_kv=None, mask=None):
        """u [B, T, 2H] -> [B, T, H].

        cache: a KVCache with one layer (inference); attention is causal over everything cached, or follows
        `mask` [T, S] bool (True = visible; S = cached + T) where given (tree drafting, eagle/tree.py).
        ttt_kv: training-time test state, a list of (k, v) per earlier unrolled step (training); the query at
        (step s, position t) sees step-0 keys at positions <= t and the keys of steps 1..s at t only.
        """
        B, T, _ = u.shape
        q = apply_partial_rope(self.q_proj(u).view(B, T, self.nh, self.hd).transpose(1, 2), cos, sin)
        k = apply_partial_rope(self.k_proj(u).view(B, T, self.nkv, self.hd).transpose(1, 2), cos, sin)
        v = self.v_proj(u).view(B, T, self.nkv, self.hd).transpose(1, 2)
        rep = self.nh // self.nkv
        if ttt_kv is not None:
            ttt_kv.append((k, v))
            out = self._attend_ttt(q, [(kk.repeat_interleave(rep, 1), vv.repeat_interleave(rep, 1)) for kk, vv in ttt_kv])
        else:
            past = 0
            if cache is not None:
                past = cache.seq_len
                k, v = cache.update(0, k, v)
                cache.advance(T)
            # One fused call (the draft's decode step is mostly per-op overhead on small models); a single
            # new token sees every cached key, so it needs no mask.
            if mask is None and T > 1:
                mask = torch.ones(T, k.shape[2], dtype=torch.bool, device=u.device).tril(diagonal=past)
            out = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, scale=self.scale, enable_gqa=rep > 1)
        return self.o_proj(out.transpose(1, 2).reshape(B, T, self.nh * self.hd))

    def _attend_ttt(self, q, kvs):
        """q [B, Hq, T, D]; kvs[j] = (k_j, v_j) [B, Hq, T, D] of unrolled step j (j = 0 is the causal block)."""
        T = q.shape[2]
        k0, v0 = kvs[0]
        s0 = torch.matmul(q, k0.transpose(2, 3)) * self.scale  # [B, Hq, T, T]
        causal = torch.ones(T, T, dtype=torch.bool, device=q.device).tril()
        s0 = s0.masked_fill(~causal, float("-inf"))
        diag = [(q * kj).sum(-1, keepdim=True) * self.scale for kj, _ in kvs[1:]]  # each [B, Hq, T, 1]
        probs = F.softmax(torch.cat([s0, *diag], dim=-1), dim=-1, dtype=torch.float32).to(q.dtype)
        out = torch.matmul(probs[..., :T], v0)
        for j, (_, vj) in enumerate(kvs[1:]):
            out = out + probs[..., T + j : T + j + 1] * vj
        return out


class DraftLayer(nn.Module):
    """The `midlayer`: names match the SGLang checkpoint keys (midlayer.input_layernorm.weight, ...)."""

    def __init__(self, cfg: DraftConfig):
        super().__init__()
        self.input_layernorm = RMSNorm(cfg.hidden_size, cfg.rms_norm_eps)  # norms the token embedding
        self.hidden_norm = RMSNorm(cfg.hidden_size, cfg.rms_norm_eps)  # norms the fused / recurrent hidden
        self.self_attn = DraftAttention(cfg)
        self.post_attention_layernorm = RMSNorm(cfg.hidden_size, cfg.rms_norm_eps)
        self.mlp = MLP(cfg.hidden_size, cfg.intermediate_size)

    def forward(self, emb, hidden, cos, sin, cache=None, ttt_kv=None, mask=None):
        u = torch.cat([self.input_layernorm(emb), self.hidden_norm(hidden)], dim=-1)
        h = hidden + self.self_attn(u, cos, sin, cache, ttt_kv, mask)  # residual = the un-normed hidden
        return h + self.mlp(self.post_attention_layernorm(h))


class Eagle3Draft(nn.Module):
    def __init__(self, cfg: DraftConfig):
        super().__init__()
        self.config = cfg
        self.fc = nn.Linear(3 * cfg.target_hidden_size, cfg.hidden_size, bias=False)
        self.midlayer = DraftLayer(cfg)
        self.norm = RMSNorm(cfg.hidden_size, cfg.rms_norm_eps)
        self.lm_head = nn.Linear(cfg.hidden_size, cfg.draft_vocab_size, bias=False)
        self.register_buffer("d2t", torch.zeros(cfg.draft_vocab_size, dtype=torch.int64))
        t2d = torch.zeros(cfg.vocab_size, dtype=torch.bool)
        t2d[: cfg.draft_vocab_size] = True
        self.register_buffer("t2d", t2d)
        object.__setattr__(self, "_embed", None)  # the target's embedding: shared, frozen, not a submodule
        self.rope = RopeCache(cfg.head_dim, cfg.rope_theta)

    # -- wiring -----------------------------------------------------------------------------------------
    def set_embedding(self, embedding: nn.Embedding) -> None:
        if embedding.weight.shape != (self.config.vocab_size, self.config.hidden_size):
            raise UsageError(f"target embedding is {tuple(embedding.weight.shape)}, the draft needs "
                             f"({self.config.vocab_size}, {self.config.hidden_size})")
        object.__setattr__(self, "_embed", embedding)

    def set_vocab_map(self, d2t: torch.Tensor, t2d: torch.Tensor) -> None:
        check_vocab_map(d2t.cpu(), t2d.cpu())
        self.d2t.copy_(d2t)
        self.t2d.copy_(t2d)

    def init_weights(self, seed: int = 0, target=None) -> None:
        """Llama init (normal 0.02, norms 1). With a target model: final norm and lm_head start from the
        target's own (rows of the kept ids: an output basis the target already uses) and fc as the identity
        on the high layer's state (angel's choice; SpecForge issue #478 asks for the same)."""
        g = torch.Generator().manual_seed(seed)
        for name, p in self.named_parameters():
            with torch.no_grad():
                if p.dim() == 1:
                    p.fill_(1.0)
                else:
                    p.copy_(torch.randn(p.shape, generator=g) * 0.02)
        if target is not None:
            H = self.config.hidden_size
            with torch.no_grad():
                kept = (torch.arange(self.config.draft_vocab_size) + self.d2t.cpu())
                self.lm_head.weight.copy_(target.lm_head.weight.detach().float().cpu()[kept])
                self.norm.weight.copy_(target.model.norm.weight.detach().float().cpu())
                if self.config.target_hidden_size == H:
                    self.fc.weight.zero_()
                    self.fc.weight[:, 2 * H:].copy_(torch.eye(H))

    # -- computation ------------------------------------------------------------------------------------
    def embed(self, ids: torch.Tensor) -> torch.Tensor:
        if self._embed is None:
            raise RuntimeError("draft has no embedding: call set_embedding(target.model.word_embeddings)")
        with torch.no_grad():
            return self._embed(ids)

    def fuse(self, aux: torch.Tensor) -> torch.Tensor:
        """aux [B, T, 3Ht] (low | mid | high) -> [B, T, H]."""
        return self.fc(aux)

    def forward(self, ids: torch.Tensor, hidden: torch.Tensor, positions: torch.Tensor, cache=None, ttt_kv=None,
                head: bool = True, mask: torch.Tensor | None = None):
        """One draft step. ids [B, T] (the *next* tokens), hidden [B, T, H] (fused or recurrent),
        positions [B, T], mask [T, S] or None (causal) -> (draft logits [B, T, Vd] fp32, or None when
        head=False; pre-norm hidden [B, T, H])."""
        emb = self.embed(ids).to(hidden.dtype)
        cos, sin = self.rope(positions, hidden.dtype)
        h = self.midlayer(emb, hidden, cos, sin, cache, ttt_kv, mask)
        return (self.logits(h) if head else None), h

    def logits(self, h: torch.Tensor) -> torch.Tensor:
        """Pre-norm hidden [..., H] -> draft-vocab logits [..., Vd] fp32."""
        return self.lm_head(self.norm(h)).float()

    def to_target_ids(self, draft_ids: torch.Tensor) -> torch.Tensor:
        return draft_ids + self.d2t[draft_ids]

    def scatter_to_target(self, draft_values: torch.Tensor, fill: float = 0.0) -> torch.Tensor:
        """[..., Vd] -> [..., V] with draft column i at target id i + d2t[i], `fill` elsewhere."""
        out = draft_values.new_full((*draft_values.shape[:-1], self.config.vocab_size), fill)
        out[..., self.t2d] = draft_values
        return out

    def new_cache(self, batch: int, max_len: int, dtype=None, device=None):
        """A one-layer KVCache (the engine's class, so trim() rolls back rejected drafts the same way)."""
        from types import SimpleNamespace

        from angelcli.engine.kv_cache import KVCache

        c = self.config
        shape_cfg = SimpleNamespace(num_hidden_layers=1, num_key_value_heads=c.num_key_value_heads, head_dim=c.head_dim)
        p = self.fc.weight
        return KVCache(shape_cfg, batch, max_len, dtype or p.dtype, device or p.device)  # type: ignore[arg-type]

    def trainable_parameters(self) -> int:
        return sum(p.numel() for p in self.parameters())
