"""Train angel-tiny: a small BailingMoeV2 with the real structure, on the bundled medical corpus, on a CPU.

Structure (the real model at toy scale): layer 0 dense, then MoE layers with sigmoid group-limited routing
(64 experts in 8 groups, keep 4 groups, top-2: the real 1/32 routed ratio), one shared expert, fp32 expert
bias, QK-norm, partial NeoX RoPE (half of each head rotates), untied head, the Ling tokenizer's special tokens.

Experts are balanced the aux-loss-free way (as the real model was trained): no balancing loss; after every
step each MoE layer's `expert_bias` moves by `bias_rate` towards balance, up for under-loaded experts and down
for over-loaded ones. The bias only changes which experts are chosen, never their weights.

Data (angelcli/tiny/train_data.py): rows start at conversation starts and the loss weighs the answers, so
the model learns to answer the question in its context; ICD-10 lookups and synthetic records lead fewer rows.
Routing examples (angelcli/tiny/routing_data.py) add many more wordings of each question, supervised only on
the opening of the answer that names the record, ahead of the corpus in the token stream.
The run ends with the topic probe (angelcli/tiny/probe.py) on the checkpoint as written.

Determinism: fixed seed, fixed number of steps, single process; the same machine and thread count give the
same weights. `angel tiny-train` (or `just tiny`) rebuilds the shipped checkpoint in about 50 minutes on 2 cores.
"""

from __future__ import annotations

import json
import math
import shutil
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

from angelcli.tiny.routing_data import KIND_WEIGHT as ROUTING_WEIGHT

TINY_CONFIG = dict(
    hidden_size=192, intermediate_size=512, num_hidden_layers=5, num_attention_heads=6, num_key_value_heads=2,
    head_dim=32, num_experts=64, n_group=8, topk_group=4, num_experts_per_tok=2, moe_intermediate_size=48,
    moe_shared_expert_intermediate_size=48, first_k_dense_replace=1, routed_scaling_factor=2.5,
    partial_rotary_factor=0.5, max_position_embeddings=4096, rope_theta=600000.0,
)


@dataclass
class TrainSettings:
    # the shipped model (corpus v5: 9,452 training conversations, plus routing examples and five rounds of written
    # questions; routing rows are 40% of the rows, so the corpus needs the steps beyond the previous 2,200)
    steps: int = 2600
    batch: int = 16
    seq_len: int = 256
    lr: float = 3e-3
    min_lr_ratio: float = 0.1
    warmup: int = 30
    weight_decay: float = 0.05
    bias_rate: float = 0.005  # aux-loss-free balancing step
    grad_clip: float = 1.0
    seed: int = 0
    eval_every: int = 100
    threads: int = 2
    prompt_loss_weight: float = 0.1  # weight of non-answer tokens (questions, template) in the loss
    # relative chance of a training row starting at a conversation of this kind (others 1.0): code lookups
    # and synthetic records stay in the mix but do not crowd out the questions users actually ask
    kind_weights: dict = field(default_factory=lambda: {"icd10": 0.25, "record": 0.25, "routing": ROUTING_WEIGHT})
    # routing examples (angelcli/tiny/routing_data.py): many more wordings per question, supervised on the
    # answer's opening that names the record; False trains on the corpus alone (the v5 model, 1,400 steps)
    routing: bool = True
    lay: bool = False  # with routing: everyday-word symptom descriptions and questions in context too
    # with routing: the freely written questions (routing_written.py). A row's start is drawn per example, so
    # they add rows to the routing examples' share (22% without them, 33% with two rounds, 37% with three, 40%
    # with five) and take them from the corpus's answers; kind_weights["routing"] (--routing-weight) sets the share
    written: bool = True
    written_rounds: int = 5  # with written: rounds 1-5 (the shipped model); others: routing_written.ROUNDS
    # chance of replacing each question token of a training row by a random question token (train_data.batches):
    # new wordings are known wordings with some words the model has not seen there; 0 = the shipped model's rows
    question_noise: float = 0.0
    # dropout on each layer's attention and MLP/MoE output in training (add_dropout): the model memorises the
    # training split (loss ~0.15 against ~0.49 held out); 0 = the shipped model
    dropout: float = 0.0
    # weight averaging: the checkpoint holds an exponential moving average of the weights (expert_bias included)
    # with this decay per step, i.e. over about the last 1/(1 - ema) steps (the shipped model: 0.998, held-out
    # loss 0.427 against 0.445 for the final weights); 0 = the final weights
    ema: float = 0.998
    probe: bool = True  # answer the demo questions at the end and record how many stay on topic


