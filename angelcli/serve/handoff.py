"""`angel serve MODEL --engine sglang|vllm`: the launch command for another serving engine, built from what
angel knows, printed (--print) or run with signals forwarded.

    cmds = build(HandoffOptions(model="antangelmed-fp8", engine="sglang", gpus=2, gpu_mem=96))
    cmds.commands          # one argv per node
    cmds.notes             # what was assumed (stderr)

What goes in: the checkpoint (a local directory, or the hub id of an alias not downloaded yet; its kind,
BF16 / native block FP8 / compressed-tensors, is read from config.json and needs no flag: both engines detect
it), the planner's TP for --gpus x --nnodes GPUs of --gpu-mem GB at --context tokens, the attached EAGLE3
draft (SGLang only), --context-length, YaRN rope scaling above the 32K the model was trained at,
--trust-remote-code (Bailing ships custom code), the served name, host / port / API key, and multi-node
rendezvous flags. What is refused (exit 2, with the reason) is what is known not to work:
  * vLLM with an EAGLE3 draft on BailingMoeV2: vLLM's Bailing model does not implement SupportsEagle3;
  * vLLM 0.13-0.20: bailing_moe.py overwrote partial_rotary_factor with 1.0 (Ling 2.0 / AntAngelMed have
    0.5), which gives garbage output. Introduced by vLLM PR #30389 (merged 2025-12-10, first released in
    0.13), fixed by PR #43770 (merged 2026-05-27, first released in 0.21); the bounds come from those dates;
  * a TP degree that does not divide the heads / the 128-wide FP8 blocks (model/parallel.py check_tp);
  * a model_type angel does not know;
  * SGLang with a compressed-tensors checkpoint whose `ignore` lacks the fused mlp.gate_up_proj names
    (older angel outputs): SGLang would load the BF16 dense FFN as FP8 (quant/schemes.py fused_ignore);
  * SGLang with a draft that needs the last layer's output (SGLang cannot capture it; eagle/export.py).
The installed engine's version is read with importlib.metadata, never by importing it.
"""

from __future__ import annotations

import json
import shlex
import shutil
from dataclasses import dataclass, field
from pathlib import Path

from angelcli.errors import ResourceError, UsageError

TRAINED_CONTEXT = 32768  # Ling 2.0's original_max_position_embeddings: YaRN beyond it
VLLM_BAD_ROTARY = ("0.13", "0.21")  # [first bad, first fixed): see the module docstring
DEFAULT_GPU_MEM = 96.0  # GB, an H20


@dataclass
class HandoffOptions:
    model: str | None
    engine: str  # sglang | vllm
    host: str = "127.0.0.1"
    port: int = 8000
    api_key: str | None = None
    served_name: str | None = None
    context: int | None = None
    gpus: int | None = None
    gpu_mem: float | None = None
    tp: int | None = None
    nnodes: int = 1
    node_rank: int | None = None
    dist_init_addr: str | None = None
    draft: bool | None = None
    draft_path: str | None = None
    draft_k: int | None = None
    extra: str | None = None
    print_only: bool = False


@dataclass
class Target:
    spec: str
    model_arg: str  # what the engine is given: a local directory or a hub id
    local_dir: Path | None
    cfg: object  # ModelConfig
    raw: dict
    kind: str  # bf16 | fp8 (native block) | compressed-tensors


@dataclass
class Handoff:
    commands: list[list[str]]
    tp: int
    kind: str
    draft: str | None
    notes: list[str] = field(default_factory=list)


def checkpoint_kind(raw: dict) -> str:
    qc = raw.get("quantization_config") or {}
    method = qc.get("quant_method")
    if not qc:
        return "bf16"
    if method == "fp8":
        return "fp8"
    if method == "compressed-tensors":
        return "compressed-tensors"
    raise UsageError(f"config.json quantization_config.quant_method {method!r}: angel hands off BF16, native FP8 "
                     "(quant_method fp8) and compressed-tensors checkpoints")


