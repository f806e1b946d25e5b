"""The local backend's catalog: :class:`DuckDbCatalog`, one DuckDB database file
(``Settings.catalog_path``), and the local catalog's own operations (connect, stage, publish,
reject, purge, status). The layout, the file checks and the interface are ``catalog_base.py``."""
from __future__ import annotations

import logging
import time
from datetime import date
from pathlib import Path
from typing import TYPE_CHECKING

import duckdb

from include.common.config import Settings, get_settings
from include.data.catalog_base import (
    DELIVERIES,
    EXPIRED,
    LOCK_TIMEOUT_S,
    PARTITIONS,
    PUBLISHED,
    QUARANTINE,
    RAW,
    REJECTED,
    SCHEMA,
    STAGED,
    STAGING,
    SUPERSEDED,
    Audit,
    CatalogError,
    FileCheck,
    RegistrationError,
    _ensure_schema,
    _memory_limit,
    _short,
    _sql_str,
    content_hash,
    copy_clean,
    export_range,
    inspect_file,
    landing_root,
    load_csv_file,
    no_passed_partition,
    parse_ds,
    resolve_input,
    retention_days,
    verdict_deliveries,
)
from include.data.schema import RAW_COLUMNS

if TYPE_CHECKING:
    import pandas as pd

log = logging.getLogger(__name__)


def connect(settings: Settings | None = None, read_only: bool = False) -> duckdb.DuckDBPyConnection:
    """Open the catalog (creating schema, tables and comments), waiting while another
    process holds DuckDB's write lock (up to ``LOCK_TIMEOUT_S``, with back-off)."""
    settings = settings or get_settings()
    path = settings.catalog_path
    path.parent.mkdir(parents=True, exist_ok=True)
    if read_only and not path.exists():
        read_only = False  # nothing to read yet: create the empty catalog
    deadline, delay = time.monotonic() + LOCK_TIMEOUT_S, 0.2
    while True:
        try:
            con = duckdb.connect(str(path), read_only=read_only)
            break
        except duckdb.IOException as exc:
            if "lock" not in str(exc).lower() or time.monotonic() > deadline:
                raise CatalogError(f"{path}: cannot open the catalog: {exc}") from exc
            log.info("catalog %s is locked by another process; retrying in %.1fs", path, delay)
            time.sleep(delay)
            delay = min(delay * 2, 5.0)
    # Bounded memory: DuckDB spills to disk beyond the limit instead of growing.
    con.execute(f"SET memory_limit = '{_memory_limit()}'")
    con.execute("SET enable_progress_bar = false")
    if not read_only:
        con.execute(f"SET temp_directory = '{_sql_str(str(path.parent / 'duckdb_tmp'))}'")
        _ensure_schema(con)
    return con


def partition_status(settings: Settings | None = None) -> list[dict]:
    """All rows of ``reviews.partitions`` as dicts (ds as ``YYYY-MM-DD``), oldest first."""
    con = connect(settings, read_only=True)
    try:
        if not _has_table(con, "partitions"):
            return []
        cur = con.execute(f"SELECT * FROM {PARTITIONS} ORDER BY ds")
        names = [d[0] for d in cur.description]
        out = [dict(zip(names, row)) for row in cur.fetchall()]
        for row in out:
            row["ds"] = row["ds"].isoformat()
        return out
    finally:
        con.close()


def _has_table(con: duckdb.DuckDBPyConnection, name: str) -> bool:
    return bool(
        con.execute(
            "SELECT count(*) FROM duckdb_tables() WHERE schema_name = ? AND table_name = ?", [SCHEMA, name]
        ).fetchall()[0][0]
    )


