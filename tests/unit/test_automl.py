"""The AutoML search job (include/scripts/automl.py) and the baseline's inference handler, on real reviews."""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from include.scripts import automl, automl_inference

SCRIPT = Path(automl.__file__)
FAST = ["--families", "logreg,complement_nb,logreg_stars", "--max-candidates", "4", "--time-budget-s", "120"]


def _label(stars: pd.Series) -> pd.Series:
    return stars.map(lambda s: 0 if s <= 2 else 1 if s == 3 else 2)


@pytest.fixture(scope="module")
def splits(tmp_path_factory) -> Path:
    """Balanced train (600) / validation (150) / test (150) splits of real reviews, as the feature store's."""
    from include.data.landing import load_kaggle_reviews

    df = load_kaggle_reviews()
    df["label_id"] = _label(df["star_rating"])
    df = pd.concat([df[df["label_id"] == k].sample(300, random_state=0) for k in (0, 1, 2)]).sample(
        frac=1, random_state=1)
    root = tmp_path_factory.mktemp("automl-splits")
    parts = {"train": df.iloc[:600], "validation": df.iloc[600:750], "test": df.iloc[750:]}
    for name, part in parts.items():
        (root / name).mkdir()
        part[["review_id", "review_body", "star_rating", "label_id"]].to_parquet(root / name / "part-00000.parquet")
    return root


@pytest.fixture(scope="module")
def searched(splits, tmp_path_factory) -> dict:
    out = tmp_path_factory.mktemp("automl-out")
    board = automl.main(["search", "--train-data", str(splits / "train"), "--validation-data",
                         str(splits / "validation"), "--test-data", str(splits / "test"), "--output-data",
                         str(out / "automl"), "--model-output", str(out / "model"), *FAST])
    return {"board": board, "out": out}


def test_search_writes_a_leaderboard_ranked_by_cross_validated_accuracy(searched):
    board = json.loads((searched["out"] / "automl" / "leaderboard.json").read_text())
    assert board == json.loads(json.dumps(searched["board"]))
    rows = board["leaderboard"]
    # 4 searched candidates + the stacked one
    assert board["candidates"] == len(rows) == 5
    assert {r["family"] for r in rows} == {"logreg", "complement_nb", "logreg_stars", "stacking"}
    # Ranked on the training split's out-of-fold scores: validation and test accuracy never choose.
    cvs = [r["cv_accuracy"] for r in rows]
    assert cvs == sorted(cvs, reverse=True) and [r["rank"] for r in rows] == [1, 2, 3, 4, 5]
    assert board["best_candidate"] == rows[0]["candidate"] and board["best_cv_accuracy"] == cvs[0]
    assert board["cv_folds"] == 3 and board["rows"] == {"train": 600, "validation": 150, "test": 150}
    for r in rows:
        assert r["train_s"] >= 0 and r["cv_s"] > 0 and r["inference_s_per_1000"] > 0 and r["hyperparameters"]
        assert 0 < r["cv_accuracy"] <= 1 and 0 < r["validation_accuracy"] <= 1
    # 3 balanced classes: chance is 0.33; real reviews make every linear text model clearly better.
    assert board["best_accuracy"] > 0.5, board


def test_stacked_candidate_joins_the_best_of_each_kind_and_serves_from_its_package(searched, splits, tmp_path):
    from include.model.packaging import build_sklearn_package

    rows = {r["candidate"]: r for r in searched["board"]["leaderboard"]}
    stacked = next(r for r in rows.values() if r["family"] == "stacking")
    members = stacked["hyperparameters"]["members"]
    kinds = [(rows[m]["family"], rows[m]["vectorizer"]) for m in members]
    assert len(members) >= 2 and len(set(kinds)) == len(kinds)  # one member per (family, vectorizer)
    for m in members:  # each the best of its kind
        assert rows[m]["cv_accuracy"] == max(r["cv_accuracy"] for r in rows.values()
                                             if (r["family"], r["vectorizer"]) == (rows[m]["family"], rows[m]["vectorizer"]))
    # The stacked model rebuilt exactly as the search saved it, packaged and scored from the package.
    data = {s: automl.load_split(splits / s, s, need_rating=True) for s in ("train", "validation", "test")}
    again, best = automl.search(data, 120, 4, 42, ("logreg", "complement_nb", "logreg_stars"), log_fn=lambda m: None)
    row = next(r for r in again if r["family"] == "stacking")
    assert row["candidate"] == stacked["candidate"] and row["test_accuracy"] == stacked["test_accuracy"]
    automl.save_model(row, tmp_path / "model")
    build_sklearn_package(tmp_path / "model", (tmp_path / "pkg").as_uri())
    report = automl.main(["score", "--model", str(tmp_path / "pkg"), "--test-data", str(splits / "test"),
                          "--output-data", str(tmp_path / "scored")])
    assert report["metrics"]["accuracy"]["value"] == pytest.approx(stacked["test_accuracy"], abs=1e-4)


