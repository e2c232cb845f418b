"""Token ids for the dynamic check: the built-in medical prompts, a user file, or random ids.

  --prompts medical   angel's built-in medical prompt set (angelcli.data.load_prompts(), the angel-tiny
                      corpus's held-out prompts), each rendered with the checkpoint's chat template and
                      AntAngelMed's system prompt; a short bilingual set here stands in when the corpus
                      package is not part of the build
  --prompts PATH      .txt (one prompt per line), .json (a list) or .jsonl (one item per line); an item is a
                      string, {"prompt": ...}, {"text": ...}, {"messages": [...]} or {"input_ids": [...]}
  --prompts random    `num_random` sequences of `max_tokens` uniform random ids (seeded): needs no tokenizer
                      and exercises every expert evenly, which makes dead experts stand out

Every sequence is cut to `max_tokens`. Routing is measured over prompt tokens only (no generation): the
statistics need many routed tokens, not long continuations, and a streamed forward reads the whole
checkpoint once per pass.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from angelcli.errors import UsageError

# Used only when angelcli.data (the angel-tiny corpus) is not in this build.
FALLBACK_MEDICAL = [
    "What are the early symptoms of type 2 diabetes, and which tests confirm the diagnosis?",
    "A 58-year-old man has crushing chest pain spreading to his left arm. What should be done first?",
    "Explain how ACE inhibitors lower blood pressure and name two common side effects.",
    "My child has a fever of 39.5 °C and a rash that does not fade under a glass. Is this an emergency?",
    "What is the difference between a viral and a bacterial sore throat, and when are antibiotics needed?",
    "How should warfarin be monitored, and which foods interact with it?",
    "糖尿病患者日常饮食需要注意什么？",
    "高血压患者可以服用布洛芬吗？有哪些风险？",
    "请解释一下慢性阻塞性肺疾病的主要病因和治疗方法。",
    "孕妇出现持续头痛和视力模糊应该怎么办？",
]


def _item_to_request(item: Any, where: str) -> dict:
    """One prompt-file item -> {"text": str} | {"messages": list} | {"ids": list[int]}."""
    if isinstance(item, str):
        return {"text": item}
    if isinstance(item, dict):
        for key in ("prompt", "text", "question"):
            if isinstance(item.get(key), str):
                return {"text": item[key]}
        if isinstance(item.get("messages"), list):
            return {"messages": item["messages"]}
        ids = item.get("input_ids")
        if isinstance(ids, list) and ids and all(isinstance(i, int) and i >= 0 for i in ids):
            return {"ids": ids}
    raise UsageError(f"{where}: expected a string or an object with prompt/text/messages/input_ids")


def read_prompt_file(path: Path) -> list[dict]:
    if not path.is_file():
        raise UsageError(f"--prompts {path}: no such file (or use 'medical' or 'random')")
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as err:
        raise UsageError(f"--prompts {path}: unreadable ({err})") from None
    if path.suffix == ".json":
        try:
            items = json.loads(text)
        except json.JSONDecodeError as err:
            raise UsageError(f"--prompts {path}: not valid JSON ({err})") from None
        if not isinstance(items, list):
            raise UsageError(f"--prompts {path}: expected a JSON list of prompts")
        reqs = [_item_to_request(x, f"{path}[{i}]") for i, x in enumerate(items)]
    elif path.suffix == ".jsonl":
        reqs = []
        for n, line in enumerate(text.splitlines(), 1):
            if line.strip():
                try:
                    reqs.append(_item_to_request(json.loads(line), f"{path}:{n}"))
                except json.JSONDecodeError as err:
                    raise UsageError(f"{path}:{n}: not valid JSON ({err})") from None
    else:
        reqs = [{"text": line.strip()} for line in text.splitlines() if line.strip()]
    if not reqs:
        raise UsageError(f"--prompts {path}: no prompts in the file")
    return reqs


def medical_requests() -> tuple[list[dict], str]:
    """The built-in medical prompts as requests, and where they came from."""
    try:
        from angelcli.data import load_prompts
    except ImportError:
        return [{"text": t} for t in FALLBACK_MEDICAL], "built-in fallback set"
    return [_item_to_request(x, "angelcli.data.load_prompts()") for x in load_prompts()], "angelcli.data"


def build_prompts(spec: str, model_dir: Path, vocab_size: int, *, max_tokens: int, num_random: int = 8,
                  seed: int = 0) -> tuple[list[list[int]], dict]:
    """--prompts value -> (token id lists, description for the report)."""
    if max_tokens < 1:
        raise UsageError("--max-tokens must be at least 1")
    if spec == "random":
        import torch

        if num_random < 1:
            raise UsageError("--num-random must be at least 1")
        g = torch.Generator().manual_seed(seed)
        ids = torch.randint(0, vocab_size, (num_random, max_tokens), generator=g).tolist()
        return ids, {"source": "random", "count": num_random, "seed": seed}
    if spec == "medical":
        reqs, origin = medical_requests()
        desc = {"source": "medical", "origin": origin}
    else:
        reqs = read_prompt_file(Path(spec).expanduser())
        desc = {"source": str(spec)}
    needs_tok = any("ids" not in r for r in reqs)
    tok = None
    if needs_tok:
        from angelcli.tokenizer import DEFAULT_SYSTEM, build_messages, encode, load_tokenizer, render_chat

        if not ((model_dir / "tokenizer.json").exists() or (model_dir / "tokenizer_config.json").exists()):
            raise UsageError(f"{model_dir}: no tokenizer for text prompts; use --prompts random (or a file of "
                             "input_ids)")
        tok = load_tokenizer(model_dir)
    out = []
    for r in reqs:
        if "ids" in r:
            ids = list(r["ids"])
        else:
            msgs = r.get("messages") or build_messages(r["text"], DEFAULT_SYSTEM)
            ids = encode(tok, render_chat(tok, msgs))
        bad = [i for i in ids if i >= vocab_size]
        if bad:
            raise UsageError(f"--prompts: token id {bad[0]} is outside the vocabulary ({vocab_size})")
        if ids:
            out.append(ids[:max_tokens])
    if not out:
        raise UsageError("--prompts: every prompt is empty after tokenisation")
    desc["count"] = len(out)
    return out, desc
