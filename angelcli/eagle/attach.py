"""Which draft a model uses: consistency checks, the attachment record, and wrapping a runtime's engine.

An attachment is `draft.json` in the model directory:
    {"format": "angel-draft-link/1", "draft": "<path relative to the model dir>", "abs": "<absolute path>",
     "store": "<store name or null>", "k": 3, "attached_at": "..."}
When the model directory is not writable (an installed package, a read-only mount) the same record goes to
$ANGEL_HOME/drafts/<model path as a file name>.json. For models in the local store `angel draft-attach` also
sets the manifest's `draft` field (angelcli.store, when that module is part of the build).
The embedded angel-tiny uses the draft shipped beside it (angelcli/assets/angel-tiny-eagle3) unless a
record says otherwise.

Resolution for a run (`generate`, `chat`): --no-draft -> none; --draft-path D -> D; otherwise the record
(or the store's attached draft, or the shipped tiny draft); --draft with nothing attached is a UsageError.
By default (neither --draft nor --no-draft) a run speculates only where that is measured to pay: the draft's
angel-draft.json may carry `measured.<cpu|cuda>` from `angel draft-eval --record`, and its speedup must be
above 1; without a record a CUDA run speculates (EAGLE3's regime: decode is memory-bound, so verifying k+1
tokens costs about one step) and a CPU run decodes plainly (a small model on a CPU is compute-bound, where
verification costs several steps; angel-tiny's draft measured 0.59x there, tau 3.08 as a tree).
`enable_draft` / `attach_draft` give an engine its speculator (Runtime.attach_draft, open_runtime(use_draft=...));
the engine itself never imports this package.
"""

from __future__ import annotations

import json
import os
import re
from datetime import datetime, timezone
from pathlib import Path

from angelcli.errors import CheckFailed, UsageError
from angelcli.fsutil import atomic_write_json

LINK_FILE = "draft.json"
LINK_FORMAT = "angel-draft-link/1"
TINY_DRAFT_DIR = Path(__file__).resolve().parent.parent / "assets" / "angel-tiny-eagle3"


def _store():
    try:
        from angelcli import store
    except ImportError:
        return None
    return store


def resolve_draft_dir(spec: str | os.PathLike, base: Path | None = None) -> Path:
    """A draft directory from a path (relative to `base` first) or a local store name / alias."""
    p = Path(spec).expanduser()
    for cand in ([base / p] if base is not None and not p.is_absolute() else []) + [p]:
        if (cand / "config.json").exists():
            return cand.resolve()
    st = _store()
    if st is not None and hasattr(st, "lookup"):
        found = st.lookup(str(spec))
        if found is not None:
            return Path(found)
    raise UsageError(f"draft '{spec}' not found: not a directory with config.json and not in the local store "
                     f"(try `angel pull {spec}`)")


def _home_link(model_dir: Path) -> Path:
    from angelcli.resolve import angel_home

    key = re.sub(r"[^A-Za-z0-9._-]+", "_", str(Path(model_dir).resolve()).strip("/"))[-180:]
    return angel_home() / "drafts" / f"{key}.json"


def read_link(model_dir: Path) -> dict | None:
    for p in (Path(model_dir) / LINK_FILE, _home_link(model_dir)):
        if p.exists():
            try:
                link = json.loads(p.read_text(encoding="utf-8"))
            except json.JSONDecodeError as err:
                raise UsageError(f"{p}: not valid JSON ({err}); run `angel draft-attach` again") from None
            if link.get("format") != LINK_FORMAT:
                raise UsageError(f"{p}: format {link.get('format')!r}, expected {LINK_FORMAT!r}")
            link["_file"] = str(p)
            return link
    return None


