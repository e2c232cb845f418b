"""`just bench-serve`: throughput and latency of `angel serve` at several concurrencies, measured in one run.

    python -m angelcli.serve.bench [--url http://127.0.0.1:8000] [--concurrency 1,4,8,16] [--max-tokens 64]

Without --url it starts `angel serve` itself (angel-tiny on CPU, --threads 1) on a free loopback port.
Each level runs `concurrency` clients, each sending streamed chat requests back to back until the level's
request count is done; every request generates exactly --max-tokens tokens (`ignore_eos`), so levels are
comparable. Reports output tokens/s, time to first token and request latency (p50 / p90), and the
throughput of each level relative to concurrency 1 (ratios, as the machine may be shared).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import socket
import subprocess
import sys
import time

PROMPTS = ["What are common symptoms of type 2 diabetes?", "How is hypertension treated?",
           "What causes a fever in children?", "When should a cough be checked by a doctor?",
           "What is the difference between a virus and a bacterium?", "How does insulin work?",
           "What are the risk factors for stroke?", "How can I lower my cholesterol?"]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_server(args) -> tuple[subprocess.Popen, str]:
    port = free_port()
    cmd = [sys.executable, "-m", "angelcli", "serve", args.model, "--port", str(port), "--device", "cpu",
           "--threads", str(args.threads), "--max-batch", str(max(args.levels))]
    if args.draft:
        cmd.append("--draft")
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=sys.stderr)
    url = f"http://127.0.0.1:{port}"
    import httpx

    for _ in range(600):
        if proc.poll() is not None:
            raise SystemExit(f"angel serve exited with status {proc.returncode}")
        try:
            if httpx.get(url + "/health", timeout=1).status_code == 200:
                return proc, url
        except httpx.HTTPError:
            pass
        time.sleep(0.2)
    proc.terminate()
    raise SystemExit("angel serve did not come up within 120 s")


async def one(client, url: str, prompt: str, max_tokens: int) -> tuple[float, float, int]:
    """-> (time to first token, latency, completion tokens) of one streamed chat request."""
    body = {"messages": [{"role": "user", "content": prompt}], "max_tokens": max_tokens, "temperature": 0,
            "stream": True, "stream_options": {"include_usage": True}, "ignore_eos": True}
    t0 = time.perf_counter()
    ttft, tokens = None, 0
    async with client.stream("POST", url + "/v1/chat/completions", json=body) as r:
        r.raise_for_status()
        async for line in r.aiter_lines():
            if not line.startswith("data: ") or line == "data: [DONE]":
                continue
            d = json.loads(line[6:])
            if ttft is None and d.get("choices") and d["choices"][0]["delta"].get("content"):
                ttft = time.perf_counter() - t0
            if d.get("usage"):
                tokens = d["usage"]["completion_tokens"]
    return ttft or 0.0, time.perf_counter() - t0, tokens


async def level(url: str, conc: int, requests: int, max_tokens: int) -> dict:
    import httpx

    todo = list(range(requests))
    results = []

    async def worker(client):
        while todo:
            i = todo.pop()
            results.append(await one(client, url, PROMPTS[i % len(PROMPTS)], max_tokens))

    async with httpx.AsyncClient(timeout=600, limits=httpx.Limits(max_connections=conc + 4)) as client:
        t0 = time.perf_counter()
        await asyncio.gather(*(worker(client) for _ in range(conc)))
        wall = time.perf_counter() - t0

    def pct(xs, q):
        xs = sorted(xs)
        return xs[min(len(xs) - 1, int(q * len(xs)))]

    toks = sum(r[2] for r in results)
    return {"concurrency": conc, "requests": len(results), "tokens": toks, "wall_s": round(wall, 3),
            "tokens_per_s": round(toks / wall, 2), "ttft_p50_ms": round(pct([r[0] for r in results], .5) * 1000, 1),
            "ttft_p90_ms": round(pct([r[0] for r in results], .9) * 1000, 1),
            "latency_p50_s": round(pct([r[1] for r in results], .5), 3),
            "latency_p90_s": round(pct([r[1] for r in results], .9), 3)}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--url", help="a running server (default: start angel serve on angel-tiny)")
    ap.add_argument("--model", default="angel-tiny")
    ap.add_argument("--concurrency", default="1,4,8,16")
    ap.add_argument("--max-tokens", type=int, default=64)
    ap.add_argument("--rounds", type=int, default=2, help="requests per client at each level")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--draft", action="store_true", help="speculate with the attached draft (off on CPU by default)")
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args(argv)
    args.levels = [int(x) for x in args.concurrency.split(",")]
    proc = None
    url = args.url
    if url is None:
        proc, url = start_server(args)
    try:
        asyncio.run(level(url, 1, 1, 8))  # warm-up
        rows = [asyncio.run(level(url, c, max(c * args.rounds, 4), args.max_tokens)) for c in args.levels]
    finally:
        if proc is not None:
            proc.terminate()
            proc.wait(timeout=30)
    base = rows[0]["tokens_per_s"] or 1e-9
    for r in rows:
        r["vs_first"] = round(r["tokens_per_s"] / base, 2)
    if args.json:
        print(json.dumps({"url": url, "max_tokens": args.max_tokens, "levels": rows}))
        return 0
    print(f"angel serve at {url}: streamed chat, {args.max_tokens} tokens per request, greedy")
    print(f"{'conc':>5} {'reqs':>5} {'tok/s':>9} {'x c1':>6} {'TTFT p50':>9} {'TTFT p90':>9} {'lat p50':>8} {'lat p90':>8}")
    for r in rows:
        print(f"{r['concurrency']:>5} {r['requests']:>5} {r['tokens_per_s']:>9.1f} {r['vs_first']:>6.2f} "
              f"{r['ttft_p50_ms']:>7.0f}ms {r['ttft_p90_ms']:>7.0f}ms {r['latency_p50_s']:>7.2f}s {r['latency_p90_s']:>7.2f}s")
    return 0


if __name__ == "__main__":
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    raise SystemExit(main())
