"""The shipped medical corpus (angelcli/data/medical), its builder and the data-loading API."""

from __future__ import annotations

import hashlib
import json
import re
from collections import Counter

import pytest

from angelcli.data import MEDICAL_DIR, SPLITS, load_prompts, load_split, read_user_data, render_sample
from angelcli.errors import UsageError
from angelcli.tiny.corpus import SYSTEM_PROMPT, build_corpus, conversation_key, text_stats


@pytest.fixture(scope="module")
def splits():
    return {name: load_split(name) for name in SPLITS}


def _replies(samples):
    return {m["content"] for s in samples for m in s["messages"] if m["role"] == "assistant"}


def _users(samples):
    return [m["content"] for s in samples for m in s["messages"] if m["role"] == "user"]


# ---- the shipped corpus ---------------------------------------------------------------------------

def test_corpus_size_and_language_mix(splits):
    everything = [s for v in splits.values() for s in v]
    st = text_stats(everything)
    assert st["text_bytes"] >= 1_000_000, st
    assert 0.25 <= st["zh_char_share"] <= 0.40, st
    assert {s["lang"] for s in everything} == {"en", "zh"}
    shipped = sum((MEDICAL_DIR / f"{n}.jsonl").stat().st_size for n in SPLITS)
    # it ships inside the package: v5 (every name asked >= 6 times, anchored answers) is 5.4 MB, v2 was 4.1 MB
    assert shipped <= 6_000_000, shipped
    for name, v in splits.items():
        assert {s["lang"] for s in v} == {"en", "zh"}, name
    assert len(splits["calib"]) >= 128 and len(splits["eval"]) >= 128
    assert len(splits["train"]) > 8 * len(splits["eval"])


def test_samples_are_well_formed_chat(splits):
    for name, v in splits.items():
        for s in v:
            assert set(s) == {"messages", "lang", "kind"}, (name, s)
            msgs = s["messages"]
            if msgs[0]["role"] == "system":
                assert msgs[0]["content"] == SYSTEM_PROMPT
                msgs = msgs[1:]
            assert len(msgs) >= 2 and len(msgs) % 2 == 0, s
            for i, m in enumerate(msgs):
                assert m["role"] == ("user" if i % 2 == 0 else "assistant"), s
                assert isinstance(m["content"], str) and m["content"].strip() == m["content"] and m["content"], s


def test_corpus_is_diverse(splits):
    train = splits["train"]
    kinds = Counter(s["kind"] for s in train)
    assert len(kinds) >= 9, kinds
    assert max(kinds.values()) < 0.55 * len(train), kinds  # condition Q&A leads, nothing else comes close
    with_system = sum(s["messages"][0]["role"] == "system" for s in train)
    assert 0.3 * len(train) < with_system < 0.7 * len(train)
    multi = sum(sum(m["role"] == "user" for m in s["messages"]) > 1 for s in train)
    assert multi >= 300, multi
    # Replies are mostly distinct, and no single way of opening a reply dominates.
    replies = [m["content"] for s in train for m in s["messages"] if m["role"] == "assistant"]
    # (some repeat on purpose: several phrasings of one question share an answer)
    assert len(set(replies)) > 0.8 * len(replies)
    openers = Counter(r[:24] for r in replies)
    assert openers.most_common(1)[0][1] < 0.03 * len(replies), openers.most_common(3)
    users = _users(train)
    assert len(set(users)) > 0.6 * len(users)
    assert len({" ".join(u.split()[:3]) for u in users}) >= 300
    # Safety habits the model should pick up: pointing to a clinician / emergency services.
    en = " ".join(r for s in train if s["lang"] == "en" for r in _replies([s]))
    zh = " ".join(r for s in train if s["lang"] == "zh" for r in _replies([s]))
    assert en.count("emergency") > 100 and zh.count("120") > 100


