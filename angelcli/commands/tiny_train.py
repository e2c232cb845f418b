"""`angel tiny-train`: rebuild angel-tiny, the embedded default model, from the bundled corpus."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer


def tiny_train(
    out: Optional[Path] = typer.Option(None, "--out", help="Output directory (default: the package's angel-tiny)."),
    steps: Optional[int] = typer.Option(None, "--steps", help="Optimizer steps (default: the shipped model's)."),
    threads: int = typer.Option(2, "--threads", help="CPU threads (results are reproducible for a fixed count)."),
    seed: int = typer.Option(0, "--seed"),
    json_out: bool = typer.Option(False, "--json", help="Print the training summary as JSON."),
    prompt_loss_weight: Optional[float] = typer.Option(None, "--prompt-loss-weight", help="Loss weight of question "
                                                       "and template tokens (shipped model: 0.1; 0 = answers only)."),
    corpus_version: Optional[int] = typer.Option(None, "--corpus-version", help="Corpus builder version (default: "
                                                 "the shipped corpus files, version 5); 2, 3 or 4 rebuild an earlier "
                                                 "builder's corpus in memory, 6 the next one (more symptom-description "
                                                 "questions; docs/angel-tiny.md, Corpus)."),
    routing: bool = typer.Option(True, "--routing/--no-routing", help="Add the routing examples: many more "
                                 "wordings per question, supervised on the opening of the answer that names the "
                                 "record (docs/angel-tiny.md, Training). --no-routing --steps 1400 --ema 0 = the "
                                 "v5 model."),
    lay: bool = typer.Option(False, "--lay/--no-lay", help="With --routing: add symptom descriptions in everyday "
                             "words (\"it stings when I pee\"), some ending with the patient's guess, and named "
                             "questions in context (ages, doses, a second question); not yet in the shipped "
                             "angel-tiny."),
    written: bool = typer.Option(True, "--written/--no-written", help="With --routing: add the freely written "
                                 "questions (brand names, misspellings, long messages; angelcli/data/medical/"
                                 "routing_written*.jsonl), as the shipped angel-tiny does. --no-written --steps "
                                 "1600 --ema 0 = an earlier model (docs/angel-tiny.md)."),
    written_rounds: int = typer.Option(5, "--written-rounds", help="With --written: how many rounds of written "
                                       "questions (5 = the shipped model's: rounds 4 and 5 add more descriptions "
                                       "and long messages with the name mid-message; 3 --steps 2200 --ema 0 = the "
                                       "previous model; 2 --steps 2000 --ema 0 the one before; "
                                       "docs/angel-tiny.md)."),
    question_noise: float = typer.Option(0.0, "--question-noise", help="Chance of replacing each word-piece of a "
                                         "training question by a random question token (robustness to new "
                                         "wordings); 0 = the shipped model's rows."),
    routing_weight: Optional[float] = typer.Option(None, "--routing-weight", help="With --routing: chance of a "
                                                  "training row starting at a routing example, relative to a "
                                                  "conversation's 1.0 (default 0.45: 40% of rows for the shipped "
                                                  "recipe, 22% with --no-written); the rest train corpus answers."),
    dropout: float = typer.Option(0.0, "--dropout", help="Dropout on every layer's attention and MLP/MoE output "
                                  "while training (the model code and checkpoint are unchanged); 0 = the shipped "
                                  "model."),
    ema: float = typer.Option(0.998, "--ema", help="Write an exponential moving average of the weights with this "
                              "decay per step (0.998, the shipped model's: about the last 500 steps) instead of "
                              "the final weights; 0 = the final weights."),
) -> None:
    """Train angel-tiny (BailingMoeV2, 64 experts top-2 in 8 groups) on the medical corpus; ~50 min on 2 cores.

    Ends with the topic probe: the 40 built-in demo questions and 20 held-out phrasings answered greedily,
    counted on topic or not. A retrained model needs a retrained EAGLE3 draft (`just draft-tiny`): the draft
    is fingerprint-checked against the model it was trained for.

    Examples:
      angel tiny-train --out /tmp/angel-tiny
      angel tiny-train --out /tmp/angel-tiny-lay --lay   (with everyday-word descriptions too)
      angel tiny-train --out /tmp/angel-tiny-prev --written-rounds 3 --steps 2200 --ema 0   (the previous model)
      angel tiny-train --out /tmp/angel-tiny-v5 --no-routing --steps 1400 --ema 0   (the v5 model)
      angel tiny-train --out /tmp/angel-tiny-v2 --corpus-version 2 --steps 1100 --no-routing --ema 0   (the v2 model)
    """
    from angelcli.console import emit_json, log
    from angelcli.data import load_split
    from angelcli.errors import UsageError
    from angelcli.resolve import TINY_DIR
    from angelcli.tiny.corpus import BUILDER_VERSION, VARIANTS, generate
    from angelcli.tiny.tokenizer import TINY_TOKENIZER_DIR
    from angelcli.tiny.train import TrainSettings, train_tiny

    if steps is not None and steps < 1:
        raise UsageError("--steps must be >= 1")
    if threads < 1:
        raise UsageError("--threads must be >= 1")
    dest = out or TINY_DIR
    if prompt_loss_weight is not None and not 0 <= prompt_loss_weight <= 1:
        raise UsageError("--prompt-loss-weight must be between 0 and 1")
    if not 0 <= question_noise < 1:
        raise UsageError("--question-noise must be in [0, 1)")
    if not 0 <= dropout < 1:
        raise UsageError("--dropout must be in [0, 1)")
    if not 0 <= ema < 1:
        raise UsageError("--ema must be in [0, 1)")
    from angelcli.tiny.routing_written import ROUND_PATHS, ROUNDS

    round_path = ROUND_PATHS.get(written_rounds)  # rounds 1-2 are always there; a later round has its own file
    if written_rounds not in ROUNDS or (round_path is not None and not round_path.exists()):
        raise UsageError(f"--written-rounds must be one of {', '.join(map(str, ROUNDS))} (with its data file)")
    if routing_weight is not None and not 0 < routing_weight <= 10:
        raise UsageError("--routing-weight must be in (0, 10]")
    extra = {"steps": steps} if steps else {}
    if routing_weight is not None:
        extra["kind_weights"] = {**TrainSettings().kind_weights, "routing": routing_weight}
    if prompt_loss_weight is not None:
        extra["prompt_loss_weight"] = prompt_loss_weight
    settings = TrainSettings(threads=threads, seed=seed, routing=routing, lay=lay, written=written,
                             written_rounds=written_rounds,
                             question_noise=question_noise, dropout=dropout, ema=ema, **extra)
    if corpus_version is None or corpus_version == BUILDER_VERSION:
        train, held = load_split("train"), load_split("eval")  # the shipped files are exactly generate()'s output
    elif corpus_version in VARIANTS and corpus_version >= 2:  # v1 only seeds the tokenizer's vocabulary
        splits = generate(seed=0, version=corpus_version)  # deterministic: the same samples for every run
        train, held = splits["train"], splits["eval"]
    else:
        known = ", ".join(str(v) for v in sorted(VARIANTS) if v >= 2)
        raise UsageError(f"--corpus-version must be one of {known}")
    hist = train_tiny(dest, TINY_TOKENIZER_DIR, train, held, settings, log=log)
    probe = hist.get("topic_probe", {})
    summary = {"out": str(dest), "steps": settings.steps, "train_seconds": hist["train_seconds"],
               "untrained_eval": hist["untrained_eval"], "final_eval": hist["final_eval"],
               "topic_probe": {k: probe[k] for k in ("on_topic", "total", "rate") if k in probe}}
    if json_out:
        emit_json(summary)
    else:
        log(f"angel-tiny written to {dest}: held-out answer loss {hist['final_eval']['loss']:.3f} "
            f"(untrained {hist['untrained_eval']['loss']:.3f}), {probe.get('on_topic')}/{probe.get('total')} "
            f"probe questions on topic, in {hist['train_seconds']:.0f}s")
