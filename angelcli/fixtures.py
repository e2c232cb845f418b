"""Tiny random checkpoints in exactly the real AntAngelMed layout, for tests and benchmarks.

`write_tiny_checkpoint` writes what a real BailingMoeV2 repository holds, at toy size: config.json with the
upstream field names, bf16 weights (fp32 `expert_bias`) in two shards plus model.safetensors.index.json,
generation_config.json with two eos ids, and a byte-level BPE tokenizer with Ling's special tokens and chat
template. Every code path that loads AntAngelMed therefore loads these the same way.
"""

from __future__ import annotations

import json
from pathlib import Path

from angelcli.fsutil import atomic_write_json

ASSETS = Path(__file__).resolve().parent / "assets"
SPECIAL_TOKENS = ["<|startoftext|>", "<|endoftext|>", "<|role_end|>", "<role>", "</role>", "[CLS]", "[gMASK]",
                  "<think>", "</think>", "<tool_call>", "</tool_call>", "<tool_response>", "</tool_response>"]
_FIXTURE_TEXT = (
    "Patients with type 2 diabetes often report thirst, frequent urination and fatigue. "
    "A doctor should be seen when chest pain spreads to the arm or jaw. Take ibuprofen with food. "
    "High blood pressure rarely causes symptoms, so check it regularly. Fever above 39 degrees in an infant "
    "needs urgent care. 糖尿病患者常见口渴、多尿和乏力。胸痛向手臂放射时请立即就医。高血压通常没有症状。"
    "The quick brown fox jumps over the lazy dog 0123456789 ,.;:!?()[]{}'\"-+/*=%<>@#&_"
)


