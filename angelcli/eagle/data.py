"""Training and evaluation data for EAGLE3 drafts: token ids plus a loss mask over assistant tokens.

Sources (`--data`):
    medical   the built-in corpus (angelcli.data): "train" to train, "eval" held out
    PATH      a user .jsonl / .txt (angelcli.data.read_user_data); a seeded 5% is held out
    random    random token sequences over the whole target vocabulary (quick checks on any fixture)

Conversations are rendered with the model's own chat template, exactly as serving renders them (the draft
conditions on target features of that text). The loss mask marks assistant tokens: everything after
`<role>ASSISTANT</role>` up to and including the closing `<|role_end|>` (spec eagle3.md §2.1), found through
the fast tokenizer's character offsets, so ids are those of encoding the whole text at once.
Plain-text samples are supervised on every token.
"""

from __future__ import annotations

import random
import re
from dataclasses import dataclass
from pathlib import Path

from angelcli.errors import UsageError

ASSISTANT_SPAN = re.compile(r"<role>ASSISTANT</role>(.*?)(<\|role_end\|>|$)", re.S)
HELD_OUT_FRACTION = 0.05


@dataclass
class Sample:
    ids: list[int]
    mask: list[int]  # 1 where the token is a learning target (assistant text)

    def to_dict(self) -> dict:
        return {"ids": self.ids, "mask": self.mask}


def assistant_mask(tok, text: str, max_len: int | None = None) -> Sample:
    enc = tok(text, add_special_tokens=False, return_offsets_mapping=True)
    ids, offsets = list(enc["input_ids"]), enc["offset_mapping"]
    spans = [(m.start(1), m.end(2)) for m in ASSISTANT_SPAN.finditer(text)]
    mask = []
    for a, b in offsets:
        mask.append(int(any(s <= a < e for s, e in spans) and b > a))
    if max_len:
        ids, mask = ids[:max_len], mask[:max_len]
    return Sample(ids, mask)


def encode_samples(tok, samples: list[dict], max_len: int) -> list[Sample]:
    """angelcli.data samples ({"messages"} or {"text"}) -> Samples; too-short ones are dropped."""
    out = []
    for s in samples:
        if "messages" in s:
            s = assistant_mask(tok, tok.apply_chat_template(s["messages"], tokenize=False), max_len)
        else:
            ids = list(tok.encode(s["text"], add_special_tokens=False))[:max_len]
            s = Sample(ids, [1] * len(ids))
        if len(s.ids) >= 4 and sum(s.mask) > 0:
            out.append(s)
    return out


