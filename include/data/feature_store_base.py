"""Feature store: feature groups kept as code, an offline and an online store, point-in-time reads.

Shaped like SageMaker Feature Store (the course's first lab): a :class:`FeatureGroup` has a
name, a record identifier (``review_id``), an event time, typed features, a description and a
version; ``create_feature_group`` twice is a no-op, an incompatible change is an error that
names the field. The interface is :class:`FeatureStore` (this module, with the definitions and checks both
backends share); ``include/data/feature_store.py`` picks the implementation from the backend
(``local`` = ``feature_store_local.py``; ``aws`` = SageMaker Feature Store,
``feature_store_sagemaker.py``).
"""
from __future__ import annotations

import logging
import re
from abc import ABC, abstractmethod
from dataclasses import asdict, dataclass, field
from datetime import date, datetime, timezone
from pathlib import Path
from typing import TYPE_CHECKING

from include.common.errors import NonRetriableError
from include.common.io import publish_dir

if TYPE_CHECKING:  # heavy imports stay inside functions (DAG files import steps at parse time)
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

    # ------------------------------------------------------------ the pipeline's use, on either backend

    def ingest_run_features(self, features_dir: Path, ds: str, source: str, channels_uri: str) -> dict:
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
        self.create_feature_group(REVIEWS)
        table = pa.concat_tables([pq.read_table(s) for s in shards], promote_options="permissive")
        as_of = run_event_time(ds)
        table = table.append_column("event_time", pa.array([as_of] * table.num_rows, pa.timestamp("us")))
        ingestion = self.ingest(REVIEWS.name, table, source=source)
        ids = table.column("review_id").to_pylist()
        export = self.export_point_in_time(REVIEWS.name, as_of, channels_uri, record_ids=ids)
        return {"feature_group": REVIEWS.name, "snapshot_id": source, "as_of": export["as_of"],
                "ingestion": ingestion, "channels_uri": channels_uri, "rows": export["rows"]}

    def latest_snapshot(self) -> str | None:
        """The pipeline run (ingestion ``source``) that most recently added records to ``reviews_features``."""
        found = self.snapshot(REVIEWS.name)
        return found[0] if found else None

    def export_snapshot(self, snapshot_id: str, dest: Path) -> dict[str, int]:
        """The point-in-time read as of the event time of run ``snapshot_id``'s ingestion, every record
        known then, as ``<dest>/<split>/part-00000.parquet``; rows per split. Raises
        :class:`FeatureStoreError` when the run ingested nothing or a split is empty."""
        found = self.snapshot(REVIEWS.name, snapshot_id)
        if found is None:
            raise FeatureStoreError(f"feature snapshot {snapshot_id!r}: no ingestion into {REVIEWS.name} by that run; "
                                    "run review_sentiment_pipeline's preprocess first, or pass another snapshot_id")
        rows = self.export_point_in_time(REVIEWS.name, found[1], Path(dest).as_uri())["rows"]
        missing = [s for s in ("train", "validation", "test") if not rows.get(s)]
        if missing:
            raise FeatureStoreError(f"feature snapshot {snapshot_id!r} has no {', '.join(missing)} rows (it has {rows})")
        return rows


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


def _sql_str(text: str) -> str:
    return text.replace("'", "''")


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


def run_event_time(ds: str) -> datetime:
    """The event time (and point-in-time ``as_of``) of a pipeline run for partition ``ds``."""
    return datetime.fromisoformat(ds)
