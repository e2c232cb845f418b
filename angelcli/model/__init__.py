"""The BailingMoeV2 model (torch backend) and its checkpoint-name table."""

from angelcli.model.bailing import (
    CHECKPOINT_MAP,
    BailingMoeForCausalLM,
    ForwardOutput,
    expected_checkpoint_names,
    expected_shape,
    keeps_high_precision,
    map_checkpoint_name,
)
from angelcli.model.moe import RouterOutput, route

__all__ = [
    "CHECKPOINT_MAP",
    "BailingMoeForCausalLM",
    "ForwardOutput",
    "RouterOutput",
    "expected_checkpoint_names",
    "expected_shape",
    "keeps_high_precision",
    "map_checkpoint_name",
    "route",
]
