"""`lm_eval` with angel's model type registered: `python -m angelcli.eval.lm_eval_cli --model angel ...`.

lm-evaluation-harness 0.4 has no plugin or entry-point hook for model types (its registry holds its own
MODEL_MAPPING and whatever the running process registered), so the stock `lm_eval` command cannot know
"angel". This runs the very same command line (lm_eval.__main__.cli_evaluate: subcommands run / ls /
validate, every flag) after importing angelcli.eval.lm_eval_adapter, which registers it. The console script
`angel-lm-eval` is the same thing.
"""

from __future__ import annotations

import sys


def main() -> None:
    try:
        import lm_eval.__main__ as harness
    except ImportError:
        print("angel: error: lm-evaluation-harness is not installed (pip install 'angelcli[eval]')", file=sys.stderr)
        sys.exit(2)
    import angelcli.eval.lm_eval_adapter  # noqa: F401 - registers the "angel" model type

    sys.argv[0] = "lm_eval"
    harness.cli_evaluate()


if __name__ == "__main__":
    main()
