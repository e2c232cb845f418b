"""Draft checkpoints on disk: the SGLang layout, the speculators / vLLM layout, and loading either back.

A draft directory written by angel:

    DRAFT/config.json            LlamaForCausalLMEagle3 (SGLang; vLLM also maps the name), draft_vocab_size,
                                 eagle_config ids in SGLang's convention (output of layer i)
    DRAFT/model.safetensors      fc.weight, midlayer.*, norm.weight, lm_head.weight, d2t, t2d  (no embedding)
    DRAFT/vllm/config.json       speculators format: Eagle3Speculator, norm_before_residual: false (explicit:
                                 vLLM defaults it to true), top-level ids in vLLM's convention (capture before)
    DRAFT/vllm/model.safetensors same tensors with layers.0.* instead of midlayer.*
    DRAFT/angel-draft.json       angel's record: target, ids in the foundation convention, training summary

Ids (spec eagle3.md §1.1): foundation id i (hidden[i], output of layer i) == SGLang id i == vLLM id i + 1.
Tensor names and config fields follow spec §1.4-1.5. The SGLang loader skips unknown keys silently, so the
export writes exactly the expected set and tests compare against it.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch

from angelcli.console import warn
from angelcli.eagle.model import DraftConfig, Eagle3Draft, check_vocab_map
from angelcli.errors import IntegrityError, UsageError
from angelcli.fsutil import atomic_path, atomic_write_json

ANGEL_META = "angel-draft.json"
META_FORMAT = "angel-eagle3-draft/1"
VLLM_SUBDIR = "vllm"
_LAYER_KEYS = ["input_layernorm.weight", "hidden_norm.weight", "self_attn.q_proj.weight", "self_attn.k_proj.weight",
               "self_attn.v_proj.weight", "self_attn.o_proj.weight", "post_attention_layernorm.weight",
               "mlp.gate_proj.weight", "mlp.up_proj.weight", "mlp.down_proj.weight"]
DTYPES = {"bfloat16": torch.bfloat16, "float16": torch.float16, "float32": torch.float32}


def sglang_keys() -> list[str]:
    """Exactly the tensors SpecForge's SGLang exporter writes (spec §1.4), no embedding."""
    return ["fc.weight", *(f"midlayer.{k}" for k in _LAYER_KEYS), "norm.weight", "lm_head.weight", "d2t", "t2d"]


def speculators_keys() -> list[str]:
    return ["fc.weight", *(f"layers.0.{k}" for k in _LAYER_KEYS), "norm.weight", "lm_head.weight", "d2t", "t2d"]


def sglang_layer_ids(cfg: DraftConfig) -> list[int]:
    return list(cfg.aux_layers)  # SGLang's eagle_config ids are "output of layer i", like the foundation's


def vllm_layer_ids(cfg: DraftConfig) -> list[int]:
    return [i + 1 for i in cfg.aux_layers]  # vLLM / speculators: id k = output of layer k-1


def portability_warnings(cfg: DraftConfig) -> list[str]:
    """Why an id list would not load as the same layers in an engine.

    SGLang (its Bailing model, like its others) adds 1 to each configured id and captures the residual
    stream at the *start* of that layer, so foundation id N-1 (the last layer's output) maps to a layer
    that does not exist and is never captured: the draft fails at its first step. vLLM 0.34 captures after
    each layer (id k = output of layer k-1, k up to N), so every foundation id is expressible there."""
    out = []
    n = cfg.target_num_layers
    if max(cfg.aux_layers) >= n - 1:
        out.append(f"SGLang: id {max(cfg.aux_layers)} is the output of the last layer ({n} layers); SGLang captures "
                   f"at the start of layer id+1 = {max(cfg.aux_layers) + 1}, which does not exist, so the draft "
                   f"cannot run there (train with ids <= {n - 2}, e.g. the defaults)")
    if cfg.aux_layers[0] != 1:
        out.append(f"SGLang: ids {sglang_layer_ids(cfg)} do not start with 1; SGLang releases disagree on "
                   "whether such ids are 'output of' or 'capture before' (PR #25454)")
    if len(set(cfg.aux_layers)) != 3:
        out.append("vLLM: repeated layer ids give fewer than 3 captured states")
    return out


