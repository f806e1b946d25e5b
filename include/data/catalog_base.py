"""The data catalog's interface (:class:`Catalog`), its layout and the checks both backends share.

The local backend (``catalog_duckdb.py``) is a DuckDB database holding the landed reviews as
partitioned tables; the aws one (``catalog_glue.py``) keeps the same tables in Glue + Athena;
``catalog.py`` chooses.

Layout (schema ``reviews`` in ``Settings.catalog_path``; every table and column commented):

- ``reviews.reviews_raw``: the landed CSV rows as raw strings, one partition per ``ds``, with
  the file and line each record starts on (``source_file``, ``source_line``).
- ``reviews.reviews_quarantine``: rows that failed a row-level rule (``include/quality.py``).
- ``reviews.partitions``: one row per registered ``ds`` (files, rows, bytes, registration
  and validation status); ``export_clean`` exports only partitions whose validation passed.

- ``reviews.reviews_staging``: deliveries waiting for (or refused by) the quality gate.
- ``reviews.deliveries``: one row per delivery (a day's file(s), identified by ``ds`` and the
  SHA-256 of their content): staged, published, rejected, superseded or expired.

Registration is write-audit-publish. :meth:`Catalog.register_partition` checks a file before
anything is written (existence, size, ZIP/gzip/binary content, UTF-8 throughout, header and
delimiter, required columns) and then only *stages* it (``reviews_staging``, one
transaction); the published partition in ``reviews_raw`` is not touched. The quality gate
(``include/data/quality.py``) audits the staged rows and, only when they pass, calls
``catalog_duckdb.publish_deliveries``, which swaps the day's rows in one transaction: a reader sees the
old partition or the new one, never a mix or none. A rejected delivery keeps its staged rows
and quarantine rows (under its ``delivery_id`` and the run id) for ``REVIEWS_REJECTED_RETENTION_DAYS``
(default 14) days. Re-registering a delivery identical to the published one is a no-op.
Every query is parameterised; identifiers come from constants, never from input.
"""
from __future__ import annotations

import csv
import hashlib
import logging
import os
import re
from dataclasses import dataclass, field
from datetime import date
from pathlib import Path
from typing import TYPE_CHECKING, Protocol

import duckdb

from include.common.config import Settings, get_settings
from include.common.io import uri_to_path
from include.data.schema import RAW_COLUMNS, REQUIRED_COLUMNS

if TYPE_CHECKING:
    import pandas as pd

log = logging.getLogger(__name__)

SCHEMA = "reviews"
RAW = f"{SCHEMA}.reviews_raw"
QUARANTINE = f"{SCHEMA}.reviews_quarantine"
PARTITIONS = f"{SCHEMA}.partitions"
TYPED = f"{SCHEMA}.reviews_typed"  # view for analysis: typed, valid, not quarantined, latest ds
STAGING = f"{SCHEMA}.reviews_staging"
DELIVERIES = f"{SCHEMA}.deliveries"
# Delivery statuses: waiting for the gate, live in reviews_raw, refused by the gate, replaced by a
# later delivery, and refused with its staged rows purged after the retention period.
STAGED, PUBLISHED, REJECTED, SUPERSEDED, EXPIRED = "staged", "published", "rejected", "superseded", "expired"
DEFAULT_RETENTION_DAYS = 14

MAX_LINE_BYTES = 64 * 1024 * 1024  # a 20 MB review must load (and then fail the length rule)
CHUNK_BYTES = 4 * 1024 * 1024
LOCK_TIMEOUT_S = 120.0

