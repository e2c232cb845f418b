"""angel chat: think splitting, conversation state, interrupts, stats, /commands, transcripts, the REPL
driven through a prompt_toolkit pipe input and the piped-stdin runner (a scripted engine says fixed texts).
The real model and the command line: test_chat_cli.py; a real terminal: test_chat_tmux.py."""

import io
import json
from pathlib import Path
from types import SimpleNamespace

import pytest

from angelcli.chat.repl import ChatIO, ChatREPL, read_script, reply, run_noninteractive
from angelcli.chat.session import ChatSession, attach_draft
from angelcli.chat.think import ThinkSplitter
from angelcli.engine.engine import GenerationStats, StepOutput
from angelcli.engine.sampling import SamplingParams
from angelcli.errors import UsageError

ROOT = Path(__file__).resolve().parent.parent


# -- a scripted engine: replies are fixed texts, so every assertion knows what the model "said" ------------------
class ScriptedEngine:
    max_seq_len = 4096

    def __init__(self, tok, eos, replies, interrupt_at=None, accept=None, fail_at=None):
        self.tok, self.eos, self.replies = tok, eos, list(replies)
        self.fail_at = fail_at  # raise RuntimeError at this step (an engine failure such as out of memory)
        self.interrupt_at = interrupt_at  # raise KeyboardInterrupt before yielding this step (Ctrl-C mid-forward)
        self.accept = accept
        self.prompts: list[list[int]] = []
        self.last_stats = GenerationStats()

    def check_prompt(self, ids):
        assert ids and all(0 <= i < len(self.tok) for i in ids)

    def generate(self, prompt_ids, params: SamplingParams):
        self.prompts.append(list(prompt_ids))
        ids = self.tok.encode(self.replies.pop(0), add_special_tokens=False) + [self.eos]
        st = self.last_stats = GenerationStats(prompt_tokens=len(prompt_ids), time_to_first_token=0.01)
        if self.accept is not None:
            st.mean_acceptance_length = self.accept
        for n, tid in enumerate(ids[: params.max_new_tokens]):
            if n == self.interrupt_at:
                raise KeyboardInterrupt
            if n == self.fail_at:
                self.fail_at = None
                raise RuntimeError("out of memory")
            st.generated_tokens, st.total_time = n + 1, 0.01 * (n + 1)
            st.decode_tokens_per_s = 100.0 if n else 0.0
            finish = "stop" if tid in params.stop_ids else ("length" if n + 1 == params.max_new_tokens else None)
            yield StepOutput(tid, 0.0, [], finish)
            if finish:
                return


@pytest.fixture(scope="module")
def tok(tiny_ckpt):
    from angelcli.tokenizer import load_tokenizer

    return load_tokenizer(tiny_ckpt)


def make_session(tok, tiny_ckpt, replies, **kw):
    from angelcli.config import ModelConfig

    eos = tok.convert_tokens_to_ids("<|role_end|>")
    draft = kw.pop("draft", None)
    engine = ScriptedEngine(tok, eos, replies, **kw)
    rt = SimpleNamespace(engine=engine, tokenizer=tok, eos_ids=[eos], model_dir=Path(tiny_ckpt),
                         cfg=ModelConfig.from_file(tiny_ckpt), device="cpu", dtype="float32", backend="scripted")
    return ChatSession(rt, params=SamplingParams(max_new_tokens=200), draft=draft, model_name="tiny")


def quiet_io(interactive=False):
    return ChatIO(io.StringIO(), io.StringIO(), interactive=interactive, color=False)


# -- <think> handling --------------------------------------------------------------------------------------------
def split_all(pieces, **kw):
    sp = ThinkSplitter(**kw)
    chunks = [c for p in pieces for c in sp.feed(p)] + sp.close()
    think = "".join(c.text for c in chunks if c.kind == "think")
    answer = "".join(c.text for c in chunks if c.kind == "answer")
    return think, answer, sp


@pytest.mark.parametrize("chunking", [1, 2, 3, 100])
def test_think_split_survives_any_chunking(chunking):
    text = "\n<think>\nThe patient is febrile; 发热.\n</think>\n\nSee a doctor if <think> it persists."
    pieces = [text[i : i + chunking] for i in range(0, len(text), chunking)]
    think, answer, sp = split_all(pieces)
    assert think == "The patient is febrile; 发热.\n" and sp.reasoning_text == "The patient is febrile; 发热."
    assert answer == "See a doctor if <think> it persists." == sp.answer_text  # a later tag is answer text


