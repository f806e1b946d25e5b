"""The data-quality gate: a great-expectations suite kept as code, quarantine and report.

Rules are defined once, below. Each row-level rule carries
- a DuckDB predicate that marks the failing rows, so all rows of a partition are checked and
  every failing row lands in ``reviews.reviews_quarantine`` with the rule, file and line;
- the GX expectation(s) expressing the same rule, which GX evaluates as part of the suite.

Table-level expectations (schema and types, minimum row count, share of duplicate texts,
share of unseen product categories) decide with the bad-row fraction whether the gate
passes. GX runs on all rows of the batch, with ``review_body`` cut to 5,001 characters so a
20 MB review cannot blow memory (the length rule still sees it is too long) - up to
``GX_MAX_ROWS`` rows (1M, env ``REVIEWS_GX_MAX_ROWS``); above that GX checks a deterministic
sample (noted in the report) while the SQL rules stay exact, so memory stays bounded.

The rows come from the catalog backend (``catalog.get_catalog``): the DuckDB catalog itself, or
on aws an in-memory DuckDB holding the audited rows read from S3, whose quarantine rows then go
to the Glue table ``reviews_quarantine`` (``include/data/catalog_glue.py``) - one suite, one
set of rules for both backends.

Decisions (see also docs/CONTRACTS.md):
- A ``review_id`` twice in one partition: the later occurrences are quarantined
  (``review_id_unique``). The same ``review_id`` in two daily drops is an update, not an
  error: it is counted in ``duplicate_ids_across_partitions`` and logged, and
  ``Catalog.export_clean`` keeps the latest drop's row.
- Unseen categories are tolerated up to ``unseen_category_tolerance``; they are not
  quarantined, only counted.
"""
from __future__ import annotations

import json
import logging
import os
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from include.common.config import Settings, get_settings
from include.common.io import atomic_path, write_text_atomic
from include.common.templating import render
from include.data import catalog_base
from include.data.catalog import get_catalog

os.environ.setdefault("GX_ANALYTICS_ENABLED", "False")  # no phoning home from a pipeline run

log = logging.getLogger(__name__)
# GX logs hundreds of INFO lines per context; keep task logs readable.
logging.getLogger("great_expectations").setLevel(logging.WARNING)

SUITE_NAME = "reviews_raw_suite"
TEMPLATES = Path(__file__).resolve().parent / "templates"  # validation_report.html.j2
MAX_BODY_CHARS = 5000
# GX (pandas) needs ~1.5 KB of memory per row; above this many rows it validates a
# deterministic sample, so memory stays bounded (the SQL rules still check every row).
GX_MAX_ROWS = int(os.environ.get("REVIEWS_GX_MAX_ROWS", "1000000"))
DEFAULT_MIN_ROWS = 1
DEFAULT_MAX_BAD_ROW_FRACTION = 0.05  # the DAG param's default
DEFAULT_MAX_DUPLICATE_TEXT_FRACTION = 0.05
DEFAULT_UNSEEN_CATEGORY_TOLERANCE = 0.05
VALID_RATINGS = ["1", "2", "3", "4", "5"]
# The Kaggle "Class Name" values (product_category of the real data and the synthetic one).
EXPECTED_CATEGORIES = (
    "Blouses", "Casual bottoms", "Chemises", "Dresses", "Fine gauge", "Intimates", "Jackets",
    "Jeans", "Knits", "Layering", "Legwear", "Lounge", "Outerwear", "Pants", "Shorts", "Skirts",
    "Sleep", "Sweaters", "Swim", "Trend",
)
GX_COLUMNS = ("review_id", "product_category", "review_body", "star_rating", "review_date", "ds")


class DataQualityError(ValueError):
    """The gate failed: too many bad rows or a table-level expectation failed."""


@dataclass(frozen=True)
class RowRule:
    """One row-level rule: the SQL marking failing rows and its GX expectation(s)."""

    name: str
    description: str
    bad_sql: str  # predicate over reviews_raw (+ id_seq) true for a failing row
    value_sql: str  # the offending value shown in the quarantine table
    expectations: Callable[[float], list] = field(repr=False)