def attached_draft(model_dir: Path, model_spec: str | None = None) -> Path | None:
    """The draft recorded for a model directory, or None."""
    model_dir = Path(model_dir)
    link = read_link(model_dir)
    if link is not None:
        if link.get("draft") is None:
            return None  # explicitly detached
        for key in ("draft", "abs"):
            if link.get(key):
                cand = (model_dir / link[key]) if key == "draft" else Path(link[key])
                if (cand / "config.json").exists():
                    return cand.resolve()
        if link.get("store"):
            return resolve_draft_dir(link["store"])
        raise UsageError(f"{link['_file']}: the attached draft {link.get('abs') or link.get('draft')} is gone; "
                         "run `angel draft-attach` again or pass --no-draft")
    st = _store()
    if st is not None and model_spec and hasattr(st, "find") and hasattr(st, "attached_draft"):
        m = st.find(model_spec)
        repo = st.attached_draft(m) if m is not None else None
        if repo:
            found = st.lookup(repo)
            if found is not None:
                return Path(found)
    from angelcli.resolve import TINY_DIR

    if model_dir.resolve() == TINY_DIR.resolve() and (TINY_DRAFT_DIR / "config.json").exists():
        return TINY_DRAFT_DIR
    return None


def check_draft(tcfg, draft_dir: Path) -> dict:
    """Validate a draft against a target ModelConfig; CheckFailed naming the first mismatch."""
    from safetensors import safe_open

    from angelcli.eagle.export import config_from_files, portability_warnings, sglang_layer_ids, vllm_layer_ids
    from angelcli.eagle.model import check_vocab_map

    draft_dir = Path(draft_dir)
    cfg, layout, notes = config_from_files(draft_dir, tcfg.num_hidden_layers)
    if cfg.target_hidden_size != tcfg.hidden_size:
        raise CheckFailed(f"{draft_dir}: draft expects target hidden size {cfg.target_hidden_size}, "
                          f"the model has {tcfg.hidden_size}")
    if cfg.hidden_size != tcfg.hidden_size:
        raise CheckFailed(f"{draft_dir}: draft hidden size {cfg.hidden_size} differs from the model's "
                          f"{tcfg.hidden_size} (the draft reads the target's embedding)")
    if cfg.vocab_size != tcfg.vocab_size:
        raise CheckFailed(f"{draft_dir}: draft vocab_size {cfg.vocab_size} differs from the model's {tcfg.vocab_size}")
    if cfg.target_num_layers != tcfg.num_hidden_layers:
        raise CheckFailed(f"{draft_dir}: draft was made for a {cfg.target_num_layers}-layer target, "
                          f"the model has {tcfg.num_hidden_layers}")
    bad = [i for i in cfg.aux_layers if not 0 <= i < tcfg.num_hidden_layers]
    if bad:
        raise CheckFailed(f"{draft_dir}: layer id {bad[0]} is outside the model's layers 0..{tcfg.num_hidden_layers - 1}")
    tensors = {}
    shapes = {}
    files = sorted(draft_dir.glob("*.safetensors"))
    for f in files:
        with safe_open(str(f), framework="pt") as fh:
            for name in fh.keys():
                shapes[name] = tuple(fh.get_slice(name).get_shape())
                if name.split(".")[-1] in ("d2t", "t2d"):
                    tensors[name.split(".")[-1]] = fh.get_tensor(name)
    if not files:
        import torch

        for f in sorted(draft_dir.glob("pytorch_model*.bin")):
            for name, t in torch.load(f, map_location="cpu", weights_only=True).items():
                shapes[name] = tuple(t.shape)
                if name.split(".")[-1] in ("d2t", "t2d"):
                    tensors[name.split(".")[-1]] = t
    if not shapes:
        raise CheckFailed(f"{draft_dir}: no weights (*.safetensors or pytorch_model.bin)")
    for name, shape in shapes.items():
        if name.endswith("embed_tokens.weight") and shape != (tcfg.vocab_size, tcfg.hidden_size):
            raise CheckFailed(f"{draft_dir}: embed_tokens.weight is {shape}, the model's embedding is "
                              f"{(tcfg.vocab_size, tcfg.hidden_size)}")
    fc = next((s for n, s in shapes.items() if n.endswith("fc.weight")), None)
    if fc is not None and fc != (cfg.hidden_size, 3 * tcfg.hidden_size):
        raise CheckFailed(f"{draft_dir}: fc.weight is {fc}; three {tcfg.hidden_size}-wide target states need "
                          f"({cfg.hidden_size}, {3 * tcfg.hidden_size})")
    head = next((s for n, s in shapes.items() if n.endswith("lm_head.weight")), None)
    if head is not None and head != (cfg.draft_vocab_size, cfg.hidden_size):
        raise CheckFailed(f"{draft_dir}: lm_head.weight is {head}, config says ({cfg.draft_vocab_size}, "
                          f"{cfg.hidden_size})")
    if "d2t" in tensors:
        t2d = tensors.get("t2d")
        if t2d is None:
            import torch

            t2d = torch.zeros(cfg.vocab_size, dtype=torch.bool)
            t2d[torch.arange(cfg.draft_vocab_size) + tensors["d2t"].long()] = True
        if tensors["d2t"].numel() != cfg.draft_vocab_size or t2d.numel() != tcfg.vocab_size:
            raise CheckFailed(f"{draft_dir}: d2t has {tensors['d2t'].numel()} entries (draft_vocab_size "
                              f"{cfg.draft_vocab_size}), t2d {t2d.numel()} (model vocab {tcfg.vocab_size})")
        try:
            check_vocab_map(tensors["d2t"].long(), t2d.bool())
        except UsageError as err:
            raise CheckFailed(f"{draft_dir}: {err}") from None
    elif cfg.draft_vocab_size != cfg.vocab_size:
        raise CheckFailed(f"{draft_dir}: no d2t although draft_vocab_size {cfg.draft_vocab_size} < vocab "
                          f"{cfg.vocab_size}")
    return {"draft": str(draft_dir), "layout": layout, "hidden_size": cfg.hidden_size,
            "vocab_size": cfg.vocab_size, "draft_vocab_size": cfg.draft_vocab_size,
            "layer_ids": {"foundation": list(cfg.aux_layers), "sglang": sglang_layer_ids(cfg),
                          "vllm": vllm_layer_ids(cfg)},
            "notes": notes + portability_warnings(cfg), "ok": True}