def test_no_stacked_candidate_when_stacking_is_off(splits):
    data = {s: automl.load_split(splits / s, s) for s in ("train", "validation", "test")}
    rows, _ = automl.search(data, 60, 2, 42, ("logreg", "complement_nb"), log_fn=lambda m: None, stack_members=0)
    assert len(rows) == 2 and "stacking" not in {r["family"] for r in rows}


def test_decoder_is_tuned_for_balanced_accuracy_on_imbalanced_scores():
    # 80% of the rows are class 2 and the scores lean to it: the balanced weights move the bias so
    # that the minority classes are recalled, plain accuracy would keep everything on class 2.
    rng = np.random.default_rng(0)
    y = np.array([0] * 100 + [1] * 100 + [2] * 800)
    logits = rng.normal(0, 1, (len(y), 3))
    logits[np.arange(len(y)), y] += 1.0
    logits[:, 2] += 1.5
    probs = np.exp(logits) / np.exp(logits).sum(1, keepdims=True)
    classes = np.array([0, 1, 2])
    w = automl.balanced_weights(y)
    assert w[y == 0].sum() == pytest.approx(w[y == 2].sum())
    plain = automl.tune_decoder(probs, y, "logreg", classes)
    balanced = automl.tune_decoder(probs, y, "logreg", classes, w)
    def bal_acc(decoder: dict) -> float:
        return automl.weighted_accuracy(automl_inference.decode(probs, decoder)[0], y, w)
    assert balanced["bias"][0] > 0.5 and balanced["bias"][1] > 0.5
    assert bal_acc(balanced) > bal_acc(plain) + 0.1
    assert bal_acc(balanced) > bal_acc({"kind": "argmax", "bias": [0.0, 0.0, 0.0]}) + 0.1


def test_a_candidate_whose_folds_project_past_the_deadline_is_stopped_after_one_fold(splits):
    import time

    train = automl.load_split(splits / "train", "train")
    x = automl.make_vectorizer("word", len(train)).fit_transform(train["review_body"]).tocsr()
    y = train["label_id"].to_numpy().astype(int)
    c = automl.Candidate("logreg", "word", {"C": 1.0})
    with pytest.raises(automl.OverBudget) as info:
        automl.out_of_fold_scores(c, x, y, y, np.array([0, 1, 2]), 3, 42, deadline=time.monotonic())
    assert info.value.done == 1 and info.value.projected_s > 0
    scores, raw = automl.out_of_fold_scores(c, x, y, y, np.array([0, 1, 2]), 3, 42)  # no deadline: all folds
    assert scores.shape == raw.shape == (len(y), 3) and np.allclose(scores.sum(1), 1)


def test_cv_folds_are_capped_by_the_smallest_class_and_refused_below_two():
    assert automl.cv_folds_for(np.array([0, 0, 1, 1, 2, 2, 2, 2]), 5) == 2
    assert automl.cv_folds_for(np.array([0] * 10 + [1] * 10), 3) == 3
    with pytest.raises(automl.AutoMLInputError, match="at least 2 per class"):
        automl.cv_folds_for(np.array([0, 1, 1, 2, 2]), 3)


def test_leaderboard_page_has_the_chart_and_every_candidate(searched):
    page = (searched["out"] / "automl" / "leaderboard.html").read_text()
    assert "data:image/png;base64," in page
    for row in searched["board"]["leaderboard"]:
        assert row["candidate"].split("(")[0] in page


def test_evaluation_json_matches_the_best_candidates_test_accuracy(searched):
    report = json.loads((searched["out"] / "automl" / "evaluation.json").read_text())
    assert report["metrics"]["accuracy"]["value"] == pytest.approx(searched["board"]["best_accuracy"], abs=1e-4)
    assert report["test_rows"] == 150 and np.array(report["confusion_matrix"]).sum() == 150