def test_think_split_without_reasoning_and_unclosed():
    think, answer, sp = split_all(["Drink ", "water", " <"])
    assert think == "" and answer == "Drink water <" and sp.reasoning_text is None
    think, answer, sp = split_all(["<thi", "nk>still thinking </thi"])
    assert answer == "" and think == "still thinking </thi"  # cut off mid-reasoning: nothing is lost
    think, answer, _ = split_all(["opened by the prompt</think>answer"], start_in_think=True)
    assert (think, answer) == ("opened by the prompt", "answer")


def test_reasoning_is_shown_apart_and_left_out_of_the_next_prompt(tok, tiny_ckpt):
    s = make_session(tok, tiny_ckpt, ["<think>\nweigh the symptoms\n</think>\n\nRest and fluids.", "Yes."])
    out = quiet_io()
    msg = reply(s, "I have a fever.", out)
    assert msg.reasoning == "weigh the symptoms" and msg.content == "Rest and fluids."
    assert out.out.getvalue() == "Rest and fluids.\n"  # piped: stdout carries only the answer
    assert "weigh the symptoms" in out.err.getvalue() and "generated" in out.err.getvalue()
    reply(s, "Should I see a doctor?", out)
    second = tok.decode(s.rt.engine.prompts[1])
    assert "Rest and fluids." in second and "weigh the symptoms" not in second and "<think>" not in second
    assert second.endswith("<role>HUMAN</role>Should I see a doctor?<|role_end|><role>ASSISTANT</role>")


def test_interactive_output_dims_reasoning_and_defuses_control_characters():
    chat_io = ChatIO(io.StringIO(), io.StringIO(), interactive=True, color=True)
    chat_io.think("hmm")
    chat_io.answer("ok\x1b[2J\r\tend\n")
    assert chat_io.out.getvalue() == "\x1b[2mhmm\x1b[0mok\ufffd[2J\ufffd\tend\n"
    piped = ChatIO(io.StringIO(), io.StringIO(), interactive=False)
    piped.answer("raw\x1b")  # piped output is data: passed through unchanged
    assert piped.out.getvalue() == "raw\x1b"


# -- interrupts ----------------------------------------------------------------------------------------------------
def test_ctrl_c_inside_the_engine_keeps_a_marked_partial_reply(tok, tiny_ckpt):
    s = make_session(tok, tiny_ckpt, ["Drink plenty of water and rest.", "Fine."], interrupt_at=4)
    out = quiet_io(interactive=True)
    msg = reply(s, "What helps a cold?", out)
    partial = tok.decode(tok.encode("Drink plenty of water and rest.", add_special_tokens=False)[:4])
    assert msg.interrupted and msg.content == partial and msg.stats.finish_reason == "interrupted"
    assert "[interrupted]" in out.out.getvalue()
    s.rt.engine.interrupt_at = None
    reply(s, "And then?", out)  # the conversation goes on, with the partial reply in it
    assert [m.role for m in s.messages] == ["user", "assistant", "user", "assistant"]
    assert partial in tok.decode(s.rt.engine.prompts[1])


class InterruptingStream(io.StringIO):
    """A terminal where the user presses Ctrl-C while the third piece of the reply is printed."""

    def __init__(self):
        super().__init__()
        self.writes = 0

    def write(self, text):
        self.writes += 1
        if self.writes == 3:
            raise KeyboardInterrupt
        return super().write(text)


def test_ctrl_c_between_pieces_closes_the_stream(tok, tiny_ckpt):
    s = make_session(tok, tiny_ckpt, ["one two three four five six"])
    out = ChatIO(InterruptingStream(), io.StringIO(), interactive=True, color=False)
    msg = reply(s, "count", out)
    assert msg.interrupted and msg.role == "assistant"
    assert msg.content and "one two three four five six".startswith(msg.content)
    assert msg.content != "one two three four five six"
    with pytest.raises(KeyboardInterrupt):  # piped mode: the partial reply is recorded, then the interrupt goes on
        s.rt.engine.replies.append("again and again")
        s.rt.engine.interrupt_at = 2
        reply(s, "more", quiet_io(), catch_interrupt=False)
    assert s.messages[-1].interrupted


# -- stats ---------------------------------------------------------------------------------------------------------
def test_turn_and_conversation_stats_with_a_draft(tok, tiny_ckpt):
    s = make_session(tok, tiny_ckpt, ["a b c", "d e"], accept=2.5, draft="eagle3-test")
    out = quiet_io()
    m1 = reply(s, "x", out)
    m2 = reply(s, "y", out)
    for m in (m1, m2):
        assert m.stats.finish_reason == "stop" and m.stats.acceptance_length == 2.5
        assert "mean acceptance 2.50" in m.stats.line()
    st = s.stats()
    assert st["turns"] == 2 and st["generated_tokens"] == m1.stats.generated_tokens + m2.stats.generated_tokens
    assert st["prompt_tokens"] == len(s.rt.engine.prompts[0]) + len(s.rt.engine.prompts[1])
    assert st["mean_acceptance_length"] == pytest.approx(2.5)
    assert "mean acceptance length: 2.50" in s.stats_text()
    s.clear()
    assert s.stats()["turns"] == 0 and s.system


