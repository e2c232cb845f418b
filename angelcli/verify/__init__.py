"""`angel verify`: routing sparsity and checkpoint integrity of BailingMoeV2 checkpoints.

  static.py       config.json -> exact total / active parameters and the activation ratio (works for an alias
                  before download); with weights, the header inventory (inventory.py, quant_layout.py)
  stream.py       layer-streaming forward pass: one decoder layer in memory at a time
  prompts.py      --prompts medical | PATH | random -> token ids
  dynamic.py      per-MoE-layer routing statistics, the routing checks, --against agreement and logit drift
  checks.py       named checks, pass/fail/skip, exit status (1 routing, 3 integrity)
  report.py       the text report; plot.py the --plot heatmap; run.py ties the stages together
"""

from angelcli.verify.checks import Check, exit_code
from angelcli.verify.dynamic import Thresholds
from angelcli.verify.run import VerifyOptions, verify

__all__ = ["Check", "Thresholds", "VerifyOptions", "exit_code", "verify"]
