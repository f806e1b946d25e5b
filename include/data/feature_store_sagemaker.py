"""The aws backend's feature store: SageMaker Feature Store, same interface as the local one.

:func:`include.data.feature_store.get_feature_store` returns :class:`SageMakerFeatureStore` on
``REVIEWS_BACKEND=aws``, so ``ingest_run_features`` (step 3) calls the same functions.

- **Definition**: the same :class:`~include.data.feature_store_base.FeatureGroup` (record identifier
  ``review_id``, event time ``event_time``, typed features) becomes ``CreateFeatureGroup`` with
  the online store enabled and the offline store in ``s3://<bucket>/<prefix>/feature-store/``
  registered as a Glue table in ``glue_database``. SageMaker has three feature types, so
  integers are ``Integral``, floats ``Fractional`` and dates, timestamps (ISO 8601, UTC) and
  token-id lists (JSON) ``String``; the full typed definition is kept beside the offline store
  (``feature-store/<group>/definition.json``) and a later create compares against it
  (``exists`` / ``updated`` with ``UpdateFeatureGroup`` / :class:`SchemaChangeError`).
- **Ingestion puts only new or changed records**: a content hash per record (its PutRecord
  values except the event time) is compared with a manifest of what the offline store holds,
  ``feature-store/<group>/manifest.parquet`` (record id, event time, hash per version put; tied
  to the group's ``ResolvedOutputS3Uri``). A record is put (``PutRecord``, a thread pool, to the
  online and offline stores) unless the version in force at its event time has the same hash:
  a re-run of a day puts nothing, a day with 5 changed reviews puts 5, a backfill before a
  stored version still lands. One GET and one conditional PUT (If-Match on the ETag: a
  concurrent ingestion is merged, not lost) per ingestion, no query. SageMaker's offline store
  lands in S3 minutes after ``PutRecord``; ``ingest`` waits (up to ``offline_store_wait_s``) until
  every record it put is readable there, and only then adds them to the manifest, so a crash
  re-puts (a duplicate the read drops) and never skips.
- **Point-in-time read**: the offline store's Parquet files (SageMaker's layout,
  ``.../year=/month=/day=/hour=/``, by event time) of the days up to ``as_of`` only: delimiter
  listings find the year, month and day prefixes in range, and only those days' objects are
  listed and read (the offline-store wait reads only the days it put). The latest record per
  identifier with event time <= ``as_of`` is kept (ties: the latest write; deleted records
  dropped) - the local store's semantics. Each ingestion is logged in
  ``feature-store/<group>/ingestions/`` (source run, event-time range of the batch, records put),
  which :meth:`SageMakerFeatureStore.snapshot` reads for the AutoML DAG's snapshot export.
  Why not Athena over the Glue table: moto runs no SQL, so that path could not be tested here,
  and the read needs every version up to ``as_of`` either way; the S3 read is exact and bounded.
- **Online store**: ``GetRecord`` / ``BatchGetRecord``, values typed back like the local online
  store's JSON (ints, lists, ``YYYY-MM-DD`` dates, ``YYYY-MM-DD HH:MM:SS`` timestamps).
"""
from __future__ import annotations

import hashlib
import io
import json
import logging
import time
import uuid
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from datetime import date, datetime
from functools import cached_property
from typing import TYPE_CHECKING

from include.common.aws import AwsConfig, split_s3_uri
from include.common.aws import write_bytes as s3_write
from include.data.feature_store_base import (
    REVIEWS,
    Feature,
    FeatureGroup,
    FeatureStore,
    FeatureStoreError,
    FeatureValidationError,
    SchemaChangeError,
    check_compatible,
    to_utc_naive,
    validate_records,
    write_channels,
)

if TYPE_CHECKING:
    import pyarrow as pa

log = logging.getLogger(__name__)

SAGEMAKER_TYPES = {"string": "String", "int8": "Integral", "int32": "Integral", "int64": "Integral",
                   "float64": "Fractional", "date": "String", "timestamp": "String",
                   "int32_list": "String", "int8_list": "String"}