def _gxe():
    import great_expectations.expectations as gxe

    return gxe


ROW_RULES: tuple[RowRule, ...] = (
    RowRule(
        "review_id_not_null", "review_id is present and not blank",
        "review_id IS NULL OR trim(review_id) = ''", "review_id",
        lambda mostly: [_gxe().ExpectColumnValuesToNotBeNull(column="review_id", mostly=mostly)],
    ),
    RowRule(
        "review_id_unique", "review_id occurs once per partition (later occurrences fail)",
        "id_seq > 1", "review_id",
        lambda mostly: [_gxe().ExpectCompoundColumnsToBeUnique(column_list=["ds", "review_id"], mostly=mostly)],
    ),
    RowRule(
        "star_rating_integer_1_5", "star_rating is an integer 1..5",
        "coalesce(trim(star_rating), '') NOT IN ('1', '2', '3', '4', '5')", "star_rating",
        lambda mostly: [
            _gxe().ExpectColumnValuesToNotBeNull(column="star_rating", mostly=mostly),
            _gxe().ExpectColumnValuesToBeInSet(column="star_rating", value_set=VALID_RATINGS, mostly=mostly),
        ],
    ),
    RowRule(
        "review_body_not_null", "review_body is present and not blank",
        "review_body IS NULL OR trim(review_body) = ''", "review_body",
        lambda mostly: [_gxe().ExpectColumnValuesToNotBeNull(column="review_body", mostly=mostly)],
    ),
    RowRule(
        "review_body_length_1_5000", f"review_body has 1..{MAX_BODY_CHARS} characters",
        f"length(trim(review_body)) > {MAX_BODY_CHARS}", "review_body",
        lambda mostly: [
            _gxe().ExpectColumnValueLengthsToBeBetween(
                column="review_body", min_value=1, max_value=MAX_BODY_CHARS, mostly=mostly
            )
        ],
    ),
    RowRule(
        # Invalid byte sequences never get this far (registration refuses the file); a U+FFFD
        # replacement character means an upstream step decoded lossily.
        "review_body_valid_utf8", "review_body is valid UTF-8 (no U+FFFD replacement characters)",
        "contains(review_body, chr(65533))", "review_body",
        lambda mostly: [_gxe().ExpectColumnValuesToNotMatchRegex(column="review_body", regex="\ufffd", mostly=mostly)],
    ),
    RowRule(
        "product_category_not_null", "product_category is present and not blank",
        "product_category IS NULL OR trim(product_category) = ''", "product_category",
        lambda mostly: [_gxe().ExpectColumnValuesToNotBeNull(column="product_category", mostly=mostly)],
    ),
)


@dataclass(frozen=True)
class GateParams:
    """Thresholds of the table-level expectations."""

    max_bad_row_fraction: float
    min_rows: int = DEFAULT_MIN_ROWS
    max_duplicate_text_fraction: float = DEFAULT_MAX_DUPLICATE_TEXT_FRACTION
    unseen_category_tolerance: float = DEFAULT_UNSEEN_CATEGORY_TOLERANCE
    expected_categories: tuple[str, ...] = EXPECTED_CATEGORIES

    def __post_init__(self) -> None:
        for name in ("max_bad_row_fraction", "max_duplicate_text_fraction", "unseen_category_tolerance"):
            value = getattr(self, name)
            if not 0.0 <= value <= 1.0:
                raise ValueError(f"{name}={value}: must be within 0..1")
        if self.min_rows < 0:
            raise ValueError(f"min_rows={self.min_rows}: must be >= 0")