def test_splits_are_disjoint(splits):
    keys = {name: {conversation_key(s) for s in v} for name, v in splits.items()}
    replies = {name: _replies(v) for name, v in splits.items()}
    for a in SPLITS:
        assert len(keys[a]) == len(splits[a]), f"duplicate conversations inside {a}"
        for b in SPLITS:
            if a < b:
                assert not keys[a] & keys[b], (a, b)
                assert not replies[a] & replies[b], (a, b)


def test_manifest_matches_shipped_files():
    manifest = json.loads((MEDICAL_DIR / "manifest.json").read_text(encoding="utf-8"))
    for name in SPLITS:
        data = (MEDICAL_DIR / f"{name}.jsonl").read_bytes()
        assert hashlib.sha256(data).hexdigest() == manifest["splits"][name]["sha256"], name
        assert len(data) == manifest["splits"][name]["file_bytes"]


def test_prompts_are_distinct_from_the_corpus(splits):
    prompts = load_prompts()
    assert 35 <= len(prompts) <= 45
    assert sum(any("\u4e00" <= ch <= "\u9fff" for ch in p) for p in prompts) >= 12
    users = _users([s for v in splits.values() for s in v])
    assert len(set(prompts)) == len(prompts)
    for p in prompts:
        assert not any(p in u for u in users), p
    assert prompts[0] == "What are common symptoms of type 2 diabetes?"


# ---- the builder ------------------------------------------------------------------------------------

def test_builder_is_deterministic_and_seeded(tmp_path):
    pytest.importorskip("simple_icd_10_cm")
    pytest.importorskip("faker_healthcare")
    a = build_corpus(tmp_path / "a", seed=0, scale=0.15)
    b = build_corpus(tmp_path / "b", seed=0, scale=0.15)
    c = build_corpus(tmp_path / "c", seed=1, scale=0.15)
    for name in SPLITS:
        assert (tmp_path / "a" / f"{name}.jsonl").read_bytes() == (tmp_path / "b" / f"{name}.jsonl").read_bytes()
        assert a["splits"][name]["sha256"] == b["splits"][name]["sha256"] != c["splits"][name]["sha256"]
    assert a["total"]["samples"] > 300
    # The reduced build keeps the split guarantees.
    parts = {n: [json.loads(x) for x in (tmp_path / "a" / f"{n}.jsonl").read_text(encoding="utf-8").splitlines()]
             for n in SPLITS}
    assert not _replies(parts["train"]) & (_replies(parts["eval"]) | _replies(parts["calib"]))


def test_full_rebuild_reproduces_the_shipped_corpus(tmp_path):
    pytest.importorskip("simple_icd_10_cm")
    pytest.importorskip("faker_healthcare")
    from angelcli.tiny.corpus_sources import source_versions

    manifest = json.loads((MEDICAL_DIR / "manifest.json").read_text(encoding="utf-8"))
    if source_versions() != manifest["sources"]:
        pytest.skip(f"installed corpus sources {source_versions()} differ from the build's {manifest['sources']}")
    rebuilt = build_corpus(tmp_path, seed=manifest["seed"], scale=manifest["scale"], version=manifest["builder_version"])
    assert rebuilt == manifest


# ---- data API ---------------------------------------------------------------------------------------

def test_load_split_rejects_unknown_names():
    with pytest.raises(UsageError, match="unknown data split 'test'"):
        load_split("test")


def test_load_split_returns_independent_copies():
    a = load_split("eval")
    a[0]["messages"].clear()
    assert load_split("eval")[0]["messages"]


def _write(tmp_path, name, text, mode="w"):
    p = tmp_path / name
    if mode == "wb":
        p.write_bytes(text)
    else:
        p.write_text(text, encoding="utf-8")
    return p


