"""Static FP8 (`--scheme static`): calibrate input scales on data with llmcompressor's oneshot.

Flow (all on angel's own model class, angelcli.quant.calib_model):
  1. build AngelBailingForCausalLM from the checkpoint (per-expert nn.Linear experts, checkpoint names), in
     CPU memory or, with offload_dir, left on disk in the source shards (compressed-tensors DiskCache);
  2. tokenise the calibration samples with the model's chat template (angelcli.quant.calib_data);
  3. count, with forward pre-hooks, how many tokens reach every targeted Linear;
  4. run `oneshot(model, dataset=DataLoader, recipe=recipes/fp8-static-<targets>.yaml, pipeline=sequential,
     moe_calibrate_all_experts=True)`: the sequential pipeline onloads one decoder layer at a time; with the
     all-experts flag every expert sees every calibration token (angel's MoE forward honours the flag while
     keeping the routed output);
  5. refuse to write anything unless every targeted module received tokens and every weight and input scale is
     finite and positive: an expert that saw no tokens keeps an uninitialised (`torch.empty`) input_scale
     that can look plausible (68.0, 0.0, -69632.0 were observed), and vLLM takes the max over a layer's experts,
     so one such value ruins the whole layer. llmcompressor itself only warns and saves;
  6. save with llmcompressor's compressed save (compressed-tensors `float-quantized`) into a staging directory;
     angelcli.quant.run moves the shards into place and writes config, index and manifest.

llmcompressor's log lines go to stderr at ERROR level unless LLM_COMPRESSOR_LOG_LEVEL says otherwise.
Threads: on a small busy CPU oneshot is much faster with one intra-op thread (oversubscription); that is left to
the caller (`torch.set_num_threads`, OMP_NUM_THREADS).
"""

from __future__ import annotations

import json
import math
import os
from dataclasses import dataclass, field
from pathlib import Path

from angelcli.errors import CheckFailed, UsageError
from angelcli.quant import schemes

PIPELINES = ("sequential", "basic")


@dataclass
class CalibResult:
    staging: Path  # directory holding the saved *.safetensors (+ recipe.yaml, config.json from llmcompressor)
    quantization_config: dict
    recipe: str
    num_samples: int
    num_tokens: int
    input_scales: dict[str, float] = field(default_factory=dict)  # module -> calibrated input scale
    tokens_per_module: dict[str, int] = field(default_factory=dict)


def recipe_for(targets: str) -> tuple[str, str]:
    """(recipe text, where it came from) for the static scheme."""
    path = schemes.recipe_file("static", targets)
    if path.exists():
        return path.read_text(encoding="utf-8"), str(path.relative_to(schemes.RECIPES_DIR.parent))
    return schemes.recipe_yaml("static", targets), f"built-in recipe fp8-static-{targets}"


def check_calibration(model, targets: str, counts: dict[str, int]) -> dict[str, float]:
    """Every targeted module saw tokens and has finite, positive scales; returns {module: input_scale}.

    Raises CheckFailed naming the first bad module and how many are affected.
    """
    import torch

    unseen, bad = [], []
    scales: dict[str, float] = {}
    for name, n in counts.items():
        module = model.get_submodule(name)
        if n == 0:
            unseen.append(name)
            continue
        for attr in ("input_scale", "weight_scale"):
            t = getattr(module, attr, None)
            if t is None:
                bad.append((name, attr, "missing"))
                continue
            t = t.detach().float()
            if not bool(torch.isfinite(t).all()) or not bool((t > 0).all()):
                bad.append((name, attr, t.flatten()[0].item()))
            elif attr == "input_scale":
                scales[name] = float(t.flatten()[0])
    if unseen:
        experts = sorted({n.rsplit(".", 1)[0] for n in unseen})
        raise CheckFailed(
            f"{len(unseen)} quantised modules in {len(experts)} experts received no calibration tokens "
            f"(first: {unseen[0]}); their input scales would be uninitialised garbage. Keep all-experts "
            "calibration on (the default) or use more / more varied --calib samples; nothing was written")
    if bad:
        name, attr, value = bad[0]
        raise CheckFailed(f"{len(bad)} scales are not finite and positive (first: {name}.{attr} = {value!r}); "
                          "nothing was written")
    return scales


