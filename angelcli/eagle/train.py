"""`angel draft-train`: train an EAGLE3 draft on a target's online hidden states, then export it.

    rt = open_runtime(MODEL); summary = train_draft(rt, TrainOptions(data="medical", out=Path("draft")))

Flow: samples (data.py) -> draft vocabulary from supervised-token frequencies -> for every batch the frozen
target runs once (capture_layers = the draft's aux layers; optionally cached on disk) -> TTT loss (ttt.py)
-> AdamW with warm-up + cosine, gradient clipping -> checkpoints (OUT/checkpoint, atomic; --resume continues
bit-for-bit the same schedule) -> held-out evaluation -> export (export.py: SGLang + vLLM layouts).

The batch order is a pure function of (seed, step), so a resumed run sees the same batches as an
uninterrupted one.
"""

from __future__ import annotations

import functools
import json
import math
import random
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path

import torch

from angelcli.console import log, progress, warn
from angelcli.eagle import data as D
from angelcli.eagle.export import export_draft, sglang_layer_ids, vllm_layer_ids
from angelcli.eagle.features import FeatureCache, target_features
from angelcli.eagle.model import DraftConfig, Eagle3Draft, build_vocab_map
from angelcli.eagle.ttt import StepMetrics, simulated_tau, ttt_loss
from angelcli.errors import UsageError
from angelcli.fsutil import atomic_path, atomic_write_json

CHECKPOINT = "checkpoint"
REGEN_FILE = "regenerated.jsonl"


@dataclass
class TrainOptions:
    data: str = "medical"  # medical | PATH | random
    out: Path = Path("draft")
    steps: int | None = None
    epochs: float = 1.0
    ttt: int = 7
    decay: float = 0.8
    lr: float = 1e-4
    warmup: float = 0.02  # fraction of steps
    batch_size: int = 4
    max_len: int = 1024
    grad_clip: float = 0.5
    draft_vocab: int = 32000
    aux_layers: tuple[int, ...] | None = None  # foundation convention; default (1, N/2-1, N-4)
    intermediate_size: int | None = None
    cache_features: Path | None = None
    regenerate: bool = False
    regen_max_tokens: int = 256
    resume: bool = False
    save_every: int = 200
    eval_samples: int = 64
    eval_k: int = 3
    seed: int = 0
    random_samples: int = 256
    random_len: int = 64
    export_dtype: str = "bfloat16"
    layouts: tuple[str, ...] = ("sglang", "vllm")
    max_samples: int | None = None
    keep_checkpoint: bool = True  # False: delete OUT/checkpoint after the export (nothing left to resume)
    extra: dict = field(default_factory=dict)

    def key(self) -> dict:
        """What must not change between a run and its --resume."""
        return {k: getattr(self, k) for k in ("data", "ttt", "batch_size", "max_len", "draft_vocab", "seed",
                                              "regenerate", "random_samples", "random_len", "max_samples")} | {
            "aux_layers": list(self.aux_layers) if self.aux_layers else None}


def lr_at(step: int, total: int, base: float, warmup_frac: float) -> float:
    warm = max(1, int(total * warmup_frac))
    if step < warm:
        return base * (step + 1) / warm
    prog = (step - warm) / max(1, total - warm)
    return base * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * min(1.0, prog))))


BUCKET = 16  # batches per length bucket


def epoch_batches(lengths: tuple[int, ...], batch_size: int, seed: int, epoch: int) -> list[list[int]]:
    """The batches of one epoch: a seeded permutation cut into windows of BUCKET batches, each window sorted
    by length (little padding), batches shuffled again. A pure function, so --resume sees the same batches."""
    rng = random.Random(seed * 1_000_003 + epoch)
    order = list(range(len(lengths)))
    rng.shuffle(order)
    batches = []
    w = batch_size * BUCKET
    for i in range(0, len(order), w):
        window = sorted(order[i : i + w], key=lambda j: lengths[j])
        batches += [window[j : j + batch_size] for j in range(0, len(window), batch_size)]
    rng.shuffle(batches)
    return batches


@functools.lru_cache(maxsize=2)
def _epoch(lengths: tuple[int, ...], batch_size: int, seed: int, epoch: int) -> list[list[int]]:
    return epoch_batches(lengths, batch_size, seed, epoch)


