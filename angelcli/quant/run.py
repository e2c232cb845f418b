"""`angel quantize --fp8`: checks, planning, the chosen scheme, and the finished output directory.

quantize_one(MODEL, out, opts) does, in order:
  1. resolve MODEL; refuse what is not a BailingMoeV2 checkpoint (config), what is already quantised, and a
     checkpoint whose tensor inventory does not match its config (missing expert, wrong shape: exit 3);
  2. plan every output shard from the headers (sizes, which tensors become FP8) and check the output
     directory: a finished output made from the same source with the same options is left alone ("up to
     date"); an interrupted one is resumed; anything else needs --force (and only angel outputs are ever
     replaced); --dry-run stops here and writes nothing; otherwise the free disk space is checked (exit 4);
  3. convert: `block` / `dynamic` stream shard by shard (angelcli.quant.stream); `static` calibrates through
     llmcompressor (angelcli.quant.calibrate);
  4. finish: config.json with quantization_config, model.safetensors.index.json, the tokenizer / generation /
     other non-weight files copied, the quality report (angelcli.quant.report) and, written last as the
     completion marker, manifest.json (source and its commit, scheme, targets, recipe, tool versions,
     per-tensor error statistics, report).
"""

from __future__ import annotations

import json
import os
import shutil
from dataclasses import asdict, dataclass
from datetime import datetime, timezone
from pathlib import Path

from angelcli.errors import AngelError, IntegrityError, ResourceError, UsageError
from angelcli.fsutil import atomic_write_json
from angelcli.quant import schemes
from angelcli.quant.output import (MANIFEST_FORMAT, MANIFEST_NAME, check_writable, copy_side_files, existing_parent,
                                   finish_modes, output_state, prepare, read_json, source_fingerprint,
                                   source_identity, tool_versions, write_index)
from angelcli.quant.stream import STATE_DIR

AUTO_EVAL_BYTES = 1 << 30  # models up to 1 GiB of weights get the model comparison without --eval


@dataclass
class QuantOptions:
    scheme: str = schemes.DEFAULT_SCHEME
    targets: str = schemes.DEFAULT_TARGETS
    workers: int = 0  # 0: one per CPU core (at most 8)
    force: bool = False
    dry_run: bool = False
    report: bool = True
    eval: bool | None = None  # None: automatic for small models; True: always; False: never
    calib: str = "medical"
    eval_data: str | None = None  # default: the built-in corpus's eval split
    num_samples: int = 512
    max_seq_len: int = 2048
    eval_samples: int = 32
    all_experts: bool = True
    pipeline: str = "sequential"
    offload: str = "none"  # static: "none" (model in CPU RAM) | "disk" (weights stay in the source shards)

    def fingerprint(self) -> dict:
        fp = {"scheme": self.scheme, "targets": self.targets}
        if self.scheme == "static":
            fp.update(calib=self.calib, num_samples=self.num_samples, max_seq_len=self.max_seq_len,
                      all_experts=self.all_experts)
        return fp


# ------------------------------------------------------------------------------------------------------------
# source checks and identity
# ------------------------------------------------------------------------------------------------------------
def open_source(spec: str | None):
    """MODEL -> (dir, ModelConfig, raw config dict, CheckpointReader), refusing unusable inputs."""
    from angelcli.config import ModelConfig
    from angelcli.loader import CheckpointReader, check_inventory
    from angelcli.resolve import resolve_model

    src = resolve_model(spec)
    cfg = ModelConfig.from_file(src)
    raw = json.loads((src / "config.json").read_text(encoding="utf-8"))
    if cfg.quantization_config:
        method = cfg.quantization_config.get("quant_method", "?")
        raise UsageError(f"{src}: already quantised (quantization_config quant_method {method}); "
                         "quantize the BF16 checkpoint instead")
    reader = CheckpointReader(src)
    inventory = check_inventory(cfg, reader)
    if not inventory.ok:
        raise IntegrityError(f"{src}: checkpoint does not match config.json: {inventory.summary()}")
    return src, cfg, raw, reader


def _eval_texts(opts: QuantOptions, tok) -> tuple[list[list[int]] | None, str | None]:
    from angelcli.quant import calib_data

    source = opts.eval_data or calib_data.BUILTIN
    try:
        samples = calib_data.load_samples(source, split="eval")
    except UsageError as err:
        if opts.eval_data is not None:
            raise
        return None, f"no held-out data ({err})"
    return calib_data.tokenize_samples(tok, samples, opts.eval_samples, min(opts.max_seq_len, 1024)), None


