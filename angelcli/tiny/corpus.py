"""Build angel-tiny's medical chat corpus: train / calib / eval JSONL shipped in angelcli/data/medical/.

Sources (all expanded by seeded templates):
  * hand-written seed knowledge in angelcli/tiny/kb (conditions, symptoms, medicines, triage answers,
    knowledge passages, dialogues; English and Chinese) through corpus_templates_en/zh.py;
  * ICD-10-CM titles (simple-icd-10-cm) and faker-healthcare-provider tables and records
    (corpus_sources.py, corpus_records.py).

Each sample is {"messages": [{"role", "content"}, ...], "lang": "en"|"zh", "kind": str}; about half start
with the AntAngelMed system prompt. Exact duplicates are dropped. Samples that share any assistant reply
are kept in the same split (union-find over reply texts), so no reply text, and hence no sample, appears
in two splits; eval is held out in that sense. Splits are drawn per language so each split has both.

Determinism: one `random.Random(seed)` drives every choice in a fixed order and faker is seeded from the
same seed, so `build_corpus(dir, seed)` writes byte-identical files for the same seed and the same
installed source package versions (recorded in manifest.json).
"""

from __future__ import annotations

import hashlib
import json
import random
from collections import Counter
from pathlib import Path

from angelcli.fsutil import atomic_write_json, atomic_write_text

SYSTEM_PROMPT = "You are AntAngelMed, a helpful medical assistant."
SPLITS = ("train", "calib", "eval")
DATA_DIR = Path(__file__).resolve().parent.parent / "data" / "medical"
BUILDER_VERSION = 5

# Share of samples (per language) that go to the held-out splits.
CALIB_FRAC = 0.05
EVAL_FRAC = 0.06


def _kb():
    from angelcli.tiny.kb import (acute_en, acute_zh, chronic_en, chronic_zh, dialogues_en, dialogues_zh, medicines_en,
                                  medicines_zh, passages_en, passages_zh, symptoms_en, symptoms_zh, triage_en, triage_zh)

    return {
        "en": dict(conditions=chronic_en.CONDITIONS + acute_en.CONDITIONS, symptoms=symptoms_en.SYMPTOMS,
                   medicines=medicines_en.MEDICINES, triage=triage_en.TRIAGE, passages=passages_en.PASSAGES,
                   dialogues=dialogues_en.DIALOGUES),
        "zh": dict(conditions=chronic_zh.CONDITIONS + acute_zh.CONDITIONS, symptoms=symptoms_zh.SYMPTOMS,
                   medicines=medicines_zh.MEDICINES, triage=triage_zh.TRIAGE, passages=passages_zh.PASSAGES,
                   dialogues=dialogues_zh.DIALOGUES),
    }


def _n(base: float, scale: float) -> int:
    return max(1, round(base * scale))


# Per-record variant counts by builder version. Chinese gets more variants per record because it has fewer
# records and its sentences are denser; the mix lands near one third Chinese (checked by the tests).
# Version 2 asks every (record, intent) pair several ways: that is what teaches a small model to map a question
# it has not seen onto the right record, instead of memorising one wording. Version 1 stays reproducible
# because angel-tiny's tokenizer was trained on its train split (angelcli/tiny/tokenizer.py).
VARIANTS = {
    1: {"en": dict(single=2, multi=2, case=3, sym=3, med=2, med_multi=2),
        "zh": dict(single=4, multi=4, case=4, sym=4, med=4, med_multi=3)},
    2: {"en": dict(single=5, multi=3, case=3, sym=6, med=4, med_multi=2),
        "zh": dict(single=9, multi=6, case=5, sym=9, med=8, med_multi=4)},
}
# Version 3 (angelcli/tiny/corpus_v3.py) keeps v2's counts and adds remedy-completed symptom answers, lay
# wordings per intent and de-duplicated list items. The shipped corpus files are still v2 (the shipped model
# was trained on them); `angel tiny-train --corpus-version 3` builds v3 in memory and trains on it.
VARIANTS[3] = VARIANTS[2]
# Version 4 (angelcli/tiny/corpus_v4.py) is v3 with extra lay names per record, name-anchored answers and
# lay-framed questions; the counts stay v2's.
VARIANTS[4] = VARIANTS[2]
# Version 5 is v4 with bridged anchors: a lay name in the question leads the answer followed by the record's
# main name ("睡不着（失眠）：...", corpus_v4.anchor()).
VARIANTS[5] = VARIANTS[2]
# Version 6 (angelcli/tiny/corpus_v6.py) is v5 with more symptom-description ("case") questions and their answers
# naming the possibility first.
VARIANTS[6] = VARIANTS[2]


