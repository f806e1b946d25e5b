"""Which image each step runs in, what it holds, and the request rules SageMaker enforces that
botocore's service model cannot express (``make validate-aws``; README: aws backend).

Images (``include/jobs/runner_sagemaker.image_uri``):

- preprocess, evaluate, automl search / score: the Hugging Face PyTorch inference DLC (cpu or
  gpu); what it lacks is ``include/scripts/requirements.txt``, installed by ``job_entry.py``;
- train on a GPU instance: the Hugging Face PyTorch training DLC (GPU only); the same file,
  installed by the training toolkit (script mode);
- train on a CPU instance: the PyTorch training DLC (cpu); the same file (it brings transformers);
- the endpoint: the Hugging Face PyTorch inference DLC; the model package's ``code/requirements.txt``
  (``inference-requirements.txt``), installed by the inference toolkit.

The package manifests of those images are checked in under ``aws/images/`` (derived from the
DLC Dockerfiles, named in each file's header); ``tests/unit/test_job_images.py`` checks every
job script's imports against its image's manifest plus its requirements file. Accounts without
internet egress build the project image instead (``make aws-image``: ``aws/Dockerfile``, FROM
the inference DLC with both requirements files installed) and name it in ``steps.<step>.image_uri``
and ``endpoint_image_uri``.
"""
from __future__ import annotations

import ast
import re
import sys
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
SCRIPTS = ROOT / "include" / "scripts"
MANIFESTS = ROOT / "aws" / "images"
JOB_REQUIREMENTS = SCRIPTS / "requirements.txt"
INFERENCE_REQUIREMENTS = SCRIPTS / "inference-requirements.txt"
JOB_ENTRY = "job_entry.py"

INFERENCE = "huggingface-pytorch-inference-2.6.0-transformers4.49.0"
TRAINING_GPU = "huggingface-pytorch-training-2.5.1-transformers4.49.0-gpu"
TRAINING_CPU = "pytorch-training-2.5.1-cpu"

# Instance families with local NVMe instance storage: SageMaker refuses VolumeKmsKeyId on them
# ("Volume KMS key is not supported for instance types with local instance storage"; the
# instance store is encrypted by the hardware). Source: the SageMaker API reference of
# ResourceConfig / ProcessingClusterConfig VolumeKmsKeyId, and the instance types' storage.
NVME_FAMILIES = frozenset({
    "ml.c5d", "ml.m5d", "ml.r5d", "ml.c6id", "ml.m6id", "ml.r6id", "ml.c6gd", "ml.m6gd", "ml.r6gd",
    "ml.g4dn", "ml.g5", "ml.g6", "ml.g6e", "ml.gr6", "ml.p3dn", "ml.p4d", "ml.p4de", "ml.p5", "ml.p5e",
    "ml.p5en", "ml.trn1", "ml.trn1n", "ml.inf2", "ml.x2iedn", "ml.i3", "ml.i4i",
})
_GPU_FAMILY = re.compile(r"^ml\.(p\d|g\d)")
_GPU_IMAGE = re.compile(r"(-gpu-|gpu-py|-cu\d{3})")
_CPU_IMAGE = re.compile(r"(-cpu-|cpu-py)")


def family(instance_type: str) -> str:
    """``ml.g5`` of ``ml.g5.xlarge``."""
    return instance_type.rsplit(".", 1)[0]


def has_instance_storage(instance_type: str) -> bool:
    """True for an instance type with local NVMe storage (see :data:`NVME_FAMILIES`)."""
    return family(instance_type) in NVME_FAMILIES


def is_gpu_instance(instance_type: str) -> bool:
    """True for the NVIDIA GPU families (ml.p*, ml.g*)."""
    return bool(_GPU_FAMILY.match(instance_type))


def training_image(instance_type: str) -> str:
    """The manifest name of the training image for ``instance_type``."""
    return TRAINING_GPU if is_gpu_instance(instance_type) else TRAINING_CPU


def image_problems(where: str, image: str, instance_type: str) -> list[str]:
    """What SageMaker (or the container) refuses about running ``image`` on ``instance_type``."""
    if not image:
        return [f"{where}: no image (set its image_uri, or pick an instance type the framework image exists for)"]
    if _GPU_IMAGE.search(image) and not is_gpu_instance(instance_type):
        return [f"{where}: GPU-only image {image} on the CPU instance type {instance_type} "
                "(pick a ml.g*/ml.p* type, or a cpu image)"]
    if _CPU_IMAGE.search(image) and is_gpu_instance(instance_type):
        return [f"{where}: CPU image {image} on the GPU instance type {instance_type}: the GPU would sit idle "
                "(pick a gpu image or a CPU type)"]
    return []


