"""`angel tiny-train`: rebuild angel-tiny, the embedded default model, from the bundled corpus."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer


def tiny_train(
    out: Optional[Path] = typer.Option(None, "--out", help="Output directory (default: the package's angel-tiny)."),
    steps: Optional[int] = typer.Option(None, "--steps", help="Optimizer steps (default: the shipped model's)."),
    threads: int = typer.Option(2, "--threads", help="CPU threads (results are reproducible for a fixed count)."),
    seed: int = typer.Option(0, "--seed"),
    json_out: bool = typer.Option(False, "--json", help="Print the training summary as JSON."),
) -> None:
    """Train angel-tiny (BailingMoeV2, 64 experts top-2 in 8 groups) on the medical corpus; <= 15 min on 2 cores.

    Ends with the topic probe: the 40 built-in demo questions answered greedily, counted on topic or not.

    Example:  angel tiny-train --out /tmp/angel-tiny
    """
    from angelcli.console import emit_json, log
    from angelcli.data import load_split
    from angelcli.errors import UsageError
    from angelcli.resolve import TINY_DIR
    from angelcli.tiny.tokenizer import TINY_TOKENIZER_DIR
    from angelcli.tiny.train import TrainSettings, train_tiny

    if steps is not None and steps < 1:
        raise UsageError("--steps must be >= 1")
    if threads < 1:
        raise UsageError("--threads must be >= 1")
    dest = out or TINY_DIR
    settings = TrainSettings(threads=threads, seed=seed, **({"steps": steps} if steps else {}))
    hist = train_tiny(dest, TINY_TOKENIZER_DIR, load_split("train"), load_split("eval"), settings, log=log)
    probe = hist.get("topic_probe", {})
    summary = {"out": str(dest), "steps": settings.steps, "train_seconds": hist["train_seconds"],
               "untrained_eval": hist["untrained_eval"], "final_eval": hist["final_eval"],
               "topic_probe": {k: probe[k] for k in ("on_topic", "total", "rate") if k in probe}}
    if json_out:
        emit_json(summary)
    else:
        log(f"angel-tiny written to {dest}: held-out answer loss {hist['final_eval']['loss']:.3f} "
            f"(untrained {hist['untrained_eval']['loss']:.3f}), {probe.get('on_topic')}/{probe.get('total')} "
            f"demo questions on topic, in {hist['train_seconds']:.0f}s")