def build_suite(params: GateParams):
    """The GX ``ExpectationSuite``: table-level expectations, then each row rule's mirror.

    Every expectation's ``meta`` names its rule and level (``table`` fails the gate, ``row``
    is enforced through the bad-row fraction and the quarantine).
    """
    import great_expectations as gx

    gxe = _gxe()
    table = [
        ("schema", gxe.ExpectTableColumnsToMatchSet(column_set=list(GX_COLUMNS), exact_match=True)),
        ("schema", gxe.ExpectColumnValuesToBeInTypeList(column="ds", type_list=["datetime64[us]", "datetime64[ns]"])),
        ("row_count_min", gxe.ExpectTableRowCountToBeBetween(min_value=params.min_rows)),
        (
            "duplicate_texts_max",
            gxe.ExpectColumnProportionOfUniqueValuesToBeBetween(
                column="review_body", min_value=1.0 - params.max_duplicate_text_fraction
            ),
        ),
        (
            "product_category_expected_set",
            gxe.ExpectColumnValuesToBeInSet(
                column="product_category",
                value_set=list(params.expected_categories),
                mostly=1.0 - params.unseen_category_tolerance,
            ),
        ),
    ]
    expectations = []
    for rule, exp in table:
        exp.meta = {"rule": rule, "level": "table"}
        expectations.append(exp)
    mostly = 1.0 - params.max_bad_row_fraction
    for rule in ROW_RULES:
        for exp in rule.expectations(mostly):
            exp.meta = {"rule": rule.name, "level": "row", "sql_fails_when": rule.bad_sql}
            expectations.append(exp)
    return gx.ExpectationSuite(name=SUITE_NAME, expectations=expectations)


# --------------------------------------------------------------------------- SQL part

_SOURCE_COLS = "review_id, product_category, review_body, star_rating, review_date, ds, source_file, source_line, delivery_id"


def _source_sql() -> str:
    """The audited rows: staged deliveries (write-audit-publish) or re-audited published ones,
    selected by ``$ids`` (delivery ids)."""
    return (f"(SELECT {_SOURCE_COLS} FROM {catalog_base.STAGING} WHERE list_contains($ids, delivery_id) "
            f"UNION ALL SELECT {_SOURCE_COLS} FROM {catalog_base.RAW} WHERE list_contains($ids, delivery_id))")


def _quarantine_sql() -> str:
    parts = [
        f"SELECT ds, review_id, '{r.name}', source_file, source_line, left({r.value_sql}, 200), $run_id, delivery_id "
        f"FROM src WHERE {r.bad_sql}"
        for r in ROW_RULES
    ]
    return (
        f"INSERT INTO {catalog_base.QUARANTINE} (ds, review_id, rule, source_file, source_line, value, run_id, delivery_id) "
        f"WITH src AS ("
        f"SELECT *, CASE WHEN review_id IS NULL OR trim(review_id) = '' THEN 1 ELSE row_number() OVER "
        f"(PARTITION BY delivery_id, trim(review_id) ORDER BY source_file, source_line) END AS id_seq "
        f"FROM {_source_sql()}) " + " UNION ALL ".join(parts)
    )


def _apply_row_rules(con, ids: list[str], run_id: str) -> dict:
    """Replace the audited deliveries' quarantine rows in one transaction; return counts."""
    params = {"ids": ids}
    con.execute("BEGIN TRANSACTION")
    try:
        con.execute(f"DELETE FROM {catalog_base.QUARANTINE} WHERE list_contains($ids, delivery_id)", params)
        con.execute(_quarantine_sql(), {**params, "run_id": run_id})
        con.execute("COMMIT")
    except Exception:
        con.execute("ROLLBACK")
        raise
    rows = con.execute(f"SELECT count(*) FROM {_source_sql()}", params).fetchall()[0][0]
    rule_counts = dict.fromkeys((r.name for r in ROW_RULES), 0)
    for rule, n in con.execute(
        f"SELECT rule, count(*) FROM {catalog_base.QUARANTINE} WHERE list_contains($ids, delivery_id) GROUP BY rule", params
    ).fetchall():
        rule_counts[rule] = int(n)
    per_delivery = dict(
        con.execute(
            f"SELECT delivery_id, count(DISTINCT (source_file, source_line)) FROM {catalog_base.QUARANTINE} "
            "WHERE list_contains($ids, delivery_id) GROUP BY delivery_id",
            params,
        ).fetchall()
    )
    cross = con.execute(
        f"SELECT count(DISTINCT a.review_id) FROM {_source_sql()} a JOIN (SELECT review_id, ds FROM {_source_sql()} "
        f"UNION ALL SELECT review_id, ds FROM {catalog_base.RAW}) b ON a.review_id = b.review_id AND a.ds <> b.ds",
        params,
    ).fetchall()[0][0]
    sample = con.execute(
        f"SELECT CAST(ds AS VARCHAR), review_id, rule, source_file, source_line, value FROM {catalog_base.QUARANTINE} "
        "WHERE list_contains($ids, delivery_id) ORDER BY ds, source_file, source_line, rule LIMIT 50",
        params,
    ).fetchall()
    return {
        "rows": int(rows),
        "bad_rows": int(sum(per_delivery.values())),
        "bad_rows_per_delivery": {k: int(v) for k, v in per_delivery.items()},
        "rule_counts": rule_counts,
        "duplicate_ids_across_partitions": int(cross),
        "quarantine_sample": sample,
    }