def attach(model_spec: str | None, draft_spec: str | None, *, k: int = 3, detach: bool = False) -> dict:
    """Check and record `draft_spec` as `model_spec`'s draft (or record that it has none)."""
    from angelcli.config import ModelConfig
    from angelcli.resolve import resolve_model

    model_dir = resolve_model(model_spec)
    record = {"format": LINK_FORMAT, "draft": None, "abs": None, "store": None, "k": k,
              "attached_at": datetime.now(timezone.utc).replace(microsecond=0).isoformat()}
    report = {"model": str(model_dir), "draft": None, "detached": detach}
    if not detach:
        if draft_spec is None:
            raise UsageError("DRAFT is required (or --detach)")
        draft_dir = resolve_draft_dir(draft_spec)
        report = {"model": str(model_dir), **check_draft(ModelConfig.from_file(model_dir), draft_dir)}
        record.update(draft=os.path.relpath(draft_dir, model_dir.resolve()), abs=str(draft_dir),
                      store=None if Path(draft_spec).exists() else str(draft_spec))
    dest = Path(model_dir) / LINK_FILE
    try:
        atomic_write_json(dest, record)
    except OSError:
        dest = _home_link(model_dir)
        atomic_write_json(dest, record)
    report["record"] = str(dest)
    st = _store()
    if st is not None and model_spec and hasattr(st, "find") and st.find(model_spec) is not None:
        m = st.find(model_spec)
        m.draft = None if detach else (record["store"] or record["abs"])
        st.save_manifest(m)
        report["manifest"] = str(st.manifest_path(m.repo))
    return report


