"""A corpus of corrupt checkpoints and malformed input, tried as a new user would (issue 16).

Every case runs the real CLI entry point (angelcli.cli.main, in process: no interpreter start per case) and
asserts the documented exit code, exactly one `angel: error:` line on stderr that names the file, field,
line or flag, and never an "internal error" or a traceback. Shared fixtures: tests/bad_input_corpus.py.
"""

from __future__ import annotations

import json

import pytest

from bad_input_corpus import assert_clean, corpus, run_cli  # noqa: F401 - corpus is a fixture

CASES = [
    # issue 16.3 / 16.4: messages that used to be internal errors or silently dropped
    ("content-42", ["generate", "--messages", "{tmp}/content_int.json"], 2,
     "messages[0].content: expected a string or a list of text parts, got 42"),
    ("content-null", ["generate", "--messages", "{tmp}/content_null.json"], 2, "messages[0].content"),
    ("content-dict", ["generate", "--messages", "{tmp}/content_dict.json"], 2, "messages[0].content"),
    ("role-doctor", ["generate", "--messages", "{tmp}/role_doctor.json"], 2, "messages[0].role: unknown role 'doctor'"),
    ("role-missing", ["generate", "--messages", "{tmp}/role_missing.json"], 2, "messages[0].role: missing"),
    ("image-part", ["generate", "--messages", "{tmp}/image_part.json"], 2, "messages[0].content[0].type"),
    ("messages-object", ["generate", "--messages", "{tmp}/not_list.json"], 2, "expected a list"),
    ("messages-empty", ["generate", "--messages", "{tmp}/empty_list.json"], 2, "the list is empty"),
    ("messages-string-item", ["generate", "--messages", "{tmp}/item_string.json"], 2, "messages[0]: expected an object"),
    ("messages-broken-json", ["generate", "--messages", "{tmp}/broken.json"], 2, "broken.json: not valid JSON"),
    ("messages-missing-file", ["generate", "--messages", "{tmp}/nope.json"], 2, "nope.json: no such file"),
    ("device-quantum", ["generate", "-p", "hi", "--device", "quantum"], 2, "--device quantum"),
    # issue 16.13: flags that were not validated
    ("max-seq-len-0", ["generate", "-p", "hi", "--max-seq-len", "0"], 2, "--max-seq-len must be >= 1"),
    ("max-seq-len-neg", ["generate", "-p", "hi", "--max-seq-len", "-3"], 2, "--max-seq-len must be >= 1"),
    ("max-seq-len-huge", ["generate", "-p", "hi", "--max-seq-len", "100000"], 2, "max_position_embeddings (4096)"),
    ("empty-prompt", ["generate", "--prompt", ""], 2, "--prompt is empty"),
    ("prompt-too-long", ["generate", "-p", "a fairly long prompt about many things", "--max-seq-len", "8"], 2,
     "does not fit the context of 8 tokens (--max-seq-len"),
    ("draft-k-0", ["generate", "-p", "hi", "--draft-k", "0"], 2, "--draft-k must be >= 1"),
    ("draft-eval-prompts-0", ["draft-eval", "--prompts", "0"], 2, "--prompts must be >= 1"),
    ("verify-max-tokens-0", ["verify", "--max-tokens", "0"], 2, "--max-tokens"),
    # more a user would try
    ("unknown-option", ["generate", "--bogus"], 2, "--bogus"),
    ("unknown-verb", ["frobnicate"], 2, "frobnicate"),
    ("temperature-neg", ["generate", "-p", "hi", "--temperature", "-1"], 2, "--temperature"),
    ("top-p-0", ["generate", "-p", "hi", "--top-p", "0"], 2, "--top-p"),
    ("temperature-nan", ["generate", "-p", "hi", "-t", "nan"], 2, "--temperature must be >= 0 and finite"),
    ("seed-huge", ["generate", "-p", "hi", "-t", "1", "--seed", str(10 ** 24)], 2, "--seed must be a 64-bit integer"),
    ("logprobs-huge", ["generate", "-p", "hi", "--logprobs", "100000"], 2, "--logprobs"),
    ("input-ids-text", ["generate", "--input-ids", "a,b"], 2, "--input-ids"),
    ("input-ids-vocab", ["generate", "--input-ids", "1,999999", "-n", "2"], 2, "999999"),
    ("dtype-bad", ["generate", "-p", "hi", "--dtype", "float64"], 2, "--dtype"),
    ("backend-bad", ["generate", "-p", "hi", "--backend", "cuda-magic"], 2, "--backend"),
    ("model-unknown", ["generate", "no-such-model", "-p", "hi"], 2, "no-such-model"),
    ("batch-missing", ["generate", "--batch", "{tmp}/nope.jsonl"], 2, "nope.jsonl: no such file"),
    ("batch-empty", ["generate", "--batch", "{tmp}/empty.jsonl"], 2, "no requests"),
    ("batch-and-prompt", ["generate", "--batch", "{tmp}/empty.jsonl", "-p", "x"], 2, "--batch cannot be combined"),
    ("quantize-no-format", ["quantize"], 2, "--fp8"),
    ("quantize-workers-neg", ["quantize", "--fp8", "--workers", "-1", "--out", "{tmp}/q-w"], 2, "--workers"),
    ("verify-plot-unwritable", ["verify", "--plot", "/proc/angel.png"], 2, "--plot /proc/angel.png: cannot write"),
    ("pull-bad-repo-id", ["pull", "../x", "--dry-run"], 2, "MODEL '../x' is neither an alias"),
    ("show-not-a-model", ["show", "{tmp}"], 2, "no config.json"),
    # issue 16.5: unwritable output is usage, not resources
    ("quantize-out-proc", ["quantize", "--fp8", "--out", "/proc/angel-x"], 2, "not writable"),
    # issue 16.7: a missing architecture field is named, not blamed on the weights
    ("no-num-experts-generate", ["generate", "{no_experts}", "-p", "hi"], 2, "'num_experts' is missing"),
    ("no-num-experts-quantize", ["quantize", "{no_experts}", "--fp8", "--out", "{tmp}/q-ne"], 2,
     "'num_experts' is missing"),
    ("no-num-experts-verify", ["verify", "{no_experts}", "--static"], 2, "num_experts"),
    # later Ling generations are named
    ("bailing-hybrid", ["generate", "{hybrid}", "-p", "hi"], 2,
     "architecture bailing_hybrid is not supported by angel's engine; serve it with SGLang"),
    ("ling-2.5", ["verify", "{v25}", "--static"], 2, "architecture BailingMoeV2_5ForCausalLM is not supported"),
    ("ling-3", ["quantize", "{v3}", "--fp8", "--out", "{tmp}/q-v3"], 2, "serve it with SGLang"),
    ("config-not-json", ["generate", "{bad_json_cfg}", "-p", "hi"], 2, "config.json"),
    ("config-string-field", ["generate", "{str_experts}", "-p", "hi"], 2, "'num_experts' must be a positive integer"),
    ("tokenizer-corrupt", ["generate", "{bad_tok}", "-p", "hi", "-n", "2"], 2, "cannot load the tokenizer"),
    ("chat-template-broken", ["generate", "{bad_tpl}", "-p", "hi", "-n", "2"], 2,
     "tokenizer_config.json: the chat template failed"),
    ("chat-template-broken-chat", ["chat", "{bad_tpl}", "--once", "hi", "-n", "2"], 2, "the chat template failed"),
    ("chat-once-empty", ["chat", "--once", " "], 2, "--once: the message is empty"),
    ("generation-config-not-json", ["generate", "{bad_gen}", "-p", "hi", "-n", "2"], 2, "generation_config.json"),
    ("input-ids-negative", ["generate", "--input-ids", "5,-1"], 2, "--input-ids: token ids are >= 0"),
    # integrity: exit 3 naming the file / tensor
    ("truncated-shard", ["generate", "{truncated}", "-p", "hi"], 3, "model-00002-of-00002.safetensors"),
    ("truncated-shard-verify", ["verify", "{truncated}", "--static"], 3, "model-00002-of-00002.safetensors"),
    ("missing-shard", ["generate", "{no_shard}", "-p", "hi"], 3, "model-00001-of-00002.safetensors"),
    ("garbage-shard", ["generate", "{garbage_shard}", "-p", "hi"], 3, "model-00001-of-00002.safetensors"),
    ("empty-shard", ["verify", "{empty_shard}", "--static"], 3, "model-00002-of-00002.safetensors"),
    ("index-not-a-map", ["generate", "{bad_index}", "-p", "hi"], 3, "model.safetensors.index.json"),
    ("flipped-byte", ["verify", "{flipped}", "--static"], 3, "model-00001-of-00002.safetensors: sha256 mismatch"),
    ("flipped-byte-only", ["verify", "{flipped}", "--checksums-only"], 3, "sha256 mismatch"),
    ("bad-checksum-file", ["verify", "{bad_sums}", "--checksums-only"], 3, "checksums.sha256:1"),
    # issue 16.2: NaN / inf weights
    ("nan-generate", ["generate", "{nan}", "-p", "hello there", "-n", "8", "--json", "--logprobs", "2"], 3,
     "non-finite logits"),
    ("inf-generate", ["generate", "{inf}", "-p", "hello there", "-n", "8"], 3, "first non-finite output: model.layers.1"),
    ("nan-deep", ["verify", "{nan}", "--static", "--deep"], 3, "model.layers.1.mlp.experts.0.down_proj.weight"),
    ("nan-routing", ["verify", "{nan}", "--max-tokens", "8"], 3, "forward.finite"),
    ("nan-quantize", ["quantize", "{nan}", "--fp8", "--out", "{tmp}/q-nan", "--no-report"], 3,
     "model.layers.1.mlp.experts.0.down_proj.weight holds NaN or inf"),
]