def test_no_acceptance_without_draft(tok, tiny_ckpt):
    s = make_session(tok, tiny_ckpt, ["ok"], accept=3.0)
    msg = reply(s, "x", quiet_io())
    assert msg.stats.acceptance_length is None and "acceptance" not in msg.stats.line()


def test_attach_draft_hook():
    plain = SimpleNamespace(engine=SimpleNamespace(), model_dir=Path("m"))
    assert attach_draft(plain, None) is None and attach_draft(plain, False) is None
    with pytest.raises(UsageError, match="--draft"):
        attach_draft(plain, True)
    calls = []
    eng = SimpleNamespace(attach_draft=lambda d, required: calls.append((d, required)) or "draft-x")
    assert attach_draft(SimpleNamespace(engine=eng, model_dir=Path("m")), True) == "draft-x"
    assert attach_draft(SimpleNamespace(engine=eng, model_dir=Path("m")), False) is None
    assert calls == [(Path("m"), True)]


# -- slash commands and transcripts ----------------------------------------------------------------------------------
def test_set_validates_and_maps_names(tok, tiny_ckpt):
    from angelcli.chat.slash import run_slash

    s = make_session(tok, tiny_ckpt, [])
    out = quiet_io()
    for line in ("/set temperature 0.6", "/set top_p 0.9", "/set top_k 40", "/set max_tokens 77", "/set seed 5"):
        assert run_slash(s, line, out) is False
    assert (s.params.temperature, s.params.top_p, s.params.top_k, s.params.max_new_tokens, s.params.seed) == \
        (0.6, 0.9, 40, 77, 5)
    for bad in ("/set temperature -1", "/set top_p 0", "/set top_k x", "/set nucleus 3", "/set temperature"):
        run_slash(s, bad, out)
    errors = out.err.getvalue()
    assert errors.count("error:") == 5 and "--temperature must be >= 0" in errors and "nucleus" in errors
    assert s.params.temperature == 0.6  # a rejected value changes nothing
    run_slash(s, "/frobnicate", out)
    assert "unknown command /frobnicate" in out.err.getvalue()
    run_slash(s, '/system """\nYou are terse.\n"""', out)
    assert s.system == "You are terse."
    run_slash(s, "/model", out)
    assert "8 experts (top-2, 1 shared)" in out.err.getvalue()
    assert run_slash(s, "/exit", out) and run_slash(s, "/bye", out)


@pytest.mark.parametrize("name", ["visit.md", "visit.json", "visit"])
def test_save_load_round_trip(tok, tiny_ckpt, tmp_path, name):
    s = make_session(tok, tiny_ckpt, ["<think>\nrule out sepsis\n</think>\n\n## Advice\nFluids.\n", "好的。"],
                     interrupt_at=None)
    out = quiet_io()
    reply(s, "Fever 39.5 °C, what now?\n## not a heading", out)
    reply(s, "谢谢", out)
    s.messages[-1].interrupted = True
    s.set_system("Be careful.\n<!-- not a marker -->")
    s.save(tmp_path / name)
    text = (tmp_path / name).read_text(encoding="utf-8")
    if name.endswith(".json"):
        assert json.loads(text)["format"] == "angel-chat-transcript"
    else:
        assert text.startswith("# angel chat transcript") and "<details><summary>Reasoning" in text
        assert "*[interrupted] [" in text
    before = [m.to_dict() for m in s.messages]
    fresh = make_session(tok, tiny_ckpt, [])
    assert fresh.load(tmp_path / name) == 4
    assert fresh.system == "Be careful.\n<!-- not a marker -->"
    assert [m.to_dict() for m in fresh.messages] == before
    assert fresh.stats()["generated_tokens"] == s.stats()["generated_tokens"]


def test_load_openai_list_and_bad_files(tok, tiny_ckpt, tmp_path):
    s = make_session(tok, tiny_ckpt, [])
    p = tmp_path / "m.json"
    p.write_text(json.dumps([{"role": "system", "content": "S"}, {"role": "user", "content": "U"},
                             {"role": "assistant", "content": "A", "reasoning_content": "R"}]))
    assert s.load(p) == 2 and s.system == "S" and s.messages[1].reasoning == "R"
    (tmp_path / "x.md").write_text("# just notes\n")
    for bad, match in ((tmp_path / "x.md", "not an angel chat transcript"), (tmp_path / "nope.json", "no such file")):
        with pytest.raises(UsageError, match=match):
            s.load(bad)
    assert s.messages  # a failed load keeps the conversation