def request_problems(step: str, request: dict) -> list[str]:
    """The rules a completed ``CreateProcessingJob`` / ``CreateTrainingJob`` request breaks that
    botocore's validator cannot see (KMS on local-storage instances, the image for the instance)."""
    if "TrainingJobName" in request:
        cluster, image = request.get("ResourceConfig") or {}, (request.get("AlgorithmSpecification") or {}).get(
            "TrainingImage", "")
        where = f"{step}: ResourceConfig"
    else:
        cluster = (request.get("ProcessingResources") or {}).get("ClusterConfig") or {}
        image = (request.get("AppSpecification") or {}).get("ImageUri", "")
        where = f"{step}: ProcessingResources.ClusterConfig"
    instance = cluster.get("InstanceType", "")
    found = []
    if cluster.get("VolumeKmsKeyId") and has_instance_storage(instance):
        found.append(f"{where}.VolumeKmsKeyId is set on {instance}, which has local NVMe instance storage: "
                     "SageMaker refuses the request (the instance store is encrypted by the hardware; drop it)")
    return found + image_problems(step, image, instance)


def wrap_entrypoint(entrypoint: list[str]) -> list[str]:
    """``["python3", <code>/x.py]`` -> ``["python3", <code>/job_entry.py, <code>/x.py]``: the
    processing job installs what its image lacks first (``include/scripts/job_entry.py``)."""
    if len(entrypoint) != 2 or entrypoint[0] not in ("python", "python3") or entrypoint[1].endswith(JOB_ENTRY):
        return list(entrypoint)
    script = entrypoint[1]
    return [entrypoint[0], f"{script.rsplit('/', 1)[0]}/{JOB_ENTRY}", script]


# --------------------------------------------------------------------- manifests and imports


def manifest(name: str) -> set[str]:
    """The distributions (normalised names) of image manifest ``aws/images/<name>.txt``."""
    path = MANIFESTS / f"{name}.txt"
    return {normalise(line.split("#", 1)[0]) for line in path.read_text(encoding="utf-8").splitlines()
            if line.split("#", 1)[0].strip()}


def requirements(path: Path) -> set[str]:
    """The distributions a requirements file names (normalised)."""
    names = set()
    for line in path.read_text(encoding="utf-8").splitlines():
        m = re.match(r"\s*([A-Za-z0-9][A-Za-z0-9._-]*)", line.split("#", 1)[0])
        if m:
            names.add(normalise(m.group(1)))
    return names


def normalise(name: str) -> str:
    """PEP 503's normal form of a distribution name."""
    return re.sub(r"[-_.]+", "-", name.strip()).lower()


@dataclass(frozen=True)
class ScriptImports:
    """The modules a job script needs: third-party top-level names, and the siblings it follows."""

    third_party: frozenset[str]
    siblings: frozenset[str]


def _optional(node: ast.Try) -> bool:
    names = []
    for handler in node.handlers:
        t = handler.type
        names += [e.id for e in (t.elts if isinstance(t, ast.Tuple) else [t]) if isinstance(e, ast.Name)]
    return any(n in ("ImportError", "ModuleNotFoundError") for n in names)


def _imports(tree: ast.AST, optional: bool = False):
    for node in ast.iter_child_nodes(tree):
        inside = optional or (isinstance(node, ast.Try) and _optional(node))
        if isinstance(node, ast.Import):
            for alias in node.names:
                yield alias.name.split(".")[0], optional
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            yield node.module.split(".")[0], optional
        yield from _imports(node, inside)


def script_imports(entry: str, scripts: Path = SCRIPTS) -> ScriptImports:
    """What ``entry`` (a file in ``scripts``) imports, following its sibling imports; imports
    guarded by ``except ImportError`` are optional and left out (they have a fallback)."""
    siblings = {p.stem for p in scripts.glob("*.py")}
    third, seen, todo = set(), set(), [Path(entry).stem]
    while todo:
        name = todo.pop()
        if name in seen:
            continue
        seen.add(name)
        for module, optional in _imports(ast.parse((scripts / f"{name}.py").read_text(encoding="utf-8"))):
            if module in siblings:
                todo.append(module)
            elif not optional and module != "__future__" and module not in sys.stdlib_module_names:
                third.add(module)
    return ScriptImports(frozenset(third), frozenset(seen))