def _table_facts(con, ids: list[str], params: GateParams) -> dict:
    """What a user needs to act on a table-level failure, counted in SQL over the audited rows."""
    src, bind = _source_sql(), {"ids": ids}
    unseen = con.execute(
        f"SELECT trim(product_category) AS c, count(*) FROM {src} WHERE nullif(trim(product_category), '') IS NOT NULL "
        "AND NOT list_contains($expected, trim(product_category)) GROUP BY c ORDER BY count(*) DESC, c LIMIT 5",
        {**bind, "expected": list(params.expected_categories)}).fetchall()
    unseen_total, categorised = con.execute(
        f"SELECT count(*) FILTER (WHERE NOT list_contains($expected, trim(product_category))), count(*) "
        f"FROM {src} WHERE nullif(trim(product_category), '') IS NOT NULL",
        {**bind, "expected": list(params.expected_categories)}).fetchone()
    body = f"nullif(left(trim(review_body), {MAX_BODY_CHARS + 1}), '')"
    texts, distinct = con.execute(f"SELECT count({body}), count(DISTINCT {body}) FROM {src}", bind).fetchone()
    repeated = con.execute(
        f"SELECT left({body}, 60) AS t, count(*) FROM {src} WHERE {body} IS NOT NULL GROUP BY {body} "
        "HAVING count(*) > 1 ORDER BY count(*) DESC, t LIMIT 3", bind).fetchall()
    per_delivery = con.execute(
        f"SELECT delivery_id, count(*), count(*) FILTER (WHERE nullif(trim(product_category), '') IS NOT NULL AND NOT "
        "list_contains($expected, trim(product_category))), count(nullif(trim(product_category), '')), "
        f"count({body}), count(DISTINCT {body}) FROM {src} GROUP BY delivery_id",
        {**bind, "expected": list(params.expected_categories)}).fetchall()
    return {"unseen": unseen, "unseen_total": int(unseen_total), "categorised": int(categorised),
            "texts": int(texts), "distinct_texts": int(distinct), "repeated": repeated,
            "per_delivery": {r[0]: dict(zip(("rows", "unseen", "categorised", "texts", "distinct"), map(int, r[1:])))
                             for r in per_delivery}}


def _fails_on_its_own(facts: dict, bad_rows: int, params: GateParams) -> bool:
    """Whether one delivery of a failed batch breaks a rule by itself (then it is rejected;
    one that does not stays staged for the next audit instead of being rejected with the batch)."""
    rows = facts["rows"]
    return (rows < params.min_rows or bad_rows / max(rows, 1) > params.max_bad_row_fraction
            or facts["unseen"] / max(facts["categorised"], 1) > params.unseen_category_tolerance
            or (facts["texts"] - facts["distinct"]) / max(facts["texts"], 1) > params.max_duplicate_text_fraction)