_DDL = f"""
CREATE SCHEMA IF NOT EXISTS {SCHEMA};
CREATE TABLE IF NOT EXISTS {RAW} (
    review_id VARCHAR, product_category VARCHAR, review_body VARCHAR, star_rating VARCHAR,
    review_date VARCHAR, ds DATE NOT NULL, source_file VARCHAR NOT NULL, source_line BIGINT NOT NULL,
    delivery_id VARCHAR);
CREATE TABLE IF NOT EXISTS {QUARANTINE} (
    ds DATE NOT NULL, review_id VARCHAR, rule VARCHAR NOT NULL, source_file VARCHAR NOT NULL,
    source_line BIGINT NOT NULL, value VARCHAR, run_id VARCHAR NOT NULL, delivery_id VARCHAR);
CREATE TABLE IF NOT EXISTS {PARTITIONS} (
    ds DATE PRIMARY KEY, files VARCHAR[] NOT NULL, rows BIGINT NOT NULL, bytes BIGINT NOT NULL,
    registered_at TIMESTAMP NOT NULL, validated_at TIMESTAMP, validation_run_id VARCHAR,
    bad_rows BIGINT, passed BOOLEAN, delivery_id VARCHAR, content_hash VARCHAR);
CREATE TABLE IF NOT EXISTS {STAGING} (
    review_id VARCHAR, product_category VARCHAR, review_body VARCHAR, star_rating VARCHAR,
    review_date VARCHAR, ds DATE NOT NULL, source_file VARCHAR NOT NULL, source_line BIGINT NOT NULL,
    delivery_id VARCHAR NOT NULL);
CREATE TABLE IF NOT EXISTS {DELIVERIES} (
    delivery_id VARCHAR NOT NULL, ds DATE NOT NULL, content_hash VARCHAR NOT NULL, files VARCHAR[] NOT NULL,
    rows BIGINT NOT NULL, bytes BIGINT NOT NULL, staged_at TIMESTAMP NOT NULL, staged_by_run VARCHAR,
    status VARCHAR NOT NULL, audited_at TIMESTAMP, audit_run_id VARCHAR, bad_rows BIGINT, reason VARCHAR,
    report_path VARCHAR);
-- Catalogs created before write-audit-publish: their rows become the "legacy" delivery of each day.
ALTER TABLE {RAW} ADD COLUMN IF NOT EXISTS delivery_id VARCHAR;
ALTER TABLE {QUARANTINE} ADD COLUMN IF NOT EXISTS delivery_id VARCHAR;
ALTER TABLE {PARTITIONS} ADD COLUMN IF NOT EXISTS delivery_id VARCHAR;
ALTER TABLE {PARTITIONS} ADD COLUMN IF NOT EXISTS content_hash VARCHAR;
UPDATE {RAW} SET delivery_id = CAST(ds AS VARCHAR) || '-legacy' WHERE delivery_id IS NULL;
UPDATE {QUARANTINE} SET delivery_id = CAST(ds AS VARCHAR) || '-legacy' WHERE delivery_id IS NULL;
UPDATE {PARTITIONS} SET delivery_id = CAST(ds AS VARCHAR) || '-legacy' WHERE delivery_id IS NULL;
CREATE OR REPLACE VIEW {TYPED} AS
SELECT r.review_id, trim(r.product_category) AS product_category, r.review_body,
       CAST(trim(r.star_rating) AS INTEGER) AS star_rating,
       CASE WHEN trim(r.star_rating) IN ('1', '2') THEN 'negative'
            WHEN trim(r.star_rating) = '3' THEN 'neutral' ELSE 'positive' END AS sentiment,
       coalesce(TRY_CAST(r.review_date AS DATE), r.ds) AS review_date, r.ds
FROM {RAW} r
WHERE trim(r.star_rating) IN ('1', '2', '3', '4', '5')
  AND nullif(trim(r.review_id), '') IS NOT NULL
  AND nullif(trim(r.review_body), '') IS NOT NULL
  AND nullif(trim(r.product_category), '') IS NOT NULL
  AND NOT EXISTS (SELECT 1 FROM {QUARANTINE} q
                  WHERE q.delivery_id = r.delivery_id AND q.ds = r.ds AND q.source_file = r.source_file
                    AND q.source_line = r.source_line)
QUALIFY row_number() OVER (PARTITION BY r.review_id ORDER BY r.ds DESC, r.source_line DESC) = 1;
"""

