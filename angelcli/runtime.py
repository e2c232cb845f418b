"""Open a model for inference: resolve MODEL, pick device/dtype/backend, plan GPU memory, load weights,
build the engine; with tp > 1 also launch the tensor-parallel workers (engine/tp.py).

Shared by `generate`, `chat`, `verify`, `draft-train` so each of them accepts the same options the same way:

    rt = open_runtime(model, device="auto", dtype="auto", backend="auto", tp=1)
    rt.engine.generate(ids, params) ...
    rt.close()          # only matters with tp > 1 (also done at exit)

backend "auto": triton on CUDA, torch on CPU. dtype "auto": float32 for the torch backend on CPU (exact and
fast enough for tiny models), bfloat16 otherwise (the triton kernels run bf16 activations).
On CUDA the planner (angelcli/planner.py) checks at start that weights + runtime reserve + one sequence of
`max_seq_len` tokens fit on every GPU and sizes the KV block pool; if not, ResourceError (exit 4) says why
before anything is loaded.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from angelcli.config import ModelConfig, load_generation_eos
from angelcli.errors import ResourceError, UsageError

BACKENDS = ("auto", "torch", "triton")
DTYPES = ("auto", "float32", "bfloat16", "float16")


@dataclass
class Runtime:
    model_dir: Path
    cfg: ModelConfig
    model: object
    engine: object
    eos_ids: list[int]
    device: str
    dtype: str
    backend: str
    _tokenizer: object = None
    tp: int = 1
    launch: object = None  # engine.tp.Launch on rank 0 of a tensor-parallel runtime
    plan: object = None  # planner.Plan on CUDA
    draft_dir: Path | None = None  # the EAGLE3 draft the engine speculates with (engine.speculator)

    @property
    def tokenizer(self):
        """Loaded on first use: --input-ids runs need no tokenizer at all."""
        if self._tokenizer is None:
            from angelcli.tokenizer import load_tokenizer

            self._tokenizer = load_tokenizer(self.model_dir)
        return self._tokenizer

    def attach_draft(self, required: bool = False, *, draft: str | None = None, k: int = 3) -> str | None:
        """Speculate with this model's EAGLE3 draft from now on (angelcli.eagle.attach.attach_draft); the draft
        directory, or None when none is recorded (an error when required)."""
        from angelcli.eagle.attach import attach_draft

        found = attach_draft(self.engine, self.model_dir, required, draft=draft, k=k)
        self.draft_dir = None if found is None else Path(found)
        return found

    def close(self) -> None:
        """Stop the tensor-parallel workers (no-op for one process)."""
        if self.launch is not None:
            self.launch.close()


def pick_device(device: str) -> str:
    """auto | cpu | cuda | cuda:N -> the torch device string; UsageError for anything else."""
    import re

    import torch

    device = (device or "auto").strip().lower()
    if device == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if not re.fullmatch(r"cpu|cuda(:\d+)?", device):
        raise UsageError(f"--device {device}: expected auto, cpu, cuda or cuda:N")
    if device.startswith("cuda"):
        if not torch.cuda.is_available():
            raise UsageError(f"--device {device}: CUDA is not available on this machine")
        if ":" in device and int(device.split(":")[1]) >= torch.cuda.device_count():
            raise UsageError(f"--device {device}: this machine has {torch.cuda.device_count()} CUDA device(s)")
    return device


def check_max_seq_len(max_seq_len: int | None, cfg: ModelConfig) -> None:
    """--max-seq-len must be positive and within the positions the model was trained for (beyond them RoPE
    extrapolates and the output is garbage, slowly)."""
    if max_seq_len is None:
        return
    if max_seq_len < 1:
        raise UsageError(f"--max-seq-len must be >= 1, got {max_seq_len}")
    if max_seq_len > cfg.max_position_embeddings:
        raise UsageError(f"--max-seq-len {max_seq_len} exceeds the model's max_position_embeddings "
                         f"({cfg.max_position_embeddings})")


def pick_backend(backend: str, device: str, dtype: str = "auto") -> str:
    if backend not in BACKENDS:
        raise UsageError(f"--backend must be one of {', '.join(BACKENDS)}")
    if backend == "auto":  # the kernels run bf16/fp16 activations; float32 stays on the reference backend
        return "triton" if device.startswith("cuda") and dtype != "float32" else "torch"
    return backend


def pick_dtype(dtype: str, device: str, backend: str = "torch"):
    import torch

    if dtype not in DTYPES:
        raise UsageError(f"--dtype must be one of {', '.join(DTYPES)}")
    if dtype == "auto":
        dtype = "float32" if device == "cpu" and backend == "torch" else "bfloat16"
    if backend == "triton" and dtype == "float32":
        raise UsageError("--backend triton runs bfloat16 activations; use --dtype bfloat16 (or --backend torch)")
    return getattr(torch, dtype), dtype


def open_runtime(model: str | None, *, device: str = "auto", dtype: str = "auto", backend: str = "auto",
                 max_seq_len: int | None = None, progress: bool = False, tp: int = 1, kv_tokens: int | None = None,
                 _tp=None, use_draft: bool | None = False, draft: str | None = None, draft_k: int = 3,
                 draft_topk: int | None = None, draft_tokens: int | None = None) -> Runtime:
    """tp: tensor-parallel degree (processes launched here; rank r uses cuda:r). kv_tokens: KV budget of the
    triton backend (default: the planner's on CUDA). _tp: set inside a worker (engine/tp.py).
    use_draft: False = plain decoding (the default for library callers); None = speculative decoding when the
    model has an EAGLE3 draft attached (what `generate` and `chat` pass by default); True = require one.
    draft: a draft directory or store name for this run (angelcli/eagle/attach.py); draft_k / draft_topk /
    draft_tokens: the draft's depth and tree shape (None = the defaults of eagle/speculative.py)."""
    from angelcli.engine import Engine
    from angelcli.loader import load_model
    from angelcli.resolve import resolve_model

    if tp < 1:
        raise UsageError("--tp must be >= 1")
    model_dir = resolve_model(model)
    dev = pick_device(device)
    chosen = pick_backend(backend, dev, dtype)
    tdtype, dname = pick_dtype(dtype, dev, chosen)
    if chosen == "triton":
        try:
            from angelcli.engine import triton_backend  # noqa: F401
            import triton  # noqa: F401
        except ImportError:
            raise UsageError("--backend triton: triton is not installed (pip install triton)") from None
    cfg = ModelConfig.from_file(model_dir)
    check_max_seq_len(max_seq_len, cfg)
    plan = None
    if dev.startswith("cuda"):
        from angelcli.planner import device_plan

        context = max_seq_len or min(cfg.max_position_embeddings, 8192)
        plan = device_plan(cfg, tp, context, 0 if _tp is None else _tp.rank, model=str(model or model_dir.name))
        if not plan.fits:
            raise ResourceError(plan.summary())
        kv_tokens = kv_tokens or plan.kv_tokens
    launch = None
    if tp > 1 and _tp is None:
        from angelcli.engine.tp import Launch

        launch = Launch(tp, dict(model=str(model_dir), device=device, dtype=dname, backend=chosen,
                                 max_seq_len=max_seq_len, kv_tokens=kv_tokens, tp=tp), dev.split(":")[0])
        _tp = launch.tp
    if _tp is not None and dev.startswith("cuda"):
        dev = f"cuda:{_tp.rank}"
    try:
        net, cfg, _ = load_model(model_dir, dtype=tdtype, device=dev, progress=progress, tp=_tp)
        engine = Engine(net, cfg, device=dev, max_seq_len=max_seq_len, backend=chosen, kv_tokens=kv_tokens)
        if launch is not None:
            launch.wait_ready()
    except BaseException:
        if launch is not None:
            launch.close()
        raise
    rt = Runtime(model_dir, cfg, net, engine, load_generation_eos(model_dir, cfg), dev, dname, chosen,
                 tp=tp, launch=launch, plan=plan)
    if _tp is None and (use_draft is not False or draft is not None):
        from angelcli.eagle.attach import enable_draft

        try:
            rt.draft_dir = enable_draft(engine, model_dir, use_draft=use_draft, draft=draft, k=draft_k,
                                        model_spec=model, topk=draft_topk, draft_tokens=draft_tokens)
        except BaseException:
            rt.close()
            raise
    return rt
