"""The text layer: the checkpoint's own tokenizer and chat template, and streaming detokenisation.

The engine never sees text; this module turns messages into ids (through the checkpoint's
tokenizer_config.json chat_template, rendered by transformers) and ids back into text.
"""

from __future__ import annotations

from pathlib import Path

from angelcli.errors import UsageError

DEFAULT_SYSTEM = "You are AntAngelMed, a helpful medical assistant."
_BUNDLED_TEMPLATE = Path(__file__).resolve().parent / "assets" / "ling_chat_template.jinja"


def load_tokenizer(model_dir: str | Path):
    """transformers tokenizer from the model directory, offline. UsageError when it has none."""
    model_dir = Path(model_dir)
    if not (model_dir / "tokenizer.json").exists() and not (model_dir / "tokenizer_config.json").exists():
        raise UsageError(f"{model_dir}: no tokenizer files (tokenizer.json); pass token ids with --input-ids")
    import os

    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    from transformers import AutoTokenizer
    from transformers.utils import logging as hf_logging

    hf_logging.set_verbosity_error()
    try:
        tok = AutoTokenizer.from_pretrained(str(model_dir), local_files_only=True)
    except Exception as err:  # noqa: BLE001 - the tokenizers library raises bare Exception on a corrupt file
        first = (str(err).splitlines() or [type(err).__name__])[0]
        raise UsageError(f"{model_dir}: cannot load the tokenizer ({first}); tokenizer.json or "
                         "tokenizer_config.json is damaged") from None
    if not getattr(tok, "chat_template", None):
        # A checkpoint without a template is almost always a Ling-family export that lost it.
        tok.chat_template = _BUNDLED_TEMPLATE.read_text(encoding="utf-8")
    return tok


def render_chat(tok, messages: list[dict], add_generation_prompt: bool = True) -> str:
    """Messages (OpenAI style) -> the prompt text exactly as the model's chat template renders it."""
    for i, m in enumerate(messages):
        if not isinstance(m, dict) or "role" not in m:
            raise UsageError(f"messages[{i}]: each message needs a 'role' and 'content'")
    try:
        return tok.apply_chat_template(messages, tokenize=False, add_generation_prompt=add_generation_prompt)
    except Exception as err:  # noqa: BLE001 - jinja2 TemplateError and whatever a template raises itself
        where = f"{getattr(tok, 'name_or_path', '') or 'model'}/tokenizer_config.json"
        first = (str(err).splitlines() or [""])[0]
        raise UsageError(f"{where}: the chat template failed ({type(err).__name__}: {first})") from None


def encode(tok, text: str) -> list[int]:
    """Text -> ids; no BOS/EOS added (Ling's tokenizer adds none, the template carries the structure)."""
    return list(tok.encode(text, add_special_tokens=False))


def build_messages(prompt: str, system: str | None = DEFAULT_SYSTEM) -> list[dict]:
    msgs = [{"role": "system", "content": system}] if system else []
    return msgs + [{"role": "user", "content": prompt}]


class StreamDecoder:
    """Incremental detokenisation that never emits half a UTF-8 character.

    Byte-level BPE splits one Chinese character (3 bytes) over several tokens; decoding a prefix then yields
    U+FFFD. We re-decode a short window and only emit once the text no longer ends in U+FFFD.
    """

    def __init__(self, tok, skip_special_tokens: bool = False):
        self.tok, self.skip = tok, skip_special_tokens
        self.ids: list[int] = []
        self.prefix = 0  # start of the window that is re-decoded
        self.read = 0  # ids before this index have been emitted

    def push(self, token_id: int) -> str:
        self.ids.append(int(token_id))
        old = self.tok.decode(self.ids[self.prefix : self.read], skip_special_tokens=self.skip)
        new = self.tok.decode(self.ids[self.prefix :], skip_special_tokens=self.skip)
        if len(new) > len(old) and not new.endswith("\ufffd"):
            self.prefix, self.read = self.read, len(self.ids)
            return new[len(old) :]
        return ""

    def flush(self) -> str:
        """Whatever is still held back (e.g. a truncated character at the very end)."""
        old = self.tok.decode(self.ids[self.prefix : self.read], skip_special_tokens=self.skip)
        new = self.tok.decode(self.ids[self.prefix :], skip_special_tokens=self.skip)
        self.prefix = self.read = len(self.ids)
        return new[len(old) :]
