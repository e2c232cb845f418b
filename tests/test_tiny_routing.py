"""angel-tiny's routing examples (angelcli/tiny/routing_data.py): what they ask, what they supervise, and that
they never contain a probe question."""

import random
import re

import pytest

from angelcli.tiny.tokenizer import TINY_TOKENIZER_DIR


@pytest.fixture(scope="module")
def tok():
    from angelcli.tokenizer import load_tokenizer

    return load_tokenizer(TINY_TOKENIZER_DIR)


@pytest.fixture(scope="module")
def samples():
    from angelcli.tiny.routing_data import routing_samples

    return routing_samples(0)


def _question(sample: dict) -> str:
    return next(m["content"] for m in sample["messages"] if m["role"] == "user")


def _answer(sample: dict) -> str:
    return next(m["content"] for m in sample["messages"] if m["role"] == "assistant")


def test_routing_samples_are_deterministic_and_cover_every_record(samples):
    from angelcli.tiny.corpus import kb_for
    from angelcli.tiny.routing_data import routing_samples

    assert routing_samples(0) == samples
    assert routing_samples(1) != samples
    assert {s["kind"] for s in samples} == {"routing"} and {s["lang"] for s in samples} == {"en", "zh"}
    kb = kb_for(5)
    answers = {lang: " ".join(_answer(s) for s in samples if s["lang"] == lang) for lang in ("en", "zh")}
    for lang in ("en", "zh"):
        for group in ("conditions", "symptoms", "medicines"):
            for rec in kb[lang][group]:
                assert rec["name"].casefold() in answers[lang].casefold(), (lang, rec["name"])
    assert not any("{" in _question(s) for s in samples), "a frame placeholder was left unfilled"


def test_no_routing_question_is_a_probe_question(samples):
    from angelcli.tiny.probe import extended_probes, load_fresh_probes, load_plain_probes
    from angelcli.tiny.routing_written import ROUNDS, written_samples

    def norm(text: str) -> str:
        return re.sub(r"[\W_]+", " ", text).strip().casefold()

    asked = {norm(_question(s)) for s in samples + written_samples(0, rounds=ROUNDS[-1])}
    probes = [norm(p["prompt"]) for p in extended_probes() + load_fresh_probes() + load_plain_probes()]
    assert len(probes) == 140
    assert not [p for p in probes if any(p in q for q in asked)]


def test_supervised_opening_names_the_record_and_the_answer_is_cut_there(tok, samples):
    from angelcli.tiny.routing_data import routing_stream

    subset = samples[::25]
    stream = routing_stream(tok, subset, prompt_weight=0.1)
    assert len(stream.starts) == len(subset) and stream.kinds == ["routing"] * len(subset)
    role_end = tok.convert_tokens_to_ids("<|role_end|>")
    ends = stream.starts[1:] + [len(stream.ids)]
    for s, a, b in zip(subset, stream.starts, ends):
        ids, w = stream.ids[a:b], stream.weights[a:b]
        assert w[0] == 0.0
        # the answer is cut before its end: nothing learns to stop after the opening
        assert role_end not in ids[w.index(1.0):]
        opening = tok.decode([i for i, x in zip(ids, w) if x == 1.0])
        # a cut can fall inside a Chinese character (byte-level BPE): its decoded tail is U+FFFD
        assert opening and _answer(s).startswith(opening.rstrip("\ufffd"))
        # the supervised tokens cover the requested characters, and one token fewer would not
        assert len(opening) >= s["supervise_chars"] > len(tok.decode([i for i, x in zip(ids, w) if x == 1.0][:-1]))
        # everything before the answer is the question side, weighted like the corpus's questions
        assert set(w[1 : w.index(1.0)]) <= {0.1}
    cases = [s for s in subset if "possibility" in _answer(s) or "可能是" in _answer(s)]
    assert cases, "no symptom-description examples in the subset"


def test_openings_name_a_record_or_are_an_emergency_answer(samples):
    from angelcli.tiny.corpus import kb_for
    from angelcli.tiny.routing_frames import TRIAGE_NAMES

    kb = kb_for(5)
    names = {n.casefold() for lang in ("en", "zh") for g in ("conditions", "symptoms", "medicines")
             for rec in kb[lang][g] for n in [rec["name"], *rec.get("aka", [])]}
    triage = {t["a"] for lang in ("en", "zh") for t in kb[lang]["triage"]}
    for lang in ("en", "zh"):  # every named emergency item exists in the knowledge base
        for start in TRIAGE_NAMES[lang]:
            assert any(t["q"][0].startswith(start) for t in kb[lang]["triage"]), start
    emergencies = 0
    for s in samples:
        opening = _answer(s)[: s["supervise_chars"]].casefold()
        if _answer(s) in triage:
            emergencies += 1
            assert s["supervise_chars"] in (40, 14)
        else:
            assert any(n in opening for n in names), (_question(s), opening)
    assert emergencies >= 200


