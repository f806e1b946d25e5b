"""Every module a job script imports is in its image (aws/images/*.txt) or its requirements file.

The manifests are derived from the DLC Dockerfiles (each file's header names the source); the
entry points are the ones the request builders run (include/jobs/requests.py) and the model
package's handlers (include/model/packaging.py). Following sibling imports, each third-party
top-level import is mapped to its distribution (importlib.metadata.packages_distributions) and
must be provided. Imports guarded by ``except ImportError`` have a fallback and are left out.
"""
from __future__ import annotations

import importlib.metadata
from functools import lru_cache

import pytest

from include.jobs import images, requests
from include.model import packaging

# (entry point, the image it runs in, the requirements file that ships with it)
JOB_SCRIPTS = [
    ("preprocess.py", images.INFERENCE, images.JOB_REQUIREMENTS),
    ("evaluate.py", images.INFERENCE, images.JOB_REQUIREMENTS),
    ("automl.py", images.INFERENCE, images.JOB_REQUIREMENTS),  # the search and the score jobs
    ("train.py", images.TRAINING_GPU, images.JOB_REQUIREMENTS),
    ("train.py", images.TRAINING_CPU, images.JOB_REQUIREMENTS),
    ("inference.py", images.INFERENCE, images.INFERENCE_REQUIREMENTS),  # the endpoint's handler
    ("automl_inference.py", images.INFERENCE, images.INFERENCE_REQUIREMENTS),
]


@lru_cache(maxsize=1)
def _distributions() -> dict[str, list[str]]:
    return importlib.metadata.packages_distributions()  # scans every installed distribution: once


def _distribution(module: str) -> str:
    dists = _distributions().get(module)
    assert dists, f"import {module}: no installed distribution provides it (cannot map it to a package)"
    return images.normalise(dists[0])


def unprovided(entry: str, image: str, reqs) -> list[str]:
    provided = images.manifest(image) | images.requirements(reqs)
    return sorted(f"{m} ({_distribution(m)})" for m in images.script_imports(entry).third_party
                  if _distribution(m) not in provided)


def test_the_entry_points_are_the_ones_the_requests_and_packages_run():
    built = [requests.preprocess_request, requests.evaluation_request, requests.automl_request,
             requests.baseline_score_request]
    entries = {fn.__name__: fn for fn in built}
    assert set(entries) == {"preprocess_request", "evaluation_request", "automl_request", "baseline_score_request"}
    assert packaging.INFERENCE_SCRIPT.name == "inference.py"
    assert packaging.SKLEARN_INFERENCE_SCRIPT.name == "automl_inference.py"
    assert {e for e, _, _ in JOB_SCRIPTS} >= {"preprocess.py", "evaluate.py", "automl.py", "train.py"}


@pytest.mark.parametrize("entry, image, reqs", JOB_SCRIPTS, ids=[f"{e}-{i}" for e, i, _ in JOB_SCRIPTS])
def test_every_import_of_a_job_script_is_in_its_image_or_its_requirements(entry, image, reqs):
    missing = unprovided(entry, image, reqs)
    assert not missing, (f"{entry} in {image} imports {', '.join(missing)}: neither aws/images/{image}.txt "
                         f"nor {reqs.relative_to(images.ROOT)} provides it")


def test_without_the_requirements_file_preprocess_lacks_pandas_in_the_inference_image(tmp_path):
    empty = tmp_path / "requirements.txt"
    empty.write_text("")
    missing = unprovided("preprocess.py", images.INFERENCE, empty)
    assert "pandas (pandas)" in missing and "pyarrow (pyarrow)" in missing


def test_sibling_imports_are_followed_and_optional_ones_left_out():
    found = images.script_imports("train.py")
    assert {"train_model", "train_callbacks", "train_profiler", "train_tracking", "modeling"} <= found.siblings
    assert "torch" in found.third_party and "transformers" in found.third_party
    assert "mlflow" not in found.third_party and "include" not in found.third_party


def test_the_model_package_ships_the_inference_requirements():
    assert images.INFERENCE_REQUIREMENTS == packaging.INFERENCE_REQUIREMENTS
    assert "onnxruntime" in images.requirements(images.INFERENCE_REQUIREMENTS)


def test_processing_jobs_start_through_job_entry():
    assert images.wrap_entrypoint(["python3", "/opt/ml/processing/input/code/preprocess.py"]) == [
        "python3", "/opt/ml/processing/input/code/job_entry.py", "/opt/ml/processing/input/code/preprocess.py"]
    wrapped = images.wrap_entrypoint(["python3", "/c/job_entry.py", "/c/x.py"])
    assert wrapped == ["python3", "/c/job_entry.py", "/c/x.py"]


def test_job_entry_reports_only_missing_distributions(tmp_path):
    from include.scripts import job_entry

    reqs = tmp_path / "requirements.txt"
    reqs.write_text("pandas>=2  # present here\nno-such-distribution-xyz==1.0\n\n# a comment\n")
    assert job_entry.missing(reqs) == ["no-such-distribution-xyz"]