def batch_indices(step: int, lengths: tuple[int, ...], batch_size: int, seed: int) -> list[int]:
    per_epoch = max(1, math.ceil(len(lengths) / batch_size))
    epoch, b = divmod(step, per_epoch)
    return _epoch(lengths, batch_size, seed, epoch)[b]


def collate(samples: list[D.Sample], device) -> tuple[torch.Tensor, torch.Tensor]:
    """-> ids [B, T] (0-padded), loss mask [B, T] (0 on padding)."""
    T = max(len(s.ids) for s in samples)
    ids = torch.zeros(len(samples), T, dtype=torch.long)
    mask = torch.zeros(len(samples), T, dtype=torch.long)
    for i, s in enumerate(samples):
        ids[i, : len(s.ids)] = torch.tensor(s.ids)
        mask[i, : len(s.mask)] = torch.tensor(s.mask)
    return ids.to(device), mask.to(device)


# ---- data ------------------------------------------------------------------------------------------

def prepare_samples(rt, opts: TrainOptions) -> tuple[list[D.Sample], list[D.Sample]]:
    V = rt.cfg.vocab_size
    if opts.data == "random":
        n, L = opts.random_samples, min(opts.random_len, opts.max_len)
        return (D.random_samples(V, n, L, opts.seed),
                D.random_samples(V, max(1, min(opts.eval_samples, 16)), L, opts.seed + 1))
    train_d, held_d = D.load_dicts(opts.data, opts.seed)
    if opts.max_samples:
        train_d = train_d[: opts.max_samples]
    tok = rt.tokenizer
    held = D.encode_samples(tok, held_d[: opts.eval_samples], opts.max_len)
    if not opts.regenerate:
        train = D.encode_samples(tok, train_d, opts.max_len)
        if len(train) < len(train_d):
            warn(f"{len(train_d) - len(train)} of {len(train_d)} samples have no answer within --max-len "
                 f"{opts.max_len} tokens and are skipped")
        return train, held
    regen = opts.out / REGEN_FILE
    if regen.exists():
        rows = [json.loads(line) for line in regen.read_text(encoding="utf-8").splitlines() if line.strip()]
        log(f"reusing {len(rows)} regenerated samples from {regen}")
        train = [D.Sample(r["ids"], r["mask"]) for r in rows]
    else:
        with progress("regenerate", total=len(train_d), unit="conversations") as bar:
            train = D.regenerate(rt, train_d, opts.regen_max_tokens, bar)
        with atomic_path(regen) as tmp:
            tmp.write_text("".join(json.dumps(s.to_dict()) + "\n" for s in train), encoding="utf-8")
    return [D.Sample(s.ids[: opts.max_len], s.mask[: opts.max_len]) for s in train], held


# ---- checkpoints -----------------------------------------------------------------------------------

def save_checkpoint(out: Path, draft: Eagle3Draft, opt, step: int, opts: TrainOptions, history: list) -> None:
    from safetensors.torch import save_file

    ck = out / CHECKPOINT
    ck.mkdir(parents=True, exist_ok=True)
    with atomic_path(ck / "draft.safetensors") as tmp:
        save_file({k: v.detach().cpu().contiguous() for k, v in draft.state_dict().items()}, str(tmp))
    with atomic_path(ck / "optimizer.pt") as tmp:
        torch.save(opt.state_dict(), tmp)
    atomic_write_json(ck / "trainer.json", {"step": step, "key": opts.key(), "draft_config": draft.config.to_dict(),
                                            "history": history[-50:]})


def load_checkpoint(out: Path, opts: TrainOptions, device) -> tuple[Eagle3Draft, dict, dict] | None:
    from safetensors.torch import load_file

    ck = out / CHECKPOINT
    if not (ck / "trainer.json").exists():
        return None
    state = json.loads((ck / "trainer.json").read_text())
    if not opts.resume:
        raise UsageError(f"{out}: holds a training checkpoint at step {state['step']}; pass --resume to continue "
                         "it or choose another --out")
    if state["key"] != opts.key():
        diff = sorted(k for k in opts.key() if opts.key()[k] != state["key"].get(k))
        raise UsageError(f"--resume: the checkpoint in {ck} was trained with different {', '.join(diff)}")
    draft = Eagle3Draft(DraftConfig.from_dict(state["draft_config"]))
    draft.load_state_dict(load_file(str(ck / "draft.safetensors")))
    return draft.to(device), torch.load(ck / "optimizer.pt", map_location=device), state


