"""Corpus samples from two installed packages (the `corpus` extra), read at build time only:

* simple-icd-10-cm: ICD-10-CM code titles, inclusion terms and exclusions (CDC/NCHS, public domain):
  code-lookup questions, reverse lookups, and what a chapter or block contains, in English, plus English
  descriptions asked about in Chinese.
* faker-healthcare-provider (MIT): its bilingual disease tables (158 diseases with ICD-10 codes and
  departments) and seeded synthetic patient records (en and zh_CN), turned into record-reading tasks:
  summarise the record, list labs outside their reference ranges, check the vital signs. The answers are
  computed from the record's own numbers, so they are correct by construction. The package's symptom and
  medicine lists are shown only as record content, never stated as medical facts.

Each function returns (lang, kind, turns) triples; corpus.py adds system prompts, dedupes and splits.
"""

from __future__ import annotations

import datetime
import random

from angelcli.errors import UsageError

REFERENCE_DATE = datetime.date(2025, 1, 1)  # patient ages are computed against a fixed date: reproducible


def _require(module: str, package: str):
    import importlib

    try:
        return importlib.import_module(module)
    except ImportError as exc:
        raise UsageError(f"building the corpus needs the '{package}' package: pip install 'angelcli[corpus]'") from exc


def source_versions() -> dict[str, str]:
    from importlib.metadata import PackageNotFoundError, version

    out = {}
    for p in ("simple-icd-10-cm", "faker-healthcare-provider", "faker"):
        try:
            out[p] = version(p)
        except PackageNotFoundError:
            out[p] = "missing"
    return out


# ---- ICD-10-CM ------------------------------------------------------------------------------------

_ICD_Q = ["What does ICD-10-CM code {c} mean?", "What is {c} in ICD-10-CM?", "Can you look up the ICD-10-CM code {c}?",
          "Which condition is coded as {c}?", "Explain the diagnosis code {c}."]
_ICD_REV = ["What is the ICD-10-CM code for {d}?", "Which ICD-10-CM code is used for {d}?", "How is {d} coded in ICD-10-CM?"]
_ICD_ZH = ["ICD-10-CM编码{c}是什么意思？", "{c}这个诊断编码对应什么？", "帮我查一下ICD-10-CM的{c}。"]


def _lower_first(s: str) -> str:
    return s[:1].lower() + s[1:] if s[1:2].islower() else s


def _icd_answer(icd, rng: random.Random, code: str) -> str:
    desc = icd.get_description(code)
    anc = icd.get_ancestors(code)  # [parent, ..., block, chapter]
    chapter, block = anc[-1], anc[-2] if len(anc) >= 2 else None
    out = f"{code} is \"{desc}\"."
    if len(anc) >= 3:
        out += f" It falls under {anc[0]} ({icd.get_description(anc[0])})"
        out += f", in the block {icd.get_description(block)}." if block and block != anc[0] else "."
    elif block:
        out += f" It is in the block {icd.get_description(block)}."
    out += f" This is in chapter {chapter} of ICD-10-CM: {icd.get_description(chapter)}."
    incl = (icd.get_inclusion_term(code) or []) + (icd.get_includes(code) or [])
    if incl and rng.random() < 0.8:
        out += " It also covers: " + "; ".join(incl[:4]) + "."
    excl = icd.get_excludes1(code) or []
    if excl and rng.random() < 0.7:
        out += " Excludes: " + "; ".join(excl[:3]) + "."
    if not icd.is_leaf(code) and rng.random() < 0.5:
        kids = icd.get_children(code)
        out += f" It has {len(kids)} more specific codes, such as " + ", ".join(
            f"{k} ({_lower_first(icd.get_description(k))})" for k in kids[:3]) + "."
    return out