COMMENTS: dict[str, tuple[str, dict[str, str]]] = {
    RAW: (
        "Landed reviews as raw strings (validation decides what is valid); one partition per ds.",
        {
            "review_id": "Review identifier as landed (expected unique and non-empty).",
            "product_category": "Product category (Kaggle Class Name), as landed.",
            "review_body": "Review text, UTF-8, as landed (expected 1..5000 characters).",
            "star_rating": "Star rating as landed text (expected an integer 1..5).",
            "review_date": "Review date as landed text (YYYY-MM-DD, may be empty).",
            "ds": "Partition: the day of the landing drop.",
            "source_file": "CSV file the row was read from.",
            "source_line": "1-based line of that file on which the record starts.",
            "delivery_id": "Delivery the published rows came from (reviews.deliveries).",
        },
    ),
    QUARANTINE: (
        "Rows that failed a row-level data-quality rule; excluded from export_clean.",
        {
            "ds": "Partition of the failing row.",
            "review_id": "review_id of the failing row (may be null).",
            "rule": "Name of the failed rule (include/quality.py ROW_RULES).",
            "source_file": "CSV file of the failing row.",
            "source_line": "Line of that file on which the failing record starts.",
            "value": "The offending value, cut to 200 characters.",
            "run_id": "Run that validated the partition.",
            "delivery_id": "Delivery the failing row belongs to (published or rejected).",
        },
    ),
    PARTITIONS: (
        "Bookkeeping: one row per registered partition and its validation status.",
        {
            "ds": "Partition date.",
            "files": "Files registered for the partition.",
            "rows": "Rows registered.",
            "bytes": "Total size of the files in bytes.",
            "registered_at": "When the partition was (re)registered (UTC).",
            "validated_at": "When it was last validated (UTC); null until validated.",
            "validation_run_id": "Run id of the last validation.",
            "bad_rows": "Rows quarantined by the last validation.",
            "passed": "Whether the last validation passed; only passed partitions are exported.",
            "delivery_id": "The published delivery (reviews.deliveries).",
            "content_hash": "SHA-256 of the published delivery's file contents.",
        },
    ),
    STAGING: (
        "Write-audit-publish: delivered rows waiting for the gate, or refused by it (kept for inspection).",
        {
            "delivery_id": "Delivery these rows belong to (reviews.deliveries).",
            "source_file": "CSV file the row was read from.",
            "source_line": "1-based line of that file on which the record starts.",
        },
    ),
    DELIVERIES: (
        "One row per delivery of a day: staged, published, rejected, superseded or expired.",
        {
            "delivery_id": "<ds>-<first 12 hex digits of content_hash>.",
            "content_hash": "SHA-256 over the delivered files' bytes (sorted by file name).",
            "status": "staged | published | rejected | superseded | expired.",
            "staged_by_run": "Run that staged the delivery.",
            "audit_run_id": "Run whose quality gate audited it.",
            "reason": "Why the gate refused it (null unless rejected).",
            "report_path": "Validation report of the audit.",
        },
    ),
    TYPED: (
        "Typed reviews for analysis: valid rating, text and category, not quarantined, latest ds per review_id.",
        {
            "star_rating": "Star rating 1..5 as INTEGER.",
            "sentiment": "negative (1-2 stars), neutral (3) or positive (4-5).",
            "review_date": "Review date; the partition date when none was landed.",
        },
    ),
}


class CatalogError(ValueError):
    """The catalog cannot do what was asked (bad argument, missing partition, locked file)."""


class RegistrationError(CatalogError):
    """A landed file cannot be registered; the message names the file and the problem."""


@dataclass(frozen=True)
class FileCheck:
    """What the pre-load inspection learned about one CSV file."""

    path: Path
    columns: tuple[str, ...]
    bytes: int
    physical_lines: int


# --------------------------------------------------------------------------- connection


