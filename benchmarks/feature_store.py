"""Feature store throughput and latency (issue #14): writes benchmarks/results/feature_store.json.

Measures, in a throw-away state dir (REVIEWS_HOME is set to a temporary folder):

1. the real dataset's features (data/womens_clothing_ecommerce_reviews.csv.gz, cleaned, split
   and tokenised by the preprocess job's own functions) ingested into the offline and online
   stores;
2. ``--records`` (default 1,000,000) synthetic records (token ids of 16..64 tokens) ingested,
   then a second day updating ``--update-share`` of them;
3. the point-in-time read (latest record per review_id as of the first day) over all of them;
4. ``--gets`` online ``get_record`` calls on random ids: p50 / p99;
5. the same on Redis for ``--redis-records`` records when ``--redis-url`` answers.

Baselines in the same run, so the figures can be compared across machines: a plain
``pyarrow.parquet.write_table`` of the same synthetic records (what an offline ingestion costs
beyond writing Parquet) and a plain DuckDB ``count(*)`` scan of the offline store (what the
point-in-time read costs beyond reading the data).

Targets (issue #14): offline ingestion >= 50,000 records/s, online get p99 < 2 ms,
point-in-time read of 1M records < 5 s.

    python benchmarks/feature_store.py [--records 1000000] [--gets 20000]
"""
from __future__ import annotations

import argparse
import logging
import os
import random
import shutil
import statistics
import sys
import tempfile
import time
from datetime import datetime, timedelta
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT), str(ROOT / "include" / "scripts"), str(Path(__file__).resolve().parent)]

from _common import write_result  # noqa: E402

DAY1, DAY2 = datetime(2026, 11, 1), datetime(2026, 11, 2)


def cpu_flags() -> list[str]:
    """CPU feature flags from /proc/cpuinfo (empty where unavailable)."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("flags"):
                return sorted(line.split(":", 1)[1].split())
    except OSError:
        pass
    return []


def real_features(when: datetime):
    """The real dataset through the preprocess job's clean/split/tokenize, as feature records."""
    import pandas as pd
    import pyarrow as pa
    from preprocess import clean, split, tokenize

    from include.scripts.common import default_model_dir

    raw = pd.read_csv(ROOT / "data" / "womens_clothing_ecommerce_reviews.csv.gz", dtype=str, keep_default_na=False)
    raw = raw.rename(columns={"Review Text": "review_body", "Rating": "star_rating", "Class Name": "product_category"})
    if "review_id" not in raw:
        raw["review_id"] = [f"r{i}" for i in range(len(raw))]
    df, _ = clean(raw[[c for c in ("review_id", "review_body", "star_rating", "product_category") if c in raw]])
    df = split(df, 0.9, 0.05, False, 42)
    df["input_ids"] = tokenize(df["review_body"].tolist(), default_model_dir(), 128)
    return pa.table({
        "review_id": df["review_id"].astype(str), "event_time": pa.array([when] * len(df), pa.timestamp("us")),
        "product_category": df["product_category"].astype(str), "review_body": df["review_body"],
        "star_rating": pa.array(df["star_rating"].astype("int8")), "sentiment": pa.array(df["sentiment"]),
        "label_id": pa.array(df["label_id"]), "input_ids": pa.array(df["input_ids"], pa.list_(pa.int32())),
        "split_type": df["split_type"]})


