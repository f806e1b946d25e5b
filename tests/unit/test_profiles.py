"""Training profiles (include/profiles.py) and how the pipeline applies them."""
from __future__ import annotations

import pytest

from include.pipeline import profiles
from include.pipeline.context import PipelineError
from include.pipeline.steps import training_settings


def test_default_is_the_quality_profile():
    s = profiles.resolve({})
    assert s["profile"] == "quality" and s["overrides"] == []
    assert {k: s[k] for k in profiles.SETTINGS} == profiles.PROFILES["quality"]


def test_empty_params_take_the_profile_value_and_set_ones_override_it():
    s = profiles.resolve({"profile": "quick", "epochs": None, "max_seq_length": "", "learning_rate": 3e-5})
    assert s["profile"] == "quick"
    assert s["max_seq_length"] == profiles.PROFILES["quick"]["max_seq_length"]
    assert s["epochs"] == profiles.PROFILES["quick"]["epochs"]
    assert s["learning_rate"] == 3e-5 and s["overrides"] == ["learning_rate"]


def test_boolean_balance_dataset_of_older_confs_is_accepted():
    assert profiles.resolve({"balance_dataset": True})["balance_dataset"] == "true"
    assert profiles.resolve({"balance_dataset": False})["balance_dataset"] == "false"
    assert profiles.resolve({"profile": "quick", "balance_dataset": "eval"})["overrides"] == ["balance_dataset"]


@pytest.mark.parametrize("params, message", [
    ({"profile": "fastest"}, "profile='fastest': use one of quality, quick"),
    ({"balance_dataset": "half"}, "balance_dataset='half': use true, eval or false"),
])
def test_bad_profile_params_are_named(params, message):
    with pytest.raises(profiles.ProfileError, match=message):
        profiles.resolve(params)
    with pytest.raises(PipelineError, match=message):  # a data error in the DAG: no retries
        training_settings(params)


def test_quality_profile_is_what_the_model_quality_benchmark_measured():
    """The DAG default must be the settings behind benchmarks/results/model_quality.json."""
    import json
    from pathlib import Path

    result = json.loads((Path(__file__).resolve().parents[2] / "benchmarks" / "results" /
                         "model_quality.json").read_text())
    q, pre, tr = profiles.PROFILES["quality"], result["settings"]["preprocess"], result["settings"]["train"]
    assert (pre["max_seq_length"], pre["train_split_percentage"], pre["validation_split_percentage"],
            pre["balance_dataset"]) == (q["max_seq_length"], q["train_split_percentage"],
                                        q["validation_split_percentage"], q["balance_dataset"])
    for key in ("epochs", "learning_rate", "train_batch_size", "max_class_ratio", "class_weights",
                "max_train_samples", "rating_aux_weight"):
        assert tr[key] == q[key], key
    assert tr["time_budget_s"] == q["train_time_budget_s"]