def _memory_limit() -> str:
    value = os.environ.get("REVIEWS_DUCKDB_MEMORY_LIMIT", "1GB").strip()
    number = re.sub(r"(?i)[KMGT]?i?B$", "", value)
    if not value[:1].isdigit() or not number.replace(".", "").isdigit():
        raise CatalogError(f"REVIEWS_DUCKDB_MEMORY_LIMIT={value!r}: expected a size such as 1GB or 512MB")
    return value


def _ensure_schema(con: duckdb.DuckDBPyConnection) -> None:
    present = con.execute(
        "SELECT count(*) FROM duckdb_tables() WHERE schema_name = ? AND comment IS NOT NULL", [SCHEMA]
    ).fetchall()[0][0] + con.execute(
        "SELECT count(*) FROM duckdb_views() WHERE schema_name = ? AND comment IS NOT NULL", [SCHEMA]
    ).fetchall()[0][0]
    if present == len(COMMENTS):
        return  # created (and commented) by an earlier connection
    con.execute(_DDL)
    for table, (table_comment, columns) in COMMENTS.items():
        kind = "VIEW" if table == TYPED else "TABLE"
        con.execute(f"COMMENT ON {kind} {table} IS '{_sql_str(table_comment)}'")
        for col, text in columns.items():
            con.execute(f"COMMENT ON COLUMN {table}.{col} IS '{_sql_str(text)}'")


def memory_catalog() -> duckdb.DuckDBPyConnection:
    """An in-memory DuckDB holding the catalog's (empty) tables: where the aws backend runs the
    same SQL (quality rules, clean export) over rows it reads from S3."""
    con = duckdb.connect()
    con.execute(f"SET memory_limit = '{_memory_limit()}'")
    con.execute("SET enable_progress_bar = false")
    _ensure_schema(con)
    return con


def _sql_str(text: str) -> str:
    # COMMENT ON takes no bind parameters; the texts are our own constants.
    return text.replace("'", "''")


# --------------------------------------------------------------------------- partitions


def parse_ds(ds: str) -> date:
    """``ds`` as a date; raises ``CatalogError`` unless it is ``YYYY-MM-DD``."""
    try:
        return date.fromisoformat(str(ds))
    except ValueError as exc:
        raise CatalogError(f"ds={ds!r}: expected a date YYYY-MM-DD") from exc


def landing_root(settings: Settings | None = None) -> Path:
    """Local folder of the landing zone (``landing/reviews`` in the object store)."""
    return uri_to_path((settings or get_settings()).landing_uri)


# --------------------------------------------------------------------------- file checks


def resolve_input(ds: str, input_uri: str | None, settings: Settings) -> list[Path]:
    """The CSV file(s) of a partition: ``input_uri`` (a file or folder) or the landing folder."""
    path = uri_to_path(input_uri) if input_uri else landing_root(settings) / f"ds={ds}"
    if not path.exists():
        raise RegistrationError(f"{path}: input path does not exist (nothing landed for ds={ds}?)")
    if path.is_dir():
        files = sorted(p for p in path.glob("*.csv") if p.is_file())
        if not files:
            raise RegistrationError(f"{path}: folder holds no *.csv file for ds={ds}")
        return files
    return [path]


def inspect_file(path: Path) -> FileCheck:
    """Check one landed file before it is loaded; raises ``RegistrationError`` naming it.

    Refuses: empty files, ZIP/gzip archives and other binary content, UTF-16, any byte
    sequence that is not UTF-8 (with its line and byte offset), a header that is not
    comma-separated, duplicate or missing required columns.
    """
    size = path.stat().st_size
    if size == 0:
        raise RegistrationError(f"{path}: empty file (0 bytes); expected a CSV with a header and rows")
    with open(path, "rb") as fh:
        head = fh.read(65536)
    _check_magic(path, head)
    header = _header_columns(path, head)
    lines, quotes = _check_utf8(path)
    if quotes % 2:
        raise RegistrationError(
            f"{path}: unbalanced double quote - the quoted field opened on line {_unclosed_quote_line(path)} "
            'is never closed; quote fields as "..." and double quotes inside them ("")'
        )
    return FileCheck(path=path, columns=header, bytes=size, physical_lines=lines)