def verifier_name(model_dir, fallback: str) -> str:
    """The target's hub id for the speculators config's verifier.name_or_path when angel knows it (a store
    entry's repo, an HF cache snapshot's repo), else `fallback`. vLLM resolves that field when the draft
    folder is served as the main model, and rejects a local name it cannot find."""
    import re

    p = Path(model_dir).resolve()
    try:
        from angelcli import store

        for m in store.list_manifests():
            if Path(m.dir).resolve() == p and getattr(m, "repo", None):
                return m.repo
    except Exception:  # noqa: BLE001 - the store is optional; fall through to the path forms
        pass
    hit = re.search(r"/models--([^/]+?)--([^/]+)/snapshots/", str(p) + "/")
    return f"{hit.group(1)}/{hit.group(2)}" if hit else fallback


def _common_llama(cfg: DraftConfig, dtype: str) -> dict:
    return {
        "hidden_size": cfg.hidden_size, "intermediate_size": cfg.intermediate_size,
        "num_attention_heads": cfg.num_attention_heads, "num_key_value_heads": cfg.num_key_value_heads,
        "head_dim": cfg.head_dim, "num_hidden_layers": 1, "hidden_act": "silu", "rms_norm_eps": cfg.rms_norm_eps,
        "max_position_embeddings": cfg.max_position_embeddings, "rope_theta": cfg.rope_theta, "rope_scaling": None,
        "vocab_size": cfg.vocab_size, "tie_word_embeddings": False, "torch_dtype": dtype,
        "attention_bias": False, "mlp_bias": False,
    }


def sglang_config(cfg: DraftConfig, dtype: str, special: dict | None = None) -> dict:
    out = {"architectures": ["LlamaForCausalLMEagle3"], "model_type": "llama", **_common_llama(cfg, dtype),
           "draft_vocab_size": cfg.draft_vocab_size, "target_hidden_size": cfg.target_hidden_size,
           "eagle_config": {"use_aux_hidden_state": True, "eagle_aux_hidden_state_layer_ids": sglang_layer_ids(cfg)}}
    out.update({k: v for k, v in (special or {}).items() if v is not None})
    return out


def speculators_config(cfg: DraftConfig, dtype: str, verifier: str | None, k: int = 3) -> dict:
    return {
        "architectures": ["Eagle3Speculator"], "speculators_model_type": "eagle3",
        "transformer_layer_config": {"architectures": ["LlamaForCausalLM"], "model_type": "llama",
                                     **_common_llama(cfg, dtype)},
        "draft_vocab_size": cfg.draft_vocab_size, "target_hidden_size": cfg.target_hidden_size,
        "norm_before_residual": False,
        "eagle_aux_hidden_state_layer_ids": vllm_layer_ids(cfg),
        "speculators_config": {
            "algorithm": "eagle3",
            "proposal_methods": [{"proposal_type": "greedy", "speculative_tokens": k}],
            "default_proposal_method": "greedy",
            "verifier": {"name_or_path": verifier, "architectures": ["BailingMoeV2ForCausalLM"]},
        },
        "torch_dtype": dtype,
        "speculators_version": "0.3.0",
    }


def draft_tensors(draft: Eagle3Draft, dtype: torch.dtype, layout: str) -> dict[str, torch.Tensor]:
    sd = draft.state_dict()
    out = {}
    for name, t in sd.items():
        if name not in ("d2t", "t2d"):
            t = t.to(dtype)
        if layout == "speculators":
            name = name.replace("midlayer.", "layers.0.", 1)
        out[name] = t.detach().cpu().contiguous()
    want = sglang_keys() if layout == "sglang" else speculators_keys()
    if sorted(out) != sorted(want):  # a module rename would silently break the engines' loaders
        raise RuntimeError(f"draft tensors {sorted(out)} differ from the {layout} layout {sorted(want)}")
    return out


def _save(tensors: dict, dest: Path) -> None:
    from safetensors.torch import save_file

    with atomic_path(dest) as tmp:
        save_file(tensors, str(tmp), metadata={"format": "pt"})