# ---- evaluation ------------------------------------------------------------------------------------

def evaluate(rt, draft: Eagle3Draft, samples: list[D.Sample], opts: TrainOptions) -> dict:
    total = StepMetrics()
    draft.eval()
    with torch.no_grad():
        for i in range(0, len(samples), opts.batch_size):
            ids, mask = collate(samples[i : i + opts.batch_size], rt.device)
            aux, logits = target_features(rt.model, ids, draft.config.aux_layers)
            _, m = ttt_loss(draft, ids, aux, logits[..., draft.t2d], logits.argmax(-1), mask, opts.ttt, opts.decay)
            total.add(m)
    draft.train()
    acc = total.accuracy()
    return {"samples": len(samples), "loss": [round(x, 4) for x in total.mean_loss()],
            "accuracy": [round(a, 4) for a in acc], f"sim_tau@{opts.eval_k}": round(simulated_tau(acc, opts.eval_k), 4),
            f"sim_tau@{opts.ttt}": round(simulated_tau(acc, opts.ttt), 4)}


# ---- the run ---------------------------------------------------------------------------------------

def train_draft(rt, opts: TrainOptions) -> dict:
    """Train, evaluate and export; returns the JSON summary."""
    t0 = time.perf_counter()
    if opts.ttt < 1 or opts.batch_size < 1 or opts.max_len < 8:
        raise UsageError("--ttt and --batch-size must be >= 1 and --max-len >= 8")
    if "sglang" not in opts.layouts or not set(opts.layouts) <= {"sglang", "vllm"}:
        raise UsageError("--layouts must include sglang (angel loads that one) and may add vllm")
    out = Path(opts.out)
    out.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(opts.seed)
    for p in rt.model.parameters():
        p.requires_grad_(False)
    dev = rt.device
    train, held = prepare_samples(rt, opts)
    if not train:
        raise UsageError(f"--data {opts.data}: no usable training samples (each needs >= 4 tokens and an answer)")
    n_tokens = sum(len(s.ids) for s in train)
    lengths = tuple(len(s.ids) for s in train)
    per_epoch = math.ceil(len(train) / opts.batch_size)
    total_steps = opts.steps or max(1, round(opts.epochs * per_epoch))
    log(f"draft-train: {len(train)} samples, {n_tokens} tokens, {total_steps} steps "
        f"({total_steps / per_epoch:.2f} epochs), batch {opts.batch_size}, TTT {opts.ttt}")

    resumed = load_checkpoint(out, opts, dev)
    if resumed is not None:
        draft, opt_state, state = resumed
        start, history = int(state["step"]), list(state.get("history", []))
        log(f"resuming from step {start}")
    else:
        cfg = DraftConfig.for_target(rt.cfg, draft_vocab_size=opts.draft_vocab, aux_layers=opts.aux_layers,
                                     intermediate_size=opts.intermediate_size)
        draft = Eagle3Draft(cfg)
        d2t, t2d = build_vocab_map(D.token_counts(train, rt.cfg.vocab_size), cfg.draft_vocab_size, rt.eos_ids)
        draft.set_vocab_map(d2t, t2d)
        draft.init_weights(opts.seed, target=rt.model)
        draft = draft.to(dev)
        opt_state, start, history = None, 0, []
    draft.set_embedding(rt.model.model.word_embeddings)
    cfg = draft.config
    counts = D.token_counts(train, rt.cfg.vocab_size)
    coverage = float(counts[draft.t2d.cpu()].sum()) / max(1, int(counts.sum()))
    log(f"draft vocab {cfg.draft_vocab_size} of {cfg.vocab_size} covers {coverage:.2%} of supervised tokens; "
        f"aux layers {list(cfg.aux_layers)} (output of layer i; SGLang {sglang_layer_ids(cfg)}, "
        f"vLLM {vllm_layer_ids(cfg)})")

    fcache = None
    if opts.cache_features is not None:
        fcache = FeatureCache(opts.cache_features, rt, cfg.aux_layers, opts.key())
        fcache.announce(n_tokens)

    trainable = [p for p in draft.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(trainable, lr=opts.lr, betas=(0.9, 0.95), weight_decay=0.0)
    if opt_state is not None:
        opt.load_state_dict(opt_state)
    draft.train()
    last = StepMetrics()
    step = start
    try:
        label = f"draft-train (from step {start})" if start else "draft-train"
        with progress(label, total=total_steps - start, unit="steps") as bar:
            for step in range(start, total_steps):
                idx = batch_indices(step, lengths, opts.batch_size, opts.seed)
                ids, mask = collate([train[i] for i in idx], dev)
                if fcache is not None:
                    aux, logits = fcache.features(idx, ids, [len(train[i].ids) for i in idx])
                else:
                    aux, logits = target_features(rt.model, ids, cfg.aux_layers)
                teacher, best = logits[..., draft.t2d], logits.argmax(-1)
                del logits
                for g in opt.param_groups:
                    g["lr"] = lr_at(step, total_steps, opts.lr, opts.warmup)
                loss, last = ttt_loss(draft, ids, aux, teacher, best, mask, opts.ttt, opts.decay)
                opt.zero_grad(set_to_none=True)
                loss.backward()
                torch.nn.utils.clip_grad_norm_(trainable, opts.grad_clip)
                opt.step()
                acc, lval = last.accuracy(), float(loss.detach())
                history.append({"step": step + 1, "loss": round(lval, 4), "acc": [round(a, 3) for a in acc]})
                bar.advance(1, note=f"loss {lval:.3f} acc {'/'.join(f'{a:.2f}' for a in acc[:3])} "
                                    f"tau_sim {simulated_tau(acc, opts.eval_k):.2f}")
                if opts.save_every and (step + 1) % opts.save_every == 0 and step + 1 < total_steps:
                    save_checkpoint(out, draft, opt, step + 1, opts, history)
        step = total_steps
    except KeyboardInterrupt:
        save_checkpoint(out, draft, opt, step, opts, history)
        warn(f"interrupted at step {step}; checkpoint saved in {out / CHECKPOINT} (rerun with --resume)")
        raise
    save_checkpoint(out, draft, opt, total_steps, opts, history)

    report = evaluate(rt, draft, held, opts) if held else None
    if report:
        log(f"held-out: accuracy {report['accuracy']} sim_tau@{opts.eval_k} {report[f'sim_tau@{opts.eval_k}']}")
    special = {"bos_token_id": rt.cfg.bos_token_id, "pad_token_id": rt.cfg.pad_token_id,
               "eos_token_id": rt.cfg.eos_token_id}
    from angelcli.eagle.attach import target_fingerprint
    from angelcli.resolve import TINY_DIR

    target_name = "angel-tiny" if Path(rt.model_dir).resolve() == TINY_DIR.resolve() else str(rt.model_dir)
    meta = {"target": {"path": target_name, "fingerprint": target_fingerprint(rt.model),
                       "num_hidden_layers": rt.cfg.num_hidden_layers,
                       "hidden_size": rt.cfg.hidden_size, "vocab_size": rt.cfg.vocab_size},
            "training": {"data": opts.data, "steps": total_steps, "samples": len(train), "tokens": n_tokens,
                         "ttt": opts.ttt, "lr": opts.lr, "batch_size": opts.batch_size, "max_len": opts.max_len,
                         "regenerated": opts.regenerate, "vocab_coverage": round(coverage, 4)},
            "eval": report}
    from angelcli.eagle.export import verifier_name

    exports = export_draft(draft, out, dtype=opts.export_dtype, special=special,
                           verifier=verifier_name(rt.model_dir, target_name),
                           meta=meta, k=opts.eval_k, layouts=opts.layouts)
    if not opts.keep_checkpoint:
        shutil.rmtree(out / CHECKPOINT, ignore_errors=True)
    return {"out": str(out), "target": target_name, "data": opts.data, "train_samples": len(train),
            "train_tokens": n_tokens, "steps": total_steps, "resumed_from": start or None, "ttt": opts.ttt,
            "draft_vocab_size": cfg.draft_vocab_size, "vocab_coverage": round(coverage, 4),
            "parameters": draft.trainable_parameters(),
            "layer_ids": {"foundation": list(cfg.aux_layers), "sglang": sglang_layer_ids(cfg),
                          "vllm": vllm_layer_ids(cfg)},
            "final_train": {"step_loss": [round(x, 4) for x in last.loss],
                            "accuracy": [round(a, 4) for a in last.accuracy()]},
            "eval": report, "exports": exports, "time_s": round(time.perf_counter() - t0, 2)}

