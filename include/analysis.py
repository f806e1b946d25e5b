"""The lab's questions about the catalogued reviews, answered with SQL into pandas.

Each question is one parameterised SQL query over the view ``reviews.reviews_typed`` (rows
with a valid rating, text and category that are not quarantined; the latest drop of a
``review_id``), one PNG plot and one table in a self-contained HTML report (plots embedded,
and linked as files). ``run_analysis`` writes them into a folder; the ``*_task`` functions
at the end are the glue for the ``review_catalog_analysis`` DAG.
"""
from __future__ import annotations

import base64
import html
import json
import logging
import os
from collections.abc import Callable
from dataclasses import dataclass
from datetime import date, datetime, timezone
from pathlib import Path

import pandas as pd

from include import catalog
from include.config import Settings, get_settings, uri_to_path

log = logging.getLogger(__name__)

DAG_ID = "review_catalog_analysis"
VIEW = f"{catalog.SCHEMA}.reviews_typed"
SCOPE = f"FROM {VIEW} WHERE ds BETWEEN $ds_from AND $ds_to"


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
        "GROUP BY words_from ORDER BY words_from",
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


def _params_for(sql: str, params: dict) -> dict:
    # DuckDB rejects named parameters a statement does not use.
    return {k: v for k, v in params.items() if f"${k}" in sql}


def answer_questions(
    ds_from: str | None = None,
    ds_to: str | None = None,
    settings: Settings | None = None,
    top_n: int = 3,
    min_reviews: int = 20,
    bin_width: int = 10,
) -> dict[str, pd.DataFrame]:
    """Run every question's SQL with bound parameters; {question name: result DataFrame}."""
    if top_n < 1 or min_reviews < 0 or bin_width < 1:
        raise AnalysisError(f"top_n={top_n} (>=1), min_reviews={min_reviews} (>=0), bin_width={bin_width} (>=1)")
    params = {
        "ds_from": catalog.parse_ds(ds_from) if ds_from else date(1970, 1, 1),
        "ds_to": catalog.parse_ds(ds_to) if ds_to else date(9999, 12, 31),
        "top_n": top_n,
        "min_reviews": min_reviews,
        "bin_width": bin_width,
    }
    con = catalog.connect(settings)
    try:
        total = con.execute(f"SELECT count(*) {SCOPE}", _params_for(SCOPE, params)).fetchall()[0][0]
        if not total:
            raise AnalysisError(
                f"no valid reviews in the catalog with ds in [{params['ds_from']}, {params['ds_to']}]; "
                f"registered partitions: {', '.join(catalog_partitions(con)) or 'none'}"
            )
        return {q.name: con.execute(q.sql, _params_for(q.sql, params)).df() for q in QUESTIONS}
    finally:
        con.close()


def catalog_partitions(con) -> list[str]:
    """Registered ds values, through an open connection."""
    return [r[0] for r in con.execute(f"SELECT CAST(ds AS VARCHAR) FROM {catalog.PARTITIONS} ORDER BY ds").fetchall()]


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
        tmp = dest.with_name(f".{dest.name}.tmp-{os.getpid()}")
        fig.savefig(tmp, dpi=100, format="png")
        os.replace(tmp, dest)
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
) -> dict:
    """Answer the questions, write one PNG per question, ``report.html`` and ``summary.json``.

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
    _write_text(report, render_report(answers, plots, params, total))
    summary = {
        "report_path": str(report),
        "plots": {k: str(v) for k, v in plots.items()},
        "rows": {k: len(v) for k, v in answers.items()},
        "reviews": total,
        "params": params,
        "answers": {k: json.loads(v.to_json(orient="records")) for k, v in answers.items()},
    }
    _write_text(out_dir / "summary.json", json.dumps(summary, indent=2, default=str))
    log.info("analysed %d reviews: %d questions, report %s", total, len(QUESTIONS), report)
    return {k: summary[k] for k in ("report_path", "plots", "rows", "reviews")}


def _write_text(dest: Path, text: str) -> None:
    tmp = dest.with_name(f".{dest.name}.tmp-{os.getpid()}")
    tmp.write_text(text, encoding="utf-8")
    os.replace(tmp, dest)


def render_report(answers: dict[str, pd.DataFrame], plots: dict[str, Path], params: dict, total: int) -> str:
    """One HTML page: per question the SQL, the bound parameters, the plot and the table."""
    sections = []
    for q in QUESTIONS:
        png = base64.b64encode(plots[q.name].read_bytes()).decode("ascii")
        used = {k: v for k, v in params.items() if f"${k}" in q.sql or k in ("ds_from", "ds_to")}
        sections.append(
            f'<section id="{q.name}"><h2>{html.escape(q.title)}</h2>'
            f"<pre>{html.escape(q.sql)}</pre><p>parameters: <code>{html.escape(json.dumps(used))}</code></p>"
            f'<a href="{plots[q.name].name}"><img alt="{html.escape(q.title)}" src="data:image/png;base64,{png}"></a>'
            f"{answers[q.name].to_html(index=False, border=0, classes='result')}</section>"
        )
    toc = "".join(f'<li><a href="#{q.name}">{html.escape(q.title)}</a></li>' for q in QUESTIONS)
    return f"""<!doctype html><html><head><meta charset="utf-8"><title>Review catalog analysis</title>
