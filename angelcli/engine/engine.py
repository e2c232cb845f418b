"""The engine: token ids in, token ids out. It never imports the tokenizer.

    engine = Engine(model, cfg, device="cpu")                       # backend "torch" (the reference)
    for step in engine.generate(prompt_ids, SamplingParams(max_new_tokens=32, stop_ids=(eos,))):
        step.token_id, step.logprob, step.top_logprobs, step.finish_reason
    for i, step in engine.generate_batch([ids_a, ids_b], params):    # several requests decoded together
        ...

Backends behind the same methods (`prefill`, `decode_step`, `generate`, `generate_batch`, `score`, and a
cache with `rows`, `trim(n)` for rollback):
  torch   the model's own forward over a contiguous KVCache (any device, any dtype; the oracle)
  triton  PagedModel (engine/triton_backend.py) over a paged cache, hot ops from angelcli.ops (Triton on
          CUDA, the Triton interpreter on CPU; `paged_ops="torch"` swaps in the ops' torch twins)

Prompts are prefilled in chunks of `prefill_chunk` tokens. Sampling stays on the device; the only host
sync per step is reading the sampled ids (to stream them and check stop ids).

Tensor parallelism (engine/tp.py): rank 0 drives. Its generate / generate_batch / score first send the
call to the other ranks, which run the same call in lockstep (identical logits, identical seeded
sampling); before every decode step rank 0 broadcasts whether to go on, so a consumer that stops early
(Ctrl-C in chat) leaves the workers ready for the next call.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field, replace
from typing import Iterator

import torch

from angelcli.config import ModelConfig
from angelcli.engine.kv_cache import KVCache
from angelcli.engine.nonfinite import finite, nonfinite_error
from angelcli.engine.sampling import SamplingParams, sample_batch, sampling_tensors, step_logprobs
from angelcli.errors import UsageError


@dataclass
class StepOutput:
    token_id: int
    logprob: float
    top_logprobs: list[tuple[int, float]] = field(default_factory=list)  # best first
    finish_reason: str | None = None  # "stop" (hit a stop id) | "length" | None while running


@dataclass
class GenerationStats:
    prompt_tokens: int = 0
    generated_tokens: int = 0
    time_to_first_token: float = 0.0  # seconds from the call to the first generated token
    decode_tokens_per_s: float = 0.0  # generated tokens after the first / time they took
    total_time: float = 0.0

    def to_dict(self) -> dict:
        return {"prompt_tokens": self.prompt_tokens, "generated_tokens": self.generated_tokens,
                "time_to_first_token": round(self.time_to_first_token, 6),
                "decode_tokens_per_s": round(self.decode_tokens_per_s, 3), "total_time": round(self.total_time, 6)}


class Engine:
    def __init__(self, model, cfg: ModelConfig, *, device: str | torch.device = "cpu", max_seq_len: int | None = None,
                 backend: str = "torch", prefill_chunk: int = 4096, kv_tokens: int | None = None,
                 paged_ops: str | None = None, cuda_graphs: bool | None = None):
        """kv_tokens: KV budget of the triton backend's block pool (default: none, the pool grows as needed).
        paged_ops: "triton" (kernels) or "torch" (their twins) for the triton backend; default
        $ANGEL_PAGED_OPS or "triton"."""
        import os

        self.model, self.cfg = model, cfg
        self.device = torch.device(device)
        self.dtype = next(model.parameters()).dtype if backend == "torch" else model.model.word_embeddings.weight.dtype
        self.max_seq_len = max_seq_len or min(cfg.max_position_embeddings, 8192)
        self.backend = backend
        self.prefill_chunk = max(1, prefill_chunk)
        self.tp = getattr(model, "tp", None)
        self.last_stats = GenerationStats()
        self.batch_stats: list[GenerationStats] = []
        self.speculator = None  # set by angelcli.eagle.attach (a SpeculativeEngine); generate() delegates
        if backend == "torch":
            self.net = model
        elif backend == "triton":
            from angelcli.engine.triton_backend import PagedModel

            paged_ops = paged_ops or os.environ.get("ANGEL_PAGED_OPS", "triton")
            self.net = PagedModel(model, cfg, ops=paged_ops, kv_tokens=kv_tokens, cuda_graphs=cuda_graphs,
                                  max_seq_len=self.max_seq_len)
        else:
            raise UsageError(f"--backend must be torch or triton, not {backend!r}")

    # ---- caches and single forwards ----
    def new_cache(self, batch: int = 1, max_len: int | None = None):
        max_len = max_len or self.max_seq_len
        if self.backend == "triton":
            return self.net.new_cache(batch, max_len)
        hkv = self.model.model.layers[0].attention.num_kv
        return KVCache(self.cfg, batch, max_len, self.dtype, self.device, num_kv_heads=hkv)

    @torch.inference_mode()
    def prefill(self, ids: list[int] | torch.Tensor, cache) -> torch.Tensor:
        """Run the prompt (appended to whatever the cache holds), `prefill_chunk` tokens per forward.
        ids [T] or [B, T] -> last-position logits [B, V] fp32."""
        t = torch.as_tensor(ids, dtype=torch.long, device=self.device)
        if t.dim() == 1:
            t = t[None]
        logits = None
        for a in range(0, t.shape[1], self.prefill_chunk):
            logits = self.net(t[:, a : a + self.prefill_chunk], cache, last_only=True).logits[:, -1]
        return logits

    @torch.inference_mode()
    def decode_step(self, token_ids: torch.Tensor, cache) -> torch.Tensor:
        """token_ids [B] -> next logits [B, V] fp32."""
        return self.net(token_ids.view(-1, 1).to(self.device), cache).logits[:, -1]

    @torch.inference_mode()
    def score(self, ids: list[int]) -> torch.Tensor:
        """Logits of every position of one sequence: ids [T] -> [T, V] fp32 (teacher forcing, fresh cache)."""
        self.check_prompt(ids)
        self._tp_send("score", ids)
        cache = self.new_cache(1, len(ids))
        t = torch.as_tensor(ids, dtype=torch.long, device=self.device)[None]
        parts = [self.net(t[:, a : a + self.prefill_chunk], cache).logits[0]
                 for a in range(0, len(ids), self.prefill_chunk)]
        cache.reset()
        return torch.cat(parts)

    def check_prompt(self, prompt_ids: list[int]) -> None:
        if not prompt_ids:
            raise UsageError("empty prompt: at least one token id is needed")
        bad = [i for i in prompt_ids if not 0 <= int(i) < self.cfg.vocab_size]
        if bad:
            raise UsageError(f"token id {bad[0]} is outside the vocabulary (0..{self.cfg.vocab_size - 1})")

    # Speculative decoding: angelcli.eagle.attach.attach_draft(engine, ...) sets `speculator` (the engine
    # never imports draft code: the draft package imports the engine, not the other way round).

    # ---- generation ----
    def generate(self, prompt_ids: list[int], params: SamplingParams) -> Iterator[StepOutput]:
        """Yield one StepOutput per generated token; the last one carries finish_reason.

        A stop id ends generation and is reported (finish_reason "stop") but callers leave it out of text.
        """
        self.check_prompt(prompt_ids)
        if self.speculator is not None:
            done: list[int] = []
            for step in self.speculator.generate(prompt_ids, params):
                if not finite(step.logprob):
                    raise nonfinite_error(self.model, list(prompt_ids) + done, self.device, len(done))
                done.append(step.token_id)
                yield step
            return
        it = self.generate_batch([prompt_ids], params)
        try:
            for _, step in it:
                yield step
        finally:
            it.close()  # at once, not at garbage collection: tensor-parallel workers wait for the stop

    def generate_batch(self, prompts: list[list[int]], params: SamplingParams | list[SamplingParams]
                       ) -> Iterator[tuple[int, StepOutput]]:
        """Decode several requests together: yields (request index, StepOutput) as tokens come, each row
        in order; rows leave the batch when they finish. Per-request stats land in `batch_stats`."""
        plist = list(params) if isinstance(params, (list, tuple)) else [params] * len(prompts)
        if len(plist) != len(prompts):
            raise UsageError(f"{len(prompts)} prompts but {len(plist)} sampling settings")
        for p in prompts:
            self.check_prompt(p)
        for p in prompts:
            if len(p) >= self.max_seq_len:
                raise UsageError(f"prompt of {len(p)} tokens does not fit max sequence length {self.max_seq_len}")
        plist = self._tp_send("generate_batch", prompts, plist)
        self.batch_stats = [GenerationStats(prompt_tokens=len(p)) for p in prompts]
        if self.batch_stats:  # updated in place as tokens come, so valid even if the consumer stops early
            self.last_stats = self.batch_stats[0]
        budgets = [min(pp.max_new_tokens, self.max_seq_len - len(p)) for p, pp in zip(prompts, plist)]
        todo = [i for i, b in enumerate(budgets) if b > 0]
        for wave in self._waves(todo, prompts, budgets):
            if not (yield from self._run_wave(wave, prompts, plist, budgets)):
                break  # the consumer stopped early (tensor-parallel workers were told so)

    def _waves(self, todo: list[int], prompts, budgets) -> Iterator[list[int]]:
        """Groups of requests whose prompts + budgets fit the paged KV budget together (torch: one group)."""
        cap = getattr(self.net, "kv_tokens", None)
        if self.backend != "triton" or not cap:
            if todo:
                yield todo
            return
        bs = self.net.block_size
        wave, used = [], 0
        for i in todo:
            need = -(-(len(prompts[i]) + budgets[i]) // bs) * bs
            if wave and used + need > cap:
                yield wave
                wave, used = [], 0
            wave.append(i)
            used += need
        if wave:
            yield wave

    def _run_wave(self, rows: list[int], prompts, plist, budgets):
        """Generator over (request, StepOutput) for one group of rows; returns False if closed early."""
        start = time.perf_counter()
        B = len(rows)
        cache = self.new_cache(B, max(len(prompts[r]) + budgets[r] for r in rows))
        # counter-based sampling noise: a fixed seed per row (drawn here when the request set none)
        seeds = [plist[r].seed if plist[r].seed is not None else int(torch.randint(2**31, ()).item()) for r in rows]
        exchanged = True  # tensor parallel: this step's go/stop flag has been exchanged
        try:
            logits = torch.cat([self.prefill(prompts[r], cache.row(i)) for i, r in enumerate(rows)])  # [B, V]
            live = list(range(B))  # positions in `rows` still generating
            first_at = [None] * B
            made: list[list[int]] = [[] for _ in rows]  # ids generated per row (to rerun on non-finite logits)
            n = 0
            pre = None  # (ids, logprobs) sampled inside the decode graph, when the backend did
            while True:
                k = max(plist[rows[i]].logprobs for i in live)
                if pre is not None and not k:
                    (tokens, lp), top_v, top_i = pre, None, None
                else:
                    tokens = pre[0] if pre is not None else \
                        self._sample(logits, [plist[rows[i]] for i in live], [seeds[i] for i in live], n)  # [b]
                    lp, top_v, top_i = step_logprobs(logits, tokens, k)
                ids = tokens.tolist()  # the one host sync of the step
                lp, top_v, top_i = lp.tolist(), (top_v.tolist() if k else None), (top_i.tolist() if k else None)
                now = time.perf_counter()
                still, exchanged = [], False
                for j, i in enumerate(live):
                    r = rows[i]
                    if not finite(lp[j]):  # NaN/inf logits: never turn them into tokens (engine/nonfinite.py)
                        raise nonfinite_error(self.model, list(prompts[r]) + made[i], self.device, n)
                    made[i].append(ids[j])
                    st = self.batch_stats[r]
                    if first_at[i] is None:
                        first_at[i] = now
                        st.time_to_first_token = now - start
                    st.generated_tokens = n + 1
                    st.total_time = now - start
                    if n:
                        st.decode_tokens_per_s = n / max(now - first_at[i], 1e-9)
                    kk = plist[r].logprobs
                    top = list(zip(top_i[j][:kk], top_v[j][:kk])) if kk else []
                    finish = "stop" if ids[j] in plist[r].stop_ids else ("length" if n + 1 == budgets[r] else None)
                    yield r, StepOutput(ids[j], float(lp[j]), top, finish)
                    if finish is None:
                        still.append(j)
                    else:
                        cache.row(i).reset()  # paged: its blocks go back to the pool at once
                exchanged = True
                if not self._tp_go(bool(still)) or not still:
                    return True
                if len(still) < len(live):  # some rows finished: drop their tokens
                    tokens = tokens[torch.tensor(still, device=tokens.device)]
                    live = [live[j] for j in still]
                n += 1
                logits, pre = self._decode(tokens, cache.rows(live), [plist[rows[i]] for i in live],
                                           [seeds[i] for i in live], n)
        except GeneratorExit:
            if not exchanged:
                self._tp_go(False)  # closed at a yield: stand in for this step's exchange
            return False
        finally:
            cache.reset()

    @torch.inference_mode()
    def _decode(self, tokens: torch.Tensor, cache, params: list[SamplingParams], seeds: list[int], step: int):
        """One decode step -> (logits [b, V], (ids [b], logprobs [b]) when sampled inside the step's CUDA
        graph (triton backend), else None: the caller samples)."""
        if self.backend != "triton" or getattr(self.net, "graphs", None) is None:
            return self.decode_step(tokens, cache), None
        sampling = ("greedy", None) if all(p.greedy for p in params) else \
            ("sample", sampling_tensors(params, seeds, step, self.cfg.vocab_size, self.device))
        out = self.net(tokens.view(-1, 1).to(self.device), cache, sampling=sampling)
        return out.logits[:, -1], out.sampled

    def _sample(self, logits: torch.Tensor, params: list[SamplingParams], seeds: list[int], step: int
                ) -> torch.Tensor:
        """logits [b, V] -> ids [b]: one batched call for every mix of settings (engine/sampling.py)."""
        if all(p.greedy for p in params):
            return logits.argmax(dim=-1)
        return sample_batch(logits, params, seeds, step)

    # ---- tensor parallelism (engine/tp.py) ----
    def _tp_send(self, method: str, *args):
        """Rank 0: tell the other ranks to run the same call (sampling seeds fixed first). Returns the args
        the call must use (params with seeds) for generate_batch; others: pass-through."""
        if self.tp is None:
            return args[-1] if method == "generate_batch" else None
        from angelcli.engine import tp as tpmod

        if method == "generate_batch":
            prompts, plist = args
            plist = [p if p.greedy or p.seed is not None else replace(p, seed=int(torch.randint(2**31, ()).item()))
                     for p in plist]
            args = (prompts, plist)
        if self.tp.rank == 0:
            tpmod.send_call(self.tp, method, args)
        return args[-1] if method == "generate_batch" else None

    def _tp_go(self, go: bool) -> bool:
        if self.tp is None:
            return go
        from angelcli.engine import tp as tpmod

        return tpmod.broadcast_flag(self.tp, go, self.device)
