"""Feature store, local flavour: the offline store is the DuckDB table ``reviews_features``.

Feature group ``reviews_features`` (record identifier ``review_id``, event time ``date``)
holds every preprocess run's features tagged with ``snapshot_id`` (the run that made them),
so a model's lineage can name the exact snapshot it was trained on. Ingesting a snapshot
again replaces it (one transaction), never duplicates it.
"""
from __future__ import annotations

import logging
from pathlib import Path

import duckdb

from include.common.config import Settings

log = logging.getLogger(__name__)
FEATURE_GROUP = "reviews.reviews_features"
DDL = f"""
CREATE SCHEMA IF NOT EXISTS reviews;
CREATE TABLE IF NOT EXISTS {FEATURE_GROUP} (
    review_id VARCHAR NOT NULL,
    date DATE,
    product_category VARCHAR,
    review_body VARCHAR,
    star_rating TINYINT,
    sentiment TINYINT,
    label_id TINYINT,
    input_ids INTEGER[],
    split_type VARCHAR,
    snapshot_id VARCHAR NOT NULL,
    ingested_at TIMESTAMP DEFAULT current_timestamp
)"""


class FeatureStoreError(RuntimeError):
    """The features could not be ingested."""


def connect(settings: Settings | None = None) -> duckdb.DuckDBPyConnection:
    """Open the catalog database holding the offline store (created on first use)."""
    from include.data.catalog import connect as catalog_connect  # shares the catalog's lock handling

    con = catalog_connect(settings)
    con.execute(DDL)
    return con


def ingest(features_dir: Path, snapshot_id: str, settings: Settings | None = None) -> dict:
    """Load the split shards under ``features_dir`` as snapshot ``snapshot_id``; returns counts."""
    shards = sorted(features_dir.glob("*/part-*.parquet"))
    if not shards:
        raise FeatureStoreError(f"{features_dir}: no feature shards (<split>/part-*.parquet) to ingest")
    con = connect(settings)
    try:
        con.execute("BEGIN TRANSACTION")
        con.execute(f"DELETE FROM {FEATURE_GROUP} WHERE snapshot_id = ?", [snapshot_id])
        con.execute(
            f"""INSERT INTO {FEATURE_GROUP} (review_id, date, product_category, review_body, star_rating, sentiment,
                    label_id, input_ids, split_type, snapshot_id)
                SELECT review_id, date, product_category, review_body, star_rating, sentiment, label_id,
                       input_ids, split_type, ? FROM read_parquet(?)""",
            [snapshot_id, [str(s) for s in shards]],
        )
        rows = dict(con.execute(
            f"SELECT split_type, count(*) FROM {FEATURE_GROUP} WHERE snapshot_id = ? GROUP BY 1", [snapshot_id]).fetchall())
        con.execute("COMMIT")
    except Exception:
        con.execute("ROLLBACK")
        raise
    finally:
        con.close()
    log.info("ingested snapshot %s into %s: %s", snapshot_id, FEATURE_GROUP, rows)
    return {"feature_group": FEATURE_GROUP, "snapshot_id": snapshot_id, "rows": rows}


def snapshot_counts(snapshot_id: str, settings: Settings | None = None) -> dict[str, int]:
    """Rows per split of one snapshot (empty when it does not exist)."""
    con = connect(settings)
    try:
        return dict(con.execute(
            f"SELECT split_type, count(*) FROM {FEATURE_GROUP} WHERE snapshot_id = ? GROUP BY 1", [snapshot_id]).fetchall())
    finally:
        con.close()


def latest_snapshot(settings: Settings | None = None) -> str | None:
    """The most recently ingested snapshot that has a train, a validation and a test split."""
    con = connect(settings)
    try:
        row = con.execute(
            f"""SELECT snapshot_id FROM {FEATURE_GROUP} GROUP BY snapshot_id
                HAVING count(DISTINCT split_type) FILTER (WHERE split_type IN ('train', 'validation', 'test')) = 3
                ORDER BY max(ingested_at) DESC LIMIT 1""").fetchone()
    finally:
        con.close()
    return row[0] if row else None


def export_snapshot(snapshot_id: str, dest: Path, settings: Settings | None = None) -> dict[str, int]:
    """Write ``<dest>/<split>/part-00000.parquet`` for each split of a snapshot; rows per split.

    The text columns only (``review_id, review_body, star_rating, sentiment, label_id``): what a
    classical text model trains on. Raises :class:`FeatureStoreError` if a split is missing.
    """
    counts = snapshot_counts(snapshot_id, settings)
    missing = [s for s in ("train", "validation", "test") if not counts.get(s)]
    if missing:
        raise FeatureStoreError(f"feature snapshot {snapshot_id!r} has no {', '.join(missing)} rows "
                                f"(it has {counts or 'nothing'}); run review_sentiment_pipeline's preprocess first")
    con = connect(settings)
    try:
        for split in ("train", "validation", "test"):
            folder = Path(dest) / split
            folder.mkdir(parents=True, exist_ok=True)
            target = (folder / "part-00000.parquet").as_posix().replace("'", "''")  # a SQL string literal
            con.execute(
                f"""COPY (SELECT review_id, review_body, star_rating, sentiment, label_id FROM {FEATURE_GROUP}
                          WHERE snapshot_id = ? AND split_type = ? ORDER BY review_id)
                    TO '{target}' (FORMAT PARQUET)""", [snapshot_id, split])
    finally:
        con.close()
    return {s: counts[s] for s in ("train", "validation", "test")}
