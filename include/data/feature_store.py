"""Feature store: feature groups kept as code, an offline and an online store, point-in-time reads.

Shaped like SageMaker Feature Store (the course's first lab): a :class:`FeatureGroup` has a
name, a record identifier (``review_id``), an event time, typed features, a description and a
version; ``create_feature_group`` twice is a no-op, an incompatible change is an error that
names the field. The interface is :class:`FeatureStore`; :func:`get_feature_store` picks the
implementation from the backend (``local``; ``aws`` = SageMaker Feature Store,
``include/data/sagemaker_feature_store.py``).

Local flavour (:class:`LocalFeatureStore`):

- Offline store: append-only Parquet under ``<store>/feature_store/<group>/event_date=<day>/``,
  one file per ingestion and event day. An ingestion writes its files under a staging folder,
  renames them into their partitions and only then *commits* them in one catalog transaction
  (``feature_store.ingestions`` + the view ``feature_store.<group>``, which lists committed
  files only). A crash before the commit leaves files no reader sees (removed by the next
  ingestion), never a partial partition.
- Ingestion is idempotent per (record identifier, event time): keys already stored are
  skipped (the first write wins; a correction is a new record with a later event time).
- Point-in-time read: the latest record per identifier with ``event_time <= as_of``; the
  pipeline trains on it (:func:`ingest_run_features`), so a backfilled run for day D sees
  exactly what was known at D.
- Online store (``include/data/online_store.py``): latest record per identifier, written
  after each commit from the committed records, so it agrees with the offline store.

CLI: ``python -m include.data.feature_store list | describe NAME | query SQL | get NAME ID``
(``make features [SQL="..."]``).
"""
from __future__ import annotations

import argparse
import json
import logging
import re
import shutil
import sys
import time
import uuid
from abc import ABC, abstractmethod
from dataclasses import asdict, dataclass, field
from datetime import date, datetime, timezone
from pathlib import Path
from typing import TYPE_CHECKING, Any

from include.common.config import ConfigError, Settings, get_settings
from include.common.errors import NonRetriableError
from include.common.io import publish_dir, uri_to_path
from include.data.online_store import OnlineStore, get_online_store

if TYPE_CHECKING:  # heavy imports stay inside functions (DAG files import steps at parse time)
    import duckdb
    import pyarrow as pa

log = logging.getLogger(__name__)

SCHEMA = "feature_store"
GROUPS = f"{SCHEMA}.feature_groups"
INGESTIONS = f"{SCHEMA}.ingestions"
# Columns the store adds to every offline record (as SageMaker adds write_time & co.).
SYSTEM_COLUMNS = ("write_time", "ingestion_id", "source")
PARTITION_COLUMN = "event_date"
SPLITS = ("train", "validation", "test")
_IDENT = re.compile(r"^[a-z][a-z0-9_]{0,62}$")

# Feature types: name -> (pyarrow type factory, DuckDB type, accepted input kind).
# Timestamps are UTC without a zone (a zoned input is converted to UTC first).
FEATURE_TYPES: dict[str, tuple[str, str]] = {
    "string": ("VARCHAR", "string"),
    "int8": ("TINYINT", "integer"),
    "int32": ("INTEGER", "integer"),
    "int64": ("BIGINT", "integer"),
    "float64": ("DOUBLE", "number"),
    "date": ("DATE", "date"),
    "timestamp": ("TIMESTAMP", "timestamp"),
    "int32_list": ("INTEGER[]", "integer_list"),
    "int8_list": ("TINYINT[]", "integer_list"),
}


class FeatureStoreError(RuntimeError):
    """The feature store could not do what was asked (I/O, locked catalog, ...): a retry may help."""


class FeatureValidationError(NonRetriableError, ValueError):
    """Records or a definition that the store refuses; the message names the field/record."""


class SchemaChangeError(FeatureValidationError):
    """A feature group was re-created with a definition incompatible with the stored one."""