def write_fixture_tokenizer(out_dir: Path, vocab_size: int = 384) -> int:
    """Train a tiny byte-level BPE with Ling's special tokens; returns the vocabulary size."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=SPECIAL_TOKENS, show_progress=False,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    tok.train_from_iterator([_FIXTURE_TEXT] * 4, trainer=trainer)
    out_dir.mkdir(parents=True, exist_ok=True)
    tok.save(str(out_dir / "tokenizer.json"))
    template = (ASSETS / "ling_chat_template.jinja").read_text(encoding="utf-8")
    atomic_write_json(out_dir / "tokenizer_config.json", {
        "tokenizer_class": "PreTrainedTokenizerFast", "bos_token": "<|startoftext|>", "eos_token": "<|role_end|>",
        "pad_token": "<|endoftext|>", "add_bos_token": False, "add_eos_token": False,
        "model_max_length": 32768, "chat_template": template,
        "additional_special_tokens": SPECIAL_TOKENS[3:],
    })
    atomic_write_json(out_dir / "special_tokens_map.json", {
        "bos_token": "<|startoftext|>", "eos_token": "<|role_end|>", "pad_token": "<|endoftext|>"})
    return tok.get_vocab_size()


def tiny_config(**overrides) -> dict:
    """config.json contents of a tiny BailingMoeV2 (upstream field names); override any field."""
    cfg = {
        "architectures": ["BailingMoeV2ForCausalLM"], "model_type": "bailing_moe",
        "vocab_size": 384, "hidden_size": 64, "intermediate_size": 128, "num_hidden_layers": 3,
        "num_attention_heads": 4, "num_key_value_heads": 2, "head_dim": 16, "hidden_act": "silu",
        "use_qkv_bias": False, "use_bias": False, "rms_norm_eps": 1e-6, "tie_word_embeddings": False,
        "max_position_embeddings": 4096, "rope_theta": 600000.0, "rope_scaling": None,
        "partial_rotary_factor": 0.5, "use_qk_norm": True, "use_rmsnorm": True,
        "num_experts": 8, "num_shared_experts": 1, "num_experts_per_tok": 2, "n_group": 4, "topk_group": 2,
        "moe_intermediate_size": 32, "moe_shared_expert_intermediate_size": 32, "first_k_dense_replace": 1,
        "routed_scaling_factor": 2.5, "norm_topk_prob": True, "score_function": "sigmoid", "router_dtype": "fp32",
        "moe_router_enable_expert_bias": True, "num_nextn_predict_layers": 0,
        "torch_dtype": "bfloat16", "use_cache": True,
    }
    cfg.update(overrides)
    return cfg


def random_state_dict(cfg_dict: dict, seed: int = 0, dtype=None) -> dict:
    """Random weights for every tensor of the config, checkpoint names, bf16 (expert_bias fp32)."""
    import torch

    from angelcli.config import ModelConfig
    from angelcli.model.bailing import expected_checkpoint_names, expected_shape, is_fp32_tensor

    cfg = ModelConfig.from_dict(cfg_dict)
    dtype = dtype or torch.bfloat16
    g = torch.Generator().manual_seed(seed)
    sd = {}
    for name in expected_checkpoint_names(cfg):
        shape = expected_shape(cfg, name)
        if name.endswith("expert_bias"):
            t = torch.randn(shape, generator=g) * 0.05  # small: the bias nudges selection, it must not dominate
        elif "norm" in name:
            t = 1.0 + 0.1 * torch.randn(shape, generator=g)
        elif name.endswith("mlp.gate.weight"):
            t = torch.randn(shape, generator=g) * (1.0 / shape[1] ** 0.5)  # router logits of order 1
        else:
            t = torch.randn(shape, generator=g) * (1.0 / shape[-1] ** 0.5)
        sd[name] = t.to(torch.float32 if is_fp32_tensor(name) else dtype).contiguous()
    return sd


def write_checkpoint(out_dir: str | Path, cfg_dict: dict, state_dict: dict, shards: int = 2,
                     eos_ids: list[int] | None = None) -> Path:
    """Write config.json, sharded safetensors + index (or one file when shards == 1), generation_config."""
    from safetensors.torch import save_file

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    names = list(state_dict)
    per = -(-len(names) // shards)
    groups = [names[i * per : (i + 1) * per] for i in range(shards)]
    weight_map, total = {}, 0
    for k, group in enumerate(groups):
        fname = "model.safetensors" if shards == 1 else f"model-{k + 1:05d}-of-{shards:05d}.safetensors"
        tensors = {n: state_dict[n] for n in group}
        tmp = out / f".{fname}.partial"
        save_file(tensors, str(tmp), metadata={"format": "pt"})
        tmp.replace(out / fname)
        for n, t in tensors.items():
            weight_map[n] = fname
            total += t.numel() * t.element_size()
    if shards > 1:
        atomic_write_json(out / "model.safetensors.index.json", {"metadata": {"total_size": total}, "weight_map": weight_map})
    atomic_write_json(out / "config.json", cfg_dict)
    gen = {"do_sample": False}
    if eos_ids:
        gen.update(bos_token_id=cfg_dict.get("bos_token_id"), eos_token_id=eos_ids, pad_token_id=cfg_dict.get("pad_token_id"))
    atomic_write_json(out / "generation_config.json", gen)
    return out


def write_tiny_checkpoint(out_dir: str | Path, *, seed: int = 0, shards: int = 2, tokenizer: bool = True,
                          dtype=None, **overrides) -> Path:
    """A complete tiny random checkpoint directory; keyword overrides set config fields
    (e.g. num_experts=16, n_group=4, topk_group=2, num_experts_per_tok=4, first_k_dense_replace=2,
    partial_rotary_factor=0.25, hidden_size=128, num_hidden_layers=4)."""
    out = Path(out_dir)
    eos_ids = None
    cfg = tiny_config(**overrides)
    if tokenizer:
        vocab = write_fixture_tokenizer(out, vocab_size=max(cfg["vocab_size"], 300))
        tok = json.loads((out / "tokenizer.json").read_text())
        ids = {a["content"]: a["id"] for a in tok["added_tokens"]}
        cfg.update(vocab_size=max(vocab, cfg["vocab_size"]), bos_token_id=ids["<|startoftext|>"],
                   pad_token_id=ids["<|endoftext|>"], eos_token_id=ids["<|role_end|>"])
        eos_ids = [ids["<|endoftext|>"], ids["<|role_end|>"]]
    return write_checkpoint(out, cfg, random_state_dict(cfg, seed, dtype), shards=shards, eos_ids=eos_ids)


# ------------------------------------------------------------------------------------------ FP8 fixtures

# fmt -> (quant_method, weight layout, static input scales). "fp8-block" is the native DeepSeek-style
# format of the published FP8 checkpoints; the "ct-*" ones are what llm-compressor writes for the
# FP8_DYNAMIC (channel), FP8 (tensor, static) and FP8_BLOCK presets (shared/spec/fp8.md §1.7, §2.1).
FP8_FORMATS = {
    "fp8-block": ("fp8", "block", False),
    "ct-channel": ("compressed-tensors", "channel", False),
    "ct-tensor-static": ("compressed-tensors", "tensor", True),
    "ct-block": ("compressed-tensors", "block", False),
}


def _ct_args(strategy: str, dynamic: bool, group_size=None, block=None, observer=None) -> dict:
    return {"num_bits": 8, "type": "float", "symmetric": True, "group_size": group_size, "strategy": strategy,
            "block_structure": block, "dynamic": dynamic, "actorder": None, "scale_dtype": None,
            "zp_dtype": None, "observer": observer, "observer_kwargs": {}}


def fp8_quantization_config(fmt: str, ignore: list[str]) -> dict:
    """config.json's quantization_config for an FP8 fixture format (see FP8_FORMATS)."""
    method, layout, static = FP8_FORMATS[fmt]
    if method == "fp8":
        return {"activation_scheme": "dynamic", "fmt": "e4m3", "quant_method": "fp8", "weight_block_size": [128, 128]}
    if layout == "block":
        weights, acts = _ct_args("block", False, block=[128, 128]), _ct_args("group", True, group_size=128)
    elif layout == "channel":
        weights, acts = _ct_args("channel", False), _ct_args("token", True)
    else:
        weights, acts = _ct_args("tensor", False), _ct_args("tensor", False, observer="static_minmax")
    return {"quant_method": "compressed-tensors", "format": "float-quantized", "quantization_status": "compressed",
            "version": "0.19.0", "config_groups": {"group_0": {"targets": ["Linear"], "weights": weights,
                                                               "input_activations": acts, "output_activations": None,
                                                               "format": "float-quantized"}},
            "ignore": ignore, "kv_cache_scheme": None, "sparsity_config": {}, "transform_config": {},
            "global_compression_ratio": None}


