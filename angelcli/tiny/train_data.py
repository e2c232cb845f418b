"""Token streams for angel-tiny training: conversations rendered with the chat template, with per-token loss
weights and the offset where each conversation starts.

Why weights and starts: a small model learns to answer *the question asked* only if (1) every training row
begins at a conversation start, so the question is always in context when its answer is scored (random
windows cut questions off and teach answers that ignore them), and (2) the loss is on the assistant's tokens
(content and the closing <|role_end|>), not spent on predicting users' questions and the template.

    stream = conversation_stream(tok, samples, prompt_weight=0.0)
    stream.ids      [N] int      every conversation rendered and concatenated
    stream.weights  [N] float    weight of predicting ids[j] (1 for answer tokens, prompt_weight otherwise)
    stream.starts   [C] int      offset of each conversation in ids
"""

from __future__ import annotations

from dataclasses import dataclass

@dataclass
class Stream:
    ids: list[int]
    weights: list[float]
    starts: list[int]
    kinds: list[str | None]  # each conversation's "kind" (condition, icd10, record, ...) where the sample has one

    @property
    def answer_tokens(self) -> int:
        return sum(1 for w in self.weights if w == 1.0)


def conversation_stream(tok, samples: list[dict], prompt_weight: float = 0.0) -> Stream:
    """Render each conversation (chat template, no generation prompt), concatenate, weight the answers
    (the assistant spans of angelcli.eagle.data.assistant_mask, which EAGLE3 training supervises too)."""
    from angelcli.eagle.data import assistant_mask
    from angelcli.tokenizer import render_chat

    ids: list[int] = []
    weights: list[float] = []
    starts: list[int] = []
    kinds: list[str | None] = []
    for s in samples:
        conv = assistant_mask(tok, render_chat(tok, s["messages"], add_generation_prompt=False))
        starts.append(len(ids))
        kinds.append(s.get("kind"))
        ids.extend(conv.ids)
        weights.extend(1.0 if m else prompt_weight for m in conv.mask)
    return Stream(ids, weights, starts, kinds)


def row_starts(stream: Stream, seq_len: int) -> list[int]:
    """Conversation starts that leave room for a full row of seq_len + 1 tokens."""
    return [s for s in stream.starts if s + seq_len + 1 <= len(stream.ids)]


def question_mask(ids: list[int], opener: list[int], end: int) -> list[bool]:
    """True for the tokens of users' messages: after each `opener` run (<role> HUMAN </role>) up to the next
    `end` (<|role_end|>), exclusive."""
    out = [False] * len(ids)
    n, inside = len(opener), False
    for j, t in enumerate(ids):
        if inside:
            if t == end:
                inside = False
            else:
                out[j] = True
        elif t == opener[-1] and ids[max(0, j - n + 1) : j + 1] == opener:
            inside = True
    return out


def batches(stream: Stream, batch: int, seq_len: int, generator, kind_weights: dict[str, float] | None = None,
            noise: tuple[list[bool], float, int] | None = None):
    """Endless (x [B, L+1] int64, w [B, L+1] fp32) rows, each starting at a random conversation start and
    running on into the following conversations (packing, no padding). kind_weights: relative chance of a row
    starting at a conversation of that kind (default 1.0), e.g. fewer rows led by ICD-10 code lookups.

    noise (question_mask over the stream, p, seed): each question token of a row is replaced, with chance p,
    by a token drawn from all question tokens of the stream (a word the model has not seen there), and is not
    scored; drawn from its own generator, so the rows picked are those of a run without noise."""
    import torch

    ids = torch.tensor(stream.ids, dtype=torch.long)
    weights = torch.tensor(stream.weights, dtype=torch.float32)
    kind_of = dict(zip(stream.starts, stream.kinds))
    usable = row_starts(stream, seq_len)
    if not usable:
        raise ValueError(f"no conversation start leaves room for a row of {seq_len + 1} tokens")
    starts = torch.tensor(usable, dtype=torch.long)
    chance = torch.tensor([(kind_weights or {}).get(kind_of[s], 1.0) for s in usable], dtype=torch.float64)
    offsets = torch.arange(seq_len + 1)
    if noise is not None:
        asked = torch.tensor(noise[0], dtype=torch.bool)
        pool = ids[asked]
        noise_gen = torch.Generator().manual_seed(noise[2])
    while True:
        pick = starts[torch.multinomial(chance, batch, replacement=True, generator=generator)]
        index = pick[:, None] + offsets[None]  # [B, L+1]
        x, w = ids[index], weights[index]
        if noise is not None and noise[1] > 0:
            hit = asked[index] & (torch.rand(index.shape, generator=noise_gen) < noise[1])
            x = torch.where(hit, pool[torch.randint(len(pool), index.shape, generator=noise_gen)], x)
            w = torch.where(hit, torch.zeros_like(w), w)
        yield x, w


def eval_rows(stream: Stream, seq_len: int, max_rows: int | None = None):
    """Non-overlapping held-out rows, each starting at a conversation start (the next row starts at the first
    conversation that begins after this row ends). -> (x [R, L+1], w [R, L+1])."""
    import torch

    ids = torch.tensor(stream.ids, dtype=torch.long)
    weights = torch.tensor(stream.weights, dtype=torch.float32)
    rows, next_free = [], 0
    for s in row_starts(stream, seq_len):
        if s < next_free:
            continue
        rows.append(s)
        next_free = s + seq_len
        if max_rows is not None and len(rows) >= max_rows:
            break
    index = torch.tensor(rows, dtype=torch.long)[:, None] + torch.arange(seq_len + 1)[None]
    return ids[index], weights[index]


def weighted_loss(model, x, w, **forward_kwargs):
    """Mean cross-entropy of predicting x[:, 1:] weighted by w[:, 1:], with logits computed only where the
    weight is non-zero. -> (loss, ForwardOutput)."""
    import torch.nn.functional as F

    target_w = w[:, 1:]
    mask = target_w > 0
    out = model(x[:, :-1], logits_mask=mask, **forward_kwargs)
    per_token = F.cross_entropy(out.logits, x[:, 1:][mask], reduction="none")
    wm = target_w[mask]
    return (per_token * wm).sum() / wm.sum().clamp_min(1e-9), out
