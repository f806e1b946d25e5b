"""Training debugger: record curves and gradient statistics, evaluate rules while training.

The analogue of SageMaker Debugger's built-in rules, computed in-process:

========================  =============================================================
rule                      triggers when
========================  =============================================================
loss_not_decreasing       the mean training loss of the last ``loss_window`` records is
                          not below the mean of the ``loss_window`` records before it
overfit                   validation loss rose for ``overfit_patience`` evaluations in a
                          row while the training loss fell
vanishing_gradient        the total gradient norm stayed below ``vanishing_threshold`` for
                          ``vanishing_patience`` records in a row
exploding_tensor          the loss or gradient norm is NaN/inf, or the gradient norm
                          exceeds ``exploding_threshold``
========================  =============================================================

Each rule has an action: ``log`` (a WARNING line in the job log and the rule results) or
``stop`` (also ends training early; the model trained so far is still saved). Results go
to ``debugger/rule_results.json`` (status per rule as SageMaker names them:
``NoIssuesFound`` / ``IssuesFound``), the raw curves to ``debugger/records.json`` and a
plot to ``debugger/curves.png``.
"""
from __future__ import annotations

import logging
import math
import os
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from common import write_json_atomic

log = logging.getLogger("train.debugger")

RULES = ("loss_not_decreasing", "overfit", "vanishing_gradient", "exploding_tensor")
ACTIONS = ("log", "stop")
DEFAULT_ACTIONS = {"loss_not_decreasing": "log", "overfit": "log", "vanishing_gradient": "log",
                   "exploding_tensor": "stop"}


def parse_actions(spec: str) -> dict[str, str]:
    """``"overfit=stop,loss_not_decreasing=log"`` -> full action map (defaults for the rest)."""
    actions = dict(DEFAULT_ACTIONS)
    for item in filter(None, (s.strip() for s in spec.split(","))):
        rule, _, action = item.partition("=")
        rule, action = rule.strip(), action.strip().lower()
        if rule not in RULES or action not in ACTIONS:
            raise ValueError(f"debugger_rule_actions: {item!r} is not RULE=ACTION with RULE in "
                             f"{', '.join(RULES)} and ACTION in {', '.join(ACTIONS)}")
        actions[rule] = action
    return actions


@dataclass
class RuleState:
    """Outcome of one rule so far."""

    rule: str
    action: str
    params: dict[str, Any]
    triggered: bool = False
    first_step: int | None = None
    count: int = 0
    message: str = ""

    @property
    def status(self) -> str:
        return "IssuesFound" if self.triggered else "NoIssuesFound"


@dataclass
class DebuggerConfig:
    """Interval and rule thresholds (filled from the hyper-parameters)."""

    interval: int = 10
    actions: dict[str, str] = field(default_factory=lambda: dict(DEFAULT_ACTIONS))
    loss_window: int = 5
    loss_min_delta: float = 0.0
    overfit_patience: int = 2
    vanishing_threshold: float = 1e-7
    vanishing_patience: int = 3
    exploding_threshold: float = 1e4


def layer_of(param_name: str) -> str:
    """Group a parameter name into a layer: embeddings, encoder.layer.N, pooler, classifier."""
    parts = param_name.split(".")
    if "layer" in parts:
        i = parts.index("layer")
        if i + 1 < len(parts) and parts[i + 1].isdigit():
            return f"encoder.layer.{parts[i + 1]}"
    for name in ("embeddings", "pooler", "classifier"):
        if name in parts:
            return name
    return parts[0]


def layer_grad_stats(model) -> dict[str, dict[str, float]]:
    """Per-layer gradient norm, mean |g|, std, max |g| and share of exact zeros."""
    import torch

    groups: dict[str, list] = {}
    for name, p in model.named_parameters():
        if p.grad is not None:
            groups.setdefault(layer_of(name), []).append(p.grad.detach().float().reshape(-1))
    stats = {}
    with torch.no_grad():
        for layer, grads in groups.items():
            g = torch.cat(grads)
            stats[layer] = {"norm": float(g.norm()), "mean_abs": float(g.abs().mean()), "std": float(g.std()),
                            "max_abs": float(g.abs().max()), "zero_fraction": float((g == 0).float().mean())}
    return stats


