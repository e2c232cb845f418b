"""Training-time test (TTT): the EAGLE3 draft unrolled K steps over whole sequences in parallel.

Alignment (spec eagle3.md §2.3-2.5), target logits at position j predicting token j+1:
    step k, position t:  hidden  = fc(aux_t) for k = 0, else the draft's own pre-norm output of step k-1 at t
                         token   = x_{t+1+k}          (ground truth, shifted one more each step)
                         RoPE    = t + k
                         teacher = softmax(target logits at t+1+k restricted to the draft vocab)
                         mask    = token t+2+k is supervised and the target's argmax there is in the draft vocab
Attention: step-0 keys causally plus the keys of steps 1..k at the same position (DraftAttention's ttt_kv),
so every position trains an independent k-step chain branching at t.
Loss = sum_k decay^k * L_k, L_k = soft cross-entropy (mean over masked positions, fp32).
Accuracy_k = draft top-1 (mapped through d2t) == target argmax, over supervised positions.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch


def shift(x: torch.Tensor, n: int) -> torch.Tensor:
    """x [B, T, ...] -> x[:, n:] zero-padded back to length T."""
    T = x.shape[1]
    if n >= T:
        return torch.zeros_like(x)
    pad = torch.zeros((x.shape[0], n, *x.shape[2:]), dtype=x.dtype, device=x.device)
    return torch.cat([x[:, n:], pad], 1)


@dataclass
class StepMetrics:
    loss: list[float] = field(default_factory=list)
    correct: list[float] = field(default_factory=list)
    count: list[float] = field(default_factory=list)

    def add(self, other: "StepMetrics") -> None:
        if not self.loss:
            self.loss, self.correct, self.count = [0.0] * len(other.loss), [0.0] * len(other.loss), [0.0] * len(other.loss)
        for i in range(len(other.loss)):
            self.loss[i] += other.loss[i] * other.count[i]
            self.correct[i] += other.correct[i]
            self.count[i] += other.count[i]

    def accuracy(self) -> list[float]:
        return [c / n if n else 0.0 for c, n in zip(self.correct, self.count)]

    def mean_loss(self) -> list[float]:
        """For accumulated metrics (add): loss weighted by supervised positions."""
        return [l / n if n else 0.0 for l, n in zip(self.loss, self.count)]


def simulated_tau(acc: list[float], k: int) -> float:
    """1 + sum_{j<k} prod_{i<=j} acc_i: expected tokens per verification if step accuracies were the
    conditional acceptance rates (bonus included, as tau is; SpecForge's simulated_acc_len omits the 1)."""
    tau, run = 1.0, 1.0
    for a in acc[:k]:
        run *= a
        tau += run
    return tau


def ttt_loss(draft, ids: torch.Tensor, aux: torch.Tensor, teacher: torch.Tensor, best: torch.Tensor,
             loss_mask: torch.Tensor, steps: int, decay: float = 0.8) -> tuple[torch.Tensor, StepMetrics]:
    """ids [B, T]; aux [B, T, 3Ht] target features; teacher [B, T, Vd] target logits on the draft vocab
    (fp32); best [B, T] target argmax over the full vocab; loss_mask [B, T] 1 for supervised, non-pad tokens.
    -> (weighted loss, per-step metrics)."""
    B, T = ids.shape
    hidden = draft.fuse(aux.to(draft.fc.weight.dtype))
    base_pos = torch.arange(T, device=ids.device).expand(B, T)
    kv: list = []
    total = hidden.new_zeros((), dtype=torch.float32)
    metrics = StepMetrics()
    t2d = draft.t2d
    for k in range(steps):
        tok = shift(ids, 1 + k)
        teach = shift(teacher, 1 + k)
        tbest = shift(best, 1 + k)
        sup = shift(loss_mask, 2 + k).bool()
        _, hidden = draft(tok, hidden, base_pos + k, ttt_kv=kv, head=False)
        # The head and both softmaxes run on supervised positions only (prompt and padding skip the Vd-wide
        # work, most of a step's cost); the recurrence above still covers every position.
        logits = draft.logits(hidden[sup])  # [N, Vd]
        m = t2d[tbest[sup]].float()
        logq = torch.log_softmax(logits, -1)
        p = torch.softmax(teach[sup].float(), -1)
        per_pos = -(p * logq).sum(-1)
        step_loss = (per_pos * m).sum() / m.sum().clamp(min=1.0)
        total = total + (decay**k) * step_loss
        with torch.no_grad():
            pred = draft.to_target_ids(logits.argmax(-1))
            metrics.loss.append(float(step_loss))
            metrics.correct.append(float((pred == tbest[sup]).sum()))
            metrics.count.append(float(sup.sum()))
    return total, metrics
