"""Where and how fast the training job computes: CPU threads, CUDA, mixed precision."""
from __future__ import annotations

import logging
import os
from typing import Any

from common import available_cores

log = logging.getLogger("train")


def auto_threads(cores: int) -> int:
    """Threads for torch: the cores, minus those other runnable processes keep busy.

    With more OpenMP threads than free cores every op waits for a descheduled thread; on a
    shared 2-core box 2 threads measured 3x slower than 1. A dedicated container (load ~0)
    gets all its cores.
    """
    try:
        load = os.getloadavg()[0]
    except OSError:
        return cores
    return max(1, min(cores, cores - int(load - 0.5))) if load > cores else cores


def cpu_has_native_bf16() -> bool:
    """Whether this CPU multiplies bf16 natively (AVX512-BF16 or AMX), per torch's own check."""
    import torch

    cpu = getattr(torch._C, "_cpu", None)
    for probe in ("_is_avx512_bf16_supported", "_is_amx_tile_supported"):
        fn = getattr(cpu, probe, None)
        if fn is not None and fn():
            return True
    return False


def setup_device(num_threads: int, mixed_precision: str) -> tuple[str, Any]:
    """Pick CUDA when present (same code path), set CPU threads, choose the autocast dtype."""
    import torch

    threads = num_threads or auto_threads(available_cores())
    torch.set_num_threads(threads)
    device = "cuda" if torch.cuda.is_available() else "cpu"
    dtype = None
    if device == "cuda" and mixed_precision != "no":
        if mixed_precision == "bf16" or (mixed_precision == "auto" and torch.cuda.is_bf16_supported()):
            dtype = torch.bfloat16
        else:
            dtype = torch.float16
    elif device == "cpu" and (mixed_precision == "bf16" or (mixed_precision == "auto" and cpu_has_native_bf16())):
        # 1.45x the fp32 step rate on an AVX512-BF16 CPU (benchmarks/train_throughput.py); without
        # native bf16 it is emulated and slower, so auto keeps fp32 there
        dtype = torch.bfloat16
    gpus = torch.cuda.device_count() if device == "cuda" else 0
    log.info("device %s%s, %d CPU threads, mixed precision %s", device,
             f" ({torch.cuda.get_device_name(0)}, {gpus} GPU(s))" if gpus else "", threads,
             str(dtype).replace("torch.", "") if dtype else "off (fp32)")
    return device, dtype