def test_completion():
    from prompt_toolkit.completion import CompleteEvent
    from prompt_toolkit.document import Document

    from angelcli.chat.slash import make_completer

    c = make_completer()

    def words(text):
        return [x.text for x in c.get_completions(Document(text, len(text)), CompleteEvent())]

    assert words("/s") == ["/system", "/save", "/set", "/stats"]
    assert words("/set t") == ["temperature", "top_p", "top_k"]
    assert words("hello") == []
    assert "cli" in words(f"/load {ROOT}/angel")  # PathCompleter completes the rest of "angelcli"


# -- REPL through prompt_toolkit, and the piped runner --------------------------------------------------------------
def drive_repl(session, keys, history_path=None):
    from prompt_toolkit.input import create_pipe_input
    from prompt_toolkit.output import DummyOutput

    out = quiet_io(interactive=True)
    with create_pipe_input() as inp:
        inp.send_text(keys)
        code = ChatREPL(session, out, history_path=history_path, input=inp, output=DummyOutput()).run()
    return code, out.out.getvalue()


def test_repl_scripted_session(tok, tiny_ckpt, tmp_path):
    s = make_session(tok, tiny_ckpt, ["Fever means a temperature above 38 C.", "Two lines seen."])
    hist = tmp_path / "home" / "chat_history"
    keys = ('What is a fever?\r'
            '"""\rfirst line\rsecond line\r"""\r'
            "/set temperature 0.3\r"
            f"/save {tmp_path / 't.json'}\r"
            "/stats\r"
            "/exit\r")
    code, screen = drive_repl(s, keys, hist)
    assert code == 0
    assert "Fever means a temperature above 38 C." in screen and "Two lines seen." in screen
    assert screen.count("prompt tokens,") == 2 and "turns: 2" in screen and "not medical advice" in screen
    assert [m.content for m in s.messages if m.role == "user"] == ["What is a fever?", "first line\nsecond line"]
    assert s.params.temperature == 0.3
    saved = json.loads((tmp_path / "t.json").read_text())
    assert len(saved["messages"]) == 4
    history = hist.read_text()
    assert "What is a fever?" in history and "first line" in history


def test_repl_keys_esc_enter_ctrl_d_ctrl_c(tok, tiny_ckpt):
    s = make_session(tok, tiny_ckpt, ["ok"])
    code, _ = drive_repl(s, "line one\x1b\rline two\r\x04")  # Esc Enter = new line; Ctrl-D quits with 0
    assert code == 0 and s.messages[0].content == "line one\nline two"
    code, screen = drive_repl(make_session(tok, tiny_ckpt, []), "\x03\x03")
    assert code == 130 and "Ctrl-C again" in screen
    s2 = make_session(tok, tiny_ckpt, ["still here"])
    code, screen = drive_repl(s2, "typo\x03\x03hello\r/exit\r")  # Ctrl-C on a non-empty line just clears it
    assert code == 0 and [m.content for m in s2.messages] == ["hello", "still here"]
    assert screen.count("Ctrl-C again") == 1


def test_repl_survives_an_engine_failure(tok, tiny_ckpt):
    s = make_session(tok, tiny_ckpt, ["first words and more", "recovered"], fail_at=2)
    code, screen = drive_repl(s, "q1\rq2\r/exit\r")
    assert code == 0 and "RuntimeError: out of memory (the conversation is kept" in screen
    assert s.messages[1].interrupted and s.messages[-1].content == "recovered"


def test_repl_unwritable_history_falls_back(tok, tiny_ckpt, tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("")
    code, screen = drive_repl(make_session(tok, tiny_ckpt, []), "/exit\r", blocker / "sub" / "history")
    assert code == 0 and "not writable" in screen


def test_read_script_blocks():
    lines = ["q1\n", "\n", '"""\n', "a\n", "", "b\n", '"""\n', "/stats\n", '"""x', "tail"]
    assert list(read_script(lines)) == ["q1", "a\n\nb", "/stats", "x\ntail"]


def test_noninteractive_runner(tok, tiny_ckpt, tmp_path):
    s = make_session(tok, tiny_ckpt, ["Answer one.", "回答二。"])
    out = quiet_io()
    code = run_noninteractive(s, ["first\n", "第二个问题\n", f"/save {tmp_path / 'a.md'}\n", "/exit\n", "never\n"], out)
    assert code == 0
    assert out.out.getvalue() == "Answer one.\n回答二。\n"
    err = out.err.getvalue()
    assert err.count("prompt tokens,") == 2 and "not medical advice" in err and (tmp_path / "a.md").exists()
