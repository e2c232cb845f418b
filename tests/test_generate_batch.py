"""`angel generate --batch` decodes its requests together and returns what one-at-a-time runs return."""

from dataclasses import replace

from angelcli.engine import SamplingParams
from angelcli.generate import GenRequest, run_batch, run_request
from angelcli.runtime import open_runtime


def test_run_batch_equals_run_request(tiny_ckpt):
    rt = open_runtime(str(tiny_ckpt), device="cpu")
    jobs = [(GenRequest(input_ids=[5, 9, 100, 7]), {}),
            (GenRequest(prompt="What causes fever?"), {"max_new_tokens": 3}),
            (GenRequest(input_ids=[1, 2]), {"logprobs": 2, "max_new_tokens": 5})]
    params = SamplingParams(max_new_tokens=6)
    batch = run_batch(rt, jobs, params)
    for (req, over), got in zip(jobs, batch):
        want = run_request(rt, req, replace(params, **over))
        for key in ("prompt_ids", "ids", "text", "finish_reason"):
            assert got[key] == want[key], key
        if want["logprobs"]:  # the same top ids per step (values agree to float rounding)
            assert [[i for i, _ in x] for x in got["logprobs"]] == [[i for i, _ in x] for x in want["logprobs"]]
        assert got["stats"]["generated_tokens"] == len(got["ids"])


def test_stats_are_filled_when_the_consumer_stops_at_the_last_token(tiny_ckpt):
    rt = open_runtime(str(tiny_ckpt), device="cpu")
    out = run_request(rt, GenRequest(input_ids=[4, 8, 15]), SamplingParams(max_new_tokens=4))
    assert out["stats"]["prompt_tokens"] == 3 and out["stats"]["generated_tokens"] == len(out["ids"]) == 4