def inspect_target(spec: str | None) -> Target:
    from angelcli.aliases import bundled_config, resolve_repo_id
    from angelcli.config import ModelConfig
    from angelcli.resolve import resolve_model

    spec = spec or "angel-tiny"
    try:
        local = resolve_model(spec)
        raw = json.loads((local / "config.json").read_text(encoding="utf-8"))
        arg = str(local)
    except UsageError:
        raw = bundled_config(spec)
        repo = resolve_repo_id(spec)
        if raw is None or repo is None:
            raise
        local, arg = None, repo
    try:
        cfg = ModelConfig.from_dict(raw, source=f"{spec} config.json")
    except UsageError as err:
        raise UsageError(f"{spec}: {err} (angel builds launch commands only for the models it knows)") from None
    return Target(spec, arg, local, cfg, raw, checkpoint_kind(raw))


def engine_version(engine: str) -> str | None:
    from importlib import metadata

    try:
        return metadata.version(engine)
    except metadata.PackageNotFoundError:
        return None


def _vtuple(v: str) -> tuple[int, ...]:
    out = []
    for part in v.split("+")[0].split(".")[:3]:
        digits = "".join(ch for ch in part if ch.isdigit())
        out.append(int(digits) if digits else 0)
    return tuple(out)


def vllm_rotary_bug(version: str | None) -> bool:
    if version is None:
        return False
    lo, hi = (_vtuple(v) for v in VLLM_BAD_ROTARY)
    return lo <= _vtuple(version) < hi


def _draft(t: Target, o: HandoffOptions) -> tuple[Path | None, int]:
    from angelcli.eagle.attach import attached_draft, read_link, resolve_draft_dir

    if o.draft is False:
        if o.draft_path:
            raise UsageError("--draft-path and --no-draft contradict each other")
        return None, 0
    d = _draft_path(o.draft_path) if o.draft_path else (
        attached_draft(t.local_dir, t.spec) if t.local_dir is not None else None)
    if d is None and o.draft:
        raise UsageError(f"--draft: {t.spec} has no EAGLE3 draft attached (`angel draft-attach MODEL DRAFT`)")
    link = read_link(t.local_dir) if (d is not None and t.local_dir is not None) else None
    k = o.draft_k or (link or {}).get("k") or 3
    return d, int(k)


def _draft_path(spec: str) -> Path | str:
    """A local draft directory / store name, else the hub id of a draft alias or `org/name` (the engine
    downloads it; angel cannot check what it has not seen)."""
    from angelcli.aliases import resolve_repo_id
    from angelcli.eagle.attach import resolve_draft_dir

    try:
        return resolve_draft_dir(spec)
    except UsageError:
        if spec.startswith(("/", "./", "../", "~")):  # a path, not a hub id: it must exist here
            raise
        repo = resolve_repo_id(spec)
        if repo is None:
            raise
        return repo


def _check_draft_for_sglang(t: Target, d: Path | str) -> None:
    if not isinstance(d, Path):
        return  # a hub id: SGLang reads it; nothing local to check
    from angelcli.eagle.attach import check_draft
    from angelcli.eagle.export import config_from_files
    from angelcli.errors import CheckFailed

    try:
        check_draft(t.cfg, d)
    except CheckFailed as err:
        raise UsageError(f"draft {d}: {err}") from None
    dcfg, _, _ = config_from_files(d, t.cfg.num_hidden_layers)
    n = t.cfg.num_hidden_layers
    if max(dcfg.aux_layers) >= n - 1:
        raise UsageError(f"draft {d}: layer id {max(dcfg.aux_layers)} is the output of the last of {n} layers; "
                         "SGLang captures at the start of layer id+1 and cannot run this draft (retrain it with "
                         f"ids <= {n - 2}, e.g. the defaults, or serve without it: --no-draft)")


def _check_ct_for_sglang(t: Target) -> None:
    from angelcli.quant.schemes import fused_ignore

    ignore = set((t.raw.get("quantization_config") or {}).get("ignore") or [])
    missing = [n for n in fused_ignore(t.cfg, "experts") if n not in ignore
               and not any(n.replace("gate_up_proj", p) not in ignore for p in ("gate_proj", "up_proj"))]
    if missing:
        raise UsageError(f"{t.spec}: compressed-tensors `ignore` lacks {missing[0]}; SGLang would load that BF16 "
                         "dense FFN as FP8 (garbage). Re-run `angel quantize` (it lists the fused names) or add "
                         "them to config.json")


