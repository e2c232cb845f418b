"""Named checks and how their outcome becomes angel verify's exit status.

Every stage of `angel verify` (static accounting, tensor inventory, routing statistics, comparison with
another checkpoint) appends `Check`s to one list. A check belongs to one of two kinds, and the kind decides
the exit status, like a test runner:

  integrity  the checkpoint itself is wrong: a tensor missing, a wrong shape or dtype, a NaN scale, a
             truncated shard. Exit 3 (angelcli.errors.IntegrityError).
  routing    the weights load but the model does not behave like a sparse MoE should: not exactly top-k,
             the group limit broken, dead experts, a collapsed load, routing drift against a reference.
             Exit 1 (angelcli.errors.CheckFailed).

Integrity wins when both kinds fail. A check whose evidence is too thin (too few tokens to call an expert
dead) is "skip", never "pass".
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field

from angelcli.errors import EXIT_CHECK_FAILED, EXIT_INTEGRITY, EXIT_OK

INTEGRITY = "integrity"
ROUTING = "routing"
PASS, FAIL, SKIP = "pass", "fail", "skip"


@dataclass
class Check:
    name: str  # dotted, stable across versions: "inventory.tensors", "routing.top_k", ...
    kind: str  # INTEGRITY or ROUTING
    status: str  # PASS, FAIL or SKIP
    detail: str  # one line: what was checked, and on failure the first offender by name
    layers: list[int] = field(default_factory=list)  # failing layers, for per-layer routing checks

    @property
    def failed(self) -> bool:
        return self.status == FAIL

    def to_dict(self) -> dict:
        out = asdict(self)
        out["passed"] = self.status == PASS
        if not self.layers:
            out.pop("layers")
        return out


def check(name: str, kind: str, ok: bool, detail: str, layers: list[int] | None = None) -> Check:
    return Check(name, kind, PASS if ok else FAIL, detail, list(layers or []))


def skip(name: str, kind: str, detail: str) -> Check:
    return Check(name, kind, SKIP, detail)


def exit_code(checks: list[Check]) -> int:
    """0 all pass (or skip), 3 any integrity check fails, else 1 any routing check fails."""
    if any(c.failed and c.kind == INTEGRITY for c in checks):
        return EXIT_INTEGRITY
    if any(c.failed for c in checks):
        return EXIT_CHECK_FAILED
    return EXIT_OK


def failure_summary(checks: list[Check]) -> str:
    """One line naming the failed checks and the first offender of the first one."""
    bad = [c for c in checks if c.failed]
    if not bad:
        return "all checks passed"
    names = ", ".join(c.name for c in bad)
    return f"{len(bad)} check{'s' if len(bad) > 1 else ''} failed ({names}): {bad[0].detail}"
