"""Non-finite logits: refuse to emit tokens from them, and say which layer broke.

A NaN or inf weight (one bad expert is enough) turns the hidden state of every token that touches it into
NaN; argmax of a NaN row is token 0, so without a check the engine would "generate" <|startoftext|> forever
and report NaN logprobs. The engine checks each step's chosen logprob, which it already copies to the host
(log_softmax of a row with any NaN or +inf is NaN), so the check costs no extra device sync.

On detection `diagnose` re-runs the sequence so far through the torch model once, with a forward hook per
stage (embeddings, each decoder layer, final norm, LM head), and names the first stage whose output is not
finite. That rerun is debugging work on an already-failed request, so its cost does not matter.
"""

from __future__ import annotations

import math

from angelcli.errors import IntegrityError


def finite(value: float) -> bool:
    return math.isfinite(value)


def first_nonfinite_stage(model, ids: list[int], device) -> str | None:
    """Name of the first module whose output holds NaN/inf for `ids` [T], or None when all stay finite.

    model: BailingMoeForCausalLM (the torch module; also the weights behind the triton backend)."""
    import torch

    stages = [("model.word_embeddings", model.model.word_embeddings)]
    stages += [(f"model.layers.{i}", layer) for i, layer in enumerate(model.model.layers)]
    stages += [("model.norm", model.model.norm), ("lm_head", model.lm_head)]
    found: list[str] = []

    def hook_for(name):
        def hook(_module, _inp, out):
            t = out[0] if isinstance(out, tuple) else out
            if not found and torch.is_tensor(t) and not torch.isfinite(t).all():
                found.append(name)
        return hook

    handles = [mod.register_forward_hook(hook_for(name)) for name, mod in stages]
    # The fast inference forward (model/inference.py) bypasses the modules' forward, so hooks would not fire:
    # the diagnosis runs the module forward, the slow twin of the same numerics.
    fast = getattr(model, "fast_inference", None)
    if fast is not None:
        model.fast_inference = False
    try:
        with torch.inference_mode():
            model(torch.as_tensor([ids], dtype=torch.long, device=device))
    finally:
        for h in handles:
            h.remove()
        if fast is not None:
            model.fast_inference = fast
    return found[0] if found else None


def nonfinite_error(model, ids: list[int], device, step: int) -> IntegrityError:
    """The exit-3 error for non-finite logits at generated token `step`, naming the first bad stage."""
    where = None
    if getattr(model, "tp", None) is None:  # under tensor parallelism every rank would have to join the rerun
        try:
            where = first_nonfinite_stage(model, ids, device)
        except Exception:  # noqa: BLE001 - the diagnosis is best effort; the refusal stands without it
            where = None
    at = f"; first non-finite output: {where}" if where else ""
    return IntegrityError(f"the model produced non-finite logits (NaN/inf) at generated token {step + 1}{at}; "
                          f"the weights are corrupt (angel verify MODEL --static --deep names the tensor)")