def run_static(src_dir: Path, raw_config: dict, staging: Path, token_ids: list[list[int]], targets: str, *,
               tokenizer=None, all_experts: bool = True, pipeline: str = "sequential",
               max_shard_size: str = "5GB", offload_dir: Path | None = None) -> CalibResult:
    """Calibrate and save a static-FP8 compressed-tensors checkpoint into `staging`."""
    # llmcompressor's own warnings are either harmless here ("No accelerator available", CPU runs) or checked by
    # angel itself (uncalibrated modules); LLM_COMPRESSOR_LOG_LEVEL=WARNING shows them again.
    os.environ.setdefault("LLM_COMPRESSOR_LOG_LEVEL", "ERROR")
    import logging
    import warnings

    import torch
    from torch.utils.data import DataLoader

    from angelcli.console import log
    from angelcli.quant.calib_model import build_calib_model

    if pipeline not in PIPELINES:
        raise UsageError(f"calibration pipeline must be one of {', '.join(PIPELINES)}")
    dtype = {"bfloat16": torch.bfloat16, "float16": torch.float16, "float32": torch.float32}.get(
        str(raw_config.get("torch_dtype", "bfloat16")).replace("torch.", ""), torch.bfloat16)
    model = build_calib_model(src_dir, raw_config, dtype=dtype, offload_dir=offload_dir)
    recipe_text, recipe_src = recipe_for(targets)

    counts: dict[str, int] = {}
    hooks = []
    for name, module in model.named_modules():
        if isinstance(module, torch.nn.Linear) and schemes.is_target(name + ".weight", targets):
            counts[name] = 0

            def hook(mod, args, _name=name):
                counts[_name] += math.prod(args[0].shape[:-1])

            hooks.append(module.register_forward_pre_hook(hook))
    if not counts:
        raise UsageError(f"{src_dir}: no Linear module matches --targets {targets}")

    batches = [{"input_ids": torch.tensor([ids]), "attention_mask": torch.ones(1, len(ids), dtype=torch.long)}
               for ids in token_ids]
    log(f"calibrating {len(counts)} modules on {len(batches)} samples ({sum(map(len, token_ids))} tokens), "
        f"{'all-experts' if all_experts else 'routed-only'}, pipeline {pipeline}")
    from llmcompressor import oneshot

    staging.mkdir(parents=True, exist_ok=True)
    recipe_path = staging / "recipe-in.yaml"
    recipe_path.write_text(recipe_text, encoding="utf-8")
    fx_log = logging.getLogger("torch.fx._symbolic_trace")
    fx_level = fx_log.level
    fx_log.setLevel(logging.ERROR)  # "is_fx_tracing will return true for both ..." on every traced run
    untqdm = _quiet_tqdm()  # llmcompressor draws a tqdm bar per layer and pass: ~63 KB of stderr per run
    try:
        model = oneshot(model=model, recipe=str(recipe_path), dataset=DataLoader(batches, batch_size=None),
                        processor=tokenizer, num_calibration_samples=len(batches), pipeline=pipeline,
                        moe_calibrate_all_experts=all_experts, shuffle_calibration_samples=False)
    finally:
        fx_log.setLevel(fx_level)
        untqdm()
        for h in hooks:
            h.remove()
        recipe_path.unlink(missing_ok=True)
    scales = check_calibration(model, targets, counts)
    with warnings.catch_warnings():
        # the sequential pipeline leaves modules "offloaded" to the CPU they live on; saving them is fine
        warnings.filterwarnings("ignore", message="Attempting to save a model with offloaded modules")
        untqdm = _quiet_tqdm()
        try:
            model.save_pretrained(str(staging), save_compressed=True, max_shard_size=max_shard_size)
        finally:
            untqdm()
    saved = json.loads((staging / "config.json").read_text(encoding="utf-8"))
    qc = saved.get("quantization_config")
    if not qc or qc.get("quant_method") != "compressed-tensors":
        raise CheckFailed(f"{staging}: llmcompressor did not write a compressed-tensors quantization_config")
    recipe_out = staging / "recipe.yaml"
    return CalibResult(staging, qc, recipe_out.read_text("utf-8") if recipe_out.exists() else recipe_text,
                       len(batches), sum(map(len, token_ids)), scales, dict(counts))


def _quiet_tqdm():
    """Turn every tqdm bar off (TQDM_DISABLE is read only when tqdm is imported, which has happened by now);
    returns the function that restores it. angel reports calibration progress itself."""
    try:
        import tqdm.std
    except ImportError:
        return lambda: None
    cls = tqdm.std.tqdm
    orig = cls.__init__

    def quiet_init(self, *args, **kwargs):
        kwargs["disable"] = True
        orig(self, *args, **kwargs)

    cls.__init__ = quiet_init

    def restore():
        cls.__init__ = orig

    return restore