def icd_samples(rng: random.Random, n_codes: int, n_reverse: int, n_blocks: int, n_zh: int) -> list[tuple[str, str, list]]:
    icd = _require("simple_icd_10_cm", "simple-icd-10-cm")
    codes = icd.get_all_codes(True)
    # External causes (V-Y: transport accidents, falls...) are left out: long titles, little medicine.
    cats = [c for c in codes if icd.is_category(c) and c[0] not in "VWXY"]
    # Subcategories outside the injury/external-cause chapters (S-Y), whose tens of thousands of
    # 7th-character variants would otherwise crowd out the clinical codes.
    subs = [c for c in codes if icd.is_subcategory(c) and c[0] not in "STVWXY"]
    out: list[tuple[str, str, list]] = []
    picked = rng.sample(cats, min(len(cats), n_codes // 2)) + rng.sample(subs, n_codes - n_codes // 2)
    for code in picked:
        q = rng.choice(_ICD_Q).format(c=code)
        out.append(("en", "icd10", [(q, _icd_answer(icd, rng, code))]))
    for code in rng.sample(subs + cats, n_reverse):
        d = icd.get_description(code)
        q = rng.choice(_ICD_REV).format(d=_lower_first(d))
        a = f"The ICD-10-CM code for {_lower_first(d)} is {code}." + rng.choice([
            "", f" It belongs to chapter {icd.get_ancestors(code)[-1]}: {icd.get_description(icd.get_ancestors(code)[-1])}.",
            " Coding should always follow the full documentation and the official guidelines."])
        out.append(("en", "icd10", [(q, a)]))
    for ch in [c for c in codes if icd.is_chapter(c)]:
        blocks = icd.get_children(ch)
        q = rng.choice(["What does chapter {n} of ICD-10-CM cover?", "Which blocks are in ICD-10-CM chapter {n}?"]).format(n=ch)
        a = f"Chapter {ch} is {icd.get_description(ch)}. Its blocks are:\n" + "\n".join(f"- {icd.get_description(b)}" for b in blocks)
        out.append(("en", "icd10", [(q, a)]))
    # A few blocks are a single code with the category's name (Z66 "Do not resuscitate"); skip those.
    blocks_all = [c for c in codes if icd.is_block(c) and len(icd.get_children(c)) > 1]
    for blk in rng.sample(blocks_all, n_blocks):
        kids = icd.get_children(blk)
        q = rng.choice(["What categories are in the ICD-10-CM block {b}?", "What does the code range {b} include?"]).format(b=blk)
        a = f"The block {icd.get_description(blk)} contains:\n" + "\n".join(f"- {k}: {icd.get_description(k)}" for k in kids[:12])
        if len(kids) > 12:
            a += f"\n... and {len(kids) - 12} more categories."
        out.append(("en", "icd10", [(q, a)]))
    # Chinese questions about the English titles (the official titles are English).
    for code in rng.sample(cats, n_zh):
        anc = icd.get_ancestors(code)
        a = (f"{code}在ICD-10-CM中的英文名称是“{icd.get_description(code)}”，属于第{anc[-1]}章"
             f"（{icd.get_description(anc[-1])}）。")
        incl = icd.get_inclusion_term(code) or []
        if incl:
            a += "包含的情况有：" + "；".join(incl[:3]) + "。"
        out.append(("zh", "icd10", [(rng.choice(_ICD_ZH).format(c=code), a)]))
    return out


# ---- faker-healthcare-provider: disease tables ------------------------------------------------------

def disease_table_samples(rng: random.Random) -> list[tuple[str, str, list]]:
    en = _require("faker_healthcare.disease_correlations", "faker-healthcare-provider").DISEASE_CORRELATIONS
    zh = _require("faker_healthcare.zh_CN.disease_correlations", "faker-healthcare-provider").DISEASE_CORRELATIONS
    by_code_zh = {v["icd10"]: (k, v) for k, v in zh.items()}
    out = []
    for name_en, v in en.items():
        code = v["icd10"]
        out.append(("en", "icd10", [(rng.choice(["What is the ICD-10 code for {d}?", "Which ICD-10 code matches {d}?"]).format(d=name_en),
                                     f"{name_en} is usually coded as {code} in ICD-10. It is mainly managed in {v['medical_specialty'].lower()}.")]))
        if code in by_code_zh:
            name_zh, vz = by_code_zh[code]
            out.append(("zh", "icd10", [(rng.choice(["ICD-10编码{c}对应什么疾病？", "{c}是哪个病的编码？"]).format(c=code),
                                         f"{code}对应{name_zh}（英文：{name_en}）。通常在{vz['medical_specialty']}就诊。")]))
            out.append(("zh", "department", [(rng.choice(["{d}应该挂什么科？", "得了{d}去哪个科看？", "{d}一般看哪个科室？"]).format(d=name_zh),
                                              f"{name_zh}一般在{vz['medical_specialty']}就诊，ICD-10编码为{code}。"
                                              + rng.choice(["", "如果不确定，可以先到全科或导诊台咨询。", "病情紧急时请直接去急诊。"]))]))
    return out
