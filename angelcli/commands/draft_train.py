"""`angel draft-train`: train an EAGLE3 draft head for MODEL on online target hidden states."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer


def draft_train(
    model: Optional[str] = typer.Argument(None, envvar="ANGEL_MODEL", help="Target: path, store name or alias (default: angel-tiny)."),
    data: str = typer.Option("medical", "--data", help="medical (built-in corpus) | PATH (.jsonl/.txt) | random."),
    out: Path = typer.Option(..., "--out", "-o", help="Directory for the draft (SGLang layout, vllm/ subdir, checkpoint/)."),
    steps: Optional[int] = typer.Option(None, "--steps", help="Optimizer steps (overrides --epochs)."),
    epochs: float = typer.Option(1.0, "--epochs", help="Passes over the training samples."),
    ttt: int = typer.Option(7, "--ttt", help="Training-time-test unroll length."),
    lr: float = typer.Option(1e-4, "--lr", help="Peak learning rate (warm-up, then cosine to 10%)."),
    batch_size: int = typer.Option(4, "--batch-size", "-b"),
    max_len: int = typer.Option(1024, "--max-len", help="Tokens per sample (longer ones are cut)."),
    draft_vocab: int = typer.Option(32000, "--draft-vocab", help="Draft vocabulary size (capped by the target's)."),
    layers: Optional[str] = typer.Option(None, "--layers", help="Three target layers, output-of-layer ids "
                                         "(0-based, e.g. 1,15,28); default 1,N/2-1,N-4."),
    intermediate_size: Optional[int] = typer.Option(None, "--intermediate-size", help="Draft MLP width (default: target's dense MLP)."),
    cache_features: Optional[Path] = typer.Option(None, "--cache-features", help="Store target features here and reuse them (shows the disk estimate first)."),
    regenerate: bool = typer.Option(False, "--regenerate", help="Let the target write the answers first (greedy)."),
    regen_max_tokens: int = typer.Option(256, "--regen-max-tokens"),
    resume: bool = typer.Option(False, "--resume", help="Continue the checkpoint in --out."),
    save_every: int = typer.Option(200, "--save-every", help="Checkpoint every N steps (0 = only at the end)."),
    eval_samples: int = typer.Option(64, "--eval-samples", help="Held-out samples evaluated at the end."),
    max_samples: Optional[int] = typer.Option(None, "--max-samples", help="Use only the first N training samples."),
    keep_checkpoint: bool = typer.Option(True, "--keep-checkpoint/--no-keep-checkpoint", help="Keep --out/checkpoint for a later --resume."),
    export_dtype: str = typer.Option("bfloat16", "--export-dtype", help="bfloat16|float16|float32."),
    layouts: str = typer.Option("sglang,vllm", "--layouts", help="Export layouts: sglang (always), vllm (speculators, in OUT/vllm)."),
    seed: int = typer.Option(0, "--seed"),
    threads: int = typer.Option(0, "--threads", help="CPU threads for torch (0 = its default)."),
    dtype: str = typer.Option("auto", "--dtype", envvar="ANGEL_DTYPE", help="Target dtype: auto|float32|bfloat16|float16."),
    device: str = typer.Option("auto", "--device", envvar="ANGEL_DEVICE"),
    json_out: bool = typer.Option(False, "--json", help="Print the summary as JSON."),
) -> None:
    """Train an EAGLE3 draft head and export it for angel, SGLang and vLLM.

    Training-time test unrolled --ttt steps, soft cross-entropy against the target's distribution over the
    draft vocabulary (0.8^k step weights), AdamW with clipping; the target's hidden states are captured online.

    Examples:
      angel draft-train --data medical --out drafts/tiny --epochs 3
      angel draft-train antangelmed --data chats.jsonl --regenerate --out drafts/med --cache-features /scratch/f
      angel draft-train --data random --steps 20 --out /tmp/d     (a quick check on any model)
    """
    from angelcli.console import emit_json, log
    from angelcli.eagle.train import TrainOptions, train_draft
    from angelcli.errors import UsageError
    from angelcli.runtime import open_runtime

    aux = None
    if layers:
        try:
            aux = tuple(sorted(int(x) for x in layers.split(",")))
        except ValueError:
            raise UsageError(f"--layers: expected three comma-separated integers, got {layers!r}") from None
        if len(aux) != 3:
            raise UsageError(f"--layers: expected three layer ids, got {len(aux)}")
    opts = TrainOptions(data=data, out=out, steps=steps, epochs=epochs, ttt=ttt, lr=lr, batch_size=batch_size,
                        max_len=max_len, draft_vocab=draft_vocab, aux_layers=aux, intermediate_size=intermediate_size,
                        cache_features=cache_features, regenerate=regenerate, regen_max_tokens=regen_max_tokens,
                        resume=resume, save_every=save_every, eval_samples=eval_samples, max_samples=max_samples,
                        keep_checkpoint=keep_checkpoint, export_dtype=export_dtype, seed=seed,
                        layouts=tuple(x.strip() for x in layouts.split(",") if x.strip()))
    if threads > 0:
        import torch

        torch.set_num_threads(threads)
    rt = open_runtime(model, device=device, dtype=dtype)
    summary = train_draft(rt, opts)
    if json_out:
        emit_json(summary)
        return
    ev = summary["eval"] or {}
    log(f"draft written to {summary['out']} (SGLang layout; vLLM/speculators in {summary['out']}/vllm); "
        f"held-out accuracy {ev.get('accuracy')}; attach it with: angel draft-attach {model or 'angel-tiny'} {summary['out']}")