def _arrow_type(name: str) -> "pa.DataType":
    import pyarrow as pa

    return {"string": pa.string(), "int8": pa.int8(), "int32": pa.int32(), "int64": pa.int64(),
            "float64": pa.float64(), "date": pa.date32(), "timestamp": pa.timestamp("us"),
            "int32_list": pa.list_(pa.int32()), "int8_list": pa.list_(pa.int8())}[name]


# --------------------------------------------------------------------------- definitions


@dataclass(frozen=True)
class Feature:
    """One typed feature of a group."""

    name: str
    type: str
    description: str = ""

    def __post_init__(self) -> None:
        if not _IDENT.match(self.name) or self.name in SYSTEM_COLUMNS + (PARTITION_COLUMN,):
            raise FeatureValidationError(f"feature name {self.name!r}: expected [a-z][a-z0-9_]* and not one of "
                                         f"the store's own columns {SYSTEM_COLUMNS + (PARTITION_COLUMN,)}")
        if self.type not in FEATURE_TYPES:
            raise FeatureValidationError(f"feature {self.name!r}: type {self.type!r} is not one of "
                                         f"{', '.join(FEATURE_TYPES)}")


@dataclass(frozen=True)
class FeatureGroup:
    """A feature group definition (kept as code, stored in the catalog when created)."""

    name: str
    record_identifier: str
    event_time: str
    features: tuple[Feature, ...]
    description: str = ""
    version: int = 1
    _by_name: dict = field(default_factory=dict, init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        if not _IDENT.match(self.name):
            raise FeatureValidationError(f"feature group name {self.name!r}: expected [a-z][a-z0-9_]*")
        names = [f.name for f in self.features]
        dupes = sorted({n for n in names if names.count(n) > 1})
        if dupes:
            raise FeatureValidationError(f"feature group {self.name}: feature(s) defined twice: {', '.join(dupes)}")
        self._by_name.update({f.name: f for f in self.features})
        for role, name, want in (("record identifier", self.record_identifier, "string"),
                                 ("event time", self.event_time, "timestamp")):
            if name not in self._by_name:
                raise FeatureValidationError(f"feature group {self.name}: {role} {name!r} is not one of its features")
            if self._by_name[name].type != want:
                raise FeatureValidationError(f"feature group {self.name}: {role} {name!r} must be of type {want}, "
                                             f"not {self._by_name[name].type}")
        if not isinstance(self.version, int) or self.version < 1:
            raise FeatureValidationError(f"feature group {self.name}: version {self.version!r} must be an int >= 1")

    def feature(self, name: str) -> Feature:
        """The feature called ``name`` (``KeyError`` when unknown)."""
        return self._by_name[name]

    @property
    def feature_names(self) -> list[str]:
        """Feature names in definition order."""
        return [f.name for f in self.features]

    def to_dict(self) -> dict:
        """JSON-able definition (as stored in the catalog)."""
        return {"name": self.name, "record_identifier": self.record_identifier, "event_time": self.event_time,
                "features": [asdict(f) for f in self.features], "description": self.description,
                "version": self.version}

    @classmethod
    def from_dict(cls, data: dict) -> "FeatureGroup":
        """Inverse of :meth:`to_dict`."""
        return cls(name=data["name"], record_identifier=data["record_identifier"], event_time=data["event_time"],
                   features=tuple(Feature(**f) for f in data["features"]), description=data.get("description", ""),
                   version=int(data.get("version", 1)))


def check_compatible(stored: FeatureGroup, new: FeatureGroup) -> list[str]:
    """Features ``new`` adds to ``stored``; raises :class:`SchemaChangeError` naming the field
    when ``new`` removes or retypes a feature or changes the identifier or event time."""
    for role in ("record_identifier", "event_time"):
        if getattr(stored, role) != getattr(new, role):
            raise SchemaChangeError(f"feature group {new.name}: {role} changed from {getattr(stored, role)!r} to "
                                    f"{getattr(new, role)!r}; create a new feature group instead")
    for f in stored.features:
        if f.name not in new.feature_names:
            raise SchemaChangeError(f"feature group {new.name}: feature {f.name!r} was removed; stored records hold "
                                    "it - create a new feature group instead")
        if new.feature(f.name).type != f.type:
            raise SchemaChangeError(f"feature group {new.name}: feature {f.name!r} changed type from {f.type} to "
                                    f"{new.feature(f.name).type}; create a new feature group instead")
    return [n for n in new.feature_names if n not in stored.feature_names]


# The course's feature group: BERT inputs of each review, plus what training needs.
REVIEWS = FeatureGroup(
    name="reviews_features",
    record_identifier="review_id",
    event_time="event_time",
    description="BERT input features of each review (tokenised text, label, split), one record per review "
                "and feature computation; event_time = the day (UTC) whose data the features were computed from.",
    version=1,
    features=(
        Feature("review_id", "string", "Review identifier (record identifier)."),
        Feature("event_time", "timestamp", "When the record became true (UTC): the run's ds at 00:00."),
        Feature("date", "date", "Review date (the partition date when none was landed)."),
        Feature("product_category", "string", "Product category."),
        Feature("review_body", "string", "Review text, whitespace-normalised."),
        Feature("star_rating", "int8", "Star rating 1..5 (auxiliary training target)."),
        Feature("sentiment", "int8", "-1 negative (1-2 stars), 0 neutral (3), 1 positive (4-5)."),
        Feature("label_id", "int8", "Class id 0..2 (sentiment + 1)."),
        Feature("input_ids", "int32_list", "Token ids with special tokens, truncated, unpadded."),
        Feature("attention_mask", "int8_list", "1 per token of input_ids."),
        Feature("split_type", "string", "train | validation | test."),
    ),
)


# --------------------------------------------------------------------------- validation


def _kind(t: "pa.DataType") -> str:
    import pyarrow as pa

    if pa.types.is_integer(t):
        return "integer"
    if pa.types.is_floating(t):
        return "number"
    if pa.types.is_string(t) or pa.types.is_large_string(t):
        return "string"
    if pa.types.is_date(t):
        return "date"
    if pa.types.is_timestamp(t):
        return "timestamp"
    if (pa.types.is_list(t) or pa.types.is_large_list(t)) and pa.types.is_integer(t.value_type):
        return "integer_list"
    if pa.types.is_null(t):
        return "null"
    return str(t)


def validate_records(group: FeatureGroup, records: "pa.Table") -> "pa.Table":
    """``records`` cast to the group's types, or :class:`FeatureValidationError` naming the
    unknown feature, the feature of the wrong type, or the record without identifier or
    event time. Features a record lacks are null (as in SageMaker); nothing is written here."""
    import pyarrow as pa
    import pyarrow.compute as pc

    unknown = [c for c in records.column_names if c not in group.feature_names]
    if unknown:
        raise FeatureValidationError(f"feature group {group.name}: unknown feature(s) {', '.join(unknown)} "
                                     f"(known: {', '.join(group.feature_names)})")
    for required in (group.record_identifier, group.event_time):
        if required not in records.column_names:
            raise FeatureValidationError(f"feature group {group.name}: records lack the "
                                         f"{'record identifier' if required == group.record_identifier else 'event time'}"
                                         f" feature {required!r}")
    columns = []
    for f in group.features:
        want = _arrow_type(f.type)
        if f.name not in records.column_names:
            columns.append(pa.nulls(records.num_rows, want))
            continue
        col = records.column(f.name)
        got = _kind(col.type)
        accepted = FEATURE_TYPES[f.type][1]
        ok = got in (accepted, "null") or (accepted == "number" and got == "integer") or (
            accepted == "timestamp" and got == "date")
        if not ok:
            raise FeatureValidationError(f"feature group {group.name}: feature {f.name!r} is {col.type}, "
                                         f"expected {f.type}")
        if pa.types.is_timestamp(col.type) and col.type.tz is not None:
            col = pc.cast(col, pa.timestamp(col.type.unit))  # zoned -> UTC wall time (values are UTC already)
        try:
            columns.append(pc.cast(col, want, safe=True))
        except (pa.ArrowInvalid, pa.ArrowNotImplementedError) as exc:
            raise FeatureValidationError(f"feature group {group.name}: feature {f.name!r} does not fit {f.type}: "
                                         f"{exc}") from None
    table = pa.table(columns, names=group.feature_names)
    for required in (group.record_identifier, group.event_time):
        col = table.column(required)
        bad = pc.is_null(col)
        if required == group.record_identifier:
            bad = pc.or_(bad, pc.fill_null(pc.equal(pc.utf8_trim_whitespace(col), ""), False))
        if pc.any(bad).as_py():
            row = pc.index(bad, True).as_py()
            raise FeatureValidationError(f"feature group {group.name}: record {row} (0-based) has no "
                                         f"{'record identifier' if required == group.record_identifier else 'event time'}"
                                         f" ({required!r} is null or empty)")
    return table


# --------------------------------------------------------------------------- interface


class FeatureStore(ABC):
    """What the pipeline needs of a feature store; one implementation per backend."""

    @abstractmethod
    def create_feature_group(self, group: FeatureGroup) -> str:
        """Create ``group`` (``created``), or nothing when it exists with the same definition
        (``exists``), or add new features (``updated``); :class:`SchemaChangeError` otherwise."""

    @abstractmethod
    def describe_feature_group(self, name: str) -> FeatureGroup:
        """The stored definition of ``name``."""

    @abstractmethod
    def list_feature_groups(self) -> list[dict]:
        """Every group with its version, records, distinct identifiers and ingestions."""

    @abstractmethod
    def ingest(self, name: str, records: "pa.Table", source: str = "") -> dict:
        """Append ``records`` (validated first) to the offline store, then the online store."""

    @abstractmethod
    def point_in_time(self, name: str, as_of: datetime, record_ids: list[str] | None = None) -> "pa.Table":
        """Latest record per identifier with event time <= ``as_of`` (optionally only ``record_ids``)."""

    @abstractmethod
    def get_record(self, name: str, record_id: str) -> dict | None:
        """The online store's latest record of ``record_id``."""

    @abstractmethod
    def snapshot(self, name: str, source: str | None = None) -> tuple[str, datetime] | None:
        """``(source, latest event time)`` of the ingestions of ``source`` (a pipeline run), or of
        the most recent ingestion that named one when ``source`` is None; None when there is none."""

    @abstractmethod
    def batch_get_record(self, name: str, record_ids: list[str]) -> dict[str, dict]:
        """The online store's latest records of ``record_ids``."""


def get_feature_store(settings: Settings | None = None) -> FeatureStore:
    """The feature store of the configured backend (the one place that switches on it)."""
    settings = settings or get_settings()
    if settings.backend == "local":
        return LocalFeatureStore(settings)
    from include.common.aws import load_aws_config
    from include.data.sagemaker_feature_store import SageMakerFeatureStore

    return SageMakerFeatureStore(load_aws_config().validate())


def to_utc_naive(value: datetime | date | str) -> datetime:
    """A point in time as a naive UTC datetime (the offline store's timestamps)."""
    if isinstance(value, str):
        try:
            value = datetime.fromisoformat(value)
        except ValueError as exc:
            raise FeatureValidationError(f"as_of={value!r}: expected an ISO date or date-time") from exc
    if not isinstance(value, datetime):
        value = datetime(value.year, value.month, value.day)
    if value.tzinfo is not None:
        value = value.astimezone(timezone.utc).replace(tzinfo=None)
    return value


# --------------------------------------------------------------------------- local store


def _sql_str(text: str) -> str:
    return text.replace("'", "''")


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
        from include.data.catalog import connect  # waits on DuckDB's lock like every catalog user

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


def write_channels(group: FeatureGroup, table: "pa.Table", as_of: datetime, dest_uri: str) -> dict:
    """Write a point-in-time read as ``<dest>/<split>/part-00000.parquet`` (rows sorted by record
    identifier), published atomically; both backends' exports end here, so the training job reads
    the same files whichever store they came from."""
    import tempfile

    import duckdb

    con = duckdb.connect()
    try:
        con.register("pit_src", table)
        rows = dict(con.execute("SELECT split_type, count(*) FROM pit_src GROUP BY 1").fetchall())
        with tempfile.TemporaryDirectory() as tmp:
            for split in SPLITS:  # constants: safe to inline
                (Path(tmp) / split).mkdir()
                con.execute(f"COPY (SELECT * FROM pit_src WHERE split_type = '{split}' "
                            f"ORDER BY {group.record_identifier}) "
                            f"TO '{_sql_str(str(Path(tmp) / split / 'part-00000.parquet'))}' (FORMAT parquet)")
            publish_dir(Path(tmp), dest_uri)
    finally:
        con.close()
    counts = {s: int(rows.get(s, 0)) for s in SPLITS}
    log.info("exported %s as of %s to %s: %s", group.name, to_utc_naive(as_of), dest_uri, counts)
    return {"feature_group": group.name, "as_of": to_utc_naive(as_of).isoformat(), "uri": dest_uri, "rows": counts}


def _latest_sql(group: FeatureGroup, where: str = "true", partitions: str = "true") -> str:
    # Latest record per identifier: the winning (id, event time) keys from the two narrow
    # columns first, then one semi-join pass for the wide rows - ~1.5x faster than a window
    # over whole rows (benchmarks/feature_store.py). Keys are unique, so one row per id.
    # ``partitions`` prunes event_date folders (the same bound as ``where``, on the partition column).
    view, ident, etime = f"{SCHEMA}.{group.name}", group.record_identifier, group.event_time
    return (f"WITH latest AS (SELECT {ident}, max({etime}) AS {etime} FROM {view} WHERE {where} AND {partitions} "
            f"GROUP BY {ident}) SELECT v.* FROM {view} v SEMI JOIN latest l ON v.{ident} = l.{ident} "
            f"AND v.{etime} = l.{etime} WHERE {partitions}")


# --------------------------------------------------------------------------- pipeline glue


def run_event_time(ds: str) -> datetime:
    """The event time (and point-in-time ``as_of``) of a pipeline run for partition ``ds``."""
    return datetime.fromisoformat(ds)


def ingest_run_features(features_dir: Path, ds: str, source: str, channels_uri: str,
                        settings: Settings | None = None) -> dict:
    """Step 3's feature-store part: ingest the preprocess job's shards under
    ``features_dir/<split>/part-*.parquet`` with event time = ``ds`` 00:00 UTC, then export the
    point-in-time read as of that time for exactly those reviews to ``channels_uri/<split>/``,
    which the training and evaluation jobs read. A backfilled run for day D therefore trains on
    the records known at D, even when later runs stored newer versions of them."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    shards = sorted(features_dir.glob("*/part-*.parquet"))
    if not shards:
        raise FeatureStoreError(f"{features_dir}: no feature shards (<split>/part-*.parquet) to ingest")
    store = get_feature_store(settings)
    store.create_feature_group(REVIEWS)
    table = pa.concat_tables([pq.read_table(s) for s in shards], promote_options="permissive")
    as_of = run_event_time(ds)
    table = table.append_column("event_time", pa.array([as_of] * table.num_rows, pa.timestamp("us")))
    ingestion = store.ingest(REVIEWS.name, table, source=source)
    ids = table.column("review_id").to_pylist()
    export = store.export_point_in_time(REVIEWS.name, as_of, channels_uri, record_ids=ids)
    return {"feature_group": REVIEWS.name, "snapshot_id": source, "as_of": export["as_of"],
            "ingestion": ingestion, "channels_uri": channels_uri, "rows": export["rows"]}


def latest_snapshot(settings: Settings | None = None) -> str | None:
    """The pipeline run (ingestion ``source``) that most recently added records to ``reviews_features``."""
    found = get_feature_store(settings).snapshot(REVIEWS.name)
    return found[0] if found else None


def export_snapshot(snapshot_id: str, dest: Path, settings: Settings | None = None) -> dict[str, int]:
    """The point-in-time read as of the event time of run ``snapshot_id``'s ingestion, every record
    known then, as ``<dest>/<split>/part-00000.parquet``; rows per split. Raises
    :class:`FeatureStoreError` when the run ingested nothing or a split is empty."""
    store = get_feature_store(settings)
    found = store.snapshot(REVIEWS.name, snapshot_id)
    if found is None:
        raise FeatureStoreError(f"feature snapshot {snapshot_id!r}: no ingestion into {REVIEWS.name} by that run; "
                                "run review_sentiment_pipeline's preprocess first, or pass another snapshot_id")
    rows = store.export_point_in_time(REVIEWS.name, found[1], Path(dest).as_uri())["rows"]
    missing = [s for s in ("train", "validation", "test") if not rows.get(s)]
    if missing:
        raise FeatureStoreError(f"feature snapshot {snapshot_id!r} has no {', '.join(missing)} rows (it has {rows})")
    return rows


# --------------------------------------------------------------------------- CLI


def _print_table(columns: list[str], rows: list[tuple], limit: int = 200) -> None:
    def cell(v: Any) -> str:
        text = json.dumps(v, default=str) if isinstance(v, (list, dict)) else str(v)
        return text if len(text) <= 60 else text[:57] + "..."

    shown = [[cell(v) for v in r] for r in rows[:limit]]
    widths = [max([len(c)] + [len(r[i]) for r in shown]) for i, c in enumerate(columns)]
    print("  ".join(c.ljust(w) for c, w in zip(columns, widths, strict=True)))
    for r in shown:
        print("  ".join(v.ljust(w) for v, w in zip(r, widths, strict=True)))
    if len(rows) > limit:
        print(f"... {len(rows) - limit} more row(s)")


def main(argv: list[str] | None = None) -> int:
    """``list`` | ``describe NAME`` | ``query SQL`` | ``get NAME ID [ID ...]`` | ``rebuild-online NAME``."""
    parser = argparse.ArgumentParser(prog="python -m include.data.feature_store", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="cmd", required=True)
    sub.add_parser("list", help="feature groups with record counts")
    sub.add_parser("describe", help="a group's definition").add_argument("name")
    sub.add_parser("query", help="read-only SQL; groups are views feature_store.<name>").add_argument("sql")
    get = sub.add_parser("get", help="records from the online store")
    get.add_argument("name")
    get.add_argument("ids", nargs="+")
    sub.add_parser("rebuild-online", help="rebuild the online store from the offline store").add_argument("name")
    args = parser.parse_args(argv)
    store = get_feature_store()
    try:
        if args.cmd == "list":
            groups = store.list_feature_groups()
            if not groups:
                print("no feature group yet (the pipeline's preprocess step creates reviews_features)")
            else:
                _print_table(list(groups[0]), [tuple(g.values()) for g in groups])
        elif args.cmd == "describe":
            print(json.dumps(store.describe_feature_group(args.name).to_dict(), indent=1))
        elif args.cmd == "query":
            _print_table(*store.query(args.sql))
        elif args.cmd == "get":
            found = store.batch_get_record(args.name, args.ids)
            for rid in args.ids:
                print(json.dumps(found.get(rid)) if rid in found else f"{rid}: not in the online store")
        else:
            print(f"{store.rebuild_online(args.name)} record(s) written to the online store")
    except (FeatureValidationError, FeatureStoreError, ConfigError) as exc:
        print(f"ERROR: {exc}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s")
    sys.exit(main())
