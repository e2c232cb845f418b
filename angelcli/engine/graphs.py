"""CUDA graphs for the triton backend's small steps: decode (T = 1) and EAGLE3 verify (T = k + 1 with the
draft's captured layers), one graph per (padded batch size, tokens per row, captured layers).

A decode run therefore has ONE graph per padded batch size, whatever the cache width, and a speculative run
one more for its verify step. What makes a graph independent of the request:

    ids [size * T], seq_lens [size], table [size, width]   static inputs; width = blocks for max_seq_len
                                                            (a narrower cache fills its left columns; the
                                                            rest is stale and never read: attention and
                                                            the KV write are bounded by seq_lens)
    positions, slots, cu_seqlens_q                          computed inside the graph from the inputs
    logits                                                  decode: rows of one [max batch, V] fp32 buffer
                                                            shared by every size (the planner counts it);
                                                            verify: its own [size * T, V] buffer
    hidden[i]                                               verify: static copies of the captured layers
    sampled ids, their logprob                              decode with the engine's sampling settings
                                                            (static per-row temperature / top-k / top-p /
                                                            seed / step): argmax or sample_rows, then the
                                                            chosen token's logprob, inside the graph

Padding rows (seq_len 0) write no KV (slot -1) and attend to a dummy context whose output is discarded.
Capture happens on first use after two warm-up runs on a side stream (Triton compiles, cuBLAS chooses its
algorithms); all graphs share one memory pool. On CPU (tests) `_EagerReplay` stands in for the graph: the
same buffers and in-graph metadata, only the recording is skipped.
"""

from __future__ import annotations

import torch

from angelcli.engine.paged_cache import BlockPool, PagedKVCache, StepInput
from angelcli.model.bailing import ForwardOutput

GRAPH_BATCHES = (1, 2, 4, 8, 16, 24, 32, 48, 64)
MAX_VERIFY_TOKENS = 16  # verify steps (T = k + 1) up to this many tokens per row run in a graph


class _EagerReplay:
    """Stands in for torch.cuda.CUDAGraph where graphs cannot be captured (CPU tests): replay() re-runs the
    captured function on the same static buffers, which is what a graph replay does."""

    def __init__(self, run):
        self.run = run

    def replay(self) -> None:
        self.run()


