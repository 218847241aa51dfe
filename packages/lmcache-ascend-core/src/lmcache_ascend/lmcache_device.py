"""LMCache's device-plugin entry point (group `lmcache.device_plugins`, name `lmcache_ascend_cpu`).

LMCache loads it in every process that imports LMCache >= 0.5, so loading it is where the CPU's
device ops learn to bind lmcache_ascend.ops (patches/patch_lmcache_cpu_device_ops.py) and where
CPU KV caches moved into shared memory get a reaper (patches/patch_lmcache_cpu_kv_shm.py). On an
Ascend host LMCache's own NpuDeviceOps imports lmcache_ascend.ops.

The spec itself is a CPU spec that never reports itself available: LMCache keeps its built-in
"cpu" spec (and StubCPUDevice), whose ops now run our kernels.
"""
from __future__ import annotations

from lmcache.v1.platform.devices.cpu import CpuDeviceSpec

from lmcache_ascend.patches import patch_lmcache_cpu_device_ops

patch_lmcache_cpu_device_ops.apply()  # and, from there, patch_lmcache_cpu_kv_shm


class LMCacheAscendCpuSpec(CpuDeviceSpec):
    """Registered so LMCache loads this module; never selected (see the module docstring)."""

    @property
    def backend_name(self) -> str:
        return "lmcache_ascend_cpu"

    def is_available(self) -> bool:
        return False
