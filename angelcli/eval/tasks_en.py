"""English medical benchmarks from their released files: MedQA (USMLE), MedMCQA, PubMedQA, MMLU medical subjects.

Prompts are lm-evaluation-harness 0.4's (tasks medqa_4options, medmcqa, pubmedqa, mmlu_<subject>; the
multimedqa group is these four). File names and where they come from: docs/eval.md.
"""

from __future__ import annotations

from pathlib import Path

from angelcli.errors import UsageError
from angelcli.eval.items import LETTERS, Item, TaskData, letter_options
from angelcli.eval.readers import (field, find_file, find_optional, loc_id, read_csv, read_json, read_json_records,
                                   read_jsonl)

# lm-eval's multimedqa group: the six MMLU subjects MultiMedQA uses.
MMLU_MEDICAL = ["anatomy", "clinical_knowledge", "college_biology", "college_medicine", "medical_genetics",
                "professional_medicine"]


# ---- MedQA: data_clean/questions/US/4_options/phrases_no_exclude_{test,train}.jsonl --------------------------
def _medqa_item(where: str, rec: dict) -> Item:
    q = field(where, rec, "question")
    options = field(where, rec, "options", kind=dict)
    letters = sorted(options)
    if not letters or letters != list(LETTERS[: len(letters)]):
        raise UsageError(f"{where}: field 'options' must have keys A, B, C, ... (got {', '.join(letters)})")
    ans = field(where, rec, "answer_idx")
    if ans not in options:
        raise UsageError(f"{where}: field 'answer_idx' is {ans!r}, not one of the option letters")
    # lm-eval medqa_4options: "Question: {q}\nA. ..\nB. ..\n...Answer:"
    query = f"Question: {q}\n" + "".join(f"{k}. {options[k]}\n" for k in letters) + "Answer:"
    return Item(id=loc_id(where), query=query, choices=letters, gold=letters.index(ans))


def load_medqa(path: Path, fewshot: int) -> TaskData:
    test = find_file(path, ["4_options/phrases_no_exclude_test.jsonl", "phrases_no_exclude_test.jsonl",
                            "US/test.jsonl"], "the MedQA US test split", "medqa")
    items = [_medqa_item(w, r) for w, r in read_jsonl(test)]
    pool, files = [], [str(test)]
    if fewshot:
        train_name = "train.jsonl" if test.name == "test.jsonl" else "phrases_no_exclude_train.jsonl"
        train = test.with_name(train_name)
        if not train.is_file():
            raise UsageError(f"--fewshot {fewshot}: {train} not found (MedQA's train split, next to {test.name})")
        pool = [_medqa_item(w, r) for w, r in read_jsonl(train)]
        files.append(str(train))
    return TaskData("medqa", items, {"": pool}, "random", files)


# ---- MedMCQA: dev.json / train.json (JSON lines) ----------------------------------------------------------------
def _cop_base(records: list[tuple[str, dict]], path: Path) -> int:
    """The release numbers the correct option 1..4; the Hugging Face copy (parquet) 0..3."""
    values = {r.get("cop") for _, r in records}
    if 0 in values:
        return 0
    if 4 in values:
        return 1
    return 0 if path.suffix == ".parquet" else 1


def _medmcqa_items(path: Path) -> list[Item]:
    records = _read_parquet(path) if path.suffix == ".parquet" else read_json_records(path)
    base = _cop_base(records, path)
    out = []
    for where, rec in records:
        opts = [field(where, rec, k) for k in ("opa", "opb", "opc", "opd")]
        cop = field(where, rec, "cop", kind=int)
        if not 0 <= cop - base < 4:
            raise UsageError(f"{where}: field 'cop' is {cop}, expected {base}..{base + 3}")
        q = field(where, rec, "question")
        # lm-eval medmcqa (utils_medmcqa.doc_to_text)
        query = "Question: " + q + "\nChoices:\n" + letter_options(opts) + "Answer:"
        out.append(Item(id=str(rec.get("id") or loc_id(where)), query=query, choices=list("ABCD"), gold=cop - base,
                        subject=str(rec.get("subject_name") or "")))
    return out


def _read_parquet(path: Path) -> list[tuple[str, dict]]:
    try:
        import pyarrow.parquet as pq
    except ImportError:
        raise UsageError(f"{path}: reading parquet needs pyarrow (pip install pyarrow)") from None
    try:
        rows = pq.read_table(path).to_pylist()
    except Exception as err:  # noqa: BLE001 - pyarrow raises many kinds; one line for the user
        raise UsageError(f"{path}: not a readable parquet file ({err})") from None
    return [(f"{path}[{i}]", r) for i, r in enumerate(rows)]


def load_medmcqa(path: Path, fewshot: int) -> TaskData:
    dev = find_file(path, ["dev.json", "validation.json"], "MedMCQA's dev split (its test split has no answers)",
                    "medmcqa")
    items, pool, files = _medmcqa_items(dev), [], [str(dev)]
    if fewshot:
        train = find_optional(dev, ["train.json"])
        if train is None:
            raise UsageError(f"--fewshot {fewshot}: {dev.with_name('train.json')} not found (MedMCQA's train split)")
        pool = _medmcqa_items(train)
        files.append(str(train))
    return TaskData("medmcqa", items, {"": pool}, "random", files)