def _explain_table_failure(rule: str, facts: dict, rows: int, params: GateParams, fallback: str) -> str:
    """A table-level failure in words a user acts on: column, values with counts, share, tolerance, param."""
    if rule == "product_category_expected_set":
        n, total = facts["unseen_total"], facts["categorised"]
        values = ", ".join(f"{v!r}: {c:,} of {total:,} rows" for v, c in facts["unseen"])
        return (f"{rule}: product_category has values outside the expected set ({values}); {n:,} of {total:,} rows "
                f"({n / max(total, 1):.1%}) > tolerance {params.unseen_category_tolerance:.1%} - fix the category, "
                "or raise the DAG param unseen_category_tolerance")
    if rule == "duplicate_texts_max":
        texts, distinct = facts["texts"], facts["distinct_texts"]
        dupes = texts - distinct
        examples = ", ".join(f"{t!r} x{c}" for t, c in facts["repeated"])
        return (f"{rule}: review_body repeats another row's text in {dupes:,} of {texts:,} rows ({dupes / max(texts, 1):.1%}; "
                f"most repeated: {examples or 'none'}) > tolerance {params.max_duplicate_text_fraction:.1%} - "
                "remove the duplicates, or raise the DAG param max_duplicate_text_fraction")
    if rule == "row_count_min":
        return f"{rule}: the delivery has {rows:,} rows, fewer than min_rows={params.min_rows}"
    return fallback


def _gx_frame(con, ids: list[str], rows: int):
    """The batch GX validates: trimmed raw columns, body cut to MAX_BODY_CHARS + 1.

    (File and line are left out: GX does not need them and they would double the frame.)
    Fetched through Arrow, whose buffers are freed while pandas takes them over.
    """
    sample = ""
    if rows > GX_MAX_ROWS:
        log.info("GX validates a sample of %d of %d rows (REVIEWS_GX_MAX_ROWS)", GX_MAX_ROWS, rows)
        sample = f" USING SAMPLE reservoir({GX_MAX_ROWS} ROWS) REPEATABLE (42)"
    table = con.sql(
        "SELECT nullif(trim(review_id), '') AS review_id, nullif(trim(product_category), '') AS product_category, "
        f"nullif(left(trim(review_body), {MAX_BODY_CHARS + 1}), '') AS review_body, "
        "nullif(trim(star_rating), '') AS star_rating, review_date, CAST(ds AS TIMESTAMP) AS ds "
        f"FROM {_source_sql()} src{sample}",
        params={"ids": ids},
    ).to_arrow_table()
    return table.to_pandas(self_destruct=True, split_blocks=True)


def _run_gx(df, params: GateParams, docs_dir: Path):
    """Validate ``df`` with the suite through a GX checkpoint in an ephemeral context.

    The checkpoint's ``UpdateDataDocsAction`` renders GX data docs into ``docs_dir``.
    Returns (validation result, suite).
    """
    import shutil

    import great_expectations as gx
    from great_expectations.checkpoint import UpdateDataDocsAction
    from great_expectations.data_context.types.base import ProgressBarsConfig

    context = gx.get_context(mode="ephemeral")
    context.variables.progress_bars = ProgressBarsConfig(globally=False)
    # Replace the ephemeral context's temp-dir docs site with one inside the run's report dir.
    for name, site in list(context.get_config().data_docs_sites.items()):
        base = site.get("store_backend", {}).get("base_directory")
        context.delete_data_docs_site(name)
        if base and Path(base).is_dir() and Path(base).name.startswith("tmp"):
            shutil.rmtree(base, ignore_errors=True)
    context.add_data_docs_site(
        site_name="run_report",
        site_config={
            "class_name": "SiteBuilder",
            "site_index_builder": {"class_name": "DefaultSiteIndexBuilder"},
            "store_backend": {"class_name": "TupleFilesystemStoreBackend", "base_directory": str(docs_dir)},
        },
    )
    suite = context.suites.add(build_suite(params))
    batch_def = (
        context.data_sources.add_pandas("reviews_catalog")
        .add_dataframe_asset("reviews_raw")
        .add_batch_definition_whole_dataframe("partitions")
    )
    validation = context.validation_definitions.add(
        gx.ValidationDefinition(name="reviews_raw_gate", data=batch_def, suite=suite)
    )
    checkpoint = context.checkpoints.add(
        gx.Checkpoint(
            name="reviews_quality_gate",
            validation_definitions=[validation],
            actions=[UpdateDataDocsAction(name="data_docs", site_names=["run_report"])],
            result_format="SUMMARY",
        )
    )
    result = checkpoint.run(batch_parameters={"dataframe": df})
    return next(iter(result.run_results.values())), suite


