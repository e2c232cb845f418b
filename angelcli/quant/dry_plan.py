"""`angel quantize ALIAS --fp8 --dry-run` before the model is pulled: the plan from its bundled config.

`plan`, `show` and `verify --static` already answer from angelcli/assets/configs for an alias that is not
downloaded; a dry run is "sizes and disk check only", so it can too. The shapes come from the architecture
(angelcli.model.bailing.expected_shape), the output layout from the same scheme rules the real conversion
uses (angelcli.quant.schemes), so the planned bytes equal the header-only plan of the pulled checkpoint up to
the few KB of safetensors headers.
"""

from __future__ import annotations

import math
import shutil
from pathlib import Path

from angelcli.errors import UsageError

_BYTES = {"BF16": 2, "F16": 2, "F32": 4, "F8_E4M3": 1}


def _nbytes(dtype: str, shape) -> int:
    return math.prod(shape) * _BYTES[dtype]


def bundled_dry_run(spec: str | None, out: Path, opts) -> dict | None:
    """The dry-run result for an alias known only by its bundled config; None when MODEL resolves locally
    (or is no alias at all), so the normal path runs."""
    from angelcli import aliases
    from angelcli.config import ModelConfig
    from angelcli.model.bailing import expected_checkpoint_names, expected_shape, is_fp32_tensor
    from angelcli.quant import schemes
    from angelcli.quant.output import existing_parent
    from angelcli.resolve import resolve_model

    if not spec:
        return None
    try:
        resolve_model(spec)
        return None
    except UsageError:
        config = aliases.bundled_config(spec)
        if config is None:
            return None
    cfg = ModelConfig.from_dict(config, source=f"bundled config of {spec}")
    if cfg.quantization_config:
        raise UsageError(f"{spec}: already quantised (quantization_config quant_method "
                         f"{cfg.quantization_config.get('quant_method', '?')}); quantize the BF16 checkpoint instead")
    src_bytes = out_bytes = n_q = 0
    for name in expected_checkpoint_names(cfg):
        shape = expected_shape(cfg, name)
        dtype = "F32" if is_fp32_tensor(name) else "BF16"
        src_bytes += _nbytes(dtype, shape)
        if not schemes.is_target(name, opts.targets):
            out_bytes += _nbytes(dtype, shape)
            continue
        n_q += 1
        out_bytes += _nbytes("F8_E4M3", shape)
        sdtype = schemes.scale_dtype_name(opts.scheme, dtype)
        if "weight" in schemes.scale_names(opts.scheme, name):
            out_bytes += _nbytes(sdtype, schemes.scale_shape(opts.scheme, shape))
    if opts.scheme == "static":
        out_bytes += n_q * 2  # one input_scale [1] per quantised weight
    free = shutil.disk_usage(existing_parent(out)).free
    need = out_bytes * (2 if opts.scheme == "static" and opts.offload == "disk" else 1)
    state = "fresh" if not out.exists() or not any(out.iterdir()) else "exists"
    return {"model": spec, "source": None, "config_source": "bundled (not pulled; sizes from the architecture)",
            "output": str(out), "scheme": opts.scheme, "targets": opts.targets, "quantized_tensors": n_q,
            "source_bytes": src_bytes, "output_bytes": out_bytes, "disk_free_bytes": free,
            "disk_needed_bytes": need, "disk_ok": free >= need, "state": state, "status": "dry-run", "shards": None}