def _plan_tp(t: Target, o: HandoffOptions, notes: list[str]) -> tuple[int, int]:
    """-> (total TP for SGLang, TP per node); planner for the given GPUs, refusal when it cannot work."""
    from angelcli.model.parallel import check_tp
    from angelcli.planner import make_plan

    gpus = o.gpus
    if gpus is None:
        raise UsageError("--gpus: how many GPUs per node the engine gets (angel plans TP from it)")
    if o.nnodes < 1:
        raise UsageError("--nnodes must be >= 1")
    mem = o.gpu_mem
    if mem is None:
        mem = DEFAULT_GPU_MEM
        notes.append(f"--gpu-mem not given: planning for {mem:g} GB GPUs (H20)")
    context = o.context or t.cfg.max_position_embeddings
    block = t.kind == "fp8"
    if o.tp is not None:
        why = check_tp(t.cfg, o.tp, block_fp8=block)
        if why:
            raise UsageError(f"--tp {o.tp}: {why[0]}")
        if o.tp > gpus * o.nnodes:
            raise UsageError(f"--tp {o.tp} needs more GPUs than --gpus {gpus} x --nnodes {o.nnodes}")
    total = o.tp or gpus * o.nnodes
    why = check_tp(t.cfg, total, block_fp8=block)
    if why and o.tp is None:
        raise UsageError(f"{gpus * o.nnodes} GPUs cannot form TP {total}: {why[0]} (give --tp with a degree that "
                         "divides the heads and the FP8 blocks)")
    plan = make_plan(t.cfg, gpus=total, gpu_mem_gb=mem, context=context, tp=total, model=t.spec)
    if not plan.fits:
        raise ResourceError(f"{t.spec} at TP {total}: {'; '.join(plan.reasons)}")
    notes.append(plan.summary())
    return total, max(1, total // o.nnodes)


def _yarn(t: Target, context: int) -> dict | None:
    base = (t.cfg.rope_scaling or {}).get("original_max_position_embeddings") or TRAINED_CONTEXT
    if context <= base:
        return None
    factor = -(-context // base)  # a whole factor, as the model card's 4.0 for 128K
    return {"rope_type": "yarn", "factor": float(factor), "original_max_position_embeddings": base}


def _launcher(engine: str) -> list[str]:
    exe = shutil.which(engine)
    if engine == "sglang":
        return [exe or "sglang", "serve"] if exe else ["python3", "-m", "sglang.launch_server"]
    return [exe, "serve"] if exe else ["vllm", "serve"]


def build(o: HandoffOptions) -> Handoff:
    if o.engine not in ("sglang", "vllm"):
        raise UsageError(f"--engine must be sglang or vllm for a hand-off, not {o.engine!r}")
    if o.gpus is not None and o.gpus < 1:
        raise UsageError(f"--gpus must be >= 1, not {o.gpus}")
    t = inspect_target(o.model)
    notes: list[str] = []
    if t.local_dir is None:
        notes.append(f"{t.spec} is not downloaded here: the engine fetches {t.model_arg} from the hub "
                     f"(or `angel pull {t.spec}` first)")
    version = engine_version(o.engine)
    notes.append(f"{o.engine} {version} installed" if version else f"{o.engine} is not installed here")
    draft, k = _draft(t, o)
    if o.engine == "vllm":
        if draft is not None:
            raise UsageError(f"vLLM cannot speculate with the EAGLE3 draft {draft}: its BailingMoeV2 model does not "
                             "implement the EAGLE3 interface (SupportsEagle3). Use --engine sglang, or --no-draft")
        if vllm_rotary_bug(version):
            raise UsageError(f"vLLM {version} overwrites partial_rotary_factor for Ling 2.0 models (garbage output; "
                             f"vLLM PR #43770); use vLLM >= {VLLM_BAD_ROTARY[1]} or --engine sglang")
        if version is None:
            notes.append(f"vLLM {VLLM_BAD_ROTARY[0]}-0.20 give garbage on this model (partial_rotary_factor); "
                         f"install >= {VLLM_BAD_ROTARY[1]}")
    else:
        if t.kind == "compressed-tensors":
            _check_ct_for_sglang(t)
        if draft is not None:
            try:
                _check_draft_for_sglang(t, draft)
            except UsageError as err:
                if o.draft or o.draft_path:  # asked for: refuse
                    raise
                # merely attached (the default): serve without speculation rather than refuse the hand-off
                notes.append(f"{err} -- serving without speculative decoding")
                draft = None
            if draft is not None and not isinstance(draft, Path):
                notes.append(f"draft {draft} is not downloaded here: SGLang fetches it; angel did not check it")
    tp, tp_node = _plan_tp(t, o, notes)
    context = o.context or t.cfg.max_position_embeddings
    if o.nnodes > 1 and not o.dist_init_addr:
        raise UsageError("--dist-init-addr HOST:PORT (node 0's address) is needed with --nnodes > 1")
    if o.node_rank is not None and not 0 <= o.node_rank < o.nnodes:
        raise UsageError(f"--node-rank must be in 0..{o.nnodes - 1}")
    yarn = _yarn(t, context)
    base = _launcher(o.engine)
    if o.engine == "sglang":
        argv = [*base, "--model-path", t.model_arg, "--tp-size", str(tp), "--context-length", str(context),
                "--trust-remote-code", "--host", o.host, "--port", str(o.port)]
        if yarn:
            argv += ["--json-model-override-args", json.dumps({"rope_scaling": yarn})]
        if draft is not None:
            argv += ["--speculative-algorithm", "EAGLE3", "--speculative-draft-model-path", str(draft),
                     "--speculative-num-steps", str(k), "--speculative-eagle-topk", "1",
                     "--speculative-num-draft-tokens", str(k + 1)]
    else:
        argv = [*base, t.model_arg, "--tensor-parallel-size", str(tp_node), "--max-model-len", str(context),
                "--trust-remote-code", "--host", o.host, "--port", str(o.port)]
        if o.nnodes > 1:  # TP inside a node, pipeline stages across nodes (vLLM's multi-node guidance)
            argv += ["--pipeline-parallel-size", str(o.nnodes)]
        if yarn:
            argv += ["--hf-overrides", json.dumps({"rope_scaling": yarn})]
    argv += ["--served-model-name", o.served_name or t.spec]
    if o.api_key:
        argv += ["--api-key", o.api_key]
    if o.extra:
        argv += shlex.split(o.extra)
    ranks = [o.node_rank] if o.node_rank is not None else list(range(o.nnodes))
    cmds = []
    for r in ranks if o.nnodes > 1 else [None]:
        if r is None:
            cmds.append(list(argv))
        elif o.engine == "sglang":
            cmds.append(argv + ["--nnodes", str(o.nnodes), "--node-rank", str(r), "--dist-init-addr", o.dist_init_addr])
        else:
            host, _, port = o.dist_init_addr.rpartition(":")
            node = argv + ["--nnodes", str(o.nnodes), "--node-rank", str(r), "--master-addr", host,
                           "--master-port", port]
            cmds.append(node + (["--headless"] if r else []))
    return Handoff(cmds, tp, t.kind, str(draft) if draft else None, notes)


def run_handoff(o: HandoffOptions) -> None:
    import sys

    from angelcli.console import log

    h = build(o)
    for n in h.notes:
        log(f"angel serve: {n}")
    if o.print_only:
        for i, argv in enumerate(h.commands):
            if len(h.commands) > 1:
                print(f"# node {o.node_rank if o.node_rank is not None else i}")
            print(shlex.join(argv))
        return
    if len(h.commands) > 1:
        raise UsageError("--nnodes > 1: give this node's --node-rank (or --print for every node's command)")
    argv = h.commands[0]
    if shutil.which(argv[0]) is None:
        raise UsageError(f"{o.engine} is not installed here ({argv[0]} not found); install it, or use --print "
                         "to get the command for the serving machine")
    log(f"angel serve: exec {shlex.join(argv)}")
    sys.exit(exec_forwarding(argv))


def exec_forwarding(argv: list[str]) -> int:
    """Run argv as a child, forward SIGINT / SIGTERM / SIGHUP to it, return its exit status (128+N when a
    signal ended it, as a shell reports)."""
    import signal
    import subprocess

    child = subprocess.Popen(argv)
    sigs = [signal.SIGINT, signal.SIGTERM, signal.SIGHUP]
    old = {s: signal.signal(s, lambda sig, _f: child.send_signal(sig)) for s in sigs}
    try:
        rc = child.wait()
    finally:
        for s, h in old.items():
            signal.signal(s, h)
    return 128 - rc if rc < 0 else rc
