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

from angelcli.tiny.routing_frames import (CASE, CONTEXT_POST, CONTEXT_PRE, FOLLOW, GUESS_ADJ_Q, GUESS_Q, LAY_Q, LEAD,
                                          NAMED, THEY_Q, TRIAGE, TRIAGE_NAMES, WHO)

PER_INTENT = 4  # named questions per (record, intent)
PER_LEAD = 4  # two-sentence questions per record
PER_CASE = {"en": 6, "zh": 6}  # symptom descriptions per condition
PER_TRIAGE = 10  # questions per named emergency / first-aid item
PER_LAY = {"en": 8, "zh": 8}  # everyday-word symptom descriptions per condition (routing_lay.LAY_I)
PER_THEY = 4  # the same about a family member (routing_lay.LAY_THEY; English)
PER_GUESS = {"en": 4, "zh": 4}  # descriptions that end with the patient's guess of the name
PER_CONTEXT = 6  # named questions inside context (situation, ages, doses, a second question) per record
OPENING_CHARS = {"en": 40, "zh": 14}  # answer characters supervised after the name
# (record kind, knowledge-base group) in the order every builder walks them
RECORD_GROUPS = (("condition", "conditions"), ("symptom", "symptoms"), ("medicine", "medicines"))
KIND_WEIGHT = 0.45  # chance of a training row starting at a routing example, relative to a conversation's 1.0


def _fill(rng: random.Random, frame: str, name: str, lang: str) -> str:
    text = frame.replace("{N}", _cap(name)).replace("{n}", name)
    return text.replace("{who}", rng.choice(WHO[lang]))


def _supervised(answer: str, names: list[str], extra: int) -> int:
    """Characters of the answer to supervise: through the first name of the record it mentions, plus `extra`."""
    folded = answer.casefold()
    ends = [folded.find(n.casefold()) + len(n) for n in names if folded.find(n.casefold()) >= 0]
    return min(len(answer), (min(ends) if ends else 0) + extra)


def _cap(text: str) -> str:
    return text[:1].upper() + text[1:]


def _example(rng: random.Random, lang: str, question: str, answer: str, names: list[str], extra: int) -> dict:
    """One routing example: half of them after the default system block, supervised through the first of
    `names` in the answer plus `extra` characters."""
    from angelcli.tiny.corpus import SYSTEM_PROMPT

    msgs = [{"role": "system", "content": SYSTEM_PROMPT}] if rng.random() < 0.5 else []
    msgs += [{"role": "user", "content": question}, {"role": "assistant", "content": answer}]
    return {"messages": msgs, "lang": lang, "kind": "routing", "supervise_chars": _supervised(answer, names, extra)}


def _fill_lay(rng: random.Random, frame: str, lang: str, said: list[str], done: list[str], guess: str = "") -> str:
    """A LAY_Q / THEY_Q / GUESS_Q frame with distinct phrases: "{s1}".."{s3}" from `said` (first person),
    "{v1}", "{v2}" from `done` (third person), "{g}" the guess."""
    s = rng.sample(said, 3) if len(said) >= 3 else said * 3
    v = rng.sample(done, 2) if len(done) >= 2 else (done or [""]) * 2
    for i in range(3):
        frame = frame.replace("{S%d}" % (i + 1), _cap(s[i])).replace("{s%d}" % (i + 1), s[i])
    frame = frame.replace("{v1}", v[0]).replace("{v2}", v[1]).replace("{g}", guess)
    return _cap(_fill(rng, frame, "", lang))


def _is_adjective(name: str) -> bool:
    return " " not in name and name.islower() and name.endswith(("ic", "ed"))


