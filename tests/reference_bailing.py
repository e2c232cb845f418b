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