def synthetic(n: int, when: datetime, start: int = 0, seed: int = 0):
    """``n`` synthetic records with ids s<start>..; token lists built from numpy offsets (fast)."""
    import numpy as np
    import pyarrow as pa

    rng = np.random.default_rng(seed)
    lengths = rng.integers(16, 65, n)
    offsets = np.concatenate([[0], np.cumsum(lengths)]).astype(np.int32)
    ids = pa.ListArray.from_arrays(pa.array(offsets), pa.array(rng.integers(1000, 30000, offsets[-1], dtype=np.int32)))
    labels = rng.integers(0, 3, n).astype(np.int8)
    return pa.table({
        "review_id": pa.array([f"s{i}" for i in range(start, start + n)]),
        "event_time": pa.array(np.full(n, np.datetime64(when, "us"))),
        "review_body": pa.array([f"synthetic review {i}" for i in range(start, start + n)]),
        "star_rating": pa.array((labels * 2 + 1).astype(np.int8)), "sentiment": pa.array((labels - 1).astype(np.int8)),
        "label_id": pa.array(labels), "input_ids": ids,
        "split_type": pa.array(rng.choice(["train", "validation", "test"], n, p=[0.9, 0.05, 0.05]))})


def get_latencies(store, ids: list[str], gets: int) -> dict:
    """p50/p99/mean of ``gets`` get_record calls on random ids (ms)."""
    rnd = random.Random(0)
    sample = [rnd.choice(ids) for _ in range(gets)]
    for rid in sample[:200]:  # warm the page cache / connection
        store.get_record("reviews_features", rid)
    times = []
    for rid in sample:
        t = time.perf_counter()
        rec = store.get_record("reviews_features", rid)
        times.append((time.perf_counter() - t) * 1000)
        assert rec is not None, rid
    times.sort()
    return {"p50_ms": round(times[len(times) // 2], 4), "p99_ms": round(times[int(len(times) * 0.99)], 4),
            "mean_ms": round(statistics.fmean(times), 4), "gets": gets}


def main() -> None:
    """Run the measurements, print a summary, write the JSON."""
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--records", type=int, default=1_000_000)
    p.add_argument("--update-share", type=float, default=0.1)
    p.add_argument("--gets", type=int, default=20_000)
    p.add_argument("--redis-url", default="redis://127.0.0.1:6379/0")
    p.add_argument("--redis-records", type=int, default=100_000)
    p.add_argument("--skip-real", action="store_true", help="skip the real dataset (needs the tokenizer)")
    args = p.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s")
    home = Path(tempfile.mkdtemp(prefix="fs-bench-"))
    os.environ["REVIEWS_HOME"] = str(home)
    os.environ["REVIEWS_BACKEND"] = "local"
    os.environ["REVIEWS_ONLINE_STORE"] = "sqlite"
    import pyarrow.parquet as pq

    from include.data import feature_store as fs
    from include.data.feature_store_base import REVIEWS

    out: dict = {"records": args.records, "cpu_flags": cpu_flags(), "load_avg_start": os.getloadavg()}
    store = fs.get_feature_store()
    store.create_feature_group(REVIEWS)

    if not args.skip_real:
        real = real_features(DAY1 - timedelta(days=1))
        r = store.ingest("reviews_features", real, source="bench-real")
        out["real"] = {"records": real.num_rows, "offline_records_per_s": round(real.num_rows / r["offline_s"]),
                       "online_records_per_s": round(real.num_rows / r["online_s"])}
        print(f"real dataset: {real.num_rows} records, offline {out['real']['offline_records_per_s']:,}/s, "
              f"online {out['real']['online_records_per_s']:,}/s", flush=True)

    table = synthetic(args.records, DAY1)
    with tempfile.TemporaryDirectory() as tmp:
        t = time.perf_counter()
        pq.write_table(table, Path(tmp) / "baseline.parquet")
        baseline_write_s = time.perf_counter() - t
    r = store.ingest("reviews_features", table, source="bench-synthetic")
    out["offline_ingest_records_per_s"] = round(args.records / r["offline_s"])
    out["online_ingest_records_per_s"] = round(args.records / r["online_s"])
    out["baseline_parquet_write_records_per_s"] = round(args.records / baseline_write_s)
    out["offline_ingest_vs_plain_parquet_write"] = round(baseline_write_s / r["offline_s"], 3)
    print(f"synthetic: {args.records:,} records, offline {out['offline_ingest_records_per_s']:,}/s "
          f"(plain Parquet write {out['baseline_parquet_write_records_per_s']:,}/s), "
          f"online {out['online_ingest_records_per_s']:,}/s", flush=True)

    n_upd = int(args.records * args.update_share)
    upd = store.ingest("reviews_features", synthetic(n_upd, DAY2, seed=1), source="bench-update")
    out["update_records"] = n_upd
    out["update_offline_records_per_s"] = round(n_upd / upd["offline_s"]) if n_upd else None

    t = time.perf_counter()
    pit = store.point_in_time("reviews_features", DAY1)
    out["pit_query_s"] = round(time.perf_counter() - t, 3)
    out["pit_rows"] = pit.num_rows
    t = time.perf_counter()
    total = store.query("SELECT count(*), sum(len(input_ids)) FROM feature_store.reviews_features")[1][0][0]
    scan_s = time.perf_counter() - t
    out["offline_rows_total"] = total
    out["baseline_full_scan_s"] = round(scan_s, 3)
    print(f"point-in-time read as of {DAY1:%Y-%m-%d}: {pit.num_rows:,} of {total:,} rows in {out['pit_query_s']}s "
          f"(plain scan {scan_s:.3f}s)", flush=True)
    del pit

    ids = [f"s{i}" for i in range(args.records)]
    lat = get_latencies(store, ids, args.gets)
    out["online_get_p50_ms"], out["online_get_p99_ms"] = lat["p50_ms"], lat["p99_ms"]
    out["online_get"] = lat
    print(f"online get_record (sqlite, {args.gets:,} calls): p50 {lat['p50_ms']} ms, p99 {lat['p99_ms']} ms", flush=True)
    store.online.close()

    out["redis"] = bench_redis(args, fs)
    shutil.rmtree(home, ignore_errors=True)  # ~1 GB of Parquet and SQLite
    out["load_avg_end"] = os.getloadavg()
    out["targets"] = {"offline_ingest_records_per_s >= 50000": out["offline_ingest_records_per_s"] >= 50_000,
                      "online_get_p99_ms < 2": out["online_get_p99_ms"] < 2,
                      "pit_query_s < 5 (1M records)": out["pit_query_s"] < 5 if args.records >= 1_000_000 else None}
    print(f"targets: {out['targets']}")
    print(f"wrote {write_result('feature_store', out)}")


def bench_redis(args, fs) -> dict:
    """Online ingest and get latency on Redis (a separate, smaller run); {} when unreachable."""
    import uuid

    from include.data.feature_store_base import REVIEWS

    os.environ.update({"REVIEWS_ONLINE_STORE": "redis", "REVIEWS_REDIS_URL": args.redis_url,
                       "REVIEWS_REDIS_PREFIX": f"bench-fs-{uuid.uuid4().hex[:8]}:",
                       "REVIEWS_HOME": tempfile.mkdtemp(prefix="fs-bench-redis-")})
    home = Path(os.environ["REVIEWS_HOME"])
    try:
        store = fs.get_feature_store()
        _ = store.online
    except Exception as exc:  # noqa: BLE001 - Redis is optional for the benchmark
        print(f"redis: skipped ({exc})")
        return {"skipped": str(exc)}
    try:
        store.create_feature_group(REVIEWS)
        r = store.ingest("reviews_features", synthetic(args.redis_records, DAY1), source="bench-redis")
        lat = get_latencies(store, [f"s{i}" for i in range(args.redis_records)], min(args.gets, 10_000))
        res = {"records": args.redis_records, "online_ingest_records_per_s": round(args.redis_records / r["online_s"]),
               "online_get_p50_ms": lat["p50_ms"], "online_get_p99_ms": lat["p99_ms"]}
        print(f"redis: {res}")
        return res
    finally:
        store.online.clear("reviews_features")
        store.online.close()
        shutil.rmtree(home, ignore_errors=True)


if __name__ == "__main__":
    main()
