"""angel's inference engine: token ids in, token ids out (no tokenizer here)."""

from angelcli.engine.engine import Engine, GenerationStats, StepOutput
from angelcli.engine.kv_cache import KVCache
from angelcli.engine.sampling import SamplingParams

__all__ = ["Engine", "GenerationStats", "KVCache", "SamplingParams", "StepOutput"]
