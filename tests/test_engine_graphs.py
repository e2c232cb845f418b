"""The triton backend's decode graphs and RoPE table, on CPU.

Graphs: one graph per padded batch size, whatever the cache width. On CPU the capture is replaced by
_EagerReplay (cuda_graphs="replay"): the same static buffers, the same in-graph step metadata, the same
shared logits buffer; only the recording is skipped. So the bookkeeping a CUDA graph depends on (block
table wider than the cache, stale columns, padding rows) is what these tests exercise.
"""

import pytest
import torch

from angelcli.engine import Engine, SamplingParams
from angelcli.fixtures import write_tiny_checkpoint
from angelcli.loader import load_model

SHAPE = dict(vocab_size=128, moe_intermediate_size=128, moe_shared_expert_intermediate_size=128, num_hidden_layers=2)


@pytest.fixture(scope="module")
def bf16_model(tmp_path_factory):
    ck = write_tiny_checkpoint(tmp_path_factory.mktemp("graphs") / "ck", seed=3, tokenizer=False, **SHAPE)
    model, cfg, _ = load_model(ck, dtype=torch.bfloat16)
    return model, cfg


def _chat(engine, turns: int = 4, new: int = 3):
    """Four chat turns at batch 1: each prompt is the whole conversation so far plus a new user message of a
    different length, so every turn's cache has another width. -> (tokens, logprobs) of every reply."""
    history, toks, lps = [], [], []
    for turn in range(turns):
        history += [(7 * turn + j) % 120 + 1 for j in range(2 + 3 * turn)]  # 2, 5, 8, 11 new prompt tokens
        steps = list(engine.generate(list(history), SamplingParams(max_new_tokens=new)))
        history += [s.token_id for s in steps]
        toks.append([s.token_id for s in steps])
        lps.append([s.logprob for s in steps])
    return toks, lps


def test_four_chat_turns_capture_one_graph_and_replay_equals_eager(bf16_model):
    model, cfg = bf16_model
    eager = Engine(model, cfg, backend="triton", max_seq_len=64, cuda_graphs=False)  # kernels, interpreted
    graphs = Engine(model, cfg, backend="triton", max_seq_len=64, cuda_graphs="replay",
                    kv_tokens=256)  # a fixed KV pool, as on CUDA (a growing pool moves and drops the graphs)
    want_t, want_lp = _chat(eager)
    got_t, got_lp = _chat(graphs)
    assert graphs.net.graphs.captures == 1 and list(graphs.net.graphs.graphs) == [(1, 1, (), "greedy")]
    assert eager.net.graphs is None
    assert got_t == want_t
    assert max(abs(a - b) for x, y in zip(got_lp, want_lp) for a, b in zip(x, y)) < 1e-3


def test_graph_batches_pad_and_share_one_logits_buffer(bf16_model):
    """Batch 3 pads to a 4-row graph (padding rows write nothing); rows leaving the batch reuse graphs of
    smaller sizes; every graph writes into the same [graph_max_batch, V] buffer."""
    model, cfg = bf16_model
    prompts = [[5, 9, 3], [17, 2, 8, 40, 11], [60, 1]]
    params = [SamplingParams(max_new_tokens=n) for n in (4, 2, 3)]
    ref = Engine(model, cfg, backend="triton", paged_ops="torch", max_seq_len=32, cuda_graphs=False)
    eng = Engine(model, cfg, backend="triton", paged_ops="torch", max_seq_len=32, cuda_graphs="replay",
                 kv_tokens=256)
    want, got = {}, {}
    for e, out in ((ref, want), (eng, got)):
        for i, step in e.generate_batch(prompts, params):
            out.setdefault(i, []).append(step.token_id)
    assert got == want
    sizes = {key[0] for key in eng.net.graphs.graphs}
    assert sizes <= {1, 2, 4} and 4 in sizes
    assert eng.net.graphs.logits.shape == (eng.net.graph_max_batch, cfg.vocab_size)
    assert eng.net.pool.free_tokens == eng.net.pool.capacity_tokens


def test_eagle_verify_step_runs_in_a_graph(tmp_path):
    """Speculative decoding on the graph path: the verify step (k + 1 tokens, captured layers) replays its own
    graph and the greedy output equals plain decoding."""
    from angelcli.eagle.speculative import SpeculativeEngine
    from tests.test_eagle_speculative import random_draft

    ck = write_tiny_checkpoint(tmp_path / "ck", seed=2, tokenizer=False, **{**SHAPE, "num_hidden_layers": 3})
    model, cfg, _ = load_model(ck, dtype=torch.float32)
    plain = Engine(model, cfg, backend="triton", paged_ops="torch", max_seq_len=64, cuda_graphs=False)
    want = [s.token_id for s in plain.generate([5, 6, 7, 8], SamplingParams(max_new_tokens=12))]
    paged = Engine(model, cfg, backend="triton", paged_ops="torch", max_seq_len=64, cuda_graphs="replay",
                   kv_tokens=256)
    spec = SpeculativeEngine(paged, random_draft(model, cfg), k=3)
    got = [s.token_id for s in spec.generate([5, 6, 7, 8], SamplingParams(max_new_tokens=12))]
    assert got == want
    verify = [key for key in paged.net.graphs.graphs if key[1] == 4]
    assert len(verify) == 1 and verify[0][2]  # one verify graph (T = k + 1), with captured layers


