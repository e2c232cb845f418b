"""Benchmark loaders: each data set's released layout, prompts identical to lm-evaluation-harness's own
renderers (so numbers are comparable), few-shot pools, and exit-2 errors naming the missing file or field."""

import importlib.util
import json
from pathlib import Path

import pytest

from angelcli.errors import UsageError
from angelcli.eval.items import loglik_context
from angelcli.eval.tasks import TASKS, load_task
from angelcli.eval.tasks_en import MMLU_MEDICAL
from tests import eval_samples as S

LM_TASKS = Path(importlib.util.find_spec("lm_eval").origin).parent / "tasks"


def _lm_module(rel: str):
    spec = importlib.util.spec_from_file_location(rel.replace("/", "_"), LM_TASKS / rel)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def _jinja(template: str, doc: dict) -> str:
    import jinja2

    return jinja2.Template(template, keep_trailing_newline=True).render(**doc)


def _yaml(rel: str) -> dict:
    import yaml

    return yaml.safe_load((LM_TASKS / rel).read_text(encoding="utf-8"))


@pytest.mark.parametrize("task", sorted(TASKS))
def test_every_task_loads_its_sample(tmp_path, task):
    root = S.WRITERS[task](tmp_path / task)
    td = load_task(task, root, fewshot=2)
    assert td.items and all(i.query for i in td.items)
    for it in td.items:
        if not it.multi_answer:
            assert 0 <= it.gold < len(it.choices)
        shots = td.shots(it, 2, 1234, 0)
        assert 1 <= len(shots) <= 2 and all(s.id != it.id for s in shots)
        assert loglik_context(it, shots).endswith(it.query)


def test_medqa_prompt_matches_lm_eval(tmp_path):
    td = load_task("medqa", S.write_medqa(tmp_path))
    pre = _lm_module("medqa/preprocess_medqa.py")
    for it, (q, o, a) in zip(td.items, S.EN):
        doc = {"sent1": q, **{f"ending{i}": t for i, t in enumerate(o)}, "label": a}  # lm-eval's HF copy
        assert it.query == pre.doc_to_text(doc) and it.gold == pre.doc_to_target(doc) == a
        assert it.description == ""


def test_medmcqa_prompt_matches_lm_eval_and_cop_is_one_based(tmp_path):
    root = S.write_medmcqa(tmp_path)
    td = load_task("medmcqa", root)
    util = _lm_module("medmcqa/utils_medmcqa.py")
    for it, line in zip(td.items, (root / "dev.json").read_text().splitlines()):
        rec = json.loads(line)
        assert it.query == util.doc_to_text(rec) and it.gold == rec["cop"] - 1


def test_pubmedqa_prompt_and_official_test_subset(tmp_path):
    root = S.write_pubmedqa(tmp_path)
    td = load_task("pubmedqa", root, fewshot=1)
    pre = _lm_module("pubmedqa/preprocess_pubmedqa.py")
    data = json.loads((root / "ori_pqal.json").read_text())
    assert [i.id for i in td.items] == list(data)[:4]  # test_ground_truth.json restricts to its PMIDs
    assert {p.id for p in td.pools[""]} == set(list(data)[4:])  # few-shot from the rest
    for it in td.items:
        assert it.query == pre.doc_to_text(data[it.id]) and it.choices == ["yes", "no", "maybe"]
        assert it.choices[it.gold] == data[it.id]["final_decision"]


def test_mmlu_prompt_description_and_first_n_shots(tmp_path):
    td = load_task("mmlu-medical", S.write_mmlu(tmp_path) / "data", fewshot=5)
    tmpl = _yaml("mmlu/default/_default_template_yaml")["doc_to_text"]
    it = td.items[0]
    q, o, a = S.EN[0]
    assert it.query == _jinja(tmpl, {"question": f"{q} ({it.subject})", "choices": o})
    assert it.description == _yaml(f"mmlu/default/mmlu_{it.subject}.yaml")["description"]
    assert [s.query for s in td.shots(it, 5, 0, 0)] == [p.query for p in td.pools[it.subject]]  # dev, in order
    assert {i.subject for i in td.items} == set(MMLU_MEDICAL)


@pytest.mark.parametrize("ceval", [False, True])
def test_cmmlu_and_ceval_prompts_match_lm_eval(tmp_path, ceval):
    td = load_task("cmmlu-medical", S.write_cmmlu(tmp_path, ceval=ceval))
    if ceval:
        tmpl, key, sub = _yaml("ceval/_default_ceval_yaml")["doc_to_text"], "question", "clinical_medicine"
        desc = _yaml(f"ceval/ceval-valid_{sub}.yaml")["description"]
    else:
        tmpl, key, sub = _yaml("cmmlu/_default_template_yaml")["doc_to_text"], "Question", "anatomy"
        desc = _yaml(f"cmmlu/cmmlu_{sub}.yaml")["description"]
    it = next(i for i in td.items if i.subject.endswith("/" + sub))
    q, o, a = S.ZH[0]
    assert it.query == _jinja(tmpl, {key: q, **dict(zip("ABCD", o))})
    assert it.description == desc and it.gold == a