def kb_for(version: int) -> dict:
    """The knowledge base a builder version draws from (v4 adds lay names to the records' aka lists)."""
    if version >= 4:
        from angelcli.tiny.corpus_v4 import extend_aka

        return extend_aka(_kb())
    return _kb()


def seed_samples(rng: random.Random, scale: float = 1.0, version: int = BUILDER_VERSION) -> list[tuple[str, str, list]]:
    """(lang, kind, turns) from the hand-written knowledge base, in a fixed order."""
    from angelcli.tiny import corpus_templates_en as en
    from angelcli.tiny import corpus_templates_zh as zh

    out: list[tuple[str, str, list]] = []
    k_by_lang = VARIANTS[version]
    kb_all = kb_for(version)
    for lang, T in (("en", en), ("zh", zh)):
        kb, k = kb_all[lang], k_by_lang[lang]
        for c in kb["conditions"]:
            for intent in T.COND_Q:
                for _ in range(_n(k["single"], scale)):
                    out.append((lang, "condition", T.condition_single(rng, c, intent)))
            for _ in range(_n(k["multi"], scale)):
                out.append((lang, "condition", T.condition_multi(rng, c)))
            for _ in range(_n(k["case"], scale)):
                turns = T.condition_case(rng, c)
                if turns:
                    out.append((lang, "case", turns))
        for s in kb["symptoms"]:
            for intent in T.SYM_Q:
                for _ in range(_n(k["sym"], scale)):
                    out.append((lang, "symptom", T.symptom_single(rng, s, intent)))
        for m in kb["medicines"]:
            for intent in T.MED_Q:
                for _ in range(_n(k["med"], scale)):
                    out.append((lang, "medication", T.medicine_single(rng, m, intent)))
            for _ in range(_n(k["med_multi"], scale)):
                out.append((lang, "medication", T.medicine_multi(rng, m)))
        for t in kb["triage"]:
            out += [(lang, "triage", turns) for turns in T.triage_samples(rng, t)]
        for p in kb["passages"]:
            out += [(lang, "knowledge", turns) for turns in T.passage_samples(rng, p)]
        for d in kb["dialogues"]:
            out += [(lang, "dialogue", turns) for turns in T.dialogue_samples(d)]
    if version >= 3:
        from angelcli.tiny.corpus_v3 import extra_samples

        out += extra_samples(rng, kb_all, scale)
    return out


def source_samples(rng: random.Random, seed: int, scale: float = 1.0) -> list[tuple[str, str, list]]:
    from angelcli.tiny.corpus_records import record_samples
    from angelcli.tiny.corpus_sources import disease_table_samples, icd_samples

    return (icd_samples(rng, n_codes=_n(350, scale), n_reverse=_n(150, scale), n_blocks=_n(60, scale), n_zh=_n(150, scale))
            + disease_table_samples(rng)
            + record_samples(rng, n_en=_n(150, scale), n_zh=_n(220, scale), seed=seed))


def to_sample(rng: random.Random, lang: str, kind: str, turns: list) -> dict:
    msgs = [{"role": "system", "content": SYSTEM_PROMPT}] if rng.random() < 0.5 else []
    for user, assistant in turns:
        msgs += [{"role": "user", "content": user}, {"role": "assistant", "content": assistant}]
    return {"messages": msgs, "lang": lang, "kind": kind}


def conversation_key(sample: dict) -> str:
    """Identity of a sample for de-duplication: its turns without the system prompt."""
    return json.dumps([[m["role"], m["content"]] for m in sample["messages"] if m["role"] != "system"], ensure_ascii=False)


def group_by_replies(samples: list[dict]) -> list[int]:
    """Union-find: samples sharing any assistant reply get the same group id (the index of a root sample)."""
    parent = list(range(len(samples)))

    def find(i: int) -> int:
        while parent[i] != i:
            parent[i] = parent[parent[i]]
            i = parent[i]
        return i

    owner: dict[str, int] = {}
    for i, s in enumerate(samples):
        for m in s["messages"]:
            if m["role"] != "assistant":
                continue
            j = owner.setdefault(m["content"], i)
            ri, rj = find(i), find(j)
            if ri != rj:
                parent[max(ri, rj)] = min(ri, rj)
    return [find(i) for i in range(len(samples))]


