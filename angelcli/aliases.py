"""Short model names and the configs bundled for them.

An alias maps a short, case-insensitive name to a hub repo id (the same id on Hugging Face and ModelScope,
unless `modelscope_id` says otherwise). Ollama-style tags work too: `antangelmed:fp8` is `antangelmed-fp8`,
`antangelmed:bf16` is `antangelmed`.

Each model alias whose config is known from the spec ships a config.json under
angelcli/assets/configs/<alias>.json, so `angel show`, `angel plan` and `angel verify --static` work before
a 200 GB download. Those files use the exact upstream field names with the values of
shared/spec/bailing-moe-v2.md §1 (FP8: the `quantization_config` of §6; the EAGLE3 draft: the SpecForge
config of eagle3.md §1.5, without its out-of-vocab bos/eos ids). For AntAngelMed they are *expected* values:
the real config.json on the hub wins as soon as the model is pulled.

The name "angel-tiny" (the embedded test model) is resolved by angelcli/resolve.py, not here.
"""

from __future__ import annotations

import re

import json
from dataclasses import dataclass
from importlib import resources
from typing import Any

DEFAULT_MODEL = "antangelmed"


@dataclass(frozen=True)
class Alias:
    name: str
    repo_id: str
    kind: str  # "model" or "eagle3-draft"
    description: str
    modelscope_id: str | None = None  # None: same id as on Hugging Face
    draft_for: tuple[str, ...] = ()  # repo ids this draft serves (attached automatically in `angel show`)
    has_config: bool = True

    @property
    def ms_repo_id(self) -> str:
        return self.modelscope_id or self.repo_id


ALIASES: dict[str, Alias] = {
    a.name: a
    for a in (
        Alias("antangelmed", "MedAIBase/AntAngelMed", "model", "AntAngelMed 103B MoE medical LLM, BF16 (~206 GB)"),
        Alias("antangelmed-fp8", "MedAIBase/AntAngelMed-FP8", "model",
              "AntAngelMed, block-wise FP8 (e4m3, 128x128 blocks; ~104 GB)"),
        Alias("antangelmed-int4", "MedAIBase/AntAngelMed-INT4", "model",
              "AntAngelMed, INT4 (compressed-tensors)", has_config=False),
        Alias("ling-flash-2.0", "inclusionAI/Ling-flash-2.0", "model",
              "Ling-flash-2.0, the BailingMoeV2 base of AntAngelMed, BF16"),
        Alias("ling-flash-eagle3", "AQ-MedAI/Ling-Flash-2.0-eagle3", "eagle3-draft",
              "EAGLE3 draft head for Ling-flash-2.0 / AntAngelMed",
              draft_for=("inclusionAI/Ling-flash-2.0", "MedAIBase/AntAngelMed", "MedAIBase/AntAngelMed-FP8")),
    )
}

# Ollama-style tags: `name:tag` -> alias name.
_TAGS = {"bf16": "", "fp8": "-fp8", "int4": "-int4"}


def find_alias(name: str) -> Alias | None:
    """Alias for `name` (case-insensitive; `antangelmed:fp8` style tags accepted), or None."""
    key = name.strip().lower()
    if key in ALIASES:
        return ALIASES[key]
    if ":" in key:
        base, tag = key.rsplit(":", 1)
        if tag in _TAGS and base + _TAGS[tag] in ALIASES:
            return ALIASES[base + _TAGS[tag]]
    return None


def alias_for_repo(repo_id: str) -> Alias | None:
    """The alias whose repo id is `repo_id` (case-insensitive), or None."""
    for alias in ALIASES.values():
        if alias.repo_id.lower() == repo_id.lower() or alias.ms_repo_id.lower() == repo_id.lower():
            return alias
    return None


def resolve_repo_id(name: str) -> str | None:
    """`name` as a repo id: the alias target, or `name` itself when it looks like `org/name`; else None."""
    alias = find_alias(name)
    if alias is not None:
        return alias.repo_id
    parts = name.strip().strip("/").split("/")
    if len(parts) == 2 and all(_HUB_NAME.fullmatch(p) and ".." not in p and "--" not in p for p in parts):
        return "/".join(parts)
    return None


# What the hub accepts as an org or repo name (alphanumerics, '-', '_', '.', not at either end, <= 96 chars).
_HUB_NAME = re.compile(r"[A-Za-z0-9](?:[A-Za-z0-9._-]{0,94}[A-Za-z0-9])?")


def bundled_config(name_or_repo: str) -> dict[str, Any] | None:
    """The bundled config.json (a fresh dict) for an alias or its repo id, or None when none ships."""
    alias = find_alias(name_or_repo) or alias_for_repo(name_or_repo)
    if alias is None or not alias.has_config:
        return None
    text = resources.files("angelcli").joinpath("assets", "configs", f"{alias.name}.json").read_text("utf-8")
    return json.loads(text)