_SQL_TYPES = {"string": "VARCHAR", "int8": "TINYINT", "int32": "INTEGER", "int64": "BIGINT", "float64": "DOUBLE",
              "date": "DATE", "int32_list": "INTEGER[]", "int8_list": "TINYINT[]"}
OFFLINE_COLUMNS = ("write_time", "api_invocation_time", "is_deleted")  # what SageMaker adds to each record
MANIFEST_COLUMNS = ("record_id", "event_time", "content_hash")
PUT_WORKERS = 8
POLL_S = 30.0


def iso_utc(value: datetime) -> str:
    """SageMaker's event-time format: ISO 8601 in UTC with milliseconds (``...T00:00:00.000Z``)."""
    return to_utc_naive(value).strftime("%Y-%m-%dT%H:%M:%S.%f")[:-3] + "Z"


def _as_string(value: object, ftype: str) -> str:
    if ftype == "timestamp":
        return iso_utc(value)
    if ftype == "date":
        return value.isoformat() if isinstance(value, (date, datetime)) else str(value)
    if ftype.endswith("_list"):
        return json.dumps(list(value))
    return str(value)


class SageMakerFeatureStore(FeatureStore):
    """:class:`FeatureStore` on SageMaker Feature Store (online + offline S3 store)."""

    def __init__(self, cfg: AwsConfig, sm=None, runtime=None, poll_s: float = POLL_S,
                 put_workers: int = PUT_WORKERS) -> None:
        self.cfg = cfg
        self._sm, self._runtime = sm, runtime
        self.poll_s = poll_s
        self.put_workers = put_workers
        self.last_read: dict = {}  # days and objects the last offline-store read listed

    @cached_property
    def sm(self):
        """The SageMaker control-plane client (CreateFeatureGroup, DescribeFeatureGroup)."""
        return self._sm or self.cfg.client("sagemaker")

    @cached_property
    def s3(self):
        """One S3 client for all reads (a new client per object costs ~0.1 s of model loading)."""
        return self.cfg.client("s3")

    def _read(self, uri: str) -> bytes:
        bucket, key = split_s3_uri(uri)
        return self.s3.get_object(Bucket=bucket, Key=key)["Body"].read()

    def _keys(self, uri: str) -> list[str]:
        bucket, prefix = split_s3_uri(uri)
        pages = self.s3.get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=prefix)
        return [o["Key"] for page in pages for o in page.get("Contents", [])]

    @cached_property
    def runtime(self):
        """The ``sagemaker-featurestore-runtime`` client (PutRecord, GetRecord, BatchGetRecord)."""
        return self._runtime or self.cfg.client("sagemaker-featurestore-runtime")

    # ------------------------------------------------------------ names and definitions
    def sagemaker_name(self, name: str) -> str:
        """The SageMaker feature group of our group ``name`` (``feature_group`` for reviews_features)."""
        return self.cfg.feature_group if name == REVIEWS.name else name

    def _definition_uri(self, name: str) -> str:
        return self.cfg.s3_uri(f"feature-store/{name}/definition.json")

    def _stored(self, name: str) -> FeatureGroup | None:
        from botocore.exceptions import ClientError

        try:
            return FeatureGroup.from_dict(json.loads(self._read(self._definition_uri(name))))
        except ClientError as exc:
            if exc.response.get("Error", {}).get("Code") in ("NoSuchKey", "404"):
                return None
            raise

    def _store_definition(self, group: FeatureGroup) -> None:
        s3_write(self.cfg, self._definition_uri(group.name), json.dumps(group.to_dict(), indent=1).encode(),
                 "application/json")

    @staticmethod
    def feature_definitions(features: tuple[Feature, ...] | list[Feature]) -> list[dict]:
        """``FeatureDefinitions`` of ``features`` (SageMaker's three types)."""
        return [{"FeatureName": f.name, "FeatureType": SAGEMAKER_TYPES[f.type]} for f in features]

    def create_request(self, group: FeatureGroup) -> dict:
        """The ``CreateFeatureGroup`` request for ``group``."""
        s3_config = {"S3Uri": self.cfg.s3_uri("feature-store")}
        online: dict = {"EnableOnlineStore": True}
        if self.cfg.kms_key_id:
            s3_config["KmsKeyId"] = self.cfg.kms_key_id
            online["SecurityConfig"] = {"KmsKeyId": self.cfg.kms_key_id}
        return {
            "FeatureGroupName": self.sagemaker_name(group.name),
            "RecordIdentifierFeatureName": group.record_identifier,
            "EventTimeFeatureName": group.event_time,
            "FeatureDefinitions": self.feature_definitions(group.features),
            "OnlineStoreConfig": online,
            "OfflineStoreConfig": {
                "S3StorageConfig": s3_config, "DisableGlueTableCreation": False,
                "DataCatalogConfig": {"Catalog": "AwsDataCatalog", "Database": self.cfg.glue_database,
                                      "TableName": group.name}},
            "RoleArn": self.cfg.role_arn,
            "Description": group.description[:128],
            "Tags": [{"Key": "project", "Value": "review-sentiment"},
                     {"Key": "definition-version", "Value": str(group.version)}],
        }

    def _describe(self, name: str) -> dict:
        return self.sm.describe_feature_group(FeatureGroupName=self.sagemaker_name(name))

    def _wait_created(self, name: str, timeout_s: float = 900) -> dict:
        started = time.monotonic()
        while True:
            desc = self._describe(name)
            status = desc.get("FeatureGroupStatus")
            if status == "Created":
                return desc
            if status in ("CreateFailed", "DeleteFailed", "Deleting"):
                raise FeatureStoreError(f"feature group {desc['FeatureGroupName']} is {status}: "
                                        f"{desc.get('FailureReason') or 'no reason given'}")
            if time.monotonic() - started > timeout_s:
                raise FeatureStoreError(f"feature group {desc['FeatureGroupName']} still {status} after "
                                        f"{timeout_s:.0f}s")
            log.info("feature group %s is %s", desc["FeatureGroupName"], status)
            time.sleep(self.poll_s)

    def _check_existing(self, group: FeatureGroup, desc: dict) -> list[Feature]:
        """Features ``group`` adds to the SageMaker group ``desc`` (definition lost or made by hand);
        :class:`SchemaChangeError` naming the field when they disagree."""
        theirs = {d["FeatureName"]: d["FeatureType"] for d in desc.get("FeatureDefinitions", [])}
        for role in ("RecordIdentifierFeatureName", "EventTimeFeatureName"):
            ours = group.record_identifier if role.startswith("Record") else group.event_time
            if desc.get(role) != ours:
                raise SchemaChangeError(f"feature group {desc['FeatureGroupName']}: {role} is {desc.get(role)!r} in "
                                        f"SageMaker, {ours!r} in the definition; create a new feature group instead")
        for fname, ftype in theirs.items():
            if fname not in group.feature_names:
                raise SchemaChangeError(f"feature group {desc['FeatureGroupName']}: feature {fname!r} exists in "
                                        "SageMaker but not in the definition; create a new feature group instead")
            if SAGEMAKER_TYPES[group.feature(fname).type] != ftype:
                raise SchemaChangeError(f"feature group {desc['FeatureGroupName']}: feature {fname!r} is {ftype} in "
                                        f"SageMaker, {group.feature(fname).type} in the definition")
        return [f for f in group.features if f.name not in theirs]

    # ------------------------------------------------------------ interface: definitions
    def create_feature_group(self, group: FeatureGroup) -> str:
        """See :meth:`FeatureStore.create_feature_group`."""
        from botocore.exceptions import ClientError

        stored = self._stored(group.name)
        if stored is not None and stored.to_dict() == group.to_dict():
            return "exists"
        if stored is not None:
            added = check_compatible(stored, group)
            self._add_features(group, [group.feature(n) for n in added])
            return "updated"
        try:
            self.sm.create_feature_group(**self.create_request(group))
            status = "created"
        except ClientError as exc:
            if exc.response.get("Error", {}).get("Code") != "ResourceInUse":
                raise
            status = "exists"  # made earlier (a crash before definition.json) or by hand: compare
        desc = self._wait_created(group.name)
        added = self._check_existing(group, desc)
        if added:
            self._add_features(group, added)
            status = "updated"
        self._store_definition(group)
        log.info("feature group %s (SageMaker %s) %s; offline store %s", group.name, desc["FeatureGroupName"], status,
                 desc.get("OfflineStoreConfig", {}).get("S3StorageConfig", {}).get("ResolvedOutputS3Uri"))
        return status

    def _add_features(self, group: FeatureGroup, added: list[Feature]) -> None:
        if added:
            self.sm.update_feature_group(FeatureGroupName=self.sagemaker_name(group.name),
                                         FeatureAdditions=self.feature_definitions(added))
            log.info("feature group %s: added %s", group.name, ", ".join(f.name for f in added))
        self._store_definition(group)

    def describe_feature_group(self, name: str) -> FeatureGroup:
        """See :meth:`FeatureStore.describe_feature_group`."""
        stored = self._stored(name)
        if stored is None:
            raise FeatureValidationError(f"feature group {name!r} does not exist (no {self._definition_uri(name)}); "
                                         "create it first")
        return stored

    def list_feature_groups(self) -> list[dict]:
        """See :meth:`FeatureStore.list_feature_groups` (from ListFeatureGroups; counts are not
        known without scanning the offline store, so they are None)."""
        out = []
        for page in self.sm.get_paginator("list_feature_groups").paginate():
            for g in page.get("FeatureGroupSummaries", []):
                out.append({"name": g["FeatureGroupName"], "version": None, "records": None, "record_ids": None,
                            "ingestions": None, "online_records": None, "status": g.get("FeatureGroupStatus")})
        return out

    # ------------------------------------------------------------ interface: ingestion
    def record(self, group: FeatureGroup, row: dict) -> list[dict]:
        """One row as PutRecord's ``Record`` (null features left out, as SageMaker wants)."""
        return [{"FeatureName": f.name, "ValueAsString": _as_string(row[f.name], f.type)}
                for f in group.features if row.get(f.name) is not None]

    def content_hash(self, group: FeatureGroup, record: list[dict]) -> str:
        """What a record holds, as a hash: its PutRecord values except the event time (a review
        landed again on a later day with the same features is not a change)."""
        values = sorted((r["FeatureName"], r["ValueAsString"]) for r in record if r["FeatureName"] != group.event_time)
        return hashlib.sha256(json.dumps(values, ensure_ascii=False).encode()).hexdigest()[:32]

    def ingest(self, name: str, records: "pa.Table", source: str = "") -> dict:
        """See :meth:`FeatureStore.ingest`: PutRecord to both stores the records that are new or
        changed (the manifest's verdict, see :meth:`_changed`), then wait for the offline store."""
        t0 = time.monotonic()
        group = self.describe_feature_group(name)
        table = validate_records(group, records)
        keys = list(zip(table.column(group.record_identifier).to_pylist(),
                        table.column(group.event_time).to_pylist(), strict=True))
        if len(set(keys)) != len(keys):
            dup = next(k for k, n in Counter(keys).items() if n > 1)
            raise FeatureValidationError(f"feature group {name}: record {group.record_identifier}={dup[0]!r} appears "
                                         f"twice with event time {dup[1]}; one record per (identifier, event time)")
        fg_name = self.sagemaker_name(name)
        offline_uri = self.offline_uri(name)
        manifest = self._load_manifest(name, offline_uri)
        puts = []  # (key, PutRecord's Record, content hash) of the new or changed records
        for key, row in zip(keys, table.to_pylist(), strict=True):
            record = self.record(group, row)
            digest = self.content_hash(group, record)
            if _changed(manifest[0], key, digest):
                puts.append((key, record, digest))
        done = 0
        last_log = time.monotonic()

        def put(item: tuple) -> None:
            self.runtime.put_record(FeatureGroupName=fg_name, Record=item[1], TargetStores=["OnlineStore", "OfflineStore"])

        with ThreadPoolExecutor(max_workers=self.put_workers) as pool:
            for _ in pool.map(put, puts):
                done += 1
                if time.monotonic() - last_log > 10:
                    rate = done / (time.monotonic() - t0)
                    log.info("PutRecord %d/%d into %s (%.0f records/s, ETA %.0fs)", done, len(puts), fg_name, rate,
                             (len(puts) - done) / rate)
                    last_log = time.monotonic()
        put_s = time.monotonic() - t0
        self._wait_offline(group, [key for key, _, _ in puts])
        if puts:  # only what the offline store shows: a crash before this re-puts, never skips
            self._save_manifest(name, offline_uri, manifest, [(key, digest) for key, _, digest in puts])
        if keys:  # the ingestion log (what snapshot() reads): the batch's event times, put or unchanged
            events = [to_utc_naive(et) for _, et in keys]
            stamp = f"{time.strftime('%Y%m%dT%H%M%S')}-{uuid.uuid4().hex[:10]}"
            s3_write(self.cfg, self.cfg.s3_uri(f"feature-store/{name}/ingestions/{stamp}.json"), json.dumps(
                {"source": source, "records": len(puts), "offered": len(keys), "min_event_time": min(events).isoformat(),
                 "max_event_time": max(events).isoformat(), "committed_at": time.time()}).encode(),
                "application/json")
        result = {"feature_group": name, "ingestion_id": None, "source": source, "records": len(puts),
                  "duplicates_skipped": len(keys) - len(puts), "files": [], "put_s": round(put_s, 3),
                  "online_records_written": len(puts), "wall_s": round(time.monotonic() - t0, 3)}
        log.info("put %d new or changed record(s) of %d into %s in %.1fs (%d unchanged, skipped); offline store "
                 "caught up after %.1fs", len(puts), len(keys), fg_name, put_s, len(keys) - len(puts), result["wall_s"])
        return result

    # ------------------------------------------------------------ the manifest of what the store holds
    def _manifest_uri(self, name: str) -> str:
        return self.cfg.s3_uri(f"feature-store/{name}/manifest.parquet")

    def _load_manifest(self, name: str, offline_uri: str) -> tuple[dict[str, list[tuple[datetime, str]]], str | None]:
        """The versions the offline store holds, ``{record id: [(event time, content hash), ...]}``,
        and the manifest's ETag (None: no manifest). A manifest of another offline store (the group
        was deleted and made again) counts as none: every record is put once more."""
        import pyarrow.parquet as pq
        from botocore.exceptions import ClientError

        bucket, key = split_s3_uri(self._manifest_uri(name))
        try:
            obj = self.s3.get_object(Bucket=bucket, Key=key)
        except ClientError as exc:
            if exc.response.get("Error", {}).get("Code") in ("NoSuchKey", "404"):
                return {}, None
            raise
        table = pq.read_table(io.BytesIO(obj["Body"].read()))
        if (table.schema.metadata or {}).get(b"offline_uri", b"").decode() != offline_uri:
            log.warning("feature group %s: the manifest is of another offline store: every record is put again", name)
            return {}, obj["ETag"]
        versions: dict[str, list[tuple[datetime, str]]] = {}
        for rid, et, digest in zip(*(table.column(c).to_pylist() for c in MANIFEST_COLUMNS), strict=True):
            versions.setdefault(rid, []).append((et, digest))
        return versions, obj["ETag"]

    def _save_manifest(self, name: str, offline_uri: str, manifest: tuple[dict, str | None],
                       added: list[tuple[tuple, str]], attempts: int = 5) -> None:
        """Add the versions just put and write the manifest back, conditionally on the ETag read
        (S3's If-Match / If-None-Match): a concurrent ingestion's write is read again and merged,
        never lost."""
        import pyarrow as pa
        import pyarrow.parquet as pq
        from botocore.exceptions import ClientError

        bucket, key = split_s3_uri(self._manifest_uri(name))
        versions, etag = manifest
        for attempt in range(attempts):
            merged = {rid: dict(vs) for rid, vs in versions.items()}
            for (rid, et), digest in added:
                merged.setdefault(rid, {})[to_utc_naive(et)] = digest
            rows = [(rid, et, digest) for rid, vs in merged.items() for et, digest in vs.items()]
            table = pa.table({"record_id": pa.array([r[0] for r in rows], pa.string()),
                              "event_time": pa.array([r[1] for r in rows], pa.timestamp("us")),
                              "content_hash": pa.array([r[2] for r in rows], pa.string())},
                             metadata={"offline_uri": offline_uri})
            buf = io.BytesIO()
            pq.write_table(table, buf)
            condition = {"IfMatch": etag} if etag else {"IfNoneMatch": "*"}
            try:
                self.s3.put_object(Bucket=bucket, Key=key, Body=buf.getvalue(), **condition, **self.cfg.sse())
                return
            except ClientError as exc:
                if exc.response.get("Error", {}).get("Code") not in ("PreconditionFailed", "ConditionalRequestConflict",
                                                                     "412", "409") or attempt == attempts - 1:
                    raise
            log.info("feature group %s: the manifest changed meanwhile (another ingestion): merging", name)
            versions, etag = self._load_manifest(name, offline_uri)

    def _wait_offline(self, group: FeatureGroup, keys: list[tuple]) -> None:
        if not keys:
            return
        wanted = {(rid, to_utc_naive(et)) for rid, et in keys}
        started = time.monotonic()
        while True:
            table = self._offline_records(group, max(et for _, et in wanted), min(et for _, et in wanted))
            present = set(zip(table.column(group.record_identifier).to_pylist(),
                              table.column(group.event_time).to_pylist(), strict=True)) if table.num_rows else set()
            missing = len(wanted - present)
            if not missing:
                return
            waited = time.monotonic() - started
            if waited > self.cfg.offline_store_wait_s:
                raise FeatureStoreError(f"feature group {group.name}: {missing} of {len(wanted)} record(s) put are not "
                                        f"in the offline store after {waited:.0f}s (offline_store_wait_s); "
                                        "re-run the task - the records are kept, a re-put adds nothing a read sees")
            log.info("waiting for SageMaker's offline store: %d of %d record(s) not there yet (%.0fs)", missing,
                     len(wanted), waited)
            time.sleep(self.poll_s)

    # ------------------------------------------------------------ interface: reads
    def offline_uri(self, name: str) -> str:
        """Where SageMaker writes the group's offline store (``ResolvedOutputS3Uri``)."""
        return self._describe(name)["OfflineStoreConfig"]["S3StorageConfig"]["ResolvedOutputS3Uri"]

    def _children(self, uri: str) -> list[str]:
        """The "folders" right below the prefix ``uri`` (one delimiter listing, no objects)."""
        bucket, prefix = split_s3_uri(uri)
        pages = self.s3.get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=prefix, Delimiter="/")
        return [p["Prefix"] for page in pages for p in page.get("CommonPrefixes", [])]

    def _day_prefixes(self, root: str, first: date, last: date) -> list[str]:
        """The offline store's ``year=/month=/day=`` prefixes from ``first`` to ``last``, found by
        delimiter listings of the years, then the months and days in range: no object outside
        those days is listed (SageMaker partitions by event time)."""
        bucket, _ = split_s3_uri(root)
        out = []

        def value(prefix: str) -> int:
            return int(prefix.rstrip("/").rsplit("=", 1)[1])

        for year in self._children(root):
            if not first.year <= value(year) <= last.year:
                continue
            for month in self._children(f"s3://{bucket}/{year}"):
                ym = (value(year), value(month))
                if not (first.year, first.month) <= ym <= (last.year, last.month):
                    continue
                out += [day for day in self._children(f"s3://{bucket}/{month}")
                        if first <= date(*ym, value(day)) <= last]
        return out

    def _offline_records(self, group: FeatureGroup, up_to: datetime, since: datetime | None = None) -> "pa.Table":
        """Every offline-store row in the day partitions up to ``up_to``'s (from ``since``'s when given),
        cast back to the group's types. Only those days' objects are listed and read
        (:meth:`_day_prefixes`); ``last_read`` says how many."""
        import pyarrow as pa
        import pyarrow.parquet as pq

        root = self.offline_uri(group.name).rstrip("/") + "/"
        bucket, _ = split_s3_uri(root)
        last = to_utc_naive(up_to).date()
        first = to_utc_naive(since).date() if since is not None else date.min
        keys = [k for prefix in self._day_prefixes(root, first, last) for k in self._keys(f"s3://{bucket}/{prefix}")
                if k.endswith(".parquet")]
        self.last_read = {"days": len({k.rsplit("/hour=", 1)[0] for k in keys}), "objects": len(keys)}
        tables = [pq.read_table(io.BytesIO(self._read(f"s3://{bucket}/{key}"))) for key in keys]
        if not tables:
            return pa.table({group.record_identifier: pa.array([], pa.string()),
                             group.event_time: pa.array([], pa.timestamp("us"))})
        import duckdb

        con = duckdb.connect()
        try:
            raw = pa.concat_tables(tables, promote_options="permissive")
            con.register("raw", raw)
            return con.sql(self._typed_sql(group, "raw", set(raw.column_names))).to_arrow_table()
        finally:
            con.close()

    @staticmethod
    def _typed_sql(group: FeatureGroup, source: str, present: set[str]) -> str:
        # SageMaker's offline store holds String / Integral / Fractional: cast back to our types.
        cols = []
        for f in group.features:
            if f.name not in present:  # a feature no stored record has (e.g. added later)
                cols.append(f"CAST(NULL AS {_SQL_TYPES.get(f.type, 'TIMESTAMP')}) AS {f.name}")
            elif f.type == "timestamp":
                cols.append(f"CAST(replace(CAST({f.name} AS VARCHAR), 'Z', '') AS TIMESTAMP) AS {f.name}")
            else:
                cols.append(f"CAST({f.name} AS {_SQL_TYPES[f.type]}) AS {f.name}")
        extra = ", ".join(f"{c}" for c in OFFLINE_COLUMNS)
        return f"SELECT {', '.join(cols)}, {extra} FROM {source}"

    def point_in_time(self, name: str, as_of: datetime, record_ids: list[str] | None = None) -> "pa.Table":
        """See :meth:`FeatureStore.point_in_time` (the offline store's Parquet on S3)."""
        import duckdb
        import pyarrow as pa

        group = self.describe_feature_group(name)
        as_of = to_utc_naive(as_of)
        offline = self._offline_records(group, as_of)
        ident, etime = group.record_identifier, group.event_time
        if not offline.num_rows:
            return pa.table({f.name: pa.array([], _arrow(f.type)) for f in group.features})
        con = duckdb.connect()
        try:
            con.register("offline", offline)
            where = f"{etime} <= $as_of"
            if record_ids is not None:
                con.register("wanted", pa.table({"id": pa.array(record_ids, pa.string())}))
                where += f" AND {ident} IN (SELECT id FROM wanted)"
            return con.sql(
                f"""SELECT {', '.join(group.feature_names)} FROM (
                        SELECT *, row_number() OVER (PARTITION BY {ident}
                                                     ORDER BY {etime} DESC, write_time DESC,
                                                              api_invocation_time DESC) AS rn
                        FROM offline WHERE {where})
                    WHERE rn = 1 AND NOT coalesce(is_deleted, false) ORDER BY {ident}""",
                params={"as_of": as_of}).to_arrow_table()
        finally:
            con.close()

    def export_point_in_time(self, name: str, as_of: datetime, dest_uri: str,
                             record_ids: list[str] | None = None) -> dict:
        """The point-in-time read as ``<dest>/<split>/part-00000.parquet``, as the local store writes it."""
        group = self.describe_feature_group(name)
        if "split_type" not in group.feature_names:
            raise FeatureValidationError(f"feature group {name}: has no split_type feature to export channels by")
        return write_channels(group, self.point_in_time(name, as_of, record_ids), as_of, dest_uri)

    def snapshot(self, name: str, source: str | None = None) -> tuple[str, datetime] | None:
        """See :meth:`FeatureStore.snapshot` (from the ingestion log beside the offline store)."""
        log_uri = self.cfg.s3_uri(f"feature-store/{name}/ingestions/")
        entries = [json.loads(self._read(f"s3://{split_s3_uri(log_uri)[0]}/{k}"))
                   for k in sorted(self._keys(log_uri))]
        if source is None:
            named = [e for e in entries if e.get("source")]
            if not named:
                return None
            source = max(named, key=lambda e: e["committed_at"])["source"]
        events = [datetime.fromisoformat(e["max_event_time"]) for e in entries if e.get("source") == source]
        return (source, max(events)) if events else None

    def _typed(self, group: FeatureGroup, record: list[dict]) -> dict:
        out: dict = {f.name: None for f in group.features}
        for item in record:
            name, value = item["FeatureName"], item.get("ValueAsString")
            if name not in out or value is None:
                continue
            ftype = group.feature(name).type
            if ftype.endswith("_list"):
                out[name] = json.loads(value)
            elif ftype.startswith("int"):
                out[name] = int(value)
            elif ftype == "float64":
                out[name] = float(value)
            elif ftype == "timestamp":
                out[name] = str(to_utc_naive(value.replace("Z", "+00:00")))
            else:
                out[name] = value
        return out

    def get_record(self, name: str, record_id: str) -> dict | None:
        """See :meth:`FeatureStore.get_record` (GetRecord on the online store)."""
        group = self.describe_feature_group(name)
        resp = self.runtime.get_record(FeatureGroupName=self.sagemaker_name(name),
                                       RecordIdentifierValueAsString=str(record_id))
        return self._typed(group, resp["Record"]) if resp.get("Record") else None

    def batch_get_record(self, name: str, record_ids: list[str]) -> dict[str, dict]:
        """See :meth:`FeatureStore.batch_get_record` (BatchGetRecord, 100 identifiers a call)."""
        group = self.describe_feature_group(name)
        fg_name = self.sagemaker_name(name)
        out: dict[str, dict] = {}
        ids = [str(r) for r in dict.fromkeys(record_ids)]
        for i in range(0, len(ids), 100):
            resp = self.runtime.batch_get_record(
                Identifiers=[{"FeatureGroupName": fg_name, "RecordIdentifiersValueAsString": ids[i:i + 100]}])
            if resp.get("Errors"):
                first = resp["Errors"][0]
                raise FeatureStoreError(f"BatchGetRecord on {fg_name}: {len(resp['Errors'])} error(s), first "
                                        f"{first.get('ErrorCode')}: {first.get('ErrorMessage')}")
            for rec in resp.get("Records", []):
                out[rec["RecordIdentifierValueAsString"]] = self._typed(group, rec["Record"])
        return out


def _changed(versions: dict[str, list[tuple[datetime, str]]], key: tuple, digest: str) -> bool:
    """Whether a record must be put: unless the store's version in force at its event time (the
    latest one at or before it, what a point-in-time read there returns) holds the same content.
    So a re-run puts nothing, and a backfill before a stored version still lands."""
    rid, et = key
    et = to_utc_naive(et)
    earlier = [v for v in versions.get(rid, ()) if v[0] <= et]
    return not earlier or max(earlier)[1] != digest


def _arrow(ftype: str) -> "pa.DataType":
    from include.data.feature_store_base import _arrow_type

    return _arrow_type(ftype)