def test_saved_model_serves_the_bert_handlers_wire_format(searched):
    model = automl_inference.model_fn(str(searched["out"] / "model"))
    data = automl_inference.input_fn(b'{"features": ["I love this dress"]}\n{"features": ["It ripped"]}\n',
                                     "application/jsonlines")
    lines = automl_inference.output_fn(automl_inference.predict_fn(data, model), "application/jsonlines")
    answers = [json.loads(x) for x in lines.strip().splitlines()]
    assert len(answers) == 2 and all(a["predicted_label"] in (-1, 0, 1) and 0 <= a["probability"] <= 1
                                     for a in answers)
    one = json.loads(automl_inference.output_fn(
        automl_inference.predict_fn(automl_inference.input_fn('"Runs small"', "application/json"), model),
        "application/json"))
    assert set(one["probabilities"]) == {"negative", "neutral", "positive"}
    assert sum(one["probabilities"].values()) == pytest.approx(1.0, abs=1e-4)
    with pytest.raises(ValueError, match="features"):
        automl_inference.input_fn(b'{"text": "x"}\n', "application/jsonlines")


def test_score_mode_reproduces_the_search_accuracy_from_the_package(searched, splits, tmp_path):
    from include.model.packaging import build_sklearn_package

    package = build_sklearn_package(searched["out"] / "model", (tmp_path / "pkg").as_uri())
    report = automl.main(["score", "--model", str(tmp_path / "pkg"), "--test-data", str(splits / "test"),
                          "--output-data", str(tmp_path / "scored")])
    assert package.endswith("model.tar.gz")
    assert report["metrics"]["accuracy"]["value"] == pytest.approx(searched["board"]["best_accuracy"], abs=1e-4)


def _run(args: list[str]) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(SCRIPT), *args], capture_output=True, text=True, timeout=300)


def test_one_class_training_split_exits_2_with_the_reason(splits, tmp_path):
    one = tmp_path / "train"
    one.mkdir()
    df = pd.read_parquet(splits / "train")
    df[df["label_id"] == 2].to_parquet(one / "part-00000.parquet")
    proc = _run(["--train-data", str(one), "--validation-data", str(splits / "validation"), "--test-data",
                 str(splits / "test"), "--output-data", str(tmp_path / "o"), "--model-output", str(tmp_path / "m")])
    assert proc.returncode == 2 and "one class" in proc.stderr, proc.stderr[-2000:]


def test_missing_split_and_missing_column_are_named(splits, tmp_path):
    proc = _run(["--train-data", str(tmp_path / "nope"), "--validation-data", str(splits / "validation"),
                 "--test-data", str(splits / "test"), "--output-data", str(tmp_path / "o")])
    assert proc.returncode == 2 and "no train shards" in proc.stderr
    bad = tmp_path / "bad"
    bad.mkdir()
    pd.read_parquet(splits / "train").drop(columns=["review_body"]).to_parquet(bad / "part-00000.parquet")
    with pytest.raises(automl.AutoMLInputError, match="review_body"):
        automl.load_split(bad, "train")


@pytest.mark.parametrize("args, message", [(["--time-budget-s", "1"], "at least 10 seconds"),
                                           (["--families", "logreg,xgboost"], "unknown"),
                                           (["--max-candidates", "0"], "at least 1"),
                                           (["--cv-folds", "1"], "at least 2")])
def test_bad_arguments_are_refused_with_the_argument_named(args, message, capsys):
    with pytest.raises(SystemExit):
        automl.parse_args(args)
    assert message in capsys.readouterr().err


def test_a_modified_model_file_in_a_package_is_refused_before_loading(searched, tmp_path):
    import tarfile

    from include.model.packaging import build_sklearn_package

    build_sklearn_package(searched["out"] / "model", (tmp_path / "pkg").as_uri())
    folder = tmp_path / "unpacked"
    with tarfile.open(tmp_path / "pkg" / "model.tar.gz") as tar:
        tar.extractall(folder, filter="data")
    assert automl_inference.model_fn(str(folder)).decoder  # intact: loads
    with open(folder / automl_inference.MODEL_FILE, "ab") as fh:
        fh.write(b"tampered")
    with pytest.raises(ValueError, match="checksum"):
        automl_inference.model_fn(str(folder))