# ---- PubMedQA: ori_pqal.json (+ test_ground_truth.json) or test_set.json from split_dataset.py ---------------
def _pubmedqa_items(path: Path, keep: set[str] | None = None) -> list[Item]:
    data = read_json(path)
    if not isinstance(data, dict):
        raise UsageError(f"{path}: expected a JSON object keyed by PMID")
    out = []
    for pmid, rec in data.items():
        if keep is not None and pmid not in keep:
            continue
        where = f"{path}:{pmid}"
        if not isinstance(rec, dict):
            raise UsageError(f"{where}: each PMID must map to an object")
        ctxs = field(where, rec, "CONTEXTS", kind=list)
        label = field(where, rec, "final_decision")
        if label not in ("yes", "no", "maybe"):
            raise UsageError(f"{where}: field 'final_decision' is {label!r}, expected yes, no or maybe")
        # lm-eval pubmedqa (preprocess_pubmedqa.doc_to_text)
        query = "Abstract: {}\nQuestion: {}\nAnswer:".format("\n".join(map(str, ctxs)), field(where, rec, "QUESTION"))
        out.append(Item(id=pmid, query=query, choices=["yes", "no", "maybe"], gold=["yes", "no", "maybe"].index(label)))
    return out


def load_pubmedqa(path: Path, fewshot: int) -> TaskData:
    split = find_optional(path, ["test_set.json"]) if Path(path).is_dir() else None
    files = []
    if split is not None:  # the official 500-question test split (preprocess/split_dataset.py pqal)
        items = _pubmedqa_items(split)
        files.append(str(split))
        src = find_optional(path, ["ori_pqal.json"])
    else:
        src = find_file(path, ["ori_pqal.json"], "PubMedQA's expert-labelled PQA-L set", "pubmedqa")
        truth = find_optional(src, ["test_ground_truth.json"])
        keep = None
        if truth is not None:  # restrict to the official test PMIDs
            t = read_json(truth)
            if not isinstance(t, dict):
                raise UsageError(f"{truth}: expected a JSON object {{PMID: label}}")
            keep = set(t)
            files.append(str(truth))
        items = _pubmedqa_items(src, keep)
        files.insert(0, str(src))
    pool = []
    if fewshot:
        train = find_optional(path, ["pqal_fold0/train_set.json"])
        if train is not None:
            pool = _pubmedqa_items(train)
        elif src is not None:
            ids = {i.id for i in items}
            pool = [i for i in _pubmedqa_items(src) if i.id not in ids]
        if not pool:
            raise UsageError(f"--fewshot {fewshot}: no PubMedQA items outside the test set to draw examples from "
                             "(give ori_pqal.json with test_ground_truth.json, or pqal_fold0/train_set.json)")
    return TaskData("pubmedqa", items, {"": pool}, "random", files)


# ---- MMLU: data/{test,dev}/<subject>_{test,dev}.csv (no header: question, A, B, C, D, answer) ------------------
def _mmlu_items(path: Path, subject: str) -> list[Item]:
    out = []
    for where, row in read_csv(path, header=False):
        if len(row) != 6:
            raise UsageError(f"{where}: expected 6 columns (question, A, B, C, D, answer), got {len(row)}")
        q, *opts, ans = row
        if ans.strip() not in "ABCD" or not ans.strip():
            raise UsageError(f"{where}: answer column is {ans!r}, expected A, B, C or D")
        # lm-eval mmlu default template
        query = f"{q.strip()}\nA. {opts[0]}\nB. {opts[1]}\nC. {opts[2]}\nD. {opts[3]}\nAnswer:"
        desc = f"The following are multiple choice questions (with answers) about {subject.replace('_', ' ')}.\n\n"
        out.append(Item(id=f"{subject}/{loc_id(where)}", query=query, choices=list("ABCD"),
                        gold="ABCD".index(ans.strip()), description=desc, subject=subject, pool_key=subject))
    return out


def load_mmlu_medical(path: Path, fewshot: int, subjects: list[str] | None = None) -> TaskData:
    subjects = subjects or MMLU_MEDICAL
    unknown = [s for s in subjects if s not in MMLU_MEDICAL]
    if unknown:
        raise UsageError(f"--subjects: {unknown[0]} is not an MMLU medical subject ({', '.join(MMLU_MEDICAL)})")
    if not Path(path).is_dir():
        raise UsageError(f"--data {path}: mmlu-medical needs MMLU's data directory (with test/ and dev/)")
    items, pools, files = [], {}, []
    for s in subjects:
        test = find_file(path, [f"test/{s}_test.csv"], f"MMLU {s} test questions", "mmlu-medical")
        items += _mmlu_items(test, s)
        files.append(str(test))
        if fewshot:
            dev = test.parent.parent / "dev" / f"{s}_dev.csv"
            if not dev.is_file():
                raise UsageError(f"--fewshot {fewshot}: {dev} not found (MMLU's dev split, 5 examples per subject)")
            pools[s] = _mmlu_items(dev, s)
            files.append(str(dev))
    return TaskData("mmlu-medical", items, pools, "first_n", files)
