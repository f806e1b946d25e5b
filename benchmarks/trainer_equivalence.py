"""Old vs new training code at the same number of optimizer steps on the same real split.

Accuracy depends on the steps taken, not on wall time, so both versions of the training
job (``include/scripts`` at ``--old-commit``, extracted with ``git show`` into a temporary
folder, and the working tree) run as subprocesses under the SageMaker contract with the
same hyper-parameters and ``--max_steps N``, one after the other, on the channels that
``preprocess.py`` makes from the shipped reviews (balanced validation/test, as
``model_quality.py`` does). Reported per version: test accuracy and macro-F1 (scikit-learn),
validation accuracy, samples/s of the training loop (profiler) and the largest absolute
difference between the two saved models' weights (0 = the refactor trains the same model).

Writes ``benchmarks/results/trainer_equivalence.json``.
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

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
SCRIPTS = ROOT / "include" / "scripts"
sys.path[:0] = [str(ROOT), str(SCRIPTS), str(Path(__file__).resolve().parent)]

from _common import write_result  # noqa: E402 - needs the benchmarks folder on sys.path
from model_quality import run_preprocess  # noqa: E402


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--old-commit", default="4968a9d", help="commit of the old training code")
    p.add_argument("--steps", type=int, default=200, help="optimizer steps per version")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--max-seq-length", type=int, default=128)
    p.add_argument("--seed", type=int, default=42)
    p.add_argument("--name", default="trainer_equivalence")
    return p.parse_args(argv)


def extract_old(commit: str, dest: Path) -> Path:
    """``include/scripts`` as of ``commit``, in ``dest``."""
    names = subprocess.run(["git", "ls-tree", "-r", "--name-only", commit, "include/scripts/"], cwd=ROOT, check=True,
                           capture_output=True, text=True).stdout.split()
    for name in names:  # templates/ too: the reports render from them
        blob = subprocess.run(["git", "show", f"{commit}:{name}"], cwd=ROOT, check=True, capture_output=True).stdout
        target = dest / Path(name).relative_to("include/scripts")
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_bytes(blob)
    return dest


def train(scripts: Path, features: Path, job: Path, a: argparse.Namespace) -> tuple[float, dict]:
    env = {**os.environ, "SM_CHANNEL_TRAIN": str(features / "train"),
           "SM_CHANNEL_VALIDATION": str(features / "validation"), "SM_MODEL_DIR": str(job / "model"),
           "SM_OUTPUT_DATA_DIR": str(job / "output"), "SM_CHECKPOINT_DIR": str(job / "checkpoints"),
           "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false", "PYTHONPATH": ""}
    env.pop("MLFLOW_TRACKING_URI", None)
    hps = {"epochs": 1, "max_steps": a.steps, "learning_rate": 8e-5, "train_batch_size": 16,
           "max_seq_length": a.max_seq_length, "class_weights": "balanced", "max_class_ratio": 3,
           "rating_aux_weight": 0.5, "warmup_ratio": 0.06, "seed": a.seed, "checkpoint_steps": 0,
           "num_threads": a.threads, "log_interval_s": 60}
    cmd = [sys.executable, str(scripts / "train.py")] + [x for k, v in hps.items() for x in (f"--{k}", str(v))]
    t0 = time.monotonic()
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True)
    if proc.returncode != 0:
        raise SystemExit(f"{scripts / 'train.py'} failed ({proc.returncode}):\n"
                         f"{proc.stdout[-3000:]}{proc.stderr[-3000:]}")
    return time.monotonic() - t0, json.loads((job / "output" / "metrics.json").read_text())


def test_scores(model_dir: Path, features: Path, max_seq_length: int) -> dict:
    from modeling import load_classifier
    from train_data import load_channel
    from train_eval import predict, scores

    test = load_channel(features / "test", "test", max_seq_length)
    logits, loss = predict(load_classifier(model_dir), test, 64, "cpu", 0)
    return {"test_rows": len(test), "test_loss": round(loss, 4),
            **{f"test_{k}": round(v, 4) for k, v in scores(test.labels, logits.argmax(axis=1)).items()}}


def max_weight_diff(a: Path, b: Path) -> float:
    from safetensors.numpy import load_file

    diff = 0.0
    for name in ("model.safetensors", "classifier_head.safetensors"):
        x, y = load_file(str(a / name)), load_file(str(b / name))
        diff = max([diff] + [float(np.abs(x[k] - y[k]).max()) for k in x])
    return diff


def main(argv: list[str] | None = None) -> dict:
    a = parse_args(argv)
    import torch

    torch.set_num_threads(a.threads)
    with tempfile.TemporaryDirectory(prefix="trainer_equivalence-") as tmp:
        work = Path(tmp)
        pre = argparse.Namespace(source=None, limit=0, max_seq_length=a.max_seq_length, train_split=0.82,
                                 validation_split=0.05, seed=a.seed)
        stats = run_preprocess(work, pre)
        versions = {"old": extract_old(a.old_commit, work / "old_scripts"), "new": SCRIPTS}
        out: dict = {}
        for name, scripts in versions.items():
            wall, metrics = train(scripts, work / "features", work / name / "job", a)
            out[name] = {"wall_s": round(wall, 1), "steps": metrics["final"]["steps"],
                         "samples_per_s": metrics["final"]["samples_per_s"],
                         "val_accuracy": round(metrics["final"]["val_accuracy"], 4),
                         "val_macro_f1": round(metrics["final"]["val_macro_f1"], 4),
                         **test_scores(work / name / "job" / "model", work / "features", a.max_seq_length)}
            print(name, json.dumps(out[name]), flush=True)
        diff = max_weight_diff(work / "old" / "job" / "model", work / "new" / "job" / "model")
    result = {"old_commit": a.old_commit, "steps": a.steps, "threads": a.threads, **out,
              "max_abs_weight_diff": diff,
              "throughput_ratio_new_over_old": round(out["new"]["samples_per_s"] / out["old"]["samples_per_s"], 3),
              "train_rows": stats["splits"]["train"]["rows"],
              "load_average_after": [round(x, 2) for x in os.getloadavg()],
              "method": "same split (preprocess.py --balance-dataset eval on the shipped reviews), same "
                        "hyper-parameters (lr 8e-5, batch 16, max_seq 128, class ratio 3, rating aux 0.5), "
                        "--max_steps N, the two versions run one after the other on the same machine"}
    path = write_result(a.name, result)
    print(f"old vs new at {a.steps} steps: test accuracy {out['old']['test_accuracy']} vs "
          f"{out['new']['test_accuracy']}, samples/s {out['old']['samples_per_s']} vs {out['new']['samples_per_s']}, "
          f"max |weight diff| {diff:.2e}\nwrote {path}")
    return result


if __name__ == "__main__":
    main()
