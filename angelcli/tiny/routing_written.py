"""Routing examples from freely written questions (`tiny-train --written`): questions as users type them,
written by helpers who saw only the knowledge base's record names, other names and (for conditions) symptom
lists, never the corpus, its templates, the routing frames or any probe set.

Why: every routing example before these is a template filled in (routing_frames.py, routing_lay.py): however many
frames there are, a question's wording around the name comes from a few hundred patterns, and the models keep
answering questions that fall outside them about another record (docs/angel-tiny.md). Written questions bring
what templates cannot: brand names ("Tylenol", "立普妥"), misspellings, telegraphic questions ("metformin stomach
ache normal?"), and long messages with a situation and a second question.

Data: angelcli/data/medical/routing_written.jsonl (two rounds of helpers, 3,933 rows), routing_written_r3.jsonl
(round 3, 2,100 rows: more symptom descriptions that do not name the condition and more long messages; in the
shipped model), routing_written_r4.jsonl (round 4, 828 descriptions only) and routing_written_r5.jsonl (round 5,
1,379 rows: 6 named questions, half of them long messages with the name mid-message, and 6 descriptions per
condition; 8 per symptom and medicine), one row per question:
    {"lang": "en"|"zh", "record": main name, "intent": one of the kind's intents or "case",
     "name": the substring of q that names the record ("" for case), "q": the question}

Each becomes a routing example (routing_data._example): a named question is answered with the record's answer
to its intent, anchored on the name as written and bridged to the main name ("Tylenol (paracetamol): ..."); a case
question (a condition described without its name) with the corpus's case answer (hedge, then "one possibility is
<condition>"). Supervised, like the other routing examples, on the opening only. Own seeded stream.
"""

from __future__ import annotations

import json
import random
from pathlib import Path

WRITTEN_PATH = Path(__file__).resolve().parent.parent / "data" / "medical" / "routing_written.jsonl"
# rounds 1 and 2 share one file; each later round has its own
ROUND_PATHS = {3: WRITTEN_PATH.with_name("routing_written_r3.jsonl"),
               4: WRITTEN_PATH.with_name("routing_written_r4.jsonl"),
               5: WRITTEN_PATH.with_name("routing_written_r5.jsonl")}
ROUNDS = (2, *ROUND_PATHS)


def load_written(path: Path = WRITTEN_PATH) -> list[dict]:
    """The written questions of one file, in file order."""
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]


def load_rounds(rounds: int = 2) -> list[dict]:
    """The questions of the first `rounds` rounds (one of ROUNDS), in file order: appended, so the examples of
    the earlier rounds (and the draws that made them) do not change when a round is added."""
    if rounds not in ROUNDS:
        raise ValueError(f"written rounds must be one of {ROUNDS}, not {rounds}")
    later = [path for r, path in sorted(ROUND_PATHS.items()) if r <= rounds]
    return load_written() + [row for path in later for row in load_written(path)]


def record_index(kb: dict) -> dict[tuple[str, str], tuple[str, dict]]:
    """(lang, main name) -> (kind, record) for every condition, symptom and medicine record."""
    from angelcli.tiny.routing_data import RECORD_GROUPS

    return {(lang, rec["name"]): (kind, rec) for lang in ("en", "zh") for kind, group in RECORD_GROUPS
            for rec in kb[lang][group]}


def written_samples(seed: int = 0, kb: dict | None = None, rounds: int = 2) -> list[dict]:
    """Routing examples for the questions of load_rounds(rounds), in file order. kb: corpus.kb_for(5) by
    default."""
    from angelcli.tiny import corpus_templates_en, corpus_templates_zh
    from angelcli.tiny.corpus import kb_for
    from angelcli.tiny.corpus_v3 import dedupe_reply, record_answer
    from angelcli.tiny.corpus_v4 import anchor
    from angelcli.tiny.routing_data import OPENING_CHARS, _example

    kb = kb or kb_for(5)
    index = record_index(kb)
    templates = {"en": corpus_templates_en, "zh": corpus_templates_zh}
    rng = random.Random(seed + 53)
    out: list[dict] = []
    for row in load_rounds(rounds):
        lang, q = row["lang"], row["q"]
        kind, rec = index[(lang, row["record"])]
        T = templates[lang]
        if row["intent"] == "case":
            case = T.condition_case(rng, rec)
            if case is None:  # too few symptoms for a case answer (high cholesterol): no example
                continue
            out.append(_example(rng, lang, q, case[0][1], [rec["name"]], OPENING_CHARS[lang] // 2))
            continue
        answer = dedupe_reply(anchor(record_answer(rng, T, kind, rec, row["intent"]), row["name"], lang, rec["name"]))
        out.append(_example(rng, lang, q, answer, [row["name"], rec["name"], *rec.get("aka", [])], OPENING_CHARS[lang]))
    return out
