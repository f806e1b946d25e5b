"""Benchmark: catalog registration + data-quality validation, real data and 1M synthetic rows.

    .venv/bin/python benchmarks/validation.py            # real data + 1,000,000 synthetic rows
    .venv/bin/python benchmarks/validation.py --rows 200000

Each phase (register, validate) runs in its own child process so that its peak RSS
(``ru_maxrss``) is its own; wall time includes the imports the task would pay. The landing
files are written beforehand and not timed. Writes ``benchmarks/results/validation.json``.
"""
from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from datetime import date
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(Path(__file__).resolve().parent))


def _child(phase: str, ds_list: list[str], report_dir: str) -> dict:
    """Run one phase in this process; return wall seconds and peak RSS."""
    start = time.perf_counter()
    if phase == "register":
        from include.data.catalog import get_catalog

        rows = sum(get_catalog().register_partition(ds)["rows"] for ds in ds_list)
        extra = {"rows": rows}
    else:
        from include.data import quality

        result = quality.validate_partitions(ds_list, "benchmark", 0.05, Path(report_dir))
        extra = {k: result[k] for k in ("rows", "bad_rows", "bad_fraction", "passed", "rule_counts", "seconds")}
    wall = time.perf_counter() - start
    usage = resource.getrusage(resource.RUSAGE_SELF)
    # CPU seconds do not grow when other processes compete for the cores; wall time does.
    return {"phase": phase, "wall_s": round(wall, 2), "cpu_s": round(usage.ru_utime + usage.ru_stime, 2),
            "peak_rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1), **extra}


def _run_phase(phase: str, ds_list: list[str], home: Path) -> dict:
    env = {**os.environ, "REVIEWS_HOME": str(home), "REVIEWS_BACKEND": "local"}
    proc = subprocess.run(
        [sys.executable, __file__, "--child", phase, "--ds", ",".join(ds_list), "--report-dir", str(home / "report")],
        env=env, capture_output=True, text=True,
    )
    if proc.returncode != 0:
        raise SystemExit(f"{phase} failed:\n{proc.stderr[-4000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def _measure(label: str, ds_list: list[str], home: Path) -> dict:
    reg = _run_phase("register", ds_list, home)
    val = _run_phase("validate", ds_list, home)
    wall = reg["wall_s"] + val["wall_s"]
    rows = val["rows"]
    print(f"{label}: {rows:,} rows in {len(ds_list)} partition(s): register {reg['wall_s']}s "
          f"(peak {reg['peak_rss_mb']} MB) + validate {val['wall_s']}s (peak {val['peak_rss_mb']} MB) = "
          f"{wall:.1f}s, {rows / wall:,.0f} rows/s; bad {val['bad_rows']:,} ({val['bad_fraction']:.2%})", flush=True)
    return {"rows": rows, "partitions": len(ds_list), "register": reg, "validate": val, "wall_s": round(wall, 2),
            "cpu_s": round(reg["cpu_s"] + val["cpu_s"], 2),
            "rows_per_s": round(rows / wall), "peak_rss_mb": max(reg["peak_rss_mb"], val["peak_rss_mb"])}


LOAD_AT_START = round(os.getloadavg()[0], 2)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=1_000_000, help="synthetic rows")
    parser.add_argument("--bad-fraction", type=float, default=0.01)
    parser.add_argument("--child", choices=["register", "validate"], help=argparse.SUPPRESS)
    parser.add_argument("--ds", default="", help=argparse.SUPPRESS)
    parser.add_argument("--report-dir", default="", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        print(json.dumps(_child(args.child, args.ds.split(","), args.report_dir)))
        return

    from _common import write_result

    from include.common.io import uri_to_path
    from include.data.landing import land_daily_drops
    from include.data.synthetic import write_landing_stream

    with tempfile.TemporaryDirectory(prefix="bench-validation-") as tmp:
        real_home, syn_home = Path(tmp) / "real", Path(tmp) / "synthetic"
        os.environ["REVIEWS_BACKEND"] = "local"
        os.environ["REVIEWS_HOME"] = str(real_home)
        from include.common.config import get_settings

        drops = land_daily_drops(uri_to_path(get_settings().landing_uri), date(2026, 1, 30), days=30)
        real = _measure("real data (30 daily drops)", [d.ds for d in drops], real_home)

        os.environ["REVIEWS_HOME"] = str(syn_home)
        t0 = time.perf_counter()
        written = write_landing_stream(args.rows, uri_to_path(get_settings().landing_uri), seed=0,
                                       bad_fraction=args.bad_fraction)
        gen_s = time.perf_counter() - t0
        size_mb = sum(p.stat().st_size for p in written.values()) / 1e6
        print(f"synthetic: wrote {args.rows:,} rows ({size_mb:.0f} MB CSV) in {gen_s:.1f}s (not timed below)")
        syn = _measure(f"synthetic {args.rows:,}", list(written), syn_home)

    key = "1m" if args.rows == 1_000_000 else f"{args.rows}"
    payload = {
        f"wall_s_{key}": syn["wall_s"],
        f"rows_per_s_{key}": syn["rows_per_s"],
        f"peak_rss_mb_{key}": syn["peak_rss_mb"],
        f"cpu_s_{key}": syn["cpu_s"],
        "wall_s_real": real["wall_s"],
        "rows_per_s_real": real["rows_per_s"],
        "peak_rss_mb_real": real["peak_rss_mb"],
        "load_avg_1m_at_start": LOAD_AT_START,
        "load_avg_1m_at_end": round(os.getloadavg()[0], 2),  # the 2 cores are shared: context for the numbers
        "target": "1M rows registered + validated in < 60 s on 2 cores, bounded memory",
        "duckdb_memory_limit": os.environ.get("REVIEWS_DUCKDB_MEMORY_LIMIT", "1GB"),
        "synthetic": {**syn, "bad_fraction": args.bad_fraction, "csv_mb": round(size_mb, 1)},
        "real": {**real, "note": "Kaggle file via include.data.landing (23,486 rows; 845 without review text are "
                                 "dropped by the adapter), landed as 30 daily drops"},
        "command": "python benchmarks/validation.py" + (f" --rows {args.rows}" if args.rows != 1_000_000 else ""),
    }
    print(f"wrote {write_result('validation', payload)}")


if __name__ == "__main__":
    main()
