"""preprocess.py: labels, balance, split and tokenized shards per the contract."""
from __future__ import annotations

import json

import pandas as pd
import pytest

from include.scripts import preprocess


def _reviews(n_per_rating: dict[int, int]) -> pd.DataFrame:
    rows = []
    for rating, n in n_per_rating.items():
        for i in range(n):
            rows.append({"review_id": f"r{rating}-{i}", "product_category": "Dresses",
                         "review_body": f"  review   {i} with rating {rating} " + "word " * (i % 50),
                         "star_rating": str(rating), "review_date": "2026-11-01"})
    return pd.DataFrame(rows)


@pytest.fixture
def run_job(tmp_path, model_dir):
    def run(df: pd.DataFrame, *extra: str) -> tuple[dict, object]:
        inp, out = tmp_path / "in", tmp_path / "out"
        inp.mkdir(exist_ok=True)
        df.to_csv(inp / "part-00000.csv", index=False)
        stats = preprocess.main(["--input-data", str(inp), "--output-data", str(out),
                                 "--model-name-or-path", model_dir, "--max-seq-length", "16", *extra])
        return stats, out
    return run


def test_ratings_map_to_sentiment_and_label_ids(run_job):
    stats, out = run_job(_reviews({1: 40, 2: 40, 3: 80, 4: 40, 5: 40}))
    df = pd.concat(pd.read_parquet(p) for p in out.glob("*/part-*.parquet"))
    expected = {1: -1, 2: -1, 3: 0, 4: 1, 5: 1}
    assert (df["star_rating"].map(expected) == df["sentiment"]).all()
    assert (df["label_id"] == df["sentiment"] + 1).all()


def test_balanced_splits_have_equal_classes_and_no_overlap(run_job):
    stats, out = run_job(_reviews({1: 30, 3: 100, 5: 300}), "--balance-dataset", "true")
    frames = {s: pd.read_parquet(out / s / "part-00000.parquet") for s in ("train", "validation", "test")}
    for name, df in frames.items():
        counts = df["label_id"].value_counts()
        assert counts.nunique() == 1, f"{name} is not balanced: {counts.to_dict()}"
        assert (df["split_type"] == name).all()
    ids = [set(df["review_id"]) for df in frames.values()]
    assert not (ids[0] & ids[1] or ids[0] & ids[2] or ids[1] & ids[2])
    assert sum(len(df) for df in frames.values()) == 90
    assert json.loads((out / "stats.json").read_text())["splits"]["train"]["rows"] == len(frames["train"])


def test_eval_balance_keeps_all_training_rows(run_job):
    stats, out = run_job(_reviews({1: 40, 3: 40, 5: 400}), "--balance-dataset", "eval")
    test = pd.read_parquet(out / "test/part-00000.parquet")
    train = pd.read_parquet(out / "train/part-00000.parquet")
    assert test["label_id"].value_counts().nunique() == 1
    assert len(train) + stats["splits"]["validation"]["rows"] + len(test) == 480


def test_tokens_are_truncated_unpadded_with_special_tokens(run_job, model_dir):
    from transformers import AutoTokenizer

    _, out = run_job(_reviews({1: 20, 3: 20, 5: 20}))
    df = pd.read_parquet(out / "train/part-00000.parquet")
    tok = AutoTokenizer.from_pretrained(model_dir)
    lengths = df["input_ids"].map(len)
    assert lengths.max() <= 16 and lengths.min() < 16, "truncated to max_seq_length, not padded"
    assert all(ids[0] == tok.cls_token_id and ids[-1] == tok.sep_token_id for ids in df["input_ids"])
    assert (df["attention_mask"].map(len) == lengths).all()
    assert "  " not in df["review_body"].iloc[0], "whitespace is normalised"


def test_single_class_input_is_rejected_with_a_clear_error(run_job):
    with pytest.raises(preprocess.PreprocessError, match="only one sentiment class"):
        run_job(_reviews({5: 50}))


def test_missing_column_names_the_file(tmp_path, model_dir):
    inp = tmp_path / "in"
    inp.mkdir()
    _reviews({1: 5, 5: 5}).drop(columns=["star_rating"]).to_csv(inp / "bad.csv", index=False)
    with pytest.raises(preprocess.PreprocessError, match=r"bad\.csv: missing column\(s\) star_rating"):
        preprocess.main(["--input-data", str(inp), "--output-data", str(tmp_path / "out"), "--model-name-or-path", model_dir])


def test_bad_split_percentages_fail_before_any_work(tmp_path):
    with pytest.raises(SystemExit):
        preprocess.parse_args(["--train-split-percentage", "0.9", "--validation-split-percentage", "0.2"])
