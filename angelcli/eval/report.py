"""Human-readable output of `angel eval`: a few stderr lines, and the markdown report (--report FILE)."""

from __future__ import annotations


def _pct(x: float) -> str:
    return f"{100 * x:.2f}"


def summary_lines(s: dict) -> list[str]:
    out = []
    for m in s["models"]:
        lo, hi = m["ci95"]
        line = (f"{m['model']}: {s['task']} accuracy {_pct(m['accuracy'])} % ({m['correct']}/{m['questions']}, "
                f"95% CI {_pct(lo)}-{_pct(hi)})")
        if "acc_norm" in m:
            line += f", acc_norm {_pct(m['acc_norm'])} %"
        out.append(line)
    c = s.get("compare")
    if c:
        mc = c["mcnemar"]
        out.append(f"difference (B - A) {c['difference_points']:+.2f} points, 95% CI "
                   f"[{100 * c['ci95'][0]:+.2f}, {100 * c['ci95'][1]:+.2f}]; McNemar p = {mc['p_value']:.4g} "
                   f"({mc['method']}); {len(c['flips'])} items flipped "
                   f"({mc['only_a_correct']} right only in A, {mc['only_b_correct']} right only in B)")
    return out


def markdown(s: dict, max_flips: int = 50) -> str:
    mode = "log-likelihood of each option (lm-eval prompt)" if s["mode"] == "loglikelihood" else \
        "generation through the chat template, answer extracted from the reply"
    lines = [f"# angel eval: {s['task']}", "",
             f"* questions: {s['questions']}" + (f" (limit {s['limit']})" if s.get("limit") else ""),
             f"* mode: {mode}", f"* few-shot: {s['fewshot']}, seed {s['seed']}",
             f"* data: {', '.join('`' + f + '`' for f in s['data_files'])}"]
    if s.get("skipped_multi_answer"):
        lines.append(f"* left out: {s['skipped_multi_answer']} multiple-answer questions "
                     "(score them with --generate)")
    lines += ["", "| model | accuracy % | 95% CI | correct / n | " + ("acc_norm % |" if s["mode"] == "loglikelihood"
                                                                   else "unanswered |") + " questions/s |",
              "|---|---:|---|---:|---:|---:|"]
    for m in s["models"]:
        extra = _pct(m["acc_norm"]) if "acc_norm" in m else str(m.get("unanswered", ""))
        lines.append(f"| {m['model']} | {_pct(m['accuracy'])} | {_pct(m['ci95'][0])}–{_pct(m['ci95'][1])} | "
                     f"{m['correct']} / {m['questions']} | {extra} | {m['questions_per_s']} |")
    subjects = sorted({k for m in s["models"] for k in m.get("per_subject", {})})
    if subjects:
        lines += ["", "## Per subject", "", "| subject | n | " + " | ".join(m["model"] for m in s["models"]) + " |",
                  "|---|---:|" + "---:|" * len(s["models"])]
        for sub in subjects:
            cells = [_pct(m["per_subject"][sub]["accuracy"]) if sub in m.get("per_subject", {}) else ""
                     for m in s["models"]]
            n = next(m["per_subject"][sub]["questions"] for m in s["models"] if sub in m.get("per_subject", {}))
            lines.append(f"| {sub} | {n} | " + " | ".join(cells) + " |")
    c = s.get("compare")
    if c:
        a, b = s["models"][0]["model"], s["models"][1]["model"]
        mc = c["mcnemar"]
        lines += ["", f"## Paired comparison: B = {b} against A = {a}", "",
                  f"* difference B − A: **{c['difference_points']:+.2f} points**, bootstrap 95% CI "
                  f"[{100 * c['ci95'][0]:+.2f}, {100 * c['ci95'][1]:+.2f}] "
                  f"({c['bootstrap_rounds']} resamples of items)",
                  f"* McNemar ({mc['method']}): {mc['only_a_correct']} right only in A, {mc['only_b_correct']} right "
                  f"only in B, p = {mc['p_value']:.4g}",
                  f"* answers changed: {c['changed_answers']}, correctness flipped: {len(c['flips'])}"]
        if c["flips"]:
            lines += ["", "| item | subject | gold | A | B | change |", "|---|---|---|---|---|---|"]
            for f in c["flips"][:max_flips]:
                lines.append(f"| {f['id']} | {f['subject']} | {f['gold']} | {f['pred_a']} | {f['pred_b']} "
                             f"| {f['change']} |")
            if len(c["flips"]) > max_flips:
                lines.append(f"\n({len(c['flips']) - max_flips} more in the JSON output)")
    return "\n".join(lines) + "\n"
