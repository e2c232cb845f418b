"""angel-tiny's tokenizer: a byte-level BPE with Ling's special tokens and the Ling chat template.

The real AntAngelMed tokenizer is a 157,184-token GPT-2-style byte-level BPE (spec bailing-moe-v2.md §5).
angel-tiny keeps its shape at a size a CPU can train against in minutes:

  * byte-level BPE trained with the `tokenizers` library (seconds on ~1 MB of text), so every string,
    Chinese included, encodes and decodes back exactly;
  * the specials of spec §5 as single tokens. They take the first ids (0..12, `SPECIAL_TOKENS` order) so
    that bos/eos/pad ids are the same in the shipped tokenizer and in the small test fixtures whatever
    the trained vocabulary size turns out to be;
  * `tokenizer_config.json` in the layout transformers reads for a `PreTrainedTokenizerFast`: bos
    `<|startoftext|>`, eos `<|role_end|>` (the chat tokenizer's eos), pad `<|endoftext|>`, no automatic
    bos/eos, and `chat_template` = the contents of angelcli/assets/ling_chat_template.jinja.

Pre-tokenization splits letters, single digits, punctuation runs and whitespace before the byte-level
mapping: single digits keep doses and lab values ("500 mg", "7.5 mmol/L") from turning into arbitrary
number tokens, which a model this small would otherwise have to memorise one by one.
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from pathlib import Path

from angelcli.fsutil import atomic_write_json, atomic_write_text

TEMPLATE_PATH = Path(__file__).resolve().parent.parent / "assets" / "ling_chat_template.jinja"
TINY_TOKENIZER_DIR = Path(__file__).resolve().parent.parent / "assets" / "angel-tiny-tokenizer"

BOS = "<|startoftext|>"
EOS_TEXT = "<|endoftext|>"  # pad, and the eos of base (non-chat) models
ROLE_END = "<|role_end|>"  # eos of the chat tokenizer: every turn ends with it
ROLE_OPEN, ROLE_CLOSE = "<role>", "</role>"

# Special tokens: skipped by decode(skip_special_tokens=True). Order fixes their ids (0..6).
SPECIAL_TOKENS = (BOS, EOS_TEXT, ROLE_END, ROLE_OPEN, ROLE_CLOSE, "[CLS]", "[gMASK]")
# Added but not "special": single tokens that stay visible when special tokens are skipped, because a
# reasoning trace or a tool call is content the caller wants to see or parse. Ids 7..12.
TEXT_TOKENS = ("<think>", "</think>", "<tool_call>", "</tool_call>", "<tool_response>", "</tool_response>")
ALL_ADDED = SPECIAL_TOKENS + TEXT_TOKENS

MODEL_MAX_LENGTH = 4096

# Letters (with an optional leading space or symbol), one digit at a time, punctuation runs with their
# trailing newlines, then whitespace. The same classes as GPT-4-era BPE pre-tokenizers; CJK characters are
# letters (\p{L}), so a Chinese clause is one pre-token and BPE learns its frequent words inside it.
SPLIT_PATTERN = (
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}"
    r"| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"
)

# Built-in text for `build_small_tokenizer`: a few kB of mixed English/Chinese medical prose and chat
# markup, enough for a few hundred merges.
_SMALL_TEXT = [
    "The patient reports a mild headache, a fever of 38.2 C and a dry cough for three days.",
    "Drink plenty of fluids, rest, and take paracetamol 500 mg every 6 hours if needed.",
    "See a doctor if the fever lasts more than three days or breathing becomes difficult.",
    "High blood pressure often causes no symptoms, so measure it regularly at home or in a clinic.",
    "Type 2 diabetes is managed with diet, exercise and medicines such as metformin.",
    "Chest pain that spreads to the arm or jaw needs emergency care: call an ambulance.",
    "Wash your hands with soap and water for at least 20 seconds before eating.",
    "患者自述头痛、发热三天，体温三十八度，伴有干咳。",
    "多喝水，注意休息，必要时按说明服用对乙酰氨基酚。",
    "如果发热超过三天或出现呼吸困难，请及时就医。",
    "高血压通常没有明显症状，建议定期在家或到医院测量血压。",
    "二型糖尿病需要通过饮食、运动和药物（如二甲双胍）进行管理。",
    "胸痛并向手臂或下颌放射时需要紧急处理，请立即拨打急救电话。",
    "You are AntAngelMed, a helpful medical assistant.",
    "SYSTEM", "HUMAN", "ASSISTANT", "OBSERVATION", "detailed thinking off",
    "What are common symptoms of the flu? Fever, chills, muscle aches, cough and tiredness.",
    "流感的常见症状有哪些？发热、寒战、肌肉酸痛、咳嗽和乏力。",
    "Antibiotics do not work against viruses such as the common cold.",
    "抗生素对普通感冒等病毒感染无效。",
]


def _require_tokenizers():
    try:
        import tokenizers  # noqa: F401
    except ImportError as exc:  # pragma: no cover - tokenizers is a hard dependency
        from angelcli.errors import UsageError

        raise UsageError("the 'tokenizers' package is required to build a tokenizer (pip install tokenizers)") from exc


def _new_tokenizer():
    from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers

    tok = Tokenizer(models.BPE(byte_fallback=False))
    tok.pre_tokenizer = pre_tokenizers.Sequence([
        pre_tokenizers.Split(Regex(SPLIT_PATTERN), behavior="isolated", invert=False),
        pre_tokenizers.ByteLevel(add_prefix_space=False, trim_offsets=False, use_regex=False),
    ])
    tok.decoder = decoders.ByteLevel()
    return tok


def train_tokenizer(texts: Iterable[str], vocab_size: int):
    """Train a `tokenizers.Tokenizer` on `texts`; ids 0..12 are `ALL_ADDED`, the rest byte-level BPE.

    `vocab_size` counts everything (specials, 256 byte symbols, merges). A corpus too small for that many
    merges gives a smaller vocabulary; `get_vocab_size()` is authoritative.
    """
    _require_tokenizers()
    from tokenizers import AddedToken, pre_tokenizers, trainers

    if vocab_size < len(ALL_ADDED) + 256 + 1:
        from angelcli.errors import UsageError

        raise UsageError(f"vocab_size {vocab_size} is too small: need > {len(ALL_ADDED) + 256} (specials + 256 bytes)")
    tok = _new_tokenizer()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        min_frequency=2,
        show_progress=False,
        special_tokens=list(ALL_ADDED),  # reserved first, in order: ids 0..12
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
    )
    tok.train_from_iterator(texts, trainer=trainer)
    # Register them as added tokens so they are matched before pre-tokenization: "<role>SYSTEM</role>"
    # becomes [<role>, SYSTEM, </role>] instead of byte pieces of "<", "role", ">".
    tok.add_special_tokens([AddedToken(t, special=True, normalized=False) for t in SPECIAL_TOKENS])
    tok.add_tokens([AddedToken(t, special=False, normalized=False) for t in TEXT_TOKENS])
    for i, t in enumerate(ALL_ADDED):
        assert tok.token_to_id(t) == i, (t, tok.token_to_id(t))
    return tok


def tokenizer_config(chat_template: str) -> dict:
    """tokenizer_config.json for transformers' PreTrainedTokenizerFast (spec §5 settings)."""
    decoder = {}
    for i, t in enumerate(ALL_ADDED):
        decoder[str(i)] = {
            "content": t, "lstrip": False, "normalized": False, "rstrip": False,
            "single_word": False, "special": t in SPECIAL_TOKENS,
        }
    return {
        "tokenizer_class": "PreTrainedTokenizerFast",
        "added_tokens_decoder": decoder,
        "bos_token": BOS,
        "eos_token": ROLE_END,
        "pad_token": EOS_TEXT,
        "unk_token": None,
        # Listed so transformers counts them in all_special_tokens (v5 reads this key as extra_special_tokens).
        "additional_special_tokens": [t for t in SPECIAL_TOKENS if t not in (BOS, ROLE_END, EOS_TEXT)],
        "add_bos_token": False,
        "add_eos_token": False,
        "add_prefix_space": False,
        # Decoding must give back exactly the encoded text (" ." stays " .", Chinese spacing kept).
        "clean_up_tokenization_spaces": False,
        "model_max_length": MODEL_MAX_LENGTH,
        "padding_side": "left",
        "chat_template": chat_template,
    }


