"""Builder version 4 of angel-tiny's corpus: v3, plus what makes a small model answer the question it was asked.

The v2/v3 models answered a new wording about the wrong record ("early signs of a stroke" -> urinary tract
infection, "side effects of statins" -> salbutamol): every training question of a record is one of a few
templates, so the model keyed its answer on the template and the neighbouring words as much as on the name.
Version 4 changes these things, all seeded and all after the v3 samples are drawn:

  * Name anchors. A single-question answer about a condition, symptom or medicine whose first line does not
    name the subject starts with the name as the user typed it ("Statins: common side effects include ...",
    "发烧：..."). Copying a span from the question is the one thing a tiny transformer does reliably; once the
    name is in the answer, the rest of the answer is conditioned on the model's own output, not on a
    lookup through the question's wording. Answers that already name the subject early are left as they are.
  * Question noise. Half of those questions get a lay frame around them ("Hi doctor, my mum ... Thanks.",
    "医生你好，请问...谢谢！"), lower case or a dropped question mark, so the wording around a name stops
    predicting the answer and the name does.
  * More names users type: lay names and drug-class words per record ("statins", "sugar diabetes", "BP",
    "降压药" ...), added to the records' `aka` lists for this version only (v2/v3 stay reproducible).
  * Name swaps. The v2 templates use an aka in about a third of questions, split over several akas, so a
    lay name such as "睡不着" was asked about four times in the whole training split and the first v4 model
    answered "晚上总是睡不着有什么办法？" about a rash. A share of the anchored questions (SWAP_RATE) has its name
    replaced by another name of the same record, and the anchor follows, so every name is seen leading to
    its record's answers. Every name then gets at least MIN_NAME_QUESTIONS questions: copies of the
    record's anchored samples with that name swapped in are added where it has fewer.

  * Words before the name. Half of the Chinese symptom/condition questions that start with the name get a
    when/how-often phrase first (CONTEXT_ZH).

Triage questions get the same frames (their answers stay as written). Multi-turn samples, passages,
dialogues, ICD-10 and synthetic records are unchanged.
"""

from __future__ import annotations

import copy
import random
import re

# Extra names per record (by the record's main name), for v4 only.
EXTRA_AKA = {
    "en": {
        "type 2 diabetes": ["diabetes", "sugar diabetes", "type 2"], "high blood pressure": ["high BP", "blood pressure"],
        "high cholesterol": ["cholesterol", "high LDL"], "coronary artery disease": ["heart disease", "blocked arteries"],
        "atrial fibrillation": ["an irregular pulse"], "asthma": ["wheezing"],
        "chronic kidney disease": ["kidney disease", "weak kidneys"], "gout": ["a gout attack", "uric acid"],
        "depression": ["feeling depressed"], "migraine": ["migraines"], "iron-deficiency anemia": ["anaemia", "iron deficiency"],
        "gastroesophageal reflux disease": ["reflux", "acid indigestion"], "influenza": ["the flu", "influenza A"],
        "common cold": ["the common cold", "a runny nose cold"], "urinary tract infection": ["a urine infection", "burning urine"],
        "gastroenteritis": ["food poisoning", "tummy bug"], "allergic rhinitis": ["allergies"], "low back pain": ["a bad back"],
        "fever": ["a temperature", "high fever"], "headache": ["headaches", "a tension headache"],
        "cough": ["a chesty cough", "a dry cough"], "sore throat": ["a sore throat"], "insomnia": ["poor sleep"],
        "diarrhea": ["the runs"], "fatigue": ["always feeling tired"], "dizziness": ["dizzy spells"],
        "paracetamol": ["paracetamol tablets"], "ibuprofen": ["ibuprofen tablets", "anti-inflammatories"],
        "amoxicillin": ["antibiotics", "penicillin"], "metformin": ["diabetes tablets", "metformin tablets"],
        "atorvastatin": ["statins", "a statin", "cholesterol pills"], "amlodipine": ["blood pressure pills"],
        "omeprazole": ["acid reducers", "antacid tablets"], "cetirizine": ["allergy pills", "hay fever tablets"],
        "salbutamol inhaler": ["an asthma inhaler", "my inhaler"], "levothyroxine": ["thyroid tablets"],
        "sertraline": ["antidepressants"], "warfarin": ["blood thinners"], "loperamide": ["diarrhoea tablets"],
        "insulin": ["insulin shots"],
    },
    "zh": {
        "2型糖尿病": ["糖尿病", "血糖偏高"], "高血压": ["血压偏高", "高血压病"], "高脂血症": ["血脂偏高", "胆固醇高"],
        "冠心病": ["心脏病"], "支气管哮喘": ["哮喘病"], "痛风": ["尿酸高", "痛风病"], "缺铁性贫血": ["贫血症", "血色素低"],
        "胃食管反流病": ["反酸", "胃反酸"], "普通感冒": ["着凉"], "流行性感冒": ["甲流"], "急性胃肠炎": ["肠胃不好"],
        "尿路感染": ["尿频尿急", "尿道炎"], "失眠": ["失眠症", "睡眠差"], "发热": ["高烧", "低烧"], "咳嗽": ["老咳嗽"],
        "腹泻": ["闹肚子"], "头痛": ["头痛病"], "布洛芬": ["布洛芬片", "止痛药"], "对乙酰氨基酚": ["退烧药"],
        "阿莫西林": ["抗生素", "消炎药"], "二甲双胍": ["降糖药"], "阿托伐他汀": ["他汀类药", "降脂药"],
        "氨氯地平": ["降压药"], "奥美拉唑": ["胃药"], "蒙脱石散": ["止泻药物"],
    },
}

