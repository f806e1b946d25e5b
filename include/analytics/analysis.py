"""The lab's questions about the catalogued reviews, answered with SQL into pandas.

Each question is one parameterised SQL query over the view ``reviews.reviews_typed`` (rows
with a valid rating, text and category that are not quarantined; the latest drop of a
``review_id``), one PNG plot and one table in a self-contained HTML report (plots embedded,
and linked as files). ``run_analysis`` writes them into a folder (the DAG's ``analyse``
step: ``include/pipeline/steps.py``).
"""
from __future__ import annotations

import base64
import json
import logging
from collections.abc import Callable
from dataclasses import dataclass
from datetime import date
from pathlib import Path

import pandas as pd

from include.common.config import Settings
from include.common.io import atomic_path, write_text_atomic
from include.common.templating import render
from include.data import catalog_base
from include.data.catalog import get_catalog

log = logging.getLogger(__name__)

VIEW = f"{catalog_base.SCHEMA}.reviews_typed"
SCOPE = f"FROM {VIEW} WHERE ds BETWEEN $ds_from AND $ds_to"
COUNT_SQL = f"SELECT count(*) AS reviews {SCOPE}"


class AnalysisError(ValueError):
    """The analysis cannot run (no data in the range, bad parameter)."""


@dataclass(frozen=True)
class Question:
    """One lab question: its SQL (bind parameters only) and how to plot the answer."""

    name: str
    title: str
    sql: str
    plot: Callable[[pd.DataFrame, object], None]


def _barh(x: str, y: str, xlabel: str, ylabel: str = "product category"):
    def draw(df: pd.DataFrame, ax) -> None:
        import seaborn as sns

        sns.barplot(data=df, x=x, y=y, ax=ax, color="#4c72b0", orient="h")
        ax.set_xlabel(xlabel)
        ax.set_ylabel(ylabel)

    return draw


def _stacked(index: str, column: str, value: str, xlabel: str, order: list | None = None):
    def draw(df: pd.DataFrame, ax) -> None:
        wide = df.pivot_table(index=index, columns=column, values=value, aggfunc="sum", fill_value=0)
        if order:
            wide = wide[[c for c in order if c in wide.columns]]
        wide = wide.loc[wide.sum(axis=1).sort_values().index]
        wide.plot(kind="barh", stacked=True, ax=ax, colormap="RdYlGn", width=0.8)
        ax.set_xlabel(xlabel)
        ax.set_ylabel("product category")
        ax.legend(title=column.replace("_", " "), loc="lower right", fontsize=8)

    return draw


def _length_hist(df: pd.DataFrame, ax) -> None:
    ax.bar(df["words_from"], df["reviews"], width=df["bin_width"].iloc[0] * 0.9, align="edge", color="#4c72b0")
    ax.set_xlabel("review length (words, bin start)")
    ax.set_ylabel("number of reviews")


def _extremes(df: pd.DataFrame, ax) -> None:
    import seaborn as sns

    sns.barplot(data=df, x="positive_share", y="product_category", hue="group", ax=ax, orient="h",
                palette={"most positive": "#2ca02c", "least positive": "#d62728"})
    ax.set_xlabel("share of positive reviews (4-5 stars)")
    ax.set_ylabel("product category")


QUESTIONS: tuple[Question, ...] = (
    Question(
        "reviews_per_category",
        "Which product categories have the most reviews?",
        f"SELECT product_category, count(*) AS reviews {SCOPE} GROUP BY product_category "
        "ORDER BY reviews DESC, product_category",
        _barh("reviews", "product_category", "number of reviews"),
    ),
    Question(
        "avg_rating_per_category",
        "Average star rating per product category",
        f"SELECT product_category, round(avg(star_rating), 3) AS avg_star_rating, count(*) AS reviews {SCOPE} "
        "GROUP BY product_category ORDER BY avg_star_rating DESC, product_category",
        _barh("avg_star_rating", "product_category", "average star rating (1-5)"),
    ),
    Question(
        "reviews_per_rating_and_category",
        "Number of reviews per star rating and product category",
        f"SELECT product_category, star_rating, count(*) AS reviews {SCOPE} "
        "GROUP BY product_category, star_rating ORDER BY product_category, star_rating",
        _stacked("product_category", "star_rating", "reviews", "number of reviews"),
    ),
    Question(
        "sentiment_per_category",
        "Sentiment distribution per product category",
        "SELECT product_category, sentiment, count(*) AS reviews, "
        "round(100.0 * count(*) / sum(count(*)) OVER (PARTITION BY product_category), 2) AS pct_of_category "
        f"{SCOPE} GROUP BY product_category, sentiment ORDER BY product_category, sentiment",
        _stacked("product_category", "sentiment", "reviews", "number of reviews",
                 order=["negative", "neutral", "positive"]),
    ),
    Question(
        "review_length_words",
        "Distribution of review length in words",
        "SELECT (words // $bin_width) * $bin_width AS words_from, $bin_width AS bin_width, count(*) AS reviews "
        f"FROM (SELECT len(regexp_split_to_array(trim(review_body), '\\s+')) AS words {SCOPE}) "
        "GROUP BY 1 ORDER BY words_from",  # by position: Athena cannot group by an alias
        _length_hist,
    ),
    Question(
        "most_least_positive_categories",
        "Most and least positively reviewed product categories",
        "WITH s AS (SELECT product_category, count(*) AS reviews, "
        "round(avg(CASE WHEN sentiment = 'positive' THEN 1.0 ELSE 0.0 END), 4) AS positive_share, "
        f"round(avg(star_rating), 3) AS avg_star_rating {SCOPE} GROUP BY product_category "
        "HAVING count(*) >= $min_reviews) "
        "(SELECT 'most positive' AS \"group\", * FROM s ORDER BY positive_share DESC, product_category LIMIT $top_n) "
        "UNION ALL "
        "(SELECT 'least positive' AS \"group\", * FROM s ORDER BY positive_share ASC, product_category LIMIT $top_n)",
        _extremes,
    ),
)