def build_report(src: Path, out: Path, stats: dict, opts: QuantOptions, src_bytes: int, has_tok: bool) -> dict:
    from angelcli.console import log
    from angelcli.quant import report

    rep: dict = {"weights": report.summarize_errors(stats)}
    run_eval = opts.eval if opts.eval is not None else src_bytes <= AUTO_EVAL_BYTES
    if not run_eval:
        rep["model"] = {"skipped": "model too large to run here (pass --eval to force)"}
    elif not has_tok:
        rep["model"] = {"skipped": "checkpoint has no tokenizer"}
    else:
        from angelcli.tokenizer import load_tokenizer

        ids, why = _eval_texts(opts, load_tokenizer(src))
        if ids is None:
            rep["model"] = {"skipped": why}
        else:
            import torch

            log(f"evaluating BF16 vs FP8 on {len(ids)} held-out samples")
            rep["model"] = report.evaluate(src, out, ids, device="cuda" if torch.cuda.is_available() else "cpu")
    atomic_write_json(out / "quant_report.json", rep)
    return rep


# ------------------------------------------------------------------------------------------------------------
# one model
# ------------------------------------------------------------------------------------------------------------
def has_tokenizer(src: Path) -> bool:
    return (src / "tokenizer.json").exists() or (src / "tokenizer.model").exists()


