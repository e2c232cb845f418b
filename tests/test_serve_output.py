"""Token steps -> OpenAI text: reasoning apart from content, stop strings cut (and never half-shown)."""

import pytest

from angelcli.engine.engine import StepOutput
from angelcli.serve.output import TextOutput


@pytest.fixture(scope="module")
def tok():
    from angelcli.resolve import TINY_DIR
    from angelcli.tokenizer import load_tokenizer

    return load_tokenizer(TINY_DIR)


def feed(out, tok, text, stop_id=None):
    pieces = []
    for i in tok.encode(text, add_special_tokens=False):
        pieces += out.push(StepOutput(i, 0.0))
        if out.stopped:
            break
    if stop_id is not None and not out.stopped:
        pieces += out.push(StepOutput(stop_id, 0.0, finish_reason="stop"))
    return pieces + out.close()


def test_think_block_goes_to_reasoning(tok):
    out = TextOutput(tok, split_think=True)
    pieces = feed(out, tok, "<think>\nThe patient has a fever.\n</think>\n\nRest and fluids.", stop_id=2)
    assert out.reasoning_text == "The patient has a fever."
    assert out.content_text == "Rest and fluids."
    assert "".join(t for k, t in pieces if k == "reasoning").rstrip("\n") == "The patient has a fever."
    plain = TextOutput(tok, split_think=True)
    feed(plain, tok, "No reasoning here.")
    assert plain.reasoning_text is None and plain.content_text == "No reasoning here."
    completion = TextOutput(tok)  # /v1/completions: no split
    feed(completion, tok, "<think>x</think>y")
    assert completion.content_text == "<think>x</think>y" and completion.reasoning_text is None


def test_stop_strings_cut_and_are_held_back(tok):
    out = TextOutput(tok, stop=["blood pressure"])
    seen = []
    for i in tok.encode("High blood pressure is common.", add_special_tokens=False):
        got = out.push(StepOutput(i, 0.0))
        seen.append("".join(t for _, t in got))
        assert "blood" not in "".join(seen)  # a possible stop-string start is not streamed yet
        if out.stopped:
            break
    seen += [t for _, t in out.close()]
    assert out.stopped and "".join(seen) == out.content_text == "High "
    free = TextOutput(tok, stop=["zzz"])
    feed(free, tok, "High blood pressure is common.")
    assert not free.stopped and free.content_text == "High blood pressure is common."
