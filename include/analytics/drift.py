"""Drift of catalogued partitions against the data the deployed model was trained on.

Three distributions are compared with the population stability index (PSI): product
category mix, review length in words (baseline deciles as bins) and star-rating mix.
PSI above ``threshold`` (default 0.2, the usual "significant shift") is a warning in the log
and the report - never a failure: retraining on drifted data is the point of the pipeline.
"""
from __future__ import annotations

import base64
import json
import logging
import math
from pathlib import Path

import numpy as np
import pandas as pd

from include.common.config import Settings
from include.common.io import atomic_path, is_s3, read_bytes, write_text_atomic
from include.common.templating import render
from include.data import catalog_base
from include.data.catalog import get_catalog

log = logging.getLogger(__name__)

DEFAULT_THRESHOLD = 0.2
EPSILON = 1e-4  # share given to an empty bin so that PSI stays finite
NEEDED = ("product_category", "review_body", "star_rating")
TEMPLATES = Path(__file__).resolve().parent / "templates"  # drift_report.html.j2


class DriftError(ValueError):
    """The comparison cannot be made (no baseline, no current rows, bad threshold)."""


def psi(expected: pd.Series, actual: pd.Series) -> float:
    """Population stability index of two share vectors indexed by bin (missing bins = 0)."""
    bins = expected.index.union(actual.index)
    e = expected.reindex(bins, fill_value=0).astype(float).clip(lower=EPSILON)
    a = actual.reindex(bins, fill_value=0).astype(float).clip(lower=EPSILON)
    return float(((a - e) * np.log(a / e)).sum())


def _shares(values: pd.Series) -> pd.Series:
    counts = values.value_counts()
    return counts / counts.sum()


def _word_counts(bodies: pd.Series) -> pd.Series:
    return bodies.fillna("").str.strip().str.split().str.len()


def _length_bins(baseline_words: pd.Series) -> np.ndarray:
    edges = np.unique(np.quantile(baseline_words, np.linspace(0, 1, 11)))
    return np.concatenate([[-math.inf], edges[1:-1], [math.inf]]) if len(edges) > 2 else np.array([-math.inf, math.inf])


def _load_baseline(baseline: pd.DataFrame | Path | str) -> pd.DataFrame:
    if isinstance(baseline, pd.DataFrame):
        df = baseline
    elif is_s3(str(baseline)):  # the aws backend's export (an S3 object)
        import io

        try:
            data = read_bytes(str(baseline))
        except Exception as exc:  # noqa: BLE001 - any read failure: the baseline is not there
            raise DriftError(f"{baseline}: baseline (training data of the deployed model) not readable: {exc}") from None
        df = pd.read_parquet(io.BytesIO(data), columns=list(NEEDED))
    else:
        path = Path(baseline)
        if not path.exists():
            raise DriftError(f"{path}: baseline (training data of the deployed model) not found")
        df = pd.read_parquet(path, columns=list(NEEDED))
    missing = [c for c in NEEDED if c not in df.columns]
    if missing:
        raise DriftError(f"baseline lacks column(s) {', '.join(missing)}; expected export_clean's Parquet")
    if df.empty:
        raise DriftError("baseline has no rows")
    return df


CURRENT_SQL = f"SELECT product_category, review_body, star_rating FROM {catalog_base.TYPED} WHERE list_contains($ds, ds)"


def _load_current(ds_list: list[str], settings: Settings | None) -> pd.DataFrame:
    days = [catalog_base.parse_ds(d) for d in ds_list]
    df = get_catalog(settings).query(CURRENT_SQL, {"ds": days})  # DuckDB, or Athena on aws
    if df.empty:
        raise DriftError(f"no valid catalogued reviews in partition(s) {', '.join(ds_list)}")
    return df