def split_samples(rng: random.Random, samples: list[dict]) -> dict[str, list[dict]]:
    groups = group_by_replies(samples)
    members: dict[int, list[int]] = {}
    for i, g in enumerate(groups):
        members.setdefault(g, []).append(i)
    out = {s: [] for s in SPLITS}
    for lang in sorted({s["lang"] for s in samples}):
        gids = sorted(g for g in members if samples[g]["lang"] == lang)
        rng.shuffle(gids)
        total = sum(len(members[g]) for g in gids)
        want = {"eval": EVAL_FRAC * total, "calib": CALIB_FRAC * total}
        got = {"eval": 0, "calib": 0}
        for g in gids:
            dest = next((s for s in ("eval", "calib") if got[s] < want[s]), "train")
            if dest != "train":
                got[dest] += len(members[g])
            out[dest] += [samples[i] for i in members[g]]
    for s in SPLITS:
        rng.shuffle(out[s])
    return out


def text_stats(samples: list[dict]) -> dict:
    chars = Counter()
    nbytes = 0
    for s in samples:
        for m in s["messages"]:
            chars[s["lang"]] += len(m["content"])
            nbytes += len(m["content"].encode("utf-8"))
    total = sum(chars.values())
    langs = Counter(s["lang"] for s in samples)
    return {"samples": len(samples), "text_bytes": nbytes, "text_chars": total,
            "zh_char_share": round(chars["zh"] / max(total, 1), 4),
            "zh_sample_share": round(langs["zh"] / max(len(samples), 1), 4),
            "kinds": dict(sorted(Counter(s["kind"] for s in samples).items())),
            "multi_turn": sum(1 for s in samples if sum(m["role"] == "user" for m in s["messages"]) > 1)}


def generate(seed: int = 0, scale: float = 1.0, version: int = BUILDER_VERSION) -> dict[str, list[dict]]:
    """All samples, de-duplicated and split; nothing is written. `version` picks the VARIANTS counts."""
    rng = random.Random(seed)
    raw = seed_samples(rng, scale, version) + source_samples(rng, seed, scale)
    seen: set[str] = set()
    samples = []
    if version >= 3:
        from angelcli.tiny.corpus_v3 import dedupe_reply

        raw = [(lang, kind, [(u, dedupe_reply(a)) for u, a in turns]) for lang, kind, turns in raw]
    if version >= 4:
        from angelcli.tiny.corpus_v4 import apply_v4

        kb = kb_for(version)
        # own stream: v3's draws stay as they were; v5 draws exactly what v4 draws, only the anchors differ
        raw = apply_v4(random.Random(seed + 4), raw, kb, bridge=version >= 5)
    if version >= 6:
        from angelcli.tiny.corpus_v6 import apply_v6

        raw = apply_v6(random.Random(seed + 6), raw, kb)
    for lang, kind, turns in raw:
        s = to_sample(rng, lang, kind, turns)
        key = conversation_key(s)
        if key not in seen:
            seen.add(key)
            samples.append(s)
    return split_samples(rng, samples)


def dumps_jsonl(samples: list[dict]) -> str:
    return "".join(json.dumps(s, ensure_ascii=False, separators=(",", ":")) + "\n" for s in samples)


def build_corpus(out_dir: str | Path = DATA_DIR, seed: int = 0, scale: float = 1.0,
                 version: int = BUILDER_VERSION) -> dict:
    """Write {train,calib,eval}.jsonl and manifest.json into `out_dir`; return the manifest.

    `scale` < 1 builds a proportionally smaller corpus (tests use it for speed).
    """
    from angelcli.tiny.corpus_sources import source_versions

    out = Path(out_dir)
    splits = generate(seed, scale, version)
    manifest = {"builder_version": version, "seed": seed, "scale": scale, "sources": source_versions(),
                "total": text_stats([s for v in splits.values() for s in v]), "splits": {}}
    for name in SPLITS:
        text = dumps_jsonl(splits[name])
        atomic_write_text(out / f"{name}.jsonl", text)
        manifest["splits"][name] = {**text_stats(splits[name]), "file_bytes": len(text.encode("utf-8")),
                                    "sha256": hashlib.sha256(text.encode("utf-8")).hexdigest()}
    atomic_write_json(out / "manifest.json", manifest)
    return manifest


if __name__ == "__main__":  # python -m angelcli.tiny.corpus [out_dir]: rebuild the shipped corpus
    import sys

    print(json.dumps(build_corpus(sys.argv[1] if len(sys.argv) > 1 else DATA_DIR), indent=2, ensure_ascii=False))