def test_read_user_data_accepts_all_forms(tmp_path):
    rows = [
        {"messages": [{"role": "system", "content": "S"}, {"role": "user", "content": "Q"}, {"role": "assistant", "content": "A"}]},
        {"text": "Plain medical text."},
        {"prompt": "What is gout?", "response": "A type of arthritis."},
        {"prompt": "只有问题"},
    ]
    p = _write(tmp_path, "d.jsonl", "\n".join(json.dumps(r, ensure_ascii=False) for r in rows) + "\n\n")
    out = read_user_data(p)
    assert out[0] == rows[0]
    assert out[1] == {"text": "Plain medical text."}
    assert out[2] == {"messages": [{"role": "user", "content": "What is gout?"}, {"role": "assistant", "content": "A type of arthritis."}]}
    assert out[3] == {"messages": [{"role": "user", "content": "只有问题"}]}


def test_read_user_data_txt_paragraphs(tmp_path):
    p = _write(tmp_path, "notes.txt", "First line\nsecond line\n\n\n  \nSecond paragraph.\r\n\r\nThird 第三段")
    assert read_user_data(p) == [{"text": "First line\nsecond line"}, {"text": "Second paragraph."}, {"text": "Third 第三段"}]


@pytest.mark.parametrize("content, message", [
    ('{"text": "ok"}\n{"text": "ok",}\n', r"bad\.jsonl:2: invalid JSON"),
    ('{"text": "ok"}\n[1, 2]\n', r"bad\.jsonl:2: expected a JSON object, got list"),
    ('{"messages": []}\n', r"bad\.jsonl:1: \"messages\" must be a non-empty list"),
    ('{"messages": [{"role": "doctor", "content": "x"}]}\n', r"bad\.jsonl:1: messages\[0\]\.role is 'doctor'"),
    ('{"messages": [{"role": "user", "content": 5}]}\n', r"bad\.jsonl:1: messages\[0\]\.content must be a string"),
    ('{"messages": [{"role": "system", "content": "x"}]}\n', r"bad\.jsonl:1: .*only system messages"),
    ('\n\n{"input": "x"}\n', r"bad\.jsonl:3: object has none of the keys .*it has: input"),
    ('{"text": "   "}\n', r"bad\.jsonl:1: \"text\" must be a non-empty string"),
    ('{"prompt": 3}\n', r"bad\.jsonl:1: \"prompt\" must be a non-empty string"),
    ('{"prompt": "q", "response": ["a"]}\n', r"bad\.jsonl:1: \"response\" must be a string"),
    ("\n  \n", r"bad\.jsonl: no samples found"),
])
def test_read_user_data_errors_name_file_and_line(tmp_path, content, message):
    p = _write(tmp_path, "bad.jsonl", content)
    with pytest.raises(UsageError, match=message):
        read_user_data(p)


def test_read_user_data_file_errors(tmp_path):
    with pytest.raises(UsageError, match="no such file"):
        read_user_data(tmp_path / "missing.jsonl")
    with pytest.raises(UsageError, match="is a directory"):
        read_user_data(tmp_path)
    with pytest.raises(UsageError, match=r"unsupported file type '\.csv'"):
        read_user_data(_write(tmp_path, "x.csv", "a,b\n"))
    with pytest.raises(UsageError, match=r"latin\.txt:2: not valid UTF-8"):
        read_user_data(_write(tmp_path, "latin.txt", b"ok\ncaf\xe9\n", mode="wb"))
    assert read_user_data(_write(tmp_path, "bom.jsonl", b'\xef\xbb\xbf{"text": "x"}\n', mode="wb")) == [{"text": "x"}]
    with pytest.raises(UsageError, match=r"empty\.txt: no samples found"):
        read_user_data(_write(tmp_path, "empty.txt", ""))


def test_render_sample(tmp_path):
    from transformers import AutoTokenizer

    from angelcli.tiny.tokenizer import build_small_tokenizer

    tok = AutoTokenizer.from_pretrained(str(build_small_tokenizer(tmp_path / "tok")))
    assert render_sample({"text": "raw"}) == "raw"
    s = render_sample({"messages": [{"role": "user", "content": "U"}]}, tok, add_generation_prompt=True)
    assert s == "<role>SYSTEM</role>detailed thinking off<|role_end|><role>HUMAN</role>U<|role_end|><role>ASSISTANT</role>"
    with pytest.raises(ValueError):
        render_sample({"messages": [{"role": "user", "content": "U"}]})


