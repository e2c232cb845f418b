"""`angel serve --engine sglang|vllm`: the launch command over a table of cases, the refusals (exit 2), and
exec with signal forwarding through a fake `sglang` executable."""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from angelcli.errors import ResourceError, UsageError
from angelcli.serve import handoff
from angelcli.serve.handoff import HandoffOptions, build


def opts(model, engine="sglang", **kw):
    return HandoffOptions(model=model, engine=engine, **kw)


def flag(argv, name):
    return argv[argv.index(name) + 1]


@pytest.fixture(autouse=True)
def _no_engines(monkeypatch):
    """The table must not depend on what is installed here: no engine found, no version."""
    monkeypatch.setattr(handoff, "engine_version", lambda engine: None)
    monkeypatch.setattr(handoff.shutil, "which", lambda name: None)


def _ckpt(tmp_path, name, **quant):
    from angelcli.fixtures import write_tiny_checkpoint

    d = write_tiny_checkpoint(tmp_path / name, num_hidden_layers=5, tokenizer=False)
    if quant:
        p = d / "config.json"
        raw = json.loads(p.read_text())
        raw["quantization_config"] = quant
        p.write_text(json.dumps(raw))
    return d


def _attach_draft(ckpt, k=4, layers=None):
    from angelcli.config import ModelConfig
    from angelcli.eagle.attach import LINK_FILE, LINK_FORMAT
    from angelcli.eagle.export import export_draft
    from angelcli.eagle.model import DraftConfig, Eagle3Draft

    dc = DraftConfig.for_target(ModelConfig.from_file(ckpt))
    if layers:
        dc.aux_layers = tuple(layers)
    d = Eagle3Draft(dc)
    d.init_weights(0)
    export_draft(d, ckpt / "draft", dtype="float32", layouts=("sglang",))
    (ckpt / LINK_FILE).write_text(json.dumps({"format": LINK_FORMAT, "draft": "draft", "k": k}))
    return ckpt / "draft"


# (model, engine, options) -> what the command must hold
TABLE = [
    ("antangelmed-fp8", "sglang", dict(gpus=2, gpu_mem=96), {"--tp-size": "2", "--model-path": "MedAIBase/AntAngelMed-FP8"}),
    ("antangelmed-fp8", "vllm", dict(gpus=2, gpu_mem=96), {"--tensor-parallel-size": "2"}),
    ("antangelmed-fp8", "sglang", dict(gpus=8, gpu_mem=96), {"--tp-size": "8"}),
    ("antangelmed", "sglang", dict(gpus=4, gpu_mem=96), {"--tp-size": "4"}),  # BF16 205 GB
    ("antangelmed-fp8", "sglang", dict(gpus=4, gpu_mem=96, tp=2), {"--tp-size": "2"}),
    ("antangelmed-fp8", "sglang", dict(gpus=2, gpu_mem=96, context=131072, served_name="med", port=9000,
                                       api_key="k1"),
     {"--context-length": "131072", "--served-model-name": "med", "--port": "9000", "--api-key": "k1"}),
    ("antangelmed-fp8", "vllm", dict(gpus=2, gpu_mem=96, context=65536), {"--max-model-len": "65536"}),
]


