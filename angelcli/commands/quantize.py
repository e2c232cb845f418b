"""`angel quantize --fp8`: FP8 checkpoints (block / dynamic / static) with a quality report."""

from __future__ import annotations

from pathlib import Path
from typing import List, Optional

import typer


def quantize(
    models: Optional[List[str]] = typer.Argument(None, help="Paths, store names or aliases (default: angel-tiny)."),
    fp8: bool = typer.Option(False, "--fp8", help="Quantize to FP8 e4m3 (the only format; required)."),
    scheme: str = typer.Option("block", "--scheme", envvar="ANGEL_QUANT_SCHEME",
                               help="block (native FP8, 128x128 blocks) | dynamic (per-channel, compressed-tensors) "
                                    "| static (per-tensor + calibrated input scales, compressed-tensors)."),
    targets: str = typer.Option("experts", "--targets",
                                help="experts (routed + shared) | all (+ attention, dense FFN)."),
    out: Optional[Path] = typer.Option(None, "--out", "-o", help="Output directory (one MODEL)."),
    out_dir: Optional[Path] = typer.Option(None, "--out-dir",
                                           help="Parent directory: one <name>-FP8[-scheme] per MODEL."),
    calib: str = typer.Option("medical", "--calib",
                              help="static: medical | PATH (.jsonl/.txt) | hub dataset org/name."),
    num_samples: int = typer.Option(512, "--num-samples", help="static: calibration samples."),
    max_seq_len: int = typer.Option(2048, "--max-seq-len", help="static: tokens per calibration sample (cut)."),
    offload: str = typer.Option("none", "--offload", help="static: none (model in CPU RAM) | disk (weights stay in the "
                                                        "source shards; one decoder layer in memory at a time)."),
    workers: int = typer.Option(0, "--workers", "-j", envvar="ANGEL_WORKERS",
                                help="Shards converted concurrently, one core each (0 = one per core, at most 8)."),
    force: bool = typer.Option(False, "--force", help="Replace an angel output made from other source/options."),
    dry_run: bool = typer.Option(False, "--dry-run", help="Plan only: sizes and disk check; writes nothing."),
    no_report: bool = typer.Option(False, "--no-report", help="Skip the quality report."),
    run_eval: Optional[str] = typer.Option(None, "--eval", help="ppl: run the BF16 vs FP8 perplexity comparison even "
                                                               "on large models; a benchmark (medqa, cmb, ... see "
                                                               "angel eval): gate on its accuracy drop."),
    eval_data: Optional[str] = typer.Option(None, "--eval-data",
                                            help="--eval ppl: held-out text (default: medical eval split); "
                                                 "--eval TASK: the benchmark's files."),
    max_drop: float = typer.Option(1.0, "--max-drop", help="--eval TASK: fail (exit 1) when FP8 accuracy is more "
                                                           "than this many points below the source's."),
    json_out: bool = typer.Option(False, "--json", help="Print the results as JSON on stdout."),
) -> None:
    """Convert BF16 checkpoints to FP8 (experts by default), verified, resumable, with a quality report.

    Examples:
      angel quantize antangelmed --fp8 --out AntAngelMed-FP8
      angel quantize antangelmed --fp8 --scheme static --calib medical --num-samples 512
      angel quantize A B C --fp8 --out-dir quantized --json
      angel quantize antangelmed --fp8 --dry-run
      angel quantize antangelmed --fp8 --eval medqa --eval-data MedQA/4_options --max-drop 1.0
    """
    from angelcli.console import emit_json, log
    from angelcli.errors import UsageError
    from angelcli.quant.run import QuantOptions, quantize_many

    if not fp8:
        raise UsageError("say which format: --fp8 (the only one angel writes)")
    task = run_eval if run_eval not in (None, "ppl") else None
    if task is not None:
        from angelcli.eval.gate import check_gate_args

        check_gate_args(task, eval_data, max_drop)
    opts = QuantOptions(scheme=scheme, targets=targets, workers=workers, force=force, dry_run=dry_run,
                        report=not no_report, eval=True if run_eval == "ppl" else None, calib=calib,
                        eval_data=None if task else eval_data,
                        num_samples=num_samples, max_seq_len=max_seq_len, offload=offload)
    results, code = quantize_many(list(models or []), out, out_dir, opts)
    if task is not None and not dry_run:
        from angelcli.eval.gate import run_gate

        gate = run_gate(results, task, eval_data, max_drop)
        code = code or gate
    if json_out:
        emit_json(results if len(results) != 1 else results[0])
    else:
        for r in results:
            log(_summary(r))
    if dry_run and code == 0 and any(r.get("disk_ok") is False for r in results):
        code = 4  # the planned output would not fit (ResourceError's code)
    if code:
        raise typer.Exit(code)


def _summary(r: dict) -> str:
    if r.get("status") == "error":
        return f"{r['model']}: error: {r['error']}"
    head = (f"{r['model']} -> {r['output']}: {r['status']} (fp8 {r['scheme']}, {r['targets']}, "
            f"{r['quantized_tensors']} tensors")
    if r.get("status") == "dry-run":
        return (f"{head}; {r['source_bytes'] / 1e9:.3f} GB -> {r['output_bytes'] / 1e9:.3f} GB, "
                f"disk {'ok' if r['disk_ok'] else 'TOO SMALL'}: {r['disk_free_bytes'] / 1e9:.1f} GB free)")
    rep = r.get("report") or {}
    line = head + ")"
    w = rep.get("weights")
    if w:
        line += f"; weight rel. error mean {w['rel_err_mean']:.4f} max {w['rel_err_max']:.4f}"
    m = rep.get("model") or {}
    if "perplexity_fp8" in m:
        line += (f"; ppl {m['perplexity_bf16']:.3f} -> {m['perplexity_fp8']:.3f} ({m['perplexity_delta_pct']:+.2f}%), "
                 f"top-1 agree {m['top1_agreement']:.3f}, routing agree min {m['routing_agreement_min']:.3f}")
    elif "skipped" in m:
        line += f"; model comparison skipped: {m['skipped']}"
    return line
