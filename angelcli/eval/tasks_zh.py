"""Chinese medical benchmarks from their released files: CMB-Exam, CMExam, CMMLU and C-Eval medical subjects.

CMMLU and C-Eval prompts are lm-evaluation-harness 0.4's (cmmlu_<subject>, ceval-valid_<subject>). CMB and
CMExam have no lm-eval task; they use the same shape (question, "A. ..." option lines, "答案：", continuation
" A") with CMB's own answer-only instruction line. Multiple-answer questions (多项选择题) are kept: the
log-likelihood mode leaves them out (reported as skipped) and the generation mode scores them by exact set.
"""

from __future__ import annotations

import re
from pathlib import Path

from angelcli.errors import UsageError
from angelcli.eval.items import LETTERS, Item, TaskData, letter_options
from angelcli.eval.readers import field, find_file, find_optional, loc_id, read_csv, read_json_records

CMMLU_MEDICAL = {"anatomy": "解剖学", "clinical_knowledge": "临床知识", "college_medical_statistics": "大学医学统计",
                 "college_medicine": "大学医学", "genetics": "遗传学", "nutrition": "营养学",
                 "professional_medicine": "专业医学", "traditional_chinese_medicine": "中医中药", "virology": "病毒学"}
CEVAL_MEDICAL = {"basic_medicine": "基础医学", "clinical_medicine": "临床医学", "physician": "医师资格"}


def _letters_item(where: str, q: str, options: dict[str, str], answer: str, **kw) -> Item:
    letters = [k for k in LETTERS if k in options and str(options[k]).strip()]
    if not letters:
        raise UsageError(f"{where}: no options A, B, C, ...")
    answer = answer.strip().upper()
    if not answer or any(a not in letters for a in answer):
        raise UsageError(f"{where}: answer {answer!r} is not among the option letters {''.join(letters)}")
    query = q.strip() + "\n" + letter_options([options[k] for k in letters]) + "答案："
    gold = letters.index(answer) if len(answer) == 1 else None
    return Item(query=query, choices=letters, gold=gold, gold_letters="".join(sorted(answer)), language="zh", **kw)


# ---- CMB-Exam: CMB-val/CMB-val-merge.json; CMB-test/CMB-test-choice-question-merge.json + answers ------------
def _cmb_item(where: str, rec: dict, answer: str | None = None) -> Item:
    opts = field(where, rec, "option", kind=dict)
    qtype = field(where, rec, "question_type")
    # CMB's answer-only prompt line, one per question (its few-shot examples repeat it too)
    head = (f"以下是中国{rec.get('exam_type', '')}中{rec.get('exam_class', '')}考试的一道{qtype}，"
            "不需要做任何分析和解释，直接输出答案选项。\n")
    ans = answer if answer is not None else field(where, rec, "answer")
    return _letters_item(where, head + field(where, rec, "question"), opts, ans, id=str(rec.get("id") or loc_id(where)),
                         subject=str(rec.get("exam_subject") or rec.get("exam_class") or ""))


def load_cmb(path: Path, fewshot: int) -> TaskData:
    files, items = [], None
    if Path(path).is_dir():
        test = find_optional(path, ["CMB-test/CMB-test-choice-question-merge.json"])
        answers = find_optional(path, ["CMB-test-choice-answer.json"])
        if test is not None and answers is not None:  # the test split, answers published in 2024
            key = {str(r.get("id")): r for _, r in read_json_records(answers)}
            items = []
            for where, rec in read_json_records(test):
                a = key.get(str(rec.get("id")))
                if a is None:
                    raise UsageError(f"{where}: id {rec.get('id')!r} has no entry in {answers}")
                items.append(_cmb_item(where, rec, field(f"{answers}:{rec.get('id')}", a, "answer")))
            files += [str(test), str(answers)]
    val = find_optional(path, ["CMB-val/CMB-val-merge.json", "CMB-val-merge.json"]) if Path(path).is_dir() else None
    if items is None:
        val = find_file(path, ["CMB-val/CMB-val-merge.json", "CMB-val-merge.json"],
                        "CMB-Exam's validation split (or CMB-test + CMB-test-choice-answer.json)", "cmb")
        items = [_cmb_item(w, r) for w, r in read_json_records(val)]
        files.append(str(val))
    pool = []
    if fewshot:
        if val is None:
            raise UsageError(f"--fewshot {fewshot}: CMB-val/CMB-val-merge.json not found (CMB's few-shot source)")
        pool = [_cmb_item(w, r) for w, r in read_json_records(val)]
        if str(val) not in files:
            files.append(str(val))
    return TaskData("cmb", items, {"": pool}, "random", files)


# ---- CMExam: test.csv / train.csv with Question, Options ("A text\nB text..."), Answer ------------------------
_OPTION_LINE = re.compile(r"^\s*([A-J])(?:[\s.．、:：)）]+|$)(.*)$")  # "A 文字", "A. 文字", "A、文字"


