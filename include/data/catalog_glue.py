"""The data catalog on the aws backend: Parquet on S3, tables and partitions in the Glue Data
Catalog, SQL through Athena (awswrangler). Same interface and the same write-audit-publish as
the DuckDB catalog (``include/data/catalog_duckdb.py``); chosen by ``include/data/catalog.py``.

Where things live (``<root>`` = ``s3://<bucket>/<prefix>``, Glue database ``glue_database``):

- landing zone: ``<root>/landing/reviews/ds=<ds>/*.csv``.
- ``reviews_staging`` (partition ``delivery_id``): a delivery waiting for the gate (or refused
  by it), one Parquet object under ``<root>/staging/reviews/delivery_id=<id>/``.
- ``reviews_raw`` (partition ``ds``): the published partitions. Partition ``ds=<ds>`` points at
  ``<root>/reviews/ds=<ds>/<delivery_id>/``; its Glue parameters hold the bookkeeping the local
  ``reviews.partitions`` table holds (delivery, content hash, rows, last validation).
- ``reviews_quarantine`` (partition ``delivery_id``): rows that failed a row-level rule.
- delivery records (status staged / published / rejected / superseded):
  ``<root>/catalog/deliveries/ds=<ds>/<delivery_id>.json``.

Registration downloads each file and runs the local file checks on it before anything is
written, then reads it with the local CSV loader (same line numbers). The quality gate reads
the audited rows into an in-memory DuckDB holding the catalog's tables
(``catalog_base.memory_catalog``), so the same SQL rules and GX suite run. Publishing copies the
staged object under the day's prefix and then points the Glue partition at it - the swap: an
Athena reader sees the old delivery or the new one, never a mix - and only then deletes the
previous delivery's objects. The clean export runs ``catalog_base.CLEAN_SELECT`` the same way.

The analysis questions (DuckDB dialect) reach Athena through :func:`athena_sql`, the one place
that knows the dialect differences. boto3 / awswrangler / pyarrow are imported lazily.
"""
from __future__ import annotations

import io
import json
import logging
import re
import tempfile
import time
from datetime import date, datetime, timezone
from pathlib import Path
from typing import TYPE_CHECKING, Any

from include.common import aws
from include.common.config import Settings
from include.common.io import is_s3
from include.data import catalog_base
from include.data.catalog_base import CatalogError, RegistrationError
from include.data.schema import RAW_COLUMNS

if TYPE_CHECKING:
    import pandas as pd

log = logging.getLogger(__name__)

RAW_TABLE, STAGING_TABLE, QUARANTINE_TABLE = "reviews_raw", "reviews_staging", "reviews_quarantine"
PART = "part-00000.parquet"
# Columns of the Parquet objects: a staged delivery (copied unchanged when published) and a
# quarantine partition. Partition columns are in the files too (Athena reads by name).
ROW_COLUMNS = (*((c, "string") for c in RAW_COLUMNS), ("ds", "string"), ("source_file", "string"),
               ("source_line", "bigint"), ("delivery_id", "string"))
QUARANTINE_COLUMNS = (("ds", "string"), ("review_id", "string"), ("rule", "string"), ("source_file", "string"),
                      ("source_line", "bigint"), ("value", "string"), ("run_id", "string"),
                      ("delivery_id", "string"))
# Glue table -> (folder below the root, partition key, DuckDB table whose comments document it)
TABLES = {RAW_TABLE: ("reviews/", "ds", catalog_base.RAW),
          STAGING_TABLE: ("staging/reviews/", "delivery_id", catalog_base.STAGING),
          QUARANTINE_TABLE: ("quarantine/reviews/", "delivery_id", catalog_base.QUARANTINE)}