def random_samples(vocab_size: int, n: int, length: int, seed: int) -> list[Sample]:
    rng = random.Random(seed)
    out = []
    for _ in range(n):
        L = rng.randint(max(4, length // 2), max(4, length))
        ids = [rng.randrange(vocab_size) for _ in range(L)]
        out.append(Sample(ids, [1] * L))
    return out


def load_dicts(spec: str, seed: int) -> tuple[list[dict], list[dict]]:
    """(train, held-out) sample dicts for --data medical | PATH."""
    from angelcli.data import load_split, read_user_data

    if spec == "medical":
        return load_split("train"), load_split("eval")
    if not Path(spec).exists():
        raise UsageError(f"--data {spec}: not 'medical', 'random' or an existing file")
    rows = read_user_data(spec)
    if len(rows) < 2:
        raise UsageError(f"--data {spec}: at least 2 samples are needed (one is held out)")
    order = list(range(len(rows)))
    random.Random(seed).shuffle(order)
    n_eval = min(200, max(1, round(len(rows) * HELD_OUT_FRACTION)))
    return [rows[i] for i in order[n_eval:]], [rows[i] for i in order[:n_eval]]


def prompt_of(sample: dict) -> list[dict] | None:
    """The conversation up to (not including) its last assistant turn; None without one."""
    msgs = sample.get("messages")
    if not msgs:
        return None
    last = max((i for i, m in enumerate(msgs) if m["role"] == "assistant"), default=None)
    if last is None:
        return msgs if msgs[-1]["role"] == "user" else None
    return msgs[:last] if last > 0 else None


def eval_prompts(tok, spec: str, n: int, seed: int = 0, vocab_size: int | None = None,
                 length: int = 24) -> list[list[int]]:
    """Held-out prompts as token ids (the eval split's conversations cut before the last answer)."""
    if spec == "random":
        return [s.ids for s in random_samples(vocab_size, n, length, seed + 7919)]
    from angelcli.tokenizer import encode

    _, held = load_dicts(spec, seed)
    out = []
    for s in held:
        msgs = prompt_of(s)
        if msgs:
            out.append(encode(tok, tok.apply_chat_template(msgs, tokenize=False, add_generation_prompt=True)))
        if len(out) >= n:
            break
    if not out:
        raise UsageError(f"--data {spec}: no held-out conversation to prompt with")
    return out


def regenerate(rt, samples: list[dict], max_new_tokens: int, progress=None, batch_size: int = 32) -> list[Sample]:
    """Let the target write every assistant turn (greedy), as serving would, turn by turn.

    One Sample per assistant turn: its rendered history (with earlier answers already regenerated) plus the
    target's own token ids for the answer, supervised. Token level, so no decode/encode round trip changes
    the ids the target produced. Conversations advance together: every pass answers the next assistant turn
    of up to `batch_size` conversations in one engine batch (a turn's history needs the previous answer, so
    turns of one conversation stay in order). Samples come out conversation by conversation, turn by turn.
    """
    from angelcli.engine.sampling import SamplingParams
    from angelcli.tokenizer import encode

    tok = rt.tokenizer
    stop = tuple(rt.eos_ids)
    params = SamplingParams(max_new_tokens=max_new_tokens, stop_ids=stop)
    convs = [s["messages"] for s in samples if "messages" in s]
    history: list[list[dict]] = [[] for _ in convs]
    cursor = [0] * len(convs)  # next message of each conversation
    made: list[list[Sample]] = [[] for _ in convs]

    def next_prompt(c: int) -> list[int] | None:
        """Move conversation c up to its next answerable assistant turn; None when it has none left."""
        msgs = convs[c]
        while cursor[c] < len(msgs):
            m = msgs[cursor[c]]
            if m["role"] != "assistant":
                history[c].append(m)
            elif history[c]:
                return encode(tok, tok.apply_chat_template(history[c], tokenize=False, add_generation_prompt=True))
            cursor[c] += 1  # an assistant turn with no history before it is skipped
        return None

    live = list(range(len(convs)))
    while live:
        prompts = {c: next_prompt(c) for c in live}
        finished = [c for c in live if prompts[c] is None]
        if progress is not None and finished:
            progress.advance(len(finished))
        live = [c for c in live if prompts[c] is not None]
        for at in range(0, len(live), batch_size):
            group = live[at : at + batch_size]
            gens: list[list[int]] = [[] for _ in group]
            for row, step in rt.engine.generate_batch([prompts[c] for c in group], params):
                gens[row].append(step.token_id)
            for c, gen in zip(group, gens):
                if gen:
                    made[c].append(Sample(prompts[c] + gen, [0] * len(prompts[c]) + [1] * len(gen)))
                text_ids = gen[:-1] if gen and gen[-1] in stop else gen
                history[c].append({"role": "assistant", "content": tok.decode(text_ids)})
                cursor[c] += 1
    return [sample for per_conv in made for sample in per_conv]


def token_counts(samples: list[Sample], vocab_size: int):
    """Frequency of every target id among supervised tokens [V] (int64)."""
    import torch

    counts = torch.zeros(vocab_size, dtype=torch.int64)
    for s in samples:
        ids = torch.tensor([i for i, m in zip(s.ids, s.mask) if m], dtype=torch.int64)
        if ids.numel():
            counts += torch.bincount(ids, minlength=vocab_size)[:vocab_size]
    return counts