def purge_expired(con: duckdb.DuckDBPyConnection) -> int:
    """Drop the staged and quarantined rows of deliveries rejected more than the retention
    period ago (their ``deliveries`` row stays, as ``expired``); returns how many."""
    cutoff = {"days": retention_days()}
    expired = [r[0] for r in con.execute(
        f"SELECT delivery_id FROM {DELIVERIES} WHERE status = '{REJECTED}' "
        "AND audited_at < now()::TIMESTAMP - to_days(CAST($days AS INTEGER))", cutoff).fetchall()]
    if not expired:
        return 0
    ids = {"ids": expired}
    con.execute("BEGIN TRANSACTION")
    try:
        con.execute(f"DELETE FROM {STAGING} WHERE list_contains($ids, delivery_id)", ids)
        con.execute(f"DELETE FROM {QUARANTINE} WHERE list_contains($ids, delivery_id)", ids)
        con.execute(f"UPDATE {DELIVERIES} SET status = '{EXPIRED}' WHERE list_contains($ids, delivery_id)", ids)
        con.execute("COMMIT")
    except Exception:
        con.execute("ROLLBACK")
        raise
    log.info("purged %d rejected deliveries older than %d days: %s", len(expired), cutoff["days"], ", ".join(expired))
    return len(expired)


def _delivery(con: duckdb.DuckDBPyConnection, delivery_id: str) -> dict | None:
    cur = con.execute(f"SELECT * FROM {DELIVERIES} WHERE delivery_id = ?", [delivery_id])
    row = cur.fetchone()
    return dict(zip([d[0] for d in cur.description], row)) if row else None


def _set_status(con: duckdb.DuckDBPyConnection, ids: list[str], status: str) -> None:
    con.execute(f"UPDATE {DELIVERIES} SET status = $status WHERE list_contains($ids, delivery_id)",
                {"status": status, "ids": ids})


def _stage(con: duckdb.DuckDBPyConnection, day: date, delivery_id: str, checks: list[FileCheck], digest: str,
           run_id: str) -> int:
    """Load the files into temp tables, then write staging + delivery rows in one transaction."""
    loaded = [load_csv_file(con, check, f"_load_{i}") for i, check in enumerate(checks)]
    rows = sum(item.rows for item in loaded)
    cols = ", ".join(RAW_COLUMNS)
    con.execute("BEGIN TRANSACTION")
    try:
        # A delivery of the day that never reached the gate is replaced by this newer one.
        pending = [r[0] for r in con.execute(
            f"SELECT delivery_id FROM {DELIVERIES} WHERE ds = ? AND status = '{STAGED}'", [day]).fetchall()]
        con.execute(f"DELETE FROM {STAGING} WHERE list_contains($ids, delivery_id)", {"ids": [*pending, delivery_id]})
        _set_status(con, pending, SUPERSEDED)
        for item in loaded:
            con.execute(
                f"INSERT INTO {STAGING} ({cols}, ds, source_file, source_line, delivery_id) "
                f"SELECT {cols}, $ds, source_file, source_line, $delivery FROM ({item.line_sql})",
                {"ds": day, "file": str(item.check.path), "delivery": delivery_id},
            )
        con.execute(f"DELETE FROM {DELIVERIES} WHERE delivery_id = ?", [delivery_id])  # an expired one
        con.execute(
            f"INSERT INTO {DELIVERIES} (delivery_id, ds, content_hash, files, rows, bytes, staged_at, staged_by_run, "
            f"status) VALUES (?, ?, ?, ?, ?, ?, now()::TIMESTAMP, ?, '{STAGED}')",
            [delivery_id, day, digest, [str(c.path) for c in checks], rows, sum(c.bytes for c in checks), run_id],
        )
        con.execute("COMMIT")
    except Exception:
        con.execute("ROLLBACK")
        raise
    return rows


def staged_delivery(con: duckdb.DuckDBPyConnection, day: date) -> dict | None:
    """The delivery of ``day`` waiting for the gate, if any."""
    row = con.execute(f"SELECT delivery_id FROM {DELIVERIES} WHERE ds = ? AND status = '{STAGED}' "
                      "ORDER BY staged_at DESC LIMIT 1", [day]).fetchone()
    return _delivery(con, row[0]) if row else None


