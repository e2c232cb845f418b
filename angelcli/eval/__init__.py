"""Medical benchmarks on angel's engine (`angel eval`), the quantization quality gate, and the
lm-evaluation-harness model type "angel" (lm_eval_adapter.py; run it with `python -m angelcli.eval.lm_eval_cli`).

Data flow: tasks.load_task (a data set's released files -> items.Item) -> runner.run_items (scorer.py:
batched option log-likelihoods, or chat-template generation) -> evaluate.evaluate (one model or a paired
comparison; stats.py) -> report.py (stderr lines, markdown) / JSON.
"""