def _gx_rows(result) -> list[dict]:
    rows = []
    for r in result.results:
        cfg = r.expectation_config
        res = r.result or {}
        kwargs = {k: v for k, v in cfg.kwargs.items() if k not in ("batch_id",)}
        if "value_set" in kwargs and len(kwargs["value_set"]) > 6:
            kwargs["value_set"] = kwargs["value_set"][:6] + [f"... {len(kwargs['value_set'])} values"]
        rows.append(
            {
                "rule": (cfg.meta or {}).get("rule"),
                "level": (cfg.meta or {}).get("level"),
                "expectation": cfg.type,
                "kwargs": kwargs,
                "success": bool(r.success),
                "observed_value": _jsonable(res.get("observed_value")),
                "unexpected_count": res.get("unexpected_count"),
                "unexpected_percent": res.get("unexpected_percent"),
                "partial_unexpected": [_cut(v) for v in (res.get("partial_unexpected_list") or [])[:5]],
                "exception": (r.exception_info or {}).get("exception_message")
                if isinstance(r.exception_info, dict) and r.exception_info.get("raised_exception") else None,
            }
        )
    return rows


def _jsonable(value):
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value][:20]
    if isinstance(value, (str, int, float, bool)) or value is None:
        return _cut(value) if isinstance(value, str) else value
    return _cut(str(value))


def _cut(value, limit: int = 120):
    if isinstance(value, str) and len(value) > limit:
        return value[:limit] + f"...({len(value)} chars)"
    return value


# --------------------------------------------------------------------------- the gate