def publish_deliveries(con: duckdb.DuckDBPyConnection, audits: list[dict], run_id: str, report_path: str) -> None:
    """Swap each audited delivery into ``reviews_raw`` - ALL in one transaction.

    ``audits``: ``{"delivery_id", "bad_rows"}`` per staged (or re-audited rejected) delivery that
    passed the gate. Readers see
    the previous partitions or the new ones, never a mix or none (DuckDB's MVCC). The staged
    rows move to ``reviews_raw``; the day's earlier published delivery becomes ``superseded``
    and its quarantine rows go.
    """
    cols = ", ".join(RAW_COLUMNS)
    con.execute("BEGIN TRANSACTION")
    try:
        for audit in audits:
            d = _delivery(con, audit["delivery_id"])
            if d is None or d["status"] not in (STAGED, REJECTED):  # a rejected one may be audited again
                raise CatalogError(f"delivery {audit['delivery_id']} is not staged (status "
                                   f"{d and d['status']}); register it again")
            day, ids = d["ds"], {"id": d["delivery_id"]}
            con.execute(f"DELETE FROM {RAW} WHERE ds = ?", [day])
            con.execute(f"INSERT INTO {RAW} ({cols}, ds, source_file, source_line, delivery_id) "
                        f"SELECT {cols}, ds, source_file, source_line, delivery_id FROM {STAGING} "
                        "WHERE delivery_id = $id ORDER BY source_file, source_line", ids)
            con.execute(f"DELETE FROM {STAGING} WHERE delivery_id = $id", ids)
            con.execute(f"DELETE FROM {QUARANTINE} WHERE ds = ? AND delivery_id IN "
                        f"(SELECT delivery_id FROM {DELIVERIES} WHERE ds = ? AND status = '{PUBLISHED}' "
                        "UNION ALL SELECT CAST(? AS VARCHAR) || '-legacy')", [day, day, day.isoformat()])
            con.execute(f"UPDATE {DELIVERIES} SET status = '{SUPERSEDED}' WHERE ds = ? AND status = '{PUBLISHED}'",
                        [day])
            con.execute(f"UPDATE {DELIVERIES} SET status = '{PUBLISHED}', audited_at = now()::TIMESTAMP, "
                        "audit_run_id = ?, bad_rows = ?, reason = NULL, report_path = ? WHERE delivery_id = ?",
                        [run_id, audit["bad_rows"], report_path, d["delivery_id"]])
            con.execute(f"DELETE FROM {PARTITIONS} WHERE ds = ?", [day])
            con.execute(
                f"INSERT INTO {PARTITIONS} (ds, files, rows, bytes, registered_at, validated_at, validation_run_id, "
                "bad_rows, passed, delivery_id, content_hash) VALUES (?, ?, ?, ?, ?, now()::TIMESTAMP, ?, ?, true, ?, ?)",
                [day, d["files"], d["rows"], d["bytes"], d["staged_at"], run_id, audit["bad_rows"],
                 d["delivery_id"], d["content_hash"]],
            )
        con.execute("COMMIT")
    except Exception:
        con.execute("ROLLBACK")
        raise
    log.info("published %d deliver%s: %s", len(audits), "y" if len(audits) == 1 else "ies",
             ", ".join(a["delivery_id"] for a in audits))


def reject_deliveries(con: duckdb.DuckDBPyConnection, audits: list[dict], run_id: str, reason: str,
                      report_path: str) -> None:
    """Mark deliveries refused by the gate; their staged and quarantined rows stay for
    inspection until the retention period ends. The published partitions are not touched."""
    con.execute("BEGIN TRANSACTION")
    try:
        for audit in audits:
            con.execute(f"UPDATE {DELIVERIES} SET status = '{REJECTED}', audited_at = now()::TIMESTAMP, "
                        "audit_run_id = ?, bad_rows = ?, reason = ?, report_path = ? WHERE delivery_id = ?",
                        [run_id, audit["bad_rows"], reason, report_path, audit["delivery_id"]])
        con.execute("COMMIT")
    except Exception:
        con.execute("ROLLBACK")
        raise