def test_join_streams_offsets_starts_and_silences_the_first_token_after_a_cut(tok, samples):
    from angelcli.tiny.routing_data import join_streams, routing_stream
    from angelcli.tiny.train_data import conversation_stream

    routing = routing_stream(tok, samples[:3])
    corpus = conversation_stream(tok, [{"messages": [{"role": "user", "content": "What is gout?"},
                                                     {"role": "assistant", "content": "A kind of arthritis."}]}], 0.1)
    joined = join_streams(routing, corpus)
    n = len(routing.ids)
    assert joined.ids == routing.ids + corpus.ids
    assert joined.starts == routing.starts + [n] and joined.kinds == ["routing"] * 3 + [None]
    assert joined.weights[n] == 0.0 and joined.weights[n + 1 :] == corpus.weights[1:]


def test_lay_table_covers_every_condition_without_naming_it():
    from angelcli.tiny.corpus import kb_for
    from angelcli.tiny.routing_lay import LAY_I, LAY_NAMES, LAY_THEY

    kb = kb_for(5)
    for lang in ("en", "zh"):
        conditions = {c["name"]: c for c in kb[lang]["conditions"]}
        assert set(LAY_I[lang]) == set(conditions) and set(LAY_NAMES[lang]) <= set(conditions)
        if lang == "en":
            assert set(LAY_THEY[lang]) == set(conditions)
        for name, c in conditions.items():
            phrases = LAY_I[lang][name] + LAY_THEY.get(lang, {}).get(name, [])
            assert len(set(LAY_I[lang][name])) == 8, name
            for phrase in phrases:
                assert phrase and phrase[-1] not in ".?!。？！，,", phrase
                # a lay description does not name the condition (some aka are symptoms too: "wheezing"): the point
                # is to route from the symptoms alone
                assert name.casefold() not in phrase.casefold(), phrase


def test_lay_samples_describe_each_condition_and_some_end_with_a_guess():
    from angelcli.tiny import corpus_templates_en, corpus_templates_zh
    from angelcli.tiny.corpus import kb_for
    from angelcli.tiny.routing_data import PER_GUESS, PER_LAY, PER_THEY, lay_samples
    from angelcli.tiny.routing_lay import LAY_I, LAY_NAMES

    lay = lay_samples(0)
    assert lay == lay_samples(0) and lay != lay_samples(1)
    kb = kb_for(5)
    for lang in ("en", "zh"):
        for c in kb[lang]["conditions"]:
            mine = [s for s in lay if s["lang"] == lang and f"{c['name']}。" in _answer(s)
                    or s["lang"] == lang == "en" and f"possibility is {c['name']}." in _answer(s)]
            T = corpus_templates_en if lang == "en" else corpus_templates_zh
            if T.case_symptoms(random.Random(0), c) is None:  # nothing to describe (high cholesterol): no case answer
                assert not mine
                continue
            want = PER_LAY[lang] + (PER_THEY if lang == "en" else 0) + PER_GUESS[lang]
            assert len(mine) == want, (lang, c["name"], len(mine))
            # every question carries some of the condition's lay phrases, several ask about a guessed name
            said = LAY_I[lang][c["name"]]
            guesses = [n.casefold() for n in [*c.get("aka", []), *LAY_NAMES[lang].get(c["name"], [])]]
            assert sum(any(p[4:20].casefold() in _question(s).casefold() for p in said) for s in mine) >= PER_LAY[lang]
            assert sum(any(g in _question(s).casefold() for g in guesses) for s in mine) >= PER_GUESS[lang]


def test_context_samples_put_every_record_in_context_with_numbers_and_second_questions():
    from angelcli.tiny.corpus import kb_for
    from angelcli.tiny.routing_data import PER_CONTEXT, context_samples

    cs = context_samples(0)
    assert cs == context_samples(0) and cs != context_samples(1)
    kb = kb_for(5)
    assert len(cs) == PER_CONTEXT * sum(len(kb[lang][g]) for lang in ("en", "zh")
                                        for g in ("conditions", "symptoms", "medicines"))
    questions = [_question(s) for s in cs]
    assert not [q for q in questions if "{" in q]
    with_number = sum(bool(re.search(r"\d", q)) for q in questions) / len(cs)
    second = sum(" And " in q or "还有，" in q for q in questions) / len(cs)
    assert with_number > 0.3 and 0.2 < second < 0.5, (with_number, second)


