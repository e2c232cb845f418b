"""angel-tiny's tokenizer: specials, offline loading, exact round trips, and the Ling chat template.

The template is checked against `ling_reference`, a plain-Python rendering of spec bailing-moe-v2.md §5
written for this test (it does not use Jinja), on conversations covering every rule of the spec.
"""

from __future__ import annotations

import json

import pytest

from angelcli.tiny.tokenizer import (ALL_ADDED, BOS, EOS_TEXT, ROLE_END, SPECIAL_TOKENS, TEMPLATE_PATH, TEXT_TOKENS,
                                     TINY_TOKENIZER_DIR, build_small_tokenizer, build_tokenizer)


# ---- independent reference of spec §5 ---------------------------------------------------------------

def _tojson(x) -> str:
    return json.dumps(x, ensure_ascii=False)  # what transformers' chat-template `tojson` filter produces


def _is_real_query(m: dict) -> bool:
    c = m.get("content")
    return m["role"] == "user" and isinstance(c, str) and not (c.startswith("<tool_response>") and c.endswith("</tool_response>"))


def ling_reference(messages: list[dict], tools: list[dict] | None = None, add_generation_prompt: bool = False) -> str:
    parts = ["<role>SYSTEM</role>"]
    if messages and messages[0]["role"] == "system":
        parts.append(messages[0]["content"] + "\n")
    if tools:
        parts.append("# Tools\n\nYou may call one or more functions to assist with the user query.\n\n"
                     "You are provided with function signatures within <tools></tools> XML tags:\n<tools>")
        parts += ["\n" + _tojson(t) for t in tools]
        parts.append("\n</tools>\n\nFor each function call, return a json object with function name and arguments within "
                     "<tool_call></tool_call> XML tags:\n<tool_call>\n{\"name\": <function-name>, \"arguments\": "
                     "<args-json-object>}\n</tool_call>\n")
    parts.append("detailed thinking off<|role_end|>")
    last_query = next((i for i in range(len(messages) - 1, -1, -1) if _is_real_query(messages[i])), len(messages) - 1)
    for i, m in enumerate(messages):
        content = m["content"] if isinstance(m.get("content"), str) else ""
        if m["role"] == "user":
            parts.append(f"<role>HUMAN</role>{m['content']}<|role_end|>")
        elif m["role"] == "system" and i > 0:
            parts.append(f"<role>SYSTEM</role>{m['content']}<|role_end|>")
        elif m["role"] == "assistant":
            reasoning = ""
            if isinstance(m.get("reasoning_content"), str):
                reasoning = m["reasoning_content"]
            elif "</think>" in content:
                before, after = content.split("</think>")[0], content.split("</think>")[-1]
                reasoning = before.rstrip("\n").split("<think>")[-1].lstrip("\n")
                content = after.lstrip("\n")
            if i > last_query and reasoning:
                parts.append("<role>ASSISTANT</role>\n<think>\n" + reasoning.strip("\n") + "\n</think>\n\n" + content.lstrip("\n"))
            else:
                parts.append("<role>ASSISTANT</role>" + content)
            for j, call in enumerate(m.get("tool_calls") or []):
                if j > 0 or content:
                    parts.append("\n")
                fn = call.get("function") or call
                args = fn["arguments"] if isinstance(fn["arguments"], str) else _tojson(fn["arguments"])
                parts.append('<tool_call>\n{"name": "' + fn["name"] + '", "arguments": ' + args + "}\n</tool_call>")
            parts.append("<|role_end|>")
        elif m["role"] == "tool":
            if i == 0 or messages[i - 1]["role"] != "tool":
                parts.append("<role>OBSERVATION</role>")
            parts.append("\n<tool_response>\n" + content + "\n</tool_response>")
            if i == len(messages) - 1 or messages[i + 1]["role"] != "tool":
                parts.append("<|role_end|>")
    if add_generation_prompt:
        parts.append("<role>ASSISTANT</role>")
    return "".join(parts)


SYS = {"role": "system", "content": "You are AntAngelMed, a helpful medical assistant."}
WEATHER_TOOL = {"type": "function", "function": {"name": "lookup_drug", "description": "Look up a drug label / 查询药品说明书",
                                                 "parameters": {"type": "object", "properties": {"name": {"type": "string"}},
                                                                "required": ["name"]}}}