def _cmexam_items(path: Path) -> list[Item]:
    out = []
    for where, row in read_csv(path):
        q = field(where, row, "Question", "问题")
        raw = field(where, row, "Options", "选项")
        ans = field(where, row, "Answer", "答案")
        options = {}
        for line in raw.splitlines():
            m = _OPTION_LINE.match(line)
            if m:
                options[m.group(1)] = m.group(2).strip()
        if not ans.strip():
            continue  # a few released rows carry no answer; CMExam's own scripts drop them too
        out.append(_letters_item(where, "以下是中国医师资格考试的一道选择题，请直接给出正确答案的选项。\n" + q,
                                 options, ans, id=loc_id(where)))
    return out


def load_cmexam(path: Path, fewshot: int) -> TaskData:
    test = find_file(path, ["test.csv"], "CMExam's test split", "cmexam")
    items, pool, files = _cmexam_items(test), [], [str(test)]
    if fewshot:
        train = test.with_name("train.csv")
        if not train.is_file():
            raise UsageError(f"--fewshot {fewshot}: {train} not found (CMExam's train split, next to test.csv)")
        pool = _cmexam_items(train)
        files.append(str(train))
    return TaskData("cmexam", items, {"": pool}, "random", files)


# ---- CMMLU: {test,dev}/<subject>.csv; C-Eval: {val,dev}/<subject>_{val,dev}.csv ------------------------------
def _mmlu_zh_items(path: Path, subject: str, desc: str, cols: tuple[str, str]) -> list[Item]:
    out = []
    for where, row in read_csv(path):
        opts = {k: field(where, row, k) for k in "ABCD"}
        it = _letters_item(where, field(where, row, cols[0]), opts, field(where, row, cols[1]),
                           id=f"{subject}/{loc_id(where)}", description=desc, subject=subject,
                           pool_key=subject)
        out.append(it)
    return out


def load_cmmlu_medical(path: Path, fewshot: int, subjects: list[str] | None = None) -> TaskData:
    """CMMLU's medical subjects, C-Eval's, or both: whichever layouts sit under PATH."""
    path = Path(path).expanduser()
    if not path.is_dir():
        raise UsageError(f"--data {path}: cmmlu-medical needs the CMMLU or C-Eval data directory")
    cmmlu = find_optional(path, ["test/anatomy.csv"])
    ceval = find_optional(path, ["val/clinical_medicine_val.csv"])
    if cmmlu is None and ceval is None:
        raise UsageError(f"--data {path}: no test/anatomy.csv (CMMLU) or val/clinical_medicine_val.csv (C-Eval) "
                         "(see docs/eval.md, task cmmlu-medical)")
    wanted = subjects or list(CMMLU_MEDICAL if cmmlu else {}) + list(CEVAL_MEDICAL if ceval else {})
    unknown = [s for s in wanted if s not in CMMLU_MEDICAL and s not in CEVAL_MEDICAL]
    if unknown:
        raise UsageError(f"--subjects: {unknown[0]} is not a CMMLU / C-Eval medical subject "
                         f"({', '.join(list(CMMLU_MEDICAL) + list(CEVAL_MEDICAL))})")
    items, pools, files = [], {}, []
    for s in wanted:
        if s in CMMLU_MEDICAL and cmmlu is not None:
            root, test_name, dev_name = cmmlu.parent.parent, f"test/{s}.csv", f"dev/{s}.csv"
            desc, cols, key = f"以下是关于{CMMLU_MEDICAL[s]}的单项选择题，请直接给出正确答案的选项。\n\n", \
                ("Question", "Answer"), f"cmmlu/{s}"
        elif s in CEVAL_MEDICAL and ceval is not None:
            root, test_name, dev_name = ceval.parent.parent, f"val/{s}_val.csv", f"dev/{s}_dev.csv"
            desc, cols, key = f"以下是中国关于{CEVAL_MEDICAL[s]}的单项选择题，请选出其中的正确答案。\n\n", \
                ("question", "answer"), f"ceval/{s}"
        else:
            raise UsageError(f"--subjects {s}: its data set ({'CMMLU' if s in CMMLU_MEDICAL else 'C-Eval'}) "
                             f"is not under {path}")
        test = root / test_name
        if not test.is_file():
            raise UsageError(f"--data {path}: {test} not found ({key.split('/')[0]} subject {s})")
        items += _mmlu_zh_items(test, key, desc, cols)
        files.append(str(test))
        if fewshot:
            dev = root / dev_name
            if not dev.is_file():
                raise UsageError(f"--fewshot {fewshot}: {dev} not found (the dev split, 5 examples per subject)")
            pools[key] = _mmlu_zh_items(dev, key, desc, cols)
            files.append(str(dev))
    return TaskData("cmmlu-medical", items, pools, "first_n", files)