def quantize_state_dict(cfg_dict: dict, sd: dict, fmt: str) -> tuple[dict, dict]:
    """Quantise every weight the model allows (not router, embeddings, head, norms) -> (state dict, qconfig)."""
    import torch

    from angelcli.model.bailing import keeps_high_precision
    from angelcli.model.fp8 import quantize_weight

    method, layout, static = FP8_FORMATS[fmt]
    suffix = "weight_scale_inv" if method == "fp8" else "weight_scale"
    scale_dtype = torch.float32 if method == "fp8" else torch.bfloat16
    out, ignore = {}, []
    for n, (name, t) in enumerate(sd.items()):
        if not name.endswith(".weight") or t.dim() != 2 or keeps_high_precision(name):
            out[name] = t
            if name.endswith(".weight") and t.dim() == 2:
                ignore.append(name[: -len(".weight")])
            continue
        q, s = quantize_weight(t, layout, scale_dtype)
        base = name[: -len("weight")]
        out[name], out[base + suffix] = q, s
        if static:  # stand-in calibration: a plausible activation amax / 448, different per tensor
            out[base + "input_scale"] = torch.tensor([0.01 * (1 + n % 5)], dtype=scale_dtype)
    ignore = [n for n in ignore if not n.startswith("model.word_embeddings")]
    return out, fp8_quantization_config(fmt, ignore)


def write_fp8_checkpoint(out_dir: str | Path, fmt: str = "fp8-block", *, seed: int = 0, shards: int = 2,
                         tokenizer: bool = False, **overrides) -> Path:
    """A tiny random checkpoint quantised to FP8 in format `fmt` (FP8_FORMATS). Block formats need
    moe_intermediate_size % 128 == 0 for the Triton kernels, so pass e.g. moe_intermediate_size=128."""
    import torch

    if fmt not in FP8_FORMATS:
        raise ValueError(f"unknown FP8 fixture format {fmt!r} (one of {', '.join(FP8_FORMATS)})")
    out = Path(out_dir)
    cfg = tiny_config(**overrides)
    eos_ids = None
    if tokenizer:
        vocab = write_fixture_tokenizer(out, vocab_size=max(cfg["vocab_size"], 300))
        tok = json.loads((out / "tokenizer.json").read_text())
        ids = {a["content"]: a["id"] for a in tok["added_tokens"]}
        cfg.update(vocab_size=max(vocab, cfg["vocab_size"]), bos_token_id=ids["<|startoftext|>"],
                   pad_token_id=ids["<|endoftext|>"], eos_token_id=ids["<|role_end|>"])
        eos_ids = [ids["<|endoftext|>"], ids["<|role_end|>"]]
    sd, qc = quantize_state_dict(cfg, random_state_dict(cfg, seed, torch.bfloat16), fmt)
    cfg["quantization_config"] = qc
    return write_checkpoint(out, cfg, sd, shards=shards, eos_ids=eos_ids)
