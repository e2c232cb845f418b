"""Run one model on a task's items: log-likelihood multiple choice, or generation through the chat template.

    results = run_items(rt, task_data, items, EvalOptions(mode="loglikelihood", fewshot=5, seed=1234))
    results[i] = {"id", "subject", "gold", "pred", "correct", ...}

Log-likelihood (default): every option is scored as a continuation of the prompt (angelcli/eval/scorer.py,
batched); the prediction is the option with the highest total log-probability (acc) and, separately, the
highest log-probability per character of the option (acc_norm, as lm-eval). Multiple-answer questions
have no single continuation and are left out (the report counts them).
Generation (--generate): the question goes through the model's chat template, greedy decoding, and the answer
letter (or yes/no/maybe) is read from the reply (extract_answer); for chat models whose log-likelihood of a
bare " A" under-reports what they know.
"""

from __future__ import annotations

import re
import time
from dataclasses import dataclass

from angelcli.eval.items import Item, TaskData, chat_messages, continuations, loglik_context


@dataclass
class EvalOptions:
    mode: str = "loglikelihood"  # | "generate"
    fewshot: int = 0
    seed: int = 1234
    batch_size: int = 16  # questions per engine call (their options batch together)
    batch_tokens: int = 8192  # scorer: padded tokens per forward
    max_new_tokens: int = 32  # generate mode


def select_items(td: TaskData, mode: str, limit: int | None, seed: int | None) -> tuple[list[Item], int]:
    """Items to run and how many multiple-answer ones the log-likelihood mode leaves out. --limit N takes the
    first N (lm-eval's behaviour) or, with --seed, a seeded random sample of N in file order."""
    items = td.items
    skipped = 0
    if mode == "loglikelihood":
        keep = [i for i in items if not i.multi_answer]
        skipped = len(items) - len(keep)
        items = keep
    if limit is not None and limit < len(items):
        if seed is None:
            items = items[:limit]
        else:
            import random

            pick = sorted(random.Random(seed).sample(range(len(items)), limit))
            items = [items[i] for i in pick]
    return items, skipped


def encode_pair(tok, context: str, continuation: str) -> tuple[list[int], list[int]]:
    """lm-eval's TemplateLM._encode_pair: trailing spaces move to the continuation, the whole string is
    encoded and the continuation is what follows the context's own encoding."""
    from angelcli.tokenizer import encode

    n = len(context) - len(context.rstrip())
    if n:
        context, continuation = context[:-n], context[-n:] + continuation
    whole = encode(tok, context + continuation)
    ctx = encode(tok, context)
    return ctx, whole[len(ctx):]


def _loglik_chunk(rt, td: TaskData, chunk: list[tuple[int, Item]], opts: EvalOptions) -> list[dict]:
    from angelcli.eval.scorer import loglikelihoods

    tok = rt.tokenizer
    reqs, spans = [], []
    for index, item in chunk:
        ctx = loglik_context(item, td.shots(item, opts.fewshot, opts.seed, index))
        a = len(reqs)
        for cont in continuations(item):
            reqs.append(encode_pair(tok, ctx, cont))
        spans.append((a, len(reqs)))
    scores = loglikelihoods(rt.engine, reqs, batch_tokens=opts.batch_tokens)
    out = []
    for (index, item), (a, b) in zip(chunk, spans):
        lls = [s[0] for s in scores[a:b]]
        pred = max(range(len(lls)), key=lambda k: lls[k])
        norm = [ll / len(c) for ll, c in zip(lls, item.choices)]
        pred_norm = max(range(len(norm)), key=lambda k: norm[k])
        out.append({"id": item.id, "subject": item.subject, "gold": item.answer, "pred": item.choices[pred],
                    "correct": pred == item.gold, "correct_norm": pred_norm == item.gold,
                    "loglikelihoods": [round(x, 6) for x in lls]})
    return out


_PATTERNS = [r"答案(?:是|为|应为|选)?\s*[:：]?\s*([A-J]+)", r"answer\s*(?:is|:)?\s*\(?([A-J])\b",
             r"^\s*\(?([A-J])(?:[\.\)、:：\s]|$)", r"(?:选|选择)\s*([A-J]+)"]


def extract_answer(text: str, choices: list[str], multi: bool = False) -> str | None:
    """The answer a reply gives: letters for lettered options (a set for multiple-answer questions, sorted),
    else the first of the choice words (yes / no / maybe) it mentions. None when it names none."""
    text = re.sub(r"<think>.*?</think>", "", text, flags=re.S).strip()
    if not all(len(c) == 1 for c in choices):
        low = text.lower()
        found = [(m.start(), c) for c in choices for m in [re.search(rf"\b{re.escape(c)}\b", low)] if m]
        return min(found)[1] if found else None
    for pat in _PATTERNS:
        m = re.search(pat, text, flags=re.I | re.M)
        if m:
            got = "".join(sorted({c for c in m.group(1).upper() if c in choices}))
            if got:
                return got if multi else got[0]
    m = re.search(r"(?<![A-Za-z])([A-J])(?![A-Za-z])", text)
    return m.group(1) if m and m.group(1) in choices else None


def _generate_chunk(rt, td: TaskData, chunk: list[tuple[int, Item]], opts: EvalOptions) -> list[dict]:
    from angelcli.engine.sampling import SamplingParams
    from angelcli.tokenizer import encode, render_chat

    tok = rt.tokenizer
    prompts = [encode(tok, render_chat(tok, chat_messages(item, td.shots(item, opts.fewshot, opts.seed, index))))
               for index, item in chunk]
    params = SamplingParams(temperature=0.0, max_new_tokens=opts.max_new_tokens, stop_ids=tuple(rt.eos_ids))
    ids: list[list[int]] = [[] for _ in chunk]
    for r, step in rt.engine.generate_batch(prompts, params):
        if step.finish_reason != "stop":
            ids[r].append(step.token_id)
    out = []
    for (index, item), gen in zip(chunk, ids):
        reply = tok.decode(gen, skip_special_tokens=True)
        pred = extract_answer(reply, item.choices, item.multi_answer)
        out.append({"id": item.id, "subject": item.subject, "gold": item.answer, "pred": pred,
                    "correct": pred == item.answer, "reply": reply})
    return out


def run_items(rt, td: TaskData, items: list[Item], opts: EvalOptions, label: str = "eval") -> tuple[list[dict], float]:
    """-> (per-item results in item order, seconds). Progress (with ETA) on stderr."""
    from angelcli.console import progress

    step = _generate_chunk if opts.mode == "generate" else _loglik_chunk
    index_of = {id(it): n for n, it in enumerate(td.items)}
    results: list[dict] = []
    start = time.perf_counter()
    with progress(label, total=len(items), unit="questions") as bar:
        for a in range(0, len(items), max(1, opts.batch_size)):
            chunk = [(index_of.get(id(it), a + k), it) for k, it in enumerate(items[a : a + opts.batch_size])]
            results += step(rt, td, chunk, opts)
            bar.advance(len(chunk))
    return results, time.perf_counter() - start
