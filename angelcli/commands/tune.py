"""`angel tune`: benchmark launch configs on this GPU and write a config file (see angelcli/ops/tuning.py)."""

from __future__ import annotations

import typer


def tune(
    kind: str = typer.Option("moe", "--kind", help="moe (fused_moe, --experts x --inter) or gemm (fp8_gemm, "
                             "needs --n/--k)."),
    experts: int = typer.Option(256, "--experts", help="moe: experts E (257 = with the shared expert appended)."),
    inter: int = typer.Option(1024, "--inter", help="moe: expert width I of this TP shard (1024 / tp)."),
    quant: str = typer.Option("fp8_block", "--quant", help="bf16, fp8_block or fp8_channel."),
    n: int = typer.Option(None, "--n", help="gemm: weight rows N (e.g. 5120 for query_key_value)."),
    k: int = typer.Option(None, "--k", help="gemm: weight columns K (e.g. 4096)."),
    out: str = typer.Option(None, "--out", envvar="ANGEL_KERNEL_CONFIG_DIR",
                            help="Directory for the JSON file (default: $ANGEL_KERNEL_CONFIG_DIR, "
                                 "else ./kernel-configs)."),
    json_out: bool = typer.Option(False, "--json", help="Print {\"path\": ...} as JSON on stdout."),
) -> None:
    """Tune fused_moe or fp8_gemm launch configs on this GPU; lookups then prefer the written file."""
    from pathlib import Path

    import torch

    from angelcli.console import emit_json, log
    from angelcli.errors import ResourceError, UsageError
    from angelcli.ops.bench import tune as run_tune

    if kind not in ("moe", "gemm") or quant not in ("bf16", "fp8_block", "fp8_channel"):
        raise UsageError(f"tune: --kind {kind!r} / --quant {quant!r}: expected moe|gemm and bf16|fp8_block|fp8_channel")
    if kind == "gemm" and (not n or not k or quant == "bf16"):
        raise UsageError("tune: --kind gemm needs --n, --k and an fp8 --quant")
    if not torch.cuda.is_available():
        raise ResourceError("tune: needs a CUDA GPU (none visible to torch)")
    if experts < 1 or inter < 16:
        raise UsageError(f"tune: --experts {experts} / --inter {inter}: expected >= 1 and >= 16")
    path = run_tune(kind, quant, Path(out or "kernel-configs"), n=n, k=k, progress=log, experts=experts, inter=inter)
    if json_out:
        emit_json({"path": str(path)})
    else:
        typer.echo(f"wrote {path}; set ANGEL_KERNEL_CONFIG_DIR={path.parent} to use it")
