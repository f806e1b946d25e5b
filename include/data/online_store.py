"""Online feature store: the latest record per record identifier, for low-latency reads.

Two implementations of :class:`OnlineStore`, chosen by :func:`get_online_store` from
``REVIEWS_ONLINE_STORE`` (``sqlite``, the default, or ``redis``):

- :class:`SqliteOnlineStore`: an embedded SQLite file (``Settings.online_store_path``), one
  table per feature group keyed by the record identifier (WAL mode, so reads never block on
  a writer).
- :class:`RedisOnlineStore`: one hash per record (``<prefix><group>:<id>`` -> ``t`` event time,
  ``v`` the record) on ``REVIEWS_REDIS_URL`` (default ``redis://127.0.0.1:6379/0``).

Writes are conditional: a record replaces the stored one only when its event time is the same
or later, so ingesting an old day after a newer one (a backfill) never rolls the online store
back. Records travel as JSON made by DuckDB's ``to_json`` (dates ``YYYY-MM-DD``, timestamps
``YYYY-MM-DD HH:MM:SS``); event times are integer
microseconds since the epoch so both stores compare them as numbers.
"""
from __future__ import annotations

import json
import os
import re
import sqlite3
import threading
from abc import ABC, abstractmethod
from pathlib import Path
from typing import Iterable

from include.common.config import ConfigError, Settings, get_settings

ONLINE_STORES = ("sqlite", "redis")
DEFAULT_REDIS_URL = "redis://127.0.0.1:6379/0"
_NAME = re.compile(r"^[a-z][a-z0-9_]{0,62}$")


class OnlineStoreError(RuntimeError):
    """The online store cannot be read or written (names the store and the record)."""


def _check_group(group: str) -> str:
    # the group name becomes a table name / key part: only a plain identifier may
    if not _NAME.match(group or ""):
        raise OnlineStoreError(f"feature group name {group!r}: expected [a-z][a-z0-9_]*")
    return group


class OnlineStore(ABC):
    """Latest record per identifier of each feature group."""

    @abstractmethod
    def put_records(self, group: str, rows: Iterable[tuple[str, int, str]]) -> int:
        """Write ``(record_id, event_time_us, record_json)`` rows; a row wins when its event time
        is >= the stored one. Returns the number of rows offered."""

    @abstractmethod
    def get_record(self, group: str, record_id: str) -> dict | None:
        """The latest record of ``record_id``, or ``None``."""

    @abstractmethod
    def batch_get_record(self, group: str, record_ids: list[str]) -> dict[str, dict]:
        """The latest records of ``record_ids`` that exist, by id."""

    @abstractmethod
    def count(self, group: str) -> int:
        """How many record identifiers the group holds."""

    @abstractmethod
    def clear(self, group: str) -> None:
        """Drop every record of the group (a rebuild from the offline store follows)."""

    def close(self) -> None:  # noqa: B027 - optional hook: stores without connections keep it
        """Release connections."""


class SqliteOnlineStore(OnlineStore):
    """The embedded default: one SQLite file, one table per feature group."""

    def __init__(self, path: Path) -> None:
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._local = threading.local()  # a sqlite3 connection belongs to one thread
        self._ready: set[str] = set()

    def _con(self) -> sqlite3.Connection:
        con = getattr(self._local, "con", None)
        if con is None:
            con = sqlite3.connect(self.path, timeout=60, isolation_level=None)
            con.execute("PRAGMA journal_mode=WAL")
            con.execute("PRAGMA synchronous=NORMAL")  # WAL + NORMAL: durable at checkpoint, never corrupt
            self._local.con = con
        return con

    def _table(self, group: str) -> str:
        table = f"fg_{_check_group(group)}"
        if table not in self._ready:
            self._con().execute(f"CREATE TABLE IF NOT EXISTS {table} (record_id TEXT PRIMARY KEY, "
                                "event_time INTEGER NOT NULL, record TEXT NOT NULL) WITHOUT ROWID")
            self._ready.add(table)
        return table

    def put_records(self, group: str, rows: Iterable[tuple[str, int, str]]) -> int:
        table, con = self._table(group), self._con()
        rows = list(rows)
        try:
            con.execute("BEGIN IMMEDIATE")
            con.executemany(
                f"INSERT INTO {table} (record_id, event_time, record) VALUES (?, ?, ?) "
                f"ON CONFLICT(record_id) DO UPDATE SET event_time = excluded.event_time, record = excluded.record "
                f"WHERE excluded.event_time >= {table}.event_time", rows)
            con.execute("COMMIT")
        except sqlite3.Error as exc:
            con.execute("ROLLBACK")
            raise OnlineStoreError(f"{self.path}: writing {len(rows)} record(s) of {group}: {exc}") from exc
        return len(rows)

    def get_record(self, group: str, record_id: str) -> dict | None:
        row = self._con().execute(f"SELECT record FROM {self._table(group)} WHERE record_id = ?",
                                  (str(record_id),)).fetchone()
        return json.loads(row[0]) if row else None

    def batch_get_record(self, group: str, record_ids: list[str]) -> dict[str, dict]:
        table, out = self._table(group), {}
        ids = [str(i) for i in record_ids]
        for start in range(0, len(ids), 500):  # stay under SQLite's bound-parameter limit
            chunk = ids[start:start + 500]
            marks = ",".join("?" * len(chunk))
            for rid, rec in self._con().execute(
                    f"SELECT record_id, record FROM {table} WHERE record_id IN ({marks})", chunk):
                out[rid] = json.loads(rec)
        return out

    def count(self, group: str) -> int:
        return self._con().execute(f"SELECT count(*) FROM {self._table(group)}").fetchone()[0]

    def clear(self, group: str) -> None:
        self._con().execute(f"DELETE FROM {self._table(group)}")

    def close(self) -> None:
        con = getattr(self._local, "con", None)
        if con is not None:
            con.close()
            self._local.con = None