def tokenize_split(tok, samples: list[dict]) -> list[int]:
    """Render every conversation with the chat template and concatenate the ids into one stream."""
    from angelcli.tiny.train_data import conversation_stream

    return conversation_stream(tok, samples).ids


def _init_weights(model, seed: int) -> None:
    import torch

    g = torch.Generator().manual_seed(seed)
    for name, p in model.named_parameters():
        with torch.no_grad():
            if name.endswith("expert_bias"):
                p.zero_()
            elif "norm" in name:
                p.fill_(1.0)
            else:
                std = 0.02
                if name.endswith(("dense.weight", "down_proj.weight", "w2")):
                    std = 0.02 / math.sqrt(2 * model.config.num_hidden_layers)  # residual-branch outputs
                p.copy_(torch.randn(p.shape, generator=g) * std)


def evaluate(model, stream, seq_len: int = 256, max_rows: int | None = 64, batch: int = 16) -> dict:
    """Held-out answer loss: mean next-token loss on the assistant tokens (weight 1) of rows that start at
    conversation starts (train_data.eval_rows), and its perplexity. `stream` is a train_data.Stream."""
    import torch

    from angelcli.tiny.train_data import eval_rows, weighted_loss

    was_training = model.training
    model.eval()
    x, w = eval_rows(stream, seq_len, max_rows)
    w = (w == 1.0).float()  # score answers only, whatever the training prompt weight
    total, count = 0.0, 0.0
    with torch.no_grad():
        for b in range(0, len(x), batch):
            loss, _ = weighted_loss(model, x[b : b + batch], w[b : b + batch])
            n = float(w[b : b + batch, 1:].sum())
            total, count = total + loss.item() * n, count + n
    model.train(was_training)
    loss = total / max(count, 1.0)
    return {"loss": loss, "perplexity": math.exp(loss), "tokens": int(count)}


