"""The local backend's feature store (:class:`LocalFeatureStore`); the interface is
``feature_store_base.py``.

- Offline store: append-only Parquet under ``<store>/feature_store/<group>/event_date=<day>/``,
  one file per ingestion and event day. An ingestion writes its files under a staging folder,
  renames them into their partitions and only then *commits* them in one catalog transaction
  (``feature_store.ingestions`` + the view ``feature_store.<group>``, which lists committed
  files only). A crash before the commit leaves files no reader sees (removed by the next
  ingestion), never a partial partition.
- Ingestion is idempotent per (record identifier, event time): keys already stored are
  skipped (the first write wins; a correction is a new record with a later event time).
- Point-in-time read: the latest record per identifier with ``event_time <= as_of``; the
  pipeline trains on it (``FeatureStore.ingest_run_features``), so a backfilled run for day D
  sees exactly what was known at D.
- Online store (``include/data/online_store.py``): latest record per identifier, written
  after each commit from the committed records, so it agrees with the offline store.
"""
from __future__ import annotations

import json
import logging
import shutil
import time
import uuid
from datetime import datetime, timezone
from pathlib import Path
from typing import TYPE_CHECKING

from include.common.config import Settings, get_settings
from include.common.io import uri_to_path
from include.data.feature_store_base import (
    FEATURE_TYPES,
    GROUPS,
    INGESTIONS,
    PARTITION_COLUMN,
    SCHEMA,
    FeatureGroup,
    FeatureStore,
    FeatureValidationError,
    _sql_str,
    check_compatible,
    to_utc_naive,
    validate_records,
    write_channels,
)
from include.data.online_store import OnlineStore, get_online_store

if TYPE_CHECKING:  # heavy imports stay inside functions (DAG files import steps at parse time)
    import duckdb
    import pyarrow as pa

log = logging.getLogger(__name__)