def test_routing_examples_are_the_ones_the_shipped_model_was_trained_on(samples):
    """angel-tiny (angelcli/assets/angel-tiny) was trained on exactly the examples without the lay ones
    (`tiny-train`, lay off): changing frames, counts or draws changes what `angel tiny-train` rebuilds, so it goes
    with a retrained model (and draft). The whole list is what `tiny-train --lay` trains on."""
    import hashlib
    import json

    from angelcli.tiny.routing_data import routing_samples

    def digest(rows):
        return hashlib.sha256(json.dumps(rows, ensure_ascii=False).encode()).hexdigest()

    assert samples[:5192] == routing_samples(0, lay=False)
    assert digest(samples[:5192]) == "9c0916fc513e7d1f29d93ccc1ddfa6844512264c67f0bbd32a78986f696286ad"
    assert len(samples) == 7010
    assert digest(samples) == "bb43eff6a8c6a9eab74e55a9ca3a440428f97f85b692434023c49ccbbe6a8058"


def test_written_questions_name_their_record_and_cover_every_intent():
    """routing_written.jsonl: every row belongs to a record of its language, its intent is one of the record
    kind's (case only for conditions), and a named question contains the name it declares; every record is
    asked about at least 10 times; no question is given twice (in any round); a case question names no name of
    its record."""
    from angelcli.tiny.corpus import kb_for
    from angelcli.tiny.routing_frames import NAMED
    from angelcli.tiny.routing_written import ROUNDS, load_rounds, record_index

    rows = load_rounds(ROUNDS[-1])
    index = record_index(kb_for(5))
    per_record: dict = {}
    for r in rows:
        kind, rec = index[(r["lang"], r["record"])]
        intents = {i for (k, i) in NAMED[r["lang"]] if k == kind} | ({"case"} if kind == "condition" else set())
        assert r["intent"] in intents, r
        assert (r["name"] == "") == (r["intent"] == "case") and r["name"] in r["q"], r
        if r["intent"] == "case":
            assert not any(re.search(r"(?<!\w)" + re.escape(n.casefold()) + r"(?!\w)" if n.isascii() else
                                     re.escape(n), r["q"].casefold()) for n in [rec["name"], *rec.get("aka", [])]), r
        per_record[(r["lang"], r["record"])] = per_record.get((r["lang"], r["record"]), 0) + 1
    assert set(per_record) == set(index) and min(per_record.values()) >= 10
    assert len({(r["lang"], r["q"]) for r in rows}) == len(rows)


def test_written_samples_anchor_on_the_name_as_written_and_supervise_the_opening(tok):
    from angelcli.tiny.routing_data import routing_samples
    from angelcli.tiny.routing_written import ROUNDS, load_rounds, written_samples

    last = ROUNDS[-1]
    rows = load_rounds(last)
    # each round is appended: the examples of earlier rounds (the models trained on them) do not change
    earlier = [written_samples(0, rounds=r) for r in ROUNDS]
    ws = written_samples(0, rounds=last)
    assert ws == earlier[-1] and ws != written_samples(1, rounds=last)
    assert routing_samples(0, written=True, written_rounds=last) == routing_samples(0) + ws
    assert len(earlier[0]) == 3919 and len(earlier[1]) == 6003  # the shipped model: 11,195 with the templated ones
    assert all(a == b[: len(a)] and len(b) > len(a) + 800 for a, b in zip(earlier, earlier[1:]))
    by_q = {(s["lang"], _question(s)): s for s in ws}
    cases = 0
    for r in rows:
        s = by_q.get((r["lang"], r["q"]))
        if s is None:  # a case question about a record too thin for a case answer
            assert r["intent"] == "case"
            continue
        answer = _answer(s)
        if r["intent"] == "case":
            cases += 1
            assert r["record"].casefold() in answer[: s["supervise_chars"]].casefold(), (r, answer)
        else:  # the name as the user wrote it is in the answer's first line (an anchor, unless the answer's
            # own opening names it), and an anchor on another name bridges to the record's main name
            head = answer.split("\n", 1)[0][:120].casefold()
            assert r["name"].casefold() in head, (r, answer)
            if head.startswith(r["name"].casefold() + " (") or head.startswith(r["name"].casefold() + "（"):
                assert head[len(r["name"]) :].lstrip(" (（").startswith(r["record"].casefold()), (r, answer)
            opening = answer[: s["supervise_chars"]].casefold()  # supervised through a name of the record
            assert r["name"].casefold() in opening or r["record"].casefold() in opening, (r, opening)
    assert cases > 100
