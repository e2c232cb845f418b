"""Builder version 3 of angel-tiny's corpus: what v2 writes, plus three things the v2 model lacked.

  * Remedies with causes: a symptom question usually means "what do I do about it", so every "what causes X"
    answer of a symptom also says what helps (the record's self-care list) and when to get help. The v2 model
    answered the Chinese insomnia demo question with causes only.
  * More phrasings per intent, in lay words: "how do I get rid of X", "X - what should I do?", "what should I
    eat with X", "X怎么办", "X饮食要注意什么" ..., each answered from the same record as the v2 intent it
    belongs to (symptom self-care, condition self-care, medicine side effects ...), so a new wording maps onto
    the right record instead of onto the nearest memorised template.
  * No repeated list items: a reply assembled from several record lists can name one item twice (a symptom in
    both "symptoms" and "red flags"); dedupe_reply drops a list line whose item already appeared as a list
    line earlier in the same reply and renumbers numbered lists. (The v2 model repeated "Tiredness".)

The held-out probe questions (angelcli/data/medical/probe_heldout.jsonl) were written apart from all of these
templates; tests check that none of them is a training question.
Everything stays seeded: extra_samples(rng) draws from the same random.Random as the v2 builder, after it.
"""

from __future__ import annotations

import random
import re

# Extra question wordings per (kind, intent); "{n}" is the record's (typed) name.
EXTRA_Q = {
    "en": {
        ("symptom", "self_care"): ["How do I get rid of {n}?", "What can I do about {n}?", "What is the best way to ease {n}?",
                                   "{N} - what should I do?", "How do I treat {n} myself?", "What is a good remedy for {n}?",
                                   "My {n} won't go away. What can I do?"],
        ("symptom", "red_flags"): ["Should I worry about {n}?", "Is my {n} serious?", "Do I need to go to hospital for {n}?"],
        ("condition", "self_care"): ["What should I eat if I have {n}?", "Which foods should I avoid with {n}?",
                                     "How can I control {n} without medicine?", "What daily habits help {n}?"],
        ("condition", "symptoms"): ["Could my symptoms be {n}?", "What are the warning signs of {n}?", "How does {n} feel?"],
        ("condition", "treatment"): ["What medicine do people take for {n}?", "Can {n} be cured?", "What helps {n} most?"],
        ("medicine", "side_effects"): ["Does {n} upset the stomach?", "Is {n} hard on the body?", "What problems can {n} cause?"],
        ("medicine", "uses"): ["What does {n} do?", "Why am I taking {n}?", "What is {n} for, in simple words?"],
    },
    "zh": {
        ("symptom", "self_care"): ["{n}了怎么办？", "{n}怎么缓解比较好？", "{n}有什么好办法？", "老是{n}，该怎么处理？",
                                   "{n}在家能做些什么？", "{n}吃什么好？"],
        ("symptom", "red_flags"): ["{n}严重吗？", "{n}需要去医院吗？", "{n}要不要紧？"],
        ("condition", "self_care"): ["{n}饮食要注意什么？", "{n}平时生活上要注意什么？", "{n}不吃药能控制吗？", "得了{n}该怎么调理？"],
        ("condition", "symptoms"): ["{n}有什么表现？", "怎么知道自己是不是{n}？"],
        ("condition", "treatment"): ["{n}吃什么药？", "{n}能治好吗？"],
        ("medicine", "side_effects"): ["吃{n}伤胃吗？", "{n}有什么不良反应？"],
        ("medicine", "uses"): ["{n}是治什么的？", "{n}有什么作用？"],
    },
}
EXTRA_PER_QUESTION = {"en": 1, "zh": 2}  # samples per (record, extra wording); Chinese records are fewer
HELPS = {"en": ["What helps:", "What you can do:", "To ease it:"], "zh": ["可以这样缓解：", "你可以：", "缓解方法："]}
GET_HELP = {"en": "See a doctor if you have {x}.", "zh": "如果出现{x}，请及时就医。"}

_LIST_LINE = re.compile(r"^(\s*)(?:[-*•]|(\d+)[.)、])\s+(.*)$")


def dedupe_reply(text: str) -> str:
    """Drop list lines ("- x", "1. x") whose item (case- and punctuation-insensitive) already appeared as a list
    line earlier in the reply; renumber each numbered list from 1."""
    seen: set[str] = set()
    out, number = [], 0
    for line in text.split("\n"):
        m = _LIST_LINE.match(line)
        if not m:
            number = 0
            out.append(line)
            continue
        key = re.sub(r"[\W_]+", " ", m.group(3)).strip().casefold()
        if key in seen:
            continue
        seen.add(key)
        if m.group(2) is not None:
            number += 1
            line = f"{m.group(1)}{number}. {m.group(3)}"
        out.append(line)
    return "\n".join(out)


def symptom_causes_with_remedies(rng: random.Random, T, lang: str, s: dict) -> str:
    """A v2 "causes" answer for symptom s followed by what helps and when to get help."""
    from angelcli.tiny.corpus_templates_en import pick_items

    answer = T.symptom_answer(rng, s, "causes")
    helps = rng.choice(HELPS[lang]) + T.render_list(rng, pick_items(rng, s["self_care"]))
    return answer + "\n\n" + helps + "\n\n" + GET_HELP[lang].format(x=T.join_or(s["red_flags"][:2]))


def record_answer(rng: random.Random, T, kind: str, rec: dict, intent: str) -> str:
    """T's answer to `intent` about a condition, symptom or medicine record (kind "medicine" or anything else)."""
    if kind == "symptom":
        return T.symptom_answer(rng, rec, intent)
    if kind == "condition":
        return T.condition_answer(rng, rec, intent)
    return T.medicine_answer(rng, rec, intent)


def extra_samples(rng: random.Random, kb: dict, scale: float = 1.0) -> list[tuple[str, str, list]]:
    """(lang, kind, turns): remedy-completed symptom answers and the extra wordings, in a fixed order.
    kb: angelcli.tiny.corpus._kb()."""
    from angelcli.tiny import corpus_templates_en as en
    from angelcli.tiny import corpus_templates_zh as zh

    out: list[tuple[str, str, list]] = []
    for lang, T in (("en", en), ("zh", zh)):
        records = {"symptom": kb[lang]["symptoms"], "condition": kb[lang]["conditions"],
                   "medicine": kb[lang]["medicines"]}
        reps = max(1, round(EXTRA_PER_QUESTION[lang] * scale))
        for s in records["symptom"]:
            for q in T.SYM_Q["causes"]:
                out.append((lang, "symptom", [(_cap(q.format(n=T.typed_name(rng, s))),
                                               symptom_causes_with_remedies(rng, T, lang, s))]))
        for (kind, intent), questions in EXTRA_Q[lang].items():
            for rec in records[kind]:
                for q in questions:
                    for _ in range(reps):
                        name = T.typed_name(rng, rec)
                        text = q.replace("{N}", _cap(name)).replace("{n}", name)
                        out.append((lang, "medication" if kind == "medicine" else kind,
                                    [(_cap(text), record_answer(rng, T, kind, rec, intent))]))
    return out


def _cap(s: str) -> str:
    return s[:1].upper() + s[1:]
