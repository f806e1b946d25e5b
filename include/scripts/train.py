"""Training job: fine-tune a BERT-family model (default all-MiniLM-L6-v2) into a 3-class
review-sentiment classifier, under the SageMaker training contract.

The same file runs under the local job runner and in a SageMaker Hugging Face / PyTorch
training container. It knows the world only through the contract:

* channels ``train`` and ``validation`` (``SM_CHANNEL_TRAIN`` / ``SM_CHANNEL_VALIDATION``):
  folders of ``part-NNNNN.parquet`` shards with unpadded ``input_ids`` and ``label_id``;
* hyper-parameters as ``--name value`` arguments (strings, booleans ``true``/``false``),
  with defaults taken from ``SM_HPS`` (JSON) as the SageMaker toolkit does (train_args.py);
* ``SM_MODEL_DIR`` receives the model (``save_pretrained``, safetensors, ``id2label``) and
  the tokenizer; ``SM_OUTPUT_DATA_DIR`` receives ``metrics.json``, ``debugger/`` and
  ``profiler/`` reports (and ``mlflow_run.json``); ``SM_CHECKPOINT_DIR`` (default
  ``/opt/ml/checkpoints``) holds checkpoints every ``checkpoint_steps`` steps - a re-run of
  the job resumes from the newest one;
* MLflow logging when ``MLFLOW_TRACKING_URI`` is set (optional import).

Top to bottom: parse and validate the arguments -> load and check the channels -> fit
(train_loop.py) -> save the model and write the reports.

Exit codes: 0 done, 2 bad input (one ``ERROR:`` line on stderr), 143 stopped by SIGTERM
after writing a checkpoint.
"""
from __future__ import annotations

import json
import logging
import os
import sys
import time
from typing import Any

import numpy as np
from common import ID2LABEL, ModelNotFoundError, resolve_model_dir
from train_args import Args, HyperParameterError, fail, parse_args
from train_checkpoint import CheckpointError
from train_data import Split, TrainingDataError, load_channel, require_classes
from train_loop import Stopped, Trainer

log = logging.getLogger("train")


def load_data(args: Args) -> tuple[Split, Split]:
    """Read and check both channels (before any model is loaded)."""
    d, t = args.data, args.train
    t0 = time.monotonic()
    train = load_channel(d.train_dir, "train", d.max_seq_length, d.max_train_samples, t.seed)
    require_classes(train)
    valid = load_channel(d.validation_dir, "validation", d.max_seq_length, d.max_eval_samples, t.seed)
    require_classes(valid)
    lengths = train.lengths
    log.info("read %d train rows %s and %d validation rows %s in %.1fs; tokens per review mean %.0f, p95 %.0f, max %d",
             len(train), {ID2LABEL[k]: v for k, v in train.class_counts().items()}, len(valid),
             {ID2LABEL[k]: v for k, v in valid.class_counts().items()}, time.monotonic() - t0, lengths.mean(),
             np.percentile(lengths, 95), lengths.max())
    return train, valid


def run(args: Args) -> dict[str, Any]:
    """Load, fit, save. Returns the final metrics; raises ``Stopped`` after a SIGTERM checkpoint."""
    model_path = resolve_model_dir(args.model.model_name_or_path or None)
    train, valid = load_data(args)
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    trainer = Trainer(args, train, valid, model_path)
    trainer.fit()
    final_eval = trainer.save_model()
    return trainer.write_reports(final_eval)


def main(argv: list[str] | None = None) -> int:
    """CLI entry point; returns the exit code."""
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s",
                        stream=sys.stdout, force=True)
    for noisy in ("httpx", "urllib3", "alembic", "transformers.modeling_utils"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
    try:
        args = parse_args(argv)
        log.info("hyper-parameters: %s", json.dumps(args.flat(), sort_keys=True))
        run(args)
    except (HyperParameterError, TrainingDataError, ModelNotFoundError, CheckpointError) as exc:
        fail(str(exc))
        return 2
    except Stopped:
        return 143
    return 0


if __name__ == "__main__":
    sys.exit(main())