class Debugger:
    """Collects records every ``interval`` steps and evaluates the rules on them."""

    def __init__(self, config: DebuggerConfig):
        self.config = config
        self.records: list[dict[str, Any]] = []
        self.evals: list[dict[str, Any]] = []
        self.rules = {r: RuleState(r, config.actions[r], self._params(r)) for r in RULES}
        self.stop_reason: str | None = None
        self._acc: dict[str, float] = {"loss": 0.0, "grad_norm": 0.0, "grad_norm_max": 0.0, "n": 0}
        self._low_grad_streak = 0
        self._overfit_streak = 0

    def _params(self, rule: str) -> dict[str, Any]:
        c = self.config
        return {"loss_not_decreasing": {"window_records": c.loss_window, "min_delta": c.loss_min_delta},
                "overfit": {"patience_evals": c.overfit_patience},
                "vanishing_gradient": {"threshold": c.vanishing_threshold, "patience_records": c.vanishing_patience},
                "exploding_tensor": {"threshold": c.exploding_threshold}}[rule]

    @property
    def should_stop(self) -> bool:
        """True once a rule whose action is ``stop`` has triggered."""
        return self.stop_reason is not None

    def wants_layer_stats(self, step: int) -> bool:
        """Whether ``step`` (1-based) is a record step (then pass per-layer stats)."""
        return step % self.config.interval == 0

    def on_step(self, step: int, epoch: float, loss: float, lr: float, grad_norm: float,
                layer_stats: dict[str, dict[str, float]] | None = None) -> None:
        """Feed one optimizer step; every ``interval`` steps a record is made and rules run."""
        if not (math.isfinite(loss) and math.isfinite(grad_norm)):
            self._trigger("exploding_tensor", step, f"non-finite value at step {step}: loss={loss}, "
                                                    f"grad_norm={grad_norm}")
            return
        if grad_norm > self.config.exploding_threshold:
            self._trigger("exploding_tensor", step, f"gradient norm {grad_norm:.3g} > "
                                                    f"{self.config.exploding_threshold:g} at step {step}")
        a = self._acc
        a["loss"] += loss
        a["grad_norm"] += grad_norm
        a["grad_norm_max"] = max(a["grad_norm_max"], grad_norm)
        a["n"] += 1
        if not self.wants_layer_stats(step):
            return
        n = a["n"]
        rec = {"step": step, "epoch": round(epoch, 4), "loss": a["loss"] / n, "lr": lr,
               "grad_norm": a["grad_norm"] / n, "grad_norm_max": a["grad_norm_max"], "layers": layer_stats or {}}
        self.records.append(rec)
        self._acc = {"loss": 0.0, "grad_norm": 0.0, "grad_norm_max": 0.0, "n": 0}
        self._check_vanishing(rec)
        self._check_loss(step)

    def _check_vanishing(self, rec: dict[str, Any]) -> None:
        c = self.config
        self._low_grad_streak = self._low_grad_streak + 1 if rec["grad_norm"] < c.vanishing_threshold else 0
        if self._low_grad_streak >= c.vanishing_patience:
            self._trigger("vanishing_gradient", rec["step"],
                          f"gradient norm {rec['grad_norm']:.3g} < {c.vanishing_threshold:g} for "
                          f"{self._low_grad_streak} records in a row")

    def _check_loss(self, step: int) -> None:
        w = self.config.loss_window
        if len(self.records) < 2 * w:
            return
        recent = sum(r["loss"] for r in self.records[-w:]) / w
        before = sum(r["loss"] for r in self.records[-2 * w:-w]) / w
        if recent >= before * (1 - self.config.loss_min_delta):
            self._trigger("loss_not_decreasing", step,
                          f"mean training loss {recent:.4f} over the last {w} records is not below "
                          f"{before:.4f} over the {w} before (steps {self.records[-2 * w]['step']}..{step})")

    def on_eval(self, step: int, epoch: float, train_loss: float, val_loss: float, val_accuracy: float) -> None:
        """Feed one validation result; runs the overfit rule."""
        prev = self.evals[-1] if self.evals else None
        self.evals.append({"step": step, "epoch": round(epoch, 4), "train_loss": train_loss,
                           "val_loss": val_loss, "val_accuracy": val_accuracy})
        if prev is None:
            return
        rising = val_loss > prev["val_loss"] and train_loss < prev["train_loss"]
        self._overfit_streak = self._overfit_streak + 1 if rising else 0
        if self._overfit_streak >= self.config.overfit_patience:
            self._trigger("overfit", step, f"validation loss rose for {self._overfit_streak} evaluations "
                                           f"({prev['val_loss']:.4f} -> {val_loss:.4f}) while training loss fell "
                                           f"({prev['train_loss']:.4f} -> {train_loss:.4f})")

    def _trigger(self, rule: str, step: int, message: str) -> None:
        st = self.rules[rule]
        st.count += 1
        if not st.triggered:
            st.triggered, st.first_step, st.message = True, step, message
            log.warning("debugger rule %s triggered at step %d (action %s): %s", rule, step, st.action, message)
        if st.action == "stop" and self.stop_reason is None:
            self.stop_reason = f"{rule} at step {step}: {message}"
            log.warning("debugger: stopping training early because of rule %s", rule)

    # -- checkpoint support -------------------------------------------------------------
    def state_dict(self) -> dict[str, Any]:
        """Everything needed to continue after a resume."""
        return {"records": self.records, "evals": self.evals, "rules": {k: asdict(v) for k, v in self.rules.items()},
                "stop_reason": self.stop_reason, "acc": self._acc, "low": self._low_grad_streak,
                "overfit": self._overfit_streak}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore what :meth:`state_dict` returned (actions come from the current config)."""
        self.records, self.evals = state["records"], state["evals"]
        for k, v in state["rules"].items():
            if k in self.rules:
                v = dict(v, action=self.rules[k].action)
                self.rules[k] = RuleState(**v)
        self.stop_reason = state["stop_reason"]
        self._acc, self._low_grad_streak, self._overfit_streak = state["acc"], state["low"], state["overfit"]

    # -- reports -------------------------------------------------------------------------
    def results(self) -> dict[str, Any]:
        """The content of rule_results.json."""
        return {
            "interval_steps": self.config.interval,
            "records": len(self.records),
            "evaluations": len(self.evals),
            "stopped_early": self.should_stop,
            "stop_reason": self.stop_reason,
            "triggered": [r.rule for r in self.rules.values() if r.triggered],
            "rules": [{"rule": r.rule, "action": r.action, "status": r.status, "triggered": r.triggered,
                       "first_step": r.first_step, "count": r.count, "message": r.message, "params": r.params}
                      for r in self.rules.values()],
        }

    def write(self, out_dir: str | Path) -> dict[str, Path]:
        """Write rule_results.json, records.json and curves.png under ``out_dir/debugger``."""
        folder = Path(out_dir) / "debugger"
        folder.mkdir(parents=True, exist_ok=True)
        paths = {"rule_results": folder / "rule_results.json", "records": folder / "records.json",
                 "curves": folder / "curves.png"}
        write_json_atomic(paths["rule_results"], self.results())
        write_json_atomic(paths["records"], {"records": self.records, "evaluations": self.evals})
        self.plot(paths["curves"])
        return paths

    def plot(self, path: Path) -> None:
        """Loss, validation, learning rate, gradient norm and per-layer gradient curves."""
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        fig, axes = plt.subplots(2, 2, figsize=(12, 8))
        steps = [r["step"] for r in self.records]
        ax = axes[0][0]
        ax.plot(steps, [r["loss"] for r in self.records], label="train loss (interval mean)")
        if self.evals:
            ax.plot([e["step"] for e in self.evals], [e["val_loss"] for e in self.evals], "o-", label="validation loss")
            ax2 = ax.twinx()
            ax2.plot([e["step"] for e in self.evals], [e["val_accuracy"] for e in self.evals], "s--", color="green",
                     label="validation accuracy")
            ax2.set_ylabel("accuracy")
        ax.set_title("loss")
        ax.set_xlabel("step")
        ax.legend(loc="upper right")
        axes[0][1].plot(steps, [r["lr"] for r in self.records])
        axes[0][1].set_title("learning rate")
        axes[1][0].plot(steps, [r["grad_norm"] for r in self.records], label="mean")
        axes[1][0].plot(steps, [r["grad_norm_max"] for r in self.records], label="max", alpha=0.6)
        axes[1][0].set_title("total gradient norm (before clipping)")
        axes[1][0].set_yscale("log")
        axes[1][0].legend()
        layers = sorted({k for r in self.records for k in r["layers"]}, key=_layer_sort_key)
        for layer in layers:
            pts = [(r["step"], r["layers"][layer]["norm"]) for r in self.records if layer in r["layers"]]
            axes[1][1].plot([p[0] for p in pts], [max(p[1], 1e-12) for p in pts], label=layer)
        axes[1][1].set_title("gradient norm per layer")
        axes[1][1].set_yscale("log")
        if layers:
            axes[1][1].legend(fontsize=7, ncol=2)
        for rule in self.rules.values():
            if rule.triggered and rule.first_step is not None:
                for a in (axes[0][0], axes[1][0]):
                    a.axvline(rule.first_step, color="red", ls=":", alpha=0.7)
        fig.suptitle("training debugger" + (f" - triggered: {', '.join(self.results()['triggered'])}"
                                            if self.results()["triggered"] else " - no rule triggered"))
        fig.tight_layout()
        tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}.png")
        fig.savefig(tmp, dpi=80)
        plt.close(fig)
        os.replace(tmp, path)


def _layer_sort_key(name: str) -> tuple[int, int]:
    order = {"embeddings": 0, "pooler": 2, "classifier": 3}
    if name.startswith("encoder.layer."):
        return (1, int(name.rsplit(".", 1)[1]))
    return (order.get(name, 4), 0)