@pytest.mark.parametrize("model,engine,kw,want", TABLE)
def test_command_table(model, engine, kw, want):
    h = build(opts(model, engine, **kw))
    (argv,) = h.commands
    assert "--trust-remote-code" in argv and h.kind in ("fp8", "bf16")
    for k, v in want.items():
        assert flag(argv, k) == v, (k, argv)
    ctx = kw.get("context", 32768)
    yarn_flag = "--json-model-override-args" if engine == "sglang" else "--hf-overrides"
    if ctx > 32768:
        rs = json.loads(flag(argv, yarn_flag))["rope_scaling"]
        assert rs == {"rope_type": "yarn", "factor": float(ctx // 32768), "original_max_position_embeddings": 32768}
    else:
        assert yarn_flag not in argv
    assert "--speculative-algorithm" not in argv  # aliases not downloaded have no draft


def test_multi_node_one_command_per_node():
    h = build(opts("antangelmed", gpus=2, gpu_mem=96, nnodes=2, dist_init_addr="10.0.0.1:5000"))
    assert len(h.commands) == 2 and h.tp == 4
    for r, argv in enumerate(h.commands):
        assert flag(argv, "--tp-size") == "4" and flag(argv, "--nnodes") == "2"
        assert flag(argv, "--node-rank") == str(r) and flag(argv, "--dist-init-addr") == "10.0.0.1:5000"
    v = build(opts("antangelmed", "vllm", gpus=2, gpu_mem=96, nnodes=2, dist_init_addr="10.0.0.1:5000"))
    a0, a1 = v.commands
    assert flag(a0, "--tensor-parallel-size") == "2" and flag(a0, "--pipeline-parallel-size") == "2"
    assert flag(a1, "--master-addr") == "10.0.0.1" and flag(a1, "--master-port") == "5000"
    assert "--headless" in a1 and "--headless" not in a0
    one = build(opts("antangelmed", gpus=2, gpu_mem=96, nnodes=2, node_rank=1, dist_init_addr="h:1"))
    assert len(one.commands) == 1 and flag(one.commands[0], "--node-rank") == "1"
    with pytest.raises(UsageError, match="dist-init-addr"):
        build(opts("antangelmed", gpus=2, gpu_mem=96, nnodes=2))


def test_local_checkpoint_kinds_and_draft(tmp_path):
    bf16 = _ckpt(tmp_path, "bf16")
    h = build(opts(str(bf16), gpus=1))
    assert h.kind == "bf16" and flag(h.commands[0], "--model-path") == str(bf16)
    fp8 = _ckpt(tmp_path, "fp8", quant_method="fp8", fmt="e4m3", activation_scheme="dynamic",
                weight_block_size=[128, 128])
    assert build(opts(str(fp8), gpus=1)).kind == "fp8"
    draft = _attach_draft(bf16, k=4)
    argv = build(opts(str(bf16), gpus=1)).commands[0]
    assert flag(argv, "--speculative-algorithm") == "EAGLE3"
    assert flag(argv, "--speculative-draft-model-path") == str(draft.resolve())
    assert (flag(argv, "--speculative-num-steps"), flag(argv, "--speculative-eagle-topk"),
            flag(argv, "--speculative-num-draft-tokens")) == ("4", "1", "5")
    assert "--speculative-algorithm" not in build(opts(str(bf16), gpus=1, draft=False)).commands[0]
    assert flag(build(opts(str(bf16), gpus=1, draft_k=2)).commands[0], "--speculative-num-draft-tokens") == "3"
    with pytest.raises(UsageError, match="SupportsEagle3"):  # vLLM + a draft on BailingMoeV2
        build(opts(str(bf16), "vllm", gpus=1))
    assert "--speculative-algorithm" not in build(opts(str(bf16), "vllm", gpus=1, draft=False)).commands[0]
    # a draft alias not downloaded here: SGLang fetches it by hub id (the acceptance command + a draft)
    argv = build(opts("antangelmed-fp8", gpus=2, gpu_mem=96, draft_path="ling-flash-eagle3")).commands[0]
    assert flag(argv, "--tp-size") == "2" and flag(argv, "--speculative-algorithm") == "EAGLE3"
    assert flag(argv, "--speculative-draft-model-path") == "AQ-MedAI/Ling-Flash-2.0-eagle3"
    with pytest.raises(UsageError, match="SupportsEagle3"):
        build(opts("antangelmed-fp8", "vllm", gpus=2, gpu_mem=96, draft_path="ling-flash-eagle3"))


def test_refusals(tmp_path, monkeypatch):
    # a draft given as a path that does not exist is an error, not a hub id with its slashes stripped
    with pytest.raises(UsageError, match="not found"):
        build(opts("antangelmed-fp8", engine="vllm", gpus=2, gpu_mem=96, draft_path=str(tmp_path / "nodraft")))
    with pytest.raises(UsageError, match="num_attention_heads"):
        build(opts("antangelmed-fp8", gpus=4, gpu_mem=96, tp=3))
    ckpt = _ckpt(tmp_path, "b", quant_method="fp8", fmt="e4m3", activation_scheme="dynamic",
                 weight_block_size=[128, 128])
    with pytest.raises(UsageError, match="multiple of 128"):  # tiny widths cannot form 128-wide FP8 blocks
        build(opts(str(ckpt), gpus=2))
    with pytest.raises(ResourceError, match="does not fit|fits on"):
        build(opts("antangelmed", gpus=1, gpu_mem=96))
    bad = _ckpt(tmp_path, "odd")
    raw = json.loads((bad / "config.json").read_text())
    (bad / "config.json").write_text(json.dumps({**raw, "model_type": "llama"}))
    with pytest.raises(UsageError, match="model_type"):
        build(opts(str(bad), gpus=1))
    monkeypatch.setattr(handoff, "engine_version", lambda engine: "0.15.1")
    with pytest.raises(UsageError, match="partial_rotary_factor"):
        build(opts("antangelmed-fp8", "vllm", gpus=2, gpu_mem=96))
    monkeypatch.setattr(handoff, "engine_version", lambda engine: "0.34.0")
    assert build(opts("antangelmed-fp8", "vllm", gpus=2, gpu_mem=96)).commands
    last = _ckpt(tmp_path, "last")
    _attach_draft(last, layers=(1, 2, 4))  # 4 = the last layer's output: SGLang cannot capture it
    with pytest.raises(UsageError, match="start of layer"):  # asked for: refused
        build(opts(str(last), gpus=1, draft=True))
    h = build(opts(str(last), gpus=1))  # merely attached: served without it, and said so
    assert "--speculative-algorithm" not in " ".join(h.commands[0]) and any("start of layer" in n for n in h.notes)
    with pytest.raises(UsageError, match="--gpus must be >= 1"):
        build(opts("antangelmed-fp8", gpus=0))
    from angelcli.quant.schemes import compressed_tensors_config

    ct = compressed_tensors_config("dynamic", ["model.layers.0.mlp.gate_proj", "model.layers.0.mlp.up_proj", "lm_head"])
    old = _ckpt(tmp_path, "ct-old", **ct)
    with pytest.raises(UsageError, match="gate_up_proj"):
        build(opts(str(old), gpus=1))
    assert build(opts(str(old), "vllm", gpus=1)).kind == "compressed-tensors"
    ct["ignore"].append("model.layers.0.mlp.gate_up_proj")
    assert build(opts(str(_ckpt(tmp_path, "ct-new", **ct)), gpus=1)).kind == "compressed-tensors"


def test_cli_print_and_vllm_draft_exit_codes(tmp_path):
    env = {**os.environ, "ANGEL_HOME": str(tmp_path / "home")}
    run = lambda *a: subprocess.run([sys.executable, "-m", "angelcli", "serve", *a], capture_output=True,
                                    text=True, env=env)
    r = run("antangelmed-fp8", "--engine", "sglang", "--gpus", "2", "--gpu-mem", "96", "--print")
    assert r.returncode == 0 and "--tp-size 2" in r.stdout
    r = run("--engine", "vllm", "--gpus", "1", "--print")  # angel-tiny has its draft attached
    assert r.returncode == 2 and "EAGLE3" in r.stderr and "Traceback" not in r.stderr
    r = run("--gpus", "2")  # hand-off flags on the built-in engine
    assert r.returncode == 2 and "--gpus applies to --engine" in r.stderr
    import socket

    with socket.socket() as busy:  # a taken port fails before the model loads, in one line
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        r = run("--port", str(busy.getsockname()[1]))
    assert r.returncode == 2 and "cannot listen" in r.stderr and len(r.stderr.strip().splitlines()) == 1


FAKE = """#!{py}
import json, signal, sys, time
out = sys.argv[0] + ".log"
def got(sig, frame):
    open(out, "a").write(json.dumps({{"signal": sig}}) + "\\n")
    sys.exit(7)
signal.signal(signal.SIGTERM, got)
open(out, "a").write(json.dumps({{"argv": sys.argv[1:]}}) + "\\n")
time.sleep(60)
"""


def test_exec_runs_the_engine_and_forwards_signals(tmp_path):
    bindir = tmp_path / "bin"
    bindir.mkdir()
    fake = bindir / "sglang"
    fake.write_text(FAKE.format(py=sys.executable))
    fake.chmod(0o755)
    ckpt = _ckpt(tmp_path, "m")
    env = {**os.environ, "PATH": f"{bindir}{os.pathsep}{os.environ['PATH']}", "ANGEL_HOME": str(tmp_path / "h")}
    p = subprocess.Popen([sys.executable, "-m", "angelcli", "serve", str(ckpt), "--engine", "sglang", "--gpus", "1",
                          "--port", "8123"], env=env, stderr=subprocess.PIPE, text=True)
    log = Path(str(fake) + ".log")
    deadline = time.monotonic() + 60
    while not log.exists():
        assert p.poll() is None, p.stderr.read()
        assert time.monotonic() < deadline
        time.sleep(0.05)
    first = json.loads(log.read_text().splitlines()[0])
    assert first["argv"][0] == "serve" and flag(first["argv"], "--model-path") == str(ckpt)
    assert flag(first["argv"], "--tp-size") == "1" and flag(first["argv"], "--port") == "8123"
    p.send_signal(signal.SIGTERM)
    assert p.wait(timeout=30) == 7  # the engine's own exit status comes back
    assert json.loads(log.read_text().splitlines()[1]) == {"signal": signal.SIGTERM}