class StepGraphs:
    def __init__(self, net, max_batch: int, mode):
        """net: the PagedModel; mode: True (CUDA graphs) or "replay" (the CPU stand-in)."""
        self.net, self.max_batch, self.mode = net, max_batch, mode
        self.graphs: dict[tuple, tuple] = {}  # (size, T, layers, sampling mode) -> (graph, bufs)
        self.captures = 0
        self.logits: torch.Tensor | None = None  # [max_batch, V] fp32, the decode graphs' shared output
        self._pool = None
        self._generation = 0

    def usable(self, B: int, T: int, cache: PagedKVCache, capture_layers, return_router: bool,
               last_only: bool) -> bool:
        """Decode steps, and verify steps (several tokens of one row with captured layers, every position's
        logits); prefill chunks (last_only) and router captures run eagerly."""
        verify = T > 1 and B == 1 and T <= MAX_VERIFY_TOKENS and bool(capture_layers) and not last_only
        return (T == 1 or verify) and not return_router and B <= self.max_batch and cache.max_blocks <= self.width

    @property
    def width(self) -> int:
        """Columns of the static block table: enough blocks for max_seq_len tokens."""
        return -(-self.net.max_seq_len // self.net.block_size)

    def clear(self) -> None:
        self.graphs.clear()

    def run(self, input_ids: torch.Tensor, cache: PagedKVCache, capture_layers: tuple[int, ...],
            last_only: bool, sampling=None) -> ForwardOutput:
        """input_ids [B, T] (cache.reserve(T) done) -> ForwardOutput like PagedModel.__call__ (cache not advanced).
        sampling (decode only): ("greedy", None) or ("sample", engine.sampling.sampling_tensors(...) of the B
        rows); the sampled ids [B] and their logprobs [B] come back as out.sampled."""
        B, T = input_ids.shape
        if self._generation != cache.pool.generation:  # the pool grew: graphs hold old addresses
            self.graphs.clear()
            self._generation = cache.pool.generation
        size = next(s for s in [s for s in GRAPH_BATCHES if s < self.max_batch] + [self.max_batch] if s >= B)
        mode = "logits" if sampling is None else sampling[0]
        key = (size, T, tuple(capture_layers), mode)
        if key not in self.graphs:
            self.graphs[key] = self._capture(size, T, key[2], mode, cache.pool)
            self.captures += 1
        graph, (ids, seq_lens, table, logits, hidden, knobs, picked, picked_lp) = self.graphs[key]
        lens = torch.tensor(cache.row_lens, dtype=torch.int32).to(self.net.device, non_blocking=True)
        ids.view(size, T)[:B].copy_(input_ids)
        seq_lens[:B].copy_(lens + T)
        table[:B, : cache.max_blocks].copy_(cache.block_table)
        seq_lens[B:].fill_(0)  # padding rows: slot -1 (no write), output discarded
        if mode == "sample":
            for buf, val in zip(knobs, sampling[1]):
                buf[:B].copy_(val)
        graph.replay()
        out = logits[: B * T].view(B, T, -1)
        out = out[:, -1:] if last_only else out
        # with sampling done in the graph the caller reads the logits (top-k logprobs) before the next step:
        # a view of the static buffer then, instead of copying [B, V] fp32 every step
        out = ForwardOutput(logits=out if sampling is not None else out.clone())
        out.hidden = {i: buf[: B * T].view(B, T, -1).clone() for i, buf in hidden.items()}
        out.sampled = None if mode == "logits" else (picked[:B].clone(), picked_lp[:B].clone())
        return out

    def _capture(self, size: int, T: int, layers: tuple[int, ...], mode: str, pool: BlockPool):
        net = self.net
        dev, bs, width = net.device, net.block_size, self.width
        ids = torch.zeros(size * T, dtype=torch.long, device=dev)
        seq_lens = torch.zeros(size, dtype=torch.int32, device=dev)  # 0 = padding row
        table = torch.zeros(size, width, dtype=torch.int32, device=dev)
        if T == 1:
            if self.logits is None:
                self.logits = torch.empty(self.max_batch, net.cfg.vocab_size, dtype=torch.float32, device=dev)
            logits = self.logits[:size]
        else:
            logits = torch.empty(size * T, net.cfg.vocab_size, dtype=torch.float32, device=dev)
        hidden = {i: torch.empty(size * T, net.cfg.hidden_size, dtype=net.dtype, device=dev) for i in layers}
        # sampling inputs (padding rows: greedy, so they never sort) and outputs
        knobs = (torch.ones(size, device=dev), torch.ones(size, dtype=torch.int64, device=dev),
                 torch.ones(size, device=dev), torch.ones(size, dtype=torch.bool, device=dev),
                 torch.zeros(size, dtype=torch.int64, device=dev), torch.zeros(size, dtype=torch.int64, device=dev))
        picked = torch.zeros(size, dtype=torch.int64, device=dev)
        picked_lp = torch.zeros(size, dtype=torch.float32, device=dev)

        def step_from_buffers() -> StepInput:
            valid = seq_lens > 0
            ctx = torch.where(valid, seq_lens, torch.full_like(seq_lens, T))  # padding: a dummy context of T
            pos = (ctx.long()[:, None] - T + torch.arange(T, device=dev)[None]).reshape(-1)  # [size * T]
            row = torch.arange(size, device=dev).repeat_interleave(T)
            slot = table[row, pos // bs].long() * bs + pos % bs
            slot = torch.where(valid[row], slot, torch.full_like(slot, -1))
            return StepInput(positions=pos, slot_mapping=slot, seq_lens=ctx,
                             cu_seqlens_q=torch.arange(0, size * T + 1, T, dtype=torch.int32, device=dev),
                             block_table=table, tokens_per_row=T, max_context=width * bs)

        def run():
            out = ForwardOutput(logits=None) if layers else None  # type: ignore[arg-type]
            h = net.forward_tokens(ids, step_from_buffers(), pool, layers, out)
            logits.copy_(net._logits(h, cast=False))  # the fp32 cast is this copy
            for i in layers:
                hidden[i].copy_(out.hidden[i])
            if mode != "logits":
                from angelcli.engine.sampling import sample_rows

                picked.copy_(logits.argmax(dim=-1) if mode == "greedy" else sample_rows(logits, *knobs))
                picked_lp.copy_(torch.log_softmax(logits, dim=-1).gather(1, picked[:, None]).squeeze(1))

        bufs = (ids, seq_lens, table, logits, hidden, knobs, picked, picked_lp)
        if self.mode == "replay" or dev.type != "cuda":
            return _EagerReplay(run), bufs
        stream = torch.cuda.Stream()
        stream.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(stream):
            for _ in range(2):  # warm up: triton compiles, cuBLAS picks algorithms, outside the capture
                run()
        torch.cuda.current_stream().wait_stream(stream)
        graph = torch.cuda.CUDAGraph()
        if self._pool is None:
            self._pool = torch.cuda.graph_pool_handle()  # one memory pool shared by all graphs
        with torch.cuda.graph(graph, pool=self._pool):
            run()
        return graph, bufs
