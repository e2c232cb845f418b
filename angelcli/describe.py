"""What `angel show MODEL` reports: store facts, config summary, parameters, format, size, attached draft.

MODEL may be a directory, a store name or an alias. For an alias that is not pulled yet the bundled config
(angelcli/assets/configs) stands in, so the answer is there before any download; the report says which
config it used.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from angelcli import aliases, params, store
from angelcli.errors import UsageError
from angelcli.pull_progress import human_bytes

_SUMMARY_FIELDS = (
    "num_hidden_layers", "hidden_size", "num_attention_heads", "num_key_value_heads", "head_dim",
    "intermediate_size", "moe_intermediate_size", "num_experts", "num_experts_per_tok", "num_shared_experts",
    "n_group", "topk_group", "first_k_dense_replace", "routed_scaling_factor", "vocab_size", "draft_vocab_size",
    "max_position_embeddings", "rope_theta", "partial_rotary_factor", "rope_scaling", "num_nextn_predict_layers",
)


def weight_format(config: dict[str, Any]) -> str:
    """'bf16', 'fp8 block 128x128 (e4m3)', 'compressed-tensors', ... from torch_dtype / quantization_config."""
    q = config.get("quantization_config")
    if q:
        method = q.get("quant_method", "?")
        if method == "fp8" and q.get("weight_block_size"):
            b = q["weight_block_size"]
            return f"fp8 block {b[0]}x{b[1]} ({q.get('fmt', 'e4m3')}, activations {q.get('activation_scheme', '?')})"
        return str(method)
    return str(config.get("torch_dtype") or config.get("dtype") or "unknown")


def _read_config(path: Path) -> dict[str, Any] | None:
    try:
        return json.loads((path / "config.json").read_text("utf-8"))
    except FileNotFoundError:
        return None
    except (OSError, ValueError) as err:
        raise UsageError(f"{path / 'config.json'}: unreadable ({err})") from None


def describe(model: str) -> dict[str, Any]:
    """Everything `angel show` prints, as a JSON-able dict. UsageError when MODEL is unknown."""
    from angelcli.resolve import TINY_NAME, tiny_path

    manifest: store.Manifest | None = None
    tiny = not model or model == TINY_NAME
    path = tiny_path() if tiny else Path(model).expanduser()
    if tiny:
        pass
    elif path.is_dir():
        path = path.resolve()
        manifest = next((m for m in store.list_manifests() if m.dir.resolve() == path), None)
    else:
        manifest = store.find(model)
        path = manifest.dir if manifest is not None else None
    alias = None if tiny else aliases.find_alias(model) or (aliases.alias_for_repo(manifest.repo) if manifest else None)
    config = _read_config(path) if path is not None and path.is_dir() else None
    config_source = "local" if config is not None else None
    if config is None:
        config = aliases.bundled_config(manifest.repo if manifest else model)
        config_source = "bundled (spec values; the hub's config.json replaces it once pulled)" if config else None
    if manifest is None and config is None and path is not None and path.is_dir():
        raise UsageError(f"{path}: no config.json in this directory (not a model directory)")
    if manifest is None and config is None and not (path and path.is_dir()):
        raise UsageError(f"MODEL '{model}': not a directory, not in the store and not an alias (angel list shows "
                         f"the store)")
    info: dict[str, Any] = {
        "name": TINY_NAME if tiny else manifest.repo if manifest else (alias.repo_id if alias else str(path)),
        "alias": alias.name if alias else None,
        "description": alias.description if alias else None,
        "path": str(path) if path is not None else None,
        "pulled": manifest is not None,
        "config_source": config_source,
        "embedded": tiny,
    }
    if manifest is not None:
        info.update(
            complete=manifest.complete, commit=manifest.commit, revision=manifest.revision, source=manifest.source,
            endpoint=manifest.endpoint, pulled_at=manifest.pulled_at, files=len(manifest.files),
            remote_files=manifest.remote_files, size_on_disk=store.size_on_disk(manifest),
            missing_files=store.missing_files(manifest), draft=store.attached_draft(manifest), kind=manifest.kind,
            corrupt_files=list(manifest.corrupt), verified_at=manifest.verified_at,
        )
    if config:
        info["architecture"] = (config.get("architectures") or [None])[0]
        info["model_type"] = config.get("model_type")
        info["format"] = weight_format(config)
        info["config"] = {k: config[k] for k in _SUMMARY_FIELDS if k in config}
        if params.is_bailing_moe(config):
            info["params"] = params.count_params(config).to_dict()
    if path is not None and path.is_dir() and any(path.glob("*.safetensors")):
        try:
            info["safetensors_params"] = params.count_from_safetensors(path)
        except UsageError as err:  # a broken shard should not hide the rest; `angel verify` digs deeper
            info["safetensors_error"] = str(err)
    return info


def format_text(info: dict[str, Any]) -> str:
    """Human-readable `angel show` output (one 'key: value' per line, aligned)."""
    rows: list[tuple[str, str]] = [("name", info["name"])]
    if info.get("alias"):
        rows.append(("alias", f"{info['alias']} - {info['description']}"))
    if info["pulled"]:
        state = "complete" if info.get("complete") else f"incomplete ({len(info.get('missing_files') or [])} missing)"
        if info.get("corrupt_files"):
            bad = info["corrupt_files"]
            state = f"corrupt ({bad[0]}{f' and {len(bad) - 1} more' if len(bad) > 1 else ''}; angel pull repairs it)"
        rows += [("path", info["path"]), ("status", state),
                 ("commit", f"{info.get('commit')} ({info.get('revision')})"),
                 ("source", f"{info.get('source')} {info.get('endpoint') or ''}".strip()),
                 ("pulled", str(info.get("pulled_at"))),
                 ("files", f"{info.get('files')} of {info.get('remote_files')} in the repo"),
                 ("size on disk", human_bytes(info.get("size_on_disk") or 0)),
                 ("draft", info.get("draft") or "none attached")]
    elif info.get("embedded"):
        rows += [("path", info["path"]), ("status", "embedded (ships with angel; the default MODEL)")]
    else:
        rows.append(("status", f"not pulled (angel pull {info.get('alias') or info['name']})"
                     if info.get("alias") else "not in the store"))
    if info.get("config_source"):
        rows.append(("config", info["config_source"]))
    if info.get("architecture"):
        rows += [("architecture", f"{info['architecture']} ({info.get('model_type')})"), ("format", info["format"])]
        c = info["config"]
        if "num_experts" in c:
            rows.append(("layers", f"{c.get('num_hidden_layers')} ({c.get('first_k_dense_replace', 0)} dense), hidden "
                                   f"{c.get('hidden_size')}, heads {c.get('num_attention_heads')}/"
                                   f"{c.get('num_key_value_heads')} kv x {c.get('head_dim')}"))
            rows.append(("experts", f"{c['num_experts']} routed, top-{c.get('num_experts_per_tok')}, "
                                    f"{c.get('num_shared_experts', 0)} shared, groups {c.get('n_group')}/"
                                    f"top-{c.get('topk_group')}, expert ffn {c.get('moe_intermediate_size')}"))
        else:
            rows.append(("layers", f"{c.get('num_hidden_layers')}, hidden {c.get('hidden_size')}, heads "
                                   f"{c.get('num_attention_heads')}/{c.get('num_key_value_heads')} kv"))
        rope = ", ".join(f"{k} {c[k]}" for k in ("rope_theta", "rope_scaling") if k in c)
        rows.append(("context", f"{c.get('max_position_embeddings')}" + (f" ({rope})" if rope else "")))
    p = info.get("params")
    if p:
        rows += [
            ("parameters", f"{p['total']:,} ({params.human_count(p['total'])}): {p['bf16']:,} BF16 + "
                           f"{p['fp32']:,} FP32"),
            ("active/token", f"{p['active']:,} ({params.human_count(p['active'])}) with embeddings, "
                             f"{p['active_non_embedding']:,} without; {p['routed_ratio']:.2%} of routed experts per "
                             f"token"),
            ("weights", f"{human_bytes(p['bytes_bf16'])} as BF16, {human_bytes(p['bytes_fp8_block'])} as block-FP8"),
        ]
    st = info.get("safetensors_params")
    if st:
        rows.append(("in files", ", ".join(f"{n:,} {d}" for d, n in sorted(st.items()))))
    if info.get("safetensors_error"):
        rows.append(("in files", f"unreadable: {info['safetensors_error']}"))
    width = max(len(k) for k, _ in rows)
    return "\n".join(f"{k.rjust(width)}: {v}" for k, v in rows)
