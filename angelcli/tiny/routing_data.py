"""Routing examples for angel-tiny training: many more wordings of each question, supervised only on the
opening of the answer that names the record.

Why: the v5 model answers a new wording about the wrong record ("my toddler's temperature" -> coronary artery
disease): it has seen each (record, intent) asked 5-9 ways, so the words around the name still predict the
answer. Which record an answer is about is decided in its first few tokens (the anchor "Fever: ...",
"Statins (atorvastatin): ...", or "... one possibility is gout."); the rest of the answer follows from those
tokens, and the corpus already teaches it. So a routing example is a question in one of many further
wordings (routing_frames.py) followed by only the opening of its answer: the anchor and a few words of the
intent's opener. Loss is on those tokens alone; the answer is cut there and the next conversation of the
packed row follows, with weight 0 on its first token (nothing learns "a cut answer is followed by a new
conversation"). A routing example costs ~50 tokens where a whole conversation costs ~150-250, so a fifth of
the training rows holds several times the corpus's wordings.

The examples are built from the knowledge base and the v5 answer templates with their own seeded stream; they
are training data only (never written to the corpus files, so the EAGLE3 draft and `angel quantize`
calibration see the corpus as it is).

    samples = routing_samples(seed=0)       -> [{"messages", "lang", "kind": "routing", "supervise_chars"}]
    stream  = routing_stream(tok, samples)  -> train_data.Stream, answers cut after their supervised opening
    train   = join_streams(stream, corpus_stream)
"""

from __future__ import annotations

import random

from angelcli.tiny.routing_frames import CASE, FOLLOW, LEAD, NAMED, TRIAGE, TRIAGE_NAMES, WHO

PER_INTENT = 4  # named questions per (record, intent)
PER_LEAD = 4  # two-sentence questions per record
PER_CASE = {"en": 6, "zh": 6}  # symptom descriptions per condition
PER_TRIAGE = 10  # questions per named emergency / first-aid item
OPENING_CHARS = {"en": 40, "zh": 14}  # answer characters supervised after the name
KIND_WEIGHT = 0.45  # chance of a training row starting at a routing example, relative to a conversation's 1.0


def _fill(rng: random.Random, frame: str, name: str, lang: str) -> str:
    text = frame.replace("{N}", name[:1].upper() + name[1:]).replace("{n}", name)
    return text.replace("{who}", rng.choice(WHO[lang]))


def _supervised(answer: str, names: list[str], extra: int) -> int:
    """Characters of the answer to supervise: through the first name of the record it mentions, plus `extra`."""
    folded = answer.casefold()
    ends = [folded.find(n.casefold()) + len(n) for n in names if folded.find(n.casefold()) >= 0]
    return min(len(answer), (min(ends) if ends else 0) + extra)