def quantize_one(spec: str | None, out: Path, opts: QuantOptions) -> dict:
    """Quantise one model into `out`; returns the JSON-able result (see module docstring)."""
    from angelcli.console import log
    from angelcli.quant import stream

    schemes.check_choice(opts.scheme, opts.targets)
    if opts.workers < 0:  # before anything is created on disk
        raise UsageError("--workers must be >= 1 (or 0 for one per CPU core)")
    out = Path(out).expanduser().resolve()
    check_writable(out)
    if opts.dry_run:
        from angelcli.quant.dry_plan import bundled_dry_run

        planned = bundled_dry_run(spec, out, opts)  # an alias not pulled yet: plan from its bundled config
        if planned is not None:
            return planned
    src, cfg, raw, reader = open_source(spec)
    if out == src.resolve() or src.resolve() in out.parents:
        raise UsageError(f"{out}: the output must not be inside the source model directory {src}")
    plans = [stream.plan_shard(f, opts.scheme, opts.targets) for f in reader.files]
    n_q = sum(len(p.quantized) for p in plans)
    if n_q == 0:
        raise UsageError(f"{src}: no tensor matches --targets {opts.targets}")
    src_bytes = sum(f.stat().st_size for f in reader.files)
    out_bytes = sum(p.out_bytes for p in plans)
    if opts.scheme == "static":
        out_bytes += n_q * 2  # one input_scale [1] per quantised weight
    fingerprint = {"format": MANIFEST_FORMAT, "source": source_fingerprint(src, reader.files), **opts.fingerprint()}
    state = output_state(out, fingerprint, opts.force)
    result = {"model": str(spec) if spec else "angel-tiny", "source": str(src), "output": str(out),
              "scheme": opts.scheme, "targets": opts.targets, "quantized_tensors": n_q,
              "source_bytes": src_bytes, "output_bytes": out_bytes}
    if state == "complete":
        manifest = read_json(out / MANIFEST_NAME) or {}
        log(f"{out}: up to date (same source and options); nothing to do")
        # the same numbers a fresh run reports: bytes of the shards written, not the header-only plan
        done = sum(f.get("size", 0) for f in manifest.get("files", [])) or out_bytes
        return {**result, "output_bytes": done, "state": state, "status": "up-to-date",
                "report": manifest.get("report")}
    free = shutil.disk_usage(existing_parent(out)).free
    need = out_bytes if state != "resume" else out_bytes - sum(
        (out / p.name).stat().st_size for p in plans if (out / p.name).exists())
    if opts.scheme == "static" and opts.offload == "disk":
        need *= 2  # compressed tensors pass through the offload folder before they are saved
    result.update(disk_free_bytes=free, disk_needed_bytes=need, disk_ok=free >= need, state=state)
    if opts.dry_run:
        result.update(status="dry-run", shards=[{"name": p.name, "quantized": len(p.quantized),
                                                 "output_bytes": p.out_bytes} for p in plans])
        return result
    if free < need:
        raise ResourceError(f"{out}: needs {need / 1e9:.2f} GB free, the disk has {free / 1e9:.2f} GB")
    prepare(out, state, fingerprint)
    log(f"quantizing {src} -> {out} (fp8 {opts.scheme}, targets {opts.targets}, {n_q} tensors)")

    calibration = None
    if opts.scheme in ("block", "dynamic"):
        records, skipped = stream.convert(plans, out, opts.scheme, opts.workers)
        stats = {k: v for r in records for k, v in r["stats"].items()}
        shard_names = [r["file"] for r in records]
        if opts.scheme == "block":
            qc = schemes.native_quant_config(cfg, opts.targets)
        else:
            qc = schemes.compressed_tensors_config("dynamic", schemes.ct_ignore(cfg, opts.targets))
        recipe_text, recipe_src = schemes.recipe_yaml(opts.scheme, opts.targets), "equivalent llmcompressor recipe"
        result["shards_skipped"] = skipped
    else:
        try:
            stats, shard_names, qc, recipe_text, recipe_src, calibration = _run_static(src, raw, out, cfg, opts)
        except BaseException:
            # a failed calibration leaves nothing behind: a directory this run created goes away entirely
            shutil.rmtree(out / STATE_DIR / "staging", ignore_errors=True)
            if state in ("fresh", "replace"):
                shutil.rmtree(out, ignore_errors=True)
            raise
    config = dict(raw)
    config["quantization_config"] = qc
    atomic_write_json(out / "config.json", config)
    write_index(out, shard_names)
    copied = copy_side_files(src, out)
    if opts.scheme == "static":
        from angelcli.quant.dequant import DequantReader
        from angelcli.quant.report import tensor_errors

        stats = tensor_errors(reader, DequantReader(out))
    (out / "recipe.yaml").write_text(recipe_text, encoding="utf-8")
    rep = build_report(src, out, stats, opts, src_bytes, has_tokenizer(src)) if opts.report else None
    files = [{"name": n, "size": (out / n).stat().st_size} for n in shard_names]
    manifest = {
        "format": MANIFEST_FORMAT, "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "fingerprint": fingerprint, "source": {**source_identity(src), "fingerprint": fingerprint["source"],
                                               "bytes": src_bytes},
        "scheme": opts.scheme, "targets": opts.targets, "quantization_config": qc,
        "recipe": {"from": recipe_src, "text": recipe_text}, "calibration": calibration,
        "tools": tool_versions(), "options": asdict(opts), "files": files, "copied": copied,
        "summary": rep["weights"] if rep else None, "report": rep, "tensors": stats,
    }
    # checksums first, manifest last: manifest.json stays the completion marker
    from angelcli.checksums import write_checksums

    import hashlib

    from angelcli.fsutil import atomic_write_text

    text = json.dumps(manifest, indent=2, ensure_ascii=False) + "\n"
    write_checksums(out, [n for n in _output_files(out) if n != MANIFEST_NAME],
                    extra={MANIFEST_NAME: hashlib.sha256(text.encode("utf-8")).hexdigest()})
    atomic_write_text(out / MANIFEST_NAME, text)
    finish_modes(out)
    shutil.rmtree(out / STATE_DIR, ignore_errors=True)
    result.update(status="done", output_bytes=sum(f["size"] for f in files), report=rep)
    return result


def _output_files(out: Path) -> list[str]:
    """Files of a finished output that checksums.sha256 covers (angel's state directory left out)."""
    from angelcli.checksums import listed_files

    return listed_files(out)