def validate_partitions(
    ds_list: list[str],
    run_id: str,
    max_bad_row_fraction: float,
    report_dir: Path,
    settings: Settings | None = None,
    *,
    min_rows: int = DEFAULT_MIN_ROWS,
    max_duplicate_text_fraction: float = DEFAULT_MAX_DUPLICATE_TEXT_FRACTION,
    unseen_category_tolerance: float = DEFAULT_UNSEEN_CATEGORY_TOLERANCE,
    expected_categories: tuple[str, ...] | None = None,
    report_location: str | None = None,
) -> dict:
    """Audit the deliveries of ``ds_list`` and publish them only when they pass (write-audit-publish).

    For each day the gate audits its staged delivery (``Catalog.register_partition``), or
    re-audits the published partition when nothing is staged. Rows failing a row-level rule
    replace the delivery's earlier rows in ``reviews.reviews_quarantine``. The report
    (``validation_report.html``, ``validation.json``, ``expectation_suite.json``,
    ``gx_validation_result.json``, ``gx_data_docs/``) is published to ``report_dir``
    (a temporary folder renamed into place) BEFORE the verdict is acted upon, so a failed gate's
    report is there to read. Passing: every staged delivery replaces its day in one
    transaction. Failing: the deliveries are marked rejected, their rows stay staged for
    inspection, the published partitions are not touched, and ``DataQualityError`` names
    the failures and the report's path.
    ``report_location``: where the report is read (an ``s3://`` prefix the caller uploads
    ``report_dir`` to on the aws backend); default ``report_dir``. The catalog backend
    (``catalog.get_catalog``) supplies the audited rows and acts on the verdict.
    Returns ``{"rows", "bad_rows", "bad_fraction", "rule_counts", "report_path", "passed", "deliveries", ...}``.
    """
    settings = settings or get_settings()
    params = GateParams(
        max_bad_row_fraction=max_bad_row_fraction,
        min_rows=min_rows,
        max_duplicate_text_fraction=max_duplicate_text_fraction,
        unseen_category_tolerance=unseen_category_tolerance,
        expected_categories=tuple(expected_categories or EXPECTED_CATEGORIES),
    )
    if not ds_list:
        raise ValueError("ds_list is empty: name at least one registered partition")
    days = sorted({catalog_base.parse_ds(d) for d in ds_list})
    started = time.monotonic()
    store = get_catalog(settings)
    audit = store.open_audit(days)  # the audited rows in the catalog's tables (DuckDB; in memory on aws)
    try:
        targets = audit.targets
        ids = [t["delivery_id"] for t in targets]
        sql_part = _apply_row_rules(audit.con, ids, run_id)
        facts = _table_facts(audit.con, ids, params)
        t_sql = time.monotonic() - started
        df = _gx_frame(audit.con, ids, sql_part["rows"])
    finally:
        store.close_audit(audit)
    report_dir = Path(report_dir).absolute()  # GX wants an absolute docs folder
    shown = (report_location or str(report_dir)).rstrip("/")
    with atomic_path(report_dir) as work:  # published by rename below, whatever the verdict
        work.mkdir(parents=True)
        t0 = time.monotonic()
        gx_result, suite = _run_gx(df, params, work / "gx_data_docs")
        gx_rows_validated = len(df)
        del df
        t_gx = time.monotonic() - t0
        gx_rows = _gx_rows(gx_result)
        rows, bad = sql_part["rows"], sql_part["bad_rows"]
        table_failures = [
            _explain_table_failure(g["rule"], facts, rows, params,
                                   f"{g['rule']}: {g['expectation']} observed {g['observed_value']}")
            for g in gx_rows if g["level"] == "table" and not g["success"]]
        bad_fraction = bad / rows if rows else 0.0
        passed = bad_fraction <= params.max_bad_row_fraction and not table_failures
        summary = {
            "ds_list": [d.isoformat() for d in days],
            "run_id": run_id,
            "deliveries": [{"ds": t["ds"].isoformat(), "delivery_id": t["delivery_id"],
                            "audited": "staged delivery" if t["staged"] else "published partition",
                            "bad_rows": sql_part["bad_rows_per_delivery"].get(t["delivery_id"], 0)} for t in targets],
            "rows": rows,
            "bad_rows": bad,
            "bad_fraction": bad_fraction,
            "max_bad_row_fraction": params.max_bad_row_fraction,
            "rule_counts": sql_part["rule_counts"],
            "bad_rows_per_ds": {t["ds"].isoformat(): sql_part["bad_rows_per_delivery"].get(t["delivery_id"], 0)
                                for t in targets},
            "duplicate_ids_across_partitions": sql_part["duplicate_ids_across_partitions"],
            "table_failures": table_failures,
            "gx_success": bool(gx_result.success),
            "gx_rows_validated": gx_rows_validated,
            "passed": passed,
            "seconds": {"sql_rules": round(t_sql, 3), "gx": round(t_gx, 3)},
            "report_path": f"{shown}/validation_report.html",
            "gx_data_docs": f"{shown}/gx_data_docs/index.html",
        }
        _write_report(work, summary, gx_rows, sql_part["quarantine_sample"], params, suite, gx_result)

    reasons = []
    if bad_fraction > params.max_bad_row_fraction:
        worst = sorted(((n, r) for r, n in sql_part["rule_counts"].items() if n), reverse=True)
        reasons.append(
            f"bad row fraction {bad_fraction:.4f} ({bad:,} of {rows:,} rows) > max_bad_row_fraction "
            f"{params.max_bad_row_fraction} (worst rules: {', '.join(f'{r}={n:,}' for n, r in worst[:3])})"
        )
    reasons += table_failures
    if not passed:
        for t in targets:
            t["own_failure"] = _fails_on_its_own(facts["per_delivery"].get(t["delivery_id"], {"rows": 0, "unseen": 0,
                                                 "categorised": 0, "texts": 0, "distinct": 0}),
                                                 sql_part["bad_rows_per_delivery"].get(t["delivery_id"], 0), params)
        if not any(t["own_failure"] for t in targets):
            for t in targets:  # only the batch as a whole fails (e.g. texts repeated across days)
                t["own_failure"] = True
    store.record_verdict(audit, summary, "; ".join(reasons))
    summary["seconds"]["total"] = round(time.monotonic() - started, 3)
    if sql_part["duplicate_ids_across_partitions"]:
        log.warning(
            "%d review_id(s) of ds %s also occur in another partition; export_clean keeps the latest ds",
            sql_part["duplicate_ids_across_partitions"], summary["ds_list"],
        )
    log.info(
        "audited ds %s: %d rows, %d bad (%.4f, max %.4f), table failures %d, passed=%s in %.1fs; report %s",
        summary["ds_list"], rows, bad, bad_fraction, params.max_bad_row_fraction, len(table_failures), passed,
        summary["seconds"]["total"], summary["report_path"],
    )
    if not passed:
        staged = [t["delivery_id"] for t in targets if t["staged"] and t["own_failure"]]
        waiting = [t["delivery_id"] for t in targets if t["staged"] and not t["own_failure"]]
        raise DataQualityError(
            f"data-quality gate failed for ds {', '.join(summary['ds_list'])}: {'; '.join(reasons)}. "
            + (f"Rejected deliver{'y' if len(staged) == 1 else 'ies'} {', '.join(staged)}: the published partitions "
               f"are unchanged; the rejected rows stay in {catalog_base.STAGING} and {catalog_base.QUARANTINE} "
               f"(run_id={run_id}) for {catalog_base.retention_days()} days (`make data-status`). " if staged else
               f"Failing rows are in {catalog_base.QUARANTINE} (run_id={run_id}). ")
            + (f"Not rejected (no failure of their own, still staged for the next audit): {', '.join(waiting)}. "
               if waiting else "")
            + f"Report: {summary['report_path']}"
        )
    return summary