class LocalFeatureStore(FeatureStore):
    """Offline store = Parquet in the local object store + catalog metadata (DuckDB);
    online store = :func:`include.data.online_store.get_online_store`."""

    def __init__(self, settings: Settings | None = None, online: OnlineStore | None = None) -> None:
        self.settings = settings or get_settings()
        self._online = online

    @property
    def online(self) -> OnlineStore:
        """The online store (opened on first use)."""
        if self._online is None:
            self._online = get_online_store(self.settings)
        return self._online

    def offline_root(self, name: str) -> Path:
        """Folder of a group's Parquet partitions."""
        return uri_to_path(self.settings.uri(f"feature_store/{name}"))

    # -- catalog plumbing
    def _connect(self, read_only: bool = False) -> "duckdb.DuckDBPyConnection":
        from include.data.catalog_duckdb import connect  # waits on DuckDB's lock like every catalog user

        con = connect(self.settings, read_only=read_only)
        if not read_only:
            con.execute(f"""
                CREATE SCHEMA IF NOT EXISTS {SCHEMA};
                CREATE TABLE IF NOT EXISTS {GROUPS} (
                    name VARCHAR PRIMARY KEY, version INTEGER NOT NULL, definition VARCHAR NOT NULL,
                    offline_uri VARCHAR NOT NULL, created_at TIMESTAMP NOT NULL, updated_at TIMESTAMP NOT NULL);
                CREATE TABLE IF NOT EXISTS {INGESTIONS} (
                    ingestion_id VARCHAR PRIMARY KEY, group_name VARCHAR NOT NULL, source VARCHAR,
                    files VARCHAR[] NOT NULL, records BIGINT NOT NULL, duplicates_skipped BIGINT NOT NULL,
                    min_event_time TIMESTAMP, max_event_time TIMESTAMP, committed_at TIMESTAMP NOT NULL);""")
        return con

    def _stored(self, con: "duckdb.DuckDBPyConnection", name: str) -> FeatureGroup | None:
        if not con.execute("SELECT count(*) FROM duckdb_tables() WHERE schema_name = ? AND table_name = ?",
                           [SCHEMA, "feature_groups"]).fetchall()[0][0]:
            return None
        row = con.execute(f"SELECT definition FROM {GROUPS} WHERE name = ?", [name]).fetchall()
        return FeatureGroup.from_dict(json.loads(row[0][0])) if row else None

    def _files(self, con: "duckdb.DuckDBPyConnection", name: str) -> list[str]:
        rows = con.execute(f"SELECT unnest(files) FROM {INGESTIONS} WHERE group_name = ? ORDER BY 1", [name]).fetchall()
        return [r[0] for r in rows]

    def _replace_view(self, con: "duckdb.DuckDBPyConnection", group: FeatureGroup, files: list[str]) -> None:
        # The view lists committed files only: what a crashed ingestion left on disk stays invisible.
        if files:
            root = self.offline_root(group.name)
            paths = ", ".join(f"'{_sql_str(str(root / f))}'" for f in files)
            body = f"SELECT * FROM read_parquet([{paths}], hive_partitioning = true, union_by_name = true)"
        else:
            cols = [f"CAST(NULL AS {FEATURE_TYPES[f.type][0]}) AS {f.name}" for f in group.features]
            cols += ["CAST(NULL AS TIMESTAMP) AS write_time", "CAST(NULL AS VARCHAR) AS ingestion_id",
                     "CAST(NULL AS VARCHAR) AS source", f"CAST(NULL AS DATE) AS {PARTITION_COLUMN}"]
            body = f"SELECT {', '.join(cols)} LIMIT 0"
        con.execute(f"CREATE OR REPLACE VIEW {SCHEMA}.{group.name} AS {body}")
        con.execute(f"COMMENT ON VIEW {SCHEMA}.{group.name} IS '{_sql_str(group.description)}'")

    def _require(self, con: "duckdb.DuckDBPyConnection", name: str) -> FeatureGroup:
        group = self._stored(con, name)
        if group is None:
            raise FeatureValidationError(f"feature group {name!r} does not exist; create it first "
                                         f"(known: {', '.join(g['name'] for g in self._list(con)) or 'none'})")
        return group

    # -- definitions
    def create_feature_group(self, group: FeatureGroup) -> str:
        con = self._connect()
        try:
            stored = self._stored(con, group.name)
            if stored is not None and stored.to_dict() == group.to_dict():
                return "exists"
            added = check_compatible(stored, group) if stored is not None else []
            now = datetime.now(timezone.utc).replace(tzinfo=None)
            con.execute("BEGIN TRANSACTION")
            try:
                if stored is None:
                    con.execute(f"INSERT INTO {GROUPS} VALUES (?, ?, ?, ?, ?, ?)",
                                [group.name, group.version, json.dumps(group.to_dict()),
                                 self.offline_root(group.name).as_uri(), now, now])
                else:
                    con.execute(f"UPDATE {GROUPS} SET version = ?, definition = ?, updated_at = ? WHERE name = ?",
                                [group.version, json.dumps(group.to_dict()), now, group.name])
                self._replace_view(con, group, self._files(con, group.name))
                con.execute("COMMIT")
            except BaseException:
                con.execute("ROLLBACK")
                raise
        finally:
            con.close()
        status = "created" if stored is None else "updated"
        log.info("feature group %s v%d %s%s", group.name, group.version, status,
                 f" (added {', '.join(added)})" if added else "")
        return status

    def describe_feature_group(self, name: str) -> FeatureGroup:
        con = self._connect(read_only=True)
        try:
            return self._require(con, name)
        finally:
            con.close()

    def _list(self, con: "duckdb.DuckDBPyConnection") -> list[dict]:
        if not con.execute("SELECT count(*) FROM duckdb_tables() WHERE schema_name = ? AND table_name = ?",
                           [SCHEMA, "feature_groups"]).fetchall()[0][0]:
            return []
        out = []
        for name, version, definition in con.execute(
                f"SELECT name, version, definition FROM {GROUPS} ORDER BY name").fetchall():
            ident = json.loads(definition)["record_identifier"]
            records, ids = con.execute(f"SELECT count(*), count(DISTINCT {ident}) FROM {SCHEMA}.{name}").fetchall()[0]
            ingestions = con.execute(f"SELECT count(*) FROM {INGESTIONS} WHERE group_name = ?", [name]).fetchall()[0][0]
            out.append({"name": name, "version": version, "records": records, "record_ids": ids,
                        "ingestions": ingestions, "online_records": None})
        return out

    def list_feature_groups(self) -> list[dict]:
        con = self._connect(read_only=True)
        try:
            groups = self._list(con)
        finally:
            con.close()
        for g in groups:
            g["online_records"] = self.online.count(g["name"])
        return groups

    # -- ingestion
    def ingest(self, name: str, records: "pa.Table", source: str = "") -> dict:
        t0 = time.monotonic()
        con = self._connect()
        try:
            group = self._require(con, name)
            table = validate_records(group, records)
            ident, etime = group.record_identifier, group.event_time
            con.register("batch", table)
            dup = con.execute(f"SELECT {ident}, event FROM (SELECT {ident}, {etime} AS event, count(*) AS n FROM batch "
                              f"GROUP BY ALL) WHERE n > 1 LIMIT 1").fetchall()
            if dup:
                dup = dup[0]
                raise FeatureValidationError(f"feature group {name}: record {ident}={dup[0]!r} appears twice with event "
                                             f"time {dup[1]}; one record per (identifier, event time)")
            result = self._append(con, group, source or "", t0)
        finally:
            con.close()
        result["offline_s"] = round(time.monotonic() - t0, 3)
        t1 = time.monotonic()
        online_rows = self._sync_online(group, table, result)
        result["online_records_written"] = online_rows
        result["online_s"] = round(time.monotonic() - t1, 3)
        result["wall_s"] = round(time.monotonic() - t0, 3)
        log.info("ingested %d new record(s) into %s (%d duplicate(s) skipped, %d online) in %.2fs",
                 result["records"], name, result["duplicates_skipped"], online_rows, result["wall_s"])
        return result

    def _append(self, con: "duckdb.DuckDBPyConnection", group: FeatureGroup, source: str, t0: float) -> dict:
        ident, etime = group.record_identifier, group.event_time
        root = self.offline_root(group.name)
        root.mkdir(parents=True, exist_ok=True)
        self._drop_uncommitted(con, group.name, root)
        files = self._files(con, group.name)
        if files:
            # Only the event days of this batch can hold its keys: partition pruning keeps this cheap.
            con.execute(f"""CREATE TEMP TABLE new_rows AS SELECT b.* FROM batch b WHERE NOT EXISTS (
                SELECT 1 FROM {SCHEMA}.{group.name} v
                WHERE v.{PARTITION_COLUMN} BETWEEN (SELECT CAST(min({etime}) AS DATE) FROM batch)
                                               AND (SELECT CAST(max({etime}) AS DATE) FROM batch)
                  AND v.{ident} = b.{ident} AND v.{etime} = b.{etime})""")
        else:
            con.execute("CREATE TEMP TABLE new_rows AS SELECT * FROM batch")
        offered = con.execute("SELECT count(*) FROM batch").fetchall()[0][0]
        new = con.execute("SELECT count(*) FROM new_rows").fetchall()[0][0]
        ingestion_id = f"{time.strftime('%Y%m%dT%H%M%S')}-{uuid.uuid4().hex[:10]}"
        result = {"feature_group": group.name, "ingestion_id": ingestion_id if new else None, "source": source,
                  "records": int(new), "duplicates_skipped": int(offered - new), "files": []}
        if not new:
            return result
        staging = root / f".staging-{ingestion_id}"
        now = datetime.now(timezone.utc).replace(tzinfo=None)
        con.execute(f"""COPY (SELECT *, CAST(? AS TIMESTAMP) AS write_time, CAST(? AS VARCHAR) AS ingestion_id,
                                   CAST(? AS VARCHAR) AS source, CAST({etime} AS DATE) AS {PARTITION_COLUMN}
                              FROM new_rows ORDER BY {etime}, {ident})
                        TO '{_sql_str(str(staging))}' (FORMAT parquet, PARTITION_BY ({PARTITION_COLUMN}),
                                                       FILENAME_PATTERN 'part-{ingestion_id}-{{i}}')""",
                    [now, ingestion_id, source])
        log.info("wrote %d record(s) of %s to staging in %.2fs", new, group.name, time.monotonic() - t0)
        moved = []
        for part in sorted(staging.glob(f"{PARTITION_COLUMN}=*/*.parquet")):
            rel = f"{part.parent.name}/{part.name}"
            (root / part.parent.name).mkdir(exist_ok=True)
            part.rename(root / rel)  # same file system: atomic; still invisible until the commit below
            moved.append(rel)
        shutil.rmtree(staging, ignore_errors=True)
        con.execute("BEGIN TRANSACTION")
        try:
            con.execute(f"""INSERT INTO {INGESTIONS} SELECT ?, ?, ?, ?, ?, ?, min({etime}), max({etime}), ?
                            FROM new_rows""",
                        [ingestion_id, group.name, source, moved, new, offered - new, now])
            self._replace_view(con, group, files + moved)
            con.execute("COMMIT")
        except BaseException:
            con.execute("ROLLBACK")
            raise
        result["files"] = moved
        return result

    def _drop_uncommitted(self, con: "duckdb.DuckDBPyConnection", name: str, root: Path) -> None:
        # Runs under the catalog's write lock, so nothing else is ingesting: any file no committed
        # ingestion lists is the leftover of a crash.
        committed = set(self._files(con, name))
        for stale in root.glob(".staging-*"):
            shutil.rmtree(stale, ignore_errors=True)
        for part in root.glob(f"{PARTITION_COLUMN}=*/*.parquet"):
            if f"{part.parent.name}/{part.name}" not in committed:
                log.warning("removing %s: left by an ingestion that never committed", part)
                part.unlink()

    def _sync_online(self, group: FeatureGroup, batch: "pa.Table", result: dict) -> int:
        # The online store gets the committed version of every key of the batch (a skipped
        # duplicate's stored record, not the batch's), so it always agrees with the offline store.
        con = self._connect(read_only=True)
        try:
            con.register("batch", batch.select([group.record_identifier, group.event_time]))
            cols = ", ".join(group.feature_names)
            rows = con.execute(f"""
                SELECT {group.record_identifier}, epoch_us({group.event_time}), to_json(r)
                FROM (SELECT {cols} FROM {SCHEMA}.{group.name} v SEMI JOIN batch b
                        ON v.{group.record_identifier} = b.{group.record_identifier}
                       AND v.{group.event_time} = b.{group.event_time}
                      WHERE v.{PARTITION_COLUMN} BETWEEN (SELECT CAST(min({group.event_time}) AS DATE) FROM batch)
                                                     AND (SELECT CAST(max({group.event_time}) AS DATE) FROM batch)
                     ) r""").fetchall()
        finally:
            con.close()
        return self.online.put_records(group.name, rows)

    def rebuild_online(self, name: str) -> int:
        """Rebuild a group's online store from the offline store's latest records."""
        con = self._connect(read_only=True)
        try:
            group = self._require(con, name)
            cols = ", ".join(group.feature_names)
            rows = con.execute(f"SELECT {group.record_identifier}, epoch_us({group.event_time}), to_json(r) "
                               f"FROM (SELECT {cols} FROM ({_latest_sql(group)}) ) r").fetchall()
        finally:
            con.close()
        self.online.clear(name)
        return self.online.put_records(name, rows)

    # -- reads
    def point_in_time(self, name: str, as_of: datetime, record_ids: list[str] | None = None) -> "pa.Table":
        con = self._connect(read_only=True)
        try:
            group = self._require(con, name)
            return self._pit(con, group, as_of, record_ids).to_arrow_table()
        finally:
            con.close()

    def _pit(self, con: "duckdb.DuckDBPyConnection", group: FeatureGroup, as_of: datetime,
             record_ids: list[str] | None) -> "duckdb.DuckDBPyRelation":
        import pyarrow as pa

        where = f"{group.event_time} <= $as_of"
        if record_ids is not None:
            con.register("wanted", pa.table({"id": pa.array(record_ids, pa.string())}))
            where += f" AND {group.record_identifier} IN (SELECT id FROM wanted)"
        pruned = f"{PARTITION_COLUMN} <= CAST($as_of AS DATE)"
        return con.sql(f"SELECT {', '.join(group.feature_names)} FROM ({_latest_sql(group, where, pruned)})",
                       params={"as_of": to_utc_naive(as_of)})

    def export_point_in_time(self, name: str, as_of: datetime, dest_uri: str,
                             record_ids: list[str] | None = None) -> dict:
        """Write the point-in-time read as ``<dest>/<split>/part-00000.parquet`` (the preprocess
        job's shard layout, what the training job reads), atomically; returns rows per split."""
        con = self._connect(read_only=True)
        try:
            group = self._require(con, name)
            if "split_type" not in group.feature_names:
                raise FeatureValidationError(f"feature group {name}: has no split_type feature to export channels by")
            table = self._pit(con, group, as_of, record_ids).to_arrow_table()
        finally:
            con.close()
        return write_channels(group, table, as_of, dest_uri)

    def get_record(self, name: str, record_id: str) -> dict | None:
        return self.online.get_record(name, record_id)

    def snapshot(self, name: str, source: str | None = None) -> tuple[str, datetime] | None:
        con = self._connect(read_only=True)
        try:
            if self._stored(con, name) is None:
                return None
            if source is None:
                row = con.execute(f"SELECT source FROM {INGESTIONS} WHERE group_name = ? AND coalesce(source, '') <> '' "
                                  "ORDER BY committed_at DESC LIMIT 1", [name]).fetchone()
                if not row:
                    return None
                source = row[0]
            row = con.execute(f"SELECT max(max_event_time) FROM {INGESTIONS} WHERE group_name = ? AND source = ?",
                              [name, source]).fetchone()
        finally:
            con.close()
        return (source, row[0]) if row and row[0] is not None else None

    def batch_get_record(self, name: str, record_ids: list[str]) -> dict[str, dict]:
        return self.online.batch_get_record(name, record_ids)

    def query(self, sql: str) -> tuple[list[str], list[tuple]]:
        """Run read-only SQL against the catalog (feature groups are views ``feature_store.<name>``)."""
        import duckdb

        con = self._connect(read_only=True)
        try:
            cur = con.execute(sql)
            return [d[0] for d in cur.description], cur.fetchall()
        except duckdb.Error as exc:
            raise FeatureValidationError(f"query failed: {exc}") from None
        finally:
            con.close()


def _latest_sql(group: FeatureGroup, where: str = "true", partitions: str = "true") -> str:
    # Latest record per identifier: the winning (id, event time) keys from the two narrow
    # columns first, then one semi-join pass for the wide rows - ~1.5x faster than a window
    # over whole rows (benchmarks/feature_store.py). Keys are unique, so one row per id.
    # ``partitions`` prunes event_date folders (the same bound as ``where``, on the partition column).
    view, ident, etime = f"{SCHEMA}.{group.name}", group.record_identifier, group.event_time
    return (f"WITH latest AS (SELECT {ident}, max({etime}) AS {etime} FROM {view} WHERE {where} AND {partitions} "
            f"GROUP BY {ident}) SELECT v.* FROM {view} v SEMI JOIN latest l ON v.{ident} = l.{ident} "
            f"AND v.{etime} = l.{etime} WHERE {partitions}")
