"""One benchmark question, and the prompts built from it.

Every task loader (tasks_en.py, tasks_zh.py) turns its data set's own file format into `Item`s; everything
after that (log-likelihood scoring, generation, statistics) is task-independent.

Log-likelihood prompts follow lm-evaluation-harness's plain-text rendering of a multiple_choice task, so
numbers are comparable with `lm_eval --tasks medqa_4options,...`:

    context      = description + (shot.query + " " + shot.answer + "\\n\\n") * K + item.query
    continuation = " " + choice            (target_delimiter " ", fewshot_delimiter "\\n\\n")

The description is lm-eval's per-subject line for MMLU / CMMLU / C-Eval and empty for MedQA, MedMCQA and
PubMedQA (their lm-eval tasks have none). Generation prompts go through the model's chat template instead.
"""

from __future__ import annotations

import random
from dataclasses import dataclass, field

TARGET_DELIMITER = " "
FEWSHOT_DELIMITER = "\n\n"
LETTERS = "ABCDEFGHIJ"


@dataclass
class Item:
    id: str
    query: str  # the question as lm-eval's doc_to_text renders it, ending in "Answer:" / "答案："
    choices: list[str]  # continuation strings without the delimiter: ["A", "B", ...] or ["yes", "no", "maybe"]
    gold: int | None  # index into choices; None for a multiple-answer question
    gold_letters: str = ""  # multiple-answer questions (CMB, CMExam): the set of correct letters, e.g. "ABD"
    description: str = ""  # prepended once, before any few-shot example
    subject: str = ""
    language: str = "en"
    pool_key: str = ""  # few-shot examples come from the pool with this key (per subject for MMLU-style tasks)

    @property
    def multi_answer(self) -> bool:
        return self.gold is None

    @property
    def answer(self) -> str:
        """The target text shown after a few-shot example."""
        return self.choices[self.gold] if self.gold is not None else self.gold_letters


@dataclass
class TaskData:
    """What a loader returns: the items to score and the few-shot pools (by pool_key)."""

    name: str
    items: list[Item]
    pools: dict[str, list[Item]] = field(default_factory=dict)
    sampler: str = "random"  # "first_n" (MMLU, CMMLU, C-Eval: lm-eval takes the dev split in order) | "random"
    files: list[str] = field(default_factory=list)  # the files read, for the report

    def shots(self, item: Item, k: int, seed: int, index: int) -> list[Item]:
        """k few-shot examples for `item` (never the item itself). first_n: the pool in order; random: a
        sample seeded by (seed, item index), so a rerun with the same --seed builds the same prompts."""
        if k <= 0:
            return []
        pool = [p for p in self.pools.get(item.pool_key, []) if p.id != item.id and not p.multi_answer]
        if self.sampler == "first_n":
            return pool[:k]
        rng = random.Random(seed * 1_000_003 + index)
        return rng.sample(pool, min(k, len(pool)))


def loglik_context(item: Item, shots: list[Item]) -> str:
    """The plain-text context lm-eval builds for a multiple_choice request (see the module docstring)."""
    parts = [item.description]
    for s in shots:
        parts.append(s.query + TARGET_DELIMITER + s.answer + FEWSHOT_DELIMITER)
    parts.append(item.query)
    return "".join(parts)


def continuations(item: Item) -> list[str]:
    return [TARGET_DELIMITER + c for c in item.choices]


_INSTRUCTION = {
    "en": "Answer the following multiple choice question. Reply with the letter of the correct option only.",
    "zh": "以下是一道选择题，请直接给出正确答案的选项字母。",
}
_INSTRUCTION_WORDS = "Answer the question about the abstract with yes, no or maybe only."


def chat_messages(item: Item, shots: list[Item]) -> list[dict]:
    """Generation mode: the question (and few-shot examples as earlier turns) as chat messages."""
    if all(len(c) == 1 for c in item.choices):
        head = item.description.strip() or _INSTRUCTION[item.language]
    else:
        head = item.description.strip() or _INSTRUCTION_WORDS
    msgs: list[dict] = []
    for i, s in enumerate(shots):
        msgs.append({"role": "user", "content": (head + "\n\n" if i == 0 else "") + s.query})
        msgs.append({"role": "assistant", "content": s.answer})
    msgs.append({"role": "user", "content": (head + "\n\n" if not shots else "") + item.query})
    return msgs


def letter_options(options: list[str]) -> str:
    """"A. first\\nB. second\\n..." (lm-eval's option block)."""
    return "".join(f"{LETTERS[i]}. {o}\n" for i, o in enumerate(options))