class GlueCatalog:
    """The aws backend's catalog: S3 objects, Glue tables and partitions, Athena for SQL."""

    def __init__(self, settings: Settings, cfg: aws.AwsConfig | None = None) -> None:
        self.settings = settings
        self.cfg = (cfg or aws.load_aws_config()).validate()
        self.database = self.cfg.glue_database
        self._s3 = self.cfg.client("s3")
        self._glue = self.cfg.client("glue")
        self._columns: dict[str, list[dict]] = {}  # Glue table -> its columns, once the tables exist

    # ------------------------------------------------------------------ addresses

    def table_uri(self, table: str) -> str:
        """S3 location of a Glue table."""
        return self.cfg.s3_uri(TABLES[table][0])

    def published_uri(self, ds: str, delivery_id: str) -> str:
        """Folder of a published delivery: ``<root>/reviews/ds=<ds>/<delivery_id>/``."""
        return self.cfg.s3_uri(f"reviews/ds={ds}/{delivery_id}/")

    def _partition_uri(self, table: str, value: str) -> str:
        return f"{self.table_uri(table)}{TABLES[table][1]}={value}/"

    def _delivery_uri(self, ds: str, delivery_id: str) -> str:
        return self.cfg.s3_uri(f"catalog/deliveries/ds={ds}/{delivery_id}.json")

    # ------------------------------------------------------------------ Glue

    def ensure_tables(self) -> None:
        """Create the Glue database and the three tables when missing (column comments from the
        local catalog's, so both backends document the same columns)."""
        from botocore.exceptions import ClientError

        if self._columns:
            return
        try:
            self._glue.create_database(DatabaseInput={
                "Name": self.database, "Description": "Review-sentiment data catalog (include/data/catalog_glue.py)"})
        except ClientError as exc:
            if exc.response["Error"]["Code"] != "AlreadyExistsException":
                raise
        existing = {t["Name"] for page in self._glue.get_paginator("get_tables").paginate(DatabaseName=self.database)
                    for t in page["TableList"]}
        for name, (_, key, documented) in TABLES.items():
            if name in existing:
                continue
            text, docs = catalog_base.COMMENTS[documented]
            columns = QUARANTINE_COLUMNS if name == QUARANTINE_TABLE else ROW_COLUMNS
            self._glue.create_table(DatabaseName=self.database, TableInput={
                "Name": name, "Description": text[:2048], "TableType": "EXTERNAL_TABLE",
                "Parameters": {"classification": "parquet", "EXTERNAL": "TRUE"},
                "PartitionKeys": [{"Name": key, "Type": "string", "Comment": docs.get(key, "")[:255]}],
                "StorageDescriptor": self._storage(self.table_uri(name), [
                    {"Name": c, "Type": t, "Comment": docs.get(c, "")[:255]} for c, t in columns if c != key])})
        for name in TABLES:
            self._columns[name] = self._glue.get_table(DatabaseName=self.database,
                                                       Name=name)["Table"]["StorageDescriptor"]["Columns"]

    @staticmethod
    def _storage(location: str, columns: list[dict] | None = None) -> dict:
        sd = {"Location": location,
              "InputFormat": "org.apache.hadoop.hive.ql.io.parquet.MapredParquetInputFormat",
              "OutputFormat": "org.apache.hadoop.hive.ql.io.parquet.MapredParquetOutputFormat",
              "SerdeInfo": {"SerializationLibrary": "org.apache.hadoop.hive.ql.io.parquet.serde.ParquetHiveSerDe",
                            "Parameters": {"serialization.format": "1"}}}
        if columns is not None:
            sd["Columns"] = columns
        return sd

    def partitions(self, table: str = RAW_TABLE) -> list[dict]:
        """``{"value", "location", "params"}`` of every partition of ``table`` (none: no table yet)."""
        from botocore.exceptions import ClientError

        out = []
        try:
            for page in self._glue.get_paginator("get_partitions").paginate(DatabaseName=self.database,
                                                                             TableName=table):
                out += [{"value": p["Values"][0], "location": p["StorageDescriptor"]["Location"],
                         "params": p.get("Parameters", {})} for p in page["Partitions"]]
        except ClientError as exc:
            if exc.response["Error"]["Code"] != "EntityNotFoundException":
                raise
        return sorted(out, key=lambda p: p["value"])

    def _published(self, ds: str) -> dict | None:
        return next((p for p in self.partitions(RAW_TABLE) if p["value"] == ds), None)

    def _put_partition(self, table: str, value: str, location: str, params: dict) -> None:
        """Create the partition, or point the existing one at ``location`` (one Glue call: the swap)."""
        from botocore.exceptions import ClientError

        self.ensure_tables()
        entry = {"Values": [value], "StorageDescriptor": self._storage(location, self._columns[table]),
                 "Parameters": {k: str(v) for k, v in params.items()}}
        try:
            self._glue.create_partition(DatabaseName=self.database, TableName=table, PartitionInput=entry)
        except ClientError as exc:
            if exc.response["Error"]["Code"] != "AlreadyExistsException":
                raise
            self._glue.update_partition(DatabaseName=self.database, TableName=table, PartitionValueList=[value],
                                        PartitionInput=entry)

    def _drop_partition(self, table: str, value: str) -> None:
        from botocore.exceptions import ClientError

        try:
            self._glue.delete_partition(DatabaseName=self.database, TableName=table, PartitionValues=[value])
        except ClientError as exc:
            if exc.response["Error"]["Code"] != "EntityNotFoundException":
                raise

    # ------------------------------------------------------------------ S3

    def _delete_prefix(self, uri: str, keep: str = "") -> int:
        """Delete every object under ``uri`` except those under ``keep``; returns how many."""
        bucket, _ = aws.split_s3_uri(uri)
        _, keep_key = aws.split_s3_uri(keep) if keep else ("", "")
        keys = [k for k in aws.list_keys(self.cfg, uri) if not (keep_key and k.startswith(keep_key))]
        for i in range(0, len(keys), 1000):
            self._s3.delete_objects(Bucket=bucket, Delete={"Objects": [{"Key": k} for k in keys[i:i + 1000]]})
        return len(keys)

    def _parquet_objects(self, folder: str) -> list[str]:
        bucket, _ = aws.split_s3_uri(folder)
        return [f"s3://{bucket}/{k}" for k in aws.list_keys(self.cfg, folder) if k.endswith(".parquet")]

    def _write_parquet(self, uri: str, frame: pd.DataFrame, columns: tuple) -> None:
        import pyarrow as pa
        import pyarrow.parquet as pq

        types = {"string": pa.string(), "bigint": pa.int64()}
        schema = pa.schema([(c, types[t]) for c, t in columns])
        buf = io.BytesIO()
        pq.write_table(pa.Table.from_pandas(frame[[c for c, _ in columns]], schema=schema, preserve_index=False), buf)
        aws.write_bytes(self.cfg, uri, buf.getvalue())

    def _read_parquet(self, uri: str, columns: list[str] | None = None):
        import pyarrow.parquet as pq

        return pq.read_table(io.BytesIO(aws.read_bytes(self.cfg, uri)), columns=columns)

    # ------------------------------------------------------------------ deliveries

    def _deliveries(self, ds: str) -> list[dict]:
        """The delivery records of day ``ds``, oldest first."""
        keys = aws.list_keys(self.cfg, self.cfg.s3_uri(f"catalog/deliveries/ds={ds}/"))
        records = [json.loads(aws.read_bytes(self.cfg, f"s3://{self.cfg.bucket}/{k}")) for k in keys]
        return sorted(records, key=lambda d: d["staged_at"])

    def _save_delivery(self, record: dict) -> None:
        aws.write_bytes(self.cfg, self._delivery_uri(record["ds"], record["delivery_id"]),
                        json.dumps(record, indent=1, default=str).encode(), "application/json")
        # rejected deliveries are also listed under their own prefix, so the purge reads only them
        marker = self.cfg.s3_uri(f"catalog/rejected/{record['delivery_id']}")
        if record["status"] == catalog_base.REJECTED:
            aws.write_bytes(self.cfg, marker, record["ds"].encode(), "text/plain")
        else:
            self._s3.delete_object(Bucket=self.cfg.bucket, Key=aws.split_s3_uri(marker)[1])

    def purge_expired(self) -> int:
        """Delete the staged object and quarantine partition of each delivery rejected more than
        ``REVIEWS_REJECTED_RETENTION_DAYS`` ago (its record stays, as ``expired``); returns how many."""
        days = catalog_base.retention_days()
        cutoff = datetime.now(timezone.utc).timestamp() - days * 86400
        expired = []
        for key in aws.list_keys(self.cfg, self.cfg.s3_uri("catalog/rejected/")):
            ds = aws.read_bytes(self.cfg, f"s3://{self.cfg.bucket}/{key}").decode()
            record = next((d for d in self._deliveries(ds) if d["delivery_id"] == Path(key).name), None)
            if not record or record["status"] != catalog_base.REJECTED:
                continue
            if datetime.fromisoformat(record["audited_at"]).timestamp() < cutoff:
                self._unstage(record["delivery_id"])
                self._write_quarantine(record["delivery_id"], _empty_quarantine())
                self._save_delivery({**record, "status": catalog_base.EXPIRED})
                expired.append(record["delivery_id"])
        if expired:
            log.info("purged %d rejected deliveries older than %d days: %s", len(expired), days, ", ".join(expired))
        return len(expired)

    # ------------------------------------------------------------------ Catalog interface

    def landing_partitions(self) -> list[str]:
        """The ``ds`` values with at least one ``*.csv`` under ``landing/reviews/ds=<ds>/`` on S3."""
        root = self.cfg.s3_uri("landing/reviews/")
        _, prefix = aws.split_s3_uri(root)
        found = set()
        for key in aws.list_keys(self.cfg, root):
            folder, _, name = key[len(prefix):].partition("/")
            if folder.startswith("ds=") and name.endswith(".csv") and "/" not in name:
                try:
                    found.add(catalog_base.parse_ds(folder[3:]).isoformat())
                except CatalogError:
                    log.warning("ignoring s3://%s/%s: not under a ds=YYYY-MM-DD folder", self.cfg.bucket, key)
        return sorted(found)

    def registered_partitions(self) -> list[str]:
        """The ``ds`` partitions of the Glue table ``reviews_raw``, oldest first."""
        return [p["value"] for p in self.partitions(RAW_TABLE)]

    def _resolve_input(self, ds: str, input_uri: str | None) -> list[str]:
        """The CSV file(s) of a delivery: ``input_uri`` (an object or a prefix; a local path is
        accepted too) or the landing prefix of ``ds``."""
        if input_uri and not is_s3(input_uri):
            return [str(p) for p in catalog_base.resolve_input(ds, input_uri, self.settings)]
        uri = input_uri or self.cfg.s3_uri(f"landing/reviews/ds={ds}/")
        bucket, key = aws.split_s3_uri(uri)
        if key.endswith(".csv"):
            if key not in aws.list_keys(self.cfg, uri):
                raise RegistrationError(f"{uri}: input object does not exist (nothing landed for ds={ds}?)")
            return [uri]
        folder = key.rstrip("/") + "/"
        files = [f"s3://{bucket}/{k}" for k in aws.list_keys(self.cfg, f"s3://{bucket}/{folder}")
                 if k.endswith(".csv") and "/" not in k[len(folder):]]
        if not files:
            raise RegistrationError(f"s3://{bucket}/{folder}: holds no *.csv object for ds={ds} (nothing landed?)")
        return sorted(files)

    def _fetch(self, sources: list[str], tmp: Path) -> list[tuple[str, Path]]:
        """Download each source into its own folder of ``tmp`` (names kept: the content hash orders by name)."""
        out = []
        for i, src in enumerate(sources):
            if not is_s3(src):
                out.append((src, Path(src)))
                continue
            bucket, key = aws.split_s3_uri(src)
            dest = tmp / str(i) / Path(key).name
            dest.parent.mkdir(parents=True)
            self._s3.download_file(bucket, key, str(dest))
            out.append((src, dest))
        return out

    def register_partition(self, ds: str, input_uri: str | None = None, *, run_id: str = "",
                           retry_rejected: bool = True) -> dict:
        """Check the day's CSV file(s) with the local checks, then stage them as ONE Parquet object
        (Glue table ``reviews_staging``); the published partition changes only when the gate passes.

        Returns what :meth:`Catalog.register_partition` returns; ``files`` are the source URIs.
        """
        try:
            day = catalog_base.parse_ds(ds).isoformat()
        except CatalogError as exc:
            raise RegistrationError(str(exc)) from exc
        started = time.monotonic()
        with tempfile.TemporaryDirectory(prefix="reviews-register-") as tmp:
            files = self._fetch(self._resolve_input(day, input_uri), Path(tmp))
            checks = [_named(lambda p=path: catalog_base.inspect_file(p), path, uri) for uri, path in files]
            digest = catalog_base.content_hash([path for _, path in files])
            self.purge_expired()
            delivery_id = f"{day}-{digest[:12]}"
            result = {"ds": day, "files": [uri for uri, _ in files], "bytes": sum(c.bytes for c in checks),
                      "delivery_id": delivery_id, "content_hash": digest}
            published = self._published(day)
            if published and published["params"].get("content_hash") == digest:
                log.info("ds=%s: delivery %s is identical to the published one (same SHA-256): nothing to do", day,
                         published["params"]["delivery_id"])
                return {**result, "delivery_id": published["params"]["delivery_id"],
                        "rows": int(published["params"]["rows"]), "status": "unchanged"}
            earlier = next((d for d in self._deliveries(day) if d["delivery_id"] == delivery_id), None)
            if earlier and earlier["status"] == catalog_base.STAGED:
                log.info("ds=%s: delivery %s is already staged (by run %s), waiting for the gate", day, delivery_id,
                         earlier["staged_by_run"])
                return {**result, "rows": int(earlier["rows"]), "status": catalog_base.STAGED}
            if earlier and earlier["status"] == catalog_base.REJECTED:
                if not retry_rejected:
                    log.warning("ds=%s: delivery %s is identical to one the gate rejected (run %s: %s); not staged "
                                "again - report %s", day, delivery_id, earlier["audit_run_id"], earlier["reason"],
                                earlier["report_path"])
                    return {**result, "rows": int(earlier["rows"]), "status": catalog_base.REJECTED}
                self._save_delivery({**earlier, "status": catalog_base.STAGED})  # its staged object is still there
                log.info("ds=%s: delivery %s was rejected before; staged again for a new audit", day, delivery_id)
                return {**result, "rows": int(earlier["rows"]), "status": catalog_base.STAGED}
            frame = self._read_rows(files, checks, day, delivery_id)
        self._stage(frame, {**result, "rows": len(frame)}, run_id)
        log.info("staged ds=%s as delivery %s: %d rows from %d file(s), %d bytes in %.1fs (s3 + Glue %s.%s); the "
                 "quality gate publishes it", day, delivery_id, len(frame), len(files), result["bytes"],
                 time.monotonic() - started, self.database, STAGING_TABLE)
        return {**result, "rows": len(frame), "status": catalog_base.STAGED}

    def _read_rows(self, files: list[tuple[str, Path]], checks: list, day: str, delivery_id: str) -> pd.DataFrame:
        """The files' records with their source file (URI) and line, read by the local CSV loader."""
        import pandas as pd

        con = catalog_base.memory_catalog()
        try:
            frames = []
            for i, ((uri, path), check) in enumerate(zip(files, checks)):
                loaded = _named(lambda c=check, n=i: catalog_base.load_csv_file(con, c, f"_load_{n}"), path, uri)
                frames.append(con.execute(
                    f"SELECT {', '.join(RAW_COLUMNS)}, $ds AS ds, source_file, CAST(source_line AS BIGINT) AS "
                    f"source_line, $delivery AS delivery_id FROM ({loaded.line_sql}) ORDER BY source_line",
                    {"ds": day, "file": uri, "delivery": delivery_id}).df())
        finally:
            con.close()
        return pd.concat(frames, ignore_index=True)

    def _stage(self, frame: pd.DataFrame, delivery: dict, run_id: str) -> None:
        """Write the staged object and its Glue partition, then the delivery record (last: a
        crash before it leaves nothing a reader trusts, and a re-run overwrites)."""
        self.ensure_tables()
        day, delivery_id = delivery["ds"], delivery["delivery_id"]
        folder = self._partition_uri(STAGING_TABLE, delivery_id)
        self._write_parquet(folder + PART, frame, ROW_COLUMNS)
        self._put_partition(STAGING_TABLE, delivery_id, folder, {"ds": day, "rows": len(frame)})
        for other in self._deliveries(day):  # a delivery of the day that never reached the gate: replaced
            if other["status"] == catalog_base.STAGED and other["delivery_id"] != delivery_id:
                self._unstage(other["delivery_id"])
                self._save_delivery({**other, "status": catalog_base.SUPERSEDED})
        self._save_delivery({"delivery_id": delivery_id, "ds": day, "content_hash": delivery["content_hash"],
                             "files": delivery["files"], "rows": delivery["rows"], "bytes": delivery["bytes"],
                             "staged_at": _now(), "staged_by_run": run_id, "status": catalog_base.STAGED,
                             "audited_at": None, "audit_run_id": None, "bad_rows": None, "reason": None,
                             "report_path": None})

    def _unstage(self, delivery_id: str) -> None:
        self._delete_prefix(self._partition_uri(STAGING_TABLE, delivery_id))
        self._drop_partition(STAGING_TABLE, delivery_id)

    # ------------------------------------------------------------------ the quality gate

    def _load_into(self, con, table: str, uri: str, columns: list[str] | None = None) -> int:
        """Insert a Parquet object's rows into a catalog table of ``con`` (``ds`` cast to DATE)."""
        data = self._read_parquet(uri, columns)
        names = data.column_names
        con.register("_s3_rows", data)
        try:
            select = ", ".join("CAST(ds AS DATE)" if c == "ds" else c for c in names)
            con.execute(f"INSERT INTO {table} ({', '.join(names)}) SELECT {select} FROM _s3_rows")
        finally:
            con.unregister("_s3_rows")
        return data.num_rows

    def open_audit(self, days: list[date]) -> catalog_base.Audit:
        """Per day its newest staged (or rejected, re-audited) delivery, else its published
        partition, read from S3 into an in-memory DuckDB with the catalog's tables; the other
        published days' ids too (the gate counts ids repeated across partitions)."""
        con = catalog_base.memory_catalog()
        try:
            targets, published = [], {p["value"]: p for p in self.partitions(RAW_TABLE)}
            for day in days:
                ds = day.isoformat()
                live = [d for d in self._deliveries(ds)
                        if d["status"] in (catalog_base.STAGED, catalog_base.REJECTED, catalog_base.PUBLISHED)]
                if live and live[-1]["status"] != catalog_base.PUBLISHED:
                    for uri in self._parquet_objects(self._partition_uri(STAGING_TABLE, live[-1]["delivery_id"])):
                        self._load_into(con, catalog_base.STAGING, uri)
                    targets.append({"ds": day, "delivery_id": live[-1]["delivery_id"], "staged": True})
                    continue
                if ds not in published:
                    raise CatalogError(f"partition {ds} not registered (no staged delivery, nothing published in "
                                       f"Glue {self.database}.{RAW_TABLE}); run catalog.register_partition first")
                for uri in self._parquet_objects(published[ds]["location"]):
                    self._load_into(con, catalog_base.RAW, uri)
                targets.append({"ds": day, "delivery_id": published[ds]["params"]["delivery_id"], "staged": False})
            audited = {d.isoformat() for d in days}
            for ds, part in published.items():
                if ds not in audited:
                    for uri in self._parquet_objects(part["location"]):
                        self._load_into(con, catalog_base.RAW, uri,
                                        ["review_id", "ds", "source_file", "source_line", "delivery_id"])
            return catalog_base.Audit(con=con, targets=targets)
        except BaseException:
            con.close()
            raise

    def close_audit(self, audit: catalog_base.Audit) -> None:
        """Keep the audited deliveries' quarantine rows (for :meth:`record_verdict`), close DuckDB."""
        try:
            audit.kept["quarantine"] = audit.con.execute(
                f"SELECT CAST(ds AS VARCHAR) AS ds, review_id, rule, source_file, source_line, value, run_id, "
                f"delivery_id FROM {catalog_base.QUARANTINE} WHERE list_contains($ids, delivery_id) "
                "ORDER BY source_file, source_line, rule", {"ids": [t["delivery_id"] for t in audit.targets]}).df()
        finally:
            audit.con.close()

    def record_verdict(self, audit: catalog_base.Audit, summary: dict, reason: str) -> None:
        """Replace each audited delivery's quarantine partition; publish the staged deliveries
        that passed (or mark them rejected); re-audited partitions get their validation parameters."""
        self.ensure_tables()
        rows = audit.kept["quarantine"]
        for t in audit.targets:
            self._write_quarantine(t["delivery_id"], rows[rows["delivery_id"] == t["delivery_id"]])
        staged = catalog_base.verdict_deliveries(audit, summary)
        for item in staged:
            if summary["passed"]:
                self._publish(item, summary)
            else:
                record = next(d for d in self._deliveries(item["ds"].isoformat())
                              if d["delivery_id"] == item["delivery_id"])
                self._save_delivery({**record, "status": catalog_base.REJECTED, "audited_at": _now(),
                                     "audit_run_id": summary["run_id"], "bad_rows": item["bad_rows"],
                                     "reason": reason, "report_path": summary["report_path"]})
        for t in audit.targets:
            if not t["staged"]:
                part = self._published(t["ds"].isoformat())
                self._put_partition(RAW_TABLE, part["value"], part["location"], {
                    **part["params"], "validated_at": _now(), "validation_run_id": summary["run_id"],
                    "bad_rows": summary["bad_rows_per_ds"][part["value"]], "passed": str(summary["passed"]).lower()})

    def _write_quarantine(self, delivery_id: str, rows: pd.DataFrame) -> None:
        folder = self._partition_uri(QUARANTINE_TABLE, delivery_id)
        self._delete_prefix(folder)
        if rows.empty:
            self._drop_partition(QUARANTINE_TABLE, delivery_id)
            return
        self._write_parquet(folder + PART, rows, QUARANTINE_COLUMNS)
        self._put_partition(QUARANTINE_TABLE, delivery_id, folder, {"rows": len(rows)})

    def _publish(self, item: dict, summary: dict) -> None:
        """Copy the staged object under the day's prefix, point the Glue partition at it (the
        swap), then delete what no reader points at any more."""
        ds, delivery_id = item["ds"].isoformat(), item["delivery_id"]
        record = next(d for d in self._deliveries(ds) if d["delivery_id"] == delivery_id)
        dest = self.published_uri(ds, delivery_id)
        bucket, dest_key = aws.split_s3_uri(dest)
        for uri in self._parquet_objects(self._partition_uri(STAGING_TABLE, delivery_id)):
            aws.copy_object(self.cfg, uri, f"s3://{bucket}/{dest_key}{Path(uri).name}", s3=self._s3)
        previous = self._published(ds)
        self._put_partition(RAW_TABLE, ds, dest, {
            "delivery_id": delivery_id, "content_hash": record["content_hash"], "rows": record["rows"],
            "bytes": record["bytes"], "files": json.dumps(record["files"]), "registered_at": record["staged_at"],
            "validated_at": _now(), "validation_run_id": summary["run_id"], "bad_rows": item["bad_rows"],
            "passed": "true"})
        stale = self._delete_prefix(self.cfg.s3_uri(f"reviews/ds={ds}/"), keep=dest)
        if previous and previous["params"].get("delivery_id") != delivery_id:
            old = previous["params"]["delivery_id"]
            self._write_quarantine(old, _empty_quarantine())
            for d in self._deliveries(ds):
                if d["delivery_id"] == old:
                    self._save_delivery({**d, "status": catalog_base.SUPERSEDED})
        self._unstage(delivery_id)
        self._save_delivery({**record, "status": catalog_base.PUBLISHED, "audited_at": _now(),
                             "audit_run_id": summary["run_id"], "bad_rows": item["bad_rows"], "reason": None,
                             "report_path": summary["report_path"]})
        log.info("published ds=%s: Glue %s.%s partition -> %s (%d stale object(s) of the previous delivery deleted)",
                 ds, self.database, RAW_TABLE, dest, stale)

    def data_status(self) -> dict:
        """:meth:`Catalog.data_status` from Glue: the partitions' parameters and the delivery records."""
        staged_rows = {p["value"]: int(p["params"].get("rows", 0)) for p in self.partitions(STAGING_TABLE)}
        quarantined = {p["value"]: int(p["params"].get("rows", 0)) for p in self.partitions(QUARANTINE_TABLE)}
        partitions = []
        for p in self.partitions(RAW_TABLE):
            params = p["params"]
            partitions.append({"ds": p["value"], "delivery_id": params.get("delivery_id"),
                               "rows": int(params.get("rows", 0)), "bad_rows": int(params.get("bad_rows") or 0),
                               "validated_at": params.get("validated_at"),
                               "validation_run_id": params.get("validation_run_id"),
                               "passed": {"true": True, "false": False}.get(params.get("passed", "")),
                               "files": json.loads(params.get("files", "[]"))})
        keys = aws.list_keys(self.cfg, self.cfg.s3_uri("catalog/deliveries/"))
        records = [json.loads(aws.read_bytes(self.cfg, f"s3://{self.cfg.bucket}/{k}")) for k in keys]
        waiting = [{**d, "staged_rows": staged_rows.get(d["delivery_id"], 0),
                    "quarantined_rows": quarantined.get(d["delivery_id"], 0)}
                   for d in sorted(records, key=lambda d: (d["ds"], d["staged_at"]))
                   if d["status"] in (catalog_base.STAGED, catalog_base.REJECTED, catalog_base.EXPIRED)]
        return {"partitions": partitions, "deliveries": waiting, "retention_days": catalog_base.retention_days(),
                "catalog": f"Glue database {self.database} ({self.cfg.root_uri})",
                "staging_table": f"{self.database}.{STAGING_TABLE}"}

    # ------------------------------------------------------------------ export and SQL

    def export_clean(self, ds_to: str, dest_path: Path, ds_from: str | None = None) -> int:
        """:meth:`Catalog.export_clean` over the published partitions on S3: the same SQL
        (``catalog_base.CLEAN_SELECT``) on an in-memory copy of the days in range."""
        from_day, to_day = catalog_base.export_range(ds_to, ds_from)
        parts = self.partitions(RAW_TABLE)
        chosen = [p for p in parts if p["params"].get("passed") == "true"
                  and from_day <= date.fromisoformat(p["value"]) <= to_day]
        if not chosen:
            raise catalog_base.no_passed_partition(from_day, to_day, [p["value"] for p in parts])
        quarantined = {p["value"] for p in self.partitions(QUARANTINE_TABLE)}
        con = catalog_base.memory_catalog()
        try:
            for p in chosen:
                rows = sum(self._load_into(con, catalog_base.RAW, uri) for uri in self._parquet_objects(p["location"]))
                con.execute(f"INSERT INTO {catalog_base.PARTITIONS} (ds, files, rows, bytes, registered_at, passed, "
                            "delivery_id) VALUES (?, ?, ?, 0, now()::TIMESTAMP, true, ?)",
                            [date.fromisoformat(p["value"]), json.loads(p["params"].get("files", "[]")), rows,
                             p["params"]["delivery_id"]])
                if p["params"]["delivery_id"] in quarantined:
                    for uri in self._parquet_objects(self._partition_uri(QUARANTINE_TABLE, p["params"]["delivery_id"])):
                        self._load_into(con, catalog_base.QUARANTINE, uri)
            return catalog_base.copy_clean(con, from_day, to_day, dest_path)
        finally:
            con.close()

    def query(self, sql: str, params: dict) -> pd.DataFrame:
        """Run an analysis query (DuckDB dialect) on Athena: :func:`athena_sql`, then awswrangler
        with ``ctas_approach=False`` (plain results: no CTAS table is created per query)."""
        import awswrangler as wr

        # awswrangler takes credentials from the session but endpoints from its own config
        wr.config.athena_endpoint_url = self.cfg.service_endpoint("athena")
        wr.config.s3_endpoint_url = self.cfg.service_endpoint("s3")
        wr.config.glue_endpoint_url = self.cfg.service_endpoint("glue")
        text = athena_sql(sql, params, self.database)
        log.info("athena (%s, workgroup %s): %s", self.database, self.cfg.athena_workgroup, " ".join(text.split())[:300])
        return wr.athena.read_sql_query(text, database=self.database, ctas_approach=False,
                                        workgroup=self.cfg.athena_workgroup, s3_output=self.cfg.athena_output,
                                        boto3_session=self.cfg.session(), **self.cfg.athena_encryption())