def _run_static(src: Path, raw: dict, out: Path, cfg, opts: QuantOptions):
    """Calibrate through llmcompressor; move its shards into `out`. Returns what quantize_one needs."""
    from angelcli.quant import calib_data, calibrate
    from angelcli.tokenizer import load_tokenizer

    if not has_tokenizer(src):
        raise UsageError(f"{src}: --scheme static renders calibration samples with the chat template and needs "
                         "a tokenizer; this checkpoint has none (use --scheme block or dynamic)")
    tok = load_tokenizer(src)
    samples = calib_data.load_samples(opts.calib, split="calib")
    ids = calib_data.tokenize_samples(tok, samples, opts.num_samples, opts.max_seq_len)
    if opts.offload not in ("none", "disk"):
        raise UsageError(f"--offload must be none or disk (got {opts.offload!r})")
    staging = out / STATE_DIR / "staging"
    offload_dir = out / STATE_DIR / "offload" if opts.offload == "disk" else None
    shutil.rmtree(staging, ignore_errors=True)
    if offload_dir is not None:
        shutil.rmtree(offload_dir, ignore_errors=True)
    try:
        res = calibrate.run_static(src, raw, staging, ids, opts.targets, tokenizer=tok, all_experts=opts.all_experts,
                                   pipeline=opts.pipeline, offload_dir=offload_dir)
    finally:
        if offload_dir is not None:
            shutil.rmtree(offload_dir, ignore_errors=True)
    shard_names = sorted(p.name for p in staging.glob("*.safetensors"))
    for name in shard_names:
        os.replace(staging / name, out / name)
    _check_static_names(out, shard_names, cfg, opts.targets)
    qc = dict(res.quantization_config)
    ignore = list(qc.get("ignore") or [])
    extra = schemes.fused_ignore(cfg, opts.targets) + schemes.NAME_ONLY_IGNORE  # see schemes.fused_ignore
    qc["ignore"] = ignore + [n for n in extra if n not in ignore]
    recipe_src = calibrate.recipe_for(opts.targets)[1]
    calibration = {"source": opts.calib, "samples": res.num_samples, "tokens": res.num_tokens,
                   "all_experts": opts.all_experts, "pipeline": opts.pipeline, "offload": opts.offload,
                   "input_scale_min": min(res.input_scales.values()), "input_scale_max": max(res.input_scales.values()),
                   "min_tokens_per_module": min(res.tokens_per_module.values())}
    return None, shard_names, qc, res.recipe, recipe_src, calibration


def _check_static_names(out: Path, shard_names: list[str], cfg, targets: str) -> None:
    """llmcompressor's save must hold exactly the checkpoint names (+ scales of the targeted weights)."""
    from angelcli.model import expected_checkpoint_names
    from angelcli.quant.st_io import read_layout

    want = set()
    for n in expected_checkpoint_names(cfg):
        want.add(n)
        if schemes.is_target(n, targets):
            want.update(schemes.scale_names("static", n).values())
    have = {raw.name for s in shard_names for raw in read_layout(out / s)[0]}
    if have != want:
        diff = sorted(have - want) or sorted(want - have)
        raise IntegrityError(f"{out}: calibrated checkpoint has unexpected tensor names (first: {diff[0]})")


# ------------------------------------------------------------------------------------------------------------
# several models
# ------------------------------------------------------------------------------------------------------------
def output_for(spec: str | None, out: Path | None, out_dir: Path | None, scheme: str) -> Path:
    from angelcli.resolve import resolve_model

    if out is not None:
        return Path(out)
    try:
        name = resolve_model(spec).name if spec not in (None, "") else "angel-tiny"
    except UsageError:
        from angelcli import aliases

        alias = aliases.find_alias(spec) if spec else None
        if alias is None:
            raise
        name = alias.repo_id.split("/")[-1]  # an alias not pulled yet (--dry-run plans from its bundled config)
    return Path(out_dir or Path.cwd()) / f"{name}-{schemes.output_suffix(scheme)}"


def quantize_many(specs: list[str], out: Path | None, out_dir: Path | None,
                  opts: QuantOptions) -> tuple[list[dict], int]:
    """Quantise each MODEL in turn; a failure is reported and the others still run.
    Returns (results, exit code of the first failure or 0)."""
    from angelcli.console import warn

    specs = specs or [None]
    if out is not None and out_dir is not None:
        raise UsageError("give --out (one MODEL) or --out-dir (any number), not both")
    if out is not None and len(specs) > 1:
        raise UsageError("--out takes one MODEL; use --out-dir for several")
    results, code, seen = [], 0, {}
    for spec in specs:
        try:
            dest = output_for(spec, out, out_dir, opts.scheme)
            key = Path(dest).expanduser().resolve()
            if key in seen:
                raise UsageError(f"{spec} and {seen[key]} would both be written to {key}")
            seen[key] = spec
            results.append(quantize_one(spec, dest, opts))
        except AngelError as err:
            if len(specs) == 1:
                raise
            warn(f"{spec}: {err}")
            results.append({"model": spec, "status": "error", "error": str(err), "exit_code": err.exit_code})
            code = code or err.exit_code
    return results, code
