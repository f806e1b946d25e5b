"""review_catalog_analysis end to end with dag.test() on real landed reviews."""
from __future__ import annotations

import json

import pandas as pd

from include.analytics.analysis import QUESTIONS
from include.common.config import get_settings
from include.common.io import uri_to_path
from include.data.catalog import get_catalog
from tests.integration.conftest import run_dag


def test_analysis_dag_registers_landed_partitions_and_writes_report(landed, capsys):
    dr, states = run_dag("review_catalog_analysis")
    assert str(dr.state).endswith("success"), states
    assert states["register"].endswith("success") and states["analyse"].endswith("success"), states
    assert states["check_drift"].endswith("success"), states  # no baseline: skipped, not failed

    assert get_catalog().registered_partitions() == sorted(get_catalog().landing_partitions())
    out = uri_to_path(get_settings().run_uri("review_catalog_analysis", dr.run_id, "analysis"))
    report = (out / "report.html").read_text(encoding="utf-8")
    for q in QUESTIONS:
        assert (out / f"{q.name}.png").stat().st_size > 5_000, q.name
        assert q.title in report
    assert "$ds_from" in report  # the SQL text is shown with its bind parameters
    summary = json.loads((out / "summary.json").read_text())
    assert summary["reviews"] == 600
    assert "analysis report:" in capsys.readouterr().out


def test_analysis_dag_drift_check_warns_but_does_not_fail(landed, tmp_path):
    # Baseline with a very different mix: one category, 1-star reviews of 1..5 words.
    baseline = tmp_path / "train.parquet"
    pd.DataFrame({"product_category": ["Swim"] * 50, "review_body": [" ".join(["bad"] * (k % 5 + 1)) for k in range(50)],
                  "star_rating": [1] * 50}).to_parquet(baseline)
    dr, states = run_dag("review_catalog_analysis", drift_baseline_uri=str(baseline))
    assert str(dr.state).endswith("success"), states

    drift = json.loads((uri_to_path(get_settings().run_uri("review_catalog_analysis", dr.run_id, "drift"))
                        / "drift.json").read_text())
    assert drift["drift"] is True and set(drift["drifted"]) == {"product_category", "review_length_words", "star_rating"}