# KEYS[1] the record's hash; ARGV[1] event time (us), ARGV[2] the record: newer-or-equal wins.
_PUT_LUA = """
local cur = redis.call('HGET', KEYS[1], 't')
if (not cur) or tonumber(ARGV[1]) >= tonumber(cur) then
  redis.call('HSET', KEYS[1], 't', ARGV[1], 'v', ARGV[2])
  return 1
end
return 0
"""


class RedisOnlineStore(OnlineStore):
    """Redis option: a hash per record, written by a Lua script so the event-time check and the
    write are one atomic step."""

    def __init__(self, url: str = DEFAULT_REDIS_URL, prefix: str = "reviews:fs:") -> None:
        import redis

        self.url, self.prefix = url, prefix
        self._redis = redis.Redis.from_url(url)
        try:
            self._redis.ping()
        except redis.RedisError as exc:
            raise OnlineStoreError(f"online store {url}: Redis is not reachable ({exc}); start it or set "
                                   "REVIEWS_ONLINE_STORE=sqlite") from exc
        self._put = self._redis.register_script(_PUT_LUA)

    def _key(self, group: str, record_id: str) -> str:
        return f"{self.prefix}{_check_group(group)}:{record_id}"

    def put_records(self, group: str, rows: Iterable[tuple[str, int, str]]) -> int:
        n = 0
        pipe = self._redis.pipeline(transaction=False)
        for rid, event_us, rec in rows:
            self._put(keys=[self._key(group, rid)], args=[event_us, rec], client=pipe)
            n += 1
            if n % 5000 == 0:
                pipe.execute()
        pipe.execute()
        return n

    def get_record(self, group: str, record_id: str) -> dict | None:
        raw = self._redis.hget(self._key(group, str(record_id)), "v")
        return json.loads(raw) if raw else None

    def batch_get_record(self, group: str, record_ids: list[str]) -> dict[str, dict]:
        pipe = self._redis.pipeline(transaction=False)
        ids = [str(i) for i in record_ids]
        for rid in ids:
            pipe.hget(self._key(group, rid), "v")
        return {rid: json.loads(raw) for rid, raw in zip(ids, pipe.execute(), strict=True) if raw}

    def _keys(self, group: str) -> Iterable[bytes]:
        return self._redis.scan_iter(match=f"{self.prefix}{_check_group(group)}:*", count=1000)

    def count(self, group: str) -> int:
        return sum(1 for _ in self._keys(group))

    def clear(self, group: str) -> None:
        batch = []
        for key in self._keys(group):
            batch.append(key)
            if len(batch) == 1000:
                self._redis.delete(*batch)
                batch = []
        if batch:
            self._redis.delete(*batch)

    def close(self) -> None:
        self._redis.close()


def get_online_store(settings: Settings | None = None) -> OnlineStore:
    """The online store named by ``REVIEWS_ONLINE_STORE`` (``sqlite`` default, or ``redis``)."""
    settings = settings or get_settings()
    kind = os.environ.get("REVIEWS_ONLINE_STORE", "sqlite").strip().lower()
    if kind == "sqlite":
        return SqliteOnlineStore(settings.online_store_path)
    if kind == "redis":
        return RedisOnlineStore(os.environ.get("REVIEWS_REDIS_URL", DEFAULT_REDIS_URL),
                                os.environ.get("REVIEWS_REDIS_PREFIX", "reviews:fs:"))
    raise ConfigError(f"REVIEWS_ONLINE_STORE={kind!r} is not one of {', '.join(ONLINE_STORES)}")