def _check_magic(path: Path, head: bytes) -> None:
    if head.startswith((b"PK\x03\x04", b"PK\x05\x06", b"PK\x07\x08")):
        raise RegistrationError(
            f"{path}: is a ZIP archive, not a CSV (renamed .zip?); unzip it and land the CSV inside"
        )
    if head.startswith(b"\x1f\x8b"):
        raise RegistrationError(f"{path}: is gzip-compressed, not a plain CSV; gunzip it before landing")
    if head.startswith((b"\xff\xfe", b"\xfe\xff")):
        raise RegistrationError(f"{path}: is UTF-16 encoded; re-save it as UTF-8")
    nul = head.find(b"\x00")
    if nul >= 0:
        raise RegistrationError(f"{path}: binary content (NUL byte at offset {nul}); expected a UTF-8 CSV")


def _header_columns(path: Path, head: bytes) -> tuple[str, ...]:
    first = head.split(b"\n", 1)[0]
    if len(first) == len(head) and len(head) == 65536:
        raise RegistrationError(f"{path}: no line break in the first 64 KiB; is this a CSV file?")
    try:
        text = first.decode("utf-8").lstrip("\ufeff").rstrip("\r")
    except UnicodeDecodeError as exc:
        raise RegistrationError(
            f"{path}: header (line 1) is not valid UTF-8 at byte offset {exc.start}; re-encode the file as UTF-8"
        ) from exc
    columns = tuple(c.strip() for c in next(csv.reader([text])))
    if len(columns) == 1:
        for delim, name in ((";", "semicolon"), ("\t", "tab"), ("|", "pipe")):
            if delim in text:
                raise RegistrationError(
                    f"{path}: header is {name}-separated ({delim!r}); expected comma-separated columns "
                    f"{','.join(RAW_COLUMNS)}"
                )
    dupes = sorted({c for c in columns if columns.count(c) > 1})
    if dupes:
        raise RegistrationError(f"{path}: duplicate column(s) in the header: {', '.join(dupes)}")
    missing = [c for c in REQUIRED_COLUMNS if c not in columns]
    if missing:
        raise RegistrationError(
            f"{path}: missing column(s) {', '.join(missing)}; header has {', '.join(columns) or '(nothing)'}; "
            f"expected {','.join(RAW_COLUMNS)}"
        )
    return columns


def _check_utf8(path: Path) -> tuple[int, int]:
    """Stream the file once: raise on the first non-UTF-8 byte, else return its line count
    and number of double quotes (odd = a quoted field never closed)."""
    lines, offset, carry, last, quotes = 0, 0, b"", b"", 0
    with open(path, "rb") as fh:
        while True:
            chunk = fh.read(CHUNK_BYTES)
            data = carry + chunk
            if not data:
                break
            try:
                data.decode("utf-8")
                carry = b""
            except UnicodeDecodeError as exc:
                truncated = exc.reason == "unexpected end of data" and chunk
                if not truncated:
                    bad_at = offset + exc.start
                    line = lines + data.count(b"\n", 0, exc.start) + 1
                    raise RegistrationError(
                        f"{path}: not valid UTF-8 at line {line} (byte offset {bad_at}, byte "
                        f"0x{data[exc.start]:02x}); the file looks Latin-1/Windows-1252 encoded - "
                        f"re-encode it as UTF-8 (iconv -f latin1 -t utf-8) and land it again"
                    ) from exc
                carry = data[exc.start :]  # a character split across two chunks
                data = data[: exc.start]
            lines += data.count(b"\n")
            quotes += data.count(b'"')
            offset += len(data)
            if data:
                last = data[-1:]
            if not chunk:
                break
    return lines + (0 if last == b"\n" else 1), quotes


