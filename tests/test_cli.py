"""CLI behaviour: --help imports no torch, exit codes, one-line errors, generate's JSON contract."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


def run_subprocess(*args):
    e = dict(os.environ, PYTHONPATH=str(ROOT))
    return subprocess.run([sys.executable, "-m", "angelcli", *args], capture_output=True, text=True, env=e,
                          timeout=300)




def test_help_does_not_import_torch():
    code = ("import sys\nfrom angelcli.cli import main\n"
            "try:\n    main(['--help'])\nexcept SystemExit as e:\n    assert e.code == 0, e.code\n"
            "heavy = [m for m in ('torch', 'triton', 'transformers', 'safetensors') if m in sys.modules]\n"
            "print('HEAVY', heavy)\n")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT,
                         env=dict(os.environ, PYTHONPATH=str(ROOT)), timeout=120)
    assert "HEAVY []" in out.stdout, out.stdout + out.stderr
    assert "generate" in out.stdout


def test_every_verb_has_help(run):
    from angelcli.cli import COMMANDS, app  # noqa: F401

    for verb, _ in COMMANDS:
        r = run(verb, "--help")
        assert r.returncode == 0, (verb, r.stderr)


def test_missing_model_path_is_one_line_exit_2(run, tmp_path):
    r = run("generate", str(tmp_path / "missing"), "--prompt", "hi")
    assert r.returncode == 2
    assert r.stderr.strip().count("\n") == 0 and "Traceback" not in r.stderr
    assert "not found" in r.stderr


def test_truncated_shard_is_one_line_exit_3(run, tmp_path):
    from angelcli.fixtures import write_tiny_checkpoint

    ck = write_tiny_checkpoint(tmp_path / "m")
    shard = sorted(ck.glob("model-*.safetensors"))[1]
    shard.write_bytes(shard.read_bytes()[:-64])
    r = run_subprocess("generate", str(ck), "--input-ids", "1,2")  # a real process: exit code and stderr as users see them
    assert r.returncode == 3, r.stderr
    assert "Traceback" not in r.stderr and shard.name in r.stderr
    assert len(r.stderr.strip().splitlines()) == 1


def test_usage_errors(run, tiny_ckpt, tmp_path):
    assert run("generate", str(tiny_ckpt)).returncode == 2
    assert run("generate", str(tiny_ckpt), "--input-ids", "1,x").returncode == 2
    assert run("generate", str(tiny_ckpt), "--prompt", "a", "--top-p", "0").returncode == 2
    bad = tmp_path / "b.jsonl"
    bad.write_text('{"prompt": "ok"}\n{oops\n')
    r = run("generate", str(tiny_ckpt), "--batch", str(bad))
    assert r.returncode == 2 and f"{bad}:2" in r.stderr
    r = run("generate", str(tiny_ckpt), "--bogus-flag")
    assert r.returncode == 2


def test_generate_json_contract(run, tiny_ckpt):
    r = run("generate", str(tiny_ckpt), "--prompt", "What is a fever?", "-n", "5", "--logprobs", "3", "--json")
    assert r.returncode == 0, r.stderr
    res = json.loads(r.stdout)
    for key in ("prompt", "prompt_ids", "ids", "text", "finish_reason", "logprobs", "stats"):
        assert key in res
    assert res["prompt"].startswith("<role>SYSTEM</role>") and res["prompt"].endswith("<role>ASSISTANT</role>")
    assert len(res["logprobs"]) == len(res["ids"]) and len(res["logprobs"][0]) == 3
    lps = [lp for _, lp in res["logprobs"][0]]
    assert lps == sorted(lps, reverse=True)
    assert res["finish_reason"] in ("stop", "length")
    assert {"prompt_tokens", "generated_tokens", "time_to_first_token", "decode_tokens_per_s"} <= set(res["stats"])


def test_generate_input_ids_and_seed_determinism(run, tiny_ckpt):
    args = ["generate", str(tiny_ckpt), "--input-ids", "4,5,6", "-n", "6", "--temperature", "0.9", "--seed", "3", "--json"]
    a, b = json.loads(run(*args).stdout), json.loads(run(*args).stdout)
    assert a["ids"] == b["ids"] and a["prompt"] is None and a["prompt_ids"] == [4, 5, 6]


def test_generate_batch_one_result_per_line(run, tiny_ckpt, tmp_path):
    batch = tmp_path / "req.jsonl"
    lines = [{"prompt": "hi"}, {"input_ids": [1, 2, 3], "max_new_tokens": 2},
             {"messages": [{"role": "user", "content": "头痛怎么办"}], "id": "zh"}]
    batch.write_text("\n".join(json.dumps(x, ensure_ascii=False) for x in lines) + "\n")
    r = run("generate", str(tiny_ckpt), "--batch", str(batch), "-n", "3")
    assert r.returncode == 0, r.stderr
    out = [json.loads(x) for x in r.stdout.splitlines()]
    assert [o["id"] for o in out] == [0, 1, "zh"]
    assert len(out[1]["ids"]) <= 2


def test_messages_file(run, tiny_ckpt, tmp_path):
    f = tmp_path / "m.json"
    f.write_text(json.dumps([{"role": "system", "content": "S"}, {"role": "user", "content": "U"}]))
    res = json.loads(run("generate", str(tiny_ckpt), "--messages", str(f), "-n", "2", "--json").stdout)
    assert res["prompt"] == "<role>SYSTEM</role>S\ndetailed thinking off<|role_end|><role>HUMAN</role>U<|role_end|><role>ASSISTANT</role>"
    f.write_text('[{"content": "no role"}]')
    assert run("generate", str(tiny_ckpt), "--messages", str(f)).returncode == 2


def test_version():
    r = run_subprocess("--version")
    assert r.returncode == 0 and r.stdout.startswith("angel ")