def published_deliveries(ds_to: str, ds_from: str | None = None, settings: Settings | None = None) -> list[dict]:
    """The published deliveries with ``ds`` in ``[ds_from, ds_to]`` of the local catalog - what
    :func:`export_clean` reads - as ``{"ds", "delivery_id", "content_hash", "rows", "bad_rows"}``,
    oldest first: the identity of a run's input data (step caching keys on it; local backend only)."""
    to_day, from_day = parse_ds(ds_to), parse_ds(ds_from) if ds_from else date(1970, 1, 1)
    con = connect(settings, read_only=True)
    try:
        if not _has_table(con, "partitions"):
            return []
        cur = con.execute(f"SELECT CAST(ds AS VARCHAR) AS ds, delivery_id, content_hash, rows, bad_rows FROM {PARTITIONS} "
                          "WHERE passed AND ds BETWEEN ? AND ? ORDER BY ds", [from_day, to_day])
        names = [d[0] for d in cur.description]
        return [dict(zip(names, row)) for row in cur.fetchall()]
    finally:
        con.close()


def table_counts(settings: Settings | None = None) -> dict[str, int]:
    """Row counts of the catalog tables (handy in logs and tests)."""
    con = connect(settings, read_only=True)
    try:
        return {
            t.split(".")[1]: con.execute(f"SELECT count(*) FROM {t}").fetchall()[0][0] if _has_table(con, t.split(".")[1]) else 0
            for t in (RAW, QUARANTINE, PARTITIONS, STAGING, DELIVERIES)
        }
    finally:
        con.close()


def duckdb_params(sql: str, params: dict) -> dict:
    """The bind parameters ``sql`` uses (DuckDB rejects named parameters a statement does not use)."""
    return {k: v for k, v in params.items() if f"${k}" in sql}


def audit_targets(con: duckdb.DuckDBPyConnection, days: list[date]) -> list[dict]:
    """Per day, what the gate audits: its newest delivery still staged (or rejected but still
    inspectable: audited again, e.g. with new thresholds), else its published partition."""
    targets = []
    for day in days:
        newest = con.execute(
            f"SELECT delivery_id, status FROM {DELIVERIES} WHERE ds = ? AND status IN (?, ?, ?) "
            "ORDER BY staged_at DESC LIMIT 1", [day, STAGED, REJECTED, PUBLISHED]).fetchone()
        if newest and newest[1] in (STAGED, REJECTED):
            targets.append({"ds": day, "delivery_id": newest[0], "staged": True})
            continue
        published = con.execute(f"SELECT delivery_id FROM {PARTITIONS} WHERE ds = ?", [day]).fetchone()
        if not published:
            raise CatalogError(f"partition {day} not registered (no staged delivery, nothing published); run "
                               "catalog.register_partition first")
        targets.append({"ds": day, "delivery_id": published[0], "staged": False})
    return targets