def test_cmb_and_cmexam_keep_multi_answer_questions(tmp_path):
    for task in ("cmb", "cmexam"):
        td = load_task(task, S.WRITERS[task](tmp_path / task))
        multi = [i for i in td.items if i.multi_answer]
        assert len(multi) == 1 and multi[0].gold_letters in ("ABD", "AB")
        assert all(i.query.endswith("答案：") and i.language == "zh" for i in td.items)
    cmb = load_task("cmb", tmp_path / "cmb")
    assert "以下是中国医师考试中执业医师考试的一道单项选择题" in cmb.items[0].query
    assert cmb.items[-1].choices == list("ABCD")  # the empty option E is dropped


def test_missing_file_and_field_errors_name_them(tmp_path):
    with pytest.raises(UsageError, match="phrases_no_exclude_test.jsonl"):
        load_task("medqa", tmp_path)
    root = S.write_medqa(tmp_path / "m", train=False)
    with pytest.raises(UsageError, match=r"--fewshot 3: .*phrases_no_exclude_train.jsonl"):
        load_task("medqa", root, fewshot=3)
    bad = tmp_path / "bad"
    bad.mkdir()
    (bad / "dev.json").write_text(json.dumps({"question": "q", "opa": "a", "opb": "b", "opc": "c", "opd": "d"}) + "\n")
    with pytest.raises(UsageError, match=r"dev.json:1: missing field 'cop'"):
        load_task("medmcqa", bad)
    with pytest.raises(UsageError, match="clinical_knowledge_test.csv"):
        root = S.write_mmlu(tmp_path / "mm")
        (root / "data" / "test" / "clinical_knowledge_test.csv").unlink()
        load_task("mmlu-medical", root)
    with pytest.raises(UsageError, match="--task must be one of"):
        load_task("usmle", tmp_path)


def test_cli_exit_2_names_the_missing_file(tmp_path, capsys):
    from angelcli.cli import main

    with pytest.raises(SystemExit) as e:
        main(["eval", "--task", "pubmedqa", "--data", str(tmp_path)])
    assert e.value.code == 2
    err = capsys.readouterr().err
    assert "ori_pqal.json" in err and "Traceback" not in err


def test_cmb_test_split_joins_the_published_answers(tmp_path):
    root = S.write_cmb(tmp_path)
    val = json.loads((root / "CMB-Exam" / "CMB-val" / "CMB-val-merge.json").read_text())
    test = [{k: v for k, v in r.items() if k != "answer"} | {"id": i + 1} for i, r in enumerate(val)]
    (root / "CMB-Exam" / "CMB-test").mkdir()
    (root / "CMB-Exam" / "CMB-test" / "CMB-test-choice-question-merge.json").write_text(json.dumps(test))
    answers = [{"id": i + 1, "question_type": r["question_type"], "answer": r["answer"]} for i, r in enumerate(val)]
    (root / "CMB-test-choice-answer.json").write_text(json.dumps(answers))
    td = load_task("cmb", root, fewshot=2)
    assert [i.id for i in td.items] == [str(i + 1) for i in range(len(val))]
    assert [i.answer for i in td.items] == [r["answer"] for r in val]
    assert any("CMB-test-choice-answer.json" in f for f in td.files) and len(td.pools[""]) == len(val)
    answers.pop()
    (root / "CMB-test-choice-answer.json").write_text(json.dumps(answers))
    with pytest.raises(UsageError, match=f"id {len(val)!r} has no entry"):
        load_task("cmb", root)


def test_pubmedqa_official_split_files(tmp_path):
    root = S.write_pubmedqa(tmp_path)
    data = json.loads((root / "ori_pqal.json").read_text())
    keys = list(data)
    (root / "test_set.json").write_text(json.dumps({k: data[k] for k in keys[:2]}))
    (root / "pqal_fold0").mkdir()
    (root / "pqal_fold0" / "train_set.json").write_text(json.dumps({k: data[k] for k in keys[2:5]}))
    td = load_task("pubmedqa", root, fewshot=1)
    assert [i.id for i in td.items] == keys[:2] and [p.id for p in td.pools[""]] == keys[2:5]


def test_medmcqa_parquet_copy_is_zero_based(tmp_path):
    pa = pytest.importorskip("pyarrow")
    import pyarrow.parquet as pq

    rows = [{"id": f"p{i}", "question": q, "opa": o[0], "opb": o[1], "opc": o[2], "opd": o[3], "cop": a,
             "subject_name": "Medicine"} for i, (q, o, a) in enumerate(S.EN)]
    pq.write_table(pa.Table.from_pylist(rows), tmp_path / "validation.parquet")
    td = load_task("medmcqa", tmp_path / "validation.parquet")
    assert [i.gold for i in td.items] == [a for _, _, a in S.EN]
