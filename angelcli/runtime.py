"""Open a model for inference: resolve MODEL, pick device/dtype/backend, load weights, build the engine.

Shared by `generate`, `chat`, `verify`, `draft-train` so each of them accepts the same options the same way.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from angelcli.config import ModelConfig, load_generation_eos
from angelcli.errors import UsageError

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
    draft_dir: Path | None = None  # the EAGLE3 draft the engine speculates with (engine is a SpeculativeEngine)

    @property
    def tokenizer(self):
        """Loaded on first use: --input-ids runs need no tokenizer at all."""
        if self._tokenizer is None:
            from angelcli.tokenizer import load_tokenizer

            self._tokenizer = load_tokenizer(self.model_dir)
        return self._tokenizer


def pick_device(device: str) -> str:
    import torch

    if device in ("auto", ""):
        return "cuda" if torch.cuda.is_available() else "cpu"
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise UsageError(f"--device {device}: CUDA is not available on this machine")
    return device


def pick_dtype(dtype: str, device: str):
    import torch

    if dtype not in DTYPES:
        raise UsageError(f"--dtype must be one of {', '.join(DTYPES)}")
    if dtype == "auto":
        # fp32 on CPU: exact and fast enough for tiny models; bf16 on GPUs, as the checkpoints ship.
        dtype = "float32" if device == "cpu" else "bfloat16"
    return getattr(torch, dtype), dtype


def open_runtime(model: str | None, *, device: str = "auto", dtype: str = "auto", backend: str = "auto",
                 max_seq_len: int | None = None, progress: bool = False, use_draft: bool | None = False,
                 draft: str | None = None, draft_k: int = 3) -> Runtime:
    """use_draft: False = plain decoding (the default for library callers); None = speculative decoding when
    the model has a draft attached (what `generate` and `chat` pass by default); True = require one.
    draft: a draft directory or store name for this run (angelcli/eagle/attach.py)."""
    from angelcli.engine import Engine
    from angelcli.loader import load_model
    from angelcli.resolve import resolve_model

    if backend not in BACKENDS:
        raise UsageError(f"--backend must be one of {', '.join(BACKENDS)}")
    model_dir = resolve_model(model)
    dev = pick_device(device)
    tdtype, dname = pick_dtype(dtype, dev)
    chosen = "torch" if backend == "auto" else backend
    if chosen == "triton":
        try:
            from angelcli.engine import triton_backend  # noqa: F401  (issue 6)
        except ImportError:
            raise UsageError("--backend triton: the triton engine backend is not part of this build") from None
    net, cfg, _ = load_model(model_dir, dtype=tdtype, device=dev, progress=progress)
    engine = Engine(net, cfg, device=dev, max_seq_len=max_seq_len, backend=chosen)
    rt = Runtime(model_dir, cfg, net, engine, load_generation_eos(model_dir, cfg), dev, dname, chosen)
    if use_draft is not False or draft is not None:
        from angelcli.eagle.attach import speculative_engine

        rt.engine, rt.draft_dir = speculative_engine(rt, use_draft=use_draft, draft=draft, k=draft_k, model_spec=model)
    return rt
