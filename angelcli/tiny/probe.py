"""Does angel-tiny answer the question it was asked? A topic probe over the built-in demo questions.

Each question in angelcli/data/medical/prompts.jsonl carries "topic": words of which an on-topic answer
contains at least one (case-insensitive substrings, e.g. "diabet" / "blood sugar" / "glucose" for a question
about type 2 diabetes). The probe answers every question greedily, exactly as `angel generate` would (chat
template, default system block, stop at either eos id), and counts the answers that are on topic. None of the
questions appears in any corpus split, so this measures answering, not recall of a training sample.

    report = topic_probe(model, cfg, tok)     -> {"on_topic": n, "total": m, "rate": n/m,
                                                  "sets": {"demo": {...}, "heldout": {...}}, "answers": [...]}
Each answer also says whether it closed its turn, which list items it repeats (repeated_items) and which items
of a run-on list in a sentence it repeats (inline_repeats); each set counts its answers with a repeated item
("repeating", "repeating_inline").
By default the probe asks the demo questions, the held-out phrasings of probe_heldout.jsonl and the blind set
of probe_blind.jsonl.
"""

from __future__ import annotations

import re

from angelcli.data import MEDICAL_DIR, _load_jsonl, load_prompt_rows

load_topic_probes = load_prompt_rows  # [{"prompt", "lang", "topic": [words]}] for every built-in demo question

# Questions written apart from the corpus templates and the demo questions (different wording, lay terms,
# several facts in one question) on conditions and medicines the corpus covers: 14 English, 6 Chinese.
HELDOUT_FILE = MEDICAL_DIR / "probe_heldout.jsonl"
# A blind set (14 English, 6 Chinese): written by someone who saw only the list of record names, never the
# corpus, its templates, the routing frames or the other probe questions; longer, with ages, doses, durations
# and two questions in one, closer to what users type. The held-out phrasings above have been read by the
# sessions that wrote routing frames, so this set is the less biased measure (docs/angel-tiny.md).
BLIND_FILE = MEDICAL_DIR / "probe_blind.jsonl"
# A second blind set, written the same way after the first had been read by a tuning session, and kept out of
# the default probe and out of view: whoever tunes angel-tiny measures a final candidate on it with
# `python -m angelcli.tiny.probe MODEL --set fresh` (counts only; --answers prints the answers, and with them
# the questions, which makes the set no longer blind to whoever reads them).
FRESH_FILE = MEDICAL_DIR / "probe_fresh.jsonl"
# Plain questions in the shape of issue 17's hidden set (28 English, 12 Chinese: two sets of 14 + 6), short to
# medium, each about one condition, symptom, medicine or emergency the corpus covers and named in it (a lay name
# or brand at times): what a new user asks first. Written by a helper from the record names only; two questions
# that matched a training question and one inside a routing question were reworded. Out of the default probe,
# like the fresh set (`--set plain`).
PLAIN_FILE = MEDICAL_DIR / "probe_plain.jsonl"


def _rows(path) -> list[dict]:
    return [dict(row) for row in _load_jsonl(path)]


def load_heldout_probes() -> list[dict]:
    """The held-out phrasings, rows like load_topic_probes'."""
    return _rows(HELDOUT_FILE)


def load_blind_probes() -> list[dict]:
    """The blind set, rows like load_topic_probes'."""
    return _rows(BLIND_FILE)


def load_fresh_probes() -> list[dict]:
    """The second blind set (not part of extended_probes), rows like load_topic_probes'."""
    return _rows(FRESH_FILE)


def load_plain_probes() -> list[dict]:
    """The plain first-questions set (not part of extended_probes), rows like load_topic_probes'."""
    return _rows(PLAIN_FILE)


def extended_probes() -> list[dict]:
    """Demo questions, held-out phrasings, then the blind set; each row tagged "set": "demo" | "heldout" |
    "blind"."""
    return ([dict(r, set="demo") for r in load_topic_probes()]
            + [dict(r, set="heldout") for r in load_heldout_probes()]
            + [dict(r, set="blind") for r in load_blind_probes()])


def is_on_topic(answer: str, topic: list[str]) -> bool:
    """A topic word occurs in the answer; English words must start a word ("diabet" matches "diabetes", but
    "arm" does not match "pharmacist"), Chinese words match anywhere."""
    text = answer.lower()
    return any(re.search(r"(?<![a-z])" + re.escape(w.lower()), text) if w.isascii() else w.lower() in text
               for w in topic)


_ITEM = re.compile(r"^\s*(?:[-*•·]|\d+[.)、]|[(（]\d+[)）])\s*(.+?)\s*$")


def _item_key(item: str) -> str:
    """An item compared without case, spaces and punctuation."""
    return re.sub(r"[\W_]+", "", item.lower())


def _said_again(items: list[str], show=lambda item: item) -> list[str]:
    """show(item) for every item whose key an earlier item of `items` already had."""
    seen, repeats = set(), []
    for item in items:
        key = _item_key(item)
        if key in seen:
            repeats.append(show(item))
        seen.add(key)
    return repeats


