"""Small benchmark samples in each data set's released file layout, written for the tests (the questions are
made up here, not taken from the data sets)."""

from __future__ import annotations

import csv
import json
from pathlib import Path

EN = [  # (question, options, answer index)
    ("A 54-year-old man has crushing chest pain for 30 minutes. Which test comes first?",
     ["Electrocardiogram", "Colonoscopy", "Skin biopsy", "Spirometry"], 0),
    ("A 3-year-old has a barking cough and inspiratory stridor. Most likely diagnosis?",
     ["Asthma", "Croup", "Pneumonia", "Otitis media"], 1),
    ("Deficiency of which vitamin causes scurvy?", ["Vitamin A", "Vitamin D", "Vitamin C", "Vitamin K"], 2),
    ("Deep rapid breathing and fruity breath in type 1 diabetes suggest which condition?",
     ["Hypoglycemia", "Hyperthyroidism", "Stroke", "Diabetic ketoacidosis"], 3),
    ("First-line drug for anaphylaxis?", ["Intramuscular epinephrine", "Oral antihistamine", "Inhaled steroid",
                                          "Aspirin"], 0),
    ("Which organ makes insulin?", ["Liver", "Pancreas", "Kidney", "Spleen"], 1),
]
ZH = [
    ("高血压患者每日食盐摄入量建议不超过", ["15克", "10克", "5克", "20克"], 2),
    ("糖尿病的典型症状是", ["三多一少", "发热", "咳嗽", "皮疹"], 0),
    ("缺铁性贫血最常见的原因是", ["慢性失血", "遗传", "感染", "中毒"], 0),
    ("心脏位于", ["腹腔", "胸腔", "盆腔", "颅腔"], 1),
]
L = "ABCD"


def write_medqa(root: Path, items=EN, train=True) -> Path:
    d = root / "data_clean" / "questions" / "US" / "4_options"
    d.mkdir(parents=True, exist_ok=True)

    def dump(name, rows):
        with open(d / name, "w", encoding="utf-8") as f:
            for q, o, a in rows:
                f.write(json.dumps({"question": q, "answer": o[a], "options": dict(zip(L, o)), "meta_info": "step1",
                                    "answer_idx": L[a], "metamap_phrases": []}) + "\n")
    dump("phrases_no_exclude_test.jsonl", items)
    if train:
        dump("phrases_no_exclude_train.jsonl", [("Practice: " + q, o, a) for q, o, a in items[::-1]])
    return root


def write_medmcqa(root: Path) -> Path:
    root.mkdir(parents=True, exist_ok=True)
    for name, rows in (("dev.json", EN), ("train.json", EN[::-1])):
        with open(root / name, "w", encoding="utf-8") as f:
            for i, (q, o, a) in enumerate(rows):
                f.write(json.dumps({"question": q, "exp": "", "cop": a + 1, "opa": o[0], "opb": o[1], "opc": o[2],
                                    "opd": o[3], "subject_name": "Medicine", "topic_name": None,
                                    "id": f"{name[:3]}-{i}", "choice_type": "single"}) + "\n")
    return root


def write_pubmedqa(root: Path) -> Path:
    root.mkdir(parents=True, exist_ok=True)
    labels = ["yes", "no", "maybe", "yes", "no", "yes"]
    data = {str(1000 + i): {"QUESTION": f"Does treatment {i} lower blood pressure?",
                            "CONTEXTS": [f"Background sentence {i}.", f"Results sentence {i}."],
                            "LABELS": ["BACKGROUND", "RESULTS"], "MESHES": [], "YEAR": "2010",
                            "reasoning_required_pred": lab, "reasoning_free_pred": lab, "final_decision": lab,
                            "LONG_ANSWER": "Conclusion."} for i, lab in enumerate(labels)}
    (root / "ori_pqal.json").write_text(json.dumps(data), encoding="utf-8")
    truth = {k: v["final_decision"] for k, v in list(data.items())[:4]}
    (root / "test_ground_truth.json").write_text(json.dumps(truth), encoding="utf-8")
    return root


def write_mmlu(root: Path) -> Path:
    from angelcli.eval.tasks_en import MMLU_MEDICAL

    for split in ("test", "dev"):
        (root / "data" / split).mkdir(parents=True, exist_ok=True)
        for s in MMLU_MEDICAL:
            with open(root / "data" / split / f"{s}_{split}.csv", "w", encoding="utf-8", newline="") as f:
                w = csv.writer(f)
                for q, o, a in (EN[:2] if split == "test" else EN[2:]):
                    w.writerow([f"{q} ({s})", *o, L[a]])
    return root


def write_cmmlu(root: Path, ceval: bool = False) -> Path:
    from angelcli.eval.tasks_zh import CEVAL_MEDICAL, CMMLU_MEDICAL

    subjects = CEVAL_MEDICAL if ceval else CMMLU_MEDICAL
    for split in ("val", "dev") if ceval else ("test", "dev"):
        (root / split).mkdir(parents=True, exist_ok=True)
        for s in subjects:
            name = f"{s}_{split}.csv" if ceval else f"{s}.csv"
            with open(root / split / name, "w", encoding="utf-8", newline="") as f:
                w = csv.writer(f)
                w.writerow(["id", "question", "A", "B", "C", "D", "answer", "explanation"] if ceval
                           else ["", "Question", "A", "B", "C", "D", "Answer"])
                for i, (q, o, a) in enumerate(ZH[:2] if split != "dev" else ZH[2:]):
                    w.writerow([i, q, *o, L[a]] + ([""] if ceval else []))
    return root


def write_cmb(root: Path) -> Path:
    rows = []
    for i, (q, o, a) in enumerate(ZH):
        rows.append({"exam_type": "医师考试", "exam_class": "执业医师", "exam_subject": "内科", "question": q,
                     "answer": L[a], "question_type": "单项选择题", "option": dict(zip(L, o))})
    rows.append({"exam_type": "医师考试", "exam_class": "执业医师", "exam_subject": "内科",
                 "question": "下列属于心血管疾病危险因素的是", "answer": "ABD", "question_type": "多项选择题",
                 "option": {"A": "吸烟", "B": "高血压", "C": "规律运动", "D": "糖尿病", "E": ""}})
    d = root / "CMB-Exam" / "CMB-val"
    d.mkdir(parents=True, exist_ok=True)
    (d / "CMB-val-merge.json").write_text(json.dumps(rows, ensure_ascii=False, indent=1), encoding="utf-8")
    return root


def write_cmexam(root: Path) -> Path:
    d = root / "data"
    d.mkdir(parents=True, exist_ok=True)
    for name in ("test.csv", "train.csv"):
        with open(d / name, "w", encoding="utf-8", newline="") as f:
            w = csv.writer(f)
            w.writerow(["Question", "Options", "Answer", "Explanation", "Disease Group", "Clinical Department",
                        "Medical Discipline", "Competency", "Difficulty level"])
            for q, o, a in ZH:
                w.writerow([q, "\n".join(f"{L[i]} {t}" for i, t in enumerate(o)), L[a], "解释", "", "", "", "", ""])
            w.writerow(["关于高血压的正确说法有", "A 可无症状\nB 需长期管理\nC 只见于老年人", "AB", "", "", "", "", "", ""])
    return root


WRITERS = {"medqa": write_medqa, "medmcqa": write_medmcqa, "pubmedqa": write_pubmedqa, "mmlu-medical": write_mmlu,
           "cmb": write_cmb, "cmexam": write_cmexam, "cmmlu-medical": write_cmmlu}
