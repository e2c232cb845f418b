"""`angel verify` end to end: static stage, then (unless --static) the streamed routing run and --against.

verify(model, opts) -> (report dict, checks). The report is what --json prints; its top-level keys are
  model, path, config_source, total_params, active_params, activation_ratio, static, checks, routing,
  against, passed, exit_code
with routing.layers[] = per MoE layer {layer, tokens, top_k, expert_load, dead_experts, max_load, mean_load,
max_mean_ratio, entropy, entropy_norm, bias_changed_share, ...}. The command maps exit_code to the process
status (angelcli.verify.checks.exit_code).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from angelcli.config import ModelConfig
from angelcli.errors import UsageError
from angelcli.verify.checks import INTEGRITY, ROUTING, Check, check, exit_code, skip
from angelcli.verify.dynamic import (
    Thresholds, against_checks, compare_routing, layer_stats, logit_drift, routing_checks,
)
from angelcli.verify.static import ModelSource, open_source, static_stage

# Fields two checkpoints must share for their routing to be comparable token by token.
_SAME_ARCH = ("num_hidden_layers", "hidden_size", "vocab_size", "num_experts", "num_experts_per_tok", "n_group",
              "topk_group", "first_k_dense_replace")


@dataclass
class VerifyOptions:
    static_only: bool = False
    prompts: str = "medical"  # "medical", "random" or a file path
    max_tokens: int = 128  # per prompt (random: the length of each sequence)
    num_random: int = 8
    seed: int = 0
    against: str | None = None
    device: str = "auto"
    dtype: str = "auto"
    thresholds: Thresholds = field(default_factory=Thresholds)
    checksums: bool = True  # hash files against recorded checksums (store manifest / checksums.sha256)
    checksums_only: bool = False
    write_checksums: bool = False  # record checksums.sha256 for a local directory first
    deep: bool = False  # read every tensor and report NaN / inf by name
    workers: int = 0  # hashing threads (0: one per core, at most 8)


def _require_weights(source: ModelSource, flag: str) -> None:
    if source.model_dir is None:
        raise UsageError(f"{flag}'{source.spec}' is not pulled: only the static check runs from its bundled config "
                         f"(angel verify {source.spec} --static), or `angel pull {source.spec}` first")
    if not source.has_weights:
        raise UsageError(f"{flag}{source.model_dir}: no *.safetensors weights; only --static runs on a bare config")


def _stream(source: ModelSource, reader, prompts, dev: str, tdtype, keep_final: bool, label: str):
    from angelcli.console import progress
    from angelcli.verify.stream import LayerStreamer, stream_forward

    cfg = ModelConfig.from_dict(source.config)
    streamer = LayerStreamer(reader, cfg, tdtype, dev)
    with progress(f"verify {label}", total=cfg.num_hidden_layers, unit="layers") as bar:
        res = stream_forward(streamer, prompts, keep_final=keep_final, on_layer=lambda i: bar.advance(1))
    return streamer, res


def _checksums_only(model: str | None, opts: VerifyOptions) -> tuple[dict, list[Check]]:
    from angelcli.resolve import TINY_NAME, resolve_model
    from angelcli.verify.integrity import checksum_check, record_checksums

    model_dir = resolve_model(model)
    if opts.write_checksums:
        record_checksums(model_dir, opts.workers)
    c, summary = checksum_check(model_dir, opts.workers)
    checks = [c]
    report = {"model": str(model or TINY_NAME), "path": str(model_dir), "config_source": None, "static": None,
              "checksums": summary, "checks": [c.to_dict()], "routing": None, "against": None}
    report["exit_code"] = exit_code(checks)
    report["passed"] = report["exit_code"] == 0
    return report, checks


def verify(model: str | None, opts: VerifyOptions) -> tuple[dict, list[Check]]:
    if opts.static_only and opts.against:
        raise UsageError("--against runs the model; it cannot be combined with --static")
    if opts.checksums_only:
        if opts.against or opts.deep or opts.static_only:
            raise UsageError("--checksums-only runs no other check; drop --static, --deep and --against")
        return _checksums_only(model, opts)
    if not opts.checksums and opts.write_checksums:
        raise UsageError("--write-checksums records checksums for verify to check; drop --no-checksums")
    source = open_source(model)
    if not opts.static_only:
        _require_weights(source, "")
    other = open_source(opts.against) if opts.against else None
    if other is not None:
        _require_weights(other, "--against ")
        diff = [k for k in _SAME_ARCH if source.config.get(k) != other.config.get(k)]
        if diff:
            raise UsageError(f"--against {opts.against}: a different architecture ({diff[0]} is "
                             f"{other.config.get(diff[0])!r}, not {source.config.get(diff[0])!r})")

    file_checks, checksum_summary = [], None
    if source.model_dir is not None:
        from angelcli.verify.integrity import checksum_check, record_checksums

        if opts.write_checksums:
            record_checksums(source.model_dir, opts.workers)
        if opts.checksums:
            c, checksum_summary = checksum_check(source.model_dir, opts.workers)
            file_checks.append(c)
    elif opts.write_checksums or opts.deep:
        raise UsageError(f"'{source.spec}' is not pulled: --write-checksums and --deep read its files "
                         f"(angel pull {source.spec} first)")
    facts, checks, reader = static_stage(source)
    checks = checks + file_checks  # inventory first: its first check says whether the shards even parse
    if opts.deep and reader is not None:
        from angelcli.verify.finite import finite_check

        c, facts["finite"] = finite_check(reader)
        checks.append(c)
    report: dict = {
        "model": source.spec, "path": str(source.model_dir) if source.model_dir else None,
        "config_source": source.config_source,
        "total_params": facts["total_params"], "active_params": facts["active_params"],
        "activation_ratio": facts["activation_ratio"], "static": facts,
        "checks": [], "routing": None, "against": None, "checksums": checksum_summary,
    }
    if not opts.static_only:
        broken = reader is None or any(c.failed and c.kind == INTEGRITY for c in checks)
        other_reader = None
        if other is not None:  # before any streaming: a broken OTHER must not cost a full pass of SELF first
            _, other_checks, other_reader = static_stage(other)
            for c in other_checks:
                c.name = "against." + c.name
            checks += [c for c in other_checks if c.failed]
            if other_reader is None or any(c.failed for c in other_checks):
                checks.append(skip("against.routing", ROUTING, f"not run: {other.spec} failed its integrity checks"))
                other = None
        checks += _dynamic(source, reader, other, other_reader, opts, report, broken)
    report["checks"] = [c.to_dict() for c in checks]
    report["exit_code"] = exit_code(checks)
    report["passed"] = report["exit_code"] == 0
    return report, checks


def _dynamic(source: ModelSource, reader, other: ModelSource | None, other_reader, opts: VerifyOptions,
             report: dict, broken: bool) -> list[Check]:
    from angelcli.runtime import pick_device, pick_dtype
    from angelcli.verify.prompts import build_prompts

    if broken:  # a missing tensor or NaN scale would only crash the forward or poison every statistic
        return [skip("routing", ROUTING, "not run: the checkpoint failed its integrity checks")]
    cfg = ModelConfig.from_dict(source.config)
    dev = pick_device(opts.device)
    tdtype, dname = pick_dtype(opts.dtype, dev)
    prompts, desc = build_prompts(opts.prompts, source.model_dir, cfg.vocab_size, max_tokens=opts.max_tokens,
                                  num_random=opts.num_random, seed=opts.seed)
    streamer, res = _stream(source, reader, prompts, dev, tdtype, other is not None, source.spec)
    if res.nonfinite_weight is not None or res.first_nonfinite_layer is not None:
        # NaN weights: an integrity failure, not a routing one (statistics of NaN say nothing about routing)
        where = (f"weight {res.nonfinite_weight} holds NaN/inf" if res.nonfinite_weight is not None else
                 f"the hidden state went NaN/inf in model.layers.{res.first_nonfinite_layer}")
        return [check("forward.finite", INTEGRITY, False,
                      f"{where} (`angel verify {source.spec} --static --deep` names every bad tensor)"),
                skip("routing", ROUTING, "not run: the weights are not finite")]
    layers = [layer_stats(r, cfg) for r in res.router]
    report["routing"] = {"prompts": desc, "sequences": len(prompts), "tokens": sum(res.tokens), "device": dev,
                         "dtype": dname, "layers": layers}
    checks = routing_checks(layers, cfg, opts.thresholds)
    if other is None:
        return checks

    other_streamer, other_res = _stream(other, other_reader, prompts, dev, tdtype, True, other.spec)
    agreement = compare_routing(res.router, other_res.router, cfg.num_experts)
    from angelcli.verify.stream import logits_chunks

    drift = logit_drift(logits_chunks(res.final_hidden, streamer.tensor("lm_head.weight")),
                        logits_chunks(other_res.final_hidden, other_streamer.tensor("lm_head.weight")))
    report["against"] = {"model": other.spec, "path": str(other.model_dir), "layers": agreement, "logits": drift}
    return checks + against_checks(agreement, drift, opts.thresholds)


def write_plot(report: dict, path: Path) -> None:
    from angelcli.verify.plot import load_heatmap

    layers = (report.get("routing") or {}).get("layers") or []
    if not layers:
        raise UsageError("--plot needs routing data: drop --static")
    try:
        load_heatmap(layers, path, title=f"{report['model']}: expert load / mean")
    except OSError as err:
        raise UsageError(f"--plot {path}: cannot write ({err.strerror or err})") from None


def check_plot_path(path: Path) -> None:
    """--plot's directory must exist and be writable: said before a long routing run, not after it."""
    import os
    import shutil

    parent = Path(path).expanduser().parent
    if not parent.is_dir():
        raise UsageError(f"--plot {path}: directory {parent} does not exist")
    if not os.access(parent, os.W_OK) or shutil.disk_usage(parent).total == 0:
        raise UsageError(f"--plot {path}: cannot write there ({parent} is not writable)")