CONVERSATIONS = {
    "system_user": [{"role": "system", "content": "S"}, {"role": "user", "content": "U"}],
    "user_only": [{"role": "user", "content": "What is asthma?"}],
    "multi_turn": [SYS, {"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello! How can I help?"},
                   {"role": "user", "content": "I have a headache."}, {"role": "assistant", "content": "How long has it lasted?"},
                   {"role": "user", "content": "Two days."}],
    "chinese": [SYS, {"role": "user", "content": "发烧38.5℃怎么办？"}, {"role": "assistant", "content": "多喝水，注意休息。"},
                {"role": "user", "content": "需要去医院吗？"}],
    "think_before_last_query": [{"role": "user", "content": "Q1"},
                                {"role": "assistant", "content": "<think>\nreasoning one\n</think>\n\nAnswer one"},
                                {"role": "user", "content": "Q2"}],
    "think_after_last_query": [SYS, {"role": "user", "content": "Q1"},
                               {"role": "assistant", "content": "<think>\n\nsecret plan\n\n</think>\n\n\nFinal answer"}],
    "reasoning_content_field": [{"role": "user", "content": "Q1"},
                                {"role": "assistant", "content": "A1", "reasoning_content": "old thoughts"},
                                {"role": "user", "content": "Q2"},
                                {"role": "assistant", "content": "\nA2", "reasoning_content": "\nnew thoughts\n"}],
    "think_without_open_tag": [{"role": "user", "content": "Q"}, {"role": "assistant", "content": "just thinking</think>answer"}],
    "open_tag_only": [{"role": "user", "content": "Q"}, {"role": "assistant", "content": "<think> not closed"}],
    "tools_flow": [SYS, {"role": "user", "content": "Is ibuprofen OK with warfarin?"},
                   {"role": "assistant", "content": "Let me check both labels.", "tool_calls": [
                       {"type": "function", "function": {"name": "lookup_drug", "arguments": {"name": "ibuprofen"}}},
                       {"type": "function", "function": {"name": "lookup_drug", "arguments": '{"name": "warfarin"}'}}]},
                   {"role": "tool", "content": "NSAID; bleeding risk"}, {"role": "tool", "content": "anticoagulant"},
                   {"role": "assistant", "content": "<think>combine</think>They interact: avoid the combination."}],
    "tool_call_empty_content": [{"role": "user", "content": "look up 阿司匹林"},
                                {"role": "assistant", "content": "", "tool_calls": [{"name": "lookup_drug", "arguments": {"name": "阿司匹林"}}]},
                                {"role": "tool", "content": "抗血小板药"}],
    "tool_response_as_user": [{"role": "user", "content": "Q"},
                              {"role": "assistant", "content": "<think>r1</think>calling", "tool_calls": [
                                  {"function": {"name": "f", "arguments": {}}}]},
                              {"role": "user", "content": "<tool_response>\nresult\n</tool_response>"},
                              {"role": "assistant", "content": "<think>r2</think>done"}],
    "later_system": [SYS, {"role": "user", "content": "U1"}, {"role": "assistant", "content": "A1"},
                     {"role": "system", "content": "Answer briefly."}, {"role": "user", "content": "U2"}],
    "first_message_not_system": [{"role": "user", "content": "U"}, {"role": "system", "content": "late system"}],
}


# ---- fixtures ---------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def shipped(tmp_path_factory):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(str(TINY_TOKENIZER_DIR), local_files_only=True)


@pytest.fixture(scope="module")
def small(tmp_path_factory):
    from transformers import AutoTokenizer

    out = tmp_path_factory.mktemp("small_tok")
    build_small_tokenizer(out)
    return AutoTokenizer.from_pretrained(str(out), local_files_only=True)


@pytest.fixture(params=["shipped", "small"])
def tok(request, shipped, small):
    return shipped if request.param == "shipped" else small


# ---- tests ------------------------------------------------------------------------------------------

def test_spec_example_renders_exactly(tok):
    msgs = [{"role": "system", "content": "S"}, {"role": "user", "content": "U"}]
    out = tok.apply_chat_template(msgs, tokenize=False, add_generation_prompt=True)
    assert out == "<role>SYSTEM</role>S\ndetailed thinking off<|role_end|><role>HUMAN</role>U<|role_end|><role>ASSISTANT</role>"


@pytest.mark.parametrize("name", sorted(CONVERSATIONS))
@pytest.mark.parametrize("gen", [False, True])
def test_template_matches_reference(shipped, name, gen):
    msgs = CONVERSATIONS[name]
    got = shipped.apply_chat_template(msgs, tokenize=False, add_generation_prompt=gen)
    assert got == ling_reference(msgs, add_generation_prompt=gen)


@pytest.mark.parametrize("name", ["user_only", "tools_flow", "tool_call_empty_content"])
def test_template_with_tools_matches_reference(shipped, name):
    msgs = CONVERSATIONS[name]
    got = shipped.apply_chat_template(msgs, tools=[WEATHER_TOOL], tokenize=False, add_generation_prompt=True)
    assert got == ling_reference(msgs, tools=[WEATHER_TOOL], add_generation_prompt=True)
    assert '\n{"type": "function", "function": {"name": "lookup_drug", "description": "Look up a drug label / 查询药品说明书"' in got


def test_reference_itself_on_hand_checked_cases():
    # Guards the reference against drifting along with the template: literal strings from spec §5.
    m = CONVERSATIONS["think_after_last_query"]
    assert ling_reference(m).endswith("<role>ASSISTANT</role>\n<think>\nsecret plan\n</think>\n\nFinal answer<|role_end|>")
    m = CONVERSATIONS["think_before_last_query"]
    assert "<role>ASSISTANT</role>Answer one<|role_end|><role>HUMAN</role>Q2" in ling_reference(m)
    m = CONVERSATIONS["tools_flow"]
    assert ('<role>OBSERVATION</role>\n<tool_response>\nNSAID; bleeding risk\n</tool_response>\n<tool_response>\n'
            'anticoagulant\n</tool_response><|role_end|>') in ling_reference(m)


