"""The lab's SQL questions, plots, report; and the drift check."""
from __future__ import annotations

import pandas as pd
import pytest

from include.analytics import analysis, drift
from include.data import catalog_base
from include.data.synthetic import generate_reviews, write_landing
from include.pipeline import steps
from include.pipeline.context import RunInfo


@pytest.fixture
def catalogued(reviews_home):
    df = generate_reviews(3000, seed=4, bad_fraction=0.02, days=2)
    write_landing(df, catalog_base.landing_root())
    # What the analysis DAG's register task does: stage the backlog, audit it, publish (2% bad < 5%).
    info = RunInfo(dag_id="review_catalog_analysis", run_id="fixture", ds="", try_number=1)
    assert steps.audit_and_publish(info, steps.register_backlog(None))["audit"]["passed"]
    return df


def _valid(df: pd.DataFrame) -> pd.DataFrame:
    """The rows the gate lets through: not quarantined by any row rule (a repeated id within a
    drop is quarantined from its second occurrence on, whatever the first one looked like)."""
    ids = df["review_id"].fillna("").str.strip()
    repeated = df.assign(i=ids).duplicated(["review_date", "i"], keep="first") & (ids != "")
    body = df["review_body"].fillna("").str.strip()
    return df[df["star_rating"].fillna("").str.strip().isin(list("12345")) & (body != "") & (body.str.len() <= 5000)
              & (ids != "") & df["product_category"].fillna("").str.strip().ne("") & ~repeated]


def test_answers_match_pandas_on_the_valid_rows(catalogued):
    ans = analysis.answer_questions()
    valid = _valid(catalogued)
    # The latest drop of a review_id wins (later in the file within one drop).
    valid = valid.sort_values("review_date", kind="stable").drop_duplicates("review_id", keep="last")
    per_cat = ans["reviews_per_category"].set_index("product_category")["reviews"]
    assert per_cat.to_dict() == valid["product_category"].value_counts().to_dict()
    avg = ans["avg_rating_per_category"].set_index("product_category")["avg_star_rating"]
    expected = valid.assign(r=valid["star_rating"].astype(int)).groupby("product_category")["r"].mean()
    assert (avg.sort_index() - expected.sort_index()).abs().max() <= 0.0005 + 1e-9  # SQL rounds to 3 places
    assert ans["reviews_per_rating_and_category"]["reviews"].sum() == len(valid)
    sent = ans["sentiment_per_category"]
    assert set(sent["sentiment"]) == {"negative", "neutral", "positive"}
    assert sent.groupby("product_category")["pct_of_category"].sum().between(99.9, 100.1).all()
    assert ans["review_length_words"]["reviews"].sum() == len(valid)
    ext = ans["most_least_positive_categories"]
    assert list(ext["group"]) == ["most positive"] * 3 + ["least positive"] * 3
    assert ext["positive_share"].iloc[0] >= ext["positive_share"].iloc[-1]


def test_ds_range_is_a_bound_parameter(catalogued):
    day1 = analysis.answer_questions(ds_from="2026-01-01", ds_to="2026-01-01")
    both = analysis.answer_questions()
    assert 0 < day1["reviews_per_category"]["reviews"].sum() < both["reviews_per_category"]["reviews"].sum()
    # An injection attempt is just a wrong date, refused before any SQL runs.
    with pytest.raises(catalog_base.CatalogError, match="YYYY-MM-DD"):
        analysis.answer_questions(ds_from="2026-01-01' OR 1=1 --")


def test_run_analysis_writes_one_plot_per_question_and_a_report(catalogued, tmp_path):
    result = analysis.run_analysis(tmp_path / "out")
    assert set(result["plots"]) == {q.name for q in analysis.QUESTIONS}
    for path in result["plots"].values():
        assert open(path, "rb").read(8) == b"\x89PNG\r\n\x1a\n"
    page = open(result["report_path"], encoding="utf-8").read()
    assert page.count("data:image/png;base64,") == len(analysis.QUESTIONS)
    assert "GROUP BY product_category" in page and "<table" in page


def test_empty_catalog_gives_a_clear_error(reviews_home, tmp_path):
    with pytest.raises(analysis.AnalysisError, match="no valid reviews"):
        analysis.run_analysis(tmp_path)


def test_drift_is_zero_for_the_same_data_and_warns_for_a_shifted_mix(catalogued, tmp_path, caplog):
    valid = catalogued[catalogued["star_rating"].isin(list("12345")) & catalogued["review_body"].notna()]
    same = drift.compare(["2026-01-01", "2026-01-02"], valid.assign(star_rating=valid["star_rating"].astype(int)))
    assert not same["drift"] and max(same["psi"].values()) < 0.05
    shifted = valid[valid["star_rating"].isin(["1", "2"])].assign(star_rating=lambda d: d["star_rating"].astype(int))
    path = tmp_path / "train.parquet"
    shifted.to_parquet(path)
    with caplog.at_level("WARNING"):
        res = drift.compare(["2026-01-01"], path, threshold=0.2, report_dir=tmp_path / "drift")
    assert res["drift"] and "star_rating" in res["drifted"] and "data drift" in caplog.text
    assert (tmp_path / "drift" / "drift_report.html").exists() and (tmp_path / "drift" / "drift.json").exists()


