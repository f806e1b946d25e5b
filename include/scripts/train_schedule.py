"""The learning-rate schedule of the training job, fitted to a time budget.

Linear warm-up then linear decay to 0, driven by training *progress* in [0, 1]: the larger
of the step share and (with ``time_budget_s``) the time share, so a run cut by its time
budget still ends fully decayed instead of stopping at a high learning rate.
"""
from __future__ import annotations


class ProgressSchedule:
    """Sets the optimizer's learning rate from progress; resumable like a torch scheduler."""

    def __init__(self, optimizer, peak_lr: float, warmup_ratio: float, total_steps: int, time_budget_s: float = 0.0):
        self.optimizer, self.peak, self.warmup = optimizer, peak_lr, warmup_ratio
        self.total, self.budget = total_steps, time_budget_s
        self.progress = 0.0
        self._apply(self.factor(0.0))

    def factor(self, p: float) -> float:
        """Learning-rate multiplier at progress ``p``."""
        if p < self.warmup:
            return max(p / self.warmup, 1.0 / max(1, self.total))  # never exactly 0 on the first step
        return max(0.0, (1 - p) / (1 - self.warmup))

    def step(self, step: int, elapsed_s: float) -> None:
        """Set the learning rate for the step after ``step`` (1-based count done)."""
        p = step / self.total
        if self.budget:
            p = max(p, elapsed_s / self.budget)
        self.progress = min(1.0, p)
        self._apply(self.factor(self.progress))

    def done(self) -> bool:
        """True once progress reached 1 (the learning rate is 0)."""
        return self.progress >= 1.0

    def _apply(self, f: float) -> None:
        for g in self.optimizer.param_groups:
            g["lr"] = self.peak * f

    def get_last_lr(self) -> list[float]:
        return [g["lr"] for g in self.optimizer.param_groups]

    def state_dict(self) -> dict[str, float]:
        return {"progress": self.progress}

    def load_state_dict(self, state: dict[str, float]) -> None:
        self.progress = state["progress"]
        self._apply(self.factor(self.progress))
