"""Training conversations for angel-tiny's EAGLE3 draft: the corpus train split plus fresh questions.

A draft learns to predict what the target writes. Regenerated on the train split alone, the target mostly
recites answers it memorised, while on held-out prompts (what `draft-eval` and users ask) it combines
pieces of several; the draft then meets text it never saw. Building the corpus again with other seeds
gives new wordings, frames and answer variants of the same records; their questions, answered by the
target itself (`draft-train --regenerate`), show the draft the target's behaviour on questions it was not
trained on. Every question of the corpus's held-out splits (eval, calib) is excluded, so `draft-eval`'s
prompts stay unseen by the draft. `routing` adds questions of the target's routing examples (other wordings,
everyday symptom descriptions; routing_data.py) in the same way: only their questions matter, since the
answers are regenerated.

    python -m angelcli.tiny.draft_data OUT.jsonl [--extra 4000] [--seeds 1,2] [--routing 2000]
"""

from __future__ import annotations

import argparse
import random
from pathlib import Path

from angelcli.fsutil import atomic_write_text


def _questions(sample: dict) -> tuple[str, ...]:
    return tuple(m["content"] for m in sample["messages"] if m["role"] == "user")


def draft_conversations(extra: int = 4000, seeds: tuple[int, ...] = (1, 2), version: int | None = None,
                        routing: int = 0) -> list[dict]:
    """The shipped train split, then up to `extra` single-question record conversations drawn (seeded) from
    corpus builds with `seeds` whose question is not asked anywhere in the shipped corpus, then up to `routing`
    routing examples (seeded draw; full answers, which --regenerate replaces) asked nowhere in the corpus."""
    from angelcli.data import load_split
    from angelcli.tiny.corpus import BUILDER_VERSION, generate

    version = BUILDER_VERSION if version is None else version
    shipped = {name: load_split(name) for name in ("train", "calib", "eval")}
    asked = {q for split in shipped.values() for s in split for q in _questions(s)}
    pool, seen = [], set()
    for seed in seeds:
        for s in generate(seed=seed, version=version)["train"]:
            qs = _questions(s)
            if len(qs) != 1 or s["kind"] not in ("condition", "symptom", "medication", "case", "triage"):
                continue
            if qs[0] in asked or qs[0] in seen:
                continue
            seen.add(qs[0])
            pool.append(s)
    random.Random(0).shuffle(pool)
    rows = shipped["train"] + pool[:extra]
    if routing:
        from angelcli.tiny.routing_data import routing_samples

        fresh = [{"messages": s["messages"], "lang": s["lang"], "kind": "routing"} for s in routing_samples()
                 if _questions(s)[0] not in asked]
        random.Random(1).shuffle(fresh)
        rows += fresh[:routing]
    return rows


def main(argv: list[str] | None = None) -> None:
    from angelcli.tiny.corpus import dumps_jsonl

    ap = argparse.ArgumentParser(prog="python -m angelcli.tiny.draft_data", description=__doc__.split("\n")[0])
    ap.add_argument("out", type=Path)
    ap.add_argument("--extra", type=int, default=4000)
    ap.add_argument("--seeds", default="1,2")
    ap.add_argument("--routing", type=int, default=0)
    args = ap.parse_args(argv)
    rows = draft_conversations(args.extra, tuple(int(s) for s in args.seeds.split(",")), routing=args.routing)
    atomic_write_text(args.out, dumps_jsonl(rows))
    print(f"{args.out}: {len(rows)} conversations")


if __name__ == "__main__":
    main()