def target_fingerprint(model) -> str:
    """A cheap identity of the target's weights: sha256 over 64 strided embedding rows in fp32.
    A draft trained for other weights of the same shape still decodes exactly but accepts little."""
    import hashlib

    import torch

    w = model.model.word_embeddings.weight
    rows = w[:: max(1, w.shape[0] // 64)].detach().to("cpu", torch.float32).contiguous()
    return hashlib.sha256(rows.numpy().tobytes()).hexdigest()[:16]


def device_kind(device) -> str:
    """'cuda' or 'cpu': the key of a draft's speed record for a device."""
    import torch

    return "cuda" if torch.device(device).type == "cuda" else "cpu"


def speculation_pays(meta: dict, device) -> tuple[bool, str]:
    """(whether a default run on `device` should speculate with this draft, why). See the module docstring."""
    kind = device_kind(device)
    rec = (meta.get("measured") or {}).get(kind)
    if rec and rec.get("speedup") is not None:
        s = float(rec["speedup"])
        return s > 1.0, f"the draft measured {s:.2f}x against plain decoding on {kind} (angel draft-eval)"
    if kind == "cuda":
        return True, "no speed record for cuda; speculative decoding is the GPU default"
    return False, "no measured speedup on cpu for this draft (angel draft-eval --record measures one)"


def record_measurement(draft_dir: Path, report: dict) -> None:
    """Store a draft-eval report's speed under measured.<device kind> in the draft's angel-draft.json."""
    from angelcli.eagle.export import ANGEL_META

    p = Path(draft_dir) / ANGEL_META
    meta = json.loads(p.read_text())
    keep = ("k", "topk", "draft_tokens", "prompts", "max_new_tokens", "tau", "plain_tokens_per_s",
            "speculative_tokens_per_s", "speedup", "dtype", "threads")
    meta.setdefault("measured", {})[device_kind(report["device"])] = {k: report.get(k) for k in keep}
    atomic_write_json(p, meta)


def enable_draft(engine, model_dir: Path, *, use_draft: bool | None, draft: str | None = None, k: int = 3,
                 model_spec: str | None = None, topk: int | None = None, draft_tokens: int | None = None) -> Path | None:
    """Give `engine` a speculator for the run's draft (engine.speculator); returns the draft directory or None.

    use_draft None = the recorded draft if any, True = a draft is required, False = none. An explicitly
    requested draft (--draft, --draft-path) that fails its checks is an error; an attached one used by
    default only warns and decodes plainly, so a stale attachment never breaks `generate` or `chat`.
    topk / draft_tokens: the draft tree's shape (None = DEFAULT_TOPK and its default node count)."""
    from angelcli.console import log, warn

    if draft is not None and use_draft is False:
        raise UsageError("--draft-path and --no-draft contradict each other")
    engine.speculator = None
    if use_draft is False:
        return None
    explicit = bool(use_draft) or draft is not None
    draft_dir = resolve_draft_dir(draft) if draft is not None else attached_draft(Path(model_dir), model_spec)
    if draft_dir is None:
        if explicit:
            raise UsageError(f"--draft: {model_dir} has no draft attached (`angel draft-attach MODEL DRAFT` "
                             "records one)")
        return None
    if getattr(engine, "tp", None) is not None:
        if explicit:
            raise UsageError("speculative decoding does not run with --tp > 1 yet; use --no-draft")
        warn("the attached draft is not used with --tp > 1 (speculative decoding runs in one process)")
        return None
    import torch

    from angelcli.eagle.export import load_draft, read_meta
    from angelcli.eagle.speculative import DEFAULT_TOPK, SpeculativeEngine

    try:
        check_draft(engine.cfg, draft_dir)
    except CheckFailed as err:
        if explicit:
            raise
        warn(f"attached draft not used: {err}")
        return None
    meta = read_meta(draft_dir) or {}
    if not explicit:
        pays, why = speculation_pays(meta, engine.device)
        if not pays:
            log(f"plain decoding: {why} (--draft speculates anyway)")
            return None
    made_for = (meta.get("target") or {}).get("fingerprint")
    if made_for and made_for != target_fingerprint(engine.model):
        warn(f"{draft_dir} was trained for other weights of this architecture; output stays exact, "
             "acceptance will be low")
    dtype = engine.dtype if engine.dtype.is_floating_point else torch.bfloat16
    d = load_draft(draft_dir, dtype=dtype, device=engine.device, target_num_layers=engine.cfg.num_hidden_layers)
    d.set_embedding(engine.model.model.word_embeddings)
    engine.speculator = SpeculativeEngine(engine, d, k=k, topk=DEFAULT_TOPK if topk is None else topk,
                                          draft_tokens=draft_tokens)
    return draft_dir


def attach_draft(engine, model_dir, required: bool = False, *, draft: str | None = None, k: int = 3,
                 model_spec: str | None = None) -> str | None:
    """Speculate with the EAGLE3 draft recorded for model_dir (or `draft`) from now on: engine.generate()
    then runs chain drafting + verification with identical greedy output, and last_stats gains
    mean_acceptance_length. Returns the draft's directory, or None when there is none (an error when
    required). Batches of several requests (generate_batch) keep decoding without the draft.
    (Lives here, not on Engine: the engine never imports draft code; the runtime attaches.)"""
    found = enable_draft(engine, model_dir, use_draft=True if required else None, draft=draft, k=k,
                         model_spec=model_spec)
    return None if found is None else str(found)
