"""Every environment variable lmcache-ascend reads, in one place, with what it does."""
from __future__ import annotations

import os

from lmcache_ascend._cann import ENV_VARS as _CANN_ENV_VARS

# name -> meaning (shown in errors and docs)
ENV_VARS = {
    # Threads one CPU transfer is split over, the calling thread included. Unset or 0: usable
    # cores (sched_getaffinity). Lower it when the engine's own threads need the cores.
    "LMCACHE_ASCEND_NUM_THREADS": "threads per CPU KV transfer (default: usable cores)",
    # Read by patches/patch_lmcache_cpu_device_ops.py when LMCache loads our device plugin; 0 keeps
    # LMCache's torch baseline (e.g. to compare against it in one run).
    "LMCACHE_ASCEND_LMCACHE_CPU_OPS": "1 (default): LMCache's cpu device ops run lmcache_ascend.ops; 0: its torch baseline",
    # Build (CANN detection) and host-memory registration: their reader is _cann.py, which the build
    # hook loads on its own before the package is installed, so their table lives there.
    **_CANN_ENV_VARS,
}


def _int(name: str, default: int, minimum: int) -> int:
    raw = os.environ.get(name, "").strip()
    if not raw:
        return default
    try:
        value = int(raw)
    except ValueError:
        value = None
    if value is None or value < minimum:
        raise ValueError(f"{name}={raw!r} is invalid: expected an integer >= {minimum} ({ENV_VARS[name]}); "
                         f"unset it to use the default")
    return value


def num_threads() -> int:
    """LMCACHE_ASCEND_NUM_THREADS, 0 meaning the default."""
    return _int("LMCACHE_ASCEND_NUM_THREADS", 0, 0)