def train_tiny(out_dir: str | Path, tokenizer_dir: str | Path, train_samples: list[dict], eval_samples: list[dict],
               settings: TrainSettings | None = None, log=print,
               model_overrides: dict | None = None, variants: dict | None = None) -> dict:
    """Train and write the checkpoint to out_dir (sharded safetensors + index, config, tokenizer, generation
    config, training_log.json). Returns the training log.

    variants: {directory: ema decay} also writes the same run's weights averaged with another decay (0 = the
    final weights) to each directory, with the held-out loss in its training_log.json and no topic probe: one
    run compares averaging choices."""
    import torch
    import torch.nn.functional as F

    from angelcli.config import ModelConfig
    from angelcli.fixtures import tiny_config
    from angelcli.model import BailingMoeForCausalLM
    from angelcli.model.layers import Attention
    from angelcli.model.moe import SparseMoe
    from angelcli.tiny.probe import topic_probe
    from angelcli.tiny.train_data import batches, conversation_stream, weighted_loss
    from angelcli.tokenizer import load_tokenizer

    settings = settings or TrainSettings()
    torch.manual_seed(settings.seed)
    torch.set_num_threads(settings.threads)
    tok = load_tokenizer(tokenizer_dir)
    special = {t: tok.convert_tokens_to_ids(t) for t in ("<|startoftext|>", "<|endoftext|>", "<|role_end|>")}
    cfg_dict = tiny_config(vocab_size=len(tok), bos_token_id=special["<|startoftext|>"],
                           pad_token_id=special["<|endoftext|>"], eos_token_id=special["<|role_end|>"],
                           **{**TINY_CONFIG, **(model_overrides or {})})
    cfg = ModelConfig.from_dict(cfg_dict)
    train = conversation_stream(tok, train_samples, settings.prompt_loss_weight)
    if settings.routing:
        from angelcli.tiny.routing_data import join_streams, routing_samples, routing_stream

        samples = routing_samples(settings.seed, lay=settings.lay, written=settings.written,
                                  written_rounds=settings.written_rounds)
        routing = routing_stream(tok, samples, settings.prompt_loss_weight)
        log(f"angel-tiny: {len(routing.starts):,} routing examples ({len(routing.ids):,} tokens), "
            f"row weight {settings.kind_weights.get('routing', 1.0):.3f}")
        train = join_streams(routing, train)
    held_out = conversation_stream(tok, eval_samples)
    log(f"angel-tiny: {len(train.ids):,} train tokens ({train.answer_tokens:,} in answers), "
        f"{len(held_out.ids):,} held-out tokens, vocab {len(tok)}")

    model = BailingMoeForCausalLM(cfg)
    _init_weights(model, settings.seed)
    for module in model.modules():  # the training fast paths, each tested against the reference path
        if isinstance(module, Attention):
            module.fused_training = True
        if isinstance(module, SparseMoe):
            module.sorted_dispatch = True
    if settings.dropout > 0:
        add_dropout(model, settings.dropout)
    model.train()
    params = [p for n, p in model.named_parameters() if not n.endswith("expert_bias")]
    decay = [p for p in params if p.dim() >= 2]
    no_decay = [p for p in params if p.dim() < 2]
    for p in params:
        p.requires_grad_(True)
    opt = torch.optim.AdamW([{"params": decay, "weight_decay": settings.weight_decay},
                             {"params": no_decay, "weight_decay": 0.0}], lr=settings.lr, betas=(0.9, 0.95))
    moe = [layer.mlp for layer in model.model.layers if hasattr(layer.mlp, "gate")]
    untrained = evaluate(model, held_out, settings.seq_len)
    history = {"settings": asdict(settings), "config": {k: cfg_dict[k] for k in TINY_CONFIG},
               "tokens": {"train": len(train.ids), "train_answers": train.answer_tokens,
                          "eval": len(held_out.ids)},
               "untrained_eval": untrained, "steps": [], "evals": []}
    gen = torch.Generator().manual_seed(settings.seed + 1)
    noise = None
    if settings.question_noise > 0:
        from angelcli.tiny.train_data import question_mask

        opener = tok.convert_tokens_to_ids(["<role>", "HUMAN", "</role>"])
        noise = (question_mask(train.ids, opener, special["<|role_end|>"]), settings.question_noise, settings.seed + 2)
    rows = batches(train, settings.batch, settings.seq_len, gen, settings.kind_weights, noise)
    decays = {d for d in [settings.ema, *(variants or {}).values()] if d > 0}
    averages = {d: {n: p.detach().clone() for n, p in model.named_parameters()} for d in decays}
    t0 = time.time()
    for step in range(1, settings.steps + 1):
        lr = _lr(step, settings)
        for group in opt.param_groups:
            group["lr"] = lr
        x, w = next(rows)
        loss, out = weighted_loss(model, x, w, return_router=True)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, settings.grad_clip)
        opt.step()
        imbalance = _update_bias(moe, out.router, cfg.num_experts, settings.bias_rate)
        with torch.no_grad():
            for d, avg in averages.items():
                # the usual warm-up of the decay, so the random initial weights do not linger in the average
                weight = 1.0 - min(d, (1 + step) / (10 + step))
                for n, p in model.named_parameters():
                    avg[n].lerp_(p.detach(), weight)
        history["steps"].append({"step": step, "loss": round(loss.item(), 4), "lr": lr,
                                 "max_over_mean_load": round(imbalance, 3)})
        if step % 20 == 0 or step == 1:
            log(f"step {step}/{settings.steps} loss {loss.item():.3f} lr {lr:.2e} "
                f"load max/mean {imbalance:.2f} ({time.time() - t0:.0f}s)")
        if step % settings.eval_every == 0 or step == settings.steps:
            ev = evaluate(model, held_out, settings.seq_len)
            history["evals"].append({"step": step, **ev})
            log(f"  held-out answer loss {ev['loss']:.3f} (perplexity {ev['perplexity']:.1f})")
    history["train_seconds"] = round(time.time() - t0, 1)
    history["final_eval"] = history["evals"][-1]
    final = {n: p.detach().clone() for n, p in model.named_parameters()}
    eos_ids = [special["<|endoftext|>"], special["<|role_end|>"]]
    for vdir, d in (variants or {}).items():
        _load_weights(model, averages[d] if d > 0 else final)
        vlog = {**history, "settings": {**history["settings"], "ema": d},
                "final_eval": evaluate(model, held_out, settings.seq_len)}
        _finish(_stage(Path(vdir), model, cfg_dict, tokenizer_dir, eos_ids), Path(vdir), vlog)
        log(f"  variant ema={d}: held-out answer loss {vlog['final_eval']['loss']:.3f} -> {vdir}")
    if settings.ema > 0:
        _load_weights(model, averages[settings.ema])
        history["final_eval_unaveraged"] = history["final_eval"]
        history["final_eval"] = evaluate(model, held_out, settings.seq_len)
        log(f"  averaged weights (ema {settings.ema}): held-out answer loss {history['final_eval']['loss']:.3f}")
    else:
        _load_weights(model, final)

    out = Path(out_dir)
    tmp = _stage(out, model, cfg_dict, tokenizer_dir, eos_ids)
    if settings.probe:  # on the checkpoint as written (bf16), loaded the way every command loads it
        from angelcli.loader import load_model

        shipped, shipped_cfg, _ = load_model(tmp, dtype=torch.float32)
        history["topic_probe"] = topic_probe(shipped, shipped_cfg, tok)
        log(f"  topic probe: {history['topic_probe']['on_topic']}/{history['topic_probe']['total']} "
            "demo questions answered on topic")
    _finish(tmp, out, history)
    return history