def export_draft(draft: Eagle3Draft, out_dir: str | Path, *, dtype: str = "bfloat16", layouts=("sglang", "vllm"),
                 special: dict | None = None, verifier: str | None = None, meta: dict | None = None, k: int = 3) -> dict:
    """Write the draft in the requested layouts; returns {layout: directory}."""
    if dtype not in DTYPES:
        raise UsageError(f"--export-dtype must be one of {', '.join(DTYPES)}")
    out = Path(out_dir)
    cfg = draft.config
    for w in portability_warnings(cfg):
        warn(w)
    written = {}
    if "sglang" in layouts:
        _save(draft_tensors(draft, DTYPES[dtype], "sglang"), out / "model.safetensors")
        atomic_write_json(out / "config.json", sglang_config(cfg, dtype, special))
        written["sglang"] = str(out)
    if "vllm" in layouts:
        sub = out / VLLM_SUBDIR
        _save(draft_tensors(draft, DTYPES[dtype], "speculators"), sub / "model.safetensors")
        atomic_write_json(sub / "config.json", speculators_config(cfg, dtype, verifier, k))
        written["vllm"] = str(sub)
    atomic_write_json(out / ANGEL_META, {"format": META_FORMAT, "draft_config": cfg.to_dict(),
                                         "layer_ids": {"foundation": list(cfg.aux_layers),
                                                       "sglang": sglang_layer_ids(cfg), "vllm": vllm_layer_ids(cfg)},
                                         **(meta or {})})
    return written


# ---- loading -------------------------------------------------------------------------------------------

def read_meta(draft_dir: Path) -> dict | None:
    p = Path(draft_dir) / ANGEL_META
    if not p.exists():
        return None
    try:
        meta = json.loads(p.read_text(encoding="utf-8"))
    except json.JSONDecodeError as err:
        raise UsageError(f"{p}: not valid JSON ({err})") from None
    if meta.get("format") != META_FORMAT:
        raise UsageError(f"{p}: format {meta.get('format')!r}, expected {META_FORMAT!r}")
    return meta


def _read_config(draft_dir: Path) -> dict:
    p = draft_dir / "config.json"
    if not p.exists():
        raise UsageError(f"{draft_dir}: no config.json (is this an EAGLE3 draft directory?)")
    try:
        return json.loads(p.read_text(encoding="utf-8"))
    except json.JSONDecodeError as err:
        raise UsageError(f"{p}: not valid JSON ({err})") from None


def layout_of(conf: dict) -> str:
    if conf.get("speculators_model_type") == "eagle3" or "Eagle3Speculator" in conf.get("architectures", []):
        return "speculators"
    if any("Eagle3" in a for a in conf.get("architectures", [])):
        return "sglang"
    raise UsageError(f"config.json architectures {conf.get('architectures')} is not an EAGLE3 draft "
                     "(expected LlamaForCausalLMEagle3 or Eagle3Speculator)")