def test_rope_beyond_max_position_embeddings_matches_torch_backend(tmp_path):
    """The old table had max_position_embeddings rows and the kernel read past it; now it covers the run's
    max_seq_len and both backends rotate positions near and beyond the old size identically."""
    ck = write_tiny_checkpoint(tmp_path / "ck", seed=1, tokenizer=False, max_position_embeddings=16, **SHAPE)
    model, cfg, _ = load_model(ck, dtype=torch.float32)
    ids = [(3 * i) % 120 + 1 for i in range(30)]  # positions 0..29 cross the old 16-row table
    ref = Engine(model, cfg, max_seq_len=40).score(ids)
    paged = Engine(model, cfg, backend="triton", paged_ops="torch", max_seq_len=40, prefill_chunk=7)
    assert paged.net.cos_sin.shape[0] >= 40
    assert (paged.score(ids) - ref).abs().max() < 1e-5


def test_rope_kernel_at_positions_beyond_the_old_table(bf16_model):
    """The Triton kernel (interpreted) against its twin at positions 4090..4105 of a 4200-row table."""
    from angelcli.ops import reference
    from angelcli.ops.rope import qk_norm_rope

    model, cfg = bf16_model
    g = torch.Generator().manual_seed(0)
    hq, hkv, d = 4, 2, cfg.head_dim
    qkv = torch.randn(16, (hq + 2 * hkv) * d, generator=g).to(torch.bfloat16)
    pos = torch.arange(4090, 4106)
    table = reference.rope_cache(4200, cfg.rotary_dim, cfg.rope_theta, torch.bfloat16)
    w = torch.rand(d, generator=g).to(torch.bfloat16) + 0.5
    got = qk_norm_rope(qkv, pos, w, w, table, hq, hkv, cfg.rms_norm_eps)
    want = reference.qk_norm_rope(qkv, pos, w, w, table, hq, hkv, cfg.rms_norm_eps)
    for a, b in zip(got, want):
        assert torch.equal(a, b)


def test_engine_does_not_import_draft_code():
    """engine -> eagle.attach -> eagle.speculative -> engine was a cycle: the engine package must not
    import angelcli.eagle at all (not even lazily inside a method); the runtime attaches drafts."""
    import ast
    import subprocess
    import sys
    from pathlib import Path

    import angelcli.engine as pkg

    for path in Path(pkg.__file__).parent.glob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            names = [a.name for a in node.names] if isinstance(node, ast.Import) else \
                [node.module or ""] if isinstance(node, ast.ImportFrom) else []
            assert not any(n.startswith("angelcli.eagle") for n in names), f"{path.name} imports {names}"
    code = ("import sys, angelcli.engine, angelcli.engine.triton_backend, angelcli.engine.tp; "
            "print(any(m.startswith('angelcli.eagle') for m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"


def test_sampling_inside_the_decode_graph_matches_eager(bf16_model):
    """Greedy and seeded sampling run inside the decode graph (argmax / sample_rows + the chosen logprob):
    the same tokens and logprobs as sampling after an eager step, for a batch mixing settings."""
    model, cfg = bf16_model
    prompts = [[5, 9, 3], [17, 2, 8, 40, 11], [60, 1]]
    params = [SamplingParams(max_new_tokens=5, temperature=0.9, top_k=20, seed=3), SamplingParams(max_new_tokens=4),
              SamplingParams(max_new_tokens=5, temperature=1.2, top_p=0.9, seed=4)]
    kw = dict(backend="triton", paged_ops="torch", max_seq_len=32, kv_tokens=256)
    for plist in (params, [SamplingParams(max_new_tokens=4)] * 3):
        runs = []
        for graphs in (False, "replay"):
            eng = Engine(model, cfg, cuda_graphs=graphs, **kw)
            got = {}
            for i, step in eng.generate_batch(prompts, plist):
                got.setdefault(i, []).append((step.token_id, round(step.logprob, 4)))
            runs.append(got)
        assert runs[0] == runs[1]
        modes = {key[3] for key in eng.net.graphs.graphs}
        assert modes == ({"sample"} if plist is params else {"greedy"})
