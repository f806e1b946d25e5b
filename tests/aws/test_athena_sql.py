"""The SQL sent to Athena parses as Trino SQL (sqlglot), since moto executes none.

Every query the code rewrites for Athena (include/data/catalog_glue.athena_sql over the analysis
questions, the count and the drift check's current-data query) is parsed with sqlglot's Trino
dialect, and every function sqlglot does not know by name must be one Trino has.
"""
from __future__ import annotations

from datetime import date

import pytest
import sqlglot
from sqlglot import exp
from sqlglot.errors import ParseError

from include.analytics import analysis, drift
from include.data.catalog_glue import athena_sql

DB = "review_sentiment"
PARAMS = {"ds_from": date(2026, 3, 1), "ds_to": date(2026, 3, 5), "top_n": 3, "min_reviews": 20, "bin_width": 10}
# Trino functions sqlglot parses as plain (anonymous) calls
TRINO_FUNCTIONS = {"regexp_split", "cardinality", "contains", "try_cast", "nullif", "trim", "coalesce",
                   "round", "row_number"}
QUERIES = {"count": athena_sql(analysis.COUNT_SQL, PARAMS, DB),
           **{q.name: athena_sql(q.sql, PARAMS, DB) for q in analysis.QUESTIONS},
           "drift_current": athena_sql(drift.CURRENT_SQL, {"ds": [date(2026, 3, 4), date(2026, 3, 5)]}, DB)}


def _trino(sql: str) -> exp.Expression:
    return sqlglot.parse_one(sql, read="trino")


@pytest.mark.parametrize("name", sorted(QUERIES))
def test_each_athena_query_parses_as_trino_sql(name):
    tree = _trino(QUERIES[name])
    assert isinstance(tree, (exp.Select, exp.Union)), type(tree)
    unknown = {f.name.lower() for f in tree.find_all(exp.Anonymous)} - TRINO_FUNCTIONS
    assert not unknown, f"{name}: functions Trino may not have: {sorted(unknown)}\n{QUERIES[name]}"
    assert not list(tree.find_all(exp.Parameter, exp.Placeholder)), f"{name}: an unbound parameter"
    tables = {t.sql("trino") for t in tree.find_all(exp.Table)}
    assert f"{DB}.reviews_raw" in {t.split(" ")[0] for t in tables}, tables


def test_duckdb_spellings_that_athena_refuses_do_not_parse_as_trino():
    for duckdb_only in ("SELECT words // 10 FROM t", "SELECT * FROM t QUALIFY row_number() OVER () = 1"):
        with pytest.raises(ParseError):
            _trino(duckdb_only)
    unknown = {f.name.lower() for f in _trino("SELECT list_contains(ds, 1) FROM t").find_all(exp.Anonymous)}
    assert unknown - TRINO_FUNCTIONS == {"list_contains"}  # DuckDB's: athena_sql rewrites it to contains