def test_v3_dedupes_list_items_and_renumbers():
    from angelcli.tiny.corpus_v3 import dedupe_reply

    text = "Signs:\n1. Tiredness\n2. Thirst\n3. tiredness.\n4. Blurred vision\n\nAlso:\n- Thirst\n- Weight loss"
    assert dedupe_reply(text) == "Signs:\n1. Tiredness\n2. Thirst\n3. Blurred vision\n\nAlso:\n- Weight loss"
    assert dedupe_reply("No list here.\nJust text.") == "No list here.\nJust text."


def test_v3_corpus_adds_remedies_and_lay_wordings_deterministically():
    from angelcli.tiny.corpus import generate

    a, b = generate(seed=0, scale=0.2, version=3), generate(seed=0, scale=0.2, version=3)
    assert a == b
    samples = [s for split in a.values() for s in split]
    asked = {s["messages"][-2]["content"]: s["messages"][-1]["content"] for s in samples}
    assert any(q.startswith("How do I get rid of") for q in asked)
    assert any(q.endswith("怎么办？") for q in asked)
    causes = [r for q, r in asked.items() if q.startswith("What causes") and "What helps:" in r]
    assert causes  # symptom causes answers now also say what to do
    v2 = generate(seed=0, scale=0.2, version=2)
    assert sum(len(x) for x in a.values()) > sum(len(x) for x in v2.values())


def test_v4_anchor_names_the_subject_first():
    from angelcli.tiny.corpus_v4 import anchor

    assert anchor("It is diagnosed with blood tests.", "statins", "en") == "Statins: it is diagnosed with blood tests."
    assert anchor("HbA1c is measured.", "type 2 diabetes", "en") == "Type 2 diabetes: HbA1c is measured."  # acronym kept
    kept = "Common symptoms of type 2 diabetes include:\n- Thirst"
    assert anchor(kept, "Type 2 diabetes", "en") == kept  # already named on the first line
    assert anchor("治疗从饮食开始。", "糖尿病", "zh") == "糖尿病：治疗从饮食开始。"


def test_v4_find_name_prefers_the_longest_whole_word_name():
    from angelcli.tiny.corpus import kb_for
    from angelcli.tiny.corpus_v4 import find_name, record_names

    kb = kb_for(4)
    en, zh = record_names(kb, "en"), record_names(kb, "zh")
    assert find_name("What causes Type 2 Diabetes?", en, "en") == "Type 2 Diabetes"
    assert find_name("Are statins safe?", en, "en") == "statins"
    assert find_name("Is coughing bad?", en, "en") == "coughing"  # whole words: not "cough" inside it
    assert find_name("What is the capital of France?", en, "en") is None
    assert find_name("二型糖尿病有哪些常见症状？", zh, "zh") == "二型糖尿病"
    assert "statins" not in record_names(kb_for(3), "en")  # the lay names are v4's only


def test_v4_corpus_anchors_frames_and_stays_deterministic():
    from angelcli.tiny.corpus import generate
    from angelcli.tiny.corpus_v4 import PREFIX

    a, b = generate(seed=0, scale=0.2, version=4), generate(seed=0, scale=0.2, version=4)
    assert a == b
    samples = [s for split in a.values() for s in split]
    singles = [(s["kind"], s["messages"][-2]["content"], s["messages"][-1]["content"]) for s in samples
               if sum(m["role"] == "user" for m in s["messages"]) == 1]
    framed = [q for k, q, _ in singles if k == "medication" and q.startswith(tuple(PREFIX["en"] + PREFIX["zh"]))]
    assert framed  # lay frames around record questions
    assert any(r.startswith("Statins: ") or r.startswith("Atorvastatin") for k, q, r in singles if "statin" in q.lower())
    # every English record answer names its subject on its first line
    from angelcli.tiny.corpus import kb_for
    from angelcli.tiny.corpus_v4 import find_name, record_names

    names = record_names(kb_for(4), "en")
    en = [(q, r) for k, q, r in singles if k in ("condition", "symptom", "medication") and q.isascii()]
    for q, r in en:
        n = find_name(q, names, "en")
        if n is not None:
            assert n.casefold() in r.split("\n", 1)[0][:80 + len(n) + 2].casefold(), (q, r[:100])