def test_template_file_is_the_shipped_chat_template(shipped):
    assert shipped.chat_template == TEMPLATE_PATH.read_text(encoding="utf-8")
    cfg = json.loads((TINY_TOKENIZER_DIR / "tokenizer_config.json").read_text(encoding="utf-8"))
    assert cfg["chat_template"] == TEMPLATE_PATH.read_text(encoding="utf-8")
    assert cfg["tokenizer_class"] == "PreTrainedTokenizerFast"
    assert (cfg["bos_token"], cfg["eos_token"], cfg["pad_token"]) == (BOS, ROLE_END, EOS_TEXT)
    assert cfg["add_bos_token"] is False and cfg["add_eos_token"] is False
    assert cfg["model_max_length"] >= 2048
    stm = json.loads((TINY_TOKENIZER_DIR / "special_tokens_map.json").read_text(encoding="utf-8"))
    assert (stm["bos_token"], stm["eos_token"], stm["pad_token"]) == (BOS, ROLE_END, EOS_TEXT)


def test_shipped_vocab_and_special_ids(shipped):
    assert len(shipped) == 8192
    for i, t in enumerate(ALL_ADDED):
        assert shipped.convert_tokens_to_ids(t) == i
        assert shipped.encode(t, add_special_tokens=False) == [i], t
    assert (shipped.bos_token_id, shipped.pad_token_id, shipped.eos_token_id) == (0, 1, 2)
    assert set(SPECIAL_TOKENS) <= set(shipped.all_special_tokens)
    assert not set(TEXT_TOKENS) & set(shipped.all_special_tokens)
    # Role words the template writes are single tokens in the trained vocabulary.
    for word in ("SYSTEM", "HUMAN", "ASSISTANT"):
        ids = shipped.encode(f"<role>{word}</role>", add_special_tokens=False)
        assert len(ids) == 3 and ids[0] == 3 and ids[2] == 4, (word, ids)


def test_special_tokens_are_single_ids_in_context(tok):
    text = "<role>SYSTEM</role>x<|role_end|><role>ASSISTANT</role>\n<think>\nr\n</think>\n\n<tool_call>{}</tool_call><|endoftext|>"
    ids = tok.encode(text, add_special_tokens=False)
    for t in ALL_ADDED:
        if t in text:
            assert ids.count(tok.convert_tokens_to_ids(t)) == text.count(t), t
    assert tok.decode(ids) == text
    assert tok.encode("hello", add_special_tokens=True)[0] != tok.bos_token_id  # no automatic bos
    visible = tok.decode(ids, skip_special_tokens=True)
    assert "<role>" not in visible and "<think>" in visible and "<tool_call>" in visible


@pytest.mark.parametrize("text", [
    "患者自述头痛三天，体温38.5℃，伴有咳嗽、咽痛。建议多喝水，必要时服用对乙酰氨基酚。",
    "二型糖尿病（T2DM）的HbA1c目标一般在7%左右；如出现酮症酸中毒，请立即拨打120！",
    "Mixed 中英文 text: 500 mg  每日三次\n\n\t  indent 全角：（括号）「引号」…… emoji 🩺💊",
    "  leading and trailing spaces  ",
    "生僻字：龘靐齉爩 and combining e\u0301",
])
def test_round_trip_is_exact(tok, text):
    ids = tok.encode(text, add_special_tokens=False)
    assert tok.decode(ids) == text
    assert tok.decode(ids, skip_special_tokens=True) == text


def test_trained_vocab_compresses_chinese(shipped):
    zh = "高血压患者应该低盐饮食，规律运动，并按时服用降压药。"
    assert len(shipped.encode(zh, add_special_tokens=False)) < len(zh.encode("utf-8")) / 3


def test_build_tokenizer_small_vocab_and_errors(tmp_path):
    from angelcli.errors import UsageError

    out = build_tokenizer(["aaa bbb ccc ddd"] * 10, tmp_path / "t", vocab_size=300)
    data = json.loads((out / "tokenizer.json").read_text(encoding="utf-8"))
    assert [a["id"] for a in data["added_tokens"]] == list(range(len(ALL_ADDED)))
    assert len(data["model"]["vocab"]) <= 300
    with pytest.raises(UsageError, match="too small"):
        build_tokenizer(["x"], tmp_path / "u", vocab_size=200)


def test_shipped_tokenizer_is_rebuilt_identically_from_the_train_split(tmp_path):
    from angelcli.tiny.tokenizer import build_tiny_tokenizer

    out = build_tiny_tokenizer(tmp_path)
    for name in ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json"):
        assert (out / name).read_bytes() == (TINY_TOKENIZER_DIR / name).read_bytes(), name