def special_tokens_map() -> dict:
    return {
        "bos_token": BOS,
        "eos_token": ROLE_END,
        "pad_token": EOS_TEXT,
        "additional_special_tokens": [t for t in SPECIAL_TOKENS if t not in (BOS, ROLE_END, EOS_TEXT)],
    }


def save_tokenizer(tok, out_dir: str | Path) -> Path:
    """Write tokenizer.json, tokenizer_config.json and special_tokens_map.json into `out_dir`."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    template = TEMPLATE_PATH.read_text(encoding="utf-8")
    # Compact JSON keeps the shipped file small; sort_keys is off because merges are ordered.
    atomic_write_text(out / "tokenizer.json", tok.to_str(pretty=False) + "\n")
    atomic_write_json(out / "tokenizer_config.json", tokenizer_config(template))
    atomic_write_json(out / "special_tokens_map.json", special_tokens_map())
    return out


def build_tokenizer(texts: Iterable[str], out_dir: str | Path, vocab_size: int = 8192) -> Path:
    """Train the byte-level BPE on `texts` (vocab_size counts specials) and save it in `out_dir`."""
    tok = train_tokenizer(texts, vocab_size)
    return save_tokenizer(tok, out_dir)


def build_small_tokenizer(out_dir: str | Path, vocab_size: int = 512) -> Path:
    """A small tokenizer with the same specials and template, trained on built-in text (< 1 s); for tests."""
    return build_tokenizer(_SMALL_TEXT * 4, out_dir, vocab_size=vocab_size)


# What the chat template wraps around every conversation: trained on once per sample so that these words
# become single tokens, as they are in every rendered prompt.
_ROLE_WORDS = {"system": "SYSTEM", "user": "HUMAN", "assistant": "ASSISTANT", "tool": "OBSERVATION"}


def corpus_texts(samples: Iterable[dict]) -> list[str]:
    """Training text for the tokenizer: every message's content, plus the template's role words."""
    out = []
    for s in samples:
        out += ["SYSTEM", "detailed thinking off"]
        for m in s.get("messages", []):
            out += [_ROLE_WORDS.get(m["role"], m["role"]), m["content"]]
        if "text" in s:
            out.append(s["text"])
    return out


# The vocabulary is frozen at the corpus it was first trained on (builder version 1): angel-tiny's embeddings
# are tied to these ids, and the later, larger corpus is the same text asked more ways, which it covers.
TOKENIZER_CORPUS_VERSION = 1


def build_tiny_tokenizer(out_dir: str | Path = TINY_TOKENIZER_DIR, vocab_size: int = 8192) -> Path:
    """Rebuild the shipped angel-tiny tokenizer from the train split of corpus builder version 1, regenerated
    in memory (deterministic; needs the corpus source packages of the test extras)."""
    from angelcli.tiny.corpus import generate

    train = generate(seed=0, scale=1.0, version=TOKENIZER_CORPUS_VERSION)["train"]
    return build_tokenizer(corpus_texts(train), out_dir, vocab_size=vocab_size)


def describe(out_dir: str | Path) -> dict:
    """Vocab size and special ids of a saved tokenizer (reads tokenizer.json only)."""
    data = json.loads((Path(out_dir) / "tokenizer.json").read_text(encoding="utf-8"))
    added = {a["content"]: a["id"] for a in data["added_tokens"]}
    return {"vocab_size": len(data["model"]["vocab"]) + len([a for a in added if a not in data["model"]["vocab"]]),
            "added_tokens": added}
