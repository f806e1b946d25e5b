"""The synthetic review generator."""
from __future__ import annotations

import pandas as pd
import pytest

from include.data import synthetic


def test_same_arguments_give_the_same_rows():
    a = synthetic.generate_reviews(500, seed=7, bad_fraction=0.1)
    b = synthetic.generate_reviews(500, seed=7, bad_fraction=0.1)
    pd.testing.assert_frame_equal(a, b)
    assert not a.equals(synthetic.generate_reviews(500, seed=8, bad_fraction=0.1))


def test_rows_cover_every_rating_many_categories_and_varied_lengths():
    df = synthetic.generate_reviews(3000, seed=1)
    assert tuple(df.columns) == synthetic.RAW_COLUMNS
    assert set(df["star_rating"]) == {"1", "2", "3", "4", "5"}
    assert df["product_category"].nunique() >= 10
    words = df["review_body"].str.split().str.len()
    assert words.min() < 15 and words.max() > 100
    assert df["review_body"].str.contains("\n").any()  # some multi-line reviews
    assert df["review_id"].is_unique and df["review_body"].nunique() / len(df) > 0.98


def test_bad_fraction_injects_every_kind_of_bad_row():
    df = synthetic.generate_reviews(5000, seed=3, bad_fraction=0.05)
    kinds = df.attrs["bad_kinds"]
    assert sum(kinds.values()) == 250 and all(kinds[k] > 0 for k in synthetic.BAD_KINDS)
    assert (df["star_rating"] == "five").sum() == kinds["rating_word"]
    assert df["review_id"].isna().sum() == kinds["null_id"]
    assert (df["review_body"].str.len() > 5000).sum() == kinds["long_body"]


def test_dates_span_the_requested_days():
    df = synthetic.generate_reviews(1000, start_date="2026-05-30", days=3)
    assert sorted(df["review_date"].unique()) == ["2026-05-30", "2026-05-31", "2026-06-01"]


def test_streaming_writer_writes_the_same_rows_as_the_in_memory_writer(tmp_path):
    n = synthetic.BLOCK_ROWS + 123  # spans two blocks
    mem = synthetic.write_landing(synthetic.generate_reviews(n, seed=5, bad_fraction=0.01, days=2), tmp_path / "a")
    streamed = synthetic.write_landing_stream(n, tmp_path / "b", seed=5, bad_fraction=0.01, days=2)
    assert list(mem) == list(streamed) == ["2026-01-01", "2026-01-02"]
    for ds in mem:
        assert mem[ds].read_bytes() == streamed[ds].read_bytes()
        assert mem[ds].name == "part-00000.csv" and mem[ds].parent.name == f"ds={ds}"


def test_bad_arguments_are_refused():
    with pytest.raises(synthetic.SyntheticError, match="bad_fraction"):
        synthetic.generate_reviews(10, bad_fraction=2)
    with pytest.raises(synthetic.SyntheticError, match="start_date"):
        synthetic.generate_reviews(10, start_date="01/02/2026")