def _named(call, path: Path, uri: str):
    """Run a local check on a downloaded copy; its error names the source URI, not the temp file."""
    try:
        return call()
    except RegistrationError as exc:
        raise RegistrationError(str(exc).replace(str(path), uri)) from None


def _now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


def _empty_quarantine() -> pd.DataFrame:
    import pandas as pd

    return pd.DataFrame(columns=[c for c, _ in QUARANTINE_COLUMNS])


# --------------------------------------------------------------------------- dialect

# ``reviews.reviews_typed`` (a DuckDB view, catalog_base._DDL) for Athena: the same rows - valid
# rating, text and category, not quarantined, the latest drop of a review_id - in Presto/Trino
# SQL (no QUALIFY: the row_number filter moves into a subquery; ds is a string partition).
TYPED_SQL = """SELECT review_id, product_category, review_body, star_rating, sentiment, review_date, ds FROM (
SELECT r.review_id, trim(r.product_category) AS product_category, r.review_body,
       CAST(trim(r.star_rating) AS INTEGER) AS star_rating,
       CASE WHEN trim(r.star_rating) IN ('1', '2') THEN 'negative'
            WHEN trim(r.star_rating) = '3' THEN 'neutral' ELSE 'positive' END AS sentiment,
       coalesce(TRY_CAST(r.review_date AS DATE), CAST(r.ds AS DATE)) AS review_date, CAST(r.ds AS DATE) AS ds,
       row_number() OVER (PARTITION BY r.review_id ORDER BY r.ds DESC, r.source_line DESC) AS latest
FROM {db}.reviews_raw r
WHERE trim(r.star_rating) IN ('1', '2', '3', '4', '5')
  AND nullif(trim(r.review_id), '') IS NOT NULL
  AND nullif(trim(r.review_body), '') IS NOT NULL
  AND nullif(trim(r.product_category), '') IS NOT NULL
  AND NOT EXISTS (SELECT 1 FROM {db}.reviews_quarantine q
                  WHERE q.delivery_id = r.delivery_id AND q.ds = r.ds AND q.source_file = r.source_file
                    AND q.source_line = r.source_line)) t
WHERE latest = 1"""

