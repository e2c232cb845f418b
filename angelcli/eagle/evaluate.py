"""`angel draft-eval`: how much a draft buys on held-out prompts, measured in the engine itself.

Reported (greedy unless --temperature):
    tau                      mean acceptance length = tokens per target verification pass, bonus included
                             (vLLM's "mean acceptance length"; SGLang's accept_length per verification)
    topk, draft_tokens       the draft's shape: a tree of draft_tokens nodes with topk candidates per node
                             (greedy; eagle/tree.py), or the chain (topk 1, draft_tokens = k)
    per_position_acceptance  alpha_j = P(draft token j accepted | tokens before it accepted), j = 0..k-1
                             (a tree: some candidate at depth j+1 accepted)
    acceptance_rate          accepted draft tokens / proposed draft tokens (a tree proposes draft_tokens)
    target_passes_per_token  (prefill + verification passes) / generated tokens; plain decoding is 1.0
    speedup                  wall-clock time of plain decoding / time of speculative decoding, same prompts,
                             same budget, run alternately on the same engine
    identical                greedy only: speculative output equals plain output token for token
"""

from __future__ import annotations

import time

from angelcli.console import log, progress
from angelcli.engine.sampling import SamplingParams


def _plain(engine, prompt, params):
    """Plain decoding of one request (generate_batch never speculates)."""
    return [step for _, step in engine.generate_batch([prompt], params)]


def eval_draft(rt, engine, prompts: list[list[int]], *, max_new_tokens: int = 128, temperature: float = 0.0,
               seed: int = 0) -> dict:
    """engine: an Engine with a draft attached (engine.speculator)."""
    spec_engine = engine.speculator
    params = SamplingParams(temperature=temperature, max_new_tokens=max_new_tokens, seed=seed,
                            stop_ids=tuple(rt.eos_ids))
    k = spec_engine.k
    warm = SamplingParams(max_new_tokens=4, stop_ids=params.stop_ids)
    _plain(engine, prompts[0], warm)  # first-call costs (allocations, lazy init) out of the timings
    list(spec_engine.generate(prompts[0], warm))
    t_plain = t_spec = 0.0
    n_plain = n_spec = passes = round_tokens = drafted = accepted = 0
    reached, acc_at = [0] * k, [0] * k
    identical, mismatches = True, []
    with progress("draft-eval", total=len(prompts), unit="prompts") as bar:
        for i, p in enumerate(prompts):
            t = time.perf_counter()
            plain = [s.token_id for s in _plain(engine, p, params)]
            t_plain += time.perf_counter() - t
            t = time.perf_counter()
            spec = [s.token_id for s in spec_engine.generate(p, params)]
            t_spec += time.perf_counter() - t
            st = spec_engine.last_stats
            n_plain, n_spec = n_plain + len(plain), n_spec + len(spec)
            passes += st.verify_passes + 1  # + the prefill, which produced the first token
            round_tokens += st.round_tokens
            drafted, accepted = drafted + st.drafted, accepted + st.accepted
            for j in range(k):
                reached[j] += st.reached[j]
                acc_at[j] += st.accepted_at[j]
            if temperature == 0 and plain != spec:
                identical = False
                first = next((j for j, (a, b) in enumerate(zip(plain, spec)) if a != b), min(len(plain), len(spec)))
                mismatches.append({"prompt": i, "first_difference": first})
            tau = round_tokens / max(1, passes - (i + 1))
            bar.advance(1, note=f"tau {tau:.2f}")
    verify = passes - len(prompts)
    report = {
        "k": k, "topk": spec_engine.last_stats.topk, "draft_tokens": spec_engine.last_stats.draft_tokens,
        "prompts": len(prompts), "max_new_tokens": max_new_tokens, "temperature": temperature,
        "generated_tokens": n_spec,
        "tau": round(round_tokens / verify, 4) if verify else None,
        "per_position_acceptance": [round(a / r, 4) if r else None for a, r in zip(acc_at, reached)],
        "acceptance_rate": round(accepted / drafted, 4) if drafted else None,
        "target_passes_per_token": round(passes / n_spec, 4) if n_spec else None,
        "plain_tokens_per_s": round(n_plain / t_plain, 2) if t_plain else None,
        "speculative_tokens_per_s": round(n_spec / t_spec, 2) if t_spec else None,
        "speedup": round((t_plain / max(n_plain, 1)) / (t_spec / max(n_spec, 1)), 3) if t_spec and n_spec else None,
        "identical": identical if temperature == 0 else None,
        "mismatches": mismatches,
        "device": rt.device, "dtype": rt.dtype,
    }
    log(f"tau {report['tau']} at k={k} (topk {report['topk']}, {report['draft_tokens']} draft tokens); "
        f"per position {report['per_position_acceptance']}; {report['target_passes_per_token']} target passes per "
        f"token; plain {report['plain_tokens_per_s']} tok/s, speculative {report['speculative_tokens_per_s']} tok/s: "
        f"speedup {report['speedup']}x")
    return report