def config_from_files(draft_dir: Path, target_num_layers: int | None = None) -> tuple[DraftConfig, str, list[str]]:
    """DraftConfig of a draft directory (angel's or a published one) -> (cfg, layout, notes).

    Layer ids: angel-draft.json is authoritative (foundation convention). Otherwise SGLang-layout ids are
    read the way current SGLang does (first id 1 -> output-of-layer, else capture-before), speculators ids
    as capture-before; no ids at all means the target's defaults.
    """
    from angelcli.eagle.model import default_aux_layers

    draft_dir = Path(draft_dir)
    conf = _read_config(draft_dir)
    layout = layout_of(conf)
    meta = read_meta(draft_dir)
    notes: list[str] = []
    llama = conf.get("transformer_layer_config", conf) if layout == "speculators" else conf
    if meta is not None:
        cfg = DraftConfig.from_dict(meta["draft_config"])
        return cfg, layout, notes
    try:
        H = int(llama["hidden_size"])
        heads = int(llama["num_attention_heads"])
        V = int(llama["vocab_size"])
        Vd = int(conf.get("draft_vocab_size") or llama.get("draft_vocab_size") or 0)
    except (KeyError, TypeError, ValueError) as err:
        raise UsageError(f"{draft_dir / 'config.json'}: missing or bad field {err}") from None
    if not Vd:
        raise UsageError(f"{draft_dir / 'config.json'}: no draft_vocab_size (a draft that borrows the target's "
                         "lm_head is not supported)")
    n = target_num_layers
    if layout == "speculators":
        ids = conf.get("eagle_aux_hidden_state_layer_ids")
        ids = [int(i) - 1 for i in ids] if ids else None
    else:
        ec = conf.get("eagle_config") or {}
        ids = ec.get("eagle_aux_hidden_state_layer_ids") or conf.get("eagle_aux_hidden_state_layer_ids")
        if ids:
            ids = [int(i) for i in ids]
            if ids[0] != 1:
                notes.append(f"SGLang ids {ids} do not start with 1: read as capture-before (current SGLang)")
                ids = [i - 1 for i in ids]
    if ids is None:
        if n is None:
            raise UsageError(f"{draft_dir}: the config names no layer ids; the target's layer count is needed")
        ids = list(default_aux_layers(n))
        notes.append(f"no layer ids in the config: using the defaults {ids} (output of layer i)")
    cfg = DraftConfig(
        hidden_size=H, intermediate_size=int(llama["intermediate_size"]), num_attention_heads=heads,
        num_key_value_heads=int(llama.get("num_key_value_heads", heads)),
        head_dim=int(llama.get("head_dim") or H // heads), vocab_size=V, draft_vocab_size=Vd,
        target_hidden_size=int(conf.get("target_hidden_size") or llama.get("target_hidden_size") or H),
        target_num_layers=n if n is not None else max(ids) + 1, aux_layers=tuple(ids),
        rms_norm_eps=float(llama.get("rms_norm_eps", 1e-6)), rope_theta=float(llama.get("rope_theta", 10000.0)),
        max_position_embeddings=int(llama.get("max_position_embeddings", 4096)))
    return cfg, layout, notes


def load_draft(draft_dir: str | Path, *, dtype: torch.dtype | None = None, device="cpu",
               target_num_layers: int | None = None) -> Eagle3Draft:
    """Read a draft directory (SGLang or speculators layout) into an Eagle3Draft (embedding not set)."""
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    draft_dir = Path(draft_dir)
    cfg, layout, notes = config_from_files(draft_dir, target_num_layers)
    files = sorted(draft_dir.glob("*.safetensors")) or sorted(draft_dir.glob("pytorch_model*.bin"))
    if not files:
        raise UsageError(f"{draft_dir}: no *.safetensors (or pytorch_model.bin) weights")
    sd: dict[str, torch.Tensor] = {}
    for f in files:
        try:
            if f.suffix == ".bin":  # older EAGLE heads; weights_only refuses pickled code
                sd.update(torch.load(f, map_location="cpu", weights_only=True))
            else:
                sd.update(load_file(str(f)))
        except (SafetensorError, OSError, RuntimeError) as err:
            raise IntegrityError(f"{f}: unreadable weights ({err})") from None
    renamed = {}
    for name, t in sd.items():
        if name.startswith("model."):
            name = name[len("model."):]
        name = name.replace("layers.0.", "midlayer.", 1)
        renamed[name] = t
    renamed.pop("embed_tokens.weight", None)  # angel always uses the target's own embedding
    if "d2t" not in renamed:
        if cfg.draft_vocab_size != cfg.vocab_size:
            raise UsageError(f"{draft_dir}: no d2t although draft_vocab_size {cfg.draft_vocab_size} < vocab "
                             f"{cfg.vocab_size}; draft ids cannot be mapped to target ids")
        renamed["d2t"] = torch.zeros(cfg.draft_vocab_size, dtype=torch.int64)
    if "t2d" not in renamed:
        t2d = torch.zeros(cfg.vocab_size, dtype=torch.bool)
        t2d[torch.arange(cfg.draft_vocab_size) + renamed["d2t"].long()] = True
        renamed["t2d"] = t2d
    renamed["d2t"] = renamed["d2t"].long()
    renamed["t2d"] = renamed["t2d"].bool()
    check_vocab_map(renamed["d2t"], renamed["t2d"])
    with torch.device("meta"):
        draft = Eagle3Draft(cfg)
    want = set(draft.state_dict())
    missing, unexpected = sorted(want - set(renamed)), sorted(set(renamed) - want)
    if missing or unexpected:
        raise UsageError(f"{draft_dir}: tensors do not match an EAGLE3 draft "
                         f"(missing {missing[:3]}, unexpected {unexpected[:3]})")
    for name, t in draft.state_dict().items():
        if tuple(renamed[name].shape) != tuple(t.shape):
            raise UsageError(f"{draft_dir}: tensor {name} has shape {tuple(renamed[name].shape)}, "
                             f"config implies {tuple(t.shape)}")
    wdtype = dtype or renamed["fc.weight"].dtype
    draft = draft.to_empty(device=device).to(wdtype)  # d2t / t2d keep their integer and bool dtypes
    draft.load_state_dict({n: (t if n in ("d2t", "t2d") else t.to(wdtype)) for n, t in renamed.items()})
    draft.load_notes = notes  # type: ignore[attr-defined]
    draft.layout = layout  # type: ignore[attr-defined]
    return draft.eval()