# DuckDB spelling -> Presto/Trino spelling, for what the questions use and the engines spell
# differently (a question that needs another entry fails on Athena with its SQL in the log).
DIALECT: tuple[tuple[str, str], ...] = (
    ("len(regexp_split_to_array(", "cardinality(regexp_split("),  # words in a text
    (" // ", " / "),  # integer division: DuckDB's // is Trino's / on integers
    ("list_contains(", "contains("),  # a value in a list (the list parameter becomes ARRAY[...])
)
_PARAM = re.compile(r"\$([A-Za-z_]\w*)")


def athena_sql(sql: str, params: dict[str, Any], database: str) -> str:
    """``sql`` (DuckDB dialect over ``reviews.reviews_typed``, ``$name`` parameters) as Athena SQL.

    The view becomes :data:`TYPED_SQL` over the Glue tables, :data:`DIALECT` rewrites the
    functions spelled differently, and each ``$name`` becomes a literal of its checked type
    (dates and numbers, or lists of them - the values are ours, never free text).
    """
    if not re.fullmatch(r"[a-z0-9_]+", database):
        raise CatalogError(f"glue_database {database!r}: use lower-case letters, digits and _ only")
    text = sql.replace(catalog_base.TYPED, f"({TYPED_SQL.format(db=database)}) reviews_typed")
    for duck, trino in DIALECT:
        text = text.replace(duck, trino)
    return _PARAM.sub(lambda m: _literal(m.group(1), params), text)


def _literal(name: str, params: dict[str, Any]) -> str:
    if name not in params:
        raise CatalogError(f"SQL parameter ${name} has no value (known: {', '.join(sorted(params))})")
    value = params[name]
    if isinstance(value, (list, tuple)):
        return "ARRAY[" + ", ".join(_literal(name, {name: v}) for v in value) + "]"
    if isinstance(value, date):
        return f"DATE '{value.isoformat()}'"
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return repr(value)
    raise CatalogError(f"SQL parameter ${name}={value!r}: only dates and numbers are bound on Athena")
