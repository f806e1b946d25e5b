"""Training profiler: step timing split into data loading vs compute, throughput, resources.

Per optimizer step the trainer reports how long it waited for the batch (reading, padding,
copying to the device) and how long forward/backward/optimizer took, with the number of
samples, real tokens and padded tokens. A background thread samples process and system
CPU, resident memory and, with CUDA, GPU utilisation and memory every ``interval_s``.
``write()`` produces ``profiler/summary.json``, ``profiler/steps.csv`` and a self-contained
``profiler/report.html`` (plots inlined as PNG) - the analogue of SageMaker's profiler
report.
"""
from __future__ import annotations

import base64
import io
import json
import threading
import time
from pathlib import Path
from typing import Any

from common import available_cores, render_html, write_text_atomic

try:  # psutil is a declared dependency, but a bare container may lack it
    import psutil
except ImportError:  # pragma: no cover - exercised only in containers without psutil
    psutil = None


class Profiler:
    """Accumulates step timings and resource samples; thread-safe enough for one trainer."""

    def __init__(self, interval_s: float = 1.0, device: str = "cpu", max_steps_kept: int = 20000):
        self.interval_s = interval_s
        self.device = device
        # step, data_s, compute_s, samples, tokens, padded tokens
        self.steps: list[tuple[int, float, float, int, int, int]] = []
        self.samples: list[dict[str, float]] = []
        self.max_steps_kept = max_steps_kept
        self.totals = {"steps": 0, "data_s": 0.0, "compute_s": 0.0, "samples": 0, "tokens": 0, "padded_tokens": 0}
        self.eval_s = 0.0
        self.checkpoint_s = 0.0
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._t0 = time.monotonic()
        self._proc = psutil.Process() if psutil else None
        self._cores = available_cores()

    def start(self) -> "Profiler":
        """Start the resource sampler thread."""
        self._t0 = time.monotonic()
        if self._proc:
            self._proc.cpu_percent(None)
            psutil.cpu_percent(None)
        self._thread = threading.Thread(target=self._sample_loop, name="profiler", daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        """Stop the sampler (idempotent)."""
        self._stop.set()
        if self._thread:
            self._thread.join(timeout=5)

    def _sample_loop(self) -> None:
        while not self._stop.wait(self.interval_s):
            self.samples.append(self._sample())

    def _sample(self) -> dict[str, float]:
        s: dict[str, float] = {"t": round(time.monotonic() - self._t0, 2)}
        if self._proc:
            s["process_cpu_pct"] = self._proc.cpu_percent(None) / self._cores  # share of the job's cores
            s["system_cpu_pct"] = psutil.cpu_percent(None)
            s["rss_mb"] = self._proc.memory_info().rss / 2**20
            s["system_mem_pct"] = psutil.virtual_memory().percent
        else:
            import resource

            s["rss_mb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
        if self.device.startswith("cuda"):
            import torch

            s["gpu_mem_mb"] = torch.cuda.memory_allocated() / 2**20
            s["gpu_mem_reserved_mb"] = torch.cuda.memory_reserved() / 2**20
            try:
                s["gpu_util_pct"] = float(torch.cuda.utilization())
            except Exception:  # noqa: BLE001 - needs pynvml; memory figures are still useful
                pass
        return s

    def on_step(self, step: int, data_s: float, compute_s: float, samples: int, tokens: int,
                padded_tokens: int) -> None:
        """Record one optimizer step."""
        t = self.totals
        t["steps"] += 1
        t["data_s"] += data_s
        t["compute_s"] += compute_s
        t["samples"] += samples
        t["tokens"] += tokens
        t["padded_tokens"] += padded_tokens
        if len(self.steps) < self.max_steps_kept:
            self.steps.append((step, data_s, compute_s, samples, tokens, padded_tokens))

    def recent_rate(self, last: int = 20) -> tuple[float, float]:
        """(samples/s, tokens/s) over the last ``last`` steps (for progress lines)."""
        window = self.steps[-last:]
        secs = sum(s[1] + s[2] for s in window)
        if not window or secs <= 0:
            return 0.0, 0.0
        return sum(s[3] for s in window) / secs, sum(s[4] for s in window) / secs

    def summary(self) -> dict[str, Any]:
        """Totals and shares; flat numeric keys so they can go straight to MLflow."""
        t = self.totals
        busy = t["data_s"] + t["compute_s"]
        step_times = sorted(s[1] + s[2] for s in self.steps)

        def pct(q: float) -> float:
            return step_times[min(len(step_times) - 1, int(q * len(step_times)))] if step_times else 0.0

        out: dict[str, Any] = {
            "device": self.device, "cores": self._cores, "steps": t["steps"],
            "train_loop_s": round(busy, 3), "eval_s": round(self.eval_s, 3),
            "checkpoint_s": round(self.checkpoint_s, 3),
            "samples_per_s": t["samples"] / busy if busy else 0.0,
            "tokens_per_s": t["tokens"] / busy if busy else 0.0,
            "padded_tokens_per_s": t["padded_tokens"] / busy if busy else 0.0,
            "padding_share": 1 - t["tokens"] / t["padded_tokens"] if t["padded_tokens"] else 0.0,
            "data_share": t["data_s"] / busy if busy else 0.0,
            "compute_share": t["compute_s"] / busy if busy else 0.0,
            "step_s_mean": busy / t["steps"] if t["steps"] else 0.0,
            "step_s_p50": pct(0.5), "step_s_p95": pct(0.95), "step_s_max": step_times[-1] if step_times else 0.0,
        }
        for key in ("process_cpu_pct", "system_cpu_pct", "rss_mb", "gpu_util_pct", "gpu_mem_mb"):
            vals = [s[key] for s in self.samples if key in s]
            if vals:
                out[f"{key}_mean"] = sum(vals) / len(vals)
                out[f"{key}_max"] = max(vals)
        return {k: (round(v, 4) if isinstance(v, float) else v) for k, v in out.items()}

    # -- state for checkpoint/resume ---------------------------------------------------
    def state_dict(self) -> dict[str, Any]:
        """Totals so far (per-step rows are kept too, they are small)."""
        return {"totals": self.totals, "steps": self.steps, "eval_s": self.eval_s, "checkpoint_s": self.checkpoint_s}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Continue the totals of a resumed run."""
        self.totals = state["totals"]
        self.steps = [tuple(s) for s in state["steps"]]
        self.eval_s, self.checkpoint_s = state["eval_s"], state["checkpoint_s"]

    # -- report --------------------------------------------------------------------------
    def write(self, out_dir: str | Path, title: str = "training profiler report") -> dict[str, Path]:
        """Write summary.json, steps.csv and report.html under ``out_dir/profiler``."""
        folder = Path(out_dir) / "profiler"
        folder.mkdir(parents=True, exist_ok=True)
        summary = self.summary()
        paths = {"summary": folder / "summary.json", "steps": folder / "steps.csv", "report": folder / "report.html"}
        write_text_atomic(paths["summary"], json.dumps(summary, indent=1))
        rows = ["step,data_s,compute_s,samples,tokens,padded_tokens"]
        rows += [f"{s[0]},{s[1]:.5f},{s[2]:.5f},{s[3]},{s[4]},{s[5]}" for s in self.steps]
        write_text_atomic(paths["steps"], "\n".join(rows) + "\n")
        write_text_atomic(paths["report"], self._html(summary, title))
        return paths

    def _html(self, summary: dict[str, Any], title: str) -> str:
        return render_html("profiler_report.html.j2", title=title, summary=summary, advice=self.advice(summary),
                           plots=list(self._plots()))

    def advice(self, s: dict[str, Any]) -> list[str]:
        """Plain-language findings, like the profiler report's rule section."""
        out = []
        if s["data_share"] > 0.2:
            out.append(f"data loading takes {s['data_share']:.0%} of the step time: the loop waits for batches")
        else:
            out.append(f"data loading takes {s['data_share']:.1%} of the step time (compute-bound, as it should be)")
        if s["padding_share"] > 0.3:
            out.append(f"{s['padding_share']:.0%} of the tokens are padding: enable length grouping/dynamic padding")
        if s.get("process_cpu_pct_mean", 100) < 50 and self.device == "cpu":
            out.append(f"the job used only {s['process_cpu_pct_mean']:.0f}% of its {s['cores']} cores on average "
                       "(shared machine or too few threads)")
        if s["step_s_p95"] > 3 * max(s["step_s_p50"], 1e-9):
            out.append(f"step-time outliers: p95 {s['step_s_p95']:.3f}s vs median {s['step_s_p50']:.3f}s")
        if "gpu_util_pct_mean" in s and s["gpu_util_pct_mean"] < 50:
            out.append(f"GPU utilisation averages {s['gpu_util_pct_mean']:.0f}%: raise the batch size")
        return out

    def _plots(self) -> list[tuple[str, str]]:
        try:
            import matplotlib

            matplotlib.use("Agg")
            import matplotlib.pyplot as plt
        except ImportError:  # report without plots rather than no report
            return []
        plots = []
        if self.steps:
            fig, axes = plt.subplots(1, 2, figsize=(12, 3.5))
            st = [s[0] for s in self.steps]
            axes[0].stackplot(st, [s[1] for s in self.steps], [s[2] for s in self.steps], labels=["data", "compute"])
            axes[0].set_title("step time (s)")
            axes[0].set_xlabel("step")
            axes[0].legend()
            axes[1].plot(st, [s[3] / max(s[1] + s[2], 1e-9) for s in self.steps], lw=0.8)
            axes[1].set_title("samples/s per step")
            axes[1].set_xlabel("step")
            plots.append(("Step time and throughput", _png(fig, plt)))
        if self.samples:
            keys = [k for k in ("process_cpu_pct", "system_cpu_pct", "gpu_util_pct") if k in self.samples[0]]
            mkeys = [k for k in ("rss_mb", "gpu_mem_mb") if k in self.samples[0]]
            fig, axes = plt.subplots(1, 2, figsize=(12, 3.5))
            t = [s["t"] for s in self.samples]
            for k in keys:
                axes[0].plot(t, [s.get(k, 0) for s in self.samples], label=k)
            axes[0].set_title("utilisation (%)")
            axes[0].set_xlabel("seconds")
            axes[0].legend()
            for k in mkeys:
                axes[1].plot(t, [s.get(k, 0) for s in self.samples], label=k)
            axes[1].set_title("memory (MiB)")
            axes[1].set_xlabel("seconds")
            axes[1].legend()
            plots.append(("CPU, GPU and memory", _png(fig, plt)))
        return plots


def _png(fig, plt) -> str:
    buf = io.BytesIO()
    fig.tight_layout()
    fig.savefig(buf, format="png", dpi=80)
    plt.close(fig)
    return base64.b64encode(buf.getvalue()).decode()
