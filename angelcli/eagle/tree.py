"""Tree drafting for greedy speculative decoding: EAGLE-2's dynamic draft tree on angel's engine.

A chain proposes one token per depth, so a round ends at the first depth where the draft's top token is not
the target's; the draft's second or third choice is often right there (angel-tiny's draft: top-1 agrees
67% of the time at depth 1). A tree verifies several candidates per depth in the same target pass:

    1. expand (depth k): the draft scores its top `topk` tokens after x; at each further depth it runs the
       `topk` best nodes so far (beam, by cumulative draft log-probability) as one batch of tree tokens in
       its own cache and scores their top `topk` children;
    2. select: the `n` best nodes of everything scored (a node's parent scores at least as well, so the
       set is closed under parents), kept in creation order: parents before children;
    3. verify: the target runs once over [x, nodes] with each node at position past + depth, seeing the
       cached prefix, its ancestors and itself (a tree mask through TreeView, which both forward paths
       read as a ragged cache);
    4. walk: from x, follow the child whose token is the target's argmax, as long as one is; emit the
       path and the target's argmax after it (correction or bonus), so output is plain greedy exactly;
    5. compact: the path's K/V move to the slots right after the prefix (KVCache.compact) and everything
       else is forgotten; the draft drops its tree entries and re-extends itself from the target's
       features of x and the path, as after a chain round.

Shapes: N tree nodes (root x excluded), k depth, H draft hidden, Vd draft vocab. One sequence (B = 1):
batches and sampling keep the chain (speculative.py).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F


@dataclass
class DraftTree:
    tokens: torch.Tensor  # [N] target ids, parents before children
    parents: list[int]  # per node: index of its parent node, -1 = the root x
    depths: list[int]  # per node: 1..k
    fed: int  # speculative entries the expansion appended to the draft cache


def tree_capacity(k: int, topk: int) -> int:
    """Nodes a depth-k expansion scores: topk at depth 1, then topk children of each of the topk beam nodes
    at every further depth."""
    return topk + (k - 1) * topk * topk


def tree_mask(parents: list[int], device=None) -> torch.Tensor:
    """[N+1, N+1] bool with the root x at 0: row i sees column j iff j is i, an ancestor of i, or the root."""
    n = len(parents) + 1
    mask = torch.zeros(n, n, dtype=torch.bool)
    mask[:, 0] = True
    for i, p in enumerate(parents, start=1):
        mask[i] = mask[p + 1] if p >= 0 else mask[0]
        mask[i, i] = True
    return mask.to(device) if device is not None else mask


def greedy_walk(parents: list[int], tokens: list[int], best: list[int]) -> list[int]:
    """Accepted path: node indices from the root down while a child's token equals the target's argmax.
    best[i] is the argmax after tree position i (0 = root x, i = node i-1)."""
    children: dict[int, list[int]] = {}
    for i, p in enumerate(parents):
        children.setdefault(p, []).append(i)
    path, cur = [], -1
    while True:
        want = best[cur + 1]
        nxt = next((c for c in children.get(cur, ()) if tokens[c] == want), None)
        if nxt is None:
            return path
        path.append(nxt)
        cur = nxt


def select_nodes(scores: torch.Tensor, parents: list[int], n: int) -> list[int]:
    """Indices of the n best candidates (stable: earlier wins ties), closed under parents, ascending."""
    order = torch.sort(-scores, stable=True).indices[:n].tolist()
    keep = set(order)
    for i in order:  # a child never outscores its parent, so this adds nothing unless scores tie oddly
        p = parents[i]
        while p >= 0 and p not in keep:
            keep.add(p)
            p = parents[p]
    return sorted(keep)


@torch.inference_mode()
def propose_tree(drafter, k: int, topk: int, n: int) -> DraftTree:
    """Expand the draft's tree for one round (see the module docstring). drafter: an Eagle3Drafter with
    pending target features; its cache gains the stable entries and `fed` speculative ones."""
    d, cache = drafter.draft, drafter.cache
    feats, toks = drafter.pending
    feats = feats.to(d.fc.weight.dtype)
    dev = toks.device
    start = cache.seq_len
    pos = torch.arange(start, start + toks.shape[1], device=dev)[None]
    _, h = d(toks, d.fuse(feats), pos, cache, head=False)
    drafter.pending = (feats[:, :0], toks[:, :0])
    stable = cache.seq_len
    logp = F.log_softmax(d.logits(h[:, -1])[0], -1)  # [Vd]
    score, ids = logp.topk(min(topk, logp.numel()))
    cand_tok, cand_score = [d.to_target_ids(ids)], [score]
    parents = [-1] * ids.numel()
    depths = [1] * ids.numel()
    entry_of: dict[int, int] = {}  # candidate -> its speculative entry in the draft cache
    frontier = list(range(ids.numel()))
    front_hidden = h[:, -1:].expand(1, len(frontier), -1)
    fed = 0
    for depth in range(1, k):
        T = len(frontier)
        mask = torch.zeros(T, stable + fed + T, dtype=torch.bool, device=dev)
        mask[:, :stable] = True
        for row, c in enumerate(frontier):
            p = c
            while p >= 0:  # ancestors (all fed earlier) and the node itself (fed now)
                mask[row, stable + (entry_of[p] if p != c else fed + row)] = True
                p = parents[p]
        all_tok = torch.cat(cand_tok)
        pos = torch.full((1, T), stable + depth - 1, device=dev)  # as the chain's step at this depth
        logits, hout = d(all_tok[frontier][None], front_hidden, pos, cache, mask=mask)
        for row, c in enumerate(frontier):
            entry_of[c] = fed + row
        fed += T
        lp = F.log_softmax(logits[0], -1)  # [T, Vd]
        cs, ci = lp.topk(min(topk, lp.shape[-1]), -1)
        total = torch.cat(cand_score)[frontier][:, None] + cs  # [T, topk]
        base = len(parents)
        cand_tok.append(d.to_target_ids(ci.reshape(-1)))
        cand_score.append(total.reshape(-1))
        for row, c in enumerate(frontier):
            parents.extend([c] * ci.shape[1])
            depths.extend([depth + 1] * ci.shape[1])
        best = torch.sort(-total.reshape(-1), stable=True).indices[:topk].tolist()
        frontier = [base + b for b in best]
        front_hidden = hout[0, [b // ci.shape[1] for b in best]][None]
    drafter.speculative = fed
    all_tok, all_score = torch.cat(cand_tok), torch.cat(cand_score)
    keep = select_nodes(all_score, parents, n)
    where = {c: i for i, c in enumerate(keep)}
    return DraftTree(tokens=all_tok[keep], parents=[where[parents[c]] if parents[c] >= 0 else -1 for c in keep],
                     depths=[depths[c] for c in keep], fed=fed)


class TreeView:
    """A KVCache seen by one tree-verification forward: new token i sits at position past + depth_i and sees
    the prefix plus its tree ancestors. Both forward paths take positions and mask from a ragged cache, so
    the model needs no tree code; writes land in the contiguous slots past .. past + N, as in a chain."""

    is_ragged = True

    def __init__(self, cache, depths: list[int], mask: torch.Tensor):
        self.cache, self.past = cache, cache.seq_len
        self.depths = torch.tensor(depths, device=cache.device)
        self.mask = mask

    def positions(self, T: int) -> torch.Tensor:
        return (self.past + self.depths)[None]  # [1, T]

    def ragged_mask(self, T: int) -> torch.Tensor:
        prefix = torch.ones(T, self.past, dtype=torch.bool, device=self.mask.device)
        return torch.cat([prefix, self.mask], 1)[None, None]  # [1, 1, T, past + T]

    def update(self, layer: int, k: torch.Tensor, v: torch.Tensor):
        return self.cache.update(layer, k, v)

    def advance(self, n: int) -> None:
        self.cache.advance(n)


def tree_supported(cache) -> bool:
    """Tree rounds need a one-row contiguous cache that can compact (the torch backend's KVCache)."""
    return hasattr(cache, "compact") and getattr(cache, "contiguous", False) and cache.batch == 1