class DuckDbCatalog:
    """The local backend's catalog: one DuckDB database file (``Settings.catalog_path``)."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings

    def landing_partitions(self) -> list[str]:
        """The ``ds`` values with at least one ``*.csv`` under ``landing/reviews/ds=<ds>/``."""
        root = landing_root(self.settings)
        if not root.is_dir():
            return []
        found = []
        for child in root.iterdir():
            if child.is_dir() and child.name.startswith("ds=") and any(child.glob("*.csv")):
                try:
                    found.append(parse_ds(child.name[3:]).isoformat())
                except CatalogError:
                    log.warning("ignoring %s: not a ds=YYYY-MM-DD folder", child)
        return sorted(found)

    def registered_partitions(self) -> list[str]:
        """The ``ds`` values registered in ``reviews.partitions``, oldest first."""
        con = connect(self.settings, read_only=True)
        try:
            if not _has_table(con, "partitions"):
                return []
            rows = con.execute(f"SELECT CAST(ds AS VARCHAR) FROM {PARTITIONS} ORDER BY ds").fetchall()
            return [r[0] for r in rows]
        finally:
            con.close()

    def register_partition(self, ds: str, input_uri: str | None = None, *, run_id: str = "",
                           retry_rejected: bool = True) -> dict:
        """Stage the CSV file(s) of one day as a delivery for partition ``ds`` (write-audit-publish).

        ``input_uri`` is a ``file://`` URI or path of a file or a folder of ``*.csv``; by default
        ``landing/reviews/ds=<ds>/``. Every file is checked before anything is written; any
        problem raises ``RegistrationError`` and leaves the catalog unchanged. The rows go to
        ``reviews.reviews_staging`` (one transaction); the published partition is replaced only
        when the quality gate passes them (:func:`publish_deliveries`).

        Returns ``{"ds", "rows", "files", "bytes", "delivery_id", "content_hash", "status"}`` where
        ``status`` is ``staged`` (waiting for the gate), ``unchanged`` (identical to the published
        delivery: nothing to do) or ``rejected`` (identical to a delivery the gate refused, and
        ``retry_rejected`` is false: not staged again). Staging the same content twice is idempotent.
        """
        settings = self.settings
        try:
            day = parse_ds(ds)
        except CatalogError as exc:
            raise RegistrationError(str(exc)) from exc
        files = resolve_input(day.isoformat(), input_uri, settings)
        checks = [inspect_file(f) for f in files]
        digest = content_hash([c.path for c in checks])
        delivery_id = f"{day.isoformat()}-{digest[:12]}"
        result = {"ds": day.isoformat(), "files": [str(c.path) for c in checks], "bytes": sum(c.bytes for c in checks),
                  "delivery_id": delivery_id, "content_hash": digest}
        started = time.monotonic()
        con = connect(settings)
        try:
            purge_expired(con)
            published = con.execute(f"SELECT delivery_id, content_hash, rows FROM {PARTITIONS} WHERE ds = ?",
                                    [day]).fetchone()
            if published and published[1] == digest:
                log.info("ds=%s: delivery %s is identical to the published one (same SHA-256): nothing to do",
                         day, published[0])
                return {**result, "delivery_id": published[0], "rows": int(published[2]), "status": "unchanged"}
            earlier = _delivery(con, delivery_id)
            if earlier and earlier["status"] == STAGED:
                log.info("ds=%s: delivery %s is already staged (by run %s), waiting for the gate", day, delivery_id,
                         earlier["staged_by_run"])
                return {**result, "rows": int(earlier["rows"]), "status": STAGED}
            if earlier and earlier["status"] == REJECTED:
                if not retry_rejected:
                    log.warning("ds=%s: delivery %s is identical to one the gate rejected (run %s: %s); not staged "
                                "again - `make data-status` lists it, report %s", day, delivery_id,
                                earlier["audit_run_id"], earlier["reason"], earlier["report_path"])
                    return {**result, "rows": int(earlier["rows"]), "status": REJECTED}
                _set_status(con, [delivery_id], STAGED)  # its staged rows are still there: audit them again
                log.info("ds=%s: delivery %s was rejected before (run %s); staged again for a new audit", day,
                         delivery_id, earlier["audit_run_id"])
                return {**result, "rows": int(earlier["rows"]), "status": STAGED}
            rows = _stage(con, day, delivery_id, checks, digest, run_id)
        except duckdb.Error as exc:
            raise RegistrationError(f"ds={day}: staging {', '.join(map(str, files))} failed: {_short(exc)}") from exc
        finally:
            con.close()  # temp tables go with the connection
        log.info("staged ds=%s as delivery %s: %d rows from %d file(s), %d bytes in %.1fs; the quality gate "
                 "publishes it", day, delivery_id, rows, len(checks), result["bytes"], time.monotonic() - started)
        return {**result, "rows": rows, "status": STAGED}

    def export_clean(self, ds_to: str, dest_path: Path, ds_from: str | None = None) -> int:
        """:func:`export_clean` from the DuckDB catalog."""
        from_day, to_day = export_range(ds_to, ds_from)
        con = connect(self.settings, read_only=True)
        try:
            if not _has_table(con, "partitions"):
                raise CatalogError(f"{self.settings.catalog_path}: no partition registered yet")
            passed = con.execute(
                f"SELECT count(*) FROM {PARTITIONS} WHERE passed AND ds BETWEEN ? AND ?", [from_day, to_day]
            ).fetchall()[0][0]
            if not passed:
                known = con.execute(f"SELECT CAST(ds AS VARCHAR) FROM {PARTITIONS} ORDER BY ds").fetchall()
                raise no_passed_partition(from_day, to_day, [r[0] for r in known])
            return copy_clean(con, from_day, to_day, dest_path)
        finally:
            con.close()

    def open_audit(self, days: list[date]) -> Audit:
        """The catalog itself: the gate's SQL runs on the real tables."""
        con = connect(self.settings)
        try:
            return Audit(con=con, targets=audit_targets(con, days))
        except BaseException:
            con.close()
            raise

    def close_audit(self, audit: Audit) -> None:
        """Close the connection (GX then runs without holding DuckDB's write lock)."""
        audit.con.close()

    def record_verdict(self, audit: Audit, summary: dict, reason: str) -> None:
        """Publish the staged deliveries that passed (one transaction), or mark them rejected;
        a re-audited published partition only gets its validation bookkeeping updated.
        (The quarantine rows were written by the gate's SQL, in this catalog.)"""
        staged = verdict_deliveries(audit, summary)
        con = connect(self.settings)
        try:
            if staged and summary["passed"]:
                publish_deliveries(con, staged, summary["run_id"], summary["report_path"])
            elif staged:
                reject_deliveries(con, staged, summary["run_id"], reason, summary["report_path"])
            con.execute("BEGIN TRANSACTION")
            for t in audit.targets:
                if not t["staged"]:
                    con.execute(
                        f"UPDATE {PARTITIONS} SET validated_at = now()::TIMESTAMP, validation_run_id = ?, "
                        "bad_rows = ?, passed = ? WHERE ds = ?",
                        [summary["run_id"], summary["bad_rows_per_ds"][t["ds"].isoformat()], summary["passed"],
                         t["ds"]],
                    )
            con.execute("COMMIT")
        finally:
            con.close()

    def data_status(self) -> dict:
        """What ``make data-status`` prints: every published partition (delivery, rows, last audit)
        and every delivery waiting for the gate or rejected by it (still inspectable or expired)."""
        con = connect(self.settings, read_only=True)
        try:
            if not _has_table(con, "deliveries"):
                con.close()
                con = connect(self.settings)  # a catalog from before write-audit-publish: migrate it
            cur = con.execute(
                f"SELECT CAST(p.ds AS VARCHAR) AS ds, p.delivery_id, p.rows, p.bad_rows, p.validated_at, "
                f"p.validation_run_id, p.passed, p.files FROM {PARTITIONS} p ORDER BY p.ds")
            names = [d[0] for d in cur.description]
            partitions = [dict(zip(names, r)) for r in cur.fetchall()]
            cur = con.execute(
                f"SELECT delivery_id, CAST(ds AS VARCHAR) AS ds, status, rows, bad_rows, staged_at, staged_by_run, "
                f"audited_at, audit_run_id, reason, report_path, files, "
                f"(SELECT count(*) FROM {STAGING} s WHERE s.delivery_id = d.delivery_id) AS staged_rows, "
                f"(SELECT count(*) FROM {QUARANTINE} q WHERE q.delivery_id = d.delivery_id) AS quarantined_rows "
                f"FROM {DELIVERIES} d WHERE status IN ('{STAGED}', '{REJECTED}', '{EXPIRED}') ORDER BY ds, staged_at")
            names = [d[0] for d in cur.description]
            waiting = [dict(zip(names, r)) for r in cur.fetchall()]
        finally:
            con.close()
        return {"partitions": partitions, "deliveries": waiting, "retention_days": retention_days(),
                "catalog": str(self.settings.catalog_path), "staging_table": STAGING}

    def query(self, sql: str, params: dict) -> pd.DataFrame:
        """Run ``sql`` with its bound parameters on the DuckDB catalog."""
        con = connect(self.settings)
        try:
            return con.execute(sql, duckdb_params(sql, params)).df()
        finally:
            con.close()