def _unclosed_quote_line(path: Path) -> int:
    """Line on which the last quoted field that is never closed opens (slow path, errors only)."""
    inside, open_line, line = False, 0, 1
    with open(path, "rb") as fh:
        while chunk := fh.read(CHUNK_BYTES):
            pos = 0
            while (q := chunk.find(b'"', pos)) >= 0:
                line += chunk.count(b"\n", pos, q)
                inside = not inside
                if inside:
                    open_line = line
                pos = q + 1
            line += chunk.count(b"\n", pos)
    return open_line


# --------------------------------------------------------------------------- registration


def _read_csv_sql(columns: tuple[str, ...]) -> str:
    """SELECT of one file (path bound as ``$path``) into the stage table's shape."""
    present = [c for c in RAW_COLUMNS if c in columns]
    select = ", ".join(f'"{c}"' if c in present else f"NULL AS {c}" for c in RAW_COLUMNS)
    # Newlines inside quoted fields of every column of the record (extra columns included).
    newline_terms = " + ".join(
        "coalesce(length(\"{0}\") - length(replace(\"{0}\", chr(10), '')), 0)".format(c.replace('"', '""'))
        for c in columns
    )
    return (
        f"SELECT {select}, {newline_terms} AS newlines FROM read_csv($path, header = true, "
        f"all_varchar = true, strict_mode = true, delim = ',', quote = '\"', escape = '\"', "
        f"normalize_names = false, auto_detect = true, max_line_size = {MAX_LINE_BYTES})"
    )


@dataclass
class _Loaded:
    """One file read into a temp table, and how to number its records' lines."""

    check: FileCheck
    table: str
    rows: int
    line_sql: str  # SELECT of the RAW columns (minus ds) from the temp table


def load_csv_file(con: duckdb.DuckDBPyConnection, check: FileCheck, table: str) -> _Loaded:
    """Read one file into a temp table (file order kept in rowid); work out its line numbers."""
    try:
        con.execute(f"CREATE OR REPLACE TEMP TABLE {table} AS {_read_csv_sql(check.columns)}", {"path": str(check.path)})
    except duckdb.Error as exc:
        raise RegistrationError(f"{check.path}: not a well-formed CSV: {_short(exc)}") from exc
    rows, last_line = con.execute(f"SELECT count(*), 1 + coalesce(sum(1 + newlines), 0) FROM {table}").fetchall()[0]
    if rows == 0:
        raise RegistrationError(f"{check.path}: has a header but no data rows")
    cols = ", ".join(RAW_COLUMNS)
    # A running sum of the lines each record spans gives its first line. Blank lines or
    # CR-only line ends break that arithmetic; the physical line count detects it and the
    # exact (slower) csv-module path takes over.
    if last_line == check.physical_lines:
        line_sql = (f"SELECT {cols}, $file AS source_file, "
                    f"1 + sum(1 + newlines) OVER (ORDER BY rowid ROWS UNBOUNDED PRECEDING) - newlines AS source_line "
                    f"FROM {table}")
    else:
        starts = _record_start_lines(check.path)
        if len(starts) != rows:
            raise RegistrationError(
                f"{check.path}: read {rows} records but found {len(starts)} record starts; "
                "the file mixes line endings or quoting in a way that cannot be located line by line"
            )
        import pandas as pd

        con.register(f"{table}_lines", pd.DataFrame({"rn": range(len(starts)), "line": starts}))
        con.execute(f"CREATE OR REPLACE TEMP TABLE {table}_l AS SELECT * FROM {table}_lines")
        con.unregister(f"{table}_lines")
        line_sql = (f"SELECT {cols}, $file AS source_file, l.line AS source_line FROM "
                    f"(SELECT *, row_number() OVER (ORDER BY rowid) - 1 AS rn FROM {table}) t "
                    f"JOIN {table}_l l USING (rn)")
    return _Loaded(check=check, table=table, rows=int(rows), line_sql=line_sql)