# --------------------------------------------------------------------------- report


def _write_report(report_dir, summary, gx_rows, sample, params, suite, gx_result) -> None:
    write_text_atomic(report_dir / "validation.json", json.dumps({**summary, "gx_results": gx_rows}, indent=2, default=str))
    write_text_atomic(report_dir / "expectation_suite.json", json.dumps(suite.to_json_dict(), indent=2, default=str))
    write_text_atomic(report_dir / "gx_validation_result.json", json.dumps(gx_result.to_json_dict(), indent=2, default=str))
    write_text_atomic(report_dir / Path(summary["report_path"]).name, render_html(summary, gx_rows, sample, params))


def _cells(rows: list[list]) -> list[list[str]]:
    """Table cells as the report shows them: text, long values cut at 200 characters."""
    return [[str(_cut(c, 200)) for c in row] for row in rows]


def render_html(summary: dict, gx_rows: list[dict], sample: list, params: GateParams) -> str:
    """A self-contained HTML validation report (what GX data docs show, plus the quarantine), from
    ``templates/validation_report.html.j2``; every value is escaped (review texts included)."""
    rule_rows = [
        [r.name, r.description, r.bad_sql, summary["rule_counts"].get(r.name, 0)] for r in ROW_RULES
    ]
    gx_table = [
        [g["rule"], g["level"], g["expectation"], json.dumps(g["kwargs"], default=str),
         "yes" if g["success"] else "NO", g["observed_value"] if g["observed_value"] is not None else "",
         "" if g["unexpected_count"] is None else g["unexpected_count"],
         "" if g["unexpected_percent"] is None else f"{g['unexpected_percent']:.3f}",
         ", ".join(map(str, g["partial_unexpected"]))]
        for g in gx_rows
    ]
    totals = [f"{summary['rows']:,}", f"{summary['bad_rows']:,}", f"{summary['bad_fraction']:.4%}",
              params.max_bad_row_fraction, summary["duplicate_ids_across_partitions"],
              " / ".join(str(summary['seconds'].get(k, "")) for k in ("sql_rules", "gx", "total"))]
    return render(TEMPLATES, "validation_report.html.j2", title=f"Validation {summary['run_id']}",
                  passed=summary["passed"], suite=SUITE_NAME, run_id=summary["run_id"], ds_list=summary["ds_list"],
                  deliveries=[f"{d['delivery_id']} ({d['audited']})" for d in summary.get("deliveries", [])],
                  totals=_cells([totals])[0], table_failures=summary["table_failures"], rule_rows=_cells(rule_rows),
                  rows=summary["rows"], gx_rows_validated=summary["gx_rows_validated"], gx_table=_cells(gx_table),
                  sample=_cells([list(r) for r in sample]))