def test_v4_every_lay_name_leads_to_its_record():
    """Name swaps: a lay name is asked about at least MIN_NAME_QUESTIONS times, its answers anchored with it and
    drawn from its own record (the first v4 model, with lay names asked about 2-4 times, answered "晚上总是睡不着有什么
    办法？" about a rash)."""
    import random

    from angelcli.tiny.corpus import generate, kb_for
    from angelcli.tiny.corpus_v4 import CONTEXT_ZH, MIN_NAME_QUESTIONS, name_groups, swap_name

    everything = [s for v in generate(seed=0, version=4).values() for s in v]
    pairs = [(m["content"], n["content"]) for s in everything for m, n in zip(s["messages"], s["messages"][1:])
             if m["role"] == "user" and n["role"] == "assistant"]
    for name, lead, own in (("睡不着", "睡不着：", "睡"), ("sugar diabetes", "Sugar diabetes: ", "diabet"),
                            ("statins", "Statins: ", "statin")):
        anchored = [(q, a) for q, a in pairs if name in q.lower() and a.startswith(lead)]
        assert len(anchored) >= MIN_NAME_QUESTIONS, (name, len(anchored))
        assert all(own in a.lower() or own in q.lower() for q, a in anchored)
    assert any(q.startswith(tuple(CONTEXT_ZH)) for q, _ in pairs)  # words before the name, as users write
    demo = [json.loads(line)["prompt"] for f in ("prompts.jsonl", "probe_heldout.jsonl", "probe_blind.jsonl",
                                                         "probe_fresh.jsonl", "probe_plain.jsonl")
            for line in (MEDICAL_DIR / f).read_text(encoding="utf-8").splitlines()]
    assert not set(demo) & {q for q, _ in pairs}  # the probe stays unseen
    groups = name_groups(kb_for(4), "en")
    q, new = swap_name(random.Random(0), "Type 2 diabetes: what is it?", "Type 2 diabetes", groups)
    assert new.casefold() in [n.casefold() for n in groups["type 2 diabetes"]] and new.casefold() != "type 2 diabetes"
    assert q == new + ": what is it?" and new[:1].isupper()  # sentence start stays capitalised
    assert swap_name(random.Random(0), "What is gibberish?", "gibberish", groups) == ("What is gibberish?", "gibberish")


def test_v5_bridged_anchors_name_the_record_after_a_lay_name():
    """Version 5 = version 4 with the record's main name after a lay name in the anchor; nothing else moves."""
    from angelcli.tiny.corpus import generate
    from angelcli.tiny.corpus_v4 import anchor

    assert anchor("它是…", "睡不着", "zh", main="失眠") == "睡不着（失眠）：它是…"
    assert anchor("Muscle aches are common.", "statins", "en", main="atorvastatin") == \
        "Statins (atorvastatin): muscle aches are common."
    assert anchor("Muscle aches.", "Atorvastatin", "en", main="atorvastatin") == "Atorvastatin: muscle aches."
    v4, v5 = generate(seed=0, scale=0.3, version=4), generate(seed=0, scale=0.3, version=5)
    assert [len(x) for x in v4.values()] == [len(x) for x in v5.values()]
    changed = 0
    for a, b in zip(v4["train"], v5["train"]):
        for ma, mb in zip(a["messages"], b["messages"], strict=True):
            if ma == mb:
                continue
            assert ma["role"] == mb["role"] == "assistant"  # same questions, same draws: only answers change
            changed += 1
            ra, rb = ma["content"], mb["content"]
            # "X（main）：answer" / "X (main): answer" is v4's "X：answer" / "X: answer" with the main name inserted
            assert re.sub(r"^([^\n:：（(]+)(（[^）]+）|\s\([^)]+\))([:：])", r"\1\3", rb, count=1) == ra, (ra[:60], rb[:60])
    assert changed > 100