<style>body{{font-family:sans-serif;margin:2em;max-width:1100px}}pre{{background:#f4f4f4;padding:8px;white-space:pre-wrap}}
img{{max-width:100%;border:1px solid #ddd}}table.result{{border-collapse:collapse;margin:1em 0}}
table.result td,table.result th{{border:1px solid #ccc;padding:3px 8px;font-size:13px}}</style></head><body>
<h1>Review catalog analysis</h1>
<p>{total:,} reviews from <code>{VIEW}</code> (valid, not quarantined, latest drop per review_id),
ds {html.escape(str(params['ds_from']))} .. {html.escape(str(params['ds_to']))};
generated {datetime.now(timezone.utc).isoformat(timespec='seconds')}.</p><ol>{toc}</ol>
{''.join(sections)}</body></html>
"""


# --------------------------------------------------------------------------- DAG glue


def register_pending(ds: str = "", settings: Settings | None = None) -> dict:
    """Register ``ds`` (re-registering it), or every landed partition not yet in the catalog."""
    settings = settings or get_settings()
    if ds:
        todo = [catalog.parse_ds(ds).isoformat()]
    else:
        known = set(catalog.registered_partitions(settings))
        todo = [d for d in catalog.landing_partitions(settings) if d not in known]
    results = [catalog.register_partition(d, settings=settings) for d in todo]
    registered = catalog.registered_partitions(settings)
    log.info("registered %d new partition(s) %s; the catalog now holds %d partition(s)",
             len(results), todo, len(registered))
    return {"registered": [r["ds"] for r in results], "rows": sum(r["rows"] for r in results),
            "partitions": registered}


def analysis_dir(run_id: str, settings: Settings | None = None) -> Path:
    """The run-scoped artifact folder ``runs/review_catalog_analysis/<run_id>/analysis``."""
    return uri_to_path((settings or get_settings()).run_uri(DAG_ID, run_id, "analysis"))


def _airflow_fail(exc: Exception):
    from airflow.sdk.exceptions import AirflowFailException

    return AirflowFailException(f"{type(exc).__name__}: {exc}")


def register_task() -> dict:
    """Task ``register``: params ``ds`` (optional). Bad input fails at once (no retry)."""
    from airflow.sdk import get_current_context

    params = get_current_context()["params"]
    try:
        return register_pending(params.get("ds") or "")
    except (catalog.RegistrationError, catalog.CatalogError) as exc:
        raise _airflow_fail(exc) from exc


def analyse_task(registered: dict) -> dict:
    """Task ``analyse``: params ``ds_from``/``ds_to``/``top_n``; prints the report path."""
    from airflow.sdk import get_current_context

    ctx = get_current_context()
    params = ctx["params"]
    out = analysis_dir(ctx["run_id"])
    try:
        result = run_analysis(out, params.get("ds_from") or None, params.get("ds_to") or None,
                              top_n=int(params.get("top_n") or 3))
    except (AnalysisError, catalog.CatalogError) as exc:
        raise _airflow_fail(exc) from exc
    print(f"analysis report: {result['report_path']}", flush=True)
    return result


def deployed_training_data_uri() -> str | None:
    """The clean data the deployed model was trained on (its registry lineage), if any."""
    from include.registry import RegistryError, get_registry

    if not (get_settings().mlflow_dir / "mlflow.db").exists():  # no registry yet: nothing deployed
        return None
    try:
        deployed = get_registry().deployed_version()
    except RegistryError:
        return None
    folder = (deployed.lineage.get("clean_data_uri") if deployed else None) or None
    return f"{folder.rstrip('/')}/clean.parquet" if folder else None


def drift_task(registered: dict) -> dict:
    """Task ``check_drift``: compares the catalogued partitions with ``drift_baseline_uri``.

    Drift above the threshold is a warning in the log and the report, never a failure; with
    no baseline (no deployed model's training data given) the check is skipped.
    """
    from airflow.sdk import get_current_context

    from include import drift

    ctx = get_current_context()
    params = ctx["params"]
    baseline = params.get("drift_baseline_uri") or deployed_training_data_uri() or ""
    if not baseline:
        log.info("no drift_baseline_uri and no deployed model with recorded training data: drift check skipped")
        return {"skipped": True}
    ds_list = registered.get("registered") or registered.get("partitions", [])[-1:]
    out = uri_to_path(get_settings().run_uri(DAG_ID, ctx["run_id"], "drift"))
    try:
        result = drift.compare(ds_list, uri_to_path(baseline), threshold=float(params.get("drift_threshold") or 0.2),
                               report_dir=out)
    except (drift.DriftError, catalog.CatalogError) as exc:
        raise _airflow_fail(exc) from exc
    print(f"drift report: {result['report_path']}", flush=True)
    return result
