"""An independent, deliberately naive BailingMoeV2 forward written straight from the spec (§3), for tests.

It shares no code with angelcli.model: per-token Python loops for routing, a per-expert dictionary of the
checkpoint tensors as stored (no stacking), explicit formulas for RoPE and attention. Slow, but obvious.
"""

import math

import torch


def rmsnorm(x, w, eps):
    dt = x.dtype
    x32 = x.float()
    var = (x32 * x32).mean(-1, keepdim=True)
    return w * (x32 / torch.sqrt(var + eps)).to(dt)


def silu(x):
    return x * torch.sigmoid(x)


def plain_linear(x, sd, name):
    return x @ sd[name].T


def mlp(x, sd, prefix, lin=plain_linear):
    g = lin(x, sd, prefix + ".gate_proj.weight")
    u = lin(x, sd, prefix + ".up_proj.weight")
    return lin(silu(g) * u, sd, prefix + ".down_proj.weight")


def rope_tables(cfg, T):
    rot = int(cfg["head_dim"] * cfg["partial_rotary_factor"])
    inv = [1.0 / (cfg["rope_theta"] ** (2 * j / rot)) for j in range(rot // 2)]
    cos = torch.zeros(T, rot)
    sin = torch.zeros(T, rot)
    for p in range(T):
        for j, f in enumerate(inv):
            a = p * f
            cos[p, j] = cos[p, j + rot // 2] = math.cos(a)
            sin[p, j] = sin[p, j + rot // 2] = math.sin(a)
    return cos, sin, rot


def rope(x, cos, sin, rot):
    # x [heads, T, D]; pairs (j, j + rot/2) for j < rot/2
    out = x.clone()
    h = rot // 2
    a, b = x[..., :h], x[..., h:rot]
    out[..., :h] = a * cos[:, :h] - b * sin[:, :h]
    out[..., h:rot] = b * cos[:, h:rot] + a * sin[:, h:rot]
    return out


def route_token(logit_row, bias, cfg):
    E = cfg["num_experts"]
    s = [1.0 / (1.0 + math.exp(-float(v))) for v in logit_row]
    b = [s[e] + float(bias[e]) for e in range(E)]
    G, per = cfg["n_group"], E // cfg["n_group"]
    gscore = []
    for g in range(G):
        vals = sorted(b[g * per:(g + 1) * per], reverse=True)
        gscore.append(vals[0] + vals[1])
    keep = sorted(range(G), key=lambda g: -gscore[g])[: cfg["topk_group"]]
    cand = [e for e in range(E) if e // per in keep]
    chosen = sorted(cand, key=lambda e: -b[e])[: cfg["num_experts_per_tok"]]
    w = [s[e] for e in chosen]
    if len(w) > 1:
        tot = sum(w) + 1e-20
        w = [x / tot for x in w]
    return chosen, [x * cfg["routed_scaling_factor"] for x in w]


def forward(cfg, sd, ids, lin=plain_linear):
    """ids: list[int] -> logits [T, V] fp32 (whole sequence, no cache).

    lin(x, sd, weight_name) computes x @ W^T for every projection except the router and the head (tests of
    quantised checkpoints pass their own)."""
    T = len(ids)
    H, nh, nkv, D = cfg["hidden_size"], cfg["num_attention_heads"], cfg["num_key_value_heads"], cfg["head_dim"]
    eps = cfg["rms_norm_eps"]
    h = sd["model.word_embeddings.weight"][torch.tensor(ids)]
    cos, sin, rot = rope_tables(cfg, T)
    for i in range(cfg["num_hidden_layers"]):
        p = f"model.layers.{i}"
        x = rmsnorm(h, sd[p + ".input_layernorm.weight"], eps)
        qkv = lin(x, sd, p + ".attention.query_key_value.weight")
        q = qkv[:, : nh * D].view(T, nh, D).transpose(0, 1)
        k = qkv[:, nh * D: (nh + nkv) * D].view(T, nkv, D).transpose(0, 1)
        v = qkv[:, (nh + nkv) * D:].view(T, nkv, D).transpose(0, 1)
        q = rmsnorm(q, sd[p + ".attention.query_layernorm.weight"], eps)
        k = rmsnorm(k, sd[p + ".attention.key_layernorm.weight"], eps)
        q, k = rope(q, cos, sin, rot), rope(k, cos, sin, rot)
        outs = []
        for hq in range(nh):
            kv = hq // (nh // nkv)
            sc = (q[hq] @ k[kv].T) / math.sqrt(D)
            sc = sc.masked_fill(torch.triu(torch.ones(T, T, dtype=torch.bool), 1), float("-inf"))
            outs.append(torch.softmax(sc.float(), -1).to(q.dtype) @ v[kv])
        attn = torch.cat(outs, dim=-1)
        h = h + lin(attn, sd, p + ".attention.dense.weight")
        x = rmsnorm(h, sd[p + ".post_attention_layernorm.weight"], eps)
        if i < cfg["first_k_dense_replace"]:
            h = h + mlp(x, sd, p + ".mlp", lin)
            continue
        logits = x.float() @ sd[p + ".mlp.gate.weight"].float().T
        bias = sd[p + ".mlp.gate.expert_bias"]
        y = torch.zeros(T, H)
        for t in range(T):
            chosen, w = route_token(logits[t], bias, cfg)
            acc = torch.zeros(H, dtype=torch.float32)
            for e, we in zip(chosen, w):
                acc += mlp(x[t: t + 1], sd, f"{p}.mlp.experts.{e}", lin)[0].float() * we
            y[t] = acc
        y = y.to(h.dtype) + mlp(x, sd, p + ".mlp.shared_experts", lin)
        h = h + y
    h = rmsnorm(h, sd["model.norm.weight"], eps)
    return (h @ sd["lm_head.weight"].T).float()


# ------------------------------------------------------------------------------------------------------------------
# The same model with a KV cache, laid out the way the upstream HF remote code runs decode (modeling_bailing_moe_v2.py
# under transformers, eager attention). It is the decode-speed baseline of `angel bench --vs-reference` and of the
# speed acceptance, so it must be as fast as that upstream code, not slower: every op the upstream code runs per
# step is here (mask, rotary tables, DynamicCache-style concatenation, repeat_kv + matmul attention, moe_infer's
# argsort + host-side loop over the experts), and the module-call and output-dataclass overhead of HF is left out.
# Written from the spec's description of that code; no code is shared with angelcli.model.
# ------------------------------------------------------------------------------------------------------------------


class CachedReference:
    """Decode with a concatenating KV cache. cfg: config dict; sd: checkpoint state dict (per-expert tensors).

    ref = CachedReference(cfg, sd); logits = ref.forward(ids_list)  # [T, V] fp32 for the new tokens; the cache grows
    """

    def __init__(self, cfg, sd):
        self.cfg, self.sd = cfg, sd
        rot = int(cfg["head_dim"] * cfg["partial_rotary_factor"])
        self.inv_freq = 1.0 / (cfg["rope_theta"] ** (torch.arange(0, rot, 2, dtype=torch.int64).float() / rot))
        self.keys, self.values = [], []  # per layer [1, Hkv, S, D], grown by concatenation (DynamicCache)

    def seq_len(self):
        return self.keys[0].shape[2] if self.keys else 0

    def _rotary(self, pos, dtype):
        freqs = (self.inv_freq[None, :, None] @ pos[:, None, :].float()).transpose(1, 2)  # [1, T, rot/2]
        emb = torch.cat((freqs, freqs), dim=-1)
        return (emb.cos() * 1.0).to(dtype), (emb.sin() * 1.0).to(dtype)  # upstream scales by attention_scaling (1)

    @staticmethod
    def _rms(x, w, eps):
        dt = x.dtype
        x32 = x.to(torch.float32)
        return w * (x32 * torch.rsqrt(x32.pow(2).mean(-1, keepdim=True) + eps)).to(dt)

    @staticmethod
    def _rope(x, cos, sin):
        rot = cos.shape[-1]
        cos, sin = cos[:, None], sin[:, None]
        xr, xp = x[..., :rot], x[..., rot:]
        half = rot // 2
        rotated = torch.cat((-xr[..., half:], xr[..., :half]), dim=-1)
        return torch.cat([xr * cos + rotated * sin, xp], dim=-1)

    def _mlp(self, x, prefix):
        sd = self.sd
        g = torch.nn.functional.linear(x, sd[prefix + ".gate_proj.weight"])
        u = torch.nn.functional.linear(x, sd[prefix + ".up_proj.weight"])
        return torch.nn.functional.linear(torch.nn.functional.silu(g) * u, sd[prefix + ".down_proj.weight"])

    def _route(self, x, p):
        cfg, sd = self.cfg, self.sd
        logits = torch.nn.functional.linear(x.float(), sd[p + ".mlp.gate.weight"].float())
        scores = torch.sigmoid(logits.float()).type_as(logits)
        choice = scores + sd[p + ".mlp.gate.expert_bias"]
        n, G = choice.shape[0], cfg["n_group"]
        group_scores = choice.view(n, G, -1).topk(2, dim=-1)[0].sum(dim=-1)
        group_idx = torch.topk(group_scores, k=cfg["topk_group"], dim=-1, sorted=False)[1]
        group_mask = torch.zeros_like(group_scores).scatter_(1, group_idx, 1)
        mask = group_mask.unsqueeze(-1).expand(n, G, cfg["num_experts"] // G).reshape(n, -1)
        ids = torch.topk(choice.masked_fill(~mask.bool(), float("-inf")), k=cfg["num_experts_per_tok"], dim=-1)[1]
        w = torch.gather(scores, 1, ids)
        if cfg["num_experts_per_tok"] > 1:
            w = w / (w.sum(dim=-1, keepdim=True) + 1e-20)
        return ids, w * cfg["routed_scaling_factor"]

    def _moe(self, x, p):
        """moe_infer: tokens sorted by expert, expert counts read on the host, a Python loop over every expert."""
        ids, w = self._route(x, p)
        counts = ids.new_zeros((ids.shape[0], self.cfg["num_experts"])).scatter_(1, ids, 1).sum(dim=0)
        order = ids.view(-1).argsort()
        sorted_x = x[order // ids.shape[1]]
        outs, start = [], 0
        for e, n in enumerate(counts.cpu().numpy()):
            if n == 0:
                continue
            outs.append(self._mlp(sorted_x[start:start + n], f"{p}.mlp.experts.{e}"))
            start += n
        cat = torch.cat(outs, dim=0)
        back = torch.empty_like(cat)
        back[order] = cat
        routed = back.view(*ids.shape, -1).type(w.dtype).mul_(w.unsqueeze(-1)).sum(dim=1).type(back.dtype)
        return routed + self._mlp(x, p + ".mlp.shared_experts")

    def forward(self, ids):
        """ids: list[int] of new tokens -> logits [T, V] fp32; keys/values of the new tokens join the cache."""
        cfg, sd = self.cfg, self.sd
        nh, nkv, D, eps = cfg["num_attention_heads"], cfg["num_key_value_heads"], cfg["head_dim"], cfg["rms_norm_eps"]
        T, past = len(ids), self.seq_len()
        h = sd["model.word_embeddings.weight"][torch.tensor([ids])]  # [1, T, H]
        pos = torch.arange(past, past + T)[None]
        cos, sin = self._rotary(pos, h.dtype)
        S = past + T
        mask = torch.full((T, S), float("-inf"), dtype=h.dtype).triu(past + 1)[None, None]  # additive causal mask
        for i in range(cfg["num_hidden_layers"]):
            p = f"model.layers.{i}"
            x = self._rms(h, sd[p + ".input_layernorm.weight"], eps)
            qkv = torch.nn.functional.linear(x, sd[p + ".attention.query_key_value.weight"]).view(1, T, nh + 2 * nkv, D)
            q, k, v = (t.transpose(1, 2) for t in qkv.split([nh, nkv, nkv], dim=-2))
            q = self._rms(q, sd[p + ".attention.query_layernorm.weight"], eps)
            k = self._rms(k, sd[p + ".attention.key_layernorm.weight"], eps)
            q, k = self._rope(q, cos, sin), self._rope(k, cos, sin)
            if len(self.keys) <= i:
                self.keys.append(k)
                self.values.append(v)
            else:
                self.keys[i] = torch.cat([self.keys[i], k], dim=-2)
                self.values[i] = torch.cat([self.values[i], v], dim=-2)
            rep = nh // nkv
            kr = self.keys[i][:, :, None].expand(1, nkv, rep, S, D).reshape(1, nh, S, D)  # repeat_kv
            vr = self.values[i][:, :, None].expand(1, nkv, rep, S, D).reshape(1, nh, S, D)
            att = torch.matmul(q, kr.transpose(2, 3)) / math.sqrt(D) + mask
            att = torch.softmax(att, dim=-1, dtype=torch.float32).to(q.dtype)
            out = torch.matmul(att, vr).transpose(1, 2).contiguous().reshape(1, T, -1)
            h = h + torch.nn.functional.linear(out, sd[p + ".attention.dense.weight"])
            x = self._rms(h, sd[p + ".post_attention_layernorm.weight"], eps)
            if i < cfg["first_k_dense_replace"]:
                h = h + self._mlp(x, p + ".mlp")
            else:
                h = h + self._moe(x.view(T, -1), p).view(1, T, -1)
        h = self._rms(h, sd["model.norm.weight"], eps)
        return torch.nn.functional.linear(h, sd["lm_head.weight"]).float()[0]


def greedy_cached(cfg, sd, prompt, steps):
    """Greedy decode with CachedReference: prompt ids -> `steps` new token ids (no stop ids)."""
    ref = CachedReference(cfg, sd)
    logits = ref.forward(list(prompt))[-1]
    out = []
    for _ in range(steps):
        out.append(int(logits.argmax()))
        logits = ref.forward([out[-1]])[-1]
    return out