PREFIX = {
    "en": ["Hi, ", "Hello doctor, ", "Quick question: ", "Sorry to bother you, but ", "Hi there. ", "Doctor, ",
           "I'm worried. ", "Can you help? ", "My mum asked me this: ", "A friend wants to know: ", "Question: ",
           "Hey, ", "Asking for my husband: ", "Please advise. "],
    "zh": ["医生你好，", "请问，", "你好，", "麻烦问一下，", "医生，", "想咨询一下，", "我妈妈想问：", "我今年45岁，",
           "帮忙看看：", "打扰一下，"],
}
SUFFIX = {
    "en": ["", "", " Thanks.", " Thank you!", " Please help.", " Any advice?", " I'm a bit worried.", " Thanks in advance."],
    "zh": ["", "", "谢谢！", "谢谢医生。", "急，在线等。", "麻烦了。", "有点担心。"],
}
# When and how often, before a Chinese symptom or condition question that starts with its name ("最近老是" +
# "睡不着怎么办？"): the second v4 model answered "晚上总是睡不着有什么办法？" about bleeding but "睡不着有什么办法？"
# about insomnia, having never seen words before the name.
CONTEXT_ZH = ["最近老是", "最近总是", "这几天一直", "晚上经常", "夜里老是", "白天总是", "经常", "一到冬天就", "早上起来",
              "这段时间", "孩子最近", "我爸经常"]
CONTEXT_RATE = 0.5
NOISE_RATE = 0.5  # share of anchored questions that get a lay frame
SWAP_RATE = 0.3  # share of anchored questions whose name is replaced by another name of the same record
MIN_NAME_QUESTIONS = 6  # anchored questions per name at least (added copies with the name swapped in)
ANCHORED_KINDS = ("condition", "symptom", "medication")


def _records(kb: dict, lang: str):
    """The language's condition, symptom and medicine records: the ones a question names."""
    for group in ("conditions", "symptoms", "medicines"):
        yield from kb[lang][group]


def extend_aka(kb: dict) -> dict:
    """A deep copy of corpus._kb() with EXTRA_AKA added to each record's aka list."""
    kb = copy.deepcopy(kb)
    for lang, extra in EXTRA_AKA.items():
        for rec in _records(kb, lang):
            rec["aka"] = list(rec.get("aka", [])) + [a for a in extra.get(rec["name"], []) if a not in rec.get("aka", [])]
    return kb


def record_names(kb: dict, lang: str) -> list[str]:
    """Every name and aka of the language's condition, symptom and medicine records, longest first."""
    names = {n for rec in _records(kb, lang) for n in [rec["name"], *rec.get("aka", [])]}
    return sorted(names, key=lambda n: (-len(n), n))


def name_groups(kb: dict, lang: str) -> dict[str, list[str]]:
    """Each name (case-folded) -> every name of its record (the first record that uses it)."""
    groups: dict[str, list[str]] = {}
    for rec in _records(kb, lang):
        names = [rec["name"], *rec.get("aka", [])]
        for n in names:
            groups.setdefault(n.casefold(), names)
    return groups


def replace_name(question: str, name: str, new: str) -> tuple[str, str]:
    """(question with `name` replaced by `new`, `new` as written there: capitalised at a sentence start)."""
    if name[:1].isupper() and question.startswith(name):
        new = new[:1].upper() + new[1:]
    return question.replace(name, new, 1), new


def swap_name(rng: random.Random, question: str, name: str, groups: dict[str, list[str]]) -> tuple[str, str]:
    """(question, name) with `name` replaced by another name of its record, when it has one."""
    others = [n for n in groups.get(name.casefold(), []) if n.casefold() != name.casefold()]
    if not others:
        return question, name
    return replace_name(question, name, rng.choice(others))


def find_name(question: str, names: list[str], lang: str) -> str | None:
    """The longest record name in the question, as it is written there (English: whole words, any case)."""
    for n in names:
        if lang == "zh":
            if n in question:
                return n
            continue
        m = re.search(r"(?<![\w-])" + re.escape(n) + r"(?![\w-])", question, flags=re.IGNORECASE)
        if m:
            return m.group(0)
    return None


