"""The learning-rate schedule of the training job, fitted to a time budget.

Linear warm-up then linear decay to 0, driven by training *progress* in [0, 1]: the larger
of the step share and (with ``time_budget_s``) the time share, so a run cut by its time
budget still ends fully decayed instead of stopping at a high learning rate.
``BudgetSchedule`` is the ``LambdaLR`` factor ``ReviewTrainer.create_scheduler`` installs;
``train_callbacks.TimeBudgetCallback`` ends training once its progress reaches 1.
"""
from __future__ import annotations

import time


class Clock:
    """Training seconds across resumes: those of earlier runs plus this run's."""

    def __init__(self, earlier_s: float = 0.0):
        self.earlier_s, self.t0 = earlier_s, time.monotonic()

    def elapsed(self) -> float:
        return self.earlier_s + time.monotonic() - self.t0


class BudgetSchedule:
    """Learning-rate factor by progress = max(step share, time share); remembers the last progress."""

    def __init__(self, warmup_ratio: float, total_steps: int, time_budget_s: float = 0.0, clock: Clock | None = None):
        self.warmup, self.total, self.budget = warmup_ratio, total_steps, time_budget_s
        self.clock = clock or Clock()
        self.progress = 0.0

    def factor(self, p: float) -> float:
        """Learning-rate multiplier at progress ``p``."""
        if p < self.warmup:
            return max(p / self.warmup, 1.0 / max(1, self.total))  # never exactly 0 on the first step
        return max(0.0, (1 - p) / (1 - self.warmup))

    def __call__(self, step: int) -> float:
        """The factor for the step after ``step`` steps done (``LambdaLR``'s ``lr_lambda``)."""
        p = step / self.total
        if self.budget and step:
            p = max(p, self.clock.elapsed() / self.budget)
        self.progress = min(1.0, p)
        return self.factor(self.progress)

    def done(self) -> bool:
        """True once progress reached 1 (the learning rate is 0)."""
        return self.progress >= 1.0
