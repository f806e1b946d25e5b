"""Training profiles: named sets of preprocessing + training settings for the pipeline.

A run picks a profile with the ``profile`` param; any setting param left empty (null) takes
the profile's value, one that is set overrides it. The effective settings are logged by the
preprocess and train steps and go into the lineage and the MLflow run.

* ``quality`` - the DAG's default for real data: the settings of
  ``benchmarks/model_quality.py`` (see benchmarks/results/model_quality.json), a ~20-minute
  training job on 2 CPU cores.
* ``quick`` - ``make run``'s: the whole pipeline in under 10 minutes on 2 cores
  (benchmarks/results/pipeline_e2e.json), for trying the project out and for tests.
"""
from __future__ import annotations

from typing import Any

# The settings a profile fixes; each is also a DAG param (null = from the profile).
PROFILES: dict[str, dict[str, Any]] = {
    "quality": {
        "max_seq_length": 160,  # the longest review (title + text) is 169 tokens, 11% pass 128
        "train_split_percentage": 0.82,
        "validation_split_percentage": 0.05,  # test = the remaining 13%, >= 900 balanced rows
        "balance_dataset": "eval",  # train on every row; validation/test balanced
        "max_class_ratio": 3.0,  # each epoch: positives capped at 3x the smallest class, redrawn
        "class_weights": "balanced",  # plus inverse-frequency loss weights for what remains
        "rating_aux_weight": 0.5,  # auxiliary 5-class star-rating loss while training
        "epochs": 2,  # a third epoch over-fitted (validation loss rose) in the measured runs
        "learning_rate": 8e-5,
        "train_batch_size": 16,
        "max_train_samples": 0,
        "train_time_budget_s": 1125,  # a cap: the run needs ~940 s on 2 cores; load/save fit the 20 min
    },
    "quick": {
        "max_seq_length": 64,
        "train_split_percentage": 0.90,
        "validation_split_percentage": 0.05,
        "balance_dataset": "true",  # the course's way: down-sample every class to the smallest
        "max_class_ratio": 0.0,
        "class_weights": "balanced",
        "rating_aux_weight": 0.5,
        "epochs": 1,
        "learning_rate": 1e-4,
        "train_batch_size": 16,
        "max_train_samples": 0,
        "train_time_budget_s": 300,
    },
}
DEFAULT_PROFILE = "quality"
SETTINGS = tuple(PROFILES[DEFAULT_PROFILE])
BALANCE_CHOICES = ("true", "eval", "false")

# What each setting means: the DAG's trigger form and the profile table of docs/profiles-and-params.md show it.
HELP: dict[str, str] = {
    "max_seq_length": "Tokens per review (title + text) after truncation.",
    "train_split_percentage": "Share of rows used for training.",
    "validation_split_percentage": "Share of rows for validation; the rest is the test set.",
    "balance_dataset": "true: down-sample every class to the smallest; eval: balance validation/test only and "
                       "train on every row (class weights); false: no balancing.",
    "max_class_ratio": "Each epoch, cap every class at this multiple of the smallest, redrawn every epoch "
                       "(0 = all rows).",
    "class_weights": "Loss weights per class (balanced, sqrt, none), balancing what each epoch shows the model.",
    "rating_aux_weight": "Weight of an auxiliary 5-class star-rating loss while training (the extra head is not "
                         "deployed; 0 = off).",
    "epochs": "Training epochs.",
    "learning_rate": "Peak learning rate, AdamW, linear decay.",
    "train_batch_size": "Reviews per training step.",
    "max_train_samples": "Cap on training rows (0 = all); bounds the CPU time of a run.",
    "train_time_budget_s": "Stop training after this many seconds, with the learning-rate schedule fitted to it "
                           "(0 = no budget: run all epochs).",
}


# Each setting's JSON schema (beyond "null = the profile's value"): the DAG's trigger form
# validates a param against it; setting_params() builds the Params from it.
SCHEMA: dict[str, dict[str, Any]] = {
    "max_seq_length": {"type": "integer", "minimum": 8, "maximum": 512},
    "train_split_percentage": {"type": "number", "exclusiveMinimum": 0, "exclusiveMaximum": 1},
    "validation_split_percentage": {"type": "number", "exclusiveMinimum": 0, "exclusiveMaximum": 1},
    "balance_dataset": {"type": "string", "enum": list(BALANCE_CHOICES)},
    "max_class_ratio": {"type": "number", "minimum": 0},
    "class_weights": {"type": "string", "enum": ["balanced", "sqrt", "none"]},
    "rating_aux_weight": {"type": "number", "minimum": 0, "maximum": 10},
    "epochs": {"type": "integer", "minimum": 1, "maximum": 50},
    "learning_rate": {"type": "number", "exclusiveMinimum": 0, "maximum": 1},
    "train_batch_size": {"type": "integer", "minimum": 1, "maximum": 1024},
    "max_train_samples": {"type": "integer", "minimum": 0},
    "train_time_budget_s": {"type": "integer", "minimum": 0},
}


def setting_params() -> dict[str, Any]:
    """One DAG ``Param`` per profile setting, empty (null) by default = the profile's value,
    with its schema (``SCHEMA``) and its description (``param_description``)."""
    from airflow.sdk import Param

    out = {}
    for key in SETTINGS:
        schema = dict(SCHEMA[key])
        schema["type"] = ["null", schema["type"]]
        if "enum" in schema:
            schema["enum"] = [None, *schema["enum"]]
        out[key] = Param(None, description=param_description(key), **schema)
    return out


def param_description(key: str) -> str:
    """A setting's meaning and every profile's value of it (the DAG param's description)."""
    values = ", ".join(f"{name} {values[key]}" for name, values in PROFILES.items())
    return f"{HELP[key]} Empty = the profile's value: {values}."


class ProfileError(ValueError):
    """An unknown profile or a setting it cannot take (the message names it)."""


def resolve(params: dict[str, Any]) -> dict[str, Any]:
    """The effective settings of a run: the profile's, overridden by every non-empty param.

    Returns the settings plus ``profile`` (the name) and ``overrides`` (the params that
    replaced a profile value).
    """
    name = params.get("profile") or DEFAULT_PROFILE
    if name not in PROFILES:
        raise ProfileError(f"param profile={name!r}: use one of {', '.join(PROFILES)}")
    out = dict(PROFILES[name])
    overrides = []
    for key in SETTINGS:
        value = params.get(key)
        if value is None or value == "":
            continue
        if key == "balance_dataset":
            value = str(value).lower()  # the boolean form of older confs: true / false
            if value not in BALANCE_CHOICES:
                raise ProfileError(f"param balance_dataset={params[key]!r}: use true, eval or false")
        if value != out[key]:
            overrides.append(key)
        out[key] = value
    return {**out, "profile": name, "overrides": overrides}