def test_v6_case_answers_name_the_possibility_first():
    from angelcli.tiny.corpus import generate
    from angelcli.tiny.corpus_v6 import possibility_first

    en = ("It is not possible to be sure without an examination, but one possibility is gout. Gout is arthritis.\n\n"
          "Please arrange to see a GP.")
    assert possibility_first(en, "en") == ("One possibility is gout. It is not possible to be sure without an "
                                           "examination. Gout is arthritis.\n\nPlease arrange to see a GP.")
    said = "Many conditions can cause this, so a proper assessment matters. That said, one possibility is flu. Flu is."
    assert possibility_first(said, "en") == ("One possibility is flu. Many conditions can cause this, so a proper "
                                             "assessment matters. Flu is.")
    assert possibility_first("不经过检查很难确定，其中一种可能是痛风。痛风是…", "zh") == "可能是痛风。不经过检查很难确定。痛风是…"
    assert possibility_first("Drink water.", "en") == "Drink water."  # other shapes stay as written
    v5, v6 = generate(seed=0, scale=0.3, version=5), generate(seed=0, scale=0.3, version=6)
    cases = {v: [s for split in d.values() for s in split if s["kind"] == "case"] for v, d in ((5, v5), (6, v6))}
    assert len(cases[6]) > len(cases[5]) + 100
    assert all(s["messages"][-1]["content"].startswith(("One possibility is ", "可能是")) for s in cases[6])
    # nothing but the cases moves: v5's other conversations are all in v6
    rest = {json.dumps(s["messages"], ensure_ascii=False) for split in v5.values() for s in split
            if s["kind"] != "case"}
    assert rest <= {json.dumps(s["messages"], ensure_ascii=False) for split in v6.values() for s in split}


def test_draft_data_adds_unseen_questions_only(splits):
    """Draft-training data: the train split first, then fresh questions none of the shipped splits ask."""
    from angelcli.tiny.draft_data import draft_conversations

    rows = draft_conversations(extra=60, seeds=(1,))
    n = len(splits["train"])
    assert rows[:n] == splits["train"]
    extra = rows[n:]
    assert len(extra) == 60
    asked = set(_users([s for v in splits.values() for s in v]))
    questions = [q for s in extra for q in _users([s])]
    assert len(questions) == 60 and len(set(questions)) == 60  # one question each, no repeats
    assert not asked & set(questions)
    assert {s["kind"] for s in extra} <= {"condition", "symptom", "medication", "case", "triage"}
    assert all(s["messages"][-1]["role"] == "assistant" for s in extra)
    assert draft_conversations(extra=60, seeds=(1,))[n:] == extra  # deterministic


def test_draft_data_can_add_routing_questions_unseen_by_the_corpus(splits):
    """`routing`: questions of the routing examples (other wordings, everyday descriptions) for the draft, each
    a whole conversation whose answer --regenerate replaces; none is asked in the shipped corpus."""
    from angelcli.tiny.draft_data import draft_conversations

    n = len(splits["train"])
    rows = draft_conversations(extra=0, seeds=(1,), routing=40)
    assert rows[:n] == splits["train"] and len(rows) == n + 40
    extra = rows[n:]
    assert {s["kind"] for s in extra} == {"routing"} and {s["lang"] for s in extra} == {"en", "zh"}
    assert all(s["messages"][-1]["role"] == "assistant" and s["messages"][-1]["content"] for s in extra)
    asked = set(_users([s for v in splits.values() for s in v]))
    assert not asked & set(_users(extra))
    assert draft_conversations(extra=0, seeds=(1,), routing=40)[n:] == extra