def routing_samples(seed: int = 0, kb: dict | None = None) -> list[dict]:
    """Routing examples for every condition, symptom and medicine record and every named emergency item
    (routing_frames.TRIAGE_NAMES) in both languages, in a fixed order. kb: corpus.kb_for(5) by default."""
    from angelcli.tiny import corpus_templates_en, corpus_templates_zh
    from angelcli.tiny.corpus import SYSTEM_PROMPT, kb_for
    from angelcli.tiny.corpus_v3 import dedupe_reply, record_answer
    from angelcli.tiny.corpus_v4 import add_noise, anchor

    kb = kb or kb_for(5)
    rng = random.Random(seed + 17)  # a stream of its own: the corpus builder's draws are untouched
    out: list[dict] = []

    def add(lang: str, question: str, answer: str, names: list[str], extra: int) -> None:
        if rng.random() < 0.5:
            question = add_noise(rng, question, lang)
        msgs = [{"role": "system", "content": SYSTEM_PROMPT}] if rng.random() < 0.5 else []
        answer = dedupe_reply(answer)
        msgs += [{"role": "user", "content": question}, {"role": "assistant", "content": answer}]
        out.append({"messages": msgs, "lang": lang, "kind": "routing",
                    "supervise_chars": _supervised(answer, names, extra)})

    for lang, T in (("en", corpus_templates_en), ("zh", corpus_templates_zh)):
        for kind, group in (("condition", "conditions"), ("symptom", "symptoms"), ("medicine", "medicines")):
            for rec in kb[lang][group]:
                names = [rec["name"], *rec.get("aka", [])]
                intents = [i for (k, i) in NAMED[lang] if k == kind]
                for intent in intents:
                    for _ in range(PER_INTENT):
                        name = rng.choice(names)
                        q = _fill(rng, rng.choice(NAMED[lang][(kind, intent)]), name, lang)
                        a = anchor(record_answer(rng, T, kind, rec, intent), name, lang, rec["name"])
                        add(lang, q, a, names, OPENING_CHARS[lang])
                follows = [key for key in FOLLOW[lang] if key[0] == kind]
                for _ in range(PER_LEAD if follows else 0):
                    name, key = rng.choice(names), rng.choice(follows)
                    sep = "" if lang == "zh" else " "
                    q = _fill(rng, rng.choice(LEAD[lang][kind]), name, lang) + sep + rng.choice(FOLLOW[lang][key])
                    a = anchor(record_answer(rng, T, kind, rec, key[1]), name, lang, rec["name"])
                    add(lang, q, a, names, OPENING_CHARS[lang])
                if kind == "condition":
                    for _ in range(PER_CASE[lang]):
                        turns = T.condition_case(rng, rec)  # the v5 case answer: hedge, then the possibility
                        if not turns:
                            break
                        s = (T.join_en if lang == "en" else T.join_zh)(T.case_symptoms(rng, rec))
                        frame = rng.choice(CASE[lang]).replace("{S}", s[:1].upper() + s[1:]).replace("{s}", s)
                        q = _fill(rng, frame, "", lang)
                        add(lang, q, turns[0][1], [rec["name"]], OPENING_CHARS[lang] // 2)
        for item in kb[lang]["triage"]:
            names = next((v for k, v in TRIAGE_NAMES[lang].items() if item["q"][0].startswith(k)), None)
            for _ in range(PER_TRIAGE if names else 0):
                q = _fill(rng, rng.choice(TRIAGE[lang]), rng.choice(names), lang)
                add(lang, q[:1].upper() + q[1:], item["a"], [], OPENING_CHARS[lang])
    return out


def routing_stream(tok, samples: list[dict], prompt_weight: float = 0.1):
    """Render each example, cut its answer after the tokens that cover `supervise_chars`; weights: the kept
    answer tokens 1, the question prompt_weight, each example's first token 0. -> train_data.Stream."""
    from angelcli.eagle.data import assistant_mask
    from angelcli.tiny.train_data import Stream
    from angelcli.tokenizer import render_chat

    ids: list[int] = []
    weights: list[float] = []
    starts: list[int] = []
    for s in samples:
        conv = assistant_mask(tok, render_chat(tok, s["messages"], add_generation_prompt=False))
        first = conv.mask.index(True)
        keep = _tokens_covering(tok, conv.ids[first:], s["supervise_chars"])
        cut = first + keep
        starts.append(len(ids))
        ids.extend(conv.ids[:cut])
        weights.extend(1.0 if m else prompt_weight for m in conv.mask[:cut])
        weights[starts[-1]] = 0.0
    return Stream(ids, weights, starts, ["routing"] * len(samples))


def _tokens_covering(tok, answer_ids: list[int], chars: int) -> int:
    """The fewest leading answer tokens whose text is at least `chars` characters long (at least 1)."""
    lo, hi = 1, len(answer_ids)
    while lo < hi:
        mid = (lo + hi) // 2
        if len(tok.decode(answer_ids[:mid])) >= chars:
            hi = mid
        else:
            lo = mid + 1
    return lo


def join_streams(first, second):
    """first then second as one Stream; second's first token gets weight 0 (it follows a cut answer)."""
    from angelcli.tiny.train_data import Stream

    offset = len(first.ids)
    weights = first.weights + second.weights
    if second.ids:
        weights[offset] = 0.0
    return Stream(first.ids + second.ids, weights, first.starts + [offset + s for s in second.starts],
                  first.kinds + second.kinds)