def compare(
    current_ds_list: list[str],
    baseline: pd.DataFrame | Path | str,
    threshold: float = DEFAULT_THRESHOLD,
    report_dir: Path | None = None,
    settings: Settings | None = None,
    report_location: str | None = None,
) -> dict:
    """PSI per feature between partitions ``current_ds_list`` and ``baseline``.

    ``baseline`` is a DataFrame or a Parquet path with ``product_category, review_body,
    star_rating`` (an ``export_clean`` file). Writes ``drift_report.html`` and ``drift.json``
    into ``report_dir`` when given (``report_location``: where that folder is published, an
    ``s3://`` prefix on aws; ``report_path`` names it). Returns ``{"psi": {...}, "drifted": [...], "drift": bool,
    "threshold", "rows_current", "rows_baseline", "report_path"}``; logs a warning on drift.
    """
    if not current_ds_list:
        raise DriftError("current_ds_list is empty: name the partitions to compare")
    if threshold <= 0:
        raise DriftError(f"threshold={threshold}: must be > 0")
    base = _load_baseline(baseline)
    cur = _load_current(current_ds_list, settings)
    base_words, cur_words = _word_counts(base["review_body"]), _word_counts(cur["review_body"])
    edges = _length_bins(base_words)
    labels = [f"{lo:g}..{hi:g}" for lo, hi in zip(edges[:-1], edges[1:])]
    distributions = {
        "product_category": (_shares(base["product_category"]), _shares(cur["product_category"])),
        "review_length_words": (
            _shares(pd.cut(base_words, edges, labels=labels, right=True).astype(str)),
            _shares(pd.cut(cur_words, edges, labels=labels, right=True).astype(str)),
        ),
        "star_rating": (_shares(base["star_rating"].astype(int)), _shares(cur["star_rating"].astype(int))),
    }
    scores = {name: round(psi(b, c), 4) for name, (b, c) in distributions.items()}
    drifted = [name for name, value in scores.items() if value > threshold]
    worst = max(scores, key=lambda k: scores[k])
    result = {
        "worst_feature": worst,
        "worst_psi": scores[worst],
        "ds_list": list(current_ds_list),
        "psi": scores,
        "threshold": threshold,
        "drifted": drifted,
        "drift": bool(drifted),
        "rows_current": len(cur),
        "rows_baseline": len(base),
        "report_path": None,
    }
    if drifted:
        log.warning("data drift above PSI %.2f in %s (%s) for ds %s vs the training data", threshold,
                    ", ".join(drifted), ", ".join(f"{k}={scores[k]}" for k in drifted), ", ".join(current_ds_list))
    else:
        log.info("no drift above PSI %.2f: %s", threshold, scores)
    if report_dir is not None:
        tables = {name: share_table(b, c, labels if name == "review_length_words" else None)
                  for name, (b, c) in distributions.items()}
        _write_report(Path(report_dir), result, tables, report_location)
    return result


def share_table(baseline: pd.Series, current: pd.Series, order: list[str] | None = None) -> pd.DataFrame:
    """Baseline and current share per bin, in the bins' natural order: ``order`` when given
    (the length bins, numeric), numeric values ascending (star ratings), else by baseline share."""
    table = pd.DataFrame({"baseline_share": baseline, "current_share": current}).fillna(0.0)
    if order is not None:
        return table.reindex([b for b in order if b in table.index])
    if all(isinstance(i, (int, np.integer)) for i in table.index):
        return table.sort_index()
    return table.sort_values(["baseline_share", "current_share"], ascending=False)


def verdict_line(result: dict) -> str:
    """The report's first line: verdict, worst feature, its PSI and the threshold."""
    worst, value, threshold = result["worst_feature"], result["worst_psi"], result["threshold"]
    if result["drift"]:
        return (f"DRIFT (warning): worst feature {worst}, PSI {value:.4f} > threshold {threshold:g}"
                f" ({len(result['drifted'])} of {len(result['psi'])} features above it)")
    return f"No drift: worst feature {worst}, PSI {value:.4f} <= threshold {threshold:g}"


def _chart(name: str, table: pd.DataFrame, psi_value: float, dest: Path) -> bytes:
    """Baseline vs current shares side by side, one bar pair per bin; PNG bytes (also written to ``dest``)."""
    import io

    import matplotlib

    matplotlib.use("Agg")  # no display on a worker
    import matplotlib.pyplot as plt

    x = np.arange(len(table))
    fig, ax = plt.subplots(figsize=(max(5.0, 0.55 * len(table) + 2), 3.4))
    try:
        ax.bar(x - 0.2, table["baseline_share"], 0.4, label="baseline (training data)", color="#8aa")
        ax.bar(x + 0.2, table["current_share"], 0.4, label="current", color="#d73")
        ax.set_xticks(x, [str(i) for i in table.index], rotation=45 if len(table) > 6 else 0, ha="right"
                      if len(table) > 6 else "center", fontsize=8)
        ax.set_ylabel("share of reviews")
        ax.set_title(f"{name}: PSI {psi_value:.4f}")
        ax.legend(fontsize=8)
        fig.tight_layout()
        buf = io.BytesIO()
        fig.savefig(buf, dpi=90, format="png")
    finally:
        plt.close(fig)
    data = buf.getvalue()
    with atomic_path(dest) as tmp:
        tmp.write_bytes(data)
    return data


def _write_report(report_dir: Path, result: dict, tables: dict[str, pd.DataFrame], location: str | None = None) -> Path:
    report_dir.mkdir(parents=True, exist_ok=True)
    path = report_dir / "drift_report.html"
    result["report_path"] = f"{(location or str(report_dir)).rstrip('/')}/{path.name}"
    features = [{"name": name, "psi": result["psi"][name], "drifted": name in result["drifted"], "table": table.round(4),
                 "png": base64.b64encode(_chart(name, table, result["psi"][name],
                                                report_dir / f"drift_{name}.png")).decode("ascii")}
                for name, table in tables.items()]
    page = render(TEMPLATES, "drift_report.html.j2", title="Drift report", verdict=verdict_line(result),
                  drift=result["drift"], ds_list=result["ds_list"], rows_current=result["rows_current"],
                  rows_baseline=result["rows_baseline"], threshold=result["threshold"], features=features)
    for dest, text in ((path, page), (report_dir / "drift.json", json.dumps(result, indent=2, default=str))):
        write_text_atomic(dest, text)
    return path