@pytest.mark.parametrize("case, argv, code, needle", CASES, ids=[c[0] for c in CASES])
def test_bad_input_corpus(corpus, capsys, case, argv, code, needle):
    argv = [a.format(**{k: v for k, v in corpus.items()}) for a in argv]
    got, out, err = run_cli(capsys, argv)
    assert_clean(got, err, code, needle)
    if case == "nan-generate":
        assert "NaN" not in out and "<|startoftext|>" not in out  # nothing emitted from the broken logits


@pytest.mark.parametrize("case, argv, needle", [
    ("text-parts", ["generate", "--messages", "{tmp}/parts.json", "-n", "2", "--json"], '"prompt_ids"'),
    ("bailing-moe-v2-type", ["verify", "{v2type}", "--static", "--no-checksums"], "OK"),
    ("no-record", ["verify", "{no_record}", "--static"], "integrity could not be checked"),
    ("show-tiny", ["show", "angel-tiny"], "angel-tiny"),
    ("show-default", ["show"], "angel-tiny"),
])
def test_good_input_still_works(corpus, capsys, case, argv, needle):
    argv = [a.format(**{k: v for k, v in corpus.items()}) for a in argv]
    got, out, err = run_cli(capsys, argv)
    assert got == 0, err
    assert needle in out + err