def _record_start_lines(path: Path) -> list[int]:
    """First line of every non-blank record, by Python's csv module (exact, slower)."""
    starts = []
    with open(path, encoding="utf-8-sig", newline="") as fh:
        reader = csv.reader(fh)
        next(reader, None)  # header
        before = reader.line_num
        for record in reader:
            if record:
                starts.append(before + 1)
            before = reader.line_num
    return starts


def _short(exc: BaseException, limit: int = 600) -> str:
    # DuckDB quotes the whole offending line; a 20 MB line must not end up in a log.
    text = " ".join(str(exc).split())
    return text if len(text) <= limit else text[:limit] + " ...(cut)"


def content_hash(files: list[Path]) -> str:
    """SHA-256 over the files' bytes in name order (the name itself is not part of it: the
    same content landed under another name is the same delivery)."""
    digest = hashlib.sha256()
    for path in sorted(files, key=lambda p: p.name):
        digest.update(f"{path.stat().st_size}:".encode())
        with open(path, "rb") as fh:
            while chunk := fh.read(CHUNK_BYTES):
                digest.update(chunk)
    return digest.hexdigest()


def retention_days() -> int:
    """Days a rejected delivery stays inspectable (env ``REVIEWS_REJECTED_RETENTION_DAYS``)."""
    value = os.environ.get("REVIEWS_REJECTED_RETENTION_DAYS", str(DEFAULT_RETENTION_DAYS)).strip()
    if not value.isdigit():
        raise CatalogError(f"REVIEWS_REJECTED_RETENTION_DAYS={value!r}: expected a whole number of days (e.g. 14)")
    return int(value)


# --------------------------------------------------------------------------- export


CLEAN_SELECT = f"""
SELECT r.review_id, r.product_category, r.review_body,
       CAST(trim(r.star_rating) AS INTEGER) AS star_rating,
       coalesce(TRY_CAST(r.review_date AS DATE), r.ds) AS review_date,
       r.ds
FROM {RAW} r
JOIN {PARTITIONS} p ON p.ds = r.ds AND p.passed
WHERE r.ds BETWEEN $ds_from AND $ds_to
  AND NOT EXISTS (SELECT 1 FROM {QUARANTINE} q
                  WHERE q.delivery_id = r.delivery_id AND q.ds = r.ds AND q.source_file = r.source_file
                    AND q.source_line = r.source_line)
-- A review_id landed again in a later drop is an update: the latest ds wins.
QUALIFY row_number() OVER (PARTITION BY r.review_id ORDER BY r.ds DESC, r.source_line DESC) = 1
ORDER BY r.ds, r.source_file, r.source_line
"""


# --------------------------------------------------------------------------- interface


@dataclass
class Audit:
    """What the quality gate audits: a DuckDB connection whose catalog tables (``reviews_staging``,
    ``reviews_raw``, ``reviews_quarantine``) hold the audited rows, and one target per day
    (``{"ds", "delivery_id", "staged"}``: a staged delivery, or the published partition again)."""

    con: duckdb.DuckDBPyConnection
    targets: list[dict]
    kept: dict = field(default_factory=dict)  # what a backend keeps past close_audit (e.g. quarantine rows)


