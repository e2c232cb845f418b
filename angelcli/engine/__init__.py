"""angel's inference engine: token ids in, token ids out (no tokenizer here)."""

from angelcli.engine.engine import Engine, GenerationStats, StepOutput
from angelcli.engine.kv_cache import KVCache
from angelcli.engine.paged_cache import BlockPool, PagedKVCache, StepInput
from angelcli.engine.sampling import SamplingParams

__all__ = ["BlockPool", "Engine", "GenerationStats", "KVCache", "PagedKVCache", "SamplingParams", "StepInput",
           "StepOutput"]
