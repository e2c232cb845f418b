"""`angel bench`: prefill / decode tokens per second and the decode roofline fraction (not a test)."""

from __future__ import annotations

from typing import Optional

import typer


def _ints(text: Optional[str], flag: str) -> Optional[list[int]]:
    from angelcli.errors import UsageError

    if text is None:
        return None
    try:
        values = [int(x) for x in text.split(",") if x.strip()]
    except ValueError:
        raise UsageError(f"{flag}: expected comma-separated integers, got {text!r}") from None
    if not values or min(values) < 1:
        raise UsageError(f"{flag}: expected positive integers")
    return values


def bench(
    model: Optional[str] = typer.Argument(None, help="Checkpoint to measure (default: generated bench models)."),
    batches: Optional[str] = typer.Option(None, "--batches", help="Batch sizes, e.g. 1,32 (CPU default 1,8)."),
    contexts: Optional[str] = typer.Option(None, "--contexts", help="Context lengths, e.g. 1024,32768 "
                                           "(CPU default 128,1024)."),
    tokens: Optional[int] = typer.Option(None, "--tokens", "-n", help="Decode steps per measurement."),
    formats: str = typer.Option("bf16,fp8", "--formats", help="Generated models to measure (no MODEL given)."),
    device: str = typer.Option("auto", "--device", envvar="ANGEL_DEVICE", help="auto|cpu|cuda."),
    backend: str = typer.Option("auto", "--backend", envvar="ANGEL_BACKEND", help="auto|torch|triton."),
    tp: int = typer.Option(1, "--tp", envvar="ANGEL_TP", help="Tensor-parallel GPUs."),
    json_out: bool = typer.Option(False, "--json", help="Print the report as JSON."),
    vs_reference: bool = typer.Option(False, "--vs-reference", help="CPU decode of MODEL (default angel-tiny) "
                                      "against the upstream code's structure (HF generate) and a lean reference, both in tests/: float32, greedy, "
                                      "--tokens (default 128) tokens, identical tokens required (exit 1)."),
    threads: int = typer.Option(1, "--threads", envvar="ANGEL_THREADS", help="CPU threads for --vs-reference."),
    count_launches: bool = typer.Option(False, "--count-launches", help="Count the kernels one decode step and "
                                        "one 4096-token prefill chunk launch (meta device: no weights, no GPU)."),
    batch: int = typer.Option(1, "--batch", help="--count-launches: decode batch size."),
    device_name: str = typer.Option("NVIDIA H20", "--device-name", envvar="ANGEL_DEVICE_NAME",
                                    help="--count-launches: GPU whose launch configs are looked up."),
    rounds: int = typer.Option(3, "--rounds", help="Alternating rounds for --vs-reference (median reported)."),
) -> None:
    """Measure prefill and decode throughput at batch 1/32 and context 1K/32K, BF16 and FP8, with the
    decode step as a fraction of the memory-bandwidth roofline. On CPU everything is scaled down.

    Examples:
      angel bench
      angel bench antangelmed-fp8 --tp 2 --json
      angel bench --vs-reference --threads 1   (angel-tiny CPU decode vs the upstream-shaped reference)
      angel bench antangelmed-fp8 --count-launches --tp 2 --device-name "NVIDIA H200" --json
    """
    from angelcli.console import emit_json, log

    if vs_reference:
        from angelcli.bench_reference import run_vs_reference, table
        from angelcli.errors import CheckFailed

        rep = run_vs_reference(model, tokens=tokens or 128, threads=threads, rounds=rounds)
        if json_out:
            emit_json(rep)
        else:
            typer.echo(table(rep))
        if not rep["identical"]:
            raise CheckFailed("the torch backend's greedy tokens differ from the reference's")
        return
    if count_launches:
        from angelcli.errors import UsageError
        from angelcli.launch_count import count_launches as count

        if model is None:
            raise UsageError("--count-launches needs MODEL (e.g. antangelmed-fp8)")
        rep = count(model, tp=tp, batch=batch, device_name=device_name)
        if json_out:
            emit_json(rep)
        else:
            typer.echo(f"{model} TP {tp} batch {batch} on {device_name}: {rep['kernels_per_step']} kernels per "
                       f"decode step, {rep['kernels_per_moe_layer']} per MoE layer (+ "
                       f"{rep['collectives_per_moe_layer']} collectives), {rep['kernels_per_prefill_chunk']} per "
                       f"4096-token prefill chunk; {len(rep['config_misses'])} launch-config misses")
        return
    from angelcli.bench import run_bench

    if tokens is not None and tokens < 2:
        from angelcli.errors import UsageError

        raise UsageError("--tokens must be >= 2 (decode speed is measured between the first and last token)")
    report = run_bench(model, device=device, backend=backend, tp=tp, batches=_ints(batches, "--batches"),
                       contexts=_ints(contexts, "--contexts"), tokens=tokens,
                       formats=tuple(f.strip() for f in formats.split(",") if f.strip()))
    if report.note:
        log(f"note: {report.note}")
    if json_out:
        emit_json(report.to_dict())
    else:
        typer.echo(report.table())