def _load_weights(model, weights: dict) -> None:
    import torch

    with torch.no_grad():
        for n, p in model.named_parameters():
            p.copy_(weights[n])


def _stage(out: Path, model, cfg_dict: dict, tokenizer_dir, eos_ids: list) -> Path:
    """The model's checkpoint and the tokenizer files -> out's temporary twin (out.partial), which is returned."""
    from angelcli.fixtures import write_checkpoint

    tmp = out.with_name(out.name + ".partial")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    write_checkpoint(tmp, cfg_dict, _checkpoint_state_dict(model), shards=2, eos_ids=eos_ids)
    for f in ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json"):
        if (Path(tokenizer_dir) / f).exists():
            shutil.copy(Path(tokenizer_dir) / f, tmp / f)
    return tmp


def _finish(tmp: Path, out: Path, history: dict) -> None:
    """Add the training log to a staged checkpoint and put it in place of out."""
    (tmp / "training_log.json").write_text(json.dumps(history, indent=1))
    shutil.rmtree(out, ignore_errors=True)
    tmp.rename(out)


def add_dropout(model, p: float) -> list:
    """Dropout with rate p on the output of every layer's attention and MLP/MoE (the residual branches), in
    training mode only: forward hooks, so the model code and the checkpoint are those of inference. Uses
    torch's global generator (seeded by train_tiny). -> the hook handles."""
    import torch.nn.functional as F

    def hook(module, _inputs, output):
        return F.dropout(output, p, training=module.training)

    return [m.register_forward_hook(hook) for layer in model.model.layers for m in (layer.attention, layer.mlp)]


def _lr(step: int, s: TrainSettings) -> float:
    if step <= s.warmup:
        return s.lr * step / s.warmup
    progress = (step - s.warmup) / max(1, s.steps - s.warmup)
    return s.lr * (s.min_lr_ratio + (1 - s.min_lr_ratio) * 0.5 * (1 + math.cos(math.pi * progress)))


def _update_bias(moe_blocks, router_outputs, num_experts: int, rate: float) -> float:
    """Aux-loss-free balancing: bias += rate * sign(mean load - load). Returns the worst max/mean load."""
    import torch

    worst = 0.0
    with torch.no_grad():
        for block, r in zip(moe_blocks, router_outputs):
            load = torch.bincount(r.topk_ids.reshape(-1), minlength=num_experts).float()
            mean = load.mean()
            block.gate.expert_bias += rate * torch.sign(mean - load)
            worst = max(worst, float(load.max() / mean))
    return worst


def _checkpoint_state_dict(model) -> dict:
    """Model parameters -> checkpoint names (per-expert tensors unstacked), bf16 with fp32 expert_bias."""
    import torch

    sd = {}
    cfg = model.config
    inter = cfg.moe_intermediate_size
    for name, p in model.named_parameters():
        t = p.detach()
        if name.endswith("experts.w13") or name.endswith("experts.w2"):
            prefix = name.rsplit(".", 1)[0]
            for e in range(t.shape[0]):
                if name.endswith("w13"):
                    sd[f"{prefix}.{e}.gate_proj.weight"] = t[e, :inter].to(torch.bfloat16).contiguous()
                    sd[f"{prefix}.{e}.up_proj.weight"] = t[e, inter:].to(torch.bfloat16).contiguous()
                else:
                    sd[f"{prefix}.{e}.down_proj.weight"] = t[e].to(torch.bfloat16).contiguous()
            continue
        dtype = torch.float32 if name.endswith("expert_bias") else torch.bfloat16
        sd[name] = t.to(dtype).contiguous()
    from angelcli.model import expected_checkpoint_names

    return {n: sd[n] for n in expected_checkpoint_names(cfg)}
