"""Tests of the training job (include/scripts/train.py) under the SageMaker training contract.

A tiny randomly initialised BERT (2 layers, hidden 32) with the real MiniLM tokenizer keeps
the runs to seconds on a shared 2-core machine; the code path is the one the real model takes.
"""
from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

ROOT = Path(__file__).resolve().parents[2]
SCRIPTS = ROOT / "include" / "scripts"
sys.path.insert(0, str(SCRIPTS))

import train  # noqa: E402
from common import default_model_dir  # noqa: E402

TRAIN = str(SCRIPTS / "train.py")


@pytest.fixture(scope="session")
def tiny_model(tmp_path_factory) -> Path:
    """A 2-layer BERT saved with the MiniLM tokenizer (real files, random weights)."""
    import torch
    from transformers import AutoTokenizer, BertConfig, BertModel

    torch.manual_seed(0)
    folder = tmp_path_factory.mktemp("tiny-bert")
    tok = AutoTokenizer.from_pretrained(default_model_dir())
    cfg = BertConfig(vocab_size=tok.vocab_size, hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                     intermediate_size=64, max_position_embeddings=160)
    BertModel(cfg).save_pretrained(folder)
    tok.save_pretrained(folder)
    return folder


def write_channel(folder: Path, labels: list[int], seed: int = 0, shards: int = 2, stars: bool = False) -> Path:
    """Parquet shards in the preprocess contract; token ids depend on the label (learnable).

    ``stars`` adds the ``star_rating`` column preprocess writes (1-2 negative, 3 neutral, 4-5 positive).
    """
    rng = np.random.default_rng(seed)
    folder.mkdir(parents=True, exist_ok=True)
    rows = []
    for i, y in enumerate(labels):
        n = int(rng.integers(4, 60))
        body = (rng.integers(2000, 2100, n) + 300 * y).astype(np.int32).tolist()
        ids = [101] + body + [102]
        rows.append({"review_id": f"r{i}", "label_id": y, "sentiment": y - 1, "input_ids": ids,
                     "attention_mask": [1] * len(ids), "review_body": "x", "split_type": folder.name})
        if stars:
            rows[-1]["star_rating"] = [1 + i % 2, 3, 4 + i % 2][y]
    fields = [("review_id", pa.string()), ("label_id", pa.int8()), ("sentiment", pa.int8()),
              ("input_ids", pa.list_(pa.int32())), ("attention_mask", pa.list_(pa.int8())),
              ("review_body", pa.string()), ("split_type", pa.string())]
    schema = pa.schema(fields + ([("star_rating", pa.int8())] if stars else []))
    per = max(1, -(-len(rows) // shards))
    for n, start in enumerate(range(0, max(len(rows), 1), per)):
        pq.write_table(pa.Table.from_pylist(rows[start:start + per], schema=schema), folder / f"part-{n:05d}.parquet")
    return folder


@pytest.fixture
def job(tmp_path, monkeypatch, tiny_model):
    """A job folder laid out like /opt/ml with balanced train/validation channels."""
    labels = [0, 1, 2] * 40
    write_channel(tmp_path / "data" / "train", labels, seed=1)
    write_channel(tmp_path / "data" / "validation", [0, 1, 2] * 8, seed=2)
    env = {"SM_CHANNEL_TRAIN": tmp_path / "data" / "train", "SM_CHANNEL_VALIDATION": tmp_path / "data" / "validation",
           "SM_MODEL_DIR": tmp_path / "model", "SM_OUTPUT_DATA_DIR": tmp_path / "output",
           "SM_CHECKPOINT_DIR": tmp_path / "checkpoints", "SM_OUTPUT_DIR": tmp_path / "sm_output"}
    for k, v in env.items():
        monkeypatch.setenv(k, str(v))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("REVIEWS_HOME", str(tmp_path / "state"))
    monkeypatch.delenv("SM_HPS", raising=False)
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    return tmp_path


def base_args(model: Path, *extra: str) -> list[str]:
    return ["--model_name_or_path", str(model), "--num_threads", "1", "--train_batch_size", "8",
            "--learning_rate", "1e-3", "--log_interval_s", "0.5", "--debugger_interval", "2", *extra]


# --- fail fast on bad input ---------------------------------------------------------------
@pytest.mark.parametrize("flag,value,name", [("--learning_rate", "-0.1", "learning_rate"),
                                             ("--learning_rate", "0", "learning_rate"),
                                             ("--train_batch_size", "0", "train_batch_size"),
                                             ("--epochs", "0", "epochs"),
                                             ("--max_seq_length", "4", "max_seq_length")])
def test_out_of_range_hyperparameter_fails_before_loading_the_model(job, capsys, flag, value, name):
    rc = train.main(["--model_name_or_path", str(job / "no-such-model"), flag, value])
    err = capsys.readouterr().err.strip().splitlines()
    assert rc == 2
    assert len(err) == 1 and err[0].startswith("ERROR: ") and name in err[0] and "allowed" in err[0]
    assert not (job / "model").exists()
    assert name in (job / "sm_output" / "failure").read_text()


def test_unknown_hyperparameter_is_rejected(job, capsys):
    assert train.main(["--learing_rate", "1e-4"]) == 2
    assert "--learing_rate" in capsys.readouterr().err


def test_empty_train_channel_fails_naming_channel_and_folder(job, tiny_model, capsys):
    shutil.rmtree(job / "data" / "train")
    write_channel(job / "data" / "train", [], shards=1)
    assert train.main(base_args(tiny_model)) == 2
    err = capsys.readouterr().err
    assert "channel 'train'" in err and str(job / "data" / "train") in err and "no rows" in err
    assert not (job / "model").exists()


def test_train_folder_without_shards_fails(job, tiny_model, capsys):
    shutil.rmtree(job / "data" / "train")
    (job / "data" / "train").mkdir()
    assert train.main(base_args(tiny_model)) == 2
    assert "no Parquet shards" in capsys.readouterr().err


@pytest.mark.parametrize("channel", ["train", "validation"])
def test_single_class_channel_fails(job, tiny_model, capsys, channel):
    shutil.rmtree(job / "data" / channel)
    write_channel(job / "data" / channel, [2] * 30)
    assert train.main(base_args(tiny_model)) == 2
    err = capsys.readouterr().err
    assert f"channel {channel!r}" in err and "only one class" in err and "positive (30 rows)" in err


def test_hyperparameters_come_from_sm_hps_and_cli_overrides(job, monkeypatch):
    monkeypatch.setenv("SM_HPS", json.dumps({"epochs": "3", "learning_rate": 2e-5, "group_by_length": "false",
                                             "sagemaker_program": "train.py"}))
    args = train.parse_args(["--epochs", "2"])
    assert args.train.epochs == 2
    assert args.train.learning_rate == 2e-5
    assert args.data.group_by_length is False
    assert args.data.train_dir == str(job / "data" / "train")
    assert args.train.checkpoint_dir == str(job / "checkpoints")


def test_boolean_hyperparameter_must_be_true_or_false(job):
    with pytest.raises(SystemExit):
        train.parse_args(["--group_by_length", "maybe"])


# --- a full run -----------------------------------------------------------------------------
def test_training_writes_model_tokenizer_metrics_and_reports(job, tiny_model):
    assert train.main(base_args(tiny_model, "--epochs", "2", "--eval_steps", "5", "--checkpoint_steps", "6")) == 0
    cfg = json.loads((job / "model" / "config.json").read_text())
    assert cfg["id2label"] == {"0": "negative", "1": "neutral", "2": "positive"}
    assert cfg["label2id"] == {"negative": 0, "neutral": 1, "positive": 2}
    assert (job / "model" / "model.safetensors").is_file()
    assert (job / "model" / "tokenizer.json").is_file()
    metrics = json.loads((job / "output" / "metrics.json").read_text())
    assert [e["epoch"] for e in metrics["epochs"]] == [1, 2]
    assert all(np.isfinite(e["train_loss"]) and 0 <= e["val_accuracy"] <= 1 for e in metrics["epochs"])
    assert metrics["final"]["steps"] == 30 and metrics["final"]["epochs_completed"] == 2
    assert len(metrics["evaluations"]) >= 4  # every 5 steps plus epoch ends
    from modeling import MeanPoolingClassifier, load_classifier
    from safetensors.torch import load_file

    reloaded = load_classifier(job / "model")  # what evaluate.py and inference.py do
    assert isinstance(reloaded, MeanPoolingClassifier) and reloaded.config.num_labels == 3
    # freeze_word_embeddings (default): the word vectors are the pre-trained ones, the layers moved
    before, after = load_file(tiny_model / "model.safetensors"), load_file(job / "model" / "model.safetensors")
    emb = "embeddings.word_embeddings.weight"
    assert np.array_equal(before[emb].numpy(), after[emb].numpy())
    q = "encoder.layer.0.attention.self.query.weight"
    assert not np.array_equal(before[q].numpy(), after[q].numpy())
    rules = json.loads((job / "output" / "debugger" / "rule_results.json").read_text())
    assert {r["rule"] for r in rules["rules"]} == {"loss_not_decreasing", "overfit", "vanishing_gradient",
                                                   "exploding_tensor"}
    records = json.loads((job / "output" / "debugger" / "records.json").read_text())["records"]
    assert len(records) == 15 and "encoder.layer.1" in records[0]["layers"] and "classifier" in records[0]["layers"]
    assert (job / "output" / "debugger" / "curves.png").stat().st_size > 1000
    summary = json.loads((job / "output" / "profiler" / "summary.json").read_text())
    assert summary["steps"] == 30 and summary["samples_per_s"] > 0 and 0 <= summary["data_share"] <= 1
    assert "data:image/png;base64," in (job / "output" / "profiler" / "report.html").read_text()
    # checkpoints are pruned to keep_checkpoints (2)
    assert len(list((job / "checkpoints").glob("checkpoint-*"))) <= 2


def test_progress_lines_show_step_loss_throughput_and_eta(job, tiny_model, capsys):
    assert train.main(base_args(tiny_model, "--checkpoint_steps", "0")) == 0
    lines = [ln for ln in capsys.readouterr().out.splitlines() if ln.startswith("epoch 1/1 step ")]
    assert lines and all(k in lines[0] for k in ("loss", "samples/s", "tokens/s", "ETA"))


def test_exploding_rule_with_stop_action_ends_training_early(job, tiny_model):
    rc = train.main(base_args(tiny_model, "--epochs", "3", "--rule_exploding_threshold", "1e-9"))
    assert rc == 0
    metrics = json.loads((job / "output" / "metrics.json").read_text())
    assert metrics["final"]["stopped_early"] and "exploding_tensor" in metrics["final"]["stop_reason"]
    assert metrics["final"]["steps"] < 45
    rules = {r["rule"]: r for r in json.loads((job / "output" / "debugger" / "rule_results.json").read_text())["rules"]}
    assert rules["exploding_tensor"]["status"] == "IssuesFound" and rules["exploding_tensor"]["first_step"] == 1
    assert (job / "model" / "model.safetensors").is_file()  # the model trained so far is still saved


def test_triggered_rule_is_a_warning_in_the_log(job, tiny_model, capsys):
    args = base_args(tiny_model, "--rule_exploding_threshold", "1e-9",
                     "--debugger_rule_actions", "exploding_tensor=log")
    assert train.main(args) == 0
    out = capsys.readouterr().out
    assert "WARNING train.debugger: debugger rule exploding_tensor triggered at step 1" in out
    metrics = json.loads((job / "output" / "metrics.json").read_text())
    assert metrics["final"]["steps"] == 15 and not metrics["final"]["stopped_early"]


def test_time_budget_stops_with_decayed_learning_rate(job, tiny_model):
    # a budget of seconds that a loaded machine (two test workers on 2 cores) still fills with many
    # steps, and a debugger record every step: the last one is taken near the budget's end
    assert train.main(base_args(tiny_model, "--epochs", "500", "--time_budget_s", "5", "--checkpoint_steps", "0",
                                "--debugger_interval", "1")) == 0
    metrics = json.loads((job / "output" / "metrics.json").read_text())
    assert "time_budget_s" in metrics["final"]["stop_reason"]
    assert metrics["final"]["steps"] < metrics["final"]["total_steps"]
    records = json.loads((job / "output" / "debugger" / "records.json").read_text())["records"]
    assert records[-1]["lr"] < 0.2 * 1e-3


def test_mlflow_run_gets_params_and_epoch_metrics(job, tiny_model, monkeypatch):
    import mlflow

    uri = f"sqlite:///{job / 'mlflow.db'}"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    monkeypatch.setenv("MLFLOW_EXPERIMENT_NAME", "test-exp")
    monkeypatch.setenv("MLFLOW_RUN_NAME", "train-run-1")
    assert train.main(base_args(tiny_model, "--epochs", "2", "--checkpoint_steps", "0")) == 0
    info = json.loads((job / "output" / "mlflow_run.json").read_text())
    client = mlflow.MlflowClient(uri)
    run = client.get_run(info["run_id"])
    assert run.info.run_name == "train-run-1" and run.info.status == "FINISHED"
    assert run.data.params["learning_rate"] == "0.001"
    assert [m.step for m in client.get_metric_history(info["run_id"], "val_accuracy")] == [1, 2]
    assert "profiler_samples_per_s" in run.data.metrics
    assert client.get_experiment(run.info.experiment_id).name == "test-exp"


# --- resume -----------------------------------------------------------------------------
def _weights(folder: Path) -> dict:
    from safetensors.numpy import load_file

    return load_file(str(folder / "model.safetensors"))


def test_killed_job_resumes_from_last_checkpoint_and_matches_uninterrupted_run(job, tiny_model, tmp_path):
    labels = [0, 1, 2] * 200
    shutil.rmtree(job / "data" / "train")
    write_channel(job / "data" / "train", labels, seed=3)
    args = base_args(tiny_model, "--epochs", "2", "--checkpoint_steps", "10", "--train_batch_size", "4")
    # reference: the same job, never interrupted
    assert train.main(args + ["--model_dir", str(tmp_path / "ref_model"),
                              "--output_data_dir", str(tmp_path / "ref_out"),
                              "--checkpoint_dir", str(tmp_path / "ref_ckpt")]) == 0
    total = json.loads((tmp_path / "ref_out" / "metrics.json").read_text())["final"]["steps"]
    assert total == 300

    env = {**os.environ}
    proc = subprocess.Popen([sys.executable, TRAIN, *args], env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    deadline = time.monotonic() + 120
    while not list((job / "checkpoints").glob("checkpoint-00000020")) and time.monotonic() < deadline:
        assert proc.poll() is None, "job ended before it could be killed"
        time.sleep(0.02)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert not (job / "model" / "model.safetensors").exists()
    killed_at = max(int(p.name.split("-")[1]) for p in (job / "checkpoints").glob("checkpoint-*"))
    assert 20 <= killed_at < total

    out = subprocess.run([sys.executable, TRAIN, *args], env=env, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stdout[-2000:] + out.stderr[-2000:]
    assert f"resuming from {job / 'checkpoints' / f'checkpoint-{killed_at:08d}'}" in out.stdout
    final = json.loads((job / "output" / "metrics.json").read_text())["final"]
    assert final["resumed_from_step"] == killed_at and final["steps"] == total
    ref, got = _weights(tmp_path / "ref_model"), _weights(job / "model")
    assert ref.keys() == got.keys()
    assert all(np.allclose(ref[k], got[k], atol=1e-5) for k in ref)


def test_checkpoint_of_other_hyperparameters_is_not_resumed(job, tiny_model):
    assert train.main(base_args(tiny_model, "--epochs", "2", "--checkpoint_steps", "5")) == 0
    assert list((job / "checkpoints").glob("checkpoint-*"))
    assert train.main(base_args(tiny_model, "--epochs", "2", "--checkpoint_steps", "5", "--learning_rate", "5e-4")) == 0
    final = json.loads((job / "output" / "metrics.json").read_text())["final"]
    assert final["resumed_from_step"] is None and final["steps"] == 30


def test_sigterm_writes_a_checkpoint_and_exits_143(job, tiny_model):
    labels = [0, 1, 2] * 300
    shutil.rmtree(job / "data" / "train")
    write_channel(job / "data" / "train", labels, seed=4)
    args = base_args(tiny_model, "--epochs", "3", "--checkpoint_steps", "100000", "--train_batch_size", "2")
    proc = subprocess.Popen([sys.executable, TRAIN, *args], stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    deadline = time.monotonic() + 120
    for line in proc.stdout:
        if line.startswith("epoch 1/3 step") or time.monotonic() > deadline:
            break
    proc.send_signal(signal.SIGTERM)
    rest = proc.communicate(timeout=120)[0]
    assert proc.returncode == 143
    assert "SIGTERM: checkpoint written" in rest
    assert list((job / "checkpoints").glob("checkpoint-*"))


# --- auxiliary star-rating loss -------------------------------------------------------------
def test_rating_aux_head_trains_with_the_model_and_is_not_saved(job, tiny_model, capsys):
    write_channel(job / "data" / "train", [0, 1, 2] * 40, seed=1, stars=True)
    assert train.main(base_args(tiny_model, "--rating_aux_weight", "0.5", "--checkpoint_steps", "0")) == 0
    assert "auxiliary star-rating loss on, weight 0.5" in "".join(capsys.readouterr())
    from modeling import load_classifier
    from safetensors.torch import load_file

    head = load_file(job / "model" / "classifier_head.safetensors")
    assert set(head) == {"weight", "bias"} and head["weight"].shape[0] == 3
    assert not any("rating_head" in k for k in load_file(job / "model" / "model.safetensors"))
    assert not hasattr(load_classifier(job / "model"), "rating_head")


def test_rating_aux_without_star_column_trains_without_it(job, tiny_model, capsys):
    assert train.main(base_args(tiny_model, "--rating_aux_weight", "0.5", "--checkpoint_steps", "0")) == 0
    assert "no usable star_rating column" in "".join(capsys.readouterr())


def test_rating_aux_with_cls_pooling_fails_before_training(job, tiny_model, capsys):
    write_channel(job / "data" / "train", [0, 1, 2] * 40, seed=1, stars=True)
    assert train.main(base_args(tiny_model, "--rating_aux_weight", "0.5", "--pooling", "cls")) == 2
    assert "rating_aux_weight=0.5 needs pooling=mean" in capsys.readouterr().err
