"""Builder version 6 of angel-tiny's corpus: v5, plus symptom descriptions that name no record.

The v5 model's misses on held-out phrasings were lay descriptions ("It burns when I urinate and I need to go
all the time", "My big toe joint suddenly became red, hot and very painful"): the corpus asked about 3-5 such
"case" presentations per condition, and their answers named the condition only after a generic hedge ("It is
not possible to be sure without an examination, but one possibility is ..."), so the record was picked 15
tokens away from the symptoms, after text that is the same for every record. Version 6

  * adds EXTRA_CASES[lang] further case presentations per condition (symptom subsets drawn by the v2
    templates with their own random stream, half of them in a lay frame), and
  * starts every case answer with the possibility ("One possibility is gout. It is not possible to be sure
    without an examination. ...", "可能是痛风。不经过检查很难确定。..."), so the record is chosen right after
    the question, where the symptom words are closest.

Appended after the v5 samples: v4/v5's draws stay as they were (case samples take no draws in apply_v4).
"""

from __future__ import annotations

import random
import re

from angelcli.tiny import corpus_templates_en, corpus_templates_zh
from angelcli.tiny.corpus_v4 import add_noise

EXTRA_CASES = {"en": 9, "zh": 10}
CASE_NOISE_RATE = 0.5

# the hedge without the words that join it to the possibility (", but", ". That said,", "，")
_EN = re.compile(r"^(?P<hedge>.+?)(?:, but|\. That said,) one possibility is (?P<name>[^.]+)\. ", re.S)
_ZH = re.compile(r"^(?P<hedge>.+?)[，,]?其中一种可能是(?P<name>[^。]+)。", re.S)


def possibility_first(answer: str, lang: str) -> str:
    """Move "one possibility is X." in front of the hedge; answers of another shape are returned unchanged."""
    m = (_ZH if lang == "zh" else _EN).match(answer)
    if not m:
        return answer
    hedge, name, rest = m["hedge"].strip(), m["name"], answer[m.end():]
    if lang == "zh":
        return f"可能是{name}。{hedge}。{rest}"
    return f"One possibility is {name}. {hedge}. {rest}"


def apply_v6(rng: random.Random, raw: list[tuple[str, str, list]], kb: dict) -> list[tuple[str, str, list]]:
    """raw with case answers possibility-first, plus EXTRA_CASES new case presentations per condition."""
    out = [(lang, kind, [(q, possibility_first(a, lang)) for q, a in turns] if kind == "case" else turns)
           for lang, kind, turns in raw]
    for lang, T in (("en", corpus_templates_en), ("zh", corpus_templates_zh)):
        for c in kb[lang]["conditions"]:
            for _ in range(EXTRA_CASES[lang]):
                turns = T.condition_case(rng, c)
                if not turns:
                    continue
                (q, a), = turns
                if rng.random() < CASE_NOISE_RATE:
                    q = add_noise(rng, q, lang)
                out.append((lang, "case", [(q, possibility_first(a, lang))]))
    return out
