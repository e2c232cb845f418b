"""Token ids for the dynamic check: the built-in medical prompts, a user file, or random ids.

  --prompts medical   angel's built-in medical questions (angelcli.data.load_prompts(), English and Chinese,
                      none of them in a training split), each rendered with the checkpoint's chat template
                      and AntAngelMed's system prompt
  --prompts PATH      a user data file in angel's common format (angelcli.data.read_user_data): .jsonl with
                      {"messages": [...]}, {"text": ...} or {"prompt": ..., "response": ...} per line, or .txt
                      with one sample per paragraph; conversations go through the chat template, text as is
  --prompts random    `num_random` sequences of `max_tokens` uniform random ids (seeded): needs no tokenizer
                      and drives every expert with inputs the router was never trained on

Every sequence is cut to `max_tokens`. Routing is measured over prompt tokens only (no generation): the
statistics need many routed tokens, not long continuations, and a streamed forward reads the whole
checkpoint once per pass.
"""

from __future__ import annotations

from pathlib import Path

from angelcli.errors import UsageError


def _samples(spec: str) -> tuple[list[dict], dict]:
    """--prompts medical | PATH -> samples ({"messages"} or {"text"}) and the report's description."""
    from angelcli.data import load_prompts, read_user_data
    from angelcli.tokenizer import DEFAULT_SYSTEM, build_messages

    if spec == "medical":
        return [{"messages": build_messages(q, DEFAULT_SYSTEM)} for q in load_prompts()], {"source": "medical"}
    path = Path(spec).expanduser()
    if not path.exists():
        raise UsageError(f"--prompts {spec}: not 'medical' or 'random', and no such file")
    return read_user_data(path), {"source": str(path)}


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
    samples, desc = _samples(spec)
    from angelcli.tokenizer import encode, load_tokenizer, render_chat

    if not ((model_dir / "tokenizer.json").exists() or (model_dir / "tokenizer_config.json").exists()):
        raise UsageError(f"{model_dir}: no tokenizer for text prompts; use --prompts random")
    tok = load_tokenizer(model_dir)
    out = []
    for s in samples:
        if "text" in s:
            text = s["text"]
        else:
            msgs = s["messages"]
            text = render_chat(tok, msgs, add_generation_prompt=msgs[-1]["role"] != "assistant")
        ids = encode(tok, text)[:max_tokens]
        bad = [i for i in ids if i >= vocab_size]
        if bad:
            raise UsageError(f"--prompts: token id {bad[0]} is outside the model's vocabulary ({vocab_size})")
        if ids:
            out.append(ids)
    if not out:
        raise UsageError(f"--prompts {spec}: every prompt is empty after tokenisation")
    desc["count"] = len(out)
    return out, desc