# -- issue 16.9: a bad --batch line costs only itself ------------------------------------------------------------
def test_batch_bad_lines_are_reported_in_place_and_the_rest_is_written(corpus, capsys):
    code, out, err = run_cli(capsys, ["generate", "--batch", corpus["tmp"] / "batch.jsonl"])
    rows = [json.loads(line) for line in out.splitlines()]
    assert code == 2 and "internal error" not in err
    assert [r.get("line") for r in rows] == [None, 2, 3, None, 5, 6, 7, 8, None]  # file order, nothing lost
    assert [r["id"] for r in rows] == ["a", 1, 2, 3, 4, 5, 6, 7, 99]
    good = [r for r in rows if "error" not in r]
    assert len(good) == 3 and all(r["ids"] for r in good)
    errs = {r["line"]: r["error"] for r in rows if "error" in r}
    assert "batch.jsonl:2: max_new_tokens must be an integer >= 0, got -1" in errs[2]
    assert "batch.jsonl:3: not valid JSON" in errs[3]
    assert "batch.jsonl:5: messages[0].content" in errs[5]
    assert "1000000000 is outside the vocabulary" in errs[6]
    assert "temperature must be a number >= 0" in errs[7]
    assert "unknown field 'colour'" in errs[8]
    lines = [line for line in err.splitlines() if line.startswith("angel: error:")]
    assert len(lines) == 1 and "6 of 9 line(s) failed" in lines[0]


def test_batch_with_only_bad_lines_does_not_load_the_model(corpus, capsys, monkeypatch):
    import angelcli.runtime

    monkeypatch.setattr(angelcli.runtime, "open_runtime", lambda *a, **k: pytest.fail("model loaded"))
    code, out, err = run_cli(capsys, ["generate", "--batch", corpus["tmp"] / "all_bad.jsonl"])
    rows = [json.loads(line) for line in out.splitlines()]
    assert code == 2 and [r["line"] for r in rows] == [1, 2]
    assert "'prompt' must be a string" in rows[0]["error"] and "must be a JSON object" in rows[1]["error"]


# -- issue 16.8 / 16.12: piped chat sees failed slash commands; /save never creates directories ---------------------
def test_piped_chat_exits_2_after_failed_slash_commands(corpus, capsys, monkeypatch):
    nowhere = corpus["tmp"] / "no-such-dir" / "x.md"
    script = f"/load {corpus['tmp']}/role_doctor.json\n/save {nowhere}\nWhat is a fever?\n"
    code, out, err = run_cli(capsys, ["chat", "--no-disclaimer", "-n", "4"], stdin=script, monkeypatch=monkeypatch)
    assert code == 2, err
    assert "messages[0].role: unknown role 'doctor'" in err
    assert f"directory {nowhere.parent} does not exist" in err
    assert not nowhere.parent.exists()
    assert out.strip()  # the question after the failed commands was still answered