def routing_samples(seed: int = 0, kb: dict | None = None, lay: bool = True, written: bool = False,
                    written_rounds: int = 2) -> list[dict]:
    """Routing examples for every condition, symptom and medicine record and every named emergency item
    (routing_frames.TRIAGE_NAMES) in both languages, in a fixed order; then (lay=True) the everyday-word
    descriptions of lay_samples and the questions in context of context_samples (lay=False: the previous
    angel-tiny's examples); then (written=True) the freely written questions of routing_written.py, of its
    first `written_rounds` rounds.
    kb: corpus.kb_for(5) by default."""
    from angelcli.tiny import corpus_templates_en, corpus_templates_zh
    from angelcli.tiny.corpus import kb_for
    from angelcli.tiny.corpus_v3 import dedupe_reply, record_answer
    from angelcli.tiny.corpus_v4 import add_noise, anchor

    kb = kb or kb_for(5)
    rng = random.Random(seed + 17)  # a stream of its own: the corpus builder's draws are untouched
    out: list[dict] = []

    def add(lang: str, question: str, answer: str, names: list[str], extra: int) -> None:
        if rng.random() < 0.5:
            question = add_noise(rng, question, lang)
        out.append(_example(rng, lang, question, dedupe_reply(answer), names, extra))

    for lang, T in (("en", corpus_templates_en), ("zh", corpus_templates_zh)):
        for kind, group in RECORD_GROUPS:
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
                        frame = rng.choice(CASE[lang]).replace("{S}", _cap(s)).replace("{s}", s)
                        q = _fill(rng, frame, "", lang)
                        add(lang, q, turns[0][1], [rec["name"]], OPENING_CHARS[lang] // 2)
        for item in kb[lang]["triage"]:
            names = next((v for k, v in TRIAGE_NAMES[lang].items() if item["q"][0].startswith(k)), None)
            for _ in range(PER_TRIAGE if names else 0):
                q = _fill(rng, rng.choice(TRIAGE[lang]), rng.choice(names), lang)
                add(lang, _cap(q), item["a"], [], OPENING_CHARS[lang])
    if lay:
        out += lay_samples(seed, kb) + context_samples(seed, kb)
    if written:
        from angelcli.tiny.routing_written import written_samples

        out += written_samples(seed, kb, written_rounds)
    return out


def lay_samples(seed: int = 0, kb: dict | None = None) -> list[dict]:
    """Symptom descriptions in everyday words (routing_lay.py: "it stings when I pee", "my dad keeps getting up
    at night to pee"), some ending with the patient's guess ("Could it be a water infection?"), answered with
    the corpus's case answer (hedge, then "one possibility is <condition>"), for every condition in both
    languages. The knowledge base lists symptoms in clinical words, so CASE examples alone never show these.
    Own seeded stream: the examples before them are unchanged."""
    from angelcli.tiny import corpus_templates_en, corpus_templates_zh
    from angelcli.tiny.corpus import kb_for
    from angelcli.tiny.corpus_v4 import add_noise
    from angelcli.tiny.routing_lay import LAY_I, LAY_NAMES, LAY_THEY

    kb = kb or kb_for(5)
    rng = random.Random(seed + 29)
    out: list[dict] = []
    for lang, T in (("en", corpus_templates_en), ("zh", corpus_templates_zh)):
        for rec in kb[lang]["conditions"]:
            said, done = LAY_I[lang][rec["name"]], LAY_THEY.get(lang, {}).get(rec["name"], [])
            guesses = [*rec.get("aka", []), *LAY_NAMES[lang].get(rec["name"], [])]
            questions = [_fill_lay(rng, rng.choice(LAY_Q[lang]), lang, said, done) for _ in range(PER_LAY[lang])]
            questions += [_fill_lay(rng, rng.choice(THEY_Q[lang]), lang, said, done)
                          for _ in range(PER_THEY if done else 0)]
            for _ in range(PER_GUESS[lang] if guesses else 0):
                g = rng.choice(guesses)
                frames = GUESS_ADJ_Q[lang] if _is_adjective(g) else GUESS_Q[lang]
                frames = [f for f in frames if done or "{v1}" not in f]
                questions.append(_fill_lay(rng, rng.choice(frames), lang, said, done, g))
            for q in questions:
                case = T.condition_case(rng, rec)
                if case is None:  # too few symptoms for a case answer (high cholesterol): no example
                    continue
                if rng.random() < 0.5:
                    q = add_noise(rng, q, lang)
                out.append(_example(rng, lang, q, case[0][1], [rec["name"]], OPENING_CHARS[lang] // 2))
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


def context_samples(seed: int = 0, kb: dict | None = None) -> list[dict]:
    """Named questions inside what users write around them (routing_frames.CONTEXT_PRE / CONTEXT_POST): their
    situation, an age, a duration or dose, a remark after the question, or a second question about the same
    record (answered: the first). The answer opens as the NAMED examples' do. Own seeded stream."""
    from angelcli.tiny import corpus_templates_en, corpus_templates_zh
    from angelcli.tiny.corpus import kb_for
    from angelcli.tiny.corpus_v3 import dedupe_reply, record_answer
    from angelcli.tiny.corpus_v4 import anchor

    kb = kb or kb_for(5)
    rng = random.Random(seed + 41)
    out: list[dict] = []
    for lang, T in (("en", corpus_templates_en), ("zh", corpus_templates_zh)):
        sep = "" if lang == "zh" else " "
        for kind, group in RECORD_GROUPS:
            for rec in kb[lang][group]:
                names = [rec["name"], *rec.get("aka", [])]
                intents = [i for (k, i) in NAMED[lang] if k == kind]
                for _ in range(PER_CONTEXT):
                    name, intent = rng.choice(names), rng.choice(intents)
                    pre = rng.choice(CONTEXT_PRE[lang][kind] if rng.random() < 0.7 else CONTEXT_PRE[lang]["any"])
                    q = _fill(rng, rng.choice(NAMED[lang][(kind, intent)]), name, lang)
                    if "{n}" in pre and rng.random() < 0.3:  # the name is in the context: the question refers back
                        q = q.replace(name, rng.choice(["it", "this"] if lang == "en" else ["这个", "这病"]), 1)
                    pre = _fill(rng, pre, name, lang).replace("{a}", str(rng.randint(2, 88)))
                    pre = pre.replace("{d}", str(rng.randint(2, 30)))
                    roll = rng.random()
                    if roll < 0.35:  # a second question about the same record
                        other = rng.choice([i for i in intents if i != intent] or intents)
                        second = _fill(rng, rng.choice(NAMED[lang][(kind, other)]), name, lang)
                        q += sep + ("And " + second[:1].lower() + second[1:] if lang == "en" else "还有，" + second)
                    elif roll < 0.7:
                        q += sep + rng.choice(CONTEXT_POST[lang])
                    q = pre + sep + q
                    a = dedupe_reply(anchor(record_answer(rng, T, kind, rec, intent), name, lang, rec["name"]))
                    out.append(_example(rng, lang, q, a, names, OPENING_CHARS[lang]))
    return out
