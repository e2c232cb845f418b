"""`angel verify --deep`: stream every tensor of a checkpoint and find NaN / inf values, by tensor name.

One NaN in one expert is enough to turn every token routed there into NaN (and a whole reply into the token
with id 0), yet headers, shapes and even the parameter count stay perfect, so only reading the values finds
it. Tensors are read memory-mapped one at a time and checked in slices of 16M elements, so memory stays flat
whatever the model size; FP8 values are widened to fp32 per slice (e4m3 has a NaN encoding but no inf).
"""

from __future__ import annotations

from angelcli.loader import CheckpointReader
from angelcli.verify.checks import INTEGRITY, Check, check

_FLOAT_DTYPES = {"F64", "F32", "F16", "BF16", "F8_E4M3", "F8_E5M2"}
_SLICE = 16 << 20


def nonfinite_count(t) -> int:
    """Number of NaN / inf elements of a tensor, checked slice by slice."""
    import torch

    flat = t.reshape(-1)
    bad = 0
    for a in range(0, flat.numel(), _SLICE):
        part = flat[a : a + _SLICE]
        if part.dtype not in (torch.float32, torch.float64):
            part = part.float()
        bad += int((~torch.isfinite(part)).sum())
    return bad


def finite_check(reader: CheckpointReader) -> tuple[Check, dict]:
    """-> (check "weights.finite", summary {tensors, bad: [{tensor, file, nonfinite}]})."""
    from angelcli.console import progress

    names = [n for n, info in reader.tensors.items() if info.dtype in _FLOAT_DTYPES]
    bad = []
    with progress("verify weights", total=len(names), unit="tensors") as bar:
        for n in names:
            k = nonfinite_count(reader.get(n))
            if k:
                bad.append({"tensor": n, "file": reader.tensors[n].file.name, "nonfinite": k})
            bar.advance(1)
    summary = {"tensors": len(names), "bad": bad}
    if bad:
        first = bad[0]
        more = f" ({len(bad) - 1} more tensor(s))" if len(bad) > 1 else ""
        return check("weights.finite", INTEGRITY, False,
                     f"{first['tensor']} in {first['file']} holds {first['nonfinite']:,} NaN/inf value(s){more}"), summary
    return check("weights.finite", INTEGRITY, True, f"all {len(names):,} tensors finite (every value read)"), summary
