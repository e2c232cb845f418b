"""Calibration and evaluation samples: where they come from and how they become token ids.

`--calib` (and `--eval-data`) accept:
  medical       the built-in medical corpus (angelcli.data, `load_split('calib')` / `load_split('eval')`)
  PATH          a .jsonl file (one sample per line: {"messages": [...]}, {"prompt": ..., "response": ...} or
                {"text": ...}) or a .txt file (one sample per paragraph), read by angelcli.data.read_user_data
  NAME          a dataset on the Hugging Face hub (`org/name`, needs network): a `messages` column, else
                `prompt`/`response`, else `text`
Every sample is rendered with the model's own chat template (a plain text becomes a user turn followed by the
generation prompt, which is what the model sees when serving), encoded without extra special tokens (the
template already has them) and cut to `max_seq_len` tokens.
"""

from __future__ import annotations

from pathlib import Path

from angelcli.errors import UsageError

BUILTIN = "medical"


def _normalise(item, where: str) -> dict:
    """One raw sample -> {'messages': [...]} or {'text': str}."""
    if isinstance(item, str):
        return {"text": item}
    if isinstance(item, dict):
        if isinstance(item.get("messages"), list):
            return {"messages": item["messages"]}
        prompt = item.get("prompt") or item.get("question") or item.get("instruction")
        answer = item.get("response") or item.get("answer") or item.get("completion") or item.get("output")
        if isinstance(prompt, str) and isinstance(answer, str):
            return {"messages": [{"role": "user", "content": prompt}, {"role": "assistant", "content": answer}]}
        if isinstance(item.get("text"), str):
            return {"text": item["text"]}
        if isinstance(prompt, str):
            return {"text": prompt}
    what = sorted(item) if isinstance(item, dict) else type(item).__name__
    raise UsageError(f"{where}: sample is neither text nor messages (keys: {what})")


def _read_file(path: Path) -> list[dict]:
    """A user's .jsonl / .txt through the project's data reader (same formats and errors as every verb)."""
    from angelcli.data import read_user_data

    return read_user_data(path)


def _read_builtin(split: str) -> list[dict]:
    try:
        from angelcli import data
    except ImportError:
        raise UsageError("the built-in medical corpus (angelcli.data) is not part of this build; "
                         "pass --calib PATH (.jsonl or .txt)") from None
    items = data.load_split(split)
    return [_normalise(x, f"medical corpus ({split})") for x in items]


def _read_hub(name: str, split: str) -> list[dict]:
    try:
        import datasets

        ds = datasets.load_dataset(name, split="train" if split == "calib" else "test")
    except Exception as err:  # noqa: BLE001 - any hub / network failure is a usage problem here
        raise UsageError(f"--calib {name}: cannot load this dataset ({type(err).__name__}: {err}); "
                         "offline? pass --calib medical or a local PATH") from None
    return [_normalise(row, f"dataset {name}") for row in ds]


def load_samples(source: str, split: str = "calib") -> list[dict]:
    """Samples of a --calib / --eval-data source (see module docstring), in source order."""
    if source == BUILTIN:
        samples = _read_builtin(split)
    elif Path(source).expanduser().exists():
        path = Path(source).expanduser()
        if path.is_dir():
            raise UsageError(f"{path}: is a directory; --calib takes a .jsonl or .txt file")
        samples = _read_file(path)
    elif "/" in source and not source.startswith((".", "/", "~")):
        samples = _read_hub(source, split)
    else:
        raise UsageError(f"--calib {source}: no such file, and not 'medical' or an org/name dataset")
    if not samples:
        raise UsageError(f"--calib {source}: no samples found")
    return samples


def render(tok, sample: dict) -> str:
    """A sample as the model sees it: the chat template applied."""
    from angelcli.tokenizer import render_chat

    if "messages" in sample:
        last_is_user = sample["messages"][-1].get("role") == "user"
        return render_chat(tok, sample["messages"], add_generation_prompt=last_is_user)
    return render_chat(tok, [{"role": "user", "content": sample["text"]}], add_generation_prompt=True)


def tokenize_samples(tok, samples: list[dict], num_samples: int, max_seq_len: int) -> list[list[int]]:
    """First `num_samples` non-empty samples -> token id lists of at most `max_seq_len` ids."""
    from angelcli.tokenizer import encode

    if num_samples < 1:
        raise UsageError("--num-samples must be >= 1")
    if max_seq_len < 2:
        raise UsageError("--max-seq-len must be >= 2")
    out = []
    for s in samples:
        ids = encode(tok, render(tok, s))[:max_seq_len]
        if len(ids) >= 2:
            out.append(ids)
        if len(out) == num_samples:
            break
    if not out:
        raise UsageError("no calibration sample produced at least 2 tokens")
    return out