class Catalog(Protocol):
    """The data catalog of one backend: DuckDB (local) or Glue + Athena over S3 (aws)."""

    settings: Settings

    def landing_partitions(self) -> list[str]:
        """The ``ds`` values with at least one ``*.csv`` in the landing zone."""

    def registered_partitions(self) -> list[str]:
        """The published ``ds`` values, oldest first."""

    def register_partition(self, ds: str, input_uri: str | None = None, *, run_id: str = "",
                           retry_rejected: bool = True) -> dict:
        """Stage the CSV file(s) of one day as a delivery for partition ``ds`` (write-audit-publish).

        Every file is checked before anything is written (a ``RegistrationError`` names the file,
        line and column); the published partition changes only when the quality gate passes the
        delivery. See :meth:`DuckDbCatalog.register_partition` (local, ``catalog_duckdb.py``) and
        ``catalog_glue.py`` (aws) for where the rows go.
        """

    def export_clean(self, ds_to: str, dest_path: Path, ds_from: str | None = None) -> int:
        """Write the validated, non-quarantined rows with ``ds`` in ``[ds_from, ds_to]`` as ONE local
        Parquet file (typed columns, see docs/CONTRACTS.md), atomically; returns the row count.

        Only partitions whose last validation passed are exported; a ``review_id`` present in
        several partitions is kept from the latest one. ``review_date`` falls back to ``ds`` when
        empty. Raises ``CatalogError`` when no passed partition lies in the range.
        """

    def open_audit(self, days: list[date]) -> Audit:
        """The rows the quality gate audits for ``days``, in DuckDB tables shaped like the local catalog."""

    def close_audit(self, audit: Audit) -> None:
        """Release the audit's connection (keeping what :meth:`record_verdict` needs)."""

    def record_verdict(self, audit: Audit, summary: dict, reason: str) -> None:
        """Publish the staged deliveries that passed (or mark them rejected) and store the quarantine."""

    def query(self, sql: str, params: dict) -> pd.DataFrame:
        """Run one analysis query (DuckDB dialect, ``$name`` parameters) over ``reviews.reviews_typed``."""

    def data_status(self) -> dict:
        """What ``make data-status`` prints: every published partition (delivery, rows, last audit)
        and every delivery waiting for the gate or rejected by it (still inspectable or expired),
        with ``catalog`` (where it lives) and ``staging_table`` (where to inspect a delivery)."""


def export_range(ds_to: str, ds_from: str | None) -> tuple[date, date]:
    """``(from, to)`` days of an export, checked."""
    to_day = parse_ds(ds_to)
    from_day = parse_ds(ds_from) if ds_from else date(1970, 1, 1)
    if from_day > to_day:
        raise CatalogError(f"ds_from={from_day} is after ds_to={to_day}")
    return from_day, to_day


def no_passed_partition(from_day: date, to_day: date, known: list[str]) -> CatalogError:
    """The error of an export whose range holds no validated partition."""
    return CatalogError(f"no validated partition with ds in [{from_day}, {to_day}]; register and validate first "
                        f"(registered: {', '.join(known) or 'none'})")


def copy_clean(con: duckdb.DuckDBPyConnection, from_day: date, to_day: date, dest_path: Path) -> int:
    """:data:`CLEAN_SELECT` over ``con``'s catalog tables into ``dest_path`` (temp name, then rename)."""
    dest = Path(dest_path)
    dest.parent.mkdir(parents=True, exist_ok=True)
    tmp = dest.with_name(f".{dest.name}.tmp-{os.getpid()}")
    try:
        con.execute(f"COPY ({CLEAN_SELECT}) TO '{_sql_str(str(tmp))}' (FORMAT parquet)",
                    {"ds_from": from_day, "ds_to": to_day})
        rows = con.execute(f"SELECT count(*) FROM read_parquet('{_sql_str(str(tmp))}')").fetchall()[0][0]
        os.replace(tmp, dest)
    except duckdb.Error as exc:
        raise CatalogError(f"export of ds {from_day}..{to_day} to {dest} failed: {_short(exc)}") from exc
    finally:
        if tmp.exists():
            tmp.unlink()
    log.info("exported %d clean rows of ds %s..%s to %s", rows, from_day, to_day, dest)
    return int(rows)


def verdict_deliveries(audit: Audit, summary: dict) -> list[dict]:
    """``{"delivery_id", "bad_rows", "ds"}`` of the staged deliveries the verdict acts on: all of
    them when the gate passed, else those that fail on their own (the others stay staged)."""
    return [{"delivery_id": t["delivery_id"], "ds": t["ds"], "bad_rows": summary["bad_rows_per_ds"][t["ds"].isoformat()]}
            for t in audit.targets if t["staged"] and (summary["passed"] or t.get("own_failure"))]


