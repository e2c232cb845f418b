"""`angel serve` end to end: a real server subprocess on a loopback port, driven by the `openai` client."""

import json
import os
import socket
import subprocess
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import pytest

openai = pytest.importorskip("openai")
httpx = pytest.importorskip("httpx")

KEY = "sk-test-angel"
QUESTIONS = ["What is a fever?", "How is hypertension treated?", "What causes a cough?", "What is insulin?",
             "How do I lower cholesterol?", "What is asthma?", "What are symptoms of flu?", "What is anemia?"]
N = 12  # tokens per reply: enough to compare texts, cheap on CPU


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _start(*extra, env=None):
    port = _free_port()
    cmd = [sys.executable, "-m", "angelcli", "serve", "--port", str(port), "--device", "cpu", "--threads", "1",
           *extra]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            env={**os.environ, **(env or {})})
    url = f"http://127.0.0.1:{port}"
    for _ in range(900):
        if proc.poll() is not None:
            raise AssertionError(f"angel serve exited {proc.returncode}: {proc.stderr.read()}")
        try:
            if httpx.get(url + "/health", timeout=1).status_code == 200:
                return proc, url
        except httpx.HTTPError:
            time.sleep(0.2)
    proc.kill()
    raise AssertionError("angel serve did not start")


def _stop(proc):
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()


@pytest.fixture(scope="module")
def server():
    proc, url = _start("--api-key", KEY, "--max-batch", "8", "--max-queue", "2", "--draft")
    yield url
    _stop(proc)


@pytest.fixture(scope="module")
def client(server):
    return openai.OpenAI(base_url=server + "/v1", api_key=KEY, max_retries=0, timeout=120)


@pytest.fixture(scope="module")
def generate_texts():
    """What `angel generate --messages` returns, greedy, one request at a time (its own code path)."""
    from angelcli.engine import SamplingParams
    from angelcli.generate import GenRequest, run_request
    from angelcli.runtime import open_runtime

    rt = open_runtime(None, device="cpu", use_draft=None)
    return [run_request(rt, GenRequest(messages=[{"role": "user", "content": q}]),
                        SamplingParams(max_new_tokens=N))["text"] for q in QUESTIONS]


def _chat(client, q, **kw):
    return client.chat.completions.create(model="angel-tiny", messages=[{"role": "user", "content": q}],
                                          max_tokens=N, temperature=0, **kw)


def _stream_text(client, q, **kw):
    parts, finish, usage = [], None, None
    for ch in _chat(client, q, stream=True, stream_options={"include_usage": True}, **kw):
        if ch.usage:
            usage = ch.usage
        for c in ch.choices:
            parts.append(c.delta.content or "")
            finish = c.finish_reason or finish
    return "".join(parts), finish, usage


def test_chat_equals_generate_streamed_and_not(client, generate_texts):
    r = _chat(client, QUESTIONS[0])
    msg = r.choices[0].message
    assert msg.content == generate_texts[0] and msg.content
    assert r.usage.completion_tokens == N and r.usage.prompt_tokens > 0
    assert r.usage.total_tokens == r.usage.prompt_tokens + N
    text, finish, usage = _stream_text(client, QUESTIONS[0])
    assert text == generate_texts[0] and finish == "length" and usage.completion_tokens == N


def test_eight_concurrent_streams_get_their_sequential_texts(client, generate_texts):
    with ThreadPoolExecutor(8) as ex:
        got = list(ex.map(lambda q: _stream_text(client, q)[0], QUESTIONS))
    assert got == generate_texts


def test_completions_models_metrics_and_stop(client, server):
    ids = [5, 9, 100, 7]
    r = client.completions.create(model="angel-tiny", prompt=ids, max_tokens=4, temperature=0, logprobs=2)
    assert r.usage.prompt_tokens == 4 and r.usage.completion_tokens == 4
    assert len(r.choices[0].logprobs.tokens) == 4 and all(len(t) <= 2 for t in r.choices[0].logprobs.top_logprobs)
    assert [m.id for m in client.models.list().data] == ["angel-tiny"]
    full = _chat(client, QUESTIONS[0]).choices[0].message.content
    cut = full.split()[2]
    r = _chat(client, QUESTIONS[0], stop=[cut])
    assert r.choices[0].finish_reason == "stop" and r.choices[0].message.content == full[: full.index(cut)]
    r = _chat(client, QUESTIONS[0], logprobs=True, top_logprobs=3)
    lp = r.choices[0].logprobs.content
    assert len(lp) == N and all(len(e.top_logprobs) == 3 and e.logprob <= 0 for e in lp)
    text = httpx.get(server + "/metrics", headers={"Authorization": f"Bearer {KEY}"}).text
    for name in ("angel_requests_total", "angel_generation_tokens_total", "angel_queue_depth", "angel_batch_size",
                 "angel_generation_tokens_per_second", "angel_spec_acceptance_length"):
        assert f"\n{name}{{" in text, name


def _metric(server, name, **labels):
    text = httpx.get(server + "/metrics", headers={"Authorization": f"Bearer {KEY}"}).text
    total = 0.0
    for line in text.splitlines():
        if line.startswith(name + "{") and all(f'{k}="{v}"' in line for k, v in labels.items()):
            total += float(line.rsplit(" ", 1)[1])
    return total