def anchor(answer: str, name: str, lang: str, main: str | None = None) -> str:
    """Start the answer with the name unless its first line (up to 80 characters) names it already.

    With `main` (version 5, bridged anchors) a name other than the record's main name is followed by the main
    name in brackets ("睡不着（失眠）：...", "Statins (atorvastatin): ..."): the model has to map a lay name to
    its record once, in two tokens it can copy or look up, and then continues from the main name, which leads
    every answer of the record and so has many times the training examples of any one lay name."""
    head = answer.split("\n", 1)[0][:80]
    if name.casefold() in head.casefold():
        return answer
    label = name if main is None or main.casefold() == name.casefold() else (
        f"{name}（{main}）" if lang == "zh" else f"{name} ({main})")
    if lang == "zh":
        return f"{label}：{answer}"
    # "Treatment starts ..." -> "treatment starts ..."; "HbA1c", "ACE inhibitors", "I" stay as written
    first = answer[:1].lower() + answer[1:] if re.match(r"[A-Z][a-z]+\b", answer) else answer
    return f"{label[:1].upper()}{label[1:]}: {first}"


def add_context(rng: random.Random, question: str, name: str, kind: str, lang: str) -> str:
    """Chinese symptom/condition questions that start with the name: half get a when/how-often phrase first."""
    if lang == "zh" and kind in ("symptom", "condition") and question.startswith(name) and rng.random() < CONTEXT_RATE:
        return rng.choice(CONTEXT_ZH) + question
    return question


def add_noise(rng: random.Random, question: str, lang: str) -> str:
    """A lay frame around the question; English sometimes lower-cased or without its question mark."""
    q = question
    if lang == "en":
        style = rng.randrange(4)
        if style == 1:
            q = q[:1].lower() + q[1:]
        elif style == 2 and q.endswith("?"):
            q = q[:-1]
        pre = rng.choice(PREFIX["en"])
        if pre.endswith((", ", ": ")) and re.match(r"[A-Z][a-z]+\b", q):  # "Hi, what is ..." ("Hi, I have ...")
            q = q[:1].lower() + q[1:]
        return pre + q + rng.choice(SUFFIX["en"])
    return rng.choice(PREFIX["zh"]) + q + rng.choice(SUFFIX["zh"])


def apply_v4(rng: random.Random, raw: list[tuple[str, str, list]], kb: dict,
             bridge: bool = False) -> list[tuple[str, str, list]]:
    """Anchor and (half of the time) frame the first question of every record sample; the rest as it is.
    bridge=True (version 5): anchors name the record's main name after a lay name (see anchor())."""
    names = {lang: record_names(kb, lang) for lang in ("en", "zh")}
    groups = {lang: name_groups(kb, lang) for lang in ("en", "zh")}
    out = []
    asked: dict[tuple[str, str], int] = {}  # (lang, casefolded name) -> anchored questions using it
    by_record: dict[tuple[str, str], list[tuple[str, str, str, list]]] = {}  # (lang, record name) -> originals
    for lang, kind, turns in raw:
        if kind in ANCHORED_KINDS and turns:
            (q, a), rest = turns[0], list(turns[1:])
            name = find_name(q, names[lang], lang)
            if name is not None:
                by_record.setdefault((lang, groups[lang][name.casefold()][0]), []).append((kind, q, name, turns))
                if rng.random() < SWAP_RATE:
                    q, name = swap_name(rng, q, name, groups[lang])
                asked[(lang, name.casefold())] = asked.get((lang, name.casefold()), 0) + 1
                # the swapped-in name's own main name: a name two records share belongs to the first of them
                a = anchor(a, name, lang, groups[lang][name.casefold()][0] if bridge else None)
                q = add_context(rng, q, name, kind, lang)
                if rng.random() < NOISE_RATE:
                    q = add_noise(rng, q, lang)
            turns = [(q, a), *rest]
        elif kind == "triage" and rng.random() < NOISE_RATE:  # emergencies asked in lay frames too, answer as is
            turns = [(add_noise(rng, turns[0][0], lang), turns[0][1])]
        out.append((lang, kind, turns))
    for (lang, _), originals in by_record.items():  # insertion order: deterministic
        for new in groups[lang][originals[0][2].casefold()]:
            for _ in range(MIN_NAME_QUESTIONS - asked.get((lang, new.casefold()), 0)):
                kind, q, name, turns = rng.choice(originals)
                q, written = replace_name(q, name, new)
                q = add_context(rng, q, written, kind, lang)
                if rng.random() < NOISE_RATE:
                    q = add_noise(rng, q, lang)
                main = groups[lang][new.casefold()][0] if bridge else None
                out.append((lang, kind, [(q, anchor(turns[0][1], written, lang, main)), *turns[1:]]))
    return out