def test_drift_baseline_must_exist_and_have_the_columns(catalogued, tmp_path):
    with pytest.raises(drift.DriftError, match="not found"):
        drift.compare(["2026-01-01"], tmp_path / "missing.parquet")
    with pytest.raises(drift.DriftError, match="lacks column"):
        drift.compare(["2026-01-01"], pd.DataFrame({"x": [1]}))


def test_drift_baseline_defaults_to_the_deployed_models_training_data(reviews_home, tmp_path):
    from include.model.registry import get_registry
    from include.model.registry_base import APPROVED

    assert steps.deployed_training_data_uri() is None, "no registry yet: no baseline"
    registry = get_registry()
    package = tmp_path / "model.tar.gz"
    package.write_bytes(b"not inspected by the registry")
    clean = (tmp_path / "runs" / "export").as_uri()
    version = registry.register(package.as_uri(), {"accuracy": 0.7},
                                {"dag_id": "d", "run_id": "r1", "clean_data_uri": clean}, APPROVED)
    assert steps.deployed_training_data_uri() is None, "registered but not deployed"
    registry.mark_deployed(version.version)
    assert steps.deployed_training_data_uri() == f"{clean}/clean.parquet"


def _length_bin_starts(labels: list[str]) -> list[float]:
    return [float(label.split("..")[0]) for label in labels]


def test_drift_report_says_the_verdict_first_and_orders_the_bins(catalogued, tmp_path):
    import html
    import re

    valid = catalogued[catalogued["star_rating"].isin(list("12345")) & catalogued["review_body"].notna()]
    shifted = valid[valid["star_rating"].isin(["1", "2"])].assign(star_rating=lambda d: d["star_rating"].astype(int))
    res = drift.compare(["2026-01-01"], shifted, threshold=0.2, report_dir=tmp_path / "drift")
    page = (tmp_path / "drift" / "drift_report.html").read_text()
    body = page.split("<body>", 1)[1]
    worst = max(res["psi"], key=res["psi"].get)
    first = re.search(r'<p class="verdict" id="verdict">([^<]*)</p>', body)
    assert body.lstrip().startswith('<p class="verdict"') and first
    assert html.unescape(first.group(1)) == (
        f"DRIFT (warning): worst feature {worst}, PSI {res['psi'][worst]:.4f} > threshold 0.2"
        f" ({len(res['drifted'])} of 3 features above it)")
    # the length table lists its bins in numeric order, from -inf up to inf
    section = body.split('<section id="review_length_words">')[1].split("</section>")[0]
    labels = re.findall(r"<th>(-?[\d.e+]+|-inf)\.\.([\d.e+]+|inf)</th>", section)
    starts = _length_bin_starts([f"{lo}..{hi}" for lo, hi in labels])
    assert len(starts) >= 3 and starts == sorted(starts) and labels[0][0] == "-inf" and labels[-1][1] == "inf"
    ratings = re.findall(r"<th>([1-5])</th>", body.split('<section id="star_rating">')[1].split("</section>")[0])
    assert ratings == sorted(ratings) and len(ratings) == 5
    # one chart per feature, inlined and also kept as a PNG
    assert body.count("data:image/png;base64,") == 3
    for name in res["psi"]:
        assert (tmp_path / "drift" / f"drift_{name}.png").read_bytes()[:4] == b"\x89PNG"


def test_no_drift_verdict_names_the_worst_feature_too(catalogued, tmp_path):
    valid = catalogued[catalogued["star_rating"].isin(list("12345")) & catalogued["review_body"].notna()]
    res = drift.compare(["2026-01-01", "2026-01-02"], valid.assign(star_rating=valid["star_rating"].astype(int)),
                        threshold=0.2, report_dir=tmp_path)
    assert drift.verdict_line(res) == (f"No drift: worst feature {res['worst_feature']}, "
                                       f"PSI {res['worst_psi']:.4f} <= threshold 0.2")
    assert res["worst_psi"] == max(res["psi"].values())


def test_share_table_orders_numeric_bins_by_value_not_as_text():
    base = pd.Series({"-inf..24": 0.1, "102..inf": 0.1, "24..34": 0.8})
    cur = pd.Series({"24..34": 0.5, "102..inf": 0.5})
    table = drift.share_table(base, cur, ["-inf..24", "24..34", "102..inf"])
    assert list(table.index) == ["-inf..24", "24..34", "102..inf"]
    assert table.loc["-inf..24", "current_share"] == 0.0
    assert list(drift.share_table(pd.Series({5: 0.5, 1: 0.2, 3: 0.3}), pd.Series({1: 1.0})).index) == [1, 3, 5]


def test_analysis_report_links_the_runs_drift_report(catalogued, tmp_path):
    result = analysis.run_analysis(tmp_path / "analysis")
    page = (tmp_path / "analysis" / "report.html").read_text()
    assert '<a href="../drift/drift_report.html">Drift report</a>' in page
    assert result["report_path"].endswith("analysis/report.html")
