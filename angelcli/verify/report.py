"""Human-readable `angel verify` output: parameter accounting, per-layer routing, then the named checks.

Printed with rich on stdout (the report is the command's data; --json prints the same content as JSON
instead). On a terminal the status column is coloured; in a pipe rich writes plain text.
"""

from __future__ import annotations

import sys

from angelcli.params import human_count

_STATUS_STYLE = {"pass": "bold green", "fail": "bold red", "skip": "yellow"}


def _params_table(static: dict):
    from rich.table import Table

    t = Table(title="parameters", title_justify="left")
    t.add_column("component")
    t.add_column("total", justify="right")
    t.add_column("active / token", justify="right")
    comps, active = static["components"], static["active_components"]
    for name, n in comps.items():
        if n or active.get(name):
            t.add_row(name, f"{n:,}", f"{active[name]:,}" if name in active else "-")
    t.add_section()
    t.add_row("total", f"{static['total_params']:,} ({human_count(static['total_params'])})",
              f"{static['active_params']:,} ({human_count(static['active_params'])})")
    t.add_row("  model dtype + fp32", f"{static['total_params_model_dtype']:,} + {static['total_params_fp32']:,}", "")
    t.add_row("  without embeddings", "", f"{static['active_params_non_embedding']:,} "
                                          f"({human_count(static['active_params_non_embedding'])})")
    return t


def _routing_table(routing: dict, against: dict | None):
    from rich.table import Table

    t = Table(title=f"routing: {routing['tokens']:,} tokens in {routing['sequences']} sequences "
                    f"({routing['prompts']['source']}), {routing['dtype']} on {routing['device']}",
              title_justify="left")
    for col in ("layer", "dead", "max/mean", "entropy", "max groups", "bias changed"):
        t.add_column(col, justify="right")
    agree = {}
    if against:
        t.add_column("same top-k", justify="right")
        t.add_column("jaccard", justify="right")
        agree = {s["layer"]: s for s in against["layers"]}
    for s in routing["layers"]:
        row = [str(s["layer"]), f"{len(s['dead_experts'])}/{len(s['expert_load'])}", f"{s['max_mean_ratio']:.2f}",
               f"{s['entropy_norm']:.3f}", str(s["max_groups"]),
               "-" if s["bias_changed_share"] is None else f"{s['bias_changed_share']:.1%}"]
        if against:
            a = agree[s["layer"]]
            row += [f"{a['identical_share']:.1%}", f"{a['mean_jaccard']:.3f}"]
        t.add_row(*row)
    return t


def _checks_table(checks: list[dict]):
    from rich.table import Table

    t = Table(title="checks", title_justify="left")
    t.add_column("check")
    t.add_column("result")
    t.add_column("detail", overflow="fold")
    for c in checks:
        st = c["status"]
        t.add_row(c["name"], f"[{_STATUS_STYLE[st]}]{st.upper()}[/]", c["detail"])
    return t


def render_text(report: dict, file=None) -> None:
    from rich.console import Console

    file = file or sys.stdout
    tty = hasattr(file, "isatty") and file.isatty()
    con = Console(file=file, width=None if tty else 140, no_color=not tty, highlight=False, soft_wrap=False)
    s = report["static"]
    where = report["path"] or "bundled config (not pulled)"
    con.print(f"[bold]angel verify[/] {report['model']}  ({where})")
    if s is None:  # --checksums-only
        con.print(_checks_table(report["checks"]))
        _verdict(con, report)
        return
    e = s["experts"]
    con.print(f"routed experts: {e['per_token']} of {e['routed']} per token (activation ratio "
              f"{report['activation_ratio']:.4g} = 1/{round(1 / report['activation_ratio'])}) + {e['shared']} shared, "
              f"groups top-{e['topk_group']} of {e['n_group']}, {e['moe_layers']} MoE + {e['dense_layers']} dense "
              f"layers; {report['active_params'] / report['total_params']:.2%} of parameters active per token")
    con.print(_params_table(s))
    if report.get("routing"):
        con.print(_routing_table(report["routing"], report.get("against")))
    if report.get("against"):
        d = report["against"]["logits"]
        con.print(f"against {report['against']['model']}: mean KL {d['kl_mean']:.4g} nats (max {d['kl_max']:.4g}), "
                  f"top-1 agreement {d['top1_agreement']:.1%}, top-1 logprob drift mean "
                  f"{d['top1_logprob_drift_mean']:.4g} max {d['top1_logprob_drift_max']:.4g} over "
                  f"{d['positions']:,} positions")
    if report["checks"]:
        con.print(_checks_table(report["checks"]))
    elif report["path"] is None:
        con.print("no weights here: parameter accounting only (angel pull it for the inventory and routing checks)")
    _verdict(con, report)


def _verdict(con, report: dict) -> None:
    counts = {k: sum(1 for c in report["checks"] if c["status"] == k) for k in ("pass", "fail", "skip")}
    verdict = "[bold green]OK[/]" if report["passed"] else "[bold red]FAILED[/]"
    con.print(f"{verdict}: {counts['pass']} passed, {counts['fail']} failed, {counts['skip']} skipped")
