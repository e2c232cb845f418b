"""`angel plan`: will MODEL fit on N GPUs, with how much KV cache? From the config alone (no weights)."""

from __future__ import annotations

from typing import Optional

import typer


def plan(
    model: Optional[str] = typer.Argument(None, envvar="ANGEL_MODEL",
                                          help="Path, store name or alias (bundled configs work before a pull)."),
    gpus: int = typer.Option(1, "--gpus", "-g", envvar="ANGEL_GPUS", help="GPUs on the node."),
    gpu_mem: Optional[float] = typer.Option(None, "--gpu-mem", envvar="ANGEL_GPU_MEM",
                                            help="Memory per GPU in GB (10^9 bytes); default: that of --gpu."),
    gpu: str = typer.Option("h20", "--gpu", envvar="ANGEL_GPU", help="GPU kind from angelcli/assets/gpus.json "
                            "(h20, h20-3e, h100-sxm, h200, ...) when --gpu-mem is not given."),
    context: Optional[int] = typer.Option(None, "--context", "-c",
                                          help="Tokens one sequence must hold (default: max_position_embeddings)."),
    json_out: bool = typer.Option(False, "--json", help="Print the plan as JSON."),
) -> None:
    """Plan tensor parallelism, weights per GPU and the KV-cache budget; exit 4 when it does not fit.

    Examples:
      angel plan antangelmed-fp8 --gpus 2 --gpu-mem 96
      angel plan antangelmed --gpus 4 --gpu h20 --context 131072 --json
    """
    from angelcli.console import emit_json
    from angelcli.errors import ResourceError, UsageError
    from angelcli.planner import describe, find_gpu, make_plan, plan_config

    if gpu_mem is None:
        entry = find_gpu(gpu)
        if entry is None:
            raise UsageError(f"--gpu {gpu}: unknown GPU kind; give --gpu-mem in GB")
        gpu_mem = float(entry["memory_gb"])
    cfg, source = plan_config(model)
    result = make_plan(cfg, gpus=gpus, gpu_mem_gb=gpu_mem, context=context, model=model or "angel-tiny")
    if json_out:
        emit_json({**result.to_dict(), "config_source": source})
    else:
        typer.echo(describe(result, source))
    if not result.fits:
        raise ResourceError(result.summary())
