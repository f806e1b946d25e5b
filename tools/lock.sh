#!/usr/bin/env bash
# Compile requirements.lock from requirements.txt with uv (pip's resolver backtracks for
# minutes through aiobotocore releases), then drop the CUDA packages that PyPI's torch
# lists: the project pins the CPU build of torch==2.13.0, which needs none of them.
set -euo pipefail
cd "$(dirname "$0")/.."
UV=${UV:-uv}
"$UV" pip compile requirements.txt --python-version 3.11 \
  --python-platform x86_64-manylinux_2_28 --no-header --no-annotate -o requirements.lock.tmp
grep -vE '^(nvidia-|triton==|cuda-bindings==|cuda-pathfinder==|cuda-toolkit==)' requirements.lock.tmp > requirements.lock.tmp2
{ echo "# Fully pinned lock of requirements.txt. Regenerate with: make lock"
  echo "# CUDA packages (nvidia-*, cuda-*, triton) are left out on purpose: torch==2.13.0 is the CPU build."
  cat requirements.lock.tmp2; } > requirements.lock
rm -f requirements.lock.tmp requirements.lock.tmp2
echo "requirements.lock: $(grep -c '==' requirements.lock) pinned packages"