def answer_questions(
    ds_from: str | None = None,
    ds_to: str | None = None,
    settings: Settings | None = None,
    top_n: int = 3,
    min_reviews: int = 20,
    bin_width: int = 10,
) -> dict[str, pd.DataFrame]:
    """Run every question's SQL with bound parameters through the catalog's SQL engine (DuckDB
    locally, Athena on aws: ``catalog.get_catalog``); {question name: result DataFrame}."""
    if top_n < 1 or min_reviews < 0 or bin_width < 1:
        raise AnalysisError(f"top_n={top_n} (>=1), min_reviews={min_reviews} (>=0), bin_width={bin_width} (>=1)")
    params = {
        "ds_from": catalog_base.parse_ds(ds_from) if ds_from else date(1970, 1, 1),
        "ds_to": catalog_base.parse_ds(ds_to) if ds_to else date(9999, 12, 31),
        "top_n": top_n,
        "min_reviews": min_reviews,
        "bin_width": bin_width,
    }
    store = get_catalog(settings)
    total = store.query(COUNT_SQL, params)["reviews"].iloc[0]
    if not total:
        raise AnalysisError(
            f"no valid reviews in the catalog with ds in [{params['ds_from']}, {params['ds_to']}]; "
            f"registered partitions: {', '.join(store.registered_partitions()) or 'none'}"
        )
    return {q.name: store.query(q.sql, params) for q in QUESTIONS}


def _plot(question: Question, df: pd.DataFrame, dest: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")  # no display on a worker
    import matplotlib.pyplot as plt

    height = 4.5 if question.name == "review_length_words" else max(4.0, 0.32 * df.get("product_category", df).nunique() + 1.5)
    fig, ax = plt.subplots(figsize=(9, height))
    try:
        question.plot(df, ax)
        ax.set_title(question.title)
        fig.tight_layout()
        with atomic_path(dest) as tmp:
            fig.savefig(tmp, dpi=100, format="png")
    finally:
        plt.close(fig)


def run_analysis(
    out_dir: Path,
    ds_from: str | None = None,
    ds_to: str | None = None,
    settings: Settings | None = None,
    top_n: int = 3,
    min_reviews: int = 20,
    bin_width: int = 10,
    location: str | None = None,
) -> dict:
    """Answer the questions, write one PNG per question, ``report.html`` and ``summary.json``.

    ``location``: where ``out_dir`` is published (an ``s3://`` prefix on aws); the paths in
    ``summary.json`` and in the result name it. Default: ``out_dir``.
    Returns ``{"report_path", "plots": {name: path}, "rows": {name: n}, "reviews": total}``.
    """
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    answers = answer_questions(ds_from, ds_to, settings, top_n, min_reviews, bin_width)
    plots = {}
    for q in QUESTIONS:
        plots[q.name] = out_dir / f"{q.name}.png"
        _plot(q, answers[q.name], plots[q.name])
    total = int(answers["reviews_per_category"]["reviews"].sum())
    params = {"ds_from": ds_from or "(first)", "ds_to": ds_to or "(last)", "top_n": top_n,
              "min_reviews": min_reviews, "bin_width": bin_width}
    report = out_dir / "report.html"
    write_text_atomic(report, render_report(answers, plots, params, total))
    shown = (location or str(out_dir)).rstrip("/")
    summary = {
        "report_path": f"{shown}/{report.name}",
        "plots": {k: f"{shown}/{v.name}" for k, v in plots.items()},
        "rows": {k: len(v) for k, v in answers.items()},
        "reviews": total,
        "params": params,
        "answers": {k: json.loads(v.to_json(orient="records")) for k, v in answers.items()},
    }
    write_text_atomic(out_dir / "summary.json", json.dumps(summary, indent=2, default=str))
    log.info("analysed %d reviews: %d questions, report %s", total, len(QUESTIONS), summary["report_path"])
    return {k: summary[k] for k in ("report_path", "plots", "rows", "reviews")}


# check_drift writes its report beside this one in the same run (runs/<dag>/<run>/drift/); the
# link is relative so it works from the file system and through the Airflow UI's reports plugin.
DRIFT_REPORT_LINK = "../drift/drift_report.html"
TEMPLATES = Path(__file__).resolve().parent / "templates"  # analysis_report.html.j2


def render_report(answers: dict[str, pd.DataFrame], plots: dict[str, Path], params: dict, total: int,
                  drift_link: str | None = DRIFT_REPORT_LINK) -> str:
    """One HTML page (``templates/analysis_report.html.j2``): per question the SQL, the bound parameters,
    the plot and the table; a link to the run's drift report (``drift_link``; None leaves it out)."""
    sections = []
    for q in QUESTIONS:
        used = {k: v for k, v in params.items() if f"${k}" in q.sql or k in ("ds_from", "ds_to")}
        sections.append({"name": q.name, "title": q.title, "sql": q.sql, "params": json.dumps(used),
                         "plot": plots[q.name].name, "answer": answers[q.name],
                         "png": base64.b64encode(plots[q.name].read_bytes()).decode("ascii")})
    return render(TEMPLATES, "analysis_report.html.j2", title="Review catalog analysis", total=total, view=VIEW,
                  ds_from=str(params["ds_from"]), ds_to=str(params["ds_to"]), drift_link=drift_link,
                  questions=sections)
