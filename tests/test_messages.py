"""normalize_messages: the one validator for chat messages (generate, chat /load, serve)."""

import pytest

from angelcli.errors import UsageError
from angelcli.messages import normalize_messages


def test_plain_and_text_parts_normalise_to_strings():
    out = normalize_messages([
        {"role": "system", "content": "be brief"},
        {"role": "user", "content": [{"type": "text", "text": "a"}, {"type": "text", "text": "b"}]},
        {"role": "assistant", "content": "x", "reasoning": "why"},
        {"role": "developer", "content": "late system"},
    ])
    assert out == [{"role": "system", "content": "be brief"}, {"role": "user", "content": "a\nb"},
                   {"role": "assistant", "content": "x", "reasoning_content": "why"},
                   {"role": "system", "content": "late system"}]


def test_assistant_tool_call_without_content_and_tool_turn():
    out = normalize_messages([{"role": "user", "content": "hi"},
                              {"role": "assistant", "content": None, "tool_calls": [{"function": {"name": "f"}}]},
                              {"role": "tool", "content": "42", "tool_call_id": "c1"}])
    assert out[1]["content"] == "" and out[1]["tool_calls"] and out[2]["tool_call_id"] == "c1"


@pytest.mark.parametrize("messages, expected", [
    ([{"role": "user", "content": 42}], "messages[0].content: expected a string or a list of text parts, got 42"),
    ([{"role": "user", "content": None}], "messages[0].content: expected a string or a list of text parts, got null"),
    ([{"role": "user"}], "messages[0].content: missing"),
    ([{"role": "doctor", "content": "x"}], "messages[0].role: unknown role 'doctor'"),
    ([{"content": "x"}], "messages[0].role: missing"),
    ([{"role": 3, "content": "x"}], "messages[0].role: expected a string, got 3"),
    (["hi"], "messages[0]: expected an object"),
    ([], "messages: the list is empty"),
    ("hi", "messages: expected a list"),
    ([{"role": "user", "content": "a"}, {"role": "user", "content": [{"type": "image_url"}]}],
     "messages[1].content[0].type: \"image_url\" parts are not supported"),
    ([{"role": "user", "content": [{"type": "text", "text": 5}]}], "messages[0].content[0].text: expected a string"),
    ([{"role": "user", "content": []}], "messages[0].content: expected a string or a list of text parts, got []"),
    ([{"role": "assistant", "content": "x", "reasoning_content": 1}], "messages[0].reasoning_content"),
])
def test_bad_messages_name_the_field(messages, expected):
    with pytest.raises(UsageError) as err:
        normalize_messages(messages)
    assert str(err.value).startswith(expected) and "\n" not in str(err.value)
    assert err.value.exit_code == 2


def test_where_prefix_is_used():
    with pytest.raises(UsageError, match=r"^req.jsonl:3: messages\[0\]\.role"):
        normalize_messages([{"role": "x", "content": ""}], where="req.jsonl:3: messages")
