"""lm-evaluation-harness on angel's engine: the stock `lm_eval --model angel` runs a task
whose data the test writes (a local task YAML with data_files), and the log-likelihoods it records are
angel's own; loglikelihood_rolling and generate_until match the engine directly."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

pytest.importorskip("lm_eval")

ROOT = Path(__file__).resolve().parent.parent
QUESTIONS = [("Which vitamin deficiency causes scurvy?", ["Vitamin A", "Vitamin D", "Vitamin C", "Vitamin K"], 2),
             ("Which organ makes insulin?", ["Liver", "Pancreas", "Kidney", "Spleen"], 1),
             ("First-line drug for anaphylaxis?", ["Epinephrine", "Aspirin", "Insulin", "Heparin"], 0)]

TASK_YAML = """task: angel_test_mc
dataset_path: json
dataset_kwargs:
  data_files:
    test: {data}
test_split: test
output_type: multiple_choice
doc_to_text: "Question: {{{{question}}}}\\nA. {{{{choices[0]}}}}\\nB. {{{{choices[1]}}}}\\n\\
  C. {{{{choices[2]}}}}\\nD. {{{{choices[3]}}}}\\nAnswer:"
doc_to_choice: ["A", "B", "C", "D"]
doc_to_target: label
metric_list:
  - metric: acc
    aggregation: mean
    higher_is_better: true
metadata:
  version: 1.0
"""


@pytest.fixture(scope="module")
def rt():
    from angelcli.runtime import open_runtime

    return open_runtime(None, device="cpu", dtype="float32", backend="torch")


def _angel_loglik(rt, context: str, continuation: str) -> float:
    from angelcli.eval.runner import encode_pair

    ctx, cont = encode_pair(rt.tokenizer, context, continuation)
    logp = torch.log_softmax(rt.engine.score(ctx + cont), -1)
    return sum(float(logp[len(ctx) - 1 + i, t]) for i, t in enumerate(cont))


def _stock_lm_eval() -> Path:
    import sysconfig

    from angelcli.eval.lm_eval_hook import PTH_NAME

    script = Path(sys.executable).parent / "lm_eval"
    if not (Path(sysconfig.get_paths()["purelib"]) / PTH_NAME).exists() or not script.exists():
        pytest.skip("the lm_eval start-up hook is installed by `python3 -m angelcli.bootstrap test`")
    return script


def test_stock_lm_eval_knows_the_angel_model_type():
    _stock_lm_eval()
    code = "from lm_eval.api.registry import get_model; print(get_model('angel').__name__)"
    p = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300,
                       env=dict(os.environ, PYTHONPATH=str(ROOT)))
    assert p.returncode == 0 and p.stdout.strip() == "AngelLM", p.stderr[-2000:]


@pytest.mark.slow
def test_lm_eval_command_runs_angel_on_local_files(tmp_path, rt):
    data = tmp_path / "test.jsonl"
    data.write_text("".join(json.dumps({"question": q, "choices": o, "label": a}) + "\n" for q, o, a in QUESTIONS))
    (tmp_path / "tasks").mkdir()
    (tmp_path / "tasks" / "angel_test_mc.yaml").write_text(TASK_YAML.format(data=data))
    env = dict(os.environ, HF_DATASETS_OFFLINE="1", HF_HUB_OFFLINE="1", HF_HOME=str(tmp_path / "hf"),
               PYTHONPATH=str(ROOT))
    # The stock console script: the bootstrap's start-up hook registers "angel" in its process.
    cmd = [str(_stock_lm_eval()), "run", "--model", "angel", "--model_args",
           "dtype=float32", "--device", "cpu", "--batch_size", "4", "--tasks", "angel_test_mc", "--include_path",
           str(tmp_path / "tasks"), "--log_samples", "--output_path", str(tmp_path / "out")]
    p = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=600)
    assert p.returncode == 0, p.stderr[-3000:]
    samples = [json.loads(line) for f in (tmp_path / "out").rglob("samples_angel_test_mc_*.jsonl")
               for line in f.read_text().splitlines()]
    assert len(samples) == len(QUESTIONS)
    correct = 0
    for s in samples:
        lls = []
        for (args,), resp in zip([[a] for a in s["arguments"].values()], s["resps"]):
            ll = float(resp[0][0])
            assert ll == pytest.approx(_angel_loglik(rt, args["arg_0"], args["arg_1"]), abs=1e-4)
            lls.append(ll)
        correct += lls.index(max(lls)) == s["doc"]["label"]
    results = json.loads(next((tmp_path / "out").rglob("results_*.json")).read_text())
    assert results["results"]["angel_test_mc"]["acc,none"] == pytest.approx(correct / len(QUESTIONS))


def test_rolling_and_generate_until_match_the_engine(rt):
    from lm_eval.api.instance import Instance

    from angelcli.eval.lm_eval_adapter import AngelLM
    from angelcli.engine.sampling import SamplingParams

    lm = AngelLM(device="cpu", dtype="float32", backend="torch", max_length=10, batch_size=4)
    text = "Insulin lowers blood glucose. Metformin is first-line for type 2 diabetes in most adults."
    req = Instance("loglikelihood_rolling", {}, (text,), 0)
    (total,) = lm.loglikelihood_rolling([req])
    ids = lm.tok_encode(text)
    assert len(ids) > 2 * 10  # several windows
    # lm-eval's windows (each token predicted once); each window's score is the engine's own forward
    from lm_eval import utils

    ref = 0.0
    for ctx, cont in map(utils.make_disjoint_window,
                         utils.get_rolling_token_windows(ids, lm.prefix_token_id, 10, 1)):
        logp = torch.log_softmax(rt.engine.score(ctx + cont), -1)
        ref += sum(float(logp[len(ctx) - 1 + i, t]) for i, t in enumerate(cont))
    assert total == pytest.approx(ref, abs=1e-3)

    lm = AngelLM(device="cpu", dtype="float32", backend="torch", batch_size=4)
    prompt = "Question: What is a fever?\nAnswer:"
    greq = Instance("generate_until", {}, (prompt, {"until": ["\n"], "max_gen_toks": 12}), 0)
    (out,) = lm.generate_until([greq])
    want = [s.token_id for s in rt.engine.generate(lm.tok_encode(prompt),
                                                   SamplingParams(max_new_tokens=12, stop_ids=tuple(rt.eos_ids)))
            if s.finish_reason != "stop"]
    ref_text = rt.tokenizer.decode(want, skip_special_tokens=True).split("\n")[0]
    assert out == ref_text