def test_disconnect_cancels_the_request(server):
    before = _metric(server, "angel_requests_total", finish_reason="cancelled")
    tokens_before = _metric(server, "angel_generation_tokens_total")
    body = {"messages": [{"role": "user", "content": "Tell me everything."}], "max_tokens": 3000,
            "ignore_eos": True, "stream": True}
    with httpx.stream("POST", server + "/v1/chat/completions", json=body,
                      headers={"Authorization": f"Bearer {KEY}"}, timeout=60) as r:
        lines = r.iter_lines()
        got = [next(lines) for _ in range(8)]
        assert any("content" in g for g in got)
    deadline = time.monotonic() + 10
    while _metric(server, "angel_requests_total", finish_reason="cancelled") == before:
        assert time.monotonic() < deadline, "the request was not cancelled"
        time.sleep(0.05)
    assert _metric(server, "angel_batch_size") == 0
    made = _metric(server, "angel_generation_tokens_total") - tokens_before
    time.sleep(0.3)
    assert _metric(server, "angel_generation_tokens_total") - tokens_before == made < 3000  # it stopped


def test_error_statuses(server, client):
    auth = {"Authorization": f"Bearer {KEY}"}
    chat = server + "/v1/chat/completions"
    ok = {"messages": [{"role": "user", "content": "hi"}], "max_tokens": 2}

    def err(resp, status):
        assert resp.status_code == status, resp.text
        e = resp.json()["error"]
        assert set(e) == {"message", "type", "param", "code"}
        return e

    assert httpx.get(server + "/health").status_code == 200  # no key needed
    assert err(httpx.post(chat, json=ok), 401)["code"] == "invalid_api_key"
    assert err(httpx.post(chat, json=ok, headers={"Authorization": "Bearer wrong"}), 401)
    assert err(httpx.get(server + "/metrics"), 401)
    with pytest.raises(openai.AuthenticationError):
        openai.OpenAI(base_url=server + "/v1", api_key="nope", max_retries=0).models.list()
    e = err(httpx.post(chat, json={**ok, "temperature": 7}, headers=auth), 400)
    assert e["param"] == "temperature"
    e = err(httpx.post(chat, json={"messages": [{"role": "robot", "content": "x"}]}, headers=auth), 400)
    assert e["param"] == "messages[0].role"
    assert err(httpx.post(chat, json={**ok, "n": 2}, headers=auth), 400)["param"] == "n"
    assert err(httpx.post(chat, json={**ok, "stop": list("abcde")}, headers=auth), 400)["param"] == "stop"
    assert err(httpx.post(chat, content=b"{not json", headers=auth), 400)
    with pytest.raises(openai.NotFoundError) as nf:
        client.chat.completions.create(model="gpt-4o", messages=[{"role": "user", "content": "x"}], max_tokens=1)
    assert nf.value.code == "model_not_found"
    with pytest.raises(openai.BadRequestError) as big:
        client.chat.completions.create(model="angel-tiny", messages=[{"role": "user", "content": "fever " * 5000}],
                                       max_tokens=1)
    assert big.value.code == "context_length_exceeded"
    assert err(httpx.post(chat, content=b" " * (16 * 2**20 + 1), headers={**auth, "Content-Type": "application/json"}),
               413)
    assert err(httpx.get(server + "/v1/nowhere", headers=auth), 404)


def test_queue_full_is_503(server):
    """8 running + 2 waiting fill --max-batch 8 --max-queue 2; the next request gets 503. Closing the streams
    cancels them all."""
    auth = {"Authorization": f"Bearer {KEY}"}
    body = {"messages": [{"role": "user", "content": "Go on."}], "max_tokens": 3000, "ignore_eos": True,
            "stream": True}
    stack, streams = [], []
    c = httpx.Client(timeout=60, headers=auth)
    try:
        for _ in range(10):
            cm = c.stream("POST", server + "/v1/chat/completions", json=body)
            streams.append(cm.__enter__())
            stack.append(cm)
        deadline = time.monotonic() + 20
        while _metric(server, "angel_batch_size") < 8 or _metric(server, "angel_queue_depth") < 2:
            assert time.monotonic() < deadline
            time.sleep(0.05)
        r = c.post(server + "/v1/chat/completions", json={**body, "stream": False, "max_tokens": 1})
        assert r.status_code == 503 and r.json()["error"]["code"] == "queue_full"
    finally:
        for cm in stack:
            cm.__exit__(None, None, None)
        c.close()
    deadline = time.monotonic() + 20
    while _metric(server, "angel_batch_size") or _metric(server, "angel_queue_depth"):
        assert time.monotonic() < deadline
        time.sleep(0.05)


def test_sigterm_drains_and_exits_0():
    proc, url = _start("--shutdown-timeout", "3")
    try:
        body = {"messages": [{"role": "user", "content": "Go on."}], "max_tokens": 3000, "ignore_eos": True,
                "stream": True}
        seen = []

        def consume():
            try:
                with httpx.stream("POST", url + "/v1/chat/completions", json=body, timeout=60) as r:
                    for line in r.iter_lines():
                        seen.append(line)
            except httpx.HTTPError:
                seen.append("closed")

        t = threading.Thread(target=consume)
        t.start()
        while len(seen) < 6:
            time.sleep(0.02)
        t0 = time.monotonic()
        proc.terminate()
        assert proc.wait(timeout=30) == 0
        assert time.monotonic() - t0 < 20
        t.join(10)
        with pytest.raises(httpx.HTTPError):
            httpx.get(url + "/health", timeout=2)
    finally:
        _stop(proc)