def repeated_items(answer: str) -> list[str]:
    """List items (lines led by -, *, •, 1. or (1)) that repeat an earlier item of the same answer, compared
    without case, spaces and punctuation: the "- Tiredness ... - Tiredness" failure of issue 17."""
    return _said_again([m.group(1) for m in map(_ITEM.match, answer.splitlines()) if m])


_SENTENCE = re.compile(r"(?<=[.!?])\s+|[。！？\n]")
_INLINE_SEP = re.compile(r"\s*[,，、;；]\s*|\s+(?:and|or)\s+|[和或及]")


def inline_repeats(answer: str) -> list[str]:
    """Items of a run-on list that repeat an earlier item of the same list: "the main symptoms are: tiredness,
    feeling very thirsty, … and tiredness." A list is the text after a sentence's last colon (or the whole
    sentence) split at commas, semicolons, 、 and a final and/or/和; only lists of three or more items count.
    Reported by the probe next to repeated_items, not gated by the tests (docs/angel-tiny.md)."""
    repeats = []
    for sentence in _SENTENCE.split(answer):
        items = [i for i in _INLINE_SEP.split(re.split(r"[:：]", sentence)[-1]) if len(_item_key(i)) >= 2]
        if len(items) >= 3:
            repeats += _said_again(items, show=_item_key)
    return repeats


def topic_probe(model, cfg, tok, max_new_tokens: int = 96, probes: list[dict] | None = None) -> dict:
    """Greedy answers to the demo questions with the torch engine on `model` (left in eval mode)."""
    from angelcli.engine import Engine, SamplingParams
    from angelcli.tokenizer import build_messages, encode, render_chat

    model.eval()
    probes = extended_probes() if probes is None else probes
    eos = tuple(tok.convert_tokens_to_ids(["<|endoftext|>", "<|role_end|>"]))
    prompts = [encode(tok, render_chat(tok, build_messages(p["prompt"]))) for p in probes]
    params = SamplingParams(max_new_tokens=max_new_tokens, stop_ids=eos)
    engine = Engine(model, cfg, max_seq_len=max(len(p) for p in prompts) + max_new_tokens + 1)
    tokens: list[list[int]] = [[] for _ in probes]
    closed = [False] * len(probes)
    for i, step in engine.generate_batch(prompts, params):
        if step.finish_reason == "stop":
            closed[i] = True  # ended its turn with an eos id within the budget
        else:
            tokens[i].append(step.token_id)
    answers = []
    for p, ids, done in zip(probes, tokens, closed):
        text = tok.decode(ids)
        answers.append({"prompt": p["prompt"], "lang": p.get("lang"), "on_topic": is_on_topic(text, p["topic"]),
                        "closed": done, "repeats": repeated_items(text), "inline_repeats": inline_repeats(text),
                        "answer": text})
    hits = sum(a["on_topic"] for a in answers)
    sets = {}
    for p, a in zip(probes, answers):
        a["set"] = p.get("set", "demo")
        row = sets.setdefault(a["set"], {"on_topic": 0, "total": 0, "closed": 0, "repeating": 0,
                                         "repeating_inline": 0})
        row["on_topic"] += a["on_topic"]
        row["total"] += 1
        row["closed"] += a["closed"]
        row["repeating"] += bool(a["repeats"])
        row["repeating_inline"] += bool(a["inline_repeats"])
    return {"on_topic": hits, "total": len(answers), "rate": hits / max(1, len(answers)), "sets": sets,
            "answers": answers}


def main(argv: list[str] | None = None) -> None:
    """python -m angelcli.tiny.probe MODEL [--set all|fresh|plain] [--answers]: per-set counts as JSON on stdout."""
    import argparse
    import json
    import sys

    import torch

    from angelcli.loader import load_model
    from angelcli.tokenizer import load_tokenizer

    ap = argparse.ArgumentParser(prog="python -m angelcli.tiny.probe")
    ap.add_argument("model")
    ap.add_argument("--set", choices=("all", "fresh", "plain"), default="all",
                    help="all = demo, held-out and blind sets (what tiny-train reports); fresh = the second blind "
                         "set; plain = short first questions in the shape of issue 17's hidden set")
    ap.add_argument("--answers", action="store_true", help="also print every question and answer")
    ap.add_argument("--threads", type=int, default=1)
    a = ap.parse_args(argv)
    torch.set_num_threads(a.threads)
    model, cfg, _ = load_model(a.model, dtype=torch.float32)
    extra = {"fresh": load_fresh_probes, "plain": load_plain_probes}
    rows = [dict(r, set=a.set) for r in extra[a.set]()] if a.set in extra else None
    report = topic_probe(model, cfg, load_tokenizer(a.model), probes=rows)
    if not a.answers:
        report = {k: v for k, v in report.items() if k != "answers"}
    json.dump(report, sys.stdout, ensure_ascii=False, indent=1)
    sys.stdout.write("\n")


if __name__ == "__main__":
    main()
