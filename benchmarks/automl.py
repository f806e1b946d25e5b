"""AutoML baseline benchmark: the review_automl_baseline search on the shipped real reviews.

1. the same balanced test split as ``benchmarks/model_quality.py`` (its own ``run_preprocess``
   with its default arguments: ``--balance-dataset eval``, 82/5/13 split, seed 42);
2. the search job ``include/scripts/automl.py`` run as a subprocess, exactly as the DAG's
   processing job runs it, under ``--budget-s``;
3. the reference in the same run: TF-IDF + logistic regression (``model_quality.tfidf_baseline``).

The search ranks its candidates by cross-validation on the training split only; the test split is
scored, never consulted.

Writes ``benchmarks/results/automl.json`` (leaderboard, best candidate chosen by validation
accuracy, its test accuracy, wall time, the machine) and prints a summary. Anchors from the
course lab: SageMaker Autopilot's best candidate 0.616 validation accuracy (3 candidates, 2
hours), its BlazingText model 0.46-0.53.

    python benchmarks/automl.py [--budget-s 420]
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from benchmarks._common import write_result  # noqa: E402
from benchmarks.model_quality import parse_args as model_quality_args  # noqa: E402
from benchmarks.model_quality import run_preprocess, tfidf_baseline  # noqa: E402

SCRIPT = ROOT / "include" / "scripts" / "automl.py"
ANCHORS = {"autopilot_best_validation_accuracy": 0.616, "autopilot_blazingtext_accuracy": [0.46, 0.53]}
TARGET = {"best_accuracy": 0.68, "wall_s": 600}


def main(argv: list[str] | None = None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--budget-s", type=int, default=420, help="the search's time budget (the DAG's time_budget_s)")
    p.add_argument("--max-candidates", type=int, default=20)
    p.add_argument("--limit", type=int, default=0, help="use only the first N reviews (smoke runs)")
    p.add_argument("--name", default="automl", help="results file name")
    a = p.parse_args(argv)
    split_args = model_quality_args(["--limit", str(a.limit)] if a.limit else [])
    t_start = time.monotonic()
    load_before = [round(x, 2) for x in os.getloadavg()]
    print(f"load average before: {load_before}", flush=True)
    with tempfile.TemporaryDirectory(prefix="automl-bench-") as tmp:
        work = Path(tmp)
        stats = run_preprocess(work, split_args)
        print(f"split (model_quality.py's): {json.dumps(stats['splits'])}", flush=True)
        feats = work / "features"
        y_ref, p_ref, ref_s = tfidf_baseline(feats, split_args.seed)
        ref_acc = float((p_ref == y_ref).mean())
        print(f"reference TF-IDF + LR: accuracy {ref_acc:.4f} ({ref_s:.0f}s)", flush=True)
        t0 = time.monotonic()
        subprocess.run([sys.executable, str(SCRIPT), "search", "--train-data", str(feats / "train"),
                        "--validation-data", str(feats / "validation"), "--test-data", str(feats / "test"),
                        "--output-data", str(work / "out"), "--model-output", str(work / "model"),
                        "--time-budget-s", str(a.budget_s), "--max-candidates", str(a.max_candidates),
                        "--seed", str(split_args.seed)], check=True)
        search_s = time.monotonic() - t0
        board = json.loads((work / "out" / "leaderboard.json").read_text())
    result = {
        "command": " ".join(["python", "benchmarks/automl.py", *(argv if argv is not None else sys.argv[1:])]),
        "best_candidate": board["best_candidate"], "best_accuracy": board["best_accuracy"],
        "best_cv_accuracy": board["best_cv_accuracy"], "best_validation_accuracy": board["best_validation_accuracy"],
        "best_macro_f1": board["best_macro_f1"], "cv_folds": board["cv_folds"],
        "selection": board["selection"] + " (test accuracy never chooses)",
        "wall_s": round(search_s, 1), "benchmark_wall_s": round(time.monotonic() - t_start, 1),
        "time_budget_s": a.budget_s, "load_average_before": load_before,
        "reference_tfidf_lr_accuracy": round(ref_acc, 4), "reference_tfidf_lr_s": round(ref_s, 1),
        "gain_over_reference": round(board["best_accuracy"] - ref_acc, 4),
        "anchors": ANCHORS, "target": TARGET,
        "target_met": board["best_accuracy"] >= TARGET["best_accuracy"] and search_s <= TARGET["wall_s"],
        "test_rows": stats["splits"]["test"]["rows"], "test_rows_by_label": stats["splits"]["test"]["by_label"],
        "train_rows": stats["splits"]["train"]["rows"], "validation_rows": stats["splits"]["validation"]["rows"],
        "candidates": board["candidates"], "leaderboard": board["leaderboard"],
    }
    path = write_result(a.name, result)
    print(f"best {result['best_candidate']}: test accuracy {result['best_accuracy']:.4f} "
          f"(reference TF-IDF+LR {ref_acc:.4f}, gain {result['gain_over_reference']:+.4f}); "
          f"{result['candidates']} candidates in {result['wall_s']:.0f}s; target met: {result['target_met']} -> {path}")
    return result


if __name__ == "__main__":
    main()
